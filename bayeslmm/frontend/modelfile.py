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

from .. import priors as P
from ..datasets import DATASETS, load
from ..errors import BayesLMMError, DataError, SettingsError

METHODS = ("reml", "ml", "map", "sample", "all")
_PRIOR_CLASSES = P.PRIOR_CLASSES


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
    #: "gaussian" (an LMM) or a GLMM family: "binomial", "poisson", "negative_binomial"
    family: str = "gaussian"
    link: str | None = None

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
        if not path.is_file():
            raise DataError(f"data file {path} is a folder, not a CSV file")
        return read_csv(path)


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV file as a DataFrame; two columns with one name are an error (pandas would rename
    the second 'x.1', and a formula naming 'x' would silently fit the first)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
        frame = pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from exc
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(f"{path} has two columns named '{name}' (columns {seen[name]} and {position}); "
                            "rename one: pandas would call the second '{name}.1' and a formula naming "
                            f"'{name}' would use the first")
        seen[name] = position
    return frame


def parse_priors(table: dict) -> dict:
    """``{key: {dist = "HalfNormal", sigma = 10}}`` -> ``{key: HalfNormal(sigma=10.0)}``."""
    out = {}
    for key, spec in table.items():
        if not isinstance(spec, dict) or "dist" not in spec:
            raise ModelFileError(f"prior '{key}' must be a table like {{ dist = \"HalfNormal\", sigma = 10 }}")
        kind = spec["dist"]
        if not isinstance(kind, str) or kind not in _PRIOR_CLASSES:
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
    "parametrization": (lambda v: v in ("auto", "marginal", "crossed", "marginal_mh", "full"),
                        "one of auto, marginal, crossed, marginal_mh, full"),
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
    # then the API's own checks and bounds (draws, chains, seed range), so both paths agree
    from ..model import check_sample_arguments

    try:
        check_sample_arguments(**{("random_seed" if key == "seed" else key): value for key, value in sample.items()})
    except SettingsError as exc:
        raise ModelFileError(f"{where}: [sample] {str(exc).replace('random_seed=', 'seed=')}") from exc
    return sample


#: top-level entries of a model file and the type each must have
_ENTRY_TYPES = {"name": str, "description": str, "data": str, "formula": str, "method": str, "reml": bool,
                "family": str, "link": str, "priors": dict, "sample": dict}


def read_model_file(path: str | Path) -> ModelSpec:
    """Read and check a model file: every entry has its type (``reml = "false"`` is an error,
    not REML), every prior and [sample] setting is checked as the API checks it."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelFileError(f"model file {path} is a folder; give a .toml file (see models/ for examples)")
    try:
        content = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from exc
    for key in ("data", "formula"):
        if key not in content:
            raise ModelFileError(f"{path} has no '{key}' entry")
    unknown = set(content) - set(_ENTRY_TYPES)
    if unknown:
        raise ModelFileError(f"{path}: unknown entries {', '.join(sorted(unknown))}")
    words = {str: "text in quotes", bool: "true or false (no quotes)", dict: "a table"}
    for key, kind in _ENTRY_TYPES.items():
        if key in content and not isinstance(content[key], kind):
            raise ModelFileError(f"{path}: {key} = {content[key]!r} must be {words[kind]}, not "
                                 f"{type(content[key]).__name__}")
    method = str(content.get("method", "all")).lower()
    if method not in METHODS:
        raise ModelFileError(f"{path}: method must be one of {', '.join(METHODS)}, not '{method}'")
    if not isinstance(content.get("sample", {}), dict) or not isinstance(content.get("priors", {}), dict):
        raise ModelFileError(f"{path}: [sample] and [priors] must be tables")
    sample = check_sample_settings(dict(content.get("sample", {})), str(path))
    family = content.get("family", "gaussian").lower()
    if family not in ("gaussian", "binomial", "poisson", "negative_binomial"):
        raise ModelFileError(f"{path}: family must be gaussian, binomial, poisson or negative_binomial, not '{family}'")
    if family != "gaussian" and method == "reml":
        raise ModelFileError(f"{path}: method 'reml' is for Gaussian models; a {family} model uses 'ml', 'map', "
                             "'sample' or 'all'")
    link = content.get("link")
    return ModelSpec(family=family, link=link, name=content.get("name", path.stem), data=content["data"],
                     formula=content["formula"], method=method, reml=content.get("reml", True),
                     priors=parse_priors(content.get("priors", {})), sample=sample,
                     description=content.get("description", ""), base_dir=path.parent)
