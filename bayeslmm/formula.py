"""Stage 1: formula text -> parsed terms.

lme4's random-effect syntax is parsed here, by hand, because formula libraries split
``(1 + x | g)`` into independent pieces and so lose the fact that the bar is one
correlated block. The column expressions inside each bar and the fixed part are left as
text; the design stage evaluates them with ``formulae``.

Supported: ``(1 | g)``, ``(x | g)``, ``(1 + x | g)``, ``(0 + x | g)``, ``(x || g)``,
``(1 | a/b)`` (nesting: ``(1 | a) + (1 | b:a)``, named as lme4 names it), ``(1 | a:b)``,
any number of bars on one or several (crossed) factors, and anything ``formulae``
understands in the fixed part (``a * b``, ``I(x - 5)``, ``np.log(y)``, ``0 +``, ``- 1``).
Column names may be quoted with backticks (```my column```, as in R).

The whole formula is checked here, before ``formulae`` sees it, because formulae ignores
some malformed input silently (``y ~ x z`` fits ``y ~ x``) and reports the rest without a
position: every :class:`~bayeslmm.errors.FormulaError` raised here names the 0-based
character position and draws a caret under it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FormulaError

# Column names as Python (and formulae) read them: letters of any script, digits, _ and .
_IDENTIFIER = re.compile(r"^(?:[^\W\d]|\.)[\w.]*$")
_NAME = re.compile(r"(?:[^\W\d]|\.(?![\d]))[\w.]*")
_MAX_DEPTH = 50
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


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
        With the 0-based position of the problem: not a string, unbalanced parentheses or
        backticks, a missing or repeated ``~``, no response, an empty term or empty
        parentheses, an operator with nothing on one side, two terms with no operator
        between them, a ``|`` outside parentheses, a bar with nothing on one side or
        two ``|`` in one bar, a grouping factor that is not a column name, a subtracted
        bar, the same bar twice, ``.`` for all columns, a character formulas do not use.
    """
    if not isinstance(text, str):
        raise FormulaError(f"the formula must be a string like 'y ~ x + (1 | g)', "
                           f"not {type(text).__name__}")
    if not text.strip():
        raise FormulaError("the formula is empty; write it like 'y ~ x + (1 | g)'")
    scan = _mask_backticks(text)
    _check_parentheses(text, scan)
    tildes = [i for i, depth in _top_level(scan) if scan[i] == "~" and depth == 0]
    if not tildes:
        raise FormulaError(f"the formula {text!r} has no '~': write the response on its left, "
                           "like 'y ~ x + (1 | g)'")
    if len(tildes) > 1:
        raise FormulaError(f"the formula has a second '~' at position {tildes[1]}{_point(text, tildes[1])}")
    split = tildes[0]
    response = text[:split].strip()
    if not response:
        raise FormulaError(f"the formula has no response left of '~' (position {split})"
                           f"{_point(text, split)}")

    fixed_pieces: list[str] = []
    random_terms: list[RandomTerm] = []
    for sign, piece, start in _split_terms(text, split + 1, scan):
        if _is_bar(scan[start:start + len(piece)]):
            if sign == "-":
                raise FormulaError(f"a random-effect term cannot be subtracted (position {start})"
                                   f"{_point(text, start)}")
            random_terms.extend(_parse_bar(text, piece, start, scan[start:start + len(piece)]))
        else:
            _check_sum(text, start, start + len(piece))
            fixed_pieces.append(piece if sign == "+" else f"- {piece}")

    _check_duplicates(text, random_terms)
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


def _mask_backticks(text: str) -> str:
    """``text`` with the inside of every `quoted name` replaced by '_' (same length), so that
    structure is found on the mask while names are read from the original."""
    out, inside, opened = [], False, -1
    for i, ch in enumerate(text):
        if ch == "`":
            inside, opened = not inside, i
            out.append(ch)
        else:
            out.append("_" if inside else ch)
    if inside:
        raise FormulaError(f"unclosed '`' at position {opened}: quote a column name like `my column`"
                           f"{_point(text, opened)}")
    return "".join(out)


def _check_parentheses(text: str, scan: str) -> None:
    opened: list[int] = []
    for i, ch in enumerate(scan):
        if ch == "(":
            opened.append(i)
            if len(opened) > _MAX_DEPTH:  # the checks below recurse once per level
                raise FormulaError(f"parentheses nested more than {_MAX_DEPTH} deep at position {i}"
                                   f"{_point(text, i)}")
        elif ch == ")":
            if not opened:
                raise FormulaError(f"unbalanced parenthesis: ')' at position {i} has no matching '('"
                                   f"{_point(text, i)}")
            opened.pop()
    if opened:
        raise FormulaError(f"unbalanced parenthesis: '(' at position {opened[-1]} is never closed"
                           f"{_point(text, opened[-1])}")


