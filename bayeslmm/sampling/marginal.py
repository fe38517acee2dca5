"""Stage 3d: the collapsed ("marginal") sampler: the group effects integrated out.

For a Gaussian mixed model whose bars all live within one top-level grouping factor
(one factor, several bars on it, or factors nested in it such as ``batch/cask``), the
rows of different top-level groups are independent given ``(beta, Sigma, sigma)``::

    y_j ~ N(X_j beta, sigma^2 (I + Z_j Lt Lt' Z_j')),    Lt = Lambda / sigma (lme4's theta)

so with per-group sufficient statistics computed once (``n_j, y_j'y_j, X_j'y_j,
X_j'X_j, Z_j'y_j, Z_j'X_j, Z_j'Z_j``) the log density and its gradient cost
O(J m^3) for J groups of m effects, whatever the number of rows:

    M_j = I + Lt' Z_j'Z_j Lt,  c_j = Z_j'(y_j - X_j beta),  w_j = M_j^{-1} Lt' c_j
    -2 log L = sum_j [ n_j log(2 pi sigma^2) + log|M_j| + (r_j'r_j - c_j' Lt w_j) / sigma^2 ]

NUTS (nutpie) samples beta (centered predictors), log sds, the correlations (Stan's
canonical partial-correlation transform, LKJ prior) and log sigma under exactly the
priors of the full model. The density and its analytic gradient are generic compiled
kernels (:mod:`bayeslmm.sampling.marginal_kernels`, numba with an on-disk cache) that read the
model from one packed array, so a new model needs no compilation (numba compiles them
once per installation, ~10 s), and nutpie calls them through a C pointer, so chains run
in parallel. Afterwards the group effects are drawn exactly from their conditional
Gaussian given each posterior draw, and the pointwise log-likelihood is computed given
those draws, so the result has the full model's layout.

Every group has its own number of effects m_j (no padding to the largest group), so the
cost is sum_j m_j^3 per gradient.

Crossed factors (Penicillin, InstEval) do not split by group. With few group effects in
all (Penicillin: 30) the whole data set is one joint group, integrated out exactly in the
same way (one m x m factorization per gradient); with many (InstEval: 4,114) the
partially collapsed sampler of :mod:`bayeslmm.sampling.crossed` integrates one factor out given
the others' effects, and ``LMM.sample(parametrization="auto")`` picks between them and
the full model by estimated cost (:func:`bayeslmm.sampling.crossed.plan_sampler`).

Entry points: :func:`sample_marginal` (a Design, as ``LMM.sample`` uses it) and, for data
too large for a DataFrame, ``MarginalProblem.from_arrays`` + :func:`run_marginal` +
:func:`posterior_dataset` (the same sampler, see benchmarks/bench_marginal.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import priors as P
from ..errors import FitError
from ..frontend.design import Design, parent_levels
from ..results.posterior import _MAX_LOGLIK_CELLS
from .bayes import bar_labels, correlation_pairs

# ---------------------------------------------------------------- structure
#: Crossed factors do not split by group; the whole data set is then one joint group whose
#: m effects are integrated out together (one m x m factorization per gradient), as long as
#: m and the dense rows x m per-row design stay small. The cost grows as m^3: measured at
#: default settings (4 x 1000 draws, two crossed intercepts), m = 30 (Penicillin) 1.3 s,
#: m = 60 10 s, m = 100 36 s at 8x the full model's ESS per second (whose R-hat was 1.04),
#: m = 120 ~2 min. Larger crossed designs (InstEval's 4,114 effects) use the full model.
MAX_JOINT_EFFECTS = 100
MAX_JOINT_CELLS = 5_000_000


def _nested_in_top(design: Design) -> tuple[bool, str]:
    """Whether every bar is the top grouping factor or nested in it: (ok, reason)."""
    top = _top_block(design)
    for block in design.blocks:
        if not block.nested_in(top):
            return False, f"'{block.group}' is crossed with '{top.group}' (not nested in it)"
    return True, f"every bar lies within '{top.group}'"


def marginal_supported(design: Design) -> tuple[bool, str]:
    """Whether the collapsed sampler applies: (ok, reason). It does where every bar is the
    top grouping factor or nested in it (the likelihood splits by top-level group), and for
    crossed factors with at most ``MAX_JOINT_EFFECTS`` group effects in all (one joint group)."""
    if not design.blocks:
        return False, "the model has no random-effect term"
    nested, reason = _nested_in_top(design)
    if nested:
        return True, reason
    m = _joint_width(design)
    if m <= MAX_JOINT_EFFECTS and design.nobs * m <= MAX_JOINT_CELLS:
        return True, f"{reason}: its {m} group effects are integrated out jointly"
    return False, (f"{reason}, so the likelihood does not split by group, and its {m} group effects are too "
                   f"many to integrate out jointly (up to {MAX_JOINT_EFFECTS}); parametrization='crossed' integrates "
                   "one factor out given the others")


def _joint_width(design: Design) -> int:
    return sum(block.n_levels * block.n_terms for block in design.blocks)


def _top_block(design: Design):
    return min(design.blocks, key=lambda block: block.n_levels)


def group_slots(bars, top_codes: np.ndarray, J: int):
    """Where each level's effects sit when the effects of bars nested in a top grouping
    (``top_codes``, J groups) are stored group by group: ``bars`` are ``(codes, n_levels, q)``
    in storage order. Returns ``(used, offsets, groups)``: the number of effects per group
    (J,), per bar each level's first slot within its group and each level's group."""
    used = np.zeros(J, dtype=np.int64)
    offsets, groups = [], []
    for codes, n_levels, q in bars:
        level_group = parent_levels(codes, n_levels, top_codes)
        # each level's rank among its group's levels, in level order
        order = np.argsort(level_group, kind="stable")
        counts = np.bincount(level_group, minlength=J)
        rank = np.empty(n_levels, dtype=np.int64)
        rank[order] = np.arange(n_levels) - np.repeat(np.cumsum(counts) - counts, counts)
        offsets.append(used[level_group] + rank * q)
        used += counts * q
        groups.append(level_group)
    return used, offsets, groups


@dataclass(frozen=True)
class GroupLayout:
    """Where each bar's effects sit inside a top-level group's effect vector. Every group
    has its own size m_j (no padding to the largest group: one school with 300 classes
    among small ones costs its own 300^3, not 300^3 per school)."""

    n_groups: int
    group_m: np.ndarray             # (J,) effects per group
    group_of_row: np.ndarray        # (n,) top-level group of each row
    offsets: tuple[np.ndarray, ...]  # per bar: (levels,) first slot of each level's q effects
    group_of_level: tuple[np.ndarray, ...]  # per bar: (levels,) top-level group of each level

    @property
    def width(self) -> int:
        """The largest group's number of effects (work space of the kernels)."""
        return int(self.group_m.max())

    @classmethod
    def from_design(cls, design: Design) -> "GroupLayout":
        if _nested_in_top(design)[0]:
            top_codes, J = _top_block(design).codes, _top_block(design).n_levels
        else:  # crossed: one joint group
            top_codes, J = np.zeros(design.nobs, dtype=np.int64), 1
        used, offsets, groups = group_slots([(b.codes, b.n_levels, b.n_terms) for b in design.blocks], top_codes, J)
        return cls(J, used, np.array(top_codes, dtype=np.int64), tuple(offsets), tuple(groups))

    def vector_offsets(self) -> np.ndarray:
        """(J,) first slot of each group in the compact effect vector (length sum m_j)."""
        return np.concatenate([[0], np.cumsum(self.group_m)[:-1]]).astype(np.int64)


