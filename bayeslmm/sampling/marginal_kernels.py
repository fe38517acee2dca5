"""Compiled kernels of the collapsed sampler (see :mod:`bayeslmm.sampling.marginal`).

The log density, its gradient and the exact draws of the group effects are generic
numba functions over one packed float64 array (``blob``) that describes the model and
holds its sufficient statistics; nothing here depends on a particular model, so numba
compiles them once per installation (``cache=True``) and every new model starts at once.
nutpie calls :data:`logp_cfunc` through a C pointer without the GIL, so chains run in
parallel.

Blob layout (integers stored as floats), see ``marginal.pack``::

    header (H_SIZE): total length, p, K bars, J groups, ndim, m_max, sigma index,
                     n, y'y, the offsets of the sections below, the response scale,
                     and a flag for the one-bar layout that has a fast path
    Xy (p), XX (p*p)                       totals over groups
    fixed priors (p x 5)                   (code, a, b, c, shift) per coefficient
    sigma prior (5)
    bars (K x 6)                           (q, n_cpc, sd start, cpc start, eta, prior offset)
    sd priors (sum q x 5)
    group pointers (J + 1)                 into the entry list
    entries (E x 2)                        (bar, slot of its first effect in the group)
    group m (J), S offset (J), vector offset (J)
    S = Z_j'Z_j (sum m_j^2), Zy (sum m_j), ZX (sum m_j p)
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

H_SIZE = 25
# header slots
H_LEN, H_P, H_K, H_J, H_NDIM, H_MMAX, H_SIGMA, H_N, H_YY = range(9)
H_XY, H_XX, H_FPRI, H_SPRI, H_BARS, H_SDPRI, H_GPTR, H_ENT, H_GM, H_GSOFF, H_GVOFF, H_S, H_ZY, H_ZX = range(9, 23)
H_SCALE = 23
H_SINGLE = 24  # 1 when one bar with one level per group (Lt shared by all groups)

# prior codes
FLAT, NORMAL, STUDENT_T, HALF_STUDENT_T, HALF_NORMAL, EXPONENTIAL, GAMMA, LOGNORMAL = range(8)
_LOG_2PI = math.log(2.0 * math.pi)


@numba.njit(cache=True, error_model="numpy")
def prior_logp(code, a, b, c, v):
    """(log density, derivative) of a prior at ``v``; -inf outside the support."""
    if code == FLAT:
        return 0.0, 0.0
    if code == NORMAL:
        z = (v - a) / b
        return -0.5 * z * z - math.log(b) - 0.5 * _LOG_2PI, -z / b
    if code == STUDENT_T or code == HALF_STUDENT_T:
        if code == STUDENT_T:
            nu, mu, sig = a, b, c
        else:
            nu, mu, sig = a, 0.0, b
            if v <= 0.0:
                return -np.inf, 0.0
        z = (v - mu) / sig
        const = math.lgamma((nu + 1.0) / 2.0) - math.lgamma(nu / 2.0) - 0.5 * math.log(nu * math.pi) - math.log(sig)
        if code == HALF_STUDENT_T:
            const += math.log(2.0)
        return const - (nu + 1.0) / 2.0 * math.log1p(z * z / nu), -(nu + 1.0) * z / (sig * (nu + z * z))
    if v <= 0.0:
        return -np.inf, 0.0
    if code == HALF_NORMAL:
        z = v / a
        return math.log(2.0) - 0.5 * z * z - math.log(a) - 0.5 * _LOG_2PI, -z / a
    if code == EXPONENTIAL:
        return math.log(a) - a * v, -a
    if code == GAMMA:
        return a * math.log(b) - math.lgamma(a) + (a - 1.0) * math.log(v) - b * v, (a - 1.0) / v - b
    # LOGNORMAL
    lv = math.log(v)
    return (-lv - math.log(b) - 0.5 * _LOG_2PI - (lv - a) ** 2 / (2.0 * b * b),
            -1.0 / v - (lv - a) / (b * b * v))


@numba.njit(cache=True, error_model="numpy")
def cpc_cholesky(y, q, L):
    """Stan's canonical-partial-correlation transform into ``L`` (q x q, lower); returns
    log |Jacobian| + nothing else."""
    log_jac = 0.0
    for i in range(q):
        for j in range(q):
            L[i, j] = 0.0
    L[0, 0] = 1.0
    k = 0
    for i in range(1, q):
        ss = 0.0
        for j in range(i):
            z = math.tanh(y[k])
            k += 1
            log_jac += math.log1p(-z * z)
            if j == 0:
                L[i, j] = z
            else:
                log_jac += 0.5 * math.log(max(1.0 - ss, 1e-300))
                L[i, j] = z * math.sqrt(max(1.0 - ss, 0.0))
            ss += L[i, j] * L[i, j]
        L[i, i] = math.sqrt(max(1.0 - ss, 1e-300))
    return log_jac


@numba.njit(cache=True, error_model="numpy")
def cpc_gradient(y, q, eta, GL, out):
    """Gradient in ``y`` of sum(GL * L(y)) + log|Jacobian| + LKJ(eta) log density, by
    forward differentiation of each row's recurrence (rows depend on their own y only)."""
    k0 = 0
    for i in range(1, q):
        coef = q - i - 1 + 2.0 * eta - 2.0  # LKJ exponent of log L[i, i] (Stan)
        for a in range(i):
            ss = 0.0
            dss = 0.0
            total = 0.0
            for j in range(i):
                z = math.tanh(y[k0 + j])
                dz = (1.0 - z * z) if j == a else 0.0
                if j == a:
                    total += -2.0 * z  # d log(1 - z^2) / dy
                if j == 0:
                    lij = z
                    dlij = dz
                else:
                    one = max(1.0 - ss, 1e-300)
                    root = math.sqrt(one)
                    droot = -dss / (2.0 * root)
                    lij = z * root
                    dlij = dz * root + z * droot
                    total += -0.5 * dss / one
                total += GL[i, j] * dlij
                ss += lij * lij
                dss += 2.0 * lij * dlij
            lii = math.sqrt(max(1.0 - ss, 1e-300))
            dlii = -dss / (2.0 * lii)
            total += GL[i, i] * dlii + coef * dlii / lii
            out[k0 + a] = total
        k0 += i


