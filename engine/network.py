"""Deep linear networks stored in normalized weights.

Paper convention: W_i in R^{d_i x d_{i-1}}, f(x) = alpha W_L ... W_1 x
(DH eq. 1, HXP eq. 1). With N(0, 1)-sized entries the raw product W_{L:1}
grows like m^{L/2} and overflows float64 long before L = 1000, so the
network stores (docs/design.md, "Normalized weights")

    A_i = W_i / s_i,   s_i = sqrt(d_i) sigma_i,   beta = alpha prod_i s_i,

so that alpha W_{L:1} = beta A_{L:1} with every factor O(1). GD on W with
step eta is GD on A with per-layer step eta / s_i^2 -- the same trajectory.
Scales are kept as logarithms (log s_i, log beta) so that alpha itself, which
is 1e-1500 at m = 1000, L = 1000, never has to be represented.

While a network is being trained on a Problem it is *bound* to it: its first
layer is held as B_1 = A_1 U_r (d_1 x r) plus the frozen component
A_1 (I - U_r U_r^T), which GD never changes (docs/design.md, "Data reduction").
All public views reconstruct A_1 = B_1 U_r^T + A_1 (I - U_r U_r^T).
"""
from __future__ import annotations

import itertools
import operator

import numpy as np

from ._validate import widths_match_data


class Network:
    """A deep linear network f(x) = alpha W_L ... W_1 x in normalized storage.

    Build one with ``engine.init.gaussian``, ``engine.init.orthogonal`` or
    ``engine.init.from_weights``; the constructor is internal.

    Attributes
    ----------
    widths : tuple[int, ...]   [d_0, ..., d_L]
    depth  : int               L
    dtype  : numpy.dtype       storage dtype (float64 or float32)
    init   : str               "gaussian", "orthogonal", "identity", "identity+noise" or "custom"
    """

    def __init__(self, layers, log_s, log_beta: float, *, init: str = "custom",
                 seed=None, sigma=None, dtype=np.float64, _stack=None):
        self._layers = list(layers)
        self.widths = (self._layers[0].shape[1],) + tuple(a.shape[0] for a in self._layers)
        self.depth = len(self._layers)
        self.dtype = np.dtype(dtype)
        self._log_s = np.asarray(log_s, dtype=np.float64).copy()
        self._log_beta = float(log_beta)
        self.init = init
        self.seed = seed
        self.sigma = None if sigma is None else np.asarray(sigma, dtype=np.float64).copy()
        self._stack = _stack          # (L-2, m, m) array backing the hidden layers, or None
        self._bound = None            # (problem token, basis U_r) while bound
        self._perp = None             # A_1 (I - U_r U_r^T) while bound
        self._version = 0             # bumped by every change made through the API

    # -- change tracking -------------------------------------------------------
    @property
    def version(self) -> int:
        """A counter bumped by every change of the weights made through the
        engine's API (a GD step, binding to or unbinding from a problem,
        ``touch()``). ``gd_step`` keeps the single-pass chain of the next step
        between calls only while it is unchanged (and ``_probe`` agrees)."""
        return self._version

    def touch(self) -> None:
        """Declare that the weights were changed outside the API (in place,
        through the private storage): the next ``gd_step`` then rebuilds the
        chain it would otherwise carry over from the previous call.

        Edits that change a probed entry (``PROBE_ENTRIES`` fixed entries per
        layer) or replace a layer array are detected without it.
        """
        self._version += 1

    def _probe(self):
        """A cheap fingerprint of the stored weights: the layer arrays
        themselves (compared by identity), ``PROBE_ENTRIES`` fixed entries of
        every layer, and the scales. Costs one gather, not a weight pass
        (the identity checks run in C: ~10 us at L = 512)."""
        layers = tuple(self._layers)
        stack = self._stack
        stacked = (stack is not None and len(layers) >= 3
                   and all(map(operator.is_, map(_base, layers[1:-1]), itertools.repeat(stack))))
        return layers, stacked, self._gather(layers, stacked), self._log_s.copy(), self._log_beta

    def _gather(self, layers, stacked):
        if stacked:
            mid = self._stack.reshape(-1).take(_stack_probe_index(self._stack.shape))
            parts = [layers[0].take(_probe_index(layers[0].size)), mid,
                     layers[-1].take(_probe_index(layers[-1].size))]
        else:
            parts = [a.take(_probe_index(a.size)) for a in layers]
        return np.concatenate(parts)

    def _probe_matches(self, probe) -> bool:
        """True when nothing ``_probe`` sees changed since ``probe`` was taken."""
        layers, stacked, vals, log_s, log_beta = probe
        now = self._layers
        if len(now) != len(layers) or not all(map(operator.is_, now, layers)):
            return False
        # same array objects, so the stack layout found then still holds
        return (np.array_equal(vals, self._gather(layers, stacked))
                and np.array_equal(log_s, self._log_s) and log_beta == self._log_beta)

    # -- scales -------------------------------------------------------------
    @property
    def scales(self) -> np.ndarray:
        """s_i for i = 1..L (shape (L,)): W_i = s_i A_i."""
        return np.exp(self._log_s)

    @property
    def log_alpha(self) -> float:
        """ln(alpha), exact even where alpha underflows float64."""
        return self._log_beta - float(np.sum(self._log_s))

    @property
    def alpha(self) -> float:
        """The output scale alpha of f(x) = alpha W_{L:1} x.

        For very deep wide nets alpha underflows float64 (1e-1500 at
        m = 1000, L = 1000) and this returns 0.0; ``log_alpha`` stays exact and
        nothing in the engine ever uses alpha directly.
        """
        return float(np.exp(self.log_alpha))

    @property
    def beta(self) -> float:
        """beta = alpha prod_i s_i, the output scale in normalized storage."""
        return float(np.exp(self._log_beta))

    @property
    def hidden_uniform(self) -> bool:
        """True when d_1 = ... = d_{L-1} and the hidden layers share one (L-2, m, m) array."""
        return self._stack is not None

    # -- binding to a problem's reduced data ---------------------------------
    def _bind(self, prob) -> None:
        """Hold layer 1 as B_1 = A_1 U_r for training on ``prob`` (idempotent)."""
        if self._bound is not None and self._bound[0] == prob.token:
            return
        self._unbind()
        widths_match_data(self.widths, prob)
        basis = prob.reduced(self.dtype).basis
        A1 = self._layers[0]
        B1 = A1 @ basis
        self._perp = A1 - B1 @ basis.T
        self._layers[0] = np.ascontiguousarray(B1)
        self._bound = (prob.token, basis)
        self._version += 1

    def _unbind(self) -> None:
        if self._bound is None:
            return
        basis = self._bound[1]
        self._layers[0] = np.ascontiguousarray(self._perp + self._layers[0] @ basis.T)
        self._perp = None
        self._bound = None
        self._version += 1

    def _first_normalized(self) -> np.ndarray:
        """A_1 (d_1, d_0) whether or not the network is bound."""
        if self._bound is None:
            return self._layers[0]
        return self._perp + self._layers[0] @ self._bound[1].T

    def normalized(self) -> list[np.ndarray]:
        """Copies of A_1, ..., A_L (normalized storage, W_i = s_i A_i)."""
        return [self._first_normalized().copy()] + [a.copy() for a in self._layers[1:]]

    # -- paper-convention views ------------------------------------------------
    def weights(self) -> list[np.ndarray]:
        """W_1, ..., W_L in paper convention (float64 copies); W_i has shape (d_i, d_{i-1})."""
        s = self.scales
        out = [s[0] * self._first_normalized().astype(np.float64)]
        out += [s[i] * a.astype(np.float64) for i, a in enumerate(self._layers[1:], start=1)]
        return out

    def end_to_end(self) -> np.ndarray:
        """alpha W_L ... W_1 = beta A_L ... A_1, shape (d_out, d_in), float64.

        Multiplied from the output side, so every intermediate is d_out x d_i:
        O(L m^2 d_out) work and never a raw (overflowing) product.
        """
        first = self._first_normalized().astype(np.float64)
        if self.depth == 1:
            return self.beta * first
        E = self.beta * self._layers[-1].astype(np.float64)
        for a in reversed(self._layers[1:-1]):
            E = E @ a
        E = E @ first
        return np.asarray(E, dtype=np.float64)

    def copy(self) -> "Network":
        """A deep copy (binding included)."""
        layers, stack = _alloc_layers(self.widths, self.dtype)
        for i, (dst, src) in enumerate(zip(layers, self._layers)):
            if i > 0 or self._bound is None:
                dst[...] = src
        net = Network(layers, self._log_s, self._log_beta, init=self.init, seed=self.seed,
                      sigma=self.sigma, dtype=self.dtype, _stack=stack)
        if self._bound is not None:
            net._layers[0] = self._layers[0].copy()
            net._bound = self._bound
            net._perp = self._perp.copy()
        return net

    def nbytes(self) -> int:
        """Bytes of weight storage."""
        total = sum(a.nbytes for a in self._layers)
        if self._perp is not None:
            total += self._perp.nbytes
        return total

    def __repr__(self) -> str:
        w = self.widths
        shown = str(list(w)) if len(w) <= 6 else f"[{w[0]}, {w[1]}, ..., {w[-2]}, {w[-1]}]"
        return (f"Network(widths={shown}, depth={self.depth}, init={self.init!r}, "
                f"dtype={self.dtype}, log_alpha={self.log_alpha:.6g})")


