"""Bad input through the user's entry point ``LMM(formula, data)``: each case asserts the
exact message a user sees, raised as a BayesLMMError subclass (never a raw formulae, NumPy
or PyTensor error). Also: inputs that must still work (scale, odd level names)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bayeslmm as blm
from bayeslmm.errors import BayesLMMError, DataError, FormulaError

N = 60


@pytest.fixture(scope="module")
def toy() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame({
        "y": rng.normal(size=N) + 5.0, "x": rng.normal(size=N),
        "f": np.repeat(["a", "b", "c"], 20), "g": np.repeat(np.arange(1, 11), 6),
        "text": np.tile(["lo", "hi"], 30), "one": ["t"] * N, "id": np.arange(N),
    })


def raises_exactly(error, message: str, formula, data):
    """LMM(formula, data) raises ``error`` whose first line is exactly ``message``."""
    with pytest.raises(error) as info:
        blm.LMM(formula, data)
    assert isinstance(info.value, BayesLMMError)
    assert str(info.value).splitlines()[0] == message
    return info.value


def with_values(data: pd.DataFrame, column: str, rows: list[int], value) -> pd.DataFrame:
    out = data.copy()
    out[column] = out[column].astype(float if isinstance(value, float) else object)
    out.loc[rows, column] = value
    return out


# ---------------------------------------------------------------- the data
def test_data_not_a_dataframe(toy):
    raises_exactly(DataError, "data must be a pandas DataFrame, not dict: wrap it with "
                   "pandas.DataFrame(...)", "y ~ x + (1 | g)",
                   toy.to_dict())
    raises_exactly(DataError, "data must be a pandas DataFrame, not numpy.ndarray: wrap it "
                   "with pandas.DataFrame(...)", "y ~ x + (1 | g)",
                   toy.to_numpy())

    class DataFrame:  # stands in for another library's frame (polars is not installed)
        __module__ = "polars.dataframe.frame"

        def to_pandas(self):
            return toy

    raises_exactly(DataError, "data must be a pandas DataFrame, not polars.DataFrame: convert "
                   "it with .to_pandas()", "y ~ x + (1 | g)", DataFrame())


def test_empty_data(toy):
    raises_exactly(DataError, "the data are empty (0 rows)", "y ~ x + (1 | g)", toy.iloc[:0])


def test_unknown_column_with_suggestion(toy):
    raises_exactly(DataError, "unknown column 'xx' in the formula (position 4): the data have y, x, f, "
                   "g, text, one, id; did you mean 'x'?", "y ~ xx + (1 | g)", toy)
    raises_exactly(DataError, "unknown column 'G' in the formula (position 13): the data have y, x, f, "
                   "g, text, one, id; did you mean 'g'?", "y ~ x + (1 | G)", toy)
    raises_exactly(DataError, "unknown column 'Y' in the formula (position 0): the data have y, x, f, "
                   "g, text, one, id; did you mean 'y'?", "Y ~ x + (1 | g)", toy)


def test_unknown_column_position_is_the_whole_name(toy):
    """'b' is reported where it stands, not inside 'ab'."""
    error = raises_exactly(DataError, "unknown column 'b' in the formula (position 13): the data have y, x, f, "
                           "g, text, one, id, ab; did you mean 'ab'?", "y ~ x + ab + b + (1 | g)",
                           toy.assign(ab=1.0))
    assert str(error).splitlines()[-1] == " " * 17 + "^"


def test_offset_is_refused_with_the_way_round(toy):
    raises_exactly(FormulaError, "offset() is not supported (position 8): subtract the offset from the "
                   "response instead, e.g. 'I(y - x) ~ ...' for offset(x)", "y ~ x + offset(x) + (1 | g)", toy)


def test_column_names_that_are_not_text(toy):
    data = toy[["y", "x", "g"]].copy()
    data.columns = ["y", 1, "g"]
    fit = blm.LMM("y ~ `1` + (1 | g)", data).fit()
    assert list(fit.fixef().index) == ["(Intercept)", "1"]


def test_no_residual_degrees_of_freedom(toy):
    data = toy.head(12).assign(g=np.repeat([1, 2, 3], 4))
    for j in range(12):
        data[f"x{j}"] = np.random.default_rng(j).normal(size=12)
    formula = "y ~ " + " + ".join(f"x{j}" for j in range(11)) + " + (1 | g)"
    raises_exactly(DataError, "the fixed part has 12 coefficients for 12 observations: no residual degrees "
                   "of freedom are left; use fewer fixed effects", formula, data)


def test_new_data_name_float_levels_as_the_fitted_data(toy):
    """Levels fitted from 1.0, 2.0, ... are found again from ints or floats in new data, and a
    missing grouping value in new data is an error naming the row."""
    fit = blm.LMM("y ~ x + (1 | grp)", toy.assign(grp=toy["g"].astype(float))).fit()
    modes = fit.ranef()["grp"]["(Intercept)"]
    for values in ([1, 2], [1.0, 2.0]):
        new = pd.DataFrame({"x": [0.0, 0.0], "grp": values})
        got = fit.predict(new, allow_new_levels=False)["estimate"].to_numpy()
        np.testing.assert_allclose(got, fit.fixef()["estimate"]["(Intercept)"] + modes.loc[["1", "2"]].to_numpy())
    with pytest.raises(DataError, match=r"^grouping column 'grp' of the new data has 1 missing value\(s\) \(rows 1\)"):
        fit.predict(pd.DataFrame({"x": [0.0, 0.0], "grp": [1.0, np.nan]}))


def test_new_data_that_a_transform_makes_nan_are_named():
    data = blm.datasets.load("sleepstudy")
    fit = blm.LMM("Reaction ~ np.log(Days + 1) + (1 | Subject)", data).fit()
    new = pd.DataFrame({"Days": [1.0, -3.0, np.nan], "Subject": ["308"] * 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error says it all: no numpy RuntimeWarning first
        with pytest.raises(DataError, match=r"^'np.log\(Days \+ 1\)' gives 2 row\(s\) of the new data a NaN "
                                            r"or infinite value \(rows 1, 2\)"):
            fit.predict(new)


def test_random_slope_on_a_column_absent_from_the_data(toy):
    raises_exactly(DataError, "unknown column 'days' in the formula (position 9): the data have y, x, "
                   "f, g, text, one, id", "y ~ x + (days | g)", toy)


def test_unknown_column_inside_a_transform(toy):
    raises_exactly(DataError, "unknown column 'grade' in the formula (position 6): the data have y, x, "
                   "f, g, text, one, id", "y ~ I(grade - 5) + (1 | g)", toy)


@pytest.mark.parametrize("column, kind, examples", [
    ("text", "str", "'lo', 'hi'"),
    ("one", "str", "'t'"),
])
def test_response_not_numeric(toy, column, kind, examples):
    raises_exactly(DataError, f"the response '{column}' is not numeric (column of type {kind}, values "
                   f"like {examples}); a linear mixed model needs a numeric response",
                   f"{column} ~ x + (1 | g)", toy)


def test_categorical_response_not_numeric(toy):
    data = toy.assign(y=pd.Categorical(toy["f"]))
    raises_exactly(DataError, "the response 'y' is not numeric (column of type category, values like "
                   "'a', 'b', 'c'); a linear mixed model needs a numeric response", "y ~ x + (1 | g)", data)


def test_constant_response(toy):
    raises_exactly(DataError, "the response 'y' is constant (every value is 3.5): there is no "
                   "variation to model", "y ~ x + (1 | g)", toy.assign(y=3.5))


def test_response_transform_producing_nan(toy):
    data = toy.assign(y=toy["y"] - 5.0)
    n_bad = int((data["y"] <= 0).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # our message, not numpy's "invalid value in log"
        raises_exactly(DataError, f"the response 'np.log(y)' has {n_bad} non-finite value(s) after "
                       "transformation (a log of zero or a negative number?)", "np.log(y) ~ x + (1 | g)", data)


def test_predictor_transform_producing_nan(toy):
    rows = np.flatnonzero(toy["x"] < 0)
    shown = ", ".join(str(r) for r in rows[:5])
    raises_exactly(DataError, f"the fixed-effect column 'np.log(x)' has {len(rows)} NaN or infinite "
                   f"value(s) after transformation (rows {shown} ...): a log or square root of zero "
                   "or a negative number?", "y ~ np.log(x) + (1 | g)", toy)
    raises_exactly(DataError, f"the random term (0 + sqrt(x) | g): column 'sqrt(x)' has {len(rows)} "
                   f"NaN or infinite value(s) after transformation (rows {shown} ...): a log or square "
                   "root of zero or a negative number?", "y ~ 1 + (0 + sqrt(x) | g)", toy)


@pytest.mark.parametrize("column", ["y", "x", "g"])
def test_infinite_values_rejected_with_the_column(toy, column):
    data = with_values(toy, column, [3, 7], np.inf)
    raises_exactly(DataError, f"column '{column}' has 2 infinite value(s); remove or recode them (only "
                   "missing values are dropped automatically)", "y ~ x + (1 | g)", data)


@pytest.mark.parametrize("column", ["y", "x", "g", "f"])
def test_missing_values_dropped_with_a_count(toy, column):
    data = with_values(toy, column, [3, 7, 11], np.nan if column != "f" else None)
    with pytest.warns(UserWarning, match=rf"^dropped 3 of 60 rows with missing values in: {column} \(3\)$"):
        model = blm.LMM("y ~ x + f + (1 | g)", data)
    assert model.design.nobs == 57 and model.design.n_dropped == 3
    assert 3 not in model.design.data.index


def test_every_row_missing(toy):
    data = toy.assign(x=np.nan)
    with pytest.warns(UserWarning, match="dropped 60 of 60 rows"):
        raises_exactly(DataError, "every one of the 60 rows has a missing value in: x (60)",
                       "y ~ x + (1 | g)", data)


def test_column_of_unsupported_objects(toy):
    data = toy.assign(x=[{"a": 1}] * N)
    raises_exactly(DataError, "column 'x' holds 60 value(s) of type dict (e.g. {'a': 1}); give numbers "
                   "or text", "y ~ x + (1 | g)", data)


def test_duplicate_column_names(toy):
    data = pd.concat([toy, toy[["x"]]], axis=1)
    raises_exactly(DataError, "the data have 2 columns named 'x'; rename them", "y ~ x + (1 | g)", data)


def test_complex_numbers(toy):
    raises_exactly(DataError, "column 'y' holds complex numbers; give real numbers", "y ~ x + (1 | g)",
                   toy.assign(y=toy["y"] + 1j))


def test_dates_as_predictors_but_not_as_groups(toy):
    when = pd.Timestamp("2024-01-01") + pd.to_timedelta(toy["g"], unit="D")
    raises_exactly(DataError, "column 'when' holds dates or durations (datetime64[us]); convert it to "
                   "numbers (e.g. days since the start) or to text for a factor", "y ~ when + (1 | g)",
                   toy.assign(when=when))
    model = blm.LMM("y ~ x + (1 | when)", toy.assign(when=when))
    assert model.design.blocks[0].levels[:2] == ("2024-01-02", "2024-01-03")


def test_quoted_column_names_with_spaces(toy):
    data = toy.rename(columns={"y": "my y", "x": "my x", "g": "my school"})
    model = blm.LMM("`my y` ~ `my x` + (`my x` | `my school`)", data)
    assert model.design.fixed_names == ("(Intercept)", "my x")
    (block,) = model.design.blocks
    assert (block.group, block.terms, block.n_levels) == ("my school", ("(Intercept)", "my x"), 10)
    assert np.array_equal(model.design.y, data["my y"].to_numpy())
    raises_exactly(DataError, "unknown column 'my z' in the formula (position 10): the data have my y, "
                   "my x, f, my school, text, one, id; did you mean 'my y'?",
                   "`my y` ~ `my z` + (1 | `my school`)", data)


def test_python_keyword_as_a_column_name(toy):
    data = with_values(toy.rename(columns={"x": "class"}), "class", [4], np.nan)
    with pytest.warns(UserWarning, match=r"^dropped 1 of 60 rows with missing values in: class \(1\)$"):
        model = blm.LMM("y ~ class + (1 | g)", data)
    assert model.design.fixed_names == ("(Intercept)", "class") and model.design.nobs == 59


# ---------------------------------------------------------------- grouping factors
def test_grouping_factor_with_one_level(toy):
    raises_exactly(DataError, "grouping factor 'one' in (1 | one) has only one level ('t'); a random "
                   "effect needs at least two groups", "y ~ x + (1 | one)", toy)


def test_one_level_left_after_dropping_missing_values(toy):
    data = toy.assign(g=np.where(toy["g"] == 1, 1.0, np.nan))
    with pytest.warns(UserWarning, match="dropped 54 of 60 rows"):
        raises_exactly(DataError, "grouping factor 'g' in (1 | g) has only one level ('1'); a random "
                       "effect needs at least two groups", "y ~ x + (1 | g)", data)


def test_as_many_levels_as_observations(toy):
    raises_exactly(DataError, "grouping factor 'id' has 60 levels for 60 observations: the number of "
                   "levels must be less than the number of observations (every group needs "
                   "replicates)", "y ~ x + (1 | id)", toy)


def test_more_random_effects_than_observations(toy):
    data = toy.assign(pair=np.repeat(np.arange(30), 2), x2=toy["x"] ** 2)
    raises_exactly(DataError, "number of observations (=60) <= number of random effects (=90) for term "
                   "(x + x2 | pair) (30 levels x 3 terms): the random-effects parameters and the residual "
                   "variance are unidentifiable; simplify it", "y ~ x + (x + x2 | pair)", data)


def test_as_many_random_effects_as_observations_is_refused_as_lme4_does(toy):
    # lme4's check.nobs.vs.nRE stops at n <= number of random effects, equality included
    data = toy.assign(pair=np.repeat(np.arange(30), 2))
    raises_exactly(DataError, "number of observations (=60) <= number of random effects (=60) for term "
                   "(x | pair) (30 levels x 2 terms): the random-effects parameters and the residual "
                   "variance are unidentifiable; simplify it", "y ~ x + (x | pair)", data)
    assert blm.LMM("y ~ x + (1 | pair)", data).design.blocks[0].n_levels == 30  # 30 < 60 is fine


@pytest.mark.parametrize("values, levels", [
    (np.repeat(np.linspace(0.5, 5.0, 10), 6), ("0.5", "1", "1.5", "2")),  # R's as.character
    (np.repeat(np.arange(1.0, 11.0) * 1e20, 6), ("1e+20", "2e+20", "3e+20")),
    (np.repeat([True, False], 30), ("False", "True")),
])
def test_float_and_boolean_grouping_columns_are_factors(toy, values, levels):
    model = blm.LMM("y ~ x + (1 | grp)", toy.assign(grp=values))
    assert model.design.blocks[0].levels[:len(levels)] == levels


def test_level_names_with_spaces_and_non_ascii_fit(toy):
    names = ["École Saint-Michel", "group 1", "Zürich Nord", "a:b c", "学校"]
    model = blm.LMM("y ~ x + (1 | school)", toy.assign(school=np.repeat(names, 12)))
    (block,) = model.design.blocks
    # text levels sort by code point, as R does in the C locale
    assert block.levels == ("Zürich Nord", "a:b c", "group 1", "École Saint-Michel", "学校")
    ranef = model.fit().ranef()["school"]
    assert list(ranef.index) == list(block.levels) and ranef.shape == (5, 1)
    # conditional modes of a random intercept sum to zero over equal-sized groups
    assert abs(float(ranef.to_numpy().sum())) < 1e-8
    new = pd.DataFrame({"school": ["group 1", "École Saint-Michel", "nowhere"]})
    assert list(model.design.new_codes(block, new)) == [2, 3, -1]


def test_non_ascii_column_names(toy):
    data = toy.rename(columns={"x": "écart", "g": "école"})
    model = blm.LMM("y ~ écart + (écart | école)", data)
    assert model.design.fixed_names == ("(Intercept)", "écart")
    assert model.design.blocks[0].group == "école"


# ---------------------------------------------------------------- the formula
def test_formula_not_a_string(toy):
    raises_exactly(FormulaError, "the formula must be a string like 'y ~ x + (1 | g)', not int", 3, toy)
    raises_exactly(FormulaError, "the formula must be a string like 'y ~ x + (1 | g)', not list",
                   ["y ~ x + (1 | g)"], toy)


@pytest.mark.parametrize("formula, message", [
    ("y ~ x + (1 | g", "unbalanced parenthesis: '(' at position 8 is never closed"),
    ("y ~ x + (1 | g))", "unbalanced parenthesis: ')' at position 15 has no matching '('"),
    ("y ~ (x + (1 | g)", "unbalanced parenthesis: '(' at position 4 is never closed"),
    ("y ~ x + + (1 | g)", "empty term at position 6: '+' has no term after it"),
    ("y ~ x + (1 | g) + ", "empty term at position 16: '+' has no term after it"),
    ("y ~ + x + (1 | g)", "empty term at position 4: '+' has no term before it"),
    ("y ~ x + (1 + | g)", "empty term at position 11: '+' has no term after it"),
    ("y ~ x + (1 | g) + (x * | g)", "'*' has nothing on its right at position 21"),
    ("y ~ x + (1 | )", "no grouping factor right of '|' in (1 | ) (position 11)"),
    ("y ~ x + ( | g)", "nothing left of '|' in ( | g) (position 10): write '(1 | g)' for a random "
                       "intercept"),
    ("y ~ x + 1 | g", "'|' at position 10 is outside a random-effect term: write each one in its own "
                      "parentheses, like '(1 | g)'"),
    ("y ~ x f + (1 | g)", "missing operator between 'x' and 'f' at position 6: join terms with '+' "
                          "(or ':' / '*' for interactions)"),
    ("y x + (1 | g)", "the formula 'y x + (1 | g)' has no '~': write the response on its left, like "
                      "'y ~ x + (1 | g)'"),
    ("y ~ x + (1 | g) + (1 | g)", "the random term (1 | g) (position 18) repeats (1 | g) (position 8) "
                                  "on 'g': the two variances could not be told apart; remove one"),
    ("y ~ x", "the formula 'y ~ x' has no random-effect term: add one like '(1 | g)' (a model without "
              "one is a linear model, not a mixed model)"),
    ("y ~ x + (0 | g)", "the random term (0 | g) (position 8) has no columns"),
    ("y ~ 0 + (1 | g)", "the fixed part has no columns; write '1' for an intercept-only model"),
    ("y ~ x − 1 + (1 | g)", "unexpected character '−' at position 6"),
])
def test_formula_errors(toy, formula, message):
    raises_exactly(FormulaError, message, formula, toy)


def test_overlapping_bars_on_one_factor(toy):
    raises_exactly(FormulaError, "the random terms (1 | g) (position 8) and (1 + x | g) (position 18) "
                   "both give 'g' a '(Intercept)' effect: the two variances could not be told apart; "
                   "keep it in one of them", "y ~ x + (1 | g) + (1 + x | g)", toy)


def test_unknown_function(toy):
    table = ("the functions a formula can use are I(), log(), log10(), log2(), log1p(), exp(), sqrt(), abs() "
             "(also as np.log(), numpy.log(), ...), center(), scale(), standardize(), C(), T(), S(), poly()")
    raises_exactly(FormulaError, f"unknown function 'lg' in the formula (position 4): {table}",
                   "y ~ lg(x) + (1 | g)", toy)
    raises_exactly(FormulaError, f"unknown function 'np.lg' in the formula (position 0): {table}",
                   "np.lg(y) ~ x + (1 | g)", toy)


def test_double_bar_with_a_factor_warns_how_it_differs_from_lme4(toy):
    with pytest.warns(UserWarning, match=re.escape(
            "'||' in (f || g) with a factor: bayeslmm gives every coefficient ((Intercept), fb, fc) its "
            "own independent variance; lme4 instead splits only the '+' terms, so the factor's columns "
            "stay correlated there. Write '(1 | g) + (0 + factor | g)' for lme4's model")):
        model = blm.LMM("y ~ x + (f || g)", toy)
    (block,) = model.design.blocks
    assert block.terms == ("(Intercept)", "fb", "fc") and not block.correlated


def test_double_bar_with_numbers_does_not_warn(toy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = blm.LMM("y ~ x + (x || g)", toy)
    assert not model.design.blocks[0].correlated


def test_a_list_in_c_is_refused_with_the_way_round(toy):
    # formulae reads no list literal; the checker says so before formulae sees it
    raises_exactly(FormulaError, "levels=['c', 'b'] of C() at position 16 is not allowed in a formula: the "
                   "formula evaluator reads no lists; set the order with pandas, df[col] = "
                   "pd.Categorical(df[col], categories=[...]), whose first category is the reference level",
                   "y ~ C(f, levels=['c', 'b']) + (1 | g)", toy)


def test_formulae_errors_are_wrapped_with_the_position(toy):
    # a power of 1 passes the grammar check but formulae refuses it: its error reaches the
    # user as a FormulaError with the position of the part, not a raw formulae exception
    # (1e-3, the former example, is now handed to formulae as 0.001)
    with pytest.raises(FormulaError) as info:
        blm.LMM("y ~ (x + f)**1 + (1 | g)", toy)
    assert str(info.value) == ("cannot evaluate the fixed part 'y ~ (x + f)**1' (position 4): "
                               "ValueError: Power must be a positive integer.")
    assert isinstance(info.value.__cause__, ValueError)


# ---------------------------------------------------------------- rank deficiency
def test_rank_deficient_fixed_effects_dropped_with_a_warning(toy):
    data = toy.assign(x2=3.0 * toy["x"] - 1.0)
    with pytest.warns(UserWarning, match=re.escape(
            "fixed-effect model matrix is rank deficient so dropping 1 column(s) / coefficient(s): x2")):
        model = blm.LMM("y ~ x + x2 + (1 | g)", data)
    fit = model.fit()
    assert list(fit.fixef().index) == ["(Intercept)", "x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = blm.LMM("y ~ x + (1 | g)", data).fit()
    assert np.allclose(fit.fixef()["estimate"], reference.fixef()["estimate"], rtol=1e-10)


# ---------------------------------------------------------------- scale
@pytest.fixture(scope="module")
def sleep_fits():
    data = blm.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    fits = {s: blm.LMM(formula, data.assign(Reaction=data["Reaction"] * s)).fit()
            for s in (1.0, 1e9, 1e-9)}
    return fits


@pytest.mark.parametrize("scale", [1e9, 1e-9])
def test_huge_and_tiny_response_scales_fit_the_same_model(sleep_fits, scale):
    """REML standardizes y internally and reports on the user's scale: the fit scales exactly."""
    base, fit = sleep_fits[1.0], sleep_fits[scale]
    assert np.allclose(fit.fixef()["estimate"], base.fixef()["estimate"] * scale, rtol=1e-6, atol=0)
    assert np.allclose(fit.fixef()["std_error"], base.fixef()["std_error"] * scale, rtol=1e-6, atol=0)
    assert np.allclose(fit.fixef()["t_value"], base.fixef()["t_value"], rtol=1e-6)
    vc, vb = fit.varcorr(), base.varcorr()
    sd_rows = vc["var2"].isna().to_numpy()
    assert np.allclose(vc["sdcor"][sd_rows], vb["sdcor"][sd_rows] * scale, rtol=1e-6, atol=0)
    assert np.allclose(vc["vcov"][sd_rows], vb["vcov"][sd_rows] * scale**2, rtol=2e-6, atol=0)
    # the correlation is scale-free; it moves only within the optimizer's tolerance (see report)
    assert np.allclose(vc["sdcor"][~sd_rows], vb["sdcor"][~sd_rows], rtol=1e-4)
    # the criterion shifts by exactly (n - p) * 2 log(scale)
    n_eff = fit.nobs - 2
    assert fit.criterion == pytest.approx(base.criterion + 2 * n_eff * np.log(scale), abs=1e-5)
    assert not fit.is_singular


