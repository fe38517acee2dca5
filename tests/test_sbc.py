"""A small simulation-based calibration run (the full one is validation/sbc.py, 200+
replications per model and parametrization). Small, but it fails for a sampler whose
posterior is off in location or scale: the ranks of the truth then pile up at the ends."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "validation"))

import sbc  # noqa: E402


def test_small_sbc_marginal_slope_model_is_uniform():
    ranks = sbc.run_sbc("slope", reps=40, parametrization="marginal", seed=99, chains=2, draws=300, tune=300)
    table = sbc.uniformity_table(ranks, bins=4, alpha=0.01)
    assert list(ranks.columns) == ["beta[(Intercept)]", "beta[Days]", "sd[(Intercept)]", "sd[Days]",
                                   "cor[(Intercept), Days]", "sigma"]
    assert table["pass"].all(), table
    # no parameter has more than half of its truths in the outer 10% of ranks
    outer = ((ranks < 10) | (ranks > 89)).mean()
    assert (outer < 0.5).all(), outer


def test_uniformity_table_rejects_miscalibrated_ranks():
    rng = np.random.default_rng(0)
    import pandas as pd

    good = pd.DataFrame({"a": rng.integers(0, 100, 200)})
    bad = pd.DataFrame({"a": np.where(rng.random(200) < 0.5, rng.integers(0, 10, 200), rng.integers(90, 100, 200))})
    assert sbc.uniformity_table(good)["pass"].all()
    assert not sbc.uniformity_table(bad)["pass"].any()
