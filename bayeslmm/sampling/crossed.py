"""Stage 3e: the partially collapsed sampler for crossed designs of any size.

Crossed factors (subjects x items, students x lecturers) do not split the likelihood by
group, so the collapsed sampler of :mod:`bayeslmm.sampling.marginal` can only integrate all their
effects out jointly: one dense m x m factorization per gradient and its inverse for the
gradient, ~m^3 flops (kb07 with 4x4 blocks: m = 352, ~3e7 flops; the joint collapse was
measured at 36 s for m = 100 and grows as m^3; InstEval's m = 4,114 is out of reach). A
sparse joint Cholesky does not help much here: in a fully crossed design (kb07: every
subject sees every item) the Schur complement of one factor is dense, and scipy has no
sparse Cholesky with the selected inverse the gradient needs.

What scales is to integrate out one factor *conditional on the others* ("marginalizing
random effects inside HMC", Lai, Domke & Sheldon 2024). Given the effects b_S of the
*sampled* bars, the rows split by the levels of the *top* factor T again, and the effects
of every bar nested in T (the *integrated* bars, b_I) integrate out group by group exactly
as in the collapsed sampler, on the residual r = y - X beta - Z_S b_S::

    p(y | beta, b_S, Sigma, sigma) = prod_j N(r_j | 0, sigma^2 (I + Z_j Lt Lt' Z_j'))

NUTS (nutpie, diagonal mass matrix, one extra trajectory doubling) samples beta, the
covariance parameters (the same transforms and priors as the collapsed and the full model),
log sigma and the sampled effects: non-centered (b_S = Lambda_S u_S, u_S ~ N(0, I)), with
the intercept centered where the bar's levels hold much data about it (:func:`centering`;
the whole bar when it has one term): per level (b_0, u_1, ..., u_q-1), b_0 ~ N(0, Lambda_00^2),
an exact change of variables with Jacobian 1 / Lambda_00. One gradient is one pass over the rows
for r and Z_I'r, the per-group algebra, and one pass for the gradient in beta and b_S:
O(n (p + q) + sum_j m_j^3), every group its own size m_j (measured CPU per gradient on a
loaded machine: kb07 4x4 68 us, kb07 maximal 150 us, InstEval ~1.5 ms). Afterwards b_I is
drawn exactly from its Gaussian conditional given each draw (beta, b_S, Sigma, sigma), so
the posterior is the same and has the full model's layout.

Which factor to integrate out is a cost question (:func:`crossed_cost`): the per-gradient
cost, the number of sampled dimensions, and how badly the sampled bars mix. Measured on
kb07 4x4: integrating the subjects and sampling the items (56 rows per item) gave min
bulk ESS 549 on the item covariance in 4,000 draws; integrating the items and sampling the
subjects (32 rows each) gave 1,152, in fewer leapfrog steps (15 vs 23). The more data a
non-centered sampled level holds, the worse it mixes, so the cost model charges for it.
``LMM.sample(parametrization="auto")`` compares this with the collapsed and the full
model (:func:`plan_sampler`) and says what it picked and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import priors as P
from ..errors import FitError
from ..frontend.design import Design, codes_nested, parent_levels
from .marginal import Bar, MarginalDraws, MarginalProblem, _prior_code, group_slots, prior_rows, run_nutpie


# ---------------------------------------------------------------- the problem
@dataclass(frozen=True)
class Factor:
    """One bar as arrays: grouping codes (n,), its model columns (n, q), its terms."""

    label: str
    codes: np.ndarray
    Z: np.ndarray
    terms: tuple[str, ...]
    correlated: bool
    levels: tuple

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def q(self) -> int:
        return len(self.terms)


def factors_of(design: Design) -> list[Factor]:
    from .bayes import bar_labels

    return [Factor(label, np.asarray(block.codes, dtype=np.int64), np.asarray(block.X, dtype=float),
                   tuple(block.terms), bool(block.correlated), tuple(block.levels))
            for label, block in zip(bar_labels(design), design.blocks)]


def nested_in(factors: list[Factor], top: int) -> list[int]:
    """Indices of the bars whose levels each lie within one level of bar ``top``."""
    return [k for k, f in enumerate(factors) if codes_nested(f.codes, factors[top].codes)]


def group_sizes(factors: list[Factor], top: int, integrated: list[int]) -> np.ndarray:
    """m_j: integrated effects per level of the top factor."""
    J = factors[top].n_levels
    m = np.zeros(J, dtype=np.int64)
    for k in integrated:
        f = factors[k]
        m += np.bincount(parent_levels(f.codes, f.n_levels, factors[top].codes), minlength=J) * f.q
    return m


@dataclass(frozen=True)
class CrossedProblem:
    """The partially collapsed model: bars ``integrated`` (nested in the top factor) are
    integrated out group by group given the ``sampled`` bars' effects, which NUTS samples
    non-centered. Exposes the parameter layout of :class:`~bayeslmm.sampling.marginal.MarginalProblem`
    for its first ``ndim_base`` coordinates, followed by u of each sampled bar (level-major)."""

    fixed_names: tuple[str, ...]
    intercept: int | None
    means: np.ndarray
    y_center: float
    y_scale: float
    bars: tuple[Bar, ...]
    top: int
    integrated: tuple[int, ...]
    sampled: tuple[int, ...]
    n_groups: int
    group_m: np.ndarray          # (J,) integrated effects per group
    centered: tuple[int, ...]    # per sampled bar: its leading terms sampled as b itself (0: all as u, b = Lambda u)
    order: np.ndarray            # rows sorted by group
    arrays: dict = field(repr=False)

    p = MarginalProblem.p
    slices = MarginalProblem.slices
    expand = MarginalProblem.expand

    @property
    def ndim_base(self) -> int:
        return self.p + sum(bar.q + bar.n_cpc for bar in self.bars) + 1

    @property
    def u_starts(self) -> list[int]:
        start, out = self.ndim_base, []
        for k in self.sampled:
            out.append(start)
            start += len(self.bars[k].levels) * self.bars[k].q
        return out

    @property
    def ndim(self) -> int:
        return self.ndim_base + sum(len(self.bars[k].levels) * self.bars[k].q for k in self.sampled)

    @classmethod
    def from_design(cls, design: Design, top: int | None = None, centered=None) -> "CrossedProblem":
        return cls.from_factors(design.y, design.X, tuple(design.fixed_names), factors_of(design), top, centered)

    @classmethod
    def from_factors(cls, y, X, fixed_names, factors: list[Factor], top: int | None = None,
                     centered=None) -> "CrossedProblem":
        """From arrays (no DataFrame: any number of rows the machine holds). ``top``: the
        bar whose factor is integrated out (with every bar nested in it); default: the one
        integrating the most effects. ``centered``: per sampled bar (or one value for all),
        how many of its leading terms NUTS samples centered (b itself; the rest as u, see
        :func:`~bayeslmm.sampling.crossed_kernels._sampled_effects`): an int, or True (all
        terms) / False (none); default :func:`centering`."""
        y, X = np.asarray(y, dtype=float), np.asarray(X, dtype=float)
        n = len(y)
        if top is None:
            top = best_top(factors, y, X.shape[1])
        integrated = nested_in(factors, top)
        sampled = [k for k in range(len(factors)) if k not in integrated]
        if centered is None:
            centered = [centering(factors[k], y, X) for k in sampled]
        elif isinstance(centered, (bool, np.bool_, int, np.integer)):
            centered = [centered] * len(sampled)
        if len(centered) != len(sampled):
            raise ValueError(f"centered has {len(centered)} entries for {len(sampled)} sampled bars")
        centered = tuple((factors[k].q if c else 0) if isinstance(c, (bool, np.bool_)) else min(int(c), factors[k].q)
                         for k, c in zip(sampled, centered))
        tf = factors[top]
        J = tf.n_levels
        # slots: each integrated level's first effect within its group
        used, slot_offsets, slot_groups = group_slots([(factors[k].codes, factors[k].n_levels, factors[k].q)
                                                       for k in integrated], tf.codes, J)
        offsets = dict(zip(integrated, slot_offsets))
        groups = dict(zip(integrated, slot_groups))
        bars = []
        for k, f in enumerate(factors):
            if k in integrated:
                bars.append(Bar(f.label, f.terms, f.correlated, f.levels, groups[k], offsets[k]))
            else:
                bars.append(Bar(f.label, f.terms, f.correlated, f.levels, np.zeros(f.n_levels, dtype=np.int64),
                                np.zeros(f.n_levels, dtype=np.int64)))
        intercept = fixed_names.index("(Intercept)") if "(Intercept)" in fixed_names else None
        means = X.mean(axis=0) if intercept is not None else np.zeros(X.shape[1])
        if intercept is not None:
            means[intercept] = 0.0
        y_center = float(y.mean()) if intercept is not None else 0.0
        y_scale = float(np.std(y)) or 1.0
        order = np.argsort(tf.codes, kind="stable")
        group = tf.codes[order]
        arrays = {
            "y": (y[order] - y_center) / y_scale,
            "X": np.ascontiguousarray((X - means)[order]),
            "slots": np.ascontiguousarray(np.column_stack([offsets[k][factors[k].codes[order]]
                                                           for k in integrated]).astype(np.int64)),
            "zi": np.ascontiguousarray(np.column_stack([factors[k].Z[order] for k in integrated])),
            "codes": (np.ascontiguousarray(np.column_stack([factors[k].codes[order] for k in sampled]))
                      if sampled else np.zeros((n, 0), dtype=np.int64)),
            "zs": (np.ascontiguousarray(np.column_stack([factors[k].Z[order] for k in sampled]))
                   if sampled else np.zeros((n, 0))),
            "group_ptr": np.searchsorted(group, np.arange(J + 1)).astype(np.int64),
        }
        return cls(tuple(fixed_names), intercept, means, y_center, y_scale, tuple(bars), top, tuple(integrated),
                   tuple(sampled), J, used, centered, order, arrays)

    # -- packing for the kernels
    def pack(self, prior_set: P.PriorSet) -> np.ndarray:
        from . import crossed_kernels as C
        from . import marginal_kernels as K
        a = self.arrays
        n, p, J = len(a["y"]), self.p, self.n_groups
        sd_sl, cpc_sl, sigma_index = self.slices()
        fixed, bar_rows, sd_priors = prior_rows(self, prior_set, sd_sl, cpc_sl)
        m = self.group_m
        soff = np.concatenate([[0], np.cumsum(m * m)[:-1]]).astype(np.int64)
        voff = np.concatenate([[0], np.cumsum(m)[:-1]]).astype(np.int64)
        S = np.zeros(int((m * m).sum()))
        qs = np.array([self.bars[k].q for k in self.integrated], dtype=np.int64)
        C.group_crossproducts(a["group_ptr"], a["slots"], a["zi"], qs, m, soff, S)
        ent_group = np.concatenate([self.bars[k].group_of_level for k in self.integrated])
        ent_bar = np.concatenate([np.full(len(self.bars[k].levels), k) for k in self.integrated])
        ent_off = np.concatenate([self.bars[k].offset for k in self.integrated])
        eorder = np.argsort(ent_group, kind="stable")
        gptr = np.searchsorted(ent_group[eorder], np.arange(J + 1))
        entries = np.column_stack([ent_bar[eorder], ent_off[eorder]])
        sbar, e0 = [], 0
        for k, u0, cen in zip(self.sampled, self.u_starts, self.centered):
            L = len(self.bars[k].levels)
            sbar.append([k, L, u0, e0, float(cen)])
            e0 += L * self.bars[k].q
        sections = {
            K.H_FPRI: np.ravel(fixed), K.H_SPRI: np.ravel(_prior_code(prior_set.sigma) + [0.0]),
            K.H_BARS: np.ravel(bar_rows), K.H_SDPRI: np.ravel(sd_priors),
            C.C_Y: a["y"], C.C_X: a["X"], C.C_ROWSLOT: voff[np.repeat(np.arange(J), np.diff(a["group_ptr"]))][:, None]
            + a["slots"], C.C_ZI: a["zi"], C.C_GROW: a["group_ptr"],
            C.C_GPTR: gptr, C.C_ENT: entries, C.C_GM: m, C.C_GSOFF: soff, C.C_GVOFF: voff, C.C_S: S,
            C.C_IBAR: np.array(self.integrated), C.C_SBAR: np.ravel(sbar), C.C_ZS: a["zs"],
            C.C_CODE: (np.array([row[3] for row in sbar], dtype=np.int64)[None, :]
                       + a["codes"] * np.array([self.bars[k].q for k in self.sampled], dtype=np.int64)[None, :])}
        header = np.zeros(C.C_SIZE)
        header[[K.H_P, K.H_K, K.H_NDIM, K.H_MMAX, K.H_SIGMA, K.H_N, K.H_SCALE]] = [
            p, len(self.bars), self.ndim, max(int(m.max()), 1), sigma_index, n, self.y_scale]
        header[[C.C_J, C.C_KI, C.C_KS, C.C_QI, C.C_QS, C.C_NEFF, C.C_NVEC]] = [
            J, len(self.integrated), len(self.sampled), a["zi"].shape[1], a["zs"].shape[1], max(e0, 1),
            max(int(m.sum()), 1)]
        position = C.C_SIZE
        parts = [header]
        for slot, section in sections.items():
            section = np.asarray(section, dtype=float).ravel()
            header[slot] = position
            position += section.size
            parts.append(section)
        header[K.H_LEN] = position
        return np.concatenate(parts)

    # -- the rest of the sampler's interface
    def initial_point(self, rng: np.random.Generator) -> np.ndarray:
        """Least squares for beta, sds of half the response sd, jittered; u_S near 0."""
        a = self.arrays
        XX, Xy = a["X"].T @ a["X"], a["X"].T @ a["y"]
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
        x[self.ndim_base:] *= 0.2
        return x

    def draw_effects(self, x: np.ndarray, blob: np.ndarray, rng: np.random.Generator,
                     chunk: int = 128) -> list[np.ndarray]:
        """Per bar (S, levels, q), user's scale: the integrated bars drawn exactly from their
        conditional given each draw ``x`` (S, ndim), the sampled bars from their u."""
        from . import crossed_kernels as C
        S = len(x)
        n_int, n_smp = int(self.group_m.sum()), int(blob[C.C_NEFF])
        flat_i = np.empty((S, n_int))
        flat_s = np.zeros((S, n_smp))
        for start in range(0, S, chunk):
            part = np.ascontiguousarray(x[start:start + chunk])
            normals = rng.standard_normal((len(part), n_int))
            C.crossed_draw(part, blob, normals, flat_i[start:start + chunk], flat_s[start:start + chunk])
        if not np.all(np.isfinite(flat_i)):
            raise FitError("a group's conditional precision was not positive definite while drawing the "
                           "integrated group effects")
        flat_i *= self.y_scale
        flat_s *= self.y_scale
        voff = np.concatenate([[0], np.cumsum(self.group_m)[:-1]])
        out, e0 = [], 0
        for k, bar in enumerate(self.bars):
            idx = np.arange(bar.q)[None, :]
            if k in self.integrated:
                out.append(flat_i[:, (voff[bar.group_of_level] + bar.offset)[:, None] + idx])
            else:
                L = len(bar.levels)
                out.append(flat_s[:, e0:e0 + L * bar.q].reshape(S, L, bar.q))
                e0 += L * bar.q
        return out

    def split_effects(self, per_bar: list[np.ndarray]) -> list[np.ndarray]:
        return per_bar


#: A sampled bar's intercept is centered when the data pin its levels down more than the
#: prior does: rows per level x (sd / sigma)^2 above this (one-way ANOVA estimate of the
#: variance ratio on the least-squares residuals of y on the fixed effects). There the
#: non-centered form mixes badly, and the centered form where the data are weak
#: (Papaspiliopoulos, Roberts & Skold 2007). A one-term bar is then centered as a whole; a bar
#: with slopes only in its intercept (the slopes' sds are usually small: kb07 4x4 with the
#: items fully centered gave 13 divergences and ESS 105, non-centered 0 and 549), see
#: :func:`~bayeslmm.sampling.crossed_kernels._sampled_effects`.
CENTER_INFORMATION = 2.0


def centering(factor: Factor, y: np.ndarray, X: np.ndarray | None = None) -> int:
    """How many leading terms of this bar NUTS should sample centered (see CENTER_INFORMATION):
    all of a one-term intercept bar, the intercept of a bar with slopes, or none."""
    if not np.allclose(factor.Z[:, 0], 1.0):
        return 0
    if X is not None and X.shape[1]:
        y = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    n = np.bincount(factor.codes, minlength=factor.n_levels).astype(float)
    used = n > 0
    sums = np.bincount(factor.codes, weights=y, minlength=factor.n_levels)
    means = sums[used] / n[used]
    within = (np.sum(y * y) - np.sum(sums[used] ** 2 / n[used])) / max(len(y) - used.sum(), 1)
    n_bar = len(y) / used.sum()
    between = max(np.var(means, ddof=1) - within / n_bar, 0.0) if used.sum() > 1 else 0.0
    return int(n_bar * between / max(within, 1e-300) >= CENTER_INFORMATION)


# ---------------------------------------------------------------- the plan
#: Rough costs (seconds) for the estimates of :func:`estimate_costs`, measured with the
#: kernels on this kind of machine: a row's pass (residual + gradient) per column of X and
#: Z, one flop of the per-group dense algebra (~3 m^3 per group per gradient; the joint
#: collapse of m = 100 crossed effects took 36 s, m = 30 1.3 s), the fixed cost of a run
#: (start, kernel cache load) and the full PyMC model's compilation.
ROW_COST = 1.5e-9
#: ... while the rows' arrays stay in cache; the partially collapsed kernel's gathers over
#: rows that do not (InstEval: 73,421 rows x 5 columns) measured 2.7 ms per gradient, ~7e-9
#: per row and column, where kb07 (1,789 x 16) measured ~2e-9: its estimate was 4x short
#: (105 s against 448 s measured on an idle machine)
OUT_OF_CACHE_ROW_COST = 7e-9
CACHE_CELLS = 1e5
FLOP_COST = 0.5e-9
RUN_COST = 2.0
FULL_COMPILE = 25.0
#: Draws per effective draw of the slowest parameter, measured: the collapsed sampler
#: ~1 (exam_rs: ESS 4896 of 4000), the full model ~8 (exam_rs: ESS 495 of 4000). The
#: partially collapsed one mixes worse the more data each level of a non-centered sampled
#: bar holds (the data then fix b = Lambda u, and u and the sds trade off): kb07 4x4 with
#: the items sampled (56 rows per item) ESS 610 of 4000, with the subjects sampled (32
#: rows per subject) ESS 1152; modelled as 2 + rows per level / 10 per such bar.
ESS_PENALTY = {"marginal": 1.0, "crossed": 2.0, "full": 8.0, "marginal_mh": 2.0}
ROWS_PER_PENALTY = 10.0
#: The collapsed sampler mixes best: it is kept while its estimate stays below this.
AFFORDABLE = 20.0
#: The independence sampler (designs of scalar bars): one dense Cholesky of the non-first
#: bars' block per iteration at LAPACK speed (InstEval's 1,142: ~20 ms, ~4e-11 s per flop),
#: a pass over the pairs of the sparse rank update, ~0.3 ms of Python per iteration; its
#: draws per effective draw ~2 (acceptance 0.6-0.7 on Penicillin and InstEval), more with
#: more parameters (the proposal fits worse): 2 x max(1, d / 6).
DENSE_FLOP_COST = 4e-11
MH_ITERATION = 3e-4


def crossed_penalty(factors: list[Factor], sampled: list[int], y: np.ndarray) -> float:
    """Estimated draws per effective draw of the partially collapsed sampler when the bars
    ``sampled`` are sampled (see ESS_PENALTY)."""
    penalty = ESS_PENALTY["crossed"]
    for k in sampled:
        if centering(factors[k], y) < factors[k].q:  # some terms non-centered
            penalty += len(factors[k].codes) / factors[k].n_levels / ROWS_PER_PENALTY
    return penalty


def crossed_cost(factors: list[Factor], top: int, y: np.ndarray, p: int, iters: float) -> float:
    """Estimated seconds (at equal ESS) of the partially collapsed sampler integrating out
    ``top``'s factor (and every bar nested in it)."""
    n = len(y)
    integ = nested_in(factors, top)
    sampled = [k for k in range(len(factors)) if k not in integ]
    m = group_sizes(factors, top, integ).astype(float)
    n_hyper = p + 1 + sum(f.q + f.q * (f.q - 1) // 2 for f in factors)
    n_sampled = sum(factors[k].q * factors[k].n_levels for k in sampled)
    cells = n * (p + sum(f.q for f in factors))
    row_cost = ROW_COST if cells <= CACHE_CELLS else OUT_OF_CACHE_ROW_COST
    per = 3.0 * FLOP_COST * float((m ** 3).sum()) + row_cost * cells
    return RUN_COST + crossed_penalty(factors, sampled, y) * iters * _steps(n_hyper + n_sampled) * per


def best_top(factors: list[Factor], y: np.ndarray, p: int = 1) -> int:
    """The bar whose factor is cheapest to integrate out by :func:`crossed_cost`."""
    return min(range(len(factors)), key=lambda t: crossed_cost(factors, t, y, p, 4000.0))


@dataclass(frozen=True)
class Plan:
    """How ``LMM.sample(parametrization="auto")`` samples, and why."""

    parametrization: str            # "marginal", "crossed", "marginal_mh" or "full"
    top: int | None                 # for "crossed": the integrated factor's bar
    reason: str
    costs: dict                     # estimated seconds per candidate (ESS-weighted)


def _steps(ndim: int) -> float:
    """Leapfrog steps per NUTS iteration: grows about as ndim^(1/4) on well-scaled targets."""
    return 4.0 * max(ndim, 1) ** 0.25


def estimate_costs(design: Design, draws: int = 1000, tune: int = 1000, chains: int = 4) -> dict:
    """Estimated wall seconds of each applicable sampler on ``design``, weighted by its draws
    per effective draw (:data:`ESS_PENALTY`), so that they compare at equal ESS: keys
    ``"marginal"``, ``"crossed:<bar>"`` (one per choice of integrated factor),
    ``"marginal_mh"`` (designs of scalar bars), ``"full"``.
    Gradients = chains * (draws + tune) * steps(ndim) on two cores; the per-gradient cost
    is a pass over the rows (crossed, full) plus the per-group algebra, sum_j m_j^3 with
    every group its own size."""
    from .marginal import marginal_supported
    from .marginal_mh import mh_supported

    factors = factors_of(design)
    n, p = design.nobs, design.n_fixed
    Q = sum(f.q for f in factors)
    iters = chains * (draws + tune) / 2.0
    n_hyper = p + 1 + sum(f.q + f.q * (f.q - 1) // 2 for f in factors)
    costs = {}
    ok, _ = marginal_supported(design)
    if ok:
        top_all = min(range(len(factors)), key=lambda k: factors[k].n_levels)
        if len(nested_in(factors, top_all)) == len(factors):
            m = group_sizes(factors, top_all, list(range(len(factors)))).astype(float)
        else:  # a small crossed design: all its effects in one joint group
            m = np.array([float(sum(f.q * f.n_levels for f in factors))])
        per = 3.0 * FLOP_COST * float((m ** 3).sum()) + ROW_COST * len(m) * (p + 1)
        costs["marginal"] = RUN_COST + ESS_PENALTY["marginal"] * iters * _steps(n_hyper) * per
    for t in range(len(factors)):
        if len(nested_in(factors, t)) == len(factors):
            continue  # nothing left to sample: that is the collapsed sampler
        costs[f"crossed:{t}"] = crossed_cost(factors, t, design.y, p, iters)
    ok_mh, _ = mh_supported(design)
    if ok_mh:
        from .marginal_mh import BURN_IN

        rest = float(sum(f.n_levels for f in factors[1:]))
        # pairs of the rank update: per level of the first factor, the other levels it meets, squared
        met = np.zeros(factors[0].n_levels)
        for f in factors[1:]:
            cells = np.unique(factors[0].codes * f.n_levels + f.codes)
            met += np.bincount(cells // f.n_levels, minlength=factors[0].n_levels)
        pairs = float(met @ met)
        per = MH_ITERATION + DENSE_FLOP_COST * rest**3 / 3.0 + ROW_COST * min(pairs, 1e9)
        d = p + len(factors) + 1
        runs = chains * (draws + min(tune, BURN_IN)) / min(2.0, chains)
        costs["marginal_mh"] = RUN_COST + (ESS_PENALTY["marginal_mh"] * max(1.0, d / 6.0) * runs + 40 * d) * per
    n_eff = sum(f.q * f.n_levels for f in factors)
    per = 4.0 * ROW_COST * n * (p + Q)  # PyMC's graph: a few passes over the rows
    costs["full"] = FULL_COMPILE + ESS_PENALTY["full"] * iters * _steps(n_hyper + n_eff) * per
    return costs


def plan_sampler(design: Design, draws: int = 1000, tune: int = 1000, chains: int = 4) -> Plan:
    """The sampler ``parametrization="auto"`` uses: the collapsed one while its estimate is
    affordable (it mixes best), else the cheapest by :func:`estimate_costs`; with the
    reason in words."""
    factors = factors_of(design)
    costs = estimate_costs(design, draws, tune, chains)

    def name(key):
        return f"partially collapsed on '{factors[int(key[8:])].label}'" if key.startswith("crossed:") else key

    ranked = ", ".join(f"{name(k)} ~{v:.3g} s" for k, v in sorted(costs.items(), key=lambda kv: kv[1]))
    best = min(costs, key=costs.get)
    if "marginal" in costs and costs["marginal"] <= max(AFFORDABLE, costs[best]):
        best = "marginal"
    if best.startswith("crossed"):
        top = int(best.split(":")[1])
        integ = nested_in(factors, top)
        names = ", ".join(f"'{factors[k].label}'" for k in integ)
        rest = ", ".join(f"'{factors[k].label}'" for k in range(len(factors)) if k not in integ)
        reason = (f"partially collapsed sampler: the effects of {names} integrated out given those of {rest}, "
                  f"which NUTS samples (estimated time at equal ESS: {ranked})")
        return Plan("crossed", top, reason, costs)
    if best == "marginal_mh":
        reason = ("independence Metropolis-Hastings on the exact marginal posterior: every group effect integrated "
                  f"out by one blocked factorization per draw (estimated time at equal ESS: {ranked})")
    elif best == "marginal":
        reason = f"collapsed sampler: every group effect integrated out (estimated time at equal ESS: {ranked})"
    else:
        reason = f"full model: every group effect sampled (estimated time at equal ESS: {ranked})"
    return Plan(best, None, reason, costs)


# ---------------------------------------------------------------- sampling
def run_crossed(problem: CrossedProblem, prior_set: P.PriorSet, draws: int = 1000, tune: int = 1000,
                chains: int = 4, random_seed: int | None = None, target_accept: float = 0.9,
                progressbar: bool = True, **kwargs) -> MarginalDraws:
    """NUTS (nutpie) on the partially collapsed posterior of ``problem``."""
    from . import crossed_kernels as C
    from . import marginal_kernels as K
    blob = problem.pack(prior_set)
    _, expand_cfunc = K.nutpie_functions(False)
    # nutpie's diagonal mass matrix with one extra trajectory doubling: with the sampled bars'
    # intercepts centered (see centering) this beat the low-rank update, whose per-step cost
    # grows with ndim (kb07 maximal, ndim 529: ~5 x the CPU per leapfrog step below). Measured
    # at 4 x 1000 draws, seed 1, 0 divergences in each (benchmarks/bench_crossed.py with
    # --adaptation / --extra-doublings / --target-accept / --centered; min bulk ESS): kb07 4x4
    # low-rank 30 s, 985; diag 6.9 s, 918; diag + 1 doubling 11-19 s, 2256-2556. kb07 maximal
    # low-rank 208 s, 1017 (target_accept 0.95); diag 22 s, 1200 (0.95; 959 non-centered),
    # 17 s, 846 (0.9); diag + 1 doubling 32-33 s, 1835-2258 (0.9).
    kwargs.setdefault("adaptation", "diag")
    kwargs.setdefault("extra_doublings", 1)
    return run_nutpie(blob, problem.ndim, C.nutpie_logp(), expand_cfunc, problem.initial_point, draws=draws,
                      tune=tune, chains=chains, random_seed=random_seed, target_accept=target_accept,
                      progressbar=progressbar, **kwargs)


def crossed_posterior(problem: CrossedProblem, run: MarginalDraws, effects: list[np.ndarray] | None):
    """The contract's posterior variables (xarray.Dataset), as
    :func:`bayeslmm.sampling.marginal.posterior_dataset`."""
    from .marginal import posterior_dataset

    base = MarginalDraws(run.x[..., :problem.ndim], run.sample_stats, run.blob, run.seed, run.seconds)
    return posterior_dataset(problem, base, effects)


def sample_crossed(design: Design, prior_set: P.PriorSet, draws: int = 1000, tune: int = 1000, chains: int = 4,
                   random_seed: int | None = None, target_accept: float = 0.9, progressbar: bool = True,
                   top: int | None = None, reason: str | None = None):
    """Sample the partially collapsed model with nutpie, then draw the integrated effects.

    Parameters
    ----------
    design : Design
        Any Gaussian design with at least one random-effect term.
    prior_set : PriorSet
        The same priors as the full model.
    draws, tune, chains, random_seed, target_accept, progressbar
        As in :meth:`bayeslmm.LMM.sample`.
    top : int, optional
        The bar whose factor (with every bar nested in it) is integrated out; by default
        the one that integrates out the most effects.
    reason : str, optional
        Why this sampler was chosen, kept in ``idata.posterior.attrs["sampler_choice"]``.

    Returns
    -------
    PosteriorResult
        In the full model's layout, with ``parametrization = "crossed"`` in the attrs.
    """
    from .marginal import build_result

    if not design.blocks:
        raise FitError("the partially collapsed sampler needs at least one random-effect term")
    problem = CrossedProblem.from_design(design, top)
    run = run_crossed(problem, prior_set, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
                      target_accept=target_accept, progressbar=progressbar)
    flat = run.x.reshape(-1, problem.ndim)
    start = time.perf_counter()
    effects = problem.draw_effects(flat, run.blob, np.random.default_rng([run.seed, 2]))
    attrs = {"sampling_seconds": run.seconds, "effect_draw_seconds": time.perf_counter() - start,
             "integrated": ", ".join(problem.bars[k].label for k in problem.integrated),
             "sampled": ", ".join(problem.bars[k].label for k in problem.sampled)}
    if reason:
        attrs["sampler_choice"] = reason
    return build_result(design, prior_set, crossed_posterior(problem, run, effects), run, "crossed", attrs,
                        lambda posterior: pointwise_log_likelihood(design, posterior, effects))


def pointwise_log_likelihood(design: Design, posterior, effects: list[np.ndarray]):
    """Log-likelihood of every observation given each draw's group effects (for LOO)."""
    import xarray as xr

    from .crossed_kernels import pointwise_loglik

    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    beta = np.ascontiguousarray(posterior["beta"].to_numpy().reshape(n_chain * n_draw, -1))
    sigma = posterior["sigma"].to_numpy().ravel()
    codes = np.ascontiguousarray(np.column_stack([b.codes for b in design.blocks]).astype(np.int64))
    Z = np.ascontiguousarray(np.column_stack([b.X for b in design.blocks]).astype(float))
    qs = np.array([b.n_terms for b in design.blocks], dtype=np.int64)
    sizes = np.array([e.shape[1] * e.shape[2] for e in effects], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = np.ascontiguousarray(np.hstack([e.reshape(len(e), -1) for e in effects]))
    out = np.empty((len(sigma), design.nobs))
    pointwise_loglik(design.y, np.ascontiguousarray(design.X, dtype=float), codes, Z, qs, starts, beta, sigma,
                     flat, out)
    return xr.Dataset({"y": (("chain", "draw", "obs"), out.reshape(n_chain, n_draw, design.nobs))},
                      coords={"chain": posterior.chain, "draw": posterior.draw, "obs": np.arange(design.nobs)})
