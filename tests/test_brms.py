"""Agreement with brms 2.18 (../shared/reference/brms) under brms's default priors.

The issue's criterion, not loosened: every posterior mean within 0.2 posterior sd of brms's,
every posterior sd within 15%, zero divergences, for sleep_rs, exam_rs and exam_sex. Both
parametrizations are held to it: the full non-centered PyMC model (bayeslmm.sampling.bayes) here, the
default ``LMM.sample()`` path (the collapsed sampler) in test_marginal.py. 4 chains x 1000
draws: the Monte Carlo error of each mean is then ~sd / sqrt(ESS) with ESS >= ~400, a
quarter of the 0.2 sd allowance after adding brms's own error.
"""

from __future__ import annotations

import numpy as np
import pytest

import bayeslmm as blm

from conftest import BRMS_DATASET as DATASET
from conftest import assert_agrees_with_brms, brms_model, brms_reference


@pytest.fixture(scope="module")
def full_posteriors():
    """The full non-centered PyMC model under brms's priors (nutpie, numba). The criterion is
    agreement with brms (below), not the convergence warning: on PyMC 6.4 exam_sex's weakly
    identified sd_school[sexM] ends at R-hat just above 1.01 with this seed, which the
    warning reports and the agreement test still judges."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)
        return {case: brms_model(case).sample(draws=1000, tune=1000, chains=4, random_seed=7, progressbar=False,
                                              parametrization="full")
                for case in DATASET}


def test_brms_priors_reach_the_model():
    table = brms_model("sleep_rs").prior_summary().set_index(["class", "term"])
    assert table.loc[("Intercept", "(Intercept)"), "prior"] == "StudentT(nu=3, mu=288.7, sigma=59.3)"
    assert table.loc[("b", "Days"), "prior"] == "Flat()"
    assert table.loc[("sd", "Days"), "prior"] == "HalfStudentT(nu=3, sigma=59.3)"
    assert table.loc[("cor", ""), "prior"] == "LKJ(eta=1)"
    assert table.loc[("sigma", ""), "prior"] == "HalfStudentT(nu=3, sigma=59.3)"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATASET))
def test_full_model_agrees_with_brms(full_posteriors, case):
    post = full_posteriors[case]
    assert post.idata.posterior.attrs["parametrization"] == "full"
    assert_agrees_with_brms(post, case)


@pytest.mark.slow
def test_full_posterior_layout(full_posteriors):
    """The posterior contract on a three-term correlated bar."""
    post = full_posteriors["exam_sex"]
    posterior = post.idata.posterior
    assert set(posterior.data_vars) == {"beta", "sigma", "sd_school", "cor_school", "r_school"}
    assert list(posterior["beta"].coords["term"].values) == ["(Intercept)", "standLRT", "sexM"]
    assert posterior["sd_school"].dims == ("chain", "draw", "school__term")
    assert list(posterior["school__term"].values) == ["(Intercept)", "standLRT", "sexM"]
    assert list(posterior["cor_school"].coords["school__pair"].values) == [
        "(Intercept), standLRT", "(Intercept), sexM", "standLRT, sexM"]
    assert posterior["r_school"].dims == ("chain", "draw", "school__level", "school__term")
    assert posterior["r_school"].shape == (4, 1000, 65, 3)
    assert post.idata.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert post.idata.log_likelihood["y"].shape == (4, 1000, 4059)
    np.testing.assert_array_equal(post.idata.observed_data["y"].values, post.design.y)
    attrs = posterior.attrs
    assert attrs["sampler"] == "nutpie" and attrs["parametrization"] == "full"
    assert attrs["formula"] == brms_reference("exam_sex")["formula"]
    assert "sd_school__sexM ~ HalfStudentT(nu=3, sigma=2.5)" in attrs["priors"]
    assert "normexam" in attrs["data_columns"] and attrs["bayeslmm_version"] == blm.__version__
    # the correlation draws are those of the covariance the group effects come from
    vc = post.varcorr()
    cov = post.cov_draws()[0].mean(axis=0)
    assert vc.loc[(vc["var1"] == "sexM") & vc["var2"].isna(), "vcov"].item() == pytest.approx(cov[2, 2])


@pytest.mark.slow
def test_group_effects_match_reml_conditional_modes(full_posteriors):
    """With 65 schools of ~60 pupils the posterior means sit close to lme4's modes."""
    from conftest import reference_fit

    post = full_posteriors["exam_rs"].ranef()["school"]
    reml = reference_fit("exam_rs").ranef()["school"]
    assert np.corrcoef(post["(Intercept)"], reml["(Intercept)"])[0, 1] > 0.99
    assert np.corrcoef(post["standLRT"], reml["standLRT"])[0, 1] > 0.97
    assert np.abs(post["(Intercept)"] - reml["(Intercept)"]).max() < 0.05
