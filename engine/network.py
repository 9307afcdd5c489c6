"""Deep linear networks stored in normalized weights, with a member axis.

Paper convention: W_i in R^{d_i x d_{i-1}}, f(x) = alpha W_L ... W_1 x
(DH eq. 1, HXP eq. 1). With N(0, 1)-sized entries the raw product W_{L:1}
grows like m^{L/2} and overflows float64 long before L = 1000, so networks
are stored as (docs/design.md, "Normalized weights")

    A_i = W_i / s_i,   s_i = sqrt(d_i) sigma_i,   beta = alpha prod_i s_i,

so that alpha W_{L:1} = beta A_{L:1} with every factor O(1). GD on W with
step eta is GD on A with per-layer step eta / s_i^2 -- the same trajectory.
Scales are kept as logarithms (log s_i, log beta) so that alpha itself, which
is 1e-1500 at m = 1000, L = 1000, never has to be represented.

One storage, two views. ``Storage`` holds K >= 1 networks of the same widths
and dtype, member axis first; a ``Network`` is one member of a storage (a
network on its own is the K = 1 case) and an ``Ensemble`` is all members of
one. Layer allocation, the scales, and binding to a problem live here only.

While a storage is being trained on a Problem it is *bound* to it: layer 1 of
every member is held as B_1 = A_1 U_r (d_1 x r) plus the frozen component
A_1 (I - U_r U_r^T), which GD never changes (docs/design.md, "Data
reduction"). All public views reconstruct A_1 = B_1 U_r^T + A_1 (I - U_r U_r^T).
"""
from __future__ import annotations

import itertools
import operator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _draw, memory
from ._validate import nonempty_list, seed_value, widths_match_data
from .problem import Problem

__all__ = ["Storage", "Network", "Ensemble", "check_net_prob", "PROBE_ENTRIES"]


