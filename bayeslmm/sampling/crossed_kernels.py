"""Compiled kernels of the partially collapsed sampler (see :mod:`bayeslmm.sampling.crossed`).

The density is p(y | beta, b_S, Sigma, sigma) p(u_S) with the *integrated* group effects
b_I integrated out exactly (their groups are independent given the *sampled* effects
b_S = Lambda_S u_S) and u_S ~ N(0, I) sampled non-centered (or partly centered, see
:func:`_sampled_effects`). One evaluation is a pass over
the rows (residuals r = y - X beta - Z_S b_S), the per-group collapsed algebra of
:mod:`bayeslmm.sampling.marginal_kernels` on c_j = Z_j' r_j, and a second pass over the rows for
the gradient in beta and b_S: O(n (p + q) + sum_j m_j^3), no padding of groups.

Blob layout (floats; integers stored as floats). Header slots shared with
:mod:`bayeslmm.sampling.marginal_kernels` (so its ``_factors`` and ``_work`` read it): H_LEN, H_P,
H_K, H_NDIM, H_MMAX, H_SIGMA, H_N, H_FPRI, H_SPRI, H_BARS, H_SDPRI, H_SCALE; then::

    C_J groups, C_KI integrated bars, C_KS sampled bars, C_QI (sum q of integrated
    bars), C_QS (sum q of sampled bars), and section offsets:
    C_Y (n), C_X (n p), C_ROWSLOT (n KI: index of the row's level's first effect in the
    compact group-slot vector, per integrated bar), C_ZI (n QI), C_GROW (J + 1 row pointers; rows sorted by group),
    C_GPTR (J + 1 entry pointers), C_ENT (E x 2: bar, slot), C_GM (J), C_GSOFF (J),
    C_GVOFF (J), C_S (sum m_j^2: Z_j'Z_j), C_IBAR (KI bar indices), C_SBAR (KS x 5: bar,
    levels, start of its coordinates in x, start in the effect work array, number of
    leading terms centered: see _sampled_effects), C_CODE (n KS: index of the row's
    level's first effect in the sampled-effect work array), C_ZS (n QS),
    C_NEFF (size of the sampled-effect work array), C_NVEC (sum m_j)
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from .marginal_kernels import (
    _LOG_2PI,
    H_BARS,
    H_FPRI,
    H_K,
    H_LEN,
    H_MMAX,
    H_N,
    H_NDIM,
    H_P,
    H_SCALE,
    H_SDPRI,
    H_SIGMA,
    H_SPRI,
    _cholesky,
    _factors,
    _solve,
    _work,
    cpc_gradient,
    prior_logp,
)

C_J, C_KI, C_KS, C_QI, C_QS = range(25, 30)
(C_Y, C_X, C_ROWSLOT, C_ZI, C_GROW, C_GPTR, C_ENT, C_GM, C_GSOFF, C_GVOFF, C_S, C_IBAR, C_SBAR, C_CODE,
 C_ZS) = range(30, 45)
C_NEFF, C_NVEC = 45, 46
C_SIZE = 47


@numba.njit(cache=True, error_model="numpy")
def _sampled_effects(x, blob, lams, beff):
    """b_S (standardized scale) per sampled bar, level-major, into ``beff``. A bar whose
    first k terms are centered has coordinates (b_A, u_B) per level, A the first k terms:
    u_A = Lambda_AA^-1 b_A, b_B = Lambda_BA u_A + Lambda_BB u_B (k = 0: b = Lambda u)."""
    KS = int(blob[C_KS])
    sb = int(blob[C_SBAR])
    bars = int(blob[H_BARS])
    for s in range(KS):
        k = int(blob[sb + 5 * s])
        L = int(blob[sb + 5 * s + 1])
        u0 = int(blob[sb + 5 * s + 2])
        e0 = int(blob[sb + 5 * s + 3])
        kc = int(blob[sb + 5 * s + 4])
        q = int(blob[bars + 6 * k])
        lam = lams[k]
        u = np.empty(q)
        for lev in range(L):
            o = u0 + lev * q
            for r in range(q):
                if r < kc:  # forward substitution within the centered block
                    t = x[o + r]
                    for c in range(r):
                        t -= lam[r, c] * u[c]
                    u[r] = t / lam[r, r]
                    beff[e0 + lev * q + r] = x[o + r]
                else:
                    u[r] = x[o + r]
                    t = 0.0
                    for c in range(r + 1):
                        t += lam[r, c] * u[c]
                    beff[e0 + lev * q + r] = t


@numba.njit(cache=True, error_model="numpy")
def _bar_q(blob):
    """q of each sampled and each integrated bar (hoisted out of the row loops)."""
    KS, KI = int(blob[C_KS]), int(blob[C_KI])
    sb, ib, bars = int(blob[C_SBAR]), int(blob[C_IBAR]), int(blob[H_BARS])
    sq = np.empty(KS, dtype=np.int64)
    iq = np.empty(KI, dtype=np.int64)
    for s in range(KS):
        sq[s] = int(blob[bars + 6 * int(blob[sb + 5 * s])])
    for k in range(KI):
        iq[k] = int(blob[bars + 6 * int(blob[ib + k])])
    return sq, iq


@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"})
def _residuals(x, blob, beff, r, cvec):
    """One pass over the rows: r = y - X beta - Z_S b_S (standardized scale) and
    c = Z_I' r in the compact group-slot layout (``cvec``, zeroed here); returns r'r.
    Each row stores the absolute index of its level's effects (sampled: into b_S;
    integrated: into the compact vector)."""
    n = int(blob[H_N])
    p = int(blob[H_P])
    KS, QS, KI, QI = int(blob[C_KS]), int(blob[C_QS]), int(blob[C_KI]), int(blob[C_QI])
    y0, X0, code0, zs0 = int(blob[C_Y]), int(blob[C_X]), int(blob[C_CODE]), int(blob[C_ZS])
    rs0, zi0 = int(blob[C_ROWSLOT]), int(blob[C_ZI])
    sq, iq = _bar_q(blob)
    for a in range(len(cvec)):
        cvec[a] = 0.0
    rr = 0.0
    for i in range(n):
        t = blob[y0 + i]
        for a in range(p):
            t -= blob[X0 + i * p + a] * x[a]
        col = 0
        for s in range(KS):
            e = int(blob[code0 + i * KS + s])
            for c in range(sq[s]):
                t -= blob[zs0 + i * QS + col + c] * beff[e + c]
            col += sq[s]
        r[i] = t
        rr += t * t
        col = 0
        for k in range(KI):
            v = int(blob[rs0 + i * KI + k])
            for c in range(iq[k]):
                cvec[v + c] += blob[zi0 + i * QI + col + c] * t
            col += iq[k]
    return rr


@numba.njit(cache=True, error_model="numpy")
def _group_lt(blob, j, lams, sigma, Lt):
    """Lt = blockdiag(lambda_k per level in group j) / sigma into the leading m_j block."""
    m = int(blob[int(blob[C_GM]) + j])
    for a in range(m):
        for b in range(m):
            Lt[a, b] = 0.0
    gptr, ent, bars = int(blob[C_GPTR]), int(blob[C_ENT]), int(blob[H_BARS])
    for e in range(int(blob[gptr + j]), int(blob[gptr + j + 1])):
        k = int(blob[ent + 2 * e])
        off = int(blob[ent + 2 * e + 1])
        q = int(blob[bars + 6 * k])
        for r in range(q):
            for c in range(r + 1):
                Lt[off + r, off + c] = lams[k][r, c] / sigma
    return m


@numba.njit(cache=True, error_model="numpy")
def _collapsed(x, blob, lams, sigma, cvec, g_lams, ltw, need_grad):
    """Per-group collapsed algebra given c_j = Z_j' r_j (``cvec``): (sum log|M_j|, sum u_j'w_j);
    accumulates d/dLt into ``g_lams`` and stores Lt w_j in ``ltw`` (for the row pass).
    (-inf, 0) if some M_j is not positive definite."""
    J = int(blob[C_J])
    mmax = max(int(blob[H_MMAX]), 1)
    gs, gv, S0 = int(blob[C_GSOFF]), int(blob[C_GVOFF]), int(blob[C_S])
    gptr, ent, bars = int(blob[C_GPTR]), int(blob[C_ENT]), int(blob[H_BARS])
    Lt = np.zeros((mmax, mmax))
    SL = np.zeros((mmax, mmax))
    M = np.zeros((mmax, mmax))
    C = np.zeros((mmax, mmax))
    Minv = np.zeros((mmax, mmax))
    c = np.zeros(mmax)
    u = np.zeros(mmax)
    w = np.zeros(mmax)
    SLw = np.zeros(mmax)
    e_i = np.zeros(mmax)
    col = np.zeros(mmax)
    s2 = sigma * sigma
    logdet = 0.0
    uw = 0.0
    for j in range(J):
        m = _group_lt(blob, j, lams, sigma, Lt)
        so = S0 + int(blob[gs + j])
        vo = int(blob[gv + j])
        for a in range(m):
            c[a] = cvec[vo + a]
        for a in range(m):
            for b in range(m):
                t = 0.0
                for l in range(b, m):
                    t += blob[so + a * m + l] * Lt[l, b]
                SL[a, b] = t
        for a in range(m):
            for b in range(a + 1):
                t = 1.0 if a == b else 0.0
                for l in range(a, m):
                    t += Lt[l, a] * SL[l, b]
                M[a, b] = t
                M[b, a] = t
        if not _cholesky(M, m, C):
            return -np.inf, 0.0
        for a in range(m):
            logdet += 2.0 * math.log(C[a, a])
            t = 0.0
            for l in range(a, m):
                t += Lt[l, a] * c[l]
            u[a] = t
        _solve(C, m, u, w)
        for a in range(m):
            uw += u[a] * w[a]
        if not need_grad:
            continue
        for a in range(m):
            t = 0.0
            t2 = 0.0
            for l in range(a + 1):
                t += Lt[a, l] * w[l]
            for l in range(m):
                t2 += SL[a, l] * w[l]
            ltw[vo + a] = t
            SLw[a] = t2
        for b in range(m):
            for a in range(m):
                e_i[a] = 1.0 if a == b else 0.0
            _solve(C, m, e_i, col)
            for a in range(m):
                Minv[a, b] = col[a]
        # dL/dLt = (c w' - SL w w') / s2 - SL Minv, on the nonzero pattern of Lt
        for e in range(int(blob[gptr + j]), int(blob[gptr + j + 1])):
            k = int(blob[ent + 2 * e])
            off = int(blob[ent + 2 * e + 1])
            q = int(blob[bars + 6 * k])
            G = g_lams[k]
            for rr_ in range(q):
                ar = off + rr_
                for cc in range(rr_ + 1):
                    bc = off + cc
                    t = 0.0
                    for l in range(m):
                        t += SL[ar, l] * Minv[l, bc]
                    G[rr_, cc] += (c[ar] * w[bc] - SLw[ar] * w[bc]) / s2 - t
    return logdet, uw


@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"})
def _row_gradient(x, blob, r, ltw, s2, grad, gb):
    """e_i = (r_i - Z_i Lt w_j) / s2 = -d loglik / d r_i; adds X'e to grad[:p] and
    Z_S'e per level into ``gb`` (gradient in b_S)."""
    n = int(blob[H_N])
    p = int(blob[H_P])
    KS, QS, KI, QI = int(blob[C_KS]), int(blob[C_QS]), int(blob[C_KI]), int(blob[C_QI])
    X0, code0, zs0 = int(blob[C_X]), int(blob[C_CODE]), int(blob[C_ZS])
    rs0, zi0 = int(blob[C_ROWSLOT]), int(blob[C_ZI])
    sq, iq = _bar_q(blob)
    gbeta = np.zeros(p)
    for i in range(n):
        t = r[i]
        col = 0
        for k in range(KI):
            v = int(blob[rs0 + i * KI + k])
            for a in range(iq[k]):
                t -= blob[zi0 + i * QI + col + a] * ltw[v + a]
            col += iq[k]
        e = t / s2
        for a in range(p):
            gbeta[a] += blob[X0 + i * p + a] * e
        col = 0
        for s in range(KS):
            ee = int(blob[code0 + i * KS + s])
            for a in range(sq[s]):
                gb[ee + a] += blob[zs0 + i * QS + col + a] * e
            col += sq[s]
    for a in range(p):
        grad[a] += gbeta[a]


