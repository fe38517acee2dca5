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

import contextlib
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import Bounds, minimize

from ..errors import ConvergenceWarning, FitError
from ..frontend.design import Design, RandomBlock

_LOG_2PI = np.log(2.0 * np.pi)
#: force the dense (True) or sparse (False) product for A_r1 V A_r1' (None: by cost); tests
#: use it to check both paths on the same designs
_DENSE_AR1: bool | None = None


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

    def column_below(self, i: int) -> np.ndarray:
        """Indices into theta of the entries below the diagonal entry ``i`` in its column."""
        for sl, r, c in zip(self.slices, self.rows, self.cols):
            if sl.start <= i < sl.stop:
                col = c[i - sl.start]
                return sl.start + np.flatnonzero((c == col) & (r > col))
        raise IndexError(i)

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
    """Everything the penalized least-squares solve gives at one ``theta``.

    ``beta`` (the fixed effects divided by ``y_scale``), ``pwrss`` and ``u`` are on the
    scale of ``y / y_scale``; ``RX_lower`` is the lower Cholesky factor of ``X' V^{-1} X``
    for the user's ``X`` (``V`` relative to ``sigma^2``), ``logdet_RX`` its log
    determinant squared, ``vcov_unscaled`` ``(X' V^{-1} X)^{-1}`` computed without forming
    that (possibly ill-conditioned) matrix.
    """

    theta: np.ndarray
    objective: float
    beta: np.ndarray
    pwrss: float
    logdet_L: float
    logdet_RX: float
    RX_lower: np.ndarray
    u: np.ndarray
    factors: list[np.ndarray]
    vcov_unscaled: np.ndarray = field(repr=False)
    internal_theta: np.ndarray = field(repr=False)
    internal_factors: list[np.ndarray] = field(repr=False)
    L11: np.ndarray = field(repr=False)
    Lrr: np.ndarray | None = field(repr=False)


