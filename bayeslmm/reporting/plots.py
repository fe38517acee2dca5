"""Stage 5: figures.

Each function takes a fitted result (point or posterior) and returns a
``matplotlib.figure.Figure``; numbers come from :mod:`bayeslmm.reporting.report`, which reads the
draw primitives, so a point fit shows lines where a posterior shows bands over draws.
Nothing is shown or saved here: call ``fig.savefig(...)`` or let a notebook display it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..errors import BayesLMMError
from . import report

_NO = "#d62728"       # no pooling
_PARTIAL = "#1f77b4"  # partial pooling
_COMPLETE = "#2ca02c"  # complete pooling
_MAX_LABELLED_LEVELS = 60


def _figure(nrows: int, ncols: int, width: float, height: float, **kwargs):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)
    return fig, axes


def _close_from_pyplot(fig):
    """Detach a figure from pyplot's registry so loops over figures do not pile up."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig


def _estimate_column(frame: pd.DataFrame) -> str:
    return "mean" if "mean" in frame.columns else "estimate"


# ---------------------------------------------------------------- group effects
def plot_ranef(result, prob: float = 0.95):
    """Caterpillar plot of the group effects, like lme4's ``dotplot(ranef(condVar=TRUE))``.

    One panel per (grouping factor, term); levels sorted by the bar's first term and
    shared across that bar's panels. Intervals: posterior intervals on a posterior, and
    +-z * conditional sd (lme4's ``condVar``) on a point fit.
    """
    table = result.ranef(tidy=True, prob=prob)
    column = _estimate_column(table)
    blocks = result.design.blocks
    panels = [(k, t) for k, block in enumerate(blocks) for t in range(block.n_terms)]
    height = min(2.0 + 0.16 * max(b.n_levels for b in blocks), 14.0)
    fig, axes = _figure(1, len(panels), max(6.0, 3.6 * len(panels)), height)
    start = 0
    offsets = []
    for block in blocks:
        offsets.append(start)
        start += block.n_levels * block.n_terms
    for ax, (k, t) in zip(axes[0], panels):
        block = blocks[k]
        rows = table.iloc[offsets[k]: offsets[k] + block.n_levels * block.n_terms]
        est = rows[column].to_numpy().reshape(block.n_levels, block.n_terms)
        lo = rows["lower"].to_numpy().reshape(block.n_levels, block.n_terms)
        hi = rows["upper"].to_numpy().reshape(block.n_levels, block.n_terms)
        order = np.argsort(est[:, 0], kind="stable")
        pos = np.arange(block.n_levels)
        ax.hlines(pos, lo[order, t], hi[order, t], color=_PARTIAL, lw=1.2, alpha=0.8)
        ax.plot(est[order, t], pos, "o", color=_PARTIAL, ms=3.5)
        ax.axvline(0.0, color="0.4", lw=0.8, ls="--")
        if block.n_levels <= _MAX_LABELLED_LEVELS:
            ax.set_yticks(pos)
            ax.set_yticklabels([block.levels[i] for i in order], fontsize=7)
        else:
            ax.set_yticks([])
        ax.set_ylabel(f"{block.group} (sorted by {block.terms[0]})" if t == 0 else "")
        ax.set_xlabel(f"effect on {block.terms[t]}")
        ax.set_title(f"{block.group}: {block.terms[t]}")
    kind = "posterior" if report.is_posterior(result) else "conditional-variance"
    fig.suptitle(f"Group effects with {prob:.0%} {kind} intervals")
    fig.tight_layout()
    return _close_from_pyplot(fig)


