"""Stage 3a: the frequentist back end (REML / ML), lme4's profiled deviance.

With ``u ~ N(0, I)``, ``b = Lambda(theta) u`` and ``y | u ~ N(X beta + Z Lambda u, sigma^2 I)``
(Bates et al. 2015, JSS 67(1)), everything but ``theta`` is profiled out of the
likelihood by one Cholesky factorization of the blocked, augmented system

    [ Lambda' Z'Z Lambda + I    Lambda' Z'[X y] ]
    [ [X y]' Z Lambda           [X y]'[X y]      ]

The random-effects columns are split as MixedModels.jl splits them: the bar with the
most levels comes first and its block of ``Z'Z`` is block diagonal (one small ``q x q``
block per level), so it factors level by level; the other bars form one dense block;
``[X y]`` is the last block, whose factor holds ``R_X`` and the penalized residual.
Every cross-product is computed once, so an evaluation costs nothing in ``n``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import Bounds, minimize

from .design import Design, RandomBlock
from .errors import ConvergenceWarning, FitError

_LOG_2PI = np.log(2.0 * np.pi)


# ---------------------------------------------------------------- theta <-> Lambda
@dataclass(frozen=True)
class ThetaLayout:
    """Where each block's entries of ``theta`` live (lme4's order).

    A correlated block with ``q`` terms contributes the ``q (q + 1) / 2`` entries of the
    lower triangle of its relative covariance factor, column by column; a ``||`` block
    contributes its ``q`` diagonal entries. Diagonal entries are bounded below by 0.
    """

    slices: tuple[slice, ...]
    rows: tuple[np.ndarray, ...]
    cols: tuple[np.ndarray, ...]
    lower: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_design(cls, design: Design) -> "ThetaLayout":
        slices, rows, cols, lower, names = [], [], [], [], []
        start = 0
        for block in design.blocks:
            q = block.n_terms
            if block.correlated:
                r, c = np.tril_indices(q)
                order = np.lexsort((r, c))  # column-major, as lme4 stores theta
                r, c = r[order], c[order]
            else:
                r = c = np.arange(q)
            slices.append(slice(start, start + len(r)))
            rows.append(r)
            cols.append(c)
            lower.extend(0.0 if i == j else -np.inf for i, j in zip(r, c))
            names.extend(f"{block.group}.{block.terms[i]}" if i == j
                         else f"{block.group}.{block.terms[i]}.{block.terms[j]}"
                         for i, j in zip(r, c))
            start += len(r)
        return cls(tuple(slices), tuple(rows), tuple(cols), np.array(lower), tuple(names))

    @property
    def size(self) -> int:
        return len(self.lower)

    def initial(self) -> np.ndarray:
        """lme4's start: identity relative factors."""
        return np.where(np.isfinite(self.lower), 1.0, 0.0)

    def factors(self, theta: np.ndarray, q_sizes: list[int]) -> list[np.ndarray]:
        """The lower-triangular relative covariance factor ``lambda_k`` of each block."""
        out = []
        for sl, r, c, q in zip(self.slices, self.rows, self.cols, q_sizes):
            lam = np.zeros((q, q))
            lam[r, c] = theta[sl]
            out.append(lam)
        return out


# ---------------------------------------------------------------- sparse helpers
def _block_z(block: RandomBlock, X: np.ndarray) -> sp.csc_matrix:
    """The ``n x (levels * terms)`` random-effects matrix of one bar with columns ``X``,
    level-major."""
    n, q = X.shape
    rows = np.repeat(np.arange(n), q)
    cols = (block.codes[:, None] * q + np.arange(q)[None, :]).ravel()
    return sp.csc_matrix((X.ravel(), (rows, cols)), shape=(n, block.n_levels * q))