@pytest.mark.parametrize("scale", [1e9, 1e-9])
def test_huge_and_tiny_response_scales_map(scale):
    """The default priors scale with the data, so the MAP estimate scales with it too."""
    data = blm.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = blm.LMM(formula, data).fit(method="map")
        fit = blm.LMM(formula, data.assign(Reaction=data["Reaction"] * scale)).fit(method="map")
    assert np.allclose(fit.fixef()["estimate"], base.fixef()["estimate"] * scale, rtol=1e-6, atol=0)
    vc, vb = fit.varcorr(), base.varcorr()
    sd_rows = vc["var2"].isna().to_numpy()
    # MAP's outer optimizer stops at a trust radius; on CI the sds moved by 3e-7 relative
    assert np.allclose(vc["sdcor"][sd_rows], vb["sdcor"][sd_rows] * scale, rtol=1e-5, atol=0)
    # as for REML, the weakly determined correlation moves only within the optimizer's tolerance
    assert np.allclose(vc["sdcor"][~sd_rows], vb["sdcor"][~sd_rows], rtol=1e-4)


def test_design_warnings_point_at_the_callers_line(toy):
    """Dropped rows, aliased columns and '||' on a factor are reported at the user's LMM(...) call."""
    data = with_values(toy, "x", [0], np.nan).assign(x2=lambda d: 2.0 * d["x"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blm.LMM("y ~ x + x2 + (f || g)", data)
    messages = [str(w.message).split(":")[0] for w in caught]
    assert messages == ["dropped 1 of 60 rows with missing values in",
                        "fixed-effect model matrix is rank deficient so dropping 1 column(s) / coefficient(s)",
                        "'||' in (f || g) with a factor"]
    assert {w.filename for w in caught} == {__file__}


def test_new_data_errors_name_the_column():
    model = blm.LMM("normexam ~ standLRT + sex + (standLRT | school)", blm.datasets.load("exam"))
    design, block = model.design, model.design.blocks[0]
    with pytest.raises(DataError, match=r"^the new data lack column\(s\) 'standLRT', needed by "
                                        r"'standLRT \+ sex'$"):
        design.new_fixed_matrix(pd.DataFrame({"sex": ["M"]}))
    with pytest.raises(DataError, match=r"^the new data lack column\(s\) 'standLRT', needed by 'standLRT'$"):
        block.new_columns(pd.DataFrame({"sex": ["M"]}))
    with pytest.raises(DataError, match=r"^grouping column 'school' is not in the data \(columns: sex\)$"):
        design.new_codes(block, pd.DataFrame({"sex": ["M"]}))
    with pytest.raises(DataError, match=r"^cannot evaluate 'standLRT \+ sex' on the new data: The levels "
                                        r"\(X\) in 'sex' are not present in the original data set\.$"):
        design.new_fixed_matrix(pd.DataFrame({"standLRT": [0.1], "sex": ["X"]}))
    with pytest.raises(DataError, match=r"^new data must be a pandas DataFrame, not dict$"):
        design.new_fixed_matrix({"standLRT": [0.1], "sex": ["M"]})


def test_dropped_rows_and_aliased_columns_reach_the_summary(toy):
    data = with_values(toy, "x", [0, 1], np.nan).assign(x2=lambda d: 2.0 * d["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = blm.LMM("y ~ x + x2 + (1 | g)", data).fit().summary()
    assert "(2 rows dropped for missing values)" in text
    assert "fixed-effect model matrix is rank deficient so dropping 1 column(s) / coefficient(s): x2" in text


@pytest.mark.parametrize("expr, warns", [("f", True), ("0 + x:f", True), ("C(k) + x", True), ("C(text)", True),
                                         ("x", False), ("I(x ** 2)", False)])
def test_double_bar_warning_detects_factors_by_type(toy, expr, warns):
    data = toy.assign(h=np.tile(np.arange(12), 5), k=np.tile([1, 2], 30))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blm.LMM(f"y ~ x + ({expr} || h)", data)
    assert any("with a factor" in str(w.message) for w in caught) is warns


# ---------------------------------------------------------------- silent wrong answers (issue 13)
def test_a_column_named_intercept_does_not_replace_the_intercept(toy):
    raises_exactly(DataError, "a column named 'Intercept' would be taken for the intercept (formulae's name for "
                   "it) and replace it silently; rename the column, e.g. data.rename(columns={'Intercept': "
                   "'intercept_col'})", "y ~ x + Intercept + (1 | g)", toy.assign(Intercept=toy["x"] ** 2))
    # unused, it is harmless
    assert blm.LMM("y ~ x + (1 | g)", toy.assign(Intercept=1.0)).design.fixed_names == ("(Intercept)", "x")


def test_a_level_and_a_column_never_share_a_coefficient_name(toy):
    data = toy.assign(v=np.tile(["1", "2", "3"], 20), v2=toy["x"] ** 2)
    raises_exactly(DataError, "two fixed-effect coefficients would both be named 'v2': 'v[2]' and 'v2' (a factor's "
                   "level next to a column of that name?); rename the column or the level",
                   "y ~ v + v2 + (1 | g)", data)
    raises_exactly(DataError, "two random-effect ((v + v2 | g)) coefficients would both be named 'v2': 'v[2]' and "
                   "'v2' (a factor's level next to a column of that name?); rename the column or the level",
                   "y ~ 1 + (v + v2 | g)", data)


def test_group_labels_of_another_type_in_new_data(toy):
    model = blm.LMM("y ~ x + (1 | g)", toy)  # g holds the numbers 1..10
    design, block = model.design, model.design.blocks[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # text "3" and 3.0 are the fitted level 3, as R's as.character
        assert list(design.new_codes(block, pd.DataFrame({"g": ["3", "10"]}))) == [2, 9]
        assert list(design.new_codes(block, pd.DataFrame({"g": [3.0, 10.0]}))) == [2, 9]
        assert list(design.new_codes(block, pd.DataFrame({"g": pd.Categorical([3, 10])}))) == [2, 9]
        assert list(design.new_codes(block, pd.DataFrame({"g": [11]}))) == [-1]  # a new group, same type
    with pytest.warns(UserWarning, match=re.escape(
            "'g' holds text in the new data but numbers in the fitted data: 2 row(s) with label(s) '03', '3.0' "
            "match no fitted level of 'g' and are treated as new groups")):
        codes = design.new_codes(block, pd.DataFrame({"g": ["03", "3.0", "4"]}))
    assert list(codes) == [-1, -1, 3]


def test_perfect_fit_is_said(toy):
    levels = np.random.default_rng(3).normal(size=10)
    data = toy.assign(y=levels[toy["g"] - 1] * 3.0 + 1.0 + 2.0 * toy["x"])  # no residual noise
    for method in ("reml", "ml"):
        with pytest.warns(blm.PerfectFitWarning, match=r"essentially perfect fit: the residual sd is [0-9.e+-]+ "
                                                       r"against a response sd of [0-9.]+: 'y' is an exact function"):
            blm.LMM("y ~ x + (1 | g)", data).fit(method)
    with warnings.catch_warnings():
        warnings.simplefilter("error", blm.PerfectFitWarning)
        blm.LMM("y ~ x + (1 | g)", toy).fit()  # real data: no warning


def test_anova_refuses_other_responses_and_other_rows():
    sleep = blm.datasets.load("sleepstudy")
    base = blm.LMM("Reaction ~ Days + (1 | Subject)", sleep).fit()
    logged = blm.LMM("np.log(Reaction) ~ Days + (1 | Subject)", sleep).fit()
    other_rows = blm.LMM("Reaction ~ Days + (Days | Subject)", sleep.iloc[1:].reset_index(drop=True)
                         .pipe(lambda d: pd.concat([d, d.iloc[:1]], ignore_index=True))).fit()
    with pytest.raises(BayesLMMError, match=re.escape("anova() compares models of the same data; 'model_1' and "
                                                      "'model_2' have different responses ('Reaction' and "
                                                      "'np.log(Reaction)')")):
        blm.anova(base, logged)
    with pytest.raises(BayesLMMError, match=re.escape("have different rows of the data")):
        blm.anova(base, other_rows)
    reordered = blm.LMM("Reaction ~ Days + (Days | Subject)", sleep.iloc[::-1]).fit()
    table = blm.anova(base, reordered)  # the same observations in another order are the same data
    assert table["Df"].iloc[1] == 2


@pytest.mark.parametrize("priors, message", [
    ("abc", "priors must be a dict like {'sd': blm.HalfNormal(sigma=10)}, not str ('abc')"),
    ([blm.Flat()], "priors must be a dict like {'sd': blm.HalfNormal(sigma=10)}, not list"),
    ({"b": 3.0}, "the prior for 'b' must be a bayeslmm prior such as blm.Normal(mu=0, sigma=1), not 3.0"),
    ({1: blm.Flat()}, "prior keys are text like 'b_Days' or 'sd_Subject', not 1"),
    ({"b": blm.HalfNormal(sigma=1.0)}, "'b' is a coefficient that can be negative: HalfNormal(sigma=1) gives it "
                                       "no density below 0; use Normal, StudentT or Flat"),
    ({"sd_g__(Intercep)": blm.HalfNormal(sigma=1.0)}, "prior key(s) 'sd_g__(Intercep)' name no parameter"),
    ({"sigma": blm.HalfNormal(sigma=1e-9)}, "the prior HalfNormal(sigma=1e-09) on 'sigma' (set by 'sigma') has a "
                                            "typical value of 1e-09"),
])
def test_priors_are_checked_at_construction_for_every_method(toy, priors, message):
    with pytest.raises(blm.PriorError) as info:
        blm.LMM("y ~ x + (1 | g)", toy, priors=priors)  # before any fit: REML would ignore them
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("value", [1e308, 1e-300, -1e200])
def test_prior_parameters_out_of_range(value):
    with pytest.raises(blm.PriorError, match=r"must be between 1e-100 and 1e\+100 in size|must be positive"):
        blm.HalfNormal(sigma=value)
    with pytest.raises(blm.PriorError, match=r"must be between 1e-100 and 1e\+100 in size"):
        blm.Normal(mu=value, sigma=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"draws": 0}, "draws=0 must be between 1 and 10,000,000"),
    ({"chains": 0}, "chains=0 must be between 1 and 1,000"),
    ({"tune": -1}, "tune=-1 must be between 0 and 10,000,000"),
    ({"random_seed": "abc"}, "random_seed='abc' must be a whole number, not str"),
    ({"random_seed": -3}, "random_seed=-3 must be between 0 and"),
    ({"draws": 2.5}, "draws=2.5 must be a whole number, not float"),
    ({"draws": 200.0}, "draws=200.0 must be a whole number, not float (did you mean 200?)"),
    ({"draws": True}, "draws=True must be a whole number, not bool"),
    ({"target_accept": 1.0}, "target_accept=1.0 must be a number between 0 and 1"),
    ({"sampler": "stan"}, "unknown sampler 'stan': use one of nutpie, pymc, numpyro, blackjax"),
    ({"parametrization": 3}, "parametrization must be 'auto', 'marginal', 'crossed', 'marginal_mh' or 'full', not 3"),
    ({"progressbar": "yes"}, "progressbar='yes' must be True or False"),
])
def test_sample_arguments_are_checked_before_anything_runs(toy, kwargs, message):
    model = blm.LMM("y ~ x + (1 | g)", toy)
    with pytest.raises(blm.SettingsError) as info:
        model.sample(**kwargs)
    assert str(info.value).startswith(message)


def test_draws_that_would_not_fit_in_memory_are_refused_with_the_size(toy, monkeypatch):
    import bayeslmm.model as M

    model = blm.LMM("y ~ x + (1 | g)", toy)
    # 15 numbers a draw: 2 fixed effects, sigma, one sd, its 1 x 1 correlation slot, 10 group effects
    assert M.saved_scalars(model.design) == 15
    monkeypatch.setattr(M, "_available_memory", lambda: 8 * 2**30)  # 8 GB free
    with pytest.raises(blm.SettingsError, match=re.escape(
            "4 chain(s) x 10,000,000 draws x 15 saved numbers would take 4.5 GB of memory; 8.0 GB is available: "
            "use fewer draws or chains")):
        model.sample(draws=10**7, chains=4)
    monkeypatch.undo()
    with pytest.raises(blm.SettingsError, match=r"^1000 chain\(s\) x 10,000,000 draws x 15 saved numbers would "
                                                r"take 1\.1 TB of memory"):
        model.sample(draws=10**7, chains=1000)  # more than this machine has
    with pytest.raises(blm.SettingsError, match=r"^draws=1000000000000 must be between 1 and 10,000,000"):
        model.sample(draws=10**12)  # the case: refused by the explicit bound first


def test_fit_and_lmm_options_are_checked(toy):
    model = blm.LMM("y ~ x + (1 | g)", toy)
    with pytest.raises(blm.SettingsError, match=r"^method must be 'reml', 'ml' or 'map', not 1$"):
        model.fit(1)
    with pytest.raises(blm.SettingsError, match=r"^reml must be True or False, not 'false'$"):
        blm.lmm("y ~ x + (1 | g)", toy, reml="false")
    with pytest.raises(blm.SettingsError, match=r"^sampler setting\(s\) draws given, but method='auto' with "
                                                r"fallback='map' never samples"):
        blm.lmm("y ~ x + (1 | g)", toy, draws=10)
    with pytest.raises(blm.SettingsError, match=r"^draws=0 must be between"):
        blm.lmm("y ~ x + (1 | g)", toy, fallback="sample", draws=0)


def test_nan_r_hat_and_ess_do_not_pass_the_diagnostics(tmp_path, monkeypatch):
    """One draw gives R-hat and ESS = NaN; NaN compared with a threshold is False, so it used
    to pass as 'no problem'."""
    from conftest import write_posterior_file

    write_posterior_file(tmp_path / "one_draw.nc", chains=2, draws=1)
    post = blm.load(tmp_path / "one_draw.nc")
    monkeypatch.setattr(type(post), "diagnostics", lambda self: pd.DataFrame(
        {"r_hat": [np.nan], "ess_bulk": [np.nan], "ess_tail": [np.nan]}, index=["sigma"]))
    message = post.diagnostic_message()
    assert "R-hat > 1.01 for sigma" in message and "bulk ESS < 400 for sigma" in message


# ---------------------------------------------------------------- found beyond the list
def test_numbers_stored_as_text_are_not_silently_a_factor(toy):
    values = [f"{v:.4f}" for v in toy["x"]]
    values[5], values[17] = "n/a", "."
    raises_exactly(DataError, "column 'xt' holds numbers stored as text with 2 value(s) that are not numbers: "
                   "'n/a' (row 5), '.' (row 17); it would be fitted as a factor with 60 levels. Fix those values, "
                   "or make them missing with pd.to_numeric(data['xt'], errors='coerce'); for a factor on purpose, "
                   "convert the column with .astype('category')", "y ~ xt + (1 | g)", toy.assign(xt=values))
    # text factors and digit codes of a factor are still factors
    assert blm.LMM("y ~ f + (1 | g)", toy).design.fixed_names == ("(Intercept)", "fb", "fc")
    codes = toy.assign(code=np.tile(["1", "2", "3"], 20))
    assert blm.LMM("y ~ code + (1 | g)", codes).design.fixed_names == ("(Intercept)", "code2", "code3")


@pytest.mark.parametrize("option, guess", [("draw", "draws"), ("seed", "random_seed"), ("chain", "chains"),
                                           ("target_acept", "target_accept"), ("warmup", "tune")])
def test_a_misspelled_sample_option_names_the_intended_one(toy, option, guess):
    model = blm.LMM("y ~ x + (1 | g)", toy)
    with pytest.raises(blm.SettingsError, match=re.escape(f"unknown option {option}=10: did you mean {guess}=?")):
        model.sample(**{option: 10})


def test_perfect_fit_check_reads_a_posterior_too(toy):
    from bayeslmm.model import _warn_if_perfect

    design = blm.LMM("y ~ x + (1 | g)", toy).design

    class Draws:  # stands in for a PosteriorResult: only its residual-sd draws are read
        def __init__(self, sigma):
            self.values = np.full(40, sigma)

        def sigma_draws(self):
            return self.values

    with pytest.warns(blm.PerfectFitWarning, match="essentially perfect fit: the residual sd is 1e-09"):
        _warn_if_perfect(Draws(1e-9), design)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _warn_if_perfect(Draws(0.9), design).values[0] == 0.9


@settings(max_examples=80, deadline=None, print_blob=True)
@given(values=st.lists(st.one_of(st.integers(-50, 10**6), st.floats(-1e6, 1e6, allow_nan=False, width=32)),
                       min_size=2, max_size=8, unique_by=lambda v: float(v)),
       as_text=st.booleans())
def test_new_data_find_levels_by_their_text_as_r_does(values, as_text):
    """A level fitted from a number is found from the same number written as int, float or
    text (R's as.character); the property holds for any numbers, e.g. 1 and 1.0 and '1'."""
    from hypothesis import assume

    from bayeslmm.frontend.design import _level_label

    labels = [_level_label(float(v)) for v in values]
    assume(len(set(labels)) == len(labels))  # float32-equal values print alike
    n = len(values)
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"y": rng.normal(size=4 * n), "g": np.repeat(np.array(values, dtype=float), 4)})
    design = blm.LMM("y ~ 1 + (1 | g)", data).design
    block = design.blocks[0]
    new_values = [_level_label(float(v)) if as_text else float(v) for v in values]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes = design.new_codes(block, pd.DataFrame({"g": new_values}))
    assert [block.levels[c] for c in codes] == labels


