"""The GLMM posterior at default settings (4 chains x 1000 draws after 1000 tuning steps,
target_accept 0.9, nutpie/numba) on the reference cases cbpp, grouseticks and VerbAgg:
divergent transitions, max R-hat and min bulk ESS over the model's parameters (fixed
effects, sds), wall time; and, for cbpp and grouseticks, agreement with a long run of the
same model (4 x 5000 draws, another seed): every fixed effect's and sd's posterior mean
within 4 Monte-Carlo standard errors of the long run's (the two runs' MCSEs combined), its
posterior sd within 10 %.

Run: ``PYTHONPATH=. python validation/glmm_default_sampling.py [cases...] [--long cases...]
[--out name]``; writes ``validation/out/glmm_default_sampling.txt`` (or ``name``). VerbAgg's long
run (~15 min here) is kept apart: ``verbagg --long verbagg --out glmm_default_sampling_verbagg.txt``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

import bayeslmm as blm

OUT = Path(__file__).resolve().parent / "out"
REFERENCE = Path(os.environ.get("BAYESLMM_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
REF = json.loads((REFERENCE / "glmm" / "glmm_reference.json").read_text())
FAMILY = {"cbpp": "binomial", "grouseticks": "poisson", "verbagg": "binomial"}
LONG = ("cbpp", "grouseticks")  # compared with a long run of the same model


def parameters(post):
    names = ["beta"] + [v for v in post.idata.posterior.data_vars if v.startswith(("sd_", "_chol_"))]
    return post.idata.posterior.to_dataset()[names]


def diagnostics(post):
    from arviz_stats import ess, rhat

    ds = parameters(post)
    r = rhat(ds)
    e = ess(ds, method="bulk")
    return (max(float(np.nanmax(np.asarray(r[v]))) for v in r.data_vars),
            min(float(np.nanmin(np.asarray(e[v]))) for v in e.data_vars))


def flat_parameters(post):
    """name -> (chains, draws) array for every fixed effect and sd."""
    ds = parameters(post)
    out = {}
    for v in ds.data_vars:
        values = np.asarray(ds[v])
        if values.ndim == 2:
            out[v] = values
        else:
            for j in range(values.shape[2]):
                out[f"{v}[{j}]"] = values[:, :, j]
    return out


def compare_with_long_run(model, post):
    """Every fixed effect's and sd's posterior mean within 4 Monte-Carlo standard errors
    (both runs' MCSEs combined, each sd / sqrt(bulk ESS)) of a long run of the same model
    (4 x 5000 draws, another seed), and its posterior sd within 10 %."""
    from arviz_stats import ess

    long = model.sample(draws=5000, tune=1000, random_seed=2, progressbar=False)
    a, b = flat_parameters(post), flat_parameters(long)
    worst_dev, worst_ratio, rows = 0.0, 0.0, []
    for name in a:
        x, y = a[name], b[name]
        mcse = np.hypot(x.std() / np.sqrt(float(ess(x, method="bulk"))),
                        y.std() / np.sqrt(float(ess(y, method="bulk"))))
        dev = abs(x.mean() - y.mean()) / mcse
        ratio = x.std() / y.std()
        worst_dev, worst_ratio = max(worst_dev, dev), max(worst_ratio, abs(ratio - 1))
        rows.append(f"{name} {x.mean():.3f}/{y.mean():.3f} ({dev:.1f} MCSE, sd ratio {ratio:.3f})")
    ok = worst_dev < 4 and worst_ratio < 0.1
    return (f"    vs long run (4 x 5000, seed 2, long-run divergences {long.divergences}): max |mean difference| "
            f"{worst_dev:.2f} MCSE, max |sd ratio - 1| {worst_ratio:.3f}: {'agree' if ok else 'DISAGREE'}\n      "
            + "\n      ".join(rows))


def main(cases, long=LONG, out="glmm_default_sampling.txt"):
    lines = []
    for key in cases:
        model = blm.GLMM(REF[key]["formula"], blm.datasets.load(key), family=FAMILY[key])
        t0 = time.perf_counter()
        post = model.sample(random_seed=1, progressbar=False)
        seconds = time.perf_counter() - t0
        max_rhat, min_ess = diagnostics(post)
        fe = post.fixef()
        lines.append(f"{key:12s} divergences {post.divergences:4d}  max R-hat {max_rhat:.4f}  min bulk ESS "
                     f"{min_ess:7.0f}  {seconds:6.0f} s (compile included)")
        lines.append("    posterior means: " + ", ".join(f"{n} {m:.3f}" for n, m in fe["mean"].items()))
        lines.append("    sds: " + ", ".join(f"{r.group} {r.mean:.3f}" for r in post.varcorr().itertuples()))
        print(lines[-3], flush=True)
        if key in long:
            lines.append(compare_with_long_run(model, post))
            print(lines[-1], flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="*", default=list(FAMILY))
    parser.add_argument("--long", nargs="*", default=list(LONG), help="cases compared with a long run")
    parser.add_argument("--out", default="glmm_default_sampling.txt", help="file name in validation/out")
    args = parser.parse_args()
    main(args.cases, tuple(args.long), args.out)
