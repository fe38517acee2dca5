"""The Bayesian back end (bayeslmm.sampling.bayes, bayeslmm.results.posterior): the PyMC model, the posterior
layout and verbs, reproducibility, the priors API, diagnostics and prior predictive draws.
Agreement with brms is in test_brms.py.

Structural tests use short chains of the full (non-centered) model; the numbers they pin
are ones a short run already determines (shapes, names, identities between verbs).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blm
from bayeslmm.sampling.bayes import build_model

SLEEP = "Reaction ~ Days + (Days | Subject)"


def quiet_sample(model, **kwargs):
    """Sample without the convergence warning that short structural runs trigger."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)
        return model.sample(progressbar=False, **kwargs)


@pytest.fixture(scope="module")
def sleep_full():
    """sleep_rs, default priors, full model, 2 chains x 300 draws."""
    model = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"))
    return quiet_sample(model, draws=300, tune=300, chains=2, random_seed=3, parametrization="full")


# ------------------------------------------------------------------ the PyMC model
def test_model_variables_and_centered_intercept():
    model = blm.LMM("normexam ~ standLRT + sex + (standLRT | school) + (1 | sex)", blm.datasets.load("exam"))
    pm_model = build_model(model.design, model.resolved_priors())
    free = {rv.name for rv in pm_model.free_RVs}
    assert free == {"_Intercept_c", "_b_standLRT", "_b_sexM", "_chol_school", "_z_school", "_sd_sex__(Intercept)",
                    "_z_sex", "_sigma"}
    public = {v.name for v in pm_model.deterministics}
    assert public == {"beta", "sd_school", "cor_school", "r_school", "sd_sex", "r_sex", "sigma"}
    # the free parameters are in units of s = sd(y); beta is on the user's scale and its
    # intercept on the original predictors: b0 = s (b0_centered - mean(x)' b)
    point = {"_Intercept_c": 0.3, "_b_standLRT": 0.5, "_b_sexM": -0.2}
    import pytensor

    from bayeslmm.sampling.bayes import response_scale

    fn = pytensor.function([pm_model[k] for k in point], pm_model["beta"])
    beta = fn(*point.values())
    means = model.design.X[:, 1:].mean(axis=0)
    s = response_scale(model.design)
    assert s == pytest.approx(np.std(model.design.y))
    np.testing.assert_allclose(beta, s * np.array([0.3 - means @ [0.5, -0.2], 0.5, -0.2]))


def test_intercept_only_and_uncorrelated_bars_have_independent_scales():
    design = blm.LMM("Reaction ~ 1 + (Days || Subject)", blm.datasets.load("sleepstudy")).design
    from bayeslmm.priors import resolve_priors

    pm_model = build_model(design, resolve_priors(design, None))
    free = {rv.name for rv in pm_model.free_RVs}
    assert free == {"_Intercept_c", "_sd_Subject__(Intercept)", "_sd_Subject__Days", "_z_Subject", "_sigma"}
    assert "cor_Subject" not in {v.name for v in pm_model.deterministics}


@pytest.mark.parametrize("formula, data", [
    (SLEEP, "sleepstudy"),
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),              # crossed
    ("normexam ~ standLRT + sex + (standLRT | school) + (1 | sex)", "exam"),  # two bars, shared rows
    ("Reaction ~ 0 + Days + (Days || Subject)", "sleepstudy"),                # no intercept
])
def test_sufficient_likelihood_equals_pointwise(formula, data):
    """The cross-product likelihood is the pointwise one: same log density and gradient."""
    model = blm.LMM(formula, blm.datasets.load(data))
    prior_set = model.resolved_priors()
    pointwise = build_model(model.design, prior_set)
    sufficient = build_model(model.design, prior_set, likelihood="sufficient")
    rng = np.random.default_rng(0)
    for _ in range(3):
        point = {k: v + 0.3 * rng.normal(size=np.shape(v)) for k, v in pointwise.initial_point().items()}
        a, b = pointwise.compile_logp()(point), sufficient.compile_logp()(point)
        assert b == pytest.approx(a, rel=1e-12, abs=1e-8)
        np.testing.assert_allclose(sufficient.compile_dlogp()(point), pointwise.compile_dlogp()(point),
                                   rtol=1e-9, atol=1e-9)