def _lambda_pattern(blocks, layout: ThetaLayout, first: int):
    """Sparse pattern of block-diagonal ``Lambda`` over ``blocks[first:]``: for each
    non-zero, the index into ``theta`` that fills it (lme4's ``Lind``)."""
    rows, cols, lind = [], [], []
    offset = 0
    for k in range(first, len(blocks)):
        block = blocks[k]
        q, J = block.n_terms, block.n_levels
        theta_index = np.arange(layout.slices[k].start, layout.slices[k].stop)
        r, c = layout.rows[k], layout.cols[k]
        base = offset + np.arange(J)[:, None] * q
        rows.append((base + r[None, :]).ravel())
        cols.append((base + c[None, :]).ravel())
        lind.append(np.tile(theta_index, J))
        offset += q * J
    if not rows:
        return None
    rows, cols, lind = np.concatenate(rows), np.concatenate(cols), np.concatenate(lind)
    pattern = sp.csr_matrix((np.arange(1, len(rows) + 1, dtype=float), (rows, cols)), shape=(offset, offset))
    # csr reorders entries: map them back to the theta index of each stored value
    order = pattern.data.astype(np.int64) - 1
    return pattern, lind[order]


# ---------------------------------------------------------------- the deviance
@dataclass
class PLSSolution:
    """Everything the penalized least-squares solve gives at one ``theta``
    (on the internal, standardized response scale)."""

    theta: np.ndarray
    objective: float
    beta: np.ndarray
    pwrss: float
    logdet_L: float
    logdet_RX: float
    RX_lower: np.ndarray
    u: np.ndarray
    factors: list[np.ndarray]
    internal_theta: np.ndarray = field(repr=False)
    internal_factors: list[np.ndarray] = field(repr=False)
    L11: np.ndarray = field(repr=False)
    Lrr: np.ndarray | None = field(repr=False)


