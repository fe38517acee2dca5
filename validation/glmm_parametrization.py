"""Per-parameter R-hat and bulk ESS of the GLMM posterior at default settings, for one
reference case and one parametrization (the experiments of
validation/out/glmm_mixing_experiments.txt).

Run: ``PYTHONPATH=.:tests python validation/glmm_parametrization.py grouseticks "[False, False, True]"``
(second argument: the ``centered`` option of ``sample``; third, optional: extra keyword
arguments for ``sample`` / nutpie as a Python dict literal, e.g. ``"{'nest': None,
'random_seed': 2}"``; ``random_seed`` defaults to 1). Both are read with
``ast.literal_eval``: literals only, never code.
"""
import ast
import json
import sys
import time

import numpy as np
from arviz_stats import ess, rhat

import bayeslmm as blm

from conftest import REFERENCE_DIR

REF = json.loads((REFERENCE_DIR / "glmm" / "glmm_reference.json").read_text())
FAMILY = {"cbpp": "binomial", "grouseticks": "poisson", "verbagg": "binomial"}
key = sys.argv[1]
cen = ast.literal_eval(sys.argv[2])
kw = ast.literal_eval(sys.argv[3]) if len(sys.argv) > 3 else {}
m = blm.GLMM(REF[key]["formula"], blm.datasets.load(key), family=FAMILY[key])
t0 = time.perf_counter()
seed = kw.pop("random_seed", 1)
post = m.sample(random_seed=seed, progressbar=False, centered=cen, **kw)
sec = time.perf_counter() - t0
ds = post.idata.posterior.to_dataset()
names = ["beta"] + [v for v in ds.data_vars if v.startswith(("sd_", "_chol_"))]
r = rhat(ds[names])
e = ess(ds[names], method="bulk")
print(key, cen, kw, "seed", seed, "div", post.divergences, f"{sec:.0f}s")
for v in names:
    print(f"  {v:30s} rhat {np.round(np.asarray(r[v]),3)} ess {np.round(np.asarray(e[v]))}")
