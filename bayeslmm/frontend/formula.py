"""Stage 1: formula text -> parsed terms.

lme4's random-effect syntax is parsed here, by hand, because formula libraries split
``(1 + x | g)`` into independent pieces and so lose the fact that the bar is one
correlated block. The column expressions inside each bar and the fixed part are left as
text; the design stage evaluates them with ``formulae``.

Supported: ``(1 | g)``, ``(x | g)``, ``(1 + x | g)``, ``(0 + x | g)``, ``(x || g)``,
``(1 | a/b)`` (nesting: ``(1 | a) + (1 | b:a)``, named as lme4 names it), ``(1 | a:b)``,
any number of bars on one or several (crossed) factors, and in the fixed part and left of
each bar: column names, numbers, ``+ - * : / ^ ** %in%`` between terms (``a * b``, ``0 +``,
``- 1``) and calls of a fixed table of transforms (:data:`TRANSFORMS`): ``I()`` with
arithmetic and comparisons, ``log``, ``log10``, ``log2``, ``log1p``, ``exp``, ``sqrt``,
``abs`` (also spelled ``np.log`` or ``numpy.log``), ``center``, ``scale``, ``standardize``,
``C()`` with the contrasts ``Treatment``/``Sum``, ``T()``, ``S()`` and ``poly()``. Column
names may be quoted with backticks (```my column```, as in R).

A formula is data, not code: every call is read with Python's ``ast`` and checked node by
node against that table before anything evaluates it (no attributes, subscripts, lambdas,
comprehensions, f-strings, unknown keywords), and the design stage hands ``formulae`` an
environment holding nothing else; this holds for every entry point, files included.

The whole formula is checked here, before ``formulae`` sees it, because formulae ignores
some malformed input silently (``y ~ x z`` fits ``y ~ x``) and reports the rest without a
position: every :class:`~bayeslmm.errors.FormulaError` raised here names the 0-based
character position and draws a caret under it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import numpy as np

from ..errors import FormulaError

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


def parse_formula(text: str, glmm: bool = False) -> ParsedFormula:
    """Parse an lme4-style mixed-model formula.

    Parameters
    ----------
    text : str
        For example ``"Reaction ~ Days + (Days | Subject)"``.
    glmm : bool
        A generalized model's formula (glmer's): the response may be
        ``cbind(successes, failures)`` and the fixed part may hold ``offset(expr)`` terms,
        each argument checked against the table of transforms like any expression.

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
    if glmm and _CBIND.fullmatch(response):
        _check_cbind(text, split, scan)
    else:
        _check_response(text, split, scan)
    # offset(expr) (GLMMs): checked as '      (expr)', at the same positions
    checked = _blank_offsets(text) if glmm else text
    checked_scan = _mask_backticks(checked) if glmm else scan

    fixed_pieces: list[str] = []
    random_terms: list[RandomTerm] = []
    for sign, piece, start in _split_terms(text, split + 1, scan):
        if _is_bar(scan[start:start + len(piece)]):
            if sign == "-":
                raise FormulaError(f"a random-effect term cannot be subtracted (position {start})"
                                   f"{_point(text, start)}")
            random_terms.extend(_parse_bar(text, piece, start, scan))
        else:
            _check_sum(checked, start, start + len(piece), checked_scan)
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
    """``text`` with the inside of every `quoted name` and every 'text literal' replaced by
    '_' (same length), so that structure is found on the mask while names are read from the
    original.

    Literals are delimited as formulae's scanner delimits them (a string ends at the next
    ' or "), and refused where Python would read them differently (mixed quotes, a
    backslash, a prefix such as f'' or b''): the call checker reads the same characters
    with Python's ``ast``, so both must see the same tokens.
    """
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "`":
            close = text.find("`", i + 1)
            if close < 0:
                raise FormulaError(f"unclosed '`' at position {i}: quote a column name like `my column`"
                                   f"{_point(text, i)}")
            out.append("`" + "_" * (close - i - 1) + "`")
            i = close + 1
        elif ch in "'\"":
            close = next((k for k in range(i + 1, n) if text[k] in "'\""), -1)
            if close < 0:
                raise FormulaError(f"unclosed text literal at position {i}{_point(text, i)}")
            body = text[i + 1:close]
            if text[close] != ch or "\\" in body or "\n" in body:
                raise FormulaError(f"the text literal at position {i} mixes quotes or holds a backslash or a "
                                   f"line break: write it like 'b'{_point(text, i)}")
            if i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
                raise FormulaError(f"a prefixed text literal ({text[i - 1]}'...') at position {i - 1} is not "
                                   f"allowed in a formula: write plain 'text'{_point(text, i - 1)}")
            out.append(ch + "_" * (close - i - 1) + ch)
            i = close + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_EXPONENT_NUMBER = re.compile(r"(?<![\w.])(?:\d+\.?\d*|\.\d+)[eE][+-]?\d+(?![\w.])")


