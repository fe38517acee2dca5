"""Text summaries laid out like lme4's ``summary(lmer(...))``."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _fmt(value: float, digits: int = 4) -> str:
    """A single value to ``digits`` significant digits (for the posterior tables)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.{digits}g}"


def _decimals_needed(x: float, digits: int) -> int:
    """Decimals that show ``x`` to ``digits`` significant digits, trailing zeros dropped
    (the per-element step of R's ``formatReal``)."""
    if x == 0 or not np.isfinite(x):
        return 0
    exponent = int(np.floor(np.log10(abs(x))))
    places = max(0, digits - 1 - exponent)
    text = f"{abs(x):.{places}f}"
    if "." not in text:
        return 0
    return len(text.split(".")[1].rstrip("0"))


def r_format(values, digits: int = 4) -> list[str]:
    """Format a numeric column as R's ``format(x, digits = digits)`` does.

    One number of decimals for the whole column: the fewest that show every element to
    ``digits`` significant digits (so lmer prints variances ``612.10`` and ``35.07``
    together). Scientific notation where it is narrower, as R chooses; NaN as ``NaN``.
    """
    x = np.asarray(values, dtype=float)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return ["NaN" if np.isnan(v) else str(v) for v in x]
    decimals = max(_decimals_needed(v, digits) for v in finite)
    fixed = [f"{v:.{decimals}f}" if np.isfinite(v) else "NaN" for v in x]
    # R's scientific alternative: mantissa digits as needed, at most ``digits``
    mantissa = max(min(digits, len(f"{abs(v):.{digits - 1}e}".split("e")[0].replace(".", "").rstrip("0")) or 1)
                   for v in finite)
    sci = [f"{v:.{mantissa - 1}e}" if np.isfinite(v) else "NaN" for v in x]
    if max(map(len, fixed)) > max(map(len, sci)):
        fixed = sci
    width = max(map(len, fixed))
    return [v.rjust(width) for v in fixed]


def coefficient_columns(estimate, std_error, t_value, digits: int = 4) -> tuple[list[str], list[str], list[str]]:
    """Estimate, Std. Error and t value as R's ``printCoefmat`` prints them in lmer's summary:
    estimates and standard errors rounded together to ``digits`` less the magnitude of the
    smallest of them, t values to ``digits - 1`` decimals."""
    both = np.abs(np.concatenate([np.asarray(estimate, float), np.asarray(std_error, float)]))
    both = both[np.isfinite(both) & (both != 0)]
    smallest = 1 + int(np.floor(np.log10(both.min()))) if both.size else 1
    places = max(1, digits - smallest)
    cs = r_format(np.round(np.concatenate([estimate, std_error]), places), digits)
    n = len(estimate)
    return cs[:n], cs[n:], r_format(np.round(np.asarray(t_value, float), max(1, min(5, digits - 1))), digits)


def format_pvalues(pvalues, digits: int = 3, eps: float = float(np.finfo(float).eps)) -> list[str]:
    """R's ``format.pval(p, digits = 3, eps = .Machine$double.eps)`` as ``printCoefmat`` uses it."""
    pv = np.asarray(pvalues, dtype=float)
    out = ["NA"] * len(pv)
    small = pv < eps
    rest = [i for i in range(len(pv)) if not small[i] and np.isfinite(pv[i])]
    exponent = np.floor(np.log10(np.where(pv > 0, pv, 1e-50)))
    for group in ([i for i in rest if exponent[i] >= -3 or pv[i] == 0], [i for i in rest if exponent[i] < -3]):
        if group:
            for i, text in zip(group, r_format(pv[group], digits)):
                out[i] = text.strip()
    if small.any():
        d = max(1, digits - 2)
        if rest:
            nc = max(len(out[i]) for i in rest)
            if d > 1 and d + 6 > nc:
                d = max(1, nc - 7)
            sep = "" if d == 1 and nc <= 6 else " "
        else:
            sep = "" if d == 1 else " "
        text = f"{eps:.{d - 1}e}".replace("e-", "e-")
        mantissa, power = text.split("e")
        text = f"{mantissa}e{power[0]}{int(power[1:]):02d}"
        for i in np.flatnonzero(small):
            out[i] = "<" + sep + text
    return out