def test_prior_overrides_land_on_their_variable():
    """A per-term sd prior reaches that term's sd (and only it): prior draws of the model."""
    model = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"),
                    priors={"sd_Subject__Days": blm.HalfNormal(sigma=2.0), "b_Days": blm.Normal(mu=100.0, sigma=1.0),
                            "sd": blm.HalfStudentT(nu=3.0, sigma=50.0), "sigma": blm.Exponential(lam=0.1)})
    prior = model.sample_prior_predictive(draws=2000, random_seed=1).prior
    sd = prior["sd_Subject"].values.reshape(-1, 2)
    # medians: HalfStudentT(3, 50) -> 50 * 0.765 = 38.2; HalfNormal(2) -> 2 * 0.674 = 1.35
    assert np.median(sd[:, 0]) == pytest.approx(38.2, rel=0.1)
    assert np.median(sd[:, 1]) == pytest.approx(1.35, rel=0.1)
    assert float(prior["beta"].sel(term="Days").mean()) == pytest.approx(100.0, abs=0.1)
    assert float(prior["sigma"].mean()) == pytest.approx(10.0, rel=0.1)
    cor = prior["cor_Subject"].values.ravel()  # LKJ(1) on a 2 x 2: uniform on (-1, 1)
    assert cor.mean() == pytest.approx(0.0, abs=0.05) and cor.std() == pytest.approx(1 / np.sqrt(3), rel=0.05)


def test_prior_predictive_shapes():
    model = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"))
    prior = model.sample_prior_predictive(draws=50, random_seed=1)
    assert prior.prior_predictive["y"].shape == (1, 50, 180)
    assert prior.prior["sd_Subject"].shape == (1, 50, 2)
    assert prior.prior["r_Subject"].shape == (1, 50, 18, 2)
    again = model.sample_prior_predictive(draws=50, random_seed=1)
    np.testing.assert_array_equal(prior.prior_predictive["y"].values, again.prior_predictive["y"].values)
    assert not [name for name in prior.prior.data_vars if name.startswith("_")]  # no non-centered helpers
    flat = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"), priors={"b": blm.Flat()})
    with pytest.raises(blm.BayesLMMError, match="b_Days has a Flat\\(\\) prior, which is improper"):
        flat.sample_prior_predictive(draws=10)


def test_sampler_options_that_would_be_ignored_are_refused():
    model = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"))
    with pytest.raises(blm.BayesLMMError, match="'marginal' runs on nutpie only, not sampler='pymc'"):
        model.sample(sampler="pymc", parametrization="marginal")
    with pytest.raises(blm.BayesLMMError, match="bogus_kw apply to the full model only"):
        model.sample(draws=10, tune=10, chains=1, bogus_kw=3)


# ------------------------------------------------------------------ priors API
def test_prior_summary_table():
    model = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"),
                    priors={"sd_Subject__Days": blm.HalfNormal(sigma=2.0), "b_Days": blm.Normal(mu=0.0, sigma=1.0),
                            "sd": blm.HalfStudentT(nu=3.0, sigma=50.0)})
    table = model.prior_summary()
    assert isinstance(table, pd.DataFrame) and list(table.columns) == ["class", "group", "term", "prior", "source"]
    table = table.set_index(["class", "term"])
    assert table.loc[("sd", "Days"), "prior"] == "HalfNormal(sigma=2)"
    assert table.loc[("sd", "Days"), "source"] == "sd_Subject__Days"
    assert table.loc[("sd", "(Intercept)"), "prior"] == "HalfStudentT(nu=3, sigma=50)"
    assert table.loc[("sd", "(Intercept)"), "source"] == "sd"
    assert table.loc[("b", "Days"), "prior"] == "Normal(mu=0, sigma=1)"
    assert table.loc[("cor", ""), "source"] == "default"