def test_a_grouping_column_of_mixed_types_names_the_values(toy):
    raises_exactly(DataError, "grouping factor 'm': the values 1, '1' are of different types but print as the same "
                   "level '1' (R's as.character); make the column one type, e.g. data['m'].astype(str)",
                   "y ~ x + (1 | m)", toy.assign(m=[1, "1", 2, "2", 3, "a"] * 10))


# ---------------------------------------------------------------- harden2: loose ends
@pytest.mark.parametrize("formula, number, at", [
    ("y ~ 2 + (1 | g)", "2", 4), ("y ~ x + 2 + (1 | g)", "2", 8), ("y ~ x - 2 + (1 | g)", "2", 8),
    ("y ~ 1.5 + x + (1 | g)", "1.5", 4), ("y ~ x + (2 | g)", "2", 9), ("y ~ x + (x + 3 | g)", "3", 13),
    ("y ~ 2", "2", 4),
])
def test_a_bare_number_other_than_0_or_1_is_not_a_term(toy, formula, number, at):
    raises_exactly(FormulaError, f"the number {number} at position {at} is not a term: a formula's terms are "
                   f"columns, '1' (the intercept) and '0' or '-1' (no intercept); for a constant times a "
                   f"column write I({number} * x)", formula, toy)


def test_intercept_spellings_and_powers_still_parse(toy):
    base = blm.LMM("y ~ x + (1 | g)", toy).fit().fixef()["estimate"]
    for formula in ("y ~ 1 + x + (1 | g)", "y ~ 1.0 + x + (1 | g)", "y ~ 1e0 + x + (1 | g)",
                    "y ~ x**2 + (1 | g)"):
        got = blm.LMM(formula, toy).fit().fixef()["estimate"]
        np.testing.assert_allclose(got.loc[base.index], base, rtol=1e-10, err_msg=formula)
    no_intercept = blm.LMM("y ~ 0 + x + (1 | g)", toy).fit().fixef()
    assert list(no_intercept.index) == ["x"]