@dataclass(frozen=True)
class SufficientStats:
    """Per-group cross-products (standardized response, centered predictors); the Z parts
    compact, group after group, each group its own size m_j."""

    n: np.ndarray    # (J,)
    yy: np.ndarray   # (J,)
    Xy: np.ndarray   # (J, p)
    XX: np.ndarray   # (J, p, p)
    m: np.ndarray    # (J,) effects per group
    Zy: np.ndarray   # (sum m_j,)
    ZX: np.ndarray   # (sum m_j * p,)
    ZZ: np.ndarray   # (sum m_j^2,) row-major m_j x m_j blocks

    @staticmethod
    def _fixed(y, X, group, n_groups):
        def by_group(weights):
            return np.bincount(group, weights=weights, minlength=n_groups)

        p = X.shape[1]
        n = np.bincount(group, minlength=n_groups).astype(float)
        yy = by_group(y * y)
        Xy = np.stack([by_group(X[:, a] * y) for a in range(p)], axis=1) if p else np.zeros((n_groups, 0))
        XX = np.empty((n_groups, p, p))
        for a in range(p):
            for b in range(a, p):
                XX[:, a, b] = XX[:, b, a] = by_group(X[:, a] * X[:, b])
        return n, yy, Xy, XX

    @classmethod
    def from_arrays(cls, y: np.ndarray, X: np.ndarray, Z: np.ndarray, group: np.ndarray,
                    n_groups: int) -> "SufficientStats":
        """One level per group with model columns ``Z`` (n, q): one weighted ``bincount``
        per entry (any n; as fast as a compiled pass, without its compilation)."""
        group = np.asarray(group, dtype=np.int64)

        def by_group(weights):
            return np.bincount(group, weights=weights, minlength=n_groups)

        p, q = X.shape[1], Z.shape[1]
        n, yy, Xy, XX = cls._fixed(y, X, group, n_groups)
        Zy = np.stack([by_group(Z[:, a] * y) for a in range(q)], axis=1)
        ZZ = np.empty((n_groups, q, q))
        for a in range(q):
            for b in range(a, q):
                ZZ[:, a, b] = ZZ[:, b, a] = by_group(Z[:, a] * Z[:, b])
        ZX = np.empty((n_groups, q, p))
        for a in range(q):
            for b in range(p):
                ZX[:, a, b] = by_group(Z[:, a] * X[:, b])
        return cls(n, yy, Xy, XX, np.full(n_groups, q), Zy.ravel(), ZX.ravel(), ZZ.ravel())

    @classmethod
    def from_layout(cls, y: np.ndarray, X: np.ndarray, design: Design, layout: GroupLayout) -> "SufficientStats":
        """Any layout of bars within groups, from each row's slots (compiled pass)."""
        from .crossed_kernels import group_stats

        J, m = layout.n_groups, layout.group_m
        group = layout.group_of_row
        n, yy, Xy, XX = cls._fixed(y, X, group, J)
        order = np.argsort(group, kind="stable")
        ptr = np.searchsorted(group[order], np.arange(J + 1)).astype(np.int64)
        slots = np.ascontiguousarray(np.column_stack([off[b.codes[order]] for off, b in
                                                      zip(layout.offsets, design.blocks)]).astype(np.int64))
        zi = np.ascontiguousarray(np.column_stack([b.X[order] for b in design.blocks]).astype(float))
        qs = np.array([b.n_terms for b in design.blocks], dtype=np.int64)
        soff = np.concatenate([[0], np.cumsum(m * m)[:-1]]).astype(np.int64)
        voff = layout.vector_offsets()
        S, Zy, ZX = np.zeros(int((m * m).sum())), np.zeros(int(m.sum())), np.zeros(int(m.sum()) * X.shape[1])
        group_stats(ptr, slots, zi, qs, m.astype(np.int64), soff, voff, np.ascontiguousarray(y[order]),
                    np.ascontiguousarray(X[order]), S, Zy, ZX)
        return cls(n, yy, Xy, XX, m, Zy, ZX, S)


