"""Quantities the proofs reason with, computable at any state (paper convention).

    gram_eigs(net, prob)        lambda_min, lambda_max of P(t) (DH eq. 7, HXP eq. 9)
                                and the per-state bounds of DH eq. (10)
    gram_lambda_max(net, prob)  lambda_max of P(t) alone (engine.train's lr="stable")
    gram_matrix(net, prob)      P(t) itself, (r d_out) x (r d_out)
    gram_operator(net, prob)    P(t) as a matrix-free scipy LinearOperator
    partial_spectra(net, prob)  sigma_max/min of W_{L:i} and W_{i:1} X, normalized
                                (DH Props 6.2-6.3, B(t); HXP Lemma B.1)
    interior_norms(net, pairs)  ||W_{j:i}|| / m^((j-i+1)/2)  (DH Prop 6.4)
    distance_from_init(net, net0)  ||W_i(t) - W_i(0)||_F  (DH C(t), HXP C(t))

Beyond the two papers (quantities they do not define):

    hessian_vector_product(net, prob, V)  exact H V of l in W-space, O(L) matmuls
    sharpness(net, prob, k)     top k Hessian eigenvalues (Lanczos; edge of stability: 2/eta)
    lyapunov(net, i, j)         all log singular values of A_j ... A_i (QR accumulation)
    LazyTwin(net, prob, lr)     GD on the linearization at a state: (I - eta P(0))^t vec R(0)

Everything is computed on the reduced data of docs/design.md (X_red = diag(S_r),
first layer B_1 = A_1 U_r) in normalized storage (W_i = s_i A_i), with chain
products renormalized as they are built and every paper-scale factor
(prod s_i, m^(q/2), alpha) carried as a logarithm, so nothing overflows at
L = 1000. Reduced data change nothing the papers bound: for X = U_r S_r V_r^T,
P on the full data is (V_r (x) I) P_red (V_r (x) I)^T, with the same non-zero
eigenvalues (n > r only adds zero eigenvalues, along directions the residual
never has), and W_{i:1} X has the singular values of W_{i:1} U_r S_r.

``RECORDERS`` maps a name to a factory ``make(net, prob) -> rec`` where
``rec(net)`` returns the quantity for the current state; ``engine.train(...,
record={name: stride})`` calls it every ``stride`` steps (and at the final
state) and stores the results in ``run.records[name]``. Names: "gram",
"spectra", "interior", "distance", "sharpness" (top Hessian eigenvalue) and
"lazy" ([l_lin(t) - OPT, l(t) - OPT]: the lazy twin started at the run's
first state, at the run's lr).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._validate import positive_float, positive_int
from .kernels import threads
from .network import Network, check_net_prob


def _one_blas_thread(fn):
    """Run ``fn`` with BLAS limited to one thread. sharpness and lyapunov are long loops of
    tiny matmuls / QRs (width-sized), where a second BLAS thread costs more in hand-offs than
    it gains: a 20x slowdown was measured with 2 OpenBLAS threads. The previous limits are
    restored on return (``engine.kernels.threads``)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threads.limit(blas=1):
            return fn(*args, **kwargs)

    return wrapper

__all__ = [
    "gram_eigs", "gram_lambda_max", "gram_matrix", "gram_operator", "GramEigs",
    "partial_spectra", "PartialSpectra",
    "interior_norms", "InteriorNorms", "default_pairs",
    "distance_from_init", "RECORDERS",
    "hessian_vector_product", "sharpness", "lyapunov", "reduced_residual", "LazyTwin",
]

# Above this many entries of P (= (r d_out)^2) gram_eigs(method="auto") goes
# matrix-free: 2000^2 doubles = 32 MB and an O(n^3) eigh of ~1 s.
EXACT_MAX_DIM = 2000


def _check(net, prob):
    check_net_prob(net, prob)


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _first_reduced(net, prob) -> np.ndarray:
    """B_1 = A_1 U_r (d_1 x r), float64."""
    if net._bound is not None and net._bound[0] == prob.token:
        return _f64(net._layers[0])
    return _f64(net._first_normalized()) @ prob.reduced().basis


def _renorm(M):
    """M / ||M||_F and ln ||M||_F (0 for an all-zero M)."""
    nrm = float(np.linalg.norm(M))
    if nrm == 0.0 or not np.isfinite(nrm):
        return M, 0.0
    M /= nrm
    return M, math.log(nrm)


def _svd_factor(M, rows_side: bool):
    """Singular values of M (descending) and a factor G with G^T G = M M^T
    (rows_side) or M^T M (otherwise), G having min(M.shape) rows."""
    if not np.all(np.isfinite(M)):
        raise ValueError("net: a partial product of the weights is not finite (NaN/Inf weights, "
                         "e.g. after a diverged run)")
    U, sv, Vt = np.linalg.svd(M, full_matrices=False)
    G = (sv[:, None] * U.T) if rows_side else (sv[:, None] * Vt)
    return sv, G


@dataclass
class _Chains:
    """Renormalized suffix and prefix chains on reduced data, in small factors.

    For k = 2..L+1 (index k-2): A_{L:k} = exp(ls) Q with sv = sigma(Q) and
    H^T H = Q Q^T (k = L+1 is the identity). For i = 0..L-1 (index i):
    A_{i:1} U_r diag(s) = exp(lp) P with svp = sigma(P), F^T F = P^T P.
    """

    ls: list
    sv: list
    H: list
    lp: list
    svp: list
    F: list


