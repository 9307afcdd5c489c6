"""Initializations of the two papers, in normalized storage.

    gaussian(widths, seed)     DH Sec. 3.2 / HXP Sec. 4: W_i entries iid N(0, sigma_i^2)
    orthogonal(widths, seed)   HXP eq. (4): scaled Haar (semi-)orthogonal W_i
    identity(widths, ...)      identity hidden layers (Hardt & Ma 2016; Bartlett et al. 2018)
    from_weights(Ws, alpha)    any given paper-convention weights

``widths = [d_0, ..., d_L]``; every init is reproducible from its seed. Layers
are drawn in order W_1, W_2, ..., W_L from one ``numpy.random.default_rng(seed)``
in float64 and then cast, so a float32 network is the float64 one rounded.

Before allocating, every init calls ``engine.memory.check(widths, dtype)`` and
raises ``engine.memory.InsufficientMemory`` (a MemoryError) when the network
would not fit in the available memory (override: ENGINE_MEMORY_LIMIT).
"""
from __future__ import annotations

import numpy as np

from . import memory, theory
from ._validate import as_real_matrix, float_dtype, positive_float, positive_int, seed_value, widths_list
from .network import Network, _alloc_layers

__all__ = ["gaussian", "orthogonal", "identity", "from_weights", "INITS"]


def _ensemble_seeds(seed, ensemble):
    """Member seeds seed, seed+1, ..., seed+K-1 for ``ensemble=K``."""
    K = positive_int(ensemble, "ensemble")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: with ensemble= it must be an int (members get seed, seed+1, ...), got {seed!r}")
    return range(int(seed), int(seed) + K)


def gaussian(widths, seed=0, sigma=None, alpha=None, *, dtype=np.float64, ensemble=None):
    """Gaussian initialization (DH Sec. 3.2; per-layer sigma_i as in HXP Thm 4.1).

    With ``ensemble=K`` returns an ``engine.Ensemble`` of K such networks with
    seeds seed, ..., seed+K-1 (member k is exactly ``gaussian(widths, seed+k)``).

    Parameters
    ----------
    widths : sequence of int, [d_0, ..., d_L]
    seed : int or None
    sigma : float or sequence of L floats, optional
        Entry standard deviations sigma_i (default 1 for every layer, as in DH).
    alpha : float, optional
        Output scale. Default (prod_i d_i sigma_i^2)^(-1/2), which gives
        E||f(x)||^2 = ||x||^2 (DH Claim 3.1; = 1/sqrt(m^(L-1) d_out) for uniform
        width and sigma = 1).
    dtype : float64 or float32

    Storage: A_i = W_i / s_i with s_i = sqrt(d_i) sigma_i, so A_i has iid
    N(0, 1/d_i) entries and beta = alpha prod s_i (= 1 by default).
    """
    if ensemble is not None:
        from .ensemble import Ensemble
        return Ensemble.gaussian(widths, seeds=_ensemble_seeds(seed, ensemble), sigma=sigma,
                                 alpha=alpha, dtype=dtype)
    widths = widths_list(widths)
    dtype = float_dtype(dtype)
    L = len(widths) - 1
    sig = _sigma_list(sigma, L)
    log_s = np.array([0.5 * np.log(widths[i + 1]) + np.log(sig[i]) for i in range(L)])
    log_beta = 0.0 if alpha is None else np.log(positive_float(alpha, "alpha")) + float(np.sum(log_s))
    rng = np.random.default_rng(seed_value(seed))
    memory.check(widths, dtype)
    layers, stack = _alloc_layers(widths, dtype)
    for i, a in enumerate(layers):
        g = rng.standard_normal(a.shape)
        g *= 1.0 / np.sqrt(widths[i + 1])
        a[...] = g
    return Network(layers, log_s, log_beta, init="gaussian", seed=seed, sigma=sig,
                   dtype=dtype, _stack=stack)