def _split_terms(text: str, start: int, scan: str) -> list[tuple[str, str, int]]:
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
                if begin > start:  # the sign before the gap has nothing after it
                    at, what = begin - 1, f"'{sign}' has no term after it"
                else:
                    at, what = end, f"'{next_sign}' has no term before it"
                raise FormulaError(f"empty term at position {at}: {what}{_point(text, at)}")
        else:
            pieces.append((sign, piece, where))
        sign, begin = next_sign, end + 1

    i = start
    while i < rhs_end:
        ch = scan[i]
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


def _parse_bar(text: str, piece: str, start: int, scan: str) -> list[RandomTerm]:
    inner, scan_inner = piece[1:-1], scan[1:-1]
    depth, bar = 0, -1
    for i, ch in enumerate(scan_inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            bar = i
            break
    double = scan_inner[bar + 1: bar + 2] == "|"
    expr = inner[:bar].strip()
    group_text = inner[bar + (2 if double else 1):].strip()
    bar_position = start + 1 + bar
    if not expr:
        raise FormulaError(f"nothing left of '|' in {piece} (position {bar_position}): write "
                           f"'(1 | g)' for a random intercept{_point(text, bar_position)}")
    if not group_text:
        raise FormulaError(f"no grouping factor right of '|' in {piece} (position {bar_position})"
                           f"{_point(text, bar_position)}")
    scan_group = scan_inner[bar + (2 if double else 1):]
    if "|" in scan_group:
        where = start + 1 + bar + (2 if double else 1) + scan_group.index("|")
        raise FormulaError(f"more than one '|' in {piece} (position {where}); write each random "
                           f"term in its own parentheses, like '(1 | g) + (1 | h)'{_point(text, where)}")
    expr_start = start + 1 + (len(inner[:bar]) - len(inner[:bar].lstrip()))
    _check_sum(text, expr_start, expr_start + len(expr))
    correlated = not double
    return [RandomTerm(expr=expr, group=name, group_vars=vars_, correlated=correlated,
                       text=piece, position=start)
            for name, vars_ in _expand_groups(text, start + 1 + bar + (2 if double else 1)
                                              + len(scan_group) - len(scan_group.lstrip()),
                                              len(group_text))]


def _split_at(text: str, begin: int, end: int, scan: str, sep: str) -> list[tuple[int, int]]:
    """(begin, end) spans of text[begin:end] between the separators found on ``scan``."""
    spans, left = [], begin
    for i in range(begin, end):
        if scan[i] == sep:
            spans.append((left, i))
            left = i + 1
    spans.append((left, end))
    return spans


def _expand_groups(text: str, position: int, length: int) -> list[tuple[str, tuple[str, ...]]]:
    """``a/b/c`` -> a, b:a, c:b:a (lme4's names); ``a:b`` -> one factor; `a b` quoted."""
    scan = _mask_backticks(text)
    group_text = text[position:position + length]
    nested: list[list[str]] = []
    for left, right in _split_at(text, position, position + length, scan, "/"):
        names = []
        for a, b in _split_at(text, left, right, scan, ":"):
            raw = text[a:b].strip()
            where = a + len(text[a:b]) - len(text[a:b].lstrip())
            quoted = len(raw) > 2 and raw[0] == raw[-1] == "`"
            if not (quoted or _IDENTIFIER.match(raw)):
                what = (f"'{raw}' (position {where}) is not a column name" if raw else
                        f"in '{group_text}' (position {min(where, len(text) - 1)}) has an empty name")
                raise FormulaError(f"the grouping factor {what}: "
                                   f"write a column name, or a:b, a/b of column names"
                                   f"{_point(text, min(where, len(text) - 1))}")
            names.append(raw[1:-1] if quoted else raw)
        nested.append(names)
    result = []
    for depth in range(1, len(nested) + 1):
        parts: list[str] = []
        for level in nested[:depth]:
            parts.extend(level)
        if depth == 1:
            result.append((":".join(parts), tuple(parts)))
        else:
            # lme4 names the nested factor innermost first: batch/cask -> cask:batch
            n_inner = len(nested[depth - 1])
            ordered = tuple(parts[-n_inner:] + parts[:-n_inner][::-1])
            result.append((":".join(ordered), ordered))
    return result


# ---------------------------------------------------------------- expression checks
# formulae silently ignores some malformed input (``y ~ x f`` fits ``y ~ x``) and reports
# other input without a position; these checks catch it first and point at the spot.
def _check_duplicates(text: str, terms: list[RandomTerm]) -> None:
    seen: dict[tuple, RandomTerm] = {}
    for term in terms:
        key = (re.sub(r"\s+", "", term.expr), term.group, term.correlated)
        if key in seen:
            first = seen[key]
            raise FormulaError(f"the random term {term.text} (position {term.position}) repeats "
                               f"{first.text} (position {first.position}) on '{term.group}': "
                               f"the two variances could not be told apart; remove one"
                               f"{_point(text, term.position)}")
        seen[key] = term


def _matching(text: str, open_at: int) -> int:
    """Index of the ')' that closes the '(' at ``open_at`` (parentheses are balanced)."""
    depth = 0
    scan = _mask_backticks(text)
    for i in range(open_at, len(text)):
        if scan[i] == "(":
            depth += 1
        elif scan[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return len(text) - 1  # unreachable after _check_parentheses


def _tokens(text: str, begin: int, end: int):
    """Yield (kind, token, position) over text[begin:end]: kind is 'operand', 'sum' (+ -)
    or 'binary' (* : / ** ^ %in%). Parenthesized groups are checked recursively; the
    arguments of a function call are Python code and are left to the evaluator."""
    i = begin
    while i < end:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "`":
            close = text.index("`", i + 1)
            if close == i + 1:
                raise FormulaError(f"empty `` at position {i}{_point(text, i)}")
            yield "operand", text[i:close + 1], i
            i = close + 1
            continue
        name = _NAME.match(text, i, end)
        number = _NUMBER.match(text, i, end)
        if number:  # a name cannot start with a digit or '.<digit>', so at most one matches
            yield "operand", number.group(), i
            i = number.end()
        elif name:
            j = name.end()
            k = j
            while k < end and text[k].isspace():
                k += 1
            if k < end and text[k] == "(":  # a function call: skip its arguments
                close = _matching(text, k)
                yield "operand", text[i:close + 1], i
                i = close + 1
            else:
                if not name.group().strip("."):
                    raise FormulaError(f"'.' (all other columns) at position {i} is not supported: "
                                       f"name the columns{_point(text, i)}")
                yield "operand", name.group(), i
                i = j
        elif ch == "(":
            close = _matching(text, i)
            if not text[i + 1:close].strip():
                raise FormulaError(f"empty parentheses at position {i}{_point(text, i)}")
            _check_sum(text, i + 1, close)
            yield "operand", text[i:close + 1], i
            i = close + 1
        elif ch in "+-":
            yield "sum", ch, i
            i += 1
        elif text.startswith("%in%", i):
            yield "binary", "%in%", i
            i += 4
        elif text.startswith("**", i):
            yield "binary", "**", i
            i += 2
        elif ch in "*:/^":
            yield "binary", ch, i
            i += 1
        elif ch == "|":
            raise FormulaError(f"'|' at position {i} is outside a random-effect term: write each one "
                               f"in its own parentheses, like '(1 | g)'{_point(text, i)}")
        elif ch == "~":
            raise FormulaError(f"unexpected '~' at position {i}{_point(text, i)}")
        else:
            raise FormulaError(f"unexpected character {ch!r} at position {i}{_point(text, i)}")


def _check_sum(text: str, begin: int, end: int) -> None:
    """Check that text[begin:end] is operands joined by operators (a leading sign allowed)."""
    previous, previous_at, token_text = "start", begin, ""
    for kind, token, at in _tokens(text, begin, end):
        if kind == "operand":
            if previous == "operand":
                raise FormulaError(f"missing operator between '{token_text}' and '{token}' at position "
                                   f"{at}: join terms with '+' (or ':' / '*' for interactions)"
                                   f"{_point(text, at)}")
        elif kind == "sum":
            if previous == "sum":
                raise FormulaError(f"empty term at position {previous_at}: '{token_text}' has no term "
                                   f"after it{_point(text, previous_at)}")
            if previous == "binary":
                raise FormulaError(f"'{token_text}' has nothing on its right at position {previous_at}"
                                   f"{_point(text, previous_at)}")
        else:  # binary
            if previous != "operand":
                raise FormulaError(f"'{token}' at position {at} has nothing on its left{_point(text, at)}")
        previous, previous_at, token_text = kind, at, token
    if previous == "start":
        where = min(begin, len(text) - 1)
        raise FormulaError(f"empty term at position {where}{_point(text, where)}")
    if previous != "operand":
        if previous == "sum":
            raise FormulaError(f"empty term at position {previous_at}: '{token_text}' has no term after "
                               f"it{_point(text, previous_at)}")
        raise FormulaError(f"'{token_text}' has nothing on its right at position {previous_at}"
                           f"{_point(text, previous_at)}")
