"""The singular-fit workflow: fit REML; if the fit is singular, say why and refit with priors.

``lmer`` users meet "boundary (singular) fit" often. ``blm.lmm(formula, data)`` makes that
moment a path: REML first; on a singular fit a warning names the components on the
boundary, then the MAP fit under the priors (variances strictly positive, correlations
strictly inside (-1, 1)) and, with ``fallback="sample"``, the full posterior.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import BayesLMMError, SettingsError
from .model import LMM, check_sample_arguments

_SAMPLE_ARGUMENTS = ("draws", "tune", "chains", "random_seed", "sampler", "target_accept", "progressbar",
                     "parametrization")


class SingularFitWarning(UserWarning):
    """The REML/ML fit is on the boundary of the parameter space."""


@dataclass(frozen=True)
class WorkflowResult:
    """What :func:`lmm` did and every fit it made.

    Attributes
    ----------
    path : str
        ``"reml"`` (not singular), ``"reml -> map"`` or ``"reml -> map -> sample"``; or
        the one method asked for (``"reml"``, ``"ml"``, ``"map"``, ``"sample"``).
    reason : str
        Why the path was taken (the components on the boundary, if any).
    reml : PointResult or None
        The REML (or ML) fit; None only when ``method="map"`` asked for the MAP fit alone.
    map : PointResult or None
        The MAP fit under the priors, made when the REML fit is singular (or asked for).
    posterior : PosteriorResult or None
        The posterior, made when the REML fit is singular and ``fallback="sample"``.
    """

    path: str
    reason: str
    reml: object | None
    map: object | None = None
    posterior: object | None = None

    @property
    def result(self):
        """The fit to report: the posterior if sampled, else the MAP fit, else REML."""
        for fit in (self.posterior, self.map, self.reml):
            if fit is not None:
                return fit
        raise BayesLMMError("this workflow result holds no fit")

    def summary(self) -> str:
        return f"bayeslmm path: {self.path}\n{self.reason}\n\n{self.result.summary()}"

    def __getattr__(self, name):
        # fixef(), varcorr(), ranef(), ... of the chosen fit
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.result, name)


def lmm(formula: str, data: pd.DataFrame, method: str = "auto", fallback: str = "map",
        priors: dict | None = None, reml: bool = True, **sample_kwargs) -> WorkflowResult:
    """Fit a linear mixed model, falling back to priors when the REML fit is singular.

    Parameters
    ----------
    formula, data, priors
        As for :class:`~bayeslmm.LMM`.
    method : {"auto", "reml", "ml", "map", "sample"}
        ``"auto"``: REML (or ML with ``reml=False``), then the fallback if singular.
        The other values make just that fit.
    fallback : {"map", "sample"}
        On a singular fit: the MAP fit only, or the MAP fit and the full posterior.
    **sample_kwargs
        Passed to :meth:`LMM.sample` (draws, tune, chains, random_seed, ...).

    Returns
    -------
    WorkflowResult
        ``.path`` records what was done; ``.result`` is the fit to report.
    """
    if not isinstance(fallback, str) or fallback not in ("map", "sample"):
        raise SettingsError(f"fallback must be 'map' or 'sample', not {fallback!r}")
    if not isinstance(reml, (bool, np.bool_)):
        # a model file's reml = "false" once meant REML: the same check here
        raise SettingsError(f"reml must be True or False, not {reml!r}")
    if not isinstance(method, str) or method.lower() not in ("auto", "reml", "ml", "map", "sample"):
        raise SettingsError(f"unknown method {method!r}: use 'auto', 'reml', 'ml', 'map' or 'sample'")
    key = method.lower()
    samples = key == "sample" or (key == "auto" and fallback == "sample")
    if sample_kwargs and not samples:
        raise SettingsError(f"sampler setting(s) {', '.join(sorted(sample_kwargs))} given, but method={method!r} "
                            f"with fallback={fallback!r} never samples; pass fallback='sample' or method='sample'")
    if sample_kwargs:
        known = {k: v for k, v in sample_kwargs.items() if k in _SAMPLE_ARGUMENTS}
        check_sample_arguments(**known)  # before the REML fit, not after it
    model = LMM(formula, data, priors=priors)
    if key in ("reml", "ml"):
        return WorkflowResult(path=key, reason=f"method={key!r} requested", reml=model.fit(key))
    if key == "map":
        return WorkflowResult(path=key, reason="method='map' requested", reml=None, map=model.fit("map"))
    if key == "sample":
        post = model.sample(**sample_kwargs)
        return WorkflowResult(path="sample", reason="method='sample' requested", reml=model.fit("reml"),
                              posterior=post)

    first = model.fit("reml" if reml else "ml")
    if not first.is_singular:
        return WorkflowResult(path=first.method, reason="the fit is not singular", reml=first)
    terms = "; ".join(first.singular_terms())
    reason = (f"the {first.method.upper()} fit is singular (boundary): {terms}. Refitted with priors "
              "that keep variances above zero and correlations inside (-1, 1); alternatives: "
              "simplify the random part (drop a term or use '||').")
    warnings.warn(f"boundary (singular) fit: {terms}; returning the MAP fit under the priors"
                  + (" and the posterior" if fallback == "sample" else "")
                  + " (see .reml for the singular fit)", SingularFitWarning, stacklevel=2)
    map_fit = model.fit("map")
    if fallback == "sample":
        post = model.sample(**sample_kwargs)
        return WorkflowResult(path=f"{first.method} -> map -> sample", reason=reason, reml=first,
                              map=map_fit, posterior=post)
    return WorkflowResult(path=f"{first.method} -> map", reason=reason, reml=first, map=map_fit)
