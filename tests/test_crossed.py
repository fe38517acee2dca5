"""The partially collapsed sampler for crossed designs (bayeslmm.sampling.crossed).

Its pieces are checked against independent computations: the conditional marginal
likelihood against a dense multivariate normal, the gradient against finite differences,
the priors against the collapsed sampler's (checked against scipy in test_marginal), the
draws of the integrated effects against the dense conditional Gaussian; then the sampler as
a whole against the collapsed sampler on a crossed design small enough for both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blm
from bayeslmm.sampling import crossed_kernels as C
from bayeslmm.sampling import marginal_kernels as K
from bayeslmm.sampling.crossed import CrossedProblem, estimate_costs, factors_of, nested_in, plan_sampler
from bayeslmm.sampling.marginal import MarginalProblem


def crossed_data(n_a=12, n_b=7, n=150, seed=0, slope=True):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(n_a, size=n), rng.integers(n_b, size=n)
    a[:n_a], b[:n_b] = np.arange(n_a), np.arange(n_b)
    x = rng.normal(size=n)
    y = (1.0 + 0.5 * x + rng.normal(size=n_a)[a] + 0.4 * rng.normal(size=n_a)[a] * x
         + 0.7 * rng.normal(size=n_b)[b] + 0.3 * rng.normal(size=n_b)[b] * x + rng.normal(size=n))
    return pd.DataFrame({"y": 10 + 3 * y, "x": x, "a": a.astype(str), "b": b.astype(str),
                         "c": (a // 3).astype(str)})


CASES = [("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin", None),
         ("y ~ x + (x | a) + (x | b)", "sim", None),
         ("y ~ x + (x | a) + (1 | b)", "sim", 1),           # integrate b, sample a's slopes
         ("y ~ x + (x || a) + (x | b) + (1 | c)", "sim", None),  # a nested in c: c sampled, a integrated
         ("y ~ 0 + x + (1 | a) + (x | b)", "sim", None)]


def case(formula, name, priors=None):
    data = crossed_data() if name == "sim" else blm.datasets.load(name)
    model = blm.LMM(formula, data, priors=priors)
    return model.design, model.resolved_priors()


def sampled_b(problem, x, k, cov):
    """A sampled bar's effects (levels, q) on the user's scale at ``x``."""
    i = problem.sampled.index(k)
    bar = problem.bars[k]
    u0 = problem.u_starts[i]
    v = x[u0:u0 + len(bar.levels) * bar.q].reshape(len(bar.levels), bar.q).copy()
    lam = np.linalg.cholesky(cov)
    kc = problem.centered[i]  # the first kc coordinates are b itself (standardized scale)
    v[:, :kc] = np.linalg.solve(lam[:kc, :kc] / problem.y_scale, v[:, :kc].T).T
    return v @ lam.T


def dense_conditional(design, problem, x):
    """log N(y | X beta + Z_S b_S, sigma^2 I + Z_I G_I Z_I') on the user's scale, written out."""
    values = problem.expand(x[None, :])
    beta, sigma = values["beta"][0], values["sigma"][0]
    mean = design.X @ beta
    V = sigma ** 2 * np.eye(design.nobs)
    for k, (bar, block) in enumerate(zip(problem.bars, design.blocks)):
        sd = values[f"sd_{bar.label}"][0]
        R = np.eye(bar.q)
        if bar.n_cpc:
            Lc = np.zeros((bar.q, bar.q))
            sd_sl, cpc_sl, _ = problem.slices()
            K.cpc_cholesky(np.ascontiguousarray(x[cpc_sl[k]]), bar.q, Lc)
            R = Lc @ Lc.T
        cov = sd[:, None] * R * sd[None, :]
        Z = np.zeros((design.nobs, block.n_levels * bar.q))
        for t in range(bar.q):
            Z[np.arange(design.nobs), block.codes * bar.q + t] = block.X[:, t]
        if k in problem.integrated:
            V += Z @ np.kron(np.eye(block.n_levels), cov) @ Z.T
        else:
            mean = mean + Z @ sampled_b(problem, x, k, cov).ravel()
    Cv = np.linalg.cholesky(V)
    r = np.linalg.solve(Cv, design.y - mean)
    return -0.5 * (design.nobs * np.log(2 * np.pi) + r @ r) - np.sum(np.log(np.diag(Cv)))


def point(problem, seed):
    x = problem.initial_point(np.random.default_rng(seed))
    x[problem.ndim_base:] = np.random.default_rng(seed + 10).normal(size=problem.ndim - problem.ndim_base)
    return x


@pytest.mark.parametrize("centered", [False, True, 1])
@pytest.mark.parametrize("formula,name,top", CASES)
def test_conditional_likelihood_equals_dense_multivariate_normal(formula, name, top, centered):
    design, prior_set = case(formula, name)
    problem = CrossedProblem.from_design(design, top, centered=centered)
    assert problem.sampled  # something is sampled in every case
    blob = problem.pack(prior_set)
    for seed in (0, 1):
        x = point(problem, seed)
        # the kernel works on y / s: its density is larger by n log s
        got = C.crossed_loglik(x, blob) - design.nobs * np.log(problem.y_scale)
        assert got == pytest.approx(dense_conditional(design, problem, x), abs=1e-8)


@pytest.mark.parametrize("centered", [False, True, 1])
@pytest.mark.parametrize("formula,name,top", CASES)
def test_gradient_equals_finite_differences(formula, name, top, centered):
    plain, _ = case(formula, name)
    priors = {"sd": blm.HalfNormal(sigma=3.0), "sigma": blm.Gamma(alpha=2.0, beta=0.5)}
    if any(b.correlated and b.n_terms > 1 for b in plain.blocks):
        priors["cor"] = blm.LKJ(eta=2.5)
    design, prior_set = case(formula, name, priors)
    problem = CrossedProblem.from_design(design, top, centered=centered)
    blob = problem.pack(prior_set)
    x = point(problem, 3)
    grad = np.zeros(problem.ndim)
    C.crossed_logp(x, grad, blob)
    numeric = np.zeros(problem.ndim)
    scratch = np.zeros(problem.ndim)
    h = 1e-6
    for i in range(problem.ndim):
        step = np.zeros(problem.ndim)
        step[i] = h
        numeric[i] = (C.crossed_logp(x + step, scratch, blob) - C.crossed_logp(x - step, scratch, blob)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("centered", [False, True])
def test_priors_and_jacobians_equal_the_collapsed_samplers(centered):
    """logp - loglik is the prior part: the collapsed sampler's (on the shared coordinates)
    plus the density of the sampled effects: standard normal in u (non-centered), or
    N(0, sd^2) in b (centered, standardized scale)."""
    design, prior_set = case("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin",
                             {"sd": blm.LogNormal(mu=0.0, sigma=1.0), "sigma": blm.Exponential(lam=2.0)})
    crossed = CrossedProblem.from_design(design, centered=centered)
    marginal = MarginalProblem.from_design(design)
    cb, mb = crossed.pack(prior_set), marginal.pack(prior_set)
    x = point(crossed, 4)
    base = x[:crossed.ndim_base].copy()
    u = x[crossed.ndim_base:]
    c_prior = C.crossed_logp(x, np.zeros(crossed.ndim), cb) - C.crossed_loglik(x, cb)
    m_prior = K.logp_grad(base, np.zeros(marginal.ndim), mb) - K.loglik_value(base, mb)
    if centered:
        from scipy.stats import norm

        k = crossed.sampled[0]
        sd = np.exp(x[crossed.slices()[0][k]][0])  # standardized scale
        expected = m_prior + norm.logpdf(u, scale=sd).sum() + 0.5 * len(u) * np.log(2 * np.pi)
    else:
        expected = m_prior - 0.5 * u @ u
    assert c_prior == pytest.approx(expected, abs=1e-9)


def test_partially_centered_bar_has_the_density_of_its_coordinates():
    """A sampled bar with its intercept centered: per level the coordinates are (b_0, u_1),
    b_0 ~ N(0, Lambda_00^2) and u_1 ~ N(0, 1) (b_1 = Lambda_10 b_0 / Lambda_00 + Lambda_11 u_1):
    logp - loglik is the collapsed sampler's prior plus those two densities (without 2 pi)."""
    design, prior_set = case("y ~ x + (x | a) + (x | b)", "sim")
    crossed = CrossedProblem.from_design(design, top=1, centered=1)
    assert crossed.sampled == (0,) and crossed.centered == (1,)
    marginal = MarginalProblem.from_design(design)
    cb, mb = crossed.pack(prior_set), marginal.pack(prior_set)
    x = point(crossed, 6)
    base = x[:crossed.ndim_base].copy()
    c_prior = C.crossed_logp(x, np.zeros(crossed.ndim), cb) - C.crossed_loglik(x, cb)
    m_prior = K.logp_grad(base, np.zeros(marginal.ndim), mb) - K.loglik_value(base, mb)
    sd_sl, cpc_sl, _ = crossed.slices()
    Lc = np.zeros((2, 2))
    K.cpc_cholesky(np.ascontiguousarray(x[cpc_sl[0]]), 2, Lc)
    lam = np.exp(x[sd_sl[0]])[:, None] * Lc  # standardized scale
    coords = x[crossed.ndim_base:].reshape(-1, 2)
    expected = m_prior + np.sum(-0.5 * (coords[:, 0] / lam[0, 0]) ** 2 - np.log(lam[0, 0]) - 0.5 * coords[:, 1] ** 2)
    assert c_prior == pytest.approx(expected, abs=1e-9)


def test_centering_rule_centers_intercepts_the_data_pin_down():
    """centering(): the number of leading terms sampled centered; an intercept whose levels
    hold much information given the fixed effects (one-way ANOVA on the least-squares
    residuals), never a slope; a large fixed effect must not hide the grouping."""
    from bayeslmm.sampling.crossed import centering

    rng = np.random.default_rng(2)
    n_levels, per = 20, 16
    g = np.repeat(np.arange(n_levels), per)
    x = rng.normal(size=len(g))
    X = np.column_stack([np.ones(len(g)), x])
    strong = 2.0 * rng.normal(size=n_levels)[g] + 0.1 * rng.normal(size=len(g))
    weak = 0.05 * rng.normal(size=n_levels)[g] + rng.normal(size=len(g))

    def factor(Z):
        return blm.sampling.crossed.Factor("g", g, Z, ("(Intercept)",) * Z.shape[1], True, tuple(range(n_levels)))

    ones = np.ones((len(g), 1))
    assert centering(factor(ones), strong, X) == 1
    assert centering(factor(ones), weak, X) == 0
    assert centering(factor(np.column_stack([ones, x])), strong, X) == 1  # the intercept only
    assert centering(factor(x[:, None]), strong, X) == 0                  # a slope first: none
    masked = strong + 200.0 * x  # the fixed slope dwarfs the grouping in y itself
    assert centering(factor(ones), masked) == 0 and centering(factor(ones), masked, X) == 1


def test_partially_centered_sampler_agrees_with_the_joint_collapse():
    """The partially collapsed sampler with a vector bar sampled (intercept centered, slope
    non-centered) and the collapsed sampler, which integrates every effect out jointly, on a
    design small enough for both: the same posterior (means within 5 MCSE, sds within 12 %)."""
    import arviz_stats as azs

    from bayeslmm.sampling.crossed import sample_crossed
    from bayeslmm.sampling.marginal import sample_marginal

    design, prior_set = case("y ~ x + (x | a) + (x | b)", "sim", {"cor": blm.LKJ(eta=2.0)})
    crossed = sample_crossed(design, prior_set, random_seed=4, progressbar=False, top=1)
    assert crossed.idata.posterior.attrs["sampled"] == "a" and crossed.divergences == 0
    assert CrossedProblem.from_design(design, 1).centered == (1,)  # the default rule centers a's intercept
    joint = sample_marginal(design, prior_set, random_seed=4, progressbar=False, draws=3000)
    for name in ("beta", "sd_a", "sd_b", "cor_a", "cor_b", "sigma"):
        a, b = crossed.idata.posterior[name], joint.idata.posterior[name]
        mcse = np.hypot(azs.mcse(a.to_dataset(), method="mean")[name].values,
                        azs.mcse(b.to_dataset(), method="mean")[name].values)
        diff = np.abs(a.mean(("chain", "draw")).values - b.mean(("chain", "draw")).values)
        assert np.all(diff <= 5 * mcse), (name, diff / mcse)
        np.testing.assert_allclose(a.std(("chain", "draw")).values, b.std(("chain", "draw")).values, rtol=0.12,
                                   err_msg=name)
    r_a = crossed.idata.posterior["r_a"].mean(("chain", "draw")).values
    np.testing.assert_allclose(r_a, joint.idata.posterior["r_a"].mean(("chain", "draw")).values,
                               atol=0.1 * float(joint.idata.posterior["r_a"].std()))


def test_integrated_factor_is_the_cheapest_and_no_group_is_padded():
    from bayeslmm.sampling.crossed import best_top, crossed_cost

    design, _ = case("y ~ x + (x | a) + (1 | b)", "sim")
    factors = factors_of(design)
    costs = [crossed_cost(factors, t, design.y, 2, 4000.0) for t in range(2)]
    problem = CrossedProblem.from_design(design)
    assert problem.top == best_top(factors, design.y, 2) == int(np.argmin(costs))
    problem = CrossedProblem.from_design(design, top=0)
    assert [problem.bars[k].label for k in problem.integrated] == ["a"] and problem.sampled == (1,)
    assert problem.group_m.tolist() == [2] * 12
    design, _ = case("y ~ x + (x || a) + (x | b) + (1 | c)", "sim")
    factors = factors_of(design)
    labels = [f.label for f in factors]
    assert sorted(labels[k] for k in nested_in(factors, labels.index("c"))) == ["a", "c"]
    problem = CrossedProblem.from_design(design, top=labels.index("c"))
    # c's four groups hold c's effect and the intercepts and slopes of their three a's
    assert problem.group_m.tolist() == [7, 7, 7, 7]


@pytest.mark.parametrize("formula,name,top,centered", [CASES[0] + (True,), CASES[3] + (False,)])
def test_integrated_effect_draws_follow_the_exact_conditional(formula, name, top, centered):
    """b_I | y, b_S, theta ~ N(G Z' V^-1 r, G - G Z' V^-1 Z G), r = y - X beta - Z_S b_S."""
    design, prior_set = case(formula, name)
    problem = CrossedProblem.from_design(design, top, centered=centered)
    blob = problem.pack(prior_set)
    x = point(problem, 5)
    values = problem.expand(x[None, :])
    S = 20000
    draws = problem.draw_effects(np.tile(x, (S, 1)), blob, np.random.default_rng(0))
    # dense pieces, bar by bar
    beta, sigma = values["beta"][0], values["sigma"][0]
    mean = design.X @ beta
    Zs, Gs = [], []
    for k, (bar, block) in enumerate(zip(problem.bars, design.blocks)):
        sd = values[f"sd_{bar.label}"][0]
        R = np.eye(bar.q)
        if bar.n_cpc:
            Lc = np.zeros((bar.q, bar.q))
            K.cpc_cholesky(np.ascontiguousarray(x[problem.slices()[1][k]]), bar.q, Lc)
            R = Lc @ Lc.T
        cov = sd[:, None] * R * sd[None, :]
        Z = np.zeros((design.nobs, block.n_levels * bar.q))
        for t in range(bar.q):
            Z[np.arange(design.nobs), block.codes * bar.q + t] = block.X[:, t]
        if k in problem.integrated:
            Zs.append(Z)
            Gs.append(np.kron(np.eye(block.n_levels), cov))
        else:
            b = sampled_b(problem, x, k, cov)
            np.testing.assert_allclose(draws[k][0], b, rtol=1e-10)
            assert np.ptp(draws[k], axis=0).max() <= 1e-12 * np.abs(b).max()  # given, not drawn
            mean = mean + Z @ b.ravel()
    Z = np.hstack(Zs)
    G = np.zeros((Z.shape[1], Z.shape[1]))
    start = 0
    for g in Gs:
        G[start:start + len(g), start:start + len(g)] = g
        start += len(g)
    V = sigma ** 2 * np.eye(design.nobs) + Z @ G @ Z.T
    VZG = np.linalg.solve(V, Z @ G)
    cond_mean = VZG.T @ (design.y - mean)
    cond_cov = G - G @ Z.T @ VZG
    flat = np.hstack([draws[k].reshape(S, -1) for k in problem.integrated])
    sd = np.sqrt(np.diag(cond_cov))
    z = (flat.mean(axis=0) - cond_mean) / (sd / np.sqrt(S))
    assert np.max(np.abs(z)) < 4.5
    np.testing.assert_allclose(flat.std(axis=0), sd, rtol=0.04)
    assert np.max(np.abs(np.cov(flat.T) - cond_cov)) < 0.05 * np.max(np.diag(cond_cov))


def test_auto_plan_picks_by_cost_and_says_why():
    sleep = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy")).design
    plan = plan_sampler(sleep)
    assert plan.parametrization == "marginal" and plan.reason.startswith("collapsed")
    design, _ = case("y ~ x + (x | a) + (x | b)", "sim")
    costs = estimate_costs(design)
    assert set(costs) == {"marginal", "crossed:0", "crossed:1", "full"}
    # large crossed designs: partially collapsed, the factor with the most data per level
    # integrated out (measured on kb07: ESS 1152 against 549 the other way round)
    import json
    from pathlib import Path

    shared = Path(__file__).resolve().parents[1].parent / "shared"
    formula = json.loads((shared / "reference" / "psycholing.json").read_text())["cases"]["kb07_4x4"]["formula"]
    kb07 = blm.LMM(formula, pd.read_csv(shared / "data" / "kb07.csv", dtype={"subj": str, "item": str})).design
    plan = plan_sampler(kb07)
    assert plan.parametrization == "crossed" and plan.reason.startswith(
        "partially collapsed sampler: the effects of 'item' integrated out given those of 'subj'")
    assert plan.costs["crossed:1"] < plan.costs["crossed:0"] < plan.costs["full"] and "marginal" not in plan.costs
    insteval = blm.LMM("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", blm.datasets.load("insteval")).design
    plan = plan_sampler(insteval)
    assert plan.parametrization == "marginal_mh" and plan.reason.startswith("independence Metropolis-Hastings")
    # of the partially collapsed choices, integrating s (2,972 students) out is the cheapest
    assert min((k for k in plan.costs if k.startswith("crossed")), key=plan.costs.get) == "crossed:0"


def test_small_sbc_of_the_partially_collapsed_sampler_is_uniform():
    """A small SBC run on a 12 x 8 crossed design (the full one: validation/crossed_validation.py
    sbc). It ranks one integrated and one sampled group effect too, so exact conditional
    draws from the wrong conditional would show."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "validation"))
    import crossed_validation as cv

    import sbc

    ranks = cv.run_sbc(reps=30, seed=5, chains=2, draws=200, tune=500)
    params = ["beta[(Intercept)]", "beta[x]", "sd_a", "sd_b", "sigma", "r_a[0]", "r_b[0]"]
    table = sbc.uniformity_table(ranks[params], bins=4, alpha=0.01)
    assert table["pass"].all(), table
    outer = ((ranks[params] < 10) | (ranks[params] > 89)).mean()
    assert (outer < 0.5).all(), outer
    assert ranks["divergences"].sum() <= 3


def test_default_target_accept_depends_on_the_bars_and_the_sampler(monkeypatch):
    """kb07's maximal model (two 8 x 8 blocks) gave 132 and 272 divergent transitions at
    target_accept 0.9 with the partially collapsed sampler's first parametrization and none
    at 0.95; with its intercepts centered and a diagonal mass matrix it has none at 0.9. So
    sample() uses 0.95 when a correlated bar has more than four terms, except in that sampler,
    unless told otherwise."""
    from bayeslmm.model import default_target_accept

    kb07 = blm.datasets.load("kb07")
    terms = "1 + S + P + C + SP + SC + PC + SPC"
    maximal = blm.LMM(f"RTtrunc ~ {terms} + ({terms} | subj) + ({terms} | item)", kb07)
    assert default_target_accept(maximal.design) == 0.95
    assert default_target_accept(maximal.design, "crossed") == 0.9
    small = blm.LMM(f"RTtrunc ~ {terms} + (1 + S + P + C | subj) + (1 + S + P + C | item)", kb07)
    assert default_target_accept(small.design) == 0.9
    uncorrelated = blm.LMM(f"RTtrunc ~ {terms} + ({terms} || subj) + ({terms} || item)", kb07)
    assert default_target_accept(uncorrelated.design) == 0.9

    class Captured(Exception):
        pass

    def capture(*args, **options):
        raise Captured(options["target_accept"])

    monkeypatch.setattr("bayeslmm.sampling.crossed.sample_crossed", capture)
    monkeypatch.setattr("bayeslmm.sampling.bayes.run_sampler", capture)
    for kwargs, expected in [({}, 0.9), ({"target_accept": 0.8}, 0.8), ({"parametrization": "full"}, 0.95),
                             ({"parametrization": "full", "target_accept": 0.85}, 0.85)]:
        with pytest.raises(Captured) as caught:
            maximal.sample(progressbar=False, **kwargs)
        assert caught.value.args[0] == expected, kwargs


def test_partially_collapsed_defaults_are_in_force(monkeypatch):
    """run_crossed's nutpie settings: the diagonal mass matrix and one extra doubling (kb07
    maximal: 32.6 s and min ESS 1835 against 208 s and 1017 with the low-rank update; see its
    comment), which a caller may still override."""
    from bayeslmm.sampling import crossed

    captured = {}

    def capture(blob, ndim, logp, expand, initial_point, **options):
        captured.update(options)
        raise RuntimeError("captured")

    monkeypatch.setattr(crossed, "run_nutpie", capture)
    design, prior_set = case("y ~ x + (x | a) + (1 | b)", "sim")
    problem = CrossedProblem.from_design(design, 1)
    with pytest.raises(RuntimeError, match="captured"):
        crossed.run_crossed(problem, prior_set, progressbar=False)
    assert captured["adaptation"] == "diag" and captured["extra_doublings"] == 1
    with pytest.raises(RuntimeError, match="captured"):
        crossed.run_crossed(problem, prior_set, progressbar=False, adaptation="low_rank", extra_doublings=0)
    assert captured["adaptation"] == "low_rank" and captured["extra_doublings"] == 0