@numba.njit(cache=True, error_model="numpy")
def _cholesky(M, m, C):
    """Lower Cholesky factor of the leading m x m block of M into C; False if not SPD."""
    for j in range(m):
        s = M[j, j]
        for l in range(j):
            s -= C[j, l] * C[j, l]
        if s <= 0.0:
            return False
        C[j, j] = math.sqrt(s)
        for i in range(j + 1, m):
            t = M[i, j]
            for l in range(j):
                t -= C[i, l] * C[j, l]
            C[i, j] = t / C[j, j]
        for i in range(j):
            C[i, j] = 0.0
    return True


@numba.njit(cache=True, error_model="numpy")
def _solve(C, m, b, out):
    """Solve (C C') out = b for the leading m x m lower factor C."""
    for i in range(m):
        t = b[i]
        for l in range(i):
            t -= C[i, l] * out[l]
        out[i] = t / C[i, i]
    for i in range(m - 1, -1, -1):
        t = out[i]
        for l in range(i + 1, m):
            t -= C[l, i] * out[l]
        out[i] = t / C[i, i]


@numba.njit(cache=True, error_model="numpy")
def _factors(x, blob, lams, chols):
    """Per bar: lambda_k = diag(sd'_k) L_k (standardized scale) into ``lams[k]``, the
    correlation Cholesky factor into ``chols[k]``; returns the correlation log-Jacobians
    plus LKJ log densities."""
    K = int(blob[H_K])
    bars = int(blob[H_BARS])
    extra = 0.0
    for k in range(K):
        q = int(blob[bars + 6 * k])
        n_cpc = int(blob[bars + 6 * k + 1])
        sd0 = int(blob[bars + 6 * k + 2])
        c0 = int(blob[bars + 6 * k + 3])
        eta = blob[bars + 6 * k + 4]
        L = chols[k]
        if n_cpc > 0:
            extra += cpc_cholesky(x[c0:c0 + n_cpc], q, L)
            for i in range(1, q):
                extra += (q - i - 1 + 2.0 * eta - 2.0) * math.log(L[i, i])
        else:
            for i in range(q):
                for j in range(q):
                    L[i, j] = 1.0 if i == j else 0.0
        for i in range(q):
            sd = math.exp(x[sd0 + i])
            for j in range(q):
                lams[k][i, j] = sd * L[i, j]
    return extra


