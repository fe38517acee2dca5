"""The user-facing model: ``LMM(formula, data)`` parses and builds; fitting is a verb.

This is glue, as ``lmer()`` is in lme4: formula -> design -> back end -> result.
"""

from __future__ import annotations

import logging
import numbers
import warnings

import numpy as np
import pandas as pd

from .errors import BayesLMMError, FitError, PerfectFitWarning, PriorError, SamplingWarning, SettingsError
from .frontend.design import Design, build_design
from .frontend.formula import parse_formula

SAMPLERS = ("nutpie", "pymc", "numpyro", "blackjax")
PARAMETRIZATIONS = ("auto", "marginal", "crossed", "marginal_mh", "full")
#: explicit bounds on the sampler's settings (the memory the draws take is checked too)
MAX_DRAWS = 10**7
MAX_CHAINS = 1000
#: refuse draws that would take more than this share of the available memory
MEMORY_SHARE = 0.5
#: residual sd below this share of the response's sd: an (essentially) perfect fit
PERFECT_FIT_RATIO = 1e-6


def _whole(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = type(value).__name__
        hint = f" (did you mean {int(value)}?)" if isinstance(value, float) and float(value).is_integer() else ""
        raise SettingsError(f"{name}={value!r} must be a whole number, not {kind}{hint}")
    if not low <= int(value) <= high:
        raise SettingsError(f"{name}={value!r} must be between {low} and {high:,}")
    return int(value)


def default_target_accept(design, parametrization: str = "full") -> float:
    """The step-size target ``LMM.sample`` uses unless told: 0.9, or 0.95 when a correlated
    bar has more than four terms and the sampler is not the partially collapsed one.

    Hierarchical models need smaller steps than the 0.8 of most samplers. Large correlation
    matrices needed smaller still: kb07's maximal model (two 8 x 8 blocks) gave 132 and 272
    divergent transitions at 0.9 (seeds 2 and 1) and none at 0.95 with the partially collapsed
    sampler's first parametrization (every sampled effect non-centered, low-rank mass
    matrix). With each sampled bar's intercept centered and a diagonal mass matrix it has
    none at 0.9 (seeds 1 and 2, 4 x 1000 draws), so that sampler (``"crossed"``) uses 0.9;
    the others keep 0.95 for such bars, as measured for none of them otherwise.
    """
    big = any(block.correlated and block.n_terms > 4 for block in design.blocks)
    return 0.95 if big and parametrization != "crossed" else 0.9


def check_sample_arguments(draws=1000, tune=1000, chains=4, random_seed=None, sampler="nutpie",
                          target_accept=0.9, progressbar=True, parametrization="auto") -> dict:
    """Check the sampler's settings, as the model file's [sample] table is checked.

    Returns
    -------
    dict
        The settings as plain Python values.

    Raises
    ------
    SettingsError
        Naming the setting and what it must be.
    """
    out = {"draws": _whole(draws, "draws", 1, MAX_DRAWS), "tune": _whole(tune, "tune", 0, MAX_DRAWS),
           "chains": _whole(chains, "chains", 1, MAX_CHAINS)}
    if random_seed is not None:
        random_seed = _whole(random_seed, "random_seed", 0, 2**63 - 1)
    out["random_seed"] = random_seed
    if target_accept is not None and (isinstance(target_accept, bool) or not isinstance(target_accept, numbers.Real)
                                      or not 0.0 < float(target_accept) < 1.0):
        raise SettingsError(f"target_accept={target_accept!r} must be a number between 0 and 1 (e.g. 0.9)")
    out["target_accept"] = None if target_accept is None else float(target_accept)
    if not isinstance(progressbar, (bool, np.bool_)):
        raise SettingsError(f"progressbar={progressbar!r} must be True or False")
    out["progressbar"] = bool(progressbar)
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise SettingsError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    out["sampler"] = sampler
    if not isinstance(parametrization, str) or parametrization.lower() not in PARAMETRIZATIONS:
        raise SettingsError(f"parametrization must be 'auto', 'marginal', 'crossed', 'marginal_mh' or 'full', "
                            f"not {parametrization!r}")
    out["parametrization"] = parametrization.lower()
    return out


def saved_scalars(design: Design) -> int:
    """Numbers kept per draw: fixed effects, sigma, and per bar its sds, correlation matrix
    and group effects."""
    total = design.n_fixed + 1
    for block in design.blocks:
        total += block.n_terms + block.n_terms**2 + block.n_levels * block.n_terms
    return total


def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with the test extra
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _check_no_misspelled_option(kwargs: dict) -> None:
    """Options the sampler does not know would pass to it; one that is a misspelling of ours
    (draw=, seed=, chain=) would be ignored or fail deep inside: name the intended one."""
    import difflib

    aliases = {"seed": "random_seed", "n_draws": "draws", "n_chains": "chains", "warmup": "tune"}
    for key in kwargs:
        guess = aliases.get(key) or next(iter(difflib.get_close_matches(key, _SAMPLE_OPTIONS, n=1, cutoff=0.75)), None)
        if guess:
            raise SettingsError(f"unknown option {key}={kwargs[key]!r}: did you mean {guess}=?")


_SAMPLE_OPTIONS = ("draws", "tune", "chains", "random_seed", "sampler", "target_accept", "progressbar",
                   "parametrization")


def check_draws_fit_in_memory(design: Design, draws: int, chains: int, per_draw: int = 0) -> None:
    """Refuse, before anything is allocated, draws that would not fit in memory."""
    scalars = saved_scalars(design) + per_draw
    needed = 8 * draws * chains * scalars
    available = _available_memory()
    if needed > MEMORY_SHARE * available:
        raise SettingsError(f"{chains} chain(s) x {draws:,} draws x {scalars:,} saved numbers "
                            f"would take {_bytes(needed)} of memory; {_bytes(available)} is available: "
                            "use fewer draws or chains")


def _bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if count < 1024 or unit == "PB":
            return f"{count:.1f} {unit}" if unit != "bytes" else f"{int(count)} bytes"
        count /= 1024
    return f"{count:.1f} PB"  # unreachable


def check_priors_argument(priors) -> dict | None:
    """``priors`` must be None or a dict of text keys to bayeslmm priors."""
    from .priors import Prior

    if priors is None:
        return None
    if not isinstance(priors, dict):
        raise PriorError(f"priors must be a dict like {{'sd': blm.HalfNormal(sigma=10)}}, not "
                         f"{type(priors).__name__} ({priors!r:.60})")
    for key, value in priors.items():
        if not isinstance(key, str):
            raise PriorError(f"prior keys are text like 'b_Days' or 'sd_Subject', not {key!r}")
        if not isinstance(value, Prior):
            raise PriorError(f"the prior for '{key}' must be a bayeslmm prior such as "
                             f"blm.Normal(mu=0, sigma=1), not {value!r:.60}")
    return dict(priors)


class LMM:
    """A linear mixed model written as an lme4 formula.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"``.
    data : pandas.DataFrame
        Rows with missing values in the columns the formula uses are dropped with a
        warning that counts them.
    priors : dict, optional
        Priors for :meth:`sample` and ``fit(method="map")``; see :mod:`bayeslmm.priors`.

    Raises
    ------
    BayesLMMError
        A subclass naming the column, level or formula position at fault.

    Examples
    --------
    >>> import bayeslmm as blm
    >>> model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
    >>> est = model.fit(method="reml")
    >>> est.fixef()
    """

    def __new__(cls, formula: str | None = None, data=None, priors: dict | None = None):
        # a Dask dataframe: the out-of-core model (per-group statistics; bayeslmm.scale.outofcore)
        if cls is LMM and data is not None:
            from .scale.outofcore import OutOfCoreLMM, is_dask_frame

            if is_dask_frame(data):
                return OutOfCoreLMM(formula, data, priors)
        return super().__new__(cls)

    @classmethod
    def from_parquet(cls, formula: str, path, priors: dict | None = None, client=None, **read_kwargs):
        """The model of Parquet data larger than memory (``dask.dataframe.read_parquet(path,
        **read_kwargs)``), fitted from per-group statistics; see :mod:`bayeslmm.scale.outofcore`.
        ``client`` (a ``dask.distributed.Client``) runs the passes on its cluster."""
        from .scale.outofcore import OutOfCoreLMM, read_parquet

        return OutOfCoreLMM(formula, read_parquet(path, **read_kwargs), priors, client=client)

    def __init__(self, formula: str, data: pd.DataFrame, priors: dict | None = None):
        self.parsed = parse_formula(formula)
        self.design: Design = build_design(self.parsed, data)
        self.priors = check_priors_argument(priors)
        if self.priors:
            # every key is checked now, whatever the method: fit(method="reml") uses no prior,
            # and a misspelled key must not pass silently there. Notes about class keys the
            # model lacks are given when the priors are used (sample, MAP)
            from .priors import resolve_priors

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                resolve_priors(self.design, self.priors)

    @property
    def formula(self) -> str:
        return self.parsed.text

    def fit(self, method: str = "reml"):
        """Point estimates.

        Parameters
        ----------
        method : {"reml", "ml", "map"}
            ``"reml"`` and ``"ml"`` reproduce ``lme4::lmer(REML = TRUE / FALSE)``;
            ``"map"`` is the mode of the marginal posterior under the model's priors.

        Returns
        -------
        PointResult
        """
        if not isinstance(method, str):
            raise SettingsError(f"method must be 'reml', 'ml' or 'map', not {method!r}")
        key = method.lower()
        if key not in ("reml", "ml", "map"):
            raise SettingsError(f"unknown method {method!r}: use 'reml', 'ml' or 'map'")
        from .fitting.map import fit_map
        from .fitting.reml import fit_profiled

        try:
            if key == "map":
                result = fit_map(self.design, self.priors)
            else:
                result = fit_profiled(self.design, reml=(key == "reml"))
        except BayesLMMError:
            raise
        except (ArithmeticError, ValueError, KeyError, IndexError, np.linalg.LinAlgError) as exc:
            # a numerical failure deep in the optimizer is reported as a failed fit, not a raw error
            raise FitError(f"the {key.upper()} fit failed: {type(exc).__name__}: {exc}") from exc
        return _warn_if_perfect(result, self.design)

    def resolved_priors(self, for_map: bool = False):
        """The :class:`~bayeslmm.priors.PriorSet` in force: the user's priors over the defaults."""
        from .priors import resolve_priors

        return resolve_priors(self.design, self.priors, for_map=for_map)

    def prior_summary(self) -> pd.DataFrame:
        """The prior on every parameter (class, group, term, prior, source), as brms's
        ``prior_summary``. ``fit(method="map")`` uses LKJ(eta=2) where this says LKJ(eta=1)
        and the user gave no ``cor`` prior."""
        return self.resolved_priors().table(self.design)

    def sample(self, draws: int = 1000, tune: int = 1000, chains: int = 4, random_seed: int | None = None,
               sampler: str = "nutpie", target_accept: float | None = None, progressbar: bool = True,
               parametrization: str = "auto", **kwargs):
        """Sample the posterior with NUTS.

        Parameters
        ----------
        draws, tune, chains : int
            Kept draws and warm-up iterations per chain, and the number of chains.
        random_seed : int, optional
            The same seed gives identical draws.
        sampler : {"nutpie", "pymc", "numpyro", "blackjax"}
            NUTS implementation for the full parametrization; the JAX ones need
            ``pip install 'bayeslmm[jax]'``.
        target_accept : float, optional
            Step-size adaptation target. By default 0.9 (hierarchical models need smaller
            steps than the 0.8 of most samplers), 0.95 when a correlated bar has more than
            four terms, except in the partially collapsed sampler (see
            :func:`default_target_accept`).
        progressbar : bool
        parametrization : {"auto", "marginal", "crossed", "marginal_mh", "full"}
            ``"full"`` samples the group effects with the other parameters
            (non-centered); ``"marginal"`` integrates them out, samples the rest, then
            draws them exactly (every bar within one top-level factor, or crossed factors
            with at most 100 group effects in all); ``"crossed"`` integrates out one
            factor's effects (and those nested in it) given the other factors' effects,
            which NUTS samples, then draws the integrated ones exactly (any design, see
            :mod:`bayeslmm.sampling.crossed`); ``"marginal_mh"`` integrates every group
            effect out with the REML back end's blocked factorization and samples the few
            remaining parameters by independence Metropolis-Hastings, then draws the
            effects exactly (bars of one term each, any size: InstEval; see
            :mod:`bayeslmm.sampling.marginal_mh`; ``target_accept`` does not apply);
            ``"auto"`` (with ``sampler="nutpie"``) picks among
            them by estimated cost (:func:`bayeslmm.sampling.crossed.plan_sampler`) and records
            what it picked and why in ``idata.posterior.attrs["sampler_choice"]`` (also
            logged at INFO level on the ``bayeslmm`` logger).
        **kwargs
            Passed to the sampler of the full model (``nutpie.sample`` or ``pm.sample``);
            with nutpie, ``backend="numba"`` (default: ~10 s to compile, fast sampling) or
            ``"jax"`` (~2 s to compile, slower sampling) picks its compiler.

        Returns
        -------
        PosteriorResult
        """
        from .results.posterior import PosteriorResult, to_inference_data
        from .sampling.bayes import build_model, run_sampler
        from .sampling.crossed import plan_sampler, sample_crossed
        from .sampling.marginal import marginal_supported, sample_marginal
        from .sampling.marginal_mh import mh_supported, sample_marginal_mh

        settings = check_sample_arguments(draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                                         sampler=sampler, target_accept=target_accept,
                                         progressbar=progressbar, parametrization=parametrization)
        draws, tune, chains, random_seed = (settings[k] for k in ("draws", "tune", "chains", "random_seed"))
        target_accept, progressbar = settings["target_accept"], settings["progressbar"]
        default_accept = target_accept is None
        check_draws_fit_in_memory(self.design, draws, chains)
        _check_no_misspelled_option(kwargs)
        prior_set = self.resolved_priors()
        choice = settings["parametrization"]
        why = None
        if choice in ("marginal", "crossed") and sampler != "nutpie":
            raise BayesLMMError(f"parametrization={choice!r} runs on nutpie only, not sampler={sampler!r}; "
                                "use sampler='nutpie' or parametrization='full'")
        if choice == "auto" and sampler != "nutpie":
            choice, why = "full", f"full model: sampler={sampler!r} (the collapsed samplers run on nutpie only)"
        top = None
        if choice == "auto":
            plan = plan_sampler(self.design, draws=draws, tune=tune, chains=chains)
            choice, why, top = plan.parametrization, plan.reason, plan.top
            logging.getLogger("bayeslmm").info("sample(parametrization='auto'): %s", why)
        if choice in ("marginal", "crossed", "marginal_mh") and kwargs:
            raise BayesLMMError(f"sampler option(s) {', '.join(sorted(kwargs))} apply to the full model "
                                f"only; the {choice} sampler takes draws, tune, chains, random_seed, "
                                "target_accept and progressbar (or pass parametrization='full')")
        if default_accept:
            target_accept = default_target_accept(self.design, choice)
        options = dict(draws=draws, tune=tune, chains=chains, random_seed=random_seed, target_accept=target_accept,
                       progressbar=progressbar)
        if choice == "marginal":
            ok, reason = marginal_supported(self.design)
            if not ok:
                raise BayesLMMError(f"the marginal parametrization does not apply here: {reason}")
            return _warn_if_perfect(sample_marginal(self.design, prior_set, reason=why, **options), self.design)
        if choice == "marginal_mh":
            ok, reason = mh_supported(self.design)
            if not ok:
                raise BayesLMMError(f"the marginal_mh parametrization does not apply here: {reason}")
            mh_options = {k: v for k, v in options.items() if k != "target_accept"}
            try:
                return _warn_if_perfect(sample_marginal_mh(self.design, prior_set, reason=why, **mh_options),
                                        self.design)
            except FitError as exc:
                if settings["parametrization"] != "auto":
                    raise
                # auto's pick: fall back to the partially collapsed sampler, saying why
                why = f"partially collapsed sampler: the independence sampler could not start ({exc})"
                warnings.warn(f"parametrization='auto': {why}", SamplingWarning, stacklevel=2)
                choice, top = "crossed", None
        if choice == "crossed":
            if not self.design.blocks:
                raise BayesLMMError("the crossed parametrization needs at least one random-effect term")
            return _warn_if_perfect(sample_crossed(self.design, prior_set, top=top, reason=why, **options),
                                    self.design)
        model = build_model(self.design, prior_set, likelihood="auto")
        raw = run_sampler(model, sampler, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                          target_accept=target_accept, progressbar=progressbar, **kwargs)
        idata = to_inference_data(self.design, raw, prior_set, sampler=sampler, parametrization="full")
        if why:
            idata.posterior.attrs["sampler_choice"] = why
        return _warn_if_perfect(PosteriorResult(design=self.design, idata=idata, prior_set=prior_set), self.design)

    def sample_prior_predictive(self, draws: int = 500, random_seed: int | None = None):
        """Draws from the prior and the prior predictive distribution (an ``xarray.DataTree``
        with ``prior`` and ``prior_predictive`` groups)."""
        import pymc as pm

        from .sampling.bayes import build_model

        draws = _whole(draws, "draws", 1, MAX_DRAWS)
        if random_seed is not None:
            random_seed = _whole(random_seed, "random_seed", 0, 2**63 - 1)
        check_draws_fit_in_memory(self.design, draws, 1, per_draw=self.design.nobs)  # + the predictive y
        prior_set = self.resolved_priors()
        flat = prior_set.flat_parameters()
        if flat:
            raise BayesLMMError(f"cannot draw from the prior: {', '.join(flat)} has a Flat() prior, which is "
                                "improper; give it a proper prior (e.g. blm.Normal(mu=0, sigma=10))")
        with build_model(self.design, prior_set) as model:
            # the model's own parameters, not the non-centered helpers (_z_..., _chol_...)
            names = [v.name for v in model.free_RVs + model.deterministics if not v.name.startswith("_")]
            return pm.sample_prior_predictive(draws=draws, random_seed=random_seed, var_names=names + [
                v.name for v in model.observed_RVs])

    def __repr__(self) -> str:
        groups = ", ".join(f"{b.group} ({b.n_levels})" for b in self.design.blocks)
        return (f"LMM({self.formula!r}): {self.design.nobs} observations, "
                f"{self.design.n_fixed} fixed effects, groups: {groups}")


def _warn_if_perfect(result, design: Design):
    """lm in R says "essentially perfect fit"; a mixed model fitted to a response with no
    residual noise returns a residual sd at the optimizer's floor and meaningless standard
    errors, t values and likelihood: say so, naming the numbers."""
    sigma = getattr(result, "sigma", None)
    if sigma is None and hasattr(result, "sigma_draws"):  # a posterior: its median residual sd
        sigma = float(np.median(result.sigma_draws()))
    spread = float(np.std(design.y))
    if sigma is not None and spread > 0 and float(sigma) < PERFECT_FIT_RATIO * spread:
        warnings.warn(f"essentially perfect fit: the residual sd is {float(sigma):.3g} against a response sd of "
                      f"{spread:.4g}: '{design.response}' is an exact function of the fixed and group effects, "
                      "so standard errors, t values and the likelihood are unreliable (noise left out of a "
                      "simulation?)", PerfectFitWarning, stacklevel=3)
    return result


class GLMM:
    """A generalized linear mixed model written as an lme4 formula (glmer's model).

    Parameters
    ----------
    formula : str
        lme4 syntax. The response may be ``cbind(successes, failures)``, a 0/1, logical
        or two-level factor column (the first level is failure, as in R), proportions
        (with ``weights`` = trials) or counts; the fixed part may hold
        ``offset(np.log(exposure))``.
    data : pandas.DataFrame
    family : {"binomial", "poisson", "negative_binomial"} or Family
    link : str, optional
        ``"logit"`` (default), ``"probit"``, ``"cloglog"`` for the binomial; ``"log"``
        for counts.
    priors : dict, optional
        Priors for ``fit(method="map")`` and :meth:`sample` (see :mod:`bayeslmm.sampling.glmm_bayes`).
    weights : str or array-like, optional
        Prior weights (a column name or one value per row).

    Examples
    --------
    >>> import bayeslmm as blm
    >>> cbpp = blm.datasets.load("cbpp")
    >>> model = blm.GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
    ...                  family="binomial")
    >>> print(model.fit().summary())
    """

    def __init__(self, formula: str, data: pd.DataFrame, family="binomial", link: str | None = None,
                 priors: dict | None = None, weights=None):
        from .family import get_family
        from .frontend.glmm_design import build_glmm_design

        self.family = get_family(family, link)
        self.gd = build_glmm_design(formula, data, self.family, weights=weights)
        self.design: Design = self.gd.design
        self.parsed = self.design.formula
        self.priors = priors

    @property
    def formula(self) -> str:
        return self.parsed.text

    def fit(self, method: str = "ml", n_agq: int = 1):
        """Point estimates.

        Parameters
        ----------
        method : {"ml", "map"}
            ``"ml"``: maximum likelihood as ``lme4::glmer`` (``glmer.nb`` for the
            negative binomial, its shape estimated); ``"map"``: the posterior mode
            under the model's priors, random effects integrated out by Laplace.
        n_agq : int
            glmer's ``nAGQ``: 1 (Laplace, default), 0 (fast: ``beta`` solved in PIRLS),
            or 2..25 adaptive Gauss-Hermite points (one scalar random-effect term only).

        Returns
        -------
        GLMMResult
        """
        from .fitting.glmm import fit_glmm_model

        key = str(method).lower()
        if key not in ("ml", "map"):
            raise BayesLMMError(f"unknown method {method!r}: use 'ml' or 'map'")
        if isinstance(n_agq, (bool, np.bool_)) or not isinstance(n_agq, (int, np.integer)) or not 0 <= n_agq <= 25:
            raise SettingsError(f"n_agq must be a whole number from 0 to 25 (glmer's nAGQ), not {n_agq!r}")
        if key == "map":
            from .sampling.glmm_bayes import fit_glmm_map

            return fit_glmm_map(self.gd, self.priors)
        return fit_glmm_model(self.gd, n_agq=n_agq)

    def sample(self, draws: int = 1000, tune: int = 1000, chains: int = 4, random_seed: int | None = None,
               target_accept: float = 0.9, progressbar: bool = True, **kwargs):
        """Sample the posterior with NUTS (nutpie); see
        :func:`bayeslmm.sampling.glmm_bayes.sample_glmm`."""
        from .sampling.glmm_bayes import sample_glmm

        return sample_glmm(self.gd, self.priors, draws=draws, tune=tune, chains=chains,
                           random_seed=random_seed, target_accept=target_accept,
                           progressbar=progressbar, **kwargs)

    def __repr__(self) -> str:
        groups = ", ".join(f"{b.group} ({b.n_levels})" for b in self.design.blocks)
        return (f"GLMM({self.formula!r}, family={self.family.describe()!r}): {self.design.nobs} "
                f"observations, {self.design.n_fixed} fixed effects, groups: {groups}")
