"""Stage 1: formula text -> parsed terms.

lme4's random-effect syntax is parsed here, by hand, because formula libraries split
``(1 + x | g)`` into independent pieces and so lose the fact that the bar is one
correlated block. The column expressions inside each bar and the fixed part are left as
text; the design stage evaluates them with ``formulae``.

Supported: ``(1 | g)``, ``(x | g)``, ``(1 + x | g)``, ``(0 + x | g)``, ``(x || g)``,
``(1 | a/b)`` (nesting: ``(1 | a) + (1 | b:a)``, named as lme4 names it), ``(1 | a:b)``,
any number of bars on one or several (crossed) factors, and anything ``formulae``
understands in the fixed part (``a * b``, ``I(x - 5)``, ``np.log(y)``, ``0 +``, ``- 1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FormulaError

_IDENTIFIER = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class RandomTerm:
    """One bar of the formula, after nesting has been expanded.

    Attributes
    ----------
    expr : str
        The model-matrix expression left of the bar (``"Days"``, ``"0 + x"``).
    group : str
        The grouping factor's name as lme4 prints it (``"Subject"``, ``"cask:batch"``).
    group_vars : tuple of str
        The data columns whose combinations define the levels (``("cask", "batch")``).
    correlated : bool
        ``False`` for ``||``: the coefficients get independent variances.
    text : str
        The bar as written, for messages.
    position : int
        0-based character offset of the bar in the formula, for messages.
    """

    expr: str
    group: str
    group_vars: tuple[str, ...]
    correlated: bool
    text: str
    position: int


@dataclass(frozen=True)
class ParsedFormula:
    """A mixed-model formula split into response, fixed part and random bars."""

    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]

    @property
    def fixed_formula(self) -> str:
        """The fixed part as a one-sided formula text for ``formulae``."""
        return f"{self.response} ~ {self.fixed}"


def parse_formula(text: str) -> ParsedFormula:
    """Parse an lme4-style mixed-model formula.

    Parameters
    ----------
    text : str
        For example ``"Reaction ~ Days + (Days | Subject)"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    FormulaError
        With the 0-based position of the problem: unbalanced parentheses, a missing or
        repeated ``~``, an empty term, a bar with nothing on one side.
    """
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("the formula is empty; write it like 'y ~ x + (1 | g)'")
    _check_parentheses(text)
    tildes = [i for i, depth in _top_level(text) if text[i] == "~" and depth == 0]
    if not tildes:
        raise FormulaError(f"the formula {text!r} has no '~': write the response on its left, "
                           "like 'y ~ x + (1 | g)'")
    if len(tildes) > 1:
        raise FormulaError(f"the formula has a second '~' at position {tildes[1]}: {_point(text, tildes[1])}")
    split = tildes[0]
    response = text[:split].strip()
    if not response:
        raise FormulaError(f"the formula has no response left of '~' (position {split}): "
                           f"{_point(text, split)}")

    fixed_pieces: list[str] = []
    random_terms: list[RandomTerm] = []
    for sign, piece, start in _split_terms(text, split + 1):
        if _is_bar(piece):
            if sign == "-":
                raise FormulaError(f"a random-effect term cannot be subtracted (position {start}): "
                                   f"{_point(text, start)}")
            random_terms.extend(_parse_bar(text, piece, start))
        else:
            fixed_pieces.append(piece if sign == "+" else f"- {piece}")

    fixed = " + ".join(p for p in fixed_pieces if not p.startswith("-"))
    removals = " ".join(p for p in fixed_pieces if p.startswith("-"))
    fixed = (fixed or "1") + (f" {removals}" if removals else "")
    return ParsedFormula(text=text, response=response, fixed=fixed, random=tuple(random_terms))


def _top_level(text: str):
    """Yield (index, depth) for every character; depth counts enclosing parentheses."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == ")":
            depth -= 1
        yield i, depth
        if ch == "(":
            depth += 1


def _point(text: str, position: int) -> str:
    """The formula with a caret under ``position``, for error messages."""
    return f"\n    {text}\n    {' ' * position}^"


