"""The collapsed (marginal) sampler against brms and the full model, from fresh processes.

Run: ``python benchmarks/bench_marginal.py [--repeat 3] [--skip-full] [--skip-sim]``.

Every timing is the wall time of a fresh ``python`` subprocess (interpreter start, imports,
data, compilation, sampling, group-effect draws, log-likelihood, diagnostics), as brms's
times include Stan's compilation. Reported:

1. exam_rs (brms's priors, 4 chains x 1000 draws): minimum bulk ESS per second of wall
   time against brms's 500 / 84.8 s = 5.9 ESS/s (issue: >= 30x), and against the full
   (non-centered PyMC) model; the median of ``--repeat`` runs.
2. Cold start for sleepstudy, default priors and settings (issue: < 10 s; brms ~60 s),
   with the kernels' on-disk cache warm (every run after the first on a machine) and cold
   (``NUMBA_CACHE_DIR`` pointed at an empty directory: the one-time compilation).
3. The same posterior: marginal vs brms (sleep_rs, exam_rs, exam_sex) and marginal vs
   full (those, Pastes and Penicillin; Penicillin is crossed: its 30 effects are one joint group).
   Criterion: means within 0.2 posterior sd, sds within 15%, zero divergences.
4. 10,000,000 rows in 20,000 groups, correlated random intercept and slope, 4 chains x
   1000 draws (issue: < 60 s including sufficient statistics and compilation; true values
   inside the 95% intervals), through the low-level entry ``MarginalProblem.from_arrays``
   + ``run_marginal`` (the same sampler code as ``LMM.sample``, without a DataFrame).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
CASES = {"sleep_rs": ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
         "exam_rs": ("exam", "normexam ~ standLRT + (standLRT | school)"),
         "exam_sex": ("exam", "normexam ~ standLRT + sex + (standLRT + sex | school)"),
         "pastes": ("pastes", "strength ~ 1 + (1 | batch/cask)"),
         "penicillin": ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)")}
BRMS_ESS_PER_S = 500.0 / 84.767  # exam_rs: minimum bulk ESS / total seconds


# ---------------------------------------------------------------- workers (fresh processes)
def brms_priors(case: str) -> dict:
    import bayeslmm as blm

    text = json.loads((REFERENCE / "brms" / f"{case}.json").read_text())["priors"]

    def student_t(entry):
        return [float(v) for v in re.findall(r"student_t\(([^,]+), ([^,]+), ([^)]+)\)", text[entry])[0]]

    nu, mu, scale = student_t("Intercept")
    return {"Intercept": blm.StudentT(nu=nu, mu=mu, sigma=scale), "b": blm.Flat(),
            "sd": blm.HalfStudentT(nu=student_t("sd")[0], sigma=student_t("sd")[2]),
            "sigma": blm.HalfStudentT(nu=student_t("sigma")[0], sigma=student_t("sigma")[2]),
            "cor": blm.LKJ(eta=1.0)}


def summarize(post) -> dict:
    """brms's variable names -> [mean, sd], min bulk ESS, divergences."""
    import numpy as np

    from bayeslmm.sampling.bayes import bar_labels

    p = post.idata.posterior
    name = lambda term: "Intercept" if term == "(Intercept)" else term  # noqa: E731
    out = {}
    for i, term in enumerate(p["term"].values):
        v = p["beta"].values[..., i]
        out[f"b_{name(term)}"] = [float(v.mean()), float(v.std())]
    out["sigma"] = [float(p["sigma"].mean()), float(p["sigma"].std())]
    for label, block in zip(bar_labels(post.design), post.design.blocks):
        for i, term in enumerate(block.terms):
            v = p[f"sd_{label}"].values[..., i]
            out[f"sd_{label}__{name(term)}"] = [float(v.mean()), float(v.std())]
        if f"cor_{label}" in p:
            for i, pair in enumerate(p[f"{label}__pair"].values):
                a, b = pair.split(", ")
                v = p[f"cor_{label}"].values[..., i]
                out[f"cor_{label}__{name(a)}__{b}"] = [float(v.mean()), float(v.std())]
    diag = post.diagnostics()
    return {"summary": out, "min_ess_bulk": float(np.min(diag["ess_bulk"])), "max_rhat": float(np.max(diag["r_hat"])),
            "divergences": post.divergences, "parametrization": p.attrs["parametrization"],
            "sampling_seconds": float(p.attrs.get("sampling_seconds", float("nan")))}


