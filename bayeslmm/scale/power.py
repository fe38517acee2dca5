"""Simulation-based power analysis (R's simr: ``powerSim``, ``extend``, ``powerCurve``).

Power is estimated the way simr estimates it: simulate new responses from a fitted model
(lme4's ``simulate`` with new group effects) at the effect sizes and variance components
one wants to detect, refit the model to every simulated data set, test the effect, and
count how often the test rejects at ``alpha``. The count is a binomial outcome, so the
estimate comes with an exact (Clopper-Pearson) confidence interval, as simr gives it.

Every simulation is one independent task of :func:`bayeslmm.scale.executor.run_tasks` (local
processes, a Dask cluster, or in process), seeded from one ``random_seed`` by its
position, so the result is the same for any number of workers. A fit that fails is
counted (``n_failed``) and left out of the power; a singular fit is counted
(``n_singular``) and kept, as simr keeps it.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import BayesLMMError, FitError
from ..frontend.design import Design, build_design
from .executor import run_tasks
from .simulate import simulate_response

__all__ = ["PowerCurve", "PowerResult", "extend", "power", "power_curve"]

_METHODS = ("satterthwaite", "wald", "lrt")


# ---------------------------------------------------------------- what is simulated
@dataclass(frozen=True)
class SimulationSpec:
    """Everything a worker needs to simulate and test one data set (picklable)."""

    design: Design
    beta: np.ndarray
    covariances: tuple[np.ndarray, ...]   # one per block of ``design``, in its order
    sigma: float
    test_columns: tuple[int, ...]         # positions in design.fixed_names
    method: str                           # "satterthwaite" | "wald" | "lrt"
    refit: str                            # "reml" | "ml": the fit the Wald tests use
    reduced: Design | None = field(default=None, repr=False)  # without the tested columns (LRT)


def _fixef_accepts_ddf(result) -> bool:
    try:
        return "ddf" in inspect.signature(result.fixef).parameters
    except (TypeError, ValueError):
        return False


def _first_column(table: pd.DataFrame, names: tuple[str, ...], what: str) -> str:
    for name in names:
        if name in table.columns:
            return name
    raise BayesLMMError(f"fixef(ddf='satterthwaite') gave no {what} column (looked for {', '.join(names)}; "
                        f"it has {', '.join(map(str, table.columns))})")


def _test_one(spec: SimulationSpec, y: np.ndarray) -> dict:
    """Refit to ``y`` and test; the row of the runs table."""
    from ..fitting.reml import fit_profiled

    design = replace(spec.design, y=y)
    cols = list(spec.test_columns)
    if spec.method == "lrt":
        full = fit_profiled(design, reml=False)
        reduced = fit_profiled(replace(spec.reduced, y=y), reml=False)
        statistic = max(reduced.criterion - full.criterion, 0.0)
        df = float(len(cols))
        p_value = float(stats.chi2.sf(statistic, df))
        result = full
    else:
        result = fit_profiled(design, reml=(spec.refit == "reml"))
        if spec.method == "satterthwaite" and len(cols) == 1:  # lmerTest's t test
            table = result.fixef(ddf="satterthwaite")
            row = table.iloc[cols[0]]
            statistic = float(row[_first_column(table, ("t_value", "statistic", "t"), "t statistic")])
            df = float(row[_first_column(table, ("df", "ddf"), "degrees-of-freedom")])
            p_value = float(row[_first_column(table, ("p_value", "p", "Pr(>|t|)"), "p-value")])
        elif spec.method == "satterthwaite":  # several columns: lmerTest's F test (contest)
            if not hasattr(result, "contest"):
                raise BayesLMMError("a Satterthwaite F test of several columns needs fit.contest(); "
                                    "use method='lrt' or 'wald'")
            L = np.zeros((len(cols), len(result.beta)))
            L[np.arange(len(cols)), cols] = 1.0
            table = result.contest(L, ddf="satterthwaite")
            statistic = float(table["f_value"].iloc[0])
            df = float(table[_first_column(table, ("den_df", "df"), "degrees-of-freedom")].iloc[0])
            p_value = float(table["p_value"].iloc[0])
        else:  # Wald: z for one coefficient, chi-square for several (simr's "z" test)
            beta = result.beta[cols]
            vcov = result.vcov_beta[np.ix_(cols, cols)]
            if len(cols) == 1:
                statistic = float(beta[0] / np.sqrt(vcov[0, 0]))
                df = np.inf
                p_value = float(2.0 * stats.norm.sf(abs(statistic)))
            else:
                statistic = float(beta @ np.linalg.solve(vcov, beta))
                df = float(len(cols))
                p_value = float(stats.chi2.sf(statistic, df))
    se = np.sqrt(np.diag(result.vcov_beta))[cols]
    return {"estimate": float(result.beta[cols[0]]), "std_error": float(se[0]), "statistic": statistic,
            "df": df, "p_value": p_value, "singular": bool(result.is_singular)}


def _simulate_and_test(spec: SimulationSpec, task, seed) -> dict:
    """One task: draw a data set from the model at the spec's parameters, refit, test."""
    if isinstance(spec, dict):  # power curve: task = (key, k)
        spec = spec[task[0]]
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore", invalid="ignore"):
        y, _ = simulate_response(spec.design, spec.beta, list(spec.covariances), spec.sigma, rng)
    if not np.all(np.isfinite(y)):
        raise FitError("the simulated response has non-finite values (an effect size or variance too large?)")
    return _test_one(spec, y)


