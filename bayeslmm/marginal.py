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

NUTS (nutpie, driving a numpy log density with an analytic gradient: nothing to compile)
samples beta (centered predictors), log sds, the correlations (Stan's canonical
partial-correlation transform, LKJ prior) and log sigma under exactly the priors of the
full model. Afterwards the group effects are drawn exactly from their conditional
Gaussian given each posterior draw, so the result has the full model's layout.
Crossed factors (Penicillin, InstEval) do not split by group: they fall back to the full
model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import priors as P
from .bayes import bar_labels, correlation_pairs
from .design import Design
from .map import log_density

_LOG_2PI = np.log(2.0 * np.pi)


# ---------------------------------------------------------------- structure
def marginal_supported(design: Design) -> tuple[bool, str]:
    """Whether every bar is the top grouping factor or nested in it: (ok, reason)."""
    if not design.blocks:
        return False, "the model has no random-effect term"
    top = _top_block(design)
    for block in design.blocks:
        pairs = np.unique(np.column_stack([block.codes, top.codes]), axis=0)
        if len(pairs) != block.n_levels:
            return False, (f"'{block.group}' is crossed with '{top.group}' (not nested in it), so the "
                           "likelihood does not split by group; the full parametrization is used")
    return True, f"every bar lies within '{top.group}'"


def _top_block(design: Design):
    return min(design.blocks, key=lambda block: block.n_levels)


@dataclass(frozen=True)
class GroupLayout:
    """Where each bar's effects sit inside a top-level group's effect vector."""

    n_groups: int
    width: int                      # m: effects per group (padded to the largest group)
    group_of_row: np.ndarray        # (n,) top-level group of each row
    offsets: tuple[np.ndarray, ...]  # per bar: (levels,) first slot of each level's q effects
    group_of_level: tuple[np.ndarray, ...]  # per bar: (levels,) top-level group of each level

    @classmethod
    def from_design(cls, design: Design) -> "GroupLayout":
        top = _top_block(design)
        J = top.n_levels
        used = np.zeros(J, dtype=np.int64)
        offsets, groups = [], []
        for block in design.blocks:
            level_group = np.zeros(block.n_levels, dtype=np.int64)
            level_group[block.codes] = top.codes
            offset = np.zeros(block.n_levels, dtype=np.int64)
            for level in range(block.n_levels):
                j = level_group[level]
                offset[level] = used[j]
                used[j] += block.n_terms
            offsets.append(offset)
            groups.append(level_group)
        return cls(J, int(used.max()), top.codes.copy(), tuple(offsets), tuple(groups))

    def row_effects(self, design: Design) -> np.ndarray:
        """(n, m) per-row random-effects design within the row's group."""
        Z = np.zeros((design.nobs, self.width))
        rows = np.arange(design.nobs)
        for block, offset in zip(design.blocks, self.offsets):
            for t in range(block.n_terms):
                Z[rows, offset[block.codes] + t] += block.X[:, t]
        return Z


@dataclass(frozen=True)
class SufficientStats:
    """Per-group cross-products (standardized response, centered predictors)."""

    n: np.ndarray    # (J,)
    yy: np.ndarray   # (J,)
    Xy: np.ndarray   # (J, p)
    XX: np.ndarray   # (J, p, p)
    Zy: np.ndarray   # (J, m)
    ZX: np.ndarray   # (J, m, p)
    ZZ: np.ndarray   # (J, m, m)

    @classmethod
    def from_arrays(cls, y: np.ndarray, X: np.ndarray, Z: np.ndarray, group: np.ndarray,
                    n_groups: int) -> "SufficientStats":
        """Cross-products by group with one weighted ``bincount`` per entry (any n)."""
        def by_group(weights):
            return np.bincount(group, weights=weights, minlength=n_groups)

        p, m = X.shape[1], Z.shape[1]
        n = np.bincount(group, minlength=n_groups).astype(float)
        yy = by_group(y * y)
        Xy = np.stack([by_group(X[:, a] * y) for a in range(p)], axis=1) if p else np.zeros((n_groups, 0))
        Zy = np.stack([by_group(Z[:, a] * y) for a in range(m)], axis=1)
        XX = np.empty((n_groups, p, p))
        for a in range(p):
            for b in range(a, p):
                XX[:, a, b] = XX[:, b, a] = by_group(X[:, a] * X[:, b])
        ZZ = np.empty((n_groups, m, m))
        for a in range(m):
            for b in range(a, m):
                ZZ[:, a, b] = ZZ[:, b, a] = by_group(Z[:, a] * Z[:, b])
        ZX = np.empty((n_groups, m, p))
        for a in range(m):
            for b in range(p):
                ZX[:, a, b] = by_group(Z[:, a] * X[:, b])
        return cls(n, yy, Xy, XX, Zy, ZX, ZZ)


