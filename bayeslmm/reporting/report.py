"""Stage 5: reporting numbers.

Every verb here reads a fitted result through the four draw primitives of
:class:`~bayeslmm.results.point.FitResult` (``fixef_draws``, ``sigma_draws``, ``cov_draws``,
``ranef_draws``). A REML/ML/MAP fit is a posterior with one draw, so each quantity is
computed once, per draw, and then summarised: a point result gets one column
``estimate``; a posterior gets ``mean``, ``sd``, ``lower`` and ``upper`` (an
equal-tailed interval of probability ``prob``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import BayesLMMError, DataError
from ..frontend.design import RandomBlock, _group_labels

#: number of draws used for simulation-based point-fit predictive intervals
POINT_PREDICTIVE_DRAWS = 2000


# ---------------------------------------------------------------- helpers
def is_posterior(result) -> bool:
    """True for a posterior result (it carries ``idata``), False for a point fit."""
    return hasattr(result, "idata")


def interval(draws: np.ndarray, prob: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed interval of probability ``prob`` along ``axis``."""
    if not 0 < prob < 1:
        raise BayesLMMError(f"prob must be between 0 and 1, not {prob!r}")
    tail = (1.0 - prob) / 2.0
    return np.quantile(draws, tail, axis=axis), np.quantile(draws, 1.0 - tail, axis=axis)


def summarize(draws: dict[str, np.ndarray], posterior: bool, prob: float = 0.95,
              index_name: str | None = None) -> pd.DataFrame:
    """Rows named by ``draws``' keys; each value is an (S,) array of draws.

    Point fits (``posterior=False``) give the single column ``estimate``; posteriors
    give ``mean``, ``sd``, ``lower``, ``upper``.
    """
    index = pd.Index(list(draws), name=index_name)
    stacked = np.column_stack([np.asarray(v, dtype=float) for v in draws.values()])
    if not posterior:
        return pd.DataFrame({"estimate": stacked[0]}, index=index)
    lower, upper = interval(stacked, prob)
    return pd.DataFrame({"mean": stacked.mean(axis=0), "sd": stacked.std(axis=0, ddof=1),
                         "lower": lower, "upper": upper}, index=index)


def _thin(n_total: int, n_keep: int | None) -> np.ndarray:
    """Evenly spaced draw indices (all of them when ``n_keep`` is None or large)."""
    if n_keep is None or n_keep >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n_keep).round().astype(int))


def fitted_subset(result, idx: np.ndarray, include_random: bool = True) -> np.ndarray:
    """(len(idx), n) fitted values for the draws ``idx`` only (``fitted_draws`` over all
    draws of a large data set would not fit in memory)."""
    design = result.design
    eta = result.fixef_draws()[idx] @ design.X.T
    if include_random:
        for block, b in zip(design.blocks, result.ranef_draws()):
            eta += np.einsum("snq,nq->sn", b[idx][:, block.codes, :], block.X)
    return eta


