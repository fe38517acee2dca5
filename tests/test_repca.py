"""rePCA: principal components of each random-effect covariance (lme4's rePCA)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blm

from conftest import reference_fit


def test_repca_is_the_svd_of_the_relative_factor():
    """lme4's rePCA is svd(Lambda_k): for sleepstudy, of [[t0, 0], [t1, t2]] from theta."""
    fit = reference_fit("sleep_rs")
    pca = fit.rePCA()
    assert list(pca) == ["Subject"]
    t0, t1, t2 = fit.theta
    expected = np.linalg.svd(np.array([[t0, 0.0], [t1, t2]]), compute_uv=False)
    table = pca["Subject"]
    np.testing.assert_allclose(table["sdev"], expected, rtol=1e-10)
    np.testing.assert_allclose(table["proportion"], expected**2 / np.sum(expected**2), rtol=1e-10)
    assert table["cumulative"].iloc[-1] == pytest.approx(1.0)
    rotation = pca.rotation["Subject"]
    assert list(rotation.index) == ["(Intercept)", "Days"]
    np.testing.assert_allclose(rotation.to_numpy().T @ rotation.to_numpy(), np.eye(2), atol=1e-12)
    # plain tables: they combine with pandas (a DataFrame in .attrs broke pd.concat)
    both = pd.concat({"a": table["cumulative"], "b": table["cumulative"]}, axis=1)
    assert both.shape == (2, 2)


def test_repca_shows_the_unsupported_dimension_of_a_singular_fit():
    """Exam's 3 x 3 covariance has rank 2: the third component has no variance."""
    table = reference_fit("exam_sex").rePCA()["school"]
    assert len(table) == 3
    assert table["cumulative"].iloc[1] == pytest.approx(1.0, abs=1e-8)
    assert table["sdev"].iloc[2] < 1e-4 * table["sdev"].iloc[0]
    healthy = reference_fit("sleep_rs").rePCA()["Subject"]
    assert healthy["cumulative"].iloc[0] < 0.99


def test_repca_combines_bars_on_one_factor_and_standardizes():
    """Bars on one factor are combined (lme4's bdiag); the standardized components do not
    depend on the units of a slope, lme4's do."""
    data = blm.datasets.load("sleepstudy")
    fit = reference_fit("sleep_uncorr")
    table = fit.rePCA()["Subject"]
    lam = np.diag(fit.theta)
    np.testing.assert_allclose(np.sort(table["sdev"])[::-1], np.sort(np.diag(lam))[::-1], rtol=1e-10)
    scaled = blm.LMM("Reaction ~ Days + (Days | Subject)", data.assign(Days=data["Days"] * 1e3)).fit()
    base = reference_fit("sleep_rs")
    np.testing.assert_allclose(scaled.rePCA(standardized=True)["Subject"]["sdev"],
                               base.rePCA(standardized=True)["Subject"]["sdev"], rtol=1e-4)
    assert not np.allclose(scaled.rePCA()["Subject"]["sdev"], base.rePCA()["Subject"]["sdev"], rtol=1e-2)