class Storage:
    """K same-shape deep linear networks in normalized storage, member axis first.

    Attributes
    ----------
    widths, depth, dtype, size (K)
    blocks   L arrays (K, d_i, d_{i-1}): layer i of every member; blocks[0] is
             B_1 (K, d_1, r) while bound
    hidden   (K, L-2, m, m) C-contiguous, blocks[1:-1] its slices, when the
             hidden widths are uniform and L >= 3; else None
    layers   K lists: member k's layers M_1..M_L, 2-D C-contiguous views of the
             blocks -- what the backends step. With uniform hidden widths,
             layers[k][1:-1] are slices of stacks[k], a (L-2, m, m) view of
             hidden[k] that is its own ``base`` (a backend can pass it whole)
    log_s (K, L), log_beta (K,)       log s_i and log beta of every member
    inits, seeds, sigmas              per member: init name, seed, sigma_i (or None)
    bound    (problem token, basis U_r) while bound, else None
    perp     (K, d_1, d_0) A_1 (I - U_r U_r^T) while bound, else None
    versions K counters bumped by every change made through the API
    workspace  (key, workspace) of the last ``engine.stepper.Stepper``, or None
    """

    def __init__(self, widths, size: int, dtype, first_cols=None):
        """Allocate (uninitialized) layers for ``size`` members; ``first_cols``: columns
        of the first layer (r for a bound first layer, default d_0)."""
        widths = tuple(int(w) for w in widths)
        L, K, dt = len(widths) - 1, int(size), np.dtype(dtype)
        hid = widths[1:-1]
        hidden = None
        if L >= 3 and all(h == hid[0] for h in hid):
            hidden = np.empty((K, L - 2, hid[0], hid[0]), dtype=dt)
        blocks = []
        for i in range(L):
            if hidden is not None and 0 < i < L - 1:
                blocks.append(hidden[:, i - 1])
            else:
                cols = widths[i] if i > 0 or first_cols is None else int(first_cols)
                blocks.append(np.empty((K, widths[i + 1], cols), dtype=dt))
        self._setup(widths, K, dt, blocks, hidden)
        for k in range(K):
            layers = [b[k] for b in blocks]
            if hidden is not None:
                stack = as_strided(hidden[k], hidden[k].shape, hidden[k].strides)
                layers[1:-1] = list(stack)
                self.stacks[k] = stack
            self.layers[k] = layers

    @classmethod
    def wrap(cls, layers, stack=None, dtype=None) -> "Storage":
        """A one-member storage around existing 2-D layer arrays (no copy); ``stack``:
        the (L-2, m, m) array whose slices are layers[1:-1], if there is one."""
        layers = list(layers)
        widths = (layers[0].shape[1],) + tuple(a.shape[0] for a in layers)
        st = cls.__new__(cls)
        hidden = None if stack is None else stack[None]
        st._setup(widths, 1, np.dtype(dtype if dtype is not None else layers[0].dtype),
                  [a[None] for a in layers], hidden)
        st.layers[0], st.stacks[0] = layers, stack
        return st

    def _setup(self, widths, K, dtype, blocks, hidden):
        self.widths, self.depth, self.size, self.dtype = widths, len(widths) - 1, K, dtype
        self.blocks, self.hidden = blocks, hidden
        self.layers, self.stacks = [None] * K, [None] * K
        self.log_s = np.zeros((K, self.depth))
        self.log_beta = np.zeros(K)
        self.inits, self.seeds, self.sigmas = ["custom"] * K, [None] * K, [None] * K
        self.bound = None
        self.perp = None
        self.versions = [0] * K
        self.workspace = None

    def set_member(self, k, log_s, log_beta, *, init="custom", seed=None, sigma=None) -> None:
        self.log_s[k] = log_s
        self.log_beta[k] = log_beta
        self.inits[k], self.seeds[k] = init, seed
        self.sigmas[k] = None if sigma is None else np.asarray(sigma, dtype=np.float64).copy()

    @classmethod
    def drawn(cls, draw: "_draw.Draw") -> "Storage":
        """The members of an init (``engine._draw``): memory checked (InsufficientMemory, a
        MemoryError, when they would not fit), allocated once, member k drawn from
        ``default_rng(seeds[k])``."""
        K = len(draw.seeds)
        memory.check(draw.widths, draw.dtype, ensemble=K)
        store = cls(draw.widths, K, draw.dtype)
        for k, seed in enumerate(draw.seeds):
            draw.draw(np.random.default_rng(seed_value(seed)) if draw.rngs else None, store.layers[k])
            store.set_member(k, draw.log_s, draw.log_beta, init=draw.init, seed=seed, sigma=draw.sigma)
        return store

    @classmethod
    def collect(cls, members) -> "Storage":
        """A new storage holding copies of ``members``, a list of (storage, k) pairs of
        the same widths and dtype. If every source is bound to the same problem the
        bound state is copied as is (training the copy continues each run exactly);
        otherwise first layers are copied as A_1."""
        src0, k0 = members[0]
        tokens = {None if s.bound is None else s.bound[0] for s, _ in members}
        keep_bound = len(tokens) == 1 and None not in tokens
        r = src0.layers[k0][0].shape[1] if keep_bound else None
        out = cls(src0.widths, len(members), src0.dtype, first_cols=r)
        for j, (src, k) in enumerate(members):
            first = src.layers[k][0] if keep_bound else src.first_normalized(k)
            for i, (dst, a) in enumerate(zip(out.layers[j], src.layers[k])):
                dst[...] = first if i == 0 else a
            out.set_member(j, src.log_s[k], src.log_beta[k], init=src.inits[k], seed=src.seeds[k],
                           sigma=src.sigmas[k])
        if keep_bound:
            out.perp = np.empty((len(members),) + src0.perp.shape[1:], dtype=src0.dtype)
            for j, (src, k) in enumerate(members):
                out.perp[j] = src.perp[k]
            out.bound = src0.bound
        return out

    # -- binding to a problem's reduced data (the bound-first-layer invariant) ----
    def bind(self, prob) -> None:
        """Hold layer 1 of every member as B_1 = A_1 U_r for training on ``prob`` (idempotent)."""
        if self.bound is not None and self.bound[0] == prob.token:
            return
        self.unbind()
        widths_match_data(self.widths, prob)
        basis = prob.reduced(self.dtype).basis
        K, (d1, d0) = self.size, self.blocks[0].shape[1:]
        B = np.empty((K, d1, basis.shape[1]), dtype=self.dtype)
        perp = np.empty((K, d1, d0), dtype=self.dtype)
        for k in range(K):          # 2-D products member by member: bitwise the same for any K
            A1 = self.layers[k][0]
            Bk = A1 @ basis
            perp[k] = A1 - Bk @ basis.T
            B[k] = Bk
        self._set_first(B)
        self.perp = perp
        self.bound = (prob.token, basis)

    def unbind(self) -> None:
        if self.bound is None:
            return
        basis = self.bound[1]
        A1 = np.empty_like(self.perp)
        for k in range(self.size):
            A1[k] = self.perp[k] + self.layers[k][0] @ basis.T
        self._set_first(A1)
        self.perp = None
        self.bound = None

    def restore_bound(self, prob, perp) -> None:
        """Declare the first layers, which already hold B_1 = A_1 U_r, bound to ``prob`` with the
        frozen components ``perp`` (K, d_1, d_0): how a checkpoint's bound state comes back."""
        self.perp = np.ascontiguousarray(perp, dtype=self.dtype)
        self.bound = (prob.token, prob.reduced(self.dtype).basis)

    def _set_first(self, block) -> None:
        self.blocks[0] = block
        for k in range(self.size):
            self.layers[k][0] = block[k]
            self.versions[k] += 1

    def first_normalized(self, k) -> np.ndarray:
        """A_1 (d_1, d_0) of member k whether or not the storage is bound."""
        if self.bound is None:
            return self.layers[k][0]
        return self.perp[k] + self.layers[k][0] @ self.bound[1].T

    def member_nbytes(self, k) -> int:
        """Bytes of member k's weights (its frozen first-layer component included)."""
        total = sum(a.nbytes for a in self.layers[k])
        return total + (self.perp[k].nbytes if self.perp is not None else 0)


