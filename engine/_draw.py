"""The inits' draws: validated arguments, scales and a per-member drawing function.

Each function returns a ``Draw``; ``engine.network.Storage.drawn(draw)``
checks the memory, allocates the members once and fills them. ``engine.init``
is the public face (docstrings, ``ensemble=K``); the ``Ensemble.gaussian`` /
``Ensemble.orthogonal`` constructors draw through here too, so every member
is drawn by one implementation. Member k is drawn from its own
``numpy.random.default_rng(seed_k)``, layers in order W_1, ..., W_L, in
float64, and then cast: a float32 network is the float64 one rounded, and
member k of an ensemble is bitwise the network of seed_k on its own.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ._validate import as_real_matrix, float_dtype, nonempty_list, positive_float, seed_value, widths_list

# The init name of an identity init with noise > 0: no theorem gives its learning
# rate (engine.theory refuses lr="theory" for it).
NOISY_IDENTITY = "identity+noise"


def gaussian(widths, seeds, sigma=None, alpha=None, dtype=np.float64):
    """Members ``engine.init.gaussian(widths, seed=s, sigma, alpha)`` for s in ``seeds``."""
    widths = widths_list(widths)
    dtype = float_dtype(dtype)
    L = len(widths) - 1
    sig = sigma_list(sigma, L)
    log_s = np.array([0.5 * np.log(widths[i + 1]) + np.log(sig[i]) for i in range(L)])
    log_beta = 0.0 if alpha is None else np.log(positive_float(alpha, "alpha")) + float(np.sum(log_s))

    def draw(rng, layers):
        for i, a in enumerate(layers):
            g = rng.standard_normal(a.shape)
            g *= 1.0 / np.sqrt(widths[i + 1])
            a[...] = g

    return _members(widths, dtype, seeds, draw, log_s, log_beta, "gaussian", sig)


def orthogonal(widths, seeds, alpha=None, dtype=np.float64):
    """Members ``engine.init.orthogonal(widths, seed=s, alpha)`` for s in ``seeds``."""
    widths = widths_list(widths)
    dtype = float_dtype(dtype)
    L = len(widths) - 1
    log_s = np.array([0.5 * np.log(widths[i + 1]) for i in range(L)])
    log_beta = 0.0 if alpha is None else np.log(positive_float(alpha, "alpha")) + float(np.sum(log_s))

    def draw(rng, layers):
        for a in layers:
            rows, cols = a.shape
            q = haar_semi_orthogonal(rng, rows, cols)
            q *= np.sqrt(max(rows, cols) / rows)
            a[...] = q

    return _members(widths, dtype, seeds, draw, log_s, log_beta, "orthogonal")


def identity(widths, seeds, scale=1.0, noise=0.0, dtype=np.float64):
    """Members ``engine.init.identity(widths, scale, noise, seed=s)`` for s in ``seeds``."""
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

    def draw(rng, layers):
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
    name = "identity" if noise == 0 else NOISY_IDENTITY
    return _members(widths, dtype, seeds, draw, log_s, L * np.log(scale), name)


def from_weights(Ws, alpha, dtype=np.float64):
    """One member with the given paper-convention weights (``engine.init.from_weights``)."""
    Ws = nonempty_list(Ws, "Ws", "2-D arrays W_1, ..., W_L", "weight matrix")
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

    def draw(rng, layers):
        for i, (a, W) in enumerate(zip(layers, mats)):
            a[...] = W * np.exp(-log_s[i])

    return _members(widths, dtype, [None], draw, log_s, np.log(alpha) + float(np.sum(log_s)), "custom",
                    rng=False)


class Draw(NamedTuple):
    """What ``Storage.drawn`` needs to build the members of one init."""

    widths: tuple
    dtype: np.dtype
    seeds: list                  # one per member (the seed as given, kept with the member)
    draw: Callable               # draw(rng, layers): fill one member's layers A_1..A_L
    log_s: np.ndarray            # (L,) log s_i, the same for every member
    log_beta: float
    init: str
    sigma: object = None         # (L,) sigma_i or None
    rngs: bool = True            # draw from default_rng(seed) (False: nothing random)


def _members(widths, dtype, seeds, draw, log_s, log_beta, init, sigma=None, rng=True) -> Draw:
    seeds = list(seeds)
    if rng:
        for s in seeds:
            seed_value(s)
    return Draw(widths, dtype, seeds, draw, log_s, float(log_beta), init, sigma, rng)


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


def sigma_list(sigma, L: int) -> np.ndarray:
    if sigma is None:
        return np.ones(L)
    if np.ndim(sigma) == 0:
        return np.full(L, positive_float(sigma, "sigma"))
    sig = list(sigma)
    if len(sig) != L:
        raise ValueError(f"sigma: must be a scalar or have one entry per layer (L = {L}), got {len(sig)}")
    return np.array([positive_float(s, f"sigma[{i}]") for i, s in enumerate(sig)])