@pytest.mark.parametrize("literal, decimal, factor", [("1e-3", "0.001", 1e-3), ("2.5E2", "250", 250.0),
                                                      ("1e+3", "1000", 1e3), (".5e-1", "0.05", 0.05)])
def test_scientific_notation_inside_i_is_read_as_the_number(toy, literal, decimal, factor):
    """formulae's scanner has no exponents: the literal reaches it as a decimal, and the
    coefficient is the plain one divided by the factor (named as R prints it)."""
    plain = blm.LMM("y ~ x + (1 | g)", toy).fit().fixef()["estimate"]
    scaled = blm.LMM(f"y ~ I(x * {literal}) + (1 | g)", toy).fit()
    est = scaled.fixef()["estimate"]
    assert list(est.index) == ["(Intercept)", f"I(x * {decimal})"]
    assert est.iloc[1] == pytest.approx(plain["x"] / factor, rel=1e-8)
    assert est.iloc[0] == pytest.approx(plain["(Intercept)"], rel=1e-8)
    # the same transform on new data
    new = toy.head(4)
    np.testing.assert_allclose(scaled.predict(new).to_numpy().ravel(),
                               blm.LMM("y ~ x + (1 | g)", toy).fit().predict(new).to_numpy().ravel(), rtol=1e-8)


