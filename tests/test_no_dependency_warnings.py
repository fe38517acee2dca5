"""What the user sees: the main command prints no warning from a dependency (issue 12).

The rest of the suite runs with warnings as errors (pyproject.toml's filterwarnings), which
covers the API; this runs the README's main command as a user would, in a fresh process
with Python's default warning filters, and reads its stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a line Python's warnings module prints ("path:line: SomeWarning: text"), or the CLI's
# "warning: ..." relay of a warning caught while sampling
WARNING_LINE = re.compile(r"(^\S+:\d+: \w*Warning\b)|(^warning: )", re.MULTILINE)


def test_main_command_prints_no_dependency_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS",)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["MPLBACKEND"] = "Agg"
    out = tmp_path / "sleepstudy"
    # the README's main command, `bayeslmm fit models/sleepstudy.toml --out out/sleepstudy`
    run = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "fit", "models/sleepstudy.toml", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert not WARNING_LINE.findall(run.stderr), run.stderr
    assert "Warning" not in run.stderr and "warning" not in run.stdout.lower(), (run.stdout, run.stderr)
    assert (out / "report.html").stat().st_size > 10_000 and (out / "posterior.nc").exists()
    assert "Fixed effects:" in run.stdout and "wrote" in run.stdout
