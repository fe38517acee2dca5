"""Stage 3 for GLMMs: penalized iteratively reweighted least squares (PIRLS), the Laplace
approximation, adaptive Gauss-Hermite quadrature and glmer's two-stage optimization.

With ``u ~ N(0, I)``, ``b = Lambda(theta) u`` and ``eta = offset + X beta + Z Lambda u``,
for given ``theta`` (and ``beta``) PIRLS finds the conditional mode of ``u`` by Newton
steps on the penalized deviance ``sum(dev_resid) + ||u||^2``, each one a weighted
penalized least-squares solve with weights ``w = wt * mu_eta^2 / V(mu)``.

The system ``Lambda' Z' W Z Lambda + I`` is factored blockwise (MixedModels.jl's idea):
the first bar (the factor with the most levels) is block-diagonal, one ``q1 x q1`` block
per level; the other bars (and, for the joint ``(u, beta)`` solve, ``X``) form a dense
Schur complement. VerbAgg (316 subjects x 24 items) factors a 316-block diagonal and a
24 x 24 dense matrix.

The criteria are lme4's (1.1-31, ``src/external.cpp``):

- Laplace (``nAGQ = 1``): ``aic + ||u||^2 + log|L|^2``, where ``aic = -2 sum loglik``
  (the family's log-likelihood with its constants); ``logLik = -criterion / 2``.
- AGQ (``nAGQ > 1``, one scalar bar): ``sum_j [devc0_j - 2 log(mult_j)] + log|L|^2``,
  where ``devc0_j`` is the sum of deviance residuals of level ``j`` plus ``u_j^2`` and
  ``mult_j`` the quadrature sum; as in lme4 this criterion is built from deviance
  residuals, so its ``logLik`` omits the constants that the Laplace one includes.
- ``nAGQ = 0``: the Laplace criterion over ``theta`` alone, ``beta`` solved with ``u`` in
  PIRLS; ``nAGQ >= 1`` then optimizes ``(theta, beta)`` jointly from that start.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import solve_triangular
from scipy.optimize import Bounds, minimize, minimize_scalar

from ..errors import ConvergenceWarning, FitError
from ..family import Family
from ..frontend.glmm_design import GLMMDesign
from .reml import OptSummary, ThetaLayout


def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of ``n``-point Gauss-Hermite quadrature for the standard normal
    density (lme4's ``GHrule``): ``sum w_k f(z_k) ~= E f(Z)``."""
    x, w = np.polynomial.hermite.hermgauss(n)
    return x * np.sqrt(2.0), w / np.sqrt(np.pi)


@dataclass
class PIRLSState:
    """The conditional mode at one ``(theta, beta)`` and what the criteria need."""

    u: np.ndarray
    beta: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    ldL2: float
    sqrL: float
    dev_resid: np.ndarray
    factor: "BlockedFactor"
    iterations: int


@dataclass(frozen=True)
class _CrossPattern:
    """Fixed sparsity of ``A_r1`` (rows: the other bars' effects and, for the joint solve,
    the fixed effects; columns: the first bar's levels) and, per pair of non-zeros in one
    column, where their product lands in the Schur complement."""

    pos: np.ndarray      # position in ``data`` of each row contribution
    nnz: int
    col: np.ndarray      # column of each non-zero
    indices: np.ndarray  # CSR column indices
    indptr: np.ndarray
    row: np.ndarray      # row of each non-zero
    pa: np.ndarray
    pb: np.ndarray
    target: np.ndarray   # flat index into the (m, m) Schur complement

    @classmethod
    def build(cls, rows: np.ndarray, cols: np.ndarray, m: int, n1: int) -> "_CrossPattern":
        uniq, pos = np.unique(rows.astype(np.int64) * n1 + cols, return_inverse=True)
        r, c = uniq // n1, uniq % n1
        indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=m))])
        order = np.argsort(c, kind="stable")
        counts = np.bincount(c, minlength=n1)
        starts = np.concatenate([[0], np.cumsum(counts)])
        pa, pb = [], []
        for j in range(n1):
            members = order[starts[j]:starts[j + 1]]
            pa.append(np.repeat(members, len(members)))
            pb.append(np.tile(members, len(members)))
        pa, pb = np.concatenate(pa), np.concatenate(pb)
        return cls(pos=np.ravel(pos), nnz=len(uniq), col=c, indices=c.astype(np.int32),
                   indptr=indptr.astype(np.int32), row=r, pa=pa, pb=pb, target=r[pa] * m + r[pb])