def check_net_prob(net, prob, ensemble_ok: bool = False) -> None:
    """TypeError naming ``net`` / ``prob`` unless they are a Network (or, with
    ``ensemble_ok``, an Ensemble) and a Problem; ValueError naming ``widths``
    unless the widths fit the data."""
    if not isinstance(net, (Network, Ensemble) if ensemble_ok else Network):
        what = "Network or Ensemble" if ensemble_ok else "Network"
        raise TypeError(f"net: must be an engine {what}, got {type(net).__name__}")
    if not isinstance(prob, Problem):
        raise TypeError(f"prob: must be an engine.Problem, got {type(prob).__name__}")
    widths_match_data(net.widths, prob)


def _shown(widths) -> str:
    return str(list(widths)) if len(widths) <= 6 else f"[{widths[0]}, {widths[1]}, ..., {widths[-2]}, {widths[-1]}]"


class Network:
    """A deep linear network f(x) = alpha W_L ... W_1 x in normalized storage.

    Build one with ``engine.init.gaussian``, ``engine.init.orthogonal``,
    ``engine.init.identity`` or ``engine.init.from_weights``; the constructor
    is internal. A Network is member ``k`` of a ``Storage`` (its own, K = 1,
    unless it is a view of an ensemble member: ``Ensemble.view``).

    Attributes
    ----------
    widths : tuple[int, ...]   [d_0, ..., d_L]
    depth  : int               L
    dtype  : numpy.dtype       storage dtype (float64 or float32)
    init   : str               "gaussian", "orthogonal", "identity", "identity+noise" or "custom"
    seed, sigma                the init's seed and per-layer sigma_i (None where not given)
    """

    def __init__(self, layers, log_s, log_beta: float, *, init: str = "custom",
                 seed=None, sigma=None, dtype=np.float64, _stack=None):
        """Wrap existing layer arrays A_1..A_L (no copy); ``_stack``: the (L-2, m, m)
        array backing the hidden layers, or None."""
        store = Storage.wrap(layers, _stack, dtype)
        store.set_member(0, np.asarray(log_s, dtype=np.float64), float(log_beta), init=init, seed=seed,
                         sigma=sigma)
        self._store, self._k = store, 0
        self._gd = None               # gd_step's bound stepper, kept between calls (engine.train.gd_step)

    @classmethod
    def _view(cls, store: Storage, k: int = 0) -> "Network":
        """Member k of ``store`` as a Network (shares the storage)."""
        net = cls.__new__(cls)
        net._store, net._k, net._gd = store, int(k), None
        return net

    # -- the member's storage --------------------------------------------------
    widths = property(lambda self: self._store.widths)
    depth = property(lambda self: self._store.depth)
    dtype = property(lambda self: self._store.dtype)
    init = property(lambda self: self._store.inits[self._k])
    seed = property(lambda self: self._store.seeds[self._k])
    sigma = property(lambda self: self._store.sigmas[self._k])
    _layers = property(lambda self: self._store.layers[self._k], doc="M_1..M_L (M_1 = B_1 while bound)")
    _stack = property(lambda self: self._store.stacks[self._k], doc="(L-2, m, m) hidden stack or None")
    _log_s = property(lambda self: self._store.log_s[self._k], doc="log s_i, (L,) (a view)")
    _bound = property(lambda self: self._store.bound)
    _perp = property(lambda self: None if self._store.perp is None else self._store.perp[self._k])

    @property
    def _log_beta(self) -> float:
        return float(self._store.log_beta[self._k])

    @_log_beta.setter
    def _log_beta(self, value) -> None:
        self._store.log_beta[self._k] = value

    @property
    def _version(self) -> int:
        return self._store.versions[self._k]

    @property
    def _ws(self):
        """(key, backend workspace) cached by the last Stepper on this network, or None."""
        cached = self._store.workspace
        if cached is None or cached[0][0] != "loop" or cached[0][-1] != (self._k,):
            return None
        return cached[0], cached[1][0]

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
        self._store.versions[self._k] += 1

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

    # -- binding (of the whole storage) ------------------------------------------
    def _bind(self, prob) -> None:
        """Hold layer 1 as B_1 = A_1 U_r for training on ``prob`` (idempotent)."""
        self._store.bind(prob)

    def _unbind(self) -> None:
        self._store.unbind()

    def _first_normalized(self) -> np.ndarray:
        """A_1 (d_1, d_0) whether or not the network is bound."""
        return self._store.first_normalized(self._k)

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
        layers = self._layers
        E = self.beta * layers[-1].astype(np.float64)
        for a in reversed(layers[1:-1]):
            E = E @ a
        E = E @ first
        return np.asarray(E, dtype=np.float64)

    def copy(self) -> "Network":
        """A deep copy (binding included), in a storage of its own."""
        return Network._view(Storage.collect([(self._store, self._k)]))

    def nbytes(self) -> int:
        """Bytes of weight storage."""
        return self._store.member_nbytes(self._k)

    def __repr__(self) -> str:
        return (f"Network(widths={_shown(self.widths)}, depth={self.depth}, init={self.init!r}, "
                f"dtype={self.dtype}, log_alpha={self.log_alpha:.6g})")


