"""Simulation-based calibration (Talts et al. 2018) of the GLMM posterior (nutpie on the
non-centered PyMC model of :mod:`bayeslmm.sampling.glmm_bayes`).

Designs (fixed across replications; ``x`` centered):
- ``binomial``: 20 groups x 8 binary observations, ``y ~ x + (1 | g)`` (logit);
- ``poisson``: 20 groups x 6 counts, ``y ~ x + (1 | g)`` (log).

Each replication draws the parameters from the priors below, simulates the response,
samples the posterior (the model is compiled once; each replication swaps the response
in with nutpie's ``with_data``), and records the rank of each true value among ``L``
thinned draws. Uniformity of each rank histogram: chi-square over ``bins`` bins,
compared with 1 % after a Bonferroni correction over the parameters.

Run: ``PYTHONPATH=. python validation/glmm_sbc.py --reps 200 --family binomial``;
writes ``validation/out/glmm_sbc_<family>.txt`` and ``..._ranks.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import bayeslmm as blm
from bayeslmm.priors import Gamma, Normal

OUT = Path(__file__).resolve().parent / "out"
PRIORS = {
    "binomial": {"Intercept": Normal(mu=0.0, sigma=1.0), "b": Normal(mu=0.0, sigma=1.0),
                 "sd": Gamma(alpha=2.0, beta=2.0)},
    "poisson": {"Intercept": Normal(mu=1.0, sigma=0.5), "b": Normal(mu=0.0, sigma=0.5),
                "sd": Gamma(alpha=2.0, beta=4.0)},
}
SIZES = {"binomial": (20, 8), "poisson": (20, 6)}


def template(family: str, seed: int = 20) -> pd.DataFrame:
    groups, per = SIZES[family]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=groups * per)
    return pd.DataFrame({"y": np.tile([0, 1], groups * per // 2), "x": x - x.mean(),
                         "g": np.repeat([f"g{j:02d}" for j in range(groups)], per)})


def simulate(family: str, data: pd.DataFrame, rng: np.random.Generator):
    p = PRIORS[family]
    truth = {"Intercept": rng.normal(p["Intercept"].mu, p["Intercept"].sigma),
             "b_x": rng.normal(p["b"].mu, p["b"].sigma),
             "sd_g__(Intercept)": rng.gamma(p["sd"].alpha, 1.0 / p["sd"].beta)}
    codes = pd.factorize(data["g"], sort=True)[0]
    u = rng.normal(0.0, truth["sd_g__(Intercept)"], codes.max() + 1)
    eta = truth["Intercept"] + truth["b_x"] * data["x"].to_numpy() + u[codes]
    fam = blm.family.get_family(family)
    y = fam.simulate(fam.linkinv(eta), np.ones(len(eta)), rng)
    return truth, y.astype(np.int64)


def run(family: str, reps: int, draws: int = 500, chains: int = 2, thin: int = 10, seed: int = 1, bins: int = 10):
    import nutpie

    from bayeslmm.sampling.glmm_bayes import build_glmm_model, resolve_glmm_priors

    data = template(family)
    model = blm.GLMM("y ~ x + (1 | g)", data, family=family, priors=PRIORS[family])
    prior_set = resolve_glmm_priors(model.gd, model.priors)
    compiled = nutpie.compile_pymc_model(build_glmm_model(model.gd, prior_set), backend="numba",
                                         gradient_backend="pytensor")
    rng = np.random.default_rng(seed)
    rows, divergent, t0 = [], 0, time.perf_counter()
    for rep in range(reps):
        truth, y = simulate(family, data, rng)
        tree = nutpie.sample(compiled.with_data(y_observed=y), draws=draws, tune=draws, chains=chains,
                             seed=int(rng.integers(2**31)), progress_bar=False, target_accept=0.9)
        post = tree.posterior
        divergent += int(np.asarray(tree.sample_stats["diverging"]).sum())
        row = {}
        for name, value in truth.items():
            samples = np.asarray(post[name]).reshape(-1)[::thin]
            row[name] = int(np.sum(samples < value))
        rows.append(row)
    ranks = pd.DataFrame(rows)
    L = len(np.asarray(post["b_x"]).reshape(-1)[::thin])
    lines = [f"SBC {family}: {reps} replications, {chains} x {draws} draws thinned by {thin} (L = {L}), "
             f"{time.perf_counter() - t0:.0f} s, {divergent} divergent transitions in all",
             f"{'parameter':22s} {'chi2':>8s} {'p':>8s}  (Bonferroni 1 % over {ranks.shape[1]}: "
             f"p > {0.01 / ranks.shape[1]:.4f} passes)"]
    passed = True
    for name in ranks:
        counts = np.bincount(np.minimum(ranks[name].to_numpy() * bins // (L + 1), bins - 1), minlength=bins)
        chi2, p = stats.chisquare(counts)
        ok = p > 0.01 / ranks.shape[1]
        passed &= ok
        lines.append(f"{name:22s} {chi2:8.2f} {p:8.4f}  {'pass' if ok else 'FAIL'}  counts {counts.tolist()}")
    lines.append("all pass" if passed else "some FAIL")
    return ranks, "\n".join(lines), passed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=list(PRIORS), default="binomial")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    ranks, text, _ = run(args.family, args.reps, seed=args.seed)
    print(text)
    OUT.mkdir(exist_ok=True)
    ranks.to_csv(OUT / f"glmm_sbc_{args.family}_ranks.csv", index=False)
    (OUT / f"glmm_sbc_{args.family}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
