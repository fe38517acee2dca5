"""The Bayesian back end: posterior layout, reproducibility, priors, diagnostics, and
agreement with brms 2.18 (../shared/reference/brms) under brms's default priors.

The brms criterion is the issue's: every posterior mean within 0.2 posterior sd of brms's,
every posterior sd within 15%, zero divergences.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import bayeslmm as blm
from conftest import brms_reference

DATASET = {"sleep_rs": "sleepstudy", "exam_rs": "exam", "exam_sex": "exam"}


def brms_priors(case: str) -> dict:
    """brms's default priors of a reference case, through bayeslmm's priors API."""
    text = brms_reference(case)["priors"]

    def student_t(entry):
        nu, mu, scale = re.findall(r"student_t\(([^,]+), ([^,]+), ([^)]+)\)", text[entry])[0]
        return float(nu), float(mu), float(scale)

    nu, mu, scale = student_t("Intercept")
    return {"Intercept": blm.StudentT(nu=nu, mu=mu, sigma=scale), "b": blm.Flat(),
            "sd": blm.HalfStudentT(nu=student_t("sd")[0], sigma=student_t("sd")[2]),
            "sigma": blm.HalfStudentT(nu=student_t("sigma")[0], sigma=student_t("sigma")[2]),
            "cor": blm.LKJ(eta=1.0)}


def posterior_table(post) -> dict[str, tuple[float, float]]:
    """brms's variable names -> (posterior mean, sd) of a bayeslmm posterior."""
    out = {}
    fixef, vc = post.fixef(), post.varcorr()
    brms_term = lambda term: "Intercept" if term == "(Intercept)" else term  # noqa: E731
    for term, row in fixef.iterrows():
        out[f"b_{brms_term(term)}"] = (row["mean"], row["sd"])
    for row in vc.itertuples():
        if row.group == "Residual":
            out["sigma"] = (row.sdcor, row.sdcor_sd)
        elif row.var2 is None or row.var2 != row.var2:
            out[f"sd_{row.group}__{brms_term(row.var1)}"] = (row.sdcor, row.sdcor_sd)
        else:
            out[f"cor_{row.group}__{brms_term(row.var1)}__{row.var2}"] = (row.sdcor, row.sdcor_sd)
    return out


def assert_agrees_with_brms(post, case):
    ours = posterior_table(post)
    reference = brms_reference(case)["brms"]["summary"]
    assert {row["variable"] for row in reference} <= set(ours)
    for row in reference:
        mean, sd = ours[row["variable"]]
        assert abs(mean - row["mean"]) <= 0.2 * row["sd"], (row["variable"], mean, row["mean"])
        assert sd == pytest.approx(row["sd"], rel=0.15), (row["variable"], sd, row["sd"])
    assert post.divergences == 0


@pytest.fixture(scope="module")
def brms_posteriors():
    """Marginal (default) posteriors under brms's priors, 4 chains x 1000 draws."""
    out = {}
    for case in DATASET:
        model = blm.LMM(brms_reference(case)["formula"], blm.datasets.load(DATASET[case]), priors=brms_priors(case))
        out[case] = model.sample(draws=1000, tune=1000, chains=4, random_seed=11, progressbar=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATASET))
def test_marginal_posterior_agrees_with_brms(brms_posteriors, case):
    post = brms_posteriors[case]
    assert post.idata.posterior.attrs["parametrization"] == "marginal"
    assert_agrees_with_brms(post, case)


@pytest.fixture(scope="module")
def sleep_full():
    """The full (non-centered) model of sleep_rs under brms's priors."""
    model = blm.LMM(brms_reference("sleep_rs")["formula"], blm.datasets.load("sleepstudy"),
                    priors=brms_priors("sleep_rs"))
    return model.sample(draws=1000, tune=1000, chains=4, random_seed=3, progressbar=False, parametrization="full")


@pytest.mark.slow
def test_full_posterior_agrees_with_brms(sleep_full):
    assert sleep_full.idata.posterior.attrs["parametrization"] == "full"
    assert_agrees_with_brms(sleep_full, "sleep_rs")


