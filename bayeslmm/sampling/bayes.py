"""Stage 3c: the Bayesian back end (full parametrization): a PyMC model sampled with NUTS.

The model, for a design with fixed columns X and bars k = 1..K::

    (every parameter in the response's units is sampled divided by s = sd(y), with its
    prior rescaled to match, and multiplied back; see build_model)
    Intercept_c ~ prior["Intercept"]          (intercept of the mean-centered predictors)
    b_j         ~ prior["b_<term>"]           (every other fixed effect)
    sd_k, R_k   ~ prior["sd_..."], LKJ(eta)   (LKJCholeskyCov for a correlated bar)
    z_kj        ~ N(0, I)                     (non-centered)
    b_kj        = L_k z_kj,   L_k L_k' = Sigma_k = diag(sd_k) R_k diag(sd_k)
    y_i         ~ N(Intercept_c + Xc_i b + sum_k x_ki' b_k[g_k(i)], sigma)

The posterior is returned in the layout of :mod:`bayeslmm.results.posterior` (``beta``, ``sigma``,
``sd_L``, ``cor_L``, ``r_L``; ``log_likelihood``), whatever the sampler.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import BayesLMMError
from ..frontend.design import Design
from ..priors import PriorSet

#: samplers accepted by ``LMM.sample``
SAMPLERS = ("nutpie", "pymc", "numpyro", "blackjax")


def bar_labels(design: Design) -> list[str]:
    """Posterior labels of the bars: the group name; a repeated group gets ``.1``, ``.2``..."""
    seen: dict[str, int] = {}
    labels = []
    for block in design.blocks:
        count = seen.get(block.group, 0)
        seen[block.group] = count + 1
        labels.append(block.group if count == 0 else f"{block.group}.{count}")
    return labels


def correlation_pairs(terms: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """Upper-triangle pairs (i, j, "term_i, term_j") in row order."""
    return [(i, j, f"{terms[i]}, {terms[j]}") for i in range(len(terms)) for j in range(i + 1, len(terms))]


def model_coords(design: Design) -> dict[str, list[str]]:
    coords: dict[str, list[str]] = {"term": list(design.fixed_names), "obs": list(range(design.nobs))}
    for label, block in zip(bar_labels(design), design.blocks):
        coords[f"{label}__level"] = list(block.levels)
        coords[f"{label}__term"] = list(block.terms)
        if block.correlated and block.n_terms > 1:
            coords[f"{label}__pair"] = [name for _, _, name in correlation_pairs(block.terms)]
    return coords


def response_scale(design: Design) -> float:
    """The unit the full model samples in: the sd of the response (1 if it has none)."""
    scale = float(np.std(design.y))
    return scale if np.isfinite(scale) and scale > 0 else 1.0


def sufficient_pays(design: Design) -> bool:
    """True when the cross-product form of the likelihood costs fewer flops per gradient
    than the pointwise one (always for nested designs with many rows per level; not for
    large crossed designs, whose between-bar cross-products are dense)."""
    sizes = [block.n_levels * block.n_terms for block in design.blocks]
    p = design.X.shape[1]
    cost = sum(block.n_levels * block.n_terms ** 2 for block in design.blocks) + p * sum(sizes) + p * p
    cost += sum(sizes[k] * sizes[m] for k in range(len(sizes)) for m in range(k + 1, len(sizes)))
    return cost < design.nobs * (p + sum(block.n_terms for block in design.blocks))


def build_model(design: Design, prior_set: PriorSet, likelihood: str = "pointwise"):
    """The PyMC model of ``design`` under ``prior_set`` (full, non-centered parametrization).

    Parameters
    ----------
    likelihood : {"pointwise", "sufficient", "auto"}
        ``"pointwise"``: an observed ``y`` (needed for prior predictive draws, and read
        from the ``y_observed`` data container). ``"sufficient"``: the same Gaussian
        log-likelihood written with cross-products precomputed once (see
        :func:`_sufficient_loglik`), as a ``Potential``: its cost per gradient no longer
        grows with the number of observations. ``"auto"`` (what ``LMM.sample`` uses):
        the sufficient form where :func:`sufficient_pays`. The pointwise log-likelihood of
        the posterior is computed after sampling either way.
    """
    if likelihood not in ("pointwise", "sufficient", "auto"):
        raise BayesLMMError(f"likelihood must be 'pointwise', 'sufficient' or 'auto', not {likelihood!r}")
    if likelihood == "auto":
        likelihood = "sufficient" if sufficient_pays(design) else "pointwise"
    import pymc as pm
    import pytensor.tensor as pt

    resolve_pytensor_blas()

    names = list(design.fixed_names)
    has_intercept = "(Intercept)" in names
    others = [j for j, name in enumerate(names) if name != "(Intercept)"]
    means = design.X[:, others].mean(axis=0)
    Xc = design.X[:, others] - means
    # Every free parameter with the response's units is sampled divided by s (its prior
    # rescaled to match) and multiplied back: the sampler sees unit-scale geometry whether
    # y is in nanometres or in dollars (y * 1e-9 ran to R-hat 3 unscaled). The likelihood,
    # the priors' meaning and every reported variable stay on the user's scale.
    s = response_scale(design)

    def on_user_scale(prior, name):
        return s * prior.scaled(1.0 / s).to_pymc(name)

    with pm.Model(coords=model_coords(design)) as model:
        slopes = [on_user_scale(prior_set.fixed[names[j]], f"_b_{names[j]}") for j in others]
        b_rest = pt.stack(slopes) if slopes else pt.zeros(0)
        mu = pt.dot(pt.as_tensor_variable(Xc), b_rest) if slopes else pt.zeros(design.nobs)
        beta_parts = {j: slope for j, slope in zip(others, slopes)}
        if has_intercept:
            intercept_c = on_user_scale(prior_set.intercept, "_Intercept_c")
            mu = mu + intercept_c
            beta_parts[names.index("(Intercept)")] = intercept_c - (pt.dot(means, b_rest) if slopes else 0.0)
        pm.Deterministic("beta", pt.stack([beta_parts[j] for j in range(len(names))]), dims="term")
        effects_per_bar = []

        for k, (label, block) in enumerate(zip(bar_labels(design), design.blocks)):
            q = block.n_terms
            sd_priors = [prior_set.sd[(k, term)].scaled(1.0 / s) for term in block.terms]
            if block.correlated and q > 1:
                chol, sd = _correlated_factor(label, q, sd_priors, prior_set.cor[k].eta)
                corr = _correlation_from_chol(chol, sd, q)
                pm.Deterministic(f"cor_{label}", pt.stack([corr[i, j] for i, j, _ in correlation_pairs(block.terms)]),
                                 dims=f"{label}__pair")
                chol, sd = s * chol, s * sd
            else:
                sd = s * pt.stack([prior.to_pymc(f"_sd_{label}__{term}")
                                   for prior, term in zip(sd_priors, block.terms)])
                chol = None
            pm.Deterministic(f"sd_{label}", sd, dims=f"{label}__term")
            z = pm.Normal(f"_z_{label}", 0.0, 1.0, dims=(f"{label}__level", f"{label}__term"))
            effects = pt.dot(z, chol.T) if chol is not None else z * sd
            pm.Deterministic(f"r_{label}", effects, dims=(f"{label}__level", f"{label}__term"))
            effects_per_bar.append(effects)
            if likelihood == "pointwise":
                mu = mu + pt.sum(pt.as_tensor_variable(block.X) * effects[block.codes], axis=1)

        sigma = pm.Deterministic("sigma", on_user_scale(prior_set.sigma, "_sigma"))
        if likelihood == "pointwise":
            # a data container, so a compiled model can be reused on new responses (SBC)
            y_observed = pm.Data("y_observed", design.y, dims="obs")
            pm.Normal("y", mu=mu, sigma=sigma, observed=y_observed, dims="obs")
        else:
            fixed = ([intercept_c] if has_intercept else []) + slopes
            pm.Potential("_loglik", _sufficient_loglik(design, Xc, has_intercept, fixed, effects_per_bar, sigma))
    return model


def resolve_pytensor_blas() -> None:
    """Resolve PyTensor's BLAS flags once, without its "could not link to a BLAS" notice.

    PyTensor searches for a BLAS the first time it compiles a C function and, on a pip
    install without one, warns. bayeslmm's samplers never run that code: nutpie compiles the
    log density with numba and the marginal sampler runs its own numba kernels; the C
    backend only compiles small helpers (initial points, prior draws). So the notice says
    nothing about the user's model. Only this message is silenced, only during the search;
    a BLAS that exists is still found and used, and flags the user set are left alone.
    """
    import pytensor

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS installation",
                                category=UserWarning)
        pytensor.config.blas__ldflags  # noqa: B018 (reading it runs and caches the search)


def _sufficient_loglik(design: Design, Xc: np.ndarray, has_intercept: bool, fixed: list, effects: list, sigma):
    """Gaussian log-likelihood from cross-products computed once.

    With r = y - F f - sum_k Z_k u_k (F: the intercept column and the centered
    predictors, f their coefficients, u_k the effects of bar k stacked by level),
    r'r = y'y - 2 f'F'y + f'F'F f - 2 sum_k u_k'Z_k'y + 2 sum_k f'F'Z_k u_k
          + sum_k u_k'Z_k'Z_k u_k + 2 sum_{k<l} u_k'Z_k'Z_l u_l.
    Within a bar each row belongs to one level, so Z_k'Z_k is block diagonal (one q x q
    block per level): J q^2 terms instead of n q. y is centered first (the intercept
    absorbs the shift) so that the expanded sum does not lose digits.
    """
    import pytensor.tensor as pt

    n = design.nobs
    F = np.column_stack([np.ones(n), Xc]) if has_intercept else Xc
    shift = float(design.y.mean()) if has_intercept else 0.0
    y = design.y - shift
    rss = float(y @ y)
    f = None
    if fixed:
        f = pt.stack([fixed[0] - shift] + fixed[1:]) if has_intercept else pt.stack(fixed)
        rss = rss - 2.0 * pt.dot(f, F.T @ y) + pt.dot(f, pt.dot(F.T @ F, f))
    for block, b in zip(design.blocks, effects):
        Zy = np.zeros((block.n_levels, block.n_terms))
        np.add.at(Zy, block.codes, block.X * y[:, None])
        ZZ = np.zeros((block.n_levels, block.n_terms, block.n_terms))
        np.add.at(ZZ, block.codes, block.X[:, :, None] * block.X[:, None, :])
        rss = rss - 2.0 * pt.sum(b * Zy) + pt.sum(b[:, :, None] * ZZ * b[:, None, :])
        if f is not None:
            FZ = np.zeros((block.n_levels, block.n_terms, F.shape[1]))  # (Z_k'F) by level and term
            np.add.at(FZ, block.codes, block.X[:, :, None] * F[:, None, :])
            rss = rss + 2.0 * pt.sum(pt.sum(b[:, :, None] * FZ, axis=(0, 1)) * f)
    for k in range(len(effects)):
        for m in range(k + 1, len(effects)):
            bk, bm = design.blocks[k], design.blocks[m]
            cross = np.zeros((bk.n_levels, bk.n_terms, bm.n_levels, bm.n_terms))  # Z_k'Z_m
            for t in range(bk.n_terms):
                for s in range(bm.n_terms):
                    np.add.at(cross[:, t, :, s], (bk.codes, bm.codes), bk.X[:, t] * bm.X[:, s])
            flat = cross.reshape(bk.n_levels * bk.n_terms, bm.n_levels * bm.n_terms)
            rss = rss + 2.0 * pt.dot(effects[k].ravel(), pt.dot(flat, effects[m].ravel()))
    return -n * pt.log(sigma) - 0.5 * n * np.log(2.0 * np.pi) - 0.5 * rss / sigma ** 2


def _correlated_factor(label: str, q: int, sd_priors, eta: float):
    """Cholesky factor of the covariance of a correlated bar, and its sds.

    When every term's sd prior is of one class, one ``LKJCholeskyCov`` with a vector
    ``sd_dist`` (PyMC's path). Otherwise the sds are separate variables with their own
    priors and the correlation's Cholesky factor is taken from an auxiliary
    ``LKJCholeskyCov`` with unit HalfNormal scales: under that prior the correlation is
    LKJ(eta) and independent of the auxiliary scales, so dividing each row of its factor
    by its scale gives an LKJ(eta) correlation factor; the auxiliary scales meet no data
    and are sampled from their prior. (PyMC's ``LKJCorr`` would do, but its log density
    runs a positive-definiteness check in numba's object mode: 150 s instead of 5 s for
    sleepstudy.)
    """
    import pymc as pm
    import pytensor.tensor as pt

    kinds = {type(prior) for prior in sd_priors}
    if len(kinds) == 1:
        kwargs = {name: np.array([prior.kwargs()[name] for prior in sd_priors], dtype=float)
                  for name in sd_priors[0].kwargs()}
        dist = getattr(pm, sd_priors[0].pymc_name).dist(**kwargs, shape=q)
        chol, _, sd = pm.LKJCholeskyCov(f"_chol_{label}", n=q, eta=float(eta), sd_dist=dist,
                                        compute_corr=True, store_in_trace=False)
        return chol, sd
    aux_chol, _, aux_sd = pm.LKJCholeskyCov(f"_corrchol_{label}", n=q, eta=float(eta),
                                            sd_dist=pm.HalfNormal.dist(sigma=1.0, shape=q),
                                            compute_corr=True, store_in_trace=False)
    corr_chol = aux_chol / aux_sd[:, None]
    sd = pt.stack([prior.to_pymc(f"_sd_{label}__{t}") for t, prior in enumerate(sd_priors)])
    return sd[:, None] * corr_chol, sd


def _correlation_from_chol(chol, sd, q: int):
    cov = chol @ chol.T
    return cov / (sd[:, None] * sd[None, :])


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


#: Newest minor versions of the JAX samplers that PyMC's glue works with (None: no limit).
#: PyMC 6.4 hands its ``progress_bar`` option to blackjax's window adaptation, which passes
#: it on to the NUTS kernel; blackjax >= 1.4 rejects it with a TypeError (measured with
#: blackjax 1.7.1), and blackjax 1.3 needs fastprogress's web stack, so blackjax is not in
#: the ``jax`` extra. numpyro 0.22 samples (tests/test_bayes.py).
JAX_SAMPLER_MAX_VERSION = {"blackjax": (1, 3), "numpyro": None}


def check_jax_sampler_version(sampler: str, version: str) -> None:
    """Raise a BayesLMMError for a JAX sampler that PyMC's glue cannot drive."""
    newest = JAX_SAMPLER_MAX_VERSION[sampler]
    if newest is None:
        return
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    if tuple(parts + [0] * (2 - len(parts))) > newest:
        raise BayesLMMError(f"sampler={sampler!r} does not work with {sampler} {version}: PyMC passes its "
                            f"progress_bar option on to {sampler}'s NUTS kernel, which rejects it (a PyMC bug, "
                            f"{sampler} >= 1.4). Use sampler='numpyro' (pip install 'bayeslmm[jax]') or the "
                            "default sampler='nutpie'")


#: nutpie's backend for the full model. Measured (benchmarks/bench_sampling.py, 2 busy
#: cores, 4 x 1000 draws, sleep_rs): numba compiles in ~9 s with a warm PyTensor cache and
#: then samples in ~8 s; JAX compiles in ~2 s but every gradient crosses into Python, so
#: sampling takes ~55 s. numba is also a core dependency; ``backend="jax"`` remains a
#: keyword of ``LMM.sample`` for those who have JAX.
DEFAULT_NUTPIE_BACKEND = "numba"


def default_nutpie_backend() -> str:
    return DEFAULT_NUTPIE_BACKEND


def cholesky_initial_points(model) -> dict[str, np.ndarray]:
    """Identity starting values (before jitter) of the ``LKJCholeskyCov`` variables.

    PyMC's own starting value of an ``LKJCholeskyCov`` is ``zeros_like`` of a draw, so the
    initial-point function evaluates a prior draw of the sds; scipy's Student-t sampler then
    failed intermittently under nutpie's threads ("cannot set WRITEABLE flag"). A given
    value skips that draw.
    """
    out = {}
    for rv in model.free_RVs:
        for prefix in ("_chol_", "_corrchol_"):
            if rv.name.startswith(prefix):
                q = len(model.coords[f"{rv.name[len(prefix):]}__term"])
                packed = np.zeros(q * (q + 1) // 2)
                packed[np.cumsum(np.arange(1, q + 1)) - 1] = 1.0  # row-major lower triangle
                out[rv.name] = packed
    return out


def run_sampler(model, sampler: str, draws: int, tune: int, chains: int, random_seed, target_accept: float,
                progressbar: bool, **kwargs):
    """Sample ``model`` with the chosen NUTS implementation; returns its ``xarray.DataTree``.

    ``backend`` ("numba" or "jax", nutpie only) may be among ``kwargs``; the rest go to
    ``nutpie.sample`` or ``pm.sample``.
    """
    import pymc as pm

    if sampler not in SAMPLERS:
        raise BayesLMMError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    seed = None if random_seed is None else int(random_seed)
    backend = kwargs.pop("backend", None)
    if backend is not None and sampler != "nutpie":
        raise BayesLMMError(f"backend={backend!r} is an option of sampler='nutpie' only")
    if sampler == "nutpie":
        import nutpie

        backend = backend or default_nutpie_backend()
        if backend not in ("numba", "jax"):
            raise BayesLMMError(f"nutpie backend must be 'numba' or 'jax', not {backend!r}")
        if backend == "jax" and not jax_available():
            raise BayesLMMError("backend='jax' needs JAX: pip install 'bayeslmm[jax]'")
        compiled = nutpie.compile_pymc_model(model, backend=backend,
                                             gradient_backend="jax" if backend == "jax" else "pytensor",
                                             initial_points=cholesky_initial_points(model))
        return nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed,
                             progress_bar=progressbar, target_accept=target_accept, save_warmup=False,
                             **kwargs)
    if sampler in ("numpyro", "blackjax"):
        if not jax_available():
            raise BayesLMMError(f"sampler={sampler!r} needs JAX: pip install 'bayeslmm[jax]'")
        try:
            module = __import__(sampler)
        except ImportError as exc:
            raise BayesLMMError(f"sampler={sampler!r} needs the {sampler} package: "
                                f"pip install 'bayeslmm[jax]' (or pip install {sampler})") from exc
        check_jax_sampler_version(sampler, getattr(module, "__version__", "0"))
    if sampler == "pymc":
        # PyMC's default init jitters every chain's start by U(-1, 1) on the unconstrained
        # scale; on exam_rs one chain of two then stuck with ~500 divergences (R-hat 2.2).
        # Starting from the support point with a diagonal mass-matrix adaptation did not.
        kwargs.setdefault("init", "adapt_diag")
    with model:
        return pm.sample(draws=draws, tune=tune, chains=chains, random_seed=seed, target_accept=target_accept,
                         progressbar=progressbar, nuts_sampler=sampler, compute_convergence_checks=False,
                         **kwargs)
