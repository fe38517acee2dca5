"""The power-analysis notebook (06_power_kb07.ipynb): cells, and a builder for this one notebook.

``build_notebooks.py`` adds ``NAME`` and ``CELLS`` to its table, so the tests run it like the
others (``BAYESLMM_FAST=1``: a few simulations). Run ``python notebooks/build_power_notebook.py
--execute`` after editing: it executes this notebook at full settings and saves it with its
outputs (the other notebooks are left alone).
"""

from __future__ import annotations

NAME = "06_power_kb07.ipynb"

CELLS = [
    ("md", """# How many subjects? Power of a subjects-by-items experiment

Before running an experiment, a power analysis asks: *if the effect is as large as I think,
how often would my design detect it?* For mixed models there is no formula that answers it
for every design; R users simulate with **simr**: simulate data from a model at the effect
sizes and variance components they expect, refit, test, repeat (`powerSim`), and extend the
design to more subjects or items (`extend`, `powerCurve`). `blm.power` and `blm.power_curve`
do the same, and spread the simulations over local processes or a Dask cluster.

The design here is shaped like kb07 (Kronmüller & Barr 2007, a standard example of lme4 and
MixedModels.jl): 56 subjects each see 32 items, and three two-level within factors (speaker
`S`, precedent `P`, cognitive load `C`, coded -1/+1) are counterbalanced over items with a
Latin square, so every subject sees every condition and every item appears in every condition."""),
    ("code", """import os, warnings
import numpy as np, pandas as pd
import matplotlib
import bayeslmm as blm

# BAYESLMM_FAST=1 (the test suite) runs a few simulations only; unset it for real analyses
FAST = os.environ.get("BAYESLMM_FAST") == "1"
NSIM = 12 if FAST else 60
RUN = dict(random_seed=2024, n_jobs=2, progressbar=False)"""),
    ("code", """def kb07_like(n_subj=56, n_item=32):
    \"\"\"Every subject sees every item once; the 8 conditions rotate over items (Latin square).\"\"\"
    conditions = [(s, p, c) for s in (-1, 1) for p in (-1, 1) for c in (-1, 1)]
    rows = [(f"S{i + 1:03d}", f"I{j + 1:02d}", *conditions[(i + j) % 8])
            for i in range(n_subj) for j in range(n_item)]
    return pd.DataFrame(rows, columns=["subj", "item", "S", "P", "C"])

design = kb07_like()
design.head()"""),
    ("md", """## The model and the effect sizes

The analysis we plan is `rt ~ S + P + C + (1 + P | subj) + (1 | item)`. `power` needs a
fitted model of that form on the design; like simr's `makeLmer`, we fit it to a pilot response
and then set every parameter we want to simulate at: the fixed effects (`fixef`), each grouping
factor's covariance matrix (`varcorr`) and the residual sd (`sigma`). The numbers are of the
order of kb07's reaction times (ms); the load effect `C` of 25 ms (a 50 ms difference between
the two load conditions) is the one we want to detect."""),
    ("code", """rng = np.random.default_rng(1)
pilot = design.assign(rt=2200 + rng.normal(0, 600, len(design)))
fit = blm.LMM("rt ~ S + P + C + (1 + P | subj) + (1 | item)", pilot).fit()

truth = dict(
    fixef={"(Intercept)": 2200.0, "S": 35.0, "P": -165.0, "C": 25.0},
    varcorr={"subj": [[300.0**2, 0.3 * 300 * 60], [0.3 * 300 * 60, 60.0**2]], "item": 350.0**2},
    sigma=650.0,
)
pd.DataFrame(truth["fixef"], index=["simulated at"])"""),
    ("md", """## Power at 56 subjects

Each simulation draws new subject and item effects and new residuals, refits by REML and tests
`C` (a Wald z test here; `method="lrt"` refits without `C` by ML and uses the likelihood-ratio
test, and `method="satterthwaite"` uses lmerTest's t test where bayeslmm provides it). Failed
fits are counted and left out; singular fits are counted and kept, as simr does."""),
    ("code", """result = blm.power(fit, "C", nsim=NSIM, method="wald", **truth, **RUN)
print(result)
result.runs.head()"""),
    ("md", """## A power curve over the number of subjects

`power_curve` cuts the design to fewer subjects or extends it with new ones that copy the
existing subjects' item-by-condition structure (simr's `extend(along = "subj")`), and runs the
same simulation at every size. All simulations go to the executor at once; pass
`client=dask.distributed.Client(...)` to run them on a Dask cluster instead of local processes
(the seed gives the same result either way)."""),
    ("code", """curve = blm.power_curve(fit, "C", along="subj", sizes=[16, 32, 56, 96], nsim=NSIM, method="wald",
                        **truth, **RUN)
curve.table"""),
    ("code", """curve.plot(target=0.8);"""),
    ("md", """The curve shows how power grows with the number of subjects for a 25 ms effect, and where it
crosses 80%. The intervals are exact binomial (Clopper-Pearson) intervals for the number of
simulations run, and they are wide at this `nsim`: the two estimates at 56 subjects (the single
`power` run and the curve's point, made with different seeds) differ by about that much. For a
decision, run more simulations (`nsim=1000`), in parallel on local processes or on a Dask
cluster with `client=`. Many singular fits at small sizes are a warning too: with few subjects
the by-subject slope variance is often estimated at zero."""),
]

def build(execute: bool = False) -> None:
    """Write this notebook; with ``execute`` run it at full settings first."""
    from notebook_writer import write_notebook

    write_notebook(NAME, CELLS, execute=execute)


if __name__ == "__main__":
    import sys

    build(execute="--execute" in sys.argv[1:])