def orthogonal(widths, seed=0, alpha=None, *, dtype=np.float64, ensemble=None):
    """Orthogonal initialization (HXP eq. 4).

    With ``ensemble=K`` returns an ``engine.Ensemble`` of K such networks with
    seeds seed, ..., seed+K-1 (member k is exactly ``orthogonal(widths, seed+k)``).

    Each W_i (d_i x d_{i-1}) is sqrt(max(d_i, d_{i-1})) times a Haar-distributed
    semi-orthogonal matrix: orthonormal columns when d_i >= d_{i-1}
    (W_i^T W_i = d_i I), orthonormal rows otherwise (W_i W_i^T = d_{i-1} I). With
    hidden width m >= max(d_in, d_out) this is exactly eq. (4); narrower widths
    are accepted too (HXP's own experiment uses m < d_in), and each layer's
    expected squared gain E||W_i v||^2 = d_i ||v||^2 still holds, so the default
    alpha = (prod_i d_i)^(-1/2) (= 1/sqrt(m^(L-1) d_out)) keeps
    E||f(x)||^2 = ||x||^2.

    Haar sampling: QR of a Gaussian matrix with the signs of diag(R) moved into
    Q (Mezzadri 2007); without that correction QR output is not Haar.

    alpha : float, optional
        Output scale; default HXP's 1/sqrt(m^(L-1) d_y) = (prod_i d_i)^(-1/2).
        Another alpha = c x the default is HXP's setting on targets Y / c
        (``engine.theory.theorem_setting``).

    Storage: s_i = sqrt(d_i), beta = alpha prod_i s_i (= 1 by default), so
    A_i = sqrt(max(d_i, d_{i-1}) / d_i) Q_i.
    """
    if ensemble is not None:
        from .ensemble import Ensemble
        return Ensemble.orthogonal(widths, seeds=_ensemble_seeds(seed, ensemble), alpha=alpha,
                                   dtype=dtype)
    widths = widths_list(widths)
    dtype = float_dtype(dtype)
    L = len(widths) - 1
    log_s = np.array([0.5 * np.log(widths[i + 1]) for i in range(L)])
    log_beta = 0.0 if alpha is None else np.log(positive_float(alpha, "alpha")) + float(np.sum(log_s))
    rng = np.random.default_rng(seed_value(seed))
    memory.check(widths, dtype)
    layers, stack = _alloc_layers(widths, dtype)
    for i, a in enumerate(layers):
        rows, cols = a.shape
        q = haar_semi_orthogonal(rng, rows, cols)
        q *= np.sqrt(max(rows, cols) / rows)
        a[...] = q
    return Network(layers, log_s, log_beta, init="orthogonal", seed=seed, dtype=dtype, _stack=stack)


def identity(widths, scale=1.0, noise=0.0, seed=0, *, dtype=np.float64) -> Network:
    """Identity initialization (Hardt & Ma 2016; Bartlett et al. 2018, cited in DH).

    HXP eq. (4) with the identity in place of the Haar matrix wherever it can be:

        W_i = scale sqrt(d_i) (E_i + noise G_i),   alpha = (prod_i d_i)^(-1/2),

    with E_i = I for the square hidden layers (1 < i < L, d_i = d_{i-1}), the
    rectangular identity sqrt(max(d_i, d_{i-1}) / d_i) I_{d_i x d_{i-1}} for
    non-square hidden layers, and for the first and last layers (which
    connect to the data's dimensions) exactly the orthogonal init's rule:
    sqrt(max(d_i, d_{i-1}) / d_i) times a Haar semi-orthogonal matrix drawn
    from ``seed``. G_i has iid N(0, 1/d_i) entries (``noise`` = 0: none drawn).

    alpha is the orthogonal init's, so with scale = 1 and noise = 0 the network
    is an exact isometry through its hidden layers (HXP Lemma B.1's premise
    holds deterministically) and E||f(x)||^2 = ||x||^2; ``scale`` multiplies
    the end-to-end map by scale^L (scale < 1: the small-init regime of deep
    matrix factorization). ``lr="theory"`` uses HXP Thm 3.1's rate
    (d_y / (2 L ||X||^2)) for noise = 0. With noise > 0 the hidden layers are
    no longer isometries and no theorem gives a rate: the net's ``init`` is
    ``"identity+noise"`` (``theory.NOISY_IDENTITY``) and ``lr="theory"`` is
    refused with a message naming the init noise; give a numeric lr.

    Storage: s_i = scale sqrt(d_i), beta = scale^L, A_i = E_i + noise G_i
    (exponents of ``diagnostics.lyapunov`` are 0 at noise = 0).
    """
    widths = widths_list(widths)
    dtype = float_dtype(dtype)
    scale = positive_float(scale, "scale")
    if isinstance(noise, (bool, np.bool_)) or not isinstance(noise, (int, float, np.integer, np.floating)):
        raise TypeError(f"noise: must be a real number >= 0, got {noise!r}")
    noise = float(noise)
    if not (noise >= 0 and np.isfinite(noise)):
        raise ValueError(f"noise: must be a finite number >= 0, got {noise!r}")
    L = len(widths) - 1
    log_s = np.array([0.5 * np.log(widths[i + 1]) + np.log(scale) for i in range(L)])
    rng = np.random.default_rng(seed_value(seed))
    memory.check(widths, dtype)
    layers, stack = _alloc_layers(widths, dtype)
    for i, a in enumerate(layers):
        rows, cols = a.shape
        if i == 0 or i == L - 1:
            q = haar_semi_orthogonal(rng, rows, cols)
        else:
            q = np.eye(rows, cols)
        q *= np.sqrt(max(rows, cols) / rows)
        if noise > 0:
            q += noise * rng.standard_normal((rows, cols)) / np.sqrt(rows)
        a[...] = q
    # noise > 0 is recorded in the init name (kept by copies, ensembles and
    # checkpoints): theory.theorem_setting refuses lr="theory" for such nets
    name = "identity" if noise == 0 else theory.NOISY_IDENTITY
    return Network(layers, log_s, L * np.log(scale), init=name, seed=seed, dtype=dtype,
                   _stack=stack)


