"""Data larger than memory: a model fitted from per-group sufficient statistics that one
Dask reduction computes, so that only O(groups x terms^2) numbers reach this process.

What is supported: one grouping factor, one bar (``(1 + x | g)`` or ``(1 + x || g)``, any
columns inside it), any fixed part (numeric and categorical predictors, interactions,
the transforms the formula evaluator knows), a response that is a column. For that model
the rows of different groups are independent, and both back ends need only, per group j,
``Z_j'Z_j, Z_j'X_j, Z_j'y_j`` and, over all rows, ``X'X, X'y, y'y, n`` (REML/ML:
:meth:`bayeslmm.fitting.reml.ProfiledDeviance.from_cross_products`; the collapsed sampler:
:class:`bayeslmm.sampling.marginal.MarginalProblem`, which is built from the same numbers).
Crossed or nested factors and several bars are refused with a clear error: their
cross-products couple the levels of different factors (a dense block of size levels x
levels for crossed factors), which is not a per-group reduction.

Two passes over the data, each one ``dask.compute``:

1. levels: the distinct values of the grouping column and of every text/categorical
   column the formula uses, the rows with missing values, and a small sample of rows
   (each partition's first rows and one row per level of each categorical column); the
   formula is then evaluated on that sample with :func:`bayeslmm.frontend.design.build_design`,
   which gives the column names, the aliasing decision and the evaluators;
2. statistics: every partition evaluates the fixed and random columns with those
   evaluators (``Design.new_fixed_matrix``, ``RandomBlock.new_columns``: the same
   evaluation as in memory), and returns, for the groups it holds, the row count, the sums
   and the cross-products of ``[X - a, Z, y - c]`` (shifted by the sample's means, so that
   centering later loses no digits); partial results are added in a tree on the workers.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd

from ..errors import BayesLMMError, DataError, FormulaError
from ..frontend.design import Design, build_design
from ..frontend.formula import parse_formula

__all__ = ["GroupStatistics", "OutOfCoreDesign", "OutOfCoreLMM", "is_dask_frame", "read_parquet", "scan"]

_SAMPLE_ROWS = 200          # first rows of each partition kept for the evaluation sample
_SAMPLE_GROUPS = 20         # and up to 3 rows of each of its first groups


def is_dask_frame(data) -> bool:
    """Whether ``data`` is a ``dask.dataframe.DataFrame`` (without importing dask)."""
    module = type(data).__module__ or ""
    return module.split(".")[0] in ("dask", "dask_expr") and hasattr(data, "to_delayed")


def read_parquet(path, **kwargs):
    """``dask.dataframe.read_parquet`` with a clear error where dask is not installed."""
    dd = _dask_dataframe()
    with _quiet_dask():
        return dd.read_parquet(path, **kwargs)


@contextlib.contextmanager
def _quiet_dask():
    """dask 2026.8's Parquet code calls pandas 3.1's deprecated ``inplace=`` (a
    Pandas4Warning from dask's own lines, nothing the user can change)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The inplace keyword", module=r"dask\.")
        yield


def _dask_dataframe():
    try:
        import dask.dataframe as dd
    except ImportError as exc:
        raise BayesLMMError("data larger than memory need dask: pip install 'bayeslmm[dask]'") from exc
    return dd


# ---------------------------------------------------------------- the statistics
@dataclass(frozen=True)
class GroupStatistics:
    """Per-group sums and cross-products of ``W = [X - shift_x, Z, y - shift_y]``.

    Attributes
    ----------
    n : ndarray (J,)
        Rows of each group.
    sums : ndarray (J, d)
        Column sums of ``W`` in each group (d = p + q + 1).
    products : ndarray (J, d, d)
        ``W_j' W_j``.
    shift : ndarray (d,)
        What was subtracted from the columns (0 for Z and for constant columns of X).
    p, q : int
        Fixed-effect and random-effect columns.
    """

    n: np.ndarray
    sums: np.ndarray
    products: np.ndarray
    shift: np.ndarray
    p: int
    q: int

    @property
    def n_groups(self) -> int:
        return len(self.n)

    @property
    def nobs(self) -> int:
        return int(self.n.sum())

    def _parts(self):
        p, q = self.p, self.q
        ix, iz, iy = slice(0, p), slice(p, p + q), p + q
        return ix, iz, iy

    def _centers(self, intercept: int | None) -> tuple[np.ndarray, float, float]:
        """Where the back ends center the fixed columns and the response: at their means
        when the model has an intercept (column ``intercept``, itself not centered), else
        at 0; and the response's population sd."""
        my, sy, mx, _, _, _ = self.column_moments()
        if intercept is None:
            return np.zeros(self.p), 0.0, float(sy)
        x_center = mx.copy()
        x_center[intercept] = 0.0
        return x_center, float(my), float(sy)

    def cross_products(self, intercept: int | None):
        """The cross-products the profiled deviance consumes, with the fixed columns (but
        the intercept's) and the response centered at their means when the model has an
        intercept (column ``intercept``), as :class:`~bayeslmm.fitting.reml.ProfiledDeviance`
        centers them in memory."""
        from ..fitting.reml import CrossProducts

        ix, iz, iy = self._parts()
        x_center, y_center, _ = self._centers(intercept)
        # products about the target center m from products about the shift a, d = a - m:
        # sum (w - m)(w - m)' = P + S d' + d S' + n d d'  (Z is not centered: m = 0 there)
        m = np.zeros(self.p + self.q + 1)
        m[ix], m[iy] = x_center, y_center
        d = self.shift - m
        P, S, n = self.products, self.sums, self.n
        tot_P, tot_S, N = P.sum(axis=0), S.sum(axis=0), float(n.sum())

        def centered(rows: np.ndarray, cols: np.ndarray, per_group: bool) -> np.ndarray:
            dr, dc = d[rows], d[cols]
            if per_group:
                return (P[:, rows][:, :, cols] + S[:, rows][:, :, None] * dc[None, None, :]
                        + dr[None, :, None] * S[:, cols][:, None, :] + n[:, None, None] * np.outer(dr, dc)[None])
            return (tot_P[np.ix_(rows, cols)] + np.outer(tot_S[rows], dc) + np.outer(dr, tot_S[cols])
                    + N * np.outer(dr, dc))

        full = np.arange(self.p + self.q + 1)
        xi, zi, yi = full[ix], full[iz], np.array([iy])
        ZtZ = centered(zi, zi, True)
        ZtX = centered(zi, xi, True)
        Zty = centered(zi, yi, True)[:, :, 0]
        XtX = centered(xi, xi, False)
        Xty = centered(xi, yi, False)[:, 0]
        yty = float(centered(yi, yi, False)[0, 0])
        z_rms = np.sqrt(np.diag(centered(zi, zi, False)) / N)
        return CrossProducts(ZtZ=ZtZ, ZtX=ZtX, Zty=Zty, XtX=XtX, Xty=Xty, yty=yty, n=int(N),
                             x_center=x_center, y_center=y_center, z_rms=z_rms)

    def column_moments(self):
        """(mean of y, population sd of y, mean and population sd of every column of X and Z)."""
        ix, iz, iy = self._parts()
        tot_P, tot_S, N = self.products.sum(axis=0), self.sums.sum(axis=0), float(self.n.sum())
        mean_w = tot_S / N
        var_w = np.clip(np.diag(tot_P) / N - mean_w**2, 0.0, None)
        mean = mean_w + self.shift
        sd = np.sqrt(var_w)
        return mean[iy], sd[iy], mean[ix], sd[ix], mean[iz], sd[iz]

    def marginal_stats(self, intercept: int | None):
        """What :meth:`MarginalProblem._build` computes from the rows: (means removed from X,
        y center, y scale, :class:`~bayeslmm.sampling.marginal.SufficientStats`)."""
        from ..sampling.marginal import SufficientStats

        ix, iz, iy = self._parts()
        means, y_center, sy = self._centers(intercept)
        y_scale = float(sy) or 1.0
        # Xc = (X - a) - d, ys = ((y - c) - e) / s
        d = means - self.shift[ix]
        e = y_center - self.shift[iy]
        P, S, n = self.products, self.sums, self.n
        sXs, sZ, sys_ = S[:, ix], S[:, iz], S[:, iy]
        XX = (P[:, ix, ix] - sXs[:, :, None] * d[None, None, :] - d[None, :, None] * sXs[:, None, :]
              + n[:, None, None] * np.outer(d, d)[None])
        Xy = (P[:, ix, iy] - e * sXs - d[None, :] * sys_[:, None] + n[:, None] * d[None, :] * e) / y_scale
        yy = (P[:, iy, iy] - 2.0 * e * sys_ + n * e * e) / y_scale**2
        Zy = (P[:, iz, iy] - e * sZ) / y_scale
        ZX = P[:, iz, ix] - sZ[:, :, None] * d[None, None, :]
        ZZ = P[:, iz, iz]
        if "m" in {f.name for f in fields(SufficientStats)}:
            # the compact layout (bayeslmm.sampling.crossed's): group sizes m_j, blocks flattened group by group
            return means, y_center, y_scale, SufficientStats(
                n=n.astype(float), yy=yy, Xy=Xy, XX=XX, m=np.full(len(n), self.q), Zy=Zy.ravel(), ZX=ZX.ravel(),
                ZZ=ZZ.ravel())
        return means, y_center, y_scale, SufficientStats(n.astype(float), yy, Xy, XX, Zy, ZX, ZZ)


def _partition_statistics(part: pd.DataFrame, plan: _Plan):
    """Pass 2 on one partition: (group codes present, n, sums, products) of its groups."""
    part = part.dropna(subset=plan.used)
    if len(part) == 0:
        d = plan.p + plan.q + 1
        return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, d)), np.zeros((0, d, d))
    X = plan.design.new_fixed_matrix(part)
    Z = plan.design.blocks[0].new_columns(part)
    y = part[plan.response].to_numpy(dtype=float)
    codes = plan.codes(part[plan.group])
    # one contiguous row per column: the products below read columns, not strided rows
    W = np.vstack([X.T, Z.T, y[None, :]])
    W -= plan.shift[:, None]
    # codes are 0..J-1: the groups present and a local index by counting, not sorting
    counts = np.bincount(codes, minlength=len(plan.levels))
    present = np.flatnonzero(counts)
    G = len(present)
    position = np.zeros(len(counts), dtype=np.int64)
    position[present] = np.arange(G)
    local = position[codes]
    n = counts[present].astype(float)
    d = W.shape[0]
    sums = np.empty((G, d))
    products = np.empty((G, d, d))
    scratch = np.empty(W.shape[1])
    for a in range(d):
        sums[:, a] = np.bincount(local, weights=W[a], minlength=G)
        for b in range(a, d):
            np.multiply(W[a], W[b], out=scratch)
            products[:, a, b] = products[:, b, a] = np.bincount(local, weights=scratch, minlength=G)
    return present, n, sums, products