def test_bad_prior_keys_and_values():
    data = blm.datasets.load("sleepstudy")
    with pytest.raises(blm.PriorError, match="'sd_Subjet' name no parameter"):
        blm.LMM(SLEEP, data, priors={"sd_Subjet": blm.HalfNormal(sigma=1.0)}).prior_summary()
    with pytest.raises(blm.PriorError, match="is a scale"):
        blm.LMM(SLEEP, data, priors={"sigma": blm.Normal(mu=0.0, sigma=1.0)}).prior_summary()
    with pytest.raises(blm.PriorError, match="LKJ"):
        blm.LMM(SLEEP, data, priors={"cor": blm.HalfNormal(sigma=1.0)}).prior_summary()
    with pytest.raises(blm.PriorError, match="must be a bayeslmm prior"):
        blm.LMM(SLEEP, data, priors={"b": 3.0}).prior_summary()
    with pytest.raises(blm.PriorError, match="name no parameter"):
        blm.LMM(SLEEP, data, priors={"sd_Subject__Hours": blm.HalfNormal(sigma=1.0)}).sample(progressbar=False)
    with pytest.raises(blm.PriorError, match=r"HalfNormal\(sigma=-1\): sigma must be positive"):
        blm.HalfNormal(sigma=-1)
    with pytest.raises(blm.PriorError, match="mu must be a number"):
        blm.Normal(mu="0")
    # a class the model lacks is said, not silently dropped (and not an error: one priors
    # dict may serve nested models)
    with pytest.warns(UserWarning, match="prior 'cor' is not used: the model has no correlated"):
        blm.LMM("Reaction ~ Days + (Days || Subject)", data, priors={"cor": blm.LKJ(eta=2.0)}).prior_summary()


def test_tight_per_term_prior_moves_the_full_posterior():
    """Mixed sd prior classes in one correlated bar (LKJCorr + separate sds) sample and bind:
    a HalfNormal(1) on the Days sd pulls it far below REML's 5.92 (brms, wide prior: 6.6)."""
    model = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"), priors={"sd_Subject__Days": blm.HalfNormal(sigma=1.0)})
    post = quiet_sample(model, draws=300, tune=300, chains=2, random_seed=2, parametrization="full")
    vc = post.varcorr()
    assert vc.loc[(vc["var1"] == "Days") & vc["var2"].isna(), "sdcor"].item() < 4.5
    assert vc.loc[(vc["var1"] == "(Intercept)") & vc["var2"].isna(), "sdcor"].item() > 15.0


# ------------------------------------------------------------------ samplers and seeds
def test_same_seed_same_draws():
    model = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"))
    kwargs = dict(draws=100, tune=100, chains=2, parametrization="full")
    a, b = quiet_sample(model, random_seed=42, **kwargs), quiet_sample(model, random_seed=42, **kwargs)
    c = quiet_sample(model, random_seed=43, **kwargs)
    for name in ("beta", "sigma", "sd_Batch", "r_Batch"):
        np.testing.assert_array_equal(a.idata.posterior[name].values, b.idata.posterior[name].values)
    assert not np.array_equal(a.idata.posterior["sigma"].values, c.idata.posterior["sigma"].values)


def test_pymc_sampler_and_bad_options():
    model = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"))
    post = quiet_sample(model, draws=100, tune=100, chains=2, random_seed=1, sampler="pymc", parametrization="full")
    assert post.idata.posterior.attrs["sampler"] == "pymc"
    assert post.idata.posterior["r_Batch"].shape == (2, 100, 6, 1)
    assert 1400 < post.fixef().loc["(Intercept)", "mean"] < 1650  # lme4: 1527.5
    with pytest.raises(blm.BayesLMMError, match="unknown sampler"):
        model.sample(sampler="stan", parametrization="full")
    with pytest.raises(blm.BayesLMMError, match="nutpie backend"):
        model.sample(backend="cuda", parametrization="full", progressbar=False)
    with pytest.raises(blm.BayesLMMError, match="option of sampler='nutpie'"):
        model.sample(sampler="pymc", backend="jax", parametrization="full", progressbar=False)


def test_jax_samplers_need_their_packages(monkeypatch):
    import bayeslmm.sampling.bayes as bayes

    model = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"))
    monkeypatch.setattr(bayes, "jax_available", lambda: False)
    for sampler in ("numpyro", "blackjax"):
        with pytest.raises(blm.BayesLMMError, match=r"pip install 'bayeslmm\[jax\]'"):
            model.sample(sampler=sampler, parametrization="full", progressbar=False)