@numba.njit(cache=True, error_model="numpy")
def _group_factor(blob, j, lams, sigma, Lt):
    """Lt = blockdiag(lambda_k per level in group j) / sigma into the leading m_j block."""
    m = int(blob[int(blob[H_GM]) + j])
    for a in range(m):
        for b in range(m):
            Lt[a, b] = 0.0
    gptr = int(blob[H_GPTR])
    ent = int(blob[H_ENT])
    bars = int(blob[H_BARS])
    for e in range(int(blob[gptr + j]), int(blob[gptr + j + 1])):
        k = int(blob[ent + 2 * e])
        off = int(blob[ent + 2 * e + 1])
        q = int(blob[bars + 6 * k])
        for r in range(q):
            for c in range(r + 1):
                Lt[off + r, off + c] = lams[k][r, c] / sigma
    return m


@numba.njit(cache=True, error_model="numpy")
def _work(blob):
    K = int(blob[H_K])
    mmax = max(int(blob[H_MMAX]), 1)
    bars = int(blob[H_BARS])
    qmax = 1
    for k in range(K):
        qmax = max(qmax, int(blob[bars + 6 * k]))
    # (K, qmax, qmax) arrays rather than lists of arrays: much less code to compile
    return np.zeros((K, qmax, qmax)), np.zeros((K, qmax, qmax)), mmax


