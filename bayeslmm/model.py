"""The user-facing model: ``LMM(formula, data)`` parses and builds; fitting is a verb.

This is glue, as ``lmer()`` is in lme4: formula -> design -> back end -> result.
"""

from __future__ import annotations

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

    def __repr__(self) -> str:
        groups = ", ".join(f"{b.group} ({b.n_levels})" for b in self.design.blocks)
        return (f"LMM({self.formula!r}): {self.design.nobs} observations, "
                f"{self.design.n_fixed} fixed effects, groups: {groups}")