# ---------------------------------------------------------------- ICC
def plot_icc(result, x: str, prob: float = 0.95):
    """ICC as a function of the random-slope variable ``x``.

    With a random slope the variance between groups, z(x)' Sigma z(x), changes with x,
    so the ICC z(x)' Sigma z(x) / (z(x)' Sigma z(x) + sigma^2) is a curve, not a number
    (other terms of the bar are held at their observed mean). A posterior shows the
    posterior mean and a ``prob`` band; a point fit shows the curve. The dotted line is
    the adjusted ICC (the average over the observed rows).
    """
    grid, values = report.icc_curve(result, x)
    fig, axes = _figure(1, 1, 6.0, 4.0)
    ax = axes[0, 0]
    if report.is_posterior(result):
        lo, hi = report.interval(values, prob)
        ax.fill_between(grid, lo, hi, color=_PARTIAL, alpha=0.25, label=f"{prob:.0%} posterior interval")
        ax.plot(grid, values.mean(axis=0), color=_PARTIAL, label="posterior mean")
        adjusted = report.icc(result).loc["adjusted", "mean"]
    else:
        ax.plot(grid, values[0], color=_PARTIAL, label="estimate")
        adjusted = report.icc(result).loc["adjusted", "estimate"]
    ax.axhline(adjusted, color="0.3", ls=":", label=f"adjusted ICC = {adjusted:.3f}")
    ax.set_ylim(0, 1)
    ax.set_xlabel(x)
    ax.set_ylabel("ICC (share of variance between groups)")
    ax.set_title(f"Intraclass correlation as a function of {x}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _close_from_pyplot(fig)


# ---------------------------------------------------------------- pooling
def _ellipse(center: np.ndarray, cov: np.ndarray, level: float, n: int = 100) -> np.ndarray:
    from scipy.stats import chi2

    w, v = np.linalg.eigh(cov)
    angle = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(angle), np.sin(angle)])
    radius = np.sqrt(chi2.ppf(level, 2))
    return (center[:, None] + v @ (np.sqrt(np.clip(w, 0, None))[:, None] * circle) * radius).T


def _arrows(ax, x0, y0, x1, y1):
    """Arrows from (x0, y0) to (x1, y1) as one quiver (thousands of annotations are slow)."""
    ax.quiver(x0, y0, np.asarray(x1) - x0, np.asarray(y1) - y0, angles="xy", scale_units="xy", scale=1.0,
              color="0.45", width=0.003, headwidth=4, headlength=5, headaxislength=4.5)


def _clip_to_view(core: np.ndarray, points: np.ndarray, pad: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """``points`` clipped to the box around ``core`` widened by ``pad`` of its span on each
    side, and which of them were inside.

    A group with two rows has a wild separate fit (Exam's school 48: slope -6.9 beside
    slopes of 0.2 to 0.9); drawn at the edge of the view, it no longer squeezes every other
    group into a corner."""
    lo, hi = np.nanmin(core, axis=0), np.nanmax(core, axis=0)
    span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1.0))
    lo, hi = lo - pad * span, hi + pad * span
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    return np.clip(points, lo, hi), inside


