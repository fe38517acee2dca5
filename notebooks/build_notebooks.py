"""Write the teaching notebooks (without outputs) from the cells below.

Run ``python notebooks/build_notebooks.py --execute`` after editing (it runs each notebook at
full settings and saves it with its outputs); the tests execute every notebook again with
``BAYESLMM_FAST=1`` (few draws).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
        ("code", """reml.plot_groups(max_panels=9)"""),
        ("md", """## Shrinkage

Each arrow starts at a subject's own line (no pooling) and ends at its mixed-model estimate.
Subjects with extreme lines are pulled towards the population the most: their separate fits
rest on ten noisy points, and the model weighs them against what the other subjects say."""),
        ("code", """reml.plot_shrinkage()"""),
        ("md", """## The full posterior

`sample()` gives the posterior under weakly-informative priors (see `model.prior_summary()`).
lme4 does give the group effects a conditional variance (`ranef(fit, condVar = TRUE)`, here
`reml.ranef(tidy=True)`), but it treats the variance components as known. The posterior carries
their uncertainty into every group effect, and gives intervals for the variance components
themselves."""),
        ("code", """model.prior_summary()"""),
        ("code", """post = model.sample(**SAMPLE)
print(post.summary())"""),
        ("code", """post.coef(tidy=True).head(6)"""),
        ("code", """post.plot_shrinkage()"""),
        ("code", """post.plot_ranef()"""),
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
        ("code", """fit_rs.plot_icc(x="standLRT")"""),
        ("md", """## Is the random slope needed?

