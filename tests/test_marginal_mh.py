"""The independence sampler on the exact marginal posterior (bayeslmm.sampling.marginal_mh).

Its target is checked against independent computations: the marginal likelihood against a
dense multivariate normal, the whole log posterior against the collapsed sampler's kernel
(which test_marginal checks against scipy), the completed group effects against the dense
conditional Gaussian; then the sampler as a whole by a small SBC run and against the
collapsed sampler on Penicillin.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blm
from bayeslmm.sampling import marginal_kernels as K
from bayeslmm.sampling.marginal import MarginalProblem
from bayeslmm.sampling.marginal_mh import ScalarMarginal, mh_supported


def scalar_data(n_a=11, n_b=6, n=120, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(n_a, size=n), rng.integers(n_b, size=n)
    a[:n_a], b[:n_b] = np.arange(n_a), np.arange(n_b)
    x = rng.normal(size=n)
    y = 50.0 + 2.0 * x + 3.0 * rng.normal(size=n_a)[a] + 2.0 * rng.normal(size=n_b)[b] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str), "c": (a // 3).astype(str)})


CASES = [("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
         ("y ~ x + (1 | a) + (1 | b)", "sim"),
         ("y ~ 0 + x + (1 | a) + (1 | b)", "sim"),
         ("y ~ x + (1 | a) + (1 | b) + (1 | c)", "sim"),       # a nested in c, crossed with b
         ("y ~ x + (0 + x | a) + (1 | b)", "sim")]             # a scalar slope


def target(formula, name):
    data = scalar_data() if name == "sim" else blm.datasets.load(name)
    model = blm.LMM(formula, data)
    return ScalarMarginal.from_design(model.design, model.resolved_priors())


def dense_pieces(t: ScalarMarginal, x):
    """Mean, per-bar Z and G on the user's scale at ``x``, written out."""
    design = t.design
    beta, sigma, sds = t.user_parameters(x)
    Zs, Gs = [], []
    for block, sd in zip(design.blocks, sds):
        Z = np.zeros((design.nobs, block.n_levels))
        Z[np.arange(design.nobs), block.codes] = block.X[:, 0]
        Zs.append(Z)
        Gs.append(np.full(block.n_levels, sd**2))
    return design.X @ beta, sigma, np.hstack(Zs), np.concatenate(Gs)


def point(t, seed):
    rng = np.random.default_rng(seed)
    x = t.start()
    return x + rng.normal(0, 0.3, x.size)


@pytest.mark.parametrize("formula,name", CASES)
def test_marginal_likelihood_equals_dense_multivariate_normal(formula, name):
    t = target(formula, name)
    for seed in range(3):
        x = point(t, seed)
        mean, sigma, Z, g = dense_pieces(t, x)
        V = sigma**2 * np.eye(len(mean)) + (Z * g) @ Z.T
        C = np.linalg.cholesky(V)
        r = np.linalg.solve(C, t.design.y - mean)
        dense = -0.5 * (len(mean) * np.log(2 * np.pi) + r @ r) - np.sum(np.log(np.diag(C)))
        assert t.log_likelihood(x)[0] == pytest.approx(dense, rel=1e-10, abs=1e-8)


@pytest.mark.parametrize("formula,name", CASES[:3])
def test_log_posterior_is_the_collapsed_samplers_up_to_a_constant(formula, name):
    """Same unconstrained parameters, priors and Jacobians as the collapsed sampler: the two
    log densities differ by one constant (the response's standardization) at any point."""
    data = scalar_data() if name == "sim" else blm.datasets.load(name)
    model = blm.LMM(formula, data)
    t = ScalarMarginal.from_design(model.design, model.resolved_priors())
    problem = MarginalProblem.from_design(t.design)
    blob = problem.pack(model.resolved_priors())
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(6):
        x = rng.normal(0, 0.6, t.ndim)
        gaps.append(t.log_posterior(x)[0] - K.logp_grad(x, np.zeros(problem.ndim), blob))
    assert np.ptp(gaps) <= 1e-8 * max(1.0, abs(gaps[0]))
    assert gaps[0] == pytest.approx(-t.design.nobs * np.log(problem.y_scale), rel=1e-10)  # p(y) = p(y / s) / s^n


@pytest.mark.parametrize("formula,name", [CASES[1], CASES[3], CASES[4]])
def test_completed_group_effects_follow_the_exact_conditional(formula, name):
    """Every group effect of a completed draw, the sampled bars' from the blocked factor
    and the rest from the crossed sampler's exact draws, is N(G Z' V^-1 r, G - G Z' V^-1 Z G)."""
    t = target(formula, name)
    x = point(t, 4)
    _, f = t.log_likelihood(x)
    rng = np.random.default_rng(0)
    S = 8000
    full = np.array([t.completed(x, f, rng) for _ in range(S)])
    effects = t.problem.draw_effects(full, t.blob, np.random.default_rng(1))
    flat = np.hstack([e.reshape(S, -1) for e in effects])
    mean, sigma, Z, g = dense_pieces(t, x)
    V = sigma**2 * np.eye(len(mean)) + (Z * g) @ Z.T
    VZG = np.linalg.solve(V, Z * g)
    cond_mean = VZG.T @ (t.design.y - mean)
    cond_cov = np.diag(g) - (Z * g).T @ VZG
    sd = np.sqrt(np.diag(cond_cov))
    z = (flat.mean(axis=0) - cond_mean) / (sd / np.sqrt(S))
    assert np.max(np.abs(z)) < 4.5
    np.testing.assert_allclose(flat.std(axis=0), sd, rtol=0.06)
    assert np.max(np.abs(np.cov(flat.T) - cond_cov)) < 0.06 * np.max(np.diag(cond_cov))


