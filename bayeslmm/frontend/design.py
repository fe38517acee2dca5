"""Stage 2: parsed formula + DataFrame -> numeric design.

The :class:`Design` is the single hand-off object both back ends read: the response,
the fixed-effects matrix with lme4's column names, and one :class:`RandomBlock` per bar
(its model-matrix columns, the grouping codes and level names). Column expressions are
evaluated with ``formulae``; the evaluators are kept so that new data can be turned into
the same columns for prediction without reading the formula again.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field

import formulae as fm
import numpy as np
import pandas as pd
from formulae.environment import Environment

from ..errors import DataError, FormulaError
from .formula import ELEMENTWISE, ParsedFormula, RandomTerm, _point, decimal_literals, expression_columns


class _FunctionTable:
    """What ``np`` and ``numpy`` are inside a formula: attribute lookup returns the elementwise
    transforms of the table and nothing else (no submodules, no dunder attributes), so that
    formulae's dotted-name lookup (``np.lib.…``) reaches nothing else even if a formula got
    past the checks of :mod:`bayeslmm.frontend.formula`."""

    __slots__ = ("_functions",)

    def __init__(self, functions: dict):
        object.__setattr__(self, "_functions", dict(functions))

    def __getattribute__(self, name):
        functions = object.__getattribute__(self, "_functions")
        if name in functions:
            return functions[name]
        if name in ("__reduce_ex__", "__reduce__"):  # pickling (Dask ships evaluators to workers)
            return object.__getattribute__(self, name)
        raise AttributeError(f"'{name}' is not a function a formula can use")

    def __reduce__(self):
        return (_function_table, ())

    def __setattr__(self, name, value):
        raise AttributeError("the formula function table is read-only")


_ELEMENTWISE_FUNCTIONS = {name: getattr(np, name) for name in ELEMENTWISE}


def _function_table() -> _FunctionTable:
    """The one table (what an unpickled table becomes)."""
    return FORMULA_NAMESPACE["np"]

#: the only names formulae can resolve besides the data's columns and its own transforms
#: (which bayeslmm.frontend.formula restricts to the table): R users write log(y), numpy users np.log(y)
_TABLE = _FunctionTable(_ELEMENTWISE_FUNCTIONS)
FORMULA_NAMESPACE = {"np": _TABLE, "numpy": _TABLE, **_ELEMENTWISE_FUNCTIONS}


def codes_nested(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Whether each value of the integer codes ``inner`` occurs with one value of ``outer``
    only (row-aligned): the grouping ``inner`` is nested in ``outer``."""
    inner, outer = np.asarray(inner, dtype=np.int64), np.asarray(outer, dtype=np.int64)
    if not len(inner):
        return True
    pairs = np.unique(inner * (int(outer.max()) + 1) + outer)  # one integer per (inner, outer) pair
    return len(pairs) == len(np.unique(inner))


def parent_levels(inner: np.ndarray, n_inner: int, outer: np.ndarray) -> np.ndarray:
    """(n_inner,) the level of ``outer`` that holds each level of ``inner`` (row-aligned
    integer codes, ``inner`` nested in ``outer``; a level without rows gets 0)."""
    out = np.zeros(n_inner, dtype=np.int64)
    out[inner] = outer
    return out


@dataclass(frozen=True)
class RandomBlock:
    """The columns of one bar ``(expr | group)`` of the formula.

    The full random-effects matrix of the block has ``n_levels * n_terms`` columns,
    level-major (lme4's order): column ``j * n_terms + t`` is ``X[:, t]`` on the rows of
    level ``j`` and zero elsewhere.

    Attributes
    ----------
    group : str
        Grouping factor name as lme4 prints it (``"Subject"``, ``"cask:batch"``).
    terms : tuple of str
        Coefficient names (``("(Intercept)", "Days")``).
    correlated : bool
        False for ``||`` bars: a diagonal covariance.
    X : ndarray, shape (n, n_terms)
        The bar's model-matrix columns.
    codes : ndarray of int, shape (n,)
        Level index of every row.
    levels : tuple of str
        Level names, in lme4's order.
    """

    group: str
    terms: tuple[str, ...]
    correlated: bool
    X: np.ndarray
    codes: np.ndarray
    levels: tuple[str, ...]
    term: RandomTerm = field(repr=False)
    _evaluator: object = field(repr=False, compare=False, default=None)

    @property
    def n_terms(self) -> int:
        return len(self.terms)

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def group_vars(self) -> tuple[str, ...]:
        return self.term.group_vars

    def nested_in(self, other: "RandomBlock") -> bool:
        """Whether every level of this bar's grouping lies within one level of ``other``'s
        (``batch:cask`` in ``batch``); the two blocks must describe the same rows."""
        return codes_nested(self.codes, other.codes)

    def level_counts(self) -> np.ndarray:
        """Number of rows in each level."""
        return np.bincount(self.codes, minlength=self.n_levels)

    def new_columns(self, data: pd.DataFrame) -> np.ndarray:
        """Evaluate this bar's model-matrix columns on new data."""
        return _evaluate_new(self._evaluator, data, self.term.expr)


