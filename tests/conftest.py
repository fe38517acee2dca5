"""Shared fixtures: the lme4 reference fits and cached bayeslmm fits of the same models."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

# ../shared/reference next to the checkout (CI clones main with shared/ beside it)
_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("BAYESLMM_REFERENCE",
                                    _ROOT.parent / "shared" / "reference"))
LME4_CASES = ["dyestuff", "dyestuff2", "exam_ri", "exam_rs", "exam_sex", "insteval",
              "mpls_log_ml", "mpls_rs_ml", "pastes", "penicillin", "sleep_ri", "sleep_rs",
              "sleep_rs_ml", "sleep_uncorr"]


@lru_cache(maxsize=None)
def lme4_reference(case: str) -> dict:
    """The lme4 1.1-31 fit of ``case`` (see ../shared/reference/lme4)."""
    path = REFERENCE_DIR / "lme4" / f"{case}.json"
    if not path.exists():
        raise FileNotFoundError(f"lme4 reference {path} is missing: set BAYESLMM_REFERENCE")
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def brms_reference(case: str) -> dict:
    path = REFERENCE_DIR / "brms" / f"{case}.json"
    if not path.exists():
        raise FileNotFoundError(f"brms reference {path} is missing: set BAYESLMM_REFERENCE")
    return json.loads(path.read_text())


def bayeslmm_formula(lme4_formula: str) -> str:
    """lme4's ``log(y)`` is written ``np.log(y)`` in Python."""
    return lme4_formula.replace("log(", "np.log(")


def dataset_name(reference: dict) -> str:
    return Path(reference["data"]).stem


@lru_cache(maxsize=None)
def reference_fit(case: str):
    """The bayeslmm REML/ML fit of a reference case (cached for the whole session)."""
    import bayeslmm as blm

    ref = lme4_reference(case)
    model = blm.LMM(bayeslmm_formula(ref["formula"]), blm.datasets.load(dataset_name(ref)))
    return model.fit(method="reml" if ref["REML"] else "ml")


@pytest.fixture(scope="session")
def sleepstudy():
    import bayeslmm as blm

    return blm.datasets.load("sleepstudy")
