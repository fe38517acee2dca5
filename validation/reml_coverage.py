"""Coverage of REML Wald intervals for the fixed effects, on data simulated from known values.

Design: the sleepstudy layout (18 subjects x 10 days), ``Reaction ~ Days + (Days | Subject)``,
simulated at lme4's REML estimates (beta = (251.4, 10.47), sds 24.7 and 5.92, correlation
0.066, sigma 25.6). For each replication, refit by REML and check whether the 95% interval
``estimate +- q * std_error`` covers the true value, with q from the normal and from a t
distribution with (groups - 1) degrees of freedom (the normal Wald interval is known to
under-cover slightly with 18 groups, because it ignores the uncertainty in the variances).

Run: ``python validation/reml_coverage.py --reps 1000``. Prints the coverage per fixed
effect with its Monte Carlo standard error.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from scipy import stats

import bayeslmm as blm
from bayeslmm.scale.simulate import simulate_response, with_response

FORMULA = "Reaction ~ Days + (Days | Subject)"
TRUTH = {
    "beta": np.array([251.405, 10.467]),
    "sds": np.array([24.74, 5.922]),
    "corr": 0.0656,
    "sigma": 25.59,
}


def true_covariance() -> np.ndarray:
    sds, corr = TRUTH["sds"], TRUTH["corr"]
    return np.array([[sds[0] ** 2, corr * sds[0] * sds[1]], [corr * sds[0] * sds[1], sds[1] ** 2]])


def coverage(reps: int, seed: int = 2024, level: float = 0.95) -> dict[str, np.ndarray]:
    """Fraction of ``reps`` REML fits whose Wald intervals cover the true fixed effects.

    Returns ``{"normal": (p,), "t": (p,), "reps": reps}``.
    """
    rng = np.random.default_rng(seed)
    template = blm.LMM(FORMULA, blm.datasets.load("sleepstudy")).design
    n_groups = template.blocks[0].n_levels
    z = stats.norm.ppf(0.5 + level / 2)
    t = stats.t.ppf(0.5 + level / 2, df=n_groups - 1)
    hits = {"normal": np.zeros(2), "t": np.zeros(2)}
    for _ in range(reps):
        y, _ = simulate_response(template, TRUTH["beta"], [true_covariance()], TRUTH["sigma"], rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = blm.LMM(FORMULA, with_response(template, y)).fit("reml")
        table = fit.fixef()
        error = np.abs(table["estimate"].to_numpy() - TRUTH["beta"])
        hits["normal"] += error <= z * table["std_error"].to_numpy()
        hits["t"] += error <= t * table["std_error"].to_numpy()
    return {"normal": hits["normal"] / reps, "t": hits["t"] / reps, "reps": reps}


def main() -> None:
    parser = argparse.ArgumentParser(description="REML Wald-interval coverage simulation")
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    result = coverage(args.reps, args.seed)
    mc_se = np.sqrt(0.95 * 0.05 / args.reps)
    print(f"{args.reps} replications, nominal 0.95 (Monte Carlo se {mc_se:.4f})")
    for kind in ("normal", "t"):
        cells = ", ".join(f"{name}: {value:.3f}" for name, value in zip(["(Intercept)", "Days"], result[kind]))
        print(f"  {kind:6s} quantile  {cells}")


if __name__ == "__main__":
    main()
