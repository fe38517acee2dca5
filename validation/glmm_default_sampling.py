"""The GLMM posterior at default settings (4 chains x 1000 draws after 1000 tuning steps,
target_accept 0.9, nutpie/numba) on the reference cases cbpp, grouseticks and VerbAgg:
divergent transitions, max R-hat and min bulk ESS over the model's parameters (fixed
effects, sds), wall time; and, for cbpp, agreement with a long run of the same model
(4 x 5000 draws): every posterior mean within 4 Monte-Carlo standard errors of the long
run's, every posterior sd within 10 %.

Run: ``PYTHONPATH=. python validation/glmm_default_sampling.py [cases...]``; writes
``validation/out/glmm_default_sampling.txt``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import bayeslmm as blm

OUT = Path(__file__).resolve().parent / "out"
REFERENCE = Path(os.environ.get("BAYESLMM_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
REF = json.loads((REFERENCE / "glmm" / "glmm_reference.json").read_text())
FAMILY = {"cbpp": "binomial", "grouseticks": "poisson", "verbagg": "binomial"}


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


def main(cases):
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
        if key == "cbpp":
            long = model.sample(draws=5000, tune=1000, random_seed=2, progressbar=False)
            a, b = post.fixef_draws(), long.fixef_draws()
            _, ess_b = diagnostics(long)
            mcse = a.std(axis=0) / np.sqrt(min_ess)
            dev = np.abs(a.mean(axis=0) - b.mean(axis=0)) / mcse
            sd_ratio = a.std(axis=0) / b.std(axis=0)
            sa = post.varcorr()["mean"].to_numpy()
            sb = long.varcorr()["mean"].to_numpy()
            ok = bool(np.all(dev < 4) and np.all(np.abs(sd_ratio - 1) < 0.1))
            lines.append(f"    vs long run (4 x 5000): mean differences {np.round(dev, 2).tolist()} MCSEs, "
                         f"sd ratios {np.round(sd_ratio, 3).tolist()}, sd(herd) mean {sa[0]:.4f} vs "
                         f"{sb[0]:.4f}, long-run divergences {long.divergences}: {'agree' if ok else 'DISAGREE'}")
            print(lines[-1], flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "glmm_default_sampling.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or list(FAMILY))
