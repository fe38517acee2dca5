"""Stage 3b: MAP, the mode of the marginal posterior under the model's priors.

The random effects are integrated out exactly: for fixed ``theta`` the Gaussian marginal
likelihood of ``(beta, sigma)`` is available in closed form from the same blocked
factorization the REML back end uses (Bates et al. 2015, eq. 32)::

    -2 log L(theta, beta, sigma) = log|L_theta|^2 + n log(2 pi sigma^2)
                                   + (r^2_theta + |R_X (beta - beta_hat_theta)|^2) / sigma^2

To it we add minus twice the log prior densities, on the natural scale of every
parameter: each random-effect sd ``sigma * |row t of lambda_k|``, each correlation
matrix (LKJ), sigma and the fixed effects (the intercept prior on the intercept of the
mean-centered predictors). The optimization is nested like lme4's: an outer bounded
derivative-free search over ``theta`` (one factorization per step, exactly as REML), an
inner Newton search over ``(beta, log sigma)`` that needs no factorization (its objective is
a closed-form quadratic in beta plus the prior terms; L-BFGS-B where Newton cannot go on).

With the default priors (a Gamma(2, rate) on every sd and an LKJ(2) on every correlation
matrix, which vanish at sd = 0 and at |correlation| = 1, as in Chung et al. 2013 / blme)
the mode stays strictly inside the parameter space where REML is singular.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln

from .. import priors as P
from ..frontend.design import Design
from .reml import ProfiledDeviance, _blas_single_thread, optimize_deviance, point_result

_LOG_2PI = np.log(2.0 * np.pi)
#: stands in for +inf (a density of zero) so the derivative-free search can compare values
_BARRIER = 1e12


def log_density(prior: P.Prior, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Sum of log densities of ``prior`` at ``x``, and the first and second derivatives at
    each ``x``.

    Closed forms in numpy (scipy.stats is too slow inside the inner optimization).
    """
    x = np.asarray(x, dtype=float)
    zero = np.zeros_like(x)
    if isinstance(prior, P.Flat):
        return 0.0, zero, zero
    if prior.support == "positive" and np.any(x <= 0):
        return -np.inf, zero, zero
    if isinstance(prior, P.Normal):
        z = (x - prior.mu) / prior.sigma
        value = float(np.sum(-0.5 * z**2 - np.log(prior.sigma) - 0.5 * _LOG_2PI))
        return value, -z / prior.sigma, np.full_like(x, -1.0 / prior.sigma**2)
    if isinstance(prior, (P.StudentT, P.HalfStudentT)):
        mu = getattr(prior, "mu", 0.0)
        nu, sigma = prior.nu, prior.sigma
        z = (x - mu) / sigma
        const = gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(nu * np.pi) - np.log(sigma)
        if isinstance(prior, P.HalfStudentT):
            const += np.log(2.0)
        value = np.sum(const - (nu + 1) / 2 * np.log1p(z**2 / nu))
        return (float(value), -(nu + 1) * z / (sigma * (nu + z**2)),
                -(nu + 1) * (nu - z**2) / (sigma**2 * (nu + z**2) ** 2))
    if isinstance(prior, P.HalfNormal):
        z = x / prior.sigma
        value = float(np.sum(np.log(2.0) - 0.5 * z**2 - np.log(prior.sigma) - 0.5 * _LOG_2PI))
        return value, -z / prior.sigma, np.full_like(x, -1.0 / prior.sigma**2)
    if isinstance(prior, P.Exponential):
        return float(np.sum(np.log(prior.lam) - prior.lam * x)), np.full_like(x, -prior.lam), zero
    if isinstance(prior, P.Gamma):
        a, b = prior.alpha, prior.beta
        value = np.sum(a * np.log(b) - gammaln(a) + (a - 1) * np.log(x) - b * x)
        if a == 1:  # the exponential: (a - 1) / x would be 0 / 0 where x**2 underflows
            return float(value), np.full_like(x, -b), zero
        with np.errstate(over="ignore", divide="ignore"):
            return float(value), (a - 1) / x - b, -(a - 1) / x**2
    if isinstance(prior, P.LogNormal):
        lx = np.log(x)
        s2 = prior.sigma**2
        value = np.sum(-lx - np.log(prior.sigma) - 0.5 * _LOG_2PI - (lx - prior.mu) ** 2 / (2 * s2))
        return float(value), -1.0 / x - (lx - prior.mu) / (s2 * x), (1.0 - (1.0 - (lx - prior.mu)) / s2) / x**2
    raise P.PriorError(f"no log density for {prior}")