def plot_shrinkage(result, group: str | None = None):
    """Shrinkage: per level the no-pooling estimate, the partial-pooling estimate and an
    arrow between them, with the complete-pooling estimate for reference.

    A bar with two terms (intercept and slope) is drawn in 2-D, with the 50% and 95%
    contours of the estimated population distribution N(beta, Sigma); any other bar gets
    one 1-D panel per term (levels sorted by their no-pooling estimate; on a posterior
    with the 95% posterior interval of each partial-pooling estimate). No-pooling
    estimates far outside the rest (small groups) are drawn as triangles at the edge of
    the view. See :func:`bayeslmm.reporting.report.pooling` for how each estimate is computed.
    """
    table = report.pooling(result, group)
    k = report._block_index(result, group)
    block = result.design.blocks[k]
    terms = list(block.terms)
    no = table["no_pooling"][terms].to_numpy()
    partial = table["partial_pooling"][terms].to_numpy()
    complete = table["complete_pooling"][terms].to_numpy()[0]
    ok = np.all(np.isfinite(no), axis=1)
    title = f"Shrinkage of the {block.group} estimates: no pooling -> partial pooling"
    if block.n_terms == 2:
        fig, axes = _figure(1, 1, 6.5, 5.5)
        ax = axes[0, 0]
        cov = result.cov_draws()[k].mean(axis=0)
        fixed = dict(zip(result.design.fixed_names, result.fixef_draws().mean(axis=0)))
        center = np.array([fixed.get(term, 0.0) for term in terms])  # the population mean beta
        contours = {level: _ellipse(center, cov, level) for level in (0.5, 0.95)}
        for (level, path), style in zip(contours.items(), (":", "--")):
            ax.plot(path[:, 0], path[:, 1], color="0.5", ls=style, lw=0.8,
                    label=f"{level:.0%} of the population distribution")
        shown, inside = _clip_to_view(np.vstack([partial, complete[None], contours[0.95]]), no[ok])
        _arrows(ax, shown[:, 0], shown[:, 1], partial[ok, 0], partial[ok, 1])
        ax.plot(shown[inside, 0], shown[inside, 1], "o", mfc="none", color=_NO, label="no pooling (separate fits)")
        if not inside.all():
            ax.plot(shown[~inside, 0], shown[~inside, 1], "^", mfc="none", color=_NO,
                    label=f"no pooling, off the scale ({(~inside).sum()} of {len(inside)} groups)")
        ax.plot(partial[:, 0], partial[:, 1], "o", color=_PARTIAL, label="partial pooling (mixed model)")
        ax.plot(complete[0], complete[1], "*", ms=14, color=_COMPLETE, label="complete pooling (one fit)")
        ax.set_xlabel(terms[0])
        ax.set_ylabel(terms[1])
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        return _close_from_pyplot(fig)
    posterior_bounds = None
    if report.is_posterior(result):  # the partial-pooling estimates carry their uncertainty
        posterior_bounds = report.interval(report.coef_draws(result)[k], 0.95)
    height = min(2.5 + 0.16 * block.n_levels, 14.0)
    fig, axes = _figure(1, block.n_terms, max(7.0, 4.5 * block.n_terms), height)
    for t, ax in enumerate(axes[0]):
        order = np.argsort(np.where(ok, no[:, t], np.inf), kind="stable")
        pos = np.arange(block.n_levels)
        keep = ok[order]
        core = [partial[:, t], [complete[t]]]
        if posterior_bounds is not None:
            core += [posterior_bounds[0][:, t], posterior_bounds[1][:, t]]
        shown, inside = _clip_to_view(np.concatenate(core)[:, None], no[order, t][keep][:, None])
        shown = shown[:, 0]
        _arrows(ax, shown, pos[keep], partial[order, t][keep], pos[keep])
        ax.plot(shown[inside], pos[keep][inside], "o", mfc="none", color=_NO, label="no pooling (separate fits)")
        if not inside.all():
            ax.plot(shown[~inside], pos[keep][~inside], ">" if shown[~inside].mean() > complete[t] else "<",
                    mfc="none", color=_NO, label="no pooling, off the scale")
        if posterior_bounds is not None:
            ax.hlines(pos, posterior_bounds[0][order, t], posterior_bounds[1][order, t], color=_PARTIAL,
                      alpha=0.35, lw=2.5, label="95% posterior interval")
        ax.plot(partial[order, t], pos, "o", ms=4, color=_PARTIAL, label="partial pooling (mixed model)")
        ax.axvline(complete[t], color=_COMPLETE, ls="--", label="complete pooling (one fit)")
        if block.n_levels <= _MAX_LABELLED_LEVELS:
            ax.set_yticks(pos)
            ax.set_yticklabels([block.levels[j] for j in order], fontsize=7)
        else:
            ax.set_yticks([])
        ax.set_ylim(-1, block.n_levels + 0.15 * block.n_levels + 1)  # headroom for the legend
        ax.set_ylabel(f"{block.group} (sorted by no-pooling estimate)" if t == 0 else "")
        ax.set_xlabel(f"{terms[t]} estimate")
        ax.set_title(terms[t])
        if t == 0:
            ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    fig.suptitle(title)
    fig.tight_layout()
    return _close_from_pyplot(fig)