def test_only_scalar_bars_are_supported():
    ok, reason = mh_supported(blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy")).design)
    assert not ok and "'Subject'" in reason and "more than one term" in reason
    model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    with pytest.raises(blm.BayesLMMError, match="marginal_mh parametrization does not apply"):
        model.sample(parametrization="marginal_mh", draws=10, tune=10, progressbar=False)


def test_sampler_agrees_with_the_collapsed_sampler_and_repeats_with_its_seed():
    """Penicillin (24 x 6 crossed): posterior means within 5 Monte Carlo standard errors and
    sds within 10 % of the collapsed NUTS sampler's; one seed, identical draws."""
    model = blm.LMM("diameter ~ 1 + (1 | plate) + (1 | sample)", blm.datasets.load("penicillin"))
    mh = model.sample(parametrization="marginal_mh", random_seed=3, progressbar=False)
    nuts = model.sample(parametrization="marginal", random_seed=3, progressbar=False)
    post = mh.idata.posterior
    assert post.attrs["parametrization"] == "marginal_mh" and 0.3 < post.attrs["acceptance"] < 0.95
    assert set(post.data_vars) == set(nuts.idata.posterior.data_vars)
    diag, nuts_diag = mh.diagnostics(), nuts.diagnostics()
    assert (diag["r_hat"] < 1.01).all() and (diag["ess_bulk"] > 400).all()
    for name in ["beta", "sd_plate", "sd_sample", "sigma"]:
        a, b = post[name].values.ravel(), nuts.idata.posterior[name].values.ravel()
        ess_a = diag.loc[[i for i in diag.index if i.startswith(name)], "ess_bulk"].min()
        ess_b = nuts_diag.loc[[i for i in nuts_diag.index if i.startswith(name)], "ess_bulk"].min()
        mcse = np.hypot(a.std() / np.sqrt(ess_a), b.std() / np.sqrt(ess_b))
        assert abs(a.mean() - b.mean()) < 5 * mcse, name
        assert a.std() == pytest.approx(b.std(), rel=0.1), name
    np.testing.assert_allclose(post["r_plate"].mean(("chain", "draw")),
                               nuts.idata.posterior["r_plate"].mean(("chain", "draw")), atol=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)  # 2 x 50 draws are too few for R-hat
        again = model.sample(parametrization="marginal_mh", random_seed=3, progressbar=False, draws=50, tune=20)
        twice = model.sample(parametrization="marginal_mh", random_seed=3, progressbar=False, draws=50, tune=20)
    np.testing.assert_array_equal(again.idata.posterior["sd_sample"].values, twice.idata.posterior["sd_sample"].values)
    np.testing.assert_array_equal(again.idata.posterior["r_plate"].values, twice.idata.posterior["r_plate"].values)
    assert "Metropolis-Hastings" in mh.summary()


def test_small_sbc_of_the_independence_sampler_is_uniform():
    """A small SBC run on the 12 x 8 crossed design of validation/crossed_validation.py
    (the full run: ``sbc --sampler marginal_mh``), an effect of each bar ranked too."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "validation"))
    import crossed_validation as cv

    import sbc

    ranks = cv.run_sbc(reps=30, seed=5, chains=2, draws=200, tune=100, sampler="marginal_mh")
    params = ["beta[(Intercept)]", "beta[x]", "sd_a", "sd_b", "sigma", "r_a[0]", "r_b[0]"]
    table = sbc.uniformity_table(ranks[params], bins=4, alpha=0.01)
    assert table["pass"].all(), table
    outer = ((ranks[params] < 10) | (ranks[params] > 89)).mean()
    assert (outer < 0.5).all(), outer


def test_auto_falls_back_to_the_partially_collapsed_sampler(monkeypatch):
    """When auto picked the independence sampler and its Laplace fit fails, the partially
    collapsed sampler runs instead, with a warning that says why."""
    import bayeslmm.sampling.crossed as crossed
    from bayeslmm.errors import FitError
    from bayeslmm.sampling import marginal_mh

    monkeypatch.setattr(crossed, "plan_sampler", lambda design, **kw: crossed.Plan("marginal_mh", None, "test", {}))

    def fail(self):
        raise FitError("no mode here")

    monkeypatch.setattr(marginal_mh.ScalarMarginal, "laplace", fail)
    model = blm.LMM("diameter ~ 1 + (1 | plate) + (1 | sample)", blm.datasets.load("penicillin"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = model.sample(draws=100, tune=100, chains=2, random_seed=1, progressbar=False)
    assert any("independence sampler could not start" in str(w.message) for w in caught)
    assert post.idata.posterior.attrs["parametrization"] == "crossed"
    with pytest.raises(blm.BayesLMMError, match="no mode here"):
        model.sample(parametrization="marginal_mh", draws=100, tune=100, progressbar=False)