class Ensemble:
    """K deep linear networks with the same widths and dtype, stacked (one Storage).

    Build with ``engine.init.gaussian(widths, seed, ensemble=K)`` (and
    ``orthogonal``, ``identity``), ``Ensemble.gaussian``, ``Ensemble.orthogonal``
    or ``Ensemble.from_networks``. Member k is exactly the network the
    corresponding ``engine.init`` call (or the k-th given network) gives.

    Attributes
    ----------
    widths : tuple[int, ...]   [d_0, ..., d_L]
    depth  : int               L
    size   : int               K, the number of members (also ``len(ens)``)
    dtype  : numpy.dtype
    inits  : tuple[str, ...]   init name of each member
    seeds  : tuple             seed of each member (None where unknown)
    hidden : ndarray or None   (K, L-2, m, m) C-contiguous hidden layers A_2..A_{L-1}
                               when the hidden widths are uniform and L >= 3
    """

    def __init__(self, store: Storage):
        self._store = store

    # -- construction ----------------------------------------------------------
    @classmethod
    def gaussian(cls, widths, seeds=range(8), sigma=None, alpha=None, *, dtype=np.float64) -> "Ensemble":
        """Members ``engine.init.gaussian(widths, seed=s, sigma=sigma, alpha=alpha)`` for s in ``seeds``."""
        return cls(Storage.drawn(_draw.gaussian(widths, _seed_list(seeds), sigma, alpha, dtype)))

    @classmethod
    def orthogonal(cls, widths, seeds=range(8), alpha=None, *, dtype=np.float64) -> "Ensemble":
        """Members ``engine.init.orthogonal(widths, seed=s, alpha=alpha)`` for s in ``seeds``."""
        return cls(Storage.drawn(_draw.orthogonal(widths, _seed_list(seeds), alpha, dtype)))

    @classmethod
    def from_networks(cls, nets) -> "Ensemble":
        """An ensemble holding copies of ``nets`` (same widths and dtype).

        If every network is bound to the same Problem (as after
        ``engine.train``), the bound state is copied as is, so that training
        the ensemble continues each run exactly as training that network
        would.
        """
        nets = nonempty_list(nets, "nets", "engine Networks", "network")
        for k, n in enumerate(nets):
            if not isinstance(n, Network):
                raise TypeError(f"nets[{k}]: must be an engine Network, got {type(n).__name__}")
            if n.widths != nets[0].widths:
                raise ValueError(f"nets[{k}]: widths {list(n.widths)} differ from nets[0]'s {list(nets[0].widths)}")
            if n.dtype != nets[0].dtype:
                raise ValueError(f"nets[{k}]: dtype {n.dtype} differs from nets[0]'s {nets[0].dtype}")
        return cls(Storage.collect([(n._store, n._k) for n in nets]))

    # -- the storage -------------------------------------------------------------
    widths = property(lambda self: self._store.widths)
    depth = property(lambda self: self._store.depth)
    size = property(lambda self: self._store.size)
    dtype = property(lambda self: self._store.dtype)
    hidden = property(lambda self: self._store.hidden)
    inits = property(lambda self: tuple(self._store.inits))
    seeds = property(lambda self: tuple(self._store.seeds))
    _sigmas = property(lambda self: self._store.sigmas)
    _layers = property(lambda self: self._store.blocks, doc="L arrays (K, d_i, d_{i-1})")
    _log_s = property(lambda self: self._store.log_s)
    _log_beta = property(lambda self: self._store.log_beta)
    _bound = property(lambda self: self._store.bound)
    _perp = property(lambda self: self._store.perp)

    def __len__(self) -> int:
        return self.size

    def member(self, k: int) -> Network:
        """Member k as an independent Network (a copy; binding included).

        The copy is bitwise what a separate ``engine.train`` run would hold:
        if the ensemble is bound to a problem, so is the copy.
        """
        return Network._view(Storage.collect([(self._store, _index(k, self.size))]))

    def members(self) -> list[Network]:
        """All members as independent Networks (copies, see ``member``)."""
        return [self.member(k) for k in range(self.size)]

    def view(self, k: int) -> Network:
        """Member k as a Network sharing this ensemble's storage (no copy): changing
        one changes the other, and binding it binds every member."""
        return Network._view(self._store, _index(k, self.size))

    @property
    def hidden_uniform(self) -> bool:
        return self.hidden is not None

    @property
    def scales(self) -> np.ndarray:
        """(K, L) scales s_i of every member (W_i = s_i A_i)."""
        return np.exp(self._log_s)

    @property
    def log_alpha(self) -> np.ndarray:
        """(K,) ln(alpha) of every member."""
        return self._log_beta - self._log_s.sum(axis=1)

    def nbytes(self) -> int:
        """Bytes of weight storage (all members)."""
        return sum(self._store.member_nbytes(k) for k in range(self.size))

    def member_nbytes(self) -> int:
        """Bytes of one member's trained weights (bound first layer if bound)."""
        return sum(a.nbytes for a in self._store.layers[0])

    def _bind(self, prob) -> None:
        self._store.bind(prob)

    def _unbind(self) -> None:
        self._store.unbind()

    def __repr__(self) -> str:
        inits = sorted(set(self.inits))
        return (f"Ensemble(size={self.size}, widths={_shown(self.widths)}, depth={self.depth}, "
                f"init={inits[0] if len(inits) == 1 else inits}, dtype={self.dtype})")


def _seed_list(seeds):
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        raise TypeError(f"seeds: must be a sequence of seeds (e.g. range({seeds})), got the integer {seeds!r}")
    return nonempty_list(seeds, "seeds", "seeds", "seed")


def _index(k, K):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: must be an integer, got {k!r}")
    k = int(k)
    if not -K <= k < K:
        raise IndexError(f"k: member index {k} out of range for an ensemble of {K}")
    return k % K


def _alloc_layers(widths, dtype):
    """Layers A_1..A_L of one new network and the (L-2, m, m) hidden stack (or None),
    uninitialized: ``Network(layers, ..., _stack=stack)`` wraps them (bench/ builds nets so)."""
    st = Storage(widths, 1, dtype)
    return st.layers[0], st.stacks[0]


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
