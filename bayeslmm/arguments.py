"""Argument checks shared by the verbs of the result classes.

A user's mistake in a call of a result verb (an unknown keyword such as lme4's
``condVar=``, a missing argument, ``prob="abc"``, ``draws=-1``, ``random_seed=2.5``) would
otherwise surface as a raw ``TypeError``/``ValueError``/``MemoryError`` from deep inside
NumPy or pandas. :func:`check_verbs` wraps every public method of a class so that the call
is bound to the method's signature first and the arguments with the common names below are
checked by type and range, each failure a :class:`~bayeslmm.errors.SettingsError` naming
the argument. What a value means (an unknown ``ddf`` name, a term missing from ``L``) is
left to the method itself.
"""

from __future__ import annotations

import functools
import inspect
import numbers

import numpy as np
import pandas as pd

from .errors import SettingsError

#: lme4 / broom.mixed spellings and what to write instead
LME4_SPELLINGS = {
    "condVar": "write ranef(tidy=True) for the conditional modes with their conditional standard deviations "
               "(lme4's condVar=TRUE)",
    "drop": "the result is already one frame per grouping factor",
    "re.form": "write include_random=False for re.form=NA (fixed effects only) or include_random=True for re.form=NULL",
    "re_form": "write include_random=False for re.form=NA (fixed effects only) or include_random=True for re.form=NULL",
    "allow.new.levels": "write allow_new_levels=True",
    "conf.level": "write prob=... (for confint: level=...)",
    "conf_level": "write prob=... (for confint: level=...)",
    "conf.int": "intervals are always given; set their level with prob=...",
    "ci": "write prob=...",
}

#: an upper bound for counts of simulated draws (ppc, simulate, bootstrap): beyond it the
#: arrays no longer fit in memory on any machine this runs on
MAX_COUNT = 10 ** 6

_PROBABILITIES = ("prob", "level")
_COUNTS = ("draws", "nsim", "bins", "max_count", "max_panels", "n_jobs")
_POSITIVE_REALS = ("tol",)


def _is_int(value) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _allows_none(parameter: inspect.Parameter) -> bool:
    return parameter.default is None or "None" in str(parameter.annotation)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(verb: str, name: str, value, parameter: inspect.Parameter, owner) -> None:
    annotation = str(parameter.annotation)
    where = f"{verb}({name}=...)"
    if value is None and _allows_none(parameter):
        return
    if name in _PROBABILITIES:
        if not isinstance(value, (numbers.Real, np.floating, np.integer)) or isinstance(value, (bool, np.bool_)) \
                or not 0.0 < float(value) < 1.0:
            raise SettingsError(f"{where}: {name} must be a probability strictly between 0 and 1 (like 0.95), "
                                f"not {_shown(value)}")
        return
    if annotation in ("bool", "bool | None"):
        if not isinstance(value, (bool, np.bool_)):
            raise SettingsError(f"{where}: {name} must be True or False, not {_shown(value)}")
        return
    if name in _COUNTS and "int" in annotation:
        if not _is_int(value):
            raise SettingsError(f"{where}: {name} must be a whole number, not {_shown(value)}")
        low = -1 if name == "n_jobs" else 1  # joblib's -1: all cores
        if not low <= value <= MAX_COUNT or (name == "n_jobs" and value == 0):
            raise SettingsError(f"{where}: {name} must be from {1} to {MAX_COUNT:,}, not {value}")
        return
    if name in _POSITIVE_REALS:
        if not isinstance(value, (numbers.Real, np.floating)) or isinstance(value, (bool, np.bool_)) \
                or not np.isfinite(float(value)) or float(value) <= 0:
            raise SettingsError(f"{where}: {name} must be a positive number, not {_shown(value)}")
        return
    if name == "random_seed":
        if isinstance(value, (np.random.Generator, np.random.SeedSequence)):
            return
        if not _is_int(value) or value < 0:
            raise SettingsError(f"{where}: random_seed must be None, a non-negative whole number or a "
                                f"numpy Generator, not {_shown(value)}")
        return
    if name == "newdata":
        if not isinstance(value, pd.DataFrame):
            raise SettingsError(f"{where}: newdata must be a pandas DataFrame, not {type(value).__name__}")
        return
    if name == "group":
        groups = [block.group for block in getattr(getattr(owner, "design", None), "blocks", ())]
        if not isinstance(value, str) or (groups and value not in groups):
            raise SettingsError(f"{where}: group must be the name of a grouping factor "
                                f"({', '.join(groups) or 'none'}), not {_shown(value)}")
        return
    if name == "effects":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) for v in items):
            raise SettingsError(f"{where}: effects must be a name or a list of names like "
                                f"('fixed', 'ran_pars'), not {_shown(value)}")
        return
    if name == "L":  # contrasts: one row or a matrix of numbers (a dict by name is checked by contest)
        if isinstance(value, (dict, pd.Series, pd.DataFrame)):
            return
        try:
            matrix = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            matrix = None
        if matrix is None or matrix.ndim not in (1, 2) or matrix.size == 0 or not np.isfinite(matrix).all():
            raise SettingsError(f"{where}: L must be a vector or a matrix of finite numbers, one column per "
                                f"fixed effect, not {_shown(value)}")
        return
    if annotation.split(" | ")[0] == "int" and not _is_int(value):
        raise SettingsError(f"{where}: {name} must be a whole number, not {_shown(value)}")
    if annotation.split(" | ")[0] == "str" and not isinstance(value, str):
        raise SettingsError(f"{where}: {name} must be text, not {_shown(value)}")


def _checked(method, verb: str):
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            accepted = [p.name for p in list(signature.parameters.values())[1:]
                        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            unknown = [k for k in kwargs if k not in signature.parameters]
            if unknown:
                name = unknown[0]
                hint = LME4_SPELLINGS.get(name)
                raise SettingsError(f"{verb}() has no argument {name!r}" + (f": {hint}" if hint else "")
                                    + f" (its arguments: {', '.join(accepted) or 'none'})") from None
            missing = [p.name for p in signature.parameters.values()
                       if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                       and p.name != "self" and p.name not in kwargs][len(args):]
            if missing:
                raise SettingsError(f"{verb}() needs {', '.join(missing)} (its arguments: "
                                    f"{', '.join(accepted)})") from None
            raise SettingsError(f"{verb}() takes at most {len(accepted)} arguments ({', '.join(accepted)}): "
                                f"{exc}") from None
        for name, value in list(bound.arguments.items())[1:]:
            parameter = signature.parameters[name]
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if value is parameter.default and not (name == "group" and value is not None):
                continue  # the method's own default
            _check_value(verb, name, value, parameter, self)
        return method(self, *args, **kwargs)

    wrapper.__checked__ = True
    return wrapper


def check_verbs(cls):
    """Wrap the public methods ``cls`` defines (not properties, static or class methods)
    with the checks above. Returns ``cls``."""
    for name, attr in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(attr) or getattr(attr, "__checked__", False):
            continue
        setattr(cls, name, _checked(attr, name))
    return cls
