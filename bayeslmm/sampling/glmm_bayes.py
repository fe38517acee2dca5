"""GLMMs under priors: the MAP (random effects integrated out by Laplace) and the NUTS
posterior of the non-centered model (PyMC 6 + nutpie, ArviZ 1.x DataTree).

Default priors, on the link scale (the Gaussian defaults of :mod:`bayeslmm.priors` with
the response scale set to 1, which is where logit, probit and log coefficients live):

- ``Intercept``: ``StudentT(nu=3, mu=0, sigma=2.5)`` on the intercept of the mean-centered
  predictors (brms's default for these links);
- ``b``: ``Normal(mu=0, sigma=2.5 / s_x)`` per column (rstanarm's autoscaled default:
  Normal(0, 2.5) on a standardized predictor);
- ``sd``: ``Gamma(alpha=2, beta=2 / s_t)``, ``s_t = 1`` for an intercept and ``1 / s_x`` for
  a slope: mean one unit of the link scale, zero density at zero, so the MAP stays off the
  boundary where glmer is singular (Chung et al. 2013), as the Gaussian MAP does;
- ``cor``: ``LKJ(eta=1)`` for sampling, ``LKJ(eta=2)`` for the MAP;
- negative binomial shape: ``Gamma(0.01, 0.01)`` (brms's default).

The user's ``priors`` dict takes the same keys as :class:`~bayeslmm.model.LMM`'s.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .. import priors as P
from ..errors import BayesLMMError
from ..frontend.design import parent_levels
from ..frontend.glmm_design import GLMMDesign

_BARRIER = 1e12


def resolve_glmm_priors(gd: GLMMDesign, priors: dict | None, for_map: bool = False) -> P.PriorSet:
    """The :class:`~bayeslmm.priors.PriorSet` in force on the link scale (see the module
    docstring): :func:`bayeslmm.priors.resolve_priors` with a response of mean 0 and sd 1."""
    n = gd.nobs
    proxy = np.arange(n, dtype=float)
    proxy = (proxy - proxy.mean()) / proxy.std()
    return P.resolve_priors(replace(gd.design, y=proxy), priors, for_map=for_map)


def log_prior(prior_set: P.PriorSet, design, beta: np.ndarray, lams: list[np.ndarray]) -> float:
    """Sum of the log prior densities at ``beta`` and the relative factors ``lams``."""
    names = list(design.fixed_names)
    total = 0.0
    if prior_set.intercept is not None:
        j0 = names.index("(Intercept)")
        means = design.X.mean(axis=0)
        centered = beta[j0] + sum(beta[j] * means[j] for j in range(len(names)) if j != j0)
        total += prior_set.intercept.logp(centered)
    for j, term in enumerate(names):
        if term in prior_set.fixed:
            total += prior_set.fixed[term].logp(beta[j])
    for k, (block, lam) in enumerate(zip(design.blocks, lams)):
        cov = lam @ lam.T
        sds = np.sqrt(np.maximum(np.diag(cov), 0.0))
        for t, term in enumerate(block.terms):
            value = prior_set.sd[(k, term)].logp(sds[t])
            if not np.isfinite(value):
                return -np.inf
            total += value
        if k in prior_set.cor:
            if np.any(sds <= 0):
                return -np.inf
            total += prior_set.cor[k].logp(cov / np.outer(sds, sds))
    return float(total)


def fit_glmm_map(gd: GLMMDesign, priors: dict | None):
    """The posterior mode under the priors, random effects integrated out by Laplace:
    minimize glmer's Laplace criterion minus twice the log prior over ``(theta, beta)``."""
    from ..fitting.glmm import GLMMDeviance, _hessian, _minimize, fit_glmm_numbers, single_threaded_blas
    from ..results.glmm_results import glmm_point_result

    if gd.family.has_dispersion:
        raise BayesLMMError(f"fit(method='map') supports the binomial and Poisson families, not {gd.family.name}; "
                            "use sample() or fit()")
    prior_set = resolve_glmm_priors(gd, priors, for_map=True)
    dev = GLMMDeviance(gd)
    k = dev.layout.size
    with single_threaded_blas():
        start = fit_glmm_numbers(dev, n_agq=0)
        theta0 = np.where(dev.layout.lower == 0, np.maximum(start.theta, 0.1), start.theta)

        def objective(par):
            theta, beta = par[:k], par[k:]
            lp = log_prior(prior_set, gd.design, beta, dev.factors(theta))
            if not np.isfinite(lp):
                return _BARRIER
            return dev.laplace(theta, beta) - 2.0 * lp

        lower = np.concatenate([dev.layout.lower, np.full(dev.p, -np.inf)])
        res, name = _minimize(objective, np.concatenate([theta0, start.beta]), lower)
        par = np.asarray(res.x)
        H = _hessian(objective, par)
        try:
            vcov = np.linalg.inv(H / 2.0)[k:, k:]
        except np.linalg.LinAlgError:
            vcov = np.full((dev.p, dev.p), np.nan)
        state = dev.pirls(par[:k], par[k:])
        criterion = dev.laplace(par[:k], par[k:])
    from ..fitting.reml import OptSummary

    opt = OptSummary(optimizer=name, initial=theta0, final=par[:k], objective=float(res.fun),
                     evaluations=dev.evaluations, seconds=0.0, converged=bool(res.success), message=str(res.message))
    numbers = replace(start, theta=par[:k], beta=par[k:], criterion=criterion, state=state,
                      vcov_beta=(vcov + vcov.T) / 2.0, hessian=H, opt=opt, n_agq=1)
    described = "\n".join(line for line in prior_set.describe(gd.design).splitlines()
                          if not line.startswith("sigma"))  # no residual scale here
    return glmm_point_result(dev, numbers, "map", gd.family, priors_used=described)