@dataclass(frozen=True)
class Design:
    """Numeric design of a linear mixed model.

    Attributes
    ----------
    formula : ParsedFormula
    response : str
        The response expression (``"Reaction"``, ``"np.log(reading_score)"``).
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Fixed-effects matrix, full column rank (aliased columns removed).
    fixed_names : tuple of str
        lme4's names of the columns of ``X`` (``"(Intercept)"``, ``"sexM"``).
    blocks : tuple of RandomBlock
        One per bar, ordered as lme4 orders them (by decreasing number of levels).
    data : DataFrame
        The rows used (complete cases), with their original index.
    n_dropped : int
        Rows dropped for missing values.
    aliased : tuple of str
        Fixed-effect columns dropped as linear combinations of the others.
    """

    formula: ParsedFormula
    response: str
    y: np.ndarray
    X: np.ndarray
    fixed_names: tuple[str, ...]
    blocks: tuple[RandomBlock, ...]
    data: pd.DataFrame = field(repr=False)
    n_dropped: int = 0
    aliased: tuple[str, ...] = ()
    _fixed_evaluator: object = field(repr=False, compare=False, default=None)
    _fixed_all_names: tuple[str, ...] = field(repr=False, default=())
    #: sum of the formula's ``offset(...)`` terms (GLMMs only; ``None`` without one)
    offset: np.ndarray | None = field(repr=False, default=None)

    @property
    def nobs(self) -> int:
        return len(self.y)

    @property
    def n_fixed(self) -> int:
        return self.X.shape[1]

    def fixed_terms(self) -> dict[str, tuple[int, ...]]:
        """Each term of the fixed part -> the columns of ``X`` it owns (aliased columns
        left out; a term whose columns were all aliased is left out), in R's term order
        (by degree, then formula order):
        ``{"(Intercept)": (0,), "Days": (1,), "g": (2, 3), "Days:g": (4, 5)}``."""
        slices = getattr(self._fixed_evaluator, "slices", None) or {}
        terms = getattr(self._fixed_evaluator, "terms", None) or {}
        position = {name: i for i, name in enumerate(self.fixed_names)}
        out = {}
        for term in sorted(slices, key=lambda name: _term_degree(name, terms.get(name))):
            sl = slices[term]
            columns = tuple(position[name] for name in self._fixed_all_names[sl] if name in position)
            if columns:
                out["(Intercept)" if term == "Intercept" else term] = columns
        return out

    def fixed_term_parts(self) -> dict[str, tuple[dict, ...]]:
        """The variables of every term of the fixed part (aliased terms included), in R's term
        order (see :meth:`fixed_terms`), as the evaluated design holds them, for re-coding the factors (lmerTest's
        type III hypotheses are built on treatment contrasts whatever the model's coding).

        Each part is a dict: ``name`` (the variable as the formula writes it, ``"C(a, Sum)"``),
        ``kind`` (``"factor"`` or ``"numeric"``), ``values`` (numeric: the ``(n, k)`` columns;
        factor: the ``(n, k)`` coded columns), and for a factor ``levels`` (in the factor's
        order, the first is R's treatment reference), ``codes`` (level index of every row) and
        ``full`` (True where the term codes the factor by one indicator per level, as R does
        for a factor whose margin is not in the model). ``"(Intercept)"`` has no parts.
        """
        out: dict[str, tuple[dict, ...]] = {}
        terms = getattr(self._fixed_evaluator, "terms", None) or {}
        for name in sorted(terms, key=lambda name: _term_degree(name, terms[name])):
            term = terms[name]
            if name == "Intercept":
                out["(Intercept)"] = ()
                continue
            parts = []
            for component in getattr(term, "components", ()):
                values = np.asarray(component.value, dtype=float)
                values = values.reshape(len(values), -1)
                if component.kind == "categoric":
                    coding = np.asarray(component.contrast_matrix.matrix, dtype=float)
                    # each level's row of the coding is distinct: recover the level of every row
                    match = np.all(values[:, None, :] == coding[None, :, :], axis=2)
                    parts.append({"name": component.name, "kind": "factor", "values": values,
                                  "levels": tuple(str(level) for level in component.levels),
                                  "codes": np.argmax(match, axis=1), "full": bool(component.spans_intercept)})
                else:
                    parts.append({"name": component.name, "kind": "numeric", "values": values})
            out[name] = tuple(parts)
        return out

    def new_fixed_matrix(self, data: pd.DataFrame) -> np.ndarray:
        """Evaluate the fixed-effects columns (the kept ones) on new data."""
        full = _evaluate_new(self._fixed_evaluator, data, self.formula.fixed)
        keep = [self._fixed_all_names.index(name) for name in self.fixed_names]
        return full[:, keep]

    def new_offset(self, data: pd.DataFrame) -> np.ndarray | None:
        """The ``offset(...)`` terms evaluated on new data (``None`` when the formula has none)."""
        if self.offset is None:
            return None
        full = _evaluate_new(self._fixed_evaluator, data, self.formula.fixed)
        cols = [i for i, name in enumerate(self._fixed_all_names) if _is_offset(name)]
        return full[:, cols].sum(axis=1)

    def new_codes(self, block: RandomBlock, data: pd.DataFrame) -> np.ndarray:
        """Level index of each row of new data in ``block``; -1 for a level not in the fit.

        Labels are matched by their text, as R's ``as.character`` (1, 1.0 and "1" all find
        level "1"). Where a grouping column's type differs from the fitted one and some
        labels match no level, a warning names the column, the types and the labels, since a
        typo in type (text "01" against numbers) would otherwise make new groups silently.
        """
        labels = _group_labels(data, block.group_vars)
        lookup = {level: j for j, level in enumerate(block.levels)}
        codes = np.array([lookup.get(label, -1) for label in labels], dtype=np.int64)
        if (codes < 0).any():
            changed = [(var, _kind(data[var]), _kind(self.data[var])) for var in block.group_vars
                       if var in self.data.columns and _kind(data[var]) != _kind(self.data[var])]
            if changed:
                unmatched = list(dict.fromkeys(label for label, code in zip(labels, codes) if code < 0))
                shown = ", ".join(repr(u) for u in unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
                types = "; ".join(f"'{var}' holds {new} in the new data but {old} in the fitted data"
                                  for var, new, old in changed)
                warnings.warn(f"{types}: {int((codes < 0).sum())} row(s) with label(s) {shown} match no fitted "
                              f"level of '{block.group}' and are treated as new groups; convert the column to "
                              "the fitted type if they are meant to be fitted groups", UserWarning, stacklevel=3)
        return codes

    def compare_observations(self, other: "Design") -> str | None:
        """Why two designs do not describe the same observations of the same response (None
        if they do): likelihoods of different data cannot be compared."""
        if self.response.replace(" ", "") != other.response.replace(" ", ""):
            return f"different responses ('{self.response}' and '{other.response}')"
        if self.nobs != other.nobs:
            return f"different numbers of observations ({self.nobs} and {other.nobs})"
        if not np.array_equal(np.sort(self.y), np.sort(other.y)):  # the order of the rows does not matter
            return ("different rows of the data (the same number of observations, other response values: other "
                    "data, or missing values dropped in other columns)")
        return None


def build_design(formula: ParsedFormula, data: pd.DataFrame, glmm: bool = False) -> Design:
    """Turn a parsed formula and a DataFrame into a :class:`Design`.

    Parameters
    ----------
    formula : ParsedFormula
        From :func:`~bayeslmm.frontend.formula.parse_formula`.
    data : pandas.DataFrame
        Grouping columns of any type are factors (numbers sort numerically, a
        Categorical keeps its category order); a Categorical in the fixed or random part
        keeps its order too, so its first category is the reference level, as in R.
    glmm : bool
        For a generalized model (:mod:`bayeslmm.frontend.glmm_design`): accept ``offset(expr)``
        terms in the fixed part (summed into ``Design.offset`` instead of becoming
        columns of ``X``) and a grouping factor with one level per observation (an
        observation-level effect models overdispersion), as glmer does.

    Returns
    -------
    Design

    Raises
    ------
    DataError
        Data not a DataFrame or empty; an unknown column (with the closest name); a
        duplicated column name; complex numbers, dates in a predictor, or objects that are
        neither numbers nor text; infinite values (the column named); a response that is
        not numeric or is constant; NaN or inf made by a transform (column and rows
        named); every row missing; a grouping factor with one level, with as many levels
        as observations, or a bar with more random effects than observations.
    FormulaError
        No random-effect term; an unknown function; overlapping bars on one factor; a
        bar or fixed part with no columns; anything else ``formulae`` cannot evaluate
        (its message, with the position of the part).

    Warns
    -----
    UserWarning
        Rows dropped for missing values (counted per column); aliased fixed-effect
        columns dropped (later columns first, as lme4); ``||`` on a factor, whose meaning
        differs from lme4's.
    """
    if not isinstance(data, pd.DataFrame):
        kind = type(data)
        where = kind.__module__.split(".")[0]
        name = kind.__name__ if where == "builtins" else f"{where}.{kind.__name__}"
        fix = ("convert it with .to_pandas()" if hasattr(data, "to_pandas")
               else "wrap it with pandas.DataFrame(...)")
        raise DataError(f"data must be a pandas DataFrame, not {name}: {fix}")
    if not formula.random:
        raise FormulaError(f"the formula {formula.text!r} has no random-effect term: add one like "
                           "'(1 | g)' (a model without one is a linear model, not a mixed model)")
    if len(data) == 0:
        raise DataError("the data are empty (0 rows)")
    if not all(isinstance(c, str) for c in data.columns):
        # a formula names columns by text: 1 is written `1`
        data = data.rename(columns=lambda c: c if isinstance(c, str) else str(c))
    used = _used_columns(formula, data, allow_offset=glmm)
    _check_column_types(formula, data, used)
    data = _drop_missing(data, used)
    n_dropped_total = data.attrs.pop("n_dropped", 0)
    _reject_infinite(data, used)
    _check_response_column(formula, data)

    frame = _for_formulae(data, used)
    y, fixed = _evaluate_fixed(formula, frame)
    X, fixed_names, fixed_all_names, aliased, offset = _full_rank(fixed, data)
    if X.shape[1] >= len(y):
        raise DataError(f"the fixed part has {X.shape[1]} coefficients for {len(y)} observations: "
                        "no residual degrees of freedom are left; use fewer fixed effects")
    blocks = [_build_block(term, frame) for term in formula.random]
    # lme4 orders the bars by decreasing number of levels (a stable sort)
    blocks.sort(key=lambda block: -block.n_levels)
    _check_overlapping_bars(blocks)
    _check_random_sizes(blocks, len(y), observation_level=glmm)
    return Design(formula=formula, response=formula.response, y=y, X=X,
                  fixed_names=fixed_names, blocks=tuple(blocks), data=data,
                  n_dropped=n_dropped_total, aliased=aliased,
                  _fixed_evaluator=fixed, _fixed_all_names=fixed_all_names, offset=offset)


# ---------------------------------------------------------------- column checks
def _find_name(text: str, name: str, start: int) -> int:
    """Where the whole name ``name`` stands in ``text`` from ``start`` ('b' in 'ab + b' is at
    5, not inside 'ab'); -1 if it does not."""
    match = re.compile(rf"(?<![\w.]){re.escape(name)}(?![\w.])").search(text, max(start, 0))
    return match.start() if match else text.find(name, max(start, 0))


def _used_columns(formula: ParsedFormula, data: pd.DataFrame, allow_offset: bool = False) -> list[str]:
    """The data columns the formula reads, in order of appearance. Every expression is checked
    again here (:func:`~bayeslmm.frontend.formula.expression_columns`), so a ParsedFormula built by hand
    cannot carry anything past the table of transforms; a name that is no column is an error.
    ``allow_offset`` admits ``offset(expr)`` terms in the fixed part (GLMMs), whose ``expr``
    is checked as any other."""
    columns = [str(c) for c in data.columns]
    known = set(columns)
    pieces = [(formula.response, formula.text.find(formula.response)),
              (formula.fixed, formula.text.find("~") + 1)]
    for term in formula.random:
        pieces.append((term.expr, term.position))
        # grouping columns are names already (`my school` was unquoted by the parser)
        pieces.extend((f"`{var}`", term.position) for var in term.group_vars)
    used: dict[str, None] = {}  # ordered, and linear in the number of names
    for expr, position in pieces:
        if allow_offset and expr == formula.fixed:
            expr = _unwrap_offsets(expr)
        for name, _ in expression_columns(expr):
            if name in known:  # a column may be called 'class' or 'in'
                used.setdefault(name)
                continue
            hint = difflib.get_close_matches(name, columns, n=1)
            hint = hint or [c for c in columns if c.lower() == name.lower()][:1]
            hint_text = f"; did you mean '{hint[0]}'?" if hint else ""
            at = _find_name(formula.text, name, position)
            raise DataError(f"unknown column '{name}' in the formula (position {at}): the data "
                            f"have {', '.join(columns[:12])}{' ...' if len(columns) > 12 else ''}"
                            f"{hint_text}{_point(formula.text, at)}")
    return list(used)


def _drop_missing(data: pd.DataFrame, used: list[str]) -> pd.DataFrame:
    frame = data[used] if used else data.iloc[:, :0]
    missing = frame.isna()
    bad_rows = missing.any(axis=1)
    n_bad = int(bad_rows.sum())
    out = data.loc[~bad_rows] if n_bad else data
    out = out.copy()
    if n_bad:
        per_column = ", ".join(f"{c} ({int(k)})" for c, k in missing.sum().items() if k)
        warnings.warn(f"dropped {n_bad} of {len(data)} rows with missing values in: {per_column}",
                      UserWarning, stacklevel=4)
        if len(out) == 0:
            raise DataError(f"every one of the {len(data)} rows has a missing value in: {per_column}")
    out.attrs["n_dropped"] = n_bad
    return out


def _reject_infinite(data: pd.DataFrame, used: list[str]) -> None:
    """Infinite numbers and values that are neither numbers nor text are the user's to fix."""
    for column in used:
        values = data[column]
        if values.dtype == object:
            odd = [v for v in values if not isinstance(v, (str, bool, int, float, np.number, np.bool_))]
            if odd:
                raise DataError(f"column '{column}' holds {len(odd)} value(s) of type "
                                f"{type(odd[0]).__name__} (e.g. {odd[0]!r}); give numbers or text")
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            n_inf = int(np.isinf(values.to_numpy(dtype=float)).sum())
            if n_inf:
                raise DataError(f"column '{column}' has {n_inf} infinite value(s); remove or "
                                "recode them (only missing values are dropped automatically)")


def _check_column_types(formula: ParsedFormula, data: pd.DataFrame, used: list[str]) -> None:
    """Duplicate names, complex numbers and dates are the user's to resolve; grouping
    columns may be of any type (they are factors)."""
    group_vars = {var for term in formula.random for var in term.group_vars}
    counts = Counter(str(c) for c in data.columns)  # once: a check per column was quadratic
    if "Intercept" in used:
        raise DataError("a column named 'Intercept' would be taken for the intercept (formulae's name for it) and "
                        "replace it silently; rename the column, e.g. data.rename(columns={'Intercept': "
                        "'intercept_col'})")
    for column in used:
        count = counts[column]
        if count > 1:
            raise DataError(f"the data have {count} columns named '{column}'; rename them")
        values = data[column]
        if pd.api.types.is_complex_dtype(values):
            raise DataError(f"column '{column}' holds complex numbers; give real numbers")
        is_time = (pd.api.types.is_datetime64_any_dtype(values)
                   or pd.api.types.is_timedelta64_dtype(values))
        if is_time and column not in group_vars:
            raise DataError(f"column '{column}' holds dates or durations ({values.dtype}); convert it "
                            "to numbers (e.g. days since the start) or to text for a factor")
        if column not in group_vars:
            _check_numbers_stored_as_text(column, values)


def _check_numbers_stored_as_text(column: str, values: pd.Series) -> None:
    """A numeric column with a few text cells ('n/a', '.', '1,5' in a CSV) is read as text and
    would become a factor with a level per distinct number, silently; refuse it, naming them."""
    if not (values.dtype == object or pd.api.types.is_string_dtype(values)) or \
            isinstance(values.dtype, pd.CategoricalDtype):
        return
    present = values.dropna()
    if present.empty or not all(isinstance(v, str) for v in present.iloc[:1000]):
        return
    numeric = pd.to_numeric(present, errors="coerce")
    parsed = int(numeric.notna().sum())
    if parsed == len(present) or parsed < 0.8 * len(present) or numeric.nunique() <= 10:
        return  # all numbers (text codes of a factor on purpose), mostly text, or few distinct values
    odd = present[numeric.isna()]
    shown = ", ".join(f"{v!r} (row {i})" for i, v in list(odd.items())[:3]) + (" ..." if len(odd) > 3 else "")
    raise DataError(f"column '{column}' holds numbers stored as text with {len(odd)} value(s) that are not numbers: "
                    f"{shown}; it would be fitted as a factor with {present.nunique()} levels. Fix those values, or "
                    f"make them missing with pd.to_numeric(data['{column}'], errors='coerce'); for a factor on "
                    f"purpose, convert the column with .astype('category')")


def _check_response_column(formula: ParsedFormula, data: pd.DataFrame) -> None:
    """A response given as a bare column must be numbers (a text column would otherwise be
    dummy-coded by formulae and reported in a confusing way)."""
    name = formula.response.strip()
    if len(name) > 2 and name[0] == name[-1] == "`":
        name = name[1:-1]
    if name not in data.columns:
        return
    values = data[name]
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return
    examples = ", ".join(repr(v) for v in pd.unique(values)[:3])
    raise DataError(f"the response '{name}' is not numeric (column of type {values.dtype}, values "
                    f"like {examples}); a linear mixed model needs a numeric response")


def _check_finite_columns(matrix: np.ndarray, names, data: pd.DataFrame, what: str) -> None:
    """Transforms like np.log(x) of x <= 0 make NaN or inf; name the column and rows."""
    bad = ~np.isfinite(matrix)
    if not bad.any():
        return
    j = int(np.flatnonzero(bad.any(axis=0))[0])
    rows = data.index[bad[:, j]]
    shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
    raise DataError(f"{what} column '{names[j]}' has {len(rows)} NaN or infinite value(s) after "
                    f"transformation (rows {shown}): a log or square root of zero or a negative number?")


# ---------------------------------------------------------------- fixed part
def _check_unique_names(raw: list[str], names, what: str) -> None:
    """lme4's names drop formulae's brackets ('x[1]' -> 'x1'), so a factor's level and a
    column can meet under one name; two coefficients must never share one."""
    seen: dict[str, str] = {}
    for original, name in zip(raw, names):
        if name in seen:
            first = seen[name]
            raise DataError(f"two {what} coefficients would both be named '{name}': '{first}' and '{original}' "
                            "(a factor's level next to a column of that name?); rename the column or the level")
        seen[name] = original


def _lme4_name(name: str) -> str:
    """formulae column name -> lme4's: 'Intercept' -> '(Intercept)', 'sex[M]' -> 'sexM'."""
    if name == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[([^\]]*)\]", r"\1", name)