def _chains(net, prob, need_factors=True) -> _Chains:
    layers = net._layers
    L = net.depth
    d_out = net.widths[-1]
    red = prob.reduced()
    # suffix, top-down: A_{L:k} for k = L+1 (identity), L, ..., 2
    ls, sv, H = [0.0], [np.ones(d_out)], [np.eye(d_out)]
    Q, lq = None, 0.0
    for k in range(L, 1, -1):
        A = _f64(layers[k - 1])
        Q = A.copy() if Q is None else Q @ A
        Q, dl = _renorm(Q)
        lq += dl
        s, G = _svd_factor(Q, rows_side=True)
        ls.append(lq)
        sv.append(s)
        H.append(G)
    ls.reverse(); sv.reverse(); H.reverse()          # index k-2 for k = 2..L+1
    # prefix, bottom-up: A_{i:1} X_red for i = 0 (X_red), 1, ..., L-1
    xs = np.asarray(red.s, dtype=np.float64)
    P = np.diag(xs)
    P, l0 = _renorm(P)
    s, G = _svd_factor(P, rows_side=False)
    lp, svp, F = [l0], [s], [G]
    lcur = l0
    for i in range(1, L):
        A = _first_reduced(net, prob) if i == 1 else _f64(layers[i - 1])
        P = A @ P
        P, dl = _renorm(P)
        lcur += dl
        s, G = _svd_factor(P, rows_side=False)
        lp.append(lcur)
        svp.append(s)
        F.append(G)
    return _Chains(ls, sv, H, lp, svp, F)


def _gram_terms(net, prob, ch: _Chains):
    """Per-layer weights w_i (i = 1..L) with P = sum_i w_i (F^T F) (x) (H^T H).

    P (DH eq. 7, HXP eq. 9) = alpha^2 sum_i (W_{i-1:1}X)^T(W_{i-1:1}X) (x) W_{L:i+1}W_{L:i+1}^T;
    in normalized storage alpha W_{L:i+1} (.) W_{i-1:1} = (beta / s_i) A_{L:i+1} (.) A_{i-1:1},
    so term i carries (beta / s_i)^2 times the two renormalized chains' scales.
    """
    log_s = net._log_s
    L = net.depth
    logw = np.array([2.0 * (net._log_beta + ch.ls[i - 1] + ch.lp[i - 1] - log_s[i - 1])
                     for i in range(1, L + 1)])
    return logw


class GramEigs(NamedTuple):
    """Extreme eigenvalues of P(t) and DH eq. (10)'s bounds for the same state.

    lower = alpha^2 sum_i sigma_min^2(W_{i-1:1} X) sigma_min^2(W_{L:i+1}) <= lambda_min
    upper = alpha^2 sum_i sigma_max^2(W_{i-1:1} X) sigma_max^2(W_{L:i+1}) >= lambda_max
    (sigma_min^2 here is lambda_min of the Gram, 0 when the factor is rank-deficient).
    ``np.asarray(list_of_GramEigs)`` is a (k, 4) array.
    """

    lambda_min: float
    lambda_max: float
    lower: float
    upper: float


def _eq10(net, prob, ch, logw):
    r, d_out = prob.rank, prob.d_out
    lo = hi = 0.0
    for i in range(1, net.depth + 1):
        sp, ss = ch.svp[i - 1], ch.sv[i - 1]
        w = math.exp(logw[i - 1])
        hi += w * sp[0] ** 2 * ss[0] ** 2
        pmin = sp[r - 1] ** 2 if len(sp) >= r else 0.0
        smin = ss[d_out - 1] ** 2 if len(ss) >= d_out else 0.0
        lo += w * pmin * smin
    return lo, hi


def _assemble(net, prob, ch, logw) -> np.ndarray:
    """sum_i w_i kron(F_i^T F_i, H_i^T H_i) as one (r r, L) @ (L, d d) product.

    kron(B, A)[(a d + b), (c d + e)] = B[a, c] A[b, e] with d = d_out (the
    column-major vec(R) of a d_out x r residual), so
    P = (sum_i w_i B_i (x) A_i) = reshape((B^T w) A) with axes (a, c, b, e) -> (a, b, c, e).
    """
    r, d = prob.rank, prob.d_out
    L = net.depth
    Bs = np.empty((L, r * r))
    As = np.empty((L, d * d))
    for i in range(L):
        F, H = ch.F[i], ch.H[i]
        Bs[i] = (F.T @ F).ravel()
        As[i] = (H.T @ H).ravel()
    w = np.exp(logw)
    P = ((Bs * w[:, None]).T @ As).reshape(r, r, d, d).transpose(0, 2, 1, 3).reshape(r * d, r * d)
    return 0.5 * (P + P.T)


def gram_matrix(net: Network, prob) -> np.ndarray:
    """P(t) of DH eq. (7) / HXP eq. (9) on reduced data, (r d_out) x (r d_out), float64.

    Acts on vec(R) of the reduced residual R (d_out x r) in column-major order:
    to first order in eta one GD step changes vec(R) by -eta P vec(R) (DH eq. 6).
    Formed from its Kronecker terms.
    """
    _check(net, prob)
    ch = _chains(net, prob)
    return _assemble(net, prob, ch, _gram_terms(net, prob, ch))


