"""Stage 4: result types.

Both back ends hand their numbers to a subclass of :class:`FitResult`. A result is
built once, complete, and is not changed afterwards. Every reporting verb is written
against four primitives that both kinds of result provide as "draws" (a point fit is a
posterior with one draw):

- ``fixef_draws()``  -> (S, p) fixed effects
- ``sigma_draws()``  -> (S,) residual standard deviation
- ``cov_draws()``    -> one (S, q, q) covariance array per bar
- ``ranef_draws()``  -> one (S, levels, q) array of group effects per bar
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..frontend.design import Design

if TYPE_CHECKING:
    from ..fitting.reml import OptSummary


class FitResult(ABC):
    """Common base of :class:`PointResult` and the posterior result.

    Subclasses set ``design`` and implement the four draw primitives.
    """

    design: Design

    # ------------------------------------------------------------ primitives
    @abstractmethod
    def fixef_draws(self) -> np.ndarray:
        """(S, p) draws of the fixed effects."""

    @abstractmethod
    def sigma_draws(self) -> np.ndarray:
        """(S,) draws of the residual standard deviation."""

    @abstractmethod
    def cov_draws(self) -> list[np.ndarray]:
        """One (S, q, q) array of random-effect covariance draws per bar."""

    @abstractmethod
    def ranef_draws(self) -> list[np.ndarray]:
        """One (S, levels, q) array of group-effect draws per bar."""

    # ------------------------------------------------------------ shared facts
    @property
    def nobs(self) -> int:
        """Number of observations used in the fit."""
        return self.design.nobs

    @property
    def formula(self) -> str:
        return self.design.formula.text

    def ngroups(self) -> dict[str, int]:
        """Number of levels of each grouping factor."""
        return {block.group: block.n_levels for block in self.design.blocks}

    def fitted_draws(self, include_random: bool = True) -> np.ndarray:
        """(S, n) fitted values on the data the model was fitted to."""
        eta = self.fixef_draws() @ self.design.X.T
        if include_random:
            for block, b in zip(self.design.blocks, self.ranef_draws()):
                eta = eta + np.einsum("snq,nq->sn", b[:, block.codes, :], block.X)
        return eta

    # ------------------------------------------------------------ reporting verbs
    # Thin wrappers: the numbers live in report.py and the figures in plots.py, both
    # written once against the draw primitives above.
    def icc(self, prob: float = 0.95, draws: bool = False):
        """Adjusted and by-group intraclass correlations (Nakagawa et al. 2017); see
        :func:`bayeslmm.reporting.report.icc`."""
        from ..reporting import report
        return report.icc(self, prob=prob, draws=draws)

    def r2(self, prob: float = 0.95, draws: bool = False):
        """Marginal and conditional R2 (Nakagawa et al. 2017); see :func:`bayeslmm.reporting.report.r2`."""
        from ..reporting import report
        return report.r2(self, prob=prob, draws=draws)

    def predict(self, newdata, include_random: bool = True, kind: str = "mean",
                allow_new_levels: bool = True, random_seed=None, prob: float = 0.95):
        """Predictions for new data; see :func:`bayeslmm.reporting.report.predict`."""
        from ..reporting import report
        return report.predict(self, newdata, include_random=include_random, kind=kind,
                              allow_new_levels=allow_new_levels, random_seed=random_seed, prob=prob)

    def pooling(self, group: str | None = None):
        """No-, complete- and partial-pooling estimates per level; see
        :func:`bayeslmm.reporting.report.pooling`."""
        from ..reporting import report
        return report.pooling(self, group=group)

    def loo(self, **kwargs):
        """PSIS-LOO (posteriors only); see :func:`bayeslmm.reporting.report.loo`."""
        from ..reporting import report
        return report.loo(self, **kwargs)

    def tidy(self, effects=("fixed", "ran_pars"), prob: float = 0.95):
        """Parameters as a long DataFrame (broom.mixed's ``tidy``); see :func:`bayeslmm.reporting.report.tidy`."""
        from ..reporting import report
        return report.tidy(self, effects=effects, prob=prob)

    def glance(self):
        """One row of model-level numbers (broom.mixed's ``glance``)."""
        from ..reporting import report
        return report.glance(self)

    def augment(self):
        """The data with fitted values and residuals (broom.mixed's ``augment``)."""
        from ..reporting import report
        return report.augment(self)

    def ppc(self, draws: int = 100, random_seed=None):
        """Posterior predictive check; returns a :class:`bayeslmm.reporting.report.PPCheck`
        (``figure``, ``pvalues``, ``y_rep``). See :func:`bayeslmm.reporting.plots.ppc`."""
        from ..reporting import plots
        return plots.ppc(self, draws=draws, random_seed=random_seed)

    def check_residuals(self, draws: int = 100, random_seed=None):
        """Residual and random-effect normality diagnostics (a matplotlib Figure);
        see :func:`bayeslmm.reporting.plots.check_residuals`."""
        from ..reporting import plots
        return plots.check_residuals(self, draws=draws, random_seed=random_seed)

    def plot_icc(self, x: str, prob: float = 0.95):
        """ICC as a function of a random-slope variable; see :func:`bayeslmm.reporting.plots.plot_icc`."""
        from ..reporting import plots
        return plots.plot_icc(self, x=x, prob=prob)

    def plot_ranef(self, prob: float = 0.95):
        """Caterpillar plot of the group effects; see :func:`bayeslmm.reporting.plots.plot_ranef`."""
        from ..reporting import plots
        return plots.plot_ranef(self, prob=prob)

    def plot_shrinkage(self, group: str | None = None):
        """No, complete and partial pooling with arrows; see :func:`bayeslmm.reporting.plots.plot_shrinkage`."""
        from ..reporting import plots
        return plots.plot_shrinkage(self, group=group)

    def plot_groups(self, group: str | None = None, x: str | None = None, max_panels: int = 12):
        """Data per group with the three fitted lines; see :func:`bayeslmm.reporting.plots.plot_groups`."""
        from ..reporting import plots
        return plots.plot_groups(self, group=group, x=x, max_panels=max_panels)


# ---------------------------------------------------------------- varcorr layout
def varcorr_layout(design: Design) -> pd.DataFrame:
    """The rows of R's ``as.data.frame(VarCorr(fit))`` for ``design``: columns
    ``group``, ``var1``, ``var2``, plus ``block``, ``i``, ``j`` locating each row's
    entry in the bar's covariance matrix (``block = -1`` for the residual)."""
    rows = []
    seen: dict[str, int] = {}

    def group_name(group: str) -> str:
        count = seen.get(group, 0)
        seen[group] = count + 1
        return group if count == 0 else f"{group}.{count}"

    for k, block in enumerate(design.blocks):
        if block.correlated:
            name = group_name(block.group)
            for i, term in enumerate(block.terms):
                rows.append((name, term, None, k, i, i))
            for i in range(block.n_terms):
                for j in range(i + 1, block.n_terms):
                    rows.append((name, block.terms[i], block.terms[j], k, i, j))
        else:
            # lme4 expands (x || g) into separate bars: g, g.1, ...
            for i, term in enumerate(block.terms):
                rows.append((group_name(block.group), term, None, k, i, i))
    rows.append(("Residual", None, None, -1, 0, 0))
    return pd.DataFrame(rows, columns=["group", "var1", "var2", "block", "i", "j"])


def varcorr_values(layout: pd.DataFrame, covs: list[np.ndarray], sigma: np.ndarray) -> np.ndarray:
    """(S, rows, 2) array of ``vcov`` and ``sdcor`` for each row of ``layout``."""
    S = len(sigma)
    out = np.empty((S, len(layout), 2))
    for r, (k, i, j) in enumerate(zip(layout["block"], layout["i"], layout["j"])):
        if k < 0:
            out[:, r, 0] = sigma**2
            out[:, r, 1] = sigma
            continue
        cov = covs[k]
        out[:, r, 0] = cov[:, i, j]
        if i == j:
            out[:, r, 1] = np.sqrt(np.maximum(cov[:, i, i], 0.0))
        else:
            denom = np.sqrt(cov[:, i, i] * cov[:, j, j])
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, r, 1] = np.where(denom > 0, cov[:, i, j] / np.where(denom > 0, denom, 1.0), np.nan)
    return out