def test_scientific_notation_in_the_response_and_a_bar(toy):
    r = blm.LMM("I(y * 1e3) ~ x + (I(x * 1e-2) | g)", toy).fit()
    assert list(r.fixef().index) == ["(Intercept)", "x"]
    assert list(r.varcorr()["var1"].dropna().unique())[:2] == ["(Intercept)", "I(x * 0.01)"]


def test_scientific_notation_leaves_names_and_text_alone():
    from bayeslmm.frontend.formula import decimal_literals

    assert decimal_literals("y ~ x1e3 + `a 1e3` + C(f, Treatment('1e3')) + I(x*1e-3)") == \
        "y ~ x1e3 + `a 1e3` + C(f, Treatment('1e3')) + I(x*0.001)"
    assert decimal_literals("I(x * 2e20)") == "I(x * 200000000000000000000.0)"


def test_a_number_too_large_for_a_float_is_named(toy):
    raises_exactly(FormulaError, "the number 1e400 at position 10 is not allowed in a formula: it is too large "
                   "for a floating-point number", "y ~ I(x * 1e400) + (1 | g)", toy)


@pytest.fixture(scope="module")
def sleep_deviance():
    data = blm.datasets.load("sleepstudy")
    return blm.LMM("Reaction ~ Days + (Days | Subject)", data)


