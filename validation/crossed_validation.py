"""The partially collapsed sampler (bayeslmm.sampling.crossed) samples the same posterior.

Two checks on small crossed designs:

1. ``agreement``: subjects x items, ``y ~ x + (1 + x | subj) + (1 | item)``, sampled
   (a) by the partially collapsed sampler at default settings, (b) by the full
   non-centered PyMC model run long (4 x 5000 draws, target_accept 0.95) and (c) by the
   collapsed sampler with all 75 effects integrated out jointly. Every parameter's
   posterior mean within 0.1 posterior sd and 4 Monte Carlo standard errors of the long
   full run's, every sd within 10%; the same for every group effect (means within 0.1 sd).
2. ``sbc``: simulation-based calibration (Talts et al. 2018) on
   ``y ~ x + (1 | a) + (1 | b)`` (12 x 8 crossed, 2 rows per cell): parameters drawn from
   the priors, data simulated, the posterior sampled, the rank of each truth among 99
   thinned draws recorded; ranks uniform per parameter (chi-square, Bonferroni 1%). The
   ranked quantities include one integrated and one sampled group effect, so the exact
   conditional draws are calibrated too.

3. ``agreement_mh`` and ``sbc --sampler marginal_mh``: the same for the independence sampler
   of bayeslmm.sampling.marginal_mh (scalar bars only: ``y ~ x + (1 | subj) + (1 | item)``
   for the agreement).

4. ``agreement --top item`` and ``sbc --vector``: the same with a sampled bar of two terms
   (``(1 + x | subj)``, ``(1 + x | a)`` on the SBC design: intercept and slope, correlated),
   whose intercept the sampler centers where its levels hold much information.

Run: ``python validation/crossed_validation.py agreement [--top item]`` (or ``agreement_mh``) and
``python validation/crossed_validation.py sbc --reps 200 [--sampler marginal_mh | --vector]``;
results are appended to validation/out/crossed_validation.txt.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "validation"))

import bayeslmm as blm  # noqa: E402
from bayeslmm.priors import LKJ, Exponential, Gamma, Normal  # noqa: E402

OUT = ROOT / "validation" / "out"
PRIORS = {"Intercept": Normal(mu=0.0, sigma=2.0), "b": Normal(mu=0.0, sigma=1.0), "sd": Gamma(alpha=2.0, beta=2.0),
          "cor": LKJ(eta=2.0), "sigma": Exponential(lam=1.0)}


def log(text: str) -> None:
    print(text, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "crossed_validation.txt").open("a") as fh:
        fh.write(f"[{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}] {text}\n")


# ---------------------------------------------------------------- agreement
def agreement_data(seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_s, n_i = 30, 15
    subj, item = np.meshgrid(np.arange(n_s), np.arange(n_i), indexing="ij")
    subj, item = subj.ravel(), item.ravel()
    x = rng.choice([-0.5, 0.5], size=len(subj))
    bs = rng.multivariate_normal([0, 0], [[0.8 ** 2, 0.3 * 0.8 * 0.4], [0.3 * 0.8 * 0.4, 0.4 ** 2]], size=n_s)
    bi = rng.normal(0, 0.6, size=n_i)
    y = 1.0 + 0.5 * x + bs[subj, 0] + bs[subj, 1] * x + bi[item] + rng.normal(0, 1.0, size=len(subj))
    return pd.DataFrame({"y": y, "x": x, "subj": subj.astype(str), "item": item.astype(str)})


def draws_of(posterior) -> dict[str, np.ndarray]:
    """(chain, draw) arrays of every scalar parameter and group effect."""
    out = {}
    for name in posterior.data_vars:
        if name.startswith("_"):
            continue
        values = posterior[name].values
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        for i in range(flat.shape[2]):
            out[f"{name}[{i}]"] = flat[:, :, i]
    return out


def compare(name_a: str, a: dict, name_b: str, b: dict) -> bool:
    import arviz_stats as azs
    import xarray as xr

    def mcse(v):
        return float(azs.mcse(xr.DataArray(v, dims=("chain", "draw")), method="mean"))

    worst_mean, worst_z, worst_sd, worst_eff = 0.0, 0.0, 0.0, 0.0
    for key in b:
        if key not in a:
            continue
        va, vb = a[key], b[key]
        sd = vb.std()
        diff = abs(va.mean() - vb.mean())
        if key.startswith("r_"):
            worst_eff = max(worst_eff, diff / sd)
            continue
        worst_mean = max(worst_mean, diff / sd)
        worst_z = max(worst_z, diff / np.hypot(mcse(va), mcse(vb)))
        worst_sd = max(worst_sd, abs(va.std() / sd - 1.0))
    ok = worst_mean <= 0.1 and worst_z <= 4.0 and worst_sd <= 0.10 and worst_eff <= 0.1
    log(f"  {name_a} vs {name_b}: max |mean diff| / sd {worst_mean:.3f} (criterion 0.1), max |mean diff| / MCSE "
        f"{worst_z:.2f} (4), max |sd ratio - 1| {worst_sd:.3f} (0.10), group effects max |mean diff| / sd "
        f"{worst_eff:.3f} (0.1): {'PASS' if ok else 'FAIL'}")
    return ok


def joint_collapse(design, prior_set, seed: int) -> dict:
    """The collapsed sampler with every effect integrated out jointly, 4 x 4000 draws."""
    from bayeslmm.sampling.marginal import MarginalProblem, posterior_dataset, run_marginal

    t = time.perf_counter()
    mproblem = MarginalProblem.from_design(design)
    mrun = run_marginal(mproblem, prior_set, draws=4000, random_seed=seed, progressbar=False)
    meff = mproblem.draw_effects(mrun.x.reshape(-1, mproblem.ndim), mrun.blob, np.random.default_rng([seed, 2]))
    log(f"  collapsed ({sum(len(b.levels) * b.q for b in mproblem.bars)} effects jointly), 4 x 4000: "
        f"{time.perf_counter() - t:.1f} s, divergences {int(mrun.sample_stats['diverging'].sum())}")
    return draws_of(posterior_dataset(mproblem, mrun, meff))


def long_full_run(design, prior_set, seed: int) -> dict:
    """The full non-centered model run long: 4 x 5000 draws, target_accept 0.95."""
    from bayeslmm.sampling.bayes import build_model, run_sampler

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = run_sampler(build_model(design, prior_set, likelihood="auto"), "nutpie", draws=5000, tune=2000,
                          chains=4, random_seed=seed, target_accept=0.95, progressbar=False)
    log(f"  full model, 4 x 5000, target_accept 0.95: {time.perf_counter() - t:.1f} s, divergences "
        f"{int(raw['sample_stats']['diverging'].sum())}")
    return draws_of(raw["posterior"].to_dataset() if hasattr(raw["posterior"], "to_dataset") else raw.posterior)


def agreement(seed: int = 1, top: str | None = None) -> bool:
    """``top``: the factor integrated out ("subj" or "item"; default the cost model's choice,
    subj); with "item" the sampled bar is (1 + x | subj), its intercept centered."""
    from bayeslmm.sampling.crossed import CrossedProblem, crossed_posterior, factors_of, run_crossed

    model = blm.LMM("y ~ x + (1 + x | subj) + (1 | item)", agreement_data(), priors=PRIORS)
    design, prior_set = model.design, model.resolved_priors()
    t = time.perf_counter()
    labels = [f.label for f in factors_of(design)]
    problem = CrossedProblem.from_design(design, None if top is None else labels.index(top))
    run = run_crossed(problem, prior_set, random_seed=seed, progressbar=False)
    effects = problem.draw_effects(run.x.reshape(-1, problem.ndim), run.blob, np.random.default_rng([seed, 2]))
    crossed = draws_of(crossed_posterior(problem, run, effects))
    divergences = int(run.sample_stats["diverging"].sum())
    log(f"agreement: {design.nobs} rows, 30 x 15 crossed; partially collapsed ("
        f"{', '.join(problem.bars[k].label for k in problem.integrated)} integrated, leading terms centered per "
        f"sampled bar {list(problem.centered)}) at default settings: {time.perf_counter() - t:.1f} s, "
        f"divergences {divergences}")
    joint = joint_collapse(design, prior_set, seed)
    full = long_full_run(design, prior_set, seed)
    ok = compare("partially collapsed", crossed, "full (long)", full)
    ok &= compare("partially collapsed", crossed, "collapsed (joint)", joint)
    ok &= divergences == 0
    log(f"agreement: {'PASS' if ok else 'FAIL'}")
    return ok


# ---------------------------------------------------------------- SBC
SBC_FORMULA = "y ~ x + (1 | a) + (1 | b)"


def sbc_template(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = np.meshgrid(np.arange(12), np.arange(8), indexing="ij")
    a, b = np.repeat(a.ravel(), 2), np.repeat(b.ravel(), 2)
    return pd.DataFrame({"y": rng.normal(size=len(a)), "x": rng.normal(size=len(a)),
                         "a": a.astype(str), "b": b.astype(str)})


#: the vector-bar SBC: b integrated out, a's correlated intercept and slope sampled (its
#: intercept centered in the replications where the centering rule says so)
SBC_VECTOR_FORMULA = "y ~ x + (1 + x | a) + (1 | b)"


def run_sbc(reps: int, seed: int = 20240917, chains: int = 2, draws: int = 500, tune: int = 500,
            n_ranks: int = 99, sampler: str = "crossed", vector: bool = False) -> pd.DataFrame:
    """Ranks (0..n_ranks) of the true values, one row per replication; ``sampler``:
    "crossed" (the partially collapsed NUTS sampler) or "marginal_mh" (the independence
    sampler of bayeslmm.sampling.marginal_mh). ``vector``: the design of SBC_VECTOR_FORMULA
    (crossed sampler only), with b integrated out and a sampled."""
    from dataclasses import replace

    from bayeslmm.sampling.crossed import CrossedProblem, crossed_posterior, factors_of, run_crossed
    from bayeslmm.sampling.marginal_mh import sample_marginal_mh

    from sbc import draw_lkj, draw_prior

    rng = np.random.default_rng(seed)
    template = sbc_template()
    priors = PRIORS if vector else {k: v for k, v in PRIORS.items() if k != "cor"}  # no LKJ on scalar bars
    model = blm.LMM(SBC_VECTOR_FORMULA if vector else SBC_FORMULA, template, priors=priors)
    design, prior_set = model.design, model.resolved_priors()
    factors = factors_of(design)
    x_col = design.X[:, 1]
    rows = []
    for rep in range(reps):
        b1 = draw_prior(PRIORS["b"], rng)
        b0c = draw_prior(PRIORS["Intercept"], rng)  # the prior is on the centered intercept
        b0 = b0c - b1 * x_col.mean()
        sd_a, sd_b = draw_prior(PRIORS["sd"], rng, 2 if vector else None), draw_prior(PRIORS["sd"], rng)
        sigma = float(draw_prior(PRIORS["sigma"], rng))
        if vector:
            R = draw_lkj(PRIORS["cor"].eta, 2, rng)
            ra = rng.multivariate_normal(np.zeros(2), sd_a[:, None] * R * sd_a[None, :], size=factors[0].n_levels)
            group_a = ra[factors[0].codes, 0] + ra[factors[0].codes, 1] * x_col
        else:
            ra = rng.normal(0, sd_a, size=factors[0].n_levels)
            group_a = ra[factors[0].codes]
        rb = rng.normal(0, sd_b, size=factors[1].n_levels)
        y = b0 + b1 * x_col + group_a + rb[factors[1].codes] + rng.normal(0, sigma, size=design.nobs)
        run_seed = int(rng.integers(2**31))
        centered = 0
        if sampler == "marginal_mh":
            with warnings.catch_warnings():  # short runs: R-hat / ESS warnings are expected, SBC judges
                warnings.simplefilter("ignore", blm.SamplingWarning)
                warnings.simplefilter("ignore", blm.ConvergenceWarning)
                result = sample_marginal_mh(replace(design, y=y), prior_set, draws=draws, tune=tune,
                                            chains=chains, random_seed=run_seed, progressbar=False)
            post = result.idata.posterior
            divergences, integrated = 0, "all"
        else:
            problem = CrossedProblem.from_factors(y, design.X, tuple(design.fixed_names), factors,
                                                  top=1 if vector else None)
            run = run_crossed(problem, prior_set, draws=draws, tune=tune, chains=chains, random_seed=run_seed,
                              progressbar=False)
            effects = problem.draw_effects(run.x.reshape(-1, problem.ndim), run.blob,
                                           np.random.default_rng(run_seed))
            post = crossed_posterior(problem, run, effects)
            divergences = int(run.sample_stats["diverging"].sum())
            integrated = problem.bars[problem.integrated[0]].label
            centered = problem.centered[0]
        truth = {"beta[(Intercept)]": b0, "beta[x]": b1, "sd_b": sd_b, "sigma": sigma, "r_b[0]": rb[0]}
        values = {"beta[(Intercept)]": post["beta"].values[..., 0], "beta[x]": post["beta"].values[..., 1],
                  "sd_b": post["sd_b"].values[..., 0], "sigma": post["sigma"].values,
                  "r_b[0]": post["r_b"].values[..., 0, 0]}
        if vector:
            truth |= {"sd_a[0]": sd_a[0], "sd_a[1]": sd_a[1], "cor_a": R[0, 1], "r_a[0,0]": ra[0, 0],
                      "r_a[0,1]": ra[0, 1]}
            values |= {"sd_a[0]": post["sd_a"].values[..., 0], "sd_a[1]": post["sd_a"].values[..., 1],
                       "cor_a": post["cor_a"].values[..., 0], "r_a[0,0]": post["r_a"].values[..., 0, 0],
                       "r_a[0,1]": post["r_a"].values[..., 0, 1]}
        else:
            truth |= {"sd_a": sd_a, "r_a[0]": ra[0]}
            values |= {"sd_a": post["sd_a"].values[..., 0], "r_a[0]": post["r_a"].values[..., 0, 0]}
        keep = np.linspace(0, chains * draws - 1, n_ranks).astype(int)
        rows.append({k: int(np.sum(v.ravel()[keep] < truth[k])) for k, v in values.items()}
                    | {"divergences": divergences, "integrated": integrated, "centered": centered})
    return pd.DataFrame(rows)


def sbc(reps: int, sampler: str = "crossed", vector: bool = False, seed: int = 20240917) -> bool:
    from sbc import plot_ranks, uniformity_table

    t = time.perf_counter()
    ranks = run_sbc(reps, seed=seed, sampler=sampler, vector=vector)
    params = [c for c in ranks.columns if c not in ("divergences", "integrated", "centered")]
    table = uniformity_table(ranks[params])
    OUT.mkdir(parents=True, exist_ok=True)
    stem = ("sbc_crossed_vector" if vector else "sbc_crossed") if sampler == "crossed" else "sbc_marginal_mh"
    stem += "" if seed == 20240917 else f"_seed{seed}"
    ranks.to_csv(OUT / f"{stem}_ranks.csv", index=False)
    title = "partially collapsed sampler" if sampler == "crossed" else "independence sampler (marginal_mh)"
    formula = SBC_VECTOR_FORMULA if vector else SBC_FORMULA
    plot_ranks(ranks[params], f"SBC, {title}: {formula} ({reps} replications)", OUT / f"{stem}.png")
    ok = bool(table["pass"].all())
    n_centered = int((ranks["centered"] > 0).sum())
    centered = f", the sampled intercept centered in {n_centered}" if sampler == "crossed" else ""
    log(f"sbc ({sampler}): {formula}, 12 x 8 crossed, {reps} replications, seed {seed} "
        f"({time.perf_counter() - t:.0f} s), "
        f"integrated factor {ranks['integrated'].iloc[0]!r}{centered}, divergences in "
        f"{int((ranks['divergences'] > 0).sum())} runs; chi-square p-values: "
        + ", ".join(f"{k} {v:.3f}" for k, v in table["p_value"].items()) + f": {'PASS' if ok else 'FAIL'}")
    return ok


def agreement_mh(seed: int = 1) -> bool:
    """The independence sampler on ``y ~ x + (1 | subj) + (1 | item)`` (the agreement data)
    at default settings against the collapsed sampler (45 effects jointly, 4 x 4000) and
    the full model run long (4 x 5000, target_accept 0.95)."""
    from bayeslmm.sampling.marginal_mh import sample_marginal_mh

    model = blm.LMM("y ~ x + (1 | subj) + (1 | item)", agreement_data(), priors=PRIORS)
    design, prior_set = model.design, model.resolved_priors()
    t = time.perf_counter()
    result = sample_marginal_mh(design, prior_set, random_seed=seed, progressbar=False)
    mh = draws_of(result.idata.posterior)
    log(f"agreement (marginal_mh): {design.nobs} rows, 30 x 15 crossed, y ~ x + (1 | subj) + (1 | item), default "
        f"settings: {time.perf_counter() - t:.1f} s, acceptance {result.idata.posterior.attrs['acceptance']:.2f}")
    joint = joint_collapse(design, prior_set, seed)
    full = long_full_run(design, prior_set, seed)
    ok = compare("marginal_mh", mh, "full (long)", full)
    ok &= compare("marginal_mh", mh, "collapsed (joint)", joint)
    log(f"agreement (marginal_mh): {'PASS' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("check", choices=["agreement", "agreement_mh", "sbc"])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--sampler", choices=["crossed", "marginal_mh"], default="crossed")
    parser.add_argument("--vector", action="store_true", help=f"sbc on {SBC_VECTOR_FORMULA} (crossed sampler)")
    parser.add_argument("--seed", type=int, default=20240917, help="sbc: the replications' seed")
    parser.add_argument("--top", help="agreement: the factor to integrate out (default: the plan's choice)")
    args = parser.parse_args()
    if args.check == "agreement":
        agreement(top=args.top)
    elif args.check == "agreement_mh":
        agreement_mh()
    else:
        sbc(args.reps, args.sampler, args.vector, args.seed)
