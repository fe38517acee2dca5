"""Reporting numbers (bayeslmm/report.py): ICC and R2 against lme4/performance, pooling,
prediction, model comparison and the tidy exports, on point fits and short posteriors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

import bayeslmm as blm
from bayeslmm.reporting import report

from conftest import lme4_reference, reference_fit, short_posterior

# every non-singular lme4 reference case with ICC/R2 figures (R's performance package)
PARITY_CASES = ["dyestuff", "exam_ri", "exam_rs", "mpls_log_ml", "mpls_rs_ml", "pastes", "penicillin",
                "sleep_ri", "sleep_rs", "sleep_rs_ml", "sleep_uncorr"]


@pytest.fixture(scope="module")
def post_rs(sleep_rs_posterior):
    return sleep_rs_posterior


@pytest.fixture(scope="module")
def post_ri(sleepstudy):
    return short_posterior("Reaction ~ Days + (1 | Subject)", sleepstudy, 12)


# ---------------------------------------------------------------- ICC and R2
@pytest.mark.parametrize("case", PARITY_CASES)
def test_icc_r2_match_lme4_reference(case):
    ref = lme4_reference(case)
    assert not ref["is_singular"]
    fit = reference_fit(case)
    icc = fit.icc()
    r2 = fit.r2()
    assert list(icc.columns) == ["estimate"] and list(r2.columns) == ["estimate"]
    assert icc.loc["adjusted", "estimate"] == pytest.approx(ref["icc_adjusted"], abs=1e-3)
    assert r2.loc["marginal", "estimate"] == pytest.approx(ref["r2_marginal"], abs=1e-3)
    assert r2.loc["conditional", "estimate"] == pytest.approx(ref["r2_conditional"], abs=1e-3)
    if ref.get("icc_by_group"):
        for row in ref["icc_by_group"]:
            assert icc.loc[row["group"], "estimate"] == pytest.approx(row["icc"], abs=1e-3)
    else:
        # slopes: each factor's row is its share of the mean random variance, so the rows
        # add up to the adjusted ICC (performance reports nothing sensible here)
        groups = [g for g in icc.index if g != "adjusted"]
        assert icc.loc[groups, "estimate"].sum() == pytest.approx(icc.loc["adjusted", "estimate"], rel=1e-12)


def test_icc_with_slopes_is_mean_random_variance_over_rows():
    """Nakagawa's var_random written out row by row on sleep_rs."""
    fit = reference_fit("sleep_rs")
    block = fit.design.blocks[0]
    cov = fit.covariances[0]
    var_random = np.mean([z @ cov @ z for z in block.X])
    expected = var_random / (var_random + fit.sigma ** 2)
    assert fit.icc().loc["adjusted", "estimate"] == pytest.approx(expected, rel=1e-10)


def test_icc_posterior_matches_draws_of_the_variance_parameters(post_ri):
    post = post_ri.idata.posterior
    sd = post["sd_Subject"].sel(Subject__term="(Intercept)").to_numpy().ravel()
    sigma = post["sigma"].to_numpy().ravel()
    expected = sd ** 2 / (sd ** 2 + sigma ** 2)
    draws = post_ri.icc(draws=True)
    assert draws.shape == (400, 2)
    np.testing.assert_allclose(draws["adjusted"], expected, rtol=1e-12)
    np.testing.assert_allclose(draws["Subject"], expected, rtol=1e-12)
    table = post_ri.icc(prob=0.9)
    assert list(table.columns) == ["mean", "sd", "lower", "upper"]
    assert table.loc["adjusted", "mean"] == pytest.approx(expected.mean())
    assert table.loc["adjusted", "sd"] == pytest.approx(expected.std(ddof=1))
    assert table.loc["adjusted", "lower"] == pytest.approx(np.quantile(expected, 0.05))
    assert table.loc["adjusted", "upper"] == pytest.approx(np.quantile(expected, 0.95))
    # a posterior of the same model sits around the REML value
    assert abs(table.loc["adjusted", "mean"] - reference_fit("sleep_ri").icc().iloc[0, 0]) < 0.1


def test_r2_posterior_per_draw(post_rs):
    beta = post_rs.fixef_draws()
    eta = beta @ post_rs.design.X.T
    var_fixed = eta.var(axis=1, ddof=1)
    comps = report.variance_components(post_rs)
    total = var_fixed + comps["random"] + post_rs.sigma_draws() ** 2
    draws = post_rs.r2(draws=True)
    np.testing.assert_allclose(draws["marginal"], var_fixed / total, rtol=1e-12)
    assert np.all((draws["marginal"] < draws["conditional"]) & (draws["conditional"] < 1))
    table = post_rs.r2()
    ref = lme4_reference("sleep_rs")
    assert abs(table.loc["conditional", "mean"] - ref["r2_conditional"]) < 0.1


