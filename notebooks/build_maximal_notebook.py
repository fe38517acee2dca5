"""The maximal-model notebook (08_maximal_models_kb07.ipynb): cells, and a builder for this
one notebook.

``build_notebooks.py`` adds ``NAME`` and ``CELLS`` to its table, so the tests run it like the
others (``BAYESLMM_FAST=1``: a few draws). Run ``python notebooks/build_maximal_notebook.py
--execute`` after editing: it executes this notebook at full settings and saves it with its
outputs (the other notebooks are left alone).
"""

from __future__ import annotations

NAME = "08_maximal_models_kb07.ipynb"

CELLS = [
    ("md", """# Keep it maximal? From the maximal model to a parsimonious one, and its posterior

Psycholinguists fit *maximal* models (Barr et al. 2013, "Random effects structure for
confirmatory hypothesis testing: keep it maximal"): every within-subject and within-item
effect gets a random slope on both factors, with all correlations. Bates, Kliegl, Vasishth &
Baayen (2015, "Parsimonious mixed models") showed on the same data as here that such models
are often *degenerate*: the data do not support all the variance components they ask for.
This notebook walks their argument on kb07 (Kronmüller & Barr 2007):

1. fit the maximal model by maximum likelihood and see that it is singular;
2. ask how many dimensions of each random-effect covariance the data support (`rePCA`);
3. fit the zero-correlation model and drop the components estimated at zero;
4. compare the reduced model with the maximal one (likelihood-ratio test);
5. and, for readers who would rather keep the maximal model, sample its posterior: the
   priors (an LKJ prior on every correlation matrix) keep it away from the boundary."""),
    ("code", """import os, time, warnings
import numpy as np, pandas as pd
import matplotlib.pyplot as plt
import bayeslmm as blm

# BAYESLMM_FAST=1 (the test suite) samples a few draws only; unset it for real analyses
FAST = os.environ.get("BAYESLMM_FAST") == "1"
SAMPLE = dict(draws=60, tune=60, chains=2) if FAST else dict(draws=1000, tune=1000, chains=4)
if FAST:
    warnings.filterwarnings("ignore", category=blm.SamplingWarning)  # a few draws: R-hat/ESS warn

kb07 = blm.datasets.load("kb07")
print(kb07.shape, "subjects:", kb07.subj.nunique(), "items:", kb07.item.nunique())
kb07.head()"""),
    ("md", """56 subjects each read 32 items; the three two-level factors speaker (`S`), precedent (`P`)
and cognitive load (`C`) are coded -1/+1, and `SP`, `SC`, `PC`, `SPC` are their products. All
eight terms vary within subjects and within items, so the maximal model has an 8 x 8
covariance matrix on each factor: 2 x (8 + 28) = 72 covariance parameters."""),
    ("code", """terms = "1 + S + P + C + SP + SC + PC + SPC"
maximal_formula = f"RTtrunc ~ {terms} + ({terms} | subj) + ({terms} | item)"
start = time.perf_counter()
maximal = blm.LMM(maximal_formula, kb07).fit(method="ml")
print(f"fitted in {time.perf_counter() - start:.1f} s; deviance {maximal.criterion:.4f} "
      f"(lme4 1.1-31: 28586.3178, after 2030 s)")
print("singular:", maximal.is_singular)"""),
    ("md", """The fit is singular: some variance components sit at zero, or some correlations at
+-1, which means the covariance matrices are not of full rank. `singular_terms()` lists what is
on the boundary, and lme4's `rePCA` shows the principal components of each covariance matrix:
the proportion of variance each dimension carries."""),
    ("code", """maximal.singular_terms()[:10]"""),
    ("code", """pca = maximal.rePCA()
pd.concat({group: table["cumulative"] for group, table in pca.items()}, axis=1).round(4)"""),
    ("md", """On both factors a handful of components carry essentially all the variance: the
remaining dimensions are estimated at (or next to) zero, so the 8 x 8 matrices are far from
supported by these data. Bates et al.'s next step is the zero-correlation-parameter model
(`||`), which keeps the eight variances per factor and drops the correlations: it shows which
variance components themselves are not supported."""),
    ("code", """zcp_formula = f"RTtrunc ~ {terms} + ({terms} || subj) + ({terms} || item)"
zcp = blm.LMM(zcp_formula, kb07).fit(method="ml")
print(f"deviance {zcp.criterion:.4f} (lme4: 28670.9133)")
# lme4 names the uncorrelated bars of one factor subj, subj.1, subj.2, ...
vc = zcp.varcorr().assign(factor=lambda t: t["group"].str.replace(r"\\.\\d+$", "", regex=True))
sds = vc[vc["var2"].isna() & (vc["group"] != "Residual")]
sds.pivot(index="var1", columns="factor", values="sdcor").loc[list(maximal.design.fixed_names)].round(1)"""),
    ("md", """Components whose standard deviation is small next to sigma (about 660 ms here)
contribute nothing we can estimate. Keep, per factor, the terms whose sd is at least 5% of
sigma, and allow their correlations again: that is the reduced model."""),
    ("code", """keep = {}
for group in ["subj", "item"]:
    on_factor = sds[sds["factor"] == group].set_index("var1")["sdcor"]
    keep[group] = [t for t, sd in on_factor.items() if sd >= 0.05 * zcp.sigma]
print(keep)

def bar(names, group):
    inside = " + ".join("1" if t == "(Intercept)" else t for t in names)
    if "(Intercept)" not in names:
        inside = "0 + " + inside
    return f"({inside} | {group})"

reduced_formula = f"RTtrunc ~ {terms} + {bar(keep['subj'], 'subj')} + {bar(keep['item'], 'item')}"
reduced = blm.LMM(reduced_formula, kb07).fit(method="ml")
print(reduced_formula)
print("singular:", reduced.is_singular)
reduced.varcorr().round(3)"""),
    ("code", """blm.anova(reduced, zcp, maximal, names=["reduced", "zero-correlation", "maximal"])"""),
    ("md", """Each row is tested against the row above it (the models ordered by their number of
parameters): do the extra parameters buy a better fit? Bates et al.'s point is that the 42
extra parameters of the maximal model over the reduced one do not. The fixed effects — what
the experiment is about — barely move:"""),
    ("code", """pd.concat({"maximal": maximal.fixef()[["estimate", "std_error"]],
           "reduced": reduced.fixef()[["estimate", "std_error"]]}, axis=1).round(1)"""),
    ("md", """## The posterior of the maximal model

A singular ML fit puts variance components exactly at zero and correlations at +-1, which no
one believes. The Bayesian answer keeps the maximal model and lets the priors regularize it:
weakly-informative priors on the standard deviations (Gamma(2, ·), scaled to the response, which
put no mass at exactly zero) and an LKJ prior on each 8 x 8 correlation matrix
(`model.prior_summary()` lists them; pass `priors=` to change them). For crossed designs bayeslmm integrates the group
effects of one factor out exactly (the *partially collapsed* sampler), and `parametrization="auto"`
says which factor it chose."""),
    ("code", """model = blm.LMM(maximal_formula, kb07)
model.prior_summary()"""),
    ("code", """start = time.perf_counter()
post = model.sample(random_seed=1, progressbar=False, **SAMPLE)
print(f"sampled in {time.perf_counter() - start:.0f} s")
print(post.idata.posterior.attrs["sampler_choice"])
print("divergences:", int(post.idata.sample_stats["diverging"].sum()))"""),
    ("code", """sd_rows = post.varcorr()
sd_rows = sd_rows[sd_rows["var2"].isna()].set_index(["group", "var1"])
ml_rows = maximal.varcorr()
ml_rows = ml_rows[ml_rows["var2"].isna()].set_index(["group", "var1"])["sdcor"]
table = sd_rows[["sdcor", "lower", "upper"]].rename(columns={"sdcor": "posterior mean"})
table = table.join(ml_rows.rename("ML estimate"))
table.round(1)"""),
    ("code", """rows = table.drop(index="Residual", level="group")
y = np.arange(len(rows))
fig, ax = plt.subplots(figsize=(6.5, 6))
ax.errorbar(rows["posterior mean"], y, fmt="o", label="posterior mean and 95% interval",
            xerr=[rows["posterior mean"] - rows["lower"], rows["upper"] - rows["posterior mean"]])
ax.plot(rows["ML estimate"], y, "x", color="C3", markersize=8, label="ML estimate (singular fit)")
ax.set_yticks(y, [f"{group}: {term}" for group, term in rows.index])
ax.invert_yaxis()
ax.set_xlabel("standard deviation of the random effect (ms)")
ax.legend(loc="lower right");"""),
    ("md", """The ML fit is rank-deficient: no single standard deviation is zero, but some
combinations of terms have no variance (rank 4 of 8 on subjects, 5 of 8 on items), which
forces correlations to their limits. The posterior means of the standard deviations are close
to the ML estimates where the data are informative (the intercepts, `P` on items), and their
intervals show how little the data say about the small components. The correlations tell the
same story more strongly: 56 subjects and 32 items say little about 2 x 28 correlations, and
their posterior intervals are wide:"""),
    ("code", """cors = post.varcorr()
cors = cors[cors["var2"].notna()]
print(f"{len(cors)} correlations; median width of their 95% intervals: "
      f"{(cors['upper'] - cors['lower']).median():.2f}")
cors.sort_values("sdcor").iloc[[0, 1, -2, -1]][["group", "var1", "var2", "sdcor", "lower", "upper"]].round(2)"""),
    ("md", """The fixed effects — what the experiment is about — agree with the ML fits, with intervals
that account for the uncertainty of all the variance components:"""),
    ("code", """post.fixef().round(1)"""),
]


def build(execute: bool = False) -> None:
    """Write this notebook; with ``execute`` run it at full settings first."""
    from notebook_writer import write_notebook

    write_notebook(NAME, CELLS, execute=execute)


if __name__ == "__main__":
    import sys

    build(execute="--execute" in sys.argv[1:])