class ProfiledDeviance:
    """lme4's profiled deviance (``devFunOnly = TRUE``): a function of ``theta`` alone.

    Parameters
    ----------
    design : Design
    reml : bool
        REML criterion if True, else -2 log-likelihood (ML deviance).

    Notes
    -----
    ``theta`` is lme4's (the relative covariance factors of the columns as the user gave
    them). Internally the response is divided by its standard deviation (the criterion
    is corrected exactly) and each bar's columns by their root mean square, with
    ``theta`` rescaled to match (``to_internal``), so that predictors and responses on any
    scale give a well-conditioned problem and an optimizer with sensible step sizes.
    """

    def __init__(self, design: Design, reml: bool = True):
        if not design.blocks:
            raise FitError("the formula has no random-effect term; use a linear model instead")
        self.design = design
        self.reml = reml
        self.layout = ThetaLayout.from_design(design)
        self.q_sizes = [block.n_terms for block in design.blocks]
        self.n, self.p = design.X.shape
        self.y_scale = float(np.std(design.y)) or 1.0
        # b~ = diag(c) b for columns X / c: Lambda~ = diag(c) Lambda, row by row
        self.term_scales = []
        for block in design.blocks:
            rms = np.sqrt(np.mean(block.X**2, axis=0))
            self.term_scales.append(np.where(rms > 0, rms, 1.0))
        self._X = [block.X / scale for block, scale in zip(design.blocks, self.term_scales)]
        self.theta_scale = np.concatenate([scale[rows] for scale, rows in zip(self.term_scales, self.layout.rows)])
        self.evaluations = 0
        self._precompute()

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        """lme4's theta -> theta of the internally scaled columns."""
        return np.asarray(theta, dtype=float) * self.theta_scale

    def from_internal(self, theta: np.ndarray) -> np.ndarray:
        return np.asarray(theta, dtype=float) / self.theta_scale

    def internal_objective(self, theta_internal: np.ndarray) -> float:
        """The criterion as a function of the internal theta (what the optimizers see)."""
        return self(self.from_internal(theta_internal))

    # -- cross-products, once
    def _precompute(self) -> None:
        blocks = self.design.blocks
        first = blocks[0]
        self.q1, self.J1 = first.n_terms, first.n_levels
        XY = np.column_stack([self.design.X, self.design.y / self.y_scale])
        X1 = self._X[0]
        Z1 = _block_z(first, X1)
        # the first block's Z'Z is block diagonal: one q1 x q1 block per level
        outer = X1[:, :, None] * X1[:, None, :]
        A11 = np.zeros((self.J1, self.q1, self.q1))
        np.add.at(A11, first.codes, outer)
        self.A11 = A11
        self.Ax1 = np.asarray((Z1.T @ XY).T)  # (p+1) x J1 q1
        self.Axx = XY.T @ XY
        if len(blocks) > 1:
            Zr = sp.hstack([_block_z(b, X) for b, X in zip(blocks[1:], self._X[1:])]).tocsc()
            self.qr = Zr.shape[1]
            self.Arr = (Zr.T @ Zr).toarray()
            self.Ar1 = (Zr.T @ Z1).tocsr()
            self.Axr = np.asarray((Zr.T @ XY).T)
            self._lambda_r, self._lind_r = _lambda_pattern(blocks, self.layout, first=1)
            self._lambda_r_diagonal = all(not b.correlated or b.n_terms == 1 for b in blocks[1:])
            self._rank_update_pairs()
        else:
            self.qr = 0

    def _rank_update_pairs(self) -> None:
        """Precompute the symbolic part of ``G = A_r1 V A_r1'`` (V block diagonal).

        Every pair of non-zeros ``(a, k)``, ``(b, l)`` of ``A_r1`` in the columns of the
        same level j of the first bar, with row a >= row b, adds
        ``A[a, jk] V_j[k, l] A[b, jl]`` to ``G[a, b]``. Pairs, coefficients and targets are
        fixed, so an evaluation is one weighted ``bincount`` into the lower triangle
        (the sparse rank update of MixedModels.jl).
        """
        q1, qr = self.q1, self.qr
        A = self.Ar1.tocsc()
        A.sort_indices()
        entry_col = np.repeat(np.arange(A.shape[1]), np.diff(A.indptr))
        entry_level, entry_term = np.divmod(entry_col, q1)
        # entries are sorted by column, hence by level: runs of equal level
        level_start = np.searchsorted(entry_level, np.arange(self.J1))
        level_count = np.bincount(entry_level, minlength=self.J1)
        per_entry = level_count[entry_level]
        first = np.repeat(np.arange(A.nnz), per_entry)
        offsets = np.arange(first.size) - np.repeat(np.cumsum(per_entry) - per_entry, per_entry)
        second = np.repeat(level_start[entry_level], per_entry) + offsets
        rows = A.indices
        keep = rows[first] >= rows[second]
        first, second = first[keep], second[keep]
        self._pair_target = rows[first] * qr + rows[second]
        self._pair_coef = A.data[first] * A.data[second]
        self._pair_v = (entry_level[first] * q1 + entry_term[first]) * q1 + entry_term[second]

    def lambda_rest(self, theta: np.ndarray) -> sp.csr_matrix:
        lam = self._lambda_r.copy()
        lam.data = theta[self._lind_r]
        return lam

    # -- one evaluation
    def solve(self, theta: np.ndarray, beta_fixed: np.ndarray | None = None) -> PLSSolution:
        """Factor the system at ``theta`` and return the full solution.

        ``beta_fixed`` (standardized scale) gives the conditional modes at that ``beta``
        instead of at its profiled value (the MAP back end needs it).
        """
        theta_user = np.asarray(theta, dtype=float)
        theta = self.to_internal(theta_user)
        self.evaluations += 1
        lambdas = self.layout.factors(theta, self.q_sizes)
        lam1 = lambdas[0]
        q1, J1, p = self.q1, self.J1, self.p

        # first bar: L11_j = chol(lam1' A11_j lam1 + I), level by level
        M11 = np.einsum("ki,jkl,lm->jim", lam1, self.A11, lam1) + np.eye(q1)
        L11 = np.linalg.cholesky(M11)
        logdet = 2.0 * np.log(np.einsum("jii->ji", L11)).sum()
        L11_inv = np.linalg.inv(L11)
        M11_inv = np.einsum("jki,jkl->jil", L11_inv, L11_inv)
        # V_j = lam1 M_j^{-1} lam1': with it, L_.1 L_.1' = A_.1 V A_.1'
        V = np.einsum("ik,jkl,ml->jim", lam1, M11_inv, lam1)
        AV = np.einsum("rjk,jkl->rjl", self.Ax1.reshape(p + 1, J1, q1), V).reshape(p + 1, J1 * q1)
        S = self.Axx - AV @ self.Ax1.T

        Lrr = None
        if self.qr:
            lam_r = self.lambda_rest(theta)
            weights = self._pair_coef * V.ravel()[self._pair_v]
            G = np.bincount(self._pair_target, weights=weights, minlength=self.qr * self.qr)
            # only the lower triangle of Arr - G is filled and needed
            Mrr = self._congruence(lam_r, self.Arr - G.reshape(self.qr, self.qr))
            Mrr[np.diag_indices_from(Mrr)] += 1.0
            try:
                Lrr = cholesky(Mrr, lower=True, check_finite=False)
            except np.linalg.LinAlgError as exc:
                raise FitError(f"the random-effects system is not positive definite at theta={theta}") from exc
            logdet += 2.0 * np.log(np.diag(Lrr)).sum()
            H = self.Axr - np.asarray(self.Ar1 @ AV.T).T  # (A_x. - L_x1 L_r1' (unscaled))
            B = np.asarray(lam_r.T @ H.T).T
            Lxr = solve_triangular(Lrr, B.T, lower=True, check_finite=False).T
            S = S - Lxr @ Lxr.T

        Lxx = np.linalg.cholesky(S[:p, :p]) if p else np.zeros((0, 0))
        lyx = solve_triangular(Lxx, S[:p, p], lower=True, check_finite=False) if p else np.zeros(0)
        pwrss = max(float(S[p, p] - lyx @ lyx), np.finfo(float).tiny)
        beta = solve_triangular(Lxx.T, lyx, lower=False, check_finite=False) if p else np.zeros(0)
        logdet_RX = 2.0 * np.log(np.diag(Lxx)).sum() if p else 0.0

        # conditional modes: back-substitution through the blocked factor
        beta_u = beta if beta_fixed is None else np.asarray(beta_fixed, dtype=float)
        e1 = self.Ax1[p] - beta_u @ self.Ax1[:p]
        if self.qr:
            vr = Lxr[p] - beta_u @ Lxr[:p]
            ur = solve_triangular(Lrr.T, vr, lower=False, check_finite=False)
            e1 = e1 - self.Ar1.T @ (lam_r @ ur)
        else:
            ur = np.zeros(0)
        u1 = np.einsum("jkl,ml,jm->jk", M11_inv, lam1, e1.reshape(J1, q1)).ravel()
        u = np.concatenate([u1, ur])

        objective = self._objective(logdet, logdet_RX, pwrss)
        user_factors = [lam / scale[:, None] for lam, scale in zip(lambdas, self.term_scales)]
        return PLSSolution(theta=theta_user, objective=objective, beta=beta, pwrss=pwrss,
                           logdet_L=logdet, logdet_RX=logdet_RX, RX_lower=Lxx, u=u,
                           factors=user_factors, internal_theta=theta, internal_factors=lambdas,
                           L11=L11, Lrr=Lrr)

    def _congruence(self, lam_r: sp.csr_matrix, lower: np.ndarray) -> np.ndarray:
        """``Lambda_r' X Lambda_r`` from the lower triangle of symmetric ``X``."""
        if self._lambda_r_diagonal:
            d = lam_r.diagonal()
            lower *= d[:, None]
            lower *= d[None, :]
            return lower
        full = np.tril(lower) + np.tril(lower, -1).T
        return np.asarray(lam_r.T @ np.asarray(lam_r.T @ full).T).T

    def _objective(self, logdet: float, logdet_RX: float, pwrss: float) -> float:
        n_eff = self.n - self.p if self.reml else self.n
        value = logdet + n_eff * (1.0 + _LOG_2PI + np.log(pwrss / n_eff))
        if self.reml:
            value += logdet_RX
        # back to the user's scale of y
        return value + 2.0 * n_eff * np.log(self.y_scale)

    def __call__(self, theta: np.ndarray) -> float:
        try:
            return self.solve(theta).objective
        except (FitError, np.linalg.LinAlgError):
            return np.inf

    # -- out of core: the same deviance from cross-products (additive; see CrossProducts)
    @classmethod
    def from_cross_products(cls, design: Design, products: "CrossProducts", reml: bool = True) -> "ProfiledDeviance":
        """The deviance of ``design`` (one bar: its block gives the terms and levels; no row
        is read) from ``products``. It sets the attributes that ``__init__`` and
        ``_precompute`` set, so ``solve`` and everything after it are shared with the
        in-memory path (tests/test_outofcore.py checks that the two agree)."""
        if len(design.blocks) != 1:
            raise FitError("the deviance from cross-products supports one random-effect term")
        self = cls.__new__(cls)
        self.design, self.reml = design, reml
        self.layout = ThetaLayout.from_design(design)
        block = design.blocks[0]
        q, J, p = block.n_terms, block.n_levels, products.XtX.shape[0]
        self.q_sizes = [q]
        self.n, self.p = int(products.n), p
        self.y_scale = float(products.y_std) or 1.0
        scale = np.where(products.z_rms > 0, products.z_rms, 1.0)
        self.term_scales = [scale]
        self._X = None
        self.theta_scale = np.concatenate([scale[rows] for rows in self.layout.rows])
        self.evaluations = 0
        self.q1, self.J1 = q, J
        self.A11 = products.ZtZ / np.outer(scale, scale)
        zx = np.concatenate([products.ZtX, products.Zty[:, :, None] / self.y_scale], axis=2) / scale[None, :, None]
        self.Ax1 = zx.transpose(2, 0, 1).reshape(p + 1, J * q)
        xy = products.Xty / self.y_scale
        self.Axx = np.block([[products.XtX, xy[:, None]], [xy[None, :], np.array([[products.yty / self.y_scale**2]])]])
        self.qr = 0
        return self