def worker_case(case: str, parametrization: str, priors: str) -> dict:
    import warnings

    import bayeslmm as blm

    data, formula = CASES[case]
    model = blm.LMM(formula, blm.datasets.load(data), priors=brms_priors(case) if priors == "brms" else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = model.sample(random_seed=1, progressbar=False, parametrization=parametrization)
    return summarize(post)


def worker_sim(rows: int, groups: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(20261123)
    truth = {"b0": 2.0, "b1": 0.7, "sd0": 1.0, "sd1": 0.5, "rho": 0.3, "sigma": 2.0}
    group = np.repeat(np.arange(groups), rows // groups)
    x = rng.standard_normal(rows)
    cov = np.array([[1.0, truth["rho"]], [truth["rho"], 1.0]]) * np.outer([truth["sd0"], truth["sd1"]],
                                                                         [truth["sd0"], truth["sd1"]])
    b = rng.multivariate_normal([0.0, 0.0], cov, size=groups)
    y = truth["b0"] + truth["b1"] * x + b[group, 0] + b[group, 1] * x + truth["sigma"] * rng.standard_normal(rows)
    X = np.column_stack([np.ones(rows), x])
    del b

    start = time.perf_counter()
    from bayeslmm import priors as P
    from bayeslmm.sampling.marginal import MarginalProblem, posterior_dataset, run_marginal

    t_import = time.perf_counter()
    problem = MarginalProblem.from_arrays(y, X, X, group, ["(Intercept)", "x"], ["(Intercept)", "x"], group_name="g")
    t_stats = time.perf_counter()
    s_y = float(np.std(y))  # brms-like weakly informative priors scaled to the data
    prior_set = P.PriorSet(intercept=P.StudentT(nu=3.0, mu=float(np.mean(y)), sigma=2.5 * s_y),
                           fixed={"x": P.Flat()},
                           sd={(0, "(Intercept)"): P.HalfStudentT(nu=3.0, sigma=2.5 * s_y),
                               (0, "x"): P.HalfStudentT(nu=3.0, sigma=2.5 * s_y)},
                           cor={0: P.LKJ(eta=1.0)}, sigma=P.HalfStudentT(nu=3.0, sigma=2.5 * s_y), sources={})
    run = run_marginal(problem, prior_set, draws=1000, tune=1000, chains=4, random_seed=1, progressbar=False)
    t_sample = time.perf_counter()
    flat = run.x.reshape(-1, problem.ndim)
    effects = problem.draw_effects(flat, run.blob, np.random.default_rng([run.seed, 2]))
    posterior = posterior_dataset(problem, run, effects)
    t_effects = time.perf_counter()

    from arviz_stats import ess

    values = {"b0": posterior["beta"].values[..., 0], "b1": posterior["beta"].values[..., 1],
              "sd0": posterior["sd_g"].values[..., 0], "sd1": posterior["sd_g"].values[..., 1],
              "rho": posterior["cor_g"].values[..., 0], "sigma": posterior["sigma"].values}
    coverage = {}
    for key, draws in values.items():
        lo, hi = np.quantile(draws, [0.025, 0.975])
        coverage[key] = {"truth": truth[key], "mean": float(draws.mean()), "lower": float(lo), "upper": float(hi),
                         "inside": bool(lo <= truth[key] <= hi),
                         "ess_bulk": float(ess(draws.reshape(4, -1), method="bulk"))}
    return {"rows": rows, "groups": groups, "import_s": t_import - start, "stats_s": t_stats - t_import,
            "sample_s": t_sample - t_stats, "effects_s": t_effects - t_sample,
            "total_s": t_effects - start, "divergences": int(run.sample_stats["diverging"].sum()),
            "mean_steps": float(run.sample_stats["n_steps"].mean()), "coverage": coverage}


# ---------------------------------------------------------------- the parent
def fresh(args: list[str], env: dict | None = None) -> tuple[float, dict]:
    """Wall seconds of a fresh interpreter running a worker, and the worker's JSON."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def compare(ours: dict, other: dict) -> tuple[float, float]:
    """(max |mean difference| / other's sd, max |sd ratio - 1|) over the shared variables."""
    keys = set(ours) & set(other)
    dmean = max(abs(ours[k][0] - other[k][0]) / other[k][1] for k in keys)
    dsd = max(abs(ours[k][1] / other[k][1] - 1.0) for k in keys)
    return dmean, dsd


def brms_summary(case: str) -> dict:
    ref = json.loads((REFERENCE / "brms" / f"{case}.json").read_text())["brms"]["summary"]
    return {row["variable"]: [row["mean"], row["sd"]] for row in ref}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true", help="do not run the full model")
    parser.add_argument("--skip-sim", action="store_true", help="do not run the 10M-row simulation")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--groups", type=int, default=20_000)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results: dict = {}

    fresh(["case", "sleep_rs", "marginal", "default"])  # make sure the kernel cache is warm
    print("1. exam_rs, brms's priors, 4 x 1000 draws, fresh process (median of "
          f"{args.repeat}); brms: 84.8 s, {BRMS_ESS_PER_S:.1f} ESS/s")
    runs = [fresh(["case", "exam_rs", "marginal", "brms"]) for _ in range(args.repeat)]
    walls = [w for w, _ in runs]
    rates = [r["min_ess_bulk"] / w for w, r in runs]
    results["exam_rs_marginal"] = {"wall_s": walls, "ess_per_s": rates, "runs": [r for _, r in runs]}
    print(f"   marginal: wall {statistics.median(walls):.1f} s (runs {', '.join(f'{w:.1f}' for w in walls)}), "
          f"min bulk ESS {statistics.median(r['min_ess_bulk'] for _, r in runs):.0f}, "
          f"{statistics.median(rates):.0f} ESS/s = {statistics.median(rates) / BRMS_ESS_PER_S:.0f}x brms, "
          f"divergences {max(r['divergences'] for _, r in runs)}")
    full = {}
    if not args.skip_full:
        wall, res = fresh(["case", "exam_rs", "full", "brms"])
        full["exam_rs"] = res
        rate = res["min_ess_bulk"] / wall
        results["exam_rs_full"] = {"wall_s": wall, "ess_per_s": rate, "run": res}
        print(f"   full:     wall {wall:.1f} s, min bulk ESS {res['min_ess_bulk']:.0f}, {rate:.1f} ESS/s = "
              f"{rate / BRMS_ESS_PER_S:.1f}x brms; marginal / full = {statistics.median(rates) / rate:.1f}x, "
              f"divergences {res['divergences']}")

    print("2. cold start, sleepstudy, default priors and settings (brms ~60 s)")
    warm = [fresh(["case", "sleep_rs", "marginal", "default"])[0] for _ in range(args.repeat)]
    with tempfile.TemporaryDirectory() as empty:
        cold, _ = fresh(["case", "sleep_rs", "marginal", "default"], env={"NUMBA_CACHE_DIR": empty})
    results["cold_start"] = {"warm_cache_s": warm, "empty_cache_s": cold}
    print(f"   kernel cache warm: {statistics.median(warm):.1f} s (runs {', '.join(f'{w:.1f}' for w in warm)}); "
          f"empty cache (one-time compilation): {cold:.1f} s")

    print("3. the same posterior (max |mean diff| / sd, max |sd ratio - 1|; criterion 0.2 and 0.15)")
    results["agreement"] = {}
    for case in CASES:
        priors = "brms" if case in ("sleep_rs", "exam_rs", "exam_sex") else "default"
        row = {}
        _, marginal = (None, runs[0][1]) if case == "exam_rs" else fresh(["case", case, "marginal", priors])
        row["marginal_divergences"] = marginal["divergences"]
        if priors == "brms":
            row["marginal_vs_brms"] = compare(marginal["summary"], brms_summary(case))
        if not args.skip_full:
            if case not in full:
                try:
                    full[case] = fresh(["case", case, "full", priors])[1]
                except RuntimeError as exc:  # report a failing full model, keep going
                    message = [line for line in str(exc).splitlines() if "Error" in line]
                    row["full_model_failed"] = (message or [str(exc)[-200:]])[-1].strip()
            if case not in full:
                results["agreement"][case] = row
                print(f"   {case:10s} {row}")
                continue
            row["full_divergences"] = full[case]["divergences"]
            row["full_parametrization"] = full[case]["parametrization"]
            row["marginal_vs_full"] = compare(marginal["summary"], full[case]["summary"])
            if priors == "brms":
                row["full_vs_brms"] = compare(full[case]["summary"], brms_summary(case))
        results["agreement"][case] = row
        text = ", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}" if isinstance(v, (list, tuple)) else f"{k} {v}"
                         for k, v in row.items())
        print(f"   {case:10s} {text}")

    if not args.skip_sim:
        print(f"4. simulated: {args.rows:,} rows, {args.groups:,} groups, correlated intercept and slope, 4 x 1000")
        wall, sim = fresh(["sim", str(args.rows), str(args.groups)])
        results["simulation"] = {"process_wall_s": wall, **sim}
        print(f"   import {sim['import_s']:.1f} s, sufficient statistics {sim['stats_s']:.1f} s, "
              f"compile + sampling {sim['sample_s']:.1f} s, exact effect draws (4000 x {args.groups:,} x 2) "
              f"{sim['effects_s']:.1f} s: total {sim['total_s']:.1f} s (simulating the data excluded); "
              f"divergences {sim['divergences']}, mean leapfrog steps {sim['mean_steps']:.1f}")
        for key, c in sim["coverage"].items():
            print(f"   {key:6s} truth {c['truth']:6.3f}  mean {c['mean']:7.4f}  "
                  f"95% [{c['lower']:.4f}, {c['upper']:.4f}]"
                  f"  {'inside' if c['inside'] else 'OUTSIDE'}  ESS {c['ess_bulk']:.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, rest = sys.argv[2], sys.argv[3:]
        result = worker_case(*rest) if kind == "case" else worker_sim(int(rest[0]), int(rest[1]))
        print(json.dumps(result))
    else:
        main()
