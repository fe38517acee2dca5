"""The user-facing model: ``LMM(formula, data)`` parses and builds; fitting is a verb.

This is glue, as ``lmer()`` is in lme4: formula -> design -> back end -> result.
"""

from __future__ import annotations

import warnings

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
        parametrization : {"auto", "marginal", "full"}
            ``"full"`` samples the group effects with the other parameters
            (non-centered); ``"marginal"`` integrates them out, samples the rest, then
            draws them exactly; ``"auto"`` uses the marginal one where it applies (every
            bar within one top-level factor, or crossed factors with at most 100 group
            effects in all, integrated out jointly; ``sampler="nutpie"``), else the full
            one with a warning and the reason in ``idata.posterior.attrs["marginal_fallback"]``.
        **kwargs
            Passed to the sampler of the full model (``nutpie.sample`` or ``pm.sample``);
            with nutpie, ``backend="numba"`` (default: ~10 s to compile, fast sampling) or
            ``"jax"`` (~2 s to compile, slower sampling) picks its compiler.

        Returns
        -------
        PosteriorResult
        """
        from .bayes import build_model, run_sampler
        from .marginal import marginal_supported, sample_marginal
        from .posterior import PosteriorResult, to_inference_data

        prior_set = self.resolved_priors()
        choice = str(parametrization).lower()
        if choice not in ("auto", "marginal", "full"):
            raise BayesLMMError(f"parametrization must be 'auto', 'marginal' or 'full', not {parametrization!r}")
        fallback = None
        if choice == "marginal" and sampler != "nutpie":
            raise BayesLMMError(f"parametrization='marginal' runs on nutpie only, not sampler={sampler!r}; "
                                "use sampler='nutpie' or parametrization='full'")
        if choice == "auto" and sampler != "nutpie":
            choice = "full"  # the marginal sampler runs on nutpie only
        if choice in ("auto", "marginal"):
            ok, reason = marginal_supported(self.design)
            if ok and kwargs:
                raise BayesLMMError(f"sampler option(s) {', '.join(sorted(kwargs))} apply to the full model "
                                    "only; the marginal sampler takes draws, tune, chains, random_seed, "
                                    "target_accept and progressbar (or pass parametrization='full')")
            if ok:
                return sample_marginal(self.design, prior_set, draws=draws, tune=tune, chains=chains,
                                       random_seed=random_seed, target_accept=target_accept,
                                       progressbar=progressbar)
            if choice == "marginal":
                raise BayesLMMError(f"the marginal parametrization does not apply here: {reason}")
            warnings.warn(f"{reason}.", UserWarning, stacklevel=2)
            fallback = reason
        model = build_model(self.design, prior_set, likelihood="auto")
        raw = run_sampler(model, sampler, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                          target_accept=target_accept, progressbar=progressbar, **kwargs)
        idata = to_inference_data(self.design, raw, prior_set, sampler=sampler, parametrization="full")
        if fallback:
            idata.posterior.attrs["marginal_fallback"] = fallback
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
        Priors for ``fit(method="map")`` and :meth:`sample` (see :mod:`bayeslmm.glmm_bayes`).
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
        from .glmm_design import build_glmm_design

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
        from .glmm import fit_glmm_model

        key = str(method).lower()
        if key not in ("ml", "map"):
            raise BayesLMMError(f"unknown method {method!r}: use 'ml' or 'map'")
        if key == "map":
            from .glmm_bayes import fit_glmm_map

            return fit_glmm_map(self.gd, self.priors)
        return fit_glmm_model(self.gd, n_agq=n_agq)

    def sample(self, draws: int = 1000, tune: int = 1000, chains: int = 4, random_seed: int | None = None,
               target_accept: float = 0.9, progressbar: bool = True, **kwargs):
        """Sample the posterior with NUTS (nutpie) on the non-centered model; see
        :func:`bayeslmm.glmm_bayes.sample_glmm`."""
        from .glmm_bayes import sample_glmm

        return sample_glmm(self.gd, self.priors, draws=draws, tune=tune, chains=chains,
                           random_seed=random_seed, target_accept=target_accept,
                           progressbar=progressbar, **kwargs)

    def __repr__(self) -> str:
        groups = ", ".join(f"{b.group} ({b.n_levels})" for b in self.design.blocks)
        return (f"GLMM({self.formula!r}, family={self.family.describe()!r}): {self.design.nobs} "
                f"observations, {self.design.n_fixed} fixed effects, groups: {groups}")