@pytest.mark.parametrize("theta, message", [
    ("abc", "theta must be 3 numbers (the layout's order, see .layout.names), not str 'abc'"),
    ([1, "x", 2], "theta must be 3 numbers (the layout's order, see .layout.names), not list \"[1, 'x', 2]\""),
    ([1.0, 0.0], "theta must have 3 entries (the layout's order, see .layout.names), not 2"),
    ([1.0, np.nan, 1.0], "theta has NaN or infinite entries at position(s) 1: [nan]"),
    ([1.0, 0.0, np.inf], "theta has NaN or infinite entries at position(s) 2: [inf]"),
])
def test_make_deviance_names_a_bad_theta(sleep_deviance, theta, message):
    from bayeslmm.errors import FitError

    dev = blm.make_deviance(sleep_deviance.design)
    for evaluate in (dev, dev.solve):
        with pytest.raises(FitError) as info:
            evaluate(theta)
        assert str(info.value) == message
    # a good theta still evaluates, to lme4's value at the initial theta (sleepstudy REML)
    assert dev([1.0, 0.0, 1.0]) == pytest.approx(1773.68033061, rel=1e-9)


def test_make_deviance_needs_a_design(sleep_deviance):
    from bayeslmm.errors import FitError

    with pytest.raises(FitError, match=r"^make_deviance needs a Design \(a model's is model.design\), not LMM$"):
        blm.make_deviance(sleep_deviance)
    with pytest.raises(FitError, match=r"^reml must be True or False, not 'no'$"):
        blm.make_deviance(sleep_deviance.design, reml="no")


def _open_handles(path) -> list[str]:
    """What of this process still holds ``path`` open: h5py file ids, xarray's file cache,
    and (on Linux) file descriptors."""
    import os

    import h5py
    from xarray.backends.file_manager import FILE_CACHE

    target = os.path.realpath(path)
    held = [f"h5py:{fid.name.decode() if isinstance(fid.name, bytes) else fid.name}"
            for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)
            if os.path.realpath(h5py.File(fid).filename) == target]
    held += [f"xarray-cache:{key}" for key in list(FILE_CACHE.keys()) if target in str(key)]
    if os.path.isdir("/proc/self/fd"):
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")) == target:
                    held.append(f"fd:{fd}")
            except OSError:
                pass
    return held


