"""Text summary of a GLMM point fit, laid out like ``summary(glmer(...))``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .summary import coefficient_columns, format_table, groups_line, optimizer_line, r_format


def _abbreviate(name: str, width: int = 6) -> str:
    """R's ``abbreviate``: drop lower-case vowels from the right, then lower-case letters,
    keeping the first character, until ``width`` is reached."""
    if name == "(Intercept)":
        return "(Intr)"
    chars = list(name)
    for pool in ("aeiou", "abcdefghijklmnopqrstuvwxyz"):
        i = len(chars) - 1
        while len(chars) > width and i > 0:
            if chars[i] in pool:
                del chars[i]
            i -= 1
    return "".join(chars[:width]) if len(chars) > width else "".join(chars)


def _stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else ""


def _pvalue(p: float) -> str:
    return "<2e-16" if p < 2e-16 else f"{p:.3g}"


def _random_table(result) -> str:
    rows, variances, previous = [], [], None
    for block, cov in zip(result.design.blocks, result.covariances):
        sds = np.sqrt(np.maximum(np.diag(cov), 0.0))
        for i, term in enumerate(block.terms):
            corr = []
            if block.correlated:
                for j in range(i):
                    denom = sds[i] * sds[j]
                    corr.append(f"{cov[i, j] / denom:5.2f}" if denom > 0 else "  NaN")
            label = block.group if block.group != previous else ""
            previous = block.group
            rows.append([label, term, " ".join(corr)])
            variances.append(max(cov[i, i], 0.0))
    v_cells, s_cells = r_format(variances, 4), r_format(np.sqrt(variances), 4)
    rows = [[g, n, v, s, c] for (g, n, c), v, s in zip(rows, v_cells, s_cells)]
    heads = ["Groups", "Name", "Variance", "Std.Dev.", "Corr"]
    if not any(r[4] for r in rows):  # lme4 prints no Corr column without correlations
        rows = [r[:4] for r in rows]
        heads = heads[:4]
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(heads)]
    align = [str.ljust, str.ljust, str.rjust, str.rjust, str.ljust]
    lines = [" " + " ".join(a(h, w) for a, h, w in zip(align, heads, widths)).rstrip()]
    lines += [" " + " ".join(a(v, w) for a, v, w in zip(align, row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def glmm_summary(result) -> str:
    """glmer-style summary of a :class:`~bayeslmm.results.glmm_results.GLMMResult`."""
    from ..results.glmm_results import _METHOD_TEXT

    design = result.design
    how = _METHOD_TEXT[result.method]
    if result.method == "agq":
        how = f"{how} (nAGQ = {result.n_agq})"
    out = [f"Generalized linear mixed model fit by maximum likelihood ({how}) ['bayeslmm']"
           if result.method != "map" else f"Generalized linear mixed model fit by {how} ['bayeslmm']",
           f" Family: {result.family.describe()}", f"Formula: {design.formula.text}"]
    if design.n_dropped:
        out.append(f"  ({design.n_dropped} rows dropped for missing values)")
    out.append("")
    stats = pd.DataFrame({"AIC": [f"{result.aic:.1f}"], "BIC": [f"{result.bic:.1f}"],
                          "logLik": [f"{result.loglik:.1f}"], "deviance": [f"{result.criterion:.1f}"],
                          "df.resid": [str(result.df_resid)]}, index=[""])
    out.append(format_table(stats))
    if result.priors_used:
        out += ["", "Priors:"] + ["  " + line for line in result.priors_used.splitlines()]
    out.append("")
    quantiles = np.quantile(result.residuals("pearson"), [0, 0.25, 0.5, 0.75, 1.0])
    out.append("Scaled residuals: ")
    out.append(format_table(pd.DataFrame([[f"{q:.4f}" for q in quantiles]],
                                         columns=["Min", "1Q", "Median", "3Q", "Max"], index=[""])))
    out += ["", "Random effects:", _random_table(result), groups_line(result), ""]
    fixef = result.fixef()
    est, se, z = coefficient_columns(fixef["estimate"].to_numpy(), fixef["std_error"].to_numpy(),
                                     fixef["z_value"].to_numpy())
    table = pd.DataFrame({"Estimate": est, "Std. Error": se, "z value": z,
                          "Pr(>|z|)": [_pvalue(p) for p in fixef["p_value"]],
                          "": [_stars(p) for p in fixef["p_value"]]}, index=fixef.index)
    out.append("Fixed effects:")
    out.append(format_table(table))
    out.append("---")
    out.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
    if len(fixef) > 1:
        sd = np.sqrt(np.diag(result.vcov_beta))
        corr = result.vcov_beta / np.outer(sd, sd)
        short = [_abbreviate(name) for name in fixef.index]
        short = [f"{a}.{k}" if short.count(a) > 1 else a for k, a in enumerate(short)]
        cells = pd.DataFrame([[f"{corr[i, j]:.3f}" if j < i else "" for j in range(len(short) - 1)]
                              for i in range(1, len(short))], index=list(fixef.index[1:]), columns=short[:-1])
        out += ["", "Correlation of Fixed Effects:", format_table(cells)]
    if result.opt is not None and not result.opt.converged:
        out.append(optimizer_line(result.opt))
    if result.is_singular:
        out.append("boundary (singular) fit: see help('isSingular'); refit with priors: fit(method='map') or sample()")
    return "\n".join(out)
