"""Response families: the one place that knows what a distribution and a link are.

Every back end (PIRLS / Laplace / AGQ, MAP, the PyMC model) and every report (ICC, R2,
simulated residuals) reads a :class:`Family`; no other module branches on the family name.

Conventions follow R's ``family`` objects, as glmer uses them:

- ``y`` is the response on the mean scale: for the binomial the *proportion* of
  successes, with the number of trials as the prior ``weights`` (``cbind(s, f)`` gives
  ``y = s / (s + f)``, ``weights = s + f``); for counts ``y`` is the count.
- ``dev_resid(y, mu, wt)`` are the squared deviance residuals (R's ``dev.resids``).
- ``loglik(y, mu, wt)`` is the full log-likelihood per observation, constants included
  (R's ``family$aic`` is ``-2 * sum`` of it for these families).
- ``latent_variance(...)`` is the distribution-specific variance on the latent (link)
  scale of Nakagawa, Johnson & Schielzeth (2017), computed as the R package
  ``performance`` 0.10 (insight 0.18) does: ``pi^2 / 3`` (logit), ``1`` (probit),
  ``pi^2 / 6`` (cloglog); for log-link counts the lognormal approximation
  ``log1p(var(mu) / mu^2)`` with ``mu = exp(b0)``, ``b0`` the intercept of the null model
  (same random effects, intercept-only fixed part): ``log1p(1 / mu)`` for the Poisson,
  ``log1p(1 / mu + 1 / theta)`` for the negative binomial.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from .errors import BayesLMMError

_EPS = np.finfo(float).eps
_THRESH = 30.0
_MTHRESH = -30.0
_INVEPS = 1.0 / _EPS


# ---------------------------------------------------------------- links
@dataclass(frozen=True)
class Link(ABC):
    """A link function ``eta = g(mu)`` with its inverse and ``d mu / d eta``."""

    name: str

    @abstractmethod
    def link(self, mu):
        """``eta = g(mu)``."""

    @abstractmethod
    def inverse(self, eta):
        """``mu = g^-1(eta)``."""

    @abstractmethod
    def mu_eta(self, eta):
        """``d mu / d eta``."""

    @abstractmethod
    def pt_inverse(self, eta):
        """The inverse link on a PyTensor variable (for the PyMC model)."""


class Logit(Link):
    def __init__(self):
        object.__setattr__(self, "name", "logit")

    def link(self, mu):
        return special.logit(mu)

    def inverse(self, eta):
        # R's plogis clamps to [eps, 1 - eps] in binomial()$linkinv
        out = special.expit(eta)
        return np.clip(out, _EPS, 1.0 - _EPS)

    def mu_eta(self, eta):
        e = np.exp(-np.abs(eta))
        return np.maximum(e / (1.0 + e) ** 2, _EPS)

    def pt_inverse(self, eta):
        import pytensor.tensor as pt

        return pt.sigmoid(eta)


class Probit(Link):
    def __init__(self):
        object.__setattr__(self, "name", "probit")

    def link(self, mu):
        return special.ndtri(mu)

    def inverse(self, eta):
        thresh = -special.ndtri(_EPS)
        return special.ndtr(np.clip(eta, -thresh, thresh))

    def mu_eta(self, eta):
        return np.maximum(np.exp(-0.5 * np.asarray(eta) ** 2) / np.sqrt(2 * np.pi), _EPS)

    def pt_inverse(self, eta):
        import pytensor.tensor as pt

        return 0.5 * pt.erfc(-eta / np.sqrt(2.0))


class Cloglog(Link):
    def __init__(self):
        object.__setattr__(self, "name", "cloglog")

    def link(self, mu):
        return np.log(-np.log1p(-mu))

    def inverse(self, eta):
        return np.clip(-np.expm1(-np.exp(eta)), _EPS, 1.0 - _EPS)

    def mu_eta(self, eta):
        eta = np.minimum(eta, 700.0)
        return np.maximum(np.exp(eta) * np.exp(-np.exp(eta)), _EPS)

    def pt_inverse(self, eta):
        import pytensor.tensor as pt

        return -pt.expm1(-pt.exp(eta))


class Log(Link):
    def __init__(self):
        object.__setattr__(self, "name", "log")

    def link(self, mu):
        return np.log(mu)

    def inverse(self, eta):
        return np.maximum(np.exp(np.minimum(eta, 700.0)), _EPS)

    def mu_eta(self, eta):
        return np.maximum(np.exp(np.minimum(eta, 700.0)), _EPS)

    def pt_inverse(self, eta):
        import pytensor.tensor as pt

        return pt.exp(eta)


class Identity(Link):
    def __init__(self):
        object.__setattr__(self, "name", "identity")

    def link(self, mu):
        return np.asarray(mu, dtype=float)

    def inverse(self, eta):
        return np.asarray(eta, dtype=float)

    def mu_eta(self, eta):
        return np.ones_like(np.asarray(eta, dtype=float))

    def pt_inverse(self, eta):
        return eta


_LINKS = {"logit": Logit, "probit": Probit, "cloglog": Cloglog, "log": Log, "identity": Identity}


# ---------------------------------------------------------------- families
class Family(ABC):
    """A response distribution with a link (R's ``family`` object).

    Attributes
    ----------
    name : str
        ``"binomial"``, ``"poisson"`` or ``"negative_binomial"``.
    link : Link
    has_dispersion : bool
        True when the conditional distribution has a scale estimated with the model
        (the negative-binomial shape ``theta``).
    """

    name = "family"
    links: tuple[str, ...] = ()
    default_link = ""
    has_dispersion = False
    #: latent variance needs the null model's intercept (log-link counts)
    latent_needs_null = False
    #: integer-valued response (for rootograms)
    is_count = False
    #: discrete response (ties in simulated residuals; zero-inflation test)
    is_discrete = False

    def __init__(self, link: str | None = None):
        link = self.default_link if link is None else str(link).lower()
        if link not in self.links:
            raise BayesLMMError(f"the {self.name} family takes link {', '.join(repr(k) for k in self.links)}, "
                                f"not {link!r}")
        self.link: Link = _LINKS[link]()

    # link shortcuts
    def linkfun(self, mu):
        return self.link.link(mu)

    def linkinv(self, eta):
        return self.link.inverse(eta)

    def mu_eta(self, eta):
        return self.link.mu_eta(eta)

    # distribution
    @abstractmethod
    def variance(self, mu):
        """The variance function ``V(mu)``."""

    @abstractmethod
    def dev_resid(self, y, mu, wt):
        """Squared deviance residuals (R's ``family$dev.resids``)."""

    @abstractmethod
    def loglik(self, y, mu, wt):
        """Log-likelihood of every observation."""

    @abstractmethod
    def simulate(self, mu, wt, rng: np.random.Generator):
        """One draw of ``y`` (on the family's scale: proportions for the binomial)."""

    @abstractmethod
    def cdf(self, y, mu, wt):
        """``P(Y <= y)`` and ``P(Y < y)`` for randomized quantile residuals."""

    @abstractmethod
    def latent_variance(self, null_intercept: float | None = None) -> float:
        """Distribution-specific variance on the latent scale (Nakagawa et al. 2017)."""

    @abstractmethod
    def initialize(self, y, wt):
        """Starting mean (R's ``family$initialize``)."""

    def validate(self, y, wt, what: str = "response") -> None:
        """Raise a :class:`BayesLMMError` when ``y`` cannot come from this family."""

    def observed_values(self, y, wt) -> np.ndarray:
        """What the PyMC likelihood observes: counts (successes for the binomial)."""
        return np.round(y).astype(np.int64)

    def expected_observed(self, mu, wt) -> np.ndarray:
        """The mean of :meth:`observed_values` (``mu``; ``wt * mu`` for the binomial)."""
        return np.asarray(mu, dtype=float)

    @abstractmethod
    def pymc_observed(self, name: str, eta, observed, trials, extra: dict):
        """The observed PyMC variable given the linear predictor ``eta`` (inside a model
        context); ``observed`` from :meth:`observed_values`, ``trials`` the rounded
        weights, ``extra`` the family's own parameters (e.g. ``shape``)."""

    def pymc_parameters(self) -> dict:
        """Create the family's own parameters in the current PyMC model (default: none)."""
        return {}

    def with_draws(self, extra: dict, s: int) -> "Family":
        """This family with its own parameters at posterior draw ``s``."""
        return self

    def describe(self) -> str:
        return f"{self.name}  ( {self.link.name} )"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(link={self.link.name!r})"

    def __eq__(self, other):
        return type(self) is type(other) and self.link.name == other.link.name and \
            getattr(self, "theta", None) == getattr(other, "theta", None)

    def __hash__(self):
        return hash((type(self).__name__, self.link.name))


class Binomial(Family):
    """Binary and binomial responses: ``y`` the proportion, ``wt`` the trials."""

    name = "binomial"
    links = ("logit", "probit", "cloglog")
    default_link = "logit"
    is_discrete = True

    def variance(self, mu):
        return mu * (1.0 - mu)

    def dev_resid(self, y, mu, wt):
        # R's binomial_dev_resids: y log(y/mu) + (1-y) log((1-y)/(1-mu)), 0 log 0 = 0;
        # mu is kept inside (0, 1) by the inverse links, so y log(mu) needs no xlogy
        sat = y * np.log(np.where(y > 0, y, 1.0)) + (1 - y) * np.log(np.where(y < 1, 1 - y, 1.0))
        return 2.0 * wt * (sat - y * np.log(mu) - (1 - y) * np.log1p(-mu))

    def loglik(self, y, mu, wt):
        n = np.round(wt)
        k = np.round(wt * y)
        return stats.binom.logpmf(k, n, mu)

    def simulate(self, mu, wt, rng):
        n = np.round(wt).astype(np.int64)
        return rng.binomial(n, mu) / np.maximum(n, 1)

    def cdf(self, y, mu, wt):
        n = np.round(wt)
        k = np.round(wt * y)
        return stats.binom.cdf(k, n, mu), stats.binom.cdf(k - 1, n, mu)

    def latent_variance(self, null_intercept=None):
        return {"logit": np.pi**2 / 3.0, "probit": 1.0, "cloglog": np.pi**2 / 6.0}[self.link.name]

    def initialize(self, y, wt):
        return (wt * y + 0.5) / (wt + 1.0)

    def observed_values(self, y, wt):
        return np.round(wt * y).astype(np.int64)

    def expected_observed(self, mu, wt):
        return wt * mu

    def pymc_observed(self, name, eta, observed, trials, extra):
        import pymc as pm

        if self.link.name == "logit":
            return pm.Binomial(name, n=trials, logit_p=eta, observed=observed)
        return pm.Binomial(name, n=trials, p=self.link.pt_inverse(eta), observed=observed)

    def validate(self, y, wt, what="response"):
        bad = (y < 0) | (y > 1)
        if bad.any():
            raise BayesLMMError(f"the binomial {what} must be a proportion in [0, 1] (0/1, a factor, "
                                f"cbind(successes, failures), or proportions with weights): "
                                f"{int(bad.sum())} value(s) outside, e.g. {y[bad][0]:g}")
        k = wt * y
        if np.any(np.abs(k - np.round(k)) > 1e-7):
            raise BayesLMMError(f"the binomial {what} times its weights (the trials) is not a whole number "
                                "of successes; give proportions with the number of trials as weights")


class Poisson(Family):
    """Counts."""

    name = "poisson"
    links = ("log", "identity")
    default_link = "log"
    latent_needs_null = True
    is_count = True
    is_discrete = True

    def variance(self, mu):
        return np.asarray(mu, dtype=float)

    def dev_resid(self, y, mu, wt):
        return 2.0 * wt * (y * np.log(np.where(y > 0, y, 1.0) / mu) - (y - mu))

    def loglik(self, y, mu, wt):
        return wt * stats.poisson.logpmf(y, mu)

    def simulate(self, mu, wt, rng):
        return rng.poisson(mu).astype(float)

    def cdf(self, y, mu, wt):
        return stats.poisson.cdf(y, mu), stats.poisson.cdf(y - 1, mu)

    def latent_variance(self, null_intercept=None):
        if self.link.name != "log":
            raise BayesLMMError("the latent-scale variance is defined for the log link only")
        if null_intercept is None:
            raise BayesLMMError("the Poisson latent variance needs the null model's intercept")
        return float(np.log1p(1.0 / np.exp(null_intercept)))

    def initialize(self, y, wt):
        return y + 0.1

    def pymc_observed(self, name, eta, observed, trials, extra):
        import pymc as pm

        return pm.Poisson(name, mu=self.link.pt_inverse(eta), observed=observed)

    def validate(self, y, wt, what="response"):
        bad = (y < 0) | (np.abs(y - np.round(y)) > 1e-7)
        if bad.any():
            raise BayesLMMError(f"the {self.name} {what} must be non-negative whole numbers (counts): "
                                f"{int(bad.sum())} value(s) are not, e.g. {y[bad][0]:g}")


class NegativeBinomial(Poisson):
    """Overdispersed counts: variance ``mu + mu^2 / theta`` (R's ``negative.binomial(theta)``;
    ``theta`` is estimated by ``fit`` as ``glmer.nb`` does)."""

    name = "negative_binomial"
    links = ("log", "identity")
    default_link = "log"
    has_dispersion = True

    def __init__(self, link: str | None = None, theta: float = 1.0):
        super().__init__(link)
        self.theta = float(theta)

    def with_theta(self, theta: float) -> "NegativeBinomial":
        return NegativeBinomial(self.link.name, theta)

    def variance(self, mu):
        return mu + mu**2 / self.theta

    def dev_resid(self, y, mu, wt):
        t = self.theta
        return 2.0 * wt * (special.xlogy(y, np.maximum(y, 1.0) / mu)
                           - (y + t) * np.log((y + t) / (mu + t)))

    def loglik(self, y, mu, wt):
        t = self.theta
        return wt * (special.gammaln(t + y) - special.gammaln(t) - special.gammaln(y + 1)
                     + t * np.log(t) + special.xlogy(y, mu) - (t + y) * np.log(t + mu))

    def simulate(self, mu, wt, rng):
        return rng.negative_binomial(self.theta, self.theta / (self.theta + mu)).astype(float)

    def cdf(self, y, mu, wt):
        p = self.theta / (self.theta + mu)
        return stats.nbinom.cdf(y, self.theta, p), stats.nbinom.cdf(y - 1, self.theta, p)

    def latent_variance(self, null_intercept=None):
        if null_intercept is None:
            raise BayesLMMError("the negative-binomial latent variance needs the null model's intercept")
        mu = np.exp(null_intercept)
        return float(np.log1p(1.0 / mu + 1.0 / self.theta))

    def pymc_parameters(self) -> dict:
        import pymc as pm

        # brms's default prior on the shape: Gamma(0.01, 0.01)
        return {"shape": pm.Gamma("shape", alpha=0.01, beta=0.01)}

    def pymc_observed(self, name, eta, observed, trials, extra):
        import pymc as pm

        return pm.NegativeBinomial(name, mu=self.link.pt_inverse(eta), alpha=extra["shape"], observed=observed)

    def with_draws(self, extra: dict, s: int) -> "NegativeBinomial":
        return self.with_theta(float(extra["shape"][s]))

    def describe(self) -> str:
        return f"Negative Binomial({self.theta:.4g})  ( {self.link.name} )"


_FAMILIES = {"binomial": Binomial, "bernoulli": Binomial,
             "poisson": Poisson, "negative_binomial": NegativeBinomial, "negbinomial": NegativeBinomial,
             "nb": NegativeBinomial}


def get_family(family: str | Family, link: str | None = None) -> Family:
    """A :class:`Family` from its name (``"binomial"``, ``"poisson"``,
    ``"negative_binomial"``) and an optional link. Gaussian responses are :class:`~bayeslmm.LMM`'s."""
    if isinstance(family, Family):
        if link is not None and link != family.link.name:
            raise BayesLMMError(f"link={link!r} conflicts with the family's link {family.link.name!r}")
        return family
    key = str(family).lower().replace(".", "_").replace(" ", "_")
    if key in ("gaussian", "normal"):
        raise BayesLMMError(f"family={family!r}: a Gaussian response is a linear mixed model; fit it with "
                            "blm.LMM(formula, data) (REML/ML as lmer, MAP, the posterior)")
    if key not in _FAMILIES:
        raise BayesLMMError(f"unknown family {family!r}: use 'binomial', 'poisson', 'negative_binomial' "
                            "(Gaussian responses: blm.LMM)")
    return _FAMILIES[key](link)
