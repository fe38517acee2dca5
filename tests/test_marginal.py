"""The collapsed ("marginal") sampler: group effects integrated out, drawn exactly afterwards.

The pieces are checked against independent computations (a dense multivariate normal for
the marginal likelihood, finite differences for the gradient, the dense conditional
Gaussian for the group-effect draws, scipy for the prior densities), then the sampler as a
whole against brms 2.18 (../shared/reference/brms) with the issue's criterion: every
posterior mean within 0.2 posterior sd of brms's, every sd within 15%, zero divergences.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blm
from bayeslmm import priors as P
from bayeslmm.sampling import marginal_kernels as K
from bayeslmm.sampling.bayes import correlation_pairs
from bayeslmm.sampling.marginal import MarginalProblem, marginal_supported, sample_marginal

from conftest import BRMS_DATASET as DATASET
from conftest import LME4_CASES, assert_agrees_with_brms, bayeslmm_formula, brms_model, dataset_name, lme4_reference


def design_of(formula: str, name: str, priors=None):
    model = blm.LMM(formula, blm.datasets.load(name), priors=priors)
    return model.design, model.resolved_priors()


def small_exam():
    """12 schools of the exam data: small enough for a dense covariance matrix."""
    data = blm.datasets.load("exam")
    keep = data["school"].isin(sorted(data["school"].unique())[:12])
    return data[keep].reset_index(drop=True)


def user_draw(problem, x):
    """The reported parameters of one unconstrained point."""
    return {name: value[0] for name, value in problem.expand(x[None, :]).items()}


def covariances(problem, x):
    values = user_draw(problem, x)
    covs = []
    for bar in problem.bars:
        sd = values[f"sd_{bar.label}"]
        R = np.eye(bar.q)
        if bar.n_cpc:
            for c, (a, b, _) in enumerate(correlation_pairs(bar.terms)):
                R[a, b] = R[b, a] = values[f"cor_{bar.label}"][c]
        covs.append(sd[:, None] * R * sd[None, :])
    return values, covs


def dense_z(design):
    """Full random-effects model matrix, bar by bar, levels major."""
    parts = []
    for block in design.blocks:
        Z = np.zeros((design.nobs, block.n_levels * block.n_terms))
        for t in range(block.n_terms):
            Z[np.arange(design.nobs), block.codes * block.n_terms + t] = block.X[:, t]
        parts.append(Z)
    return np.hstack(parts)


def dense_marginal(design, problem, x):
    """(mean, covariance) of y and the prior covariance of b at ``x``, user's scale."""
    values, covs = covariances(problem, x)
    Z = dense_z(design)
    G = np.zeros((Z.shape[1], Z.shape[1]))
    start = 0
    for block, cov in zip(design.blocks, covs):
        size = block.n_levels * block.n_terms
        G[start:start + size, start:start + size] = np.kron(np.eye(block.n_levels), cov)
        start += size
    V = values["sigma"] ** 2 * np.eye(design.nobs) + Z @ G @ Z.T
    return design.X @ values["beta"], V, Z, G


CASES = [("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
         ("Reaction ~ Days + (Days || Subject)", "sleepstudy"),
         ("Reaction ~ Days + (1 | Subject)", "sleepstudy"),
         ("Reaction ~ 0 + Days + (Days | Subject)", "sleepstudy"),  # no intercept: nothing centered
         ("strength ~ 1 + (1 | batch/cask)", "pastes"),
         ("normexam ~ standLRT + sex + (standLRT + sex | school)", "exam20"),
         ("normexam ~ standLRT + (1 | school) + (0 + standLRT | school)", "exam20"),
         ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),                # crossed: one joint group
         ("normexam ~ standLRT + (standLRT | school) + (1 | sex)", "exam20")]       # crossed, with a slope


def case_design(formula, name, priors=None):
    if name == "exam20":
        model = blm.LMM(formula, small_exam(), priors=priors)
        return model.design, model.resolved_priors()
    return design_of(formula, name, priors)


