"""Bundled example data sets (copies of the classic lme4 / mlmRev / MixedModels data)."""

from __future__ import annotations

from importlib import resources

import pandas as pd

from ..errors import DataError

#: name -> one-line description of each bundled data set
DATASETS: dict[str, str] = {
    "sleepstudy": "Reaction times (ms) of 18 subjects over 10 days of sleep deprivation (lme4).",
    "dyestuff": "Yield of dyestuff from 6 batches of an intermediate product, 5 preparations each (lme4).",
    "dyestuff2": "Simulated Dyestuff data whose between-batch variance is estimated as zero (lme4).",
    "penicillin": "Diameter of growth-inhibition zones: 24 plates crossed with 6 penicillin samples (lme4).",
    "pastes": "Paste strength: 3 casks nested within each of 10 batches, 2 assays each (lme4).",
    "exam": "Normalized exam scores of 4,059 students in 65 London schools (mlmRev).",
    "minneapolis": "Reading scores of 22 Minneapolis students, grades 5 to 8 (Long, 2012).",
    "insteval": "73,421 lecture ratings: 2,972 students crossed with 1,128 lecturers in 14 departments (lme4).",
    "cbpp": "Contagious bovine pleuropneumonia: new cases (incidence) out of herd size, 15 herds x 4 periods (lme4).",
    "grouseticks": "Ticks counted on 403 red grouse chicks in 118 broods at 63 locations, 1995-97 (lme4).",
    "verbagg": "Verbal aggression: 316 subjects x 24 items, binary response r2 (7,584 rows; lme4).",
    "kb07": ("Reaction times (RTtrunc, ms) of 56 subjects x 32 items, three +-1 coded factors S, P, C and "
             "their interactions (Kronmueller & Barr 2007; MixedModels.jl)."),
    "bs10": ("Difference scores of 92 subjects x 12 items, +-1 coded factors S, F and SF (Barr & Seyfeddinipur "
             "2010; Bates et al. 2015)."),
}

# Columns that are identifiers or categories even though they look numeric.
_CATEGORICAL = {
    "sleepstudy": ["Subject"],
    "exam": ["school", "student"],
    "minneapolis": ["student_id"],
    "insteval": ["s", "d", "dept", "service", "studage", "lectage"],
    "cbpp": ["herd", "period"],
    "grouseticks": ["INDEX", "BROOD", "YEAR", "LOCATION"],
    "verbagg": ["id", "item"],
    "kb07": ["subj", "item"],
    "bs10": ["subj", "item"],
}


def list_datasets() -> pd.DataFrame:
    """Return a table of the bundled data sets: name, rows, columns and description."""
    rows = []
    for name, description in DATASETS.items():
        frame = load(name)
        rows.append({"name": name, "rows": len(frame), "columns": ", ".join(frame.columns),
                     "description": description})
    return pd.DataFrame(rows).set_index("name")


def load(name: str) -> pd.DataFrame:
    """Load a bundled data set as a DataFrame.

    Parameters
    ----------
    name : str
        One of ``sleepstudy``, ``dyestuff``, ``dyestuff2``, ``penicillin``, ``pastes``,
        ``exam``, ``minneapolis``, ``insteval``, ``cbpp``, ``grouseticks``, ``verbagg``,
        ``kb07``, ``bs10``
        (case-insensitive).

    Returns
    -------
    pandas.DataFrame
        Identifier columns (subjects, schools, students...) are read as strings so that
        they are treated as factors.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; bundled: {', '.join(DATASETS)}")
    path = resources.files(__package__).joinpath("data", f"{key}.csv")
    dtypes = {col: str for col in _CATEGORICAL.get(key, [])}
    with path.open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle, dtype=dtypes)


def simulate_salary(seed: int = 1, n_majors: int = 5, n_students: int = 5) -> pd.DataFrame:
    """The small simulated salary data set of the singular-fit examples.

    ``n_majors`` majors x ``n_students`` students; grade ~ N(0, 1); each major's
    intercept ~ N(-10 x the major's mean grade, 6); slopes ~ N(2, 0.1); residual sd 3.
    With so few majors, ``salary ~ 1 + grade + (1 + grade | major)`` is singular under
    REML (lme4 reports a correlation of 1.00).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    major = np.repeat([f"major {chr(65 + m)}" for m in range(n_majors)], n_students)
    grade = rng.normal(0.0, 1.0, size=n_majors * n_students)
    mean_grade = grade.reshape(n_majors, n_students).mean(axis=1)
    intercept = rng.normal(-10.0 * mean_grade, 6.0)
    slope = rng.normal(2.0, 0.1, size=n_majors)
    codes = np.repeat(np.arange(n_majors), n_students)
    salary = intercept[codes] + slope[codes] * grade + rng.normal(0.0, 3.0, size=grade.size)
    return pd.DataFrame({"major": major, "grade": grade, "salary": salary})