def _merge(*parts):
    """Add partial statistics of possibly overlapping groups."""
    codes = np.unique(np.concatenate([p[0] for p in parts]))
    d = parts[0][2].shape[1]
    n = np.zeros(len(codes))
    sums = np.zeros((len(codes), d))
    products = np.zeros((len(codes), d, d))
    for c, k, s, pr in parts:
        where = np.searchsorted(codes, c)
        n[where] += k  # codes are unique within a part
        sums[where] += s
        products[where] += pr
    return codes, n, sums, products


def _tree_reduce(items, delayed, width: int = 8):
    while len(items) > 1:
        items = [delayed(_merge)(*items[i:i + width]) for i in range(0, len(items), width)]
    return items[0]


# ---------------------------------------------------------------- pass 1: levels and a sample
def _used_columns(text: str, columns) -> list[str]:
    """Columns named in the formula text (whole names; `quoted` ones too)."""
    out = []
    for column in columns:
        name = str(column)
        if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", text) or f"`{name}`" in text:
            out.append(name)
    return out


def _is_text(dtype) -> bool:
    """Columns the formula evaluator codes as factors (their levels must all be in the sample)."""
    return pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype)


def _scan_partition(part: pd.DataFrame, used: list[str], group: str, text_columns: list[str]):
    n_rows = len(part)
    part = part.dropna(subset=used)
    sample = [part.head(_SAMPLE_ROWS)]
    first_groups = pd.unique(part[group])[:_SAMPLE_GROUPS]
    sample.append(part[part[group].isin(first_groups)].groupby(group, sort=False, observed=True).head(3))
    for column in text_columns:  # one row of every level, so that the sample codes them all
        sample.append(part.drop_duplicates(subset=[column]))
    sample = pd.concat(sample).loc[lambda f: ~f.index.duplicated()] if len(sample) > 1 else sample[0]
    return {"n_rows": n_rows, "n_dropped": n_rows - len(part), "groups": pd.unique(part[group]),
            "sample": sample[used]}


