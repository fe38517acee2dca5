"""Stage 2 for GLMMs: the response of a family (``cbind(s, f)``, 0/1, a two-level factor,
proportions with weights, counts), prior weights and ``offset(...)`` around the shared
:class:`~bayeslmm.frontend.design.Design`.

The response is evaluated here (a small evaluator: column names, numbers, arithmetic and
the formula's fixed table of functions), stored in the data under its own text as a
column name, and the formula's response is pointed at that column; everything else
(fixed part, bars, missing values, offset) is the design stage's work.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..errors import DataError, FormulaError
from ..family import Family
from .design import Design, build_design
from .formula import parse_formula

# the functions a response expression may call (as the design stage's table)
_FUNCS = {"log": np.log, "log1p": np.log1p, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs,
          "round": np.round, "log10": np.log10, "log2": np.log2}


@dataclass(frozen=True)
class GLMMDesign:
    """A :class:`Design` plus what a non-Gaussian family needs.

    Attributes
    ----------
    design : Design
    family : Family
    y : ndarray
        The response on the family's scale (proportions for the binomial).
    weights : ndarray
        Prior weights (the number of trials for a binomial response).
    offset : ndarray
        The summed ``offset(...)`` terms (zeros without one).
    response_label : str
        The response as written in the formula.
    """

    design: Design
    family: Family
    y: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    response_label: str

    @property
    def X(self) -> np.ndarray:
        return self.design.X

    @property
    def blocks(self):
        return self.design.blocks

    @property
    def nobs(self) -> int:
        return len(self.y)

    def with_family(self, family: Family) -> "GLMMDesign":
        return replace(self, family=family)


def _split_args(text: str) -> list[str]:
    depth, start, out = 0, 0, []
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return out


def evaluate_expression(expr: str, data: pd.DataFrame) -> np.ndarray:
    """Evaluate a response expression: column names (``name`` or ```a name```), numbers,
    ``+ - * / **``, and ``log exp sqrt abs round log10 log2 log1p`` (also as ``np.``)."""
    names: dict[str, str] = {}

    def quote(match_text: str) -> str:
        key = f"__col{len(names)}__"
        names[key] = match_text
        return key

    text, out, i = expr, [], 0
    while i < len(text):
        if text[i] == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise FormulaError(f"unbalanced backtick in the response '{expr}'")
            out.append(quote(text[i + 1:j]))
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    try:
        tree = ast.parse("".join(out).strip(), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"cannot read the response '{expr}': {exc.msg}") from exc

    def column(name: str) -> np.ndarray:
        if name not in data.columns:
            raise DataError(f"unknown column '{name}' in the response '{expr}'")
        values = data[name]
        if pd.api.types.is_bool_dtype(values):
            return values.to_numpy(dtype=float)
        if not pd.api.types.is_numeric_dtype(values):
            raise DataError(f"column '{name}' in the response '{expr}' is not numeric ({values.dtype})")
        return values.to_numpy(dtype=float)

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Name):
            return column(names.get(node.id, node.id))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            a, b = walk(node.left), walk(node.right)
            with np.errstate(divide="ignore", invalid="ignore"):
                return {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                        ast.Div: np.divide, ast.Pow: np.power}[type(node.op)](a, b)
        if isinstance(node, ast.Call) and not node.keywords and len(node.args) == 1:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id in ("np", "numpy") else None)
            if name in _FUNCS:
                with np.errstate(divide="ignore", invalid="ignore"):
                    return _FUNCS[name](walk(node.args[0]))
        raise FormulaError(f"the response '{expr}' uses something a response cannot: write column names, "
                           f"numbers, + - * / **, or {', '.join(sorted(_FUNCS))}")

    value = walk(tree)
    return np.broadcast_to(np.asarray(value, dtype=float), (len(data),)).copy()


def _factor_response(values: pd.Series, name: str) -> np.ndarray:
    """R's rule for a factor response: the first level is failure, every other success."""
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=float)
    if isinstance(values.dtype, pd.CategoricalDtype):
        levels = list(values.cat.remove_unused_categories().cat.categories)
    else:
        levels = sorted(pd.unique(values.dropna()).tolist(), key=str)
    if len(levels) < 2:
        raise DataError(f"the response '{name}' has one level ({levels[0]!r} if any): nothing to model")
    out = (values != levels[0]).to_numpy(dtype=float)
    out[values.isna().to_numpy()] = np.nan
    return out


