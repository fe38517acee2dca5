"""Stage 1: the lme4 formula parser (text -> response, fixed part, one RandomTerm per bar)."""

from __future__ import annotations

import pytest

from bayeslmm.errors import BayesLMMError, FormulaError
from bayeslmm.frontend.formula import parse_formula


def bars(text: str) -> list[tuple[str, str, tuple[str, ...], bool]]:
    """(expr, group, group_vars, correlated) of every bar of ``text``."""
    return [(t.expr, t.group, t.group_vars, t.correlated) for t in parse_formula(text).random]


@pytest.mark.parametrize("text, expected", [
    ("y ~ x + (1 | g)", [("1", "g", ("g",), True)]),
    ("y ~ x + (x | g)", [("x", "g", ("g",), True)]),
    ("y ~ x + (1 + x | g)", [("1 + x", "g", ("g",), True)]),
    ("y ~ x + (0 + x | g)", [("0 + x", "g", ("g",), True)]),
    ("y ~ x + (x || g)", [("x", "g", ("g",), False)]),
    ("y ~ x + (1 + x || g)", [("1 + x", "g", ("g",), False)]),
    ("y ~ (1 | g:h)", [("1", "g:h", ("g", "h"), True)]),
    # nesting: lme4 names the inner factor first (b:a), and a/b/c -> a, b:a, c:b:a
    ("y ~ 1 + (1 | a/b)", [("1", "a", ("a",), True), ("1", "b:a", ("b", "a"), True)]),
    ("y ~ 1 + (1 | a/b/c)", [("1", "a", ("a",), True), ("1", "b:a", ("b", "a"), True),
                             ("1", "c:b:a", ("c", "b", "a"), True)]),
    ("strength ~ 1 + (1 | batch/cask)", [("1", "batch", ("batch",), True),
                                         ("1", "cask:batch", ("cask", "batch"), True)]),
    # several bars on one factor, and crossed factors
    ("y ~ x + (1 | g) + (0 + x | g)", [("1", "g", ("g",), True), ("0 + x", "g", ("g",), True)]),
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", [("1", "plate", ("plate",), True),
                                                   ("1", "sample", ("sample",), True)]),
    # a factor inside the random part, and a transform
    ("normexam ~ standLRT + sex + (standLRT + sex | school)",
     [("standLRT + sex", "school", ("school",), True)]),
    ("y ~ I(x - 4.5) + (I(x - 4.5) || g)", [("I(x - 4.5)", "g", ("g",), False)]),
    # no spaces, unicode column names
    ("y~x+(x|g)", [("x", "g", ("g",), True)]),
    ("y ~ x +\n\t(1 + x |\n g)", [("1 + x", "g", ("g",), True)]),
    ("note ~ écart + (1 | école)", [("1", "école", ("école",), True)]),
    # quoted names: spaces, parentheses, '|' and '/' inside backticks are part of the name
    ("`my y` ~ `my x` + (`my x` | `my school`)", [("`my x`", "my school", ("my school",), True)]),
    ("y ~ (1 | `a/b`/`c|d`)", [("1", "a/b", ("a/b",), True), ("1", "c|d:a/b", ("c|d", "a/b"), True)]),
    ("y ~ `f(x)` + (1 | `g:h`:k)", [("1", "g:h:k", ("g:h", "k"), True)]),
])
def test_bars(text, expected):
    assert bars(text) == expected


@pytest.mark.parametrize("text, response, fixed", [
    ("Reaction ~ Days + (Days | Subject)", "Reaction", "Days"),
    ("y ~ (1 | g)", "y", "1"),
    ("y ~ 0 + x + (1 | g)", "y", "0 + x"),
    ("y ~ x - 1 + (1 | g)", "y", "x - 1"),
    ("y ~ -1 + x + (1 | g)", "y", "x - 1"),
    ("y ~ a * b + (1 | g)", "y", "a * b"),
    ("y ~ a + a:b + (1 | g)", "y", "a + a:b"),
    ("y ~ I(grade - 5) + (1 | g)", "y", "I(grade - 5)"),
    ("np.log(reading_score) ~ grade + (1 | s)", "np.log(reading_score)", "grade"),
    ("log(y) ~ x + (1 | g)", "log(y)", "x"),
    ("y ~ x + I(x * 1e-5) + (1 | g)", "y", "x + I(x * 1e-5)"),  # a bare 1e-5 is no term (test_bad_input)
    ("y ~ (a + b)**2 + (1 | g)", "y", "(a + b)**2"),
    ("y ~ C(f, Treatment) + (1 | g)", "y", "C(f, Treatment)"),
])
def test_response_and_fixed_part(text, response, fixed):
    parsed = parse_formula(text)
    assert parsed.response == response
    assert parsed.fixed == fixed
    assert parsed.fixed_formula == f"{response} ~ {fixed}"