@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"})  # keeps inf/nan semantics
def _core_single(blob, beta, sigma, lam, grad_beta, G, need_grad):
    """The per-group sums of :func:`_marginal_core` for one bar with q <= 2 and one level
    per group: Lt is shared, so the group loop is straight-line scalar code (about ten
    times faster than the general path, which matters for 10^4+ groups). Returns
    (sum log|M_j|, sum u_j'w_j) and accumulates into ``grad_beta`` and ``G``."""
    p = int(blob[H_P])
    J = int(blob[H_J])
    q = int(blob[int(blob[H_BARS])])
    S0, Zy0, ZX0 = int(blob[H_S]), int(blob[H_ZY]), int(blob[H_ZX])
    s2 = sigma * sigma
    logdet = 0.0
    prod = 1.0
    uw = 0.0
    if q == 1:
        a = lam[0, 0] / sigma
        A00 = 0.0
        B00 = 0.0
        for j in range(J):
            s00 = blob[S0 + j]
            c0 = blob[Zy0 + j]
            for k in range(p):
                c0 -= blob[ZX0 + j * p + k] * beta[k]
            sl = s00 * a
            M = 1.0 + a * sl
            prod *= M
            if prod > 1e250:
                logdet += math.log(prod)
                prod = 1.0
            u0 = a * c0
            w0 = u0 / M
            uw += u0 * w0
            if need_grad:
                ltw = a * w0
                for k in range(p):
                    grad_beta[k] -= blob[ZX0 + j * p + k] * ltw
                A00 += (c0 - sl * w0) * w0
                B00 += sl / M
        G[0, 0] += A00 / s2 - B00
        return logdet + math.log(prod), uw
    a = lam[0, 0] / sigma
    b = lam[1, 0] / sigma
    d = lam[1, 1] / sigma
    A00 = A10 = A11 = B00 = B10 = B11 = 0.0
    for j in range(J):
        so = S0 + 4 * j
        s00, s01, s11 = blob[so], blob[so + 1], blob[so + 3]
        zo = ZX0 + 2 * j * p
        c0 = blob[Zy0 + 2 * j]
        c1 = blob[Zy0 + 2 * j + 1]
        for k in range(p):
            c0 -= blob[zo + k] * beta[k]
            c1 -= blob[zo + p + k] * beta[k]
        SL00 = s00 * a + s01 * b
        SL01 = s01 * d
        SL10 = s01 * a + s11 * b
        SL11 = s11 * d
        M00 = 1.0 + a * SL00 + b * SL10
        M01 = a * SL01 + b * SL11
        M11 = 1.0 + d * SL11
        det = M00 * M11 - M01 * M01
        prod *= det
        if prod > 1e250:
            logdet += math.log(prod)
            prod = 1.0
        inv_det = 1.0 / det
        i00 = M11 * inv_det
        i01 = -M01 * inv_det
        i11 = M00 * inv_det
        u0 = a * c0 + b * c1
        u1 = d * c1
        w0 = i00 * u0 + i01 * u1
        w1 = i01 * u0 + i11 * u1
        uw += u0 * w0 + u1 * w1
        if need_grad:
            ltw0 = a * w0
            ltw1 = b * w0 + d * w1
            for k in range(p):
                grad_beta[k] -= blob[zo + k] * ltw0 + blob[zo + p + k] * ltw1
            r0 = c0 - (SL00 * w0 + SL01 * w1)
            r1 = c1 - (SL10 * w0 + SL11 * w1)
            A00 += r0 * w0
            A10 += r1 * w0
            A11 += r1 * w1
            B00 += SL00 * i00 + SL01 * i01
            B10 += SL10 * i00 + SL11 * i01
            B11 += SL10 * i01 + SL11 * i11
    G[0, 0] += A00 / s2 - B00
    G[1, 0] += A10 / s2 - B10
    G[1, 1] += A11 / s2 - B11
    return logdet + math.log(prod), uw


@numba.njit(cache=True, error_model="numpy")
def _general_core(blob, beta, sigma, lams, grad_beta, g_lams, need_grad, mmax):
    """Per-group sums for any layout (several bars, nested factors, any q): returns
    (sum log|M_j|, sum u_j'w_j), or (-inf, 0) if some M_j is not positive definite;
    accumulates -sum ZX_j' Lt w_j into ``grad_beta`` and the gradient in each lambda_k
    (per unit of Lt) into ``g_lams``."""
    p = int(blob[H_P])
    J = int(blob[H_J])
    gs, gv = int(blob[H_GSOFF]), int(blob[H_GVOFF])
    S0, Zy0, ZX0 = int(blob[H_S]), int(blob[H_ZY]), int(blob[H_ZX])
    gptr, ent, bars = int(blob[H_GPTR]), int(blob[H_ENT]), int(blob[H_BARS])
    Lt = np.zeros((mmax, mmax))
    SL = np.zeros((mmax, mmax))
    M = np.zeros((mmax, mmax))
    C = np.zeros((mmax, mmax))
    Minv = np.zeros((mmax, mmax))
    c = np.zeros(mmax)
    u = np.zeros(mmax)
    w = np.zeros(mmax)
    Ltw = np.zeros(mmax)
    SLw = np.zeros(mmax)
    e_i = np.zeros(mmax)
    col = np.zeros(mmax)
    s2 = sigma * sigma
    logdet = 0.0
    uw = 0.0
    for j in range(J):
        m = _group_factor(blob, j, lams, sigma, Lt)
        so = S0 + int(blob[gs + j])
        vo = int(blob[gv + j])
        for a in range(m):
            t = blob[Zy0 + vo + a]
            for b in range(p):
                t -= blob[ZX0 + (vo + a) * p + b] * beta[b]
            c[a] = t
        # SL = S Lt ; M = I + Lt' S Lt
        for a in range(m):
            for b in range(m):
                t = 0.0
                for l in range(b, m):  # Lt lower triangular: Lt[l, b] = 0 for l < b
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
            Ltw[a] = t
            SLw[a] = t2
        for b in range(p):
            t = 0.0
            for a in range(m):
                t += blob[ZX0 + (vo + a) * p + b] * Ltw[a]
            grad_beta[b] -= t
        # Minv column by column
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
            for r in range(q):
                ar = off + r
                for cc in range(r + 1):
                    bc = off + cc
                    t = 0.0
                    for l in range(m):
                        t += SL[ar, l] * Minv[l, bc]
                    G[r, cc] += (c[ar] * w[bc] - SLw[ar] * w[bc]) / s2 - t
    return logdet, uw