def decimal_literals(text: str) -> str:
    """``I(x * 1e-3)`` -> ``I(x * 0.001)``: formulae's scanner reads no exponents, so every
    number written with one is handed to it in positional notation (the shortest digits that
    give the same float; R prints such a coefficient name the same way). Quoted names and
    text literals are left alone.

    Raises
    ------
    FormulaError
        A number too large for a float (``1e400``), with its position.
    """
    scan = _mask_backticks(text)
    out, last = [], 0
    for match in _EXPONENT_NUMBER.finditer(scan):
        value = float(match.group())
        if not np.isfinite(value):
            raise FormulaError(f"the number {match.group()} at position {match.start()} is too large for a "
                               f"floating-point number{_point(text, match.start())}")
        if value == int(value) and abs(value) < 2.0 ** 53:
            digits = str(int(value))  # a whole number stays one, as in formulae ('1000')
        else:  # a fraction, or too large for exact int arithmetic with an integer column
            digits = np.format_float_positional(value, unique=True, trim="0")
        out.append(text[last:match.start()] + digits)
        last = match.end()
    return "".join(out) + text[last:]


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


def _parse_bar(text: str, piece: str, start: int, full_scan: str) -> list[RandomTerm]:
    scan = full_scan[start:start + len(piece)]
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
    _check_sum(text, expr_start, expr_start + len(expr), full_scan)
    correlated = not double
    return [RandomTerm(expr=expr, group=name, group_vars=vars_, correlated=correlated,
                       text=piece, position=start)
            for name, vars_ in _expand_groups(text, full_scan, start + 1 + bar + (2 if double else 1)
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


def _expand_groups(text: str, scan: str, position: int, length: int) -> list[tuple[str, tuple[str, ...]]]:
    """``a/b/c`` -> a, b:a, c:b:a (lme4's names); ``a:b`` -> one factor; `a b` quoted."""
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


def _matching(scan: str, open_at: int) -> int:
    """Index of the ')' that closes the '(' at ``open_at`` (parentheses are balanced), found
    on the masked text (a ')' inside a quoted name or a text literal does not count)."""
    depth = 0
    for i in range(open_at, len(scan)):
        if scan[i] == "(":
            depth += 1
        elif scan[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return len(scan) - 1  # unreachable after _check_parentheses


def _tokens(text: str, begin: int, end: int, scan: str, found: list | None = None):
    """Yield (kind, token, position) over text[begin:end]: kind is 'operand', 'sum' (+ -)
    or 'binary' (* : / ** ^ %in%). Parenthesized groups are checked recursively; a function
    call is checked by :func:`_check_call` against the table of transforms. The column
    names read go to ``found`` as (name, position) when it is given."""
    i = begin
    while i < end:
        ch = scan[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "`":
            close = text.index("`", i + 1)
            if close == i + 1:
                raise FormulaError(f"empty `` at position {i}{_point(text, i)}")
            if found is not None:
                found.append((text[i + 1:close], i))
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
            if k < end and text[k] == "(":  # a function call: checked against the table
                close = _matching(scan, k)
                _check_call(text, scan, i, close + 1, found)
                yield "operand", text[i:close + 1], i
                i = close + 1
            else:
                if not name.group().strip("."):
                    raise FormulaError(f"'.' (all other columns) at position {i} is not supported: "
                                       f"name the columns{_point(text, i)}")
                if found is not None:
                    found.append((name.group(), i))
                yield "operand", name.group(), i
                i = j
        elif ch == "(":
            close = _matching(scan, i)
            if not text[i + 1:close].strip():
                raise FormulaError(f"empty parentheses at position {i}{_point(text, i)}")
            _check_sum(text, i + 1, close, scan, found)
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


def _check_sum(text: str, begin: int, end: int, scan: str, found: list | None = None) -> None:
    """Check that text[begin:end] is operands joined by operators (a leading sign allowed)."""
    previous, previous_at, token_text = "start", begin, ""
    for kind, token, at in _tokens(text, begin, end, scan, found):
        if kind == "operand":
            if (_NUMBER.fullmatch(token) and float(token) not in (0.0, 1.0)
                    and not (previous == "binary" and token_text in ("^", "**"))):
                raise FormulaError(f"the number {token} at position {at} is not a term: a formula's terms are "
                                   f"columns, '1' (the intercept) and '0' or '-1' (no intercept); for a "
                                   f"constant times a column write I({token} * x){_point(text, at)}")
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


_CBIND = re.compile(r"cbind\s*\((.*)\)", re.S)
_OFFSET_CALL = re.compile(r"(?<![\w.`])offset(?=\s*\()")


def _blank_offsets(text: str) -> str:
    """``x + offset(np.log(e))`` -> ``x +       (np.log(e))`` (same positions)."""
    return _OFFSET_CALL.sub(lambda m: " " * len(m.group(0)), text)


def _check_cbind(text: str, split: int, scan: str) -> None:
    """A ``cbind(successes, failures)`` response: two expressions, each checked."""
    begin = len(text[:split]) - len(text[:split].lstrip())
    opening = text.index("(", begin)
    close = split - (len(text[:split]) - len(text[:split].rstrip())) - 1
    depth, commas = 0, []
    for k in range(opening + 1, close):
        if scan[k] == "(":
            depth += 1
        elif scan[k] == ")":
            depth -= 1
        elif scan[k] == "," and depth == 0:
            commas.append(k)
    if len(commas) != 1:
        raise FormulaError(f"cbind() in the response takes two arguments (successes, failures), got "
                           f"{len(commas) + 1} (position {begin}){_point(text, begin)}")
    for start, stop in ((opening + 1, commas[0]), (commas[0] + 1, close)):
        if not text[start:stop].strip():
            raise FormulaError(f"an empty argument of cbind() at position {start}{_point(text, start)}")
        _check_sum(text, start, stop, scan)


def _check_response(text: str, split: int, scan: str) -> None:
    """The response is one operand: a column or a transform of columns (``np.log(y)``)."""
    begin = len(text[:split]) - len(text[:split].lstrip())
    _check_sum(text, begin, split, scan)
    operands = [at for kind, _, at in _tokens(text, begin, split, scan) if kind != "operand"]
    if operands:
        at = operands[0]
        raise FormulaError(f"the response left of '~' must be one column or transform (operator at "
                           f"position {at}): write a sum or product inside I(), like 'I(a + b) ~ ...'"
                           f"{_point(text, at)}")


# ---------------------------------------------------------------- the table of transforms
# A formula is data, not code: a call may name only these functions, each argument is
# checked by kind, and nothing else of Python is reachable (no attributes, subscripts,
# lambdas, comprehensions, f-strings, keywords beyond the table). The design stage hands
# formulae an environment holding exactly these callables (design.FORMULA_ENVIRONMENT).
ELEMENTWISE = ("log", "log10", "log2", "log1p", "exp", "sqrt", "abs")
#: transforms of one column: the name -> its options after the data argument, in order
TRANSFORMS: dict[str, tuple[str, ...]] = {
    "I": (), "center": (), "scale": (), "standardize": (),
    **{name: () for name in ELEMENTWISE},
    "C": ("contrast", "levels"), "T": ("ref", "levels"), "S": ("omit", "levels"),
    "poly": ("degree", "raw"),
}
#: formulae's categorical encodings, usable as C's contrast: C(f, Treatment), C(f, Sum('a'))
ENCODINGS = {"Treatment": "reference", "Sum": "omit"}
_NUMPY_PREFIXES = ("np.", "numpy.")
_MAX_POLY_DEGREE = 20
_DUNDER = re.compile(r"^__.*__$")
FUNCTION_LIST = ("I(), log(), log10(), log2(), log1p(), exp(), sqrt(), abs() (also as np.log(), numpy.log(), "
                 "...), center(), scale(), standardize(), C(), T(), S(), poly()")
_BINARY_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def transform_name(name: str) -> str | None:
    """The table entry a called name stands for ('np.log' -> 'log'), or None if it is none."""
    if name.startswith(_NUMPY_PREFIXES):
        rest = name.split(".", 1)[1]
        return rest if rest in ELEMENTWISE else None
    return name if name in TRANSFORMS else None


def expression_columns(expr: str) -> list[tuple[str, int]]:
    """Check one column expression (a response, a fixed part such as ``"x + np.log(z)"``, or
    the left side of a bar) and return the column names it reads, with their positions.

    Raises
    ------
    FormulaError
        Anything beyond column names, numbers, formula operators and the table of
        transforms (an attribute, a subscript, an unknown function, ...), with its position.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise FormulaError(f"an empty or non-text expression: {expr!r}")
    scan = _mask_backticks(expr)
    _check_parentheses(expr, scan)
    found: list[tuple[str, int]] = []
    _check_sum(expr, 0, len(expr), scan, found)
    return found


def _check_call(text: str, scan: str, begin: int, end: int, found: list | None) -> None:
    """Check the call text[begin:end] with Python's ``ast`` against the table, before anything
    evaluates it; its column names go to ``found``."""
    # backtick names become same-length identifiers; line breaks spaces (one line, so that
    # column offsets are positions); the text literals stay as they are
    chars, inside = [], False
    for k in range(begin, end):
        if scan[k] == "`":  # the mask keeps backticks only as the delimiters of names
            inside = not inside
            chars.append("_")
        elif inside:
            chars.append("_")
        elif text[k] in "\n\r\t\f\v":
            chars.append(" ")
        else:
            chars.append(text[k])
    # a dotted column name (R's 'x.1', pandas' renamed duplicates) is one name to formulae,
    # which looks it up whole; Python would read attributes or a syntax error: give the ast
    # the same name with '_' for '.' (the column is read back from the original text). Only
    # a called name keeps its dots, to be checked against the table (np.log).
    for match in _NAME.finditer(scan, begin, end):
        if "." in match.group() and not scan[match.end():end].lstrip().startswith("("):
            for k in range(match.start(), match.end()):
                if scan[k] == ".":
                    chars[k - begin] = "_"
    source = "".join(chars)
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        at = begin + (_char_offset(source, exc.offset - 1) if getattr(exc, "offset", None) else 0)
        at = min(max(at, begin), end - 1)
        call = text[begin:end] if end - begin <= 60 else text[begin:begin + 57] + "..."
        raise FormulaError(f"cannot read the call '{call}' at position {at}: a formula "
                           f"calls {FUNCTION_LIST} on columns, numbers and + - * / ** "
                           f"(and comparisons inside I()){_point(text, at)}") from None
    checker = _CallChecker(text, begin, source, found)
    try:
        checker.call(tree.body)
    except RecursionError:
        raise FormulaError(f"the call at position {begin} is nested too deeply{_point(text, begin)}") from None


def _char_offset(source: str, byte_offset: int) -> int:
    """ast's column offsets count UTF-8 bytes; positions in messages count characters."""
    return len(source.encode("utf-8")[:max(byte_offset, 0)].decode("utf-8", errors="ignore"))


class _CallChecker:
    """Walks the ``ast`` of one call and accepts only what the formula grammar documents."""

    def __init__(self, text: str, begin: int, source: str, found: list | None):
        self.text, self.begin, self.source, self.found = text, begin, source, found

    def position(self, node) -> int:
        return self.begin + _char_offset(self.source, getattr(node, "col_offset", 0))

    def span(self, node, limit: int | None = 60) -> str:
        """The node's text (shortened for messages unless ``limit`` is None)."""
        start = self.position(node)
        stop = self.begin + _char_offset(self.source, node.end_col_offset)
        text = self.text[start:stop]
        return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."

    def fail(self, node, what: str, why: str | None = None):
        at = self.position(node)
        why = why or (f"it may use column names, numbers, + - * / ** (comparisons inside I()) and the "
                      f"functions {FUNCTION_LIST}")
        raise FormulaError(f"{what} at position {at} is not allowed in a formula: {why}{_point(self.text, at)}")

    def dotted(self, node) -> str | None:
        """'np.log' for Attribute(Name('np'), 'log'); None for anything but names and dots."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(node.id)
        return ".".join(reversed(parts))

    def column(self, node) -> None:
        name = self.span(node, limit=None)
        if name.startswith("`") and name.endswith("`"):
            name = name[1:-1]
        elif not _IDENTIFIER.match(name) or any(_DUNDER.match(part) for part in name.split(".")):
            self.fail(node, f"the name '{name}'")
        if self.found is not None:
            self.found.append((name, self.position(node)))

    def data(self, node) -> None:
        """An expression that computes a column."""
        if isinstance(node, ast.Name):
            self.column(node)
        elif isinstance(node, ast.Attribute):
            # a dotted column name (R's 'x.y'); formulae looks it up whole, never attribute by attribute
            if self.dotted(node) is None:
                self.fail(node, f"the attribute '.{node.attr}'")
            self.column(node)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float, str)):
                self.fail(node, f"the constant {self.span(node)}")
            if isinstance(node.value, float) and not np.isfinite(node.value):
                self.fail(node, f"the number {self.span(node)}", "it is too large for a floating-point number")
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            self.data(node.left)
            self.data(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            self.data(node.operand)
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1
              and isinstance(node.ops[0], _COMPARE_OPS)):
            self.data(node.left)
            self.data(node.comparators[0])
        elif isinstance(node, ast.Call):
            self.call(node)
        else:
            self.fail(node, f"'{self.span(node)}' ({_describe(node)})")

    def call(self, node) -> None:
        if not isinstance(node, ast.Call):
            self.fail(node, f"'{self.span(node)}' ({_describe(node)})")
        name = self.dotted(node.func)
        at = self.position(node)
        if name is None:
            self.fail(node.func, f"calling '{self.span(node.func)}'")
        if name == "offset":
            raise FormulaError(f"offset() is not supported (position {at}): subtract the offset from the "
                               f"response instead, e.g. 'I(y - x) ~ ...' for offset(x){_point(self.text, at)}")
        entry = transform_name(name)
        if entry is None or not name.isascii() or self.span(node.func, limit=None) != name:
            name = self.span(node.func)  # as written (a `quoted` callee, spaces around a dot)
            raise FormulaError(f"unknown function '{name}' in the formula (position {at}): the functions a "
                               f"formula can use are {FUNCTION_LIST}{_point(self.text, at)}")
        options = TRANSFORMS[entry]
        params = ("x",) + options
        bound: dict[str, ast.AST] = {}
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.fail(arg, "'*' unpacking")
        if len(node.args) > len(params):
            self.fail(node.args[len(params)], f"an extra argument to {name}() (it takes {', '.join(params)})")
        bound.update(zip(params, node.args))
        for keyword in node.keywords:
            if keyword.arg is None:
                self.fail(keyword.value, "'**' unpacking")
            if keyword.arg not in options or keyword.arg in bound:
                what = "repeats an argument" if keyword.arg in bound else "is not an option"
                self.fail(keyword.value, f"the keyword '{keyword.arg}=' ({what} of {name}(); options: "
                                         f"{', '.join(options) or 'none'})")
            bound[keyword.arg] = keyword.value
        if "x" not in bound:
            raise FormulaError(f"{name}() at position {at} needs a column or expression as its argument"
                               f"{_point(self.text, at)}")
        self.data(bound.pop("x"))
        for option, value in bound.items():
            self.option(name, option, value)

    def option(self, function: str, option: str, node) -> None:
        constant = node.value if isinstance(node, ast.Constant) else ...
        if option == "contrast":
            if constant is None:
                return
            if isinstance(node, ast.Name) and node.id in ENCODINGS:
                return
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ENCODINGS:
                keyword = ENCODINGS[node.func.id]
                values = list(node.args) + [k.value for k in node.keywords]
                if (len(values) <= 1 and all(k.arg == keyword for k in node.keywords)
                        and all(isinstance(v, ast.Constant) and isinstance(v.value, (str, int, float))
                                for v in values)):
                    return
            self.fail(node, f"the contrast {self.span(node)} of {function}()",
                      "use Treatment, Sum, Treatment('level') or Sum('level')")
        if option == "levels":
            if constant is None:
                return
            self.fail(node, f"levels={self.span(node)} of {function}()",
                      "the formula evaluator reads no lists; set the order with pandas, df[col] = "
                      "pd.Categorical(df[col], categories=[...]), whose first category is the reference level")
        if option in ("ref", "omit"):
            if constant is None or (isinstance(constant, (str, int, float)) and not isinstance(constant, bool)):
                return
            self.fail(node, f"{option}={self.span(node)} of {function}()", "give a level as 'text' or a number")
        if option == "degree":
            if isinstance(constant, int) and not isinstance(constant, bool) and 1 <= constant <= _MAX_POLY_DEGREE:
                return
            self.fail(node, f"degree={self.span(node)} of {function}()",
                      f"give a whole number from 1 to {_MAX_POLY_DEGREE}")
        if option == "raw":
            if isinstance(constant, bool):
                return
            self.fail(node, f"raw={self.span(node)} of {function}()", "give True or False")


def _describe(node) -> str:
    """A reader's word for an ast node that a formula may not contain."""
    words = {ast.Lambda: "a lambda", ast.Subscript: "a subscript", ast.Attribute: "an attribute",
             ast.JoinedStr: "an f-string", ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
             ast.DictComp: "a comprehension", ast.GeneratorExp: "a comprehension", ast.List: "a list",
             ast.Tuple: "a tuple", ast.Dict: "a dict", ast.Set: "a set", ast.NamedExpr: "an assignment",
             ast.BoolOp: "'and'/'or'", ast.IfExp: "an if-expression", ast.Await: "await",
             ast.Starred: "'*' unpacking", ast.Call: "a call", ast.Compare: "a chained comparison",
             ast.BinOp: "this operator", ast.UnaryOp: "this operator"}
    return words.get(type(node), type(node).__name__)