# ---------------------------------------------------------------- point results
class InformationCriteria:
    """AIC, BIC and residual df of a point fit from its ``criterion`` (-2 log-likelihood, or
    the REML criterion as lmer prints it), ``n_params`` and ``nobs``; shared by the LMM and
    GLMM point results."""

    @property
    def aic(self) -> float:
        return self.criterion + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return self.criterion + np.log(self.nobs) * self.n_params

    @property
    def df_resid(self) -> int:
        return self.nobs - self.n_params


class RePCA(dict):
    """What :meth:`PointResult.rePCA` returns: group -> importance table (``sdev``,
    ``proportion``, ``cumulative``), and the loadings in ``rotation`` (group -> terms x
    components), as lme4's ``rePCA`` and its ``summary``."""

    def __init__(self):
        super().__init__()
        self.rotation: dict[str, pd.DataFrame] = {}


@dataclass(frozen=True, eq=False)
class PointResult(FitResult, InformationCriteria):
    """A REML, ML or MAP fit: point estimates, as ``lme4::lmer`` reports them.

    Build it with :meth:`LMM.fit`. Attributes mirror lme4's accessors: ``theta``,
    ``sigma``, ``loglik``, ``criterion``, ``aic``, ``bic``, ``nobs``, ``is_singular``.
    """

    design: Design
    method: str
    theta: np.ndarray
    beta: np.ndarray
    sigma: float
    vcov_beta: np.ndarray
    covariances: tuple[np.ndarray, ...]
    ranef_values: tuple[np.ndarray, ...]
    ranef_condvar: tuple[np.ndarray, ...]
    criterion: float
    n_params: int
    theta_names: tuple[str, ...]
    theta_lower: np.ndarray
    opt: OptSummary = field(repr=False)
    priors_used: str | None = None
    #: root mean square of each bar's columns: theta * scale is the unit-free theta of the
    #: standardized columns, on which singularity is judged
    term_scales: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    # ---------------------------------------------------------- primitives
    def fixef_draws(self) -> np.ndarray:
        return self.beta[None, :]

    def sigma_draws(self) -> np.ndarray:
        return np.array([self.sigma])

    def cov_draws(self) -> list[np.ndarray]:
        return [c[None] for c in self.covariances]

    def ranef_draws(self) -> list[np.ndarray]:
        return [b[None] for b in self.ranef_values]

    # ---------------------------------------------------------- lme4's numbers
    @property
    def reml(self) -> bool:
        return self.method == "reml"

    @property
    def loglik(self) -> float:
        """Log-likelihood at the optimum (the REML log-likelihood for a REML fit)."""
        return -0.5 * self.criterion

    @property
    def deviance(self) -> float:
        return self.criterion

    @property
    def theta_scaled(self) -> np.ndarray:
        """theta of the bars' columns divided by their root mean square: unit-free (a
        predictor in days or in seconds gives the same value)."""
        if self.term_scales is None:
            return self.theta
        from ..fitting.reml import ThetaLayout

        layout = ThetaLayout.from_design(self.design)
        scale = np.concatenate([sc[rows] for sc, rows in zip(self.term_scales, layout.rows)])
        return self.theta * scale

    @property
    def is_singular(self) -> bool:
        """lme4's rule, unit-free: a bounded component of theta within 1e-4 of its bound 0,
        judged on the theta of standardized columns (:attr:`theta_scaled`; lme4 judges the
        user's theta, so ``Days * 1e4`` made a healthy slope "singular" there)."""
        bounded = self.theta_lower == 0
        return bool(np.any(self.theta_scaled[bounded] < 1e-4))

    def _scaled_covariances(self) -> list[np.ndarray]:
        """Each bar's covariance of the standardized columns relative to sigma^2."""
        scales = self.term_scales or [np.ones(b.n_terms) for b in self.design.blocks]
        return [cov * np.outer(sc, sc) / self.sigma**2 for cov, sc in zip(self.covariances, scales)]

    def rePCA(self, standardized: bool = False) -> RePCA:
        """Principal components of each grouping factor's random-effect covariance (lme4's
        ``rePCA``): how many dimensions of a maximal model the data support.

        Parameters
        ----------
        standardized : bool
            False (lme4's): the singular values of the relative covariance factor in the
            user's units (``Lambda_k`` of ``theta``), bars on one factor combined block-
            diagonally as lme4 does. True: of the standardized columns (unit-free).

        Returns
        -------
        RePCA
            A dict: group -> DataFrame indexed by component (``PC1``, ...) with ``sdev``
            (relative to sigma), ``proportion`` of variance and ``cumulative`` proportion;
            ``.rotation[group]``: the loadings (terms x components).
        """
        from scipy.linalg import block_diag

        factors: dict[str, list] = {}
        scales = self.term_scales or [np.ones(b.n_terms) for b in self.design.blocks]
        for block, cov, sc in zip(self.design.blocks, self.covariances, scales):
            rel = cov / self.sigma**2
            if standardized:
                rel = rel * np.outer(sc, sc)
            # the Cholesky factor of a possibly singular covariance: from its eigen-decomposition
            # (same singular values as lme4's Lambda_k, whose lambda lambda' is this matrix)
            values, vectors = np.linalg.eigh(rel)
            half = vectors * np.sqrt(np.clip(values, 0.0, None))
            factors.setdefault(block.group, []).append((half, list(block.terms)))
        out = RePCA()
        for group, parts in factors.items():
            lam = block_diag(*[h for h, _ in parts])
            terms = [t for _, names in parts for t in names]
            u, sdev, _ = np.linalg.svd(lam)
            var = sdev**2
            total = var.sum()
            prop = var / total if total > 0 else np.zeros_like(var)
            names = [f"PC{i + 1}" for i in range(len(sdev))]
            frame = pd.DataFrame({"sdev": sdev, "proportion": prop, "cumulative": np.cumsum(prop)},
                                 index=pd.Index(names, name="component"))
            out[group] = frame
            out.rotation[group] = pd.DataFrame(u, index=terms, columns=names)
        return out

    # ---------------------------------------------------------- tables
    def fixef(self, ddf: str | None = "default") -> pd.DataFrame:
        """Fixed effects with standard errors, t values and, for REML/ML fits, lmerTest's
        df and p-values.

        Parameters
        ----------
        ddf : {"satterthwaite", "kenward-roger", None}
            Denominator df of the t-tests (default: Satterthwaite for REML and ML fits, as
            lmerTest; none for MAP fits). None gives only ``estimate, std_error, t_value``.
            Kenward-Roger (REML fits) also adjusts the standard errors, as pbkrtest.
            See :func:`bayeslmm.fitting.inference.fixef_table`.
        """
        if ddf == "default":
            ddf = "satterthwaite" if self.method in ("reml", "ml") else None
        if ddf is not None:
            from ..fitting.inference import fixef_table

            return fixef_table(self, ddf)
        se = np.sqrt(np.diag(self.vcov_beta))
        return pd.DataFrame({"estimate": self.beta, "std_error": se, "t_value": self.beta / se},
                            index=pd.Index(self.design.fixed_names, name="term"))

    # ---------------------------------------------------------- tests and intervals
    @cached_property
    def _inference_cache(self) -> dict:
        return {}

    def _ddf_method(self, key: str):
        """The Satterthwaite / Kenward-Roger machinery of this fit, computed once."""
        if key not in self._inference_cache:
            from ..fitting import inference
            cls = inference.Satterthwaite if key == "satterthwaite" else inference.KenwardRoger
            self._inference_cache[key] = cls(self)
        return self._inference_cache[key]

    def anova(self, type: int = 3, ddf: str = "satterthwaite") -> pd.DataFrame:
        """lmerTest's F-test table, one row per fixed term; see :func:`bayeslmm.fitting.inference.anova`."""
        from ..fitting.inference import anova

        return anova(self, type=type, ddf=ddf)

    def contest(self, L, ddf: str = "satterthwaite", joint: bool | None = None) -> pd.DataFrame:
        """Test ``L beta = 0`` (t-test for one row, F-test for several); see
        :func:`bayeslmm.fitting.inference.contest`."""
        from ..fitting.inference import contest

        return contest(self, L, ddf=ddf, joint=joint)

    def confint(self, method: str = "profile", level: float = 0.95, nsim: int = 1000, random_seed=None,
                client=None, n_jobs: int | None = None, progressbar: bool = True,
                exact: bool = False, boot_type: str = "perc") -> pd.DataFrame:
        """Confidence intervals as ``lme4::confint(fit, oldNames = FALSE)``; see
        :func:`bayeslmm.fitting.inference.confint` (``exact=True``: the profile limits as
        exact roots of the profiled likelihood instead of lme4's spline reading;
        ``boot_type``: lme4's ``boot.type``, "perc", "basic" or "norm")."""
        from ..fitting.inference import confint

        return confint(self, method=method, level=level, nsim=nsim, random_seed=random_seed,
                       client=client, n_jobs=n_jobs, progressbar=progressbar, exact=exact, boot_type=boot_type)

    def vcov(self) -> pd.DataFrame:
        """Covariance matrix of the fixed-effect estimates."""
        names = list(self.design.fixed_names)
        return pd.DataFrame(self.vcov_beta, index=names, columns=names)

    def varcorr(self) -> pd.DataFrame:
        """Variance components in the layout of R's ``as.data.frame(VarCorr(fit))``."""
        layout = varcorr_layout(self.design)
        values = varcorr_values(layout, list(self.cov_draws()), self.sigma_draws())[0]
        frame = layout[["group", "var1", "var2"]].copy()
        frame["vcov"] = values[:, 0]
        frame["sdcor"] = values[:, 1]
        return frame

    def ranef(self, tidy: bool = False, prob: float = 0.95):
        """Conditional modes of the random effects.

        Parameters
        ----------
        tidy : bool
            False (default, lme4's layout): a dict group -> DataFrame (levels x terms);
            bars on the same factor are merged as lme4 merges them. True: one long
            DataFrame with ``group, level, term, estimate, std_error, lower, upper``
            (``std_error`` is the conditional sd, lme4's ``condVar``).
        prob : float
            Coverage of the normal interval in the tidy layout.
        """
        if tidy:
            from scipy.stats import norm

            z = norm.ppf(0.5 + prob / 2)
            frames = []
            for block, b, cv in zip(self.design.blocks, self.ranef_values, self.ranef_condvar):
                sd = np.sqrt(np.einsum("jii->ji", cv))
                level = np.repeat(block.levels, block.n_terms)
                term = np.tile(block.terms, block.n_levels)
                frames.append(pd.DataFrame({"group": block.group, "level": level, "term": term,
                                            "estimate": b.ravel(), "std_error": sd.ravel(),
                                            "lower": b.ravel() - z * sd.ravel(),
                                            "upper": b.ravel() + z * sd.ravel()}))
            return pd.concat(frames, ignore_index=True)
        return merge_by_group(self.design, self.ranef_values)

    def coef(self, tidy: bool = False, prob: float = 0.95):
        """Fixed plus random effects per level (lme4's ``coef``).

        Parameters
        ----------
        tidy : bool
            False (default, lme4's layout): a dict group -> DataFrame (levels x terms).
            True: one long DataFrame with ``group, level, term, estimate, std_error,
            lower, upper``, where ``std_error`` is the conditional sd of the group effect
            (lme4's ``condVar``; the fixed effect is held at its estimate, as
            ``coef(fit)`` plus ``condVar`` would give it).
        prob : float
            Coverage of the normal interval in the tidy layout.
        """
        if tidy:
            frame = self.ranef(tidy=True, prob=prob)
            fixed = dict(zip(self.design.fixed_names, self.beta))
            shift = frame["term"].map(lambda term: fixed.get(term, 0.0)).to_numpy(dtype=float)
            for column in ("estimate", "lower", "upper"):
                frame[column] = frame[column] + shift
            return frame
        fixed = pd.Series(self.beta, index=self.design.fixed_names)
        out = {}
        for group, frame in self.ranef().items():
            total = pd.DataFrame({name: np.full(len(frame), value) for name, value in fixed.items()},
                                 index=frame.index)
            for term in frame.columns:
                total[term] = total[term] + frame[term] if term in total else frame[term]
            out[group] = total
        return out

    def singular_terms(self, tol: float = 1e-4) -> list[str]:
        """The variance components at zero and the correlations at +-1, as text
        (``"Batch: sd((Intercept)) = 0"``, ``"school: cor(standLRT, sexM) = -1"``).

        Unit-free: an sd is "at zero" when the sd of the standardized column is below
        ``tol`` times sigma (an sd of 5e-4 for a slope in units of 1e4 days is not zero).
        """
        found = []
        layout = varcorr_layout(self.design)
        scaled = self._scaled_covariances()
        names = self.varcorr()
        for row, k, i, j in zip(names.itertuples(), layout["block"], layout["i"], layout["j"]):
            if k < 0:
                continue
            cov = scaled[k]
            if i == j:
                if np.sqrt(max(cov[i, i], 0.0)) < tol:
                    found.append(f"{row.group}: sd({row.var1}) = 0")
            elif abs(row.sdcor) > 1 - tol:
                found.append(f"{row.group}: cor({row.var1}, {row.var2}) = {np.sign(row.sdcor):+.0f}")
        if self.is_singular and not found:
            found.extend(rank_deficiencies(self.design, self.covariances))
        if self.is_singular and not found:
            found.append("the random-effects covariance is rank deficient (a linear combination "
                         "of the terms has zero variance)")
        return found

    def summary(self, ddf: str | None = "default") -> str:
        """A text summary laid out like ``summary(lmer(...))`` under lmerTest: the fixed
        effects with Satterthwaite df and p-values for REML/ML fits (``ddf`` as in
        :meth:`fixef`; None prints lme4's own table)."""
        from ..reporting.summary import point_summary

        return point_summary(self, ddf=ddf)

    def __repr__(self) -> str:
        return self.summary()


