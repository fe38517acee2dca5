"""Stage 2: the built design (lme4's column names, blocks, level order, dropped rows)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bayeslmm as blm
from bayeslmm.frontend.design import build_design
from bayeslmm.frontend.formula import parse_formula


def design(text: str, data: pd.DataFrame):
    return build_design(parse_formula(text), data)


@pytest.fixture(scope="module")
def exam():
    return blm.datasets.load("exam")


@pytest.fixture(scope="module")
def toy():
    """60 rows: numeric x, z; factor f (3 levels); g (10 numeric levels); h (6 levels)."""
    rng = np.random.default_rng(8)
    n = 60
    return pd.DataFrame({
        "y": rng.normal(size=n) + 5.0, "x": rng.normal(size=n), "z": rng.normal(size=n),
        "f": np.repeat(["c", "a", "b"], 20),
        "g": np.repeat([10, 2, 1, 30, 4, 5, 6, 7, 8, 9], 6),
        "h": np.tile(["u", "v", "w", "x", "y", "z"], 10),
    })


# ---------------------------------------------------------------- lme4 forms, real data
def test_sleepstudy_correlated_slope():
    d = design("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    assert d.fixed_names == ("(Intercept)", "Days")
    assert d.X.shape == (180, 2) and d.y.shape == (180,)
    (block,) = d.blocks
    assert block.group == "Subject" and block.terms == ("(Intercept)", "Days") and block.correlated
    # Subject is text in the file; lme4 (whose factor came from integers) sorts it numerically
    assert block.levels[:4] == ("308", "309", "310", "330") and block.n_levels == 18
    assert np.array_equal(block.level_counts(), np.full(18, 10))
    assert np.array_equal(block.X[:, 1], d.data["Days"].to_numpy(dtype=float))


def test_exam_factor_in_random_part_and_interaction(exam):
    d = design("normexam ~ standLRT * sex + (standLRT + sex | school)", exam)
    assert d.fixed_names == ("(Intercept)", "standLRT", "sexM", "standLRT:sexM")
    (block,) = d.blocks
    assert block.terms == ("(Intercept)", "standLRT", "sexM")
    assert block.levels[:11] == tuple(str(i) for i in range(1, 12)) and block.n_levels == 65
    male = (d.data["sex"] == "M").to_numpy()
    assert np.array_equal(d.X[:, 2], male.astype(float))
    assert np.allclose(d.X[:, 3], d.data["standLRT"].to_numpy() * male)


@pytest.mark.parametrize("fixed, names", [
    ("0 + sex", ("sexF", "sexM")),
    ("sex - 1", ("sexF", "sexM")),
    ("standLRT:sex", ("(Intercept)", "standLRT:sexF", "standLRT:sexM")),
    ("sex * vr", ("(Intercept)", "sexM", "vrmid 50%", "vrtop 25%", "sexM:vrmid 50%", "sexM:vrtop 25%")),
    ("I(standLRT - 5)", ("(Intercept)", "I(standLRT - 5)")),
    ("1", ("(Intercept)",)),
])
def test_fixed_names_are_lme4s(exam, fixed, names):
    assert design(f"normexam ~ {fixed} + (1 | school)", exam).fixed_names == names


def test_transforms_of_the_response():
    mpls = blm.datasets.load("minneapolis")
    with_np = design("np.log(reading_score) ~ I(grade - 5) + (1 | student_id)", mpls)
    plain = design("log(reading_score) ~ I(grade - 5) + (1 | student_id)", mpls)
    assert with_np.fixed_names == ("(Intercept)", "I(grade - 5)")
    assert np.allclose(with_np.y, np.log(mpls["reading_score"].to_numpy(dtype=float)))
    assert np.array_equal(with_np.y, plain.y)
    assert np.array_equal(with_np.X[:, 1], mpls["grade"].to_numpy(dtype=float) - 5)
    assert np.array_equal(with_np.new_fixed_matrix(mpls.head(3)), with_np.X[:3])


def test_nesting_names_and_order_like_lme4():
    d = design("strength ~ 1 + (1 | batch/cask)", blm.datasets.load("pastes"))
    assert [(b.group, b.n_levels) for b in d.blocks] == [("cask:batch", 30), ("batch", 10)]
    # R's a:b levels: the first factor varies slowest
    assert d.blocks[0].levels[:3] == ("a:A", "a:B", "a:C")
    assert d.blocks[0].group_vars == ("cask", "batch")


def test_three_level_nesting(toy):
    data = pd.concat([toy] * 2, ignore_index=True)
    d = design("y ~ 1 + (1 | f/g/h)", data)
    assert [b.group for b in d.blocks] == ["h:g:f", "g:f", "f"]
    # g's runs of 6 rows cross f's runs of 20 twice (rows 18-23, 36-41): 12 g:f cells
    assert [b.n_levels for b in d.blocks] == [60, 12, 3]


def test_crossed_factors_ordered_by_number_of_levels():
    d = design("diameter ~ 1 + (1 | sample) + (1 | plate)", blm.datasets.load("penicillin"))
    assert [(b.group, b.n_levels) for b in d.blocks] == [("plate", 24), ("sample", 6)]


def test_interaction_grouping_factor(toy):
    d = design("y ~ x + (1 | f:h)", toy)
    (block,) = d.blocks
    assert block.group == "f:h" and block.n_levels == 18
    assert block.levels[:3] == ("a:u", "a:v", "a:w")


@pytest.mark.parametrize("bar, terms, correlated", [
    ("(1 | g)", ("(Intercept)",), True),
    ("(x | g)", ("(Intercept)", "x"), True),
    ("(1 + x | g)", ("(Intercept)", "x"), True),
    ("(0 + x | g)", ("x",), True),
    ("(x - 1 | g)", ("x",), True),
    ("(x || g)", ("(Intercept)", "x"), False),
    ("(x + z || g)", ("(Intercept)", "x", "z"), False),
    ("(f | g)", ("(Intercept)", "fb", "fc"), True),
    ("(0 + f | g)", ("fa", "fb", "fc"), True),
    ("(I(x - 5) | g)", ("(Intercept)", "I(x - 5)"), True),
])
def test_bar_columns(toy, bar, terms, correlated):
    (block,) = design(f"y ~ x + {bar}", toy).blocks
    assert block.terms == terms and block.correlated is correlated
    assert block.X.shape == (60, len(terms))


def test_several_bars_on_one_factor(toy):
    d = design("y ~ x + (1 | g) + (0 + x | g) + (1 | h)", toy)
    assert [(b.group, b.terms) for b in d.blocks] == [("g", ("(Intercept)",)), ("g", ("x",)),
                                                      ("h", ("(Intercept)",))]


# ---------------------------------------------------------------- levels
@pytest.mark.parametrize("values, levels", [
    ([10, 2, 1, 30, 2, 10], ("1", "2", "10", "30")),               # numbers sort numerically
    (["10", "2", "1", "30", "2", "10"], ("1", "2", "10", "30")),   # so do numbers kept as text
    ([1.5, 0.25, 1.5, 10.0, 0.25, 10.0], ("0.25", "1.5", "10")),    # floats are factors, named as R does
    ([2.0, 1.0, 2.0, 3.0, 1.0, 3.0], ("1", "2", "3")),              # integral floats print as ints
    ([True, False, True, False, True, False], ("False", "True")),
    (["b", "a", "c", "a", "b", "c"], ("a", "b", "c")),
    (["group 1", "École Saint-Michel", "group 1", "b", "b", "École Saint-Michel"],
     ("b", "group 1", "École Saint-Michel")),
])
def test_level_order(values, levels):
    data = pd.DataFrame({"y": np.arange(12.0) ** 1.5, "g": values * 2})
    (block,) = design("y ~ 1 + (1 | g)", data).blocks
    assert block.levels == levels
    labels = [levels[c] for c in block.codes]
    assert len(labels) == 12


def test_categorical_keeps_its_order_like_an_r_factor():
    rng = np.random.default_rng(3)
    data = pd.DataFrame({"y": rng.normal(size=48), "c": pd.Categorical(
        np.tile(["lo", "mid", "hi"], 16), categories=["lo", "mid", "hi", "unused"])})
    data["school"] = pd.Categorical(np.repeat(list("abcdefgh"), 6), categories=list("hgfedcba"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unused category is dropped, not aliased
        d = design("y ~ c + (c | school)", data)
    # the first category is the reference (formulae alone would pick 'hi', the first in sort order)
    assert d.fixed_names == ("(Intercept)", "cmid", "chi")
    assert d.blocks[0].terms == ("(Intercept)", "cmid", "chi")
    assert d.blocks[0].levels == tuple("hgfedcba")
    assert np.array_equal(d.new_fixed_matrix(pd.DataFrame({"c": ["hi", "lo"]})), [[1, 0, 1], [1, 0, 0]])
    assert isinstance(d.data["c"].dtype, pd.CategoricalDtype) and not d.data["c"].cat.ordered


def test_levels_are_combinations_not_printed_labels():
    data = pd.DataFrame({"y": np.arange(40.0) ** 0.5, "a": np.repeat(["a:b", "a"], 20),
                         "b": np.tile(["c", "b:c"], 20)})
    with pytest.raises(blm.DataError, match=r"^grouping factor 'a:b': different combinations of a, b "
                                            r"print as the same level 'a:b:c'"):
        design("y ~ 1 + (1 | a:b)", data)


# ---------------------------------------------------------------- missing values
def test_missing_values_are_dropped_with_a_count(toy):
    data = toy.copy()
    data["x"] = data["x"].astype(float)
    data.loc[[0, 5], "x"] = np.nan
    data["g"] = data["g"].astype(float)
    data.loc[[5, 7], "g"] = np.nan
    data.loc[9, "y"] = np.nan
    data["unused"] = np.nan  # a column the formula does not use drops nothing
    with pytest.warns(UserWarning, match=r"^dropped 4 of 60 rows with missing values in: "
                                         r"y \(1\), x \(2\), g \(2\)$"):
        d = design("y ~ x + (1 | g)", data)
    assert d.n_dropped == 4 and d.nobs == 56
    assert list(d.data.index[:6]) == [1, 2, 3, 4, 6, 8]
    # the grouping column became float through the NaN; its levels still print as integers
    assert d.blocks[0].levels[:3] == ("1", "2", "4")


def test_no_warning_without_missing_values(toy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = design("y ~ x + (1 | g)", toy)
    assert d.n_dropped == 0


# ---------------------------------------------------------------- rank deficiency
def test_rank_deficient_columns_dropped_later_first(toy):
    data = toy.assign(x2=2.0 * toy["x"], c=1.0)
    with pytest.warns(UserWarning, match=r"^fixed-effect model matrix is rank deficient so dropping "
                                         r"1 column\(s\) / coefficient\(s\): x2$"):
        d = design("y ~ x + x2 + (1 | g)", data)
    assert d.fixed_names == ("(Intercept)", "x") and d.aliased == ("x2",)
    with pytest.warns(UserWarning, match=r"dropping 1 column\(s\) / coefficient\(s\): x$"):
        d = design("y ~ x2 + x + (1 | g)", data)
    assert d.fixed_names == ("(Intercept)", "x2")
    with pytest.warns(UserWarning, match=r"dropping 2 column\(s\) / coefficient\(s\): c, x2$"):
        d = design("y ~ x + c + x2 + (1 | g)", data)
    assert d.fixed_names == ("(Intercept)", "x") and d.X.shape == (60, 2)
    # prediction evaluates the kept columns only
    assert d.new_fixed_matrix(data.head(2)).shape == (2, 2)


def test_columns_on_a_huge_scale_are_not_taken_for_aliased(toy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = design("y ~ x + big + (1 | g)", toy.assign(big=toy["z"] * 1e200))
    assert d.fixed_names == ("(Intercept)", "x", "big") and d.aliased == ()


# ---------------------------------------------------------------- new data
def test_new_data_codes_and_columns(toy):
    d = design("y ~ x * f + (x | g)", toy)
    new = pd.DataFrame({"x": [0.5, 1.0], "f": ["b", "c"], "g": [2, 99]})
    assert np.array_equal(d.new_codes(d.blocks[0], new), [1, -1])
    assert np.allclose(d.blocks[0].new_columns(new), [[1.0, 0.5], [1.0, 1.0]])
    assert d.fixed_names == ("(Intercept)", "x", "fb", "fc", "x:fb", "x:fc")
    assert np.allclose(d.new_fixed_matrix(new), [[1, 0.5, 1, 0, 0.5, 0], [1, 1.0, 0, 1, 0, 1.0]])


# ---------------------------------------------------------------- size: no quadratic steps
def test_ten_thousand_terms_are_parsed_and_refused_quickly():
    """10,000 fixed terms: the parser and the column checks are linear (a duplicate-name check
    per column was quadratic and hung); formulae recurses once per term, so the design stage
    refuses with a message instead of a RecursionError."""
    import time

    from bayeslmm.errors import FormulaError
    from bayeslmm.frontend.formula import parse_formula

    n = 10_000
    rng = np.random.default_rng(0)
    data = pd.DataFrame({f"x{i}": rng.normal(size=30) for i in range(n)})
    data["y"], data["g"] = rng.normal(size=30), np.repeat(np.arange(6), 5)
    formula = "y ~ " + " + ".join(f"x{i}" for i in range(n)) + " + (1 | g)"
    start = time.perf_counter()
    assert len(parse_formula(formula).fixed.split(" + ")) == n
    with pytest.raises(FormulaError, match=r"has too many terms joined by operators for formulae to evaluate "
                                           r"\(10000 terms\)"):
        blm.LMM(formula, data)
    assert time.perf_counter() - start < 5.0  # generous: ~1 s on 2 loaded cores


def test_a_thousand_level_fixed_factor_builds_in_seconds():
    import time

    rng = np.random.default_rng(1)
    n = 3000
    data = pd.DataFrame({"y": rng.normal(size=n), "f": np.repeat([f"L{i:04d}" for i in range(1000)], 3),
                         "x": rng.normal(size=n), "g": np.tile(np.arange(10), 300)})
    start = time.perf_counter()
    model = blm.LMM("y ~ f + x + (1 | g)", data)
    assert model.design.X.shape == (3000, 1001)
    with pytest.warns(UserWarning, match=r"dropping 1 column\(s\) / coefficient\(s\): x2$"):
        aliased = blm.LMM("y ~ x + f + x2 + (1 | g)", data.assign(x2=2.0 * data["x"]))
    assert aliased.design.fixed_names[-1] == "fL0999" and aliased.design.X.shape == (3000, 1001)
    assert time.perf_counter() - start < 20.0  # generous: ~2-4 s on 2 loaded cores (was 20-40 s each)


def _sequential_rank(X: np.ndarray, tol: float = 1e-7) -> list[int]:
    """The plain rule, one column at a time (the oracle for the blocked version)."""
    keep, basis = [], np.empty((X.shape[0], 0))
    for j in range(X.shape[1]):
        column = X[:, j] / (np.max(np.abs(X[:, j])) or 1.0)
        residual = column
        for _ in range(2):
            residual = residual - basis @ (basis.T @ residual)
        if np.linalg.norm(column) > 0 and np.linalg.norm(residual) > tol * np.linalg.norm(column):
            keep.append(j)
            basis = np.column_stack([basis, residual / np.linalg.norm(residual)])
    return keep


@settings(max_examples=60, deadline=None, print_blob=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_blocked_rank_check_agrees_with_the_sequential_rule(seed):
    from bayeslmm.frontend.design import independent_columns

    rng = np.random.default_rng(seed)
    n, p = int(rng.integers(3, 70)), int(rng.integers(1, 110))
    base = rng.normal(size=(n, max(1, p // 3)))
    X = np.column_stack([base @ rng.normal(size=base.shape[1]) if rng.random() < 0.4 else rng.normal(size=n)
                         for _ in range(p)])
    X[:, rng.random(p) < 0.1] = 0.0
    if rng.random() < 0.5:
        X = np.round(X)  # indicator-like integer columns, exact dependencies
    X *= 10.0 ** rng.integers(-150, 150, size=p)  # no overflow whatever the units
    assert independent_columns(X) == _sequential_rank(X)


def test_fixed_terms_follow_rs_term_order():
    """R sorts the terms of a formula by degree (formula order among equals): lme4's
    coefficients and lmerTest's type I table of ``a*b + c`` read a, b, c, a:b (formulae
    evaluates a, b, a:b, c)."""
    rng = np.random.default_rng(0)
    n = 120
    data = pd.DataFrame({"y": rng.normal(size=n), "a": rng.choice(["p", "q"], n), "b": rng.choice(["u", "v", "w"], n),
                         "c": rng.normal(size=n), "g": rng.choice(list("ABCDEF"), n)})
    design = blm.LMM("y ~ a*b + c + (1 | g)", data).design
    assert design.fixed_names == ("(Intercept)", "aq", "bv", "bw", "c", "aq:bv", "aq:bw")
    assert list(design.fixed_terms()) == ["(Intercept)", "a", "b", "c", "a:b"]
    assert list(design.fixed_term_parts()) == ["(Intercept)", "a", "b", "c", "a:b"]
    np.testing.assert_array_equal(design.X[:, 4], data["c"].to_numpy())
    np.testing.assert_array_equal(design.new_fixed_matrix(data), design.X)
    three = blm.LMM("y ~ a*b*c + (1 | g)", data).design
    assert list(three.fixed_terms()) == ["(Intercept)", "a", "b", "c", "a:b", "a:c", "b:c", "a:b:c"]
    assert three.fixed_names[4:7] == ("c", "aq:bv", "aq:bw")