# ---------------------------------------------------------------- structure
def large_crossed_data(n_a: int = 200, n_b: int = 60, n: int = 600) -> pd.DataFrame:
    """Two crossed factors with 260 levels in all: more than MAX_JOINT_EFFECTS."""
    rng = np.random.default_rng(5)
    a, b = rng.integers(n_a, size=n), rng.integers(n_b, size=n)
    a[:n_a], b[:n_b] = np.arange(n_a), np.arange(n_b)  # every level present
    return pd.DataFrame({"y": rng.normal(size=n) + 0.5 * rng.normal(size=n_a)[a] + 0.5 * rng.normal(size=n_b)[b],
                         "a": a, "b": b})


def test_marginal_supported_nested_small_crossed_but_not_large_crossed():
    from bayeslmm.sampling.marginal import MAX_JOINT_EFFECTS

    assert marginal_supported(design_of("Reaction ~ Days + (Days | Subject)", "sleepstudy")[0])[0]
    assert marginal_supported(design_of("strength ~ 1 + (1 | batch/cask)", "pastes")[0])[0]
    ok, reason = marginal_supported(design_of("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")[0])
    assert ok and reason == ("'plate' is crossed with 'sample' (not nested in it): its 30 group effects are "
                             "integrated out jointly")
    ok, reason = marginal_supported(blm.LMM("y ~ 1 + (1 | a) + (1 | b)", large_crossed_data()).design)
    assert not ok and reason == (f"'a' is crossed with 'b' (not nested in it), so the likelihood does not split by "
                                 f"group, and its 260 group effects are too many to integrate out jointly "
                                 f"(up to {MAX_JOINT_EFFECTS}); parametrization='crossed' integrates one factor "
                                 f"out given the others")


def test_crossed_layout_is_one_joint_group():
    design, _ = design_of("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")
    problem = MarginalProblem.from_design(design)
    assert problem.n_groups == 1 and problem.width == 30
    assert problem.stats.n.tolist() == [144.0]
    # plate effects first, then the sample effects, all in group 0
    by_label = {bar.label: bar for bar in problem.bars}
    assert np.all(by_label["plate"].group_of_level == 0) and np.all(by_label["sample"].group_of_level == 0)


def test_nested_layout_puts_casks_inside_their_batch():
    design, _ = design_of("strength ~ 1 + (1 | batch/cask)", "pastes")
    problem = MarginalProblem.from_design(design)
    assert problem.n_groups == 10 and problem.width == 4  # one batch effect + three casks
    by_label = {bar.label: bar for bar in problem.bars}
    assert len(by_label["cask:batch"].levels) == 30
    assert np.bincount(by_label["cask:batch"].group_of_level).tolist() == [3] * 10
    assert problem.stats.n.sum() == design.nobs == 60


# ---------------------------------------------------------------- the density
@pytest.mark.parametrize("formula,name", CASES)
def test_marginal_likelihood_equals_dense_multivariate_normal(formula, name):
    design, prior_set = case_design(formula, name)
    problem = MarginalProblem.from_design(design)
    blob = problem.pack(prior_set)
    for seed in (0, 1):
        x = problem.initial_point(np.random.default_rng(seed))
        mean, V, _, _ = dense_marginal(design, problem, x)
        C = np.linalg.cholesky(V)  # scipy's multivariate_normal uses an eigendecomposition: slow
        r = np.linalg.solve(C, design.y - mean)
        dense = -0.5 * (design.nobs * np.log(2 * np.pi) + r @ r) - np.sum(np.log(np.diag(C)))
        # the kernel works on y / s: its density is larger by n log s
        assert K.loglik_value(x, blob) - design.nobs * np.log(problem.y_scale) == pytest.approx(dense, abs=1e-8)


