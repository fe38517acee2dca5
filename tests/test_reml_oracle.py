"""The fast profiled deviance against an independent, plain dense REML/ML likelihood.

The oracle builds ``V = Z Lambda Lambda' Z' + I`` densely (relative to sigma^2), takes
``beta`` by generalized least squares and writes the -2 log-likelihood down directly: no
blocking, no profiling tricks beyond sigma, no centering. Designs are drawn at random by
hypothesis (a fresh seed every run; the failing example, with its numpy seed, is printed):
large-mean responses, no intercept, nested, crossed, slopes in tiny and huge units,
factor slopes, ``||`` bars. Both are evaluated at the same theta.

Where the response has a large mean and the constant lies in the span of X, the oracle is
evaluated on ``y - M`` (computed exactly, as ``y`` was made as ``M + e``): the likelihood is
invariant under that shift, and the plain dense formula would otherwise lose the digits the
test is about.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import bayeslmm as blm
from bayeslmm.fitting.reml import ThetaLayout, make_deviance

_LOG_2PI = np.log(2.0 * np.pi)

# (formula, whether the constant lies in the span of X)
TEMPLATES = [
    ("y ~ 1 + x + (1 + x | g1)", True),
    ("y ~ 0 + x + (1 | g1)", False),
    ("y ~ 1 + x + (1 | g1) + (1 | g2)", True),
    ("y ~ 1 + x + (1 + x | g1) + (1 | g2)", True),
    ("y ~ 1 + x + (1 | g1/g2)", True),
    ("y ~ 1 + f + (1 + f | g1)", True),
    ("y ~ 0 + f + (1 | g1) + (0 + x | g2)", True),
    ("y ~ 1 + x + z + (1 + x + z || g1) + (1 | g2)", True),
    ("y ~ 1 + x + (1 + x || g1) + (1 + x | g2)", True),
]


def dense_criterion(design, theta, reml, y=None):
    """-2 log L (ML) or the REML criterion at ``theta``, from dense n x n matrices."""
    X = design.X
    y = design.y if y is None else y
    n, p = X.shape
    layout = ThetaLayout.from_design(design)
    Zs, lams = [], []
    for k, block in enumerate(design.blocks):
        q, J = block.n_terms, block.n_levels
        Z = np.zeros((n, J * q))
        for t in range(q):
            Z[np.arange(n), block.codes * q + t] = block.X[:, t]
        lam = np.zeros((q, q))
        lam[layout.rows[k], layout.cols[k]] = theta[layout.slices[k]]
        Zs.append(Z)
        lams.append(np.kron(np.eye(J), lam))
    Z = np.hstack(Zs)
    Lam = np.zeros((Z.shape[1], Z.shape[1]))
    offset = 0
    for L in lams:
        Lam[offset:offset + L.shape[0], offset:offset + L.shape[0]] = L
        offset += L.shape[0]
    ZL = Z @ Lam
    V = ZL @ ZL.T + np.eye(n)
    C = np.linalg.cholesky(V)
    Xt = np.linalg.solve(C, X)
    yt = np.linalg.solve(C, y)
    XtX = Xt.T @ Xt
    beta = np.linalg.solve(XtX, Xt.T @ yt)
    r = yt - Xt @ beta
    r2 = r @ r
    logdet_V = 2.0 * np.sum(np.log(np.diag(C)))
    if reml:
        n_eff = n - p
        return logdet_V + np.linalg.slogdet(XtX)[1] + n_eff * (1.0 + _LOG_2PI + np.log(r2 / n_eff))
    return logdet_V + n * (1.0 + _LOG_2PI + np.log(r2 / n))


def random_data(seed, mean, x_unit, noise):
    """A random two-factor data set; returns it and the exact ``y - mean``."""
    rng = np.random.default_rng(seed)
    J1 = int(rng.integers(4, 9))
    J2 = int(rng.integers(3, 6))
    per = int(rng.integers(4, 8))
    n = J1 * per
    g1 = np.repeat(np.arange(J1), per)
    g2 = rng.integers(0, J2, n)
    x = rng.normal(1.0, 1.0, n) * x_unit
    z = rng.normal(0.0, 1.0, n)
    f = rng.choice(["a", "b", "c"], n)
    b1 = rng.normal(0, 2.0, J1)
    b2 = rng.normal(0, 1.0, J2)
    e = b1[g1] + b2[g2] + 0.5 * x / x_unit * rng.normal(1, 0.3, J1)[g1] + noise * rng.normal(size=n)
    y = mean + e
    data = pd.DataFrame({"y": y, "x": x, "z": z, "f": f, "g1": [f"s{i}" for i in g1],
                         "g2": [f"i{i}" for i in g2]})
    # y = fl(mean + e) lies within a factor 2 of mean, so y - mean is exact (Sterbenz)
    return data, y - mean


def _design(formula, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # '||' on a factor
        return blm.LMM(formula, data).design


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), template=st.sampled_from(TEMPLATES),
       mean=st.sampled_from([0.0, 3.0, -250.0, 5e6]), x_unit=st.sampled_from([1e-4, 1.0, 1e4]),
       noise=st.sampled_from([0.05, 1.0]), reml=st.booleans(), dense_ar1=st.sampled_from([None, False]))
def test_fast_deviance_equals_the_dense_likelihood(seed, template, mean, x_unit, noise, reml, dense_ar1):
    """``dense_ar1=False`` forces the sparse rank update that large designs (InstEval) take."""
    import bayeslmm.fitting.reml as reml_module

    formula, has_constant = template
    if not has_constant and mean == 5e6:
        mean = 30.0  # without the constant in X a huge mean is the model's problem, not ours
    data, deviation = random_data(seed, mean, x_unit, noise)
    design = _design(formula, data)
    saved, reml_module._DENSE_AR1 = reml_module._DENSE_AR1, dense_ar1
    try:
        deviance = make_deviance(design, reml=reml)
    finally:
        reml_module._DENSE_AR1 = saved
    rng = np.random.default_rng(seed + 1)
    internal = np.where(np.isfinite(deviance.layout.lower), rng.uniform(0.05, 2.0, deviance.layout.size),
                        rng.normal(0.0, 0.5, deviance.layout.size))
    theta = deviance.from_internal(internal)
    fast = deviance(theta)
    oracle = dense_criterion(design, theta, reml, y=deviation if has_constant and mean != 0 else None)
    scale = max(abs(oracle), design.nobs)
    assert abs(fast - oracle) <= 1e-8 * scale, (seed, formula, mean, x_unit, noise, reml, dense_ar1, fast, oracle)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), reml=st.booleans())
def test_analytic_gradient_equals_finite_differences(seed, reml):
    """The gradient the optimizer follows is the derivative of the criterion."""
    rng = np.random.default_rng(seed)
    formula, _ = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    data, _ = random_data(seed, 3.0, 1.0, 1.0)
    deviance = make_deviance(_design(formula, data), reml=reml)
    x = np.where(np.isfinite(deviance.layout.lower), rng.uniform(0.2, 1.5, deviance.layout.size),
                 rng.normal(0.0, 0.4, deviance.layout.size))
    value, grad = deviance.internal_gradient(x)
    h = 1e-6
    fd = np.array([(deviance.internal_objective(x + h * e) - deviance.internal_objective(x - h * e)) / (2 * h)
                   for e in np.eye(len(x))])
    assert value == pytest.approx(deviance.internal_objective(x), rel=1e-14)
    assert np.max(np.abs(grad - fd)) <= 1e-5 * max(1.0, np.max(np.abs(fd))), (seed, formula, reml, grad, fd)


SCALAR_TEMPLATES = ["y ~ 1 + x + (1 | g1) + (1 | g2)", "y ~ 0 + x + (1 | g1) + (1 | g2)",
                    "y ~ 1 + x + (1 | g1/g2)", "y ~ 1 + f + (1 | g2) + (1 | g1) + (1 | f)"]


def _deviance_on_path(design, reml, dense_ar1):
    import bayeslmm.fitting.reml as reml_module

    saved, reml_module._DENSE_AR1 = reml_module._DENSE_AR1, dense_ar1
    try:
        return make_deviance(design, reml=reml)
    finally:
        reml_module._DENSE_AR1 = saved


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), reml=st.booleans())
def test_scoring_gradient_equals_the_dense_paths_gradient(seed, reml):
    """Scalar bars on the sparse path (InstEval's) get their gradient from the traces of the
    factor's inverse: it equals the dense path's analytic gradient and central differences."""
    rng = np.random.default_rng(seed)
    formula = SCALAR_TEMPLATES[int(rng.integers(len(SCALAR_TEMPLATES)))]
    data, _ = random_data(seed, 3.0, 1.0, 1.0)
    design = _design(formula, data)
    sparse = _deviance_on_path(design, reml, dense_ar1=False)
    dense = _deviance_on_path(design, reml, dense_ar1=True)
    assert sparse.has_scoring and not sparse.has_gradient and dense.has_gradient
    x = rng.uniform(0.1, 2.0, sparse.layout.size)
    value, grad, hess = sparse.internal_scoring(x)
    dense_value, dense_grad = dense.internal_gradient(x)
    assert value == pytest.approx(dense_value, rel=1e-12)
    assert np.max(np.abs(grad - dense_grad)) <= 1e-8 * max(1.0, np.max(np.abs(dense_grad))), (seed, formula)
    h = 1e-6
    fd = np.array([(sparse.internal_objective(x + h * e) - sparse.internal_objective(x - h * e)) / (2 * h)
                   for e in np.eye(len(x))])
    assert np.max(np.abs(grad - fd)) <= 1e-5 * max(1.0, np.max(np.abs(fd))), (seed, formula, grad, fd)
    # the average information is symmetric; what is added to it, d_k / theta_k, is the
    # exact part of the Hessian's diagonal
    assert np.allclose(hess, hess.T, rtol=1e-12, atol=0)
    assert np.all(np.linalg.eigvalsh(hess - np.diag(grad / x)) >= -1e-9 * np.max(np.abs(hess)))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), reml=st.booleans())
@example(seed=19385081, reml=False)  # two local minima: 58.87 (Newton's) and 58.32
@example(seed=256, reml=False)  # two minima on the bounds: 189.63 (Newton's, then COBYQA) and 190.31
def test_scoring_fit_reaches_the_gradient_fits_optimum(seed, reml):
    """Newton steps with the average information (the sparse path) stop where L-BFGS-B with
    lme4's convergence check stops (the dense path), singular fits (a variance at 0, handed
    over to COBYQA) included; or, where the criterion has several local minima (a
    no-intercept model whose two small factors can each carry the mean), at another one:
    then its gradient vanishes and its Hessian is positive definite there."""
    from bayeslmm.fitting.reml import optimize_profiled

    rng = np.random.default_rng(seed)
    formula = SCALAR_TEMPLATES[int(rng.integers(len(SCALAR_TEMPLATES)))]
    data, _ = random_data(seed, 3.0, 1.0, float(rng.choice([0.3, 1.0, 3.0])))
    design = _design(formula, data)
    sparse = _deviance_on_path(design, reml, dense_ar1=False)
    dense = _deviance_on_path(design, reml, dense_ar1=True)
    theta_s, opt_s = optimize_profiled(sparse)
    theta_d, opt_d = optimize_profiled(dense)
    assert opt_s.optimizer.startswith("Newton (average information")
    if abs(opt_s.objective - opt_d.objective) <= 1e-7 * abs(opt_d.objective):
        assert sparse(theta_s) == pytest.approx(dense(theta_d), abs=1e-6 * abs(opt_d.objective))
        return
    # another local minimum, in another basin (either fit may have the better one: seed 256
    # without REML ends at theta (0.89, 0) against L-BFGS-B's (0, 0.70), 189.63 against
    # 190.31): each end is a local minimum, a free component with a vanishing gradient and a
    # positive definite Hessian, a component at its bound 0 one whose gradient points inward
    assert np.max(np.abs(theta_s - theta_d) / np.maximum(theta_d, 1e-3)) > 0.1
    tol = 1e-4 * max(1.0, abs(opt_s.objective))
    for theta in (theta_s, theta_d):
        x = dense.to_internal(theta)
        grad = dense.internal_gradient(x)[1]
        free = x > 1e-6
        assert np.all(np.abs(grad[free]) < tol) and np.all(grad[~free] > -tol), (seed, formula, theta, grad)
        if free.any():
            h = 1e-5
            steps = np.eye(len(x))[free]
            hess = np.array([(dense.internal_gradient(x + h * e)[1] - dense.internal_gradient(x - h * e)[1])[free]
                             / (2 * h) for e in steps])
            assert np.all(np.linalg.eigvalsh(0.5 * (hess + hess.T)) > 0), (seed, formula, theta, hess)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_scalar_conditional_variances_equal_the_general_ones(seed):
    """The conditional variances of scalar bars on the sparse path (from the block's
    inverse) equal the general computation (dense solves) at a random theta."""
    from bayeslmm.fitting.reml import conditional_variances

    rng = np.random.default_rng(seed)
    formula = SCALAR_TEMPLATES[int(rng.integers(len(SCALAR_TEMPLATES)))]
    data, _ = random_data(seed, 3.0, 1.0, 1.0)
    deviance = _deviance_on_path(_design(formula, data), True, dense_ar1=False)
    solution = deviance.solve(rng.uniform(0.1, 2.0, deviance.layout.size))
    fast = conditional_variances(deviance, solution)
    deviance.has_scoring = False
    general = conditional_variances(deviance, solution)
    assert len(fast) == len(general)
    for a, b in zip(fast, general):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=0)


@pytest.mark.parametrize("reml", [True, False])
def test_scoring_hands_a_singular_fit_to_cobyqa(reml):
    """A factor without variance (g2 here): Newton heads for theta = 0, COBYQA takes over
    and ends where the dense path's L-BFGS-B ends, with the variance on its bound."""
    from bayeslmm.fitting.reml import optimize_profiled

    rng = np.random.default_rng(0)
    n = 120
    g1, g2 = np.repeat(np.arange(12), 10), rng.integers(0, 6, n)
    y = rng.normal(0, 1, 12)[g1] + 2.0 * rng.normal(size=n)
    data = pd.DataFrame({"y": y, "x": rng.normal(size=n), "g1": [f"s{i}" for i in g1],
                         "g2": [f"i{i}" for i in g2]})
    design = _design("y ~ 1 + x + (1 | g1) + (1 | g2)", data)
    theta_s, opt_s = optimize_profiled(_deviance_on_path(design, reml, dense_ar1=False))
    theta_d, opt_d = optimize_profiled(_deviance_on_path(design, reml, dense_ar1=True))
    assert "then COBYQA" in opt_s.optimizer and "bound at 0" in opt_s.optimizer
    assert theta_d[1] == 0.0 and abs(theta_s[1]) <= 1e-6
    assert opt_s.objective == pytest.approx(opt_d.objective, abs=1e-9)
    assert theta_s[0] == pytest.approx(theta_d[0], rel=1e-5)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), reml=st.booleans())