# ---------------------------------------------------------------- from cross-products (out of core)
@dataclass(frozen=True)
class CrossProducts:
    """The cross-products the profiled deviance of one grouping factor consumes, on the
    user's scale, without the rows (built out of core by :mod:`bayeslmm.outofcore`).

    ``ZtZ`` (J, q, q), ``ZtX`` (J, q, p) and ``Zty`` (J, q) per level of the factor;
    ``XtX`` (p, p), ``Xty`` (p,), ``yty`` and ``n`` over all rows; ``y_std`` (population
    standard deviation of y) and ``z_rms`` (q,) (root mean square of each column of Z) set
    the internal scaling exactly as the in-memory constructor sets it.
    """

    ZtZ: np.ndarray
    ZtX: np.ndarray
    Zty: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    n: int
    y_std: float
    z_rms: np.ndarray


def make_deviance(design: Design, reml: bool = True) -> ProfiledDeviance:
    """Return the profiled deviance of ``design`` as a function of ``theta``.

    The counterpart of lme4's ``lmer(..., devFunOnly = TRUE)``: evaluate it at a fixed
    ``theta`` in tests, or hand it to any optimizer.

    Examples
    --------
    >>> dev = make_deviance(design, reml=True)
    >>> dev(dev.layout.initial())
    """
    return ProfiledDeviance(design, reml=reml)


