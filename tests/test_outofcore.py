"""Out of core: a Dask dataframe reduced to per-group statistics gives the in-memory fit.

Every test computes on a real 2-worker LocalCluster (the ``dask_client`` fixture); rows are
shuffled and split into partitions that cut through groups, so the reduction has to add
partial statistics of the same group.
"""

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blm
from bayeslmm.fitting.reml import ProfiledDeviance, make_deviance
from bayeslmm.scale.outofcore import _intercept

dd = pytest.importorskip("dask.dataframe")

SLEEP = "Reaction ~ Days + (Days | Subject)"
EXAM = "normexam ~ standLRT + sex + (standLRT | school)"


def shuffled(name: str) -> pd.DataFrame:
    return blm.datasets.load(name).sample(frac=1.0, random_state=1).reset_index(drop=True)


@pytest.fixture(scope="module")
def models(dask_client):
    """(in memory, out of core) pairs of the same model."""
    out = {}
    for key, formula, name in [("sleep", SLEEP, "sleepstudy"), ("exam", EXAM, "exam")]:
        data = shuffled(name)
        out[key] = (blm.LMM(formula, data), blm.LMM(formula, dd.from_pandas(data, npartitions=3)))
    return out


def test_a_dask_frame_gives_the_out_of_core_model_without_rows(models):
    from bayeslmm.scale.outofcore import OutOfCoreLMM

    mem, ooc = models["exam"]
    assert isinstance(ooc, OutOfCoreLMM)
    assert ooc.design.y.size == 0 and ooc.design.X.shape == (0, 3)
    assert ooc.design.nobs == mem.design.nobs == 4059
    assert ooc.design.fixed_names == mem.design.fixed_names == ("(Intercept)", "standLRT", "sexM")
    assert ooc.design.blocks[0].levels == mem.design.blocks[0].levels
    stats = ooc.design.statistics
    assert stats.products.shape == (65, 6, 6) and stats.n.sum() == 4059


