"""Property-based tests of the formula frontend (hypothesis).

Valid formulas are drawn from a small grammar over the columns of a synthetic data set
(numeric x1..x3, factor f1 with 3 levels, g1 with 8 and g2 with 5 levels, crossed); for
each the expected fixed-effect column names and, per bar, the expected group, term names
and covariance type are worked out independently of the parser. Invalid formulas are made
by breaking valid ones; they must raise BayesLMMError and nothing else.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bayeslmm as blm
from bayeslmm.errors import BayesLMMError
from bayeslmm.frontend.design import build_design
from bayeslmm.frontend.formula import parse_formula

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    n = 400
    return pd.DataFrame({
        "y": rng.normal(size=n), "x1": rng.normal(size=n), "x2": rng.normal(size=n),
        "x3": rng.normal(size=n), "f1": rng.choice(["a", "b", "c"], size=n),
        "g1": np.tile(np.arange(1, 9), n // 8),               # 8 levels
        "g2": np.repeat(["p", "q", "r", "s", "t"], n // 5),   # 5 levels, crossed with g1
    })


DATA = _data()
LEVELS = {"g1": 8, "g2": 5, "f1": 3, "g1:g2": 40, "g2:g1": 40, "g1:f1": 24, "g2:f1": 15}

# fixed-part atoms: (text, column names with an intercept, column names without one)
FIXED_ATOMS = {
    "x1": (["x1"], ["x1"]),
    "x2": (["x2"], ["x2"]),
    "I(x1 ** 2)": (["I(x1 ** 2)"], ["I(x1 ** 2)"]),
    "x1:x2": (["x1:x2"], ["x1:x2"]),
    "np.log(x2 + 10)": (["np.log(x2 + 10)"], ["np.log(x2 + 10)"]),
    "f1": (["f1b", "f1c"], ["f1a", "f1b", "f1c"]),
    "x3 * f1": (["x3", "f1b", "f1c", "x3:f1b", "x3:f1c"], ["x3", "f1a", "f1b", "f1c", "x3:f1b", "x3:f1c"]),
}
# bar expressions and the coefficient names they give
BAR_EXPRS = {
    "1": ["(Intercept)"],
    "x1": ["(Intercept)", "x1"],
    "1 + x2": ["(Intercept)", "x2"],
    "0 + x1": ["x1"],
    "x3 - 1": ["x3"],
    "x1 + x2": ["(Intercept)", "x1", "x2"],
    "f1": ["(Intercept)", "f1b", "f1c"],
    "0 + f1": ["f1a", "f1b", "f1c"],
    "I(x2 ** 2)": ["(Intercept)", "I(x2 ** 2)"],
    "0 + x1 + x3": ["x1", "x3"],
}
# grouping specifications and the lme4 groups they expand to
GROUPS = {"g1": ["g1"], "g2": ["g2"], "f1": ["f1"], "g1:g2": ["g1:g2"], "g2/g1": ["g2", "g1:g2"],
          "g1/f1": ["g1", "f1:g1"]}
LEVELS["f1:g1"] = 24


@st.composite
def valid_formulas(draw):
    """(formula text, expected fixed names, expected bars as sorted (group, terms, corr))."""
    atoms = draw(st.lists(st.sampled_from(sorted(FIXED_ATOMS)), unique=True, max_size=4))
    intercept = draw(st.sampled_from(["", "1 + ", "0 + ", "-1"]))
    if intercept in ("0 + ", "-1"):
        assume(atoms)
    # the first factor term takes all levels when there is no intercept
    has_intercept = intercept in ("", "1 + ")
    names: list[str] = ["(Intercept)"] if has_intercept else []
    factor_coded = False
    for atom in atoms:
        with_int, without = FIXED_ATOMS[atom]
        chosen = with_int if (has_intercept or factor_coded) else without
        if "f1" in atom:
            factor_coded = True
        names += [n for n in chosen if n not in names]
    fixed = " + ".join(atoms)
    if intercept == "-1":
        fixed_text = f"{fixed} - 1"
    else:
        fixed_text = intercept + (fixed or "1")

    n_bars = draw(st.integers(1, 3))
    bars, expected, seen = [], [], set()
    for _ in range(n_bars):
        expr = draw(st.sampled_from(sorted(BAR_EXPRS)))
        group = draw(st.sampled_from(sorted(GROUPS)))
        double = draw(st.booleans())
        terms = tuple(BAR_EXPRS[expr])
        for name in GROUPS[group]:
            clash = {(name, t) for t in terms} & seen
            assume(not clash)  # overlapping bars on one factor are an error (tested elsewhere)
            seen |= {(name, t) for t in terms}
            expected.append((name, terms, not double))
        space = draw(st.sampled_from(["", " "]))
        bars.append(f"({expr}{space}{'||' if double else '|'}{space}{group})")
    response = draw(st.sampled_from(["y", "y", "I(y * 2)"]))
    text = f"{response} ~ {fixed_text} + " + " + ".join(bars)
    return text, names, sorted(expected)


def build(text: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # '||' with a factor warns by design
        return build_design(parse_formula(text), DATA)


@SETTINGS
@given(valid_formulas())
def test_valid_formulas_build_the_expected_columns(case):
    text, fixed_names, bars = case
    design = build(text)
    assert design.X.shape == (len(DATA), len(fixed_names))
    assert sorted(design.fixed_names) == sorted(fixed_names)
    assert design.aliased == ()
    got = sorted((b.group, b.terms, b.correlated) for b in design.blocks)
    assert got == bars
    for block in design.blocks:
        assert block.X.shape == (len(DATA), block.n_terms)
        assert block.n_levels == LEVELS[block.group]
        assert block.codes.min() == 0 and block.codes.max() == block.n_levels - 1
    # lme4's order: bars by decreasing number of levels
    counts = [b.n_levels for b in design.blocks]
    assert counts == sorted(counts, reverse=True)


# ---------------------------------------------------------------- invalid formulas
def _drop_paren(text: str, which: str, k: int) -> str:
    spots = [i for i, ch in enumerate(text) if ch == which]
    i = spots[k % len(spots)]
    return text[:i] + text[i + 1:]


MUTATIONS = {
    "drop '('": lambda t, k: _drop_paren(t, "(", k),
    "drop ')'": lambda t, k: _drop_paren(t, ")", k),
    "extra '('": lambda t, k: t + " + (x1",
    "extra ')'": lambda t, k: t.replace("~", "~ x2) +", 1),
    "empty term": lambda t, k: t.replace("~", "~ x1 + +", 1),
    "empty term in a bar": lambda t, k: t + " + (x1 + | g2)",
    "trailing +": lambda t, k: t + " +",
    "dangling | right": lambda t, k: t + " + (1 | )",
    "dangling | left": lambda t, k: t + " + ( | g1)",
    "bare |": lambda t, k: t + " + x1 | g2",
    "unknown column": lambda t, k: t.replace("~", "~ zz9 +", 1),
    "unknown group": lambda t, k: t + " + (1 | nosuch)",
    "missing ~": lambda t, k: t.replace("~", "", 1),
    "two ~": lambda t, k: t.replace("~", "~ x1 ~", 1),
    "juxtaposed": lambda t, k: t.replace("~", "~ x1 x2 +", 1),
    "juxtaposed bars": lambda t, k: t + " (1 | g1)",
    "dangling *": lambda t, k: t.replace("~", "~ x1 * +", 1),
    "unknown function": lambda t, k: t.replace("~", "~ foo(x1) +", 1),
    "empty parens": lambda t, k: t + " + ()",
}


@SETTINGS
@given(valid_formulas(), st.sampled_from(sorted(MUTATIONS)), st.integers(0, 50))
def test_invalid_formulas_raise_bayeslmm_error(case, mutation, k):
    text = MUTATIONS[mutation](case[0], k)
    with pytest.raises(BayesLMMError):
        build(text)


FORMULA_CHARS = "yx123fg ~+-*/:|()01I.,`"


@SETTINGS
@given(st.text(alphabet=FORMULA_CHARS, max_size=30))
def test_any_text_builds_or_raises_bayeslmm_error(text):
    """Random strings over the formula alphabet: a design, or a BayesLMMError, nothing else."""
    try:
        design = build(text)
    except BayesLMMError:
        return
    assert design.X.shape[0] == design.y.shape[0] > 0


@SETTINGS
@given(valid_formulas(), st.integers(0, 200), st.sampled_from(list("()|+~*:/ `")))
def test_one_character_edits_build_or_raise_bayeslmm_error(case, where, char):
    """Delete or insert one character of a valid formula: never another exception type."""
    text = case[0]
    i = where % (len(text) + 1)
    for edited in (text[:i] + text[i + 1:], text[:i] + char + text[i:]):
        try:
            build(edited)
        except BayesLMMError:
            pass


def test_the_entry_point_raises_the_same_way():
    with pytest.raises(blm.FormulaError):
        blm.LMM("y ~ x1 + (1 | g1", DATA)


NAME_CHARS = "abcXYZéüß_ -.0123"
column_names = st.builds(lambda head, tail: head + tail, st.sampled_from("abXéß"),
                         st.text(alphabet=NAME_CHARS, max_size=8))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(column_names, min_size=3, max_size=3, unique=True))
def test_any_column_name_can_be_quoted(names):
    """Column names with spaces, dots, dashes or accents work when quoted with backticks."""
    response, predictor, group = names
    data = pd.DataFrame({response: DATA["y"], predictor: DATA["x1"], group: DATA["g1"]})
    design = build_design(parse_formula(f"`{response}` ~ `{predictor}` + (`{predictor}` | `{group}`)"),
                          data)
    assert design.fixed_names == ("(Intercept)", predictor)
    (block,) = design.blocks
    assert (block.group, block.n_levels) == (group, 8)
    assert np.array_equal(design.X[:, 1], DATA["x1"].to_numpy())