def from_weights(Ws, alpha, *, dtype=np.float64) -> Network:
    """A network with the given paper-convention weights W_1, ..., W_L and scale alpha.

    ``Ws[i]`` must have shape (d_{i+1}, d_i) with consecutive shapes chaining.
    Scales are chosen as s_i = ||W_i||_F / sqrt(d_{i-1}) (= sqrt(d_i) sigma_i
    in expectation for Gaussian W_i), or 1 for an all-zero layer.
    """
    try:
        Ws = list(Ws)
    except TypeError:
        raise TypeError("Ws: must be a sequence of 2-D arrays W_1, ..., W_L") from None
    if not Ws:
        raise ValueError("Ws: needs at least one weight matrix")
    dtype = float_dtype(dtype)
    mats = [as_real_matrix(W, f"Ws[{i}]") for i, W in enumerate(Ws)]
    for i in range(1, len(mats)):
        if mats[i].shape[1] != mats[i - 1].shape[0]:
            raise ValueError(
                f"Ws[{i}]: has {mats[i].shape[1]} columns but Ws[{i - 1}] has {mats[i - 1].shape[0]} rows; "
                "W_i must be (d_i, d_{i-1})")
    alpha = positive_float(alpha, "alpha")
    widths = (mats[0].shape[1],) + tuple(W.shape[0] for W in mats)
    log_s = np.empty(len(mats))
    for i, W in enumerate(mats):
        fro = float(np.linalg.norm(W))
        log_s[i] = np.log(fro / np.sqrt(W.shape[1])) if fro > 0 else 0.0
    memory.check(widths, dtype)
    layers, stack = _alloc_layers(widths, dtype)
    for i, (a, W) in enumerate(zip(layers, mats)):
        a[...] = W * np.exp(-log_s[i])
    return Network(layers, log_s, np.log(alpha) + float(np.sum(log_s)), init="custom",
                   dtype=dtype, _stack=stack)


def haar_semi_orthogonal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) Haar-distributed matrix with orthonormal columns (rows >= cols)
    or orthonormal rows (rows < cols), float64."""
    tall = rows >= cols
    n, k = (rows, cols) if tall else (cols, rows)
    G = rng.standard_normal((n, k))
    Q, R = np.linalg.qr(G)
    d = np.sign(np.diag(R))
    d[d == 0] = 1.0
    Q *= d
    return Q if tall else np.ascontiguousarray(Q.T)


def _sigma_list(sigma, L: int) -> np.ndarray:
    if sigma is None:
        return np.ones(L)
    if np.ndim(sigma) == 0:
        return np.full(L, positive_float(sigma, "sigma"))
    sig = list(sigma)
    if len(sig) != L:
        raise ValueError(f"sigma: must be a scalar or have one entry per layer (L = {L}), got {len(sig)}")
    return np.array([positive_float(s, f"sigma[{i}]") for i, s in enumerate(sig)])


INITS = {"gaussian": gaussian, "orthogonal": orthogonal, "identity": identity}


def by_name(name: str):
    """The init function called ``name`` ("gaussian", "orthogonal" or "identity")."""
    try:
        return INITS[name]
    except (KeyError, TypeError):
        raise ValueError(f"init: unknown initialization {name!r}; choose one of {sorted(INITS)}") from None