# ---------------------------------------------------------------- the PyMC model
def nested_parents(design) -> dict[int, int]:
    """For each one-term intercept bar ``k`` whose grouping is nested in another one-term
    intercept bar's (every level of ``k`` inside one level of the other), the index of
    its immediate parent (the nesting bar with the most levels) - the pairs that
    ``build_glmm_model(..., nest=...)`` can center hierarchically."""
    blocks = design.blocks
    simple = [k for k, b in enumerate(blocks) if tuple(b.terms) == ("(Intercept)",)]
    out = {}
    for k in simple:
        best = None
        for j in simple:
            if j == k or blocks[j].n_levels >= blocks[k].n_levels:
                continue
            if blocks[k].nested_in(blocks[j]) and (best is None or blocks[j].n_levels > blocks[best].n_levels):
                best = j
        if best is not None:
            out[k] = best
    return out


def build_glmm_model(gd: GLMMDesign, prior_set: P.PriorSet, centered: list[bool] | None = None,
                     nest: dict[int, int] | None = None):
    """The PyMC model: ``eta = offset + X beta + sum_k Z_k b_k``, non-centered
    ``b_k = z_k L_k'`` (``z ~ N(0, 1)``; ``L_k`` from an ``LKJCholeskyCov`` for a
    correlated bar, diagonal sds otherwise), or, for a one-term bar with ``centered[k]``,
    ``b_k ~ N(0, sd_k)`` sampled directly; the family's observed variable.

    ``nest = {k: j}`` centers the one-term intercept bar ``k``, nested in bar ``j``,
    hierarchically (Gelfand, Sahu & Carlin 1995): the total effect of each of its levels,
    ``c = b_j[parent] + b_k ~ N(b_j[parent], sd_k)``, is sampled and enters ``eta`` in
    place of both (``r_..._k`` records ``c - b_j[parent]``); a change of variables with
    unit Jacobian, so the posterior is the same."""
    import pymc as pm
    import pytensor.tensor as pt

    design = gd.design
    names = list(design.fixed_names)
    coords = {"term": names}
    for k, block in enumerate(design.blocks):
        coords[f"{block.group}__{k}__level"] = list(block.levels)
        coords[f"{block.group}__{k}__term"] = list(block.terms)
    X = design.X
    means = X.mean(axis=0)
    with pm.Model(coords=coords) as model:
        # fixed effects on mean-centered columns; the intercept prior is on that intercept
        parts = []
        for j, term in enumerate(names):
            if term == "(Intercept)":
                parts.append(prior_set.intercept.to_pymc("Intercept"))
            else:
                parts.append(prior_set.fixed[term].to_pymc(f"b_{term}"))
        slopes = [j for j, t in enumerate(names) if t != "(Intercept)"]
        coef = pt.stack(parts) if parts else pt.zeros(0)
        Xc = X - np.where(np.array(names) == "(Intercept)", 0.0, means)[None, :]
        eta = pt.as_tensor_variable(gd.offset) + pt.dot(Xc, coef)
        if "(Intercept)" in names:
            j0 = names.index("(Intercept)")
            shift = sum(coef[j] * means[j] for j in slopes) if slopes else 0.0
            beta = pt.set_subtensor(coef[j0], coef[j0] - shift)
        else:
            beta = coef
        pm.Deterministic("beta", beta, dims="term")
        nest = dict(nest or {})
        if len(set(nest.values())) != len(nest):
            raise BayesLMMError("each bar can hold at most one hierarchically centered bar")
        for k, j in nest.items():
            bk, bj = design.blocks[k], design.blocks[j]
            if (k == j or tuple(bk.terms) != ("(Intercept)",) or tuple(bj.terms) != ("(Intercept)",)
                    or k in prior_set.cor or j in prior_set.cor
                    or not bk.nested_in(bj)):
                raise BayesLMMError(f"nest: bar {k} ({bk.term.text}) is not an intercept bar nested in bar {j} "
                                    f"({bj.term.text})")
        order, total = [], {}
        while len(order) < len(design.blocks):  # parents before the bars nested in them
            ready = [k for k in range(len(design.blocks)) if k not in order and (k not in nest or nest[k] in order)]
            if not ready:
                raise BayesLMMError(f"nest {nest} has a cycle")
            order += ready
        for k in order:
            block = design.blocks[k]
            q = block.n_terms
            lev, trm = f"{block.group}__{k}__level", f"{block.group}__{k}__term"
            sd_priors = [prior_set.sd[(k, t)] for t in block.terms]
            if k in prior_set.cor:
                kinds = {type(p) for p in sd_priors}
                if len(kinds) != 1:
                    raise BayesLMMError(f"the sds of {block.term.text} need priors of one family for the LKJ "
                                        "model (e.g. all Gamma)")
                kw = {key: np.array([p.kwargs()[key] for p in sd_priors]) for key in sd_priors[0].kwargs()}
                sd_dist = getattr(pm, sd_priors[0].pymc_name).dist(**kw, shape=q)
                chol, _, _ = pm.LKJCholeskyCov(f"_chol_{k}", n=q, eta=float(prior_set.cor[k].eta),
                                               sd_dist=sd_dist, compute_corr=True)
                pm.Deterministic(f"cov_{k}", chol @ chol.T)
            else:
                sds = pt.stack([p.to_pymc(f"sd_{block.group}__{t}") for p, t in zip(sd_priors, block.terms)])
                chol = pt.diag(sds)
            if k in nest:
                # hierarchical centering: the level's total effect c = b_parent + b ~ N(b_parent, sd)
                # is sampled; it carries the parent's effect into eta
                mean = total[nest[k]][parent_levels(block.codes, block.n_levels, design.blocks[nest[k]].codes)]
                c = pm.Normal(f"_c_{k}", mean, sds[None, :], dims=(lev, trm))
                pm.Deterministic(f"r_{block.group}__{k}", c - mean, dims=(lev, trm))
                total[k] = c
            elif centered is not None and centered[k]:
                total[k] = pm.Normal(f"r_{block.group}__{k}", 0.0, sds[None, :], dims=(lev, trm))
            else:
                z = pm.Normal(f"_z_{k}", 0.0, 1.0, dims=(lev, trm))
                total[k] = pm.Deterministic(f"r_{block.group}__{k}", pt.dot(z, chol.T), dims=(lev, trm))
        absorbed = set(nest.values())
        for k, block in enumerate(design.blocks):
            if k not in absorbed:
                eta = eta + (block.X * total[k][block.codes]).sum(axis=1)
        extra = gd.family.pymc_parameters()
        # data containers, so that a compiled model can be refitted to new responses (SBC)
        observed = pm.Data("y_observed", gd.family.observed_values(gd.y, gd.weights))
        trials = pm.Data("trials", np.round(gd.weights).astype(np.int64))
        gd.family.pymc_observed("y", eta, observed, trials, extra)
    return model