@numba.njit(cache=True, error_model="numpy")
def _finish(blob, beta, sigma, logdet, uw, grad_beta, need_grad):
    """Marginal log-likelihood (standardized scale) from the per-group sums, and
    d/d log sigma at fixed Lt; completes ``grad_beta``."""
    p = int(blob[H_P])
    s2 = sigma * sigma
    n = blob[H_N]
    yy = blob[H_YY]
    Xy0, XX0 = int(blob[H_XY]), int(blob[H_XX])
    rr = yy
    for a in range(p):
        rr -= 2.0 * blob[Xy0 + a] * beta[a]
        for b in range(p):
            rr += beta[a] * blob[XX0 + a * p + b] * beta[b]
    Q = (rr - uw) / s2
    value = -0.5 * (n * (_LOG_2PI + math.log(s2)) + logdet + Q)
    if need_grad:
        for a in range(p):
            t = blob[Xy0 + a] + grad_beta[a]  # grad_beta holds -sum ZX' Lt w so far
            for b in range(p):
                t -= blob[XX0 + a * p + b] * beta[b]
            grad_beta[a] = t / s2
    return value, Q - n


@numba.njit(cache=True, error_model="numpy")
def _prologue(x, blob):
    """Per-bar factors at ``x`` and zeroed gradient accumulators."""
    lams, chols, mmax = _work(blob)
    sigma = math.exp(x[int(blob[H_SIGMA])])
    extra = _factors(x, blob, lams, chols)
    return lams, chols, np.zeros_like(lams), np.zeros(int(blob[H_P])), mmax, sigma, extra


@numba.njit(cache=True, error_model="numpy")
def logp_single(x, grad, blob):
    """:func:`logp_grad` for the one-bar layout (q <= 2, one level per group)."""
    lams, chols, g_lams, grad_beta, mmax, sigma, extra = _prologue(x, blob)
    logdet, uw = _core_single(blob, x[:int(blob[H_P])], sigma, lams[0], grad_beta, g_lams[0], True)
    return _posterior(x, grad, blob, lams, chols, g_lams, grad_beta, sigma, extra, logdet, uw)


@numba.njit(cache=True, error_model="numpy")
def logp_general(x, grad, blob):
    """:func:`logp_grad` for any layout."""
    lams, chols, g_lams, grad_beta, mmax, sigma, extra = _prologue(x, blob)
    logdet, uw = _general_core(blob, x[:int(blob[H_P])], sigma, lams, grad_beta, g_lams, True, mmax)
    return _posterior(x, grad, blob, lams, chols, g_lams, grad_beta, sigma, extra, logdet, uw)


@numba.njit(cache=True, error_model="numpy")
def logp_grad(x, grad, blob):
    """Log posterior density (up to a constant) at unconstrained ``x``; fills ``grad``."""
    if blob[H_SINGLE] == 1.0:
        return logp_single(x, grad, blob)
    return logp_general(x, grad, blob)


