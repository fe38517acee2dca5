"""Maximal psycholinguistic models and the lme4 reference cases: bayeslmm against mixedlm
1.3 (measured side by side in this run) and lme4 1.1-31 (its recorded figures).

Designs: ../shared/reference/psycholing.json (bs10 maximal, kb07 4x4, zero-correlation and
maximal 8x8; ML) and ../shared/reference/lme4/*.json (REML/ML). For each: wall seconds of
``LMM(formula, data).fit()`` (design + optimization + result; median of ``--repeat`` runs)
and of ``mixedlm.lmer(formula, data)`` (one run, after one warm-up fit of a small model),
interleaved so both see the same machine load; the criterion of each against lme4's.

Run: ``python benchmarks/bench_maximal.py [--repeat 3] [--case kb07_max] [--no-mixedlm]``;
writes benchmarks/out/bench_maximal.txt (``--case`` runs: bench_maximal_<case>.txt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayeslmm as blm

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "benchmarks" / "out" / "bench_maximal.txt"


def cases() -> list[dict]:
    """Every design: id, formula, data frame, REML flag, lme4's criterion and seconds."""
    out = []
    psy = json.loads((SHARED / "reference" / "psycholing.json").read_text())["cases"]
    for key in ["bs10_max", "kb07_4x4", "kb07_zcp"]:
        c = psy[key]
        data = pd.read_csv(SHARED / "data" / Path(c["data"]).name)
        for col in c["factors"]:
            data[col] = data[col].astype(str)
        out.append({"id": key, "formula": c["formula"], "data": data, "reml": c["REML"],
                    "lme4": c["deviance"], "lme4_s": c["lmer_seconds"],
                    "mixedlm_ref": c["mixedlm_1_3_0"]["deviance"], "mixedlm_ref_s": c["mixedlm_1_3_0"]["seconds"]})
    for path in sorted((SHARED / "reference" / "lme4").glob("*.json")):
        c = json.loads(path.read_text())
        out.append({"id": path.stem, "formula": c["formula"], "data": blm.datasets.load(Path(c["data"]).stem),
                    "reml": c["REML"], "lme4": c["criterion"], "lme4_s": c["lmer_seconds_median"],
                    "mixedlm_ref": None, "mixedlm_ref_s": None})
    # issue 14's Arabidopsis design (a singular 4 x 4 factor block; lme4 2050.17, where the
    # old optimizer stopped at 2051.19); its data ship with mixedlm, lme4's time is not recorded
    try:
        from mixedlm.datasets import load_arabidopsis
    except ImportError:
        pass
    else:
        data = load_arabidopsis()
        for col in ("nutrient", "rack", "gen"):
            data[col] = data[col].astype(str)
        data["lfruits"] = np.log1p(data["total_fruits"])
        out.append({"id": "arabidopsis", "formula": "lfruits ~ nutrient*amd + rack + status + "
                    "(amd*nutrient | popu) + (1 | gen)", "data": data, "reml": True, "lme4": 2050.17,
                    "lme4_s": float("nan"), "mixedlm_ref": 2050.17, "mixedlm_ref_s": None})
    # issue 14's variance-component design from statsmodels' tests (test_lme.py::test_vcomp_2,
    # simulated there with RandomState(6241)): v2 within v1 within groups; lme4's time not recorded
    out.append({"id": "sm_vcomp_2", "formula": "y ~ x1 + x2 + (0 + z1 + z2 | groups) + (1 | v1) + (1 | v2)",
                "data": statsmodels_vcomp_2(), "reml": True, "lme4": float("nan"), "lme4_s": float("nan"),
                "mixedlm_ref": 7240.3484, "mixedlm_ref_s": None})
    # last: mixedlm takes minutes on it
    c = psy["kb07_max"]
    data = pd.read_csv(SHARED / "data" / Path(c["data"]).name)
    for col in c["factors"]:
        data[col] = data[col].astype(str)
    out.append({"id": "kb07_max", "formula": c["formula"], "data": data, "reml": c["REML"],
                "lme4": c["deviance"], "lme4_s": c["lmer_seconds"],
                "mixedlm_ref": c["mixedlm_1_3_0"]["deviance"], "mixedlm_ref_s": c["mixedlm_1_3_0"]["seconds"]})
    return out