class MapObjective:
    """``theta -> min over (beta, log sigma)`` of minus twice the log posterior.

    Works on the standardized response (``y / s``); priors are evaluated on the user's
    scale. ``evaluations`` counts factorizations, as for the deviance.
    """

    def __init__(self, deviance: ProfiledDeviance, prior_set: P.PriorSet):
        self.deviance = deviance
        self.priors = prior_set
        design = deviance.design
        self.scale = deviance.y_scale
        self.n, self.p = deviance.n, deviance.p
        names = list(design.fixed_names)
        self.intercept = names.index("(Intercept)") if "(Intercept)" in names else None
        # the intercept prior is on the intercept of the mean-centered predictors
        self.centering = design.X.mean(axis=0)
        if self.intercept is not None:
            self.centering[self.intercept] = 1.0
        self.fixed_priors = [(j, prior_set.fixed[name]) for j, name in enumerate(names)
                             if j != self.intercept]
        self.sd_priors = [[prior_set.sd[(k, term)] for term in block.terms]
                          for k, block in enumerate(design.blocks)]
        self._warm: np.ndarray | None = None
        self.last: dict | None = None

    @property
    def evaluations(self) -> int:
        return self.deviance.evaluations

    # -- pieces that depend on theta only
    def _theta_terms(self, theta: np.ndarray, lambdas: list[np.ndarray]) -> tuple[float, np.ndarray]:
        """(-2 log LKJ over bars, relative sd factors |row t of lambda_k| for every sd)."""
        penalty = 0.0
        for k, lam in enumerate(lambdas):
            if k in self.priors.cor:
                cov = lam @ lam.T
                d = np.sqrt(np.diag(cov))
                if np.any(d == 0):
                    return _BARRIER, np.zeros(0)
                penalty -= 2.0 * self.priors.cor[k].logp(cov / np.outer(d, d))
        rel = np.concatenate([np.sqrt(np.sum(lam**2, axis=1)) for lam in lambdas])
        return penalty, rel

    def _inner(self, x: np.ndarray, sol, rel: np.ndarray, hessian: bool = False):
        """-2 log posterior (up to constants) in (beta', tau = log sigma'), its gradient and,
        if asked, its Hessian."""
        s, n, p = self.scale, self.n, self.p
        beta, tau = x[:p], x[p]
        R = sol.RX_lower
        Rd = R.T @ (beta - sol.beta)
        Q = sol.pwrss + Rd @ Rd
        e2 = np.exp(-2.0 * tau)
        value = 2.0 * n * tau + Q * e2
        grad = np.empty(p + 1)
        dQ = 2.0 * (R @ Rd)
        grad[:p] = e2 * dQ
        grad[p] = 2.0 * n - 2.0 * Q * e2
        H = np.empty((p + 1, p + 1)) if hessian else None
        if hessian:
            H[:p, :p] = 2.0 * e2 * (R @ R.T)
            H[:p, p] = H[p, :p] = -2.0 * e2 * dQ
            H[p, p] = 4.0 * Q * e2
        # random-effect sds and sigma are sigma' * s * c: d/dtau f(x) = f'(x) x,
        # d2/dtau2 f(x) = f''(x) x^2 + f'(x) x
        sigma = s * np.exp(tau)
        for prior, c in self._scale_priors(rel):
            x_nat = sigma * c
            lp, dlp, d2lp = log_density(prior, x_nat)
            value -= 2.0 * lp
            grad[p] -= 2.0 * float(dlp) * x_nat
            if hessian:
                H[p, p] -= 2.0 * (float(d2lp) * x_nat**2 + float(dlp) * x_nat)
        for j, prior in self.fixed_priors:
            lp, dlp, d2lp = log_density(prior, s * beta[j])
            value -= 2.0 * lp
            grad[j] -= 2.0 * s * float(dlp)
            if hessian:
                H[j, j] -= 2.0 * s**2 * float(d2lp)
        if self.intercept is not None:
            lp, dlp, d2lp = log_density(self.priors.intercept, s * (self.centering @ beta))
            value -= 2.0 * lp
            grad[:p] -= 2.0 * s * float(dlp) * self.centering
            if hessian:
                H[:p, :p] -= 2.0 * s**2 * float(d2lp) * np.outer(self.centering, self.centering)
        if not np.isfinite(value):
            return _BARRIER, np.zeros(p + 1), H
        return value, grad, H

    def _scale_priors(self, rel: np.ndarray):
        """(prior, relative factor) for every random-effect sd, then sigma's (factor 1)."""
        flat_sd = [prior for priors in self.sd_priors for prior in priors]
        return list(zip(flat_sd, rel)) + [(self.priors.sigma, 1.0)]

    def _newton(self, start: np.ndarray, sol, rel: np.ndarray, max_iter: int = 50):
        """Newton's method with a backtracking line search on the smooth inner problem
        (converges in a few steps from the previous outer point's optimum); ``None`` where
        the Hessian is not positive definite or the search stalls, and the caller falls
        back to L-BFGS-B."""
        x = start.copy()
        f, g, H = self._inner(x, sol, rel, hessian=True)
        for _ in range(max_iter):
            if f >= _BARRIER:
                return None
            try:
                chol = np.linalg.cholesky(H)
            except np.linalg.LinAlgError:
                return None
            step = -np.linalg.solve(chol.T, np.linalg.solve(chol, g))
            decrement = -(g @ step)  # the Newton decrement squared: f - min of the quadratic model, x2
            if decrement < 1e-13 * max(1.0, abs(f)):
                return x, f
            t = 1.0
            while True:
                x_new = x + t * step
                f_new, g_new, H_new = self._inner(x_new, sol, rel, hessian=True)
                if f_new <= f - 1e-4 * t * decrement:
                    break
                t *= 0.5
                if t < 1e-8:
                    return None
            x, f, g, H = x_new, f_new, g_new, H_new
        return None

    def solve(self, theta: np.ndarray) -> dict:
        """The inner optimum at ``theta``: beta, sigma (user's scale), the objective and
        the ML deviance there."""
        sol = self.deviance.solve(theta)
        penalty, rel = self._theta_terms(np.asarray(theta), sol.factors)
        if penalty >= _BARRIER or np.any(rel == 0) and self._sd_vanishes_at_zero():
            return {"objective": _BARRIER}
        start = self._warm if self._warm is not None else np.append(
            sol.beta, 0.5 * np.log(sol.pwrss / self.n))
        found = self._newton(start, sol, rel)
        if found is None:
            inner = minimize(lambda x: self._inner(x, sol, rel)[:2], start, jac=True, method="L-BFGS-B",
                             options={"ftol": 1e-13, "gtol": 1e-8, "maxiter": 500})
            found = inner.x, inner.fun
        x, inner_value = found
        self._warm = x
        beta, tau = x[:self.p], x[self.p]
        diff = sol.RX_lower.T @ (beta - sol.beta)
        ml_deviance = (sol.logdet_L + self.n * (_LOG_2PI + 2.0 * tau) + (sol.pwrss + diff @ diff) * np.exp(-2 * tau)
                       + 2.0 * self.n * np.log(self.scale))
        objective = sol.logdet_L + penalty + inner_value
        return {"objective": float(objective), "beta": beta * self.scale,
                "sigma": float(np.exp(tau) * self.scale), "ml_deviance": float(ml_deviance)}

    def _sd_vanishes_at_zero(self) -> bool:
        with np.errstate(divide="ignore", over="ignore"):  # derivatives at 1e-300 are not used
            return any(log_density(prior, np.array([1e-300]))[0] < -600
                       for priors in self.sd_priors for prior in priors)

    def __call__(self, theta: np.ndarray) -> float:
        return self.solve(theta)["objective"]


def fit_map(design: Design, priors: dict | None = None):
    """Fit by MAP under ``priors`` (defaults in :mod:`bayeslmm.priors`).

    Returns
    -------
    PointResult
        ``method == "map"``; ``criterion`` and ``loglik`` are the ML deviance and
        log-likelihood at the mode; ``std_error`` of the fixed effects is conditional
        on the covariance parameters (as REML's is); ``summary()`` lists the priors.
    """
    prior_set = P.resolve_priors(design, priors, for_map=True)
    deviance = ProfiledDeviance(design, reml=False)
    objective = MapObjective(deviance, prior_set)
    # optimize on the internally scaled theta, as REML does
    with _blas_single_thread():
        internal, opt = optimize_deviance(lambda t: objective(deviance.from_internal(t)), deviance.layout.initial(),
                                          deviance.layout.lower, counter=deviance)
    theta = deviance.from_internal(internal)
    best = objective.solve(theta)
    return point_result(deviance, theta, opt, method="map", beta=best["beta"], sigma=best["sigma"],
                        criterion=best["ml_deviance"], priors_used=prior_set.describe(design))