def _sorted_levels(values: np.ndarray, dtype) -> np.ndarray:
    """lme4's order of a grouping factor's levels: a Categorical's order, numbers
    numerically, text alphabetically (as :func:`bayeslmm.frontend.design.build_design`)."""
    values = pd.Series(pd.unique(pd.Series(values)))
    if isinstance(dtype, pd.CategoricalDtype):
        return np.array([c for c in dtype.categories if c in set(values)], dtype=object)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        order = np.argsort(numeric.to_numpy(dtype=float), kind="stable")
    else:
        order = np.argsort(values.astype(str).to_numpy(), kind="stable")
    return values.to_numpy()[order]


@dataclass(frozen=True)
class _Plan:
    """What every partition needs for pass 2 (picklable, small)."""

    design: Design          # evaluators from the sample, with the global levels
    used: list
    response: str
    group: str
    levels: pd.Index        # the grouping column's values in lme4's order
    shift: np.ndarray
    p: int
    q: int

    def codes(self, values: pd.Series) -> np.ndarray:
        codes = self.levels.get_indexer(values)
        if (codes < 0).any():  # a level the first pass did not see: cannot happen on the same data
            raise DataError(f"grouping column '{self.group}' has a level not seen in the first pass "
                            f"({values[codes < 0].iloc[0]!r}): did the data change between passes?")
        return codes


