"""Singular fits: singularity report, MAP under priors, and the lmm() fallback workflow."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import bayeslmm as blm

from conftest import lme4_reference, reference_fit

EXAM_SEX = "normexam ~ standLRT + sex + (standLRT + sex | school)"
SALARY = "salary ~ 1 + grade + (1 + grade | major)"


@pytest.fixture(scope="module")
def map_fits():
    return {
        "dyestuff2": blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff2")).fit("map"),
        "exam_sex": blm.LMM(EXAM_SEX, blm.datasets.load("exam")).fit("map"),
        "salary": blm.LMM(SALARY, blm.datasets.simulate_salary()).fit("map"),
    }


def _sds_and_correlations(result):
    vc = result.varcorr()
    random = vc[vc["group"] != "Residual"]
    return random[random["var2"].isna()]["sdcor"].to_numpy(), random[random["var2"].notna()]["sdcor"].to_numpy()


@pytest.mark.parametrize("case", ["dyestuff2", "exam_sex"])
def test_reml_is_singular_like_lme4(case):
    assert lme4_reference(case)["is_singular"] is True
    assert reference_fit(case).is_singular


def test_singular_terms_name_the_boundary():
    assert reference_fit("dyestuff2").singular_terms() == ["Batch: sd((Intercept)) = 0"]
    # exam_sex: the 3 x 3 covariance is rank deficient without any single sd or corr at the bound
    # it is named by the combination with no variance: the sexM effects are a combination of
    # the other two, which the conditional modes obey
    exam = reference_fit("exam_sex")
    (exam_term,) = exam.singular_terms()
    match = re.fullmatch(r"school: sexM = (-?[\d.]+) \(Intercept\) ([+-]) ([\d.]+) standLRT "
                         r"\(the 3 x 3 covariance has rank 2\)", exam_term)
    assert match, exam_term
    coef_int, coef_lrt = float(match[1]), float(match[2] + match[3])
    b = exam.ranef()["school"]
    np.testing.assert_allclose(b["sexM"], coef_int * b["(Intercept)"] + coef_lrt * b["standLRT"], atol=5e-4)
    salary = blm.LMM(SALARY, blm.datasets.simulate_salary()).fit()
    assert salary.is_singular
    assert salary.singular_terms() == ["major: cor((Intercept), grade) = +1"]
    assert reference_fit("sleep_rs").singular_terms() == []


@pytest.mark.parametrize("case,reml_case", [("dyestuff2", "dyestuff2"), ("exam_sex", "exam_sex"), ("salary", None)])
def test_map_stays_inside_and_agrees_on_fixed_effects(map_fits, case, reml_case):
    fit = map_fits[case]
    assert fit.method == "map" and not fit.is_singular
    sds, correlations = _sds_and_correlations(fit)
    assert np.all(sds > 0)
    # strictly inside: no sd is negligible relative to the residual scale
    assert np.all(sds > 1e-3 * fit.sigma)
    assert np.all(np.abs(correlations) < 0.99)
    reml = reference_fit(reml_case) if reml_case else blm.LMM(SALARY, blm.datasets.simulate_salary()).fit()
    diff = np.abs(fit.fixef()["estimate"] - reml.fixef()["estimate"])
    assert np.all(diff < reml.fixef()["std_error"])


def test_map_reported_values(map_fits):
    dye = map_fits["dyestuff2"]
    # the profiled intercept of a balanced one-way design is the grand mean, whatever the variances
    assert dye.fixef().loc["(Intercept)", "estimate"] == pytest.approx(5.6656, abs=1e-3)
    sds, _ = _sds_and_correlations(dye)
    assert 0.3 < sds[0] < 2.0  # off zero, but small next to sigma ~ 3.7
    text = dye.summary()
    assert "maximum a posteriori" in text and "Priors:" in text
    assert "sd_Batch__(Intercept) ~ Gamma(alpha=2" in text
    assert "boundary (singular) fit" not in text


def test_map_objective_is_lower_at_its_mode_than_at_reml():
    """The MAP objective (minus twice the log posterior) is minimized at the reported theta."""
    from bayeslmm.fitting.map import MapObjective
    from bayeslmm.fitting.reml import ProfiledDeviance
    from bayeslmm.priors import resolve_priors

    model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    fit = model.fit("map")
    objective = MapObjective(ProfiledDeviance(model.design, reml=False),
                             resolve_priors(model.design, None, for_map=True))
    at_mode = objective(fit.theta)
    for step in ([0.05, 0, 0], [0, 0.05, 0], [0, 0, 0.02], [-0.05, 0, 0]):
        assert objective(fit.theta + np.array(step)) > at_mode


def test_map_with_user_priors_uses_them():
    model = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff2"),
                    priors={"sd_Batch": blm.priors.Gamma(alpha=2.0, beta=10.0)})
    fit = model.fit("map")
    default = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff2")).fit("map")
    # a rate of 10 puts the prior mode at 0.1: the sd shrinks towards it
    assert _sds_and_correlations(fit)[0][0] < _sds_and_correlations(default)[0][0]
    assert "(set by 'sd_Batch')" in fit.summary()


@pytest.mark.parametrize("prior", [blm.HalfNormal(sigma=1.0), blm.Gamma(alpha=1.0, beta=1.0)])
def test_map_under_a_prior_with_density_at_zero_says_it_is_on_the_boundary(prior):
    """Such priors cannot keep the mode off sd = 0 on Dyestuff2; the fit says so, silently
    otherwise (no 0/0 RuntimeWarning from Gamma(alpha=1) at a vanishing sd)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = blm.LMM("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff2"), priors={"sd": prior}).fit("map")
    assert fit.is_singular
    text = fit.summary()
    assert "the MAP is at the boundary too: Batch: sd((Intercept)) = 0" in text
    assert "the default Gamma(alpha=2, ...) on the sds does" in text