def significance_stars(pvalues) -> list[str]:
    """R's ``symnum`` stars: *** < 0.001 <= ** < 0.01 <= * < 0.05 <= . < 0.1."""
    cuts = [(0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")]
    out = []
    for p in pvalues:
        star = next((s for c, s in cuts if p <= c), " ") if np.isfinite(p) else ""
        out.append(star.ljust(3))
    return out


SIGNIF_LEGEND = "Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1"


def lmertest_table(table: pd.DataFrame, digits: int = 4) -> str:
    """The fixed-effects table of lmerTest's summary (``printCoefmat`` with df among the
    columns rounded with the estimates, t values to 3 decimals, p-values and stars)."""
    n = len(table)
    both = np.concatenate([table["estimate"], table["std_error"], table["df"]]).astype(float)
    finite = np.abs(both[np.isfinite(both) & (both != 0)])
    smallest = 1 + int(np.floor(np.log10(finite.min()))) if finite.size else 1
    places = max(1, digits - smallest)
    cells = r_format(np.round(both, places), digits)
    t_cells = r_format(np.round(table["t_value"].to_numpy(float), max(1, min(5, digits - 1))), digits)
    frame = pd.DataFrame({"Estimate": cells[:n], "Std. Error": cells[n:2 * n], "df": cells[2 * n:],
                          "t value": t_cells, "Pr(>|t|)": format_pvalues(table["p_value"].to_numpy(float)),
                          "": significance_stars(table["p_value"].to_numpy(float))}, index=table.index)
    return format_table(frame) + "\n---\n" + SIGNIF_LEGEND


def format_table(frame: pd.DataFrame, index_name: str = "") -> str:
    """Right-aligned columns, left-aligned index, as R prints a matrix."""
    cells = [[str(i) for i in frame.index]] + [[str(v) for v in frame[c]] for c in frame.columns]
    heads = [index_name] + [str(c) for c in frame.columns]
    widths = [max(len(h), *(len(x) for x in col)) if len(col) else len(h) for h, col in zip(heads, cells)]
    lines = [" ".join([heads[0].ljust(widths[0])] + [h.rjust(w) for h, w in zip(heads[1:], widths[1:])])]
    for r in range(len(frame)):
        lines.append(" ".join([cells[0][r].ljust(widths[0])] +
                              [cells[c][r].rjust(widths[c]) for c in range(1, len(cells))]))
    return "\n".join(lines)


def random_effects_table(result) -> str:
    """The 'Random effects:' block: Groups, Name, Variance, Std.Dev., Corr."""
    from ..results.point import varcorr_layout

    layout = varcorr_layout(result.design)
    covs = [c[0] for c in result.cov_draws()]
    sigma = float(result.sigma_draws()[0])
    rows, variances, previous = [], [], None
    for row in layout[layout["var2"].isna()].itertuples():
        if row.block < 0:
            rows.append(["Residual", "", ""])
            variances.append(sigma**2)
            continue
        block = result.design.blocks[row.block]
        cov = covs[row.block]
        sds = np.sqrt(np.maximum(np.diag(cov), 0))
        corr_cells = []
        if block.correlated:
            for j in range(row.i):
                denom = sds[row.i] * sds[j]
                corr_cells.append(f"{cov[row.i, j] / denom:5.2f}" if denom > 0 else "  NaN")
        label = "" if row.group == previous else row.group
        previous = row.group
        rows.append([label, row.var1, " ".join(corr_cells)])
        variances.append(max(cov[row.i, row.i], 0.0))
    # one format per column, as lme4's formatVC: variances and sds each share their decimals
    variance_cells = r_format(variances, 4)
    sd_cells = r_format(np.sqrt(variances), 4)
    rows = [[group, name, v, s, corr] for (group, name, corr), v, s in zip(rows, variance_cells, sd_cells)]
    heads = ["Groups", "Name", "Variance", "Std.Dev.", "Corr"]
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(heads)]
    align = [str.ljust, str.ljust, str.rjust, str.rjust, str.ljust]
    lines = [" " + " ".join(a(h, w) for a, h, w in zip(align, heads, widths)).rstrip()]
    for row in rows:
        lines.append(" " + " ".join(a(v, w) for a, v, w in zip(align, row, widths)).rstrip())
    return "\n".join(lines)


def groups_line(result) -> str:
    seen, parts = set(), []
    for block in result.design.blocks:
        if block.group not in seen:
            seen.add(block.group)
            parts.append(f"{block.group}, {block.n_levels}")
    return f"Number of obs: {result.nobs}, groups:  " + "; ".join(parts)


def point_summary(result, ddf: str | None = "default") -> str:
    """lmer-style summary of a :class:`~bayeslmm.results.point.PointResult`; with ``ddf``
    (Satterthwaite by default for REML/ML fits) the fixed effects are lmerTest's table
    with df, p-values and significance stars."""
    design = result.design
    out = []
    if ddf == "default":
        ddf = "satterthwaite" if result.method in ("reml", "ml") else None
    method_name = {"satterthwaite": "Satterthwaite", "kenward-roger": "Kenward-Roger"}.get(
        str(ddf).lower().replace("_", "-")) if ddf else None
    tests = f". t-tests use {method_name}'s method [lmerModLmerTest]" if method_name else " ['bayeslmm']"
    if result.method == "reml":
        out.append("Linear mixed model fit by REML" + tests)
    elif result.method == "ml":
        out.append("Linear mixed model fit by maximum likelihood " + tests.lstrip(" ") if method_name
                   else "Linear mixed model fit by maximum likelihood ['bayeslmm']")
    else:
        out.append("Linear mixed model fit by maximum a posteriori (MAP, random effects integrated out) ['bayeslmm']")
    out.append(f"Formula: {design.formula.text}")
    if design.n_dropped:
        out.append(f"  ({design.n_dropped} rows dropped for missing values)")
    out.append("")
    if result.method == "reml":
        out.append(f"REML criterion at convergence: {result.criterion:.1f}")
    else:
        stats = pd.DataFrame({"AIC": [f"{result.aic:.1f}"], "BIC": [f"{result.bic:.1f}"],
                              "logLik": [f"{result.loglik:.1f}"], "deviance": [f"{result.criterion:.1f}"],
                              "df.resid": [str(result.df_resid)]}, index=[""])
        if result.method == "map":
            out.append(f"Log-likelihood at the MAP: {result.loglik:.1f}")
        else:
            out.append(format_table(stats))
    if result.priors_used:
        out.append("")
        out.append("Priors:")
        out.extend("  " + line for line in result.priors_used.splitlines())
    out.append("")
    if len(design.y):
        residuals = (design.y - result.fitted_draws()[0]) / result.sigma
        quantiles = np.quantile(residuals, [0, 0.25, 0.5, 0.75, 1.0])
        out.append("Scaled residuals: ")
        out.append(format_table(pd.DataFrame([[f"{q:.4f}" for q in quantiles]],
                                             columns=["Min", "1Q", "Median", "3Q", "Max"], index=[""])))
    else:  # fitted out of core: the rows stayed in the Dask dataframe
        out.append(f"Fitted out of core from per-group statistics of {result.nobs} rows (no residuals)")
    out.append("")
    out.append("Random effects:")
    out.append(random_effects_table(result))
    out.append(groups_line(result))
    out.append("")
    fixef = result.fixef(ddf=ddf)
    out.append("Fixed effects:")
    if ddf:
        out.append(lmertest_table(fixef))
    else:
        estimate, std_error, t_value = coefficient_columns(fixef["estimate"].to_numpy(),
                                                           fixef["std_error"].to_numpy(), fixef["t_value"].to_numpy())
        table = pd.DataFrame({"Estimate": estimate, "Std. Error": std_error, "t value": t_value}, index=fixef.index)
        out.append(format_table(table))
    if len(fixef) > 1:
        se = np.sqrt(np.diag(result.vcov_beta))
        corr = result.vcov_beta / np.outer(se, se)
        short = [name[:6] if name != "(Intercept)" else "(Intr)" for name in fixef.index]
        cells = pd.DataFrame([[f"{corr[i, j]:.3f}" if j < i else "" for j in range(len(short) - 1)]
                              for i in range(1, len(short))],
                             index=list(fixef.index[1:]), columns=short[:-1])
        out.append("")
        out.append("Correlation of Fixed Effects:")
        out.append(format_table(cells))
    if design.aliased:
        out.append(f"fit warnings:\nfixed-effect model matrix is rank deficient so dropping "
                   f"{len(design.aliased)} column(s) / coefficient(s): {', '.join(design.aliased)}")
    reml_singular = result.method in ("reml", "ml") and result.is_singular
    if reml_singular or not result.opt.converged:  # lme4 prints it with its fit messages
        out.append(optimizer_line(result.opt))
    if result.method == "map" and result.is_singular:
        out.append("the MAP is at the boundary too: " + "; ".join(result.singular_terms()))
        out.append("  a prior with positive density at a zero sd (HalfNormal, HalfStudentT, Exponential) "
                   "cannot keep the mode off it; the default Gamma(alpha=2, ...) on the sds does")
    if reml_singular:
        out.append("boundary (singular) fit: see help('isSingular')")
        out.append("  at the boundary: " + "; ".join(result.singular_terms()))
        out.append("  next steps: simplify the random part (drop a term, or use '||'), or refit with "
                   "priors: fit(method='map') or sample()")
    return "\n".join(out)


def optimizer_line(opt) -> str:
    """lme4's ``optimizer (...) convergence code: ...`` line, from the fit's optimization summary."""
    if opt.converged:
        return f"optimizer ({opt.optimizer}) convergence code: 0 (OK)"
    return f"optimizer ({opt.optimizer}) convergence code: 1 ({opt.message}); {opt.evaluations} evaluations"


def posterior_summary(result, prob: float = 0.95) -> str:
    """lmer-like summary of a posterior: means, sds, equal-tailed intervals, R-hat, ESS."""
    design = result.design
    post = result.idata.posterior
    pct = f"{100 * prob:g}%"
    method = "Metropolis-Hastings" if "Metropolis" in str(post.attrs.get("sampler", "")) else "NUTS"
    out = [f"Linear mixed model, posterior by {method} ({post.attrs.get('sampler', '?')}, "
           f"{post.attrs.get('parametrization', 'full')} parametrization) ['bayeslmm']",
           f"Formula: {design.formula.text}"]
    if design.n_dropped:
        out.append(f"  ({design.n_dropped} rows dropped for missing values)")
    out.append(f"Draws: {post.sizes['chain']} chains x {post.sizes['draw']} = {result.n_draws}; "
               f"divergences: {result.divergences}")
    out.append("")
    out.append("Priors:")
    out.extend("  " + line for line in result.prior_set.describe(design).splitlines())
    out.append("")
    diag = result.diagnostics()
    vc = result.varcorr(prob)
    rows = []
    labels = {}
    from ..sampling.bayes import bar_labels, correlation_pairs

    for label, block in zip(bar_labels(design), design.blocks):
        for term in block.terms:
            labels[(label, term, None)] = f"sd_{label}[{term}]"
        if block.correlated and block.n_terms > 1:
            for i, j, name in correlation_pairs(block.terms):
                labels[(label, block.terms[i], block.terms[j])] = f"cor_{label}[{name}]"
    previous = None
    vc_group_to_label = {}
    for label, block in zip(bar_labels(design), design.blocks):
        vc_group_to_label.setdefault(block.group, label)
    for row in vc.itertuples(index=False):
        is_sd = row.var2 is None or (isinstance(row.var2, float) and np.isnan(row.var2))
        if row.group == "Residual":
            key = "sigma"
        else:
            base = row.group.split(".")[0] if row.group not in vc_group_to_label else row.group
            label = vc_group_to_label.get(row.group, vc_group_to_label.get(base, base))
            key = labels.get((label, row.var1, None if is_sd else row.var2), "")
        name = row.var1 if is_sd else f"cor({row.var1}, {row.var2})"
        group = "" if row.group == previous else row.group
        previous = row.group
        rhat = diag.loc[key, "r_hat"] if key in diag.index else np.nan
        ess = diag.loc[key, "ess_bulk"] if key in diag.index else np.nan
        rows.append([group, name if row.group != "Residual" else "", _fmt(row.sdcor), _fmt(row.sdcor_sd),
                     _fmt(row.lower), _fmt(row.upper), f"{rhat:.3f}", f"{ess:.0f}"])
    heads = ["Groups", "Name", "Mean", "SD", f"{(1 - prob) / 2 * 100:g}%", f"{(1 + prob) / 2 * 100:g}%", "Rhat", "ESS"]
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(heads)]
    align = [str.ljust, str.ljust] + [str.rjust] * 6
    out.append(f"Random effects (standard deviations and correlations, {pct} intervals):")
    out.append(" " + " ".join(a(h, w) for a, h, w in zip(align, heads, widths)).rstrip())
    for row in rows:
        out.append(" " + " ".join(a(v, w) for a, v, w in zip(align, row, widths)).rstrip())
    out.append(groups_line(result))
    out.append("")
    fixef = result.fixef(prob)
    table = pd.DataFrame({"Mean": [_fmt(v) for v in fixef["mean"]], "SD": [_fmt(v) for v in fixef["sd"]],
                          heads[4]: [_fmt(v) for v in fixef["lower"]], heads[5]: [_fmt(v) for v in fixef["upper"]],
                          "Rhat": [f"{v:.3f}" for v in fixef["rhat"]],
                          "ESS": [f"{v:.0f}" for v in fixef["ess_bulk"]]}, index=fixef.index)
    out.append("Fixed effects:")
    out.append(format_table(table))
    message = result.diagnostic_message()
    if message:
        out.append("")
        out.append("Warning: " + message)
    return "\n".join(out)