def test_icc_curve_reduces_to_intercept_icc_at_zero():
    fit = reference_fit("sleep_rs")
    grid, values = report.icc_curve(fit, "Days", grid=np.array([0.0, 9.0]))
    cov = fit.covariances[0]
    at9 = np.array([1.0, 9.0]) @ cov @ np.array([1.0, 9.0])
    np.testing.assert_allclose(values[0], [cov[0, 0] / (cov[0, 0] + fit.sigma ** 2),
                                           at9 / (at9 + fit.sigma ** 2)], rtol=1e-12)
    with pytest.raises(blm.BayesLMMError, match="varying slopes are: Days"):
        report.icc_curve(fit, "Reaction")


# ---------------------------------------------------------------- pooling
def _between(table: pd.DataFrame, term: str) -> pd.Series:
    """Partial pooling lies between no pooling and complete pooling (inclusive)."""
    no = table[("no_pooling", term)]
    cp = table[("complete_pooling", term)]
    pp = table[("partial_pooling", term)]
    return ((pp - cp) * (no - cp) >= 0) & ((pp - cp).abs() <= (no - cp).abs())


def _extreme(values: pd.Series) -> pd.Series:
    """Beyond the 20th or 80th percentile of the no-pooling estimates."""
    lo, hi = np.quantile(values, [0.2, 0.8])
    return (values < lo) | (values > hi)


def test_pooling_no_pooling_is_per_subject_ols(sleepstudy):
    table = reference_fit("sleep_rs").pooling()
    one = sleepstudy[sleepstudy["Subject"].astype(str) == "308"]
    slope, intercept = np.polyfit(one["Days"], one["Reaction"], 1)
    assert table.loc["308", ("no_pooling", "(Intercept)")] == pytest.approx(intercept)
    assert table.loc["308", ("no_pooling", "Days")] == pytest.approx(slope)
    ols_slope, ols_intercept = np.polyfit(sleepstudy["Days"], sleepstudy["Reaction"], 1)
    assert table[("complete_pooling", "Days")].iloc[0] == pytest.approx(ols_slope)
    coef = reference_fit("sleep_rs").coef()["Subject"]
    np.testing.assert_allclose(table["partial_pooling"].to_numpy(), coef.to_numpy())
    assert table[("n", "")].tolist() == [10] * 18


@pytest.mark.parametrize("case", ["sleep_ri", "sleep_rs"])
def test_partial_pooling_between_for_extreme_intercepts(case):
    """The teaching claim, for every subject whose no-pooling intercept is extreme."""
    table = reference_fit(case).pooling()
    extreme = _extreme(table[("no_pooling", "(Intercept)")])
    assert extreme.sum() == 8
    between = _between(table, "(Intercept)")
    assert between[extreme].all(), list(table.index[extreme & ~between])


def test_partial_pooling_between_for_extreme_slopes_when_shrinkage_is_per_coordinate(sleepstudy):
    """With centered Days and uncorrelated effects the no-pooling intercept and slope are
    uncorrelated (balanced design), shrinkage acts coordinate-wise, and both coordinates
    of every extreme subject are pulled in between. (With (Days | Subject) the 2-D
    shrinkage moves subjects 309 and 337's slopes 0.4 and 0.1 past their no-pooling
    values, because their intercepts pull the slope: see the Mahalanobis test below.)"""
    fit = blm.LMM("Reaction ~ I(Days - 4.5) + (I(Days - 4.5) || Subject)", sleepstudy).fit()
    table = fit.pooling()
    for term in ["(Intercept)", "I(Days - 4.5)"]:
        extreme = _extreme(table[("no_pooling", term)])
        between = _between(table, term)
        assert extreme.sum() == 8 and between[extreme].all(), term


def test_partial_pooling_closer_in_population_metric():
    """(Days | Subject): for every subject with an extreme intercept or slope, the
    partial-pooling (intercept, slope) is nearer the complete-pooling point than the
    no-pooling one, in the metric of the estimated population covariance Sigma."""
    fit = reference_fit("sleep_rs")
    table = fit.pooling()
    terms = ["(Intercept)", "Days"]
    prec = np.linalg.inv(fit.covariances[0])
    centre = table["complete_pooling"][terms].to_numpy()
    d_no = table["no_pooling"][terms].to_numpy() - centre
    d_pp = table["partial_pooling"][terms].to_numpy() - centre
    dist_no = np.einsum("ji,ik,jk->j", d_no, prec, d_no)
    dist_pp = np.einsum("ji,ik,jk->j", d_pp, prec, d_pp)
    extreme = (_extreme(table[("no_pooling", "(Intercept)")]) | _extreme(table[("no_pooling", "Days")])).to_numpy()
    assert extreme.sum() >= 8
    assert np.all(dist_pp[extreme] < dist_no[extreme])


