"""The bayeslmm command: model files, --data/--formula, outputs, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bayeslmm as blm
from bayeslmm.cli import main
from bayeslmm.frontend.modelfile import read_model_file

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_datasets_lists_every_bundled_set(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in blm.datasets.DATASETS:
        assert name in out
    assert "73421 rows" in out


def test_every_model_file_parses_and_builds():
    for path in sorted(MODELS.glob("*.toml")):
        spec = read_model_file(path)
        if spec.family == "gaussian":
            model = blm.LMM(spec.formula, spec.load_data(), priors=spec.priors or None)
        else:  # a GLMM model file (models/cbpp.toml)
            model = blm.GLMM(spec.formula, spec.load_data(), family=spec.family, link=spec.link,
                             priors=spec.priors or None)
        assert model.design.nobs > 0, path
    assert {p.stem for p in MODELS.glob("*.toml")} >= {"sleepstudy", "exam", "minneapolis", "dyestuff2",
                                                       "penicillin", "pastes", "insteval"}


def test_fit_model_file_writes_the_report_folder(tmp_path, capsys):
    out = tmp_path / "sleep"
    assert main(["fit", str(MODELS / "sleepstudy.toml"), "--out", str(out), "--fast", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "REML criterion at convergence: 1743.6" in printed
    assert "posterior by NUTS" in printed
    summary = (out / "summary.txt").read_text()
    assert "Point estimates (REML)" in summary and "Posterior" in summary
    for name in ("shrinkage", "group_effects", "icc", "ppc", "residuals"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    html = (out / "report.html").read_text()
    assert html.count("<img") == 5 and "data:image/png;base64," in html
    assert "ICC (Nakagawa)" in html and "<table" in html
    loaded = blm.load(out / "posterior.nc")
    assert loaded.design.formula.text == "Reaction ~ Days + (Days | Subject)"


def test_fit_from_csv_and_formula(tmp_path, capsys):
    csv = tmp_path / "dye.csv"
    blm.datasets.load("dyestuff").to_csv(csv, index=False)
    assert main(["fit", "--data", str(csv), "--formula", "Yield ~ 1 + (1 | Batch)", "--method", "reml"]) == 0
    assert "Batch    (Intercept)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["fit", "no/such/model.toml"], "model file no/such/model.toml does not exist"),
    (["fit", "--data", "sleepstudy", "--formula", "Reaction ~ Days + (Days | Subject"], "unbalanced parenthesis"),
    (["fit", "--data", "sleepstudy", "--formula", "Reaction ~ Dayz + (1 | Subject)"], "unknown column 'Dayz'"),
    (["fit", "--data", "nosuch.csv", "--formula", "y ~ 1 + (1 | g)"], "does not exist"),
    (["fit", "--data", "sleepstudy"], "give a model file, or both --data and --formula"),
])
def test_errors_exit_nonzero_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('data = "sleepstudy"\nformula = "Reaction ~ Days + (1 | Subject)"\nmethod = "bayes"\n')
    assert main(["fit", str(bad)]) == 2
    assert "method must be one of" in capsys.readouterr().err
    bad.write_text('data = "sleepstudy"\nformula = "Reaction ~ Days + (1 | Subject)"\n'
                   '[priors]\nsd = { dist = "Cauchy", sigma = 1 }\n')
    assert main(["fit", str(bad)]) == 2
    assert "unknown dist 'Cauchy'" in capsys.readouterr().err


@pytest.mark.parametrize("body,message", [
    ('[priors]\nsd = { dist = "HalfNormal", sigma = -1 }\n',
     "prior 'sd': HalfNormal(sigma=-1.0): sigma must be positive"),
    ('[priors]\nsd = { dist = "HalfNormal", sigma = "abc" }\n', "prior 'sd': sigma = 'abc' is not a number"),
    ('[sample]\ndraws = "many"\n', "[sample] draws = 'many' must be a whole number of at least 1"),
    ('[sample]\ntarget_accept = 1.5\n', "[sample] target_accept = 1.5 must be a number between 0 and 1"),
    ('[sample]\nsampler = "stan"\n', "[sample] sampler = 'stan' must be one of nutpie, pymc, numpyro, blackjax"),
    ('[sample]\nwarmup = 10\n', "unknown [sample] entries warmup"),
])
def test_bad_entries_in_a_model_file_are_named(tmp_path, capsys, body, message):
    bad = tmp_path / "bad.toml"
    bad.write_text('data = "dyestuff"\nformula = "Yield ~ 1 + (1 | Batch)"\n' + body)
    assert main(["fit", str(bad), "--method", "reml"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_out_must_be_a_folder_and_counts_must_be_sane(tmp_path, capsys):
    taken = tmp_path / "a_file"
    taken.write_text("")
    assert main(["fit", "--data", "dyestuff", "--formula", "Yield ~ 1 + (1 | Batch)", "--method", "reml",
                 "--out", str(taken)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert main(["fit", "--data", "dyestuff", "--formula", "Yield ~ 1 + (1 | Batch)", "--draws", "0"]) == 2
    assert "draws = 0 must be a whole number of at least 1" in capsys.readouterr().err


def test_point_fit_report_has_no_posterior_captions(tmp_path, capsys):
    out = tmp_path / "dye"
    assert main(["fit", "--data", "dyestuff", "--formula", "Yield ~ 1 + (1 | Batch)", "--method", "reml",
                 "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Intraclass correlation at the point estimates" in html
    assert "data replicated at the point estimates" in html and "Posterior" not in html
    assert not (out / "posterior.nc").exists()


def test_console_entry_point_runs():
    """The installed script, as a user types it."""
    done = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "fit", "--data", "dyestuff2", "--formula",
                           "Yield ~ 1 + (1 | Batch)", "--method", "map"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "maximum a posteriori" in done.stdout
    failed = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "fit", "missing.toml"], capture_output=True,
                            text=True)
    assert failed.returncode == 2 and "does not exist" in failed.stderr


@pytest.mark.parametrize("body,message", [
    ('reml = "false"\n', "reml = 'false' must be true or false (no quotes), not str"),
    ('method = 3\n', "method = 3 must be text in quotes, not int"),
    ('name = ["a"]\n', "name = ['a'] must be text in quotes, not list"),
    ('[sample]\ndraws = 100000000\n', "[sample] draws=100000000 must be between 1 and 10,000,000"),
    ('[sample]\nseed = 9999999999999999999\n', "[sample] seed=9999999999999999999 must be between 0 and"),
    ('[priors]\nb = { dist = "HalfNormal", sigma = 1 }\n', "'b' is a coefficient that can be negative"),
    ('[priors]\nsigma = { dist = "HalfNormal", sigma = 1e308 }\n', "sigma must be between 1e-100 and 1e+100"),
    ('[priors]\nsd_Bach = { dist = "HalfNormal", sigma = 1 }\n', "prior key(s) 'sd_Bach' name no parameter"),
])
def test_every_model_file_entry_is_type_checked(tmp_path, capsys, body, message):
    bad = tmp_path / "bad.toml"
    table = body.startswith("[")
    bad.write_text(("" if table else body) + 'data = "dyestuff"\nformula = "Yield ~ 1 + (1 | Batch)"\n'
                   + (body if table else ""))
    assert main(["fit", str(bad), "--method", "reml"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_paths_of_the_wrong_kind_are_messages_not_tracebacks(tmp_path, capsys):
    folder = tmp_path / "a_folder.toml"
    folder.mkdir()
    assert main(["fit", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is a folder; give a .toml file" in err and "Traceback" not in err
    taken = tmp_path / "a_file"
    taken.write_text("")
    assert main(["fit", "--data", "dyestuff", "--formula", "Yield ~ 1 + (1 | Batch)", "--method", "reml",
                 "--out", str(taken / "sub" / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot be created: {taken} is a file, not a folder" in err and "Traceback" not in err
    assert main(["fit", "--data", str(folder), "--formula", "Yield ~ 1 + (1 | Batch)", "--method", "reml"]) == 2
    assert "is a folder, not a CSV file" in capsys.readouterr().err


def test_a_csv_with_two_columns_of_one_name_is_refused(tmp_path, capsys):
    csv = tmp_path / "dup.csv"
    rows = "\n".join(f"{i % 7 + 0.5 * i},{i % 5},{i % 3},{i // 4}" for i in range(40))
    csv.write_text("y,x,x,g\n" + rows + "\n")
    assert main(["fit", "--data", str(csv), "--formula", "y ~ x + (1 | g)", "--method", "reml"]) == 2
    err = capsys.readouterr().err
    assert f"{csv} has two columns named 'x' (columns 2 and 3); rename one" in err