def build_glmm_design(formula: str, data: pd.DataFrame, family: Family, weights=None) -> GLMMDesign:
    """Parse ``formula`` and build the design of a GLMM of ``family``.

    Parameters
    ----------
    formula : str
        lme4 syntax; the response may be ``cbind(successes, failures)`` (binomial), a
        0/1, logical or two-level factor column (binomial; the first level is failure,
        as in R), a proportion (binomial, with ``weights`` = trials), or counts. The fixed
        part may hold ``offset(expr)`` terms.
    data : pandas.DataFrame
    family : Family
    weights : str or array-like, optional
        Prior weights: a column name or one value per row of ``data``.

    Raises
    ------
    DataError, FormulaError
        Bad response (not what the family takes, naming the values), unknown columns,
        a ``cbind`` without two arguments or with a non-binomial family.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    parsed = parse_formula(formula, glmm=True)
    response = parsed.response.strip()
    n_trials = None
    if response.startswith("cbind(") and response.endswith(")"):
        args = _split_args(response[len("cbind("):-1])
        if len(args) != 2:
            raise FormulaError(f"cbind() in the response takes two arguments (successes, failures), got {len(args)}")
        if family.name != "binomial":
            raise FormulaError(f"a cbind(successes, failures) response needs family='binomial', not {family.name!r}")
        s, f = (evaluate_expression(a, data) for a in args)
        n_trials = s + f
        if np.any((s < 0) | (f < 0)):
            raise DataError(f"cbind({args[0]}, {args[1]}): negative counts in {int(np.sum((s < 0) | (f < 0)))} row(s)")
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(n_trials > 0, s / np.where(n_trials > 0, n_trials, 1.0), 0.0)
        y[np.isnan(s) | np.isnan(f)] = np.nan
    else:
        bare = response[1:-1] if response.startswith("`") and response.endswith("`") else response
        if bare in data.columns and not pd.api.types.is_numeric_dtype(data[bare]) or (
                bare in data.columns and pd.api.types.is_bool_dtype(data[bare])):
            if family.name != "binomial":
                raise DataError(f"the response '{bare}' is not numeric ({data[bare].dtype}); a {family.name} "
                                "model needs numbers")
            y = _factor_response(data[bare], bare)
        else:
            y = evaluate_expression(response, data)
    if weights is None:
        wt = np.ones(len(data))
    elif isinstance(weights, str):
        if weights not in data.columns:
            raise DataError(f"weights column '{weights}' is not in the data")
        wt = data[weights].to_numpy(dtype=float)
    else:
        try:
            wt = np.asarray(weights, dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"weights must be a column name or one number per row, not {type(weights).__name__}"
                            ) from None
        if wt.shape != (len(data),):
            raise DataError(f"weights must have one value per row ({len(data)}), got shape {wt.shape}")
    if n_trials is not None:
        wt = wt * n_trials
    if np.any(wt[np.isfinite(wt)] < 0):
        raise DataError("weights must be non-negative")
    y = y.copy()
    y[~np.isfinite(wt)] = np.nan
    # the response goes in under its own text, so messages name it as the user wrote it
    label = response.replace("`", "")
    aug = data.copy(deep=False)
    aug[label] = y
    aug["__blm_weights__"] = wt
    parsed = replace(parsed, response=f"`{label}`")
    design = build_design(parsed, aug, glmm=True)
    wt_used = design.data["__blm_weights__"].to_numpy(dtype=float)
    y_used = design.y
    family.validate(y_used, wt_used)
    offset = design.offset if design.offset is not None else np.zeros(design.nobs)
    return GLMMDesign(design=design, family=family, y=y_used, weights=wt_used, offset=offset,
                      response_label=label)