@pytest.mark.parametrize("sampler", ["numpyro"])
def test_jax_samplers_sample_the_same_posterior(sampler, sleep_full):
    """PyMC's JAX sampler numpyro (the test extra installs it; blackjax is refused, see the
    next test): same layout, reproducible, and fixed effects near lme4's (251.405 (se 6.82),
    10.467 (se 1.55)) and the nutpie run's."""
    model = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"))
    post = quiet_sample(model, sampler=sampler, draws=300, tune=300, chains=2, random_seed=3)
    again = quiet_sample(model, sampler=sampler, draws=300, tune=300, chains=2, random_seed=3)
    assert post.idata.posterior.attrs["sampler"] == sampler
    assert post.idata.posterior.attrs["parametrization"] == "full"
    assert post.idata.posterior["r_Subject"].shape == (2, 300, 18, 2)
    assert post.idata.log_likelihood["y"].shape == (2, 300, 180)
    np.testing.assert_array_equal(post.idata.posterior["sigma"].values, again.idata.posterior["sigma"].values)
    assert post.divergences == 0
    fixef = post.fixef()["mean"]
    assert abs(fixef["(Intercept)"] - 251.405) < 3.0 and abs(fixef["Days"] - 10.467) < 0.8
    sigma = post.idata.posterior["sigma"].values.mean()
    assert abs(sigma - sleep_full.idata.posterior["sigma"].values.mean()) < 1.5  # posterior sd ~1.5


def test_blackjax_versions_that_pymc_cannot_drive_are_refused(monkeypatch):
    """blackjax >= 1.4 fails inside PyMC 6.4's glue (a TypeError on progress_bar): refused up
    front with a message naming the remedy, before any compilation."""
    import sys
    import types

    import bayeslmm.sampling.bayes as bayes

    bayes.check_jax_sampler_version("blackjax", "1.3.0")
    bayes.check_jax_sampler_version("numpyro", "0.22.0")
    bayes.check_jax_sampler_version("numpyro", "1.0")
    with pytest.raises(blm.BayesLMMError, match=r"blackjax 1\.7\.1: PyMC passes its progress_bar .*sampler='numpyro'"):
        bayes.check_jax_sampler_version("blackjax", "1.7.1")
    monkeypatch.setattr(bayes, "jax_available", lambda: True)
    monkeypatch.setitem(sys.modules, "blackjax", types.SimpleNamespace(__version__="1.7.1"))
    model = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"))
    with pytest.raises(blm.BayesLMMError, match="does not work with blackjax 1.7.1"):
        model.sample(sampler="blackjax", parametrization="full", progressbar=False)


# ------------------------------------------------------------------ diagnostics
def test_diagnostics_warning_names_parameters_and_remedies():
    model = blm.LMM(SLEEP, blm.datasets.load("sleepstudy"))
    with pytest.warns(blm.SamplingWarning) as record:
        post = model.sample(draws=20, tune=5, chains=2, random_seed=1, progressbar=False, parametrization="full")
    assert len([w for w in record if issubclass(w.category, blm.SamplingWarning)]) == 1
    message = str(record[0].message)
    assert "bulk ESS < 400 for" in message and "sd_Subject[Days]" in message and "beta[(Intercept)]" in message
    assert "divergent" in message or post.divergences == 0
    for remedy in ("tune", "draws", "target_accept", "'||'"):
        assert remedy in message
    table = post.diagnostics()
    assert list(table.columns) == ["r_hat", "ess_bulk", "ess_tail"]
    assert len(table) == 2 + 1 + 2 + 1  # beta (2), sigma, sd (2), cor
    assert "Warning: sampling problems" in post.summary()


def _synthetic_posterior(beta_shift: float):
    """A posterior of ``Reaction ~ 1 + (1 | Subject)`` from independent normal draws (4 x
    1000), with chain 0 of the intercept shifted by ``beta_shift`` sds: a known R-hat."""
    import xarray as xr

    from bayeslmm.results.posterior import PosteriorResult, to_inference_data

    model = blm.LMM("Reaction ~ 1 + (1 | Subject)", blm.datasets.load("sleepstudy"))
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(4, 1000))
    beta[0] += beta_shift
    dims = ("chain", "draw")
    posterior = xr.Dataset({
        "beta": (dims + ("term",), 300.0 + 10.0 * beta[..., None]),
        "sigma": (dims, 40.0 + rng.normal(size=(4, 1000))),
        "sd_Subject": (dims + ("Subject__term",), 30.0 + rng.normal(size=(4, 1000, 1))),
        "r_Subject": (dims + ("Subject__level", "Subject__term"), rng.normal(size=(4, 1000, 18, 1)))},
        coords={"term": ["(Intercept)"], "Subject__term": ["(Intercept)"],
                "Subject__level": list(model.design.blocks[0].levels)})
    idata = to_inference_data(model.design, {"posterior": posterior}, model.resolved_priors(), sampler="test",
                              parametrization="full")
    return idata, model, PosteriorResult