@numba.njit(cache=True, error_model="numpy")
def _posterior(x, grad, blob, lams, chols, g_lams, grad_beta, sigma, extra, logdet, uw):
    """Likelihood + priors + Jacobians, and the chain rule from (beta, Lt, sigma) to the
    unconstrained parameters."""
    p = int(blob[H_P])
    K = int(blob[H_K])
    ndim = int(blob[H_NDIM])
    s = blob[H_SCALE]
    si = int(blob[H_SIGMA])
    bars = int(blob[H_BARS])
    for i in range(ndim):
        grad[i] = 0.0
    if not np.isfinite(logdet):
        return -np.inf
    log_sigma = x[si]
    beta = x[:p]
    ll, g_ls = _finish(blob, beta, sigma, logdet, uw, grad_beta, True)
    if not np.isfinite(ll):
        return -np.inf
    value = extra + ll
    for a in range(p):
        grad[a] = grad_beta[a]
    # priors (user's scale: v = shift + s * theta) and Jacobians of the log transforms
    fp = int(blob[H_FPRI])
    for a in range(p):
        o = fp + 5 * a
        lp, dlp = prior_logp(int(blob[o]), blob[o + 1], blob[o + 2], blob[o + 3], blob[o + 4] + s * beta[a])
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
        G = g_lams[k]
        for t in range(q):
            sd = math.exp(x[sd0 + t])
            o = po + 5 * t
            lp, dlp = prior_logp(int(blob[o]), blob[o + 1], blob[o + 2], blob[o + 3], s * sd)
            value += lp + x[sd0 + t]
            # Lt = diag(sd) L / sigma: d/d log sd_t scales row t; d/d log sigma scales all
            row = 0.0
            for cc in range(t + 1):
                row += G[t, cc] * lams[k][t, cc] / sigma
            grad[sd0 + t] += dlp * s * sd + 1.0 + row
            grad[si] -= row
        if n_cpc > 0:
            for r in range(q):
                for cc in range(q):
                    GL[r, cc] = G[r, cc] * math.exp(x[sd0 + r]) / sigma if cc <= r else 0.0
            cpc_gradient(x[c0:c0 + n_cpc], q, eta, GL, grad[c0:c0 + n_cpc])
    if not np.isfinite(value):
        return -np.inf
    return value


@numba.njit(cache=True, error_model="numpy")
def loglik_value(x, blob):
    """The marginal log-likelihood alone (standardized scale), for tests."""
    lams, chols, g_lams, grad_beta, mmax, sigma, extra = _prologue(x, blob)
    beta = x[:int(blob[H_P])]
    if blob[H_SINGLE] == 1.0:
        logdet, uw = _core_single(blob, beta, sigma, lams[0], grad_beta, g_lams[0], False)
    else:
        logdet, uw = _general_core(blob, beta, sigma, lams, grad_beta, g_lams, False, mmax)
    if not np.isfinite(logdet):
        return -np.inf
    return _finish(blob, beta, sigma, logdet, uw, grad_beta, False)[0]


