"""The GLMM sampler's mixing devices (bayeslmm.sampling.glmm_bayes): chains started at the
Laplace fit, hierarchical centering of nested intercept bars (same posterior), the rule
that picks the bars to center, and the default mass-matrix adaptation. Why they are the
defaults: validation/out/glmm_mixing_experiments.txt."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bayeslmm as blm
from bayeslmm.sampling.glmm_bayes import (
    build_glmm_model,
    compile_glmm,
    level_information,
    nest_by_information,
    nested_parents,
    resolve_glmm_priors,
    sample_glmm,
)

from conftest import REFERENCE_DIR

REF = json.loads((REFERENCE_DIR / "glmm" / "glmm_reference.json").read_text())


@pytest.fixture(scope="module")
def ticks():
    model = blm.GLMM(REF["grouseticks"]["formula"], blm.datasets.load("grouseticks"), family="poisson")
    return model, model.fit()


def _unflatten(compiled, flat):
    names, slices, shapes = compiled.shape_info[:3]
    return {n: flat[sl].reshape(tuple(sh)) for n, sl, sh in zip(names, slices, shapes) if sl.stop <= compiled.n_dim}


def test_nested_bars_and_the_centering_rule(ticks):
    model, fit = ticks
    gd = model.gd
    assert [b.group for b in gd.design.blocks] == ["INDEX", "BROOD", "LOCATION"]
    assert nested_parents(gd.design) == {0: 1, 1: 2}  # INDEX in BROOD in LOCATION
    info = level_information(gd, fit)
    # Poisson/log: PIRLS weight = mu; by hand: median over levels of sum(mu) * sd^2
    for k, block in enumerate(gd.design.blocks):
        by_hand = np.median(np.bincount(block.codes, weights=fit.mu)) * fit.covariances[k][0, 0]
        assert info[k] == pytest.approx(by_hand, rel=1e-12)
    assert info[0] < 1 < info[1]  # one count per INDEX level: prior-dominated; broods: data-dominated
    assert nest_by_information(gd, fit, resolve_glmm_priors(gd, None)) == {1: 2}


def test_chains_start_at_the_laplace_fit(ticks):
    model, fit = ticks
    compiled, pm_model, _, nest = compile_glmm(model.gd, None, jitter=0.0)
    assert nest == {1: 2}
    point = _unflatten(compiled, np.asarray(compiled.initial_point_func(7)))
    assert set(point) == {v.name for v in pm_model.value_vars}
    means = model.design.X.mean(axis=0)
    assert point["Intercept"] == pytest.approx(fit.beta @ np.r_[1.0, means[1:]], abs=1e-8)
    assert np.allclose([point[f"b_{t}"] for t in model.design.fixed_names[1:]], fit.beta[1:], atol=1e-8)
    sd = {g: np.exp(point[f"sd_{g}__(Intercept)_log__"]) for g in ("INDEX", "BROOD", "LOCATION")}
    assert np.allclose([sd["INDEX"], sd["BROOD"], sd["LOCATION"]], fit.theta, atol=1e-8)
    b_index, b_brood, b_loc = (np.asarray(b)[:, 0] for b in fit.ranef_values)
    assert np.allclose(point["_z_0"][:, 0] * sd["INDEX"], b_index, atol=1e-8)
    assert np.allclose(point["_z_2"][:, 0] * sd["LOCATION"], b_loc, atol=1e-8)
    loc_of_brood = np.empty(len(b_brood), dtype=int)
    loc_of_brood[model.design.blocks[1].codes] = model.design.blocks[2].codes
    assert np.allclose(point["_c_1"][:, 0] - b_loc[loc_of_brood], b_brood, atol=1e-8)
    # jitter: U(-0.3, 0.3) per coordinate, one draw per chain seed, reproducible
    jittered, *_ = compile_glmm(model.gd, None, jitter=0.3)
    base = np.asarray(compiled.initial_point_func(7))
    a, b = (np.asarray(jittered.initial_point_func(s)) for s in (7, 8))
    assert np.all(np.abs(a - base) <= 0.3) and np.abs(a - base).max() > 0.25
    assert not np.allclose(a, b) and np.array_equal(a, np.asarray(jittered.initial_point_func(7)))


def test_hierarchical_centering_is_the_same_posterior(ticks):
    """log p(c, z_L, ...) = log p(z_B, z_L, ...) - n_B log sd_B at c = sd_L z_L[loc] + sd_B z_B."""
    model, _ = ticks
    gd = model.gd
    ps = resolve_glmm_priors(gd, None)
    non, hier = build_glmm_model(gd, ps, [False] * 3), build_glmm_model(gd, ps, [False] * 3, {1: 2})
    assert "_c_1" in {v.name for v in hier.value_vars} and "_z_1" not in {v.name for v in hier.value_vars}
    lp_non, lp_hier = non.compile_logp(), hier.compile_logp()
    loc_of_brood = np.empty(118, dtype=int)
    loc_of_brood[gd.design.blocks[1].codes] = gd.design.blocks[2].codes
    rng = np.random.default_rng(4)
    for _ in range(3):
        ip = {k: rng.normal(size=np.shape(v)) * (0.5 if k.endswith("_log__") else 1.0)
              for k, v in non.initial_point().items()}
        sd_b, sd_l = (np.exp(ip[f"sd_{g}__(Intercept)_log__"]) for g in ("BROOD", "LOCATION"))
        c = sd_l * ip["_z_2"][loc_of_brood] + sd_b * ip["_z_1"]
        iph = {k: v for k, v in ip.items() if k != "_z_1"} | {"_c_1": c}
        assert lp_hier(iph) == pytest.approx(lp_non(ip) - 118 * np.log(sd_b), rel=1e-10)


def test_nest_refuses_bars_that_are_not_nested(ticks):
    model, _ = ticks
    ps = resolve_glmm_priors(model.gd, None)
    with pytest.raises(blm.BayesLMMError, match="not an intercept bar nested in bar 1"):
        build_glmm_model(model.gd, ps, None, {2: 1})  # LOCATION is not inside one BROOD
    with pytest.raises(blm.BayesLMMError, match="nest must be"):
        compile_glmm(model.gd, None, nest="yes")


def test_default_adaptation_is_the_draw_variance_mass_matrix_with_two_extra_doublings(monkeypatch):
    import nutpie

    seen = {}

    def fake_sample(compiled, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(nutpie, "sample", fake_sample)
    cbpp = blm.GLMM(REF["cbpp"]["formula"], blm.datasets.load("cbpp"), family="binomial")
    with pytest.raises(RuntimeError, match="stop"):
        sample_glmm(cbpp.gd, None)
    assert seen["adaptation"] == "draw_diag" and seen["extra_doublings"] == 2 and seen["target_accept"] == 0.9