def test_partial_pooling_between_on_posterior(post_ri):
    table = post_ri.pooling()
    extreme = _extreme(table[("no_pooling", "(Intercept)")])
    assert extreme.sum() == 8  # the claim is tested on eight subjects, not vacuously
    assert _between(table, "(Intercept)")[extreme].all()


# ---------------------------------------------------------------- prediction
def test_predict_point_on_fitted_data():
    fit = reference_fit("sleep_rs")
    data = fit.design.data
    pred = fit.predict(data)
    np.testing.assert_allclose(pred["estimate"], fit.fitted_draws()[0], rtol=1e-10)
    pop = fit.predict(data, include_random=False)
    np.testing.assert_allclose(pop["estimate"], fit.design.X @ fit.beta, rtol=1e-10)


def test_predict_point_new_level_predictive_variance():
    fit = reference_fit("sleep_rs")
    new = pd.DataFrame({"Days": [0.0, 9.0], "Subject": ["new", "new"]})
    mean = fit.predict(new)
    np.testing.assert_allclose(mean["estimate"], fit.beta[0] + fit.beta[1] * new["Days"], rtol=1e-10)
    pred = fit.predict(new, kind="predictive", random_seed=5)
    cov = fit.covariances[0]
    for i, days in enumerate([0.0, 9.0]):
        z = np.array([1.0, days])
        expected_sd = np.sqrt(z @ cov @ z + fit.sigma ** 2)
        assert pred["sd"].iloc[i] == pytest.approx(expected_sd, rel=0.06)
    assert np.all(pred["lower"] < mean["estimate"]) and np.all(mean["estimate"] < pred["upper"])


def test_predict_posterior_reproducible_with_new_levels(post_rs):
    new = pd.DataFrame({"Days": [0, 5, 9, 3], "Subject": ["308", "999", "999", "1000"]})
    a = post_rs.predict(new, random_seed=3)
    b = post_rs.predict(new, random_seed=3)
    c = post_rs.predict(new, random_seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.loc[1:, "mean"], c.loc[1:, "mean"])
    np.testing.assert_allclose(a.loc[0, "mean"], c.loc[0, "mean"])  # seen level: no randomness
    assert list(a.columns) == ["mean", "sd", "lower", "upper"]
    # the seen subject's prediction at Days 0 is its posterior intercept
    coef = post_rs.coef(tidy=True)
    row = coef[(coef["level"] == "308") & (coef["term"] == "(Intercept)")]
    assert a.loc[0, "mean"] == pytest.approx(row["mean"].iloc[0])
    # a new subject is far less certain than a seen one
    assert a.loc[1, "sd"] > 2 * a.loc[0, "sd"]
    pa = post_rs.predict(new, kind="predictive", random_seed=3)
    pd.testing.assert_frame_equal(pa, post_rs.predict(new, kind="predictive", random_seed=3))
    assert np.all(pa["sd"] > a["sd"])


def test_predict_rejects_new_levels_when_asked(post_rs):
    new = pd.DataFrame({"Days": [1.0], "Subject": ["999"]})
    with pytest.raises(blm.DataError, match="'999'.*'Subject'"):
        post_rs.predict(new, allow_new_levels=False)
    with pytest.raises(blm.DataError, match="'999'.*'Subject'"):
        reference_fit("sleep_rs").predict(new, allow_new_levels=False)
    # population-level predictions never need the level
    assert len(post_rs.predict(new, include_random=False, allow_new_levels=False)) == 1
    with pytest.raises(blm.BayesLMMError, match="kind"):
        post_rs.predict(new, kind="median")