@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"})  # keeps inf/nan semantics
def _draw_single(blob, beta, sigma, lam, eps, out):
    """:func:`draw_effects` for one bar with q <= 2 and one level per group, in closed form."""
    p = int(blob[H_P])
    J = int(blob[H_J])
    q = int(blob[int(blob[H_BARS])])
    S0, Zy0, ZX0 = int(blob[H_S]), int(blob[H_ZY]), int(blob[H_ZX])
    if q == 1:
        a = lam[0, 0] / sigma
        for j in range(J):
            c0 = blob[Zy0 + j]
            for k in range(p):
                c0 -= blob[ZX0 + j * p + k] * beta[k]
            M = 1.0 + a * a * blob[S0 + j]
            out[j] = a * (a * c0 / M + sigma * eps[j] / math.sqrt(M))
        return
    a = lam[0, 0] / sigma
    b = lam[1, 0] / sigma
    d = lam[1, 1] / sigma
    for j in range(J):
        so = S0 + 4 * j
        s00, s01, s11 = blob[so], blob[so + 1], blob[so + 3]
        zo = ZX0 + 2 * j * p
        c0 = blob[Zy0 + 2 * j]
        c1 = blob[Zy0 + 2 * j + 1]
        for k in range(p):
            c0 -= blob[zo + k] * beta[k]
            c1 -= blob[zo + p + k] * beta[k]
        SL00 = s00 * a + s01 * b
        SL01 = s01 * d
        SL10 = s01 * a + s11 * b
        SL11 = s11 * d
        M00 = 1.0 + a * SL00 + b * SL10
        M01 = a * SL01 + b * SL11
        M11 = 1.0 + d * SL11
        inv_det = 1.0 / (M00 * M11 - M01 * M01)
        u0 = a * c0 + b * c1
        u1 = d * c1
        w0 = (M11 * u0 - M01 * u1) * inv_det
        w1 = (M00 * u1 - M01 * u0) * inv_det
        # noise with covariance M^{-1}: solve C' z = eps, C C' = M
        C00 = math.sqrt(M00)
        C10 = M01 / C00
        C11 = math.sqrt(M11 - C10 * C10)
        z1 = eps[2 * j + 1] / C11
        z0 = (eps[2 * j] - C10 * z1) / C00
        v0 = w0 + sigma * z0
        v1 = w1 + sigma * z1
        out[2 * j] = a * v0
        out[2 * j + 1] = b * v0 + d * v1


@numba.njit(cache=True, error_model="numpy")
def draw_effects_single(xs, blob, normals, out):
    """:func:`draw_effects` for the one-bar layout (q <= 2, one level per group)."""
    lams, chols, mmax = _work(blob)
    for sidx in range(xs.shape[0]):
        x = xs[sidx]
        sigma = math.exp(x[int(blob[H_SIGMA])])
        _factors(x, blob, lams, chols)
        _draw_single(blob, x, sigma, lams[0], normals[sidx], out[sidx])


@numba.njit(cache=True, error_model="numpy")
def draw_effects(xs, blob, normals, out):
    """Exact draws of the group effects: for each row s of ``xs`` and each group j,
    u_j ~ N(M_j^{-1} Lt' c_j, sigma^2 M_j^{-1}), b_j = Lt u_j (standardized scale),
    written to ``out[s]`` in the group-major slot order of the blob; ``normals`` are
    standard normal deviates of the same shape as ``out``."""
    p = int(blob[H_P])
    J = int(blob[H_J])
    gs, gv = int(blob[H_GSOFF]), int(blob[H_GVOFF])
    S0, Zy0, ZX0 = int(blob[H_S]), int(blob[H_ZY]), int(blob[H_ZX])
    lams, chols, mmax = _work(blob)
    Lt = np.zeros((mmax, mmax))
    SL = np.zeros((mmax, mmax))
    M = np.zeros((mmax, mmax))
    C = np.zeros((mmax, mmax))
    c = np.zeros(mmax)
    u = np.zeros(mmax)
    w = np.zeros(mmax)
    z = np.zeros(mmax)
    for sidx in range(xs.shape[0]):
        x = xs[sidx]
        sigma = math.exp(x[int(blob[H_SIGMA])])
        _factors(x, blob, lams, chols)
        for j in range(J):
            m = _group_factor(blob, j, lams, sigma, Lt)
            so = S0 + int(blob[gs + j])
            vo = int(blob[gv + j])
            for a in range(m):
                t = blob[Zy0 + vo + a]
                for b in range(p):
                    t -= blob[ZX0 + (vo + a) * p + b] * x[b]
                c[a] = t
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
            _cholesky(M, m, C)
            for a in range(m):
                t = 0.0
                for l in range(a, m):
                    t += Lt[l, a] * c[l]
                u[a] = t
            _solve(C, m, u, w)
            # noise with covariance M^{-1}: solve C' z = eps
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
                out[sidx, vo + a] = t