# ---------------------------------------------------------------- parameters
def _parameters(fit, fixef: dict | None, varcorr: dict | None, sigma: float | None):
    """The fit's parameters with the user's overrides: beta by name, covariances by group
    (``{(group, terms): cov}``), sigma."""
    design = fit.design
    names = list(design.fixed_names)
    beta = np.array(fit.beta, dtype=float)
    for what, given in (("fixef", fixef), ("varcorr", varcorr)):
        if given is not None and not isinstance(given, dict):
            raise BayesLMMError(f"{what} must be a dict by name (like {{'Days': 5.0}}), not {type(given).__name__}")
    for name, value in (fixef or {}).items():
        if name not in names:
            raise BayesLMMError(f"fixef: the model has no fixed effect {name!r}; it has {', '.join(names)}")
        beta[names.index(name)] = _number(value, f"fixef[{name!r}]")
    covs = {(b.group, b.terms): np.array(c, dtype=float) for b, c in zip(design.blocks, fit.covariances)}
    groups = {b.group: b for b in design.blocks}
    for group, value in (varcorr or {}).items():
        if group not in groups:
            raise BayesLMMError(f"varcorr: the model has no grouping factor {group!r}; it has {', '.join(groups)}")
        if sum(b.group == group for b in design.blocks) > 1:
            raise BayesLMMError(f"varcorr: '{group}' has several bars; give the covariance as "
                                f"{{({group!r}, terms): matrix}} is not supported, set it through the fit")
        block = groups[group]
        cov = np.atleast_2d(np.asarray(value, dtype=float))
        q = block.n_terms
        if cov.shape != (q, q):
            raise BayesLMMError(f"varcorr[{group!r}] must be a {q} x {q} covariance matrix of "
                                f"({', '.join(block.terms)}), got shape {cov.shape}")
        if not np.allclose(cov, cov.T) or np.linalg.eigvalsh(cov).min() < -1e-10 * max(1.0, np.abs(cov).max()):
            raise BayesLMMError(f"varcorr[{group!r}] is not a symmetric positive semi-definite matrix")
        if not block.correlated and np.any(cov[~np.eye(q, dtype=bool)] != 0):
            raise BayesLMMError(f"varcorr[{group!r}]: the bar {block.term.text} is uncorrelated ('||'); "
                                "give a diagonal matrix")
        covs[(block.group, block.terms)] = cov
    s = float(fit.sigma) if sigma is None else _number(sigma, "sigma")
    if s <= 0:
        raise BayesLMMError(f"sigma must be positive, got {s}")
    return beta, covs, s


