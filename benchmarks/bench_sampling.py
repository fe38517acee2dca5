"""Sampling speed against brms 2.18: sleep_rs and exam_rs, 4 chains x 1000 draws.

brms needed 64.3 s (sleep_rs) and 84.8 s (exam_rs) on this kind of machine, compile
included (``total_seconds`` in ../shared/reference/brms/*.json); its minimum bulk ESS over
the reported parameters (fixed effects, sds, correlations, sigma) divided by that time is
the ESS/s to beat (the issue's goal is 3x).

Every run is a fresh Python process (``--child``), so the wall time covers interpreter
start, ``import bayeslmm``, building the model, compiling it and sampling, as brms's covers
compiling the Stan program. Configurations:

- ``marginal``: ``LMM.sample()`` as a user calls it (the collapsed sampler where it applies);
- ``full-numba``: the full non-centered PyMC model, nutpie with its numba backend;
- ``full-jax``: the same with nutpie's JAX backend (needs ``pip install 'bayeslmm[jax]'``);
- ``full-pymc``: the same with PyMC's own NUTS (PyTensor's C backend).

The priors are brms's defaults (each reference file's ``priors`` field), so both programs
sample the same posterior. Run: ``python benchmarks/bench_sampling.py [--case sleep_rs]
[--config full-jax] [--repeat 1] [--cold]``; ``--cold`` empties the PyTensor and numba
caches first (a first run on a fresh machine; later runs reuse the cache). Timings on a shared
2-core machine are noisy, so quote
medians over repeats.
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

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "brms"
DATASET = {"sleep_rs": "sleepstudy", "exam_rs": "exam", "exam_sex": "exam"}
CONFIGS = {
    "marginal": dict(parametrization="auto"),
    "full-numba": dict(parametrization="full", sampler="nutpie", backend="numba"),
    "full-jax": dict(parametrization="full", sampler="nutpie", backend="jax"),
    "full-pymc": dict(parametrization="full", sampler="pymc"),
}


def reference(case: str) -> dict:
    return json.loads((REFERENCE / f"{case}.json").read_text())


def brms_min_ess_per_second(ref: dict) -> tuple[float, float, float]:
    seconds = ref["brms"]["total_seconds"]
    ess = min(row["ess_bulk"] for row in ref["brms"]["summary"])
    return seconds, ess, ess / seconds


def brms_priors(ref: dict, blm) -> dict:
    """brms's default priors of a reference case, through bayeslmm's priors API."""
    text = ref["priors"]

    def student_t(entry):
        nu, mu, scale = re.findall(r"student_t\(([^,]+), ([^,]+), ([^)]+)\)", text[entry])[0]
        return float(nu), float(mu), float(scale)

    nu, mu, scale = student_t("Intercept")
    return {"Intercept": blm.StudentT(nu=nu, mu=mu, sigma=scale), "b": blm.Flat(),
            "sd": blm.HalfStudentT(nu=student_t("sd")[0], sigma=student_t("sd")[2]),
            "sigma": blm.HalfStudentT(nu=student_t("sigma")[0], sigma=student_t("sigma")[2]),
            "cor": blm.LKJ(eta=1.0)}


def child(case: str, config: str, draws: int, seed: int, start: float) -> None:
    """One timed run in this (fresh) process; prints one JSON line."""
    t0 = time.perf_counter()
    import warnings

    import bayeslmm as blm
    t_import = time.perf_counter()
    compile_seconds = []
    try:  # time nutpie's compile step on its own (the numba one dominates a cold start)
        import nutpie

        original = nutpie.compile_pymc_model

        def timed_compile(*args, **kwargs):
            begin = time.perf_counter()
            out = original(*args, **kwargs)
            compile_seconds.append(time.perf_counter() - begin)
            return out

        nutpie.compile_pymc_model = timed_compile
    except ImportError:
        pass
    ref = reference(case)
    model = blm.LMM(ref["formula"], blm.datasets.load(DATASET[case]), priors=brms_priors(ref, blm))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", blm.SamplingWarning)
        post = model.sample(draws=draws, tune=draws, chains=4, random_seed=seed, progressbar=False,
                            **CONFIGS[config])
    t_end = time.perf_counter()
    diag = post.diagnostics()
    print(json.dumps({
        "case": case, "config": config,
        "wall": t_end - start, "import": t_import - t0, "sample": t_end - t_import,
        "compile": sum(compile_seconds) if compile_seconds else None,
        "min_ess_bulk": float(diag["ess_bulk"].min()), "max_rhat": float(diag["r_hat"].max()),
        "divergences": post.divergences,
        "parametrization": post.idata.posterior.attrs["parametrization"],
        "warnings": [str(w.message)[:200] for w in caught if issubclass(w.category, blm.SamplingWarning)],
    }))


def run(case: str, config: str, draws: int, seed: int, cold: bool = False) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as cache:
        if cold:  # empty PyTensor and numba caches: a first run on a fresh machine
            env["PYTENSOR_FLAGS"] = f"base_compiledir={cache}"
            env["NUMBA_CACHE_DIR"] = cache
        start = time.time()
        out = subprocess.run([sys.executable, __file__, "--child", case, config, str(draws), str(seed), str(start)],
                             capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"case": case, "config": config, "error": out.stderr.strip().splitlines()[-1:] or ["?"]}
    result = json.loads(lines[-1])
    result["wall"] = time.time() - start  # from before the interpreter started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=["sleep_rs", "exam_rs"], choices=list(DATASET))
    parser.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--draws", type=int, default=1000, help="draws and tune per chain")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="empty compile caches (first run on a machine)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, config, draws, seed, start = args.child
        child(case, config, int(draws), int(seed), float(start))
        return
    print(f"{'case':9s} {'config':11s} {'wall s':>7s} {'compile s':>9s} {'min ESS':>8s} {'ESS/s':>7s} "
          f"{'brms ESS/s':>10s} {'ratio':>6s} {'wall/brms':>9s} {'max rhat':>8s} {'div':>4s}")
    for case in args.case:
        seconds, _, brms_rate = brms_min_ess_per_second(reference(case))
        for config in args.config:
            results = [run(case, config, args.draws, args.seed + r, args.cold) for r in range(args.repeat)]
            ok = [r for r in results if "error" not in r]
            if not ok:
                print(f"{case:9s} {config:11s} failed: {results[0]['error']}")
                continue
            wall = statistics.median(r["wall"] for r in ok)
            ess = statistics.median(r["min_ess_bulk"] for r in ok)
            rate = statistics.median(r["min_ess_bulk"] / r["wall"] for r in ok)
            compiles = [r["compile"] for r in ok if r["compile"] is not None]
            compile_text = f"{statistics.median(compiles):9.1f}" if compiles else f"{'-':>9s}"
            print(f"{case:9s} {config:11s} {wall:7.1f} {compile_text} {ess:8.0f} {rate:7.1f} {brms_rate:10.1f} "
                  f"{rate / brms_rate:6.1f} {wall / seconds:9.2f} {max(r['max_rhat'] for r in ok):8.3f} "
                  f"{max(r['divergences'] for r in ok):4d}", flush=True)


if __name__ == "__main__":
    main()