# ---------------------------------------------------------------- the design without rows
@dataclass(frozen=True)
class OutOfCoreDesign(Design):
    """A :class:`~bayeslmm.frontend.design.Design` whose rows stayed in the Dask dataframe: ``y``,
    ``X`` and the blocks' ``X``/``codes`` are empty; the names, levels, evaluators and the
    number of rows are those of the full data; ``statistics`` holds what the back ends need."""

    n_rows: int = 0
    statistics: GroupStatistics | None = field(default=None, repr=False)

    @property
    def nobs(self) -> int:
        return self.n_rows

    def cross_products(self):
        """The statistics as :class:`~bayeslmm.fitting.reml.CrossProducts` (what the
        inference back end reads in place of rows)."""
        return self.statistics.cross_products(_intercept(self))


def _check_supported(parsed) -> str:
    """Refuse what per-group statistics cannot fit; return the response column."""
    terms = parsed.random
    if len(terms) != 1:
        bars = ", ".join(t.text for t in terms)
        raise FormulaError(f"out of core, the model may have one random-effect term (one grouping factor); "
                           f"this formula has {len(terms)}: {bars}. Crossed or nested factors and several bars "
                           "on one factor do not reduce to per-group statistics; fit them in memory")
    term = terms[0]
    if len(term.group_vars) != 1:
        raise FormulaError(f"out of core, the grouping factor must be one column, not {term.group!r} in "
                           f"{term.text} (position {term.position}); make the combination a column first, "
                           f"e.g. ddf['{'_'.join(term.group_vars)}'] = ...")
    response = parsed.response.strip().strip("`")
    if not re.fullmatch(r"[^\W\d][\w.]*|`[^`]+`", parsed.response.strip()):
        raise FormulaError(f"out of core, the response must be a column, not the expression "
                           f"{parsed.response!r}; add the transformed column to the data first "
                           f"(e.g. ddf = ddf.assign(log_y=np.log(ddf.y))), then use it")
    return response