def rank_deficiencies(design: Design, covariances, tol: float = 1e-6) -> list[str]:
    """Each bar whose covariance is rank deficient with no sd at 0 and no correlation at
    +-1, named by the combinations that have no variance: with d null directions, the last d
    terms (those whose own Cholesky factors lme4 puts at 0) written as combinations of the
    others, e.g. ``school: sexM = -0.09 (Intercept) + 0.24 standLRT``; relations joined by
    "; ". Unique whatever basis of the null space the eigensolver returns.

    ``tol`` is on the eigenvalues of the bar's correlation matrix.
    """
    found = []
    for block, cov in zip(design.blocks, covariances):
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        if block.n_terms < 3 or np.any(sd <= 0):
            continue  # sd at 0 or a 2 x 2 at +-1 is already named by its row of varcorr()
        corr = cov / np.outer(sd, sd)
        values, vectors = np.linalg.eigh(corr)
        null = vectors[:, values <= tol]  # z = b / sd has N'z = 0
        if not null.shape[1]:
            continue
        # the dependent terms: from the last term back, each one that adds a pivot
        dependent: list[int] = []
        for t in range(block.n_terms - 1, -1, -1):
            if np.linalg.matrix_rank(null[dependent + [t]], tol=1e-8) > len(dependent):
                dependent.append(t)
            if len(dependent) == null.shape[1]:
                break
        dependent.sort()
        free = [t for t in range(block.n_terms) if t not in dependent]
        # N_D' z_D = -N_F' z_F  =>  b_D = diag(sd_D) (-(N_D')^-1 N_F') diag(1 / sd_F) b_F
        coefs = -np.linalg.solve(null[dependent].T, null[free].T) * sd[dependent][:, None] / sd[free][None, :]
        relations = []
        for row, d in zip(coefs, dependent):
            parts = [(c, block.terms[t]) for c, t in zip(row, free) if abs(c) > 1e-12 * np.abs(row).max()]
            combination = " ".join(f"{c:.3g} {term}" if i == 0 else f"{'-' if c < 0 else '+'} {abs(c):.3g} {term}"
                                   for i, (c, term) in enumerate(parts))
            relations.append(f"{block.terms[d]} = {combination}")
        found.append(f"{block.group}: {'; '.join(relations)} (the {block.n_terms} x {block.n_terms} "
                     f"covariance has rank {block.n_terms - null.shape[1]})")
    return found


def merge_by_group(design: Design, per_block: tuple[np.ndarray, ...] | list[np.ndarray]) -> dict[str, pd.DataFrame]:
    """Per-bar (levels x terms) arrays -> dict group -> DataFrame, merging bars on one factor."""
    out: dict[str, pd.DataFrame] = {}
    for block, values in zip(design.blocks, per_block):
        frame = pd.DataFrame(values, index=pd.Index(block.levels, name=block.group),
                             columns=list(block.terms))
        if block.group in out:
            out[block.group] = out[block.group].join(frame, rsuffix=".1")
        else:
            out[block.group] = frame
    return out