def _operator(net, prob, ch, logw):
    from scipy.sparse.linalg import LinearOperator
    r, d_out = prob.rank, prob.d_out
    L = net.depth
    # Stack the per-layer factors, zero-padded to a common row count (zero rows
    # add nothing), so one matvec is four batched matmuls instead of 4 L calls.
    kh = max(h.shape[0] for h in ch.H[:L])
    kf = max(f.shape[0] for f in ch.F[:L])
    Hs = np.zeros((L, kh, d_out))
    Fs = np.zeros((L, kf, r))
    for i in range(L):
        Hs[i, :ch.H[i].shape[0]] = ch.H[i]
        Fs[i, :ch.F[i].shape[0]] = ch.F[i]
    w = np.exp(logw)[:, None, None]
    HsT = np.ascontiguousarray(np.swapaxes(Hs, 1, 2) * w)       # w_i H_i^T, (L, d_out, kh)
    FsT = np.ascontiguousarray(np.swapaxes(Fs, 1, 2))           # F_i^T, (L, r, kf)

    def matvec(v):
        V = np.reshape(np.asarray(v, dtype=np.float64), (d_out, r), order="F")
        T = np.matmul(Hs, V)                  # H_i V          (L, kh, r)
        T = np.matmul(np.matmul(T, FsT), Fs)  # H_i V F_i^T F_i (L, kh, r)
        out = np.matmul(HsT, T).sum(axis=0)   # sum_i w_i H_i^T (.)   (d_out, r)
        return out.reshape(-1, order="F")

    return LinearOperator((r * d_out, r * d_out), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def gram_operator(net: Network, prob):
    """P(t) as a scipy LinearOperator on vec(R) (column-major, length r d_out), never formed.

    Each matvec is sum_i w_i H_i^T H_i V F_i^T F_i with the small factors
    H_i^T H_i = W_{L:i+1} W_{L:i+1}^T and F_i^T F_i = (W_{i-1:1}X)^T (W_{i-1:1}X)
    (up to the scale w_i): O(L (d_out^2 r + d_out r^2)) per matvec after one
    O(L m^2 (d_out + r)) pass that builds the factors.
    """
    _check(net, prob)
    ch = _chains(net, prob)
    return _operator(net, prob, ch, _gram_terms(net, prob, ch))


def _extreme_eigs_matrix_free(op, n, tol):
    from scipy.sparse.linalg import eigsh
    if n <= 2:
        M = op @ np.eye(n)
        ev = np.linalg.eigvalsh(0.5 * (M + M.T))
        return float(ev[0]), float(ev[-1])
    v0 = np.random.default_rng(12345).standard_normal(n)
    lmax = float(eigsh(op, k=1, which="LA", v0=v0, tol=tol, return_eigenvectors=False)[0])
    # The bottom of P's spectrum converges slowly when P is ill-conditioned
    # (kappa(P) ~ kappa(X^T X)); a 64-vector Krylov space cut the time 25x over
    # ARPACK's default 20 on a kappa ~ 1e5 case (2560 x 2560).
    lmin = float(eigsh(op, k=1, which="SA", v0=v0, tol=tol, ncv=min(n - 1, 64),
                       maxiter=max(1000, 20 * n), return_eigenvectors=False)[0])
    return lmin, lmax


def gram_eigs(net: Network, prob, method: str = "auto", tol: float = 1e-13) -> GramEigs:
    """lambda_min and lambda_max of P(t) (DH eq. 7 / HXP eq. 9) with DH eq. (10)'s bounds.

    Parameters
    ----------
    method : "exact" (form P from its Kronecker terms, numpy.linalg.eigvalsh),
             "matrix-free" (``gram_operator`` + scipy.sparse.linalg.eigsh, Lanczos),
             or "auto" (exact while r d_out <= EXACT_MAX_DIM).
    tol : relative tolerance passed to eigsh (matrix-free only).

    Returns GramEigs(lambda_min, lambda_max, lower, upper) in paper units
    (compare with ``engine.theory.gram_bounds``: DH eq. 9, HXP Claim B.4).
    P is taken on reduced data (r d_out square); see the module docstring.
    """
    _check(net, prob)
    if method not in ("auto", "exact", "matrix-free"):
        raise ValueError(f"method: must be 'auto', 'exact' or 'matrix-free', got {method!r}")
    n = prob.rank * prob.d_out
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_DIM else "matrix-free"
    ch = _chains(net, prob)
    logw = _gram_terms(net, prob, ch)
    lo, hi = _eq10(net, prob, ch, logw)
    if method == "exact":
        ev = np.linalg.eigvalsh(_assemble(net, prob, ch, logw))
        lmin, lmax = float(ev[0]), float(ev[-1])
    else:
        lmin, lmax = _extreme_eigs_matrix_free(_operator(net, prob, ch, logw), n, tol)
    return GramEigs(lmin, lmax, lo, hi)


def gram_lambda_max(net: Network, prob, method: str = "auto", tol: float = 1e-13) -> float:
    """lambda_max of P(t) (DH eq. 7 / HXP eq. 9) alone: ``gram_eigs(...).lambda_max`` without
    the bottom of the spectrum, which the matrix-free path finds slowly (ill-conditioned P).

    Same computation as ``gram_eigs`` (same chains, same assembled matrix or operator), so the
    exact method returns the same float; used by ``engine.train.stable_lr``.
    """
    _check(net, prob)
    if method not in ("auto", "exact", "matrix-free"):
        raise ValueError(f"method: must be 'auto', 'exact' or 'matrix-free', got {method!r}")
    n = prob.rank * prob.d_out
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_DIM else "matrix-free"
    ch = _chains(net, prob)
    logw = _gram_terms(net, prob, ch)
    if method == "exact" or n <= 2:
        return float(np.linalg.eigvalsh(_assemble(net, prob, ch, logw))[-1])
    from scipy.sparse.linalg import eigsh
    v0 = np.random.default_rng(12345).standard_normal(n)   # as gram_eigs: deterministic
    return float(eigsh(_operator(net, prob, ch, logw), k=1, which="LA", v0=v0, tol=tol,
                       return_eigenvectors=False)[0])


# -- partial products ------------------------------------------------------------------

@dataclass(frozen=True)
class PartialSpectra:
    """Normalized extreme singular values of the partial products (paper convention).

    suffix_max[k], suffix_min[k] for i = suffix_i[k] = 2..L:
        sigma(W_{L:i}) / m^((L-i+1)/2)                        (DH Prop 6.2, B(t))
    prefix_max[k], prefix_min[k] for i = prefix_i[k] = 1..L-1:
        sigma_max(W_{i:1} X) / (m^(i/2) sigma_max(X)),
        sigma_min(W_{i:1} X) / (m^(i/2) sigma_min(X))         (DH Prop 6.3, B(t))
    With non-uniform widths m^(q/2) is the square root of the product of the
    widths the chain expands into: d_{i-1}...d_{L-1} for W_{L:i}, d_1...d_i for
    W_{i:1}. sigma_min is sigma_{min(rows, cols)} (HXP's notation), taken on
    the reduced data (W_{i:1} U_r S_r, r columns); sigma_min(X) = sqrt(lambda_r).
    DH: within [0.8, 1.2] at init (Gaussian, m >> L), [3/4, 5/4] along the
    trajectory; HXP Lemma B.1: exactly 1 at orthogonal init (m >= d_in, d_out).
    The log_* arrays hold the natural logs (exact where the ratio under- or
    overflows float64).
    """

    suffix_i: np.ndarray
    log_suffix_max: np.ndarray
    log_suffix_min: np.ndarray
    prefix_i: np.ndarray
    log_prefix_max: np.ndarray
    log_prefix_min: np.ndarray

    @property
    def suffix_max(self):
        return np.exp(self.log_suffix_max)

    @property
    def suffix_min(self):
        return np.exp(self.log_suffix_min)

    @property
    def prefix_max(self):
        return np.exp(self.log_prefix_max)

    @property
    def prefix_min(self):
        return np.exp(self.log_prefix_min)


def _log(x):
    with np.errstate(divide="ignore"):
        return float(np.log(x))


def _spectra_from_chains(net, prob, ch) -> PartialSpectra:
    L = net.depth
    w = np.log(np.asarray(net.widths, dtype=np.float64))   # ln d_0..d_L
    log_s = net._log_s                                       # ln s_1..s_L
    cs = np.concatenate([[0.0], np.cumsum(log_s)])           # cs[k] = sum_{j<=k} ln s_j
    cw = np.concatenate([[0.0], np.cumsum(w)])               # cw[k] = sum_{j<k} ln d_j
    suf_i = np.arange(2, L + 1)
    smax, smin = np.empty(L - 1), np.empty(L - 1)
    for k, i in enumerate(suf_i):
        sv = ch.sv[i - 2]
        scale = ch.ls[i - 2] + (cs[L] - cs[i - 1]) - 0.5 * (cw[L] - cw[i - 1])  # d_{i-1}..d_{L-1}
        smax[k] = scale + _log(sv[0])
        smin[k] = scale + _log(sv[-1])
    pre_i = np.arange(1, L)
    pmax, pmin = np.empty(L - 1), np.empty(L - 1)
    lx_max = math.log(prob.x_norm)
    lx_min = 0.5 * math.log(prob.lambda_r)
    for k, i in enumerate(pre_i):
        sv = ch.svp[i]
        scale = ch.lp[i] + cs[i] - 0.5 * (cw[i + 1] - cw[1])                   # d_1..d_i
        pmax[k] = scale + _log(sv[0]) - lx_max
        pmin[k] = scale + _log(sv[-1]) - lx_min
    return PartialSpectra(suf_i, smax, smin, pre_i, pmax, pmin)


def partial_spectra(net: Network, prob) -> PartialSpectra:
    """sigma_max, sigma_min of W_{L:i} (i = 2..L) and W_{i:1} X (i = 1..L-1), normalized.

    See ``PartialSpectra``. Two passes over the weights (top-down, bottom-up)
    plus one thin SVD per layer of a d_out x d_i and a d_i x r matrix.
    """
    _check(net, prob)
    return _spectra_from_chains(net, prob, _chains(net, prob))


# -- interior products (DH Prop 6.4) ------------------------------------------------

@dataclass(frozen=True)
class InteriorNorms:
    """||W_{j:i}|| / m^((j-i+1)/2) for the pairs (i[k], j[k]), 1 < i <= j < L (DH Prop 6.4).

    m^((j-i+1)/2) is sqrt(d_i ... d_j) for non-uniform widths. ``log_norm`` is
    the natural log (exact where the ratio under- or overflows).
    """

    i: np.ndarray
    j: np.ndarray
    log_norm: np.ndarray

    @property
    def norm(self):
        return np.exp(self.log_norm)


def default_pairs(depth: int, max_pairs: int = 64, seed=0) -> np.ndarray:
    """Pairs (i, j), 1 < i <= j < L: all of them when there are <= max_pairs,
    else (2, L-1) plus a seeded uniform sample without replacement. Shape (k, 2)."""
    L = positive_int(depth, "depth")
    max_pairs = positive_int(max_pairs, "max_pairs")
    allp = [(i, j) for i in range(2, L) for j in range(i, L)]
    if len(allp) <= max_pairs:
        return np.array(allp, dtype=np.int64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    longest = (2, L - 1)
    rest = [p for p in allp if p != longest]
    pick = rng.choice(len(rest), size=max_pairs - 1, replace=False)
    out = [longest] + [rest[k] for k in sorted(pick)]
    return np.array(out, dtype=np.int64)


_RENORM_EVERY = 4   # layers between renormalizations: growth per layer is <= ||A_k|| (O(1) here)


def _apply(layers, i, j, V, transpose):
    """A_{j:i} V (or A_{j:i}^T V), renormalizing every few layers; returns (matrix, ln scale)."""
    lg = 0.0
    rng_ = range(i, j + 1) if not transpose else range(j, i - 1, -1)
    for n, k in enumerate(rng_, 1):
        A = layers[k - 1]
        V = (A.T @ V) if transpose else (A @ V)
        if n % _RENORM_EVERY == 0:
            V, dl = _renorm(V)
            lg += dl
    V, dl = _renorm(V)
    return V, lg + dl


# Below this input width the product is applied to the identity and its
# singular values taken exactly; above it, Lanczos on A^T A.
_DENSE_MAX = 32


def _top_singular_log(layers, i, j, d_in, tol, max_iter, rng):
    """ln ||A_{j:i}||: exact for d_{i-1} <= _DENSE_MAX, else Lanczos (eigsh) on A^T A.

    For Lanczos each layer is scaled by the inverse of the growth it gives a
    random vector (so the operator is O(1) however long or narrow the chain)
    and the scales are added back in log space.
    """
    if d_in <= _DENSE_MAX:
        W, lw = _apply(layers, i, j, np.eye(d_in), False)
        return lw + _log(np.linalg.svd(W, compute_uv=False)[0])
    from scipy.sparse.linalg import LinearOperator, eigsh
    idx = list(range(i, j + 1))
    v = rng.standard_normal(d_in)
    v /= np.linalg.norm(v)
    logs = np.empty(len(idx))
    for t, k in enumerate(idx):
        v = layers[k - 1] @ v
        nv = float(np.linalg.norm(v))
        if nv == 0.0 or not np.isfinite(nv):
            raise ValueError(f"net: the product W_{{{j}:{i}}} maps a random vector to {nv}")
        v /= nv
        logs[t] = math.log(nv)
    g = np.exp(-logs)

    def mv(x):
        x = np.asarray(x, dtype=np.float64).ravel()
        for t, k in enumerate(idx):
            x = (layers[k - 1] @ x) * g[t]
        for t in range(len(idx) - 1, -1, -1):
            x = (layers[idx[t] - 1].T @ x) * g[t]
        return x

    op = LinearOperator((d_in, d_in), matvec=mv, rmatvec=mv, dtype=np.float64)
    lam = float(eigsh(op, k=1, which="LA", tol=tol, maxiter=max_iter, v0=rng.standard_normal(d_in),
                      return_eigenvectors=False)[0])
    return 0.5 * _log(lam) + float(np.sum(logs))


def interior_norms(net: Network, pairs=None, *, max_pairs: int = 64, tol: float = 1e-8,
                   max_iter: int | None = None, seed=0) -> InteriorNorms:
    """||W_{j:i}|| / m^((j-i+1)/2) for 1 < i <= j < L (DH Prop 6.4: O(sqrt(L)) at init).

    Parameters
    ----------
    pairs : (k, 2) array-like of (i, j), optional
        Default ``default_pairs(L, max_pairs, seed)``: all pairs for small L,
        a seeded sample (always including the longest, (2, L-1)) otherwise.
    tol : relative tolerance of the Lanczos eigenvalue of A^T A (the norm's
        relative accuracy is about tol / 2).
    max_iter : Lanczos restarts cap (scipy's default when None).

    The product is only ever applied to vectors, layer by layer (no m x m
    product of several layers is formed): for input width d_{i-1} <= 32 to
    the identity block (exact), otherwise as the operator A^T A in
    scipy.sparse.linalg.eigsh (Lanczos), which also converges on the
    clustered spectra of near-orthogonal products where plain power
    iteration stalls.
    """
    if not isinstance(net, Network):
        raise TypeError(f"net: must be an engine Network, got {type(net).__name__}")
    L = net.depth
    if pairs is None:
        pairs = default_pairs(L, max_pairs, seed) if L >= 3 else np.zeros((0, 2), dtype=np.int64)
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        pairs = pairs.reshape(0, 2).astype(np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError("pairs: must be a (k, 2) integer array of (i, j)")
    for i, j in pairs:
        if not 1 < i <= j < L:
            raise ValueError(f"pairs: ({i}, {j}) is not a pair with 1 < i <= j < L = {L}")
    layers = [_f64(a) for a in net._layers]   # hidden layers only are used; binding is irrelevant
    log_s = net._log_s
    lw = np.log(np.asarray(net.widths, dtype=np.float64))
    rng = np.random.default_rng(seed)
    out = np.empty(len(pairs))
    for k, (i, j) in enumerate(pairs):
        la = _top_singular_log(layers, int(i), int(j), net.widths[i - 1], tol, max_iter, rng)
        out[k] = la + float(np.sum(log_s[i - 1:j])) - 0.5 * float(np.sum(lw[i:j + 1]))
    return InteriorNorms(pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), out)


# -- distance from init ------------------------------------------------------------------

def distance_from_init(net: Network, net0: Network) -> np.ndarray:
    """||W_i(t) - W_i(0)||_F for i = 1..L, shape (L,) (DH C(t), Claim 7.1; HXP C(t)).

    Computed in normalized storage as s_i ||A_i(t) - A_i(0)||_F (the scales
    s_i never change during GD).
    """
    if not isinstance(net, Network) or not isinstance(net0, Network):
        raise TypeError("net, net0: must be engine Networks")
    if net.widths != net0.widths:
        raise ValueError(f"net0: widths {net0.widths} differ from net's {net.widths}")
    s = net.scales
    out = np.empty(net.depth)
    first = net._first_normalized().astype(np.float64) - net0._first_normalized()
    out[0] = s[0] * np.linalg.norm(first)
    for i in range(1, net.depth):
        out[i] = s[i] * np.linalg.norm(net._layers[i].astype(np.float64) - net0._layers[i])
    return out


# -- recorders ------------------------------------------------------------------------------

def _distance_recorder(net, prob):
    net0 = net.copy()   # one extra copy of the weights for the whole run
    return lambda n: distance_from_init(n, net0)


def _gram_recorder(net, prob):
    _check(net, prob)
    return lambda n: gram_eigs(n, prob)


def _spectra_recorder(net, prob):
    _check(net, prob)
    return lambda n: partial_spectra(n, prob)


def _interior_recorder(net, prob):
    # the same pairs at every recorded step, so a pair's norm can be followed in time
    pairs = default_pairs(net.depth) if net.depth >= 3 else np.zeros((0, 2), dtype=np.int64)
    return lambda n: interior_norms(n, pairs)




# -- beyond the two papers: Hessian, sharpness ---------------------------------------------
#
# Curvature of l in W-space. With W_i = s_i A_i (normalized storage), l(W) = l^(A) and
# the W-space Hessian is D^-1 H^ D^-1 with D = diag(s_i) blockwise, so every Hessian-vector
# product is computed on the O(1) normalized chains and rescaled per layer.

@dataclass
class _HessChains:
    """Chains of one state on reduced data, in normalized storage (float64).

    A[k-1] = A_k (A[0] = B_1 = A_1 U_r, d_1 x r); p[k] = A_k ... A_1 U_r diag(s) (d_k x r),
    k = 0..L (p[0] = diag(s)); q[k] = beta A_L ... A_{k+1} (d_out x d_k), k = 1..L
    (q[L] = beta I); R = beta p[L] - Y V_r (d_out x r); g[k] = q[k]^T R (d_k x r).
    """

    A: list
    p: list
    q: list
    R: np.ndarray
    g: list
    s: np.ndarray
    beta: float
    shapes: list


def _hess_chains(net, prob) -> _HessChains:
    red = prob.reduced()
    L = net.depth
    A = [_first_reduced(net, prob)] + [_f64(a) for a in net._layers[1:]]
    p = [np.diag(np.asarray(red.s, dtype=np.float64))]
    for k in range(L):
        p.append(A[k] @ p[-1])
    beta = net.beta
    d_out = net.widths[-1]
    q = [None] * (L + 1)
    q[L] = beta * np.eye(d_out)
    for k in range(L, 1, -1):
        q[k - 1] = q[k] @ A[k - 1]
    R = beta * p[L] - red.targets
    if not (np.all(np.isfinite(R)) and all(np.all(np.isfinite(x)) for x in q[1:])):
        raise ValueError("net: a chain product of the weights is not finite (NaN/Inf weights, "
                         "e.g. after a diverged run)")
    g = [None] + [q[k].T @ R for k in range(1, L + 1)]
    return _HessChains(A, p, q, R, g, net.scales, beta, [a.shape for a in A])


def _hvp_reduced(ch: _HessChains, V):
    """H_W V on reduced coordinates: V[k-1] is the W-space direction of layer k
    (layer 1 as V_1 U_r, d_1 x r). Returns the list of blocks of H_W V, same shapes.

    Forward-mode tangents of both chains (dp_k = U_k p_{k-1} + A_k dp_{k-1},
    dq_{k-1} = dq_k A_k + q_k U_k with U_k = V_k / s_k), then
    d(grad_k) = (dq_k^T R + q_k^T dR) p_{k-1}^T + g_k dp_{k-1}^T: 2 skinny matmuls per
    layer per chain and two rank-r updates, O(L m^2 (r + d_out)) in all.
    """
    A, p, q, R, g, s = ch.A, ch.p, ch.q, ch.R, ch.g, ch.s
    L = len(A)
    U = [V[k] / s[k] for k in range(L)]
    dp = [None] * (L + 1)
    dp[0] = np.zeros_like(p[0])
    for k in range(1, L + 1):
        dp[k] = U[k - 1] @ p[k - 1] + A[k - 1] @ dp[k - 1]
    dR = ch.beta * dp[L]
    out = [None] * L
    dq = np.zeros_like(q[L])
    for k in range(L, 0, -1):
        left = dq.T @ R + q[k].T @ dR                     # d_k x r
        out[k - 1] = (left @ p[k - 1].T + g[k] @ dp[k - 1].T) / s[k - 1]
        if k > 1:
            dq = dq @ A[k - 1] + q[k] @ U[k - 1]
    return out


def hessian_vector_product(net: Network, prob, V) -> list:
    """The Hessian of l (W-space, paper convention) applied to a direction V.

    ``V`` is a list of L arrays, V[i-1] of shape (d_i, d_{i-1}) like W_i; returns
    the list (H V)_i of the same shapes, float64. Exact: forward-mode tangents of
    the prefix and suffix chains, O(L) skinny matmuls on reduced data (the first
    layer through W_1 U_r: l depends on W_1 only through W_1 X, so H V has no
    component along W_1 U_perp), no Hessian formed and no finite differences.
    """
    _check(net, prob)
    L = net.depth
    try:
        V = list(V)
    except TypeError:
        raise TypeError("V: must be a list of L arrays shaped like the weights") from None
    if len(V) != L:
        raise ValueError(f"V: needs one array per layer (L = {L}), got {len(V)}")
    W_shapes = [(net.widths[k + 1], net.widths[k]) for k in range(L)]
    Vs = []
    for k, (v, sh) in enumerate(zip(V, W_shapes)):
        v = np.asarray(v, dtype=np.float64)
        if v.shape != sh:
            raise ValueError(f"V[{k}]: must have shape {sh} (like W_{k + 1}), got {v.shape}")
        Vs.append(v)
    basis = prob.reduced().basis
    ch = _hess_chains(net, prob)
    out = _hvp_reduced(ch, [Vs[0] @ basis] + Vs[1:])
    out[0] = out[0] @ basis.T
    return out


def _hessian_operator(ch: _HessChains):
    from scipy.sparse.linalg import LinearOperator
    sizes = [a.size for a in ch.A]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offs[-1])

    def mv(x):
        x = np.asarray(x, dtype=np.float64).ravel()
        V = [x[offs[k]:offs[k + 1]].reshape(ch.shapes[k]) for k in range(len(sizes))]
        return np.concatenate([b.ravel() for b in _hvp_reduced(ch, V)])

    return LinearOperator((n, n), matvec=mv, rmatvec=mv, dtype=np.float64), n


# Below this many reduced parameters sharpness(method="auto") forms the Hessian from n
# Hessian-vector products (exact, cheap at that size); above it, Lanczos.
HESSIAN_DENSE_MAX = 400


@_one_blas_thread
def sharpness(net: Network, prob, k: int = 1, *, method: str = "auto", tol: float = 1e-10,
              maxiter: int | None = None) -> np.ndarray:
    """Top ``k`` eigenvalues of the Hessian of l w.r.t. all weights (W-space), descending.

    The edge-of-stability quantity: GD at rate eta is linearly stable at a minimum
    only while sharpness <= 2 / eta. At a zero-residual state the Hessian is
    J^T J, whose non-zero eigenvalues are those of J J^T = P (DH eq. 7), so
    sharpness(k=1) = lambda_max(P) there; elsewhere the residual adds a
    second-order term.

    Parameters
    ----------
    k : number of eigenvalues (>= 1)
    method : "lanczos" (scipy.sparse.linalg.eigsh on exact Hessian-vector
        products, ``hessian_vector_product``), "dense" (the Hessian from one
        product per parameter, numpy.linalg.eigvalsh) or "auto" (dense up to
        HESSIAN_DENSE_MAX reduced parameters).
    tol : relative accuracy asked of eigsh (Ritz values are usually far more
        accurate: the error is ~ residual^2 / gap).
    maxiter : eigsh restart cap (scipy's default when None).

    Returns a (k,) float64 array. The Hessian is taken on reduced coordinates
    (W_1 through W_1 U_r); the d_1 (d_0 - r) directions W_1 U_perp carry the
    eigenvalue 0 exactly, and they are included in the top k when they belong.
    """
    _check(net, prob)
    k = positive_int(k, "k")
    if method not in ("auto", "lanczos", "dense"):
        raise ValueError(f"method: must be 'auto', 'lanczos' or 'dense', got {method!r}")
    tol = float(tol)
    if not (tol >= 0 and np.isfinite(tol)):
        raise ValueError(f"tol: must be a finite number >= 0, got {tol!r}")
    ch = _hess_chains(net, prob)
    op, n = _hessian_operator(ch)
    n_null = net.widths[1] * (net.widths[0] - prob.rank)
    if k > n + n_null:
        raise ValueError(f"k: the Hessian has only {n + n_null} eigenvalues, got k = {k}")
    kk = min(k, n)
    if method == "auto":
        method = "dense" if n <= HESSIAN_DENSE_MAX else "lanczos"
    if method == "lanczos" and kk >= n - 1:
        method = "dense"     # eigsh needs k < n - 1 (ARPACK)
    if method == "dense":
        H = op @ np.eye(n)
        ev = np.linalg.eigvalsh(0.5 * (H + H.T))[::-1][:kk]
    else:
        from scipy.sparse.linalg import eigsh
        v0 = np.random.default_rng(12345).standard_normal(n)
        ev = eigsh(op, k=kk, which="LA", tol=tol, v0=v0, maxiter=maxiter,
                   return_eigenvectors=False)
        ev = np.sort(ev)[::-1]
    ev = np.concatenate([ev, np.zeros(min(k, n_null))])
    return np.sort(ev)[::-1][:k].astype(np.float64)


# -- beyond the two papers: Lyapunov exponents of partial products ---------------------------

def _qr_sweep(factors):
    """QR accumulation through M = F_n ... F_1 (F_1 applied first): Q_t R_t = F_t Q_{t-1}.

    Returns (R_1..R_n, sum_t ln|diag R_t|): the singular values of M are those of
    R_n ... R_1, and the sum is the Benettin estimate of their logs.
    """
    p = factors[0].shape[1]
    Q = np.eye(p)
    Rs = []
    logd = np.zeros(p)
    with np.errstate(divide="ignore"):
        for F in factors:
            Q, R = np.linalg.qr(F @ Q)
            Rs.append(R)
            logd += np.log(np.abs(np.diag(R)))
    return Rs, logd


@_one_blas_thread
def lyapunov(net: Network, i: int = 1, j: int | None = None, *, tol: float = 1e-10,
             max_sweeps: int = 50) -> np.ndarray:
    """All log singular values of the square partial product A_j ... A_i, descending, (d_{i-1},).

    Normalized weights A_k = W_k / s_k, with s_k the network's stored scale:
    s_k = sqrt(d_k) sigma_k for the Gaussian init (A_k has iid N(0, 1/d_k)
    entries: the variables DH Sec. 6 and HXP Sec. 4 reason with), sqrt(d_k)
    for the orthogonal init (A_k orthogonal when square: every exponent is 0),
    scale sqrt(d_k) for ``init.identity``, and for ``init.from_weights`` nets
    s_k = ||W_k||_F / sqrt(d_{k-1}), i.e. sigma_k estimated as the RMS entry
    of W_k. The scales never change during GD. Values are sums over the
    layers (logs of the singular values of the product), not per-layer means.

    Parameters
    ----------
    i, j : 1 <= i <= j <= L with d_j = d_{i-1} (the product is square);
        j = None: the largest such j. Every width in between must be >= d_{i-1}.
    tol, max_sweeps : the product is never formed. A first QR sweep through
        the layers (re-orthonormalize after every layer, accumulate
        ln|diag R|) gives the Benettin estimate (``max_sweeps=1``; for a Gaussian
        product its i-th entry has mean L (1/2)[ln(2/m) + digamma((m-i+1)/2)]
        exactly). Further sweeps alternate over the transposed triangular
        factors, which is the unshifted QR algorithm on the product in
        factored form: the diagonal converges to the exact singular values,
        at rate sigma_{k+1}/sigma_k per sweep. It stops when no log changes by
        more than ``tol`` in a sweep, or after ``max_sweeps`` sweeps (each
        costs L QR factorizations of d_{i-1} x d_{i-1} matrices).
        Exact where the product under- or overflows float64 (width 10,
        depth 700: the smallest singular value is ~e^-1250).
    """
    if not isinstance(net, Network):
        raise TypeError(f"net: must be an engine Network, got {type(net).__name__}")
    L = net.depth
    w = net.widths
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or not 1 <= i <= L:
        raise ValueError(f"i: must be an integer layer index in 1..{L}, got {i!r}")
    i = int(i)
    p = w[i - 1]
    if j is None:
        cand = [jj for jj in range(i, L + 1) if w[jj] == p]
        if not cand:
            raise ValueError(f"i: no partial product W_{{j:{i}}} is square (d_{i - 1} = {p} equals no "
                             f"d_j, j >= {i}); for hidden layers pass i=2")
        j = cand[-1]
    if isinstance(j, (bool, np.bool_)) or not isinstance(j, (int, np.integer)) or not i <= j <= L:
        raise ValueError(f"j: must be an integer layer index in {i}..{L} or None, got {j!r}")
    j = int(j)
    if w[j] != p:
        raise ValueError(f"j: W_{{{j}:{i}}} is {w[j]} x {p}, not square (d_j must equal d_{{i-1}})")
    narrow = [k for k in range(i, j) if w[k] < p]
    if narrow:
        raise ValueError(f"i, j: width d_{narrow[0]} = {w[narrow[0]]} < d_{i - 1} = {p} makes "
                         f"W_{{{j}:{i}}} singular (exponents -inf)")
    max_sweeps = positive_int(max_sweeps, "max_sweeps")
    tol = float(tol)
    if not (tol >= 0 and np.isfinite(tol)):
        raise ValueError(f"tol: must be a finite number >= 0, got {tol!r}")
    factors = []
    for k in range(i, j + 1):
        A = _f64(net._first_normalized()) if k == 1 else _f64(net._layers[k - 1])
        if not np.all(np.isfinite(A)):
            raise ValueError(f"net: layer {k} has NaN/Inf weights")
        factors.append(A)
    Rs, logd = _qr_sweep(factors)
    est = np.sort(logd)[::-1]
    for _ in range(max_sweeps - 1):
        # singular values of R_n...R_1 = those of its transpose R_1^T ... R_n^T
        Rs, logd = _qr_sweep([R.T for R in reversed(Rs)])
        new = np.sort(logd)[::-1]
        fin = np.isfinite(new) & np.isfinite(est)
        done = np.all(np.abs(new[fin] - est[fin]) <= tol)
        est = new
        if done:
            break
    return est


# -- beyond the two papers: the lazy-training twin --------------------------------------------

def reduced_residual(net: Network, prob) -> np.ndarray:
    """R = alpha W_{L:1} U_r S_r - Y V_r (d_out x r), the reduced residual (l - OPT = ||R||_F^2 / 2)."""
    _check(net, prob)
    red = prob.reduced()
    E = net.beta * _f64(net._layers[-1]) if net.depth > 1 else None
    B1 = _first_reduced(net, prob)
    if net.depth == 1:
        M = net.beta * B1
    else:
        for a in reversed(net._layers[1:-1]):
            E = E @ _f64(a)
        M = E @ B1
    return M * np.asarray(red.s, dtype=np.float64)[None, :] - red.targets


class LazyTwin:
    """GD on the linearization of the network at a state W(0) (the lazy / NTK regime).

    Linearized residual R_lin(W) = R(0) + J (W - W(0)); GD on 1/2 ||R_lin||^2 at rate
    eta gives vec R_lin(t) = (I - eta P(0))^t vec R(0) exactly (DH eq. 6 without its
    second-order term), P(0) the Gram matrix of DH eq. 7 at W(0). With
    P(0) = V diag(lambda) V^T (one eigendecomposition, (r d_out)^3 work) the excess
    is 1/2 sum_k c_k^2 (1 - eta lambda_k)^(2t), c = V^T vec R(0), in closed form per t.

    Attributes: lr, lam (eigenvalues of P(0), ascending), c (coefficients), excess0.
    """

    def __init__(self, net: Network, prob, lr):
        _check(net, prob)
        self.lr = positive_float(lr, "lr")
        P = gram_matrix(net, prob)
        lam, V = np.linalg.eigh(P)
        r0 = reduced_residual(net, prob).reshape(-1, order="F")
        self.lam = lam
        self.c = V.T @ r0
        self.excess0 = 0.5 * float(r0 @ r0)

    def excess(self, t) -> np.ndarray:
        """Excess l_lin(t) - OPT of the linearized run after t steps (t scalar or array)."""
        t = np.asarray(t, dtype=np.float64)
        f = np.abs(1.0 - self.lr * self.lam)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            logf = np.where(f > 0, np.log(np.where(f > 0, f, 1.0)), -np.inf)
            terms = 0.5 * self.c[:, None] ** 2 * np.exp(2.0 * np.multiply.outer(logf, t.ravel()))
            terms = np.where(np.isnan(terms), 0.0, terms)   # c_k = 0 with an exactly zero factor
        out = terms.sum(axis=0).reshape(t.shape)
        return out if out.ndim else float(out)


# -- recorders ------------------------------------------------------------------------------

def _sharpness_recorder(net, prob):
    _check(net, prob)
    return lambda n: sharpness(n, prob, 1)


def _lazy_recorder(net, prob, lr):
    """[l_lin(t) - OPT, l(t) - OPT] at each recorded step t, the twin started at ``net``."""
    twin = LazyTwin(net, prob, lr)

    def rec(n, t):
        r = reduced_residual(n, prob)
        return np.array([twin.excess(t), 0.5 * float(np.sum(r * r))])

    rec.wants_step = True
    return rec


_lazy_recorder.wants_lr = True


# A factory with ``wants_lr = True`` is called make(net, prob, lr); a recorder with
# ``wants_step = True`` is called rec(net, t) (engine.train passes both).
RECORDERS = {
    "distance": _distance_recorder,
    "gram": _gram_recorder,
    "spectra": _spectra_recorder,
    "interior": _interior_recorder,
    "sharpness": _sharpness_recorder,
    "lazy": _lazy_recorder,
}