# ---------------------------------------------------------------- optimization
@dataclass(frozen=True)
class OptSummary:
    """How the optimum was found (as MixedModels.jl keeps it on the fit)."""

    optimizer: str
    initial: np.ndarray
    final: np.ndarray
    objective: float
    evaluations: int
    seconds: float
    converged: bool
    message: str


def optimize_deviance(objective, start: np.ndarray, lower: np.ndarray, counter=None) -> tuple[np.ndarray, OptSummary]:
    """Minimize ``objective(theta)`` subject to ``theta >= lower``; ``counter`` (default
    ``objective``) is what holds the ``evaluations`` count.

    COBYQA, the derivative-free trust-region successor of the BOBYQA that lme4 uses, with
    bounds; Nelder-Mead with bounds takes over if it fails. (Bounded quasi-Newton on
    finite differences was faster on small problems but stalled on the singular 3 x 3
    Exam model, so it is not used.)
    """
    t0 = time.perf_counter()
    counter = objective if counter is None else counter
    count0 = getattr(counter, "evaluations", 0)
    start = np.asarray(start, dtype=float)
    bounds = Bounds(lower, np.full(len(lower), np.inf))
    name = "COBYQA (scipy)"
    result = minimize(objective, start, method="COBYQA", bounds=bounds,
                      options={"initial_tr_radius": 1.0, "final_tr_radius": 1e-6, "maxfev": 5000})
    if not (result.success and np.isfinite(result.fun)):
        name = "Nelder-Mead (scipy)"
        result = minimize(objective, result.x if np.isfinite(result.fun) else start,
                          method="Nelder-Mead", bounds=bounds,
                          options={"xatol": 1e-8, "fatol": 1e-10, "maxfev": 20000})
    if not np.isfinite(result.fun):
        raise FitError("the optimizer found no point with a finite criterion")
    if not result.success:
        warnings.warn(f"the optimizer ({name}) did not converge: {result.message} (after "
                      f"{getattr(counter, 'evaluations', 0) - count0} evaluations); the estimates may be off. "
                      "Check the model (rescale predictors, simplify the random part) or compare with "
                      "fit(method='map')", ConvergenceWarning, stacklevel=4)
    summary = OptSummary(optimizer=name, initial=np.array(start), final=np.array(result.x),
                         objective=float(result.fun),
                         evaluations=getattr(counter, "evaluations", 0) - count0,
                         seconds=time.perf_counter() - t0, converged=bool(result.success),
                         message=str(result.message))
    return np.asarray(result.x), summary


