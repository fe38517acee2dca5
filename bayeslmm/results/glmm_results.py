"""Stage 4 for GLMMs: the point-fit result, laid out as glmer reports it.

Built once by :func:`glmm_point_result` from the optimizer's numbers; every family-specific
number (deviance residuals, the latent variance of ICC/R2, simulation) comes from the
:class:`~bayeslmm.family.Family` the model holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import BayesLMMError
from ..family import Family
from ..fitting.reml import OptSummary
from ..frontend.glmm_design import GLMMDesign
from .point import InformationCriteria, merge_by_group, varcorr_layout, varcorr_values

_METHOD_TEXT = {
    "laplace": "Laplace Approximation",
    "agq": "Adaptive Gauss-Hermite Quadrature",
    "nagq0": "nAGQ = 0 (beta by PIRLS)",
    "map": "maximum a posteriori (Laplace-integrated random effects)",
}


@dataclass(frozen=True, eq=False)
class GLMMResult(InformationCriteria):
    """A glmer-like point fit (Laplace, AGQ, nAGQ = 0 or MAP).

    Attributes mirror lme4's accessors: ``theta``, ``loglik``, ``deviance`` (glmer's:
    the sum of squared deviance residuals at the conditional modes), ``aic``, ``bic``,
    ``nobs``, ``is_singular``; ``criterion`` is the minimized ``-2 log L`` (Laplace or
    AGQ) and ``family`` the fitted :class:`~bayeslmm.family.Family` (with the estimated
    shape for the negative binomial).
    """

    gd: GLMMDesign
    family: Family
    method: str
    n_agq: int
    theta: np.ndarray
    beta: np.ndarray
    vcov_beta: np.ndarray
    covariances: tuple[np.ndarray, ...]
    ranef_values: tuple[np.ndarray, ...]
    ranef_condvar: tuple[np.ndarray, ...]
    criterion: float
    eta: np.ndarray = field(repr=False)
    mu: np.ndarray = field(repr=False)
    dev_resid: np.ndarray = field(repr=False)
    n_params: int = 0
    theta_names: tuple[str, ...] = ()
    theta_lower: np.ndarray = field(default=None, repr=False)
    opt: OptSummary | None = None
    priors_used: str | None = None

    # ---------------------------------------------------------- shared facts
    @property
    def design(self):
        return self.gd.design

    @property
    def nobs(self) -> int:
        return self.gd.nobs

    @property
    def formula(self) -> str:
        return self.design.formula.text

    def ngroups(self) -> dict[str, int]:
        return {b.group: b.n_levels for b in self.design.blocks}

    # ---------------------------------------------------------- lme4's numbers
    @property
    def loglik(self) -> float:
        """``-criterion / 2``; as in lme4, the AGQ log-likelihood is built from deviance
        residuals and omits the family's constants that the Laplace one includes."""
        return -0.5 * self.criterion

    @property
    def deviance(self) -> float:
        """glmer's ``deviance()``: the sum of the deviance residuals at the conditional modes."""
        return float(self.dev_resid.sum())

    @property
    def is_singular(self) -> bool:
        """lme4's rule: a bounded component of theta within 1e-4 of its bound 0."""
        bounded = self.theta_lower == 0
        return bool(np.any(self.theta[bounded] < 1e-4))

    # ---------------------------------------------------------- tables
    def fixef(self) -> pd.DataFrame:
        """Fixed effects with Wald z tests: ``estimate, std_error, z_value, p_value``."""
        se = np.sqrt(np.diag(self.vcov_beta))
        z = self.beta / se
        return pd.DataFrame({"estimate": self.beta, "std_error": se, "z_value": z,
                             "p_value": 2.0 * stats.norm.sf(np.abs(z))},
                            index=pd.Index(self.design.fixed_names, name="term"))

    def vcov(self) -> pd.DataFrame:
        names = list(self.design.fixed_names)
        return pd.DataFrame(self.vcov_beta, index=names, columns=names)

    def varcorr(self) -> pd.DataFrame:
        """R's ``as.data.frame(VarCorr(fit))``: ``group, var1, var2, vcov, sdcor`` (no
        residual row: binomial and Poisson models have no residual scale)."""
        layout = varcorr_layout(self.design)
        layout = layout[layout["block"] >= 0].reset_index(drop=True)
        values = varcorr_values(layout, [c[None] for c in self.covariances], np.ones(1))[0]
        frame = layout[["group", "var1", "var2"]].copy()
        frame["vcov"] = values[:, 0]
        frame["sdcor"] = values[:, 1]
        return frame

    def ranef(self, tidy: bool = False, prob: float = 0.95):
        """Conditional modes of the group effects on the link scale.

        ``tidy=False``: dict group -> DataFrame (levels x terms). ``tidy=True``: a long
        DataFrame with ``group, level, term, estimate, std_error`` (the conditional sd,
        lme4's ``condVar``), ``lower, upper``.
        """
        if not tidy:
            return merge_by_group(self.design, self.ranef_values)
        z = stats.norm.ppf(0.5 + prob / 2)
        frames = []
        for block, b, cv in zip(self.design.blocks, self.ranef_values, self.ranef_condvar):
            sd = np.sqrt(np.einsum("jii->ji", cv))
            frames.append(pd.DataFrame({
                "group": block.group, "level": np.repeat(block.levels, block.n_terms),
                "term": np.tile(block.terms, block.n_levels), "estimate": b.ravel(),
                "std_error": sd.ravel(), "lower": b.ravel() - z * sd.ravel(),
                "upper": b.ravel() + z * sd.ravel()}))
        return pd.concat(frames, ignore_index=True)

    def coef(self) -> dict[str, pd.DataFrame]:
        """Fixed plus random effects per level (lme4's ``coef``), link scale."""
        fixed = pd.Series(self.beta, index=self.design.fixed_names)
        out = {}
        for group, frame in self.ranef().items():
            total = pd.DataFrame({name: np.full(len(frame), value) for name, value in fixed.items()},
                                 index=frame.index)
            for term in frame.columns:
                total[term] = total[term] + frame[term] if term in total else frame[term]
            out[group] = total
        return out

    # ---------------------------------------------------------- prediction
    def _eta(self, newdata=None, include_random: bool = True) -> np.ndarray:
        design = self.design
        if newdata is None:
            if include_random:
                return self.eta.copy()
            return self.gd.offset + design.X @ self.beta
        X = design.new_fixed_matrix(newdata)
        off = design.new_offset(newdata)
        eta = X @ self.beta + (0.0 if off is None else off)
        if include_random:
            for block, b in zip(design.blocks, self.ranef_values):
                codes = design.new_codes(block, newdata)
                Zx = block.new_columns(newdata)
                known = codes >= 0
                eta[known] += np.einsum("nq,nq->n", Zx[known], b[codes[known]])
        return eta

    def predict(self, newdata: pd.DataFrame | None = None, type: str = "response",
                include_random: bool = True) -> np.ndarray:
        """Predictions (lme4's ``predict.merMod``).

        Parameters
        ----------
        newdata : DataFrame, optional
            Default: the fitted data. Levels not in the fit get a zero group effect.
        type : {"response", "link"}
            The mean (probability, expected count) or the linear predictor.
        include_random : bool
            False is lme4's ``re.form = NA``.
        """
        eta = self._eta(newdata, include_random)
        key = str(type).lower()
        if key == "link":
            return eta
        if key == "response":
            return self.family.linkinv(eta)
        raise BayesLMMError(f"type must be 'response' or 'link', not {type!r}")

    def fitted(self) -> np.ndarray:
        return self.mu.copy()

    def residuals(self, type: str = "deviance") -> np.ndarray:
        """``"deviance"``, ``"pearson"`` or ``"response"`` residuals (as lme4)."""
        y, mu, wt = self.gd.y, self.mu, self.gd.weights
        key = str(type).lower()
        if key == "deviance":
            return np.sign(y - mu) * np.sqrt(np.maximum(self.dev_resid, 0.0))
        if key == "pearson":
            return (y - mu) * np.sqrt(wt / self.family.variance(mu))
        if key == "response":
            return y - mu
        raise BayesLMMError(f"type must be 'deviance', 'pearson' or 'response', not {type!r}")

    def simulate(self, nsim: int = 1, random_seed=None, use_u: bool = False) -> np.ndarray:
        """``(nsim, n)`` responses simulated from the fit: new group effects drawn from
        their fitted distribution (lme4's default ``use.u = FALSE``), or the conditional
        modes kept (``use_u=True``). Binomial responses are proportions."""
        rng = np.random.default_rng(random_seed)
        design = self.design
        base = self.gd.offset + design.X @ self.beta
        out = np.empty((nsim, self.nobs))
        for s in range(nsim):
            eta = base.copy()
            for block, cov, b in zip(design.blocks, self.covariances, self.ranef_values):
                effects = b if use_u else rng.multivariate_normal(np.zeros(block.n_terms), cov,
                                                                  size=block.n_levels, method="svd")
                eta += np.einsum("nq,nq->n", block.X, effects[block.codes])
            out[s] = self.family.simulate(self.family.linkinv(eta), self.gd.weights, rng)
        return out

    # ---------------------------------------------------------- checks (bayeslmm.reporting.glmm_checks)
    def quantile_residuals(self, nsim: int = 250, random_seed=None, conditional: bool = False):
        """DHARMa-style simulated quantile residuals with uniformity, dispersion and
        zero-inflation tests; see :func:`bayeslmm.reporting.glmm_checks.quantile_residuals`."""
        from ..reporting.glmm_checks import quantile_residuals

        return quantile_residuals(self, nsim=nsim, random_seed=random_seed, conditional=conditional)

    def rootogram(self, max_count: int | None = None) -> pd.DataFrame:
        """Observed vs expected count frequencies; see :func:`bayeslmm.reporting.glmm_checks.rootogram`."""
        from ..reporting.glmm_checks import rootogram

        return rootogram(self, max_count=max_count)

    def binned_residuals(self, bins: int | None = None) -> pd.DataFrame:
        """Binned residuals for binary/binomial fits; see :func:`bayeslmm.reporting.glmm_checks.binned_residuals`."""
        from ..reporting.glmm_checks import binned_residuals

        return binned_residuals(self, bins=bins)

    def shrinkage(self, group: str | None = None) -> pd.DataFrame:
        """No, partial and complete pooling on the link scale; see :func:`bayeslmm.reporting.glmm_checks.shrinkage`."""
        from ..reporting.glmm_checks import shrinkage

        return shrinkage(self, group=group)

    # ---------------------------------------------------------- ICC / R2
    @cached_property
    def null_intercept(self) -> float | None:
        """Intercept of the null model (same random part, ``~ 1`` fixed), fitted by
        Laplace as ``performance`` does for log-link counts; None when not needed."""
        if not self.family.latent_needs_null:
            return None
        from dataclasses import replace

        from ..fitting.glmm import GLMMDeviance, fit_glmm_numbers
        from ..frontend.glmm_design import GLMMDesign

        design = self.design
        X1 = np.ones((self.nobs, 1))
        null_design = replace(design, X=X1, fixed_names=("(Intercept)",))
        gd = GLMMDesign(design=null_design, family=self.family, y=self.gd.y, weights=self.gd.weights,
                        offset=self.gd.offset, response_label=self.gd.response_label)
        return float(fit_glmm_numbers(GLMMDeviance(gd), n_agq=1).beta[0])

    def variance_components(self) -> dict[str, float]:
        """Nakagawa et al.'s variances on the latent scale, as performance 0.10 computes
        them: ``fixed`` (variance of X beta, n - 1 denominator), ``random`` (mean of
        ``z' Sigma z`` over rows, bars with fewer levels than observations),
        ``dispersion`` (observation-level bars), ``distribution`` (the family's)."""
        design = self.design
        fixed = float(np.var(design.X @ self.beta, ddof=1))
        random = dispersion = 0.0
        for block, cov in zip(design.blocks, self.covariances):
            value = float(np.einsum("ni,ij,nj->n", block.X, cov, block.X).mean())
            if block.n_levels == self.nobs:
                dispersion += value
            else:
                random += value
        dist = self.family.latent_variance(self.null_intercept)
        return {"fixed": fixed, "random": random, "dispersion": dispersion, "distribution": dist}

    def icc(self) -> pd.Series:
        """Adjusted and conditional ICC on the latent scale (performance's ``icc``)."""
        v = self.variance_components()
        residual = v["distribution"] + v["dispersion"]
        return pd.Series({"ICC_adjusted": v["random"] / (v["random"] + residual),
                          "ICC_conditional": v["random"] / (v["fixed"] + v["random"] + residual)})

    def r2(self) -> pd.Series:
        """Marginal and conditional R2 on the latent scale (performance's ``r2_nakagawa``)."""
        v = self.variance_components()
        total = v["fixed"] + v["random"] + v["distribution"] + v["dispersion"]
        return pd.Series({"R2_marginal": v["fixed"] / total,
                          "R2_conditional": (v["fixed"] + v["random"]) / total})

    # ---------------------------------------------------------- text
    def summary(self) -> str:
        """A text summary laid out like ``summary(glmer(...))``."""
        from ..reporting.glmm_summary import glmm_summary

        return glmm_summary(self)

    def __repr__(self) -> str:
        return self.summary()