def statsmodels_vcomp_2() -> pd.DataFrame:
    """The data of statsmodels' ``test_vcomp_2`` (regression/tests/test_lme.py), same draws."""
    rs = np.random.RandomState(6241)
    n = 1600
    exog = rs.normal(size=(n, 2))
    groups = np.kron(np.arange(n // 16), np.ones(16))
    exog_re = rs.normal(size=(n, 2))
    slopes = np.kron(rs.normal(size=(n // 16, 2)), np.ones((16, 1))) * exog_re
    errors = slopes.sum(1)
    v1 = np.kron(np.arange(n // 4), np.ones(4))
    errors = errors + np.kron(2 * rs.normal(size=n // 4), np.ones(4))
    v2 = np.kron(np.arange(n // 2), np.ones(2))
    errors = errors + np.kron(2 * rs.normal(size=n // 2), np.ones(2)) + rs.normal(size=n)
    label = lambda codes: codes.astype(int).astype(str)  # noqa: E731
    return pd.DataFrame({"y": exog.sum(1) + errors, "x1": exog[:, 0], "x2": exog[:, 1], "z1": exog_re[:, 0],
                         "z2": exog_re[:, 1], "groups": label(groups), "v1": label(v1), "v2": label(v2)})


def fit_ours(case: dict):
    formula = case["formula"].replace("log(", "np.log(")
    start, cpu = time.perf_counter(), time.process_time()
    fit = blm.LMM(formula, case["data"]).fit("reml" if case["reml"] else "ml")
    return time.perf_counter() - start, time.process_time() - cpu, fit


def fit_mixedlm(case: dict):
    import mixedlm

    data = case["data"].copy()
    start, cpu = time.perf_counter(), time.process_time()
    fit = mixedlm.lmer(case["formula"], data, REML=case["reml"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    value = fit.REMLcrit() if case["reml"] else fit.deviance
    return seconds, cpu, float(value() if callable(value) else value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", action="append", default=None)
    parser.add_argument("--no-mixedlm", action="store_true")
    parser.add_argument("--out", default=None, help="default: benchmarks/out/bench_maximal.txt for a run of "
                        "every case, bench_maximal_<cases>.txt for --case runs")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    todo = [c for c in cases() if args.case is None or c["id"] in args.case]
    if args.out is None:
        args.out = str(OUT if args.case is None else OUT.with_name(f"bench_maximal_{'_'.join(args.case)}.txt"))
    blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy")).fit()  # warm-up
    if not args.no_mixedlm:
        import mixedlm

        mixedlm.lmer("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    header = (f"{'design':13s} {'ours':>13s} {'lme4':>13s} {'mixedlm':>13s} {'ours-best':>10s} {'rel':>9s} "
              f"{'ours s':>7s} {'mixedlm s':>9s} {'ours/mlm':>8s} {'cpu ours':>8s} {'cpu mlm':>8s} {'cpu o/m':>7s} "
              f"{'lme4 s':>8s} {'ours/lme4':>9s} {'evals':>5s} conv")
    lines = [header]
    print(header, flush=True)
    for case in todo:
        times, cpus, fit = [], [], None
        mlm_s = mlm_cpu = mlm_dev = None
        for r in range(args.repeat):
            seconds, cpu, fit = fit_ours(case)
            times.append(seconds)
            cpus.append(cpu)
            if r == 0 and not args.no_mixedlm and (case["mixedlm_ref"] is not None or case["lme4_s"] > 1):
                mlm_s, mlm_cpu, mlm_dev = fit_mixedlm(case)
        ours, ours_cpu = statistics.median(times), statistics.median(cpus)
        best = min(v for v in (case["lme4"], mlm_dev) if v is not None and np.isfinite(v))
        line = (f"{case['id']:13s} {fit.criterion:13.4f} {case['lme4']:13.4f} "
                f"{(f'{mlm_dev:13.4f}' if mlm_dev is not None else '            -')} "
                f"{fit.criterion - best:+10.1e} {(fit.criterion - best) / abs(best):+9.1e} {ours:7.2f} "
                f"{(f'{mlm_s:9.2f}' if mlm_s is not None else '        -')} "
                f"{(f'{ours / mlm_s:8.2f}' if mlm_s else '       -')} {ours_cpu:8.2f} "
                f"{(f'{mlm_cpu:8.2f}' if mlm_cpu is not None else '       -')} "
                f"{(f'{ours_cpu / mlm_cpu:7.2f}' if mlm_cpu else '      -')} {case['lme4_s']:8.2f} "
                f"{ours / case['lme4_s']:9.2f} {fit.opt.evaluations:5d} {fit.opt.converged}")
        lines.append(line)
        print(line, flush=True)
    footer = ("\nours = bayeslmm criterion (REML criterion or ML deviance); best = the lower of lme4's "
              "(recorded) and mixedlm's (this run); rel = (ours - best) / |best|.\n"
              "seconds: wall; ours = median of the repeats, mixedlm = one run in the same process, "
              "interleaved; cpu = process CPU seconds (all threads), which a loaded machine distorts less; "
              "lme4 = recorded (psycholing.json / lme4/*.json, kb07_max on a loaded machine).\n"
              f"machine load at the end: {open('/proc/loadavg').read().split()[:3]}")
    lines.append(footer)
    print(footer)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