@pytest.mark.parametrize("formula,name", CASES)
def test_gradient_equals_finite_differences(formula, name):
    plain, _ = case_design(formula, name)
    priors = {"sd": blm.HalfNormal(sigma=3.0), "sigma": blm.Gamma(alpha=2.0, beta=0.5)}
    if any(block.correlated and block.n_terms > 1 for block in plain.blocks):
        priors["cor"] = blm.LKJ(eta=2.5)
    if len(plain.fixed_names) > 1:
        priors["b"] = blm.Normal(mu=0.0, sigma=5.0)
    design, prior_set = case_design(formula, name, priors)
    problem = MarginalProblem.from_design(design)
    blob = problem.pack(prior_set)
    x = problem.initial_point(np.random.default_rng(3))
    grad = np.zeros(problem.ndim)
    K.logp_grad(x, grad, blob)
    numeric = np.zeros(problem.ndim)
    scratch = np.zeros(problem.ndim)
    h = 1e-6
    for i in range(problem.ndim):
        step = np.zeros(problem.ndim)
        step[i] = h
        numeric[i] = (K.logp_grad(x + step, scratch, blob) - K.logp_grad(x - step, scratch, blob)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-5)


def test_log_posterior_is_likelihood_plus_priors_on_the_user_scale():
    """logp = marginal likelihood (of y / s) + priors at the user's values + log-Jacobians
    of the sd, sigma and correlation transforms, with the Intercept prior on the intercept
    of centered predictors (for q = 2, Stan's LKJ-on-Cholesky term is (eta-1) log|R|)."""
    design, prior_set = design_of("Reaction ~ Days + (Days | Subject)", "sleepstudy",
                                  {"b": blm.Normal(mu=1.0, sigma=4.0), "sd": blm.LogNormal(mu=2.0, sigma=1.0),
                                   "sigma": blm.Exponential(lam=0.1), "cor": blm.LKJ(eta=3.0)})
    problem = MarginalProblem.from_design(design)
    blob = problem.pack(prior_set)
    x = problem.initial_point(np.random.default_rng(5))
    values = user_draw(problem, x)
    sd_sl, cpc_sl, sigma_index = problem.slices()
    beta = values["beta"]
    intercept_c = beta[0] + beta[1] * design.X[:, 1].mean()
    L = np.zeros((2, 2))
    log_jac_cor = K.cpc_cholesky(x[cpc_sl[0]].copy(), 2, L)
    R = L @ L.T
    expected = (K.loglik_value(x, blob)
                + prior_set.intercept.logp(intercept_c) + prior_set.fixed["Days"].logp(beta[1])
                + sum(prior_set.sd[(0, t)].logp(v) for t, v in zip(design.blocks[0].terms, values["sd_Subject"]))
                + prior_set.sigma.logp(values["sigma"])
                + prior_set.cor[0].logp(R) + log_jac_cor
                + x[sd_sl[0]].sum() + x[sigma_index])  # log-Jacobians of the log transforms
    assert K.logp_grad(x, np.zeros(problem.ndim), blob) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("prior", [P.Normal(mu=1.0, sigma=2.0), P.StudentT(nu=3.0, mu=-1.0, sigma=2.5),
                                   P.HalfStudentT(nu=4.0, sigma=1.5), P.HalfNormal(sigma=2.0),
                                   P.Exponential(lam=0.7), P.Gamma(alpha=2.0, beta=1.5),
                                   P.LogNormal(mu=0.3, sigma=0.8), P.Flat()])
def test_prior_densities_match_scipy(prior):
    from bayeslmm.sampling.marginal import _prior_code

    code, a, b, c = _prior_code(prior)
    for v in (0.3, 1.7, 4.0):
        value, slope = K.prior_logp(int(code), a, b, c, v)
        assert value == pytest.approx(prior.logp(v), abs=1e-10)
        h = 1e-6
        numeric = (K.prior_logp(int(code), a, b, c, v + h)[0] - K.prior_logp(int(code), a, b, c, v - h)[0]) / (2 * h)
        assert slope == pytest.approx(numeric, abs=1e-6)


