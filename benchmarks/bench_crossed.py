"""The partially collapsed sampler (and, for designs of scalar bars, the independence
sampler of parametrization="marginal_mh") on large crossed designs (issue 17).

Run: ``python benchmarks/bench_crossed.py CASE [--seed 1]`` with CASE one of kb07_4x4,
kb07_max, insteval, sim1m; each run appends its lines to benchmarks/out/bench_crossed.txt.
Each case runs what ``parametrization="auto"`` picks (InstEval: marginal_mh; ``--top K``
forces the partially collapsed sampler integrating bar K); ``sim1m --sampler marginal_mh``
runs the independence sampler on the simulated design. ``--adaptation``,
``--extra-doublings``, ``--target-accept`` and ``--centered`` change the partially collapsed
sampler's settings (the line then says so), to compare them with its defaults.

Each timing is the wall time of this process from its start (interpreter, imports, data,
design, kernel compilation or cache load, sampling 4 x 1000 draws after 1000 tuning
steps at default settings, exact draws of the integrated effects, diagnostics), as brms's
times include Stan's compilation. Diagnostics (arviz_stats): divergences, max R-hat and
min bulk ESS over every parameter except the group effects, and separately over the
covariance parameters (sds, correlations, sigma). On a shared, loaded machine the wall
time says little, so the process's CPU time (all threads) is reported too, with the wall
time it implies on an idle 2-core machine (CPU / 2: nutpie runs the chains on both cores).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "benchmarks" / "out" / "bench_crossed.txt"
sys.path.insert(0, str(ROOT))

KB07 = json.loads((SHARED / "reference" / "psycholing.json").read_text())["cases"]
BRMS = json.loads((SHARED / "reference" / "brms" / "kb07_4x4.json").read_text())
BRMS_ESS_PER_S = BRMS["min_ess_bulk"] / BRMS["total_seconds"]


def diagnostics(posterior, stats, cov_only=False):
    import arviz_stats as azs

    names = [v for v in posterior.data_vars if not v.startswith("r_")]
    if cov_only:
        names = [v for v in names if v.startswith(("sd_", "cor_")) or v == "sigma"]
    ds = posterior[names]
    ess = azs.ess(ds, method="bulk")
    rhat = azs.rhat(ds)
    min_ess = min(float(ess[v].min()) for v in names)
    max_rhat = max(float(rhat[v].max()) for v in names)
    return max_rhat, min_ess


def run_design(design, prior_set, seed, top=None):
    """As ``LMM.sample(parametrization="auto")`` runs it (the plan's integrated factor),
    without the PosteriorResult (its ArviZ layer is being ported on another branch)."""
    from bayeslmm.sampling.crossed import CrossedProblem, crossed_posterior, plan_sampler, run_crossed

    if top is None:
        plan = plan_sampler(design)
        print(plan.reason, flush=True)
        assert plan.parametrization == "crossed", plan.reason
        top = plan.top
    from bayeslmm.model import default_target_accept

    problem = CrossedProblem.from_design(design, top, centered=SETTINGS.get("centered"))
    nutpie_options = {k: v for k, v in SETTINGS.items() if k in ("adaptation", "extra_doublings")}
    run = run_crossed(problem, prior_set, random_seed=seed, progressbar=False,
                      target_accept=SETTINGS.get("target_accept", default_target_accept(design, "crossed")),
                      **nutpie_options)
    t = time.perf_counter()
    effects = problem.draw_effects(run.x.reshape(-1, problem.ndim), run.blob, np.random.default_rng([seed, 2]))
    t_eff = time.perf_counter() - t
    return problem, run, crossed_posterior(problem, run, effects), t_eff


#: the partially collapsed sampler's settings where they differ from its defaults
#: (--adaptation, --extra-doublings, --target-accept, --centered: for comparisons only)
SETTINGS: dict = {}


def record(line: str, seed) -> str:
    """Print a result line and append it, stamped, to benchmarks/out/bench_crossed.txt."""
    if SETTINGS:
        line += " [not the defaults: " + ", ".join(f"{k}={v}" for k, v in SETTINGS.items()) + "]"
    print(line, flush=True)
    with OUT.open("a") as fh:
        fh.write(f"[{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, seed {seed}, {os.cpu_count()} cpus] "
                 f"{line}\n")
    return line


def report(name, problem, run, posterior, t_eff, extra=""):
    wall = time.perf_counter() - START
    cpu = time.process_time()
    load = os.getloadavg()[0]
    div = int(run.sample_stats["diverging"].sum())
    steps = float(run.sample_stats["n_steps"].mean())
    rh_all, ess_all = diagnostics(posterior, run.sample_stats)
    rh_cov, ess_cov = diagnostics(posterior, run.sample_stats, cov_only=True)
    integ = ", ".join(problem.bars[k].label for k in problem.integrated)
    smp = ", ".join(problem.bars[k].label for k in problem.sampled)
    line = (f"{name}: wall {wall:.1f} s (sampling {run.seconds:.1f} s, effect draws {t_eff:.1f} s), "
            f"integrated [{integ}], sampled [{smp}], ndim {problem.ndim}, mean leapfrog steps {steps:.1f}, "
            f"divergences {div}, max R-hat {rh_all:.4f} (covariance params {rh_cov:.4f}), "
            f"min bulk ESS {ess_all:.0f} (covariance params {ess_cov:.0f}), "
            f"{ess_all / wall:.1f} ESS/s = {ess_all / wall / BRMS_ESS_PER_S:.1f}x brms kb07_4x4 "
            f"({BRMS_ESS_PER_S:.2f} ESS/s); CPU {cpu:.0f} s (all threads), load average {load:.1f} on "
            f"{os.cpu_count()} cores: on an idle 2-core machine ~{cpu / 2:.0f} s wall, "
            f"{ess_all / (cpu / 2) / BRMS_ESS_PER_S:.1f}x brms{extra}")
    return record(line, run.seed)


def kb07(case, seed, top=None):
    import bayeslmm as blm
    from bayeslmm.sampling.bayes import bar_labels  # noqa: F401

    ref = KB07[case]
    data = pd.read_csv(SHARED / "data" / "kb07.csv", dtype={"subj": str, "item": str})
    model = blm.LMM(ref["formula"], data)
    problem, run, posterior, t_eff = run_design(model.design, model.resolved_priors(), seed, top)
    # posterior means next to lme4's ML estimates (priors differ; a sanity check)
    sds = {f"sd_{g}": posterior[f"sd_{g}"].mean(("chain", "draw")).values.round(1).tolist() for g in ("subj", "item")}
    extra = f"; posterior mean sds {sds}, sigma {float(posterior['sigma'].mean()):.1f} (lme4 ML {ref['sigma']:.1f})"
    return report(case, problem, run, posterior, t_eff, extra)


def report_mh(name, result, extra=""):
    """The independence sampler's line: as :func:`report`, with its acceptance rate."""
    wall = time.perf_counter() - START
    cpu = time.process_time()
    load = os.getloadavg()[0]
    post = result.idata.posterior
    rh_all, ess_all = diagnostics(post.to_dataset(), None)
    rh_cov, ess_cov = diagnostics(post.to_dataset(), None, cov_only=True)
    line = (f"{name}: wall {wall:.1f} s (sampling {post.attrs['sampling_seconds']:.1f} s, effect draws "
            f"{post.attrs['effect_draw_seconds']:.1f} s), parametrization marginal_mh (independence "
            f"Metropolis-Hastings, every effect integrated out), acceptance {post.attrs['acceptance']:.2f}, "
            f"max R-hat {rh_all:.4f} (covariance params {rh_cov:.4f}), min bulk ESS {ess_all:.0f} (covariance "
            f"params {ess_cov:.0f}), {ess_all / wall:.1f} ESS/s = {ess_all / wall / BRMS_ESS_PER_S:.1f}x brms "
            f"kb07_4x4; CPU {cpu:.0f} s (all threads), load average {load:.1f} on {os.cpu_count()} cores{extra}")
    return record(line, post.attrs.get("seed", "?"))


#: posterior means of the partially collapsed sampler's two InstEval runs above in
#: benchmarks/out/bench_crossed.txt (4 x 1000 draws each, 14:37 and 17:20 UTC on 2026-11-28)
INSTEVAL_CROSSED_MEANS = {"sd_s": (0.325857, 0.325932), "sd_d": (0.515363, 0.515459),
                          "sd_dept": (0.101305, 0.101120), "sigma": (1.177545, 1.177466)}


def insteval(seed, top=None):
    import bayeslmm as blm
    from bayeslmm.sampling.crossed import plan_sampler
    from bayeslmm.sampling.marginal_mh import sample_marginal_mh

    model = blm.LMM("y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", blm.datasets.load("insteval"))
    plan = plan_sampler(model.design)
    if top is None and plan.parametrization == "marginal_mh":
        print(plan.reason, flush=True)
        result = sample_marginal_mh(model.design, model.resolved_priors(), random_seed=seed, progressbar=False)
        post = result.idata.posterior
        parts = []
        for v, ref in INSTEVAL_CROSSED_MEANS.items():
            draws = post[v].values.ravel()
            parts.append(f"{v} {draws.mean():.6f} (sd {draws.std():.6f}; crossed runs {ref[0]:.6f}, {ref[1]:.6f}: "
                         f"{abs(draws.mean() - np.mean(ref)) / draws.std():.3f} posterior sd apart)")
        return report_mh("insteval", result, "; means " + ", ".join(parts))
    problem, run, posterior, t_eff = run_design(model.design, model.resolved_priors(), seed, top)
    means = {v: float(posterior[v].mean()) for v in ("sd_s", "sd_d", "sd_dept", "sigma")}
    return report("insteval", problem, run, posterior, t_eff, f"; means {means}")


def sim1m_data():
    """The simulated design: truth, codes of a (10,000 levels) and b (2,000), x, y (1,000,000 rows)."""
    rng = np.random.default_rng(17)
    n, na, nb = 1_000_000, 10_000, 2_000
    truth = {"b0": 2.0, "b1": 0.7, "sd_a": 1.0, "sd_b": 0.5, "sigma": 2.0}
    a = rng.integers(na, size=n)
    b = rng.integers(nb, size=n)
    x = rng.normal(size=n)
    y = (truth["b0"] + truth["b1"] * x + truth["sd_a"] * rng.normal(size=na)[a] + truth["sd_b"] * rng.normal(size=nb)[b]
         + truth["sigma"] * rng.normal(size=n))
    return truth, a, b, x, y


def sim1m(seed, draws=1000, tune=1000, chains=4):
    """1,000,000 rows, 10,000 x 2,000 crossed levels, intercept + slope on x in the fixed
    part, random intercepts on both factors: true values inside their 95% intervals?"""
    import bayeslmm.priors as P
    from bayeslmm.sampling.crossed import CrossedProblem, Factor, crossed_posterior, run_crossed

    truth, a, b, x, y = sim1m_data()
    n, na, nb = len(y), 10_000, 2_000
    t0 = time.perf_counter()
    X = np.column_stack([np.ones(n), x])
    ones = np.ones((n, 1))
    factors = [Factor("a", a, ones, ("(Intercept)",), True, tuple(range(na))),
               Factor("b", b, ones, ("(Intercept)",), True, tuple(range(nb)))]
    problem = CrossedProblem.from_factors(y, X, ("(Intercept)", "x"), factors)
    prior_set = P.PriorSet(intercept=P.StudentT(nu=3.0, mu=float(np.median(y)), sigma=2.5 * float(np.std(y))),
                           fixed={"x": P.Flat()},
                           sd={(0, "(Intercept)"): P.HalfStudentT(nu=3.0, sigma=2.5 * float(np.std(y))),
                               (1, "(Intercept)"): P.HalfStudentT(nu=3.0, sigma=2.5 * float(np.std(y)))},
                           cor={}, sigma=P.HalfStudentT(nu=3.0, sigma=2.5 * float(np.std(y))), sources={})
    t_setup = time.perf_counter() - t0
    run = run_crossed(problem, prior_set, draws=draws, tune=tune, chains=chains, random_seed=seed, progressbar=False)
    t = time.perf_counter()
    effects = problem.draw_effects(run.x.reshape(-1, problem.ndim), run.blob, np.random.default_rng([seed, 2]))
    t_eff = time.perf_counter() - t
    posterior = crossed_posterior(problem, run, effects)
    checks = [f"{chains} chains x {draws} draws after {tune} tuning steps"]
    for name, values in (("b0", posterior["beta"][..., 0]), ("b1", posterior["beta"][..., 1]),
                         ("sd_a", posterior["sd_a"][..., 0]), ("sd_b", posterior["sd_b"][..., 0]),
                         ("sigma", posterior["sigma"])):
        v = values.values.ravel()
        lo, hi = np.quantile(v, [0.025, 0.975])
        checks.append(f"{name} truth {truth[name]} mean {v.mean():.4f} 95% [{lo:.4f}, {hi:.4f}] "
                      f"{'inside' if lo <= truth[name] <= hi else 'OUTSIDE'}")
    return report("sim1m (1,000,000 rows, 10,000 x 2,000 levels)", problem, run, posterior, t_eff,
                  f"; setup (sufficient structure) {t_setup:.1f} s; " + "; ".join(checks))


def sim1m_mh(seed, draws=1000, tune=1000, chains=4):
    """:func:`sim1m`'s data through ``LMM(...).sample(parametrization="marginal_mh")`` (default
    priors): true values inside their 95% intervals?"""
    import bayeslmm as blm

    truth, a, b, x, y = sim1m_data()
    t0 = time.perf_counter()
    data = pd.DataFrame({"y": y, "x": x, "a": pd.Categorical(a), "b": pd.Categorical(b)})
    model = blm.LMM("y ~ 1 + x + (1 | a) + (1 | b)", data)
    t_setup = time.perf_counter() - t0
    result = model.sample(parametrization="marginal_mh", draws=draws, tune=tune, chains=chains, random_seed=seed,
                          progressbar=False)
    post = result.idata.posterior
    checks = [f"{chains} chains x {draws} draws"]
    for name, values in (("b0", post["beta"][..., 0]), ("b1", post["beta"][..., 1]), ("sd_a", post["sd_a"][..., 0]),
                         ("sd_b", post["sd_b"][..., 0]), ("sigma", post["sigma"])):
        v = values.values.ravel()
        lo, hi = np.quantile(v, [0.025, 0.975])
        checks.append(f"{name} truth {truth[name]} mean {v.mean():.4f} 95% [{lo:.4f}, {hi:.4f}] "
                      f"{'inside' if lo <= truth[name] <= hi else 'OUTSIDE'}")
    return report_mh("sim1m (1,000,000 rows, 10,000 x 2,000 levels)", result,
                     f"; data frame and design {t_setup:.1f} s; " + "; ".join(checks))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["kb07_4x4", "kb07_max", "insteval", "sim1m"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--top", type=int, default=None)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--sampler", choices=["crossed", "marginal_mh"], default="crossed",
                        help="sim1m only: the partially collapsed sampler or the independence sampler")
    parser.add_argument("--adaptation", help="nutpie's mass-matrix adaptation (default: the sampler's, diag)")
    parser.add_argument("--extra-doublings", type=int, help="nutpie's extra_doublings (default: the sampler's, 1)")
    parser.add_argument("--target-accept", type=float, help="default: default_target_accept(design, 'crossed')")
    parser.add_argument("--centered", type=int, help="leading terms centered in every sampled bar (default: the rule)")
    args = parser.parse_args()
    SETTINGS.update({k: v for k, v in [("adaptation", args.adaptation), ("extra_doublings", args.extra_doublings),
                                       ("target_accept", args.target_accept), ("centered", args.centered)]
                     if v is not None})
    if args.case.startswith("kb07"):
        kb07(args.case, args.seed, args.top)
    elif args.case == "insteval":
        insteval(args.seed, args.top)
    elif args.sampler == "marginal_mh":
        sim1m_mh(args.seed, args.draws, args.tune, args.chains)
    else:
        sim1m(args.seed, args.draws, args.tune, args.chains)
