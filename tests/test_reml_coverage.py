"""A small version of validation/reml_coverage.py that can still fail: Wald intervals of the
REML fixed effects must cover the truth at close to their nominal rate."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "validation"))

from reml_coverage import coverage  # noqa: E402


def test_wald_intervals_cover_at_close_to_nominal_rate():
    result = coverage(reps=80, seed=7)
    # 80 replications: a binomial sd of 0.024 around 0.95; too-small standard errors
    # (say by a factor 1.5) would give ~0.80 and fail.
    assert np.all(result["t"] >= 0.87), result
    assert np.all(result["normal"] >= 0.85), result
    assert np.all(result["t"] <= 1.0)