def test_correlation_transform_log_jacobian():
    """log|Jacobian| of y -> strictly lower entries of the correlation Cholesky factor."""
    q = 4
    y = np.random.default_rng(0).normal(size=q * (q - 1) // 2)
    L = np.zeros((q, q))
    log_jac = K.cpc_cholesky(y, q, L)
    np.testing.assert_allclose(np.sum(L**2, axis=1), 1.0)
    rows, cols = np.tril_indices(q, -1)

    def entries(v):
        M = np.zeros((q, q))
        K.cpc_cholesky(v, q, M)
        return M[rows, cols]

    J = np.zeros((len(y), len(y)))
    for i in range(len(y)):
        step = np.zeros(len(y))
        step[i] = 1e-6
        J[:, i] = (entries(y + step) - entries(y - step)) / 2e-6
    assert log_jac == pytest.approx(np.linalg.slogdet(J)[1], abs=1e-6)


def test_fast_one_bar_path_equals_general_path():
    for formula in ("Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (1 | Subject)"):
        design, prior_set = design_of(formula, "sleepstudy")
        problem = MarginalProblem.from_design(design)
        fast = problem.pack(prior_set)
        general = fast.copy()
        general[K.H_SINGLE] = 0.0
        assert fast[K.H_SINGLE] == 1.0
        x = problem.initial_point(np.random.default_rng(1))
        g1, g2 = np.zeros(problem.ndim), np.zeros(problem.ndim)
        assert K.logp_grad(x, g1, fast) == pytest.approx(K.logp_grad(x, g2, general), abs=1e-9)
        np.testing.assert_allclose(g1, g2, atol=1e-9)
        normals = np.random.default_rng(2).standard_normal((3, problem.n_groups * problem.width))
        out1, out2 = np.empty_like(normals), np.empty_like(normals)
        K.draw_effects_single(np.tile(x, (3, 1)), fast, normals, out1)
        K.draw_effects(np.tile(x, (3, 1)), general, normals, out2)
        np.testing.assert_allclose(out1, out2, atol=1e-12)


def test_arrays_entry_point_equals_design_entry_point():
    design, prior_set = design_of("Reaction ~ Days + (Days | Subject)", "sleepstudy")
    block = design.blocks[0]
    a = MarginalProblem.from_design(design)
    b = MarginalProblem.from_arrays(design.y, design.X, block.X, block.codes, design.fixed_names, block.terms,
                                    group_name="Subject", levels=block.levels)
    np.testing.assert_allclose(a.pack(prior_set), b.pack(prior_set))


@pytest.mark.parametrize("formula,name", [CASES[0], CASES[4], CASES[7], CASES[8]])
def test_effect_draws_follow_the_exact_conditional(formula, name):
    """b | y, theta ~ N(G Z' V^-1 (y - X beta), G - G Z' V^-1 Z G) (dense, user's scale)."""
    design, prior_set = case_design(formula, name)
    problem = MarginalProblem.from_design(design)
    blob = problem.pack(prior_set)
    x = problem.initial_point(np.random.default_rng(4))
    mean_y, V, Z, G = dense_marginal(design, problem, x)
    Vinv_Z_G = np.linalg.solve(V, Z @ G)
    cond_mean = Vinv_Z_G.T @ (design.y - mean_y)
    cond_cov = G - G @ Z.T @ Vinv_Z_G
    S = 20000
    draws = problem.split_effects(problem.draw_effects(np.tile(x, (S, 1)), blob, np.random.default_rng(0)))
    flat = np.hstack([d.reshape(S, -1) for d in draws])  # bar by bar, levels major: as dense_z
    sd = np.sqrt(np.diag(cond_cov))
    z = (flat.mean(axis=0) - cond_mean) / (sd / np.sqrt(S))
    assert np.max(np.abs(z)) < 4.5
    np.testing.assert_allclose(flat.std(axis=0), sd, rtol=0.04)
    emp = np.cov(flat.T)
    assert np.max(np.abs(emp - cond_cov)) < 0.05 * np.max(np.diag(cond_cov))


# ---------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def brms_runs():
    out = {}
    for case in DATASET:
        out[case] = brms_model(case).sample(random_seed=2024, progressbar=False, parametrization="marginal")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATASET))
