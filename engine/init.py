"""Initializations of the two papers, in normalized storage.

    gaussian(widths, seed)     DH Sec. 3.2 / HXP Sec. 4: W_i entries iid N(0, sigma_i^2)
    orthogonal(widths, seed)   HXP eq. (4): scaled Haar (semi-)orthogonal W_i
    identity(widths, ...)      identity hidden layers (Hardt & Ma 2016; Bartlett et al. 2018)
    from_weights(Ws, alpha)    any given paper-convention weights

``widths = [d_0, ..., d_L]``; every init is reproducible from its seed. Layers
are drawn in order W_1, W_2, ..., W_L from one ``numpy.random.default_rng(seed)``
in float64 and then cast, so a float32 network is the float64 one rounded.
With ``ensemble=K`` the seeded inits return an ``engine.Ensemble`` of K
networks with seeds seed, ..., seed+K-1, drawn into one stacked storage
(member k is bitwise the network of seed+k on its own; the draws themselves
are in ``engine._draw``).

Before allocating, every init calls ``engine.memory.check(widths, dtype,
ensemble=K)`` and raises ``engine.memory.InsufficientMemory`` (a MemoryError)
when the networks would not fit in the available memory (override:
ENGINE_MEMORY_LIMIT).
"""
from __future__ import annotations

import numpy as np

from . import _draw
from ._draw import haar_semi_orthogonal  # noqa: F401  (public: bench/ builds deep orthogonal nets with it)
from ._validate import positive_int
from .network import Ensemble, Network, Storage

__all__ = ["gaussian", "orthogonal", "identity", "from_weights", "INITS", "haar_semi_orthogonal"]


def _seeds(seed, ensemble):
    """[seed], or the member seeds seed, seed+1, ..., seed+K-1 for ``ensemble=K``."""
    if ensemble is None:
        return [seed]
    K = positive_int(ensemble, "ensemble")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: with ensemble= it must be an int (members get seed, seed+1, ...), got {seed!r}")
    return list(range(int(seed), int(seed) + K))


def _built(draw, ensemble):
    """The drawn members as a Network (ensemble=None) or an Ensemble."""
    store = Storage.drawn(draw)
    return Network._view(store) if ensemble is None else Ensemble(store)


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
    seeds = _seeds(seed, ensemble)
    return _built(_draw.gaussian(widths, seeds, sigma, alpha, dtype), ensemble)


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
    seeds = _seeds(seed, ensemble)
    return _built(_draw.orthogonal(widths, seeds, alpha, dtype), ensemble)


def identity(widths, scale=1.0, noise=0.0, seed=0, *, dtype=np.float64, ensemble=None):
    """Identity initialization (Hardt & Ma 2016; Bartlett et al. 2018, cited in DH).

    With ``ensemble=K`` returns an ``engine.Ensemble`` of K such networks with
    seeds seed, ..., seed+K-1 (the seed draws the first and last layers and the noise).

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
    seeds = _seeds(seed, ensemble)
    return _built(_draw.identity(widths, seeds, scale, noise, dtype), ensemble)


def from_weights(Ws, alpha, *, dtype=np.float64) -> Network:
    """A network with the given paper-convention weights W_1, ..., W_L and scale alpha.

    ``Ws[i]`` must have shape (d_{i+1}, d_i) with consecutive shapes chaining.
    Scales are chosen as s_i = ||W_i||_F / sqrt(d_{i-1}) (= sqrt(d_i) sigma_i
    in expectation for Gaussian W_i), or 1 for an all-zero layer.
    """
    return _built(_draw.from_weights(Ws, alpha, dtype), None)


INITS = {"gaussian": gaussian, "orthogonal": orthogonal, "identity": identity}


def by_name(name: str):
    """The init function called ``name`` ("gaussian", "orthogonal" or "identity")."""
    try:
        return INITS[name]
    except (KeyError, TypeError):
        raise ValueError(f"init: unknown initialization {name!r}; choose one of {sorted(INITS)}") from None
