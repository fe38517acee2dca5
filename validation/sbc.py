"""Simulation-based calibration (Talts et al. 2018) of the Bayesian back end.

For each replication: draw parameters from the prior, simulate a response on a fixed
design, sample the posterior with the same priors, and record the rank of each true
value among ``L`` thinned posterior draws. If the sampler is right, every rank is uniform
on 0..L. Each parameter's rank histogram is tested for uniformity (chi-square over
``bins`` bins) and the p-values are compared with 1% after a Bonferroni correction for
the number of parameters.

Models (both on the sleepstudy layout, 18 subjects x 10 days, ``Days`` centered):
- ``intercept``: ``y ~ Days + (1 | Subject)``
- ``slope``: ``y ~ Days + (Days | Subject)`` (correlated intercept and slope, LKJ prior)

Run: ``python validation/sbc.py --reps 200 --model slope --parametrization marginal``;
writes ``validation/out/sbc_<model>_<parametrization>.png`` (rank histograms) and prints a
pass/fail table.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import bayeslmm as blm
from bayeslmm.priors import LKJ, Exponential, Gamma, Normal
from bayeslmm.scale.simulate import simulate_response, with_response

OUT = Path(__file__).resolve().parent / "out"

#: explicit priors (SBC needs the same prior for simulation and fit; data-scaled defaults
#: would move with each simulated data set)
PRIORS = {
    "Intercept": Normal(mu=0.0, sigma=2.0),
    "b": Normal(mu=0.0, sigma=1.0),
    "sd": Gamma(alpha=2.0, beta=2.0),
    "cor": LKJ(eta=2.0),
    "sigma": Exponential(lam=1.0),
}
MODELS = {"intercept": "y ~ Days + (1 | Subject)", "slope": "y ~ Days + (Days | Subject)"}


def template_data() -> pd.DataFrame:
    data = blm.datasets.load("sleepstudy")
    return pd.DataFrame({"y": data["Reaction"].to_numpy() / 50.0,
                         "Days": data["Days"].to_numpy() - 4.5, "Subject": data["Subject"]})


def draw_prior(prior, rng: np.random.Generator, size=None):
    """One draw from a bayeslmm prior (the classes used in PRIORS)."""
    if isinstance(prior, Normal):
        return rng.normal(prior.mu, prior.sigma, size)
    if isinstance(prior, Gamma):
        return rng.gamma(prior.alpha, 1.0 / prior.beta, size)
    if isinstance(prior, Exponential):
        return rng.exponential(1.0 / prior.lam, size)
    raise TypeError(f"no sampler for {prior}")


def draw_lkj(eta: float, dim: int, rng: np.random.Generator) -> np.ndarray:
    """A correlation matrix from LKJ(eta) (onion method, Lewandowski et al. 2009)."""
    if dim == 1:
        return np.ones((1, 1))
    beta = eta + (dim - 2) / 2.0
    r12 = 2.0 * rng.beta(beta, beta) - 1.0
    R = np.array([[1.0, r12], [r12, 1.0]])
    for k in range(2, dim):
        beta -= 0.5
        y = rng.beta(k / 2.0, beta)
        w = rng.standard_normal(k)
        w /= np.linalg.norm(w)
        z = np.sqrt(y) * np.linalg.cholesky(R) @ w
        R = np.block([[R, z[:, None]], [z[None, :], np.ones((1, 1))]])
    return R


@dataclass
class Truth:
    values: dict[str, float]
    beta: np.ndarray
    covariance: np.ndarray
    sigma: float


def draw_truth(design, rng: np.random.Generator) -> Truth:
    """Parameters from PRIORS; the intercept prior is on the centered intercept."""
    names = list(design.fixed_names)
    beta = np.empty(len(names))
    for j, name in enumerate(names):
        beta[j] = draw_prior(PRIORS["b"], rng) if name != "(Intercept)" else 0.0
    centered_intercept = draw_prior(PRIORS["Intercept"], rng)
    means = design.X.mean(axis=0)
    others = [j for j, name in enumerate(names) if name != "(Intercept)"]
    beta[names.index("(Intercept)")] = centered_intercept - means[others] @ beta[others]
    block = design.blocks[0]
    sds = draw_prior(PRIORS["sd"], rng, size=block.n_terms)
    corr = draw_lkj(PRIORS["cor"].eta, block.n_terms, rng)
    cov = corr * np.outer(sds, sds)
    sigma = float(draw_prior(PRIORS["sigma"], rng))
    values = {f"beta[{name}]": beta[j] for j, name in enumerate(names)}
    values.update({f"sd[{term}]": sds[t] for t, term in enumerate(block.terms)})
    for i in range(block.n_terms):
        for j in range(i + 1, block.n_terms):
            values[f"cor[{block.terms[i]}, {block.terms[j]}]"] = corr[i, j]
    values["sigma"] = sigma
    return Truth(values, beta, cov, sigma)


def posterior_values(post, design) -> dict[str, np.ndarray]:
    """Draws of the same named quantities from a posterior result."""
    out = {}
    beta = post.fixef_draws()
    for j, name in enumerate(design.fixed_names):
        out[f"beta[{name}]"] = beta[:, j]
    cov = post.cov_draws()[0]
    sds = np.sqrt(np.einsum("sii->si", cov))
    terms = design.blocks[0].terms
    for t, term in enumerate(terms):
        out[f"sd[{term}]"] = sds[:, t]
    for i in range(len(terms)):
        for j in range(i + 1, len(terms)):
            out[f"cor[{terms[i]}, {terms[j]}]"] = cov[:, i, j] / (sds[:, i] * sds[:, j])
    out["sigma"] = post.sigma_draws()
    return out


class FullModelSampler:
    """The full (non-centered) PyMC model compiled once by nutpie, re-run on each
    simulated response through its ``y_observed`` data container."""

    def __init__(self, formula: str, design, prior_set):
        import nutpie

        from bayeslmm.sampling.bayes import build_model

        self.formula, self.design, self.prior_set = formula, design, prior_set
        self.compiled = nutpie.compile_pymc_model(build_model(design, prior_set))

    def sample(self, y, seed, chains, draws, tune):
        import nutpie

        from bayeslmm.results.posterior import PosteriorResult, to_inference_data

        raw = nutpie.sample(self.compiled.with_data(y_observed=y), draws=draws, tune=tune, chains=chains,
                            seed=seed, progress_bar=False, target_accept=0.9, save_warmup=False)
        design = blm.LMM(self.formula, with_response(self.design, y)).design
        idata = to_inference_data(design, raw, self.prior_set, sampler="nutpie", parametrization="full",
                                  loglik=False)
        return PosteriorResult(design=design, idata=idata, prior_set=self.prior_set, check=False)


def run_sbc(model: str, reps: int, parametrization: str = "marginal", n_ranks: int = 99,
            seed: int = 20181022, chains: int = 2, draws: int = 500, tune: int = 500) -> pd.DataFrame:
    """Ranks of the true values among ``n_ranks`` thinned posterior draws, one row per
    replication and one column per parameter (values 0..n_ranks)."""
    rng = np.random.default_rng(seed)
    base = template_data()
    design = blm.LMM(MODELS[model], base).design
    full = None
    if parametrization == "full":
        full = FullModelSampler(MODELS[model], design, blm.LMM(MODELS[model], base, priors=PRIORS).resolved_priors())
    rows = []
    for rep in range(reps):
        truth = draw_truth(design, rng)
        y, _ = simulate_response(design, truth.beta, [truth.covariance], truth.sigma, rng)
        run_seed = int(rng.integers(2**31))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if full is not None:
                post = full.sample(y, run_seed, chains, draws, tune)
            else:
                post = blm.LMM(MODELS[model], with_response(design, y), priors=PRIORS).sample(
                    draws=draws, tune=tune, chains=chains, random_seed=run_seed, progressbar=False,
                    parametrization=parametrization)
        draws_by_name = posterior_values(post, design)
        # thin to n_ranks roughly independent draws
        total = len(draws_by_name["sigma"])
        keep = np.linspace(0, total - 1, n_ranks).astype(int)
        rows.append({name: int(np.sum(draws_by_name[name][keep] < value))
                     for name, value in truth.values.items()})
    return pd.DataFrame(rows)


def uniformity_table(ranks: pd.DataFrame, n_ranks: int = 99, bins: int = 10, alpha: float = 0.01) -> pd.DataFrame:
    """Chi-square test of uniform ranks per parameter, Bonferroni-corrected at ``alpha``."""
    edges = np.linspace(-0.5, n_ranks + 0.5, bins + 1)
    rows = []
    for name in ranks.columns:
        counts, _ = np.histogram(ranks[name], bins=edges)
        expected = len(ranks) * np.diff(edges) / (n_ranks + 1)
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        p_value = float(stats.chi2.sf(chi2, df=bins - 1))
        rows.append({"parameter": name, "chi2": chi2, "p_value": p_value,
                     "pass": p_value >= alpha / len(ranks.columns)})
    return pd.DataFrame(rows).set_index("parameter")


def plot_ranks(ranks: pd.DataFrame, title: str, path: Path, n_ranks: int = 99, bins: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ranks.columns
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3), squeeze=False)
    expected = len(ranks) / bins
    band = stats.binom.ppf([0.005, 0.995], len(ranks), 1.0 / bins)
    for ax, name in zip(axes[0], cols):
        ax.hist(ranks[name], bins=np.linspace(-0.5, n_ranks + 0.5, bins + 1), color="#4c72b0", edgecolor="white")
        ax.axhspan(band[0], band[1], color="grey", alpha=0.2, label="99% band if uniform")
        ax.axhline(expected, color="black", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("rank of true value")
    axes[0][0].set_ylabel("replications")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description="Simulation-based calibration of bayeslmm's sampler")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--model", choices=sorted(MODELS), nargs="+", default=sorted(MODELS))
    parser.add_argument("--parametrization", choices=["marginal", "full"], nargs="+", default=["marginal", "full"])
    args = parser.parse_args()
    verdicts = []
    for model in args.model:
        for parametrization in args.parametrization:
            ranks = run_sbc(model, args.reps, parametrization)
            OUT.mkdir(parents=True, exist_ok=True)
            ranks.to_csv(OUT / f"sbc_{model}_{parametrization}_ranks.csv", index=False)
            table = uniformity_table(ranks)
            plot_ranks(ranks, f"SBC: {MODELS[model]} ({parametrization}, {args.reps} replications)",
                       OUT / f"sbc_{model}_{parametrization}.png")
            print(f"\n{model} / {parametrization} ({args.reps} replications)")
            print(table.to_string(float_format=lambda v: f"{v:.4f}"))
            verdicts.append((model, parametrization, bool(table["pass"].all())))
    print("\nmodel      parametrization  result")
    for model, parametrization, ok in verdicts:
        print(f"{model:10s} {parametrization:16s} {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