# ---------------------------------------------------------------- correlations
def cpc_to_cholesky(y: np.ndarray, q: int) -> tuple[np.ndarray, float]:
    """Stan's transform: unconstrained y -> Cholesky factor of a correlation matrix, and
    the log |Jacobian| of the map."""
    z = np.tanh(y)
    log_jac = float(np.sum(np.log1p(-z**2)))
    L = np.zeros((q, q))
    L[0, 0] = 1.0
    k = 0
    for i in range(1, q):
        L[i, 0] = z[k]
        k += 1
        sum_sq = L[i, 0] ** 2
        for j in range(1, i):
            log_jac += 0.5 * np.log1p(-sum_sq)
            L[i, j] = z[k] * np.sqrt(1.0 - sum_sq)
            k += 1
            sum_sq += L[i, j] ** 2
        L[i, i] = np.sqrt(max(1.0 - sum_sq, 1e-300))
    return L, log_jac


def lkj_cholesky_logp(L: np.ndarray, eta: float) -> float:
    """log LKJ(eta) density of the correlation matrix, on its Cholesky factor (Stan's
    ``lkj_corr_cholesky``), up to a constant."""
    q = L.shape[0]
    i = np.arange(1, q)
    return float(np.sum((q - i - 1 + 2.0 * eta - 2.0) * np.log(np.diag(L)[1:])))