def test_agrees_with_brms(brms_runs, case):
    post = brms_runs[case]
    assert post.idata.posterior.attrs["parametrization"] == "marginal"
    assert_agrees_with_brms(post, case)
    table = post.diagnostics()
    assert table["r_hat"].max() <= 1.01 and table["ess_bulk"].min() >= 1000


@pytest.mark.slow
def test_posterior_contract(brms_runs):
    post = brms_runs["exam_sex"]
    idata, design = post.idata, post.design
    p = idata.posterior
    assert p.attrs["parametrization"] == "marginal" and p.attrs["sampler"] == "nutpie"
    assert p.attrs["formula"] == design.formula.text and "sd_school__sexM" in p.attrs["priors"]
    assert set(p.data_vars) == {"beta", "sigma", "sd_school", "cor_school", "r_school"}
    assert p["beta"].dims == ("chain", "draw", "term") and list(p["term"].values) == list(design.fixed_names)
    assert p["sd_school"].dims == ("chain", "draw", "school__term")
    assert list(p["school__pair"].values) == ["(Intercept), standLRT", "(Intercept), sexM", "standLRT, sexM"]
    assert p["r_school"].shape == (4, 1000, 65, 3)
    assert list(p["school__level"].values) == list(design.blocks[0].levels)
    assert idata.log_likelihood["y"].shape == (4, 1000, design.nobs)
    np.testing.assert_array_equal(idata.observed_data["y"].values, design.y)
    assert "unconstrained_draw" not in idata.sample_stats
    # the stored log-likelihood is the Gaussian density given the drawn effects
    from scipy.stats import norm

    mu = post.fitted_draws()[:50]
    ll = idata.log_likelihood["y"].values.reshape(-1, design.nobs)[:50]
    np.testing.assert_allclose(ll, norm.logpdf(design.y, mu, post.sigma_draws()[:50, None]), atol=1e-8)
    # every reporting verb reads this layout
    assert post.fixef().shape[0] == 3 and post.ranef()["school"].shape == (65, 3)
    assert post.varcorr().iloc[-1]["group"] == "Residual"


@pytest.mark.slow
def test_group_effects_agree_with_reml_conditional_modes(brms_runs):
    """With 65 schools of ~60 pupils the posterior means of the effects are close to
    lme4's conditional modes (within a tenth of their posterior sd)."""
    post = brms_runs["exam_rs"]
    reml = blm.LMM("normexam ~ standLRT + (standLRT | school)", blm.datasets.load("exam")).fit()
    ours = post.ranef(tidy=True)
    modes = reml.ranef()["school"]
    mean = ours.pivot(index="level", columns="term", values="mean").loc[modes.index, modes.columns]
    sd = ours.pivot(index="level", columns="term", values="sd").loc[modes.index, modes.columns]
    assert np.max(np.abs((mean - modes) / sd).to_numpy()) < 0.15


