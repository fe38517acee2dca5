"""Inference benchmarks and validations (issue 15). Writes benchmarks/out/bench_inference.txt.

1. ``satterthwaite``: Satterthwaite df on InstEval against the fit's own time (goal: at most
   twice). Both are timed in the same process, interleaved, ``--repeat`` times (medians);
   the Satterthwaite time is a fresh ``fixef(ddf="satterthwaite")`` on a fitted model (the
   Hessian, the Jacobian and the table), the fit time is ``LMM(...).fit("reml")`` without
   building the design (``model.fit`` on a built model).
2. ``agreement``: every reference case against lmerTest / pbkrtest / lme4: worst relative
   df error, worst absolute p-value error, worst F relative error, worst profile-limit error
   relative to the estimate (absolute below 0.1), worst Wald limit relative error.
3. ``boot``: sleepstudy ``Reaction ~ Days + (Days | Subject)``, ``nsim`` (1000) parametric
   bootstrap refits: each percentile limit against lme4's profile limit, with the Monte
   Carlo interval of the percentile (order statistics at +-3 binomial sds) and whether it
   covers the profile limit.

Run: ``python benchmarks/bench_inference.py [satterthwaite] [agreement] [boot] [--repeat 3]
[--nsim 1000] [--n-jobs 2]``; the parts chosen are appended to the output file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayeslmm as blm

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
OUT = ROOT / "benchmarks" / "out" / "bench_inference.txt"
CASES = ["dyestuff", "dyestuff2", "exam_ri", "exam_rs", "exam_sex", "insteval", "mpls_log_ml", "mpls_rs_ml",
         "pastes", "penicillin", "sleep_ri", "sleep_rs", "sleep_rs_ml", "sleep_uncorr"]


def model_of(case: str):
    ref = json.loads((REFERENCE / "lme4" / f"{case}.json").read_text())
    data = blm.datasets.load(Path(ref["data"]).stem)
    return blm.LMM(ref["formula"].replace("log(", "np.log("), data), ("reml" if ref["REML"] else "ml")


def satterthwaite(repeat: int) -> list[str]:
    model, method = model_of("insteval")
    model.fit(method)  # warm-up
    fit_times, satt_times = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fit = model.fit(method)
        fit_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        table = fit.fixef()  # a fresh fit: nothing cached, the Hessian and Jacobian are computed
        satt_times.append(time.perf_counter() - t0)
    fit_s, satt_s = statistics.median(fit_times), statistics.median(satt_times)
    lines = ["## Satterthwaite on InstEval (73,421 rows, 4,114 random effects)",
             f"fit (REML, design built): median {fit_s:.2f} s over {repeat} "
             f"({', '.join(f'{t:.2f}' for t in fit_times)})",
             f"Satterthwaite (Hessian + Jacobian + table, fixef() on a fresh fit): median {satt_s:.2f} s "
             f"({', '.join(f'{t:.2f}' for t in satt_times)})",
             f"ratio Satterthwaite / fit: {satt_s / fit_s:.2f} (goal <= 2)",
             "table:", table.to_string()]
    return lines


def agreement() -> list[str]:
    from bayeslmm.fitting.inference import Profile

    rows = []
    for case in CASES:
        ref = json.loads((REFERENCE / "inference" / f"{case}.json").read_text())
        model, method = model_of(case)
        fit = model.fit(method)
        row = {"case": case}
        sat = pd.DataFrame(ref["satterthwaite"]).set_index("term")
        table = fit.fixef()
        row["satt df rel"] = np.max(np.abs(table["df"] / sat["df"] - 1))
        row["satt p abs"] = np.max(np.abs(table["p_value"] - sat["Pr(>|t|)"]))
        if ref["anova_satterthwaite"]:
            a = pd.DataFrame(ref["anova_satterthwaite"]).set_index("term")
            ours = fit.anova()
            row["anova F rel"] = np.max(np.abs(ours["f_value"] / a["F value"] - 1))
            row["anova df rel"] = np.max(np.abs(ours["den_df"] / a["DenDF"] - 1))
        if "kenward_roger" in ref:
            kr = pd.DataFrame(ref["kenward_roger"]).set_index("term")
            ours = fit.fixef(ddf="kenward-roger")
            row["KR df rel"] = np.max(np.abs(ours["df"] / kr["df"] - 1))
            row["KR se rel"] = np.max(np.abs(ours["std_error"] / kr["Std. Error"] - 1))
            row["KR p abs"] = np.max(np.abs(ours["p_value"] - kr["Pr(>|t|)"]))
            if ref["anova_kenward_roger"]:
                a = pd.DataFrame(ref["anova_kenward_roger"]).set_index("term")
                row["KR F rel"] = np.max(np.abs(fit.anova(ddf="kenward-roger")["f_value"] / a["F value"] - 1))
        wald = pd.DataFrame(ref["confint_wald"]).set_index("term").replace("NA", np.nan).astype(float)
        ours = fit.confint("wald")
        row["wald rel"] = np.nanmax(np.abs(ours.to_numpy() / wald.to_numpy() - 1))
        if "confint_profile" in ref:
            prof = pd.DataFrame(ref["confint_profile"]).set_index("term").astype(float)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = fit.confint("profile")
            row["profile s"] = time.perf_counter() - t0
            p = Profile(fit)
            est = np.abs(np.nan_to_num(np.r_[p.phi_hat, p.beta_hat], nan=1.0))
            err = np.abs(ours.to_numpy() - prof.to_numpy())
            row["profile err/|est|"] = np.max(err / np.maximum(est, 0.1)[:, None])
            worst = np.unravel_index(np.argmax(err / np.maximum(est, 0.1)[:, None]), err.shape)
            row["worst"] = f"{prof.index[worst[0]]} {'lower' if worst[1] == 0 else 'upper'}"
        rows.append(row)
        print(row, file=sys.stderr)
    frame = pd.DataFrame(rows).set_index("case")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.2e}".format):
        text = frame.to_string()
    return ["## Agreement with lmerTest 3.1-3 / pbkrtest 0.5.2 / lme4 1.1-31 (worst per case)", text]


def boot(nsim: int, n_jobs: int) -> list[str]:
    """The bootstrap's limits of every kind (lme4's boot.type) against lme4's profile limits,
    each with its Monte Carlo interval; the draws are kept in bench_inference_boot_draws.csv."""
    from scipy import stats

    from bayeslmm.fitting.inference import bootstrap, bootstrap_limits, fitted_parameters

    model, method = model_of("sleep_rs")
    fit = model.fit(method)
    ref = json.loads((REFERENCE / "inference" / "sleep_rs.json").read_text())
    prof = pd.DataFrame(ref["confint_profile"]).set_index("term").astype(float)
    t0 = time.perf_counter()
    draws = bootstrap(fit, nsim=nsim, random_seed=2026, n_jobs=n_jobs)
    seconds = time.perf_counter() - t0
    draws.to_csv(OUT.with_name("bench_inference_boot_draws.csv"), index=False)
    n = int(draws.notna().all(axis=1).sum())
    estimate = pd.Series(fitted_parameters(fit), index=draws.columns)
    lines = [f"## Parametric bootstrap, sleepstudy (Days | Subject), nsim = {nsim} ({n} refits kept), "
             f"{n_jobs} workers, {seconds:.0f} s",
             "Monte Carlo interval of a limit: perc/basic +-3 binomial sds of the order statistic's rank; "
             "norm +-3 se of mean -+ z sd"]
    z = stats.norm.ppf(0.975)
    for kind in ("perc", "basic", "norm"):
        lower, upper = bootstrap_limits(draws.to_numpy(), estimate.to_numpy(), 0.95, kind)
        lines.append(f"### boot_type = {kind!r}")
        lines.append("parameter                        limit  bootstrap  profile(lme4)  MC interval  covers")
        covered = 0
        for i, name in enumerate(prof.index):
            x = np.sort(draws[name].dropna().to_numpy())
            t = estimate[name]
            for q, column, value in ((0.025, "2.5 %", lower[i]), (0.975, "97.5 %", upper[i])):
                if kind == "norm":
                    se = x.std(ddof=1) * np.sqrt(1 / n + z**2 / (2 * (n - 1)))
                    lo, hi = value - 3 * se, value + 3 * se
                else:
                    qq = q if kind == "perc" else 1 - q
                    sd = np.sqrt(n * qq * (1 - qq))
                    a, b = x[max(int(np.floor(n * qq - 3 * sd)), 0)], x[min(int(np.ceil(n * qq + 3 * sd)), n - 1)]
                    lo, hi = (a, b) if kind == "perc" else (2 * t - b, 2 * t - a)
                ok = lo <= prof.loc[name, column] <= hi
                covered += ok
                lines.append(f"{name:32s} {column:6s} {value:10.4f} {prof.loc[name, column]:14.4f}  "
                             f"[{lo:.4f}, {hi:.4f}]  {'yes' if ok else 'NO'}")
        lines.append(f"profile limits inside the Monte Carlo interval ({kind}): {covered} of {2 * len(prof)}")
    again = bootstrap(fit, nsim=min(nsim, 50), random_seed=2026, n_jobs=1, progressbar=False)
    same = np.array_equal(again.to_numpy(), draws.iloc[:len(again)].to_numpy(), equal_nan=True)
    lines.append(f"the first {len(again)} draws rerun with n_jobs=1 from the same seed are identical: {same}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("parts", nargs="*", default=["satterthwaite", "agreement", "boot"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nsim", type=int, default=1000)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    out = [f"# bench_inference {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    for part in args.parts:
        if part == "satterthwaite":
            out += satterthwaite(args.repeat)
        elif part == "agreement":
            out += agreement()
        elif part == "boot":
            out += boot(args.nsim, args.n_jobs)
        out.append("")
        print("\n".join(out))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("a") as handle:
        handle.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