@pytest.mark.parametrize("key", ["sleep", "exam"])
@pytest.mark.parametrize("reml", [True, False])
def test_deviance_from_statistics_equals_the_in_memory_deviance(models, key, reml):
    mem, ooc = models[key]
    dev_mem = make_deviance(mem.design, reml=reml)
    dev_ooc = ProfiledDeviance.from_cross_products(
        ooc.design, ooc.design.statistics.cross_products(_intercept(ooc.design)), reml=reml)
    rng = np.random.default_rng(0)
    start = dev_mem.layout.initial()
    for theta in [start, start * 0.3, np.abs(start + rng.normal(0, 0.5, start.size)) * (dev_mem.layout.lower == 0)
                  + rng.normal(0, 0.3, start.size) * (dev_mem.layout.lower != 0)]:
        assert dev_ooc(theta) == pytest.approx(dev_mem(theta), rel=1e-12)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_fit_equals_the_in_memory_fit(models, method):
    for key, rtol in [("exam", 1e-10), ("sleep", 1e-10)]:
        # exam's optimum is sharp: the two fits agree to 1e-9; sleepstudy's is flat and both
        # stop within the optimizer's tolerance of it (lme4 agrees with either to ~1e-5)
        mem, ooc = models[key]
        a, b = mem.fit(method), ooc.fit(method)
        np.testing.assert_allclose(b.beta, a.beta, rtol=rtol)
        np.testing.assert_allclose(b.theta, a.theta, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(b.vcov_beta, a.vcov_beta, rtol=50 * rtol)
        assert b.sigma == pytest.approx(a.sigma, rel=rtol)
        assert b.criterion == pytest.approx(a.criterion, rel=1e-12)
        assert (b.aic, b.bic, b.nobs, b.is_singular) == pytest.approx((a.aic, a.bic, a.nobs, a.is_singular))
        group = a.design.blocks[0].group
        pd.testing.assert_frame_equal(b.ranef()[group], a.ranef()[group], rtol=50 * rtol, atol=1e-8)
        pd.testing.assert_frame_equal(b.varcorr(), a.varcorr(), rtol=50 * rtol)


@pytest.mark.parametrize("case", ["exam_rs", "exam_sex"])
def test_reproduces_lme4(dask_client, case):
    """exam_sex has the factor sex in the random part (3 x 3, singular in lme4)."""
    from conftest import lme4_reference

    ref = lme4_reference(case)
    fit = blm.LMM(ref["formula"], dd.from_pandas(shuffled("exam"), npartitions=4)).fit()
    assert fit.criterion == pytest.approx(ref["criterion"], rel=1e-7)
    for name, value in zip(fit.design.fixed_names, fit.beta):
        assert value == pytest.approx(ref["fixef"][name], rel=1e-4, abs=1e-5)
    assert fit.is_singular == ref["is_singular"]


def test_from_parquet_and_missing_values(tmp_path, dask_client):
    data = shuffled("sleepstudy")
    data.loc[[3, 50, 51], "Days"] = np.nan
    path = tmp_path / "sleep"
    path.mkdir()
    data.iloc[:100].to_parquet(path / "part.0.parquet")
    data.iloc[100:].to_parquet(path / "part.1.parquet")
    with pytest.warns(UserWarning, match="dropped 3 of 180 rows"):
        ooc = blm.LMM.from_parquet(SLEEP, path, client=dask_client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mem = blm.LMM(SLEEP, data)
    a, b = mem.fit(), ooc.fit()
    assert b.nobs == 177 and b.design.n_dropped == 3
    assert b.criterion == pytest.approx(a.criterion, rel=1e-12)
    np.testing.assert_allclose(b.beta, a.beta, rtol=2e-6)


def test_priors_are_the_in_memory_defaults(models):
    for mem, ooc in models.values():
        pd.testing.assert_frame_equal(ooc.prior_summary(), mem.prior_summary())
    mem, ooc = models["exam"]
    user = {"b": blm.Normal(mu=0.0, sigma=1.0), "sd_school": blm.HalfNormal(sigma=0.5)}
    from bayeslmm.scale.outofcore import resolve_priors

    pd.testing.assert_frame_equal(resolve_priors(ooc.design, user).table(ooc.design),
                                  blm.LMM(EXAM, shuffled("exam"), priors=user).prior_summary())


def test_posterior_is_the_in_memory_posterior(models):
    """The packed collapsed model is the in-memory one to rounding, so the same seed gives
    the same draws; the out-of-core result has the usual verbs."""
    from bayeslmm.sampling.marginal import MarginalProblem, run_marginal

    mem, ooc = models["exam"]
    problem = MarginalProblem.from_design(mem.design)
    means, y_center, y_scale, stats = ooc.design.statistics.marginal_stats(intercept=0)
    ours = replace(problem, means=means, y_center=y_center, y_scale=y_scale, stats=stats)
    a, b = problem.pack(mem.resolved_priors()), ours.pack(ooc.resolved_priors())
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())
    kwargs = {"draws": 150, "tune": 150, "chains": 2, "random_seed": 5, "progressbar": False}
    draws_a = run_marginal(problem, mem.resolved_priors(), **kwargs).x
    draws_b = run_marginal(ours, ooc.resolved_priors(), **kwargs).x
    np.testing.assert_allclose(draws_b, draws_a, atol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)  # a short run
        post = ooc.sample(**kwargs)
    assert post.idata.posterior.attrs["out_of_core"] == 1
    table = post.fixef()
    assert list(table.index) == ["(Intercept)", "standLRT", "sexM"]
    fit = ooc.fit()
    assert np.all(np.abs(table["mean"].to_numpy() - fit.beta) < 3 * table["sd"].to_numpy())
    assert post.ranef()["school"].shape == (65, 2)


@pytest.mark.parametrize("formula, message", [
    ("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", "one random-effect term"),
    ("Reaction ~ Days + (1 | Subject) + (1 | Days)", "one random-effect term"),
    ("Reaction ~ Days + (1 | Subject:Days)", "must be one column"),
    ("np.log(Reaction) ~ Days + (1 | Subject)", "the response must be a column"),
    ("Reaction ~ Dayz + (1 | Subject)", "unknown column 'Dayz'"),
])
def test_unsupported_models_are_refused(dask_client, formula, message):
    data = dd.from_pandas(blm.datasets.load("sleepstudy"), npartitions=2)
    with pytest.raises(blm.BayesLMMError, match=message):
        blm.LMM(formula, data)


@pytest.mark.parametrize("key", ["sleep", "exam"])
def test_tests_of_the_fixed_effects_equal_the_in_memory_tests(models, key):
    """Satterthwaite and Kenward-Roger df, lmerTest's anova and contest read only the
    cross-products: out of core they are the in-memory tables."""
    mem, ooc = models[key]
    a, b = mem.fit(), ooc.fit()
    for ddf in ["satterthwaite", "kenward-roger"]:
        pd.testing.assert_frame_equal(b.fixef(ddf=ddf), a.fixef(ddf=ddf), rtol=1e-8)
        pd.testing.assert_frame_equal(b.anova(ddf=ddf), a.anova(ddf=ddf), rtol=1e-8)
    L = np.eye(len(a.beta))[1:]
    pd.testing.assert_frame_equal(b.contest(L), a.contest(L), rtol=1e-8)
    assert b.fixef()["df"].to_numpy() == pytest.approx(a.fixef()["df"].to_numpy(), rel=1e-8)
    a_ml, b_ml = mem.fit("ml"), ooc.fit("ml")
    pd.testing.assert_frame_equal(b_ml.fixef(), a_ml.fixef(), rtol=1e-8)


def test_row_based_methods_are_refused(models):
    ooc = models["sleep"][1]
    fit = ooc.fit()
    text = fit.summary()
    assert "REML criterion at convergence: 1743.6" in text and "Number of obs: 180" in text
    with pytest.raises(blm.BayesLMMError, match="icc\\(\\) needs the rows"):
        fit.icc()
    assert "Scaled residuals" not in text and "out of core from per-group statistics of 180 rows" in text
    assert "t-tests use Satterthwaite's method" in text
    with pytest.raises(blm.BayesLMMError, match="out-of-core fit has none"):
        blm.power(fit, "Days", nsim=2, method="wald")
    with pytest.raises(blm.BayesLMMError, match="'reml' or 'ml'"):
        ooc.fit(method="map")
    with pytest.raises(blm.BayesLMMError, match="collapsed sampler"):
        ooc.sample(parametrization="full")


def test_factor_levels_come_from_every_partition(dask_client):
    """A text and a boolean predictor whose levels first appear in later partitions: the first
    pass collects every level, so the columns are those of the in-memory design."""
    rng = np.random.default_rng(4)
    n = 600
    data = pd.DataFrame({"g": np.repeat(np.arange(30), 20), "x": rng.normal(size=n)})
    data["arm"] = np.where(np.arange(n) < 400, "a", np.where(np.arange(n) < 500, "b", "c"))
    data["flag"] = np.arange(n) >= 300
    data["y"] = (1.0 + 0.5 * data["x"] + (data["arm"] == "c") * 2.0 + data["flag"] * 0.3
                 + rng.normal(size=30)[data["g"]] + rng.normal(size=n))
    formula = "y ~ x + arm + flag + (1 | g)"
    mem = blm.LMM(formula, data)
    ooc = blm.LMM(formula, dd.from_pandas(data, npartitions=4))
    assert ooc.design.fixed_names == mem.design.fixed_names == ("(Intercept)", "x", "armb", "armc", "flag")
    a, b = mem.fit(), ooc.fit()
    assert b.criterion == pytest.approx(a.criterion, rel=1e-12)
    np.testing.assert_allclose(b.beta, a.beta, rtol=1e-8)


def test_anova_of_an_interaction_out_of_core(dask_client):
    """Types I and II read X'X only: out of core they equal the in-memory tables. Type III of
    a term inside an interaction re-codes the factors row by row: refused with a reason."""
    data = shuffled("exam")
    formula = "normexam ~ standLRT * sex + (1 | school)"
    a = blm.LMM(formula, data).fit()
    b = blm.LMM(formula, dd.from_pandas(data, npartitions=3)).fit()
    for type in (1, 2):
        pd.testing.assert_frame_equal(b.anova(type=type), a.anova(type=type), rtol=1e-8)
    with pytest.raises(blm.BayesLMMError, match="type III test of 'standLRT'.*out of core"):
        b.anova(type=3)