def _formulae(formula_text: str, data: pd.DataFrame, what: str, position: int | None = None):
    try:
        with warnings.catch_warnings():
            # formulae's own deprecation notices are not the user's business; anything
            # else it says (about the data) reaches the user
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # np.log(0) and friends: the NaN/inf they make is reported with the column and
            # rows by _check_finite_columns, so numpy's bare RuntimeWarning would only repeat it
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return fm.design_matrices(decimal_literals(formula_text), data, na_action="error",
                                          env=Environment([FORMULA_NAMESPACE]))
    except RecursionError as exc:  # formulae's parser and resolver recurse once per term
        shown = formula_text if len(formula_text) <= 80 else formula_text[:77] + "..."
        raise FormulaError(f"{what} '{shown}' has too many terms joined by operators for formulae to "
                           f"evaluate ({formula_text.count('+') + 1} terms); a few hundred work: combine "
                           "predictors (a factor, a matrix of scores) or use fewer") from exc
    except Exception as exc:  # formulae raises many types; report ours
        where = f" (position {position})" if position is not None and position >= 0 else ""
        shown = formula_text if len(formula_text) <= 200 else formula_text[:197] + "..."
        raise FormulaError(f"cannot evaluate {what} '{shown}'{where}: "
                           f"{type(exc).__name__}: {exc}") from exc