@numba.njit(cache=True, error_model="numpy")
def _sampled_prior(x, grad, gb, lam, G, q, kc, L, u0, e0):
    """A sampled bar's effects: log density of its coordinates (without 2 pi) and their
    gradient, given ``gb`` (the likelihood's gradient in b); adds the gradient in Lambda
    (lower triangle) to ``G``. Per level the coordinates are (b_A, u_B), A the first ``kc``
    terms (kc = 0: non-centered, kc = q: centered): u ~ N(0, I) with u_A = Lambda_AA^-1 b_A,
    so the density is N(u) |Lambda_AA|^-1. With v = Lambda_AA^-T (Lambda_BA' gb_B - u_A):
    d/db_A = gb_A + v, d/du_B = Lambda_BB' gb_B - u_B; d/dLambda = gb_B u' on the rows of B,
    -v u_A' - diag(1 / Lambda_ii) on A x A."""
    value = 0.0
    u = np.zeros(q)
    v = np.zeros(q)
    for i in range(kc):
        value -= L * math.log(lam[i, i])
        G[i, i] -= L / lam[i, i]
    for lev in range(L):
        o = u0 + lev * q
        g = e0 + lev * q
        for r in range(q):
            if r < kc:  # u_A = Lambda_AA^-1 b_A
                t = x[o + r]
                for c in range(r):
                    t -= lam[r, c] * u[c]
                u[r] = t / lam[r, r]
            else:
                u[r] = x[o + r]
            value -= 0.5 * u[r] * u[r]
        for c in range(q):  # Lambda_B.' gb_B - u, column c
            t = -u[c]
            for r in range(max(c, kc), q):
                t += lam[r, c] * gb[g + r]
                G[r, c] += gb[g + r] * u[c]
            if c >= kc:
                grad[o + c] += t
            else:
                v[c] = t
        for r in range(kc - 1, -1, -1):  # v = Lambda_AA^-T v
            t = v[r]
            for c in range(r + 1, kc):
                t -= lam[c, r] * v[c]
            v[r] = t / lam[r, r]
        for r in range(kc):
            grad[o + r] += gb[g + r] + v[r]
            for c in range(r + 1):
                G[r, c] -= v[r] * u[c]
    return value


