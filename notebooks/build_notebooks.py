"""Write the teaching notebooks (without outputs) from the cells below.

Run ``python notebooks/build_notebooks.py`` after editing; the tests execute every
notebook with ``BAYESLMM_FAST=1`` (few draws).
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

SETUP = """import os, warnings
import numpy as np, pandas as pd
import matplotlib
import bayeslmm as blm

# BAYESLMM_FAST=1 (the test suite) samples a few draws only; unset it for real analyses
FAST = os.environ.get("BAYESLMM_FAST") == "1"
SAMPLE = dict(draws=200, tune=200, chains=2, progressbar=False) if FAST else dict(random_seed=1)
if FAST:
    SAMPLE["random_seed"] = 1
    warnings.simplefilter("ignore", blm.SamplingWarning)  # short chains have small ESS"""

NOTEBOOKS = {
    "01_partial_pooling_sleepstudy.ipynb": [
        ("md", """# Partial pooling on sleepstudy

Eighteen subjects were kept awake for ten days; each day their reaction time was measured.
How does reaction time grow with sleep deprivation? There are three ways to answer:

* **complete pooling**: one regression line for everybody, as if the 180 rows were independent;
* **no pooling**: a separate line for each subject, as if subjects had nothing in common;
* **partial pooling**: a mixed model, `Reaction ~ Days + (Days | Subject)`. Each subject gets
  its own line, but the lines are drawn from a common population, so a subject's estimate
  borrows strength from the others."""),
        ("code", SETUP),
        ("code", """sleep = blm.datasets.load("sleepstudy")
model = blm.LMM("Reaction ~ Days + (Days | Subject)", sleep)
reml = model.fit()            # lme4::lmer, same numbers
print(reml.summary())"""),
        ("md", """## The three estimates side by side

`pooling()` returns, for every subject, the no-pooling fit (a separate least-squares line), the
complete-pooling line and the partial-pooling (mixed-model) coefficients."""),
        ("code", """pool = reml.pooling()
pool.head(6)"""),
        ("code", """reml.plot_groups(max_panels=9);"""),
        ("md", """## Shrinkage

Each arrow starts at a subject's own line (no pooling) and ends at its mixed-model estimate.
Subjects with extreme lines are pulled towards the population the most: their separate fits
rest on ten noisy points, and the model weighs them against what the other subjects say."""),
        ("code", """reml.plot_shrinkage();"""),
        ("md", """## The full posterior

`sample()` gives the posterior under weakly-informative priors (see `model.prior_summary()`).
The group effects come with their uncertainty, which lme4's point estimates do not report."""),
        ("code", """model.prior_summary()"""),
        ("code", """post = model.sample(**SAMPLE)
print(post.summary())"""),
        ("code", """post.coef(tidy=True).head(6)"""),
        ("code", """post.plot_shrinkage();
post.plot_ranef();"""),
        ("md", """**What to take away.** Partial pooling is a compromise whose weights are learnt from the data:
the between-subject spread (sd of intercepts about 25 ms, of slopes about 6 ms/day) tells the
model how much subjects differ, and the residual noise tells it how much to trust each subject's
own ten points."""),
    ],
    "02_exam_slopes_icc_comparison.ipynb": [
        ("md", """# Exam scores: random intercepts and slopes, ICC, model comparison

4,059 students in 65 London schools. `normexam` is the exam score, `standLRT` a reading test
taken on entry. Do schools differ in their average result, and in how strongly the entry test
predicts it?"""),
        ("code", SETUP),
        ("code", """exam = blm.datasets.load("exam")
m_ri = blm.LMM("normexam ~ standLRT + (1 | school)", exam)
m_rs = blm.LMM("normexam ~ standLRT + (standLRT | school)", exam)
fit_ri, fit_rs = m_ri.fit(), m_rs.fit()
print(fit_rs.summary())"""),
        ("md", """## How much of the variance lies between schools?

The intraclass correlation (ICC) is the share of the variance that is between groups. With a
random slope that share depends on `standLRT`; the *adjusted* ICC of Nakagawa et al. (2017)
averages the random-effect variance over the observed students."""),
        ("code", """fit_ri.icc()"""),
        ("code", """fit_rs.icc()"""),
        ("code", """fit_rs.r2()   # marginal: fixed effects alone; conditional: fixed + random"""),
        ("code", """fit_rs.plot_icc(x="standLRT");"""),
        ("md", """## Is the random slope needed?

A likelihood-ratio test (the models are refitted by ML first, as lme4's `anova` does):"""),
        ("code", """blm.anova(fit_ri, fit_rs)"""),
        ("md", """The same question, answered by predictive accuracy: PSIS-LOO on the two posteriors."""),
        ("code", """post_ri, post_rs = m_ri.sample(**SAMPLE), m_rs.sample(**SAMPLE)
blm.compare(post_ri, post_rs)"""),
        ("code", """post_rs.icc()"""),
        ("md", """Both criteria prefer the random-slope model: schools differ not only in level but in how
much the intake test matters."""),
    ],
    "03_checking_assumptions_minneapolis.ipynb": [
        ("md", """# Checking assumptions: reading growth in Minneapolis

Reading scores of 22 students in grades 5 to 8, some in special education. We fit a growth
model by maximum likelihood (as in Long, 2012), then check its assumptions: normal level-1
residuals with constant variance, and normal random effects."""),
        ("code", SETUP),
        ("code", """mpls = blm.datasets.load("minneapolis")
model = blm.LMM("reading_score ~ 1 + I(grade - 5) + special_ed + (1 + I(grade - 5) | student_id)", mpls)
ml = model.fit(method="ml")
print(ml.summary())"""),
        ("md", """## Level-1 residuals and random-effect normality

`check_residuals()` shows the residual density against a normal, residuals against fitted
values with a smoother, and a QQ plot of each random-effect term. On a posterior the curves
come with bands over draws, so we can see whether a departure is larger than the uncertainty."""),
        ("code", """ml.check_residuals();"""),
        ("code", """post = model.sample(**SAMPLE)
post.check_residuals(random_seed=1);"""),
        ("code", """check = post.ppc(random_seed=1)
check.pvalues"""),
        ("md", """## A log-transformed outcome

Growth in reading is often closer to proportional than additive. On the log scale a
coefficient `b` means a multiplicative effect `exp(b)`: a change of `100 (exp(b) - 1)` percent."""),
        ("code", """log_model = blm.LMM("np.log(reading_score) ~ 1 + I(grade - 5) + special_ed + (1 | student_id)", mpls)
log_ml = log_model.fit(method="ml")
effects = log_ml.fixef()
effects["percent_change"] = 100 * (np.exp(effects["estimate"]) - 1)
effects"""),
        ("code", """log_post = log_model.sample(**SAMPLE)
draws = log_post.fixef_draws()
names = list(log_post.design.fixed_names)
pct = 100 * (np.exp(draws[:, names.index("I(grade - 5)")]) - 1)
print(f"reading grows {pct.mean():.1f}% per grade (95% interval {np.quantile(pct, 0.025):.1f} to {np.quantile(pct, 0.975):.1f})")"""),
        ("md", """Back-transform draw by draw, then summarise: the mean of `exp(b)` is not `exp` of the
mean of `b`."""),
    ],
    "04_singular_fits_bayesian_fallback.ipynb": [
        ("md", """# Singular fits and the Bayesian fallback

`lmer` sometimes says *boundary (singular) fit*: a variance estimated at exactly zero, or a
correlation at ±1. The estimate is not wrong as a maximum, but it is a poor summary: the data
are compatible with a range of values that the point estimate hides. bayeslmm makes the
next step one call."""),
        ("code", SETUP),
        ("md", """## Dyestuff2: a between-batch variance of zero"""),
        ("code", """dye2 = blm.datasets.load("dyestuff2")
fit = blm.LMM("Yield ~ 1 + (1 | Batch)", dye2).fit()
print(fit.is_singular, fit.singular_terms())"""),
        ("md", """`blm.lmm` fits REML, notices the singular fit, says why, and refits with priors that keep
variances above zero (MAP); with `fallback="sample"` it also returns the posterior."""),
        ("code", """with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = blm.lmm("Yield ~ 1 + (1 | Batch)", dye2, fallback="sample", **SAMPLE)
print([str(w.message) for w in caught if issubclass(w.category, blm.SingularFitWarning)])
print(out.path)
out.map.varcorr()"""),
        ("code", """out.posterior.varcorr()   # the interval for the Batch sd: compatible with 0, and with much more"""),
        ("md", """## Exam with a 3 x 3 covariance on the boundary"""),
        ("code", """exam = blm.datasets.load("exam")
exam_model = blm.LMM("normexam ~ standLRT + sex + (standLRT + sex | school)", exam)
reml = exam_model.fit()
print(reml.is_singular, reml.singular_terms())
exam_model.fit(method="map").varcorr()"""),
        ("md", """## Five majors: a correlation of 1

A small simulated salary data set: 5 majors x 5 students. REML reports a correlation of +1
between intercept and slope; the posterior shows how little five groups can say about it."""),
        ("code", """salary = blm.datasets.simulate_salary()
salary_model = blm.LMM("salary ~ 1 + grade + (1 + grade | major)", salary)
print(salary_model.fit().singular_terms())
salary_post = salary_model.sample(**SAMPLE)
salary_post.varcorr()"""),
    ],
    "05_crossed_and_nested.ipynb": [
        ("md", """# Crossed and nested designs

* **Crossed**: every level of one factor meets every level of the other. Penicillin: 24 plates,
  each tested with all 6 penicillin samples: `(1 | plate) + (1 | sample)`.
* **Nested**: each level of the inner factor belongs to one level of the outer. Pastes: 3 casks
  within each of 10 batches: `(1 | batch/cask)`, shorthand for `(1 | batch) + (1 | cask:batch)`."""),
        ("code", SETUP),
        ("code", """pen = blm.datasets.load("penicillin")
pen_model = blm.LMM("diameter ~ 1 + (1 | plate) + (1 | sample)", pen)
pen_fit = pen_model.fit()
print(pen_fit.summary())
pen_fit.icc()"""),
        ("md", """Crossed factors do not split the likelihood by group. Penicillin has only 30 group
effects in all (24 plates + 6 samples), so the collapsed sampler treats the whole data set as
one joint group and integrates all 30 out together. (With thousands of crossed effects, as in
InstEval, it would use the full non-centered model instead, and say so.) Here the full model
is hard going: with 6 samples, the intercept and the sample sd are weakly identified, and the
non-centered sampler diverges now and then; the collapsed one does not."""),
        ("code", """pen_post = pen_model.sample(**SAMPLE)
print(pen_post.idata.posterior.attrs["parametrization"])
pen_post.varcorr()"""),
        ("code", """pastes = blm.datasets.load("pastes")
paste_model = blm.LMM("strength ~ 1 + (1 | batch/cask)", pastes)
paste_fit = paste_model.fit()
print(paste_fit.summary())
paste_fit.icc()"""),
        ("md", """Nested factors do split by the outer group, so the collapsed sampler applies: it
integrates the cask and batch effects out, then draws them exactly."""),
        ("code", """paste_post = paste_model.sample(**SAMPLE)
print(paste_post.idata.posterior.attrs["parametrization"])
paste_post.varcorr()"""),
        ("code", """paste_post.plot_ranef();"""),
    ],
}


def build() -> None:
    for name, cells in NOTEBOOKS.items():
        notebook = nbf.v4.new_notebook()
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
                          for kind, src in cells]
        nbf.write(notebook, HERE / name)


if __name__ == "__main__":
    build()