def fitted_mean_sd(result, include_random: bool = True, chunk: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (ddof=1; 0 for one draw) over draws of the fitted values, in chunks of draws."""
    S = len(result.sigma_draws())
    total = np.zeros(result.nobs)
    total_sq = np.zeros(result.nobs)
    for start in range(0, S, chunk):
        part = fitted_subset(result, np.arange(start, min(start + chunk, S)), include_random)
        total += part.sum(axis=0)
        total_sq += (part ** 2).sum(axis=0)
    mean = total / S
    if S == 1:
        return mean, np.zeros_like(mean)
    return mean, np.sqrt(np.clip((total_sq - S * mean ** 2) / (S - 1), 0.0, None))


def coef_draws(result) -> list[np.ndarray]:
    """Per bar, (S, levels, q) draws of fixed plus group effects (lme4's ``coef``)."""
    beta = result.fixef_draws()
    names = list(result.design.fixed_names)
    out = []
    for block, b in zip(result.design.blocks, result.ranef_draws()):
        total = np.array(b, dtype=float, copy=True)
        for t, term in enumerate(block.terms):
            if term in names:
                total[:, :, t] += beta[:, names.index(term), None]
        out.append(total)
    return out


# ---------------------------------------------------------------- variance decomposition
def variance_components(result) -> dict[str, np.ndarray]:
    """Per-draw variance components of Nakagawa et al. (2017).

    Returns a dict of (S,) arrays: ``fixed`` (variance over the rows of X beta, with the
    n - 1 denominator as R's ``var``), ``residual`` (sigma^2), ``random`` (the sum over
    bars of the mean over observed rows of z_i' Sigma z_i) and ``random[k]`` for each bar.
    """
    design = result.design
    beta = result.fixef_draws()
    # var over rows of X beta = beta' cov(X) beta: no (draws x rows) array
    cov_x = np.atleast_2d(np.cov(design.X, rowvar=False, ddof=1))
    out = {"fixed": np.einsum("si,ij,sj->s", beta, cov_x, beta), "residual": result.sigma_draws() ** 2}
    total = np.zeros_like(out["residual"])
    for k, (block, cov) in enumerate(zip(design.blocks, result.cov_draws())):
        # mean_i z_i' Sigma z_i = trace(Sigma Z'Z / n)
        zz = block.X.T @ block.X / design.nobs
        part = np.einsum("sqr,qr->s", cov, zz)
        out[f"random[{k}]"] = part
        total = total + part
    out["random"] = total
    return out


def icc(result, prob: float = 0.95, draws: bool = False):
    """Intraclass correlations (Nakagawa et al. 2017), per draw.

    ``adjusted`` = var_random / (var_random + sigma^2), where var_random is the sum over
    bars of the mean over the observed rows of z_i' Sigma z_i (with random slopes, the
    mean variance of the random part at the observed predictor values; for
    intercept-only bars it is the sum of the intercept variances).

    One row per grouping factor: that factor's share of the variance,
    var_g / (var_random + sigma^2). For an intercept-only bar var_g is its intercept
    variance (the classic by-group ICC of R's ``performance::icc(by_group=TRUE)``). For a
    bar with slopes it is the mean over the observed rows of z_i' Sigma_g z_i, the same
    quantity the adjusted ICC sums, so the by-group rows add up to ``adjusted``;
    ``performance`` reports nothing sensible there (its by-group figure can exceed 1).
    Bars on the same factor (``(x || g)``) are added together.

    Parameters
    ----------
    prob : float
        Probability of the equal-tailed interval (posteriors).
    draws : bool
        Return the per-draw values (a DataFrame, one column per row of the summary)
        instead of the summary.

    Returns
    -------
    DataFrame
        Indexed by ``adjusted`` and each grouping factor; column ``estimate`` on a point
        fit, ``mean, sd, lower, upper`` on a posterior.

    Examples
    --------
    >>> fit = blm.LMM("Reaction ~ Days + (1 | Subject)", blm.datasets.load("sleepstudy")).fit()
    >>> fit.icc()  # adjusted 0.589 and Subject 0.589, as performance::icc
    """
    comps = variance_components(result)
    denom = comps["random"] + comps["residual"]
    values = {"adjusted": comps["random"] / denom}
    for k, block in enumerate(result.design.blocks):
        share = comps[f"random[{k}]"] / denom
        values[block.group] = values[block.group] + share if block.group in values else share
    if draws:
        return pd.DataFrame(values)
    return summarize(values, is_posterior(result), prob, index_name="icc")


def r2(result, prob: float = 0.95, draws: bool = False):
    """Marginal and conditional R2 of Nakagawa et al. (2017), per draw.

    R2m = var_fixed / (var_fixed + var_random + sigma^2) and
    R2c = (var_fixed + var_random) / (same), with var_random as in :func:`icc` and
    var_fixed the variance of X beta over the observed rows (denominator n - 1).

    Parameters
    ----------
    prob : float
        Probability of the equal-tailed interval (posteriors).
    draws : bool
        Return the per-draw values instead of the summary.

    Returns
    -------
    DataFrame
        Indexed by ``marginal`` and ``conditional``, laid out like :func:`icc`.
    """
    comps = variance_components(result)
    total = comps["fixed"] + comps["random"] + comps["residual"]
    values = {"marginal": comps["fixed"] / total,
              "conditional": (comps["fixed"] + comps["random"]) / total}
    if draws:
        return pd.DataFrame(values)
    return summarize(values, is_posterior(result), prob, index_name="r2")


def icc_curve(result, x: str, grid: np.ndarray | None = None, n_grid: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """ICC as a function of the random-slope variable ``x`` (a term name of a bar).

    At the value x0 the random part of a row has variance sum_k z_k(x0)' Sigma_k z_k(x0),
    with z_k(x0) = 1 for the intercept, x0 for the term ``x`` and the observed mean for
    any other term. Returns ``(grid, icc)`` with ``icc`` of shape (S, len(grid)).
    """
    design = result.design
    found = [(k, block.terms.index(x)) for k, block in enumerate(design.blocks) if x in block.terms]
    if not found:
        terms = sorted({t for block in design.blocks for t in block.terms if t != "(Intercept)"})
        raise BayesLMMError(f"'{x}' is not a term of any random-effects bar; the varying slopes "
                            f"are: {', '.join(terms) if terms else 'none (intercepts only)'}")
    k0, t0 = found[0]
    if grid is None:
        column = design.blocks[k0].X[:, t0]
        grid = np.linspace(column.min(), column.max(), n_grid)
    grid = np.asarray(grid, dtype=float)
    var_random = np.zeros((len(result.sigma_draws()), len(grid)))
    for block, cov in zip(design.blocks, result.cov_draws()):
        z = np.tile(block.X.mean(axis=0), (len(grid), 1))
        if x in block.terms:
            z[:, block.terms.index(x)] = grid
        var_random += np.einsum("gq,sqr,gr->sg", z, cov, z)
    sigma2 = result.sigma_draws()[:, None] ** 2
    return grid, var_random / (var_random + sigma2)


# ---------------------------------------------------------------- pooling
def _lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS coefficients, NaN when X is rank deficient (too few or constant rows)."""
    if X.shape[0] < X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
        return np.full(X.shape[1], np.nan)
    return np.linalg.lstsq(X, y, rcond=None)[0]


def _block_index(result, group: str | None) -> int:
    blocks = result.design.blocks
    if group is None:
        return 0
    for k, block in enumerate(blocks):
        if block.group == group:
            return k
    raise BayesLMMError(f"no random-effects bar on '{group}'; the grouping factors are "
                        f"{', '.join(b.group for b in blocks)}")


def pooling(result, group: str | None = None) -> pd.DataFrame:
    """No, complete and partial pooling estimates of one bar's coefficients per level.

    - no pooling: a separate OLS fit per level of the bar's terms (e.g. intercept and
      slope per subject). The fixed-effect columns that are not terms of the bar enter
      as an offset at the mixed model's fixed-effect estimates, so the three estimates
      differ only in the bar's own coefficients; other bars are ignored. A level with
      too few rows (or a constant predictor) gets NaN.
    - complete pooling: the OLS fit of the fixed part ignoring the groups (the same
      value for every level).
    - partial pooling: ``coef()``, fixed plus group effect (the posterior mean on a
      posterior).

    Parameters
    ----------
    group : str, optional
        The grouping factor of the bar (the first bar, the one with most levels, by default).

    Returns
    -------
    DataFrame
        Indexed by level, with columns ``(kind, term)`` for kind in ``no_pooling``,
        ``complete_pooling``, ``partial_pooling`` and ``n`` (rows per level).
    """
    design = result.design
    k = _block_index(result, group)
    block = design.blocks[k]
    names = list(design.fixed_names)
    beta = result.fixef_draws().mean(axis=0)
    other = [j for j, name in enumerate(names) if name not in block.terms]
    offset = design.X[:, other] @ beta[other] if other else np.zeros(design.nobs)
    resid = design.y - offset
    no_pool = np.vstack([_lstsq(block.X[block.codes == j], resid[block.codes == j])
                         for j in range(block.n_levels)])
    ols = _lstsq(design.X, design.y)
    complete = np.array([ols[names.index(t)] if t in names else 0.0 for t in block.terms])
    partial = coef_draws(result)[k].mean(axis=0)
    index = pd.Index(block.levels, name=block.group)
    parts = {"no_pooling": no_pool, "complete_pooling": np.tile(complete, (block.n_levels, 1)),
             "partial_pooling": partial}
    frame = pd.concat({kind: pd.DataFrame(v, index=index, columns=list(block.terms)) for kind, v in parts.items()},
                      axis=1)
    frame[("n", "")] = block.level_counts()
    return frame


# ---------------------------------------------------------------- prediction
def _new_level_labels(block: RandomBlock, data: pd.DataFrame) -> np.ndarray:
    return np.asarray(_group_labels(data, block.group_vars), dtype=object)


def _cov_sqrt(cov: np.ndarray) -> np.ndarray:
    """(S, q, q) square roots of possibly singular covariance matrices."""
    w, v = np.linalg.eigh(cov)
    return v * np.sqrt(np.clip(w, 0.0, None))[:, None, :]


def predict_draws(result, newdata: pd.DataFrame, include_random: bool = True, kind: str = "mean",
                  allow_new_levels: bool = True, random_seed=None, n_draws: int | None = None) -> np.ndarray:
    """(S, m) draws of predictions for the rows of ``newdata`` (see :func:`predict`)."""
    kind = str(kind).lower()
    if kind not in ("mean", "predictive"):
        raise BayesLMMError(f"kind must be 'mean' or 'predictive', not {kind!r}")
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, not {type(newdata).__name__}")
    design = result.design
    rng = np.random.default_rng(random_seed)
    posterior = is_posterior(result)
    beta = result.fixef_draws()
    sigma = result.sigma_draws()
    S = len(sigma)
    idx = np.arange(S)
    if posterior and n_draws is not None:
        idx = _thin(S, n_draws)
    elif not posterior and kind == "predictive":
        # plug-in predictive distribution: simulate around the single estimate
        idx = np.zeros(n_draws or POINT_PREDICTIVE_DRAWS, dtype=int)
    X_new = design.new_fixed_matrix(newdata)
    eta = beta[idx] @ X_new.T
    if include_random:
        covs = result.cov_draws()
        for block, b, cov in zip(design.blocks, result.ranef_draws(), covs):
            Z = block.new_columns(newdata)
            codes = design.new_codes(block, newdata)
            seen = codes >= 0
            if seen.any():
                eta[:, seen] += np.einsum("smq,mq->sm", b[idx][:, codes[seen], :], Z[seen])
            if (~seen).any():
                labels = _new_level_labels(block, newdata)[~seen]
                unseen = list(dict.fromkeys(labels))  # first-appearance order: reproducible
                if not allow_new_levels:
                    raise DataError(f"level(s) {', '.join(repr(u) for u in unseen[:5])}"
                                    f"{' ...' if len(unseen) > 5 else ''} of grouping factor "
                                    f"'{block.group}' are not in the fitted data; pass "
                                    "allow_new_levels=True to draw their effects from the "
                                    "estimated population distribution")
                if posterior or kind == "predictive":
                    # one effect per new level and draw, from N(0, Sigma) of that draw
                    root = _cov_sqrt(cov[idx])
                    u = rng.standard_normal((len(idx), len(unseen), block.n_terms))
                    b_new = np.einsum("sqr,slr->slq", root, u)
                    pos = np.array([unseen.index(lab) for lab in labels])
                    eta[:, ~seen] += np.einsum("smq,mq->sm", b_new[:, pos, :], Z[~seen])
                # a point fit's "mean" prediction uses the mean of N(0, Sigma), 0, as lme4 does
    if kind == "predictive":
        eta = eta + sigma[idx, None] * rng.standard_normal(eta.shape)
    return eta


def predict(result, newdata: pd.DataFrame, include_random: bool = True, kind: str = "mean",
            allow_new_levels: bool = True, random_seed=None, prob: float = 0.95) -> pd.DataFrame:
    """Predictions for new data.

    Parameters
    ----------
    newdata : DataFrame
        The columns the formula uses (the response is not needed).
    include_random : bool
        Add the group effects (True) or predict at the population level (False).
    kind : {"mean", "predictive"}
        The expected value (linear predictor) or a new observation (adds sigma * noise).
    allow_new_levels : bool
        Levels not in the fitted data get effects drawn from N(0, Sigma), one per level
        and draw; with False they raise :class:`~bayeslmm.errors.DataError`. On a point
        fit ``kind="mean"`` uses their mean 0 (lme4's ``allow.new.levels``), and
        ``kind="predictive"`` draws them.
    random_seed : int, optional
        The same seed gives the same predictions, new levels included.
    prob : float
        Probability of the interval.

    Returns
    -------
    DataFrame
        Indexed like ``newdata``. A posterior gives ``mean, sd, lower, upper``; a point
        fit gives ``estimate`` for ``kind="mean"`` and ``estimate, sd, lower, upper``
        (from simulating the plug-in predictive distribution) for ``kind="predictive"``.
    """
    draws = predict_draws(result, newdata, include_random, kind, allow_new_levels, random_seed)
    if not is_posterior(result):
        if kind == "mean":
            return pd.DataFrame({"estimate": draws[0]}, index=newdata.index)
        mean = predict_draws(result, newdata, include_random, "mean", allow_new_levels)[0]
        lower, upper = interval(draws, prob)
        return pd.DataFrame({"estimate": mean, "sd": draws.std(axis=0, ddof=1), "lower": lower,
                             "upper": upper}, index=newdata.index)
    lower, upper = interval(draws, prob)
    return pd.DataFrame({"mean": draws.mean(axis=0), "sd": draws.std(axis=0, ddof=1),
                         "lower": lower, "upper": upper}, index=newdata.index)


# ---------------------------------------------------------------- posterior predictive
def replicate(result, draws: int = 100, random_seed=None) -> np.ndarray:
    """(draws, n) replicated data sets y_rep = fitted + sigma * noise.

    A posterior uses ``draws`` evenly spaced posterior draws; a point fit simulates
    ``draws`` data sets around its estimates (a parametric bootstrap of the residuals,
    group effects held at their conditional modes).
    """
    rng = np.random.default_rng(random_seed)
    S = len(result.sigma_draws())
    idx = _thin(S, draws) if is_posterior(result) else np.zeros(draws, dtype=int)
    mu = fitted_subset(result, idx)
    return mu + result.sigma_draws()[idx, None] * rng.standard_normal(mu.shape)


def _test_statistics(y: np.ndarray, codes: np.ndarray, n_levels: int) -> dict[str, np.ndarray]:
    """Test statistics of data sets stacked in the rows of ``y`` (S, n)."""
    counts = np.bincount(codes, minlength=n_levels)
    sums = np.stack([np.bincount(codes, weights=row, minlength=n_levels) for row in y])
    return {"mean": y.mean(axis=1), "sd": y.std(axis=1, ddof=1), "min": y.min(axis=1),
            "max": y.max(axis=1), "sd_group_means": (sums / counts).std(axis=1, ddof=1)}


@dataclass(frozen=True)
class PPCheck:
    """What :func:`ppc` returns.

    Attributes
    ----------
    figure : matplotlib.figure.Figure
        Density overlay of replicated data sets against the data, and one panel per
        test statistic.
    pvalues : DataFrame
        Indexed by statistic (``mean``, ``sd``, ``min``, ``max``, ``sd_group_means``),
        columns ``observed``, ``rep_mean``, ``rep_lower``, ``rep_upper`` (95% of the
        replicates) and ``p_value`` = P(T(y_rep) >= T(y)).
    y_rep : ndarray, shape (draws, n)
        The replicated data sets.
    """

    figure: object
    pvalues: pd.DataFrame
    y_rep: np.ndarray

    def _repr_png_(self):  # show the figure in notebooks
        import io

        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        return buffer.getvalue()


def ppc_pvalues(result, y_rep: np.ndarray) -> pd.DataFrame:
    """Bayesian p-values P(T(y_rep) >= T(y)) of the statistics of :class:`PPCheck`.

    The spread of group means uses the first bar's grouping factor."""
    design = result.design
    block = design.blocks[0]
    observed = _test_statistics(design.y[None, :], block.codes, block.n_levels)
    replicated = _test_statistics(y_rep, block.codes, block.n_levels)
    rows = {}
    for name, value in observed.items():
        rep = replicated[name]
        lo, hi = np.quantile(rep, [0.025, 0.975])
        rows[name] = {"observed": value[0], "rep_mean": rep.mean(), "rep_lower": lo, "rep_upper": hi,
                      "p_value": float(np.mean(rep >= value[0]))}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("statistic")


# ---------------------------------------------------------------- model comparison
def loo(result, **kwargs):
    """PSIS-LOO of a posterior (``arviz_stats.loo``, an ``ELPDData``); needs the stored
    pointwise log-likelihood."""
    from arviz_stats import loo as psis_loo

    if not is_posterior(result):
        raise BayesLMMError("loo() needs a posterior (LMM.sample()); a REML/ML fit has no draws: "
                            "compare REML/ML fits with bayeslmm.anova(fit_a, fit_b)")
    if "log_likelihood" not in result.idata.children:
        raise BayesLMMError("this posterior has no log_likelihood group (it was not stored, "
                            "probably because draws x observations was too large)")
    return psis_loo(result.idata, **kwargs)


def _model_names(names, n: int) -> list:
    """The user's model names (a list or tuple, one per fit) or model_1, model_2, ..."""
    if names is None:
        return [f"model_{i + 1}" for i in range(n)]
    if not isinstance(names, (list, tuple)):
        raise BayesLMMError(f"names must be a list with one name per fit, not {type(names).__name__} {names!r}")
    if len(set(map(str, names))) != len(names):
        raise BayesLMMError(f"names must differ from each other, got {list(names)!r}")
    return list(names)


def compare(*fits, names=None, **kwargs) -> pd.DataFrame:
    """Rank posteriors by expected log predictive density (``arviz_stats.compare``, PSIS-LOO).

    One row per model, best first; ``elpd_diff`` is each model's elpd minus the best one's
    (<= 0, ArviZ 1.x's sign), unrounded.

    Parameters
    ----------
    *fits : PosteriorResult
        Two or more posteriors of the same data, or one dict name -> posterior.
    names : list of str, optional
        Model names (``model_1``, ``model_2``, ... by default).
    **kwargs
        Passed to ``arviz_stats.compare``.
    """
    from arviz_stats import compare as loo_compare

    if len(fits) == 1 and isinstance(fits[0], dict):
        named = dict(fits[0])
    else:
        names = _model_names(names, len(fits))
        if len(names) != len(fits):
            raise BayesLMMError(f"{len(names)} names for {len(fits)} fits")
        named = dict(zip(names, fits))
    if len(named) < 2:
        raise BayesLMMError("compare() needs at least two fits")
    for name, fit in named.items():
        if not is_posterior(fit):
            raise BayesLMMError(f"compare() needs posteriors; '{name}' is a point fit: use "
                                "bayeslmm.anova() for REML/ML fits")
        loo(fit)  # raises the clear errors
    nobs = {fit.nobs for fit in named.values()}
    if len(nobs) > 1:
        raise BayesLMMError(f"the fits use different numbers of observations ({sorted(nobs)}); "
                            "LOO comparison needs the same data")
    kwargs.setdefault("round_to", "none")  # arviz_stats rounds to 2 significant digits by default
    return loo_compare({name: fit.idata for name, fit in named.items()}, **kwargs)


def anova(*fits, names=None) -> pd.DataFrame:
    """Likelihood-ratio tests of nested REML/ML fits, laid out like lme4's ``anova``.

    REML fits are refitted by maximum likelihood first (as lme4 does: REML criteria of
    models with different fixed effects are not comparable). Models are ordered by their
    number of parameters; each row's test compares it with the row above.

    Returns
    -------
    DataFrame
        Indexed by model name, columns ``npar, AIC, BIC, logLik, deviance, Chisq, Df,
        Pr(>Chisq)`` (NaN in the first row's test columns).
    """
    from scipy.stats import chi2

    from ..fitting.reml import fit_profiled

    if len(fits) < 2:
        raise BayesLMMError("anova() needs at least two fits")
    names = _model_names(names, len(fits))
    if len(names) != len(fits):
        raise BayesLMMError(f"{len(names)} names for {len(fits)} fits")
    ml_fits = []
    for name, fit in zip(names, fits):
        method = getattr(fit, "method", None)
        if is_posterior(fit) or method not in ("reml", "ml"):
            raise BayesLMMError(f"anova() compares REML/ML fits; '{name}' is "
                                f"{'a posterior' if is_posterior(fit) else repr(method)}: "
                                "use bayeslmm.compare() for posteriors")
        ml_fits.append(fit_profiled(fit.design, reml=False) if method == "reml" else fit)
    for name, fit in zip(names[1:], fits[1:]):  # same response, same rows (harden, issue 13)
        reason = fits[0].design.compare_observations(fit.design)
        if reason:
            raise BayesLMMError(f"anova() compares models of the same data; '{names[0]}' and '{name}' have {reason}")
    nobs = {fit.nobs for fit in ml_fits}
    if len(nobs) > 1:
        raise BayesLMMError(f"the fits use different numbers of observations ({sorted(nobs)}): "
                            "likelihood-ratio tests need the same data")
    order = sorted(range(len(ml_fits)), key=lambda i: ml_fits[i].n_params)  # stable, as R's order()
    rows = []
    previous = None
    for i in order:
        fit = ml_fits[i]
        row = {"npar": fit.n_params, "AIC": fit.aic, "BIC": fit.bic, "logLik": fit.loglik,
               "deviance": fit.deviance, "Chisq": np.nan, "Df": np.nan, "Pr(>Chisq)": np.nan}
        if previous is not None:
            stat = max(previous.deviance - fit.deviance, 0.0)
            df = fit.n_params - previous.n_params
            row.update({"Chisq": stat, "Df": df, "Pr(>Chisq)": chi2.sf(stat, df) if df > 0 else np.nan})
        rows.append(row)
        previous = fit
    frame = pd.DataFrame(rows, index=pd.Index([names[i] for i in order], name="model"))
    frame["npar"] = frame["npar"].astype(int)
    return frame


# ---------------------------------------------------------------- tidy exports
def tidy(result, effects=("fixed", "ran_pars"), prob: float = 0.95) -> pd.DataFrame:
    """One row per parameter, in the spirit of ``broom.mixed::tidy``.

    Parameters
    ----------
    effects : sequence of {"fixed", "ran_pars", "ran_vals", "ran_coefs"}
        Fixed effects; variance parameters (``sd__term``, ``cor__term1.term2``,
        ``sd__Observation`` for the residual); group effects; group coefficients.
    prob : float
        Interval probability (Wald intervals for fixed effects of a point fit).

    Returns
    -------
    DataFrame
        Columns ``effect, group, level, term, estimate, std_error, conf_low, conf_high``
        (point fits add ``statistic``, the t value, for fixed effects, and REML/ML fits
        lmerTest's Satterthwaite ``df`` and ``p_value``). On a posterior
        ``estimate`` is the posterior mean and ``std_error`` the posterior sd; variance
        parameters of a point fit have no standard error (NaN, as broom.mixed).
    """
    from scipy.stats import norm

    from ..results.point import varcorr_layout, varcorr_values

    effects = [effects] if isinstance(effects, str) else list(effects)
    unknown = set(effects) - {"fixed", "ran_pars", "ran_vals", "ran_coefs"}
    if unknown:
        raise BayesLMMError(f"unknown effects {sorted(unknown)}: use 'fixed', 'ran_pars', "
                            "'ran_vals' or 'ran_coefs'")
    posterior = is_posterior(result)
    design = result.design
    frames = []

    def from_draws(effect, groups, levels, terms, draws):
        lower, upper = interval(draws, prob)
        return pd.DataFrame({"effect": effect, "group": groups, "level": levels, "term": terms,
                             "estimate": draws.mean(axis=0),
                             "std_error": draws.std(axis=0, ddof=1) if posterior else np.nan,
                             "conf_low": lower if posterior else np.nan,
                             "conf_high": upper if posterior else np.nan})

    if "fixed" in effects:
        draws = result.fixef_draws()
        frame = from_draws("fixed", None, None, list(design.fixed_names), draws)
        if not posterior:
            table = result.fixef()
            z = norm.ppf(0.5 + prob / 2)
            frame["std_error"] = table["std_error"].to_numpy()
            frame["statistic"] = table["t_value"].to_numpy()
            if "df" in table:  # REML/ML fits: lmerTest's Satterthwaite df and p-values
                frame["df"] = table["df"].to_numpy()
                frame["p_value"] = table["p_value"].to_numpy()
            frame["conf_low"] = frame["estimate"] - z * frame["std_error"]
            frame["conf_high"] = frame["estimate"] + z * frame["std_error"]
        frames.append(frame)
    if "ran_pars" in effects:
        layout = varcorr_layout(design)
        values = varcorr_values(layout, result.cov_draws(), result.sigma_draws())[:, :, 1]
        terms = [("sd__Observation" if g == "Residual" else
                  f"sd__{a}" if b is None or pd.isna(b) else f"cor__{a}.{b}")
                 for g, a, b in zip(layout["group"], layout["var1"], layout["var2"])]
        frames.append(from_draws("ran_pars", list(layout["group"]), None, terms, values))
    for key, per_block in (("ran_vals", "ranef"), ("ran_coefs", "coef")):
        if key not in effects:
            continue
        draws_list = result.ranef_draws() if per_block == "ranef" else coef_draws(result)
        for block, draws in zip(design.blocks, draws_list):
            S = draws.shape[0]
            flat = draws.reshape(S, -1)
            frame = from_draws(key, block.group, np.repeat(block.levels, block.n_terms),
                               np.tile(block.terms, block.n_levels), flat)
            if not posterior and per_block == "ranef":
                table = result.ranef(tidy=True)
                table = table[table["group"] == block.group].set_index(["level", "term"])
                keys = list(zip(frame["level"], frame["term"]))
                frame["std_error"] = table["std_error"].reindex(keys).to_numpy()
                z = norm.ppf(0.5 + prob / 2)
                frame["conf_low"] = frame["estimate"] - z * frame["std_error"]
                frame["conf_high"] = frame["estimate"] + z * frame["std_error"]
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def glance(result) -> pd.DataFrame:
    """One row of model-level numbers, in the spirit of ``broom.mixed::glance``.

    Point fits: ``nobs, sigma, logLik, AIC, BIC, deviance, df_residual``, plus
    ``r2_marginal, r2_conditional`` and ``ngroups_<group>``. Posteriors: ``nobs,
    sigma`` (posterior mean), ``draws, chains, divergences``, R2 posterior means and
    ``ngroups_<group>``.
    """
    r2_table = r2(result)
    column = "mean" if is_posterior(result) else "estimate"
    row = {"nobs": result.nobs, "sigma": float(result.sigma_draws().mean())}
    if is_posterior(result):
        posterior = result.idata.posterior
        row.update({"draws": int(posterior.sizes["chain"] * posterior.sizes["draw"]),
                    "chains": int(posterior.sizes["chain"]), "divergences": result.divergences})
    else:
        row.update({"logLik": result.loglik, "AIC": result.aic, "BIC": result.bic,
                    "deviance": result.criterion, "df_residual": result.df_resid,
                    "method": result.method})
    row.update({"r2_marginal": r2_table.loc["marginal", column],
                "r2_conditional": r2_table.loc["conditional", column]})
    row.update({f"ngroups_{group}": n for group, n in result.ngroups().items()})
    return pd.DataFrame([row])


def augment(result) -> pd.DataFrame:
    """The data used in the fit with ``.fitted`` (with group effects), ``.fixed``
    (population level), ``.resid`` (y - .fitted) and, on a posterior, ``.fitted_sd``
    (posterior means and sd over draws), as ``broom.mixed::augment``."""
    design = result.design
    fitted, fitted_sd = fitted_mean_sd(result, include_random=True)
    out = design.data.copy()
    out[".fitted"] = fitted
    out[".fixed"] = design.X @ result.fixef_draws().mean(axis=0)
    out[".resid"] = design.y - fitted
    if is_posterior(result):
        out[".fitted_sd"] = fitted_sd
    return out