def _x_variable(result, block, x: str | None) -> tuple[str | None, np.ndarray | None]:
    """The predictor on the horizontal axis of :func:`plot_groups`."""
    design = result.design
    if x is None:
        slopes = [t for t in block.terms if t != "(Intercept)"]
        fixed = [t for t in design.fixed_names if t != "(Intercept)"]
        x = slopes[0] if slopes else (fixed[0] if fixed else None)
        if x is None:
            return None, None
    if x in block.terms:
        return x, block.X[:, block.terms.index(x)]
    if x in design.fixed_names:
        return x, design.X[:, list(design.fixed_names).index(x)]
    if x in design.data.columns and pd.api.types.is_numeric_dtype(design.data[x]):
        return x, design.data[x].to_numpy(dtype=float)
    raise BayesLMMError(f"x={x!r} is neither a model term nor a numeric column of the data")


def plot_groups(result, group: str | None = None, x: str | None = None, max_panels: int = 12,
                prob: float = 0.95):
    """One panel per level (the first ``max_panels`` levels) with the data and three
    fitted lines: complete pooling (one OLS fit), no pooling (a fit per level) and
    partial pooling (the mixed model, with a ``prob`` band on a posterior).

    ``x`` is the horizontal axis: the bar's first slope term by default, else the first
    fixed-effect predictor, else the row number within the level. Lines are evaluated
    at the level's rows (other covariates at their observed values), joined in order of x.
    """
    design = result.design
    k = report._block_index(result, group)
    block = design.blocks[k]
    if max_panels < 1:
        raise BayesLMMError(f"max_panels must be at least 1, not {max_panels}")
    table = report.pooling(result, group)
    terms = list(block.terms)
    no = table["no_pooling"][terms].to_numpy()
    names = list(design.fixed_names)
    ols = report._lstsq(design.X, design.y)
    beta_draws = result.fixef_draws()
    b_draws = result.ranef_draws()[k]
    beta = beta_draws.mean(axis=0)
    other = [j for j, name in enumerate(names) if name not in terms]
    offset = design.X[:, other] @ beta[other] if other else np.zeros(design.nobs)
    x_name, x_all = _x_variable(result, block, x)
    shown = min(block.n_levels, max_panels)
    ncols = min(4, shown)
    nrows = int(np.ceil(shown / ncols))
    fig, axes = _figure(nrows, ncols, 3.2 * ncols, 2.6 * nrows + 0.8, sharey=True, layout="constrained")
    posterior = report.is_posterior(result)
    idx = report._thin(len(beta_draws), 200)
    for j, ax in enumerate(axes.ravel()):
        if j >= shown:
            ax.set_visible(False)
            continue
        rows = np.flatnonzero(block.codes == j)
        xs = x_all[rows] if x_all is not None else np.arange(len(rows), dtype=float)
        order = np.argsort(xs, kind="stable")
        rows, xs = rows[order], xs[order]
        ax.plot(xs, design.y[rows], "o", ms=3, color="0.3", alpha=0.7)
        ax.plot(xs, design.X[rows] @ ols, color=_COMPLETE, ls="--", label="complete pooling")
        if np.all(np.isfinite(no[j])):
            ax.plot(xs, offset[rows] + block.X[rows] @ no[j], color=_NO, ls=":", label="no pooling")
        lines = beta_draws[idx] @ design.X[rows].T + b_draws[idx][:, j, :] @ block.X[rows].T
        ax.plot(xs, lines.mean(axis=0), color=_PARTIAL, label="partial pooling")
        if posterior:
            lo, hi = report.interval(lines, prob)
            ax.fill_between(xs, lo, hi, color=_PARTIAL, alpha=0.2)
        ax.set_title(f"{block.group} {block.levels[j]}", fontsize=9)
        if j % ncols == 0:
            ax.set_ylabel(design.response)
        ax.set_xlabel(x_name if x_name is not None else "row within group")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    more = f" (first {shown} of {block.n_levels})" if shown < block.n_levels else ""
    fig.suptitle(f"{design.response} by {block.group}{more}: complete, no and partial pooling")
    return _close_from_pyplot(fig)