# ---------------------------------------------------------------- the problem
@dataclass(frozen=True)
class Bar:
    """One bar as the collapsed sampler sees it: its terms and where its effects sit."""

    label: str
    terms: tuple[str, ...]
    correlated: bool
    levels: tuple
    group_of_level: np.ndarray   # (levels,) top-level group of each level
    offset: np.ndarray           # (levels,) slot of the level's first effect in its group

    @property
    def q(self) -> int:
        return len(self.terms)

    @property
    def n_cpc(self) -> int:
        return self.q * (self.q - 1) // 2 if self.correlated and self.q > 1 else 0


@dataclass(frozen=True)
class MarginalProblem:
    """Everything the collapsed sampler needs, without the rows: the bars, the scaling
    (centered predictors, standardized response) and the per-group sufficient statistics.

    Build it with :meth:`from_design`, or for one grouping factor straight from arrays
    with :meth:`from_arrays` (no DataFrame, for very large data).
    """

    fixed_names: tuple[str, ...]
    intercept: int | None
    means: np.ndarray        # (p,) column means removed from X (0 for the intercept)
    y_center: float
    y_scale: float
    bars: tuple[Bar, ...]
    n_groups: int
    width: int
    stats: SufficientStats

    @property
    def p(self) -> int:
        return len(self.fixed_names)

    @property
    def ndim(self) -> int:
        return self.p + sum(bar.q + bar.n_cpc for bar in self.bars) + 1

    @classmethod
    def from_design(cls, design: Design, layout: GroupLayout | None = None) -> "MarginalProblem":
        layout = layout or GroupLayout.from_design(design)
        bars = tuple(Bar(label, tuple(block.terms), bool(block.correlated), tuple(block.levels), groups, offset)
                     for label, block, groups, offset in zip(bar_labels(design), design.blocks,
                                                             layout.group_of_level, layout.offsets))
        return cls._build(design.y, design.X, (design, layout), layout.group_of_row,
                          tuple(design.fixed_names), bars, layout.n_groups, layout.width)

    @classmethod
    def from_arrays(cls, y: np.ndarray, X: np.ndarray, Z: np.ndarray, group: np.ndarray,
                    fixed_names, terms, correlated: bool = True, group_name: str = "g",
                    levels=None) -> "MarginalProblem":
        """One bar ``(terms | group_name)`` with model columns ``Z`` (n, q), rows coded by
        ``group`` (0..J-1), fixed-effects matrix ``X`` (n, p) named ``fixed_names``."""
        group = np.asarray(group, dtype=np.int64)
        J = int(group.max()) + 1
        q = Z.shape[1]
        levels = tuple(range(J)) if levels is None else tuple(levels)
        bar = Bar(group_name, tuple(terms), bool(correlated), levels, np.arange(J), np.zeros(J, dtype=np.int64))
        return cls._build(np.asarray(y, float), np.asarray(X, float), np.asarray(Z, float), group,
                          tuple(fixed_names), (bar,), J, q)

    @classmethod
    def _build(cls, y, X, Z, group, fixed_names, bars, n_groups, width):
        intercept = fixed_names.index("(Intercept)") if "(Intercept)" in fixed_names else None
        # centering only where an intercept absorbs it (brms's centered-intercept prior)
        means = X.mean(axis=0) if intercept is not None else np.zeros(X.shape[1])
        if intercept is not None:
            means[intercept] = 0.0
        y_center = float(y.mean()) if intercept is not None else 0.0
        y_scale = float(np.std(y)) or 1.0
        Xc = np.ascontiguousarray(X - means)
        ys = (y - y_center) / y_scale
        if isinstance(Z, tuple):  # (design, layout): any layout of bars within groups
            stats = SufficientStats.from_layout(ys, Xc, *Z)
        else:
            stats = SufficientStats.from_arrays(ys, Xc, Z, group, n_groups)
        return cls(fixed_names, intercept, means, y_center, y_scale, bars, n_groups, width, stats)

    # -- parameter layout of the unconstrained vector
    def slices(self) -> tuple[list[slice], list[slice], int]:
        """(log-sd slice per bar, partial-correlation slice per bar, index of log sigma)."""
        start = self.p
        sd, cpc = [], []
        for bar in self.bars:
            sd.append(slice(start, start + bar.q))
            start += bar.q
            cpc.append(slice(start, start + bar.n_cpc))
            start += bar.n_cpc
        return sd, cpc, start

    def vector_offsets(self) -> np.ndarray:
        """(J,) first slot of each group in the compact effect vector."""
        return np.concatenate([[0], np.cumsum(self.stats.m)[:-1]]).astype(np.int64)

    # -- packing for the compiled kernels
    def pack(self, prior_set: P.PriorSet) -> np.ndarray:
        """The float64 array the kernels read (layout in :mod:`bayeslmm.sampling.marginal_kernels`)."""
        from . import marginal_kernels as K
        st = self.stats
        p, J, m = self.p, self.n_groups, self.width
        sd_sl, cpc_sl, sigma_index = self.slices()
        fixed, bars, sd_priors = prior_rows(self, prior_set, sd_sl, cpc_sl)
        # one entry (bar, first slot) per level, listed group by group
        ent_group = np.concatenate([bar.group_of_level for bar in self.bars])
        ent_bar = np.concatenate([np.full(len(bar.levels), k) for k, bar in enumerate(self.bars)])
        ent_off = np.concatenate([bar.offset for bar in self.bars])
        order = np.argsort(ent_group, kind="stable")
        gptr = np.searchsorted(ent_group[order], np.arange(J + 1))
        entries = np.column_stack([ent_bar[order], ent_off[order]])
        sections = [
            st.Xy.sum(axis=0), st.XX.sum(axis=0).ravel(), np.ravel(fixed),
            np.ravel(_prior_code(prior_set.sigma) + [0.0]),
            np.ravel(bars), np.ravel(sd_priors), gptr, entries.ravel(), st.m,
            np.concatenate([[0], np.cumsum(st.m * st.m)[:-1]]), self.vector_offsets(), st.ZZ, st.Zy, st.ZX]
        header = np.zeros(K.H_SIZE)
        single = (len(self.bars) == 1 and m == self.bars[0].q <= 2 and len(self.bars[0].levels) == J
                  and np.array_equal(self.bars[0].group_of_level, np.arange(J)))  # the kernels' fast path
        header[[K.H_P, K.H_K, K.H_J, K.H_NDIM, K.H_MMAX, K.H_SIGMA, K.H_N, K.H_YY, K.H_SCALE, K.H_SINGLE]] = [
            p, len(self.bars), J, self.ndim, m, sigma_index, st.n.sum(), st.yy.sum(), self.y_scale, float(single)]
        position = K.H_SIZE
        for slot, section in zip(range(K.H_XY, K.H_ZX + 1), sections):
            header[slot] = position
            position += section.size
        header[K.H_LEN] = position
        return np.concatenate([header] + [np.asarray(s, dtype=float).ravel() for s in sections])

    # -- from unconstrained draws to the reported quantities
    def expand(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Reported parameters of draws ``x`` (S, ndim): ``beta`` (S, p), ``sigma`` (S,),
        ``sd_L`` (S, q), ``cor_L`` (S, pairs)."""
        from .marginal_kernels import cpc_cholesky

        s = self.y_scale
        sd_sl, cpc_sl, sigma_index = self.slices()
        beta = s * x[:, :self.p]
        if self.intercept is not None:
            beta[:, self.intercept] = self.y_center + s * x[:, self.intercept] - beta @ self.means
        out = {"beta": beta, "sigma": s * np.exp(x[:, sigma_index])}
        for bar, sd, cpc in zip(self.bars, sd_sl, cpc_sl):
            out[f"sd_{bar.label}"] = s * np.exp(x[:, sd])
            if bar.n_cpc:
                L = np.zeros((bar.q, bar.q))
                pairs = correlation_pairs(bar.terms)
                cor = np.empty((len(x), len(pairs)))
                for i, row in enumerate(x[:, cpc]):
                    cpc_cholesky(np.ascontiguousarray(row), bar.q, L)
                    R = L @ L.T
                    cor[i] = [R[a, b] for a, b, _ in pairs]
                out[f"cor_{bar.label}"] = cor
        return out

    def draw_effects(self, x: np.ndarray, blob: np.ndarray, rng: np.random.Generator,
                     chunk: int = 256) -> np.ndarray:
        """Exact draws of all group effects given draws ``x`` (S, ndim), user's scale, in
        the compact group-slot layout (S, sum m_j); :meth:`split_effects` gives the bars."""
        from . import marginal_kernels as K
        kernel = K.draw_effects_single if blob[K.H_SINGLE] == 1.0 else K.draw_effects
        S, size = len(x), int(self.stats.m.sum())
        flat = np.empty((S, size))
        for start in range(0, S, chunk):
            part = np.ascontiguousarray(x[start:start + chunk])
            normals = rng.standard_normal((len(part), size))
            kernel(part, blob, normals, flat[start:start + chunk])
        flat *= self.y_scale
        return flat

    def split_effects(self, flat: np.ndarray) -> list[np.ndarray]:
        """Per bar (S, levels, q) from the group-slot layout."""
        if len(self.bars) == 1 and self.width == self.bars[0].q and len(self.bars[0].levels) == self.n_groups \
                and np.array_equal(self.bars[0].group_of_level, np.arange(self.n_groups)):
            return [flat.reshape(len(flat), self.n_groups, self.width)]  # one level per group: a view
        out = []
        for bar in self.bars:
            idx = (self.vector_offsets()[bar.group_of_level] + bar.offset)[:, None] + np.arange(bar.q)[None, :]
            out.append(flat[:, idx])
        return out

    def initial_point(self, rng: np.random.Generator) -> np.ndarray:
        """Least squares for beta, sds of half the response sd, jittered."""
        st = self.stats
        XX, Xy = st.XX.sum(axis=0), st.Xy.sum(axis=0)
        try:
            beta = np.linalg.solve(XX, Xy)
            se = np.sqrt(np.clip(np.diag(np.linalg.inv(XX)), 0, None))
        except np.linalg.LinAlgError:
            beta, se = np.zeros(self.p), np.ones(self.p)
        x = rng.uniform(-0.5, 0.5, size=self.ndim)
        x[:self.p] = beta + x[:self.p] * se
        sd_sl, _, sigma_index = self.slices()
        for sl in sd_sl:
            x[sl] += np.log(0.5)
        x[sigma_index] += np.log(0.5)
        return x


def prior_rows(problem, prior_set: P.PriorSet, sd_sl, cpc_sl) -> tuple[list, list, list]:
    """The kernels' prior rows of a collapsed or partially collapsed problem: one per fixed
    effect (its prior code and center), one per bar (terms, correlations, where its sds and
    CPCs sit, the LKJ eta, its first sd prior) and one per sd."""
    fixed = []
    for a, name in enumerate(problem.fixed_names):
        if a == problem.intercept:
            fixed.append(_prior_code(prior_set.intercept) + [problem.y_center])
        else:
            fixed.append(_prior_code(prior_set.fixed[name]) + [0.0])
    bars, sd_priors = [], []
    for k, bar in enumerate(problem.bars):
        eta = prior_set.cor[k].eta if k in prior_set.cor else 1.0
        bars.append([bar.q, bar.n_cpc, sd_sl[k].start, cpc_sl[k].start, eta, len(sd_priors)])
        sd_priors.extend(_prior_code(prior_set.sd[(k, term)]) + [0.0] for term in bar.terms)
    return fixed, bars, sd_priors


def _prior_code(prior: P.Prior) -> list[float]:
    """(code, a, b, c) of a prior for the kernels."""
    from . import marginal_kernels as K
    table = {P.Flat: (K.FLAT, ()), P.Normal: (K.NORMAL, ("mu", "sigma")),
             P.StudentT: (K.STUDENT_T, ("nu", "mu", "sigma")), P.HalfStudentT: (K.HALF_STUDENT_T, ("nu", "sigma")),
             P.HalfNormal: (K.HALF_NORMAL, ("sigma",)), P.Exponential: (K.EXPONENTIAL, ("lam",)),
             P.Gamma: (K.GAMMA, ("alpha", "beta")), P.LogNormal: (K.LOGNORMAL, ("mu", "sigma"))}
    if type(prior) not in table:
        raise P.PriorError(f"the marginal sampler has no density for {prior}")
    code, names = table[type(prior)]
    values = [float(getattr(prior, name)) for name in names]
    return [float(code)] + values + [0.0] * (3 - len(values))


# ---------------------------------------------------------------- sampling
@dataclass(frozen=True)
class MarginalDraws:
    """Raw output of :func:`run_marginal`: unconstrained draws (chain, draw, ndim), the
    sampler statistics, the packed model, the seed and the wall time of sampling."""

    x: np.ndarray
    sample_stats: object
    blob: np.ndarray
    seed: int
    seconds: float


def run_marginal(problem: MarginalProblem, prior_set: P.PriorSet, draws: int = 1000, tune: int = 1000,
                 chains: int = 4, random_seed: int | None = None, target_accept: float = 0.9,
                 progressbar: bool = True, **kwargs) -> MarginalDraws:
    """NUTS (nutpie) on the collapsed posterior of ``problem``; the low-level entry that
    :func:`sample_marginal` and the large-data benchmark share."""
    from . import marginal_kernels as K
    blob = problem.pack(prior_set)
    logp_cfunc, expand_cfunc = K.nutpie_functions(bool(blob[K.H_SINGLE]))
    return run_nutpie(blob, problem.ndim, logp_cfunc, expand_cfunc, problem.initial_point, draws=draws, tune=tune,
                      chains=chains, random_seed=random_seed, target_accept=target_accept,
                      progressbar=progressbar, **kwargs)


def run_nutpie(blob: np.ndarray, ndim: int, logp_cfunc, expand_cfunc, initial_point, draws: int = 1000,
               tune: int = 1000, chains: int = 4, random_seed: int | None = None, target_accept: float = 0.9,
               progressbar: bool = True, **kwargs) -> MarginalDraws:
    """nutpie on a density given as numba C callbacks over one packed array ``blob``
    (shared by the collapsed sampler and the partially collapsed one of
    :mod:`bayeslmm.sampling.crossed`); ``initial_point(rng)`` gives a start."""
    import nutpie
    from nutpie.compile_pymc import CompiledPyMCModel

    compiled = CompiledPyMCModel(
        _n_dim=ndim, dims={}, _coords={}, _shapes={"_x": (ndim,)},
        compiled_logp_func=logp_cfunc, compiled_expand_func=expand_cfunc,
        initial_point_func=lambda seed: initial_point(np.random.default_rng(seed)),
        shared_data={}, shared_var_keys={}, user_data=blob, n_expanded=ndim,
        shape_info=(["_x"], [slice(0, ndim)], [(ndim,)]), logp_func=None, expand_func=None)
    seed = int(np.random.default_rng().integers(2**31)) if random_seed is None else int(random_seed)
    start = time.perf_counter()
    raw = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed, progress_bar=progressbar,
                        target_accept=target_accept, save_warmup=False, **kwargs)
    seconds = time.perf_counter() - start
    stats = raw["sample_stats"].to_dataset()  # nutpie returns an xarray.DataTree
    stats = stats.drop_vars([v for v in stats.data_vars if v.startswith("unconstrained")])
    return MarginalDraws(raw["posterior"]["_x"].to_numpy(), stats, blob, seed, seconds)


def posterior_dataset(problem: MarginalProblem, run: MarginalDraws, effects: np.ndarray | None = None):
    """The contract's posterior variables (xarray.Dataset) from the unconstrained draws
    and, if given, the group effects from :meth:`MarginalProblem.draw_effects`."""
    import xarray as xr

    n_chain, n_draw, ndim = run.x.shape
    flat = run.x.reshape(-1, ndim)
    values = problem.expand(flat)
    shape = (n_chain, n_draw)
    data = {"beta": (("chain", "draw", "term"), values["beta"].reshape(shape + (problem.p,))),
            "sigma": (("chain", "draw"), values["sigma"].reshape(shape))}
    coords = {"chain": np.arange(n_chain), "draw": np.arange(n_draw), "term": list(problem.fixed_names)}
    per_bar = problem.split_effects(effects) if effects is not None else None
    for k, bar in enumerate(problem.bars):
        L = bar.label
        coords[f"{L}__term"] = list(bar.terms)
        data[f"sd_{L}"] = (("chain", "draw", f"{L}__term"), values[f"sd_{L}"].reshape(shape + (bar.q,)))
        if bar.n_cpc:
            coords[f"{L}__pair"] = [name for _, _, name in correlation_pairs(bar.terms)]
            data[f"cor_{L}"] = (("chain", "draw", f"{L}__pair"), values[f"cor_{L}"].reshape(shape + (bar.n_cpc,)))
        if per_bar is not None:
            coords[f"{L}__level"] = list(bar.levels)
            data[f"r_{L}"] = (("chain", "draw", f"{L}__level", f"{L}__term"),
                              per_bar[k].reshape(shape + (len(bar.levels), bar.q)))
    return xr.Dataset(data, coords=coords)


def sample_marginal(design: Design, prior_set: P.PriorSet, draws: int = 1000, tune: int = 1000, chains: int = 4,
                    random_seed: int | None = None, target_accept: float = 0.9, progressbar: bool = True,
                    reason: str | None = None, **kwargs):
    """Sample the collapsed model with nutpie, then draw the group effects exactly.

    Parameters
    ----------
    design : Design
        Every bar within one top-level factor, or crossed factors with few group effects
        in all (see :func:`marginal_supported`).
    prior_set : PriorSet
        From :func:`bayeslmm.priors.resolve_priors`; the same priors as the full model.
    draws, tune, chains, random_seed, target_accept, progressbar
        As in :meth:`bayeslmm.LMM.sample`; ``**kwargs`` go to ``nutpie.sample``.
    reason : str, optional
        Why this sampler was chosen, kept in ``idata.posterior.attrs["sampler_choice"]``.

    Returns
    -------
    PosteriorResult
        In the full model's layout, with ``parametrization = "marginal"`` in the attrs;
        the same ``random_seed`` gives identical draws.

    Raises
    ------
    FitError
        If the design has crossed factors with too many group effects to integrate out jointly.
    """
    from .crossed import pointwise_log_likelihood

    ok, reason = marginal_supported(design)
    if not ok:
        raise FitError(f"the marginal parametrization does not apply: {reason}")
    layout = GroupLayout.from_design(design)
    problem = MarginalProblem.from_design(design, layout)
    run = run_marginal(problem, prior_set, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                       target_accept=target_accept, progressbar=progressbar, **kwargs)
    flat = run.x.reshape(-1, problem.ndim)
    effects = problem.draw_effects(flat, run.blob, np.random.default_rng([run.seed, 2]))
    return build_result(design, prior_set, posterior_dataset(problem, run, effects), run, "marginal",
                        {"sampling_seconds": run.seconds, **({"sampler_choice": reason} if reason else {})},
                        lambda posterior: pointwise_log_likelihood(design, posterior, problem.split_effects(effects)))


def build_result(design: Design, prior_set: P.PriorSet, posterior, run: MarginalDraws, parametrization: str,
                 attrs: dict, loglik):
    """The PosteriorResult of a collapsed or partially collapsed run: the posterior
    variables (xarray.Dataset), the sampler statistics, ``attrs`` on the posterior, and the
    pointwise log-likelihood ``loglik(posterior)`` (an xarray.Dataset) if it is not too large."""
    from ..results.posterior import PosteriorResult, add_group, to_inference_data

    raw = {"posterior": posterior, "sample_stats": run.sample_stats}
    idata = to_inference_data(design, raw, prior_set, sampler="nutpie", parametrization=parametrization,
                              loglik=False)
    idata.posterior.attrs.update(attrs)
    n_chain, n_draw = run.x.shape[:2]
    if n_chain * n_draw * design.nobs <= _MAX_LOGLIK_CELLS:
        add_group(idata, "log_likelihood", loglik(idata.posterior))
    return PosteriorResult(design=design, idata=idata, prior_set=prior_set)