def test_scalar_satterthwaite_derivatives_equal_the_analytic_ones(seed, reml):
    """Satterthwaite's Hessian in (theta, sigma) and Jacobian of Var(beta-hat) for scalar
    bars on the sparse path (central differences of the analytic deviance gradient) equal
    the VarianceModel's analytic ones."""
    from bayeslmm.fitting.inference import VarianceModel, _scalar_derivatives

    rng = np.random.default_rng(seed)
    formula = SCALAR_TEMPLATES[int(rng.integers(len(SCALAR_TEMPLATES)))]
    data, _ = random_data(seed, 3.0, 1.0, 1.0)
    design = _design(formula, data)
    sparse = _deviance_on_path(design, reml, dense_ar1=False)
    theta = sparse.from_internal(rng.uniform(0.2, 1.5, sparse.layout.size))
    sigma = float(rng.uniform(0.5, 2.0))
    hessian, jacobian = _scalar_derivatives(sparse, theta, sigma)
    model = VarianceModel(design, reml=reml)
    sol = model.solve(theta)
    exact_h = model.hessian(theta, sigma, sol)
    np.testing.assert_allclose(hessian, exact_h, rtol=1e-6, atol=1e-7 * np.abs(exact_h).max())
    for got, want in zip(jacobian, model.vcov_beta_jacobian(theta, sigma, sol)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max())
    # the analytic gradient itself
    exact_g = model.gradient(theta, sigma, sol)
    np.testing.assert_allclose(sparse.deviance_gradient(theta, sigma), exact_g, rtol=1e-8,
                               atol=1e-9 * np.abs(exact_g).max())