def test_positions_point_at_the_bar():
    text = "y ~ x + (1 | g) + (0 + x || h)"
    first, second = parse_formula(text).random
    assert (first.position, first.text) == (8, "(1 | g)")
    assert (second.position, second.text) == (18, "(0 + x || h)")
    assert text[second.position:].startswith(second.text)


def test_nesting_keeps_one_text_and_position_for_both_bars():
    terms = parse_formula("y ~ (1 | a/b)").random
    assert [t.text for t in terms] == ["(1 | a/b)", "(1 | a/b)"]
    assert [t.position for t in terms] == [4, 4]


# ---------------------------------------------------------------- errors with positions
@pytest.mark.parametrize("text, message", [
    ("y ~ x + (1 | g", r"unbalanced parenthesis: '\(' at position 8 is never closed"),
    ("y ~ x) + (1 | g)", r"unbalanced parenthesis: '\)' at position 5 has no matching '\('"),
    ("y ~ x + + (1 | g)", r"empty term at position 6: '\+' has no term after it"),
    ("y ~ x + (1 | g) +", r"empty term at position 16: '\+' has no term after it"),
    ("y ~ + x", r"empty term at position 4: '\+' has no term before it"),
    ("y ~ x - - z", r"empty term at position 6: '-' has no term after it"),
    ("y ~ x + (1 | )", r"no grouping factor right of '\|' in \(1 \| \) \(position 11\)"),
    ("y ~ x + ( | g)", r"nothing left of '\|' in \( \| g\) \(position 10\)"),
    ("y ~ x + (1 + | g)", r"empty term at position 11: '\+' has no term after it"),
    ("y ~ x + (x + z + | g)", r"empty term at position 15: '\+' has no term after it"),
    ("y ~ x + (x : | g)", r"':' has nothing on its right at position 11"),
    ("y ~ (a + + b):c", r"empty term at position 7: '\+' has no term after it"),
    ("y ~ x + 1 | g", r"'\|' at position 10 is outside a random-effect term"),
    ("y ~ x + (1 | g) (1 | h)", r"more than one '\|' in \(1 \| g\) \(1 \| h\) \(position 19\)"),
    ("y ~ x z + (1 | g)", r"missing operator between 'x' and 'z' at position 6"),
    ("y ~ x * * z", r"'\*' at position 8 has nothing on its left"),
    ("y ~ x:", r"':' has nothing on its right at position 5"),
    ("y ~ x $ z", r"unexpected character '\$' at position 6"),
    ("y ~ x ~ z", r"the formula has a second '~' at position 6"),
    ("y x + (1 | g)", r"has no '~'"),
    (" ~ x", r"the formula has no response left of '~' \(position 1\)"),
    ("y ~ ()", r"empty parentheses at position 4"),
    ("y ~ . + (1 | g)", r"'\.' \(all other columns\) at position 4 is not supported"),
    ("y ~ x - (1 | g)", r"a random-effect term cannot be subtracted \(position 8\)"),
    ("y ~ (1 | g:)", r"the grouping factor in 'g:' \(position 11\) has an empty name"),
    ("y ~ (1 | a//b)", r"the grouping factor in 'a//b' \(position 11\) has an empty name"),
    ("y ~ (1 | a b)", r"the grouping factor 'a b' \(position 9\) is not a column name"),
    ("`y ~ x + (1 | g)", r"unclosed '`' at position 0: quote a column name like `my column`"),
    ("y ~ `` + (1 | g)", r"empty `` at position 4"),
    ("y ~ (1 | 3)", r"the grouping factor '3' \(position 9\) is not a column name"),
    ("y ~ (1 | g) + (1 | g)", r"the random term \(1 \| g\) \(position 14\) repeats \(1 \| g\) "
                              r"\(position 4\) on 'g'"),
    ("y ~ " + "(" * 60 + "x" + ")" * 60, r"parentheses nested more than 50 deep at position 54"),
    ("", r"the formula is empty"),
    (None, r"the formula must be a string like 'y ~ x \+ \(1 \| g\)', not NoneType"),
    (3, r"the formula must be a string like 'y ~ x \+ \(1 \| g\)', not int"),
])
def test_bad_formulas_raise_formula_error_with_position(text, message):
    with pytest.raises(FormulaError, match=message) as info:
        parse_formula(text)
    assert isinstance(info.value, BayesLMMError)


def test_the_message_draws_a_caret_under_the_position():
    with pytest.raises(FormulaError) as info:
        parse_formula("y ~ x + + (1 | g)")
    lines = str(info.value).splitlines()
    assert lines[1] == "    y ~ x + + (1 | g)"
    assert lines[2] == "    " + " " * 6 + "^"