def test_same_seed_same_draws_and_defaults_sample_cleanly():
    design, prior_set = design_of("Reaction ~ Days + (Days | Subject)", "sleepstudy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # default priors: no convergence warning
        a = sample_marginal(design, prior_set, random_seed=5, progressbar=False)
    b = sample_marginal(design, prior_set, random_seed=5, progressbar=False)
    for name in ("beta", "sigma", "sd_Subject", "cor_Subject", "r_Subject"):
        np.testing.assert_array_equal(a.idata.posterior[name].values, b.idata.posterior[name].values)
    assert a.divergences == 0 and a.diagnostics()["ess_bulk"].min() > 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a deliberately short run
        c = sample_marginal(design, prior_set, draws=200, tune=300, chains=2, random_seed=6, progressbar=False)
    assert not np.array_equal(a.idata.posterior["beta"].values[:2, :200], c.idata.posterior["beta"].values)


def test_nested_design_samples_without_divergences():
    model = blm.LMM("strength ~ 1 + (1 | batch/cask)", blm.datasets.load("pastes"))
    post = model.sample(random_seed=3, progressbar=False)
    p = post.idata.posterior
    assert p.attrs["parametrization"] == "marginal"
    assert p["r_cask:batch"].shape == (4, 1000, 30, 1) and p["r_batch"].shape == (4, 1000, 10, 1)
    assert post.divergences == 0
    # cask variation dominates (lme4: sd 2.90 for cask:batch, 1.29 for batch)
    assert float(p["sd_cask:batch"].mean()) == pytest.approx(2.9, rel=0.25)


def test_large_crossed_design_uses_the_partially_collapsed_sampler_and_says_why(caplog):
    import logging

    model = blm.LMM("y ~ 1 + (1 | a) + (1 | b)", large_crossed_data())
    with pytest.raises(blm.BayesLMMError, match="too many to integrate out jointly"):
        model.sample(parametrization="marginal")
    with pytest.raises(blm.errors.FitError, match="crossed"):
        sample_marginal(model.design, model.resolved_priors())
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="bayeslmm"):
        warnings.simplefilter("error")  # a good choice is not a warning
        # (a run this short may be told it is short: that is about the run, not the choice)
        warnings.filterwarnings("ignore", category=blm.SamplingWarning)
        post = model.sample(draws=200, tune=300, chains=2, random_seed=1, progressbar=False)
    attrs = post.idata.posterior.attrs
    assert attrs["parametrization"] == "crossed"
    # a (200 levels) and b (60) have near-equal estimated costs here: either may be integrated
    assert re.match(r"partially collapsed sampler: the effects of '[ab]' integrated out given those of "
                    r"'[ab]', which NUTS samples \(estimated time at equal ESS: ", attrs["sampler_choice"])
    assert attrs["sampler_choice"] in caplog.text
    assert post.idata.posterior["r_a"].shape == (2, 200, 200, 1)
    assert post.idata.posterior["r_b"].shape == (2, 200, 60, 1)