def sample_glmm(gd: GLMMDesign, priors: dict | None, draws: int = 1000, tune: int = 1000, chains: int = 4,
                random_seed: int | None = None, target_accept: float = 0.9, progressbar: bool = True,
                centered: bool | list[bool] = False, nest: dict[int, int] | str | None = "auto",
                start: str = "laplace", jitter: float = 0.5, adaptation: str = "draw_diag",
                extra_doublings: int = 2, **kwargs):
    """NUTS (nutpie, numba backend) on :func:`build_glmm_model`; returns a :class:`GLMMPosterior`.

    Parameters
    ----------
    centered : bool or list of bool
        Per bar (or one bool for all one-term bars without an LKJ prior) whether its
        effects are sampled centered, ``b ~ N(0, sd)``; default non-centered.
    nest : "auto", dict or None
        Bars centered hierarchically on the bar they are nested in (``{k: parent}``, see
        :func:`build_glmm_model`). ``"auto"``: every one-term intercept bar nested in
        another whose levels the data dominate (:func:`nest_by_information`); None: none.
    start : {"laplace", "default"}
        ``"laplace"``: every chain starts at the Laplace (glmer) fit mapped to the model's
        variables (:func:`laplace_initial_point`) plus U(-``jitter``, ``jitter``) on the
        unconstrained scale, drawn per chain; ``"default"``: nutpie's (the prior's
        support point plus U(-1, 1)).
    adaptation : str
        nutpie's mass-matrix adaptation, default ``"draw_diag"`` (the draws' variances, as
        Stan): nutpie's gradient-based ``"diag"`` gives sd(LOCATION) bulk ESS 84 and R-hat
        1.06 on grouseticks.
    extra_doublings : int
        nutpie's extra trajectory doublings after the U-turn, default 2: longer
        trajectories, about twice the seconds per draw at about the same ESS per second;
        on grouseticks the sds' bulk ESS at 4 x 1000 draws goes from 340-430 (0) to
        570-760 (2) and their R-hat from up to 1.018 to at most 1.007. 0 is faster.
    **kwargs
        Passed to ``nutpie.sample``.

    Notes
    -----
    Why these defaults (validation/out/glmm_mixing_experiments.txt): on grouseticks
    (BROOD nested in LOCATION) the draw-variance mass matrix mixes the sds (ESS 400-1000)
    but the non-centered model then diverges (10-31 times) where sd(LOCATION) is large;
    centering each brood's total effect on its location's removes the divergences, and
    centered variants leave chains stuck unless they start at the Laplace fit. Together
    (with 2 extra doublings): 0 divergences, max R-hat <= 1.007 and bulk ESS >= 571 on
    every fixed effect and sd over four seeds (old default: R-hat 1.06, ESS 84).
    """
    import nutpie

    compiled, _, prior_set, _ = compile_glmm(gd, priors, centered=centered, nest=nest, start=start, jitter=jitter)
    seed = None if random_seed is None else int(random_seed)
    tree = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed, progress_bar=progressbar,
                         target_accept=target_accept, save_warmup=False, adaptation=adaptation,
                         extra_doublings=int(extra_doublings), **kwargs)
    return GLMMPosterior(gd=gd, idata=tree, prior_set=prior_set)


