"""The stepper: a bound (model, problem, backend) that steps a set of active members.

A model is a ``Network`` (one member) or an ``Ensemble`` (K members of one
storage, ``engine.network``). ``Stepper`` validates and binds once -- the
model to the problem's reduced data, a backend and its workspaces -- and then
only steps:

    st = Stepper(net, prob, lr, backend="auto")
    ex, applied = st.step()                    # one member: l(t) - OPT before the step, applied?
    ex, applied = st.step_members(js, lo, hi)  # members js (lists aligned with js)

Backends step the members natively or by a loop:

* ``members-parallel``: one call steps every active member of an ensemble,
  the members spread over the threads. Two kernels: the C one
  (``cblas_backend.Members``; each member on its own one-thread workspace, so
  its weights are bit for bit those of a separate ``cblas`` run) for
  ``backend="cblas"``, and the Numba one (``engine.kernels._numba_members``;
  uniform hidden widths only) for ``backend="numba"``. ``"auto"`` uses one
  when each member is small (<= ``MEMBER_KERNEL_MAX_BYTES``: latency-bound
  networks, where running members in parallel pays), the C kernel first
  (measured 2.0x the throughput of 16 separate runs at m = 32, L = 32, where
  the Numba one gave 0.91x: README, Performance).
* ``sequential``: any single-network backend (``engine.kernels``) steps the
  active members one after another, each on its own workspace, on views of
  the storage: bitwise what separate runs with that backend give. ``"auto"``
  is the single-network choice (``kernels.auto_choice``: measured, or the
  fixed rule), which parallelizes inside each (memory-bound) step.

A step of member j is applied only where its excess is finite and
``lo < excess <= hi[j]``; otherwise its weights are left untouched, so a
caller can stop at a tolerance or refuse an exploding step without losing
the current state.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from . import kernels
from .kernels import _numba_members, threads
from .network import Ensemble, Network, check_net_prob

__all__ = ["Stepper", "MEMBER_KERNEL_MAX_BYTES"]

# Per-member weight bytes up to which ``auto`` runs an ensemble's members in
# parallel with the member-parallel kernel. 4 MiB (m = 128, L = 32 in float64)
# is about the L2 + share of L3 per core: below it a single-network step is
# latency-bound and splitting one step across cores does not pay; above it the
# single-network backends parallelize inside the step.
MEMBER_KERNEL_MAX_BYTES = 4 << 20

_AS_IS = contextlib.nullcontext()


class Stepper:
    """Binds (model, prob, backend) once and runs steps without re-validating.

    Parameters
    ----------
    model : Network or Ensemble   bound to ``prob`` here (layer 1 held as B_1)
    prob : Problem
    lr : float, or a sequence of one per member   W-space learning rate(s)
    backend : "auto", "numpy", "numba" or "cblas"
    form : str, optional          a backend's schedule ("T", "P", "single", ...), for tests

    Attributes
    ----------
    name      the backend that runs ("numba" for the member-parallel kernel)
    schedule  "members-parallel" or "sequential"
    backend   the backend module
    model     the Network or Ensemble stepped
    ws        the backend workspace (a Network's; an ensemble's list of them, or the kernel's)
    size      number of members stepped
    """

    def __init__(self, model, prob, lr, backend: str = "auto", form=None):
        check_net_prob(model, prob, ensemble_ok=True)
        ids = list(range(model.size)) if isinstance(model, Ensemble) else [model._k]
        store = model._store
        engine, self.backend, self.threads = choose(model, prob, backend, form)
        store.bind(prob)
        self.model, self._store, self._ids, self.size = model, store, ids, len(ids)
        red = prob.reduced(store.dtype)
        self.xs, self.yred = red.s, red.targets
        self.beta = [float(np.exp(store.log_beta[k])) for k in ids]
        self._engine = engine(store, ids, prob, self.backend, form)
        self.name, self.schedule = self._engine.name, self._engine.schedule
        self.set_lr(lr)
        # A backend that carries state between steps (the single-pass schedule
        # keeps the chain of the next step) must forget it here: between two
        # calls anything may have changed the weights.
        self.reset()
        self._version = store.versions[ids[0]]

    # -- settings ----------------------------------------------------------------
    def set_lr(self, lr) -> None:
        """W-space learning rate(s): A-space steps c_i = eta / s_i^2 per member."""
        lrs = [lr] * self.size if np.ndim(lr) == 0 else list(lr)
        self.lr = lr
        self.c = [lrs[j] / np.exp(2.0 * self._store.log_s[k]) for j, k in enumerate(self._ids)]
        self._engine.set_steps(self.c, self.beta)

    @property
    def ws(self):
        return self._engine.ws[0] if self._engine.schedule == "sequential" and self.size == 1 else self._engine.ws

    @property
    def version(self):
        """net.version right after this stepper's last applied step (or binding): one member."""
        return self._version

    # -- stepping ----------------------------------------------------------------
    def step(self, lo=-1.0, hi=math.inf):
        """One GD step of a single-member model: (excess before the step, applied)."""
        ex, applied = self.step_members([0], lo, [hi])
        return ex[0], applied[0]

    def excess(self) -> float:
        """l - OPT of a single-member model now (nothing written)."""
        return self.excess_members([0])[0]

    def step_members(self, js, lo=-1.0, hi=None):
        """One GD step of each member in ``js`` (indices 0..size-1; ``hi[j]`` its threshold,
        indexed by member, default inf). Returns lists (excess before, applied) aligned with js."""
        if hi is None:
            hi = [math.inf] * self.size
        with self._limits():
            ex, applied = self._engine.step(js, self.xs, self.yred, lo, hi)
        versions, ids = self._store.versions, self._ids
        for j, a in zip(js, applied):
            if a:
                versions[ids[j]] += 1    # a change through the API (see Network.version)
        self._version = versions[ids[0]]
        return ex, applied

    def excess_members(self, js):
        """l - OPT of each member in ``js`` now (nothing written)."""
        with self._limits(excess=True):
            return self._engine.excess(js, self.xs, self.yred)

    def _limits(self, excess=False):
        if self._engine.schedule == "members-parallel":
            # numba threads run members in parallel and each member calls ?gemm
            return threads.limit(blas=1)
        if self.threads is None or excess:
            return _AS_IS                 # thread settings left as they are
        return kernels.thread_limits(self.backend, self.threads)   # auto's measured count (restored after)

    def reset(self, js=None) -> None:
        """Forget the chains carried between steps (of members ``js``, default all): the
        next step rebuilds them from the weights, bit for bit (see the backends)."""
        self._engine.reset(range(self.size) if js is None else js)

    # -- schedule state carried between steps (checkpoints, snapshots) ------------
    def schedule_state(self, j=0):
        """Member j's schedule state carried between steps (JSON-able), or None.

        A backend may define ``get_state(ws)`` / ``set_state(ws, state)``;
        without them an integer ``ws.phase`` (the sweep direction of an
        alternating single-pass schedule) is what a resumed run needs to take
        the same rounding path as the uninterrupted one (the carried chain
        itself is rebuilt bit for bit after ``reset``).
        """
        ws = self._member_ws(j)
        if ws is None:
            return None
        get = getattr(self.backend, "get_state", None)
        if get is not None:
            return get(ws)
        phase = getattr(ws, "phase", None)
        if isinstance(phase, (int, np.integer)) and not isinstance(phase, bool):
            return {"phase": int(phase)}
        return None

    def _member_ws(self, j):
        """Member j's own single-network workspace, or None (the Numba member kernel's shared one)."""
        if self._engine.schedule == "sequential":
            return self._engine.ws[j]
        member_ws = getattr(self._engine, "member_ws", None)
        return None if member_ws is None else member_ws(j)

    def set_schedule_state(self, j, state) -> None:
        ws = self._member_ws(j)
        if state is None or ws is None:
            return
        put = getattr(self.backend, "set_state", None)
        if put is not None:
            put(ws, state)
        elif "phase" in state and hasattr(ws, "phase"):
            ws.phase = int(state["phase"])


def choose(model, prob, backend="auto", form=None):
    """(how, backend module, threads) a Stepper runs for ``model`` on ``prob``: the member-parallel
    kernel or a loop, the backend (its ``name`` is what results report) and auto's measured
    thread count (None: thread settings left as they are). Raises ValueError naming ``backend``
    for an unknown name and BackendUnavailable for one that cannot run here."""
    store = model._store
    if isinstance(model, Ensemble) and form is None:
        how = _members_parallel(store, backend)
        if how is not None:
            return how
    if backend == "auto" and form is None:
        name, threads, _ = kernels.auto_choice(store.widths, prob.rank, store.dtype)
        return _Sequential, kernels.get(name), threads
    return _Sequential, kernels.get(backend, shape=(store.widths, prob.rank)), None


def _members_parallel(store, backend):
    """The (engine, backend module, threads) that runs an ensemble on ``store`` in one call
    per step with ``backend``, or None: its members then run one after another."""
    small = sum(a.nbytes for a in store.layers[0]) <= MEMBER_KERNEL_MAX_BYTES
    cblas = kernels.availability().get("cblas", (False, ""))[0]
    if backend == "cblas" or (backend == "auto" and small and cblas):
        if cblas:
            return _CMembers, kernels.get("cblas"), None
        return None                         # kernels.get raises, naming the backend
    if backend not in ("numba", "auto") or not _numba_members.shape_ok(store.widths):
        return None
    if backend == "numba":
        if not _numba_members.available:
            raise kernels.BackendUnavailable(f"backend: 'numba' is unavailable: {_numba_members.reason}")
        return _MembersParallel, _numba_members, None
    if _numba_members.available and small:
        return _MembersParallel, _numba_members, None
    return None


class _Sequential:
    """Members stepped one after another by a single-network backend, each on its own workspace."""

    schedule = "sequential"

    def __init__(self, store, ids, prob, backend, form):
        self.name = backend.name
        self.backend = backend
        self.layers = [store.layers[k] for k in ids]
        key = ("loop", backend.name, prob.token, form, store.dtype, tuple(ids))
        cached = store.workspace
        if cached is not None and cached[0] == key:
            self.ws = cached[1]
        else:
            self.ws = [backend.workspace(lay, prob.rank, prob.d_out, store.dtype, form) for lay in self.layers]
            store.workspace = (key, self.ws)
        self._reset = getattr(backend, "reset", None)

    def set_steps(self, c, beta):
        self.c, self.beta = c, beta

    def step(self, js, xs, yred, lo, hi):
        step, layers, ws, c, beta = self.backend.step, self.layers, self.ws, self.c, self.beta
        ex, applied = [], []
        for j in js:
            e, a = step(layers[j], c[j], beta[j], xs, yred, ws[j], lo, hi[j])
            ex.append(e)
            applied.append(a)
        return ex, applied

    def excess(self, js, xs, yred):
        return [self.backend.excess(self.layers[j], self.beta[j], xs, yred, self.ws[j]) for j in js]

    def reset(self, js):
        if self._reset is not None:
            for j in js:
                self._reset(self.ws[j])


class _CMembers:
    """Every active member stepped in one call of the C kernel (``cblas_backend.Members``):
    members over the threads, each on its own one-thread workspace, bit for bit a separate
    ``cblas`` run of that member (the C kernel's bits do not depend on its thread count)."""

    schedule = "members-parallel"

    def __init__(self, store, ids, prob, backend, form):
        self.name, self.backend = backend.name, backend
        self.layers = [store.layers[k] for k in ids]
        key = ("c-members", prob.token, form, store.dtype, tuple(ids))
        cached = store.workspace
        if cached is not None and cached[0] == key:
            self.ws = cached[1]
        else:
            self.ws = backend.members(self.layers, prob.rank, prob.d_out, store.dtype, form)
            store.workspace = (key, self.ws)
        self.active = np.zeros(len(ids), dtype=bool)

    def member_ws(self, j):
        return self.ws.workspaces[j]

    def set_steps(self, c, beta):
        self.c, self.beta = c, beta

    def step(self, js, xs, yred, lo, hi):
        self.active[:] = False
        self.active[js] = True
        ex, applied = self.ws.step(self.layers, self.c, self.beta, xs, yred, lo, hi, self.active)
        return [float(ex[j]) for j in js], [bool(applied[j]) for j in js]

    def excess(self, js, xs, yred):
        return [self.backend.excess(self.layers[j], self.beta[j], xs, yred, self.ws.workspaces[j]) for j in js]

    def reset(self, js):
        for j in js:
            self.backend.reset(self.ws.workspaces[j])


class _MembersParallel:
    """Every active member of an ensemble stepped in one call of the member-parallel kernel."""

    name = "numba"
    schedule = "members-parallel"

    def __init__(self, store, ids, prob, backend, form):
        K, m, dt = store.size, store.widths[1], store.dtype
        form = kernels.numpy_backend.choose_form(prob.rank, prob.d_out)
        key = ("members", prob.token, form, dt)
        cached = store.workspace
        if cached is not None and cached[0] == key:
            self.ws = cached[1]
        else:
            self.ws = _numba_members.workspace(K, store.widths, prob.rank, prob.d_out, dt, form)
            store.workspace = (key, self.ws)
        self.B1, self.Lw = store.blocks[0], store.blocks[-1]
        self.H = store.hidden if store.hidden is not None else np.empty((K, 0, m, m), dtype=dt)
        self.dtype = dt
        self.active = np.zeros(K, dtype=np.bool_)
        self.hi = np.empty(K)

    def set_steps(self, c, beta):
        self.c = np.ascontiguousarray(np.stack(c), dtype=self.dtype)
        self.beta = np.ascontiguousarray(beta, dtype=self.dtype)

    def _run(self, js, xs, yred, lo, hi):
        self.active[:] = False
        self.active[js] = True
        self.hi[:] = hi
        _numba_members.step(self.B1, self.H, self.Lw, self.c, self.beta, xs, yred, self.ws, lo, self.hi,
                            self.active)
        ex, applied = self.ws.ex, self.ws.applied
        return [float(ex[j]) for j in js], [bool(applied[j]) for j in js]

    def step(self, js, xs, yred, lo, hi):
        return self._run(js, xs, yred, lo, hi)

    def excess(self, js, xs, yred):
        return self._run(js, xs, yred, -1.0, -math.inf)[0]   # hi = -inf: compute, apply nothing

    def reset(self, js):
        pass                                                   # two-pass: nothing carried