def anova(*fits: GLMMResult) -> pd.DataFrame:
    """Likelihood-ratio tests between nested GLMM fits (lme4's ``anova``), ordered by the
    number of parameters: ``npar, AIC, BIC, logLik, deviance, Chisq, Df, p_value``."""
    if len(fits) < 2:
        raise BayesLMMError("anova needs at least two fits to compare")
    n = {f.nobs for f in fits}
    if len(n) > 1:
        raise BayesLMMError(f"the fits use different numbers of observations ({sorted(n)}); refit on the same rows")
    ordered = sorted(fits, key=lambda f: f.n_params)
    rows, previous = [], None
    for f in ordered:
        row = {"npar": f.n_params, "AIC": f.aic, "BIC": f.bic, "logLik": f.loglik,
               "deviance": f.criterion, "Chisq": np.nan, "Df": np.nan, "p_value": np.nan}
        if previous is not None:
            chisq = max(previous.criterion - f.criterion, 0.0)
            df = f.n_params - previous.n_params
            row.update(Chisq=chisq, Df=df, p_value=float(stats.chi2.sf(chisq, df)) if df > 0 else np.nan)
        rows.append(row)
        previous = f
    return pd.DataFrame(rows, index=[f.formula for f in ordered])


def glmm_point_result(dev, numbers, method: str, family: Family, extra_params: int = 0,
                      priors_used: str | None = None, criterion: float | None = None) -> GLMMResult:
    """Assemble a :class:`GLMMResult` from :func:`~bayeslmm.fitting.glmm.fit_glmm_numbers`."""
    state = numbers.state
    lams = dev.factors(numbers.theta)
    covs = tuple(lam @ lam.T for lam in lams)
    ranef, cond = [], []
    M11, Mrest = state.factor.inverse_blocks()
    offset = 0
    for k, (block, lam) in enumerate(zip(dev.design.blocks, lams)):
        size = block.n_levels * block.n_terms
        u = state.u[offset: offset + size].reshape(block.n_levels, block.n_terms)
        ranef.append(u @ lam.T)
        if k == 0:
            inner = M11
        else:
            start = offset - dev.J1 * dev.q1
            idx = start + np.arange(size).reshape(block.n_levels, block.n_terms)
            inner = Mrest[idx[:, :, None], idx[:, None, :]]
        cond.append(np.einsum("ik,jkl,ml->jim", lam, inner, lam))
        offset += size
    n_params = dev.p + dev.layout.size + extra_params
    return GLMMResult(gd=dev.gd, family=family, method=method, n_agq=numbers.n_agq,
                      theta=np.asarray(numbers.theta), beta=np.asarray(numbers.beta),
                      vcov_beta=np.asarray(numbers.vcov_beta), covariances=covs,
                      ranef_values=tuple(ranef), ranef_condvar=tuple(cond),
                      criterion=float(numbers.criterion if criterion is None else criterion),
                      eta=state.eta, mu=state.mu, dev_resid=state.dev_resid, n_params=n_params,
                      theta_names=dev.layout.names, theta_lower=dev.layout.lower, opt=numbers.opt,
                      priors_used=priors_used)