@pytest.mark.slow
def test_full_and_marginal_posteriors_agree(sleep_full, brms_posteriors):
    full, marginal = posterior_table(sleep_full), posterior_table(brms_posteriors["sleep_rs"])
    for name, (mean, sd) in marginal.items():
        assert abs(full[name][0] - mean) <= 0.2 * sd, name
        assert full[name][1] == pytest.approx(sd, rel=0.15), name


def test_posterior_layout(brms_posteriors):
    post = brms_posteriors["exam_sex"]
    posterior = post.idata.posterior
    assert set(posterior.data_vars) == {"beta", "sigma", "sd_school", "cor_school", "r_school"}
    assert list(posterior["beta"].coords["term"].values) == ["(Intercept)", "standLRT", "sexM"]
    assert posterior["sd_school"].dims == ("chain", "draw", "school__term")
    assert list(posterior["cor_school"].coords["school__pair"].values) == [
        "(Intercept), standLRT", "(Intercept), sexM", "standLRT, sexM"]
    assert posterior["r_school"].dims == ("chain", "draw", "school__level", "school__term")
    assert posterior["r_school"].shape == (4, 1000, 65, 3)
    assert post.idata.log_likelihood["y"].shape == (4, 1000, 4059)
    assert post.idata.observed_data["y"].shape == (4059,)
    for key in ("formula", "sampler", "parametrization", "priors", "bayeslmm_version", "data_columns"):
        assert key in posterior.attrs
    # the verbs of the REML result, with posterior summaries
    assert list(post.fixef().columns) == ["mean", "sd", "lower", "upper", "rhat", "ess_bulk", "ess_tail"]
    assert list(post.varcorr()["group"]) == ["school"] * 6 + ["Residual"]
    assert post.ranef()["school"].shape == (65, 3)
    tidy = post.coef(tidy=True)
    assert {"group", "level", "term", "mean", "sd", "lower", "upper"} <= set(tidy.columns)
    assert (tidy["sd"] > 0).all()


def test_group_effects_match_reml_conditional_modes(brms_posteriors):
    """With 65 schools the posterior means of the effects sit close to lme4's modes."""
    from conftest import reference_fit

    post = brms_posteriors["exam_rs"].ranef()["school"]
    reml = reference_fit("exam_rs").ranef()["school"]
    assert np.corrcoef(post["(Intercept)"], reml["(Intercept)"])[0, 1] > 0.99
    assert np.corrcoef(post["standLRT"], reml["standLRT"])[0, 1] > 0.97


def test_summary_layout(brms_posteriors):
    text = brms_posteriors["sleep_rs"].summary()
    for piece in ["posterior by NUTS", "marginal parametrization", "Priors:", "Intercept ~ StudentT(nu=3, mu=288.7",
                  "Random effects", "Rhat", "ESS", "Subject", "cor((Intercept), Days)", "Residual",
                  "Fixed effects:", "Number of obs: 180"]:
        assert piece in text