def compile_glmm(gd: GLMMDesign, priors: dict | None, centered: bool | list[bool] = False,
                 nest: dict[int, int] | str | None = "auto", start: str = "laplace", jitter: float = 0.5):
    """The nutpie model that :func:`sample_glmm` samples (same options), the PyMC model
    it was compiled from, its :class:`~bayeslmm.priors.PriorSet` and the hierarchically
    centered pairs in force."""
    import nutpie

    prior_set = resolve_glmm_priors(gd, priors)
    blocks = gd.design.blocks
    one_term = [b.n_terms == 1 and k not in prior_set.cor for k, b in enumerate(blocks)]
    if isinstance(centered, (bool, np.bool_)):
        centered = [bool(centered)] * len(blocks)
    if len(centered) != len(blocks):
        raise BayesLMMError(f"centered has {len(centered)} entries for {len(blocks)} random-effect bars")
    centered = [bool(c) and ok for c, ok in zip(centered, one_term)]
    if start not in ("laplace", "default"):
        raise BayesLMMError(f"start must be 'laplace' or 'default', not {start!r}")
    fit = _laplace_fit(gd) if start == "laplace" or (isinstance(nest, str) and nest == "auto") else None
    if isinstance(nest, str):
        if nest != "auto":
            raise BayesLMMError(f"nest must be 'auto', a dict {{bar: parent bar}} or None, not {nest!r}")
        nest = {} if fit is None else nest_by_information(gd, fit, prior_set)
    nest = {int(k): int(j) for k, j in (nest or {}).items()}
    model = build_glmm_model(gd, prior_set, centered, nest)
    init = {}
    for rv in model.free_RVs:
        if rv.name.startswith("_chol_"):
            q = gd.design.blocks[int(rv.name.split("_")[-1])].n_terms
            packed = np.zeros(q * (q + 1) // 2)
            packed[np.cumsum(np.arange(1, q + 1)) - 1] = 1.0
            init[rv.name] = packed
    if start == "laplace" and fit is not None:
        init.update(laplace_initial_point(gd, fit, model, centered, nest))
        compiled = nutpie.compile_pymc_model(model, backend="numba", gradient_backend="pytensor",
                                             initial_points=init, jitter_rvs=set())
        compiled = _jittered(compiled, float(jitter))
    else:
        compiled = nutpie.compile_pymc_model(model, backend="numba", gradient_backend="pytensor",
                                             initial_points=init)
    return compiled, model, prior_set, nest


def _laplace_fit(gd: GLMMDesign):
    """The glmer (Laplace) fit that starts the chains, or None if it fails (the chains
    then start at nutpie's default point). Its convergence warnings are dropped: any
    nearby point is a good start."""
    import warnings

    from ..fitting.glmm import fit_glmm_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fit_glmm_model(gd, n_agq=1)
        except (BayesLMMError, np.linalg.LinAlgError, FloatingPointError):
            return None


def level_information(gd: GLMMDesign, fit) -> list[float]:
    """Per bar, the median over its levels of ``sd^2`` times the summed PIRLS weights
    ``wt mu_eta^2 / V(mu)`` at the fit: above 1 the data dominate the prior on a level's
    effect, and the centered parametrization is the better one (Papaspiliopoulos,
    Roberts & Skold 2007). One-term bars only (NaN for the others)."""
    fam = fit.family
    w = gd.weights * fam.mu_eta(fit.eta) ** 2 / fam.variance(fit.mu)
    out = []
    for block, cov in zip(gd.design.blocks, fit.covariances):
        if block.n_terms != 1:
            out.append(float("nan"))
            continue
        per_level = np.bincount(block.codes, weights=w * block.X[:, 0] ** 2, minlength=block.n_levels)
        out.append(float(np.median(per_level) * cov[0, 0]))
    return out


def nest_by_information(gd: GLMMDesign, fit, prior_set: P.PriorSet) -> dict[int, int]:
    """The pairs of :func:`nested_parents` (no LKJ bars) whose inner bar has
    :func:`level_information` above 1: the ones to center hierarchically."""
    info = level_information(gd, fit)
    return {k: j for k, j in nested_parents(gd.design).items()
            if k not in prior_set.cor and j not in prior_set.cor and info[k] > 1.0}


def laplace_initial_point(gd: GLMMDesign, fit, model, centered: list[bool],
                          nest: dict[int, int] | None = None) -> dict[str, np.ndarray]:
    """The Laplace (glmer) fit ``fit`` as a point of :func:`build_glmm_model`'s variables: the
    fixed effects (the intercept of the mean-centered predictors), the sds (floored at
    0.1 so that a singular fit stays inside the support), ``z_k = b_k L_k'^{-1}`` from
    the conditional modes ``b_k``, ``b_k`` for a centered bar, ``b_k + b_parent`` for a
    hierarchically centered one, the negative binomial's shape (at most 1000)."""
    design = gd.design
    names = list(design.fixed_names)
    means = design.X.mean(axis=0)
    point: dict[str, np.ndarray] = {}
    for j, term in enumerate(names):
        if term == "(Intercept)":
            point["Intercept"] = np.asarray(fit.beta[j] + sum(fit.beta[i] * means[i] for i in range(len(names))
                                                              if names[i] != "(Intercept)"))
        else:
            point[f"b_{term}"] = np.asarray(fit.beta[j])
    free = {rv.name for rv in model.free_RVs}
    for k, (block, cov, b) in enumerate(zip(design.blocks, fit.covariances, fit.ranef_values)):
        sds = np.maximum(np.sqrt(np.diag(cov)), 0.1)
        if f"_chol_{k}" in free:
            raw = np.sqrt(np.diag(cov))
            corr = cov / np.outer(raw, raw) if np.all(raw > 0) else np.eye(block.n_terms)
            corr = 0.9 * corr + 0.1 * np.eye(block.n_terms)  # off the LKJ boundary
            chol = np.linalg.cholesky(corr * np.outer(sds, sds))
            point[f"_chol_{k}"] = chol[np.tril_indices(block.n_terms)]
        else:
            chol = np.diag(sds)
            for t, sd in zip(block.terms, sds):
                point[f"sd_{block.group}__{t}"] = np.asarray(sd)
        if k in (nest or {}):
            parent = nest[k]
            held_by = parent_levels(block.codes, block.n_levels, design.blocks[parent].codes)
            point[f"_c_{k}"] = np.asarray(b) + np.asarray(fit.ranef_values[parent])[held_by]
        elif centered[k]:
            point[f"r_{block.group}__{k}"] = np.asarray(b)
        else:
            point[f"_z_{k}"] = np.linalg.solve(chol, np.asarray(b).T).T
    theta = getattr(fit.family, "theta", None)  # the negative binomial's estimated shape
    if "shape" in free and theta is not None and np.isfinite(theta) and theta > 0:
        # capped: near-Poisson data drive glmer.nb's shape to ~1e7, far out in the prior's tail
        point["shape"] = np.asarray(min(float(theta), 1e3))
    return {name: value for name, value in point.items() if name in free}


def _jittered(compiled, jitter: float):
    """``compiled`` with each chain started at its initial point plus U(-jitter, jitter)
    on the unconstrained scale, drawn from the chain's seed (nutpie passes one per chain)."""
    import dataclasses

    base = compiled.initial_point_func

    def start(seed):
        point = np.asarray(base(seed), dtype=float)
        return point + np.random.default_rng(seed).uniform(-jitter, jitter, size=point.shape)

    return dataclasses.replace(compiled, initial_point_func=start)


class GLMMPosterior:
    """The posterior of a GLMM: ``idata`` (as nutpie returns it: an ArviZ 1.x DataTree
    with ``posterior`` and ``sample_stats``) and the verbs of the point fit, as posterior
    means, sds and central intervals."""

    def __init__(self, gd: GLMMDesign, idata, prior_set: P.PriorSet):
        self.gd, self.idata, self.prior_set = gd, idata, prior_set

    @property
    def design(self):
        return self.gd.design

    def _draws(self, name: str) -> np.ndarray:
        post = self.idata["posterior"] if not hasattr(self.idata, "posterior") else self.idata.posterior
        values = np.asarray(post[name])
        return values.reshape((-1,) + values.shape[2:])

    @property
    def divergences(self) -> int:
        stats = self.idata["sample_stats"] if not hasattr(self.idata, "sample_stats") else self.idata.sample_stats
        return int(np.asarray(stats["diverging"]).sum())

    def fixef_draws(self) -> np.ndarray:
        return self._draws("beta")

    def cov_draws(self) -> list[np.ndarray]:
        out = []
        for k, block in enumerate(self.design.blocks):
            if k in self.prior_set.cor:
                out.append(self._draws(f"cov_{k}"))
            else:
                sds = np.stack([self._draws(f"sd_{block.group}__{t}") for t in block.terms], axis=-1)
                out.append(np.einsum("si,ij->sij", sds**2, np.eye(block.n_terms)))
        return out

    def ranef_draws(self) -> list[np.ndarray]:
        return [self._draws(f"r_{b.group}__{k}") for k, b in enumerate(self.design.blocks)]

    @staticmethod
    def _table(draws: np.ndarray, index, prob: float) -> pd.DataFrame:
        lo, hi = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return pd.DataFrame({"mean": draws.mean(axis=0), "sd": draws.std(axis=0, ddof=1),
                             "lower": lo, "upper": hi}, index=index)

    def fixef(self, prob: float = 0.95) -> pd.DataFrame:
        return self._table(self.fixef_draws(), pd.Index(self.design.fixed_names, name="term"), prob)

    def varcorr(self, prob: float = 0.95) -> pd.DataFrame:
        """Posterior of the sds and correlations (rows as R's ``as.data.frame(VarCorr)``)."""
        from ..results.point import varcorr_layout, varcorr_values

        layout = varcorr_layout(self.design)
        layout = layout[layout["block"] >= 0].reset_index(drop=True)
        covs = self.cov_draws()
        values = varcorr_values(layout, covs, np.ones(len(covs[0])))[:, :, 1]
        frame = self._table(values, layout.index, prob)
        return pd.concat([layout[["group", "var1", "var2"]], frame], axis=1)

    def ranef(self, prob: float = 0.95) -> pd.DataFrame:
        frames = []
        for block, draws in zip(self.design.blocks, self.ranef_draws()):
            flat = draws.reshape(draws.shape[0], -1)
            index = pd.MultiIndex.from_product([[block.group], block.levels, block.terms],
                                               names=["group", "level", "term"])
            frames.append(self._table(flat, index, prob))
        return pd.concat(frames)

    def variance_draws(self) -> dict[str, np.ndarray]:
        """Per-draw latent-scale variances of Nakagawa et al. (see
        :meth:`GLMMResult.variance_components`); the count families' distribution
        variance uses each draw's intercept-only mean, ``log(mean of exp(eta_fixed))``."""
        design = self.design
        beta = self.fixef_draws()
        fixed_lp = beta @ design.X.T
        out = {"fixed": fixed_lp.var(axis=1, ddof=1), "random": np.zeros(len(beta)),
               "dispersion": np.zeros(len(beta))}
        for block, cov in zip(design.blocks, self.cov_draws()):
            value = np.einsum("ni,sij,nj->sn", block.X, cov, block.X).mean(axis=1)
            out["dispersion" if block.n_levels == self.gd.nobs else "random"] += value
        fam = self.gd.family
        if fam.latent_needs_null:
            null = np.log(np.exp(fixed_lp + self.gd.offset).mean(axis=1))
            extra = {"shape": self._draws("shape")} if fam.has_dispersion else {}
            out["distribution"] = np.array([fam.with_draws(extra, s).latent_variance(null[s])
                                            for s in range(len(beta))])
        else:
            out["distribution"] = np.full(len(beta), fam.latent_variance())
        return out

    def icc(self, prob: float = 0.95) -> pd.DataFrame:
        v = self.variance_draws()
        resid = v["distribution"] + v["dispersion"]
        draws = np.column_stack([v["random"] / (v["random"] + resid),
                                 v["random"] / (v["fixed"] + v["random"] + resid)])
        return self._table(draws, ["ICC_adjusted", "ICC_conditional"], prob)

    def r2(self, prob: float = 0.95) -> pd.DataFrame:
        v = self.variance_draws()
        total = v["fixed"] + v["random"] + v["distribution"] + v["dispersion"]
        draws = np.column_stack([v["fixed"] / total, (v["fixed"] + v["random"]) / total])
        return self._table(draws, ["R2_marginal", "R2_conditional"], prob)

    def eta_draws(self, newdata: pd.DataFrame | None = None, include_random: bool = True) -> np.ndarray:
        """(S, n) draws of the linear predictor (on the fitted data or ``newdata``; levels
        not in the fit get a zero group effect)."""
        design = self.design
        if newdata is None:
            X, off = design.X, self.gd.offset
            codes = [b.codes for b in design.blocks]
            Zx = [b.X for b in design.blocks]
        else:
            X = design.new_fixed_matrix(newdata)
            off = design.new_offset(newdata)
            off = np.zeros(len(X)) if off is None else off
            codes = [design.new_codes(b, newdata) for b in design.blocks]
            Zx = [b.new_columns(newdata) for b in design.blocks]
        eta = self.fixef_draws() @ X.T + off[None, :]
        if include_random:
            for draws, c, z in zip(self.ranef_draws(), codes, Zx):
                known = c >= 0
                eta[:, known] += np.einsum("snq,nq->sn", draws[:, c[known], :], z[known])
        return eta

    def predict(self, newdata: pd.DataFrame | None = None, type: str = "response", include_random: bool = True,
                prob: float = 0.95) -> pd.DataFrame:
        """Posterior mean, sd and central interval of the mean response (``type="response"``)
        or of the linear predictor (``"link"``) for each row."""
        eta = self.eta_draws(newdata, include_random)
        key = str(type).lower()
        if key not in ("response", "link"):
            raise BayesLMMError(f"type must be 'response' or 'link', not {type!r}")
        values = self.gd.family.linkinv(eta) if key == "response" else eta
        return self._table(values, pd.RangeIndex(values.shape[1]), prob)

    def _at_posterior_mean(self):
        """The checks of :mod:`bayeslmm.reporting.glmm_checks` read ``family``, ``gd``, ``mu``,
        ``design``, ``beta`` and ``ranef_values``: here at the posterior means."""
        from types import SimpleNamespace

        mu = self.gd.family.linkinv(self.eta_draws()).mean(axis=0)
        return SimpleNamespace(family=self.gd.family, gd=self.gd, mu=mu, design=self.design,
                               beta=self.fixef_draws().mean(axis=0),
                               ranef_values=[d.mean(axis=0) for d in self.ranef_draws()])

    def rootogram(self, max_count: int | None = None) -> pd.DataFrame:
        """Observed vs expected count frequencies at the posterior mean of each
        observation's conditional mean (counts)."""
        from ..reporting.glmm_checks import rootogram

        return rootogram(self._at_posterior_mean(), max_count=max_count)

    def binned_residuals(self, bins: int | None = None) -> pd.DataFrame:
        """Binned residuals (calibration) at the posterior mean probabilities (binomial)."""
        from ..reporting.glmm_checks import binned_residuals

        return binned_residuals(self._at_posterior_mean(), bins=bins)

    def shrinkage(self, group: str | None = None) -> pd.DataFrame:
        """No / partial / complete pooling on the link scale at the posterior means."""
        from ..reporting.glmm_checks import shrinkage

        return shrinkage(self._at_posterior_mean(), group=group)

    def summary(self, prob: float = 0.95) -> str:
        lines = ["Generalized linear mixed model, posterior by NUTS ['bayeslmm']",
                 f" Family: {self.gd.family.describe()}", f"Formula: {self.design.formula.text}",
                 f"Divergent transitions: {self.divergences}", "", "Fixed effects:",
                 self.fixef(prob).to_string(float_format=lambda v: f"{v:.4f}"), "",
                 "Group-level sds and correlations:",
                 self.varcorr(prob).to_string(float_format=lambda v: f"{v:.4f}")]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()