A likelihood-ratio test (the models are refitted by ML first, as lme4's `anova` does):"""),
        ("code", """blm.anova(fit_ri, fit_rs)"""),
        ("md", """The null hypothesis puts a variance on the edge of its range (zero), so the chi-square
reference with 2 degrees of freedom is conservative: the correct null distribution is a mixture
of chi-square(1) and chi-square(2) (Self and Liang, 1987), whose p-value is smaller. Here the
difference does not matter (p is about 2e-9 either way), but for a borderline p-value halve it
rather than trust it as it is.

The same question, answered by predictive accuracy: PSIS-LOO on the two posteriors (ArviZ's
table: `elpd_diff` is each model's elpd minus the best one's). Check the `diag_elpd` column:
an entry such as `3 k̂ > 0.70` means some Pareto-k values exceed the threshold, so a few
students dominate the estimate and LOO is unreliable for that model (`post_rs.loo()` lists
the k values; with the default 4 x 1000 draws every k here is below it)."""),
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
        ("code", """ml.check_residuals()"""),
        ("code", """post = model.sample(**SAMPLE)
post.check_residuals(random_seed=1)"""),
        ("code", """check = post.ppc(random_seed=1)
check.figure"""),
        ("code", """check.pvalues"""),
        ("md", """What to look for. In the residual density, heavy tails or skew beyond the normal band;
against the fitted values, a funnel (spread growing with the mean) or a bend in the smoother;
in the QQ plots of the student intercepts and slopes, points leaving the band at the ends. With
22 students the bands are wide: a departure inside them is no evidence against normality, and
the posterior predictive p-values above (near 0 or 1 is a misfit) say the same for the summary
statistics.

## A log-transformed outcome

Growth in reading is often closer to proportional than additive. On the log scale a slope `b`
means a multiplicative effect `exp(b)`: a change of `100 (exp(b) - 1)` percent per unit. The
intercept is different: `exp(intercept)` is the typical (geometric-mean) score of a student at
grade 5 outside special education, not a percentage. We keep the same random part as before, so
the two models differ only in the scale of the outcome."""),
        ("code", """log_model = blm.LMM("np.log(reading_score) ~ 1 + I(grade - 5) + special_ed + (1 + I(grade - 5) | student_id)",
                    mpls)
log_ml = log_model.fit(method="ml")
effects = log_ml.fixef()
slopes = effects.drop(index="(Intercept)")
print(f"typical score at grade 5: {np.exp(effects.loc['(Intercept)', 'estimate']):.1f}")
slopes.assign(percent_change=100 * (np.exp(slopes["estimate"]) - 1))"""),
        ("code", """log_ml.check_residuals()   # the same checks on the log scale"""),
        ("md", """(Do not compare the AIC of the two models: their responses are on different scales, and
the log-scale likelihood lacks the Jacobian of the transformation.)"""),
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
        ("code", """out.posterior.varcorr()"""),
        ("md", """REML said the between-batch sd is 0. The posterior says it is poorly determined: its 95%
interval runs from about 0.2 to 3.4, so the data cannot rule out batches that differ by as much
as the residual sd (3.7). The interval stops short of zero because the default Gamma(2, ·) prior
on the sd has zero density at zero; that is what keeps the MAP off the boundary. A prior such as
`blm.HalfNormal(sigma=5)` would let the interval reach down to 0: with six batches, where exactly
the lower end lies is the prior's call, not the data's."""),
        ("md", """## Exam with a 3 x 3 covariance on the boundary"""),
        ("code", """exam = blm.datasets.load("exam")
exam_model = blm.LMM("normexam ~ standLRT + sex + (standLRT + sex | school)", exam)
reml = exam_model.fit()
print(reml.is_singular, reml.singular_terms())
exam_model.fit(method="map").varcorr()"""),
        ("md", """## Five majors: a correlation of 1

A small simulated salary data set: 5 majors x 5 students, grade ~ N(0, 1), each major's
intercept ~ N(-10 x its mean grade, 6), slopes ~ N(2, 0.1), residual sd 3. REML reports a
correlation of +1 between intercept and slope. The reason is the design, not a bug: five groups
cannot estimate a 2 x 2 covariance matrix, least of all when the true slope sd (0.1) is tiny
next to the residual sd (3). (Adding the major's mean grade as a predictor, the contextual
effect built into the simulation, does not cure it; try it.)"""),
        ("code", """salary = blm.datasets.simulate_salary()
salary_model = blm.LMM("salary ~ 1 + grade + (1 + grade | major)", salary)
print(salary_model.fit().singular_terms())
salary_post = salary_model.sample(**SAMPLE)
salary_post.varcorr()"""),
        ("code", """salary_post.plot_shrinkage()"""),
        ("md", """The posterior's correlation interval spans almost all of (-1, 1): five groups say next to
nothing about it, which is the honest answer. Note the sd of the grade slopes: its interval
excludes the true 0.1. The default prior (Gamma(2, ·) with its mean at `sd(salary) / sd(grade)`)
is built for weak information, and with five groups it dominates. When groups are few, say what
you know: a slope sd of about 1 salary unit per grade point or less is plausible here."""),
        ("code", """informed = blm.LMM("salary ~ 1 + grade + (1 + grade | major)", salary,
                   priors={"sd_major__grade": blm.HalfNormal(sigma=1.0)}).sample(**SAMPLE)
informed.varcorr()"""),
        ("md", """With that prior the slope sd's interval (about 0.02 to 1.7) covers the truth, while the
intercept sd and the correlation barely move: the prior decides only what the data leave open."""),
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
        ("code", """paste_post.plot_ranef()"""),
    ],
}

# notebooks whose cells live in a builder of their own: 06 power analysis (issue 18), 07 GLMMs
# (issue 16), 08 maximal models (issue 14)
for _builder in ("build_power_notebook", "build_glmm_notebook", "build_maximal_notebook"):
    _spec = importlib.util.spec_from_file_location(_builder, HERE / f"{_builder}.py")
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    NOTEBOOKS[_module.NAME] = _module.CELLS


def build(execute: bool = False) -> None:
    """Write every notebook; with ``execute`` run it at full settings first, so that a reader
    browsing the repository sees the tables and figures (needs the test extra's nbclient)."""
    from notebook_writer import write_notebook

    for name, cells in NOTEBOOKS.items():
        write_notebook(name, cells, execute=execute)


if __name__ == "__main__":
    import sys

    build(execute="--execute" in sys.argv[1:])