def scan(formula: str, data, client=None) -> OutOfCoreDesign:
    """Two passes over a Dask dataframe: the design (names, levels, evaluators) and the
    per-group statistics. ``client`` (a ``dask.distributed.Client``) runs the passes on its
    cluster; by default the current Dask scheduler runs them."""
    import dask

    parsed = parse_formula(formula)
    response = _check_supported(parsed)
    term = parsed.random[0]
    group = term.group_vars[0]
    columns = [str(c) for c in data.columns]
    used = _used_columns(parsed.text, columns)
    for name in [response, group]:
        if name not in columns:
            raise DataError(f"column '{name}' of the formula is not in the data; it has {', '.join(columns[:12])}")
    dtypes = data.dtypes
    text_columns = [c for c in used if c != group and _is_text(dtypes[c])]

    compute = client.compute if client is not None else None
    parts = data[used].to_delayed()
    scans = [dask.delayed(_scan_partition)(part, used, group, text_columns) for part in parts]
    results = _compute(scans, compute)
    n_rows = sum(r["n_rows"] for r in results)
    n_dropped = sum(r["n_dropped"] for r in results)
    if n_rows == n_dropped:
        raise DataError(f"every one of the {n_rows} rows has a missing value in: {', '.join(used)}")
    if n_dropped:
        warnings.warn(f"dropped {n_dropped} of {n_rows} rows with missing values in the columns of the formula",
                      UserWarning, stacklevel=3)
    levels = _sorted_levels(np.concatenate([r["groups"] for r in results]), dtypes[group])
    if len(levels) < 2:
        raise DataError(f"grouping factor '{group}' has only one level ({levels[0]!r}); a random effect needs "
                        "at least two groups")
    sample = pd.concat([r["sample"] for r in results], ignore_index=True)
    for column in text_columns:
        if isinstance(dtypes[column], pd.CategoricalDtype) \
                and not isinstance(sample[column].dtype, pd.CategoricalDtype):
            sample[column] = pd.Categorical(sample[column])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="dropped .* rows with missing values")
        evaluated = build_design(parsed, sample)
    block = evaluated.blocks[0]
    p, q = evaluated.n_fixed, block.n_terms

    # shift the fixed columns and y by the sample's means (constant columns stay)
    shift_x = np.where(np.ptp(evaluated.X, axis=0) > 0, evaluated.X.mean(axis=0), 0.0)
    shift = np.concatenate([shift_x, np.zeros(q), [float(np.mean(evaluated.y))]])
    plan = _Plan(design=evaluated, used=used, response=response, group=group, levels=pd.Index(levels),
                 shift=shift, p=p, q=q)
    plan_d = dask.delayed(plan, pure=True)
    partials = [dask.delayed(_partition_statistics)(part, plan_d) for part in parts]
    codes, n, sums, products = _compute([_tree_reduce(partials, dask.delayed)], compute)[0]
    J = len(levels)
    if len(codes) != J:  # every level has a row after dropping missing values
        missing = levels[np.setdiff1d(np.arange(J), codes)][:3]
        raise DataError(f"grouping factor '{group}' has levels whose rows all have missing values: "
                        f"{', '.join(map(repr, missing))}")
    stats = GroupStatistics(n=n, sums=sums, products=products, shift=shift, p=p, q=q)
    return _design_without_rows(evaluated, block, levels, stats, n_dropped)


def _compute(items, compute):
    import dask

    with _quiet_dask():
        if compute is None:
            return list(dask.compute(*items))
        return [future.result() for future in compute(items)]


def _level_labels(levels: np.ndarray) -> tuple[str, ...]:
    """Level names as :func:`bayeslmm.frontend.design.build_design` prints them (R's as.character)."""
    frame = pd.DataFrame({"g": pd.Series(levels, dtype=object if levels.dtype == object else levels.dtype)})
    out = []
    for value in frame["g"]:
        out.append(f"{value:.15g}" if isinstance(value, (float, np.floating)) else str(value))
    return tuple(out)


def _design_without_rows(evaluated: Design, block, levels, stats: GroupStatistics, n_dropped: int):
    n_obs = stats.nobs
    p, q = stats.p, stats.q
    if p >= n_obs:
        raise DataError(f"the fixed part has {p} coefficients for {n_obs} observations")
    if len(levels) >= n_obs:
        raise DataError(f"grouping factor '{block.group}' has {len(levels)} levels for {n_obs} observations: "
                        "every group needs replicates")
    empty_block = replace(block, X=np.empty((0, q)), codes=np.empty(0, dtype=np.int64),
                          levels=_level_labels(levels))
    return OutOfCoreDesign(formula=evaluated.formula, response=evaluated.response, y=np.empty(0),
                           X=np.empty((0, p)), fixed_names=evaluated.fixed_names, blocks=(empty_block,),
                           data=evaluated.data.iloc[:0], n_dropped=n_dropped, aliased=evaluated.aliased,
                           _fixed_evaluator=evaluated._fixed_evaluator,
                           _fixed_all_names=evaluated._fixed_all_names, n_rows=n_obs, statistics=stats)


