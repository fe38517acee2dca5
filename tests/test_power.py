"""Power analysis by simulation (simr's powerSim / extend / powerCurve).

The oracle: in a balanced random-slope design (sleepstudy: 18 subjects x 10 days), the
REML estimate of the slope is the mean of the per-subject least-squares slopes and, when
the fit is not singular, its standard error is their standard deviation over sqrt(J). The
Wald statistic is then a noncentral t with J - 1 degrees of freedom and noncentrality
b / sqrt((sigma^2 / Sxx + tau_slope^2) / J), so the power of the z test at 1.96 is exact.
"""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeslmm as blm
from bayeslmm.fitting.reml import fit_profiled
from bayeslmm.scale.executor import task_seeds
from bayeslmm.scale.power import _fixef_accepts_ddf, clopper_pearson, extend, power, power_curve
from bayeslmm.scale.simulate import simulate_response

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep_fit(sleepstudy):
    return blm.LMM(FORMULA, sleepstudy).fit()


def wald_power_oracle(fit, slope: float, n_subjects: int, alpha: float = 0.05) -> float:
    days = np.arange(10.0)
    sxx = float(((days - days.mean()) ** 2).sum())
    var = (fit.sigma**2 / sxx + fit.covariances[0][1, 1]) / n_subjects
    crit = stats.norm.isf(alpha / 2)
    t = stats.nct(df=n_subjects - 1, nc=slope / np.sqrt(var))
    return float(t.sf(crit) + t.cdf(-crit))


def test_wald_power_matches_the_noncentral_t_on_a_dask_cluster(sleep_fit, dask_client):
    result = power(sleep_fit, "Days", nsim=200, fixef={"Days": 3.0}, method="wald", random_seed=7,
                   client=dask_client, progressbar=False)
    oracle = wald_power_oracle(sleep_fit, 3.0, 18)  # 0.60
    assert result.nsim == 200 and result.n_failed == 0
    assert result.lower <= oracle <= result.upper
    assert abs(result.power - oracle) < 0.06
    assert result.runs["estimate"].mean() == pytest.approx(3.0, abs=0.15)
    ok = ~result.runs["singular"]
    # the standard error of a non-singular fit is sd(per-subject slopes) / sqrt(18): t = est / se
    np.testing.assert_allclose(result.runs.loc[ok, "statistic"],
                               result.runs.loc[ok, "estimate"] / result.runs.loc[ok, "std_error"])
    assert result.n_singular == int(result.runs["singular"].sum())
    assert result.successes == int((result.runs["p_value"] < 0.05).sum())
    assert (result.lower, result.upper) == clopper_pearson(result.successes, 200)


def test_same_seed_same_runs_with_one_or_two_workers(sleep_fit, dask_client):
    kwargs = {"nsim": 6, "fixef": {"Days": 4.0}, "method": "wald", "random_seed": 11, "progressbar": False}
    serial = power(sleep_fit, "Days", n_jobs=1, **kwargs)
    local = power(sleep_fit, "Days", n_jobs=2, **kwargs)
    cluster = power(sleep_fit, "Days", client=dask_client, **kwargs)
    columns = ["estimate", "std_error", "statistic", "p_value", "singular"]
    pd.testing.assert_frame_equal(serial.runs[columns], local.runs[columns])
    pd.testing.assert_frame_equal(serial.runs[columns], cluster.runs[columns])
    other = power(sleep_fit, "Days", n_jobs=1, **{**kwargs, "random_seed": 12})
    assert not np.allclose(serial.runs["estimate"], other.runs["estimate"])


def test_lrt_equals_refitting_both_formulas(sleep_fit, sleepstudy):
    result = power(sleep_fit, "Days", nsim=3, fixef={"Days": 2.0}, method="lrt", random_seed=5, n_jobs=1,
                   progressbar=False)
    beta = np.array([sleep_fit.beta[0], 2.0])
    for i, seed in enumerate(task_seeds(5, 3)):
        y, _ = simulate_response(sleep_fit.design, beta, list(sleep_fit.covariances), sleep_fit.sigma,
                                 np.random.default_rng(seed))
        data = sleepstudy.assign(Reaction=y)
        full = blm.LMM(FORMULA, data).fit(method="ml")
        null = blm.LMM("Reaction ~ 1 + (Days | Subject)", data).fit(method="ml")
        statistic = null.criterion - full.criterion
        assert result.runs["statistic"].iloc[i] == pytest.approx(statistic, rel=1e-6)
        assert result.runs["p_value"].iloc[i] == pytest.approx(stats.chi2.sf(statistic, 1), rel=1e-5)
        assert result.runs["estimate"].iloc[i] == pytest.approx(full.beta[1], rel=1e-6)


def test_variance_overrides_change_the_simulation(sleep_fit):
    # no slope variance: the truth is on the boundary, so many fits are singular, and counted
    result = power(sleep_fit, "Days", nsim=40, fixef={"Days": 0.0}, sigma=20.0,
                   varcorr={"Subject": [[600.0, 0.0], [0.0, 0.0]]}, method="wald", random_seed=3, n_jobs=1,
                   progressbar=False)
    assert result.n_singular == int(result.runs["singular"].sum())
    assert result.n_singular >= 10
    # the slope is estimated within-subject only: its sd is sigma / sqrt(18 Sxx)
    assert result.runs["estimate"].std() == pytest.approx(20.0 / np.sqrt(18 * 82.5), rel=0.3)


