"""Errors raised for bad input.

Every problem a user can cause raises a subclass of :class:`BayesLMMError`, with a
message that names the column, the level or the formula position at fault.
"""


class BayesLMMError(Exception):
    """Base class of every error bayeslmm raises on purpose."""


class FormulaError(BayesLMMError, ValueError):
    """The formula text cannot be parsed (the message gives the position)."""


class DataError(BayesLMMError, ValueError):
    """The data do not fit the formula: unknown column, wrong type, too few levels..."""


class FitError(BayesLMMError, RuntimeError):
    """A fit could not be carried out (for example the optimizer failed)."""


class PriorError(BayesLMMError, ValueError):
    """A prior specification is invalid or refers to a term the model lacks."""


class SamplingWarning(UserWarning):
    """The sampler reported problems: R-hat > 1.01, bulk ESS < 400 or divergences."""


class ConvergenceWarning(UserWarning):
    """The REML, ML or MAP optimizer stopped without meeting its convergence criterion."""


class SettingsError(BayesLMMError, ValueError):
    """An option of a fit or of the sampler is invalid (draws, chains, seed, method, ...)."""


class PerfectFitWarning(UserWarning):
    """The residual variance is (numerically) zero: the response is an exact function of the
    fixed and group effects, so standard errors, t values and the likelihood mean nothing."""