# ---------------------------------------------------------------- the back ends
def _intercept(design) -> int | None:
    """The position of the intercept among the fixed columns (None without one)."""
    names = list(design.fixed_names)
    return names.index("(Intercept)") if "(Intercept)" in names else None


#: Verbs of a fit that read the rows (fitted values, residuals, the variance of X beta).
ROW_VERBS = ("fitted_draws", "icc", "r2", "predict", "pooling", "glance", "augment", "ppc", "check_residuals",
             "plot_icc", "plot_shrinkage", "plot_groups", "loo")


def _needs_rows(name: str):
    def refuse(self, *args, **kwargs):
        raise BayesLMMError(f"{name}() needs the rows, which stay in the Dask dataframe out of core; "
                            "fixef, anova, contest, vcov, varcorr, ranef, coef, tidy and summary work from "
                            "the statistics")
    refuse.__name__ = name
    refuse.__doc__ = f"Not available out of core: {name}() reads the rows."
    return refuse


def _out_of_core_result(result_type):
    """A subclass of a result type whose row-reading verbs say so. Everything that reads only
    cross-products works as in memory: fixef with Satterthwaite or Kenward-Roger df, anova,
    contest, vcov, varcorr, ranef, coef, tidy and the summary (without scaled residuals)."""
    namespace = {name: _needs_rows(name) for name in ROW_VERBS}
    namespace["__module__"] = __name__
    return type(f"OutOfCore{result_type.__name__}", (result_type,), namespace)


def fit_statistics(design: OutOfCoreDesign, reml: bool = True):
    """REML or ML from the statistics: lme4's profiled deviance, as ``LMM.fit``."""
    from ..fitting.reml import ProfiledDeviance, optimize_profiled, point_result

    deviance = ProfiledDeviance.from_cross_products(design, design.statistics.cross_products(_intercept(design)),
                                                    reml=reml)
    try:
        np.linalg.cholesky(deviance.Axx[:-1, :-1])
    except np.linalg.LinAlgError:
        raise DataError(f"the fixed-effect columns ({', '.join(design.fixed_names)}) are linearly dependent in "
                        "the full data (the sample that named them was not); drop one") from None
    theta, opt = optimize_profiled(deviance)
    result = point_result(deviance, theta, opt, method="reml" if reml else "ml")
    return _out_of_core_result(type(result))(**{f.name: getattr(result, f.name) for f in fields(result)})


def moment_design(design: OutOfCoreDesign) -> Design:
    """A two-row stand-in with the full data's column means and population sds (rows
    ``mean -/+ sd``), for code that reads only those moments of the rows: the default
    priors of :func:`bayeslmm.priors.resolve_priors` (scaled as brms scales them)."""
    my, sy, mx, sx, mz, sz = design.statistics.column_moments()
    pm = np.array([-1.0, 1.0])
    block = design.blocks[0]
    two = replace(block, X=mz[None, :] + pm[:, None] * sz[None, :], codes=np.array([0, 1]))
    return Design(formula=design.formula, response=design.response, y=my + pm * sy,
                  X=mx[None, :] + pm[:, None] * sx[None, :], fixed_names=design.fixed_names, blocks=(two,),
                  data=design.data)


def resolve_priors(design: OutOfCoreDesign, priors: dict | None):
    """The user's priors over the defaults, which come from the full data's moments."""
    from ..priors import resolve_priors as resolve

    return resolve(moment_design(design), priors)


#: Above this many numbers (draws x groups x terms) the group effects are not drawn by default
#: (100,000 groups x 2 terms x 4,000 draws would be 6.4 GB).
MAX_EFFECT_CELLS = 50_000_000


