"""Shared fixtures: the lme4 reference fits and cached bayeslmm fits of the same models."""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import matplotlib
import pytest

import bayeslmm as blm

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


def short_posterior(formula: str, data, seed: int):
    """A short default-sampler run (2 chains x 200 draws) for structural tests of the
    reporting verbs; its ESS warning is expected and silenced."""
    import warnings

    import bayeslmm as blm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blm.SamplingWarning)
        return blm.LMM(formula, data).sample(chains=2, draws=200, tune=300, random_seed=seed, progressbar=False)


@pytest.fixture(scope="session")
def sleep_rs_posterior(sleepstudy):
    """``Reaction ~ Days + (Days | Subject)``, short run: shared by the report and plot tests."""
    return short_posterior("Reaction ~ Days + (Days | Subject)", sleepstudy, 11)


# ------------------------------------------------------------------ brms reference runs
BRMS_DATASET = {"sleep_rs": "sleepstudy", "exam_rs": "exam", "exam_sex": "exam"}


def brms_priors(case: str) -> dict:
    """brms's default priors of a reference case (its ``priors`` field), through the priors API."""
    text = brms_reference(case)["priors"]

    def student_t(entry):
        nu, mu, scale = re.findall(r"student_t\(([^,]+), ([^,]+), ([^)]+)\)", text[entry])[0]
        return float(nu), float(mu), float(scale)

    assert text["b"] == "flat" and text["cor"] == "lkj(1)"
    nu, mu, scale = student_t("Intercept")
    return {"Intercept": blm.StudentT(nu=nu, mu=mu, sigma=scale), "b": blm.Flat(),
            "sd": blm.HalfStudentT(nu=student_t("sd")[0], sigma=student_t("sd")[2]),
            "sigma": blm.HalfStudentT(nu=student_t("sigma")[0], sigma=student_t("sigma")[2]),
            "cor": blm.LKJ(eta=1.0)}


def brms_model(case: str):
    """The reference case's model under brms's default priors."""
    return blm.LMM(brms_reference(case)["formula"], blm.datasets.load(BRMS_DATASET[case]), priors=brms_priors(case))


def posterior_table(post) -> dict[str, tuple[float, float]]:
    """brms's variable names -> (posterior mean, posterior sd) of a bayeslmm posterior."""
    out = {}
    brms_term = lambda term: "Intercept" if term == "(Intercept)" else term  # noqa: E731
    for term, row in post.fixef().iterrows():
        out[f"b_{brms_term(term)}"] = (row["mean"], row["sd"])
    for row in post.varcorr().itertuples():
        if row.group == "Residual":
            out["sigma"] = (row.sdcor, row.sdcor_sd)
        elif not isinstance(row.var2, str):
            out[f"sd_{row.group}__{brms_term(row.var1)}"] = (row.sdcor, row.sdcor_sd)
        else:
            out[f"cor_{row.group}__{brms_term(row.var1)}__{row.var2}"] = (row.sdcor, row.sdcor_sd)
    return out


def assert_agrees_with_brms(post, case: str) -> None:
    """The issues' criterion, not loosened: means within 0.2 posterior sd of brms's, sds within
    15%, zero divergences."""
    ours = posterior_table(post)
    reference = brms_reference(case)["brms"]["summary"]
    assert {row["variable"] for row in reference} == set(ours)
    for row in reference:
        mean, sd = ours[row["variable"]]
        assert abs(mean - row["mean"]) <= 0.2 * row["sd"], (row["variable"], mean, row["mean"], row["sd"])
        assert sd == pytest.approx(row["sd"], rel=0.15), (row["variable"], sd, row["sd"])
    assert post.divergences == 0


# ------------------------------------------------------------------ a real Dask cluster
@pytest.fixture(scope="session")
def dask_client():
    """A real ``LocalCluster`` of two worker processes (one thread each), shared by the power,
    bootstrap and out-of-core tests; skipped only where the ``dask`` extra is not installed.
    Workers import bayeslmm, so it must be importable there (PYTHONPATH or an install)."""
    pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        yield client


# ------------------------------------------------------------------ a posterior file by hand
def write_posterior_file(path, formula: str = "Reaction ~ Days + (1 | Subject)", chains: int = 1,
                         draws: int = 4) -> None:
    """A sleepstudy posterior file as ``PosteriorResult.to_netcdf`` writes it (zero draws of
    the variables ``blm.load`` checks, the attributes it rebuilds the model from), written
    directly so that a test of loading does not depend on a sampler. ``formula`` must be a
    one-bar ``(1 | Subject)`` model with fixed part ``Days`` for the draws to match."""
    import json

    import numpy as np
    import xarray as xr

    import bayeslmm as blm
    from bayeslmm.results.posterior import frame_schema, frame_to_csv

    sleep = blm.datasets.load("sleepstudy")
    subjects = sorted(sleep["Subject"].astype(str).unique(), key=int)
    shape = (chains, draws)
    posterior = xr.Dataset(
        {"beta": (("chain", "draw", "term"), np.zeros(shape + (2,))),
         "sigma": (("chain", "draw"), np.full(shape, 25.0)),
         "sd_Subject": (("chain", "draw", "Subject__term"), np.ones(shape + (1,))),
         "r_Subject": (("chain", "draw", "Subject__level", "Subject__term"), np.zeros(shape + (len(subjects), 1)))},
        coords={"chain": np.arange(chains), "draw": np.arange(draws), "term": ["(Intercept)", "Days"],
                "Subject__term": ["(Intercept)"], "Subject__level": subjects})
    posterior.attrs.update(formula=formula, data_csv=frame_to_csv(sleep), priors_json="{}",
                           data_schema=json.dumps(frame_schema(sleep)))
    xr.DataTree.from_dict({"posterior": posterior}).to_netcdf(path, engine="h5netcdf")