def _for_formulae(data: pd.DataFrame, used: list[str]) -> pd.DataFrame:
    """The data as formulae should see them: formulae sorts the categories of an unordered
    Categorical alphabetically, R keeps a factor's level order (the first is the reference)
    and drops unused levels; an ordered Categorical keeps its order in formulae."""
    out = None
    for column in used:
        values = data[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            out = data.copy() if out is None else out
            out[column] = values.cat.remove_unused_categories().cat.as_ordered()
    return data if out is None else out


def _evaluate_fixed(formula: ParsedFormula, data: pd.DataFrame):
    tilde = formula.text.find("~")
    first = tilde + 1 + len(formula.text[tilde + 1:]) - len(formula.text[tilde + 1:].lstrip())
    matrices = _formulae(formula.fixed_formula, data, "the fixed part", first)
    response = matrices.response
    if response is None:
        raise FormulaError(f"the formula {formula.text!r} has no response")
    y = np.asarray(response.design_matrix, dtype=float)
    if y.ndim == 2 and y.shape[1] == 0:
        raise DataError(f"the response '{formula.response}' gives no values")
    if y.ndim == 2:
        if y.shape[1] != 1:
            raise DataError(f"the response '{formula.response}' is not numeric: "
                            "it evaluates to a factor; give a numeric column")
        y = y[:, 0]
    if not np.all(np.isfinite(y)):
        raise DataError(f"the response '{formula.response}' has {int((~np.isfinite(y)).sum())} "
                        "non-finite value(s) after transformation (a log of zero or a negative number?)")
    if np.ptp(y) == 0:
        raise DataError(f"the response '{formula.response}' is constant (every value is {y[0]:g}): "
                        "there is no variation to model")
    return y, matrices.common


def _is_offset(name: str) -> bool:
    return name.startswith("offset(")


_OFFSET_CALL = re.compile(r"(?<![\w.`])offset\s*\(")


def _unwrap_offsets(expr: str) -> str:
    """``x + offset(np.log(e))`` -> ``x +       (np.log(e))``: the offsets' arguments checked as
    any expression, at the same positions (GLMMs admit offsets; LMMs refuse them)."""
    out = expr
    for match in _OFFSET_CALL.finditer(expr):
        start = match.start()
        out = out[:start] + " " * len("offset") + out[start + len("offset"):]
    return out


def _term_degree(name: str, term) -> int:
    """The order of a fixed term (R's ``attr(terms, "order")``): its number of variables."""
    return 0 if name == "Intercept" else len(getattr(term, "components", ())) or 1


def _r_column_order(common, n_columns: int) -> list[int]:
    """Column indices of formulae's fixed matrix in R's term order: terms sorted by their
    degree, formula order among equals (``a*b + x`` -> ``a, b, x, a:b``; formulae keeps
    ``a, b, a:b, x``). lme4's coefficient order and lmerTest's sequential (type I) tests
    follow it."""
    slices = getattr(common, "slices", None) or {}
    terms = getattr(common, "terms", None) or {}
    if not slices:
        return list(range(n_columns))
    ranked = sorted(slices, key=lambda name: _term_degree(name, terms.get(name)))  # stable
    order = [i for name in ranked for i in range(n_columns)[slices[name]]]
    return order if sorted(order) == list(range(n_columns)) else list(range(n_columns))


def _full_rank(common, data: pd.DataFrame):
    """Drop aliased columns as lme4 does (pivoted QR, tolerance 1e-7), with a warning.
    ``offset(...)`` columns (admitted for GLMMs only) are split off and summed."""
    if common is None:
        raise FormulaError("the fixed part has no columns; write '1' for an intercept-only model")
    X = np.asarray(common.design_matrix, dtype=float)
    raw_names = [str(n) for n in common.as_dataframe().columns]
    all_names = tuple(_lme4_name(n) for n in raw_names)
    _check_unique_names(raw_names, all_names, "fixed-effect")
    _check_finite_columns(X, all_names, data, "the fixed-effect")
    is_off = np.array([_is_offset(n) for n in all_names], dtype=bool)
    offset = X[:, is_off].sum(axis=1) if is_off.any() else None
    order = [i for i in _r_column_order(common, len(all_names)) if not is_off[i]]
    X = X[:, order]
    names = tuple(all_names[i] for i in order)
    if X.shape[1] == 0:
        return X, names, all_names, (), offset
    keep = independent_columns(X)
    if len(keep) == X.shape[1]:
        return X, names, all_names, (), offset
    kept = set(keep)
    dropped = tuple(names[i] for i in range(len(names)) if i not in kept)
    warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
                  f"column(s) / coefficient(s): {', '.join(dropped)}", UserWarning, stacklevel=4)
    return X[:, keep], tuple(names[i] for i in keep), all_names, dropped, offset