def test_insteval_fit_takes_newton_steps():
    """InstEval REML: about ten evaluations (COBYQA took 72) to lme4's criterion or below."""
    import json

    from conftest import REFERENCE_DIR

    ref = json.loads((REFERENCE_DIR / "lme4" / "insteval.json").read_text())
    fit = blm.LMM(ref["formula"], blm.datasets.load("insteval")).fit()
    assert fit.opt.optimizer == "Newton (average information, analytic gradient)"
    assert fit.opt.evaluations <= 15
    assert ref["criterion"] - 5e-6 <= fit.criterion <= ref["criterion"] + 1e-7


def northings(seed=3):
    """Sites with northings near 5e6 m: site sd 10 m, centimetre noise (sd 0.05 m)."""
    rng = np.random.default_rng(seed)
    sites, per = 30, 8
    site = np.repeat(np.arange(sites), per)
    y = 5e6 + rng.normal(0, 10.0, sites)[site] + rng.normal(0, 0.05, sites * per)
    return pd.DataFrame({"northing": y, "site": [f"s{i}" for i in site]})


def test_large_mean_response_keeps_its_digits():
    """Northings near 5e6 m with 5 cm noise gave sigma 0.19 m and site sd 2.25 m before."""
    data = northings()
    fit = blm.LMM("northing ~ 1 + (1 | site)", data).fit()
    shifted = blm.LMM("northing ~ 1 + (1 | site)", data.assign(northing=data["northing"] - 5e6)).fit()
    assert fit.sigma == pytest.approx(shifted.sigma, rel=1e-6)
    assert fit.varcorr()["sdcor"].iloc[0] == pytest.approx(shifted.varcorr()["sdcor"].iloc[0], rel=1e-6)
    assert fit.fixef()["estimate"].iloc[0] - 5e6 == pytest.approx(shifted.fixef()["estimate"].iloc[0], abs=1e-6)
    assert fit.fixef()["std_error"].iloc[0] == pytest.approx(shifted.fixef()["std_error"].iloc[0], rel=1e-6)
    # and near the truth (sigma 0.05, site sd 10)
    assert 0.04 < fit.sigma < 0.06
    assert 6.0 < fit.varcorr()["sdcor"].iloc[0] < 14.0