def sample_statistics(design: OutOfCoreDesign, prior_set, draws: int = 1000, tune: int = 1000, chains: int = 4,
                      random_seed=None, target_accept: float = 0.9, progressbar: bool = True,
                      group_effects: bool | None = None):
    """The collapsed (marginal) posterior from the statistics: the same sampler, the same
    packed model as ``LMM.sample`` in memory; the group effects are drawn exactly when
    ``group_effects`` is True (default: when draws x groups x terms is at most
    ``MAX_EFFECT_CELLS``; otherwise ``ranef()`` is not available and the attrs say so)."""
    import xarray as xr

    from ..results.posterior import PosteriorResult
    from ..sampling.bayes import bar_labels
    from ..sampling.marginal import Bar, MarginalProblem, posterior_dataset, run_marginal

    stats = design.statistics
    names = tuple(design.fixed_names)
    intercept = names.index("(Intercept)") if "(Intercept)" in names else None
    means, y_center, y_scale, suff = stats.marginal_stats(intercept)
    block = design.blocks[0]
    J = block.n_levels
    bar = Bar(bar_labels(design)[0], tuple(block.terms), bool(block.correlated), tuple(block.levels),
              np.arange(J), np.zeros(J, dtype=np.int64))
    problem = MarginalProblem(names, intercept, means, y_center, y_scale, (bar,), J, block.n_terms, suff)
    run = run_marginal(problem, prior_set, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                       target_accept=target_accept, progressbar=progressbar)
    flat = run.x.reshape(-1, problem.ndim)
    if group_effects is None:
        group_effects = len(flat) * J * block.n_terms <= MAX_EFFECT_CELLS
    effects = problem.draw_effects(flat, run.blob, np.random.default_rng([run.seed, 2])) if group_effects else None
    posterior = posterior_dataset(problem, run, effects)
    if effects is None:
        posterior.attrs["group_effects"] = (f"not drawn: {len(flat)} draws x {J} groups x {block.n_terms} terms; "
                                            "pass group_effects=True to draw them")
    posterior.attrs.update({"formula": design.formula.text, "sampler": "nutpie", "parametrization": "marginal",
                            "priors": prior_set.describe(design), "sampling_seconds": run.seconds,
                            "out_of_core": 1, "nobs": design.nobs})
    # no observed_data or log_likelihood group: they would hold every row
    tree = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": run.sample_stats})
    return PosteriorResult(design=design, idata=tree, prior_set=prior_set)


# ---------------------------------------------------------------- the model
class OutOfCoreLMM:
    """``LMM(formula, dask_dataframe)``: the model of a Dask dataframe, fitted from per-group
    statistics (one bar on one grouping factor; see :mod:`bayeslmm.scale.outofcore`).

    ``blm.LMM`` returns one when its data are a Dask dataframe; ``LMM.from_parquet`` reads
    Parquet files into one. ``fit(method="reml" | "ml")`` and ``sample()`` (the collapsed
    sampler) work as in memory; the results report everything that does not need the rows
    (fixef, varcorr, ranef, coef, loglik, AIC/BIC, posterior summaries), not residuals.
    """

    def __init__(self, formula: str, data, priors: dict | None = None, client=None):
        self.parsed = parse_formula(formula)
        self.design: OutOfCoreDesign = scan(formula, data, client=client)
        self.priors = priors

    @property
    def formula(self) -> str:
        return self.parsed.text

    def fit(self, method: str = "reml"):
        """REML or ML point estimates (``"map"`` needs the rows and is not available out of core)."""
        key = str(method).lower()
        if key not in ("reml", "ml"):
            raise BayesLMMError(f"out of core, fit(method=...) is 'reml' or 'ml', not {method!r}")
        return fit_statistics(self.design, reml=(key == "reml"))

    def resolved_priors(self):
        return resolve_priors(self.design, self.priors)

    def prior_summary(self) -> pd.DataFrame:
        return self.resolved_priors().table(self.design)

    def sample(self, draws: int = 1000, tune: int = 1000, chains: int = 4, random_seed: int | None = None,
               sampler: str = "nutpie", target_accept: float = 0.9, progressbar: bool = True,
               parametrization: str = "auto", group_effects: bool | None = None, **kwargs):
        """The posterior with the collapsed sampler (``parametrization="full"`` needs the rows);
        ``group_effects`` as in :func:`sample_statistics`."""
        if sampler != "nutpie" or str(parametrization).lower() == "full" or kwargs:
            raise BayesLMMError("out of core, sample() runs the collapsed sampler on nutpie only "
                                "(sampler='nutpie', parametrization='auto' or 'marginal', no sampler options)")
        return sample_statistics(self.design, self.resolved_priors(), draws=draws, tune=tune, chains=chains,
                                 random_seed=random_seed, target_accept=target_accept, progressbar=progressbar,
                                 group_effects=group_effects)

    def __repr__(self) -> str:
        block = self.design.blocks[0]
        return (f"LMM({self.formula!r}, out of core): {self.design.nobs} observations, "
                f"{self.design.n_fixed} fixed effects, groups: {block.group} ({block.n_levels})")