def independent_columns(X: np.ndarray, tol: float = 1e-7, block: int = 32) -> list[int]:
    """Indices of the columns of ``X`` kept by R's limited pivoting (lme4's rank check): a
    column is dropped when its residual on the span of the kept columns before it is at most
    ``tol`` times its norm, so later columns go first.

    A Cholesky factor of the Gram matrix decides a clearly full-rank matrix (its diagonal
    holds those residuals); otherwise a blocked Gram-Schmidt with reorthogonalization decides
    column by column, the projection on the kept basis done a block at a time by matrix
    products (a 1,000-level factor: about a second, where a column-at-a-time loop took 20-40 s).
    """
    n, p = X.shape
    peak = np.max(np.abs(X), axis=0) if n else np.zeros(p)
    scaled = X / np.where(peak > 0, peak, 1.0)  # no overflow in the norms of 1e200s
    norms = np.linalg.norm(scaled, axis=0)
    if p <= n and np.all(norms > 0):
        # Cholesky of the Gram matrix of the unit-norm columns: L[j, j] is column j's residual
        # on the columns before it. Squaring loses half the digits, so only a clear margin
        # (1e-5 against tol = 1e-7) decides "full rank" here; anything closer goes below.
        unit = scaled / norms
        try:
            chol = np.linalg.cholesky(unit.T @ unit)
        except np.linalg.LinAlgError:
            chol = None
        if chol is not None and np.all(np.diag(chol) > max(1e-5, 100.0 * tol)):
            return list(range(p))
    basis = np.empty((n, min(n, p)))
    k = 0
    keep: list[int] = []
    for start in range(0, p, block):
        columns = scaled[:, start:start + block].copy()
        if k:
            before = np.linalg.norm(columns, axis=0)
            columns -= basis[:, :k] @ (basis[:, :k].T @ columns)
            # a second pass where a column lost much of its length (Kahan-Parlett: twice is enough)
            again = np.linalg.norm(columns, axis=0) < 0.7 * before
            if again.any():
                columns[:, again] -= basis[:, :k] @ (basis[:, :k].T @ columns[:, again])
        first = k
        for offset in range(columns.shape[1]):
            j = start + offset
            residual = columns[:, offset]
            if k > first:
                for _ in range(2):
                    residual = residual - basis[:, first:k] @ (basis[:, first:k].T @ residual)
            size = np.linalg.norm(residual)
            if norms[j] > 0 and size > tol * norms[j] and k < basis.shape[1]:
                basis[:, k] = residual / size
                k += 1
                keep.append(j)
    return keep


