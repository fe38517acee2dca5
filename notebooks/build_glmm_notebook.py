"""The GLMM notebook (07_glmm_binary_count.ipynb): cells, and a builder for this one notebook.

``build_notebooks.py`` adds ``NAME`` and ``CELLS`` to its table, so the tests run it like the
others (``BAYESLMM_FAST=1``: a few draws). Run ``python notebooks/build_glmm_notebook.py
--execute`` after editing: it executes this notebook at full settings and saves it with its
outputs (the other notebooks are left alone).
"""

from __future__ import annotations

NAME = "07_glmm_binary_count.ipynb"

CELLS = [
    ("md", """# GLMMs: binary and count outcomes

`blm.GLMM` fits generalized linear mixed models as `lme4::glmer` does (Laplace approximation,
adaptive Gauss-Hermite quadrature, `nAGQ = 0`), gives the MAP under weakly-informative priors,
and samples the posterior with NUTS. Two examples from lme4's documentation:

* **cbpp** (binomial): contagious bovine pleuropneumonia in 15 herds of zebu cattle, observed
  over four periods; the response is the number of new cases out of the herd size,
  `cbind(incidence, size - incidence)`;
* **grouseticks** (Poisson): ticks counted on the heads of 403 red grouse chicks from 118
  broods at 63 locations, in three years; `(1 | INDEX)` is an observation-level random effect
  that absorbs overdispersion."""),
    ("code", """import os, warnings
import numpy as np, pandas as pd
import bayeslmm as blm
from bayeslmm.reporting.glmm_checks import plot_checks
%matplotlib inline

# BAYESLMM_FAST=1 (the test suite) samples a few draws only; unset it for real analyses
FAST = os.environ.get("BAYESLMM_FAST") == "1"
SAMPLE = dict(draws=200, tune=200, chains=2, progressbar=False) if FAST else dict(progressbar=False)
SAMPLE["random_seed"] = 1
if FAST:
    warnings.simplefilter("ignore", blm.SamplingWarning)  # short chains have small ESS"""),
    ("md", """## A binomial response: cbpp

The formula is glmer's, `cbind(successes, failures)` included. `fit()` is the Laplace
approximation (glmer's default, `nAGQ = 1`); the summary has glmer's layout, with Wald z tests
for the fixed effects."""),
    ("code", """cbpp = blm.datasets.load("cbpp")
model = blm.GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
laplace = model.fit()
print(laplace.summary())"""),
    ("md", """With a single scalar random effect, adaptive Gauss-Hermite quadrature (`n_agq=25`) evaluates
the likelihood more accurately than Laplace; the estimates barely move here. (Note that glmer's
deviance and log-likelihood at `nAGQ > 1` leave out a constant of the binomial, so they are not
comparable to the Laplace ones.)"""),
    ("code", """agq = model.fit(n_agq=25)
pd.DataFrame({"Laplace": laplace.fixef()["estimate"], "AGQ 25": agq.fixef()["estimate"]})"""),
    ("md", """### Variance on the latent scale: ICC and R2

A binomial model has no residual variance to compare the herd variance with. Nakagawa, Johnson &
Schielzeth (2017) use the variance of the latent logistic distribution, pi^2 / 3, as the
residual; `icc()` and `r2()` give the same numbers as the R package performance."""),
    ("code", """pd.concat([laplace.icc(), laplace.r2()])"""),
    ("md", """### Does the model fit? Simulated quantile residuals

Raw residuals of a binomial or count model are not expected to look normal, so residual plots
are hard to read. DHARMa's idea: simulate new responses from the fitted model, and place each
observed value among its simulations. Under the model these quantile residuals are uniform,
whatever the family. The tests check uniformity (Kolmogorov-Smirnov), dispersion (observed
variance against the simulated one) and zero inflation (observed against simulated zeros)."""),
    ("code", """laplace.quantile_residuals(nsim=250, random_seed=1).table()"""),
    ("md", """For binomial data, the binned residuals (Gelman & Hill) compare observed and fitted
proportions in bins of the fitted value: about 95 % of the bins should be inside their +-2 SE band."""),
    ("code", """laplace.binned_residuals()"""),
    ("code", """plot_checks(laplace, random_seed=1)"""),
    ("md", """## A count response: grouseticks

The three random intercepts are nested (chicks in broods at locations); `INDEX` has one level
per chick, so its sd is the overdispersion relative to the Poisson."""),
    ("code", """grouse = blm.datasets.load("grouseticks")
counts = blm.GLMM("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", grouse,
                  family="poisson").fit()
print(counts.summary())"""),
    ("code", """pd.concat([counts.icc(), counts.r2()])"""),
    ("md", """The quantile residuals and their tests, then a hanging rootogram: the bars of observed
counts hang from the expected frequencies (the curve); a bar that ends above or below zero shows
a count that the model predicts too often or too rarely."""),
    ("code", """counts.quantile_residuals(nsim=250, random_seed=1).table()"""),
    ("code", """counts.rootogram().head(12)"""),
    ("code", """plot_checks(counts, random_seed=1)"""),
    ("md", """Without the observation-level effect the Poisson model is overdispersed. The default
residuals simulate new random effects too (DHARMa's unconditional simulation), which hides
overdispersion that the broods and locations can soak up; simulating given the fitted random
effects (`conditional=True`) shows it plainly, and the likelihood-ratio test agrees."""),
    ("code", """no_olre = blm.GLMM("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", grouse,
                   family="poisson").fit()
no_olre.quantile_residuals(nsim=250, random_seed=1, conditional=True).table()"""),
    ("code", """from bayeslmm.results.glmm_results import anova
anova(no_olre, counts)[["npar", "AIC", "logLik", "Chisq", "Df", "p_value"]]"""),
    ("md", """## A singular fit and the MAP

With few groups and little between-group variation, glmer often puts the random-effect sd at
exactly zero (a singular fit). The MAP under the default prior on the sd (a Gamma(2, 2), with
zero density at zero) stays off the boundary, as blme's does. Here six groups of 20 binary
responses are simulated without any group effect."""),
    ("code", """rng = np.random.default_rng(0)
g = np.repeat(np.arange(6), 20)
x = rng.normal(size=120)
y = (rng.uniform(size=120) < 1 / (1 + np.exp(-(0.3 + 0.8 * x)))).astype(int)
small = pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g]})
few = blm.GLMM("y ~ x + (1 | g)", small, family="binomial")
ml, map_fit = few.fit(), few.fit(method="map")
pd.DataFrame({"ML (glmer)": [ml.varcorr()["sdcor"].iloc[0], ml.is_singular],
              "MAP": [map_fit.varcorr()["sdcor"].iloc[0], map_fit.is_singular]},
             index=["sd(g)", "singular"])"""),
    ("md", """## The posterior

`sample()` runs NUTS (nutpie) with weakly-informative priors on the link scale. The posterior
carries the uncertainty of the herd sd into everything else; its fixed effects are close to
glmer's, and its herd sd is a little larger (the posterior mean of a skewed quantity)."""),
    ("code", """post = model.sample(**SAMPLE)
print("divergent transitions:", post.divergences)
post.fixef()"""),
    ("code", """post.varcorr()"""),
    ("code", """post.icc()"""),
    ("md", """**What to take away.** The same formula and verbs as for Gaussian models; check the fit
with simulated residuals (dispersion and zero inflation for counts, binned residuals for binary
data), look at the variance on the latent scale, and use the MAP or the posterior when the
maximum-likelihood fit is singular."""),
]

def build(execute: bool = False) -> None:
    """Write this notebook; with ``execute`` run it at full settings first."""
    from notebook_writer import write_notebook

    write_notebook(NAME, CELLS, execute=execute)


if __name__ == "__main__":
    import sys

    build(execute="--execute" in sys.argv[1:])