@pytest.mark.slow
def test_crossed_penicillin_marginal_agrees_with_a_long_full_run():
    """Penicillin's 30 crossed effects integrated out jointly: the same posterior as the full
    model (run long, at a high target_accept, since its sample sd mixes slowly), at the
    issue's criterion (means within 0.2 sd, sds within 15%); no divergences, high ESS."""
    model = blm.LMM("diameter ~ 1 + (1 | plate) + (1 | sample)", blm.datasets.load("penicillin"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # default settings: no convergence warning, no fallback
        marginal = model.sample(random_seed=3, progressbar=False)
    assert marginal.idata.posterior.attrs["parametrization"] == "marginal"
    assert marginal.divergences == 0 and marginal.diagnostics()["ess_bulk"].min() > 1000
    assert marginal.idata.posterior["r_plate"].shape == (4, 1000, 24, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = model.sample(draws=4000, tune=2000, random_seed=3, progressbar=False, parametrization="full",
                            target_accept=0.95)
    for name in ("beta", "sd_plate", "sd_sample", "sigma"):
        a, b = marginal.idata.posterior[name].values, full.idata.posterior[name].values
        assert abs(a.mean() - b.mean()) <= 0.2 * b.std(), name
        assert a.std() == pytest.approx(b.std(), rel=0.15), name
    # group effects: the same conditional means
    for name in ("r_plate", "r_sample"):
        a = marginal.idata.posterior[name].mean(("chain", "draw")).values
        b = full.idata.posterior[name].mean(("chain", "draw")).values
        sd = full.idata.posterior[name].std(("chain", "draw")).values
        assert np.max(np.abs(a - b) / sd) < 0.2, name


def test_bad_parametrization_is_rejected():
    model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    with pytest.raises(blm.BayesLMMError, match="parametrization"):
        model.sample(parametrization="collapsed")


def test_extreme_points_give_minus_infinity_not_an_exception():
    """nutpie's C callback cannot raise: an underflowing sigma or overflowing sd must come
    back as a non-finite density (a rejected step), not a ZeroDivisionError."""
    design, prior_set = design_of("Reaction ~ Days + (Days | Subject)", "sleepstudy")
    problem = MarginalProblem.from_design(design)
    for single in (1.0, 0.0):
        blob = problem.pack(prior_set)
        blob[K.H_SINGLE] = single
        _, _, sigma_index = problem.slices()
        for index, value in ((sigma_index, -1000.0), (problem.p, 800.0)):
            x = problem.initial_point(np.random.default_rng(0))
            x[index] = value
            assert not np.isfinite(K.logp_grad(x, np.zeros(problem.ndim), blob))
        assert K.logp_grad(np.full(problem.ndim, -800.0), np.zeros(problem.ndim), blob) == -np.inf


@pytest.mark.slow
@pytest.mark.parametrize("case", [case for case in LME4_CASES if case != "insteval"])
def test_every_reference_case_samples_cleanly_at_default_settings(case):
    """The issue: zero divergences on every reference case at default settings (InstEval,
    4,114 crossed effects, runs the full model: validation/default_sampling.py)."""
    ref = lme4_reference(case)
    model = blm.LMM(bayeslmm_formula(ref["formula"]), blm.datasets.load(dataset_name(ref)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", blm.SamplingWarning)
        post = model.sample(random_seed=1, progressbar=False)
    assert post.idata.posterior.attrs["parametrization"] == "marginal"
    assert post.divergences == 0
    assert post.diagnostics()["r_hat"].max() <= 1.01 and post.diagnostics()["ess_bulk"].min() >= 400


def test_groups_are_not_padded_to_the_largest():
    """One school with 40 classes among schools with 2: each group keeps its own size in the
    packed statistics (the kernels' cost is sum m_j^3, not J * max m^3), and the density is
    still the dense multivariate normal's."""
    rng = np.random.default_rng(3)
    classes = np.concatenate([np.arange(40), 40 + np.arange(2 * 9)])  # school 0: 40 classes; 9 schools of 2
    school = np.concatenate([np.zeros(40, dtype=int), 1 + np.arange(18) // 2])
    rows = np.repeat(np.arange(len(classes)), 3)
    data = pd.DataFrame({"y": rng.normal(size=len(rows)) + rng.normal(size=10)[school[rows]],
                         "school": school[rows].astype(str), "klass": classes[rows].astype(str)})
    model = blm.LMM("y ~ 1 + (1 | school/klass)", data)
    design, prior_set = model.design, model.resolved_priors()
    problem = MarginalProblem.from_design(design)
    assert sorted(problem.stats.m.tolist()) == [3] * 9 + [41]
    blob = problem.pack(prior_set)
    assert blob[K.H_S + 1] - blob[K.H_S] == 9 * 9 + 41 * 41  # Z'Z blocks: sum of m_j^2
    x = problem.initial_point(np.random.default_rng(0))
    mean, V, _, _ = dense_marginal(design, problem, x)
    C = np.linalg.cholesky(V)
    r = np.linalg.solve(C, design.y - mean)
    dense = -0.5 * (design.nobs * np.log(2 * np.pi) + r @ r) - np.sum(np.log(np.diag(C)))
    assert K.loglik_value(x, blob) - design.nobs * np.log(problem.y_scale) == pytest.approx(dense, abs=1e-8)
    draws = problem.split_effects(problem.draw_effects(np.tile(x, (2, 1)), blob, np.random.default_rng(1)))
    assert [d.shape for d in draws] == [(2, 10, 1), (2, 58, 1)] or [d.shape for d in draws] == [(2, 58, 1), (2, 10, 1)]