@numba.njit(cache=True, error_model="numpy")
def crossed_logp(x, grad, blob):
    """Log posterior density (up to a constant) at unconstrained ``x``; fills ``grad``."""
    p = int(blob[H_P])
    K = int(blob[H_K])
    n = int(blob[H_N])
    ndim = int(blob[H_NDIM])
    s = blob[H_SCALE]
    si = int(blob[H_SIGMA])
    bars = int(blob[H_BARS])
    KS = int(blob[C_KS])
    sb = int(blob[C_SBAR])
    for i in range(ndim):
        grad[i] = 0.0
    lams, chols, mmax = _work(blob)
    log_sigma = x[si]
    sigma = math.exp(log_sigma)
    s2 = sigma * sigma
    extra = _factors(x, blob, lams, chols)
    beff = np.zeros(int(blob[C_NEFF]))
    _sampled_effects(x, blob, lams, beff)
    r = np.empty(n)
    cvec = np.empty(int(blob[C_NVEC]))
    rr = _residuals(x, blob, beff, r, cvec)
    g_lams = np.zeros_like(lams)
    ltw = np.zeros(int(blob[C_NVEC]))
    logdet, uw = _collapsed(x, blob, lams, sigma, cvec, g_lams, ltw, True)
    if not np.isfinite(logdet) or not (s2 > 0.0) or not np.isfinite(s2):
        return -np.inf
    Q = (rr - uw) / s2
    value = extra - 0.5 * (n * (_LOG_2PI + math.log(s2)) + logdet + Q)
    # d/d log sigma at fixed Lt and fixed b_S
    g_ls = Q - n
    gb = np.zeros(int(blob[C_NEFF]))
    _row_gradient(x, blob, r, ltw, s2, grad, gb)
    # sampled effects: b = Lambda u; prior u ~ N(0, I) (see _sampled_prior)
    GS = np.zeros_like(lams)
    for t in range(KS):
        k = int(blob[sb + 5 * t])
        L = int(blob[sb + 5 * t + 1])
        u0 = int(blob[sb + 5 * t + 2])
        e0 = int(blob[sb + 5 * t + 3])
        q = int(blob[bars + 6 * k])
        value += _sampled_prior(x, grad, gb, lams[k], GS[k], q, int(blob[sb + 5 * t + 4]), L, u0, e0)
    # priors (user's scale: v = shift + s * theta) and Jacobians of the log transforms
    fp = int(blob[H_FPRI])
    for a in range(p):
        o = fp + 5 * a
        lp, dlp = prior_logp(int(blob[o]), blob[o + 1], blob[o + 2], blob[o + 3], blob[o + 4] + s * x[a])
        value += lp
        grad[a] += s * dlp
    sp = int(blob[H_SPRI])
    lp, dlp = prior_logp(int(blob[sp]), blob[sp + 1], blob[sp + 2], blob[sp + 3], s * sigma)
    value += lp + log_sigma
    grad[si] += dlp * s * sigma + 1.0 + g_ls
    sdp = int(blob[H_SDPRI])
    GL = np.zeros_like(lams[0])
    for k in range(K):
        q = int(blob[bars + 6 * k])
        n_cpc = int(blob[bars + 6 * k + 1])
        sd0 = int(blob[bars + 6 * k + 2])
        c0 = int(blob[bars + 6 * k + 3])
        eta = blob[bars + 6 * k + 4]
        po = sdp + 5 * int(blob[bars + 6 * k + 5])
        # integrated bars: G per unit of Lt = Lambda / sigma; sampled bars: per unit of Lambda
        G = g_lams[k]
        GSk = GS[k]
        for t in range(q):
            sd = math.exp(x[sd0 + t])
            o = po + 5 * t
            lp, dlp = prior_logp(int(blob[o]), blob[o + 1], blob[o + 2], blob[o + 3], s * sd)
            value += lp + x[sd0 + t]
            row = 0.0
            row_s = 0.0
            for cc in range(t + 1):
                row += G[t, cc] * lams[k][t, cc] / sigma
                row_s += GSk[t, cc] * lams[k][t, cc]
            grad[sd0 + t] += dlp * s * sd + 1.0 + row + row_s
            grad[si] -= row
        if n_cpc > 0:
            for rw in range(q):
                sd = math.exp(x[sd0 + rw])
                for cc in range(q):
                    GL[rw, cc] = (G[rw, cc] * sd / sigma + GSk[rw, cc] * sd) if cc <= rw else 0.0
            cpc_gradient(x[c0:c0 + n_cpc], q, eta, GL, grad[c0:c0 + n_cpc])
    if not np.isfinite(value):
        return -np.inf
    return value