# ---------------------------------------------------------------- random part
def _natural_key(values: pd.Series) -> list:
    """lme4 sorts numeric grouping columns numerically and text ones alphabetically; a
    pandas Categorical keeps its categories' order, as an R factor keeps its levels'."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return list(values.cat.codes)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return list(numeric)
    return list(values.astype(str))


def _kind(values: pd.Series) -> str:
    """A column's type as a reader names it: numbers, text, booleans, categories of ..."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return f"categories of {_kind(pd.Series(values.cat.categories))}"
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    return {"integer": "numbers", "floating": "numbers", "mixed-integer-float": "numbers", "decimal": "numbers",
            "string": "text", "boolean": "booleans"}.get(inferred, inferred)


def _level_label(value) -> str:
    """A level's name from its value alone, as R's as.character: 1.0 -> '1', 2.5 -> '2.5',
    1e20 -> '1e+20', so that new data name a level as the fitted data did whatever the
    other values of the column are."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.15g}"
    return str(value)


def _level_names(values: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(values) or values.dtype == object:
        return values.astype(object).map(_level_label)
    return values.astype(str)


def _factor(values: pd.Series) -> tuple[np.ndarray, np.ndarray, list]:
    """One grouping column: the code of each row, and the name and sort key of each code."""
    codes, uniques = pd.factorize(values, sort=False)
    distinct = pd.Series(uniques)
    return codes, _level_names(distinct).to_numpy(), _natural_key(distinct)


def _group_labels(data: pd.DataFrame, group_vars: tuple[str, ...]) -> list[str]:
    parts = []
    for var in group_vars:
        if var not in data.columns:
            raise DataError(f"grouping column '{var}' is not in the data (columns: "
                            f"{', '.join(str(c) for c in data.columns[:12])})")
        missing = data[var].isna().to_numpy()
        if missing.any():
            rows = ", ".join(str(r) for r in data.index[missing][:5]) + (" ..." if missing.sum() > 5 else "")
            raise DataError(f"grouping column '{var}' of the new data has {int(missing.sum())} missing "
                            f"value(s) (rows {rows}); give a level, or a new label for a new group")
        parts.append(_level_names(data[var]).to_numpy())
    return [":".join(items) for items in zip(*parts)]


def _build_block(term: RandomTerm, data: pd.DataFrame) -> RandomBlock:
    # a level is a combination of values (not its printed label: 'a:b' + 'c' vs 'a' + 'b:c');
    # work on the distinct values of each column, not on every row (InstEval: 73,421 rows)
    parts = [_factor(data[var]) for var in term.group_vars]
    flat = np.zeros(len(data), dtype=np.int64)  # mixed-radix number of each row's combination
    for codes, names, _ in parts:
        flat = flat * len(names) + codes
    distinct, inverse = np.unique(flat, return_inverse=True)
    combos = np.empty((len(distinct), len(parts)), dtype=np.int64)
    for k in reversed(range(len(parts))):
        combos[:, k] = distinct % len(parts[k][1])
        distinct = distinct // len(parts[k][1])
    order = sorted(range(len(combos)),
                   key=lambda i: tuple(keys[combos[i, k]] for k, (_, _, keys) in enumerate(parts)))
    rank = np.empty(len(combos), dtype=np.int64)
    rank[order] = np.arange(len(combos))
    codes = rank[np.ravel(inverse)]
    levels = tuple(":".join(names[combos[i, k]] for k, (_, names, _) in enumerate(parts)) for i in order)
    if len(set(levels)) < len(levels):
        counts = Counter(levels)
        clash = next(level for level in levels if counts[level] > 1)
        # which values print alike: one column of mixed types (1 and '1'), or a ':' inside a name
        alike = [repr(v) for var in term.group_vars for v in pd.unique(data[var]) if _level_label(v) == clash]
        if len(parts) == 1 and len(alike) > 1:
            raise DataError(f"grouping factor '{term.group}': the values {', '.join(alike[:3])} are of different "
                            f"types but print as the same level '{clash}' (R's as.character); make the column one "
                            f"type, e.g. data['{term.group_vars[0]}'].astype(str)")
        raise DataError(f"grouping factor '{term.group}': different combinations of "
                        f"{', '.join(term.group_vars)} print as the same level '{clash}' (a ':' inside "
                        "a level name); rename those levels")
    if len(levels) < 2:
        raise DataError(f"grouping factor '{term.group}' in {term.text} has only one level "
                        f"({levels[0]!r}); a random effect needs at least two groups")

    matrices = _formulae(term.expr, data, f"the random term {term.text}", term.position)
    common = matrices.common
    if common is None or np.asarray(common.design_matrix).shape[1] == 0:
        raise FormulaError(f"the random term {term.text} (position {term.position}) has no columns")
    X = np.asarray(common.design_matrix, dtype=float)
    raw_terms = [str(n) for n in common.as_dataframe().columns]
    terms = tuple(_lme4_name(n) for n in raw_terms)
    _check_unique_names(raw_terms, terms, f"random-effect ({term.text})")
    _check_finite_columns(X, terms, data, f"the random term {term.text}:")
    if not term.correlated and _has_factor(common):
        warnings.warn(f"'||' in {term.text} with a factor: bayeslmm gives every coefficient "
                      f"({', '.join(terms)}) its own independent variance; lme4 instead splits only "
                      f"the '+' terms, so the factor's columns stay correlated there. Write "
                      f"'(1 | {term.group}) + (0 + factor | {term.group})' for lme4's model",
                      UserWarning, stacklevel=4)  # build_design -> LMM -> caller (3.12 inlines comprehensions)
    return RandomBlock(group=term.group, terms=terms, correlated=term.correlated, X=X,
                       codes=codes, levels=levels, term=term, _evaluator=common)


def _has_factor(common) -> bool:
    """True when a term of the evaluated model matrix involves a categorical variable."""
    return any(getattr(var, "kind", None) == "categoric"
               for term in common.terms.values() for var in getattr(term, "components", ()))


def _check_overlapping_bars(blocks: list[RandomBlock]) -> None:
    """Two bars on one grouping factor must not share a coefficient: (1 | g) + (1 + x | g)
    has two intercept variances that the data cannot tell apart."""
    seen: dict[tuple[str, str], RandomBlock] = {}
    for block in blocks:
        for name in block.terms:
            other = seen.get((block.group, name))
            if other is not None:
                raise FormulaError(f"the random terms {other.term.text} (position {other.term.position}) "
                                   f"and {block.term.text} (position {block.term.position}) both give "
                                   f"'{block.group}' a '{name}' effect: the two variances could not be "
                                   f"told apart; keep it in one of them")
            seen[(block.group, name)] = block


def _check_random_sizes(blocks: list[RandomBlock], nobs: int, observation_level: bool = False) -> None:
    for block in blocks:
        if observation_level:  # glmer's checks of levels and effects against n default to "ignore"
            if block.n_levels > nobs:
                raise DataError(f"grouping factor '{block.group}' has {block.n_levels} levels for {nobs} "
                                "observations")
            continue
        if block.n_levels >= nobs:
            raise DataError(f"grouping factor '{block.group}' has {block.n_levels} levels for {nobs} "
                            "observations: the number of levels must be less than the number of "
                            "observations (every group needs replicates)")
        n_effects = block.n_levels * block.n_terms
        if n_effects >= nobs:  # lme4's check.nobs.vs.nRE: stop when n <= number of random effects
            raise DataError(f"number of observations (={nobs}) <= number of random effects (={n_effects}) for "
                            f"term {block.term.text} ({block.n_levels} levels x {block.n_terms} terms): the "
                            "random-effects parameters and the residual variance are unidentifiable; simplify it")


def _evaluate_new(evaluator, data: pd.DataFrame, expr: str) -> np.ndarray:
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"new data must be a pandas DataFrame, not {type(data).__name__}")
    columns = {str(c) for c in data.columns}
    # offsets: only in a GLMM's fitted formula (an LMM's was refused when it was parsed)
    missing = [name for name in dict.fromkeys(name for name, _ in expression_columns(_unwrap_offsets(expr)))
               if name not in columns]
    if missing:
        raise DataError(f"the new data lack column(s) {', '.join(repr(m) for m in missing)}, "
                        f"needed by '{expr}'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                matrix = np.asarray(evaluator.evaluate_new_data(data).design_matrix, dtype=float)
    except Exception as exc:
        raise DataError(f"cannot evaluate '{expr}' on the new data: {exc}") from exc
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        rows = ", ".join(str(r) for r in data.index[bad][:5]) + (" ..." if bad.sum() > 5 else "")
        raise DataError(f"'{expr}' gives {int(bad.sum())} row(s) of the new data a NaN or infinite value "
                        f"(rows {rows}): a missing value, or a log or square root of zero or a negative number?")
    return matrix