def conditional_variances(deviance: ProfiledDeviance, solution: PLSSolution) -> list[np.ndarray]:
    """``Var(b | y)`` blocks of every bar, relative to ``sigma^2`` (lme4's ``condVar``).

    Returns one array per bar of shape ``(levels, terms, terms)``: the diagonal blocks of
    ``Lambda (L L')^{-1} Lambda'``. Multiply by ``sigma^2`` for the variances.
    """
    design = deviance.design
    q1, J1 = deviance.q1, deviance.J1
    lam1 = solution.internal_factors[0]
    L11_inv = np.linalg.inv(solution.L11)
    M11_inv = np.einsum("jki,jkl->jil", L11_inv, L11_inv)
    inner = M11_inv
    out_rest: list[np.ndarray] = []
    if deviance.qr:
        lam_r = deviance.lambda_rest(solution.internal_theta)
        # L_r1 L11^{-1} = Lambda_r' A_r1 blockdiag(lam1 M_j^{-1})
        right = np.einsum("ik,jkl->jil", lam1, M11_inv)
        R = sp.bsr_matrix((right, np.arange(J1), np.arange(J1 + 1)), shape=(J1 * q1, J1 * q1))
        K = np.asarray((lam_r.T @ (deviance.Ar1 @ R)).todense())
        C = solve_triangular(solution.Lrr, K, lower=True, check_finite=False).reshape(-1, J1, q1)
        inner = M11_inv + np.einsum("rjk,rjl->jkl", C, C)
        Lrr_inv = solve_triangular(solution.Lrr, np.eye(deviance.qr), lower=True, check_finite=False)
        full = np.asarray(lam_r @ (Lrr_inv.T @ Lrr_inv) @ lam_r.T)
        offset = 0
        for block in design.blocks[1:]:
            q, J = block.n_terms, block.n_levels
            idx = offset + np.arange(J * q).reshape(J, q)
            out_rest.append(full[idx[:, :, None], idx[:, None, :]])
            offset += J * q
    first = np.einsum("ik,jkl,ml->jim", lam1, inner, lam1)
    # back from the scaled columns: Var(b) = diag(1/c) Var(b~) diag(1/c)
    return [v / np.outer(scale, scale) for v, scale in zip([first] + out_rest, deviance.term_scales)]


