"""Stage 3f: the exact marginal posterior of designs of scalar bars at any size, sampled by
independence Metropolis-Hastings.

When every bar is scalar (``(1 | s) + (1 | d) + (1 | dept)``, InstEval's 4,114 crossed
effects), the group effects of all bars integrate out jointly with the blocked
factorization of the REML back end (:class:`bayeslmm.fitting.reml.ProfiledDeviance`: the
largest factor level by level, the others as one dense block, which is what costs:
InstEval ~20 ms per evaluation)::

    -2 log p(y | beta, theta, sigma) = log|Omega| + n log(2 pi sigma^2)
                                       + (r2(theta) + |R_X'(beta - beta_hat)|^2) / sigma^2

with ``theta = sd / sigma``, ``r2`` the penalized residual at ``beta_hat`` and ``R_X`` the
factor of ``X' V^-1 X``. What is left to sample is short (fixed effects, one log sd per
bar, log sigma: 6 numbers on InstEval) and, with tens of thousands of rows, close to
Gaussian. So instead of NUTS on thousands of effects the sampler is an independence
Metropolis-Hastings chain whose proposal is a multivariate Student t (5 df, heavier tails
than the posterior) at the posterior mode with the inverse of the negative Hessian there
(1.2 x) as its scale: one evaluation per iteration, no gradient. Every draw is then
completed exactly: the effects of the bars that the partially collapsed sampler of
:mod:`bayeslmm.sampling.crossed` would sample are drawn from their Gaussian conditional
given the draw with the other factor integrated out (``L_rr`` of the same factorization),
and the rest given those by :meth:`bayeslmm.sampling.crossed.CrossedProblem.draw_effects`,
so the result has the full model's layout and the same priors (the unconstrained
parameters, transforms and prior densities are the collapsed sampler's).

Chains run in threads (the factorization releases the GIL). The first ``min(tune, 100)``
iterations of each chain are discarded: a chain starts at a draw from the proposal, which
is close to the posterior, so nothing needs adapting. The acceptance rate is kept in
``sample_stats`` and the attrs; a low one (a posterior far from Gaussian) shows as low ESS
and high R-hat, and is warned about.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import priors as P
from ..errors import ConvergenceWarning, FitError
from ..frontend.design import Design
from . import marginal_kernels as K
from .crossed import CrossedProblem, pointwise_log_likelihood
from .marginal import MarginalDraws, build_result

#: proposal: Student t with these degrees of freedom, scale = SCALE^2 x the Laplace covariance
PROPOSAL_DF = 5.0
PROPOSAL_SCALE = 1.2
#: iterations discarded at the start of each chain (at most ``tune``)
BURN_IN = 100
#: below this acceptance rate the proposal fits the posterior badly: warn
LOW_ACCEPTANCE = 0.1


def mh_supported(design: Design) -> tuple[bool, str]:
    """Whether the independence sampler applies: every bar scalar (one term, no correlation)."""
    if not design.blocks:
        return False, "the model has no random-effect term"
    wide = [block.group for block in design.blocks if block.n_terms != 1]
    if wide:
        return False, f"the bar(s) of {', '.join(repr(g) for g in wide)} have more than one term"
    return True, "every bar has one term"


@dataclass
class ScalarMarginal:
    """The log posterior of the collapsed sampler's unconstrained parameters (beta of the
    centered predictors, log sds, log sigma; standardized response) with every group
    effect integrated out, for designs of scalar bars."""

    design: Design
    problem: CrossedProblem
    blob: np.ndarray
    deviance: object

    @classmethod
    def from_design(cls, design: Design, prior_set: P.PriorSet) -> "ScalarMarginal":
        from ..fitting.reml import ProfiledDeviance

        ok, reason = mh_supported(design)
        if not ok:
            raise FitError(f"the marginal_mh parametrization does not apply: {reason}")
        problem = CrossedProblem.from_design(design)
        return cls(design, problem, problem.pack(prior_set), ProfiledDeviance(design, reml=False))

    @property
    def ndim(self) -> int:
        return self.problem.ndim_base

    def log_prior(self, x: np.ndarray) -> float:
        """Priors and the Jacobians of the log transforms, as the collapsed kernels add them."""
        blob, problem = self.blob, self.problem
        s, p = problem.y_scale, problem.p
        _, _, si = problem.slices()
        value = 0.0
        fp = int(blob[K.H_FPRI])
        for a in range(p):
            o = fp + 5 * a
            value += K.prior_logp(int(blob[o]), blob[o + 1], blob[o + 2], blob[o + 3], blob[o + 4] + s * x[a])[0]
        sp = int(blob[K.H_SPRI])
        value += K.prior_logp(int(blob[sp]), blob[sp + 1], blob[sp + 2], blob[sp + 3], s * np.exp(x[si]))[0] + x[si]
        bars, sdp = int(blob[K.H_BARS]), int(blob[K.H_SDPRI])
        for k in range(len(problem.bars)):
            sd0, po = int(blob[bars + 6 * k + 2]), sdp + 5 * int(blob[bars + 6 * k + 5])
            value += K.prior_logp(int(blob[po]), blob[po + 1], blob[po + 2], blob[po + 3], s * np.exp(x[sd0]))[0]
            value += x[sd0]
        return float(value)

    def user_parameters(self, x: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """(beta, sigma, sds in the design's bar order) on the user's scale."""
        values = self.problem.expand(np.asarray(x, float)[None, :])
        sds = np.array([values[f"sd_{bar.label}"][0, 0] for bar in self.problem.bars])
        return values["beta"][0], float(values["sigma"][0]), sds

    def log_likelihood(self, x: np.ndarray):
        """``log p(y | beta, sds, sigma)`` (user's scale of y) and the factor it used."""
        dev = self.deviance
        beta, sigma, sds = self.user_parameters(x)
        f = dev._factor(dev.to_internal(sds / sigma))
        gap = f.Lxx.T @ (dev.beta_to_internal(beta / dev.y_scale) - f.beta)
        s2 = (sigma / dev.y_scale) ** 2
        n = dev.n
        value = -0.5 * (f.logdet + n * np.log(2.0 * np.pi * s2) + (f.pwrss + gap @ gap) / s2) - n * np.log(dev.y_scale)
        return float(value), f

    def log_posterior(self, x: np.ndarray):
        """The log density (up to a constant) and the factor, or ``(-inf, None)``."""
        x = np.asarray(x, float)
        if not np.all(np.isfinite(x)) or np.any(np.abs(x[self.problem.p:]) > 50.0):
            return -np.inf, None
        try:
            value, f = self.log_likelihood(x)
        except (FitError, np.linalg.LinAlgError, FloatingPointError):
            return -np.inf, None
        value += self.log_prior(x)
        return (value, f) if np.isfinite(value) else (-np.inf, None)

    def start(self) -> np.ndarray:
        """The ML fit in the unconstrained coordinates (sds at 0 lifted to 1e-3 of sigma)."""
        from ..fitting.reml import optimize_profiled

        dev, problem = self.deviance, self.problem
        theta, _ = optimize_profiled(dev)
        solution = dev.solve(theta)
        sigma = float(np.sqrt(solution.pwrss / dev.n)) * dev.y_scale
        beta = solution.beta * dev.y_scale
        s = problem.y_scale
        x = np.empty(self.ndim)
        x[:problem.p] = beta / s
        if problem.intercept is not None:
            x[problem.intercept] = (beta[problem.intercept] - problem.y_center + beta @ problem.means) / s
        sd_sl, _, si = problem.slices()
        for k, sl in enumerate(sd_sl):
            x[sl] = np.log(max(theta[k], 1e-3) * sigma / s)
        x[si] = np.log(sigma / s)
        return x

    def laplace(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mode (quasi-Newton from the ML fit) and the inverse of the negative
        Hessian there (central differences)."""
        from scipy.optimize import minimize

        def objective(x):
            value = self.log_posterior(x)[0]
            return -value if np.isfinite(value) else 1e300

        # gtol: finite-difference gradients of a log density of ~1e5 resolve ~1e-3 (InstEval: 133
        # evaluations; 1e-5 was never met and took 252); the mode only centres the proposal
        mode = minimize(objective, self.start(), method="BFGS", options={"gtol": 1e-3}).x
        d, h = self.ndim, 1e-4
        f = lambda v: self.log_posterior(v)[0]  # noqa: E731
        H = np.empty((d, d))
        for i in range(d):
            for j in range(i, d):
                ei, ej = np.eye(d)[i] * h, np.eye(d)[j] * h
                H[i, j] = H[j, i] = (f(mode + ei + ej) - f(mode + ei - ej) - f(mode - ei + ej)
                                     + f(mode - ei - ej)) / (4.0 * h * h)
        try:
            cov = np.linalg.inv(-H)
            np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise FitError("the marginal posterior's Hessian at its mode is not negative definite: "
                           "use parametrization='crossed' or 'full'") from None
        return mode, cov

    def completed(self, x: np.ndarray, f, rng: np.random.Generator) -> np.ndarray:
        """``x`` followed by the sampled bars' effects of :class:`CrossedProblem` (its
        ``u`` or centered ``b``, standardized scale), drawn from their conditional given
        ``x`` with the other effects integrated out: ``u ~ N(u_hat(beta), sigma^2 Omega^-1)``
        through the blocked factor."""
        dev, problem = self.deviance, self.problem
        beta, sigma, sds = self.user_parameters(x)
        u = dev._modes(f, dev.beta_to_internal(beta / dev.y_scale))
        # + sigma L^-T z through the blocked factor
        z = rng.standard_normal(u.size)
        u = u + (sigma / dev.y_scale) * np.concatenate(dev._scalar_backward(f, z[:dev.J1], z[dev.J1:]))
        # b = y_scale theta_user u, bar by bar (the deviance's order is the design's)
        user_theta = sds / sigma
        starts = np.cumsum([0] + [b.n_levels for b in self.design.blocks])
        effects = [dev.y_scale * user_theta[k] * u[starts[k]:starts[k + 1]] for k in range(len(self.design.blocks))]
        sd_sl, _, _ = problem.slices()
        out = [np.asarray(x, float)]
        for k, centered in zip(problem.sampled, problem.centered):
            b_std = effects[k] / problem.y_scale
            out.append(b_std if centered else b_std / np.exp(x[sd_sl[k]][0]))
        return np.concatenate(out)


def _chain(target: ScalarMarginal, mode, cov, draws: int, burn: int, seed: np.random.SeedSequence):
    """One independence Metropolis-Hastings chain; returns (completed draws, accepted, lp)."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    proposal = stats.multivariate_t(loc=mode, shape=PROPOSAL_SCALE**2 * cov, df=PROPOSAL_DF)
    x, (lx, fx) = mode, target.log_posterior(mode)
    for _ in range(100):  # start at a proposal draw with a finite density
        y = proposal.rvs(random_state=rng)
        ly, fy = target.log_posterior(y)
        if np.isfinite(ly):
            x, lx, fx = y, ly, fy
            break
    qx = proposal.logpdf(x)
    out, accepted, lp = [], np.zeros(draws, dtype=bool), np.empty(draws)
    for it in range(burn + draws):
        y = proposal.rvs(random_state=rng)
        ly, fy = target.log_posterior(y)
        qy = proposal.logpdf(y)
        ok = np.isfinite(ly) and np.log(rng.uniform()) < ly - lx + qx - qy
        if ok:
            x, lx, qx, fx = y, ly, qy, fy
        if it >= burn:
            out.append(target.completed(x, fx, rng))
            accepted[it - burn] = ok
            lp[it - burn] = lx
    return np.array(out), accepted, lp


def run_marginal_mh(target: ScalarMarginal, draws: int = 1000, tune: int = 1000, chains: int = 4,
                    random_seed: int | None = None, progressbar: bool = True) -> MarginalDraws:
    """Laplace fit, then ``chains`` independence chains (two threads); ``MarginalDraws``
    whose ``x`` is in the :class:`CrossedProblem` layout (for its effect draws)."""
    import xarray as xr

    from ..fitting.reml import _blas_single_thread

    seed = int(np.random.default_rng().integers(2**31)) if random_seed is None else int(random_seed)
    start = time.perf_counter()
    burn = min(int(tune), BURN_IN)
    seeds = np.random.SeedSequence(seed).spawn(chains)
    # one BLAS thread per chain thread: two chains each running two OpenBLAS threads on two
    # cores spin against each other
    with _blas_single_thread():
        mode, cov = target.laplace()
        with ThreadPoolExecutor(max_workers=min(2, chains)) as pool:
            results = list(pool.map(lambda s: _chain(target, mode, cov, draws, burn, s), seeds))
    x = np.stack([r[0] for r in results])
    accepted = np.stack([r[1] for r in results])
    lp = np.stack([r[2] for r in results])
    stats = xr.Dataset({"accepted": (("chain", "draw"), accepted), "lp": (("chain", "draw"), lp),
                        "diverging": (("chain", "draw"), np.zeros_like(accepted))},
                       coords={"chain": np.arange(chains), "draw": np.arange(draws)})
    if progressbar:
        print(f"marginal_mh: {chains} chains x {draws} draws, acceptance {accepted.mean():.2f}, "
              f"{time.perf_counter() - start:.1f} s")
    return MarginalDraws(x, stats, target.blob, seed, time.perf_counter() - start)


def sample_marginal_mh(design: Design, prior_set: P.PriorSet, draws: int = 1000, tune: int = 1000,
                       chains: int = 4, random_seed: int | None = None, progressbar: bool = True,
                       reason: str | None = None):
    """Sample the exact marginal posterior of a design of scalar bars (see the module).

    Parameters
    ----------
    design : Design
        Every bar scalar (one term each), any number of levels, crossed or nested.
    prior_set : PriorSet
        The same priors as the full model.
    draws, tune, chains, random_seed, progressbar
        As in :meth:`bayeslmm.LMM.sample`; ``min(tune, 100)`` iterations per chain are
        discarded.
    reason : str, optional
        Why this sampler was chosen, kept in ``idata.posterior.attrs["sampler_choice"]``.

    Returns
    -------
    PosteriorResult
        In the full model's layout, ``parametrization = "marginal_mh"`` in the attrs, with
        the acceptance rate (``acceptance``); the same ``random_seed`` gives identical draws.
    """
    from .crossed import crossed_posterior

    target = ScalarMarginal.from_design(design, prior_set)
    problem = target.problem
    run = run_marginal_mh(target, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                          progressbar=progressbar)
    acceptance = float(np.asarray(run.sample_stats["accepted"]).mean())
    if acceptance < LOW_ACCEPTANCE:
        warnings.warn(f"the independence sampler accepted {acceptance:.1%} of its proposals: the posterior is far "
                      "from its Gaussian approximation and the draws mix slowly; check R-hat and ESS or use "
                      "parametrization='crossed'", ConvergenceWarning, stacklevel=3)
    flat = run.x.reshape(-1, problem.ndim)
    begin = time.perf_counter()
    effects = problem.draw_effects(flat, run.blob, np.random.default_rng([run.seed, 2]))
    attrs = {"sampler": "independence Metropolis", "sampling_seconds": run.seconds,
             "effect_draw_seconds": time.perf_counter() - begin, "acceptance": acceptance, "seed": run.seed}
    if reason:
        attrs["sampler_choice"] = reason
    return build_result(design, prior_set, crossed_posterior(problem, run, effects), run, "marginal_mh", attrs,
                        lambda posterior: pointwise_log_likelihood(design, posterior, effects))
