"""The user-facing model: ``LMM(formula, data)`` parses and builds; fitting is a verb.

This is glue, as ``lmer()`` is in lme4: formula -> design -> back end -> result.
"""

from __future__ import annotations

import logging

import pandas as pd

from .design import Design, build_design
from .errors import BayesLMMError
from .formula import parse_formula


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

    def __init__(self, formula: str, data: pd.DataFrame, priors: dict | None = None):
        self.parsed = parse_formula(formula)
        self.design: Design = build_design(self.parsed, data)
        self.priors = priors

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
        key = str(method).lower()
        if key in ("reml", "ml"):
            from .reml import fit_profiled

            return fit_profiled(self.design, reml=(key == "reml"))
        if key == "map":
            from .map import fit_map

            return fit_map(self.design, self.priors)
        raise BayesLMMError(f"unknown method {method!r}: use 'reml', 'ml' or 'map'")

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
               sampler: str = "nutpie", target_accept: float = 0.9, progressbar: bool = True,
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
        target_accept : float
            Step-size adaptation target (0.9 by default: hierarchical models need
            smaller steps than the 0.8 of most samplers).
        progressbar : bool
        parametrization : {"auto", "marginal", "crossed", "full"}
            ``"full"`` samples the group effects with the other parameters
            (non-centered); ``"marginal"`` integrates them out, samples the rest, then
            draws them exactly (every bar within one top-level factor, or crossed factors
            with at most 100 group effects in all); ``"crossed"`` integrates out one
            factor's effects (and those nested in it) given the other factors' effects,
            which NUTS samples, then draws the integrated ones exactly (any design, see
            :mod:`bayeslmm.crossed`); ``"auto"`` (with ``sampler="nutpie"``) picks among
            them by estimated cost (:func:`bayeslmm.crossed.plan_sampler`) and records
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
        from .bayes import build_model, run_sampler
        from .crossed import plan_sampler, sample_crossed
        from .marginal import marginal_supported, sample_marginal
        from .posterior import PosteriorResult, to_inference_data

        prior_set = self.resolved_priors()
        choice = str(parametrization).lower()
        if choice not in ("auto", "marginal", "crossed", "full"):
            raise BayesLMMError(f"parametrization must be 'auto', 'marginal', 'crossed' or 'full', "
                                f"not {parametrization!r}")
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
        if choice in ("marginal", "crossed") and kwargs:
            raise BayesLMMError(f"sampler option(s) {', '.join(sorted(kwargs))} apply to the full model "
                                f"only; the {choice} sampler takes draws, tune, chains, random_seed, "
                                "target_accept and progressbar (or pass parametrization='full')")
        options = dict(draws=draws, tune=tune, chains=chains, random_seed=random_seed, target_accept=target_accept,
                       progressbar=progressbar)
        if choice == "marginal":
            ok, reason = marginal_supported(self.design)
            if not ok:
                raise BayesLMMError(f"the marginal parametrization does not apply here: {reason}")
            return sample_marginal(self.design, prior_set, reason=why, **options)
        if choice == "crossed":
            if not self.design.blocks:
                raise BayesLMMError("the crossed parametrization needs at least one random-effect term")
            return sample_crossed(self.design, prior_set, top=top, reason=why, **options)
        model = build_model(self.design, prior_set, likelihood="auto")
        raw = run_sampler(model, sampler, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                          target_accept=target_accept, progressbar=progressbar, **kwargs)
        idata = to_inference_data(self.design, raw, prior_set, sampler=sampler, parametrization="full")
        if why:
            idata.posterior.attrs["sampler_choice"] = why
        return PosteriorResult(design=self.design, idata=idata, prior_set=prior_set)

    def sample_prior_predictive(self, draws: int = 500, random_seed: int | None = None):
        """Draws from the prior and the prior predictive distribution (arviz.InferenceData
        with ``prior`` and ``prior_predictive`` groups)."""
        import pymc as pm

        from .bayes import build_model

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