@dataclass
class _Factor:
    """The blocked factor at one internal theta (what the gradient reuses)."""

    lambdas: list
    lam_r: object
    M11_inv: np.ndarray
    L11: np.ndarray
    V: np.ndarray
    Lrr: np.ndarray | None
    Lxr: np.ndarray | None
    Lxx: np.ndarray
    logdet: float
    logdet_RX: float
    pwrss: float
    beta: np.ndarray


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
    them). Internally the problem is reparametrized so that no digit is lost to the
    user's units or offsets, with every quantity transformed back exactly:

    - each bar's columns are divided by their root mean square, ``theta`` rescaled to
      match (``to_internal``); the same model, so the criterion is unchanged;
    - the fixed-effects columns other than the intercept are centered (when the model has
      an intercept) and scaled to unit root mean square: ``X T`` for an invertible ``T``
      with ``beta = T beta_internal`` (``log|R_X|^2`` moves by ``-2 log|det T|``, which
      is added back);
    - ``y`` is centered when the constant lies in the span of ``X`` (a shift of
      ``beta``) and scaled (the criterion is corrected by ``2 n_eff log(scale)``).

    The penalized residual sum of squares is then the last pivot of a Cholesky factor of
    cross-products of centered quantities: it no longer cancels a large mean against
    itself (northings near 5e6 m with centimetre noise lost every digit before).
    """

    def __init__(self, design: Design, reml: bool = True):
        if not design.blocks:
            raise FitError("the formula has no random-effect term; use a linear model instead")
        self.design = design
        self.reml = reml
        self.layout = ThetaLayout.from_design(design)
        self.q_sizes = [block.n_terms for block in design.blocks]
        self.n, self.p = design.X.shape
        self._fixed_reparametrization()
        # b~ = diag(c) b for columns X / c: Lambda~ = diag(c) Lambda, row by row
        self.term_scales = []
        for block in design.blocks:
            rms = np.sqrt(np.mean(block.X**2, axis=0))
            self.term_scales.append(np.where(rms > 0, rms, 1.0))
        self._X = [block.X / scale for block, scale in zip(design.blocks, self.term_scales)]
        self.theta_scale = np.concatenate([scale[rows] for scale, rows in zip(self.term_scales, self.layout.rows)])
        self.evaluations = 0
        self.gradient_evaluations = 0
        self._precompute()

    # -- the fixed-effects reparametrization beta = T beta_internal
    def _fixed_reparametrization(self) -> None:
        X, y = self.design.X, self.design.y
        n, p = self.n, self.p
        ones = np.flatnonzero(np.all(X == 1.0, axis=0)) if p else np.zeros(0, dtype=int)
        self.intercept_col = int(ones[0]) if len(ones) else None
        center = np.zeros(p)
        one_coef = np.zeros(p)  # X @ one_coef == 1 when the constant is in the span of X
        if self.intercept_col is not None:
            center = X.mean(axis=0)
            center[self.intercept_col] = 0.0
            one_coef[self.intercept_col] = 1.0
            has_one = True
        elif p:
            one_coef = np.linalg.lstsq(X, np.ones(n), rcond=None)[0]
            has_one = bool(np.linalg.norm(X @ one_coef - 1.0) <= 1e-8 * np.sqrt(n))
        else:
            has_one = False
        Xc = X - center
        x_scale = np.sqrt(np.mean(Xc**2, axis=0)) if p else np.zeros(0)
        x_scale = np.where(x_scale > 0, x_scale, 1.0)
        self.x_center, self.x_scale = center, x_scale
        self.one_coef = one_coef if has_one else np.zeros(p)
        # T = (I - e_k center') D^{-1}: X T = (X - 1 center') D^{-1}
        T = np.eye(p)
        if self.intercept_col is not None:
            T[self.intercept_col] -= center
        self.T = T / x_scale[None, :]
        self.log_det_T = -float(np.sum(np.log(x_scale)))
        self.y_shift = float(np.mean(y)) if has_one else 0.0
        yc = y - self.y_shift
        self.y_scale = float(np.sqrt(np.mean(yc**2))) or 1.0
        self._Xf = Xc / x_scale
        self._yf = yc / self.y_scale

    def beta_from_internal(self, beta_internal: np.ndarray) -> np.ndarray:
        """Internal fixed effects -> the user's, divided by ``y_scale``."""
        return self.T @ beta_internal + (self.y_shift / self.y_scale) * self.one_coef

    def beta_to_internal(self, beta: np.ndarray) -> np.ndarray:
        """The user's fixed effects divided by ``y_scale`` -> internal."""
        b = np.asarray(beta, dtype=float) - (self.y_shift / self.y_scale) * self.one_coef
        b = b.copy()
        if self.intercept_col is not None:
            b[self.intercept_col] += self.x_center @ b
        return b * self.x_scale

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        """lme4's theta -> theta of the internally scaled columns."""
        return np.asarray(theta, dtype=float) * self.theta_scale

    def from_internal(self, theta: np.ndarray) -> np.ndarray:
        return np.asarray(theta, dtype=float) / self.theta_scale

    def internal_objective(self, theta_internal: np.ndarray) -> float:
        """The criterion as a function of the internal theta (what the optimizers see)."""
        try:
            return self._objective(self._factor(np.asarray(theta_internal, dtype=float)))
        except (FitError, np.linalg.LinAlgError):
            return np.inf

    # -- cross-products, once
    def _precompute(self) -> None:
        blocks = self.design.blocks
        first = blocks[0]
        self.q1, self.J1 = first.n_terms, first.n_levels
        XY = np.column_stack([self._Xf, self._yf])
        X1 = self._X[0]
        Z1 = _block_z(first, X1)
        # the first block's Z'Z is block diagonal: one q1 x q1 block per level
        outer = X1[:, :, None] * X1[:, None, :]
        A11 = np.zeros((self.J1, self.q1, self.q1))
        np.add.at(A11, first.codes, outer)
        self.A11 = A11
        self.Ax1 = np.asarray((Z1.T @ XY).T)  # (p+1) x J1 q1
        self.Axx = XY.T @ XY
        self.Ar1_dense = None
        if len(blocks) > 1:
            Zr = sp.hstack([_block_z(b, X) for b, X in zip(blocks[1:], self._X[1:])]).tocsc()
            self.qr = Zr.shape[1]
            self.Arr = (Zr.T @ Zr).toarray()
            self.Ar1 = (Zr.T @ Z1).tocsr()
            self.Axr = np.asarray((Zr.T @ XY).T)
            self._lambda_r, self._lind_r = _lambda_pattern(blocks, self.layout, first=1)
            self._lambda_r_diagonal = all(not b.correlated or b.n_terms == 1 for b in blocks[1:])
            # G = A_r1 V A_r1': a dense product where A_r1 is dense enough (every subject
            # sees every item), else the sparse rank update over pairs of non-zeros
            A = self.Ar1.tocsc()
            per_level = np.add.reduceat(np.diff(A.indptr), np.arange(0, A.shape[1], self.q1)) \
                if A.shape[1] else np.zeros(0)
            pairs = float(np.sum(per_level * (per_level + 1) / 2.0))
            dense_flops = float(self.qr) ** 2 * self.J1 * self.q1
            dense = dense_flops <= 20.0 * pairs or self.qr * self.J1 * self.q1 <= 200_000
            if _DENSE_AR1 is not None:
                dense = _DENSE_AR1
            if dense:
                self.Ar1_dense = self.Ar1.toarray()
                # level-major copy (J1, qr, q1) for batched products with the per-level blocks
                self._Ar1_levels = np.ascontiguousarray(self.Ar1_dense.reshape(self.qr, self.J1, self.q1)
                                                        .transpose(1, 0, 2))
            else:
                self._rank_update_pairs()
        else:
            self.qr = 0
        # the analytic gradient needs dense products of the size of A_r1 and A_rr
        self.has_gradient = self.qr == 0 or (
            self.Ar1_dense is not None and float(self.qr) ** 2 * (self.qr + self.J1 * self.q1) <= 2e9)
        # without it, designs of scalar bars on the sparse path (InstEval) get their gradient and
        # average-information matrix from the factor's inverse instead (internal_scoring)
        self.has_scoring = (not self.has_gradient and self.Ar1_dense is None
                            and all(b.n_terms == 1 for b in blocks))
        if self.has_scoring:
            self._g_rows, self._g_cols = np.divmod(self._g_targets, self.qr)
            self._g_weight = np.where(self._g_rows == self._g_cols, 1.0, 2.0)
            sizes = [b.n_levels for b in blocks[1:]]
            self._rest_slices = [slice(a, b) for a, b in zip(np.cumsum([0] + sizes[:-1]), np.cumsum(sizes))]

    def _rank_update_pairs(self) -> None:
        """Precompute the symbolic part of ``G = A_r1 V A_r1'`` (V block diagonal).

        Every pair of non-zeros ``(a, k)``, ``(b, l)`` of ``A_r1`` in the columns of the
        same level j of the first bar, with row a >= row b, adds
        ``A[a, jk] V_j[k, l] A[b, jl]`` to ``G[a, b]``. Pairs, coefficients and targets are
        fixed, so an evaluation is one sparse matrix-vector product into the filled
        entries of the lower triangle (the sparse rank update of MixedModels.jl).
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
        target = rows[first] * qr + rows[second]
        v_index = (entry_level[first] * q1 + entry_term[first]) * q1 + entry_term[second]
        # one sparse matrix from the entries of V to the filled entries of G, duplicates summed:
        # an evaluation is one sparse matrix-vector product and a scatter
        filled = np.zeros(qr * qr, dtype=bool)
        filled[target] = True
        self._g_targets = np.flatnonzero(filled)
        slot = (np.cumsum(filled) - 1)[target]  # no sort: a lookup over the qr x qr entries
        self._g_map = sp.csr_matrix((A.data[first] * A.data[second], (slot, v_index)),
                                    shape=(len(self._g_targets), self.J1 * q1 * q1))

    def lambda_rest(self, theta: np.ndarray) -> sp.csr_matrix:
        lam = self._lambda_r.copy()
        lam.data = theta[self._lind_r]
        return lam

    # -- one evaluation
    def _factor(self, theta: np.ndarray) -> _Factor:
        """Factor the blocked system at the internal ``theta``."""
        self.evaluations += 1
        lambdas = self.layout.factors(theta, self.q_sizes)
        lam1 = lambdas[0]
        q1, J1, p = self.q1, self.J1, self.p

        # first bar: L11_j = chol(lam1' A11_j lam1 + I), level by level
        M11 = lam1.T @ self.A11 @ lam1 + np.eye(q1)
        L11 = np.linalg.cholesky(M11)
        logdet = 2.0 * np.log(np.einsum("jii->ji", L11)).sum()
        L11_inv = np.linalg.inv(L11)
        M11_inv = np.einsum("jki,jkl->jil", L11_inv, L11_inv)
        # V_j = lam1 M_j^{-1} lam1': with it, L_.1 L_.1' = A_.1 V A_.1'
        V = lam1 @ M11_inv @ lam1.T
        AV = (self.Ax1.reshape(p + 1, J1, q1).transpose(1, 0, 2) @ V).transpose(1, 0, 2).reshape(p + 1, J1 * q1)
        S = self.Axx - AV @ self.Ax1.T

        Lrr = Lxr = lam_r = None
        if self.qr:
            lam_r = self.lambda_rest(theta)
            if self.Ar1_dense is not None:
                AVr = (self._Ar1_levels @ V).transpose(1, 0, 2)
                G = AVr.reshape(self.qr, J1 * q1) @ self.Ar1_dense.T
                lower = self.Arr - G
            else:
                # only the lower triangle of Arr - G is filled and needed
                lower = self.Arr.copy()
                lower.ravel()[self._g_targets] -= self._g_map @ V.ravel()
            Mrr = self._congruence(lam_r, lower)
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

        try:
            Lxx = np.linalg.cholesky(S[:p, :p]) if p else np.zeros((0, 0))
        except np.linalg.LinAlgError as exc:  # theta so large that the Schur complement cancels
            raise FitError(f"the fixed-effects system is not positive definite at theta={theta}") from exc
        lyx = solve_triangular(Lxx, S[:p, p], lower=True, check_finite=False) if p else np.zeros(0)
        pwrss = max(float(S[p, p] - lyx @ lyx), np.finfo(float).tiny)
        beta = solve_triangular(Lxx.T, lyx, lower=False, check_finite=False) if p else np.zeros(0)
        logdet_RX = 2.0 * np.log(np.diag(Lxx)).sum() if p else 0.0
        return _Factor(lambdas=lambdas, lam_r=lam_r, M11_inv=M11_inv, L11=L11, V=V, Lrr=Lrr, Lxr=Lxr,
                       Lxx=Lxx, logdet=logdet, logdet_RX=logdet_RX, pwrss=pwrss, beta=beta)

    def _modes(self, f: _Factor, beta: np.ndarray) -> np.ndarray:
        """Conditional modes ``u`` at the internal ``beta``: back-substitution through the
        blocked factor."""
        p, q1, J1 = self.p, self.q1, self.J1
        lam1 = f.lambdas[0]
        e1 = self.Ax1[p] - beta @ self.Ax1[:p]
        if self.qr:
            vr = f.Lxr[p] - beta @ f.Lxr[:p]
            ur = solve_triangular(f.Lrr.T, vr, lower=False, check_finite=False)
            e1 = e1 - self.Ar1.T @ (f.lam_r @ ur)
        else:
            ur = np.zeros(0)
        u1 = (f.M11_inv @ (e1.reshape(J1, q1) @ lam1)[:, :, None])[:, :, 0].ravel()
        return np.concatenate([u1, ur])

    def solve(self, theta: np.ndarray, beta_fixed: np.ndarray | None = None) -> PLSSolution:
        """Factor the system at (lme4's) ``theta`` and return the full solution.

        ``beta_fixed`` (the user's fixed effects divided by ``y_scale``) gives the
        conditional modes at that ``beta`` instead of at its profiled value (the MAP back
        end needs it).
        """
        theta_user = self._checked_theta(theta)
        theta = self.to_internal(theta_user)
        f = self._factor(theta)
        beta_u = f.beta if beta_fixed is None else self.beta_to_internal(beta_fixed)
        u = self._modes(f, beta_u)
        p = self.p
        # back to the user's X: X' V^-1 X = T^-T (R R') T^-1, R the internal factor
        R_user = (self.x_scale[:, None] * f.Lxx)
        if self.intercept_col is not None:
            R_user = R_user + np.outer(self.x_center, R_user[self.intercept_col])
        if p and np.any(np.triu(R_user, 1)):
            # a lower factor of R_user R_user' without squaring: QR of R_user'
            R = np.linalg.qr(R_user.T, mode="r")
            R_user = R.T * np.sign(np.diag(R))[None, :]
        R_inv = solve_triangular(f.Lxx, np.eye(p), lower=True, check_finite=False) if p else np.zeros((0, 0))
        half = R_inv @ self.T.T
        user_factors = [lam / scale[:, None] for lam, scale in zip(f.lambdas, self.term_scales)]
        return PLSSolution(theta=theta_user, objective=self._objective(f), beta=self.beta_from_internal(f.beta),
                           pwrss=f.pwrss, logdet_L=f.logdet, logdet_RX=f.logdet_RX - 2.0 * self.log_det_T,
                           RX_lower=R_user, u=u, factors=user_factors, vcov_unscaled=half.T @ half,
                           internal_theta=theta, internal_factors=f.lambdas, L11=f.L11, Lrr=f.Lrr)

    def _congruence(self, lam_r: sp.csr_matrix, lower: np.ndarray) -> np.ndarray:
        """``Lambda_r' X Lambda_r`` from the lower triangle of symmetric ``X``."""
        if self._lambda_r_diagonal:
            d = lam_r.diagonal()
            lower *= d[:, None]
            lower *= d[None, :]
            return lower
        full = np.tril(lower) + np.tril(lower, -1).T
        return np.asarray(lam_r.T @ np.asarray(lam_r.T @ full).T).T

    def _objective(self, f: _Factor) -> float:
        n_eff = self.n - self.p if self.reml else self.n
        value = f.logdet + n_eff * (1.0 + _LOG_2PI + np.log(f.pwrss / n_eff))
        if self.reml:
            value += f.logdet_RX - 2.0 * self.log_det_T
        # back to the user's scale of y
        return float(value + 2.0 * n_eff * np.log(self.y_scale))

    def _checked_theta(self, theta) -> np.ndarray:
        """The user's ``theta`` as a float vector of the layout's length, or a FitError
        naming what is wrong (not numbers, wrong length, NaN or infinite entries)."""
        size = self.layout.size
        try:
            values = np.asarray(theta, dtype=float)
        except (TypeError, ValueError):
            raise FitError(f"theta must be {size} numbers (the layout's order, see .layout.names), not "
                           f"{type(theta).__name__} {str(theta)[:60]!r}") from None
        if values.ndim > 1 and values.size == size:
            values = values.ravel()
        if values.ndim != 1 or values.size != size:
            raise FitError(f"theta must have {size} entries (the layout's order, see .layout.names), not "
                           f"{values.size}" + (f" (shape {values.shape})" if values.ndim != 1 else ""))
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise FitError(f"theta has NaN or infinite entries at position(s) {', '.join(map(str, bad[:5]))}: "
                           f"{values[bad[:5]].tolist()}")
        return values

    def __call__(self, theta: np.ndarray) -> float:
        theta = self._checked_theta(theta)
        try:
            return self._objective(self._factor(self.to_internal(theta)))
        except (FitError, np.linalg.LinAlgError):
            return np.inf

    # -- the analytic gradient
    def internal_gradient(self, theta_internal: np.ndarray) -> tuple[float, np.ndarray]:
        """The criterion and its gradient in the internal theta.

        With ``Omega = Lambda' A Lambda + I`` (``A = Z'Z``), ``e = Z'(y - X beta - Z Lambda u)``
        and ``Psi = Z' V^{-1} X R_X^{-T}``, for the entry ``(r, c)`` of bar ``k``'s factor::

            d log|Omega|    = 2 [sum_j (Omega^{-1} Lambda' A)_jj]_{c r}
            d r^2           = -2 [sum_j e_j u_j']_{r c}            (envelope: beta, u optimal)
            d log|R_X|^2    = -2 [lambda_k' sum_j Psi_j Psi_j']_{c r}

        with sums over the levels ``j`` of bar ``k``. Only diagonal blocks of
        ``Omega^{-1} Lambda' A`` are needed; they come from the blocked factor
        (``Omega^{-1}_{11}`` diagonal blocks, ``Omega^{-1}_{r1}``, ``Omega^{-1}_{rr}``).
        """
        if not self.has_gradient:
            raise FitError("no analytic gradient for this design (the dense blocks are too large)")
        theta = np.asarray(theta_internal, dtype=float)
        f = self._factor(theta)
        self.gradient_evaluations += 1
        p, q1, J1, qr = self.p, self.q1, self.J1, self.qr
        lam1 = f.lambdas[0]
        A11 = self.A11
        Ax1 = self.Ax1[:p].T.reshape(J1, q1, p) if p else np.zeros((J1, q1, 0))
        Axr = self.Axr[:p].T if qr else None
        # conditional modes and e = Z'(y - X beta - Z Lambda u)
        u = self._modes(f, f.beta)
        u1 = u[:J1 * q1].reshape(J1, q1)
        ur = u[J1 * q1:]
        v1 = u1 @ lam1.T
        e1 = (self.Ax1[p] - f.beta @ self.Ax1[:p]).reshape(J1, q1) - (A11 @ v1[:, :, None])[:, :, 0]
        if qr:
            Ar1 = self.Ar1_dense
            Ar1_3 = Ar1.reshape(qr, J1, q1)
            lam_r = f.lam_r
            vr = lam_r @ ur
            e1 = e1 - (Ar1.T @ vr).reshape(J1, q1)
            er = self.Axr[p] - f.beta @ self.Axr[:p] - Ar1 @ v1.ravel() - self.Arr @ vr
        # Psi = Z' V^{-1} X R_X^{-T} = (Ax - A Lambda W) R_X^{-T}, W = Omega^{-1} Lambda' Ax
        need_psi = self.reml and p > 0
        if qr:
            Q = np.asarray(lam_r.T @ Ar1)                      # Lambda_r' A_r1
            Y = solve_triangular(f.Lrr, Q, lower=True, check_finite=False)
            Y3 = Y.reshape(qr, J1, q1)
            C = np.einsum("rjk,jkl->rjl", Y3 @ lam1, f.M11_inv)  # L_rr^-1 L_r1 L_11^-1
            Q3 = Q.reshape(qr, J1, q1)
        if need_psi:
            B1 = lam1.T @ Ax1            # lambda1' Ax1_j
            MB1 = f.M11_inv @ B1
            if qr:
                Br = np.asarray(lam_r.T @ Axr)
                rhs = Br - np.tensordot(Q3, lam1 @ MB1, axes=([1, 2], [0, 1]))
                Wr = solve_triangular(f.Lrr.T, solve_triangular(f.Lrr, rhs, lower=True, check_finite=False),
                                      lower=False, check_finite=False)
                W1 = MB1 - f.M11_inv @ (lam1.T @ np.tensordot(Q3, Wr, axes=([0], [0])))
                LWr = np.asarray(lam_r @ Wr)
            else:
                W1 = MB1
            LW1 = lam1 @ W1
            Phi1 = Ax1 - A11 @ LW1
            if qr:
                Phi1 = Phi1 - (Ar1.T @ LWr).reshape(J1, q1, p)
                Phir = Axr - Ar1 @ LW1.reshape(J1 * q1, p) - self.Arr @ LWr
            Psi1 = solve_triangular(f.Lxx, Phi1.reshape(J1 * q1, p).T, lower=True, check_finite=False).T
            Psi1 = Psi1.reshape(J1, q1, p)
            if qr:
                Psir = solve_triangular(f.Lxx, Phir.T, lower=True, check_finite=False).T

        n_eff = self.n - p if self.reml else self.n
        factor_r2 = n_eff / f.pwrss
        # per bar: S_k (log|Omega|), E_k (r^2), P_k (log|R_X|^2)
        inner = f.M11_inv
        if qr:
            inner = inner + np.einsum("rjk,rjl->jkl", C, C)
        S1 = ((inner @ lam1.T) @ A11).sum(axis=0)
        if qr:
            S1 = S1 - np.tensordot(C, Y3, axes=([0, 1], [0, 1]))
        bars = [(S1, e1.T @ u1, np.tensordot(Psi1, Psi1, axes=([0, 2], [0, 2])) if need_psi else None)]
        if qr:
            AL1 = (Ar1_3 @ lam1).reshape(qr, J1 * q1)
            Z1 = solve_triangular(f.Lrr, np.asarray(lam_r.T @ self.Arr), lower=True, check_finite=False)
            Drr = solve_triangular(f.Lrr.T, Z1 - C.reshape(qr, J1 * q1) @ AL1.T, lower=False, check_finite=False)
            offset = 0
            for block in self.design.blocks[1:]:
                q, J = block.n_terms, block.n_levels
                idx = slice(offset, offset + J * q)
                D = Drr[idx, idx].reshape(J, q, J, q)
                Sk = np.einsum("jajb->ab", D)
                Ek = er[idx].reshape(J, q).T @ ur[idx].reshape(J, q)
                Pk = None
                if need_psi:
                    Ps = Psir[idx].reshape(J, q, p)
                    Pk = np.tensordot(Ps, Ps, axes=([0, 2], [0, 2]))
                bars.append((Sk, Ek, Pk))
                offset += J * q
        grad = np.empty(self.layout.size)
        for k, (Sk, Ek, Pk) in enumerate(bars):
            r, c = self.layout.rows[k], self.layout.cols[k]
            g = 2.0 * Sk[c, r] - 2.0 * factor_r2 * Ek[r, c]
            if need_psi:
                g = g - 2.0 * (f.lambdas[k].T @ Pk)[c, r]
            grad[self.layout.slices[k]] = g
        return self._objective(f), grad

    # -- gradient and average information for scalar bars on the sparse path
    def internal_scoring(self, theta_internal: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """The criterion, its gradient and its average-information matrix in the internal
        theta, for designs whose bars are all scalar (``(1 | g)``) on the sparse path.

        With ``V = I + sum_k theta_k^2 Z_k Z_k'`` (relative to sigma^2), ``Omega = Lambda' Z'Z
        Lambda + I`` and ``P`` the REML projection (``V^-1`` for ML in the trace)::

            d_k = (2 / theta_k) [J_k - tr_k(Omega^-1) - |(Omega^-1 Lambda' Z'X R_X^-T)_k|^2
                                 - n_eff |u_k|^2 / r^2]

        (the third term for REML only; ``tr_k`` sums bar k's diagonal). ``tr(Omega^-1)`` over
        the first bar needs the whole inverse of the dense block, ``tr(M_rr^-1 W)`` with
        ``W = Omega_r1 M_11^-2 Omega_1r`` (W from the same sparse rank update as the factor),
        so a gradient costs about three factorizations. The information is Gilmour, Thompson
        & Cullis's (1995) average information of the profiled criterion: with
        ``w_k = dV/dtheta_k P y = 2 Z_k u_k``,
        ``H_kl = n_eff (w_k' P w_l / r^2 - q_k q_l / r^4) + delta_kl d_k / theta_k``,
        ``q_k = 2 |u_k|^2 / theta_k``; ``w' P w`` are forward solves with the factor of the
        augmented system, from cross-products alone.
        """
        theta = np.asarray(theta_internal, dtype=float)
        f, parts = self._scalar_parts(theta)
        p, J1, qr = self.p, self.J1, self.qr
        n_eff = self.n - p if self.reml else self.n
        levels, trace, psi, u_sq, u1, ur = (parts[k] for k in ("levels", "trace", "psi", "u_sq", "u1", "ur"))
        forward, pwrss = parts["forward"], f.pwrss
        # profiled: sigma^2 at its optimum r^2 / n_eff
        grad = self._theta_gradient(theta, parts, pwrss / n_eff)

        # Z'w_k, X'w_k for w_k = 2 Z_k u_k, from cross-products
        K = len(levels)
        z1w, zrw, xw = np.empty((J1, K)), np.empty((qr, K)), np.empty((p, K))
        z1w[:, 0] = 2.0 * self.A11[:, 0, 0] * u1
        zrw[:, 0] = 2.0 * (self.Ar1 @ u1)
        xw[:, 0] = 2.0 * (self.Ax1[:p] @ u1)
        for k, sl in enumerate(self._rest_slices, start=1):
            uk = np.zeros(qr)
            uk[sl] = ur[sl]
            z1w[:, k] = 2.0 * (self.Ar1.T @ uk)
            zrw[:, k] = 2.0 * (self.Arr[:, sl] @ ur[sl])
            xw[:, k] = 2.0 * (self.Axr[:p, sl] @ ur[sl])
        # w_k' w_l = 2 u_l' Z_l' w_k
        ww = np.empty((K, K))
        ww[0] = 2.0 * (u1 @ z1w)
        for k, sl in enumerate(self._rest_slices, start=1):
            ww[k] = 2.0 * (ur[sl] @ zrw[sl])
        ww = 0.5 * (ww + ww.T)
        z1, zr, zx = forward(theta[0] * z1w, f.lam_r.diagonal()[:, None] * zrw, xw)
        wpw = ww - z1.T @ z1 - zr.T @ zr - zx.T @ zx
        q = 2.0 * np.array(u_sq) / theta
        info = n_eff * (wpw / pwrss - np.outer(q, q) / pwrss**2)
        return self._objective(f), grad, info + np.diag(grad / theta)

    def deviance_gradient(self, theta: np.ndarray, sigma: float) -> np.ndarray:
        """Gradient of lmerTest's ``devfun_vp``, ``-2 log L`` (REML: restricted) at
        ``(theta, sigma)`` with ``sigma`` not profiled, in lme4's theta and sigma (user's
        units), for scalar bars on the sparse path: with ``rss`` the penalized residual at
        ``theta``, ``d/d theta_k = (2 / theta_k) (J_k - tr_k(Omega^-1) - |Psi_k|^2
        - |u_k|^2 / sigma^2)`` (internal units) and ``d/d sigma = 2 n_eff / sigma - 2 rss / sigma^3``
        (see :meth:`internal_scoring`)."""
        theta_user = self._checked_theta(theta)
        ti = self.to_internal(theta_user)
        f, parts = self._scalar_parts(ti)
        n_eff = self.n - self.p if self.reml else self.n
        s2 = (float(sigma) / self.y_scale) ** 2
        grad = self._theta_gradient(ti, parts, s2)
        rss = f.pwrss * self.y_scale**2
        return np.r_[grad * self.theta_scale, 2.0 * n_eff / sigma - 2.0 * rss / sigma**3]

    @staticmethod
    def _theta_gradient(theta: np.ndarray, parts: dict, s2: float) -> np.ndarray:
        """``d/d theta_k`` (internal) of ``-2 log L`` at the relative residual variance ``s2``
        from :meth:`_scalar_parts`: ``(2 / theta_k) (J_k - tr_k - |Psi_k|^2 - |u_k|^2 / s2)``."""
        return np.array([(2.0 / theta[k]) * (parts["levels"][k] - parts["trace"][k] - parts["psi"][k]
                                             - parts["u_sq"][k] / s2) for k in range(len(theta))])

    def _scalar_inverse_diagonals(self, theta: np.ndarray, L11: np.ndarray,
                                  Lrr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The diagonal of ``Omega^-1`` at a factor of scalar bars on the sparse path: over the
        first bar's levels ``1/m_j + (theta_1/m_j)^2 a_j' Lambda_r M_rr^-1 Lambda_r a_j``
        (``a_j`` the column of ``A_r1``: one sparse product over the rank update's pairs, each
        off-diagonal pair counted twice), and ``diag(M_rr^-1)`` over the others' (``M_rr^-1``
        from ``dpotri``: the whole inverse of the dense block costs two factorizations)."""
        from scipy.linalg.lapack import dpotri

        t1 = theta[0]
        m = L11[:, 0, 0] ** 2
        d = self.lambda_rest(theta).diagonal()
        Minv, info = dpotri(Lrr, lower=1)
        if info != 0:
            raise FitError("the inverse of the random-effects block failed")
        rows, cols = self._g_rows, self._g_cols
        quad = self._g_map.T @ (self._g_weight * Minv[rows, cols] * d[rows] * d[cols])
        return 1.0 / m + (t1 / m) ** 2 * quad, np.diag(Minv).copy()

    def _scalar_backward(self, f: _Factor, z1: np.ndarray, zr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``L^-T [z1; zr]`` for the factor ``L = [[L11, 0], [L_r1, L_rr]]`` of ``Omega`` with a
        scalar first bar (``L11 = sqrt(m)``, ``L_r1 = Lambda_r A_r1 theta_1 / sqrt(m)``);
        vectors or columns. Without other bars ``zr`` is empty."""
        root_m = f.L11[:, 0, 0].reshape((-1,) + (1,) * (z1.ndim - 1))
        if not self.qr:
            return z1 / root_m, zr
        xr = solve_triangular(f.Lrr, zr, lower=True, trans="T", check_finite=False)
        d = f.lam_r.diagonal().reshape((-1,) + (1,) * (zr.ndim - 1))
        back = np.asarray(self.Ar1.T @ (d * xr))
        return (z1 - f.lambdas[0][0, 0] * back / root_m) / root_m, xr

    def _scalar_parts(self, theta: np.ndarray):
        """The factor at the internal ``theta`` and the pieces of the scalar-bar gradient:
        levels, ``tr_k(Omega^-1)``, ``|Psi_k|^2`` (REML), ``|u_k|^2``, the modes and the
        forward solve with the factor."""
        if not self.has_scoring:
            raise FitError("the scalar-bar gradient needs a design of scalar bars on the sparse path")
        if np.any(theta <= 0):
            raise FitError("the scalar-bar gradient needs every theta positive")
        f = self._factor(theta)
        self.gradient_evaluations += 1
        p, J1 = self.p, self.J1
        t1 = theta[0]
        m = f.M11_inv[:, 0, 0] ** -1.0           # Omega_11 = diag(m)
        d = f.lam_r.diagonal()
        u = self._modes(f, f.beta)
        u1, ur = u[:J1], u[J1:]
        # tr(Omega^-1) per bar
        diag11, diag_rr = self._scalar_inverse_diagonals(theta, f.L11, f.Lrr)
        trace = [float(diag11.sum())] + [float(diag_rr[sl].sum()) for sl in self._rest_slices]
        levels = [J1] + [sl.stop - sl.start for sl in self._rest_slices]
        u_sq = [float(u1 @ u1)] + [float(ur[sl] @ ur[sl]) for sl in self._rest_slices]

        def forward(c1, cr, cx=None):
            """L^-1 [c1; cr; (cx)] for the factor of Omega (and of the augmented system)."""
            z1 = c1 / np.sqrt(m)[:, None]
            y1 = (t1 / m)[:, None] * c1
            zr = solve_triangular(f.Lrr, cr - d[:, None] * np.asarray(self.Ar1 @ y1), lower=True, check_finite=False)
            if cx is None:
                return z1, zr
            zx = solve_triangular(f.Lxx, cx - self.Ax1[:p] @ y1 - f.Lxr[:p] @ zr, lower=True, check_finite=False) \
                if p else np.zeros((0, c1.shape[1]))
            return z1, zr, zx

        psi = np.zeros(len(levels))
        if self.reml and p:
            # Omega^-1 Lambda' Z'X R_X^-T, by a forward and a backward solve
            x1, xr = self._scalar_backward(f, *forward(t1 * self.Ax1[:p].T, d[:, None] * self.Axr[:p].T))
            rinv = solve_triangular(f.Lxx, np.eye(p), lower=True, check_finite=False)
            psi1, psir = x1 @ rinv.T, xr @ rinv.T
            psi = np.array([float(np.sum(psi1**2))] + [float(np.sum(psir[sl] ** 2)) for sl in self._rest_slices])
        return f, {"levels": levels, "trace": trace, "psi": psi, "u_sq": u_sq, "u1": u1, "ur": ur,
                   "forward": forward}

    # -- out of core: the same deviance from cross-products (see CrossProducts)
    @classmethod
    def from_cross_products(cls, design: Design, products: "CrossProducts", reml: bool = True) -> "ProfiledDeviance":
        """The deviance of ``design`` (one bar: its block gives the terms and levels; no row
        is read) from ``products``, with the internal reparametrization of ``__init__``
        (centered and scaled fixed columns, centered and scaled response, scaled bar
        columns) computed from the cross-products alone, so ``solve`` and everything after it
        are shared with the in-memory path (tests/test_outofcore.py checks that they agree)."""
        if len(design.blocks) != 1:
            raise FitError("the deviance from cross-products supports one random-effect term")
        self = cls.__new__(cls)
        self.design, self.reml = design, reml
        self.layout = ThetaLayout.from_design(design)
        block = design.blocks[0]
        q, J, p = block.n_terms, block.n_levels, products.XtX.shape[0]
        self.q_sizes = [q]
        self.n, self.p = int(products.n), p
        names = list(design.fixed_names)
        self.intercept_col = names.index("(Intercept)") if "(Intercept)" in names else None
        center = np.asarray(products.x_center, dtype=float)
        if self.intercept_col is None and (np.any(center != 0) or products.y_center != 0):
            raise FitError("cross-products of a model without an intercept must not be centered")
        one_coef = np.zeros(p)
        if self.intercept_col is not None:
            if center[self.intercept_col] != 0:
                raise FitError("the intercept column of the cross-products must not be centered")
            one_coef[self.intercept_col] = 1.0
        x_scale = np.sqrt(np.diag(products.XtX) / self.n)
        x_scale = np.where(x_scale > 0, x_scale, 1.0)
        self.x_center, self.x_scale, self.one_coef = center, x_scale, one_coef
        T = np.eye(p)
        if self.intercept_col is not None:
            T[self.intercept_col] -= center
        self.T = T / x_scale[None, :]
        self.log_det_T = -float(np.sum(np.log(x_scale)))
        self.y_shift = float(products.y_center)
        self.y_scale = float(np.sqrt(products.yty / self.n)) or 1.0
        self._Xf = self._yf = None
        scale = np.where(products.z_rms > 0, products.z_rms, 1.0)
        self.term_scales = [scale]
        self._X = None
        self.theta_scale = np.concatenate([scale[rows] for rows in self.layout.rows])
        self.evaluations = 0
        self.gradient_evaluations = 0
        self.q1, self.J1 = q, J
        self.A11 = products.ZtZ / np.outer(scale, scale)
        zx = np.concatenate([products.ZtX / x_scale[None, None, :],
                             products.Zty[:, :, None] / self.y_scale], axis=2) / scale[None, :, None]
        self.Ax1 = zx.transpose(2, 0, 1).reshape(p + 1, J * q)
        xx = products.XtX / np.outer(x_scale, x_scale)
        xy = products.Xty / (x_scale * self.y_scale)
        self.Axx = np.block([[xx, xy[:, None]], [xy[None, :], np.array([[products.yty / self.y_scale**2]])]])
        self.Ar1_dense = None
        self.qr = 0
        self.has_gradient = True
        self.has_scoring = False
        return self


# ---------------------------------------------------------------- from cross-products (out of core)
@dataclass(frozen=True)
class CrossProducts:
    """The cross-products the profiled deviance of one grouping factor consumes, without
    the rows (built out of core by :mod:`bayeslmm.scale.outofcore`).

    The fixed columns are centered at ``x_center`` (0 for the intercept's column, and all 0
    without an intercept) and the response at ``y_center``; the bar's columns ``Z`` are not
    centered. ``ZtZ`` (J, q, q), ``ZtX`` (J, q, p) and ``Zty`` (J, q) per level of the
    factor; ``XtX`` (p, p), ``Xty`` (p,), ``yty`` and ``n`` over all rows; ``z_rms`` (q,)
    the root mean square of each column of ``Z``. Centered products keep the digits that a
    large mean would cancel.
    """

    ZtZ: np.ndarray
    ZtX: np.ndarray
    Zty: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    n: int
    x_center: np.ndarray
    y_center: float
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
    if not isinstance(design, Design):
        hint = " (a model's is model.design)" if hasattr(design, "design") else ""
        raise FitError(f"make_deviance needs a Design{hint}, not {type(design).__name__}")
    if not isinstance(reml, (bool, np.bool_)):
        raise FitError(f"reml must be True or False, not {reml!r}")
    return ProfiledDeviance(design, reml=bool(reml))


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
    if deviance.has_scoring and np.all(solution.internal_theta > 0):
        return _scalar_conditional_variances(deviance, solution)
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


def _scalar_conditional_variances(deviance: ProfiledDeviance, solution: PLSSolution) -> list[np.ndarray]:
    """:func:`conditional_variances` for scalar bars on the sparse path, from the diagonal of
    ``Omega^-1`` (:meth:`ProfiledDeviance._scalar_inverse_diagonals`). InstEval: 25 ms instead
    of 140 ms (a dense ``L_rr^-1 A_r1`` of 1142 x 2972)."""
    theta = solution.internal_theta
    lam_r = deviance.lambda_rest(theta)
    diag11, diag_rr = deviance._scalar_inverse_diagonals(theta, solution.L11, solution.Lrr)
    rest = lam_r.diagonal() ** 2 * diag_rr
    out = [theta[0] ** 2 * diag11] + [rest[sl] for sl in deviance._rest_slices]
    return [v[:, None, None] / scale[0] ** 2 for v, scale in zip(out, deviance.term_scales)]


def _blas_single_thread():
    """A context that keeps BLAS on one thread while the blocks are factored.

    Two BLAS threads on the blocks here fight over the cores when the machine is busy: a
    256 x 256 Cholesky took 0.2 s instead of 5 ms, and an InstEval evaluation 1.6 s instead
    of 0.13 s, on a loaded 2-core machine. Uses threadpoolctl when it is installed (it
    comes with scikit-learn and many scientific stacks), else changes nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class Convergence(NamedTuple):
    """The verdict of :func:`check_convergence`."""
    ok: bool
    message: str
    restart: np.ndarray | None = None    # a better point to restart from
    free: np.ndarray | None = None       # indices of the components off their bounds
    hessian: np.ndarray | None = None    # the Hessian in those components, when it was computed


def check_convergence(deviance: ProfiledDeviance, theta: np.ndarray, grad: np.ndarray,
                      tol_grad: float = 1e-3, bound_tol: float = 1e-7) -> Convergence:
    """lme4's ``checkConv`` on the internal theta, plus its ``restart_edge``: no component
    on its bound decreases the criterion when moved off it, the gradient of the free
    components is small and their Hessian (finite differences of the analytic gradient)
    positive definite."""
    lower = deviance.layout.lower
    on_bound = np.isfinite(lower) & (theta - lower <= bound_tol)
    free = ~on_bound
    # a bounded component whose gradient is negative would decrease the criterion off the bound
    leaving = on_bound & (grad < -tol_grad)
    if np.any(leaving):
        restart = theta.copy()
        restart[leaving] += 1e-3
        return Convergence(False, f"{int(leaving.sum())} component(s) on the boundary with a negative gradient",
                           restart)
    # lme4's restart_edge: a component on its bound with a zero gradient (the criterion is even
    # in a diagonal entry whose column is zero) may still decrease when moved off the bound;
    # with the diagonal at 0 the rest of its column has a free sign, so both signs are tried
    value = deviance.internal_objective(theta)
    moves = {}
    for i in np.flatnonzero(on_bound):
        for flip in (False, True):
            trial = theta.copy()
            below = deviance.layout.column_below(i)
            if flip:
                if not below.size:
                    continue
                trial[below] = -trial[below]
            trial[i] = lower[i] + 1e-3
            trial_value = deviance.internal_objective(trial)
            if trial_value < value - 1e-10 * abs(value) and trial_value < moves.get(i, (np.inf,))[0]:
                moves[i] = (trial_value, flip, below)
    if moves:
        # move every such component off its bound at once, as far as still decreases
        best = (value, None)
        for step in (0.3, 0.1, 3e-2, 1e-2, 1e-3):
            trial = theta.copy()
            for i, (_, flip, below) in moves.items():
                if flip:
                    trial[below] = -trial[below]
                trial[i] = lower[i] + step
            trial_value = deviance.internal_objective(trial)
            if trial_value < best[0]:
                best = (trial_value, trial)
        if best[1] is not None:
            return Convergence(False, f"{len(moves)} component(s) on the boundary decrease the criterion off it",
                               best[1])
    if np.max(np.abs(grad[free]), initial=0.0) > tol_grad:
        return Convergence(False, f"gradient {np.max(np.abs(grad[free])):.2e} on the free components")
    idx = np.flatnonzero(free)
    if idx.size == 0:
        return Convergence(True, "converged")
    # forward differences of the analytic gradient (one gradient per free component)
    h = 1e-5
    hess = np.empty((idx.size, idx.size))
    for a, i in enumerate(idx):
        step = np.zeros_like(theta)
        step[i] = h
        try:
            hess[:, a] = (deviance.internal_gradient(theta + step)[1][idx] - grad[idx]) / h
        except FitError:  # no factor next to the optimum (a perfect fit drives theta to infinity)
            return Convergence(True, "converged (the Hessian could not be evaluated next to the optimum)")
    hess = 0.5 * (hess + hess.T)
    values, vectors = np.linalg.eigh(hess)
    if values[0] < -1e-6 * max(1.0, abs(values[-1])):
        # a saddle: step along the direction of negative curvature, whichever way decreases
        for step in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3):
            for sign in (1.0, -1.0):
                trial = theta.copy()
                trial[idx] += sign * step * vectors[:, 0]
                trial = np.maximum(trial, lower)
                if deviance.internal_objective(trial) < value:
                    return Convergence(False, f"a saddle point (Hessian eigenvalue {values[0]:.3g})", trial)
        return Convergence(False, f"the Hessian has a negative eigenvalue ({values[0]:.3g})")
    return Convergence(True, "converged", free=idx, hessian=hess)


def newton_polish(deviance: ProfiledDeviance, theta: np.ndarray, grad: np.ndarray, free: np.ndarray,
                  hessian: np.ndarray, max_steps: int = 4) -> np.ndarray:
    """Newton steps on the free components from a converged point, with the Hessian
    :func:`check_convergence` computed there, while the gradient keeps shrinking.

    L-BFGS-B stops with gradients of 1e-7 to 1e-5 where the optimum is flat (sleepstudy's
    random slope), which leaves theta uncertain in its 7th digit. Two fits of the same
    criterion evaluated with different rounding (in memory and from out-of-core
    statistics) then differ there; the polish takes both to the stationary point, to
    round-off. A step is kept only if it lowers the gradient, does not raise the
    criterion beyond round-off and stays inside the bounds.
    """
    lower = deviance.layout.lower
    try:
        chol = np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        return theta
    value = deviance.internal_objective(theta)
    norm = np.max(np.abs(grad[free]))
    for _ in range(max_steps):
        step = np.linalg.solve(chol.T, np.linalg.solve(chol, grad[free]))
        trial = theta.copy()
        trial[free] -= step
        if np.any(trial < lower):
            break
        try:
            trial_value, trial_grad = deviance.internal_gradient(trial)
        except (FitError, np.linalg.LinAlgError):
            break
        trial_norm = np.max(np.abs(trial_grad[free]))
        if not (trial_norm < norm and trial_value <= value + 1e-12 * max(1.0, abs(value))):
            break
        theta, value, grad, norm = trial, trial_value, trial_grad, trial_norm
    return theta


def optimize_with_gradient(deviance: ProfiledDeviance, start: np.ndarray,
                           max_restarts: int = 10) -> tuple[np.ndarray, OptSummary]:
    """Minimize the criterion over the internal theta with bounded quasi-Newton steps on the
    analytic gradient (L-BFGS-B), then check like lme4's ``checkConv`` and restart where
    the check fails: from a saddle along the direction of negative curvature, off a bound
    whose gradient points inwards (lme4's ``restart_edge``)."""
    t0 = time.perf_counter()
    count0 = deviance.evaluations
    lower = deviance.layout.lower
    bounds = Bounds(lower, np.full(len(lower), np.inf))

    def fg(x):
        try:
            return deviance.internal_gradient(x)
        except (FitError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(x)

    x = np.asarray(start, dtype=float)
    message, ok = "", False
    # a first pass with the diagonal kept a little off 0: at 0 the criterion is even in a
    # diagonal entry whose column vanishes, so its gradient is 0 and quasi-Newton steps that
    # reach the bound would stay there (kb07's zero-correlation model fell to theta = 0)
    floor = Bounds(np.where(np.isfinite(lower), lower + 1e-2, lower), np.full(len(lower), np.inf))
    first = minimize(fg, np.maximum(x, floor.lb), jac=True, method="L-BFGS-B", bounds=floor,
                     options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-12, "gtol": 1e-6, "maxcor": 30})
    if np.isfinite(first.fun):
        x = first.x
    for attempt in range(max_restarts + 1):
        result = minimize(fg, x, jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-15, "gtol": 1e-9,
                                   "maxcor": 30})
        if not np.isfinite(result.fun):
            raise FitError("the optimizer found no point with a finite criterion")
        x = np.maximum(result.x, lower)
        # the bounded components L-BFGS-B left a hair above the bound are tried at the bound
        near = np.isfinite(lower) & (x - lower < 1e-5) & (x > lower)
        if np.any(near):
            trial = np.where(near, lower, x)
            if deviance.internal_objective(trial) <= result.fun:
                x = trial
        value, grad = fg(x)
        verdict = check_convergence(deviance, x, grad)
        ok, message = verdict.ok, verdict.message
        if ok:
            if verdict.hessian is not None:
                x = newton_polish(deviance, x, grad, verdict.free, verdict.hessian)
            break
        if verdict.restart is not None:
            x = verdict.restart
        # else restart from here: a fresh quasi-Newton memory
    value = deviance.internal_objective(x)
    if not ok:
        message = message if result.success else f"{result.message}; {message}"
        warnings.warn(f"the optimizer (L-BFGS-B) did not converge: {message} (after "
                      f"{deviance.evaluations - count0} evaluations); the estimates may be off. "
                      "Check the model (rescale predictors, simplify the random part) or compare with "
                      "fit(method='map')", ConvergenceWarning, stacklevel=4)
    summary = OptSummary(optimizer="L-BFGS-B (scipy, analytic gradient)", initial=np.array(start),
                         final=np.array(x), objective=float(value),
                         evaluations=deviance.evaluations - count0, seconds=time.perf_counter() - t0,
                         converged=ok, message=message)
    return x, summary


def optimize_scoring(deviance: ProfiledDeviance, start: np.ndarray, max_iter: int = 40,
                     tol: float = 1e-9) -> tuple[np.ndarray, OptSummary]:
    """Minimize the criterion of a design of scalar bars on the sparse path (InstEval's
    ``(1|s) + (1|d) + (1|dept)``) by Newton steps on the analytic gradient with the
    average-information matrix (:meth:`ProfiledDeviance.internal_scoring`) and a
    backtracking line search; stops when the predicted decrease ``g' H^-1 g / 2`` is below
    ``tol``. A component heading for its bound at 0, a matrix that is not positive
    definite or no convergence within ``max_iter`` steps hands over to
    :func:`optimize_deviance` (COBYQA) from the best point so far.

    About 6 Newton steps replace COBYQA's ~70 evaluations; each step costs about three
    factorizations of the dense block (its inverse gives the traces)."""
    t0 = time.perf_counter()
    count0 = deviance.evaluations
    x = np.asarray(start, dtype=float)
    name, message, ok = "Newton (average information, analytic gradient)", "", False
    try:
        value, grad, hess = deviance.internal_scoring(x)
        for _ in range(max_iter):
            try:
                chol = np.linalg.cholesky(hess)
            except np.linalg.LinAlgError:
                # far from the optimum the exact diagonal term can break definiteness: a
                # Fisher-scoring step on the average information alone (positive semi-definite)
                info = hess - np.diag(grad / x)
                chol = np.linalg.cholesky(info + 1e-10 * np.max(np.abs(np.diag(info))) * np.eye(len(x)))
            step = solve_triangular(chol.T, solve_triangular(chol, grad, lower=True), lower=False)
            decrease = 0.5 * float(grad @ step)
            if decrease < tol:
                ok, message = True, f"predicted decrease {decrease:.2e} below {tol:.0e}"
                break
            # stay inside theta > 0: at most 90 % of the way to the bound
            shrinking = step > 0
            t = min(1.0, 0.9 * float(np.min(x[shrinking] / step[shrinking]))) if np.any(shrinking) else 1.0
            # the full step is scored at once (it is nearly always taken); shorter ones by value
            trial = x - t * step
            try:
                scored = deviance.internal_scoring(trial)
            except (FitError, np.linalg.LinAlgError):
                scored = (np.inf, None, None)
            if not scored[0] <= value - 1e-4 * t * 2.0 * decrease:
                for _ in range(30):
                    t *= 0.5
                    trial = x - t * step
                    if deviance.internal_objective(trial) <= value - 1e-4 * t * 2.0 * decrease:
                        break
                else:
                    message = "the line search found no decrease"
                    break
                scored = deviance.internal_scoring(trial)
            x, (value, grad, hess) = trial, scored
            if np.any(x < 1e-4 * np.maximum(1.0, np.max(x))):
                message = "a component is heading for its bound at 0"
                break
        else:
            message = f"no convergence in {max_iter} Newton steps"
    except (FitError, np.linalg.LinAlgError) as exc:
        message = str(exc)
    if not ok:
        # the derivative-free optimizer takes over: from the point reached when a component
        # heads for its bound (a singular fit), else from the start as well (the criterion
        # can have several local minima: a no-intercept design with two small crossed
        # factors stopped at 58.87 from Newton's point where the start led to 58.32)
        x, summary = optimize_deviance(deviance.internal_objective, x, deviance.layout.lower, counter=deviance)
        if "bound" not in message:
            x0, summary0 = optimize_deviance(deviance.internal_objective, np.asarray(start, dtype=float),
                                             deviance.layout.lower, counter=deviance)
            if summary0.objective < summary.objective:
                x, summary = x0, summary0
        return x, replace(summary, initial=np.asarray(start, dtype=float),
                          optimizer=f"{name}, then {summary.optimizer} ({message})",
                          evaluations=deviance.evaluations - count0, seconds=time.perf_counter() - t0)
    summary = OptSummary(optimizer=name, initial=np.asarray(start, dtype=float), final=np.array(x),
                         objective=float(value), evaluations=deviance.evaluations - count0,
                         seconds=time.perf_counter() - t0, converged=True, message=message)
    return x, summary


def fit_profiled(design: Design, reml: bool = True):
    """Fit by REML (``reml=True``) or ML: optimize the profiled deviance and build the
    :class:`~bayeslmm.results.point.PointResult` (lme4's ``optimizeLmer -> mkMerMod``)."""
    deviance = make_deviance(design, reml=reml)
    theta, opt = optimize_profiled(deviance)
    return point_result(deviance, theta, opt, method="reml" if reml else "ml")


def optimize_profiled(deviance: ProfiledDeviance) -> tuple[np.ndarray, OptSummary]:
    """Minimize a profiled deviance over lme4's ``theta`` (returned with the optimization
    summary, both on the user's scale).

    With the analytic gradient (every design whose dense blocks are moderate): L-BFGS-B
    with lme4's convergence check and restarts; with scalar bars on the sparse path (a large
    second factor, as in InstEval): Newton steps with the average information
    (:func:`optimize_scoring`); otherwise COBYQA.
    """
    with _blas_single_thread():
        if deviance.has_gradient:
            internal, opt = optimize_with_gradient(deviance, deviance.layout.initial())
        elif deviance.has_scoring:
            internal, opt = optimize_scoring(deviance, deviance.layout.initial())
        else:
            internal, opt = optimize_deviance(deviance.internal_objective, deviance.layout.initial(),
                                              deviance.layout.lower, counter=deviance)
    theta = deviance.from_internal(internal)
    return theta, replace(opt, initial=deviance.from_internal(opt.initial), final=theta)


def point_result(deviance: ProfiledDeviance, theta: np.ndarray, opt: OptSummary, method: str,
                 beta: np.ndarray | None = None, sigma: float | None = None,
                 criterion: float | None = None, priors_used: str | None = None):
    """Turn the solution at ``theta`` into a :class:`~bayeslmm.results.point.PointResult`.

    REML/ML profile ``beta`` and ``sigma`` out; the MAP back end passes its own
    ``beta``, ``sigma`` (user's scale) and ``criterion``.
    """
    from ..results.point import PointResult

    design = deviance.design
    scale = deviance.y_scale
    sol = deviance.solve(theta, beta_fixed=None if beta is None else np.asarray(beta) / scale)
    if sigma is None:
        n_eff = deviance.n - deviance.p if deviance.reml else deviance.n
        sigma = float(np.sqrt(sol.pwrss / n_eff)) * scale
    beta = sol.beta * scale if beta is None else np.asarray(beta, dtype=float)
    vcov_beta = sigma**2 * sol.vcov_unscaled
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
                       theta_lower=deviance.layout.lower, opt=opt, priors_used=priors_used,
                       term_scales=tuple(deviance.term_scales))