def fit_profiled(design: Design, reml: bool = True):
    """Fit by REML (``reml=True``) or ML: optimize the profiled deviance and build the
    :class:`~bayeslmm.results.PointResult` (lme4's ``optimizeLmer -> mkMerMod``)."""
    deviance = make_deviance(design, reml=reml)
    internal, opt = optimize_deviance(deviance.internal_objective, deviance.layout.initial(),
                                      deviance.layout.lower, counter=deviance)
    theta = deviance.from_internal(internal)
    opt = replace(opt, initial=deviance.from_internal(opt.initial), final=theta)
    return point_result(deviance, theta, opt, method="reml" if reml else "ml")


def point_result(deviance: ProfiledDeviance, theta: np.ndarray, opt: OptSummary, method: str,
                 beta: np.ndarray | None = None, sigma: float | None = None,
                 criterion: float | None = None, priors_used: str | None = None):
    """Turn the solution at ``theta`` into a :class:`~bayeslmm.results.PointResult`.

    REML/ML profile ``beta`` and ``sigma`` out; the MAP back end passes its own
    ``beta``, ``sigma`` (user's scale) and ``criterion``.
    """
    from .results import PointResult

    design = deviance.design
    scale = deviance.y_scale
    sol = deviance.solve(theta, beta_fixed=None if beta is None else np.asarray(beta) / scale)
    if sigma is None:
        n_eff = deviance.n - deviance.p if deviance.reml else deviance.n
        sigma = float(np.sqrt(sol.pwrss / n_eff)) * scale
    beta = sol.beta * scale if beta is None else np.asarray(beta, dtype=float)
    RX_inv = solve_triangular(sol.RX_lower, np.eye(deviance.p), lower=True, check_finite=False)
    vcov_beta = sigma**2 * (RX_inv.T @ RX_inv)
    covariances = tuple(sigma**2 * lam @ lam.T for lam in sol.factors)
    ranef, offset = [], 0
    for block, lam in zip(design.blocks, sol.factors):
        size = block.n_levels * block.n_terms
        u = sol.u[offset: offset + size].reshape(block.n_levels, block.n_terms)
        ranef.append(u @ lam.T * scale)
        offset += size
    condvar = tuple(sigma**2 * cv for cv in conditional_variances(deviance, sol))
    n_params = deviance.p + deviance.layout.size + 1
    return PointResult(design=design, method=method, theta=np.asarray(theta, dtype=float), beta=beta,
                       sigma=float(sigma), vcov_beta=vcov_beta, covariances=covariances,
                       ranef_values=tuple(ranef), ranef_condvar=condvar,
                       criterion=float(sol.objective if criterion is None else criterion),
                       n_params=n_params, theta_names=deviance.layout.names,
                       theta_lower=deviance.layout.lower, opt=opt, priors_used=priors_used)