@numba.njit(cache=True, error_model="numpy")
def crossed_loglik(x, blob):
    """log p(y | beta, b_S, Lambda, sigma) with b_I integrated out (standardized scale)."""
    n = int(blob[H_N])
    lams, chols, mmax = _work(blob)
    sigma = math.exp(x[int(blob[H_SIGMA])])
    _factors(x, blob, lams, chols)
    beff = np.zeros(int(blob[C_NEFF]))
    _sampled_effects(x, blob, lams, beff)
    r = np.empty(n)
    cvec = np.empty(int(blob[C_NVEC]))
    rr = _residuals(x, blob, beff, r, cvec)
    g_lams = np.zeros_like(lams)
    ltw = np.zeros(int(blob[C_NVEC]))
    logdet, uw = _collapsed(x, blob, lams, sigma, cvec, g_lams, ltw, False)
    if not np.isfinite(logdet):
        return -np.inf
    s2 = sigma * sigma
    return -0.5 * (n * (_LOG_2PI + math.log(s2)) + logdet + (rr - uw) / s2)


@numba.njit(cache=True, error_model="numpy")
def crossed_draw(xs, blob, normals, out_int, out_smp):
    """Exact draws of the integrated effects given each row of ``xs`` (u_j ~ N(M_j^-1 Lt'
    c_j, sigma^2 M_j^-1), b_j = Lt u_j, group-slot layout, length sum m_j) into
    ``out_int``, and the sampled effects b_S = Lambda u into ``out_smp``; standardized scale."""
    J = int(blob[C_J])
    n = int(blob[H_N])
    gs, gv, S0 = int(blob[C_GSOFF]), int(blob[C_GVOFF]), int(blob[C_S])
    lams, chols, mmax = _work(blob)
    Lt = np.zeros((mmax, mmax))
    SL = np.zeros((mmax, mmax))
    M = np.zeros((mmax, mmax))
    C = np.zeros((mmax, mmax))
    c = np.zeros(mmax)
    u = np.zeros(mmax)
    w = np.zeros(mmax)
    z = np.zeros(mmax)
    r = np.empty(n)
    cvec = np.empty(int(blob[C_NVEC]))
    for sidx in range(xs.shape[0]):
        x = xs[sidx]
        sigma = math.exp(x[int(blob[H_SIGMA])])
        _factors(x, blob, lams, chols)
        beff = out_smp[sidx]
        _sampled_effects(x, blob, lams, beff)
        _residuals(x, blob, beff, r, cvec)
        for j in range(J):
            m = _group_lt(blob, j, lams, sigma, Lt)
            so = S0 + int(blob[gs + j])
            vo = int(blob[gv + j])
            for a in range(m):
                c[a] = cvec[vo + a]
            for a in range(m):
                for b in range(m):
                    t = 0.0
                    for l in range(b, m):
                        t += blob[so + a * m + l] * Lt[l, b]
                    SL[a, b] = t
            for a in range(m):
                for b in range(a + 1):
                    t = 1.0 if a == b else 0.0
                    for l in range(a, m):
                        t += Lt[l, a] * SL[l, b]
                    M[a, b] = t
                    M[b, a] = t
            if not _cholesky(M, m, C):
                for a in range(m):
                    out_int[sidx, vo + a] = np.nan  # the caller checks
                continue
            for a in range(m):
                t = 0.0
                for l in range(a, m):
                    t += Lt[l, a] * c[l]
                u[a] = t
            _solve(C, m, u, w)
            for a in range(m - 1, -1, -1):
                t = normals[sidx, vo + a]
                for l in range(a + 1, m):
                    t -= C[l, a] * z[l]
                z[a] = t / C[a, a]
            for a in range(m):
                u[a] = w[a] + sigma * z[a]
            for a in range(m):
                t = 0.0
                for l in range(a + 1):
                    t += Lt[a, l] * u[l]
                out_int[sidx, vo + a] = t