def _number(value, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise BayesLMMError(f"{what} must be a number, got {value!r}") from None
    if not np.isfinite(out):
        raise BayesLMMError(f"{what} must be finite, got {value!r}")
    return out


def _test_columns(design: Design, test) -> tuple[int, ...]:
    names = list(design.fixed_names)
    if not isinstance(test, (str, list, tuple)) or not all(isinstance(t, str) for t in ([test] if isinstance(
            test, str) else test)):
        raise BayesLMMError(f"test must be a fixed effect's name or a list of names, like 'Days', not {test!r}")
    wanted = [test] if isinstance(test, str) else list(test)
    if not wanted:
        raise BayesLMMError("test names no fixed effect")
    cols = []
    for name in wanted:
        if name not in names:
            hint = [n for n in names if n.startswith(str(name))]
            more = f"; the factor's columns are {', '.join(hint)} (pass them as a list)" if hint else ""
            raise BayesLMMError(f"test: the model has no fixed effect {name!r}; it has {', '.join(names)}{more}")
        cols.append(names.index(name))
    return tuple(cols)


def _spec(fit, design: Design, beta, covs: dict, sigma: float, test, method: str) -> SimulationSpec:
    cols = _test_columns(design, test)
    names = design.fixed_names
    try:
        cov_list = tuple(covs[(b.group, b.terms)] for b in design.blocks)
    except KeyError as exc:  # pragma: no cover - extend keeps the bars
        raise BayesLMMError(f"no covariance for the bar {exc}") from None
    reduced = None
    if method == "lrt":
        keep = [j for j in range(len(names)) if j not in cols]
        reduced = replace(design, X=design.X[:, keep], fixed_names=tuple(names[j] for j in keep))
    refit = fit.method if fit.method in ("reml", "ml") else "reml"
    design, reduced = _lean(design), None if reduced is None else _lean(reduced)
    return SimulationSpec(design, np.asarray(beta, float), cov_list, float(sigma), cols, method, refit, reduced)


def _lean(design: Design) -> Design:
    """The design as the refits need it, small and picklable by the standard pickle of
    local worker processes: no data frame, no formula evaluators (which hold modules)."""
    blocks = tuple(replace(block, _evaluator=None) for block in design.blocks)
    return replace(design, data=design.data.iloc[:0], blocks=blocks, _fixed_evaluator=None)


def _check_method(fit, method: str) -> str:
    key = str(method).lower()
    if key not in _METHODS:
        raise BayesLMMError(f"method must be one of {', '.join(map(repr, _METHODS))}, not {method!r}")
    if key == "satterthwaite" and not _fixef_accepts_ddf(fit):
        raise BayesLMMError("method='satterthwaite' needs fixef(ddf='satterthwaite') (Satterthwaite degrees of "
                            "freedom), which this installation of bayeslmm does not have; use method='wald' "
                            "(z test) or method='lrt' (likelihood-ratio test)")
    return key


def _check_fit(fit) -> None:
    from ..results.point import PointResult

    if not isinstance(fit, PointResult):
        raise BayesLMMError(f"power needs a REML or ML fit (LMM.fit()), not {type(fit).__name__}")
    if len(fit.design.y) != fit.nobs:
        raise BayesLMMError("power simulates new responses on the fit's rows, and an out-of-core fit has none "
                            "in memory; fit the planned design (a DataFrame) instead")


# ---------------------------------------------------------------- results
def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval (what simr reports)."""
    if trials == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class PowerResult:
    """The outcome of :func:`power`.

    Attributes
    ----------
    power : float
        Share of successful fits whose test rejected at ``alpha``.
    lower, upper : float
        Clopper-Pearson interval of the power at ``level``.
    successes : int
        Rejections.
    nsim : int
        Simulations run; ``nsim - n_failed`` of them are in the power.
    n_failed : int
        Fits or tests that raised (their error is in ``runs``).
    n_singular : int
        Singular fits (lme4's rule), kept in the power.
    runs : DataFrame
        One row per simulation: estimate, std_error, statistic, df, p_value, singular,
        error, warnings, seconds.
    """

    test: tuple[str, ...]
    method: str
    alpha: float
    level: float
    power: float
    lower: float
    upper: float
    successes: int
    nsim: int
    n_failed: int
    n_singular: int
    runs: pd.DataFrame = field(repr=False)
    seconds: float = 0.0

    @property
    def n_warnings(self) -> int:
        """Simulations whose fit emitted a warning (e.g. an optimizer that did not converge)."""
        return int((self.runs["warnings"] != "").sum())

    def summary(self) -> str:
        name = ", ".join(self.test)
        return (f"Power for {name!r} ({self.method} test, alpha = {self.alpha:g}), "
                f"{100 * self.level:g}% confidence interval:\n"
                f"      {100 * self.power:.2f}% ({100 * self.lower:.2f}, {100 * self.upper:.2f})\n"
                f"Based on {self.nsim} simulations ({self.n_failed} failed, {self.n_singular} singular, "
                f"{self.n_warnings} with warnings)")

    def __str__(self) -> str:
        return self.summary()


def _collect(outcomes, test_names, method, alpha, level, seconds) -> PowerResult:
    rows = []
    for o in outcomes:
        row = dict(o.value) if o.ok else {"estimate": np.nan, "std_error": np.nan, "statistic": np.nan,
                                          "df": np.nan, "p_value": np.nan, "singular": False}
        row["error"] = o.error or ""
        row["warnings"] = "; ".join(o.warnings)
        row["seconds"] = o.seconds
        rows.append(row)
    runs = pd.DataFrame(rows, columns=["estimate", "std_error", "statistic", "df", "p_value", "singular",
                                       "error", "warnings", "seconds"])
    runs.index.name = "sim"
    ok = runs["error"] == ""
    trials = int(ok.sum())
    successes = int((runs.loc[ok, "p_value"] < alpha).sum())
    low, high = clopper_pearson(successes, trials, level)
    return PowerResult(test=tuple(test_names), method=method, alpha=alpha, level=level,
                       power=successes / trials if trials else float("nan"), lower=low, upper=high,
                       successes=successes, nsim=len(runs), n_failed=len(runs) - trials,
                       n_singular=int(runs.loc[ok, "singular"].sum()), runs=runs, seconds=seconds)


_MAX_NSIM = 10 ** 6


def _check_common(nsim, alpha, level) -> None:
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or nsim < 1:
        raise BayesLMMError(f"nsim must be a whole number of at least 1, got {nsim!r}")
    if nsim > _MAX_NSIM:  # the task list alone would not fit in memory (10**12 hung or raised MemoryError)
        raise BayesLMMError(f"nsim must be at most {_MAX_NSIM:,}, got {nsim!r}")
    for name, value in (("alpha", alpha), ("level", level)):
        if not (isinstance(value, (int, float)) and 0 < value < 1):
            raise BayesLMMError(f"{name} must be between 0 and 1, got {value!r}")


def power(fit, test, nsim: int = 1000, *, fixef: dict | None = None, varcorr: dict | None = None,
          sigma: float | None = None, method: str = "satterthwaite", alpha: float = 0.05,
          level: float = 0.95, random_seed=None, client=None, n_jobs: int | None = None,
          progressbar: bool = True) -> PowerResult:
    """Power of a test by simulation (simr's ``powerSim``).

    Parameters
    ----------
    fit : PointResult
        A REML or ML fit (``LMM(...).fit()``): its design (rows, groups, predictors) is
        kept; responses are simulated from it with new group effects.
    test : str or list of str
        The fixed-effect column(s) to test (lme4's names, e.g. ``"Days"``); several
        columns (a factor's) are tested jointly by ``"lrt"`` or ``"wald"``.
    nsim : int
        Number of simulated data sets.
    fixef : dict, optional
        Effect sizes to simulate at, by name (``{"Days": 5.0}``); others keep the fit's.
    varcorr : dict, optional
        ``{group: covariance matrix}`` of a bar's terms (a number for a one-term bar);
        others keep the fit's.
    sigma : float, optional
        Residual standard deviation (default: the fit's).
    method : {"satterthwaite", "wald", "lrt"}
        ``"satterthwaite"``: lmerTest's t test (needs ``fixef(ddf="satterthwaite")``);
        ``"wald"``: z test (chi-square for several columns) on the refit with the fit's
        method; ``"lrt"``: likelihood-ratio test of ML fits with and without the column(s).
    alpha : float
        Significance level of the test.
    level : float
        Confidence level of the interval of the power.
    random_seed : int, optional
        One seed: simulation ``i`` always gets the ``i``-th derived seed, so results do
        not depend on ``n_jobs`` or the Dask cluster.
    client : dask.distributed.Client, optional
        Run the simulations on this Dask cluster.
    n_jobs : int, optional
        Local worker processes (default: all CPUs; 1 runs in this process).
    progressbar : bool

    Returns
    -------
    PowerResult

    Examples
    --------
    >>> fit = blm.LMM("Reaction ~ Days + (Days | Subject)", sleep).fit()
    >>> blm.power(fit, "Days", nsim=200, fixef={"Days": 5.0}, method="wald", random_seed=1).power
    """
    _check_fit(fit)
    _check_common(nsim, alpha, level)
    key = _check_method(fit, method)
    beta, covs, s = _parameters(fit, fixef, varcorr, sigma)
    spec = _spec(fit, fit.design, beta, covs, s, test, key)
    start = time.perf_counter()
    outcomes = run_tasks(partial(_simulate_and_test, spec), range(nsim), random_seed=random_seed, client=client,
                         n_jobs=n_jobs, progressbar=progressbar, description="power simulations")
    names = [fit.design.fixed_names[j] for j in spec.test_columns]
    return _collect(outcomes, names, key, alpha, level, time.perf_counter() - start)


# ---------------------------------------------------------------- extend + curve
def _group_column(design: Design, along: str) -> str:
    for block in design.blocks:
        if block.group_vars == (along,):
            return along
    groups = sorted({var for block in design.blocks for var in block.group_vars})
    raise BayesLMMError(f"along={along!r} is not a grouping column of the model; its grouping columns are "
                        f"{', '.join(groups)}")


def extend(data: pd.DataFrame, along: str, n: int) -> pd.DataFrame:
    """The data with ``n`` levels of ``along`` (simr's ``extend(along=)``).

    The first ``n`` levels (in order of appearance) are kept when ``n`` is at most the
    number there is; otherwise new levels are added, level ``k`` a copy of the rows of
    level ``k mod J`` (the same within-level structure: predictors, other factors), named
    after the largest number plus ``k`` for a numeric column, or ``"<level>_<copy>"``.
    """
    if along not in data.columns:
        raise BayesLMMError(f"along={along!r} is not a column of the data")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise BayesLMMError(f"a design needs at least 2 levels of {along!r}, got {n!r}")
    values = data[along]
    levels = pd.unique(values.dropna())
    J = len(levels)
    if n <= J:
        return data[values.isin(levels[:n])].reset_index(drop=True)
    pieces = [data]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    top = values.max() if numeric else None
    by_level = {level: data[values == level] for level in levels}
    new_levels = []
    for k in range(J, n):
        source = levels[k % J]
        rows = by_level[source].copy()
        new = top + 1 + (k - J) if numeric else f"{source}_{k // J}"
        new_levels.append(new)
        rows[along] = new if not isinstance(values.dtype, pd.CategoricalDtype) else str(new)
        pieces.append(rows)
    if isinstance(values.dtype, pd.CategoricalDtype):
        data = data.copy()
        data[along] = data[along].cat.add_categories([str(v) for v in new_levels])
        pieces[0] = data
        for piece in pieces[1:]:
            piece[along] = pd.Categorical(piece[along], categories=data[along].cat.categories)
    return pd.concat(pieces, ignore_index=True)


@dataclass(frozen=True)
class PowerCurve:
    """Power at several sizes of a grouping factor (simr's ``powerCurve``).

    Attributes
    ----------
    along : str
    table : DataFrame
        One row per size: ``size``, ``nobs``, ``power``, ``lower``, ``upper``, ``nsim``,
        ``n_failed``, ``n_singular``.
    results : dict
        size -> :class:`PowerResult`.
    """

    along: str
    table: pd.DataFrame
    results: dict = field(repr=False)

    def plot(self, target: float = 0.8, ax=None):
        """Power against size with its confidence interval, and a line at ``target``."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
        else:
            fig = ax.figure
        t = self.table
        ax.errorbar(t["size"], t["power"], yerr=[t["power"] - t["lower"], t["upper"] - t["power"]],
                    fmt="o-", capsize=3, color="C0", label="power (95% CI)")
        ax.axhline(target, color="0.5", linestyle="--", linewidth=1, label=f"{target:.0%}")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"number of levels of {self.along}")
        ax.set_ylabel("power")
        first = next(iter(self.results.values()))
        ax.set_title(f"Power for {', '.join(first.test)} ({first.method}, {first.nsim} simulations each)")
        ax.legend(loc="lower right", frameon=False)
        fig.tight_layout()
        return fig


def power_curve(fit, test, along: str, sizes, nsim: int = 1000, *, fixef: dict | None = None,
                varcorr: dict | None = None, sigma: float | None = None, method: str = "satterthwaite",
                alpha: float = 0.05, level: float = 0.95, random_seed=None, client=None,
                n_jobs: int | None = None, progressbar: bool = True) -> PowerCurve:
    """Power at several numbers of levels of one grouping factor (simr's ``extend`` +
    ``powerCurve``).

    The fit's data are cut to, or extended to, each size with :func:`extend` (new
    subjects or items with the same within-level structure as the existing ones), and
    :func:`power` is run on each design with the same parameters; all simulations go to
    the executor at once. Arguments as in :func:`power`, plus

    Parameters
    ----------
    along : str
        A grouping column of the model (``"Subject"``).
    sizes : sequence of int
        Numbers of levels of ``along``.

    Returns
    -------
    PowerCurve
    """
    _check_fit(fit)
    _check_common(nsim, alpha, level)
    key = _check_method(fit, method)
    if isinstance(sizes, (str, dict)) or not np.iterable(sizes) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 2 <= s <= _MAX_NSIM for s in sizes):
        raise BayesLMMError(f"sizes must be a list of whole numbers of levels from 2 to {_MAX_NSIM:,}, got {sizes!r}")
    sizes = [int(s) for s in sizes]
    if not sizes or len(set(sizes)) != len(sizes):
        raise BayesLMMError(f"sizes must be distinct numbers of levels, got {sizes!r}")
    column = _group_column(fit.design, along)
    beta, covs, s = _parameters(fit, fixef, varcorr, sigma)
    specs = {}
    for size in sizes:
        data = extend(fit.design.data, column, size)
        design = build_design(fit.design.formula, data)
        if design.fixed_names != fit.design.fixed_names:
            raise BayesLMMError(f"with {size} levels of {along!r} the fixed effects change "
                                f"({', '.join(design.fixed_names)}); choose a larger size")
        specs[size] = _spec(fit, design, beta, covs, s, test, key)
    tasks = [(size, k) for size in sizes for k in range(nsim)]
    start = time.perf_counter()
    outcomes = run_tasks(partial(_simulate_and_test, specs), tasks, random_seed=random_seed, client=client,
                         n_jobs=n_jobs, progressbar=progressbar, description="power curve simulations")
    seconds = time.perf_counter() - start
    results, rows = {}, []
    names = [fit.design.fixed_names[j] for j in specs[sizes[0]].test_columns]
    for i, size in enumerate(sizes):
        part = outcomes[i * nsim:(i + 1) * nsim]
        res = _collect(part, names, key, alpha, level, sum(o.seconds for o in part))
        results[size] = res
        rows.append({"size": size, "nobs": specs[size].design.nobs, "power": res.power, "lower": res.lower,
                     "upper": res.upper, "nsim": res.nsim, "n_failed": res.n_failed,
                     "n_singular": res.n_singular})
    table = pd.DataFrame(rows)
    table.attrs["seconds"] = seconds
    return PowerCurve(along=along, table=table, results=results)