def _check_parentheses(text: str) -> None:
    opened: list[int] = []
    for i, ch in enumerate(text):
        if ch == "(":
            opened.append(i)
        elif ch == ")":
            if not opened:
                raise FormulaError(f"unbalanced parenthesis: ')' at position {i} has no matching '(':"
                                   f"{_point(text, i)}")
            opened.pop()
    if opened:
        raise FormulaError(f"unbalanced parenthesis: '(' at position {opened[-1]} is never closed:"
                           f"{_point(text, opened[-1])}")


def _split_terms(text: str, start: int) -> list[tuple[str, str, int]]:
    """Split the right-hand side at top-level + and - into (sign, piece, position)."""
    pieces: list[tuple[str, str, int]] = []
    sign, begin, depth = "+", start, 0
    rhs_end = len(text)

    def close(end: int, next_sign: str) -> None:
        nonlocal sign, begin
        raw = text[begin:end]
        piece = raw.strip()
        where = begin + (len(raw) - len(raw.lstrip()))
        if not piece:
            # "- 1" at the very start is the only place a sign may open the side
            if not (not pieces and sign == "+" and next_sign == "-" and begin == start):
                raise FormulaError(f"empty term at position {min(where, rhs_end - 1)}: "
                                   f"{_point(text, min(where, rhs_end - 1))}")
        else:
            pieces.append((sign, piece, where))
        sign, begin = next_sign, end + 1

    i = start
    while i < rhs_end:
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and ch in "+-":
            # a '-' inside a number like 1e-5 is not a term separator
            if ch == "-" and i > start and re.match(r".*\d[eE]$", text[begin:i]):
                i += 1
                continue
            close(i, ch)
        i += 1
    close(rhs_end, "+")
    return pieces


def _is_bar(piece: str) -> bool:
    """True for a parenthesized term with a '|' at its own top level."""
    if not (piece.startswith("(") and piece.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(piece):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i != len(piece) - 1:
                return False  # "(a) + (b)" shapes are not one parenthesized term
        elif ch == "|" and depth == 1:
            return True
    return False


def _parse_bar(text: str, piece: str, start: int) -> list[RandomTerm]:
    inner = piece[1:-1]
    depth, bar = 0, -1
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            bar = i
            break
    double = inner[bar + 1: bar + 2] == "|"
    expr = inner[:bar].strip()
    group_text = inner[bar + (2 if double else 1):].strip()
    bar_position = start + 1 + bar
    if not expr:
        raise FormulaError(f"nothing left of '|' in {piece} (position {bar_position}): write "
                           f"'(1 | g)' for a random intercept{_point(text, bar_position)}")
    if not group_text:
        raise FormulaError(f"no grouping factor right of '|' in {piece} (position {bar_position})"
                           f"{_point(text, bar_position)}")
    if "|" in group_text:
        raise FormulaError(f"more than one '|' in {piece} (position {start})")
    correlated = not double
    return [RandomTerm(expr=expr, group=name, group_vars=vars_, correlated=correlated,
                       text=piece, position=start)
            for name, vars_ in _expand_groups(text, group_text, start + 1 + inner.index(group_text))]


def _expand_groups(text: str, group_text: str, position: int) -> list[tuple[str, tuple[str, ...]]]:
    """``a/b/c`` -> a, b:a, c:b:a (lme4's names); ``a:b`` -> one factor."""
    nested = [part.strip() for part in group_text.split("/")]
    result = []
    for depth in range(1, len(nested) + 1):
        parts: list[str] = []
        for level in nested[:depth]:
            parts_here = [p.strip() for p in level.split(":")]
            for p in parts_here:
                if not _IDENTIFIER.match(p):
                    where = position + max(group_text.find(p), 0)
                    what = f"'{p}'" if p else "an empty name"
                    raise FormulaError(f"the grouping factor {what} in '{group_text}' (position {where}) "
                                       f"must be a column name (or a:b, a/b of column names)"
                                       f"{_point(text, where)}")
            parts.extend(parts_here)
        if depth == 1:
            result.append((":".join(parts), tuple(parts)))
        else:
            # lme4 names the nested factor innermost first: batch/cask -> cask:batch
            n_inner = len(nested[depth - 1].split(":"))
            ordered = tuple(parts[-n_inner:] + parts[:-n_inner][::-1])
            result.append((":".join(ordered), ordered))
    return result