def test_rhat_is_compared_unrounded():
    """R-hat 1.0144 is above 1.01 and warns (ArviZ's default rounding would show 1.01 or 1.0)."""
    idata, model, PosteriorResult = _synthetic_posterior(0.41)
    with pytest.warns(blm.SamplingWarning, match=r"R-hat > 1\.01 for beta\[\(Intercept\)\]") as record:
        post = PosteriorResult(design=model.design, idata=idata, prior_set=model.resolved_priors())
    assert len(record) == 1
    rhat = post.diagnostics().loc["beta[(Intercept)]", "r_hat"]
    assert rhat == pytest.approx(1.01445, abs=5e-5)
    idata, model, PosteriorResult = _synthetic_posterior(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PosteriorResult(design=model.design, idata=idata, prior_set=model.resolved_priors()).divergences == 0


def test_clean_run_emits_no_warning(sleep_full):
    # re-run the construction-time check of the cached fit: only problems produce text
    message = sleep_full.diagnostic_message()
    table = sleep_full.diagnostics()
    bad = table.index[(table["r_hat"] > 1.01) | (table["ess_bulk"] < 400)].tolist()
    assert all(name in message for name in bad)
    assert (message == "") == (not bad and sleep_full.divergences == 0)


# ------------------------------------------------------------------ verbs
def test_posterior_layout_and_attrs(sleep_full):
    posterior = sleep_full.idata.posterior
    assert set(posterior.data_vars) == {"beta", "sigma", "sd_Subject", "cor_Subject", "r_Subject"}
    assert posterior["beta"].dims == ("chain", "draw", "term")
    assert posterior["sigma"].dims == ("chain", "draw")
    assert list(posterior["cor_Subject"].coords["Subject__pair"].values) == ["(Intercept), Days"]
    assert posterior["r_Subject"].shape == (2, 300, 18, 2)
    assert list(posterior["Subject__level"].values[:3]) == ["308", "309", "310"]
    assert sleep_full.idata.log_likelihood["y"].shape == (2, 300, 180)
    assert not any(name.startswith("_") for name in posterior.data_vars)
    for key in ("formula", "sampler", "parametrization", "priors", "bayeslmm_version", "data_columns"):
        assert key in posterior.attrs
    assert posterior.attrs["parametrization"] == "full"


def test_log_likelihood_is_the_gaussian_density(sleep_full):
    from scipy.stats import norm

    post = sleep_full
    beta, sigma = post.fixef_draws()[5], post.sigma_draws()[5]
    r = post.ranef_draws()[0][5]
    block = post.design.blocks[0]
    mu = post.design.X @ beta + np.sum(block.X * r[block.codes], axis=1)
    expected = norm.logpdf(post.design.y, mu, sigma)
    np.testing.assert_allclose(post.idata.log_likelihood["y"].values.reshape(-1, 180)[5], expected, rtol=1e-8)


def test_verbs_summarise_the_draws(sleep_full):
    post = sleep_full
    fixef = post.fixef(prob=0.9)
    assert list(fixef.columns) == ["mean", "sd", "lower", "upper", "pd", "rhat", "ess_bulk", "ess_tail"]
    days = post.idata.posterior["beta"].sel(term="Days").values.ravel()
    assert fixef.loc["Days", "mean"] == pytest.approx(days.mean())
    assert fixef.loc["Days", "lower"] == pytest.approx(np.quantile(days, 0.05))
    assert 7.0 < fixef.loc["Days", "mean"] < 14.0  # lme4: 10.47
    vc = post.varcorr()
    assert list(vc["group"]) == ["Subject", "Subject", "Subject", "Residual"]
    assert list(vc["var1"].fillna("")) == ["(Intercept)", "Days", "(Intercept)", ""]
    assert list(vc["var2"].fillna("")) == ["", "", "Days", ""]
    sd_days = post.idata.posterior["sd_Subject"].sel(Subject__term="Days").values.ravel()
    assert vc.loc[1, "sdcor"] == pytest.approx(sd_days.mean())
    assert vc.loc[1, "vcov"] == pytest.approx((sd_days ** 2).mean())
    assert vc.loc[1, "vcov_sd"] == pytest.approx((sd_days ** 2).std(ddof=1))
    assert vc.loc[1, "vcov_upper"] == pytest.approx(np.quantile(sd_days ** 2, 0.975))
    cor = post.idata.posterior["cor_Subject"].values.ravel()
    assert vc.loc[2, "sdcor"] == pytest.approx(cor.mean())
    assert vc.loc[2, "lower"] == pytest.approx(np.quantile(cor, 0.025))
    ranef = post.ranef()
    assert list(ranef) == ["Subject"] and ranef["Subject"].shape == (18, 2)
    tidy = post.ranef(tidy=True, prob=0.5)
    assert list(tidy.columns) == ["group", "level", "term", "mean", "sd", "lower", "upper"]
    assert len(tidy) == 36 and ((tidy["lower"] <= tidy["mean"]) & (tidy["mean"] <= tidy["upper"])).all()
    coef = post.coef()["Subject"]
    np.testing.assert_allclose(coef["Days"], ranef["Subject"]["Days"] + fixef.loc["Days", "mean"])


def test_summary_text(sleep_full):
    text = sleep_full.summary()
    for piece in ["posterior by NUTS", "Priors:", "Random effects", "Rhat", "ESS", "Subject",
                  "Residual", "Fixed effects:", "Number of obs: 180"]:
        assert piece in text


def test_netcdf_round_trip(sleep_full, tmp_path):
    path = sleep_full.to_netcdf(tmp_path / "sleep.nc")
    loaded = blm.load(path)
    assert loaded.design.formula.text == SLEEP
    np.testing.assert_allclose(loaded.fixef()["mean"], sleep_full.fixef()["mean"])
    np.testing.assert_allclose(loaded.varcorr()["sdcor"], sleep_full.varcorr()["sdcor"])
    np.testing.assert_allclose(loaded.ranef()["Subject"], sleep_full.ranef()["Subject"])
    assert loaded.prior_set.describe(loaded.design) == sleep_full.prior_set.describe(sleep_full.design)
    attrs = loaded.idata.posterior.attrs
    assert attrs["bayeslmm_version"] == blm.__version__ and "Reaction" in attrs["data_columns"]


def _awkward_frame(seed: int = 1, n: int = 150) -> pd.DataFrame:
    """Column types a CSV round trip would lose: an unsorted Categorical grouping factor, a
    Categorical predictor whose reference level is not first alphabetically, uint8,
    nullable integers with a missing value, Float64, bool and a text level called 'NA'."""
    rng = np.random.default_rng(seed)
    g = pd.Categorical(rng.choice(list("OZYXWV"), n), categories=list("OZYXWV"))
    data = pd.DataFrame({
        "x": rng.normal(size=n), "g": g,
        "k": rng.integers(0, 5, n).astype("uint8"),
        "lev": pd.Categorical(rng.choice(["lo", "mid", "hi"], n), categories=["mid", "lo", "hi"]),
        "flag": rng.random(n) > 0.5,
        "m": pd.array(rng.integers(0, 3, n), dtype="Int64"),
        "w": pd.array(rng.normal(size=n), dtype="Float64"),
        "site": rng.choice(["NA", "north side", "Zürich"], n),
    })
    data.loc[3, "m"] = pd.NA
    effect = rng.normal(size=6)[g.codes]
    data["y"] = 1 + 0.5 * data["x"] + 0.2 * data["k"] + effect + rng.normal(size=n)
    return data


def test_round_trip_keeps_every_verb(tmp_path):
    """post.to_netcdf then blm.load: every reporting verb returns the same values, with the
    column types that decide the design (category order, reference level, integer widths)."""
    data = _awkward_frame()
    formula = "y ~ x + k + lev + flag + (x | g) + (1 | site)"
    model = blm.LMM(formula, data, priors={"b_x": blm.Normal(mu=0.0, sigma=2.0), "sd_site": blm.HalfNormal(sigma=1.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)
        post = model.sample(draws=100, tune=150, chains=2, random_seed=3, progressbar=False)
    loaded = blm.load(post.to_netcdf(tmp_path / "awkward.nc"))
    pd.testing.assert_frame_equal(loaded.design.data, post.design.data)
    assert loaded.design.fixed_names == ("(Intercept)", "x", "k", "levlo", "levhi", "flag")  # 'mid' is the reference
    assert loaded.design.blocks[0].levels == ("O", "Z", "Y", "X", "W", "V")  # the category order
    for verb in ("fixef", "varcorr", "icc", "r2", "tidy", "glance", "augment", "diagnostics"):
        pd.testing.assert_frame_equal(getattr(loaded, verb)(), getattr(post, verb)(), check_exact=False, rtol=1e-12)
    for verb in ("ranef", "coef"):
        for group, frame in getattr(post, verb)().items():
            pd.testing.assert_frame_equal(getattr(loaded, verb)()[group], frame)
        pd.testing.assert_frame_equal(getattr(loaded, verb)(tidy=True), getattr(post, verb)(tidy=True))
    pd.testing.assert_frame_equal(loaded.pooling("g"), post.pooling("g"))
    new = data.head(4).assign(g=pd.Categorical(["O", "V", "Z", "O"], categories=list("OZYXWV")))
    new.loc[3, "site"] = "a new site"
    pd.testing.assert_frame_equal(loaded.predict(new, random_seed=5), post.predict(new, random_seed=5))
    assert loaded.summary() == post.summary()
    assert loaded.prior_set.describe(loaded.design) == post.prior_set.describe(post.design)
    attrs = loaded.idata.posterior.attrs
    assert attrs["bayeslmm_version"] == blm.__version__ and attrs["formula"] == formula
    assert json.loads(attrs["data_columns"]) == list(data.columns)
    assert "b_x ~ Normal(mu=0, sigma=2)" in attrs["priors"]


@pytest.mark.slow
@pytest.mark.parametrize("scale, sampler", [(1e-9, "nutpie"), (1e9, "pymc")])
def test_full_model_samples_any_response_scale(sleep_full, scale, sampler):
    """y * 1e-9 or y * 1e9: the full model (on nutpie and on PyMC's NUTS) gives the posterior
    of y, rescaled (unscaled, y * 1e-9 ran to R-hat 3 with nutpie and 82 divergences with PyMC)."""
    data = blm.datasets.load("sleepstudy")
    model = blm.LMM(SLEEP, data.assign(Reaction=data["Reaction"] * scale))
    post = quiet_sample(model, draws=300, tune=300, chains=2, random_seed=3, parametrization="full",
                        sampler=sampler)
    assert post.divergences == 0 and post.diagnostics()["r_hat"].max() < 1.05
    base = sleep_full.fixef()
    # within 0.3 posterior sd: the Monte Carlo error of two 2 x 300 runs is about 0.08 sd
    assert np.all(np.abs(post.fixef()["mean"] / scale - base["mean"]) < 0.3 * base["sd"])
    vc, base_vc = post.varcorr(), sleep_full.varcorr()
    units = np.where(vc["var2"].isna(), scale, 1.0)  # sds carry the unit, correlations do not
    assert np.all(np.abs(vc["sdcor"] / units - base_vc["sdcor"]) < 0.3 * base_vc["sdcor_sd"])


# ------------------------------------------------------------------ default priors, real runs
@pytest.mark.slow
@pytest.mark.parametrize("formula, data", [(SLEEP, "sleepstudy"),
                                           ("normexam ~ standLRT + (standLRT | school)", "exam")])
def test_default_priors_sample_cleanly(formula, data):
    """The issue: under the default priors R-hat <= 1.01, bulk ESS >= 400, no divergences."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", blm.SamplingWarning)
        post = blm.LMM(formula, blm.datasets.load(data)).sample(random_seed=5, progressbar=False)
    diag = post.diagnostics()
    assert diag["r_hat"].max() <= 1.01 and diag["ess_bulk"].min() >= 400
    assert post.divergences == 0