def _zero_first_chunk(path, variable: str) -> None:
    import h5py

    with h5py.File(path, "r") as handle:
        info = handle[variable].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset:info.byte_offset + info.size] = b"\0" * info.size
    path.write_bytes(bytes(raw))


def test_a_failed_load_leaves_the_file_closed(tmp_path):
    """Every way load() can fail (truncated, undecodable attribute at open, a corrupt chunk
    while reading, an edited formula after reading) leaves no handle on the file, even while
    the error is held: the same process can overwrite, delete and reload it."""
    import shutil

    import h5py
    import xarray as xr

    from bayeslmm.results.posterior import PosteriorFileError

    source = Path(__file__).resolve().parent / "data" / "v0.1.0_dyestuff.nc"
    path = tmp_path / "posterior.nc"

    def truncate():
        raw = source.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])

    def undecodable_units():
        shutil.copy(source, path)
        with h5py.File(path, "r+") as handle:
            handle["posterior/sigma"].attrs["units"] = "days since garbage"

    def corrupt_chunk():  # the file opens; reading the compressed draws fails
        with xr.open_datatree(source, engine="h5netcdf") as tree:
            tree = tree.load()
        tree.to_netcdf(path, engine="h5netcdf",
                       encoding={"/posterior": {v: {"zlib": True} for v in tree["posterior"].data_vars}})
        _zero_first_chunk(path, "posterior/sigma")

    def edited_formula():  # read completely, refused afterwards
        shutil.copy(source, path)
        with h5py.File(path, "r+") as handle:
            handle["posterior"].attrs["formula"] = "Yield ~ nothing + (1 | Batch)"

    for damage in (truncate, undecodable_units, corrupt_chunk, edited_formula):
        damage()
        with pytest.raises(PosteriorFileError) as info:
            blm.load(path)
        assert info.value.__cause__ is not None or "formula" in str(info.value)
        assert _open_handles(path) == [], damage.__name__  # the error (and its traceback) is still held
        shutil.copy(source, path)  # overwrite in place
        assert blm.load(path).nobs == 30
        path.unlink()
        assert not path.exists()
        shutil.copy(source, path)
        assert blm.load(path).fixef()["mean"].iloc[0] == pytest.approx(1527.239597, rel=1e-8)
        path.unlink()


@pytest.mark.parametrize("path", [None, 12, [1], "", 2.5])
def test_load_and_to_netcdf_need_a_file_name(path, tmp_path, monkeypatch):
    from bayeslmm.results.posterior import PosteriorFileError

    with pytest.raises(PosteriorFileError, match=r"^load\(\) needs a file name \(a str or pathlib.Path\), not "):
        blm.load(path)
    post = blm.load(Path(__file__).resolve().parent / "data" / "v0.1.0_dyestuff.nc")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PosteriorFileError, match=r"^to_netcdf\(\) needs a file name"):
        post.to_netcdf(path)
    assert list(tmp_path.iterdir()) == []  # no file named 'None' or '12'


# ---------------------------------------------------------------- the verbs of results
@pytest.fixture(scope="module")
def results():
    """A REML fit, a saved posterior (no sampling) and a GLMM fit, to call verbs on."""
    sleep = blm.datasets.load("sleepstudy")
    point = blm.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit()
    posterior = blm.load(Path(__file__).resolve().parent / "data" / "v0.1.0_dyestuff.nc")
    cbpp = blm.datasets.load("cbpp")
    glmm = blm.GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial").fit()
    return {"point": point, "posterior": posterior, "glmm": glmm}


def test_lme4s_condvar_says_what_to_write(results):
    from bayeslmm.errors import SettingsError

    for kind in ("point", "posterior", "glmm"):
        with pytest.raises(SettingsError) as info:
            results[kind].ranef(condVar=True)
        assert str(info.value) == ("ranef() has no argument 'condVar': write ranef(tidy=True) for the conditional "
                                   "modes with their conditional standard deviations (lme4's condVar=TRUE) "
                                   "(its arguments: tidy, prob)")
    tidy = results["point"].ranef(tidy=True)  # what the message says works, with the conditional sds
    assert list(tidy.columns) == ["group", "level", "term", "estimate", "std_error", "lower", "upper"]
    assert (tidy["std_error"] > 0).all()
    wide = results["point"].ranef()["Subject"]
    np.testing.assert_allclose(tidy["estimate"].to_numpy(), wide.to_numpy().ravel(), rtol=1e-12)


@pytest.mark.parametrize("kind, call, message", [
    ("point", lambda r: r.fixef(bogus=1), "fixef() has no argument 'bogus' (its arguments: ddf)"),
    ("point", lambda r: r.predict(), "predict() needs newdata (its arguments: newdata, include_random, kind, "
                                     "allow_new_levels, random_seed, prob)"),
    ("point", lambda r: r.predict([1, 2]), "predict(newdata=...): newdata must be a pandas DataFrame, not list"),
    ("point", lambda r: r.predict(blm.datasets.load("sleepstudy"), re_form=None),
     "predict() has no argument 're_form': write include_random=False for re.form=NA (fixed effects only) or "
     "include_random=True for re.form=NULL (its arguments: newdata, include_random, kind, allow_new_levels, "
     "random_seed, prob)"),
    ("point", lambda r: r.icc(prob="abc"), "icc(prob=...): prob must be a probability strictly between 0 and 1 "
                                           "(like 0.95), not 'abc'"),
    ("point", lambda r: r.r2(prob=1.5), "r2(prob=...): prob must be a probability strictly between 0 and 1 "
                                        "(like 0.95), not 1.5"),
    ("point", lambda r: r.ranef(tidy="yes"), "ranef(tidy=...): tidy must be True or False, not 'yes'"),
    ("point", lambda r: r.ppc(draws=-1), "ppc(draws=...): draws must be from 1 to 1,000,000, not -1"),
    ("point", lambda r: r.ppc(draws=10**12), "ppc(draws=...): draws must be from 1 to 1,000,000, not 1000000000000"),
    ("point", lambda r: r.ppc(random_seed=2.5), "ppc(random_seed=...): random_seed must be None, a non-negative "
                                                "whole number or a numpy Generator, not 2.5"),
    ("point", lambda r: r.tidy(effects=None), "tidy(effects=...): effects must be a name or a list of names like "
                                              "('fixed', 'ran_pars'), not None"),
    ("point", lambda r: r.singular_terms(tol="abc"), "singular_terms(tol=...): tol must be a positive number, "
                                                     "not 'abc'"),
    ("point", lambda r: r.contest("abc"), "contest(L=...): L must be a vector or a matrix of finite numbers, one "
                                          "column per fixed effect, not 'abc'"),
    ("point", lambda r: r.anova(type=True), "anova(type=...): type must be a whole number, not True"),
    ("point", lambda r: r.summary(ddf=3), "summary(ddf=...): ddf must be text, not 3"),
    ("posterior", lambda r: r.fixef(prob=None), "fixef(prob=...): prob must be a probability strictly between 0 "
                                                "and 1 (like 0.95), not None"),
    ("posterior", lambda r: r.varcorr(prob=[0.9]), "varcorr(prob=...): prob must be a probability strictly "
                                                   "between 0 and 1 (like 0.95), not [0.9]"),
    ("posterior", lambda r: r.coef(prob=float("nan")), "coef(prob=...): prob must be a probability strictly "
                                                       "between 0 and 1 (like 0.95), not nan"),
    ("posterior", lambda r: r.summary(0.95, 3), "summary() takes at most 1 arguments (prob): too many positional "
                                                "arguments"),
    ("glmm", lambda r: r.simulate(nsim=2.5), "simulate(nsim=...): nsim must be a whole number, not 2.5"),
    ("glmm", lambda r: r.shrinkage(group="Subject"), "shrinkage(group=...): group must be the name of a grouping "
                                                     "factor (herd), not 'Subject'"),
    ("glmm", lambda r: r.binned_residuals(bins=0), "binned_residuals(bins=...): bins must be from 1 to 1,000,000, "
                                                   "not 0"),
    ("glmm", lambda r: r.varcorr(prob=0.9), "varcorr() has no argument 'prob' (its arguments: none)"),
])
def test_result_verbs_name_the_bad_argument(results, kind, call, message):
    from bayeslmm.errors import SettingsError

    with pytest.raises(SettingsError) as info:
        call(results[kind])
    assert str(info.value) == message


