"""A formula is data, not code: injection payloads through every entry point.

Each payload would create a marker file if anything evaluated it (a shell command, numpy's
save, Python's open). From ``blm.LMM``, ``blm.lmm``, the command line's ``--formula``, a
model file's ``formula`` and ``blm.load`` of a posterior whose stored formula was edited,
each must raise a FormulaError (the CLI: exit status 2 with the message) and the marker must
not exist. The formula checker is also exercised on randomized expressions (hypothesis).
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayeslmm as blm
from bayeslmm import cli
from bayeslmm.errors import FormulaError
from bayeslmm.frontend.design import FORMULA_NAMESPACE
from bayeslmm.frontend.formula import expression_columns, parse_formula
from bayeslmm.results.posterior import PosteriorFileError

from conftest import write_posterior_file

# {m} is the marker path; every payload creates it if evaluated (os.system, np.save, open, ...)
PAYLOADS = [
    "y ~ I(np.lib._npyio_impl.os.system('touch {m}')) + (1 | g)",
    "y ~ np.lib._npyio_impl.os.system('touch {m}') + (1 | g)",
    "np.lib._npyio_impl.os.system('touch {m}') ~ x + (1 | g)",
    "y ~ x + (I(np.lib._npyio_impl.os.system('touch {m}')) | g)",
    "y ~ x + (0 + np.lib._npyio_impl.os.system('touch {m}') | g)",
    "y ~ numpy.lib._npyio_impl.os.system('touch {m}') + (1 | g)",
    "y ~ C(np.lib._npyio_impl.os.system('touch {m}')) + (1 | g)",
    "y ~ log(np.lib._npyio_impl.os.system('touch {m}')) + (1 | g)",
    "y ~ I(__import__('os').system('touch {m}')) + (1 | g)",
    "y ~ __import__('os').system('touch {m}') + (1 | g)",
    "y ~ I(getattr(getattr(np, 'lib'), 'format').open_memmap('{m}', 'w+', 'f8', 3)) + (1 | g)",
    "y ~ I(x.__class__.__mro__) + (1 | g)",
    "y ~ I(np.log.__class__.__mro__) + (1 | g)",
    "y ~ np.log.__class__('{m}') + (1 | g)",
    "y ~ I((lambda: __import__('os').system('touch {m}'))()) + (1 | g)",
    "y ~ I(f'{{__import__(0)}}') + (1 | g)",
    "y ~ I(x @ x) + (1 | g)",
    "y ~ I('{{0.__class__}}'.format(x)) + (1 | g)",
    "y ~ I('touch {m}'.format()) + (1 | g)",
    "y ~ I(np.save('{m}', x)) + (1 | g)",
    "y ~ np.save('{m}', x) + (1 | g)",
    "y ~ I(np.load('{m}')) + (1 | g)",
    "y ~ I(np.fromfile('{m}')) + (1 | g)",
    "y ~ I(np.lib.format.open_memmap('{m}', 'w+', 'f8', 3)) + (1 | g)",
    "y ~ I(np.ctypeslib.load_library('libc', '/lib')) + (1 | g)",
    "y ~ I(eval('1')) + (1 | g)",
    "y ~ I(exec('import os')) + (1 | g)",
    "y ~ I(open('{m}', 'w')) + (1 | g)",
    "y ~ open('{m}', 'w') + (1 | g)",
    "y ~ C(x, levels=__import__('os').system('touch {m}')) + (1 | g)",
    "y ~ C(x, Treatment(open('{m}', 'w'))) + (1 | g)",
    "y ~ C(x, contrast=open('{m}', 'w')) + (1 | g)",
    "y ~ T(x, ref=open('{m}', 'w')) + (1 | g)",
    "y ~ poly(x, degree=open('{m}', 'w')) + (1 | g)",
    "y ~ scale(x, open('{m}', 'w')) + (1 | g)",
    "y ~ I(x, **{{'a': open('{m}', 'w')}}) + (1 | g)",
    "y ~ I(*[open('{m}', 'w')]) + (1 | g)",
    "y ~ I(x if open('{m}', 'w') else x) + (1 | g)",
    "y ~ I((z := open('{m}', 'w'))) + (1 | g)",
    "y ~ I([open('{m}', 'w') for _ in x]) + (1 | g)",
    "y ~ I(np.__dict__['save']('{m}', x)) + (1 | g)",
    "y ~ I(x[open('{m}', 'w')]) + (1 | g)",
    "y ~ I(x or open('{m}', 'w')) + (1 | g)",
    "y ~ {{open('{m}', 'w')}} + (1 | g)",
    "y ~ I(b'{m}') + (1 | g)",
    # a backtick inside a text literal must not hide what follows it from the checker
    "y ~ I(x + '`') + np.lib._npyio_impl.os.system('touch {m} #`') + (1 | g)",
    # a ')' inside a text literal must not end the checked call early
    "y ~ I(x + ')') + open('{m}', 'w') + (1 | g)",
    "y ~ I(x + \"')\" + open('{m}', 'w')) + (1 | g)",
    "y ~ I(x + '\\') + open(\\'{m}\\', \\'w\\')') + (1 | g)",
    "y ~ I(x) + (1 | g) + np.save('{m}', x)",
    "y ~ x + (1 | g:np.save('{m}', x))",
    "y ~ offset(open('{m}', 'w')) + (1 | g)",
    "y ~ I(`np.lib._npyio_impl.os.system`('touch {m}')) + (1 | g)",
    "y ~ I(np . lib . _npyio_impl . os . system('touch {m}')) + (1 | g)",
    "y ~ I(np.\\\nlib._npyio_impl.os.system('touch {m}')) + (1 | g)",
]


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({"y": rng.normal(size=40), "x": rng.normal(size=40), "g": np.repeat(np.arange(8), 5)})


def _payload(template: str, marker) -> str:
    return template.format(m=str(marker))


def _assert_not_run(marker) -> None:
    # np.save adds '.npy' to a path without it
    assert not os.path.exists(marker) and not os.path.exists(f"{marker}.npy"), "the payload ran"


@pytest.mark.parametrize("template", PAYLOADS)
def test_payloads_from_lmm_and_lmm_workflow(template, data, tmp_path):
    marker = tmp_path / "pwned"
    formula = _payload(template, marker)
    for entry in (blm.LMM, blm.lmm):
        with pytest.raises(FormulaError):
            entry(formula, data)
        _assert_not_run(marker)


GLMM_PAYLOADS = [
    "cbind(np.lib._npyio_impl.os.system('touch {m}'), 1) ~ x + (1 | g)",
    "cbind(k, __import__('os').system('touch {m}')) ~ x + (1 | g)",
    "cbind(k, n - k, open('{m}', 'w')) ~ x + (1 | g)",
    "k ~ x + offset(np.lib._npyio_impl.os.system('touch {m}')) + (1 | g)",
    "k ~ x + offset(log(open('{m}', 'w'))) + (1 | g)",
    "k ~ x + offset (open('{m}', 'w')) + (1 | g)",
]


@pytest.mark.parametrize("template", PAYLOADS + GLMM_PAYLOADS)
def test_payloads_from_glmm(template, data, tmp_path):
    # a GLMM's formula admits cbind() on the left and offset() on the right: their arguments
    # are checked like every other expression
    marker = tmp_path / "pwned"
    counts = data.assign(k=np.arange(40) % 5, n=5)
    with pytest.raises(FormulaError):
        blm.GLMM(_payload(template, marker), counts, family="poisson" if "offset" in template else "binomial")
    _assert_not_run(marker)


@pytest.mark.parametrize("template", PAYLOADS[:12] + PAYLOADS[19:30])
def test_payloads_from_the_command_line_and_a_model_file(template, data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    formula = _payload(template, marker)
    csv = tmp_path / "d.csv"
    data.to_csv(csv, index=False)
    assert cli.main(["fit", "--data", str(csv), "--formula", formula, "--method", "reml"]) == 2
    assert "bayeslmm: error: " in capsys.readouterr().err
    _assert_not_run(marker)
    model_file = tmp_path / "m.toml"
    # a JSON string is a valid TOML basic string (same escapes)
    model_file.write_text(f"data = {json.dumps(str(csv))}\nformula = {json.dumps(formula)}\nmethod = \"reml\"\n")
    assert cli.main(["fit", str(model_file)]) == 2
    err = capsys.readouterr().err
    assert "bayeslmm: error: " in err and "Traceback" not in err
    _assert_not_run(marker)


def _posterior_file(path, formula: str) -> None:
    """A file as PosteriorResult.to_netcdf writes it, with the attributes blm.load rebuilds the
    model from (written directly, so that this test does not depend on a sampler)."""
    write_posterior_file(path, formula)


def test_payloads_from_an_edited_posterior_file(tmp_path):
    h5netcdf = pytest.importorskip("h5netcdf")
    path = tmp_path / "post.nc"
    _posterior_file(path, "Reaction ~ Days + (1 | Subject)")
    assert blm.load(path).design.nobs == 180  # the unedited file loads
    for k, template in enumerate(PAYLOADS[:3] + PAYLOADS[18:22] + PAYLOADS[27:29]):
        marker = tmp_path / f"pwned{k}"
        edited = tmp_path / f"edited{k}.nc"
        edited.write_bytes(path.read_bytes())
        formula = _payload(template, marker).replace("y ~", "Reaction ~").replace("(1 | g)", "(1 | Subject)")
        with h5netcdf.File(edited, "r+") as handle:  # edit the stored formula in place
            handle["posterior"].attrs["formula"] = formula
        with pytest.raises(PosteriorFileError, match="saved formula, data and priors do not make a model") as info:
            blm.load(edited)
        assert isinstance(info.value.__cause__, FormulaError)
        _assert_not_run(marker)


def test_an_edited_prior_class_in_a_posterior_file_names_only_a_prior(tmp_path):
    # load() built priors with getattr(priors_module, name)(**kwargs): any function of the module
    h5netcdf = pytest.importorskip("h5netcdf")
    path = tmp_path / "post.nc"
    _posterior_file(path, "Reaction ~ Days + (1 | Subject)")
    for kind in ("resolve_priors", "warnings", "__builtins__", "np"):
        edited = tmp_path / f"{kind}.nc"  # a copy each: a failed load may keep its file open
        edited.write_bytes(path.read_bytes())
        with h5netcdf.File(edited, "r+") as handle:
            handle["posterior"].attrs["priors_json"] = json.dumps({"sd": {"class": kind, "kwargs": {}}})
        with pytest.raises(PosteriorFileError, match=f"unknown prior class '{kind}': use one of Normal, StudentT"):
            blm.load(edited)


def test_the_environment_holds_only_the_table():
    # what formulae can resolve by name besides columns: the elementwise transforms, and
    # np / numpy tables that expose those and nothing else
    assert set(FORMULA_NAMESPACE) == {"np", "numpy", "log", "log10", "log2", "log1p", "exp", "sqrt", "abs"}
    table = FORMULA_NAMESPACE["np"]
    assert table.log is np.log and table.abs is np.abs
    for name in ("lib", "save", "load", "ctypeslib", "__class__", "__dict__", "__getattribute__", "_functions"):
        with pytest.raises(AttributeError):
            getattr(table, name)
    with pytest.raises(AttributeError):
        table.log = print


def test_documented_transforms_still_work(data):
    rng = np.random.default_rng(9)
    frame = data.assign(f=np.tile(["a", "b", "c", "d"], 10), pos=np.exp(rng.normal(size=40)),
                        **{"my col": rng.normal(size=40), "x.1": rng.normal(size=40)})
    cases = {
        "np.log(pos) ~ x + (1 | g)": None, "log(pos) ~ x + (1 | g)": None, "numpy.log(pos) ~ x + (1 | g)": None,
        "y ~ I(x ** 2) + I(x - 5) + I(x > 0) + (1 | g)": ["(Intercept)", "I(x ** 2)", "I(x - 5)", "I(x > 0)"],
        "y ~ log10(pos) + exp(x) + (1 | g)": None, "y ~ log2(pos) + abs(x) + (1 | g)": None,
        "y ~ log1p(pos) + sqrt(pos) + (1 | g)": None,
        "y ~ scale(x) + center(pos) + standardize(`my col`) + (1 | g)": None,
        "y ~ C(f, Treatment('b')) + (1 | g)": ["(Intercept)", "C(f, Treatment('b'))a",
                                              "C(f, Treatment('b'))c", "C(f, Treatment('b'))d"],
        "y ~ C(f, Sum) + (1 | g)": None, "y ~ T(f, ref='c') + (1 | g)": None, "y ~ S(f, omit='a') + (1 | g)": None,
        "y ~ poly(x, 2) + poly(pos, degree=2, raw=True) + (1 | g)": None,
        "y ~ I(x.1 * 2) + `my col` + (1 + I(x.1 / 2) | g)": None,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for formula, names in cases.items():
            model = blm.LMM(formula, frame)
            assert np.all(np.isfinite(model.design.X)), formula
            if names is not None:
                assert list(model.design.fixed_names) == names, formula
    model = blm.LMM("y ~ I(x - 5) + I(x.1 * 2) + (1 | g)", frame)
    assert np.allclose(model.design.X[:, 1], frame["x"] - 5.0)
    assert np.allclose(model.design.X[:, 2], frame["x.1"] * 2.0)


def test_the_environment_alone_stops_a_payload_that_got_past_the_checks(data, tmp_path):
    # defence in depth: hand formulae a payload directly (as if the checker had a hole);
    # its dotted lookup meets the table, not numpy
    from bayeslmm.frontend.design import _formulae

    marker = tmp_path / "pwned"
    with pytest.raises(FormulaError, match="'lib' is not a function a formula can use"):
        _formulae(f"y ~ I(np.lib._npyio_impl.os.system('touch {marker}'))", data, "the fixed part")
    _assert_not_run(marker)


@pytest.mark.parametrize("formula, position, start", [
    ("y ~ I(x.__class__) + (1 | g)", 6, "the name 'x.__class__' at position 6 is not allowed in a formula"),
    ("y ~ x + I('a'.upper()) + (1 | g)", 10, "calling ''a'.upper' at position 10 is not allowed"),
    ("y ~ x + I(x[0]) + (1 | g)", 10, "'x[0]' (a subscript) at position 10 is not allowed"),
    ("y ~ x + I(lambda: x) + (1 | g)", 10, "'lambda: x' (a lambda) at position 10 is not allowed"),
    ("y ~ x + I(x @ x) + (1 | g)", 10, "'x @ x' (this operator) at position 10 is not allowed"),
    ("y ~ x + I(x, 2) + (1 | g)", 13, "an extra argument to I() (it takes x) at position 13"),
    ("y ~ x + C(x, bad=1) + (1 | g)", 17, "the keyword 'bad=' (is not an option of C(); options: contrast, "
                                          "levels) at position 17"),
    ("y ~ x + poly(x, 99) + (1 | g)", 16, "degree=99 of poly() at position 16 is not allowed in a formula: give a "
                                          "whole number from 1 to 20"),
    ("y ~ x + I(f'a') + (1 | g)", 10, "a prefixed text literal (f'...') at position 10 is not allowed"),
    ("y ~ x + np.lib.os.system(1) + (1 | g)", 8, "unknown function 'np.lib.os.system' in the formula (position 8)"),
    ("y ~ x + (I(eval(1)) | g)", 11, "unknown function 'eval' in the formula (position 11)"),
    ("y ~ x + I(é.__class__) + (1 | g)", 10, "the name 'é.__class__' at position 10"),
])
def test_refusals_name_the_position(formula, position, start):
    with pytest.raises(FormulaError) as info:
        parse_formula(formula)
    message = str(info.value)
    assert message.startswith(start), message
    caret = message.splitlines()[-1]
    assert caret.index("^") - 4 == position


# ---------------------------------------------------------------- randomized
_FORBIDDEN_CALLS = ["eval", "exec", "open", "__import__", "getattr", "np.save", "np.load", "np.lib.os.system",
                    "numpy.fromfile", "np.ctypeslib.load_library", "compile", "globals", "vars", "x.__class__"]
_ALLOWED_CALLS = ["I", "log", "np.log", "numpy.exp", "sqrt", "abs", "scale", "center"]


@st.composite
def _expressions(draw, depth=3):
    """Random column expressions built from the grammar, with or without a forbidden call."""
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(["x", "y2", "`my col`", "x.1", "2", "0.5"]))
    kind = draw(st.sampled_from(["binary", "call", "neg"]))
    if kind == "binary":
        op = draw(st.sampled_from(["+", "-", "*", "/", "**"]))
        return f"({draw(_expressions(depth - 1))} {op} {draw(_expressions(depth - 1))})"
    if kind == "neg":
        return f"-{draw(_expressions(depth - 1))}"
    return f"{draw(st.sampled_from(_ALLOWED_CALLS))}({draw(_expressions(depth - 1))})"


@settings(max_examples=150, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
@given(inner=_expressions(), bad=st.sampled_from(_FORBIDDEN_CALLS), where=st.integers(0, 2))
def test_random_expressions_are_accepted_and_any_forbidden_call_refused(inner, bad, where):
    good = f"I({inner})"
    columns = [name for name, _ in expression_columns(good)]
    assert set(columns) <= {"x", "y2", "my col", "x.1"}
    wrapped = [f"I({inner} + {bad}(1))", f"I({bad}(1) * {inner})", f"log({bad}({inner}))"][where]
    with pytest.raises(FormulaError):
        expression_columns(wrapped)
    with pytest.raises(FormulaError):
        parse_formula(f"y ~ {wrapped} + (1 | g)")


def test_warnings_module_untouched_by_checks():
    # the checker itself warns about nothing (pytest runs with warnings as errors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_formula("np.log(y) ~ I(x ** 2) + C(f, Treatment('b')) + (1 + x | g)")


@settings(max_examples=400, deadline=None, print_blob=True)
@given(text=st.text(alphabet=list("xyg_.`'\"()[]{}|+-*/:^%~,=@ 01abnplogIC#\\\n"), max_size=40))
def test_any_text_is_a_formula_error_or_checked_calls_only(text):
    """Fuzz the parser with formula characters (quotes, backticks, brackets, operators): it
    raises FormulaError or nothing; whatever it accepts calls only names of the table."""
    import re

    from bayeslmm.frontend.formula import transform_name

    formula = f"y ~ {text} + (1 | g)"
    try:
        parsed = parse_formula(formula)
    except FormulaError:
        return
    for expr in [parsed.response, parsed.fixed] + [term.expr for term in parsed.random]:
        expression_columns(expr)  # the design stage's second check agrees
        masked = re.sub(r"`[^`]*`|'[^'\"]*'|\"[^'\"]*\"", "", expr)
        for called in re.findall(r"([A-Za-z_][\w.]*)\s*\(", masked):
            assert transform_name(called) is not None, (formula, called)