def test_failed_fits_are_counted_not_fatal(sleep_fit):
    result = power(sleep_fit, "Days", nsim=3, fixef={"Days": 1e308}, method="wald", random_seed=1, n_jobs=1,
                   progressbar=False)
    assert result.n_failed == 3 and np.isnan(result.power)
    assert result.runs["error"].str.startswith("FitError: the simulated response has non-finite values").all()
    assert "3 failed" in result.summary()


def test_satterthwaite_dispatch(sleep_fit):
    if _fixef_accepts_ddf(sleep_fit):  # the inference back end is merged
        result = power(sleep_fit, "Days", nsim=4, method="satterthwaite", random_seed=2, n_jobs=1,
                       progressbar=False)
        assert result.n_failed == 0 and result.runs["df"].between(1, 180).all()
    else:
        with pytest.raises(blm.BayesLMMError, match="fixef\\(ddf='satterthwaite'\\)"):
            power(sleep_fit, "Days", nsim=4, method="satterthwaite", random_seed=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"test": "days"}, "no fixed effect 'days'"),
    ({"test": "Days", "fixef": {"Day": 1.0}}, "no fixed effect 'Day'"),
    ({"test": "Days", "varcorr": {"Subject": 35.0}}, "2 x 2 covariance matrix"),
    ({"test": "Days", "varcorr": {"Subject": [[1.0, 2.0], [2.0, 1.0]]}}, "positive semi-definite"),
    ({"test": "Days", "varcorr": {"Item": 1.0}}, "no grouping factor 'Item'"),
    ({"test": "Days", "sigma": -1.0}, "sigma must be positive"),
    ({"test": "Days", "nsim": 0}, "nsim must be"),
    ({"test": "Days", "method": "kr"}, "method must be one of"),
])
def test_bad_settings_are_named(sleep_fit, kwargs, message):
    kwargs.setdefault("method", "wald")
    with pytest.raises(blm.BayesLMMError, match=message):
        power(sleep_fit, random_seed=1, n_jobs=1, progressbar=False, **kwargs)


def test_clopper_pearson_is_the_beta_quantile_interval():
    low, high = clopper_pearson(8, 20)
    assert low == pytest.approx(stats.beta.ppf(0.025, 8, 13))
    assert high == pytest.approx(stats.beta.ppf(0.975, 9, 12))
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


def test_extend_copies_the_within_level_structure(sleepstudy):
    numeric = sleepstudy.assign(Subject=sleepstudy["Subject"].astype(int))
    bigger = extend(numeric, "Subject", 25)
    assert bigger["Subject"].nunique() == 25 and len(bigger) == 250
    first = numeric["Subject"].iloc[0]
    first_new = bigger[bigger["Subject"] == numeric["Subject"].max() + 1]
    np.testing.assert_array_equal(first_new["Days"], numeric[numeric["Subject"] == first]["Days"])
    smaller = extend(sleepstudy, "Subject", 5)
    assert list(pd.unique(smaller["Subject"])) == list(pd.unique(sleepstudy["Subject"]))[:5]
    text = extend(sleepstudy.assign(Subject=sleepstudy["Subject"].astype(str)), "Subject", 20)
    assert list(pd.unique(text["Subject"]))[-2:] == [f"{first}_1", f"{pd.unique(sleepstudy['Subject'])[1]}_1"]


def test_power_curve_follows_the_oracle_and_plots(sleep_fit, dask_client):
    curve = power_curve(sleep_fit, "Days", along="Subject", sizes=[8, 30], nsim=100, fixef={"Days": 3.0},
                        method="wald", random_seed=4, client=dask_client, progressbar=False)
    assert list(curve.table["size"]) == [8, 30] and list(curve.table["nobs"]) == [80, 300]
    for row in curve.table.itertuples():
        assert row.lower <= wald_power_oracle(sleep_fit, 3.0, row.size) <= row.upper
    assert curve.table["power"].iloc[1] > curve.table["power"].iloc[0] + 0.3
    fig = curve.plot()
    assert len(fig.axes[0].lines) >= 2
    with pytest.raises(blm.BayesLMMError, match="not a grouping column"):
        power_curve(sleep_fit, "Days", along="Days", sizes=[10], nsim=2, method="wald")


def test_a_factor_is_tested_jointly(sleepstudy):
    """Several columns: Wald chi-square with their count as df, equal to the quadratic form of
    an independent refit of the same simulated data; the LRT has the same df."""
    data = sleepstudy.assign(arm=np.array(["a", "b", "c"])[sleepstudy["Subject"].astype(int) % 3])
    fit = blm.LMM("Reaction ~ Days + arm + (Days | Subject)", data).fit()
    test = ["armb", "armc"]
    wald = power(fit, test, nsim=2, fixef={"armb": 10.0, "armc": 30.0}, method="wald", random_seed=9, n_jobs=1,
                 progressbar=False)
    lrt = power(fit, test, nsim=2, fixef={"armb": 10.0, "armc": 30.0}, method="lrt", random_seed=9, n_jobs=1,
                progressbar=False)
    assert wald.test == ("armb", "armc") and list(wald.runs["df"]) == [2.0, 2.0] == list(lrt.runs["df"])
    beta = fit.beta.copy()
    beta[2:] = [10.0, 30.0]
    y, _ = simulate_response(fit.design, beta, list(fit.covariances), fit.sigma,
                             np.random.default_rng(task_seeds(9, 2)[0]))
    refit = fit_profiled(replace(fit.design, y=y))
    b, V = refit.beta[2:], refit.vcov_beta[2:, 2:]
    assert wald.runs["statistic"].iloc[0] == pytest.approx(b @ np.linalg.solve(V, b), rel=1e-8)
    assert wald.runs["p_value"].iloc[0] == pytest.approx(stats.chi2.sf(b @ np.linalg.solve(V, b), 2), rel=1e-6)