def test_lmm_auto_falls_back_to_map_on_singular_fits():
    with pytest.warns(blm.SingularFitWarning, match=r"Batch: sd\(\(Intercept\)\) = 0"):
        out = blm.lmm("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff2"))
    assert out.path == "reml -> map"
    assert out.reml.is_singular and out.map is not None and out.result is out.map
    assert "singular" in out.reason
    assert out.fixef().loc["(Intercept)", "estimate"] == pytest.approx(5.6656, abs=1e-3)
    assert "bayeslmm path: reml -> map" in out.summary()


def test_lmm_auto_keeps_reml_when_not_singular():
    with warnings.catch_warnings():
        warnings.simplefilter("error", blm.SingularFitWarning)
        out = blm.lmm("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"))
    assert out.path == "reml" and out.map is None and out.result is out.reml


def test_lmm_single_methods_put_the_fit_where_its_name_says():
    data = blm.datasets.load("dyestuff2")
    only_map = blm.lmm("Yield ~ 1 + (1 | Batch)", data, method="map")
    assert only_map.path == "map" and only_map.reml is None
    assert only_map.map.method == "map" and only_map.result is only_map.map
    only_ml = blm.lmm("Yield ~ 1 + (1 | Batch)", data, method="ml")
    assert only_ml.reml.method == "ml" and only_ml.map is None


def test_lmm_rejects_unknown_options():
    with pytest.raises(blm.BayesLMMError, match="fallback"):
        blm.lmm("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"), fallback="nope")
    with pytest.raises(blm.BayesLMMError, match="unknown method"):
        blm.lmm("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"), method="bogus")


@pytest.mark.slow
@pytest.mark.parametrize("name,formula", [("dyestuff2", "Yield ~ 1 + (1 | Batch)"), ("exam", EXAM_SEX),
                                          ("salary", SALARY)])
def test_posterior_of_singular_models_samples_cleanly(name, formula):
    """Default settings: no divergence, no convergence warning, and the summary shows the
    uncertainty in the variance components that the singular REML fit hid."""
    data = blm.datasets.simulate_salary() if name == "salary" else blm.datasets.load(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", blm.SamplingWarning)
        post = blm.LMM(formula, data).sample(random_seed=1, progressbar=False)
    assert post.divergences == 0
    vc = post.varcorr()
    random = vc[(vc["group"] != "Residual")]
    sds = random[random["var2"].isna()]
    # every sd is strictly positive, and the one the singular fit put on (or near) zero has
    # a wide interval: the uncertainty REML's point estimate hid
    assert (sds["lower"] > 0).all()
    smallest = sds.loc[sds["sdcor"].idxmin()]
    assert smallest["upper"] > 3 * smallest["lower"]
    correlations = random[random["var2"].notna()]
    assert (correlations["upper"] - correlations["lower"] > 0.5).all()
    assert "Random effects (standard deviations and correlations, 95% intervals)" in post.summary()


@pytest.mark.slow
def test_lmm_sample_fallback_records_the_path():
    with pytest.warns(blm.SingularFitWarning):
        out = blm.lmm("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff2"), fallback="sample",
                      draws=500, tune=500, chains=2, random_seed=3, progressbar=False)
    assert out.path == "reml -> map -> sample"
    assert out.result is out.posterior and out.map is not None and out.reml.is_singular
    assert out.posterior.varcorr().iloc[0]["sdcor"] > 0