@numba.njit(cache=True, error_model="numpy")
def group_stats(group_ptr, slots, zi, qs, m, soff, voff, y, X, S, Zy, ZX):
    """Per-group Z_j'Z_j (into ``S`` at ``soff``), Z_j'y and Z_j'X (into ``Zy``, ``ZX`` at
    ``voff``), each group its own size m_j (no padding); rows sorted by group."""
    group_crossproducts(group_ptr, slots, zi, qs, m, soff, S)
    KI = slots.shape[1]
    p = X.shape[1]
    for j in range(len(m)):
        for i in range(group_ptr[j], group_ptr[j + 1]):
            ca = 0
            for ka in range(KI):
                for ta in range(qs[ka]):
                    a = voff[j] + slots[i, ka] + ta
                    v = zi[i, ca + ta]
                    Zy[a] += v * y[i]
                    for b in range(p):
                        ZX[a * p + b] += v * X[i, b]
                ca += qs[ka]


@numba.njit(cache=True, error_model="numpy")
def group_crossproducts(group_ptr, slots, zi, qs, m, soff, out):
    """S_j = Z_j'Z_j per group (row-major m_j x m_j blocks at ``soff[j]`` in ``out``)
    from each row's slots (n, KI) and integrated columns (n, QI); rows sorted by group."""
    KI = slots.shape[1]
    for j in range(len(m)):
        mj = m[j]
        base = soff[j]
        for i in range(group_ptr[j], group_ptr[j + 1]):
            ca = 0
            for ka in range(KI):
                for ta in range(qs[ka]):
                    a = slots[i, ka] + ta
                    va = zi[i, ca + ta]
                    cb = 0
                    for kb in range(KI):
                        for tb in range(qs[kb]):
                            b = slots[i, kb] + tb
                            out[base + a * mj + b] += va * zi[i, cb + tb]
                        cb += qs[kb]
                ca += qs[ka]