_BAD_VALUES = [None, "abc", [1, 2], float("nan"), -1, 10 ** 12, 2.5, True]
_SKIP = {"confint", "loo", "to_netcdf", "sample"}  # bootstraps/sampling: too slow here; to_netcdf is tested above


def _verb_calls(results):
    import inspect

    needs = {"predict": {"newdata": blm.datasets.load("sleepstudy").head(3)}, "contest": {"L": [0.0, 1.0]}}
    for kind, result in results.items():
        for name in sorted(n for n in dir(type(result)) if not n.startswith("_")):
            attr = inspect.getattr_static(type(result), name)
            if not inspect.isfunction(attr) or name in _SKIP or name.startswith("plot"):
                continue
            required = needs.get(name, {}) if kind == "point" else {}
            if kind != "point" and name in needs and name != "predict":
                continue
            if kind == "posterior" and name == "predict":
                required = {"newdata": result.design.data.head(3)}
            if kind == "glmm" and name == "predict":
                required = {}
            parameters = [p for p in inspect.signature(attr).parameters.values()
                          if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            yield kind, result, name, required, parameters


def test_no_verb_ends_in_a_raw_error(results):
    """Every public verb of the three result kinds, called with an unknown keyword and with
    each argument set to None, text, a list, NaN, -1, 10**12, 2.5 and True: it works or
    raises a BayesLMMError, never a raw Python exception, and nothing allocates 10**12 draws."""
    import time

    raw = []
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, result, name, required, parameters in _verb_calls(results):
            calls = [({"bogus_argument": 1}, "bogus")]
            calls += [({p.name: value}, f"{p.name}={value!r}") for p in parameters for value in _BAD_VALUES]
            for extra, label in calls:
                try:
                    getattr(result, name)(**{**required, **extra})
                except BayesLMMError as exc:
                    if label == "bogus":
                        assert "has no argument 'bogus_argument'" in str(exc), (kind, name, str(exc))
                except Exception as exc:  # noqa: BLE001 - the point of the test
                    raw.append(f"{kind}.{name}({label}): {type(exc).__name__}: {exc}")
                else:
                    assert label != "bogus", f"{kind}.{name} accepted an unknown keyword"
    assert raw == []
    assert time.perf_counter() - started < 120


# ---------------------------------------------------------------- the public functions
_WRONG = [None, "abc", [1, 2], float("nan"), -1, 10 ** 12, 2.5, True, {"a": 1}]


@pytest.fixture(scope="module")
def sleep_ml_pair():
    sleep = blm.datasets.load("sleepstudy")
    return (blm.LMM("Reaction ~ 1 + (Days | Subject)", sleep).fit(method="ml"),
            blm.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit(method="ml"))


@pytest.mark.parametrize("value", _WRONG, ids=repr)
def test_public_functions_answer_wrong_types_with_our_errors(sleep_ml_pair, value):
    """Each argument of the public functions set to None, text, a list, NaN, a negative, a
    huge number (10**12 simulations once hung), 2.5, True or a dict: the call works or raises
    a BayesLMMError; never a raw Python exception (each call has a few seconds at most)."""
    import time

    small, fit = sleep_ml_pair
    cbpp = blm.datasets.load("cbpp")
    sleep = blm.datasets.load("sleepstudy")
    glmm_formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    calls = {
        "LMM(formula)": lambda v: blm.LMM(v, sleep),
        "LMM(data)": lambda v: blm.LMM("Reaction ~ Days + (1 | Subject)", v),
        "LMM(priors)": lambda v: blm.LMM("Reaction ~ Days + (1 | Subject)", sleep, priors=v),
        "GLMM(family)": lambda v: blm.GLMM(glmm_formula, cbpp, family=v),
        "GLMM(link)": lambda v: blm.GLMM(glmm_formula, cbpp, link=v),
        "GLMM(weights)": lambda v: blm.GLMM(glmm_formula, cbpp, weights=v),
        "GLMM.fit(n_agq)": lambda v: blm.GLMM(glmm_formula, cbpp).fit(n_agq=v),
        "LMM.fit(method)": lambda v: blm.LMM("Reaction ~ Days + (1 | Subject)", sleep).fit(method=v),
        "lmm(method)": lambda v: blm.lmm("Reaction ~ Days + (1 | Subject)", sleep, method=v),
        "lmm(fallback)": lambda v: blm.lmm("Reaction ~ Days + (1 | Subject)", sleep, fallback=v),
        "load": lambda v: blm.load(v),
        "anova(fit, v)": lambda v: blm.anova(small, v),
        "anova(names)": lambda v: blm.anova(small, fit, names=v),
        "compare(fit, v)": lambda v: blm.compare(fit, v),
        "make_deviance": lambda v: blm.make_deviance(v),
        "datasets.load": lambda v: blm.datasets.load(v),
        "power(fit)": lambda v: blm.power(v, "Days", nsim=2, n_jobs=1),
        "power(test)": lambda v: blm.power(fit, v, nsim=2, n_jobs=1),
        "power(nsim)": lambda v: blm.power(fit, "Days", nsim=v, n_jobs=1),
        "power(fixef)": lambda v: blm.power(fit, "Days", nsim=2, fixef=v, n_jobs=1),
        "power(varcorr)": lambda v: blm.power(fit, "Days", nsim=2, varcorr=v, n_jobs=1),
        "power_curve(along)": lambda v: blm.power_curve(fit, "Days", v, [10, 12], nsim=2, n_jobs=1),
        "power_curve(sizes)": lambda v: blm.power_curve(fit, "Days", "Subject", v, nsim=2, n_jobs=1),
        "power_curve(nsim)": lambda v: blm.power_curve(fit, "Days", "Subject", [10], nsim=v, n_jobs=1),
    }
    raw = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, call in calls.items():
            started = time.perf_counter()
            try:
                call(value)
            except BayesLMMError:
                pass
            except Exception as exc:  # noqa: BLE001 - the point of the test
                raw.append(f"{label}: {type(exc).__name__}: {exc}")
            assert time.perf_counter() - started < 30, label
    assert raw == []


def test_public_function_messages_name_the_argument(sleep_ml_pair):
    small, fit = sleep_ml_pair
    cbpp = blm.datasets.load("cbpp")
    with pytest.raises(BayesLMMError, match=r"^nsim must be at most 1,000,000, got 1000000000000$"):
        blm.power(fit, "Days", nsim=10 ** 12)
    with pytest.raises(BayesLMMError, match=r"^fixef must be a dict by name \(like \{'Days': 5.0\}\), not list$"):
        blm.power(fit, "Days", nsim=2, fixef=[5.0])
    with pytest.raises(BayesLMMError, match=r"^test must be a fixed effect's name or a list of names, like 'Days', "
                                            r"not 3$"):
        blm.power(fit, 3, nsim=2)
    with pytest.raises(BayesLMMError, match=r"^sizes must be a list of whole numbers of levels from 2 to 1,000,000, "
                                            r"got 'abc'$"):
        blm.power_curve(fit, "Days", "Subject", "abc", nsim=2)
    with pytest.raises(BayesLMMError, match=r"^names must be a list with one name per fit, not str 'ab'$"):
        blm.anova(small, fit, names="ab")
    with pytest.raises(BayesLMMError, match=r"^names must differ from each other, got \['a', 'a'\]$"):
        blm.anova(small, fit, names=["a", "a"])
    with pytest.raises(blm.SettingsError, match=r"^n_agq must be a whole number from 0 to 25 \(glmer's nAGQ\), "
                                                r"not 2.5$"):
        blm.GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp).fit(n_agq=2.5)
    with pytest.raises(DataError, match=r"^weights must be a column name or one number per row, not dict$"):
        blm.GLMM("p ~ period + (1 | herd)", cbpp.assign(p=cbpp["incidence"] / cbpp["size"]), weights={"a": 1})
    named = blm.anova(small, fit, names=("small", "days"))  # a tuple of names still works
    assert list(named.index) == ["small", "days"]
