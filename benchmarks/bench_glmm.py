"""GLMM point fits against glmer (lme4 1.1-31) and performance 0.10: every reference number
side by side, and wall time against glmer's (measured in the reference run).

    PYTHONPATH=. python benchmarks/bench_glmm.py

writes benchmarks/out/glmm.txt. The time is the median of ``--repeat`` fits (default 3)
of ``blm.GLMM(...).fit(...)``, model building excluded (glmer's time includes its
building, which is small for these data), as wall time and as the process's CPU time
(the fit runs on one thread): on a machine shared with other jobs the wall time counts
the waiting, glmer's reference time was measured on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import bayeslmm as blm

HERE = Path(__file__).resolve().parent
REFERENCE = (Path(os.environ.get("BLM_REFERENCE", HERE.parent.parent / "shared" / "reference"))
             / "glmm" / "glmm_reference.json")
CASES = {"cbpp": ("binomial", [("laplace", 1), ("agq", 25)]), "grouseticks": ("poisson", [("laplace", 1)]),
         "verbagg": ("binomial", [("laplace", 1)])}


def rows_for(key, ref, repeat):
    family, fits = CASES[key]
    model = blm.GLMM(ref["formula"], blm.datasets.load(key), family=family)
    lines = []
    for label, n_agq in fits:
        times, cpu = [], []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            fit = model.fit(n_agq=n_agq)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        r = ref[label]
        fe = fit.fixef()
        for name, value in r["fixef"].items():
            se = r["fixef_se"][name]
            ours = fe.loc[name, "estimate"]
            lines.append((key, label, f"fixef {name}", value, ours, (ours - value) / se, "SE units"))
        for name, value in r["fixef_se"].items():
            ours = fe.loc[name, "std_error"]
            lines.append((key, label, f"se {name}", value, ours, ours / value - 1, "relative"))
        vc = fit.varcorr()
        for row in r["varcorr"]:
            ours = vc[(vc["group"] == row["group"]) & (vc["var1"] == row["var1"])]["sdcor"].iloc[0]
            lines.append((key, label, f"sd {row['group']}", row["sdcor"], ours, ours - row["sdcor"], "absolute"))
        for name, ours in (("logLik", fit.loglik), ("deviance", fit.deviance), ("AIC", fit.aic)):
            lines.append((key, label, name, r[name], ours, ours - r[name], "absolute"))
        lines.append((key, label, "is_singular", float(r["is_singular"]), float(fit.is_singular), 0.0, ""))
        if label == "laplace":
            icc, r2 = fit.icc(), fit.r2()
            lines.append((key, label, "ICC_adjusted", ref["icc"]["ICC_adjusted"], icc["ICC_adjusted"],
                          icc["ICC_adjusted"] - ref["icc"]["ICC_adjusted"], "absolute"))
            lines.append((key, label, "ICC_conditional", ref["icc"]["ICC_conditional"], icc["ICC_conditional"],
                          icc["ICC_conditional"] - ref["icc"]["ICC_conditional"], "absolute"))
            for ours_key, ref_key in (("R2_marginal", "R2_marginal.Marginal R2"),
                                      ("R2_conditional", "R2_conditional.Conditional R2")):
                lines.append((key, label, ours_key, ref["r2"][ref_key], r2[ours_key],
                              r2[ours_key] - ref["r2"][ref_key], "absolute"))
        seconds = float(np.median(times))
        lines.append((key, label, "wall seconds (glmer vs ours)", ref["glmer_seconds"], seconds,
                      seconds / ref["glmer_seconds"], "ratio"))
        seconds = float(np.median(cpu))
        lines.append((key, label, "CPU seconds (ours, 1 thread)", ref["glmer_seconds"], seconds,
                      seconds / ref["glmer_seconds"], "ratio"))
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    ref = json.loads(REFERENCE.read_text())
    out = [f"{'case':12s} {'fit':8s} {'quantity':28s} {'glmer':>14s} {'bayeslmm':>14s} {'difference':>12s}  unit",
           "-" * 100]
    for key in args.cases:
        for case, label, what, theirs, ours, diff, unit in rows_for(key, ref[key], args.repeat):
            out.append(f"{case:12s} {label:8s} {what:28s} {theirs:14.7g} {ours:14.7g} {diff:12.3g}  {unit}")
    load = os.getloadavg()[0]
    out.append(f"\nload average (1 min) at the end: {load:.1f} on {os.cpu_count()} cores; glmer's times were "
               "measured in the reference run, not in this one")
    text = "\n".join(out)
    print(text)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "glmm.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