@numba.njit(cache=True, error_model="numpy")
def pointwise_loglik(y, X, codes, Z, qs, starts, beta, sigma, effects, out):
    """out[s, i] = log N(y_i | X_i beta_s + sum_k Z_ik b_sk[codes_ik], sigma_s) for every
    draw s; ``effects`` (S, sum_k levels_k q_k): bar k's effects level-major from ``starts[k]``."""
    n, p = X.shape
    K = codes.shape[1]
    for s in range(beta.shape[0]):
        const = -math.log(sigma[s]) - 0.5 * _LOG_2PI
        inv = 1.0 / sigma[s]
        for i in range(n):
            mu = 0.0
            for a in range(p):
                mu += X[i, a] * beta[s, a]
            col = 0
            for k in range(K):
                base = starts[k] + codes[i, k] * qs[k]
                for t in range(qs[k]):
                    mu += Z[i, col + t] * effects[s, base + t]
                col += qs[k]
            z = (y[i] - mu) * inv
            out[s, i] = const - 0.5 * z * z


_LOGP_SIG = numba.types.int64(numba.types.uint64, numba.types.CPointer(numba.types.double),
                              numba.types.CPointer(numba.types.double), numba.types.CPointer(numba.types.double),
                              numba.types.CPointer(numba.types.double))


def _logp_c(dim, x_, grad_, logp_, blob_):
    """nutpie's C interface: (dim, x, gradient out, logp out, user data) -> status."""
    head = numba.carray(blob_, (1,))
    blob = numba.carray(blob_, (int(head[H_LEN]),))
    if dim != int(blob[H_NDIM]):
        return -1
    x = numba.carray(x_, (dim,))
    grad = numba.carray(grad_, (dim,))
    out = numba.carray(logp_, (1,))
    value = crossed_logp(x, grad, blob)
    out[0] = value
    if not np.isfinite(value):
        return 4
    for i in range(dim):
        if not np.isfinite(grad[i]):
            return 3
    return 0


@functools.cache
def nutpie_logp():
    """The log-density C callback for nutpie (compiled on first use, cached on disk)."""
    return numba.cfunc(_LOGP_SIG, cache=True, error_model="numpy")(_logp_c)
