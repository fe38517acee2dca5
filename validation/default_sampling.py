"""Every lme4 reference case sampled at default settings (``LMM(formula, data).sample()``:
default priors, 4 chains x 1000 draws, the collapsed sampler where it applies).

Prints, per case, the parametrization used, wall time, divergences, the largest R-hat and
the smallest bulk ESS (issue: zero divergences on every reference case at default settings).
Run: ``python validation/default_sampling.py [--case insteval] [--skip insteval]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import bayeslmm as blm

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "lme4"


def sample_case(case: str, seed: int = 1) -> dict:
    ref = json.loads((REFERENCE / f"{case}.json").read_text())
    data = blm.datasets.load(Path(ref["data"]).stem)
    formula = ref["formula"].replace("log(", "np.log(")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = blm.LMM(formula, data).sample(random_seed=seed, progressbar=False)
    seconds = time.perf_counter() - start
    diag = post.diagnostics()
    return {"case": case, "parametrization": post.idata.posterior.attrs["parametrization"],
            "seconds": seconds, "divergences": int(post.divergences), "max_rhat": float(diag["r_hat"].max()),
            "min_ess_bulk": float(diag["ess_bulk"].min()),
            "warnings": [str(w.message)[:120] for w in caught if issubclass(w.category, blm.SamplingWarning)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=None)
    parser.add_argument("--skip", nargs="+", default=[])
    args = parser.parse_args()
    cases = args.case or sorted(p.stem for p in REFERENCE.glob("*.json"))
    print(f"{'case':14s} {'parametrization':15s} {'wall s':>7s} {'div':>4s} {'max R-hat':>9s} {'min ESS':>8s}")
    for case in cases:
        if case in args.skip:
            continue
        row = sample_case(case)
        print(f"{case:14s} {row['parametrization']:15s} {row['seconds']:7.1f} {row['divergences']:4d} "
              f"{row['max_rhat']:9.3f} {row['min_ess_bulk']:8.0f}", flush=True)
        for message in row["warnings"]:
            print(f"    warning: {message}")


if __name__ == "__main__":
    main()