class BlockedFactor:
    """Cholesky factor of ``[[A11, A1r], [Ar1, Arr]]`` where ``A11`` is block-diagonal
    (``J1`` blocks of ``q1 x q1``) and the rest dense; ``n_pen`` leading rows/columns of
    the dense part (and all of ``A11``) are random effects, the rest fixed effects."""

    def __init__(self, A11: np.ndarray, A_r1: np.ndarray, A_rr: np.ndarray, n_pen_rest: int):
        self.J1, self.q1 = A11.shape[0], A11.shape[1]
        self.L11 = np.linalg.cholesky(A11)  # (J1, q1, q1)
        self.L11_inv = np.linalg.inv(self.L11)
        self.n_rest = A_rr.shape[0]
        self.n_pen_rest = n_pen_rest
        self._pattern = None
        if self.n_rest:
            # L_r1 = A_r1 blockdiag(L11^-T), kept sparse: each level of the first factor meets
            # few levels of the others when factors are nested (grouseticks), and the dense
            # crossed case (VerbAgg: 24 x 316) is small
            inv_t = sp.bsr_matrix((np.ascontiguousarray(self.L11_inv.transpose(0, 2, 1)), np.arange(self.J1),
                                   np.arange(self.J1 + 1)), shape=(self.J1 * self.q1, self.J1 * self.q1))
            self.L_r1 = (sp.csr_matrix(A_r1) @ inv_t).tocsr()
            S = A_rr - (self.L_r1 @ self.L_r1.T).toarray()
            self.L_rr = np.linalg.cholesky(S)
        else:
            self.L_r1 = sp.csr_matrix((0, self.J1 * self.q1))
            self.L_rr = np.zeros((0, 0))

    @classmethod
    def scalar_first(cls, a11: np.ndarray, data: np.ndarray, pattern: "_CrossPattern", A_rr: np.ndarray,
                     n_pen_rest: int) -> "BlockedFactor":
        """The same factor when the first bar is scalar (``q1 = 1``), from the values of
        ``A_r1`` on its fixed sparsity ``pattern``: ``L_r1`` is ``A_r1`` with scaled
        columns and the Schur update sums precomputed products (no sparse algebra per
        evaluation)."""
        obj = cls.__new__(cls)
        l11 = np.sqrt(a11)
        obj.J1, obj.q1 = len(a11), 1
        obj.L11 = l11[:, None, None]
        obj.L11_inv = (1.0 / l11)[:, None, None]
        m = A_rr.shape[0]
        obj.n_rest, obj.n_pen_rest = m, n_pen_rest
        ldata = data / l11[pattern.col]
        # L_r1 is kept as its values on the pattern: the solves multiply by it with
        # bincount, and a sparse matrix is built only when inverse_blocks needs one
        obj._pattern, obj._ldata, obj._L_r1 = pattern, ldata, None
        S = A_rr.ravel() - np.bincount(pattern.target, weights=ldata[pattern.pa] * ldata[pattern.pb],
                                       minlength=m * m)
        obj.L_rr = np.linalg.cholesky(S.reshape(m, m))
        return obj

    @property
    def L_r1(self):
        if self._pattern is not None and self._L_r1 is None:
            pat = self._pattern
            self._L_r1 = sp.csr_matrix((self._ldata, pat.indices, pat.indptr), shape=(self.n_rest, self.J1))
        return self._L_r1

    @L_r1.setter
    def L_r1(self, value):
        self._L_r1 = value

    @property
    def ldL2(self) -> float:
        """``log|L|^2`` of the random-effects part."""
        d1 = np.log(np.einsum("jii->ji", self.L11)).sum()
        d2 = np.log(np.diag(self.L_rr)[: self.n_pen_rest]).sum() if self.n_pen_rest else 0.0
        return float(2.0 * (d1 + d2))

    def solve(self, r1: np.ndarray, r_rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y1 = np.einsum("jkl,jl->jk", self.L11_inv, r1.reshape(self.J1, self.q1)).ravel()
        if self.n_rest:
            if self._pattern is not None:
                pat = self._pattern
                l_y1 = np.bincount(pat.row, weights=self._ldata * y1[pat.col], minlength=self.n_rest)
            else:
                l_y1 = self.L_r1 @ y1
            y2 = solve_triangular(self.L_rr, r_rest - l_y1, lower=True, check_finite=False)
            x2 = solve_triangular(self.L_rr, y2, lower=True, trans="T", check_finite=False)
            if self._pattern is not None:
                lt_x2 = np.bincount(pat.col, weights=self._ldata * x2[pat.row], minlength=self.J1)
            else:
                lt_x2 = self.L_r1.T @ x2
            t = (y1 - lt_x2).reshape(self.J1, self.q1)
        else:
            x2 = np.zeros(0)
            t = y1.reshape(self.J1, self.q1)
        x1 = np.einsum("jlk,jl->jk", self.L11_inv, t).ravel()
        return x1, x2

    def inverse_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """Diagonal ``q1 x q1`` blocks of ``A^{-1}`` for the first bar, and the dense
        ``A^{-1}`` of the rest."""
        M11 = np.einsum("jki,jkl->jil", self.L11_inv, self.L11_inv)
        if not self.n_rest:
            return M11, np.zeros((0, 0))
        Lrr_inv = solve_triangular(self.L_rr, np.eye(self.n_rest), lower=True, check_finite=False)
        # L^{-1} lower-left block: -Lrr^{-1} L_r1 L11^{-1}
        C = (Lrr_inv @ self.L_r1.toarray()).reshape(self.n_rest, self.J1, self.q1)
        C = np.einsum("rjk,jkl->rjl", C, self.L11_inv)
        M11 = M11 + np.einsum("rjk,rjl->jkl", C, C)
        return M11, Lrr_inv.T @ Lrr_inv


class GLMMDeviance:
    """The PIRLS machinery and glmer's criteria for one :class:`GLMMDesign`; evaluate
    ``laplace(theta, beta)``, ``agq(theta, beta, n_agq)`` or ``laplace_theta(theta)``
    at fixed values (lme4's ``devFunOnly``)."""

    def __init__(self, gd: GLMMDesign, tol: float = 1e-10, max_iter: int = 100):
        self.gd = gd
        self.family: Family = gd.family
        self.design = gd.design
        self.layout = ThetaLayout.from_design(gd.design)
        self.X = np.ascontiguousarray(gd.X)
        self.y, self.wt, self.offset = gd.y, gd.weights, gd.offset
        self.n, self.p = self.X.shape
        blocks = gd.design.blocks
        self.q_sizes = [b.n_terms for b in blocks]
        first = blocks[0]
        self.J1, self.q1 = first.n_levels, first.n_terms
        self.codes1 = first.codes
        # the other bars: each row has q_k non-zeros per bar, at rest-index
        # off_k + code * q_k + t (level-major within each bar, as lme4)
        self.rest = []  # (block, offset in the rest vector)
        offset = 0
        for b in blocks[1:]:
            self.rest.append((b, offset))
            offset += b.n_levels * b.n_terms
        self.q_rest = offset
        self.q = self.J1 * self.q1 + self.q_rest
        # flat bincount indices of every cross-product entry (theta-free, built once)
        n_r = self.q_rest
        self._plan_r1 = []  # (index into the (n_r, n1) matrix, bar k, term t, term s)
        self._plan_rr = []  # (index into the (n_r, n_r) matrix, bar k, term t, bar m, term s)
        self._rest_index = []  # (n, q_k) rest-index of each row's entries, per bar
        for b, off in self.rest:
            self._rest_index.append(off + b.codes[:, None] * b.n_terms + np.arange(b.n_terms)[None, :])
        col1 = self.codes1[:, None] * self.q1 + np.arange(self.q1)[None, :]
        self._col1 = col1
        for k, ridx in enumerate(self._rest_index):
            for t in range(ridx.shape[1]):
                for s_ in range(self.q1):
                    self._plan_r1.append(((ridx[:, t], col1[:, s_]), k, t, s_))
                for m in range(k + 1):
                    for s_ in range(self._rest_index[m].shape[1]):
                        if m == k and s_ > t:
                            continue
                        self._plan_rr.append((ridx[:, t] * n_r + self._rest_index[m][:, s_], k, t, m, s_))
        # -2 loglik = sum(dev_resid) + its value at the saturated model (mu = y): the
        # family's constants, computed once
        fam = self.family
        self._aic_saturated = float(-2.0 * fam.loglik(self.y, np.clip(self.y, 1e-300, None) if fam.is_count
                                                      else self.y, self.wt).sum())
        self._patterns: dict[bool, _CrossPattern] = {}
        self.tol, self.max_iter = tol, max_iter
        self.evaluations = 0
        self._u_start = np.zeros(self.q)
        self._cache_theta = None

    # ------------------------------------------------------------ Lambda(theta)
    def factors(self, theta: np.ndarray) -> list[np.ndarray]:
        return self.layout.factors(np.asarray(theta, dtype=float), self.q_sizes)

    def _set_theta(self, theta: np.ndarray):
        theta = np.asarray(theta, dtype=float)
        if self._cache_theta is not None and np.array_equal(theta, self._cache_theta):
            return
        lams = self.factors(theta)
        self._lams = lams
        blocks = self.design.blocks
        # rows of Z_k Lambda_k: X_k lam_k (n, q_k)
        self.V = [b.X @ lam for b, lam in zip(blocks, lams)]
        self.V1 = self.V[0]
        self._cache_theta = theta.copy()

    def zlu(self, u: np.ndarray) -> np.ndarray:
        """``Z Lambda u`` for the current theta."""
        n1 = self.J1 * self.q1
        u1 = u[:n1].reshape(self.J1, self.q1)
        out = np.einsum("nk,nk->n", self.V1, u1[self.codes1])
        ur = u[n1:]
        for (b, off), V, ridx in zip(self.rest, self.V[1:], self._rest_index):
            out = out + np.einsum("nk,nk->n", V, ur[ridx])
        return out

    def _zlt(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Z Lambda)' v`` split into the first bar's part and the rest."""
        r1 = np.zeros((self.J1, self.q1))
        for k in range(self.q1):
            r1[:, k] = np.bincount(self.codes1, weights=self.V1[:, k] * v, minlength=self.J1)
        r_rest = np.zeros(self.q_rest)
        for V, ridx in zip(self.V[1:], self._rest_index):
            for t in range(V.shape[1]):
                r_rest += np.bincount(ridx[:, t], weights=V[:, t] * v, minlength=self.q_rest)
        return r1.ravel(), r_rest

    def _factor(self, w: np.ndarray, with_x: bool) -> BlockedFactor:
        q1, J1, n_r = self.q1, self.J1, self.q_rest
        n1 = J1 * q1
        A11 = np.empty((J1, q1, q1))
        for k in range(q1):
            for l in range(k + 1):
                A11[:, k, l] = np.bincount(self.codes1, weights=w * self.V1[:, k] * self.V1[:, l], minlength=J1)
                A11[:, l, k] = A11[:, k, l]
        A11 += np.eye(q1)[None, :, :]
        p = self.p if with_x else 0
        rows, cols, vals = [], [], []
        A_rr = np.zeros((n_r + p, n_r + p))
        if n_r:
            Vr = self.V[1:]
            for (ridx, cidx), k, t, s_ in self._plan_r1:
                rows.append(ridx)
                cols.append(cidx)
                vals.append(w * Vr[k][:, t] * self.V1[:, s_])
            acc = np.zeros(n_r * n_r)
            for idx, k, t, m, s_ in self._plan_rr:
                acc += np.bincount(idx, weights=w * Vr[k][:, t] * Vr[m][:, s_], minlength=n_r * n_r)
            block = acc.reshape(n_r, n_r)
            # each entry landed in one triangle or the other: symmetrize without doubling the diagonal
            A_rr[:n_r, :n_r] = block + block.T - np.diag(np.diag(block)) + np.eye(n_r)
        if with_x:
            WX = self.X * w[:, None]
            for j in range(p):
                for s_ in range(q1):
                    rows.append(np.full(self.n, n_r + j))
                    cols.append(self._col1[:, s_])
                    vals.append(WX[:, j] * self.V1[:, s_])
                if n_r:
                    row = np.zeros(n_r)
                    for V, ridx in zip(self.V[1:], self._rest_index):
                        for t in range(V.shape[1]):
                            row += np.bincount(ridx[:, t], weights=WX[:, j] * V[:, t], minlength=n_r)
                    A_rr[n_r + j, :n_r] = row
                    A_rr[:n_r, n_r + j] = row
            A_rr[n_r:, n_r:] = self.X.T @ WX
        if rows and q1 == 1:
            pattern = self._patterns.get(with_x)
            if pattern is None:
                pattern = _CrossPattern.build(np.concatenate(rows), np.concatenate(cols), n_r + p, n1)
                self._patterns[with_x] = pattern
            data = np.bincount(pattern.pos, weights=np.concatenate(vals), minlength=pattern.nnz)
            return BlockedFactor.scalar_first(A11[:, 0, 0], data, pattern, A_rr, n_r)
        if rows:
            A_r1 = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(n_r + p, n1)).tocsr()  # duplicates summed
        else:
            A_r1 = sp.csr_matrix((n_r + p, n1))
        return BlockedFactor(A11, A_r1, A_rr, n_r)

    # ------------------------------------------------------------ PIRLS
    def _weights(self, eta):
        fam = self.family
        mu = fam.linkinv(eta)
        me = fam.mu_eta(eta)
        var = fam.variance(mu)
        return mu, me, self.wt * me**2 / var

    def pirls(self, theta: np.ndarray, beta: np.ndarray | None = None, u_start: np.ndarray | None = None) -> PIRLSState:
        """Conditional modes at ``theta``: of ``u`` given ``beta``, or of ``(u, beta)``
        jointly when ``beta`` is None (nAGQ = 0)."""
        self._set_theta(theta)
        fam = self.family
        joint = beta is None
        u = (self._u_start if u_start is None else u_start).copy()
        if joint:
            beta = getattr(self, "_beta_start", None)
            if beta is None:
                mu0 = fam.initialize(self.y, self.wt)
                eta0 = fam.linkfun(mu0) - self.offset
                beta = np.linalg.lstsq(self.X, eta0, rcond=None)[0]
            beta = np.asarray(beta, dtype=float).copy()
        beta = np.asarray(beta, dtype=float)
        fixed = self.X @ beta

        def penalized(u_, fixed_):
            eta_ = self.offset + fixed_ + self.zlu(u_)
            mu_ = fam.linkinv(eta_)
            dev_ = fam.dev_resid(self.y, mu_, self.wt)
            return float(dev_.sum() + u_ @ u_), eta_, mu_, dev_

        pdev, eta, mu, dev = penalized(u, fixed)
        it = 0
        for it in range(1, self.max_iter + 1):
            me = fam.mu_eta(eta)
            w = self.wt * me**2 / fam.variance(mu)
            z = (eta - self.offset) + (self.y - mu) / me
            if not joint:
                z = z - fixed
            factor = self._factor(w, with_x=joint)
            r1, r_rest = self._zlt(w * z)
            if joint:
                r_rest = np.concatenate([r_rest, self.X.T @ (w * z)])
            x1, x2 = factor.solve(r1, r_rest)
            u_new = np.concatenate([x1, x2[: self.q_rest]])
            beta_new = x2[self.q_rest:] if joint else beta
            du, db = u_new - u, (beta_new - beta) if joint else None
            step = 1.0
            while True:
                u_try = u + step * du
                b_try = beta + step * db if joint else beta
                fixed_try = self.X @ b_try if joint else fixed
                pdev_try, eta_try, mu_try, dev_try = penalized(u_try, fixed_try)
                if np.isfinite(pdev_try) and pdev_try <= pdev + 1e-12 * abs(pdev):
                    break
                step /= 2.0
                if step < 1e-10:
                    pdev_try, eta_try, mu_try, dev_try, u_try, b_try, fixed_try = pdev, eta, mu, dev, u, beta, fixed
                    break
            change = pdev - pdev_try
            u, beta, fixed, eta, mu, dev, pdev = u_try, b_try, fixed_try, eta_try, mu_try, dev_try, pdev_try
            if change < self.tol * (abs(pdev) + 0.1) and step * np.max(np.abs(du), initial=0.0) < 1e-6:
                break
        else:
            warnings.warn(f"PIRLS did not converge in {self.max_iter} iterations", ConvergenceWarning, stacklevel=3)
        me = fam.mu_eta(eta)
        w = self.wt * me**2 / fam.variance(mu)
        factor = self._factor(w, with_x=False)
        self._u_start = u.copy()
        if joint:
            self._beta_start = beta.copy()
        self.evaluations += 1
        return PIRLSState(u=u, beta=beta, eta=eta, mu=mu, ldL2=factor.ldL2, sqrL=float(u @ u),
                          dev_resid=dev, factor=factor, iterations=it)

    # ------------------------------------------------------------ criteria
    def aic_term(self, mu: np.ndarray, dev_resid: np.ndarray | None = None) -> float:
        """``-2 sum loglik`` (R's ``family$aic``), as deviance + saturated constant."""
        if dev_resid is None:
            dev_resid = self.family.dev_resid(self.y, mu, self.wt)
        return float(dev_resid.sum()) + self._aic_saturated

    def laplace(self, theta, beta) -> float:
        """glmer's Laplace criterion (-2 log-likelihood) at ``(theta, beta)``."""
        try:
            s = self.pirls(theta, beta)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return np.inf
        return s.ldL2 + s.sqrL + self.aic_term(s.mu, s.dev_resid)

    def laplace_theta(self, theta) -> float:
        """The nAGQ = 0 criterion: Laplace with ``beta`` solved in PIRLS."""
        try:
            s = self.pirls(theta, None)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return np.inf
        return s.ldL2 + s.sqrL + self.aic_term(s.mu, s.dev_resid)

    def agq_check(self) -> None:
        if len(self.design.blocks) != 1 or self.q1 != 1:
            raise FitError("adaptive Gauss-Hermite quadrature (n_agq > 1) needs a single scalar random-effect "
                           "term, e.g. (1 | g); use n_agq=1 (Laplace)")

    def agq(self, theta, beta, n_agq: int) -> float:
        """glmer's adaptive Gauss-Hermite criterion (one scalar bar)."""
        self.agq_check()
        try:
            s = self.pirls(theta, beta)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            return np.inf
        fam = self.family
        codes = self.codes1
        devc0 = s.u**2 + np.bincount(codes, weights=s.dev_resid, minlength=self.J1)
        sd = 1.0 / s.factor.L11[:, 0, 0]
        z, w = gauss_hermite(n_agq)
        fixed = self.offset + self.X @ np.asarray(beta, dtype=float)
        log_terms = []
        for zk, wk in zip(z, w):
            if zk == 0.0:
                log_terms.append(np.full(self.J1, np.log(wk)))
                continue
            u = s.u + zk * sd
            mu = fam.linkinv(fixed + self.V1[:, 0] * u[codes])
            devc = u**2 + np.bincount(codes, weights=fam.dev_resid(self.y, mu, self.wt), minlength=self.J1)
            log_terms.append(np.log(wk) - 0.5 * (devc - devc0) + 0.5 * zk**2)
        log_mult = np.logaddexp.reduce(np.vstack(log_terms), axis=0)
        return float(devc0.sum() + s.ldL2 - 2.0 * log_mult.sum())


# ---------------------------------------------------------------- optimization
def _minimize(fun, start, lower, maxfev=5000):
    bounds = Bounds(lower, np.full(len(lower), np.inf))
    result = minimize(fun, start, method="COBYQA", bounds=bounds,
                      options={"initial_tr_radius": 0.5, "final_tr_radius": 1e-7, "maxfev": maxfev})
    name = "COBYQA (scipy)"
    if not (result.success and np.isfinite(result.fun)):
        name = "Nelder-Mead (scipy)"
        result = minimize(fun, result.x if np.isfinite(result.fun) else start, method="Nelder-Mead",
                          bounds=bounds, options={"xatol": 1e-9, "fatol": 1e-11, "maxfev": 20000})
    if not np.isfinite(result.fun):
        raise FitError("the optimizer found no point with a finite criterion")
    return result, name


@dataclass(frozen=True)
class GLMMFitNumbers:
    """Everything the result needs from an optimization."""

    theta: np.ndarray
    beta: np.ndarray
    criterion: float
    state: PIRLSState
    vcov_beta: np.ndarray
    hessian: np.ndarray | None
    opt: OptSummary
    n_agq: int


def _hessian(fun, x: np.ndarray, delta: float = 1e-4) -> np.ndarray:
    """Central finite-difference Hessian (lme4's ``deriv12`` step)."""
    k = len(x)
    H = np.empty((k, k))
    f0 = fun(x)
    fp = np.empty(k)
    fm = np.empty(k)
    for i in range(k):
        e = np.zeros(k)
        e[i] = delta
        fp[i], fm[i] = fun(x + e), fun(x - e)
        H[i, i] = (fp[i] - 2 * f0 + fm[i]) / delta**2
    for i in range(k):
        for j in range(i):
            ei = np.zeros(k)
            ej = np.zeros(k)
            ei[i] = delta
            ej[j] = delta
            H[i, j] = H[j, i] = (fun(x + ei + ej) - fun(x + ei - ej) - fun(x - ei + ej)
                                 + fun(x - ei - ej)) / (4 * delta**2)
    return H


def single_threaded_blas():
    """BLAS on one thread: the factorizations here are small (hundreds of rows), where
    OpenBLAS's threads cost far more than they save (a 181 x 181 Cholesky took 50 ms
    threaded on a loaded 2-core machine, 0.2 ms on one thread)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's stack
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_glmm_numbers(dev: GLMMDeviance, n_agq: int = 1, start_theta=None) -> GLMMFitNumbers:
    """glmer's optimization: stage 1 over ``theta`` (nAGQ = 0), then, for ``n_agq >= 1``,
    stage 2 over ``(theta, beta)`` with the Laplace (1) or AGQ (> 1) criterion."""
    with single_threaded_blas():
        return _fit_glmm_numbers(dev, n_agq, start_theta)


def _fit_glmm_numbers(dev: GLMMDeviance, n_agq: int, start_theta) -> GLMMFitNumbers:
    t0 = time.perf_counter()
    layout = dev.layout
    start = layout.initial() if start_theta is None else np.asarray(start_theta, dtype=float)
    count0 = dev.evaluations
    res1, name = _minimize(dev.laplace_theta, start, layout.lower)
    theta = np.asarray(res1.x)
    state = dev.pirls(theta, None)
    beta = state.beta
    criterion = float(res1.fun)
    converged = bool(res1.success)
    message = str(res1.message)
    hessian = None
    if n_agq == 0:
        # var(beta) from the PIRLS system with X (lme4: RX), unit dispersion
        factor = _joint_factor(dev, state)
        _, inv_rest = factor.inverse_blocks()
        vcov = inv_rest[dev.q_rest:, dev.q_rest:]
    else:
        k = layout.size
        if n_agq == 1:
            def objective(par):
                return dev.laplace(par[:k], par[k:])
        else:
            def objective(par):
                return dev.agq(par[:k], par[k:], n_agq)
        lower = np.concatenate([layout.lower, np.full(dev.p, -np.inf)])
        par0 = np.concatenate([theta, beta])
        res2, name = _minimize(objective, par0, lower)
        par = np.asarray(res2.x)
        theta, beta = par[:k], par[k:]
        criterion = float(res2.fun)
        converged, message = bool(res2.success), str(res2.message)
        # the Hessian of the criterion in (theta, beta), as lme4's derivs; theta on its
        # bound is stepped inside
        par_h = par.copy()
        on_bound = np.isfinite(lower) & (par_h - lower < 1e-4)
        par_h[on_bound] = lower[on_bound] + 1e-4
        hessian = _hessian(objective, par_h)
        try:
            inv = np.linalg.inv(hessian / 2.0)
            vcov = inv[k:, k:]
            vcov = (vcov + vcov.T) / 2.0
            if np.any(np.diag(vcov) <= 0) or np.any(on_bound):
                raise np.linalg.LinAlgError
        except np.linalg.LinAlgError:
            state_b = dev.pirls(theta, None)
            factor = _joint_factor(dev, state_b)
            vcov = factor.inverse_blocks()[1][dev.q_rest:, dev.q_rest:]
        objective(par)  # leave the modes at the optimum
        state = dev.pirls(theta, beta)
    opt = OptSummary(optimizer=name, initial=np.asarray(start), final=np.asarray(theta),
                     objective=criterion, evaluations=dev.evaluations - count0,
                     seconds=time.perf_counter() - t0, converged=converged, message=message)
    if not converged:
        warnings.warn(f"the optimizer ({name}) did not converge: {message}", ConvergenceWarning, stacklevel=3)
    return GLMMFitNumbers(theta=np.asarray(theta), beta=np.asarray(beta), criterion=criterion, state=state,
                          vcov_beta=np.asarray(vcov), hessian=hessian, opt=opt, n_agq=n_agq)


def _joint_factor(dev: GLMMDeviance, state: PIRLSState) -> BlockedFactor:
    _, _, w = dev._weights(state.eta)
    return dev._factor(w, with_x=True)


def fit_negative_binomial(gd: GLMMDesign, n_agq: int = 1):
    """glmer.nb: maximize the Laplace log-likelihood over the shape ``theta`` of the
    negative binomial (on the log scale), refitting the GLMM at each value, starting
    from a Poisson fit's moment estimate."""
    from ..family import NegativeBinomial, Poisson

    fam = gd.family
    pois = GLMMDeviance(gd.with_family(Poisson(fam.link.name)))
    num0 = fit_glmm_numbers(pois, n_agq=n_agq)
    mu = num0.state.mu
    resid_var = np.mean((gd.y - mu) ** 2 - mu)
    shape0 = float(np.clip(np.mean(mu**2) / resid_var, 0.05, 1e3)) if resid_var > 0 else 10.0
    cache: dict[float, GLMMFitNumbers] = {}
    start = {"theta": num0.theta}

    def neg_loglik(log_shape: float) -> float:
        nb = NegativeBinomial(fam.link.name, float(np.exp(log_shape)))
        dev = GLMMDeviance(gd.with_family(nb))
        num = fit_glmm_numbers(dev, n_agq=n_agq, start_theta=start["theta"])
        start["theta"] = num.theta
        cache[log_shape] = (num, nb, dev)
        return num.criterion

    minimize_scalar(neg_loglik, bracket=(np.log(shape0) - 1.0, np.log(shape0) + 1.0),
                          options={"xtol": 1e-5})
    best = min(cache, key=lambda k: cache[k][0].criterion)
    return cache[best]


def fit_glmm_model(gd: GLMMDesign, n_agq: int = 1):
    """Fit as glmer (``n_agq`` = its nAGQ) or glmer.nb, and build the result."""
    from ..family import NegativeBinomial
    from ..results.glmm_results import glmm_point_result

    n_agq = int(n_agq)
    if n_agq < 0 or n_agq > 25:
        raise FitError(f"n_agq must be between 0 and 25, not {n_agq}")
    method = {0: "nagq0", 1: "laplace"}.get(n_agq, "agq")
    if isinstance(gd.family, NegativeBinomial):
        numbers, family, dev = fit_negative_binomial(gd, n_agq=n_agq)
        return glmm_point_result(dev, numbers, method, family, extra_params=1)
    dev = GLMMDeviance(gd)
    if n_agq > 1:
        dev.agq_check()
    numbers = fit_glmm_numbers(dev, n_agq=n_agq)
    return glmm_point_result(dev, numbers, method, gd.family)