def test_deviance_is_smooth_in_theta():
    """Along a line through the optimum the criterion is a smooth curve to ~1e-10 relative:
    a quartic fitted to 41 points leaves residuals of that size (the criterion computed as a
    difference of large uncentered cross-products was noisy at 5e-4)."""
    data = northings()
    deviance = make_deviance(blm.LMM("northing ~ 1 + (1 | site)", data).design, reml=True)
    fit = blm.LMM("northing ~ 1 + (1 | site)", data).fit()
    t = np.linspace(-0.01, 0.01, 41)
    values = np.array([deviance(fit.theta * (1 + s)) for s in t])
    coef = np.polyfit(t, values, 4)
    resid = values - np.polyval(coef, t)
    assert np.max(np.abs(resid)) <= 1e-10 * np.max(np.abs(values))


@pytest.mark.parametrize("factor", [1e-4, 1e4])
def test_singularity_does_not_depend_on_units(factor):
    """Days x 1e4 made a healthy sleepstudy slope "singular" (theta < 1e-4 in the user's
    units) and lmm() threw the valid REML fit away; judged on standardized columns it is not."""
    data = blm.datasets.load("sleepstudy").copy()
    data["Days"] = data["Days"] * factor
    fit = blm.LMM("Reaction ~ Days + (Days | Subject)", data).fit()
    assert not fit.is_singular
    assert fit.singular_terms() == []
    if factor > 1:
        assert fit.theta[2] < 1e-4  # lme4's rule on the user's theta would have said singular
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = blm.lmm("Reaction ~ Days + (Days | Subject)", data)
    assert out.path == "reml"
