"""Divergences of kb07's maximal model (two 8 x 8 correlated blocks, the partially collapsed
sampler LMM.sample picks) at target_accept 0.9 and 0.95: the evidence behind
``bayeslmm.model.default_target_accept``.

Run: ``PYTHONPATH=. python validation/kb07_max_target_accept.py TARGET_ACCEPT SEED``; appends
one line to ``validation/out/kb07_max_target_accept.txt`` (4 chains x 1000 draws after 1000
tuning steps, the package's kb07 data).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import bayeslmm as blm

OUT = Path(__file__).resolve().parent / "out" / "kb07_max_target_accept.txt"
TERMS = "1 + S + P + C + SP + SC + PC + SPC"
FORMULA = f"RTtrunc ~ {TERMS} + ({TERMS} | subj) + ({TERMS} | item)"


def main(target_accept: float, seed: int) -> str:
    warnings.simplefilter("ignore", blm.SamplingWarning)
    start = time.perf_counter()
    post = blm.LMM(FORMULA, blm.datasets.load("kb07")).sample(random_seed=seed, progressbar=False,
                                                                target_accept=target_accept)
    seconds = time.perf_counter() - start
    diag = post.diagnostics()
    cov = diag[diag.index.str.startswith(("sd_", "cor_", "sigma"))]
    attrs = post.idata.posterior.attrs
    line = (f"target_accept {target_accept} seed {seed}: divergences "
            f"{int(post.idata.sample_stats['diverging'].sum())}, {seconds:.0f} s wall (load "
            f"{os.getloadavg()[0]:.1f}), integrated [{attrs.get('integrated')}], max R-hat of the covariance "
            f"parameters {cov['r_hat'].max():.4f}, min bulk ESS {cov['ess_bulk'].min():.0f}")
    with OUT.open("a") as fh:
        fh.write(f"[{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}] {line}\n")
    return line


if __name__ == "__main__":
    print(main(float(sys.argv[1]), int(sys.argv[2])))