# ---------------------------------------------------------------- comparison
def test_anova_refits_reml_with_ml_and_matches_lme4():
    ri, rs = reference_fit("sleep_ri"), reference_fit("sleep_rs")
    assert ri.method == rs.method == "reml"
    table = blm.anova(rs, ri, names=["rs", "ri"])
    assert list(table.columns) == ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
    assert list(table.index) == ["ri", "rs"]  # ordered by number of parameters, as lme4
    ref = lme4_reference("sleep_rs_ml")
    assert table.loc["rs", "logLik"] == pytest.approx(ref["logLik"], abs=1e-5)
    assert table.loc["rs", "AIC"] == pytest.approx(ref["AIC"], abs=1e-5)
    assert table.loc["rs", "BIC"] == pytest.approx(ref["BIC"], abs=1e-5)
    ri_ml = blm.LMM(ri.formula, ri.design.data).fit(method="ml")
    expected = 2 * (ref["logLik"] - ri_ml.loglik)
    assert table.loc["rs", "Chisq"] == pytest.approx(expected, abs=1e-4)
    assert table.loc["rs", "Df"] == 2 and table["npar"].tolist() == [4, 6]
    assert table.loc["rs", "Pr(>Chisq)"] == pytest.approx(chi2.sf(expected, 2))
    # lme4 prints for anova(fm1, fm2) on sleepstudy: AIC 1802.1, Chisq 42.139, p 7.072e-10
    assert table.loc["ri", "AIC"] == pytest.approx(1802.1, abs=0.05)
    assert table.loc["rs", "Chisq"] == pytest.approx(42.139, abs=5e-4)
    assert table.loc["rs", "Pr(>Chisq)"] == pytest.approx(7.072e-10, rel=1e-3)
    assert np.isnan(table.loc["ri", "Chisq"])


def test_anova_rejects_posteriors_and_different_data(post_ri, sleepstudy):
    with pytest.raises(blm.BayesLMMError, match="compare"):
        blm.anova(reference_fit("sleep_ri"), post_ri)
    other = blm.LMM("Reaction ~ Days + (1 | Subject)", sleepstudy.iloc[:170]).fit(method="ml")
    with pytest.raises(blm.BayesLMMError, match="same data"):
        blm.anova(reference_fit("sleep_ri"), other)


