"""Priors: small classes whose keywords follow PyMC's, and the data-scaled defaults.

Set priors by class or by parameter, with brms's names::

    LMM(formula, data, priors={
        "Intercept": blm.StudentT(nu=3, mu=290, sigma=60),  # intercept of centered predictors
        "b": blm.Flat(),                                    # every other fixed effect
        "b_Days": blm.Normal(mu=0, sigma=20),               # one fixed effect
        "sd": blm.HalfStudentT(nu=3, sigma=60),             # every group-level sd
        "sd_Subject": blm.HalfNormal(sigma=50),             # the sds of one grouping factor
        "sd_Subject__Days": blm.HalfNormal(sigma=10),       # one sd of one factor
        "cor": blm.LKJ(eta=1), "cor_Subject": blm.LKJ(eta=2),
        "sigma": blm.HalfStudentT(nu=3, sigma=60),
    })

The most specific key wins. Defaults (``s_y`` is the sd of the response, ``s_x`` the sd of
a predictor column over the rows, ``m_y`` the mean of the response):

- ``Intercept``: ``StudentT(nu=3, mu=m_y, sigma=2.5 s_y)``, on the intercept of the
  mean-centered predictors (as in brms);
- ``b``: ``Normal(mu=0, sigma=2.5 s_y / s_x)`` for each column (rstanarm's autoscaling);
- ``sd``: ``Gamma(alpha=2, beta=2 / s_t)`` for the sd of term t in any group, where
  ``s_t = s_y`` for an intercept and ``s_y / s_x`` for a slope: mean ``s_t``, zero density
  at zero (Chung et al. 2013), so neither the sampler's funnel nor the MAP's boundary;
- ``cor``: ``LKJ(eta=1)`` (uniform over correlation matrices);
- ``sigma``: ``Exponential(lam=1 / s_y)`` (rstanarm's default).

``fit(method="map")`` uses the same priors except that the default ``cor`` prior is
``LKJ(eta=2)``: LKJ(1) is flat, so it cannot keep a mode away from correlations of +-1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from scipy import stats

from .errors import PriorError
from .frontend.design import Design


def _num(value) -> str:
    return f"{value:.4g}"


@dataclass(frozen=True)
class Prior:
    """Base of the prior classes. ``to_pymc`` builds the PyMC distribution."""

    #: PyMC class name; the dataclass fields are its keywords
    pymc_name = ""
    #: "real" for a location prior, "positive" for a scale prior, "corr" for LKJ
    support = "real"

    #: parameters that must be positive (scales, degrees of freedom, rates, shapes)
    _positive = ("sigma", "nu", "lam", "alpha", "beta", "eta")
    #: every parameter's magnitude stays within [1 / LIMIT, LIMIT] (0 allowed for locations):
    #: the densities square scales and rates, and 1e308 or 1e-300 overflow there (the MAP
    #: fit failed with a raw OverflowError); data in any sane unit is far inside
    LIMIT = 1e100

    def __post_init__(self):
        # checked here, so a bad prior fails where it is written, not deep in a sampler
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise PriorError(f"{type(self).__name__}({f.name}={value!r}): {f.name} must be a number")
            if not np.isfinite(value):
                raise PriorError(f"{type(self).__name__}({f.name}={value!r}): {f.name} must be finite")
            if f.name in self._positive and value <= 0:
                raise PriorError(f"{type(self).__name__}({f.name}={value!r}): {f.name} must be positive")
            magnitude = abs(float(value))
            if magnitude > self.LIMIT or (0 < magnitude < 1.0 / self.LIMIT):
                raise PriorError(f"{type(self).__name__}({f.name}={value!r}): {f.name} must be between "
                                 f"{1.0 / self.LIMIT:g} and {self.LIMIT:g} in size; rescale the data (e.g. "
                                 "other units) if the prior needs such a value")

    def kwargs(self) -> dict[str, float]:
        # floats, never ints: PyMC may type an int constant as int8 and overflow
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    def to_pymc(self, name: str, **extra):
        """A registered PyMC random variable named ``name`` (inside a model context)."""
        import pymc as pm

        return getattr(pm, self.pymc_name)(name, **self.kwargs(), **extra)

    def dist(self, **extra):
        """An unregistered PyMC distribution (for ``LKJCholeskyCov(sd_dist=...)``)."""
        import pymc as pm

        return getattr(pm, self.pymc_name).dist(**self.kwargs(), **extra)

    def logp(self, value: np.ndarray | float) -> float:
        """Log density at ``value`` (numpy), summed; for the MAP back end."""
        raise PriorError(f"{self} has no log density")  # overridden by every concrete prior

    def scaled(self, factor: float) -> "Prior":
        """The prior of ``factor * value`` for ``value`` under this prior (``factor > 0``):
        the full PyMC model samples on the scale of the standardized response."""
        raise PriorError(f"{self} cannot be rescaled")  # overridden by every concrete prior

    def __str__(self) -> str:
        args = ", ".join(f"{f.name}={_num(getattr(self, f.name))}" for f in fields(self))
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class Normal(Prior):
    """Normal(mu, sigma)."""

    mu: float = 0.0
    sigma: float = 1.0
    pymc_name = "Normal"

    def logp(self, value):
        return float(np.sum(stats.norm.logpdf(value, self.mu, self.sigma)))

    def scaled(self, factor):
        return Normal(mu=self.mu * factor, sigma=self.sigma * factor)


@dataclass(frozen=True)
class StudentT(Prior):
    """Student-t(nu, mu, sigma)."""

    nu: float = 3.0
    mu: float = 0.0
    sigma: float = 1.0
    pymc_name = "StudentT"

    def logp(self, value):
        return float(np.sum(stats.t.logpdf(value, self.nu, self.mu, self.sigma)))

    def scaled(self, factor):
        return StudentT(nu=self.nu, mu=self.mu * factor, sigma=self.sigma * factor)


@dataclass(frozen=True)
class Flat(Prior):
    """An improper uniform prior over the real line (brms's default on slopes)."""

    pymc_name = "Flat"

    def kwargs(self):
        return {}

    def logp(self, value):
        return 0.0

    def __str__(self):
        return "Flat()"

    def scaled(self, factor):
        return self


@dataclass(frozen=True)
class HalfStudentT(Prior):
    """Half Student-t(nu, sigma) on (0, inf)."""

    nu: float = 3.0
    sigma: float = 1.0
    pymc_name = "HalfStudentT"
    support = "positive"

    def logp(self, value):
        return float(np.sum(np.log(2.0) + stats.t.logpdf(value, self.nu, 0.0, self.sigma)))

    def scaled(self, factor):
        return HalfStudentT(nu=self.nu, sigma=self.sigma * factor)


@dataclass(frozen=True)
class HalfNormal(Prior):
    """Half normal(sigma) on (0, inf)."""

    sigma: float = 1.0
    pymc_name = "HalfNormal"
    support = "positive"

    def logp(self, value):
        return float(np.sum(stats.halfnorm.logpdf(value, 0.0, self.sigma)))

    def scaled(self, factor):
        return HalfNormal(sigma=self.sigma * factor)


@dataclass(frozen=True)
class Exponential(Prior):
    """Exponential with rate ``lam``."""

    lam: float = 1.0
    pymc_name = "Exponential"
    support = "positive"

    def logp(self, value):
        return float(np.sum(stats.expon.logpdf(value, scale=1.0 / self.lam)))

    def scaled(self, factor):
        return Exponential(lam=self.lam / factor)


@dataclass(frozen=True)
class Gamma(Prior):
    """Gamma(alpha, beta) with shape ``alpha`` and rate ``beta``; zero density at 0 when alpha > 1."""

    alpha: float = 2.0
    beta: float = 1.0
    pymc_name = "Gamma"
    support = "positive"

    def logp(self, value):
        return float(np.sum(stats.gamma.logpdf(value, self.alpha, scale=1.0 / self.beta)))

    def scaled(self, factor):
        return Gamma(alpha=self.alpha, beta=self.beta / factor)


@dataclass(frozen=True)
class LogNormal(Prior):
    """Log-normal(mu, sigma) on (0, inf)."""

    mu: float = 0.0
    sigma: float = 1.0
    pymc_name = "LogNormal"
    support = "positive"

    def logp(self, value):
        return float(np.sum(stats.lognorm.logpdf(value, self.sigma, scale=np.exp(self.mu))))

    def scaled(self, factor):
        return LogNormal(mu=self.mu + float(np.log(factor)), sigma=self.sigma)


@dataclass(frozen=True)
class LKJ(Prior):
    """LKJ(eta) on a correlation matrix: eta = 1 uniform, eta > 1 favours small correlations."""

    eta: float = 1.0
    pymc_name = "LKJCorr"
    support = "corr"

    def logp(self, value):
        """Log density of a correlation matrix ``value`` up to its normalizing constant
        (which depends on eta and the dimension only, so it does not move a mode)."""
        sign, logdet = np.linalg.slogdet(np.asarray(value))
        if sign <= 0:
            return -np.inf
        return float((self.eta - 1.0) * logdet)

    def scaled(self, factor):
        return self  # correlations have no units


# ---------------------------------------------------------------- resolved set
@dataclass(frozen=True)
class PriorSet:
    """The prior in force on every parameter of a model.

    Attributes
    ----------
    intercept : Prior or None
        On the intercept of the mean-centered predictors (None without an intercept).
    fixed : dict term -> Prior
        Every other fixed effect.
    sd : dict (bar index, term) -> Prior
    cor : dict bar index -> LKJ
        For correlated bars with two or more terms.
    sigma : Prior
    sources : dict parameter name -> "default" or the key the user gave
    """

    intercept: Prior | None
    fixed: dict
    sd: dict
    cor: dict
    sigma: Prior
    sources: dict

    def flat_parameters(self) -> list[str]:
        """The fixed effects under an improper ``Flat()`` prior (brms's default on ``b``)."""
        names = ["Intercept"] if isinstance(self.intercept, Flat) else []
        return names + [f"b_{term}" for term, prior in self.fixed.items() if isinstance(prior, Flat)]

    def table(self, design: Design) -> pd.DataFrame:
        """One row per parameter: class, group, term, prior, source."""
        rows = []
        if self.intercept is not None:
            rows.append(("Intercept", "", "(Intercept)", str(self.intercept), self.sources["Intercept"]))
        for term, prior in self.fixed.items():
            rows.append(("b", "", term, str(prior), self.sources[f"b_{term}"]))
        for (k, term), prior in self.sd.items():
            group = design.blocks[k].group
            rows.append(("sd", group, term, str(prior), self.sources[f"sd_{group}__{term}"]))
        for k, prior in self.cor.items():
            group = design.blocks[k].group
            rows.append(("cor", group, "", str(prior), self.sources[f"cor_{group}"]))
        rows.append(("sigma", "", "", str(self.sigma), self.sources["sigma"]))
        return pd.DataFrame(rows, columns=["class", "group", "term", "prior", "source"])

    def describe(self, design: Design) -> str:
        """The table as text, for summaries."""
        lines = []
        for row in self.table(design).itertuples(index=False):
            name = {"Intercept": "Intercept", "b": f"b_{row.term}", "sd": f"sd_{row.group}__{row.term}",
                    "cor": f"cor_{row.group}", "sigma": "sigma"}[row[0]]
            source = "" if row.source == "default" else f"  (set by '{row.source}')"
            lines.append(f"{name} ~ {row.prior}{source}")
        return "\n".join(lines)


def column_scales(design: Design) -> tuple[float, float, np.ndarray]:
    """(mean of y, sd of y, sd of each column of X; 1 for the intercept column)."""
    y = design.y
    s_y = float(np.std(y)) or 1.0
    s_x = np.std(design.X, axis=0)
    s_x = np.where(s_x > 0, s_x, 1.0)
    return float(np.mean(y)), s_y, s_x


def _term_scale(design: Design, k: int, t: int, s_y: float) -> float:
    """Data scale of random term t of bar k: s_y for an intercept, s_y / s_x for a slope."""
    column = design.blocks[k].X[:, t]
    s_x = float(np.std(column))
    return s_y if s_x == 0 else s_y / s_x


#: a prior on an sd whose typical value is below this share of the data's scale for that sd
#: pins it at zero; the MAP fit then fails or returns nonsense (tried: 1e-7 .. 1e-20)
MIN_RELATIVE_SCALE = 1e-6


def _typical_value(prior: Prior) -> float | None:
    """A scale prior's typical size (its scale, or its mean for Exponential and Gamma)."""
    if isinstance(prior, (HalfNormal, HalfStudentT)):
        return prior.sigma
    if isinstance(prior, Exponential):
        return 1.0 / prior.lam
    if isinstance(prior, Gamma):
        return prior.alpha / prior.beta
    if isinstance(prior, LogNormal):
        return float(np.exp(min(prior.mu, 700.0)))
    return None


def _check_scale_prior(prior: Prior, source: str, name: str, data_scale: float) -> None:
    typical = _typical_value(prior)
    if source == "default" or typical is None or not data_scale > 0:
        return
    if typical < MIN_RELATIVE_SCALE * data_scale:
        raise PriorError(f"the prior {prior} on '{name}' (set by '{source}') has a typical value of {typical:.3g}, "
                         f"{typical / data_scale:.2g} times the data's scale for it ({data_scale:.4g}): that pins "
                         f"it at zero; give a scale of at least {MIN_RELATIVE_SCALE:g} times the data's, or rescale "
                         "the data")


def resolve_priors(design: Design, priors: dict | None, for_map: bool = False) -> PriorSet:
    """Combine the user's ``priors`` dict with the defaults (see the module docstring).

    Raises
    ------
    PriorError
        For a key that names no parameter of the model, or a value that is not a
        prior of the right kind.
    """
    priors = dict(priors or {})
    m_y, s_y, s_x = column_scales(design)
    used: set[str] = set()

    def pick(keys: list[str], default: Prior, support: str) -> tuple[Prior, str]:
        for key in keys:  # most specific first
            if key in priors:
                prior = priors[key]
                if not isinstance(prior, Prior):
                    raise PriorError(f"the prior for '{key}' must be a bayeslmm prior such as "
                                     f"blm.Normal(mu=0, sigma=1), not {prior!r}")
                if support == "real" and prior.support == "positive":
                    raise PriorError(f"'{key}' is a coefficient that can be negative: {prior} gives it no "
                                     f"density below 0; use Normal, StudentT or Flat")
                if support == "positive" and prior.support == "real" and not isinstance(prior, Flat):
                    raise PriorError(f"'{key}' is a scale: give a positive prior (HalfNormal, "
                                     f"HalfStudentT, Exponential, Gamma, LogNormal), not {prior}")
                if support == "corr" and prior.support != "corr":
                    raise PriorError(f"'{key}' is a correlation matrix: give blm.LKJ(eta=...), not {prior}")
                if support != "corr" and prior.support == "corr":
                    raise PriorError(f"LKJ is a prior for 'cor' keys only, not for '{key}'")
                if support == "positive" and isinstance(prior, Flat):
                    raise PriorError(f"'{key}' is a scale: a Flat prior is not allowed there")
                used.add(key)
                return prior, key
        return default, "default"

    sources: dict[str, str] = {}
    names = list(design.fixed_names)
    intercept = None
    if "(Intercept)" in names:
        intercept, sources["Intercept"] = pick(["Intercept", "b_Intercept"],
                                               StudentT(nu=3.0, mu=m_y, sigma=2.5 * s_y), "real")
    fixed = {}
    for j, term in enumerate(names):
        if term == "(Intercept)":
            continue
        fixed[term], sources[f"b_{term}"] = pick([f"b_{term}", "b"], Normal(mu=0.0, sigma=2.5 * s_y / s_x[j]), "real")
    sd, cor = {}, {}
    for k, block in enumerate(design.blocks):
        for t, term in enumerate(block.terms):
            scale = _term_scale(design, k, t, s_y)
            sd[(k, term)], sources[f"sd_{block.group}__{term}"] = pick(
                [f"sd_{block.group}__{term}", f"sd_{block.group}", "sd"], Gamma(alpha=2.0, beta=2.0 / scale),
                "positive")
            _check_scale_prior(sd[(k, term)], sources[f"sd_{block.group}__{term}"],
                               f"sd_{block.group}__{term}", scale)
        if block.correlated and block.n_terms > 1:
            cor[k], sources[f"cor_{block.group}"] = pick([f"cor_{block.group}", "cor"],
                                                         LKJ(eta=2.0 if for_map else 1.0), "corr")
    sigma, sources["sigma"] = pick(["sigma"], Exponential(lam=1.0 / s_y), "positive")
    _check_scale_prior(sigma, sources["sigma"], "sigma", s_y)

    # a class-level key the model does not use is still checked for its kind of prior
    for key, support in (("Intercept", "real"), ("b", "real"), ("sd", "positive"), ("sigma", "positive"),
                         ("cor", "corr")):
        if key in priors and key not in used:
            pick([key], priors[key], support)
            used.discard(key)
    # a class-level key for a class the model lacks is said, not silently dropped; it stays
    # legal so that one priors dict can serve nested models ((1 | g) beside (x | g))
    absent = {"Intercept": intercept is None, "b": not fixed, "cor": not cor}
    unused_classes = [key for key, missing in absent.items() if missing and key in priors]
    if unused_classes:
        what = {"Intercept": "no intercept", "b": "no fixed effects besides the intercept",
                "cor": "no correlated random-effect terms (only '||' or single-term bars)"}
        warnings.warn("; ".join(f"prior {key!r} is not used: the model has {what[key]}" for key in unused_classes),
                      UserWarning, stacklevel=3)
    # a specific key must name a parameter
    unknown = sorted(set(priors) - used - {"Intercept", "b", "sd", "cor", "sigma"})
    if unknown:
        valid = (["Intercept", "b", "sd", "cor", "sigma"] + [f"b_{t}" for t in fixed]
                 + sorted({f"sd_{b.group}" for b in design.blocks})
                 + [f"sd_{b.group}__{t}" for b in design.blocks for t in b.terms]
                 + [f"cor_{design.blocks[k].group}" for k in cor])
        raise PriorError(f"prior key(s) {', '.join(map(repr, unknown))} name no parameter of this model; "
                         f"valid keys: {', '.join(dict.fromkeys(valid))}")
    return PriorSet(intercept=intercept, fixed=fixed, sd=sd, cor=cor, sigma=sigma, sources=sources)


# ---------------------------------------------------------------- priors named in files
#: the prior classes a file may name (model files, saved posteriors); nothing else in this
#: module is reachable by name from a file (an edited posterior.nc named any function here)
PRIOR_CLASSES = {cls.__name__: cls for cls in (Normal, StudentT, Flat, HalfStudentT, HalfNormal, Exponential,
                                               Gamma, LogNormal, LKJ)}


def prior_from_spec(kind, kwargs) -> Prior:
    """``("HalfNormal", {"sigma": 10})`` -> ``HalfNormal(sigma=10.0)``, checked: the class is
    one of :data:`PRIOR_CLASSES` and the keywords are its parameters (numbers)."""
    if not isinstance(kind, str) or kind not in PRIOR_CLASSES:
        raise PriorError(f"unknown prior class {kind!r}: use one of {', '.join(PRIOR_CLASSES)}")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise PriorError(f"the parameters of {kind} must be a table of names and numbers, not {kwargs!r:.60}")
    try:
        return PRIOR_CLASSES[kind](**kwargs)
    except TypeError as exc:  # an unknown keyword
        raise PriorError(f"{kind}: {exc}") from exc


def priors_from_mapping(spec) -> dict:
    """``{key: {"class": "HalfNormal", "kwargs": {...}}}`` (as saved with a posterior) -> priors."""
    if not isinstance(spec, dict):
        raise PriorError(f"saved priors must be a table, not {type(spec).__name__}")
    out = {}
    for key, value in spec.items():
        if not isinstance(value, dict):
            raise PriorError(f"saved prior {key!r} must be a table with 'class' and 'kwargs', not {value!r:.60}")
        out[key] = prior_from_spec(value.get("class"), value.get("kwargs", {}))
    return out
