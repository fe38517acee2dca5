"""Simulate responses from a design at known parameter values (for calibration studies)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..frontend.design import Design


def simulate_response(design: Design, beta: np.ndarray, covariances: list[np.ndarray], sigma: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw ``y = X beta + sum_k Z_k b_k + e`` with ``b_kj ~ N(0, Sigma_k)``, ``e ~ N(0, sigma^2)``.

    Returns the response and the group effects drawn (one (levels, terms) array per bar).
    """
    eta = design.X @ np.asarray(beta, dtype=float)
    effects = []
    for block, cov in zip(design.blocks, covariances):
        chol = np.linalg.cholesky(np.asarray(cov, dtype=float) + 1e-12 * np.eye(block.n_terms))
        b = rng.standard_normal((block.n_levels, block.n_terms)) @ chol.T
        effects.append(b)
        eta = eta + np.einsum("nq,nq->n", block.X, b[block.codes])
    return eta + sigma * rng.standard_normal(len(eta)), effects


def with_response(design: Design, y: np.ndarray) -> pd.DataFrame:
    """The design's data with the response column replaced by ``y`` (the response must be
    a plain column name)."""
    name = design.response
    if name not in design.data.columns:
        raise ValueError(f"the response '{name}' is an expression; simulate on a plain column")
    data = design.data.copy()
    data[name] = y
    return data