def test_map_equals_a_direct_optimization_of_the_posterior_density():
    """The nested optimization (outer theta, inner Newton on (beta, log sigma)) finds the
    mode of the density written out directly: y ~ N(X beta, sigma^2 I + Z G Z') with the
    priors on the natural scale of every parameter, minimized jointly over all six
    parameters (dense 180 x 180 covariance) from a different start."""
    from scipy.optimize import minimize
    from scipy.stats import multivariate_normal

    from bayeslmm.priors import resolve_priors

    model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    fit = model.fit("map")
    design = model.design
    block = design.blocks[0]
    priors = resolve_priors(design, None, for_map=True)
    Z = np.zeros((len(design.y), block.n_levels * 2))
    for t in range(2):
        Z[np.arange(len(design.y)), block.codes * 2 + t] = block.X[:, t]
    days_mean = design.X[:, 1].mean()

    def minus_two_log_posterior(params):
        b0, b1, log_sd0, log_sd1, z, log_sigma = params
        sd = np.exp([log_sd0, log_sd1])
        rho, sigma = np.tanh(z), np.exp(log_sigma)
        corr = np.array([[1.0, rho], [rho, 1.0]])
        G = np.kron(np.eye(block.n_levels), corr * np.outer(sd, sd))
        V = sigma**2 * np.eye(len(design.y)) + Z @ G @ Z.T
        value = multivariate_normal(design.X @ np.array([b0, b1]), V).logpdf(design.y)
        value += priors.intercept.logp(b0 + b1 * days_mean) + priors.fixed["Days"].logp(b1)
        value += sum(priors.sd[(0, term)].logp(s) for term, s in zip(block.terms, sd))
        value += priors.cor[0].logp(corr) + priors.sigma.logp(sigma)
        return -2.0 * value

    vc = fit.varcorr()["sdcor"].to_numpy()
    ours = np.array([*fit.fixef()["estimate"], np.log(vc[0]), np.log(vc[1]), np.arctanh(vc[2]), np.log(vc[3])])
    start = ours + np.array([5.0, -1.0, 0.3, -0.3, 0.3, 0.1])
    direct = minimize(minus_two_log_posterior, start, method="BFGS", options={"gtol": 1e-7})
    assert minus_two_log_posterior(ours) <= direct.fun + 1e-6
    np.testing.assert_allclose(ours, direct.x, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("prior, x", [
    (blm.Normal(mu=1.0, sigma=2.0), 0.3), (blm.StudentT(nu=3.0, mu=1.0, sigma=2.0), 4.0),
    (blm.HalfStudentT(nu=3.0, sigma=2.0), 1.5), (blm.HalfNormal(sigma=2.0), 1.3),
    (blm.Exponential(lam=0.7), 2.0), (blm.priors.Gamma(alpha=2.0, beta=3.0), 0.4),
    (blm.priors.LogNormal(mu=0.2, sigma=0.5), 1.7), (blm.Flat(), 3.0)])
def test_map_log_densities_and_their_derivatives(prior, x):
    """The MAP's closed-form log densities equal the priors' own, and their first and second
    derivatives (the inner Newton step uses both) equal finite differences."""
    from bayeslmm.fitting.map import log_density

    h = 1e-4
    value, d1, d2 = log_density(prior, np.array([x]))
    up, down = log_density(prior, np.array([x + h]))[0], log_density(prior, np.array([x - h]))[0]
    if not isinstance(prior, blm.Flat):
        assert value == pytest.approx(prior.logp(x), abs=1e-12)
    assert d1[0] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-9)
    assert d2[0] == pytest.approx((up - 2 * value + down) / h**2, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("formula, data", [("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
                                           ("Yield ~ 1 + (1 | Batch)", "dyestuff2")])
def test_map_fit_is_silent(formula, data):
    """No stray NumPy RuntimeWarning (or any other warning) from a MAP fit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blm.LMM(formula, blm.datasets.load(data)).fit("map")


def test_rank_deficiency_with_several_null_directions_is_unique():
    """A 4 x 4 covariance of rank 2: the last two terms as combinations of the first two,
    relations that hold exactly and do not depend on which basis of the 2-dimensional null
    space the eigensolver returns (kb07's maximal fits have 4 and 3 null directions)."""
    from types import SimpleNamespace

    from bayeslmm.results.point import rank_deficiencies

    rng = np.random.default_rng(3)
    A = rng.normal(size=(4, 2)) * np.array([3.0, 1.0, 0.5, 2.0])[:, None]
    cov = A @ A.T
    terms = ["(Intercept)", "x", "z", "xz"]
    design = SimpleNamespace(blocks=[SimpleNamespace(n_terms=4, terms=terms, group="g")])
    (text,) = rank_deficiencies(design, [cov])
    assert text.startswith("g: z = ") and "; xz = " in text and text.endswith("(the 4 x 4 covariance has rank 2)")
    for relation in text[len("g: "):text.index(" (the")].split("; "):
        left, right = relation.split(" = ")
        weights = np.zeros(4)
        weights[terms.index(left)] = 1.0
        for part in right.replace(" - ", " + -").split(" + "):
            value, term = part.split(" ")
            weights[terms.index(term)] -= float(value)
        rounding = np.sum(5e-3 * np.abs(weights) * np.sqrt(np.diag(cov)))  # 3 significant digits printed
        assert np.sqrt(weights @ cov @ weights) <= rounding  # no variance, to the digits printed
    # another basis of the same null space: a tiny rotation within it changes eigh's vectors
    null = np.linalg.eigh(cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))))[1][:, :2]
    sd = np.sqrt(np.diag(cov))
    tilted = cov + 1e-10 * np.outer(sd, sd) * (null @ np.array([[1.0, 0.7], [0.7, 0.9]]) @ null.T)
    assert rank_deficiencies(design, [tilted]) == [text]
