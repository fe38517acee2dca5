"""Model files: one TOML file per analysis (data, formula, method, priors, sampler settings).

Example (``models/sleepstudy.toml``)::

    name = "sleepstudy"
    description = "Reaction times under sleep deprivation: random intercepts and slopes"
    data = "sleepstudy"            # a bundled data set, or a CSV path relative to this file
    formula = "Reaction ~ Days + (Days | Subject)"
    method = "all"                 # reml | ml | map | sample | all (point fit + posterior)
    reml = true                    # the point fit: REML (true) or ML (false)

    [priors]                       # optional; brms-style keys, PyMC keywords
    sd_Subject__Days = { dist = "HalfStudentT", nu = 3, sigma = 10 }

    [sample]                       # optional
    draws = 1000
    tune = 1000
    chains = 4
    seed = 1
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import priors as P
from .datasets import DATASETS, load
from .errors import BayesLMMError, DataError

METHODS = ("reml", "ml", "map", "sample", "all")
_PRIOR_CLASSES = {name: getattr(P, name) for name in
                  ("Normal", "StudentT", "Flat", "HalfStudentT", "HalfNormal", "Exponential", "Gamma",
                   "LogNormal", "LKJ")}


class ModelFileError(BayesLMMError, ValueError):
    """A model file is missing, unreadable or has a wrong entry."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model file (or the same built from command-line options)."""

    name: str
    data: str
    formula: str
    method: str = "all"
    reml: bool = True
    priors: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)
    description: str = ""
    base_dir: Path = Path(".")

    def load_data(self) -> pd.DataFrame:
        """The bundled data set named ``data``, or the CSV it points to."""
        if self.data.lower() in DATASETS:
            return load(self.data)
        path = Path(self.data)
        if not path.is_absolute():
            path = self.base_dir / path
        if not path.exists():
            raise DataError(f"data file {path} does not exist (and '{self.data}' is not a bundled data set: "
                            f"{', '.join(DATASETS)})")
        try:
            return pd.read_csv(path)
        except Exception as exc:
            raise DataError(f"cannot read {path} as CSV: {exc}") from exc


def parse_priors(table: dict) -> dict:
    """``{key: {dist = "HalfNormal", sigma = 10}}`` -> ``{key: HalfNormal(sigma=10.0)}``."""
    out = {}
    for key, spec in table.items():
        if not isinstance(spec, dict) or "dist" not in spec:
            raise ModelFileError(f"prior '{key}' must be a table like {{ dist = \"HalfNormal\", sigma = 10 }}")
        kind = spec["dist"]
        if kind not in _PRIOR_CLASSES:
            raise ModelFileError(f"prior '{key}': unknown dist '{kind}'; use one of {', '.join(_PRIOR_CLASSES)}")
        kwargs = {k: v for k, v in spec.items() if k != "dist"}
        for name, value in kwargs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ModelFileError(f"prior '{key}': {name} = {value!r} is not a number")
        try:
            out[key] = _PRIOR_CLASSES[kind](**{k: float(v) for k, v in kwargs.items()})
        except (TypeError, P.PriorError) as exc:  # an unknown keyword, or a value out of range
            raise ModelFileError(f"prior '{key}': {exc}") from exc
    return out


# [sample] entries: what each must be, as a check and the words of its message
_SAMPLE_CHECKS = {
    "draws": (lambda v: _is_int(v) and v >= 1, "a whole number of at least 1"),
    "tune": (lambda v: _is_int(v) and v >= 0, "a whole number of at least 0"),
    "chains": (lambda v: _is_int(v) and v >= 1, "a whole number of at least 1"),
    "seed": (lambda v: _is_int(v) and v >= 0, "a whole number of at least 0"),
    "target_accept": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
                      "a number between 0 and 1"),
    "sampler": (lambda v: v in ("nutpie", "pymc", "numpyro", "blackjax"), "one of nutpie, pymc, numpyro, blackjax"),
    "parametrization": (lambda v: v in ("auto", "marginal", "crossed", "full"), "one of auto, marginal, crossed, full"),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sample_settings(sample: dict, where: str) -> dict:
    """The ``[sample]`` table, each entry checked (unknown entries and wrong types are errors)."""
    bad = set(sample) - set(_SAMPLE_CHECKS)
    if bad:
        raise ModelFileError(f"{where}: unknown [sample] entries {', '.join(sorted(bad))}; "
                             f"known: {', '.join(_SAMPLE_CHECKS)}")
    for key, value in sample.items():
        ok, wanted = _SAMPLE_CHECKS[key]
        if not ok(value):
            raise ModelFileError(f"{where}: [sample] {key} = {value!r} must be {wanted}")
    return sample


def read_model_file(path: str | Path) -> ModelSpec:
    """Read and check a model file."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        content = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid TOML: {exc}") from exc
    for key in ("data", "formula"):
        if key not in content:
            raise ModelFileError(f"{path} has no '{key}' entry")
    unknown = set(content) - {"name", "description", "data", "formula", "method", "reml", "priors", "sample"}
    if unknown:
        raise ModelFileError(f"{path}: unknown entries {', '.join(sorted(unknown))}")
    method = str(content.get("method", "all")).lower()
    if method not in METHODS:
        raise ModelFileError(f"{path}: method must be one of {', '.join(METHODS)}, not '{method}'")
    if not isinstance(content.get("sample", {}), dict) or not isinstance(content.get("priors", {}), dict):
        raise ModelFileError(f"{path}: [sample] and [priors] must be tables")
    sample = check_sample_settings(dict(content.get("sample", {})), str(path))
    return ModelSpec(name=str(content.get("name", path.stem)), data=str(content["data"]),
                     formula=str(content["formula"]), method=method, reml=bool(content.get("reml", True)),
                     priors=parse_priors(content.get("priors", {})), sample=sample,
                     description=str(content.get("description", "")), base_dir=path.parent)