# Entries per layer that ``Network._probe`` compares between two gd_step calls.
PROBE_ENTRIES = 8
_PROBE_CACHE = {}
_base = operator.attrgetter("base")


def _probe_index(size: int) -> np.ndarray:
    """PROBE_ENTRIES fixed flat indices in [0, size): first, last and a
    seeded spread in between (the same for every layer of that size)."""
    idx = _PROBE_CACHE.get(size)
    if idx is None:
        rng = np.random.default_rng(size)
        idx = np.unique(np.concatenate([[0, size - 1],
                                        rng.integers(0, size, PROBE_ENTRIES - 2)])).astype(np.intp)
        _PROBE_CACHE[size] = idx
    return idx


def _stack_probe_index(shape) -> np.ndarray:
    """Flat indices into an (L-2, m, m) hidden stack: ``_probe_index`` of every slice."""
    key = ("stack",) + tuple(shape)
    idx = _PROBE_CACHE.get(key)
    if idx is None:
        m2 = shape[1] * shape[2]
        idx = (np.arange(shape[0], dtype=np.intp)[:, None] * m2 + _probe_index(m2)).ravel()
        _PROBE_CACHE[key] = idx
    return idx


def _alloc_layers(widths, dtype):
    """Allocate A_1..A_L; uniform hidden layers share one contiguous (L-2, m, m) block."""
    L = len(widths) - 1
    layers = [None] * L
    stack = None
    hidden = widths[1:-1]
    if L >= 3 and all(h == hidden[0] for h in hidden):
        m = hidden[0]
        stack = np.empty((L - 2, m, m), dtype=dtype)
        for k in range(L - 2):
            layers[k + 1] = stack[k]
    for i in range(L):
        if layers[i] is None:
            layers[i] = np.empty((widths[i + 1], widths[i]), dtype=dtype)
    return layers, stack