def test_loo_and_compare(post_ri, post_rs):
    with pytest.raises(blm.BayesLMMError, match="posterior"):
        reference_fit("sleep_rs").loo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings on 400 draws
        loo_rs = post_rs.loo()
        table = blm.compare(post_ri, post_rs, names=["intercepts", "slopes"])
    assert loo_rs.elpd < 0 and np.isfinite(loo_rs.se)  # arviz_stats.ELPDData (ArviZ 0.x: elpd_loo)
    assert loo_rs.n_data_points == 180
    assert table.index[0] == "slopes"  # random slopes predict much better (lme4's LRT agrees)
    assert table.loc["intercepts", "elpd_diff"] < -10  # ArviZ 1.x: worse models have negative elpd_diff
    assert table.loc["slopes", "elpd"] == pytest.approx(loo_rs.elpd)  # unrounded
    with pytest.raises(blm.BayesLMMError, match="anova"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blm.compare(post_rs, reference_fit("sleep_rs"))


# ---------------------------------------------------------------- tidy exports
def test_tidy_glance_augment_point():
    fit = reference_fit("sleep_rs")
    ref = lme4_reference("sleep_rs")
    tidy = fit.tidy()
    fixed = tidy[tidy["effect"] == "fixed"].set_index("term")
    np.testing.assert_allclose(fixed["estimate"], fit.fixef()["estimate"])
    np.testing.assert_allclose(fixed["std_error"], list(ref["fixef_se"].values()), rtol=1e-4)
    pars = tidy[tidy["effect"] == "ran_pars"].set_index("term")
    assert list(pars.index) == ["sd__(Intercept)", "sd__Days", "cor__(Intercept).Days", "sd__Observation"]
    np.testing.assert_allclose(pars["estimate"], ref["varcorr"][0]["sd"] + [ref["varcorr"][0]["corr"][0][1],
                                                                          ref["sigma"]], rtol=1e-4)
    vals = fit.tidy(effects="ran_vals")
    assert len(vals) == 36
    np.testing.assert_allclose(vals["std_error"], fit.ranef(tidy=True)["std_error"])
    glance = fit.glance()
    assert glance.loc[0, "logLik"] == pytest.approx(ref["logLik"], abs=1e-5)
    assert glance.loc[0, "AIC"] == pytest.approx(ref["AIC"], abs=1e-5)
    assert glance.loc[0, "r2_conditional"] == pytest.approx(ref["r2_conditional"], abs=1e-3)
    assert glance.loc[0, "ngroups_Subject"] == 18
    aug = fit.augment()
    np.testing.assert_allclose(aug[".fitted"] + aug[".resid"], fit.design.y)
    np.testing.assert_allclose(aug[".fixed"], fit.design.X @ fit.beta)
    with pytest.raises(blm.BayesLMMError, match="unknown effects"):
        fit.tidy(effects="random")


def test_tidy_glance_augment_posterior(post_rs):
    tidy = post_rs.tidy(effects=["fixed", "ran_pars", "ran_coefs"], prob=0.9)
    fixed = tidy[tidy["effect"] == "fixed"].set_index("term")
    summary = post_rs.fixef(prob=0.9)
    np.testing.assert_allclose(fixed["estimate"], summary["mean"])
    np.testing.assert_allclose(fixed["conf_low"], summary["lower"])
    coefs = tidy[tidy["effect"] == "ran_coefs"]
    np.testing.assert_allclose(coefs["estimate"], post_rs.coef(tidy=True, prob=0.9)["mean"])
    glance = post_rs.glance()
    assert glance.loc[0, "draws"] == 400 and glance.loc[0, "chains"] == 2
    aug = post_rs.augment()
    np.testing.assert_allclose(aug[".fitted"], post_rs.fitted_draws().mean(axis=0))
    assert np.all(aug[".fitted_sd"] > 0)


# ---------------------------------------------------------------- posterior predictive numbers
def test_ppc_pvalues(post_rs, sleepstudy):
    check = post_rs.ppc(draws=50, random_seed=2)
    assert check.y_rep.shape == (50, 180)
    p = check.pvalues
    assert list(p.index) == ["mean", "sd", "min", "max", "sd_group_means"]
    y = sleepstudy["Reaction"].to_numpy()
    assert p.loc["mean", "observed"] == pytest.approx(y.mean())
    assert p.loc["sd", "observed"] == pytest.approx(y.std(ddof=1))
    group_means = sleepstudy.groupby("Subject")["Reaction"].mean()
    assert p.loc["sd_group_means", "observed"] == pytest.approx(group_means.std(ddof=1))
    assert p["p_value"].between(0, 1).all()
    # the model reproduces the mean and the spread of subject means
    assert 0.05 < p.loc["mean", "p_value"] < 0.95
    assert 0.05 < p.loc["sd_group_means", "p_value"] < 0.95
    again = post_rs.ppc(draws=50, random_seed=2)
    np.testing.assert_array_equal(again.y_rep, check.y_rep)


def test_predict_nested_new_level_keeps_the_seen_parent():
    """pastes, (1 | batch/cask): a new cask in a seen batch gets its batch's effect and,
    on a point fit, the mean 0 of the new cask effect (lme4's allow.new.levels)."""
    fit = reference_fit("pastes")
    new = pd.DataFrame({"batch": ["A", "A"], "cask": ["a", "z"]})
    pred = fit.predict(new)["estimate"].to_numpy()
    batch = fit.ranef()["batch"].loc["A", "(Intercept)"]
    cask = fit.ranef()["cask:batch"].loc["a:A", "(Intercept)"]
    beta0 = fit.beta[0]
    np.testing.assert_allclose(pred, [beta0 + batch + cask, beta0 + batch], rtol=1e-10)
    with pytest.raises(blm.DataError, match="'z:A'.*'cask:batch'"):
        fit.predict(new, allow_new_levels=False)
    draws = fit.predict(new, kind="predictive", random_seed=1)
    cask_var = fit.covariances[0][0, 0] if fit.design.blocks[0].group == "cask:batch" else fit.covariances[1][0, 0]
    assert draws.loc[1, "sd"] == pytest.approx(np.sqrt(cask_var + fit.sigma ** 2), rel=0.06)


def test_predict_posterior_new_level_spread_is_population_spread(post_rs):
    """A new subject's mean at Days = d varies over draws as b0 + b1 d + u with
    u ~ N(0, z' Sigma z): its variance is E[z' Sigma z] + var(b0 + b1 d) (total variance)."""
    new = pd.DataFrame({"Days": [0.0, 9.0], "Subject": ["new", "new"]})
    draws = report.predict_draws(post_rs, new, random_seed=7)
    beta = post_rs.fixef_draws()
    cov = post_rs.cov_draws()[0]
    for i, days in enumerate([0.0, 9.0]):
        z = np.array([1.0, days])
        expected = np.einsum("i,sij,j->s", z, cov, z).mean() + (beta @ z).var()
        assert draws[:, i].var() == pytest.approx(expected, rel=0.2)
    # one effect per new level and draw: both rows share it (Days 0 and 9 correlate)
    assert np.corrcoef(draws[:, 0], draws[:, 1])[0, 1] > 0.2
