"""Inference for REML/ML fits as lme4 users read it: Satterthwaite and Kenward-Roger
t- and F-tests (lmerTest 3.1, pbkrtest 0.5), and confidence intervals (lme4's Wald,
profile and parametric bootstrap).

Everything here is computed from the :class:`~bayeslmm.frontend.design.Design` and the fitted
parameters of a :class:`~bayeslmm.results.point.PointResult`; the REML back end is used only
through its public API (``make_deviance`` and the result's attributes).

The variance parameters are lmerTest's ``varpar = (theta, sigma)``. With
``Sigma(theta) = I + Z Lambda Lambda' Z'`` the marginal covariance of ``y`` is
``V = sigma^2 Sigma`` and, with ``P = Sigma^-1 - Sigma^-1 X (X' Sigma^-1 X)^-1 X' Sigma^-1``,
the deviance that lmerTest differentiates is (not profiled over sigma)

    REML: (n - p) log(2 pi sigma^2) + log|Sigma| + log|X' Sigma^-1 X| + y' P y / sigma^2
    ML:    n      log(2 pi sigma^2) + log|Sigma|                      + y' P y / sigma^2

Its gradient and Hessian are written analytically (the classical REML derivative
formulas, Searle et al. 1992, ch. 6), and every ``n x n`` product is reduced by the
Woodbury identity to ``q x q`` cross-products of ``[Z X y]`` under ``Sigma^-1``:
``C = G - B' M^-1 B`` with ``G = [Z X y]'[Z X y]``, ``B = Lambda' Z'[Z X y]`` and
``M = Lambda' Z'Z Lambda + I``. ``M`` is factored blockwise as the REML back end does:
the bar with the most levels is block diagonal (one small block per level), the others
enter through a dense Schur complement, so InstEval (73,421 rows, 4,114 random effects)
takes about a second.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from scipy.linalg import cho_factor, cho_solve, cholesky, solve_triangular

from ..errors import BayesLMMError, FitError
from ..frontend.design import Design, independent_columns

__all__ = ["InferenceWarning", "VarianceModel", "Satterthwaite", "contest", "anova", "confint"]

_LOG_2PI = np.log(2.0 * np.pi)
PROFILE_FTOL = 1e-10   # SLSQP tolerance of the inner profile fits (the deviance, not zeta)


class InferenceWarning(UserWarning):
    """A test or interval could be computed only approximately (a singular Hessian, a
    failed refit, a profile that does not reach its limit)."""


# ---------------------------------------------------------------- the random-effects structure
def _block_z(codes: np.ndarray, X: np.ndarray, n_levels: int) -> sp.csc_matrix:
    """``n x (levels * terms)`` random-effects matrix of one bar, level-major (lme4's order)."""
    n, q = X.shape
    rows = np.repeat(np.arange(n), q)
    cols = (codes[:, None] * q + np.arange(q)[None, :]).ravel()
    return sp.csc_matrix((X.ravel(), (rows, cols)), shape=(n, n_levels * q))


@dataclass(frozen=True)
class _Theta:
    """Where the entries of lme4's ``theta`` sit: block, row and column of each one in its
    bar's lower-triangular relative factor (column-major within a correlated bar)."""

    block: np.ndarray
    row: np.ndarray
    col: np.ndarray
    lower: np.ndarray

    @classmethod
    def from_design(cls, design: Design) -> "_Theta":
        block, row, col = [], [], []
        for k, b in enumerate(design.blocks):
            q = b.n_terms
            if b.correlated:
                r, c = np.tril_indices(q)
                order = np.lexsort((r, c))
                r, c = r[order], c[order]
            else:
                r = c = np.arange(q)
            block.extend([k] * len(r))
            row.extend(r)
            col.extend(c)
        row, col = np.array(row, dtype=int), np.array(col, dtype=int)
        return cls(np.array(block, dtype=int), row, col, np.where(row == col, 0.0, -np.inf))

    @property
    def size(self) -> int:
        return len(self.block)

    def factors(self, theta: np.ndarray, q_sizes) -> list[np.ndarray]:
        out = [np.zeros((q, q)) for q in q_sizes]
        for t, k, r, c in zip(theta, self.block, self.row, self.col):
            out[k][r, c] = t
        return out


@dataclass
class _Solution:
    """Cross-products under ``Sigma^-1`` at one ``theta`` (no ``sigma`` in them)."""

    logdet_sigma: float
    C: np.ndarray        # [Z X y]' Sigma^-1 [Z X y], y shifted by a constant in span(X)
    q: int
    p: int
    beta_shift: np.ndarray | None = None  # what the shift of y moved beta by

    @cached_property
    def Q(self) -> np.ndarray:           # X' Sigma^-1 X
        q, p = self.q, self.p
        return self.C[q:q + p, q:q + p]

    @cached_property
    def Q_factor(self):
        return cho_factor(self.Q, lower=True)

    @cached_property
    def Q_inv(self) -> np.ndarray:
        return cho_solve(self.Q_factor, np.eye(self.p))

    @cached_property
    def beta_internal(self) -> np.ndarray:  # of the shifted response
        q, p = self.q, self.p
        return cho_solve(self.Q_factor, self.C[q:q + p, q + p])

    @cached_property
    def beta(self) -> np.ndarray:
        return self.beta_internal if self.beta_shift is None else self.beta_internal + self.beta_shift

    @cached_property
    def rss(self) -> float:              # y' P y, the penalized residual sum of squares
        q, p = self.q, self.p
        return float(self.C[q + p, q + p] - self.C[q + p, q:q + p] @ self.beta_internal)

    @cached_property
    def logdet_Q(self) -> float:
        return 2.0 * float(np.log(np.diag(self.Q_factor[0])).sum())

    @property
    def CzX(self) -> np.ndarray:
        return self.C[:self.q, self.q:self.q + self.p]

    @property
    def Czz(self) -> np.ndarray:
        return self.C[:self.q, :self.q]

    @cached_property
    def A(self) -> np.ndarray:           # Z' P Z
        CzX = self.CzX
        return self.Czz - CzX @ cho_solve(self.Q_factor, CzX.T)

    @cached_property
    def a(self) -> np.ndarray:           # Z' P y
        q, p = self.q, self.p
        return self.C[:q, q + p] - self.CzX @ self.beta_internal


class VarianceModel:
    """The linear mixed model of a design as a function of its variance parameters.

    Holds the cross-products of ``[Z X y]`` (computed once) and evaluates, at any
    ``theta`` (lme4's scale), the cross-products under ``Sigma(theta)^-1``, the deviance
    in ``(theta, sigma)`` and its analytic gradient and Hessian, and the derivatives of
    ``Var(beta-hat)``.

    Parameters
    ----------
    design : Design
    reml : bool
        REML (True) or ML deviance.
    y : ndarray, optional
        A response to use instead of ``design.y`` (a bootstrap or profile refit).
    """

    def __init__(self, design: Design, reml: bool = True, X: np.ndarray | None = None,
                 y: np.ndarray | None = None):
        self.design = design
        self.reml = reml
        self.X = design.X if X is None else np.asarray(X, dtype=float)
        self.y = design.y if y is None else np.asarray(y, dtype=float)
        self.n, self.p = self.X.shape
        self.layout = _Theta.from_design(design)
        blocks = design.blocks
        self.q_sizes = [b.n_terms for b in blocks]
        self.J = [b.n_levels for b in blocks]
        sizes = [q * J for q, J in zip(self.q_sizes, self.J)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.q = int(self.offsets[-1])
        self.q1, self.J1 = self.q_sizes[0], self.J[0]
        self.n1 = self.q1 * self.J1
        # y minus its mean when the constant is a column of X: every quantity of the deviance
        # is invariant to it but beta's intercept (given back through beta_shift), and the
        # cross-products no longer cancel a large mean (northings near 5e6 m with 5 cm noise
        # gave a Hessian with a spurious eigenvalue of -4.7e6)
        ones = np.flatnonzero(np.all(self.X == 1.0, axis=0)) if self.p else np.zeros(0, dtype=int)
        self.beta_shift = None
        shift = 0.0
        if len(ones):
            shift = float(np.mean(self.y))
            self.beta_shift = np.zeros(self.p)
            self.beta_shift[ones[0]] = shift
        W = np.column_stack([self.X, self.y - shift])
        Z = sp.hstack([_block_z(b.codes, b.X, b.n_levels) for b in blocks]).tocsc()
        self.Z = Z
        # G = [Z W]'[Z W] in pieces: Z'Z sparse, Z'W and W'W dense
        self._set_products((Z.T @ Z).tocsr(), np.asarray(Z.T @ W), W.T @ W)

    def _set_products(self, ZtZ: sp.csr_matrix, ZtW: np.ndarray, WtW: np.ndarray) -> None:
        self.ZtZ, self.ZtW, self.WtW = ZtZ, ZtW, WtW
        self.Gz1 = sp.hstack([self.ZtZ[:self.n1], sp.csr_matrix(self.ZtW[:self.n1])]).tocsr()
        if len(self.design.blocks) > 1:
            self.ZrZr = self.ZtZ[self.n1:, self.n1:].toarray()
            self.Z1Zr = self.ZtZ[:self.n1, self.n1:].tocsr()

    @classmethod
    def of_design(cls, design: Design, reml: bool = True) -> VarianceModel:
        """The model of a design: from its rows, or, for a design whose rows stayed out of
        core (it has a ``cross_products()`` method), from its per-group statistics."""
        products = getattr(design, "cross_products", None)
        return cls(design, reml) if products is None else cls.from_cross_products(design, products(), reml)

    @classmethod
    def from_cross_products(cls, design: Design, products, reml: bool = True) -> VarianceModel:
        """The same model from :class:`~bayeslmm.fitting.reml.CrossProducts` (one grouping
        factor) instead of rows: everything here reads only ``[Z X y]'[Z X y]``.

        The products have the fixed columns centered (all but the intercept's); this model
        keeps ``X`` as the user gave it and centers only ``y``, so ``X = Xc + 1 c'`` is undone
        with the intercept's column of the products (``Xc' 1``, ``Z' 1``).
        """
        self = cls.__new__(cls)
        self.design, self.reml = design, reml
        block = design.blocks[0]
        J, q = block.n_levels, block.n_terms
        p = products.XtX.shape[0]
        self.n, self.p = int(products.n), p
        self.X = self.y = None
        self.layout = _Theta.from_design(design)
        self.q_sizes, self.J = [q], [J]
        self.offsets = np.array([0, q * J])
        self.q = self.n1 = q * J
        self.q1, self.J1 = q, J
        c = np.asarray(products.x_center, dtype=float)
        names = list(design.fixed_names)
        XtX, Xty, ZtX = products.XtX, products.Xty, products.ZtX
        self.beta_shift = None
        if "(Intercept)" in names:
            i = names.index("(Intercept)")
            XtX = XtX + np.outer(XtX[:, i], c) + np.outer(c, XtX[i]) + products.n * np.outer(c, c)
            Xty = Xty + c * Xty[i]
            ZtX = ZtX + ZtX[:, :, i][:, :, None] * c[None, None, :]
            self.beta_shift = np.zeros(p)
            self.beta_shift[i] = float(products.y_center)
        ZtZ = sp.bsr_matrix((np.asarray(products.ZtZ, dtype=float), np.arange(J), np.arange(J + 1)),
                            shape=(J * q, J * q)).tocsr()
        ZtW = np.concatenate([ZtX, products.Zty[:, :, None]], axis=2).reshape(J * q, p + 1)
        WtW = np.block([[XtX, Xty[:, None]], [Xty[None, :], np.array([[products.yty]])]])
        self.Z = None
        self._set_products(ZtZ, ZtW, WtW)
        return self

    # -------------------------------------------------------------- Lambda
    def factors(self, theta: np.ndarray) -> list[np.ndarray]:
        return self.layout.factors(np.asarray(theta, dtype=float), self.q_sizes)

    def _lambda(self, factors, first: int) -> sp.csr_matrix:
        return sp.block_diag([sp.kron(sp.identity(J, format="csr"), sp.csr_matrix(lam))
                              for lam, J in zip(factors[first:], self.J[first:])], format="csr")

    def D(self, theta: np.ndarray) -> sp.csr_matrix:
        """``Lambda Lambda'`` (block diagonal, q x q): the relative covariance of b."""
        facs = self.factors(theta)
        return sp.block_diag([sp.kron(sp.identity(J, format="csr"), sp.csr_matrix(lam @ lam.T))
                              for lam, J in zip(facs, self.J)], format="csr")

    # -------------------------------------------------------------- one solve
    def solve(self, theta: np.ndarray) -> _Solution:
        """``C = [Z X y]' Sigma^-1 [Z X y]`` and ``log|Sigma|`` at ``theta``."""
        if self.q <= self.dense_limit:
            return self._solve_dense(theta)
        facs = self.factors(theta)
        q1, J1, n1, q, p = self.q1, self.J1, self.n1, self.q, self.p
        lam1 = facs[0]
        A11 = self.ZtZ[:n1, :n1]
        # per-level blocks of Z1'Z1 (it is block diagonal)
        blocks11 = self._blocks11 if hasattr(self, "_blocks11") else _diag_blocks(A11, J1, q1)
        self._blocks11 = blocks11
        M11 = np.einsum("ki,jkl,lm->jim", lam1, blocks11, lam1) + np.eye(q1)
        L11 = np.linalg.cholesky(M11)
        logdet = 2.0 * float(np.log(np.einsum("jii->ji", L11)).sum())
        M11_inv = np.linalg.inv(M11)
        V1 = np.einsum("ik,jkl,ml->jim", lam1, M11_inv, lam1)     # lam1 M_j^-1 lam1'
        V1_bsr = sp.bsr_matrix((V1, np.arange(J1), np.arange(J1 + 1)), shape=(n1, n1))
        G1 = self.Gz1                                             # rows of G for block 1
        C = self._dense_G()
        C -= (G1.T @ (V1_bsr @ G1)).toarray()
        if len(facs) > 1:
            Lam1 = sp.kron(sp.identity(J1, format="csr"), sp.csr_matrix(lam1)).tocsr()
            Lamr = self._lambda(facs, 1)
            M1r = (Lam1.T @ self.Z1Zr @ Lamr).tocsr()
            Minv_bsr = sp.bsr_matrix((M11_inv, np.arange(J1), np.arange(J1 + 1)), shape=(n1, n1))
            Kt = (Minv_bsr @ M1r).tocsc()                        # M11^-1 M1r
            Mrr = np.asarray((Lamr.T @ sp.csr_matrix(self.ZrZr) @ Lamr).todense()) + np.eye(q - n1)
            S = Mrr - np.asarray((M1r.T @ Kt).todense())
            try:
                Ls = cholesky(S, lower=True, check_finite=False)
            except np.linalg.LinAlgError as exc:
                raise FitError(f"the random-effects system is not positive definite at theta={theta}") from exc
            logdet += 2.0 * float(np.log(np.diag(Ls)).sum())
            # K B with K = [-M1r' M11^-1, I] and B = Lambda' G_{Z,:}
            Br = Lamr.T @ sp.hstack([self.ZtZ[n1:], sp.csr_matrix(self.ZtW[n1:])]).tocsr()
            B1 = Lam1.T @ G1
            KB = np.asarray((Br - Kt.T @ B1).todense())
            R = solve_triangular(Ls, KB, lower=True, check_finite=False)
            C -= R.T @ R
        return _Solution(logdet_sigma=logdet, C=C, q=q, p=p, beta_shift=self.beta_shift)

    # Up to this many random effects, solve() factors the dense q x q system instead of the
    # blocked one. Off by default: the blocked solve was as fast for two crossed bars and
    # 200 times faster for one bar of 65 x 3 (a dense q^3 factorization on a loaded machine);
    # the dense path stays as an independent check of the blocked one (tests).
    dense_limit = 0

    def _solve_dense(self, theta: np.ndarray) -> _Solution:
        if not hasattr(self, "_G"):
            self._G = self._dense_G()
        G, q = self._G, self.q
        lam = self._lambda(self.factors(theta), 0).toarray()
        B = lam.T @ G[:q]
        M = B[:, :q] @ lam + np.eye(q)
        try:
            L = cholesky(M, lower=True, check_finite=False)
        except np.linalg.LinAlgError as exc:
            raise FitError(f"the random-effects system is not positive definite at theta={theta}") from exc
        R = solve_triangular(L, B, lower=True, check_finite=False)
        return _Solution(logdet_sigma=2.0 * float(np.log(np.diag(L)).sum()), C=G - R.T @ R, q=q, p=self.p,
                         beta_shift=self.beta_shift)

    def _dense_G(self) -> np.ndarray:
        q, p = self.q, self.p
        # zeros (lazily zeroed pages) and a scatter of the non-zeros: InstEval's 4,117^2 took
        # 0.35 s through toarray(), which builds and copies a second dense matrix
        G = np.zeros((q + p + 1, q + p + 1))
        if not hasattr(self, "_ztz_coo"):
            coo = self.ZtZ.tocoo()
            coo.sum_duplicates()
            self._ztz_coo = coo
        G[self._ztz_coo.row, self._ztz_coo.col] = self._ztz_coo.data
        G[:q, q:] = self.ZtW
        G[q:, :q] = self.ZtW.T
        G[q:, q:] = self.WtW
        return G

    # -------------------------------------------------------------- deviance
    @property
    def n_eff(self) -> int:
        return self.n - self.p if self.reml else self.n

    def deviance(self, theta: np.ndarray, sigma: float, sol: _Solution | None = None) -> float:
        """lmerTest's ``devfun_vp``: -2 log (restricted) likelihood at ``(theta, sigma)``."""
        sol = self.solve(theta) if sol is None else sol
        value = sol.logdet_sigma + self.n_eff * (_LOG_2PI + 2.0 * np.log(sigma)) + sol.rss / sigma**2
        if self.reml:
            value += sol.logdet_Q
        return float(value)

    def profiled_deviance(self, theta: np.ndarray, sol: _Solution | None = None) -> float:
        """The deviance with ``sigma`` profiled out (lme4's criterion)."""
        sol = self.solve(theta) if sol is None else sol
        value = sol.logdet_sigma + self.n_eff * (1.0 + _LOG_2PI + np.log(sol.rss / self.n_eff))
        if self.reml:
            value += sol.logdet_Q
        return float(value)

    def profiled_objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """:meth:`profiled_deviance` and its gradient in ``theta``, for a bounded optimizer
        (``jac=True``); 1e300 and a zero gradient where ``theta`` gives no factorization."""
        try:
            sol = self.solve(theta)
            sigma = np.sqrt(sol.rss / self.n_eff)
            return self.profiled_deviance(theta, sol), self.gradient(theta, sigma, sol)[:-1]
        except (FitError, np.linalg.LinAlgError):
            return 1e300, np.zeros_like(theta)

    # -------------------------------------------------------------- derivatives
    def _e(self, facs) -> list[np.ndarray]:
        """``d(lambda lambda')/d theta_i`` of every theta entry (in its bar, q_k x q_k)."""
        out = []
        for k, r, c in zip(self.layout.block, self.layout.row, self.layout.col):
            lam = facs[k]
            e = np.zeros_like(lam)
            e[r, :] += lam[:, c]
            e[:, r] += lam[:, c]
            out.append(e)
        return out

    def _e2(self, i: int, j: int) -> np.ndarray | None:
        """``d^2(lambda lambda')/d theta_i d theta_j`` (None when it is zero)."""
        L = self.layout
        if L.block[i] != L.block[j] or L.col[i] != L.col[j]:
            return None
        e = np.zeros((self.q_sizes[L.block[i]],) * 2)
        e[L.row[i], L.row[j]] += 1.0
        e[L.row[j], L.row[i]] += 1.0
        return e

    def _block(self, M: np.ndarray, k: int, l: int) -> np.ndarray:
        o = self.offsets
        return M[o[k]:o[k + 1], o[l]:o[l + 1]].reshape(self.J[k], self.q_sizes[k], self.J[l], self.q_sizes[l])

    def _diag_sum(self, M: np.ndarray, k: int) -> np.ndarray:
        """``sum_j M[j-block, j-block]`` over the levels of bar k (q_k x q_k)."""
        B = self._block(M, k, k)
        return np.einsum("jajb->ab", B)

    def _pair_traces(self, M: np.ndarray, es) -> np.ndarray:
        """``tr(E_i M E_j M)`` for every pair of theta entries, ``E_i = I (x) e_i`` on its bar."""
        L = self.layout
        m = L.size
        out = np.zeros((m, m))
        K = len(self.q_sizes)
        for k in range(K):
            for l in range(k, K):
                ik = np.flatnonzero(L.block == k)
                il = np.flatnonzero(L.block == l)
                B = self._block(M, k, l)
                qk, ql = self.q_sizes[k], self.q_sizes[l]
                # T[(t,u),(s,v)] = sum_{a,b} B[a,t,b,u] B[a,s,b,v]
                F = np.ascontiguousarray(B.transpose(1, 3, 0, 2)).reshape(qk * ql, -1)
                T = (F @ F.T).reshape(qk, ql, qk, ql)
                for i in ik:
                    for j in il:
                        value = np.einsum("st,uv,tusv->", es[i], es[j], T)
                        out[i, j] = out[j, i] = value
        return out

    def _apply_E(self, e: np.ndarray, k: int, v: np.ndarray) -> np.ndarray:
        """``(I (x) e) v`` on bar k's rows of the q-vector ``v`` (zero elsewhere)."""
        o = self.offsets
        out = np.zeros_like(v)
        out[o[k]:o[k + 1]] = (v[o[k]:o[k + 1]].reshape(self.J[k], self.q_sizes[k]) @ e.T).ravel()
        return out

    def hessian(self, theta: np.ndarray, sigma: float, sol: _Solution | None = None) -> np.ndarray:
        """Analytic Hessian of :meth:`deviance` in ``(theta, sigma)``."""
        sol = self.solve(theta) if sol is None else sol
        facs = self.factors(theta)
        es = self._e(facs)
        L = self.layout
        m = L.size
        A, a = sol.A, sol.a
        A_tr = A if self.reml else sol.Czz       # the log-determinant terms
        H = np.zeros((m + 1, m + 1))
        traces = self._pair_traces(A_tr, es)
        Ea = [self._apply_E(es[i], L.block[i], a) for i in range(m)]
        AEa = [A @ v for v in Ea]
        diag_tr = [self._diag_sum(A_tr, k) for k in range(len(self.q_sizes))]
        o = self.offsets
        aa = [a[o[k]:o[k + 1]].reshape(self.J[k], self.q_sizes[k]) for k in range(len(self.q_sizes))]
        s2 = sigma**2
        for i in range(m):
            for j in range(i, m):
                value = -traces[i, j] + 2.0 * (Ea[i] @ AEa[j]) / s2
                e2 = self._e2(i, j)
                if e2 is not None:
                    k = L.block[i]
                    value += np.sum(e2 * diag_tr[k]) - np.einsum("jr,rs,js->", aa[k], e2, aa[k]) / s2
                H[i, j] = H[j, i] = value
            H[i, m] = H[m, i] = 2.0 * (a @ Ea[i]) / sigma**3
        H[m, m] = -2.0 * self.n_eff / s2 + 6.0 * sol.rss / sigma**4
        return H

    def gradient(self, theta: np.ndarray, sigma: float, sol: _Solution | None = None) -> np.ndarray:
        """Analytic gradient of :meth:`deviance` in ``(theta, sigma)`` (for tests and checks)."""
        sol = self.solve(theta) if sol is None else sol
        es = self._e(self.factors(theta))
        L = self.layout
        A_tr = sol.A if self.reml else sol.Czz
        g = np.empty(L.size + 1)
        for i in range(L.size):
            k = L.block[i]
            g[i] = np.sum(es[i] * self._diag_sum(A_tr, k)) - sol.a @ self._apply_E(es[i], k, sol.a) / sigma**2
        g[-1] = 2.0 * self.n_eff / sigma - 2.0 * sol.rss / sigma**3
        return g

    def vcov_beta(self, sigma: float, sol: _Solution) -> np.ndarray:
        return sigma**2 * sol.Q_inv

    def vcov_beta_jacobian(self, theta: np.ndarray, sigma: float, sol: _Solution | None = None) -> list[np.ndarray]:
        """``d Var(beta-hat) / d varpar_i`` for ``varpar = (theta, sigma)`` (lmerTest's Jac_list)."""
        sol = self.solve(theta) if sol is None else sol
        es = self._e(self.factors(theta))
        L = self.layout
        CXz = sol.CzX.T
        Qi = sol.Q_inv
        o = self.offsets
        out = []
        for i in range(L.size):
            k = L.block[i]
            part = CXz[:, o[k]:o[k + 1]].reshape(self.p, self.J[k], self.q_sizes[k])
            inner = np.einsum("pjs,st,rjt->pr", part, es[i], part)
            out.append(sigma**2 * Qi @ inner @ Qi)
        out.append(2.0 * sigma * Qi)
        return out


def _diag_blocks(A11: sp.csr_matrix, J: int, q: int) -> np.ndarray:
    """The ``J`` diagonal ``q x q`` blocks of a block-diagonal sparse matrix."""
    coo = A11.tocoo()
    out = np.zeros((J, q, q))
    np.add.at(out, (coo.row // q, coo.row % q, coo.col % q), coo.data)
    return out


# ---------------------------------------------------------------- Satterthwaite
class Satterthwaite:
    """lmerTest's Satterthwaite machinery at a fit's optimum.

    ``vcov_varpar = 2 H^+`` is the asymptotic covariance of ``varpar = (theta, sigma)``
    from the analytic Hessian ``H`` of the deviance (REML or ML, as the fit), and
    ``jacobian[i] = d Var(beta-hat) / d varpar_i``. For a contrast ``L`` (one row)
    ``df = 2 (L V L')^2 / (g' A g)`` with ``g_i = L J_i L'``.

    Singular fits: as lmerTest, the Hessian is eigen-decomposed and eigenvalues below
    ``tol = 1e-8`` are dropped (a Moore-Penrose inverse), the Hessian first scaled to a unit
    diagonal so that the rule does not depend on the units of y; each negative or near-zero
    eigenvalue is counted in one :class:`InferenceWarning` (lmerTest's "Model failed to
    converge with 1 negative eigenvalue" / "... close to zero"). A variance at 0 makes
    its theta's gradient of ``Var(beta)`` vanish, so it contributes nothing to the df.
    """

    tol = 1e-8

    def __init__(self, result):
        if result.method not in ("reml", "ml"):
            raise BayesLMMError(f"Satterthwaite tests need a REML or ML fit, not method={result.method!r}")
        self.result = result
        self.theta = np.asarray(result.theta, dtype=float)
        self.sigma = float(result.sigma)
        scalar = _scalar_sparse_deviance(result)
        if scalar is not None:
            self.model = scalar
            self.hessian, self.jacobian = _scalar_derivatives(scalar, self.theta, self.sigma)
        else:
            self.model = VarianceModel.of_design(result.design, reml=result.reml)
            sol = self.model.solve(self.theta)
            self.hessian = self.model.hessian(self.theta, self.sigma, sol)
            self.jacobian = self.model.vcov_beta_jacobian(self.theta, self.sigma, sol)
        self.vcov_beta = np.asarray(result.vcov_beta, dtype=float)
        # eigenvalues of the Hessian scaled to a unit diagonal, so that "close to zero" does
        # not depend on the units of y (sigma's curvature is n / sigma^2: 1e-18 for y in 1e9)
        diag = np.abs(np.diag(self.hessian))
        scale = np.where(diag > 0, 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)), 1.0)
        values, vectors = np.linalg.eigh(self.hessian * np.outer(scale, scale))
        negative = int(np.sum(values < -self.tol))
        zero = int(np.sum(np.abs(values) <= self.tol))
        self.n_dropped_eigenvalues = negative + zero
        if negative or zero:
            parts = []
            if negative:
                parts.append(f"{negative} negative eigenvalue(s): "
                             + " ".join(f"{v:.1e}" for v in values[values < -self.tol]))
            if zero:
                parts.append(f"{zero} eigenvalue(s) close to zero: "
                             + " ".join(f"{v:.1e}" for v in values[np.abs(values) <= self.tol]))
            warnings.warn("the Hessian of the deviance in (theta, sigma) has " + " and ".join(parts)
                          + "; they are dropped from its inverse (as lmerTest does), so the "
                          "Satterthwaite df are approximate", InferenceWarning, stacklevel=3)
        keep = values > self.tol
        vectors = vectors * scale[:, None]  # back from the unit diagonal: H^+ = S (S H S)^+ S
        self.vcov_varpar = 2.0 * (vectors[:, keep] / values[keep]) @ vectors[:, keep].T

    def df(self, L: np.ndarray) -> float:
        """Satterthwaite df of the one-row contrast ``L``."""
        L = np.asarray(L, dtype=float).ravel()
        var = L @ self.vcov_beta @ L
        grad = np.array([L @ J @ L for J in self.jacobian])
        return float(2.0 * var**2 / (grad @ self.vcov_varpar @ grad))

    # the interface the tests below share with KenwardRoger
    name = "Satterthwaite"

    @property
    def vcov(self) -> np.ndarray:
        return self.vcov_beta

    def ftest(self, L: np.ndarray, beta: np.ndarray) -> tuple[float, int, float]:
        """lmerTest's ``contestMD``: F value, numerator and denominator df of ``L beta = 0``.

        ``L V L'`` is eigen-decomposed; each of its ``k`` positive directions gets its own
        Satterthwaite df ``nu_m`` and the F-test's df is ``2 E / (E - k)`` with
        ``E = sum nu_m / (nu_m - 2)`` (2 when any ``nu_m <= 2``)."""
        PtL, d = _rotate(L, self.vcov_beta)
        k = len(d)
        if k == 1:
            t = (PtL[0] @ beta) / np.sqrt(d[0])
            return float(t * t), 1, self.df(PtL[0])
        F = float(np.sum((PtL @ beta) ** 2 / d) / k)
        nu = np.array([self.df(row) for row in PtL])
        return F, k, _combine_df(nu)


def _scalar_sparse_deviance(result):
    """The REML back end's deviance of a fit whose bars are all scalar and whose dense block
    is large (InstEval), with every theta off 0; else None. There the dense q x q
    cross-products of :class:`VarianceModel` (4,117^2 on InstEval: 1-3 s, more than the fit)
    are avoided: see :func:`_scalar_derivatives`."""
    from ..frontend.design import Design
    from .reml import make_deviance

    design = result.design
    if type(design) is not Design or not design.blocks or any(b.n_terms != 1 for b in design.blocks):
        return None
    theta = np.asarray(result.theta, dtype=float)
    if np.any(theta <= 1e-4 * max(1.0, float(np.max(theta)))):
        return None
    deviance = make_deviance(design, reml=result.reml)
    return deviance if deviance.has_scoring else None


def _scalar_derivatives(deviance, theta: np.ndarray, sigma: float, rel_step: float = 1e-5):
    """Hessian of the deviance in ``(theta, sigma)`` by central differences of its analytic
    gradient (:meth:`~bayeslmm.fitting.reml.ProfiledDeviance.deviance_gradient`), and the
    Jacobian of ``Var(beta-hat) = sigma^2 (X' V^-1 X)^-1`` by central differences of the
    factor's ``(X' V^-1 X)^-1`` in theta (exact in sigma). Steps of ``rel_step`` of each
    parameter: the result agrees with :class:`VarianceModel`'s analytic derivatives to ~1e-7
    (tests/test_inference.py)."""
    point = np.r_[theta, sigma]
    m = len(point)
    hessian = np.empty((m, m))
    for i in range(m):
        h = rel_step * abs(point[i])
        up, down = point.copy(), point.copy()
        up[i] += h
        down[i] -= h
        hessian[:, i] = (deviance.deviance_gradient(up[:-1], up[-1])
                         - deviance.deviance_gradient(down[:-1], down[-1])) / (2.0 * h)
    hessian = 0.5 * (hessian + hessian.T)
    jacobian = []
    for i in range(len(theta)):
        h = rel_step * abs(theta[i])
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        jacobian.append(sigma**2 * (deviance.solve(up).vcov_unscaled - deviance.solve(down).vcov_unscaled) / (2.0 * h))
    jacobian.append(2.0 * sigma * deviance.solve(theta).vcov_unscaled)
    return hessian, jacobian


def _rotate(L: np.ndarray, V: np.ndarray, eps: float = np.sqrt(np.finfo(float).eps)):
    """Rows of ``P' L`` for the positive eigenvalues ``d`` of ``L V L'`` (lmerTest's rank rule)."""
    values, vectors = np.linalg.eigh(L @ V @ L.T)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    keep = values > max(eps * values[0], 0.0)
    return (vectors.T @ L)[keep], values[keep]


def _combine_df(nu: np.ndarray, tol: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: one denominator df from per-direction df."""
    if len(nu) == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - len(nu))


# ---------------------------------------------------------------- tables
_DDF = {"satterthwaite": "satterthwaite", "kenward-roger": "kenward-roger", "kr": "kenward-roger"}


def ddf_method(result, ddf: str):
    """The (cached) Satterthwaite or Kenward-Roger object of a fit."""
    key = _DDF.get(str(ddf).lower().replace("_", "-").replace(" ", "-"))
    if key is None:
        raise BayesLMMError(f"unknown ddf {ddf!r}: use 'satterthwaite', 'kenward-roger' or None")
    return result._ddf_method(key)


def fixef_table(result, ddf: str = "satterthwaite") -> pd.DataFrame:
    """lmerTest's coefficient table: ``estimate, std_error, df, t_value, p_value``.

    With ``ddf="kenward-roger"`` the standard errors are the adjusted ones (pbkrtest's
    ``vcovAdj``), as lmerTest prints them.
    """
    method = ddf_method(result, ddf)
    p = len(result.beta)
    rows = [contest_1d(method, np.eye(p)[j], result.beta) for j in range(p)]
    return pd.DataFrame(rows, index=pd.Index(result.design.fixed_names, name="term"))


def contest_1d(method, L: np.ndarray, beta: np.ndarray, rhs: float = 0.0) -> dict:
    L = np.asarray(L, dtype=float).ravel()
    estimate = float(L @ beta)
    se = float(np.sqrt(L @ method.vcov @ L))
    df = method.df(L)
    t = (estimate - rhs) / se
    return {"estimate": estimate, "std_error": se, "df": df, "t_value": t,
            "p_value": float(2.0 * stats.t.sf(abs(t), df))}


def contest_md(method, L: np.ndarray, beta: np.ndarray, sigma: float) -> dict:
    F, k, den = method.ftest(L, beta)
    mean_sq = F * sigma**2
    return {"sum_sq": mean_sq * k, "mean_sq": mean_sq, "num_df": k, "den_df": den,
            "f_value": F, "p_value": float(stats.f.sf(F, k, den))}


def contest(result, L, ddf: str = "satterthwaite", joint: bool | None = None) -> pd.DataFrame:
    """Test the contrasts ``L beta = 0`` (lmerTest's ``contest``).

    Parameters
    ----------
    L : array_like, shape (p,) or (k, p), or dict name -> coefficient
        One contrast (a t-test) or ``k`` rows tested jointly (an F-test). A dict gives one
        contrast by coefficient name (``{"Days": 1}``).
    ddf : {"satterthwaite", "kenward-roger"}
    joint : bool, optional
        For a matrix: True (default for ``k > 1``) gives one F-test; False one t-test per row.

    Returns
    -------
    DataFrame
        t-test: ``estimate, std_error, df, t_value, p_value``; F-test: ``sum_sq, mean_sq,
        num_df, den_df, f_value, p_value``.
    """
    names = list(result.design.fixed_names)
    p = len(names)
    if isinstance(L, dict):
        unknown = [k for k in L if k not in names]
        if unknown:
            raise BayesLMMError(f"unknown coefficient(s) {unknown} in the contrast; the fixed effects are {names}")
        L = np.array([float(L.get(name, 0.0)) for name in names])
    L = np.asarray(L, dtype=float)
    if L.ndim == 1:
        L = L[None, :]
    if L.ndim != 2 or L.shape[1] != p:
        raise BayesLMMError(f"the contrast has {L.shape[-1]} columns; it needs one per fixed effect ({p}: {names})")
    if not np.all(np.isfinite(L)):
        raise BayesLMMError("the contrast has NaN or infinite entries")
    method = ddf_method(result, ddf)
    if joint is None:
        joint = L.shape[0] > 1
    if not joint:
        return pd.DataFrame([contest_1d(method, row, result.beta) for row in L])
    if not np.any(L):
        raise BayesLMMError("the contrast matrix is all zeros")
    return pd.DataFrame([contest_md(method, L, result.beta, result.sigma)])


def _containment(parts: dict[str, tuple[dict, ...]], labels: list[str]) -> dict[str, list[str]]:
    """lmerTest's ``containment``/``term_contain`` (the SAS definition): ``F2`` contains
    ``F1`` when every variable of ``F1`` is in ``F2``, ``F2`` has more variables, and the two
    involve the same numeric covariates. So ``Days`` is contained in ``Days:g`` but ``g`` is
    not (``Days:g`` has a covariate ``g`` lacks). A covariate is a numeric variable of one
    column (R's data class "numeric"); a matrix (``poly(x, 2)``) counts as R counts it, not
    as a covariate. A design without its terms' variables falls back on the names
    (``a:b`` -> ``a``, ``b``) with no covariates."""
    variables = {t: {part["name"] for part in parts.get(t, ())} or set(t.split(":")) for t in labels}
    numerics = {t: {part["name"] for part in parts.get(t, ())
                    if part["kind"] == "numeric" and part["values"].shape[1] == 1} for t in labels}
    return {t: [u for u in labels if variables[t] <= variables[u] and variables[u] - variables[t]
                and numerics[t] == numerics[u]] for t in labels}


def _zap(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall`` as far as it removes noise: entries that rounding to ``digits``
    significant digits of the largest entry would make zero are set to zero. R also rounds
    the other entries (1/3 -> 0.3333333); that shifts lmerTest's F values by up to ~1e-6
    relative (measured: 1.3e-6 on an unbalanced a*b*x model, 2e-7 on carrots' three-way
    model) and breaks, at that level, the independence of the coding and the agreement with
    OLS, so it is not reproduced."""
    x = np.array(x, dtype=float)
    peak = np.max(np.abs(x)) if x.size else 0.0
    if peak > 0:
        decimals = max(0, digits - int(np.ceil(np.log10(peak))))
        x[np.abs(x) < 0.5 * 10.0 ** -decimals] = 0.0
    return x


def _columns(parts: tuple[dict, ...], n: int, reduce: bool) -> tuple[list[np.ndarray], list[tuple]]:
    """The columns of one term and their keys (one level or covariate column per part).
    ``reduce=True``: R's ``contr.treatment`` (a factor the term codes by contrasts loses its
    first level); ``False``: one indicator per level, lmerTest's ``model.matrix(~ 0 + term)``."""
    units = []
    for part in parts:
        if part["kind"] == "numeric":
            units.append([(j, part["values"][:, j]) for j in range(part["values"].shape[1])])
        else:
            first = 1 if reduce and not part["full"] else 0
            units.append([(j, (part["codes"] == j).astype(float)) for j in range(first, len(part["levels"]))])
    columns, keys = [], []
    for combo in itertools.product(*units):
        column = np.ones(n)
        for _, values in combo:
            column = column * values
        columns.append(column)
        keys.append(tuple(j for j, _ in combo))
    return columns, keys


def _type3_contrasts(design: Design, parts: dict[str, tuple[dict, ...]], labels: list[str]) -> dict[str, np.ndarray]:
    """lmerTest 3.1-3's ``get_contrasts_type3`` / ``extract_contrasts_type3`` (see
    :func:`term_contrasts`), rows over the columns of ``design.X``."""
    n = design.nobs
    X_cols, X_keys, rd_cols, rd_keys = [], [], [], []
    for term, term_parts in parts.items():
        for reduce, cols, keys in ((True, X_cols, X_keys), (False, rd_cols, rd_keys)):
            columns, column_keys = _columns(term_parts, n, reduce)
            cols.extend(columns)
            keys.extend((term, key) for key in column_keys)
    # the model re-made with treatment contrasts, aliased columns dropped as R's qr() drops them
    keep = independent_columns(np.column_stack(X_cols))
    X = np.column_stack(X_cols)[:, keep]
    X_keys = [X_keys[j] for j in keep]
    rdX = np.column_stack(rd_cols)
    rd_index = {key: i for i, key in enumerate(rd_keys)}  # every treatment column is an rdX column
    # the basic contrasts: every column of the rank-deficient design in the treatment coding
    L = _zap(np.linalg.lstsq(X, rdX, rcond=None)[0].T)
    term_columns = {t: [j for j, key in enumerate(X_keys) if key[0] == t] for t in parts}
    contained_in = _containment(parts, labels)
    # higher-order terms first (R's stable order() on the number of variables)
    for term in sorted(labels, key=lambda t: -len(parts[t])):
        containers = [j for u in contained_in[term] for j in term_columns[u]]
        own = term_columns[term]
        if containers and own:
            A, B = L[:, containers], L[:, own]
            L[:, own] = _zap(B - A @ np.linalg.lstsq(A, B, rcond=None)[0])
    L = L[[rd_index[key] for key in X_keys]]
    # from the treatment coding to the model's own coding (X_treatment @ map = design.X)
    mapping = _zap(np.linalg.lstsq(X, design.X, rcond=None)[0])
    out = {}
    for term in labels:
        H = L[:, term_columns[term]].T
        H = H[np.abs(H).sum(axis=1) > 1e-8]
        out[term] = H @ mapping
    return out


def term_contrasts(design: Design, type: int = 3) -> dict[str, np.ndarray]:
    """lmerTest 3.1-3's hypothesis matrices (``show_tests``) of every fixed term but the
    intercept.

    Parameters
    ----------
    design : Design
    type : {3, 2, 1}

    Returns
    -------
    dict
        Term -> ``(k, p)`` matrix over the columns of ``design.X``; ``anova`` tests
        ``L beta = 0``. A term whose columns were all aliased gets a ``(0, p)`` matrix
        (lmerTest prints NA for it).

    Notes
    -----
    Containment is lmerTest's (SAS's): a term is contained in another when the other has all
    its variables and more, *and the same numeric covariates*. In ``y ~ x * g`` with ``x``
    numeric, ``x`` is contained in ``x:g`` but ``g`` is contained in nothing.

    - type 1 (sequential): the term's rows of the unit upper-triangular factor of ``X'X``
      (lmerTest's ``doolittle``).
    - type 2: a term contained in no other is tested marginally (its own columns); a term
      inside others is tested adjusted for every term that does not contain it:
      ``L = X_F' (I - H_N) X`` with ``H_N`` the projection on those terms' columns (the row
      space of lmerTest's ``doolittle`` on the reordered ``X``).
    - type 3: lmerTest's ``extract_contrasts_type3``. The fixed part is re-made with
      treatment contrasts (first level the reference) and, beside it, lmerTest's rank-deficient
      design ``rdX`` with one indicator per level in every term (covariates as they are, not
      centred). ``L = (X^+ rdX)'`` expresses every ``rdX`` column in the treatment
      coefficients; from the highest-order term down, the columns of ``L`` of a contained term
      are replaced by their residuals on the columns of the terms that contain it; the rows of
      the treatment coefficients, transposed, are the hypotheses, mapped to the model's own
      coding by ``X_treatment^+ X``. A factor is so tested averaged with equal weights over
      the levels of the factors it interacts with (sum-to-zero), a covariate's slope averaged
      likewise, and a factor crossed with a covariate at covariate = 0. The table does not
      depend on the coding (treatment, sum, reference level) of the model. With empty cells
      the hypotheses are lmerTest's (which then advises to interpret them with care).
      A model with a single term gets the type 1 contrasts, as lmerTest.
    """
    if type not in (1, 2, 3):
        raise BayesLMMError(f"type must be 1, 2 or 3, got {type!r}")
    terms = design.fixed_terms()
    p = design.n_fixed
    X = design.X
    parts = design.fixed_term_parts()
    # lmerTest's term labels: every term of the formula, its aliased ones included
    labels = [t for t in (parts or terms) if t != "(Intercept)"]
    empty = np.zeros((0, p))
    # fitted out of core, the rows stayed in the Dask dataframe: X'X from the statistics
    without_rows = X.shape[0] == 0 and design.nobs > 0
    XtX = VarianceModel.of_design(design).WtW[:p, :p] if without_rows else X.T @ X
    if type == 1 or p <= 1 or len(labels) <= 1:
        R = np.linalg.cholesky(XtX).T
        U = R / np.diag(R)[:, None]
        return {t: U[list(terms[t])] if t in terms else empty for t in labels}
    if type == 3 and without_rows:
        # a term in no interaction is tested by its own columns (lmerTest's, whatever the
        # coding); one inside an interaction needs the rows to re-code its factors
        contained_in = _containment(parts, labels)
        inside = [t for t in labels if contained_in[t]]
        if inside:
            raise BayesLMMError(f"a type III test of '{inside[0]}', which {contained_in[inside[0]]} contain(s), "
                                "re-codes the factors row by row, and this fit's rows stayed out of core: use "
                                "anova(type=2) or type=1, or contest() with your own contrast")
        return {t: np.eye(p)[list(terms[t])] if t in terms else empty for t in labels}
    if type == 3:
        if not parts:
            raise BayesLMMError("a type III table needs the variables of the fixed terms, which this "
                                "design does not hold; use anova(type=2) or contest()")
        out = _type3_contrasts(design, parts, labels)
        return {t: out[t] if t in terms else empty for t in labels}
    contained_in = _containment(parts, labels)
    out = {}
    for t in labels:
        if t not in terms:
            out[t] = empty
            continue
        cols = list(terms[t])
        if not contained_in[t]:
            out[t] = np.eye(p)[cols]
            continue
        others = [c for u, cs in terms.items() if u != t and u not in contained_in[t] for c in cs]
        if others:
            N = np.array(others)
            proj = XtX[np.ix_(cols, N)] @ np.linalg.solve(XtX[np.ix_(N, N)], XtX[N])
            out[t] = XtX[cols] - proj
        else:
            out[t] = XtX[cols]
    return out


def anova(result, type: int = 3, ddf: str = "satterthwaite") -> pd.DataFrame:
    """lmerTest's ``anova(fit, type, ddf)``: one F-test per fixed term (not the intercept).

    Parameters
    ----------
    result : PointResult
        A REML or ML fit.
    type : {3, 2, 1} or {"III", "II", "I"}
        Type III (default), II or sequential (I) hypotheses, lmerTest 3.1-3's; see
        :func:`term_contrasts` (including terms inside interactions, with factors of any
        coding and numeric covariates).
    ddf : {"satterthwaite", "kenward-roger"}

    Returns
    -------
    DataFrame
        Index ``term``; columns ``sum_sq, mean_sq, num_df, den_df, f_value, p_value``.
        ``mean_sq = F sigma^2`` and ``sum_sq = num_df * mean_sq``, as lmerTest. A term whose
        columns were all aliased has a row of NaN, as lmerTest's NA row. The hypothesis
        matrices (lmerTest's ``show_tests``) are :func:`term_contrasts`.
    """
    if isinstance(type, str):
        type = {"I": 1, "II": 2, "III": 3, "1": 1, "2": 2, "3": 3}.get(type.upper(), type)
    contrasts = term_contrasts(result.design, type)
    method = ddf_method(result, ddf)
    columns = ["sum_sq", "mean_sq", "num_df", "den_df", "f_value", "p_value"]
    rows = [contest_md(method, L, result.beta, result.sigma) if len(L) else dict.fromkeys(columns, np.nan)
            for L in contrasts.values()]
    frame = pd.DataFrame(rows, index=pd.Index(list(contrasts), name="term"), columns=columns)
    frame.attrs["heading"] = (f"Type {'I' * type} Analysis of Variance Table with "
                              f"{method.name}'s method")
    return frame


# ---------------------------------------------------------------- confidence intervals
def parameter_names(design: Design) -> list[str]:
    """lme4's ``confint(..., oldNames = FALSE)`` names of the variance parameters, in
    theta order (``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``), then
    ``sigma``."""
    layout = _Theta.from_design(design)
    names = []
    for k, r, c in zip(layout.block, layout.row, layout.col):
        block = design.blocks[k]
        if r == c:
            names.append(f"sd_{block.terms[r]}|{block.group}")
        else:
            names.append(f"cor_{block.terms[r]}.{block.terms[c]}|{block.group}")
    return names + ["sigma"]


def _robust_cholesky(S: np.ndarray, tol: float = 1e-12) -> np.ndarray | None:
    """Lower Cholesky factor of a positive semi-definite matrix (zero pivots allowed, as a
    variance at 0 needs); None if ``S`` is not positive semi-definite."""
    q = len(S)
    L = np.zeros_like(S)
    scale = max(float(np.max(np.abs(np.diag(S)))), 1e-300)
    for j in range(q):
        d = S[j, j] - L[j, :j] @ L[j, :j]
        if d < -tol * scale:
            return None
        if d <= tol * scale:
            rest = S[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]
            if np.any(np.abs(rest) > 1e-8 * np.sqrt(scale * np.maximum(np.diag(S)[j + 1:], 1e-300))):
                return None
            continue
        L[j, j] = np.sqrt(d)
        L[j + 1:, j] = (S[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
    return L


class _SdCor:
    """lme4's ``Sv_to_Cv`` / ``Cv_to_Sv``: ``(sd, cor, ..., sigma)`` <-> ``(theta, sigma)``."""

    def __init__(self, design: Design):
        self.layout = _Theta.from_design(design)
        self.q_sizes = [b.n_terms for b in design.blocks]
        self.correlated = [b.correlated for b in design.blocks]

    def from_theta(self, theta: np.ndarray, sigma: float) -> np.ndarray:
        out = np.empty(self.layout.size + 1)
        for k, lam in enumerate(self.layout.factors(theta, self.q_sizes)):
            cov = sigma**2 * lam @ lam.T
            sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
            for i in np.flatnonzero(self.layout.block == k):
                r, c = self.layout.row[i], self.layout.col[i]
                if r == c:
                    out[i] = sd[r]
                else:
                    out[i] = cov[r, c] / (sd[r] * sd[c]) if sd[r] * sd[c] > 0 else np.nan
        out[-1] = sigma
        return out

    def to_theta(self, phi: np.ndarray) -> np.ndarray | None:
        sigma = phi[-1]
        theta = np.empty(self.layout.size)
        for k, q in enumerate(self.q_sizes):
            idx = np.flatnonzero(self.layout.block == k)
            corr = np.eye(q)
            sd = np.zeros(q)
            for i in idx:
                r, c = self.layout.row[i], self.layout.col[i]
                if r == c:
                    sd[r] = phi[i]
                else:
                    corr[r, c] = corr[c, r] = phi[i]
            cov = corr * np.outer(sd, sd) / sigma**2
            lam = _robust_cholesky(cov) if self.correlated[k] else np.diag(sd / sigma)
            if lam is None:
                return None
            theta[idx] = lam[self.layout.row[idx], self.layout.col[idx]]
        return theta


# ---------------------------------------------------------------- R's splines, as lme4 reads profiles
@dataclass(frozen=True)
class PolySpline:
    """R's ``splines`` polynomial spline (class ``polySpline``): on ``[knots[i], knots[i+1]]``
    the value is ``sum_j coefficients[i, j] (x - knots[i])^j``.

    ``natural=True`` extrapolates linearly beyond the knots (R's ``npolySpline``, what
    ``interpSpline`` returns); otherwise a value outside ``[knots[0], knots[-1]]`` is NaN
    (R's NA from a plain ``polySpline``, what ``backSpline`` returns and lme4's
    ``confint.thpr`` replaces by the parameter's bound).
    """

    knots: np.ndarray
    coefficients: np.ndarray
    natural: bool = False

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        k, c = self.knots, self.coefficients
        # R: i <- cut(x, knots) (intervals closed on the right); i[x == knots[1]] <- 1
        i = np.searchsorted(k, x, side="left") - 1
        i = np.where(x == k[0], 0, i)
        inside = (x >= k[0]) & (x <= k[-1])
        i = np.clip(i, 0, len(k) - 2)
        dx = x - k[i]
        y = c[i, -1]
        for j in range(c.shape[1] - 2, -1, -1):
            y = y * dx + c[i, j]
        if self.natural:
            y = np.where(x < k[0], c[0, 0] + c[0, 1] * (x - k[0]), y)
            y = np.where(x > k[-1], c[-1, 0] + c[-1, 1] * (x - k[-1]), y)
        else:
            y = np.where(inside, y, np.nan)
        return y


def interp_spline(x, y) -> PolySpline:
    """R's ``splines::interpSpline(x, y)``: the natural cubic interpolating spline (second
    derivative 0 at both end knots, linear beyond them), as Taylor coefficients
    ``(y, y', y''/2, y'''/6)`` at each knot.

    R solves for B-spline coefficients and converts; this solves the classical tridiagonal
    system for the second derivatives, the same spline up to rounding.

    Raises
    ------
    BayesLMMError
        Fewer than two points, or two equal ``x`` (R: "values of x must be distinct").
    """
    from scipy.linalg import solve_banded

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    n = len(x)
    if n < 2:
        raise BayesLMMError(f"interp_spline needs at least 2 points, got {n}")
    h = np.diff(x)
    if np.any(h <= 0):
        raise BayesLMMError("interp_spline: values of x must be distinct")
    secant = np.diff(y) / h
    M = np.zeros(n)                      # second derivatives, 0 at both ends
    if n > 2:
        ab = np.zeros((3, n - 2))
        ab[0, 1:] = h[1:-1]
        ab[1] = 2.0 * (h[:-1] + h[1:])
        ab[2, :-1] = h[1:-1]
        M[1:-1] = solve_banded((1, 1), ab, 6.0 * np.diff(secant))
    coef = np.empty((n, 4))
    coef[:, 0] = y
    coef[:-1, 1] = secant - h * (2.0 * M[:-1] + M[1:]) / 6.0
    coef[-1, 1] = secant[-1] + h[-1] * (M[-2] + 2.0 * M[-1]) / 6.0
    coef[:, 2] = M / 2.0
    coef[:-1, 3] = np.diff(M) / (6.0 * h)
    coef[-1, 3] = coef[-2, 3]
    return PolySpline(x, coef, natural=True)


def back_spline(spline: PolySpline) -> PolySpline:
    """R's ``splines::backSpline``: the monotone inverse of an interpolating spline.

    Not the exact inverse of ``spline``: with ``(a_i, k_i)`` its (value, knot) pairs and
    ``s_i`` its slopes, each interior piece is the cubic in ``a`` through ``(a_i, k_i)``
    and ``(a_(i+1), k_(i+1))`` with slopes ``1/s_i, 1/s_(i+1)``; the two end pieces are
    quadratics matching the slope at their inner knot only, made linear if they would bend
    the wrong way. Outside the range of the values it is NaN.

    Raises
    ------
    BayesLMMError
        The values at the knots are not strictly monotone (R: "spline must be monotone").
    """
    knots = spline.knots
    nk = len(knots)
    kdiff = np.diff(knots)
    if np.any(kdiff <= 0):
        raise BayesLMMError("back_spline: knot positions must be strictly increasing")
    coeff = spline.coefficients
    bknots = coeff[:, 0]
    adiff = np.diff(bknots)
    if np.all(adiff < 0):
        reverse = True
    elif np.all(adiff > 0):
        reverse = False
    else:
        raise BayesLMMError("back_spline: spline must be monotone")
    bcoeff = np.zeros_like(coeff)
    bcoeff[:, 0] = knots
    with np.errstate(divide="ignore", invalid="ignore"):
        bcoeff[:, 1] = 1.0 / coeff[:, 1]
        for i in range(nk - 1):
            a = np.array([[adiff[i] ** 2, adiff[i] ** 3], [2 * adiff[i], 3 * adiff[i] ** 2]])
            b = np.array([kdiff[i] - adiff[i] * bcoeff[i, 1], bcoeff[i + 1, 1] - bcoeff[i, 1]])
            bcoeff[i, 2:4] = np.linalg.solve(a, b)
        bcoeff[nk - 1, 1:4] = np.nan
        last = nk - 2
        if nk > 2:
            bcoeff[0, 3] = bcoeff[last, 3] = 0.0
            bcoeff[0, 1:3] = np.linalg.solve(np.array([[adiff[0], adiff[0] ** 2], [1.0, 2 * adiff[0]]]),
                                             np.array([kdiff[0], 1.0 / coeff[1, 1]]))
            bcoeff[last, 2] = (kdiff[last] - adiff[last] * bcoeff[last, 1]) / adiff[last] ** 2
        if bcoeff[0, 2] > 0:
            bcoeff[0, 2] = 0.0
            bcoeff[0, 1] = kdiff[0] / adiff[0]
        if bcoeff[last, 2] < 0:
            bcoeff[last, 2] = 0.0
            bcoeff[last, 1] = kdiff[last] / adiff[last]
    if reverse:   # as R (whose decreasing case re-labels the pieces; lme4 never needs it)
        bknots, bcoeff = bknots[::-1], bcoeff[::-1]
    return PolySpline(np.array(bknots), bcoeff)


class Profile:
    """lme4's likelihood profile (``profile.merMod``) of every parameter of a fit.

    As lme4, the profile is of the ML deviance (a REML fit is refitted by ML first). A
    variance parameter (sd, correlation, ``sigma``) is fixed at a value and the deviance
    minimized over the others, on lme4's sd/correlation scale; a fixed effect ``beta_j`` is
    fixed by moving ``x_j beta_j`` into an offset and minimizing the ML deviance, profiled
    over ``sigma``, over ``theta``. The signed root is ``zeta = sign(x - x_hat) sqrt(dev(x)
    - dev_min)``.

    Two ways to read a limit off it (:meth:`interval`):

    * ``exact=False`` (the default, lme4 1.1-31's numbers): lme4's stepping algorithm
      (:meth:`points`: from the estimate, steps of about ``delta = cutoff / 8`` in zeta,
      ``cutoff = sqrt(qchisq(1 - 0.01, n_par))``, until ``|zeta| > cutoff`` or a bound),
      R's natural interpolating spline of zeta on the parameter through those points
      (:func:`interp_spline`), its inverse (:func:`back_spline`) read at ``-+z_(1 -
      alpha/2)``; a value the inverse cannot reach is the parameter's bound (an sd's 0, a
      correlation's -+1), as ``confint.thpr``.
    * ``exact=True``: the root of ``zeta(x) = -+z_(1 - alpha/2)`` itself (a safeguarded
      secant search to ``|zeta - target| < 1e-4``). Where the profile bends between lme4's
      points (a correlation, a near-singular 3 x 3 bar) lme4's spline is off the root by up
      to a few 1e-3 of the estimate; the root is the better likelihood interval, the
      spline the one lme4 users compare against.

    Notes
    -----
    A correlation whose profile levels off (the deviance with one of its sds at 0, where
    lme4's sd/cor scale leaves the correlation free) makes lme4's steps shrink to its
    ``minstep``; its inverse spline then fails and both lme4 and this class read the limit
    by linear interpolation, with an :class:`InferenceWarning`. The inner fits here reach
    the minimum over positive semi-definite covariances; lme4's BOBYQA fits over a box of
    sds and correlations can stop above it on a near-singular bar (exam_sex's 3 x 3: up to
    2.6e-3 of the estimate), which no reading of the spline reproduces.
    """

    # lme4 1.1-31's profile.merMod defaults
    ALPHAMAX = 0.01
    MAXPTS = 100
    DELTA_CUTOFF = 1.0 / 8.0
    MAXMULT = 10.0
    MINSTEP = 1e-6
    NON_MONO_TOL = 1e-2     # confint.thpr: a profile falling faster than this is "bad"

    def __init__(self, result):
        from .reml import fit_profiled

        self.design = result.design
        ml = result if result.method == "ml" else fit_profiled(result.design, reml=False)
        self.ml = ml
        self.model = VarianceModel(self.design, reml=False)
        self.sdcor = _SdCor(self.design)
        self.theta_hat = np.asarray(ml.theta, dtype=float)
        self.sigma_hat = float(ml.sigma)
        self.base = self.model.deviance(self.theta_hat, self.sigma_hat)
        self.phi_hat = self.sdcor.from_theta(self.theta_hat, self.sigma_hat)
        self.beta_hat = np.asarray(ml.beta, dtype=float)
        self.se = np.sqrt(np.diag(ml.vcov_beta))
        m = len(self.phi_hat)
        lower = np.where(self.sdcor.layout.row == self.sdcor.layout.col, 0.0, -1.0)
        self.lower = np.r_[lower, 0.0]
        self.upper = np.r_[np.where(lower == 0.0, np.inf, 1.0), np.inf]
        assert m == len(self.lower)

    # -------------------------------------------------------------- variance parameters
    def _phi(self, v: np.ndarray) -> np.ndarray:
        """sd/cor/sigma of ``v = (theta, log sigma)`` (a correlation with an sd at 0 reads 0)."""
        with np.errstate(all="ignore"):
            return np.nan_to_num(self.sdcor.from_theta(v[:-1], np.exp(v[-1])), nan=0.0)

    def _objective(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        """The ML deviance in ``v = (theta, log sigma)`` and its gradient (1e300 where the
        model cannot be solved, e.g. a step to an underflowing sigma)."""
        try:
            with np.errstate(all="ignore"):
                theta, sigma = v[:-1], np.exp(v[-1])
                sol = self.model.solve(theta)
                value = self.model.deviance(theta, sigma, sol)
                g = self.model.gradient(theta, sigma, sol)
        except (FitError, np.linalg.LinAlgError):
            return 1e300, np.zeros_like(v)
        if not (np.isfinite(value) and np.all(np.isfinite(g))):
            return 1e300, np.zeros_like(v)
        g[-1] *= sigma
        return value, g

    def _cor_plateau(self, w: int) -> float:
        """The lowest ML deviance with one of correlation ``w``'s two sds at 0, where lme4's
        sd/cor parameterization leaves the correlation free: the profile of a correlation
        is the smaller of this and the interior minimum (in theta the correlation is
        undefined there, so the constrained fit can only creep towards it)."""
        from scipy.optimize import minimize

        cache = self.__dict__.setdefault("_plateaus", {})
        if w not in cache:
            layout = self.sdcor.layout
            k = layout.block[w]
            v_hat = np.r_[self.theta_hat, np.log(self.sigma_hat)]
            best = np.inf
            for t in (layout.row[w], layout.col[w]):
                zero = np.flatnonzero((layout.block == k) & (layout.row == t))
                start = v_hat.copy()
                start[zero] = 0.0
                bounds = [(lo if np.isfinite(lo) else None, None) for lo in self.model.layout.lower] + [(None, None)]
                for i in zero:
                    bounds[i] = (0.0, 0.0)
                res = minimize(self._objective, start, jac=True, method="SLSQP", bounds=bounds,
                               options={"ftol": PROFILE_FTOL, "maxiter": 200})
                best = min(best, float(res.fun))
            cache[w] = best
        return cache[w]

    def _zeta_variance(self, w: int, x: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        """Minimize the ML deviance over ``v = (theta, log sigma)`` subject to ``phi_w(v) = x``.

        Working in theta keeps every covariance matrix positive semi-definite, which a
        search over correlations (with others fixed) does not."""
        from scipy.optimize import minimize

        objective = self._objective

        def constraint(v):
            return self._phi(v)[w] - x

        def constraint_jac(v):
            J = np.empty(len(v))
            for i in range(len(v)):
                h = 1e-7 * max(abs(v[i]), 1e-2)
                up, down = v.copy(), v.copy()
                up[i] += h
                down[i] -= h
                J[i] = (self._phi(up)[w] - self._phi(down)[w]) / (2 * h)
            return J

        given = start
        layout = self.sdcor.layout
        is_cor = w < layout.size and layout.row[w] != layout.col[w]
        side = (w, np.sign(x - self.phi_hat[w]))
        reached = self.__dict__.setdefault("_plateau_at", {})
        if is_cor and side in reached and abs(x - self.phi_hat[w]) >= reached[side]:
            # beyond a value whose profile was already the plateau (the profile rises
            # monotonically to it): lme4's minstep steps there, 1e-6 apart, cost no refit
            return float(side[1] * np.sqrt(max(self._cor_plateau(w) - self.base, 0.0))), given
        if w < layout.size and layout.row[w] == layout.col[w]:
            # start on the constraint: rescale the row of lambda whose norm is this sd
            start = start.copy()
            k, r = layout.block[w], layout.row[w]
            in_row = np.flatnonzero((layout.block == k) & (layout.row == r))
            norm = np.linalg.norm(start[in_row])
            target = x / np.exp(start[-1])
            if norm > 0:
                start[in_row] *= target / norm
            else:
                start[w] = target
        if w == len(self.phi_hat) - 1:      # sigma itself: a bound, no constraint needed
            v0 = start.copy()
            v0[-1] = np.log(x) if x > 0 else -np.inf
            if not np.isfinite(v0[-1]):     # sigma = 0: no finite deviance (lme4's NA)
                return np.nan, given
            bounds = [(lo if np.isfinite(lo) else None, None) for lo in self.model.layout.lower] + [(v0[-1], v0[-1])]
            res = minimize(objective, v0, jac=True, method="SLSQP", bounds=bounds,
                           options={"ftol": PROFILE_FTOL, "maxiter": 200})
        else:
            bounds = [(lo if np.isfinite(lo) else None, None) for lo in self.model.layout.lower] + [(None, None)]
            res = self._restart_off_boundary(
                lambda x0: minimize(objective, x0, jac=True, method="SLSQP", bounds=bounds,
                                    constraints=[{"type": "eq", "fun": constraint, "jac": constraint_jac}],
                                    options={"ftol": PROFILE_FTOL, "maxiter": 200}), start, len(start) - 1)
        value = float(res.fun) if abs(constraint(res.x)) <= 1e-6 * max(1.0, abs(x)) else np.inf
        pars = res.x
        if is_cor:
            plateau = self._cor_plateau(w)
            if plateau < value:
                value, pars = plateau, given
                reached[side] = min(reached.get(side, np.inf), abs(x - self.phi_hat[w]))
        diff = max(value - self.base, 0.0)
        return float(np.sign(x - self.phi_hat[w]) * np.sqrt(diff)), pars

    # -------------------------------------------------------------- fixed effects
    def _zeta_fixed(self, j: int, value: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        from scipy.optimize import minimize

        X = self.design.X
        keep = [i for i in range(X.shape[1]) if i != j]
        model = VarianceModel(self.design, reml=False, X=X[:, keep], y=self.design.y - X[:, j] * value)
        bounds = [(lo if np.isfinite(lo) else None, None) for lo in model.layout.lower]
        res = self._restart_off_boundary(
            lambda x0: minimize(model.profiled_objective, x0, jac=True, method="SLSQP", bounds=bounds,
                                options={"ftol": PROFILE_FTOL, "maxiter": 200}), start, len(start))
        diff = max(float(res.fun) - self.base, 0.0)
        return float(np.sign(value - self.beta_hat[j]) * np.sqrt(diff)), res.x

    def _restart_off_boundary(self, run, start: np.ndarray, m: int):
        """Run an inner fit; if it stopped with a variance at 0, run it again with that entry
        restored (the ML value, or 0.5 if that is 0 too), then at a fifth and a 25th of that,
        until a restart ends lower and off the bound; keep the best fit.
        (The deviance is even in a scalar bar's theta, so theta = 0 is always a stationary
        point a gradient method can stop at; and from far out SLSQP's first step can jump
        straight onto the bound, as on dyestuff2's intercept profile, whose minimum in theta
        leaves 0 just inside the 95% limits.)"""
        res = run(start)
        bounded = np.isfinite(self.model.layout.lower)
        stuck = bounded & (np.abs(res.x[:m]) <= 1e-8)
        if np.any(stuck):
            # the ML value, or a moderate relative sd where the ML fit is at 0 too
            restore = np.where(np.abs(self.theta_hat[stuck]) > 1e-4, self.theta_hat[stuck], 0.5)
            for fraction in (1.0, 0.2, 0.04):
                again = np.array(start, dtype=float)
                again[:m][stuck] = fraction * restore
                other = run(again)
                if other.fun < res.fun:
                    res = other
                    if not np.any(bounded & (np.abs(res.x[:m]) <= 1e-8)):
                        break
        return res

    # -------------------------------------------------------------- limits
    @cached_property
    def phi_se(self) -> np.ndarray:
        """Delta-method standard errors of sd/cor/sigma at the ML optimum (first guesses
        for the limits only)."""
        H = self.model.hessian(self.theta_hat, self.sigma_hat)
        values, vectors = np.linalg.eigh(H)
        keep = values > 1e-8 * max(values.max(), 1e-300)
        cov = 2.0 * (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
        v = np.r_[self.theta_hat, self.sigma_hat]
        J = np.empty((len(self.phi_hat), len(v)))
        for i in range(len(v)):
            h = 1e-6 * max(abs(v[i]), 1e-3)
            up, down = v.copy(), v.copy()
            up[i] += h
            down[i] -= h
            J[:, i] = (np.nan_to_num(self.sdcor.from_theta(up[:-1], up[-1]))
                       - np.nan_to_num(self.sdcor.from_theta(down[:-1], down[-1]))) / (2 * h)
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", J, cov, J), 0.0))

    def _limit(self, zeta_fn, estimate: float, start, target: float, scale: float,
               bound: float, tol: float = 1e-4) -> float:
        """The ``x`` beyond ``estimate`` on the side of ``target`` with ``zeta(x) = target``:
        a safeguarded secant search (zeta is close to linear in x), returning ``bound`` if
        zeta does not reach ``target`` before it."""
        direction = np.sign(target)
        state = {"start": start}

        def zeta(x):
            z, pars = zeta_fn(x, state["start"])
            if np.isfinite(z) and direction * (z - target) < 0:
                state["start"] = pars   # warm starts only from the inside of the interval
            return z

        inner, z_inner = estimate, 0.0         # zeta short of the target
        outer, z_outer = None, None            # zeta beyond it
        x = estimate + direction * abs(target) * scale
        for _ in range(100):
            if direction * (x - bound) >= 0:
                x = bound
            z = zeta(x)
            if not np.isfinite(z) and x == bound:
                # a correlation of exactly +-1 with the others free can be infeasible:
                # read the profile just inside the bound
                x = bound - direction * 1e-6 * scale
                z = zeta(x)
                if np.isfinite(z) and direction * (z - target) < 0:
                    return float(bound)
            if not np.isfinite(z):
                z = direction * np.inf
            if abs(z - target) < tol:
                return float(x)
            if direction * (z - target) < 0:
                if x == bound:
                    return float(bound)
                inner, z_inner = x, z
            else:
                outer, z_outer = x, z
            if outer is None:
                # extrapolate by the secant, at least 1.5 and at most 4 times as far out
                slope = (z_inner - 0.0) / (inner - estimate) if inner != estimate else None
                reach = abs(inner - estimate)
                guess = inner + (target - z_inner) / slope if slope and slope * direction > 0 else None
                far = estimate + direction * 4.0 * reach
                near = estimate + direction * 1.5 * reach
                x = far if guess is None else float(np.clip(guess, min(near, far), max(near, far)))
            else:
                # regula falsi inside the bracket, bisection when it stalls
                if np.isfinite(z_outer):
                    guess = inner + (target - z_inner) * (outer - inner) / (z_outer - z_inner)
                else:
                    guess = 0.5 * (inner + outer)
                lo, hi = min(inner, outer), max(inner, outer)
                width = hi - lo
                if not (lo + 0.02 * width < guess < hi - 0.02 * width):
                    guess = 0.5 * (inner + outer)
                x = guess
                if not np.isfinite(z_outer) and width < 1e-2 * scale:
                    # the profile stops (no feasible refit) before reaching the target:
                    # as lme4, whose spline has no value there, report the bound
                    return float(bound)
                if width < 1e-10 * max(abs(estimate), scale, 1e-300):
                    return float(x)
        warnings.warn(f"the profile search for zeta = {target:.3g} did not converge", InferenceWarning, stacklevel=4)
        return float(x)

    # -------------------------------------------------------------- lme4's profile points
    @cached_property
    def cutoff(self) -> float:
        """lme4's ``sqrt(qchisq(1 - alphamax, nptot))`` over all parameters (variance
        parameters, ``sigma`` and the fixed effects): where the stepping stops."""
        return float(np.sqrt(stats.chi2.ppf(1.0 - self.ALPHAMAX, len(self.phi_hat) + len(self.beta_hat))))

    def _next_par(self, rows, lowcut: float, upcut: float) -> float:
        """lme4's ``nextpar``: the step that would change zeta by ``delta`` on the secant
        through the last two points, at most ``maxmult`` times the last step, kept inside
        ``[lowcut, upcut]``."""
        (x0, z0, _), (x1, z1, _) = rows[-2], rows[-1]
        delta = self.cutoff * self.DELTA_CUTOFF
        num, denom = x1 - x0, z1 - z0
        # (lme4 warns at each minstep; here only the consequence, a linear reading, warns)
        if not np.isfinite(denom) or denom == 0:
            step = self.MINSTEP
        else:
            step = delta * num / denom
            if step < 0:
                step = self.MINSTEP
            elif abs(step) > self.MAXMULT * abs(num):
                step = self.MAXMULT * abs(num)
        return float(min(upcut, max(lowcut, x1 + np.sign(num) * step)))

    def _fill(self, rows: list, zeta_fn, lowcut: float, upcut: float) -> list:
        """lme4's ``fillmat``: step away from the estimate (the direction of the first two
        rows) until ``|zeta| > cutoff``, a bound is reached or there are ``maxpts`` rows;
        each inner fit starts from the previous point's parameters."""
        rows = list(rows)
        while len(rows) < self.MAXPTS:
            x, z, pars = rows[-1]
            if not (lowcut < x < upcut) or (np.isfinite(z) and abs(z) > self.cutoff):
                break
            nxt = self._next_par(rows, lowcut, upcut)
            rows.append((nxt, *self._finite(zeta_fn(nxt, pars))))
        return rows

    @staticmethod
    def _finite(out):
        """A failed inner fit (zeta not finite) is lme4's NA."""
        z, pars = out
        return (float(z) if np.isfinite(z) else np.nan), pars

    def points(self, name_index: int) -> pd.DataFrame:
        """lme4's profile of one parameter: the values ``profile.merMod`` visits (the
        estimate, a first shift -- 1% of the estimate for a variance parameter, 1e-3 at 0,
        ``delta`` standard errors for a fixed effect -- then :meth:`_fill` both ways),
        sorted, with their zeta (NaN where an inner fit failed).

        Returns
        -------
        DataFrame
            Columns ``value`` and ``zeta``.
        """
        m = len(self.phi_hat)
        if name_index < m:
            w = name_index
            est, lowcut, upcut = float(self.phi_hat[w]), float(self.lower[w]), float(self.upper[w])
            start = np.r_[self.theta_hat, np.log(self.sigma_hat)]
            def zeta_fn(x, s):
                return self._zeta_variance(w, x, s)
            shift = 1e-3 if est == 0 else est * 1.01
        else:
            j = name_index - m
            est, lowcut, upcut = float(self.beta_hat[j]), -np.inf, np.inf
            start = self.theta_hat
            def zeta_fn(x, s):
                return self._zeta_fixed(j, x, s)
            shift = est + self.cutoff * self.DELTA_CUTOFF * self.se[j]
        at_estimate = (est, 0.0, start)
        shifted = (shift, *self._finite(zeta_fn(shift, start)))
        rows = self._fill([at_estimate, shifted], zeta_fn, lowcut, upcut)
        if est > lowcut:
            rows += self._fill([shifted, at_estimate], zeta_fn, lowcut, upcut)[2:]
        table = pd.DataFrame([(x, z) for x, z, _ in rows], columns=["value", "zeta"])
        return table.drop_duplicates().sort_values("value", kind="stable").reset_index(drop=True)

    def _spline_interval(self, name_index: int, level: float) -> tuple[float, float]:
        """lme4's ``confint.thpr``: the inverse spline through :meth:`points` at
        ``-+z_(1 - alpha/2)``; a limit it cannot reach is the bound. If the spline cannot be
        built (zeta not increasing), linear interpolation, as lme4."""
        m = len(self.phi_hat)
        if name_index < m and np.isnan(self.phi_hat[name_index]):
            return -1.0, 1.0    # a correlation with an sd at 0: flat profile (lme4 stops here)
        bounds = (self.lower[name_index], self.upper[name_index]) if name_index < m else (np.nan, np.nan)
        z = stats.norm.ppf(0.5 + level / 2)
        table = self.points(name_index).dropna()
        x, zeta = table["value"].to_numpy(), table["zeta"].to_numpy()
        try:
            limits = back_spline(interp_spline(x, zeta))(np.array([-z, z]))
        except (BayesLMMError, np.linalg.LinAlgError):
            if len(zeta) == 0 or (len(zeta) > 1 and np.all(np.diff(zeta) < -self.NON_MONO_TOL)):
                warnings.warn(f"non-monotonic profile for parameter {name_index}", InferenceWarning, stacklevel=3)
                return np.nan, np.nan
            warnings.warn(f"bad spline fit for parameter {name_index}: falling back to linear interpolation",
                          InferenceWarning, stacklevel=3)
            # R's approxfun(zeta, value): ties averaged, NA outside the range
            mean = pd.Series(x).groupby(zeta).mean()
            limits = (np.interp([-z, z], mean.index.to_numpy(), mean.to_numpy(), left=np.nan, right=np.nan)
                      if len(mean) > 1 else np.array([np.nan, np.nan]))
        lower, upper = (float(v) for v in limits)
        return (bounds[0] if np.isnan(lower) else lower, bounds[1] if np.isnan(upper) else upper)

    def interval(self, name_index: int, level: float, exact: bool = False) -> tuple[float, float]:
        """The ``level`` profile interval of parameter ``name_index`` (in the order of
        :func:`parameter_names`, then the fixed effects).

        Parameters
        ----------
        name_index : int
            Position of the parameter: the variance parameters (sd/cor, ``sigma``), then
            the fixed effects.
        level : float
            Coverage, e.g. 0.95.
        exact : bool
            False (default): lme4's limit, read off R's inverse interpolation spline
            through lme4's profile points (:meth:`points`). True: the exact root of
            ``zeta = -+z_(1 - alpha/2)``.

        Returns
        -------
        (lower, upper) : tuple of float
            A limit the profile does not reach before a bound is that bound (NaN for a
            fixed effect, as lme4's NA).
        """
        if not exact:
            return self._spline_interval(name_index, level)
        return self._exact_interval(name_index, level)

    def _exact_interval(self, name_index: int, level: float) -> tuple[float, float]:
        z = stats.norm.ppf(0.5 + level / 2)
        m = len(self.phi_hat)
        if name_index < m:
            w = name_index
            est = self.phi_hat[w]
            if np.isnan(est):   # a correlation with an sd at 0: the profile is flat
                return -1.0, 1.0
            scale = self.phi_se[w] if self.phi_se[w] > 0 else 0.1 * max(abs(est), self.sigma_hat)
            fn = lambda x, start: self._zeta_variance(w, x, start)  # noqa: E731
            v_hat = np.r_[self.theta_hat, np.log(self.sigma_hat)]
            lower = (self._limit(fn, est, v_hat, -z, scale, self.lower[w]) if est > self.lower[w]
                     else self.lower[w])
            upper = self._limit(fn, est, v_hat, z, scale, self.upper[w])
            return lower, upper
        j = name_index - m
        fn = lambda x, start: self._zeta_fixed(j, x, start)  # noqa: E731
        est, scale = self.beta_hat[j], self.se[j]
        return (self._limit(fn, est, self.theta_hat, -z, scale, -np.inf),
                self._limit(fn, est, self.theta_hat, z, scale, np.inf))


def confint(result, method: str = "profile", level: float = 0.95, nsim: int = 1000, random_seed=None,
            client=None, n_jobs: int | None = None, progressbar: bool = True,
            exact: bool = False, boot_type: str = "perc") -> pd.DataFrame:
    """Confidence intervals as ``lme4::confint(fit, method, level, oldNames = FALSE)``.

    Parameters
    ----------
    method : {"profile", "wald", "boot"}
        ``"profile"``: likelihood-profile limits (see :class:`Profile`; ML profiles, as
        lme4; read off lme4's spline unless ``exact``). ``"wald"``: ``beta +- z se`` for the fixed
        effects, NaN for the variance parameters (as lme4's NA). ``"boot"``: parametric bootstrap intervals
        (lme4's ``bootMer``; see :func:`bootstrap`) of the kind ``boot_type`` names.
    level : float
        Coverage (0.95).
    nsim, random_seed, client, n_jobs, progressbar
        For ``"boot"``: number of simulations, the seed they all derive from, a Dask
        client or the number of local processes, a progress counter.
    exact : bool
        For ``"profile"``: False (default) reproduces lme4 1.1-31, whose limits are read
        off an interpolation spline through the profile points its stepping visits; True
        returns the exact roots of ``zeta = -+z_(1 - alpha/2)`` instead (they differ from
        lme4's by up to a few 1e-3 of the estimate where the profile bends).
    boot_type : {"perc", "basic", "norm"}
        For ``"boot"``, lme4's ``boot.type`` (the intervals of ``boot::boot.ci``):
        ``"perc"`` (default, as lme4) the ``alpha/2`` and ``1 - alpha/2`` quantiles of the
        draws; ``"basic"`` those quantiles reflected about the estimate,
        ``2 t - q_(1 - alpha/2)``, ``2 t - q_(alpha/2)``, which undoes a bias of the estimator
        (sds of few groups are biased low, so their percentile limits sit low); ``"norm"``
        ``t - bias -+ z sd`` with the draws' bias and sd. ``"basic"`` and ``"norm"`` limits
        are not clipped to the parameter's range (a correlation's may pass +-1, as in lme4).

    Returns
    -------
    DataFrame
        Index: ``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``, ...,
        ``sigma``, then the fixed effects; columns ``lower``, ``upper``.
    """
    if result.method not in ("reml", "ml"):
        raise BayesLMMError(f"confint needs a REML or ML fit, not method={result.method!r}")
    if not 0 < level < 1:
        raise BayesLMMError(f"level must be between 0 and 1, got {level!r}")
    key = str(method).lower()
    names = parameter_names(result.design) + list(result.design.fixed_names)
    m = len(names) - len(result.beta)
    if key == "wald":
        z = stats.norm.ppf(0.5 + level / 2)
        se = np.sqrt(np.diag(result.vcov_beta))
        lower = np.r_[np.full(m, np.nan), result.beta - z * se]
        upper = np.r_[np.full(m, np.nan), result.beta + z * se]
    elif key == "profile":
        profile = Profile(result)
        limits = [profile.interval(i, level, exact=exact) for i in range(len(names))]
        lower, upper = np.array(limits).T
    elif key == "boot":
        kind = str(boot_type).lower()
        if kind not in ("perc", "basic", "norm"):
            raise BayesLMMError(f"unknown boot_type {boot_type!r}: use 'perc', 'basic' or 'norm' (lme4's boot.type)")
        draws = bootstrap(result, nsim=nsim, random_seed=random_seed, client=client, n_jobs=n_jobs,
                          progressbar=progressbar)
        lower, upper = bootstrap_limits(draws.to_numpy(), fitted_parameters(result), level, kind)
    else:
        raise BayesLMMError(f"unknown method {method!r}: use 'profile', 'wald' or 'boot'")
    return pd.DataFrame({"lower": lower, "upper": upper}, index=pd.Index(names, name="term"))


# ---------------------------------------------------------------- parametric bootstrap
def fitted_parameters(result) -> np.ndarray:
    """The fit's sd/cor/sigma parameters followed by its fixed effects: the estimate ``t``
    of every column :func:`bootstrap` returns (a correlation of a zero sd is 0, as there)."""
    phi = _SdCor(result.design).from_theta(np.asarray(result.theta, float), float(result.sigma))
    return np.r_[np.nan_to_num(phi, nan=0.0), np.asarray(result.beta, float)]


def boot_quantile(values: np.ndarray, alpha: float) -> float:
    """``boot``'s ``norm.inter``: the ``alpha`` quantile of bootstrap values as ``boot.ci``
    reads it (lme4's ``confint(method = "boot")``): the order statistic of rank
    ``(R + 1) alpha`` when that is whole, else interpolated between the neighbouring order
    statistics on the normal quantile scale; the extreme values beyond them."""
    t = np.sort(np.asarray(values, float)[np.isfinite(values)])
    R = t.size
    if R == 0:
        return np.nan
    rank = (R + 1) * alpha
    k = int(np.trunc(rank))
    if k == rank and 0 < k <= R:
        return float(t[k - 1])
    if k <= 0:
        return float(t[0])
    if k >= R:
        return float(t[-1])
    z, z_k, z_k1 = stats.norm.ppf([alpha, k / (R + 1), (k + 1) / (R + 1)])
    return float(t[k - 1] + (z - z_k) / (z_k1 - z_k) * (t[k] - t[k - 1]))


def bootstrap_limits(draws: np.ndarray, estimate: np.ndarray, level: float, kind: str = "perc"):
    """Lower and upper limits of ``boot::boot.ci``'s ``"perc"``, ``"basic"`` or ``"norm"``
    interval from bootstrap ``draws`` (rows) of the parameters whose estimates are
    ``estimate``; non-finite draws (failed refits) are left out, as ``boot.ci`` does."""
    alpha = (1 - level) / 2
    draws = np.asarray(draws, float)
    if kind == "norm":
        z = stats.norm.ppf(1 - alpha)
        finite = np.where(np.isfinite(draws), draws, np.nan)
        bias = np.nanmean(finite, axis=0) - estimate
        sd = np.nanstd(finite, axis=0, ddof=1)
        return estimate - bias - z * sd, estimate - bias + z * sd
    low = np.array([boot_quantile(column, alpha) for column in draws.T])
    high = np.array([boot_quantile(column, 1 - alpha) for column in draws.T])
    if kind == "basic":
        return 2 * estimate - high, 2 * estimate - low
    return low, high


@dataclass(frozen=True)
class _Bar:
    """The picklable part of a :class:`~bayeslmm.frontend.design.RandomBlock` a refit needs."""

    codes: np.ndarray
    X: np.ndarray
    n_levels: int
    n_terms: int
    correlated: bool


@dataclass(frozen=True)
class _BootModel:
    """What a worker needs to simulate from a fit and refit it (a Design holds formula
    evaluators that do not pickle)."""

    X: np.ndarray
    y: np.ndarray
    blocks: tuple[_Bar, ...]
    beta: np.ndarray
    theta: np.ndarray
    sigma: float
    reml: bool

    @classmethod
    def from_result(cls, result) -> "_BootModel":
        design = result.design
        bars = tuple(_Bar(b.codes, b.X, b.n_levels, b.n_terms, b.correlated) for b in design.blocks)
        return cls(design.X, design.y, bars, np.asarray(result.beta, float), np.asarray(result.theta, float),
                   float(result.sigma), result.reml)

    def simulate(self, rng: np.random.Generator) -> np.ndarray:
        """lme4's ``simulate(fit, use.u = FALSE)``: new group effects and new noise."""
        layout = _Theta.from_design(self)
        eta = self.X @ self.beta
        for bar, lam in zip(self.blocks, layout.factors(self.theta, [b.n_terms for b in self.blocks])):
            b = self.sigma * rng.standard_normal((bar.n_levels, bar.n_terms)) @ lam.T
            eta = eta + np.einsum("nq,nq->n", bar.X, b[bar.codes])
        return eta + self.sigma * rng.standard_normal(len(eta))

    def refit(self, y: np.ndarray) -> np.ndarray:
        """Refit to ``y`` (REML or ML as the original) from the original theta; returns the
        sd/cor/sigma parameters followed by the fixed effects."""
        return refit_parameters(self, y, self.theta, self.reml)


def refit_parameters(design, y: np.ndarray, start: np.ndarray, reml: bool) -> np.ndarray:
    """Minimize the profiled REML/ML deviance of ``design`` with response ``y`` over theta
    (analytic gradient, from ``start``) and return ``(sd/cor..., sigma, beta...)``."""
    from scipy.optimize import minimize

    model = VarianceModel(design, reml=reml, y=y)
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in model.layout.lower]
    best = None
    for x0 in (np.asarray(start, float), np.where(np.isfinite(model.layout.lower), 1.0, 0.0)):
        res = minimize(model.profiled_objective, x0, jac=True, method="SLSQP", bounds=bounds,
                       options={"ftol": 1e-12, "maxiter": 1000})
        if best is None or res.fun < best.fun - 1e-8:
            best = res
        if res.success:
            break
    theta = best.x
    sol = model.solve(theta)
    sigma = float(np.sqrt(sol.rss / model.n_eff))
    phi = np.nan_to_num(_SdCor(design).from_theta(theta, sigma), nan=0.0)
    return np.r_[phi, sol.beta]


def _bootstrap_chunk(task, seed: np.random.SeedSequence) -> np.ndarray:
    """One executor task: ``count`` simulate-and-refit draws, each with its own child seed."""
    model, count = task
    out = []
    for child in seed.spawn(count):
        rng = np.random.default_rng(child)
        out.append(model.refit(model.simulate(rng)))
    return np.array(out)


def bootstrap(result, nsim: int = 1000, random_seed=None, client=None, n_jobs: int | None = None,
              progressbar: bool = True, chunk: int = 25) -> pd.DataFrame:
    """lme4's ``bootMer(fit, FUN, nsim, type = "parametric", use.u = FALSE)`` for the
    parameters ``confint`` reports.

    Each draw simulates new group effects and noise from the fitted model, refits it (REML
    or ML as the fit) and keeps the sd/cor/sigma parameters and the fixed effects. The
    draws run through :func:`bayeslmm.scale.executor.run_tasks` in chunks of ``chunk`` draws
    (local processes by default, a Dask ``client``, or ``n_jobs=1`` in this process); each
    chunk's seed derives from ``random_seed`` and each draw's from its chunk's, so one seed
    gives the same draws whatever the number of workers. Failed refits are counted in an
    :class:`InferenceWarning` and left out (NaN rows).

    Returns
    -------
    DataFrame
        ``nsim`` rows, one column per parameter (``confint``'s row names).
    """
    from ..scale.executor import run_tasks

    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or nsim < 1:
        raise BayesLMMError(f"nsim must be a whole number of at least 1, got {nsim!r}")
    model = _BootModel.from_result(result)
    sizes = [min(chunk, nsim - start) for start in range(0, nsim, chunk)]
    outcomes = run_tasks(_bootstrap_chunk, [(model, size) for size in sizes], random_seed=random_seed,
                         client=client, n_jobs=n_jobs, progressbar=progressbar, description="bootstrap refits")
    names = parameter_names(result.design) + list(result.design.fixed_names)
    rows, failed = [], 0
    for outcome, size in zip(outcomes, sizes):
        if outcome.ok:
            rows.append(outcome.value)
        else:
            failed += size
            rows.append(np.full((size, len(names)), np.nan))
    if failed:
        warnings.warn(f"{failed} of {nsim} bootstrap refits failed and are left out", InferenceWarning, stacklevel=3)
    return pd.DataFrame(np.vstack(rows), columns=names)


# ---------------------------------------------------------------- Kenward-Roger
def _divzero(x: float, y: float, tol: float = 1e-14) -> float:
    return 1.0 if abs(x) < tol and abs(y) < tol else x / y


class KenwardRoger:
    """pbkrtest 0.5's Kenward-Roger adjustment of a REML fit (``vcovAdj``, ``Lb_ddf``,
    ``KRmodcomp``), as lmerTest uses it.

    The covariance parameters are pbkrtest's: every variance and covariance of every bar
    and the residual variance, ``V = sum_i gamma_i G_i``. ``P_i = -X'V^-1 G_i V^-1 X``,
    ``Q_ij = X'V^-1 G_i V^-1 G_j V^-1 X`` and ``tr(V^-1 G_i V^-1 G_j)`` give the expected
    information ``I_ij`` and ``W = 2 I^-1``; the adjusted covariance of beta-hat is
    ``Phi_A = Phi + 2 Phi U Phi`` with ``U = sum_ij W_ij (Q_ij - P_i Phi P_j)``. Every
    ``n x n`` product is reduced to the q x q cross-products of :class:`VarianceModel`
    (pbkrtest itself forms ``V``), so the cost is that of a few q x q products.
    """

    name = "Kenward-Roger"

    def __init__(self, result):
        if result.method != "reml":
            raise BayesLMMError("the Kenward-Roger method needs a REML fit (pbkrtest's rule); "
                                f"this fit is method={result.method!r}: refit with fit(method='reml')")
        model = VarianceModel.of_design(result.design, reml=True)
        self.model = model
        theta, sigma = np.asarray(result.theta, float), float(result.sigma)
        sol = model.solve(theta)
        s2 = sigma**2
        p, o = model.p, model.offsets
        Czz, CzX, Q = sol.Czz, sol.CzX, sol.Q
        D = model.D(theta)
        DCzX = np.asarray(D @ CzX)
        DCzz = np.asarray(D @ Czz)
        Z2X = CzX - Czz @ DCzX                 # Z' Sigma^-2 X
        X2X = Q - CzX.T @ DCzX                 # X' Sigma^-2 X
        X3X = X2X - Z2X.T @ DCzX               # X' Sigma^-3 X
        Z2Z = Czz - Czz @ DCzz                 # Z' Sigma^-2 Z
        # pbkrtest's parameters: (block, i, j) for each variance / covariance, then the residual
        items = []
        for k, block in enumerate(result.design.blocks):
            q = block.n_terms
            pairs = [(i, j) for i in range(q) for j in range(i, q)] if block.correlated else [(i, i) for i in range(q)]
            for i, j in pairs:
                f = np.zeros((q, q))
                f[i, j] = f[j, i] = 1.0
                items.append((k, f))
        m = len(items) + 1
        XF = []
        for k, f in items:
            part = CzX.T[:, o[k]:o[k + 1]].reshape(p, model.J[k], model.q_sizes[k]) @ f
            full = np.zeros((p, model.q))
            full[:, o[k]:o[k + 1]] = part.reshape(p, -1)
            XF.append(full)
        PP = [-(xf @ CzX) / s2**2 for xf in XF] + [-X2X / s2**2]
        QQ = [[None] * m for _ in range(m)]
        for a in range(m - 1):
            for b in range(m - 1):
                QQ[a][b] = XF[a] @ Czz @ XF[b].T / s2**3
            QQ[a][m - 1] = XF[a] @ Z2X / s2**3
            QQ[m - 1][a] = QQ[a][m - 1].T
        QQ[m - 1][m - 1] = X3X / s2**3
        K = np.zeros((m, m))
        K[:-1, :-1] = _traces(model, Czz, items) / s2**2
        for a, (k, f) in enumerate(items):
            K[a, -1] = K[-1, a] = np.sum(f * model._diag_sum(Z2Z, k)) / s2**2
        K[-1, -1] = (model.n - 2.0 * np.trace(DCzz) + np.sum(DCzz * DCzz.T)) / s2**2
        Phi = np.asarray(result.vcov_beta, float)
        IE2 = np.empty((m, m))
        for a in range(m):
            for b in range(a, m):
                IE2[a, b] = IE2[b, a] = (K[a, b] - 2.0 * np.sum(Phi * QQ[a][b])
                                         + np.sum((Phi @ PP[a]) * (PP[b] @ Phi)))
        values = np.linalg.eigvalsh(IE2)
        W = 2.0 * (np.linalg.inv(IE2) if np.min(np.abs(values)) > 1e-10 else np.linalg.pinv(IE2))
        U = np.zeros((p, p))
        for a in range(m):
            for b in range(a + 1, m):
                U += W[a, b] * (QQ[a][b] - PP[a] @ Phi @ PP[b])
        U = U + U.T
        for a in range(m):
            U += W[a, a] * (QQ[a][a] - PP[a] @ Phi @ PP[a])
        self.Phi = Phi
        self.PhiA = Phi + 2.0 * Phi @ U @ Phi
        self.P, self.W = PP, W

    @property
    def vcov(self) -> np.ndarray:
        """The adjusted covariance of beta-hat (pbkrtest's ``vcovAdj``)."""
        return self.PhiA

    def _A(self, L: np.ndarray) -> tuple[float, float]:
        Theta = L.T @ np.linalg.solve(L @ self.Phi @ L.T, L)
        TP = Theta @ self.Phi
        u = [TP @ P @ self.Phi for P in self.P]
        A1 = A2 = 0.0
        m = len(u)
        for a in range(m):
            for b in range(a, m):
                e = 1.0 if a == b else 2.0
                A1 += e * self.W[a, b] * np.trace(u[a]) * np.trace(u[b])
                A2 += e * self.W[a, b] * np.sum(u[a] * u[b].T)
        return A1, A2

    def _ddf_and_scaling(self, L: np.ndarray) -> tuple[float, float]:
        """pbkrtest's ``Lb_ddf`` denominator df and ``KRmodcomp``'s F scaling."""
        q = L.shape[0]
        A1, A2 = self._A(L)
        B = (A1 + 6.0 * A2) / (2.0 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        c1 = g / (3 * q + 2 * (1 - g))
        c2 = (q - g) / (3 * q + 2 * (1 - g))
        c3 = (q + 2 - g) / (3 * q + 2 * (1 - g))
        V0, V1, V2 = 1 + c1 * B, 1 - c2 * B, 1 - c3 * B
        V0 = 0.0 if abs(V0) < 1e-10 else V0
        rho = _divzero(1 - A2 / q, V1) ** 2 * V0 / V2 / q
        df2 = 4 + (q + 2) / (q * rho - 1)
        scaling = 9999.0 if abs(df2 - 2) < 1e-2 else df2 * (1 - A2 / q) / (df2 - 2)
        return float(df2), float(scaling)

    def df(self, L: np.ndarray) -> float:
        return self._ddf_and_scaling(np.asarray(L, float).reshape(1, -1))[0]

    def ftest(self, L: np.ndarray, beta: np.ndarray) -> tuple[float, int, float]:
        """One row: the squared KR t-test (lmerTest's ``contest1D``); several: pbkrtest's
        scaled F, ``F = scaling * (L b)' (L Phi_A L')^-1 (L b) / q``."""
        L = np.asarray(L, float)
        rows, _ = _rotate(L, self.Phi)
        if len(rows) == 1:
            t = rows[0] @ beta / np.sqrt(rows[0] @ self.PhiA @ rows[0])
            return float(t * t), 1, self.df(rows[0])
        q = len(rows)
        Lb = rows @ beta
        wald = float(Lb @ np.linalg.solve(rows @ self.PhiA @ rows.T, Lb)) / q
        ddf, scaling = self._ddf_and_scaling(rows)
        return scaling * wald, q, ddf


def _traces(model: VarianceModel, M: np.ndarray, items) -> np.ndarray:
    """``tr(F_a M F_b M)`` for ``F_a = I (x) f_a`` on bar ``k_a`` (items ``(k_a, f_a)``)."""
    m = len(items)
    out = np.zeros((m, m))
    cache = {}
    for a, (k, fa) in enumerate(items):
        for b in range(a, m):
            l, fb = items[b]
            key = (min(k, l), max(k, l))
            if key not in cache:
                B = model._block(M, *key)
                qk, ql = model.q_sizes[key[0]], model.q_sizes[key[1]]
                F = np.ascontiguousarray(B.transpose(1, 3, 0, 2)).reshape(qk * ql, -1)
                cache[key] = (F @ F.T).reshape(qk, ql, qk, ql)
            T = cache[key]
            first, second = (fa, fb) if k <= l else (fb, fa)
            out[a, b] = out[b, a] = np.einsum("st,uv,tusv->", first, second, T)
    return out