# ---------------------------------------------------------------- checks
def _hist_density(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram densities of each row of ``values`` (S, n) on shared bin edges."""
    width = np.diff(edges)
    out = np.empty((values.shape[0], len(edges) - 1))
    for s, row in enumerate(values):
        counts, _ = np.histogram(row, bins=edges)
        out[s] = counts / (len(row) * width)
    return out


def _band(ax, x, curves, color, label, prob=0.95, alpha=0.25):
    """A line for one curve; the mean and a band for several."""
    if curves.shape[0] == 1:
        ax.plot(x, curves[0], color=color, label=label)
        return
    lo, hi = report.interval(curves, prob)
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, lw=0)
    ax.plot(x, curves.mean(axis=0), color=color, label=f"{label} ({prob:.0%} band)")


def ppc(result, draws: int = 100, random_seed=None):
    """Posterior predictive check.

    Replicated data sets y_rep = fitted + sigma * noise are drawn from ``draws`` posterior
    draws (on a point fit: ``draws`` simulations around the estimates). The figure shows
    the density of each replicate (thin lines) against the data's, and for each test
    statistic (mean, sd, min, max, sd of the first grouping factor's group means) the
    replicated values against the observed one, with the Bayesian p-value
    P(T(y_rep) >= T(y)) in the title; p-values near 0 or 1 flag misfit.

    Returns
    -------
    bayeslmm.reporting.report.PPCheck
        ``figure`` (matplotlib Figure, 6 axes), ``pvalues`` (DataFrame) and ``y_rep``.
    """
    design = result.design
    y_rep = report.replicate(result, draws=draws, random_seed=random_seed)
    pvalues = report.ppc_pvalues(result, y_rep)
    block = design.blocks[0]
    stats_rep = report._test_statistics(y_rep, block.codes, block.n_levels)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 7))
    grid = fig.add_gridspec(2, 5, height_ratios=[1.4, 1])
    ax = fig.add_subplot(grid[0, :])
    lo_edge = min(design.y.min(), y_rep.min())
    hi_edge = max(design.y.max(), y_rep.max())
    edges = np.linspace(lo_edge, hi_edge, int(np.clip(1.5 * np.sqrt(design.nobs), 12, 40)) + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    rep_density = _hist_density(y_rep, edges)
    for s, curve in enumerate(rep_density):
        ax.plot(centers, curve, color=_PARTIAL, alpha=0.15, lw=0.7,
                label="replicated data sets" if s == 0 else None)
    ax.plot(centers, _hist_density(design.y[None], edges)[0], color="k", lw=2, label="observed data")
    ax.set_xlabel(design.response)
    ax.set_ylabel("density")
    kind = "posterior" if report.is_posterior(result) else "plug-in (point estimate)"
    ax.set_title(f"{kind.capitalize()} predictive check: {len(y_rep)} replicated data sets")
    ax.legend(fontsize=8)
    labels = {"mean": "mean", "sd": "sd", "min": "min", "max": "max",
              "sd_group_means": f"sd of {block.group} means"}
    for i, (name, label) in enumerate(labels.items()):
        sub = fig.add_subplot(grid[1, i])
        sub.hist(stats_rep[name], bins=20, color=_PARTIAL, alpha=0.6)
        sub.axvline(pvalues.loc[name, "observed"], color="k", lw=2)
        sub.set_title(f"{label}\np = {pvalues.loc[name, 'p_value']:.2f}", fontsize=9)
        sub.set_xlabel(f"T(y_rep): {label}", fontsize=8)
        if i == 0:
            sub.set_ylabel("replicates")
    fig.tight_layout()
    return report.PPCheck(figure=_close_from_pyplot(fig), pvalues=pvalues, y_rep=y_rep)


def _binned_mean(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of y in bins of x (a simple smoother; NaN for an empty bin)."""
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    sums = np.bincount(which, weights=y, minlength=len(edges) - 1)
    counts = np.bincount(which, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def check_residuals(result, draws: int = 100, random_seed=None, prob: float = 0.95):
    """Residual diagnostics, with bands over posterior draws on a posterior.

    Panels: (1) density of the level-1 residuals y - fitted against the normal density
    N(0, sigma); (2) residuals against fitted values with a binned-mean smoother (bins
    at deciles of the fitted values; should stay near 0); (3) one normal QQ panel per
    random-effect term: each draw's group effects, standardized by their own sd, sorted
    against normal quantiles (the line y = x is perfect normality). A point fit draws
    single lines from its estimates and conditional modes.

    ``random_seed`` is accepted for a uniform signature (the panels use evenly spaced
    draws, no randomness).

    Returns
    -------
    matplotlib.figure.Figure
        2 + (number of random-effect terms) axes.
    """
    del random_seed  # the panels are deterministic
    design = result.design
    S = len(result.sigma_draws())
    idx = report._thin(S, draws)
    fitted = report.fitted_subset(result, idx)
    resid = design.y[None, :] - fitted
    sigma = result.sigma_draws()[idx]
    panels = 2 + sum(block.n_terms for block in design.blocks)
    ncols = min(3, panels)
    nrows = int(np.ceil(panels / ncols))
    fig, axes = _figure(nrows, ncols, 4.3 * ncols, 3.6 * nrows)
    flat = axes.ravel()
    for ax in flat[panels:]:
        ax.set_visible(False)

    ax = flat[0]
    span = np.quantile(np.abs(resid), 0.999) * 1.1
    n_bins = int(np.clip(1.5 * np.sqrt(design.nobs), 12, 40))  # fewer bins for small data
    edges = np.linspace(-span, span, n_bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    _band(ax, centers, _hist_density(resid, edges), _PARTIAL, "residuals", prob)
    _band(ax, centers, norm.pdf(centers[None, :], 0.0, sigma[:, None]), "0.4", "normal N(0, sigma)", prob,
          alpha=0.15)
    ax.set_xlabel("residual (y - fitted)")
    ax.set_ylabel("density")
    ax.set_title("Level-1 residuals vs normal")
    ax.legend(fontsize=7)

    ax = flat[1]
    mean_fitted = fitted.mean(axis=0)
    ax.plot(mean_fitted, resid.mean(axis=0), "o", ms=2, alpha=0.3, color="0.3")
    edges = np.unique(np.quantile(mean_fitted, np.linspace(0, 1, 11)))
    if len(edges) < 2:  # all fitted values equal (e.g. a singular intercept-only fit)
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    centers = 0.5 * (edges[1:] + edges[:-1])
    smooth = np.stack([_binned_mean(mean_fitted, r, edges) for r in resid])
    _band(ax, centers, smooth, _NO, "binned mean", prob)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("fitted value")
    ax.set_ylabel("residual")
    ax.set_title("Residuals vs fitted")
    ax.legend(fontsize=7)

    p = 2
    for block, b in zip(design.blocks, result.ranef_draws()):
        b = b[idx] if b.shape[0] == S else b
        J = block.n_levels
        theory = norm.ppf((np.arange(1, J + 1) - 0.5) / J)
        for t, term in enumerate(block.terms):
            ax = flat[p]
            p += 1
            values = b[:, :, t]
            sd = values.std(axis=1, ddof=1, keepdims=True)
            standardized = np.sort((values - values.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0),
                                   axis=1)
            _band(ax, theory, standardized, _PARTIAL, "sorted effects", prob)
            ax.plot(theory, theory, color="k", lw=0.8, ls="--", label="normal")
            ax.set_xlabel("normal quantile")
            ax.set_ylabel("standardized effect")
            ax.set_title(f"{block.group}: {term} effects (QQ)")
            ax.legend(fontsize=7)
    kind = "posterior draws" if report.is_posterior(result) else "point estimates"
    fig.suptitle(f"Residual checks ({kind})")
    fig.tight_layout()
    return _close_from_pyplot(fig)