@pytest.mark.slow
def test_default_priors_sample_cleanly():
    for formula, data in [("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
                          ("normexam ~ standLRT + (standLRT | school)", "exam")]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", blm.SamplingWarning)
            post = blm.LMM(formula, blm.datasets.load(data)).sample(random_seed=5, progressbar=False)
        diag = post.diagnostics()
        assert (diag["r_hat"] <= 1.01).all() and (diag["ess_bulk"] >= 400).all()
        assert post.divergences == 0


def test_same_seed_same_draws():
    model = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"))
    kwargs = dict(draws=100, tune=100, chains=2, random_seed=42, progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)
        a, b = model.sample(**kwargs), model.sample(**kwargs)
        c = model.sample(**{**kwargs, "random_seed": 43})
    for name in ("beta", "sigma", "sd_Batch", "r_Batch"):
        np.testing.assert_array_equal(a.idata.posterior[name].values, b.idata.posterior[name].values)
    assert not np.array_equal(a.idata.posterior["sigma"].values, c.idata.posterior["sigma"].values)


def test_diagnostics_warning_names_parameters():
    model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    with pytest.warns(blm.SamplingWarning, match=r"bulk ESS < 400 for .*sd_Subject\[Days\].*Remedies"):
        post = model.sample(draws=20, tune=10, chains=2, random_seed=1, progressbar=False)
    assert "Warning: sampling problems" in post.summary()


def test_priors_api_overrides_land_on_their_parameter():
    model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"),
                    priors={"sd_Subject__Days": blm.HalfNormal(sigma=2.0), "b_Days": blm.Normal(mu=0.0, sigma=1.0),
                            "sd": blm.HalfStudentT(nu=3.0, sigma=50.0)})
    table = model.prior_summary().set_index(["class", "term"])
    assert table.loc[("sd", "Days"), "prior"] == "HalfNormal(sigma=2)"
    assert table.loc[("sd", "Days"), "source"] == "sd_Subject__Days"
    assert table.loc[("sd", "(Intercept)"), "prior"] == "HalfStudentT(nu=3, sigma=50)"
    assert table.loc[("b", "Days"), "prior"] == "Normal(mu=0, sigma=1)"
    # a tight prior on the Days slope's sd pulls its posterior far below the REML 5.9
    tight = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"),
                    priors={"sd_Subject__Days": blm.HalfNormal(sigma=1.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)
        post = tight.sample(draws=300, tune=300, chains=2, random_seed=2, progressbar=False)
    vc = post.varcorr()
    assert vc[(vc["var1"] == "Days") & vc["var2"].isna()]["sdcor"].item() < 4.0  # REML: 5.92
    # and a tight prior on the Days effect pulls it from 10.5 towards 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)
        post = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"),
                       priors={"b_Days": blm.Normal(mu=0.0, sigma=0.5)}).sample(
            draws=300, tune=300, chains=2, random_seed=2, progressbar=False)
    assert abs(post.fixef().loc["Days", "mean"]) < 1.5


def test_bad_prior_keys_and_values():
    data = blm.datasets.load("sleepstudy")
    with pytest.raises(blm.PriorError, match="'sd_Subjet' name no parameter"):
        blm.LMM("Reaction ~ Days + (Days | Subject)", data, priors={"sd_Subjet": blm.HalfNormal(sigma=1.0)}).prior_summary()
    with pytest.raises(blm.PriorError, match="is a scale"):
        blm.LMM("Reaction ~ Days + (Days | Subject)", data, priors={"sigma": blm.Normal(mu=0.0, sigma=1.0)}).prior_summary()
    with pytest.raises(blm.PriorError, match="LKJ"):
        blm.LMM("Reaction ~ Days + (Days | Subject)", data, priors={"cor": blm.HalfNormal(sigma=1.0)}).prior_summary()


def test_prior_predictive():
    model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    prior = model.sample_prior_predictive(draws=50, random_seed=1)
    assert prior.prior_predictive["y"].shape == (1, 50, 180)
    assert prior.prior["sd_Subject"].shape == (1, 50, 2)


def test_unknown_sampler_and_parametrization():
    model = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"))
    with pytest.raises(blm.BayesLMMError, match="unknown sampler"):
        model.sample(sampler="stan", parametrization="full")
    with pytest.raises(blm.BayesLMMError, match="parametrization"):
        model.sample(parametrization="collapsed")
    crossed = blm.LMM("diameter ~ 1 + (1 | plate) + (1 | sample)", blm.datasets.load("penicillin"))
    with pytest.raises(blm.BayesLMMError, match="crossed"):
        crossed.sample(parametrization="marginal")


def test_netcdf_round_trip(brms_posteriors, tmp_path):
    post = brms_posteriors["sleep_rs"]
    path = post.to_netcdf(tmp_path / "sleep.nc")
    loaded = blm.load(path)
    assert loaded.design.formula.text == post.design.formula.text
    np.testing.assert_allclose(loaded.fixef()["mean"], post.fixef()["mean"])
    np.testing.assert_allclose(loaded.varcorr()["sdcor"], post.varcorr()["sdcor"])
    np.testing.assert_allclose(loaded.ranef()["Subject"], post.ranef()["Subject"])
    assert loaded.prior_set.describe(loaded.design) == post.prior_set.describe(post.design)
    attrs = loaded.idata.posterior.attrs
    assert attrs["bayeslmm_version"] == blm.__version__ and "Reaction" in attrs["data_columns"]