# ---------------------------------------------------------------- small linear algebra
def _inverse_logdet(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of a stack of SPD matrices; closed forms for 1 x 1 and
    2 x 2 (numpy's batched LAPACK calls cost more than the arithmetic at that size)."""
    m = M.shape[1]
    if m == 1:
        return 1.0 / M, np.log(M[:, 0, 0])
    if m == 2:
        a, b, d = M[:, 0, 0], M[:, 0, 1], M[:, 1, 1]
        det = a * d - b * b
        inv = np.empty_like(M)
        inv[:, 0, 0] = d / det
        inv[:, 1, 1] = a / det
        inv[:, 0, 1] = inv[:, 1, 0] = -b / det
        return inv, np.log(det)
    chol = np.linalg.cholesky(M)
    return np.linalg.inv(M), 2.0 * np.log(np.einsum("jii->ji", chol)).sum(axis=1)


# ---------------------------------------------------------------- the density
class MarginalDensity:
    """Log posterior of the collapsed model and its gradient, in numpy.

    Parameter vector: ``beta'`` (p; centered predictors, standardized response), then per
    bar ``log sd'`` (q) and, for a correlated bar, q(q-1)/2 canonical partial correlations
    (unconstrained), then ``log sigma'``. Priors are evaluated on the user's scale.
    """

    def __init__(self, design: Design, prior_set: P.PriorSet, stats: SufficientStats | None = None,
                 layout: GroupLayout | None = None):
        self.design = design
        self.priors = prior_set
        self.layout = layout or GroupLayout.from_design(design)
        names = list(design.fixed_names)
        self.intercept = names.index("(Intercept)") if "(Intercept)" in names else None
        self.means = design.X.mean(axis=0)
        if self.intercept is not None:
            self.means[self.intercept] = 0.0
        self.y_center = float(design.y.mean()) if self.intercept is not None else 0.0
        self.y_scale = float(np.std(design.y)) or 1.0
        if stats is None:
            Xc = design.X - self.means
            y = (design.y - self.y_center) / self.y_scale
            stats = SufficientStats.from_arrays(y, Xc, self.layout.row_effects(design),
                                                self.layout.group_of_row, self.layout.n_groups)
        self.stats = stats
        # totals over groups: the residual sum of squares needs no per-group split
        self._n = float(stats.n.sum())
        self._yy = float(stats.yy.sum())
        self._Xy = stats.Xy.sum(axis=0)
        self._XX = stats.XX.sum(axis=0)
        self._diag = np.arange(stats.ZZ.shape[1])
        self.p = design.X.shape[1]
        self._slices()
        self._templates()
        self.fixed_priors = [(j, prior_set.fixed[name]) for j, name in enumerate(names) if j != self.intercept]

    # -- parameter layout
    def _slices(self) -> None:
        start = self.p
        self.sd_slices, self.cpc_slices = [], []
        for block in self.design.blocks:
            q = block.n_terms
            self.sd_slices.append(slice(start, start + q))
            start += q
            n_cpc = q * (q - 1) // 2 if block.correlated and q > 1 else 0
            self.cpc_slices.append(slice(start, start + n_cpc))
            start += n_cpc
        self.sigma_index = start
        self.ndim = start + 1

    def _templates(self) -> None:
        """For each bar, the (group, row slot, col slot, r, c) positions of lambda_k's
        entries inside the per-group block-diagonal factor."""
        self.template = []
        for block, offset, level_group in zip(self.design.blocks, self.layout.offsets, self.layout.group_of_level):
            q = block.n_terms
            r, c = np.tril_indices(q)
            groups = np.repeat(level_group, len(r))
            rows = (offset[:, None] + r[None, :]).ravel()
            cols = (offset[:, None] + c[None, :]).ravel()
            entry = np.tile(np.arange(len(r)), block.n_levels)
            self.template.append((groups, rows, cols, r, c, entry))

    def factors(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """(lambda_k per bar on the standardized scale, correlation Cholesky per bar,
        log-Jacobian of the correlation transforms)."""
        lambdas, chols, log_jac = [], [], 0.0
        for block, sd_sl, cpc_sl in zip(self.design.blocks, self.sd_slices, self.cpc_slices):
            sd = np.exp(x[sd_sl])
            if cpc_sl.stop > cpc_sl.start:
                L, lj = cpc_to_cholesky(x[cpc_sl], block.n_terms)
                log_jac += lj
            else:
                L = np.eye(block.n_terms)
            chols.append(L)
            lambdas.append(sd[:, None] * L)
        return lambdas, chols, log_jac

    def _relative_factor(self, lambdas: list[np.ndarray], sigma: float) -> np.ndarray:
        """Per-group block-diagonal Lt = Lambda / sigma, shape (J, m, m)."""
        J, m = self.layout.n_groups, self.layout.width
        Lt = np.zeros((J, m, m))
        used = np.zeros((J, m), dtype=bool)
        for lam, (groups, rows, cols, r, c, entry) in zip(lambdas, self.template):
            Lt[groups, rows, cols] = (lam[r, c] / sigma)[entry]
            used[groups, rows] = True
        # padding slots (groups with fewer effects) get an identity: Z is zero there
        pad = ~used
        if pad.any():
            j, s = np.nonzero(pad)
            Lt[j, s, s] = 1.0
        return Lt

    # -- likelihood with gradient in (beta', Lt, sigma')
    def loglik(self, beta: np.ndarray, Lt: np.ndarray, sigma: float, need_grad: bool = True):
        """Marginal log-likelihood (standardized scale) and its gradient in
        (beta', Lt, log sigma' at fixed Lt); also returns (M^{-1}, w, c) for the effects."""
        st = self.stats
        c = st.Zy - st.ZX @ beta
        rr = self._yy - 2.0 * self._Xy @ beta + beta @ self._XX @ beta
        SL = st.ZZ @ Lt
        M = np.swapaxes(Lt, 1, 2) @ SL
        M[:, self._diag, self._diag] += 1.0
        Minv, logdet = _inverse_logdet(M)
        u = (c[:, None, :] @ Lt)[:, 0, :]
        w = (Minv @ u[:, :, None])[:, :, 0]
        s2 = sigma * sigma
        Q = (rr - np.sum(u * w)) / s2
        value = -0.5 * (self._n * (_LOG_2PI + np.log(s2)) + float(np.sum(logdet)) + Q)
        if not need_grad:
            return value, None, None, None, (Minv, w, c)
        Ltw = (Lt @ w[:, :, None])[:, :, 0]
        grad_beta = (self._Xy - self._XX @ beta - np.einsum("jmp,jm->p", st.ZX, Ltw)) / s2
        SLw = (SL @ w[:, :, None])
        grad_Lt = (c[:, :, None] * w[:, None, :] - SLw * w[:, None, :]) / s2 - SL @ Minv
        grad_log_sigma_direct = -(self._n - Q)
        return value, grad_beta, grad_Lt, grad_log_sigma_direct, (Minv, w, c)

    def logp(self, x: np.ndarray, need_grad: bool = True):
        """Log posterior density (up to a constant) and its gradient at ``x``."""
        s = self.y_scale
        beta = x[:self.p]
        log_sigma = x[self.sigma_index]
        sigma = np.exp(log_sigma)
        lambdas, chols, log_jac = self.factors(x)
        Lt = self._relative_factor(lambdas, sigma)
        value, g_beta, g_Lt, g_ls, _ = self.loglik(beta, Lt, sigma, need_grad)
        grad = np.zeros(self.ndim) if need_grad else None

        # priors (user's scale) and Jacobians of the log transforms
        for j, prior in self.fixed_priors:
            lp, dlp = log_density(prior, s * beta[j])
            value += lp
            if need_grad:
                grad[j] += s * float(dlp)
        if self.intercept is not None:
            lp, dlp = log_density(self.priors.intercept, self.y_center + s * beta[self.intercept])
            value += lp
            if need_grad:
                grad[self.intercept] += s * float(dlp)
        for k, (block, sd_sl) in enumerate(zip(self.design.blocks, self.sd_slices)):
            sd = np.exp(x[sd_sl])
            for t, term in enumerate(block.terms):
                lp, dlp = log_density(self.priors.sd[(k, term)], np.array([s * sd[t]]))
                value += lp + x[sd_sl][t]
                if need_grad:
                    grad[sd_sl.start + t] += float(dlp[0]) * s * sd[t] + 1.0
            if k in self.priors.cor:
                value += lkj_cholesky_logp(chols[k], self.priors.cor[k].eta)
        value += log_jac
        lp, dlp = log_density(self.priors.sigma, np.array([s * sigma]))
        value += lp + log_sigma
        if not need_grad:
            return value, None
        grad[self.sigma_index] += float(dlp[0]) * s * sigma + 1.0
        if not np.isfinite(value):
            return -np.inf, np.zeros(self.ndim)

        grad[:self.p] += g_beta
        # chain rule through Lt = diag(sd) L_corr / sigma, bar by bar
        total_lt = 0.0
        for k, (block, sd_sl, cpc_sl) in enumerate(zip(self.design.blocks, self.sd_slices, self.cpc_slices)):
            groups, rows, cols, r, c, entry = self.template[k]
            g_lam = np.zeros((block.n_terms, block.n_terms))
            np.add.at(g_lam, (r[entry], c[entry]), g_Lt[groups, rows, cols])
            lt = lambdas[k] / sigma
            total_lt += float(np.sum(g_lam * lt))
            grad[sd_sl] += np.sum(g_lam * lt, axis=1)  # d lt / d log sd_t scales row t
            if cpc_sl.stop > cpc_sl.start:
                grad[cpc_sl] += self._cpc_gradient(x, k, g_lam, sigma)
        grad[self.sigma_index] += g_ls - total_lt
        return value, grad

    def _cpc_gradient(self, x: np.ndarray, k: int, g_lam: np.ndarray, sigma: float, h: float = 1e-6) -> np.ndarray:
        """d/dy of [likelihood via Lt + LKJ + Jacobian] by central differences of the cheap
        q x q map y -> L (the expensive likelihood gradient g_lam is analytic)."""
        block = self.design.blocks[k]
        sd = np.exp(x[self.sd_slices[k]])
        cpc = x[self.cpc_slices[k]].copy()
        eta = self.priors.cor[k].eta
        if block.n_terms == 2:
            # closed form: L = [[1, 0], [z, sqrt(1 - z^2)]], z = tanh(y); Jacobian + LKJ
            # together are eta * log(1 - z^2), whose derivative in y is -2 eta z
            z = np.tanh(cpc[0])
            dL = np.array([[0.0, 0.0], [1.0 - z * z, -z * np.sqrt(1.0 - z * z)]])
            return np.array([float(np.sum(g_lam * (sd[:, None] * dL))) / sigma - 2.0 * eta * z])
        out = np.zeros(len(cpc))
        for i in range(len(cpc)):
            values = []
            for step in (h, -h):
                trial = cpc.copy()
                trial[i] += step
                L, lj = cpc_to_cholesky(trial, block.n_terms)
                values.append((L, lj + lkj_cholesky_logp(L, eta)))
            (Lp, fp), (Lm, fm) = values
            dlt = sd[:, None] * (Lp - Lm) / (2 * h) / sigma
            out[i] = float(np.sum(g_lam * dlt)) + (fp - fm) / (2 * h)
        return out

    # -- from unconstrained draws to the reported quantities
    def expand(self, x: np.ndarray) -> dict[str, np.ndarray]:
        s = self.y_scale
        beta = s * x[:self.p]
        if self.intercept is not None:
            beta[self.intercept] = self.y_center + s * x[self.intercept] - self.means @ beta
        out = {"beta": beta, "sigma": np.array(s * np.exp(x[self.sigma_index]))}
        lambdas, chols, _ = self.factors(x)
        for label, block, sd_sl, L in zip(bar_labels(self.design), self.design.blocks, self.sd_slices, chols):
            out[f"sd_{label}"] = s * np.exp(x[sd_sl])
            if block.correlated and block.n_terms > 1:
                R = L @ L.T
                out[f"cor_{label}"] = np.array([R[i, j] for i, j, _ in correlation_pairs(block.terms)])
        return out

    def draw_effects(self, x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """One exact draw of every bar's group effects (user's scale) given ``x``:
        u_j | y ~ N(M_j^{-1} Lt' c_j, sigma^2 M_j^{-1}), b_j = Lt u_j."""
        sigma = np.exp(x[self.sigma_index])
        lambdas, _, _ = self.factors(x)
        Lt = self._relative_factor(lambdas, sigma)
        _, _, _, _, (Minv, w, c) = self.loglik(x[:self.p], Lt, sigma, need_grad=False)
        eps = rng.standard_normal(w.shape)
        noise = (np.linalg.cholesky(Minv) @ eps[:, :, None])[:, :, 0]  # covariance M^{-1}
        u = w + sigma * noise
        b = np.einsum("jab,jb->ja", Lt, u) * self.y_scale
        out = []
        for block, offset, level_group in zip(self.design.blocks, self.layout.offsets, self.layout.group_of_level):
            idx = offset[:, None] + np.arange(block.n_terms)[None, :]
            out.append(b[level_group[:, None], idx])
        return out

    def initial_point(self, rng: np.random.Generator) -> np.ndarray:
        x = rng.uniform(-0.5, 0.5, size=self.ndim)
        for sl in self.sd_slices:
            x[sl] += np.log(0.5)
        x[self.sigma_index] += np.log(0.5)
        return x


# ---------------------------------------------------------------- sampling
def sample_marginal(design: Design, prior_set: P.PriorSet, draws: int = 1000, tune: int = 1000, chains: int = 4,
                    random_seed: int | None = None, target_accept: float = 0.9, progressbar: bool = True,
                    density: MarginalDensity | None = None, draw_effects: bool = True):
    """Sample the collapsed model with nutpie, then draw the group effects exactly.

    Returns
    -------
    PosteriorResult
        In the full model's layout, ``parametrization = "marginal"`` in the attrs.
    """
    import nutpie
    import xarray as xr
    from nutpie.compiled_pyfunc import from_pyfunc

    from .posterior import PosteriorResult, to_inference_data

    density = density or MarginalDensity(design, prior_set)
    names, shapes = [], []
    template = density.expand(np.zeros(density.ndim))
    for name, value in template.items():
        names.append(name)
        shapes.append(tuple(np.shape(value)))

    def make_logp_fn():
        def logp(x, **_):
            value, grad = density.logp(np.asarray(x, dtype=float))
            if not np.isfinite(value):
                return -np.inf, np.zeros_like(grad)
            return float(value), np.asarray(grad, dtype=np.float64)
        return logp

    def make_expand_fn(seed1, seed2, chain):
        def expand(x, **_):
            return {k: np.asarray(v, dtype=np.float64).reshape(shape)
                    for (k, v), shape in zip(density.expand(np.asarray(x)).items(), shapes)}
        return expand

    def make_initial_point(seed):
        return density.initial_point(np.random.default_rng(seed))

    coords = {"term": list(design.fixed_names)}
    dims = {"beta": ("term",)}
    for label, block in zip(bar_labels(design), design.blocks):
        coords[f"{label}__term"] = list(block.terms)
        dims[f"sd_{label}"] = (f"{label}__term",)
        if block.correlated and block.n_terms > 1:
            coords[f"{label}__pair"] = [name for _, _, name in correlation_pairs(block.terms)]
            dims[f"cor_{label}"] = (f"{label}__pair",)
    model = from_pyfunc(density.ndim, make_logp_fn, make_expand_fn, [np.dtype("float64")] * len(names),
                        shapes, names, coords=coords, dims=dims, make_initial_point_fn=make_initial_point)
    seed = 0 if random_seed is None else int(random_seed)
    if random_seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    start = time.perf_counter()
    raw = nutpie.sample(model, draws=draws, tune=tune, chains=chains, seed=seed, progress_bar=progressbar,
                        target_accept=target_accept, save_warmup=False, store_unconstrained=True)
    seconds = time.perf_counter() - start

    posterior = raw.posterior
    if draw_effects:
        unconstrained = raw.sample_stats["unconstrained_draw"].to_numpy()  # (chain, draw, ndim)
        rng = np.random.default_rng([seed, 2])
        flat = unconstrained.reshape(-1, density.ndim)
        effects = [np.empty((len(flat), block.n_levels, block.n_terms)) for block in design.blocks]
        for s_idx, x in enumerate(flat):
            for k, b in enumerate(density.draw_effects(x, rng)):
                effects[k][s_idx] = b
        n_chain, n_draw = unconstrained.shape[:2]
        for label, block, values in zip(bar_labels(design), design.blocks, effects):
            posterior[f"r_{label}"] = xr.DataArray(
                values.reshape(n_chain, n_draw, block.n_levels, block.n_terms),
                dims=("chain", "draw", f"{label}__level", f"{label}__term"),
                coords={f"{label}__level": list(block.levels), f"{label}__term": list(block.terms)})
    stats = raw.sample_stats.drop_vars([v for v in raw.sample_stats.data_vars if v.startswith("unconstrained")])
    raw = type(raw)(posterior=posterior, sample_stats=stats)
    idata = to_inference_data(design, raw, prior_set, sampler="nutpie", parametrization="marginal",
                              loglik=draw_effects)
    idata.posterior.attrs["sampling_seconds"] = seconds
    return PosteriorResult(design=design, idata=idata, prior_set=prior_set)
