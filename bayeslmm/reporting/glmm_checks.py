"""Model checks for GLMMs that fit non-Gaussian outcomes.

- :func:`quantile_residuals`: randomized quantile residuals from simulation (DHARMa's
  idea, Hartig 2022): for each observation the fraction of simulated responses below the
  observed one, a uniform draw splitting ties (counts), so that a well-specified model
  gives Uniform(0, 1) residuals whatever the family. With the tests DHARMa runs on them:
  uniformity (Kolmogorov-Smirnov), dispersion (variance of observed minus fitted against
  the simulated ones) and zero inflation (observed zeros against simulated ones).
- :func:`rootogram`: observed against expected frequencies of each count (Kleiber &
  Zeileis 2016), expected from the fitted conditional means.
- :func:`binned_residuals`: binary/binomial responses binned by fitted probability, the
  mean residual of each bin with its +-2 SE band (Gelman & Hill 2007).
- :func:`shrinkage`: per level, the no-pooling link-scale estimate (link of the group's
  observed mean) beside the partial-pooling one (fixed intercept + conditional mode).

Everything family-specific comes from the result's :class:`~bayeslmm.family.Family`
(``simulate``, ``observed_values``, ``cdf``, ``linkfun``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import BayesLMMError


@dataclass(frozen=True)
class QuantileResiduals:
    """Simulated quantile residuals and DHARMa's tests on them.

    Attributes
    ----------
    residuals : ndarray (n,)
        Uniform on (0, 1) under the model.
    uniformity : tuple (statistic, p_value)
        One-sample Kolmogorov-Smirnov test against Uniform(0, 1).
    dispersion : tuple (ratio, p_value)
        Observed / mean simulated variance of the response around the mean of the
        simulations (two-sided simulation p-value); > 1 means overdispersion.
    zero_inflation : tuple (ratio, p_value) or None
        Observed / mean simulated number of zeros (counts and binomial), two-sided.
    nsim : int
    """

    residuals: np.ndarray
    uniformity: tuple[float, float]
    dispersion: tuple[float, float]
    zero_inflation: tuple[float, float] | None
    nsim: int

    def table(self) -> pd.DataFrame:
        rows = {"uniformity (KS)": self.uniformity, "dispersion": self.dispersion}
        if self.zero_inflation is not None:
            rows["zero inflation"] = self.zero_inflation
        return pd.DataFrame(rows, index=["statistic", "p_value"]).T


def _two_sided(observed: float, simulated: np.ndarray) -> float:
    lower = np.mean(simulated <= observed)
    upper = np.mean(simulated >= observed)
    return float(min(1.0, 2.0 * min(lower, upper)))


def quantile_residuals(fit, nsim: int = 250, random_seed=None, conditional: bool = False) -> QuantileResiduals:
    """DHARMa-style residuals of a :class:`~bayeslmm.results.glmm_results.GLMMResult`: responses
    simulated with new group effects (lme4's ``simulate`` default, DHARMa's default for
    lme4 fits), or, with ``conditional=True``, at the conditional modes of the group
    effects (DHARMa's advice for the dispersion test, which has little power against the
    spread of new group effects); ties (integer responses) split by a uniform draw."""
    if nsim < 10:
        raise BayesLMMError("nsim must be at least 10")
    rng = np.random.default_rng(random_seed)
    fam, wt = fit.family, fit.gd.weights
    sims = fit.simulate(nsim, random_seed=rng, use_u=conditional)
    obs = fam.observed_values(fit.gd.y, wt).astype(float)
    sim = np.vstack([fam.observed_values(s, wt) for s in sims]).astype(float)
    below = (sim < obs[None, :]).mean(axis=0)
    equal = (sim == obs[None, :]).mean(axis=0)
    resid = below + rng.uniform(size=len(obs)) * equal
    resid = np.clip(resid, 0.5 / nsim, 1 - 0.5 / nsim)
    ks = stats.kstest(resid, "uniform")
    # the reference is the mean of the simulations: they draw new group effects, so
    # the conditional fitted values would make every model look underdispersed
    fitted = sim.mean(axis=0)
    observed_spread = np.var(obs - fitted)
    simulated_spread = np.var(sim - fitted[None, :], axis=1)
    dispersion = (float(observed_spread / simulated_spread.mean()), _two_sided(observed_spread, simulated_spread))
    zeros = None
    if fam.is_discrete:
        observed_zeros = float(np.sum(obs == 0))
        simulated_zeros = np.sum(sim == 0, axis=1).astype(float)
        mean_zeros = simulated_zeros.mean()
        zeros = (float(observed_zeros / mean_zeros) if mean_zeros > 0 else np.inf,
                 _two_sided(observed_zeros, simulated_zeros))
    return QuantileResiduals(residuals=resid, uniformity=(float(ks.statistic), float(ks.pvalue)),
                             dispersion=dispersion, zero_inflation=zeros, nsim=nsim)


def rootogram(fit, max_count: int | None = None) -> pd.DataFrame:
    """Observed and expected frequencies of each count 0..max_count (count families):
    columns ``observed``, ``expected``, and the hanging rootogram's
    ``sqrt_expected - sqrt_observed`` (bars that miss zero show misfit)."""
    fam = fit.family
    if not fam.is_count:
        raise BayesLMMError(f"a rootogram is for counts; the {fam.name} family's check is binned_residuals()")
    y = np.round(fit.gd.y).astype(int)
    top = int(max_count if max_count is not None else y.max())
    counts = np.arange(top + 1)
    observed = np.bincount(np.minimum(y, top + 1), minlength=top + 2)[: top + 1]
    wt = fit.gd.weights
    upper, lower = fam.cdf(counts[:, None], fit.mu[None, :], wt[None, :])
    expected = (upper - lower).sum(axis=1)
    return pd.DataFrame({"observed": observed, "expected": expected,
                         "sqrt_expected - sqrt_observed": np.sqrt(expected) - np.sqrt(observed)},
                        index=pd.Index(counts, name="count"))


def binned_residuals(fit, bins: int | None = None) -> pd.DataFrame:
    """Binned residuals of a binomial fit: observations sorted by fitted probability into
    ``bins`` groups of (nearly) equal size (default ``sqrt(n)``); per bin the mean fitted
    probability, the mean residual (observed minus fitted proportion, trial-weighted),
    its standard error ``sqrt(sum w p (1 - p)) / sum w`` and whether it lies within 2 SE."""
    if fit.family.is_count or not fit.family.is_discrete:
        raise BayesLMMError("binned residuals are for binomial responses; use rootogram() for counts")
    y, mu, wt = fit.gd.y, fit.mu, fit.gd.weights
    bins = int(bins or max(2, int(np.sqrt(len(y)))))
    order = np.argsort(mu, kind="stable")
    rows = []
    for idx in np.array_split(order, bins):
        w = wt[idx]
        resid = np.sum(w * (y[idx] - mu[idx])) / w.sum()
        se = np.sqrt(np.sum(w * mu[idx] * (1 - mu[idx]))) / w.sum()
        rows.append({"fitted": float(np.sum(w * mu[idx]) / w.sum()), "residual": float(resid),
                     "std_error": float(se), "n": int(len(idx)), "inside": bool(abs(resid) <= 2 * se)})
    return pd.DataFrame(rows)


def shrinkage(fit, group: str | None = None) -> pd.DataFrame:
    """No pooling vs partial pooling of each level's intercept on the link scale.

    ``no_pooling`` is ``beta_0 + a_j`` with ``a_j`` the level's own maximum-likelihood
    intercept shift, the fixed part held at the estimates (a one-parameter GLM per level,
    solved by Newton's method); ``partial_pooling`` is ``beta_0 + b_j`` (the conditional
    mode); ``complete_pooling`` is ``beta_0``. A level whose responses are all 0 (or all
    successes) has no finite no-pooling estimate (NaN).
    """
    design = fit.design
    names = [b.group for b in design.blocks if "(Intercept)" in b.terms]
    if not names:
        raise BayesLMMError("shrinkage() needs a random intercept")
    group = group or names[0]
    k = next(i for i, b in enumerate(design.blocks) if b.group == group and "(Intercept)" in b.terms)
    block = design.blocks[k]
    t = block.terms.index("(Intercept)")
    fam, y, wt = fit.family, fit.gd.y, fit.gd.weights
    fixed = fit.gd.offset + design.X @ fit.beta
    b0 = fit.beta[list(design.fixed_names).index("(Intercept)")] if "(Intercept)" in design.fixed_names else 0.0
    J, codes = block.n_levels, block.codes
    a = np.zeros(J)
    for _ in range(100):  # Fisher scoring on each level's shift
        eta = fixed + a[codes]
        mu, me = fam.linkinv(eta), fam.mu_eta(eta)
        var = fam.variance(mu)
        score = np.bincount(codes, weights=wt * (y - mu) * me / var, minlength=J)
        info = np.bincount(codes, weights=wt * me**2 / var, minlength=J)
        step = np.clip(score / info, -2.0, 2.0)
        a += step
        if np.max(np.abs(step)) < 1e-10:
            break
    lo = np.bincount(codes, weights=wt * y, minlength=J)
    hi = np.bincount(codes, weights=wt * (1.0 - y), minlength=J) if not fam.is_count else np.full(J, np.inf)
    finite = (lo > 0) & (hi > 0)
    return pd.DataFrame({"n": np.bincount(codes, minlength=J), "no_pooling": np.where(finite, b0 + a, np.nan),
                         "partial_pooling": b0 + fit.ranef_values[k][:, t], "complete_pooling": b0},
                        index=pd.Index(block.levels, name=group))


def plot_checks(fit, nsim: int = 250, random_seed=1):
    """One figure of the checks above: a uniform QQ plot of the quantile residuals (with
    the uniformity, dispersion and zero-inflation p-values), a hanging rootogram (counts)
    or binned residuals (binomial), and the link-scale shrinkage of the first random
    intercept. Returns a matplotlib Figure (not shown)."""
    from matplotlib.figure import Figure

    q = quantile_residuals(fit, nsim=nsim, random_seed=random_seed)
    fig = Figure(figsize=(13, 4))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    n = len(q.residuals)
    ax1.plot((np.arange(n) + 0.5) / n, np.sort(q.residuals), ".", ms=3)
    ax1.plot([0, 1], [0, 1], color="k", lw=1)
    text = [f"KS p = {q.uniformity[1]:.3g}", f"dispersion {q.dispersion[0]:.2f} (p = {q.dispersion[1]:.3g})"]
    if q.zero_inflation is not None:
        text.append(f"zeros {q.zero_inflation[0]:.2f} (p = {q.zero_inflation[1]:.3g})")
    ax1.text(0.03, 0.97, "\n".join(text), va="top", fontsize=8, transform=ax1.transAxes)
    ax1.set(xlabel="expected (uniform)", ylabel="simulated quantile residual", title="Quantile residuals")
    if fit.family.is_count:
        root = rootogram(fit)
        top = np.sqrt(root["expected"].to_numpy())
        bottom = top - np.sqrt(root["observed"].to_numpy())
        ax2.bar(root.index, top - bottom, bottom=bottom, color="#9db4d6", edgecolor="#4c72b0")
        ax2.plot(root.index, top, color="#c44e52", marker=".", lw=1)
        ax2.axhline(0, color="k", lw=1)
        ax2.set(xlabel="count", ylabel="sqrt(frequency)", title="Hanging rootogram")
    else:
        binned = binned_residuals(fit)
        ax2.plot(binned["fitted"], binned["residual"], "o", ms=4)
        ax2.plot(binned["fitted"], 2 * binned["std_error"], color="grey", lw=1)
        ax2.plot(binned["fitted"], -2 * binned["std_error"], color="grey", lw=1)
        ax2.axhline(0, color="k", lw=1)
        ax2.set(xlabel="fitted probability", ylabel="mean residual", title="Binned residuals (+-2 SE)")
    try:
        table = shrinkage(fit)
        ax3.plot(table["no_pooling"], table["partial_pooling"], "o", ms=4)
        lims = np.nanpercentile(np.concatenate([table["no_pooling"], table["partial_pooling"]]), [0, 100])
        ax3.plot(lims, lims, color="k", lw=1)
        ax3.axhline(table["complete_pooling"].iloc[0], color="grey", ls="--", lw=1)
        ax3.set(xlabel="no pooling (link scale)", ylabel="partial pooling (link scale)",
                title=f"Shrinkage: {table.index.name}")
    except BayesLMMError:
        ax3.set_axis_off()
    fig.tight_layout()
    return fig
