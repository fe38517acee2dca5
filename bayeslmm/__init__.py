"""bayeslmm: Bayesian linear mixed-effects models with lme4 formulas.

>>> import bayeslmm as blm
>>> model = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy"))
>>> print(model.fit(method="reml").summary())
"""

from . import datasets
from .arguments import check_verbs as _check_verbs
from .errors import (
    BayesLMMError,
    ConvergenceWarning,
    DataError,
    FitError,
    FormulaError,
    PerfectFitWarning,
    PriorError,
    SamplingWarning,
    SettingsError,
)
from .fitting.reml import make_deviance
from .model import GLMM, LMM
from .priors import LKJ, Exponential, Flat, Gamma, HalfNormal, HalfStudentT, LogNormal, Normal, StudentT
from .reporting.report import anova, compare
from .results.glmm_results import GLMMResult
from .results.point import FitResult as _FitResult
from .results.point import PointResult as _PointResult
from .results.posterior import PosteriorResult, load
from .sampling.glmm_bayes import GLMMPosterior as _GLMMPosterior
from .scale.power import power, power_curve
from .workflow import SingularFitWarning, WorkflowResult, lmm

# every verb of a result checks its arguments (unknown keywords such as lme4's condVar=,
# wrong types, out-of-range values) with a SettingsError naming the argument. LMM and GLMM
# are not wrapped: their methods check their own values, and a wrapper frame would move the
# caller's line that their warnings (stacklevel) point at
for _cls in (_FitResult, _PointResult, PosteriorResult, GLMMResult, _GLMMPosterior, WorkflowResult):
    _check_verbs(_cls)
del _cls

__version__ = "0.2.0"

__all__ = [
    "LMM", "GLMM", "GLMMResult", "BayesLMMError", "DataError", "FitError", "FormulaError", "PriorError",
    "datasets", "make_deviance", "lmm", "SingularFitWarning", "WorkflowResult", "__version__",
    "PosteriorResult", "load", "SamplingWarning", "ConvergenceWarning", "anova", "compare",
    "power", "power_curve", "SettingsError", "PerfectFitWarning",
    "Normal", "StudentT", "Flat", "HalfStudentT", "HalfNormal", "Exponential", "Gamma", "LogNormal", "LKJ",
]