_LOGP_SIG = numba.types.int64(numba.types.uint64, numba.types.CPointer(numba.types.double),
                              numba.types.CPointer(numba.types.double), numba.types.CPointer(numba.types.double),
                              numba.types.CPointer(numba.types.double))
_EXPAND_SIG = numba.types.int64(numba.types.uint64, numba.types.uint64, numba.types.CPointer(numba.types.double),
                                numba.types.CPointer(numba.types.double), numba.types.CPointer(numba.types.double))


def _logp_c_single(dim, x_, grad_, logp_, blob_):
    """nutpie's C interface: (dim, x, gradient out, logp out, user data) -> status."""
    head = numba.carray(blob_, (1,))
    blob = numba.carray(blob_, (int(head[0]),))
    if dim != int(blob[H_NDIM]):
        return -1
    x = numba.carray(x_, (dim,))
    grad = numba.carray(grad_, (dim,))
    out = numba.carray(logp_, (1,))
    # logp_single spelled out: every level of calls is optimized again when numba links
    # it, so a flat body compiles noticeably faster
    lams, chols, mmax = _work(blob)
    sigma = math.exp(x[int(blob[H_SIGMA])])
    extra = _factors(x, blob, lams, chols)
    g_lams = np.zeros_like(lams)
    grad_beta = np.zeros(int(blob[H_P]))
    logdet, uw = _core_single(blob, x[:int(blob[H_P])], sigma, lams[0], grad_beta, g_lams[0], True)
    value = _posterior(x, grad, blob, lams, chols, g_lams, grad_beta, sigma, extra, logdet, uw)
    out[0] = value
    if not np.isfinite(value):
        return 4
    for i in range(dim):
        if not np.isfinite(grad[i]):
            return 3
    return 0


def _logp_c_general(dim, x_, grad_, logp_, blob_):
    """As :func:`_logp_c_single`, for any layout."""
    head = numba.carray(blob_, (1,))
    blob = numba.carray(blob_, (int(head[0]),))
    if dim != int(blob[H_NDIM]):
        return -1
    x = numba.carray(x_, (dim,))
    grad = numba.carray(grad_, (dim,))
    out = numba.carray(logp_, (1,))
    lams, chols, mmax = _work(blob)  # logp_general spelled out, as above
    sigma = math.exp(x[int(blob[H_SIGMA])])
    extra = _factors(x, blob, lams, chols)
    g_lams = np.zeros_like(lams)
    grad_beta = np.zeros(int(blob[H_P]))
    logdet, uw = _general_core(blob, x[:int(blob[H_P])], sigma, lams, grad_beta, g_lams, True, mmax)
    value = _posterior(x, grad, blob, lams, chols, g_lams, grad_beta, sigma, extra, logdet, uw)
    out[0] = value
    if not np.isfinite(value):
        return 4
    for i in range(dim):
        if not np.isfinite(grad[i]):
            return 3
    return 0


def _expand_c(dim, n_expanded, x_, out_, blob_):
    """The stored draw is the unconstrained point itself; :mod:`bayeslmm.sampling.marginal`
    transforms all draws at once afterwards."""
    x = numba.carray(x_, (dim,))
    out = numba.carray(out_, (n_expanded,))
    for i in range(dim):
        out[i] = x[i]
    return 0


@functools.cache
def nutpie_functions(single: bool):
    """(log density, expand) C callbacks for nutpie, compiled on first use (and cached on
    disk): the one-bar fast path and the general path are separate, so a model compiles
    only the one it needs the first time."""
    logp = numba.cfunc(_LOGP_SIG, cache=True, error_model="numpy")(_logp_c_single if single else _logp_c_general)
    return logp, numba.cfunc(_EXPAND_SIG, cache=True, error_model="numpy")(_expand_c)
