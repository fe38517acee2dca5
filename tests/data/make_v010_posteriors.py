"""Write the bayeslmm 0.1.0 posterior files that tests/test_posterior_files.py loads.

Run with bayeslmm 0.1.0 installed on Python 3.11 (PyMC 5.28.5, ArviZ 0.23.4), e.g.
``git worktree add /tmp/v010 <0.1.0 commit> && python3.11 -m venv /tmp/v311 &&
/tmp/v311/bin/pip install /tmp/v010 && /tmp/v311/bin/python tests/data/make_v010_posteriors.py``.
Next to each ``v0.1.0_<name>.nc`` it writes ``v0.1.0_<name>.json``: what 0.1.0's own verbs
returned for that file, so the test checks numbers, not only that loading works.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayeslmm as blm

HERE = Path(__file__).resolve().parent


def awkward_frame(seed: int = 1, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = pd.Categorical(rng.choice(list("OZYX"), n), categories=list("OZYX"))
    data = pd.DataFrame({
        "x": rng.normal(size=n), "g": g,
        "lev": pd.Categorical(rng.choice(["lo", "mid", "hi"], n), categories=["mid", "lo", "hi"]),
        "site": rng.choice(["NA", "north side", "Zürich"], n),
    })
    data["y"] = 1 + 0.5 * data["x"] + rng.normal(size=4)[g.codes] + rng.normal(size=n)
    return data


CASES = {
    "dyestuff": ("Yield ~ 1 + (1 | Batch)", blm.datasets.load("dyestuff"), None),
    "awkward": ("y ~ x + lev + (x | g) + (1 | site)", awkward_frame(), {"b_x": blm.Normal(mu=0.0, sigma=2.0)}),
}

for name, (formula, data, priors) in CASES.items():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = blm.LMM(formula, data, priors=priors).sample(draws=50, tune=100, chains=2, random_seed=1,
                                                           progressbar=False)
    post.to_netcdf(HERE / f"v0.1.0_{name}.nc")
    expected = {"version": blm.__version__, "formula": formula,
                "fixef_mean": post.fixef()["mean"].to_dict(),
                "varcorr_sdcor": post.varcorr()["sdcor"].tolist(),
                "ranef_first": {g: f.iloc[0].to_dict() for g, f in post.ranef().items()},
                "priors": post.prior_set.describe(post.design)}
    (HERE / f"v0.1.0_{name}.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(name, (HERE / f"v0.1.0_{name}.nc").stat().st_size, "bytes")
