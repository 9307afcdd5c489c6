"""The ``cblas`` backend: the whole GD step in one call of a C kernel (csrc/).

Same semantics as ``numpy_backend`` (the oracle; see its docstring for the
notation): P form for r < d_out, T form otherwise; every layer in one C call;
the update is written only if the excess before the step is finite and
``lo < excess <= hi``, otherwise no weight is touched; the excess before the
step is returned.

The kernel (csrc/dln_step_impl.h) calls no BLAS (the name is historical):
every product is a register-blocked micro-kernel, vectorized for the CPU it
was built on, that does all the work touching one tile of a layer while the
tile is in registers and L1. It has both schedules of docs/design.md ("The
step schedule"):

* ``two-pass`` (3 weight passes): a read-only pass computes one chain and
  the residual, then a fused read-write pass advances the other chain from
  each OLD tile and applies the rank-d_out (T form) or rank-r (P form)
  update to that tile.
* ``single-pass`` (2 weight passes): sweeps alternate direction; per tile,
  advance the old chain, apply the update, advance the next step's chain from
  the new tile. The chain and residual of the next step are kept in the
  workspace between calls (``reset`` forgets them); the first step after a
  reset pays one read-only pass. ``get_state`` / ``set_state`` carry the
  sweep direction through a checkpoint, and the rebuilt chain is computed by
  the same micro-kernels as the sweep, so a resumed run is bit for bit the same.

``SCHEDULE`` picks the schedule of new workspaces ("auto": by cost, see
``choose_schedule``); an explicit ``form`` ("P"/"T") asks for the two-pass
schedule in that form.

It is built by ``setup.py`` through cffi; when that build failed (or was
skipped) the backend reports ``available = False`` and ``reason`` says why,
distinguishing "not built" from "built but failed to load" and from "built
for another CPU".

Parallelism: when the extension was built with OpenMP (``openmp_threads`` >
0), each sweep runs in one parallel region; a layer of at least
``PAR_MIN`` weights is split into disjoint row ranges (T, P chains) or
column ranges (S chains) -- no reductions, and every number computed by the
same code whatever the split, so the result does not depend on the thread
count at all -- with one barrier per split layer. The most threads a step
may use is OpenMP's limit (OMP_NUM_THREADS / threadpoolctl's "openmp"
limit); below it, ``ThreadChooser`` (``engine.kernels._threads``) picks
each step's count from the measured times of the previous steps, so a core
taken by another process makes the kernel fall back to one thread instead
of waiting at every barrier. ``Workspace.threads`` fixes the count instead.

float64 and float32. The wrapper checks dtype, C-contiguity, writability
and shapes of every array before any pointer goes to C, and raises
TypeError / ValueError naming the argument otherwise.
"""
from __future__ import annotations

import math
import operator
import os
import time

import numpy as np

from ._threads import ThreadChooser
from .numpy_backend import choose_form

name = "cblas"

# Target bytes of one tile of a layer in a sweep (bottom-up: 8 rows x a
# k-chunk; top-down: rows x one 2-vector column strip): it and the chain
# slices it meets must stay in L1 (32-48 KiB on the machines we measure).
BLOCK_BYTES = 16 * 1024

# Layers with fewer weights run on one thread (csrc/dln_step.c, DLN_PAR_MIN).
PAR_MIN = 32768

_MODULE = f"{__package__}._cblas"
_BUILD_ERROR_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cblas_build_error.txt")

_FORM_CODE = {"P": 0, "T": 1}
SCHEDULES = ("two-pass", "single-pass")

# Schedule of workspaces built with form=None: "auto" (``choose_schedule``),
# or one of SCHEDULES.
SCHEDULE = "auto"

# The single-pass schedule stores the prefix chain (L x d_i x r numbers) and
# builds it in every other sweep at r multiply-adds per weight; beyond this
# rank (or r > 2 d_out) the two-pass form is cheaper.
SINGLE_MAX_RANK = 64


def choose_schedule(r: int, d_out: int) -> str:
    """Multiply-adds per weight and step: two-pass 3 d_out (T form) or
    d_out + 2r (P form) over 3 weight passes; single-pass 2 d_out +
    (r + min(r, d_out)) / 2 over 2 passes. Single-pass whenever it costs at
    most ~1.4x the arithmetic (r <= 2 d_out): the pass it saves is worth more
    whenever the weights stream from memory."""
    if r <= SINGLE_MAX_RANK and r <= 2 * d_out:
        return "single-pass"
    return "two-pass"


def _not_built_reason() -> str:
    why = "no C compiler or Python headers at install time, or installed without building extensions"
    try:
        with open(_BUILD_ERROR_FILE) as fh:
            why = "the build failed: " + fh.read().strip()
    except OSError:
        pass
    return (f"the C extension {_MODULE} was not built ({why}); install a C compiler and "
            "reinstall engine (pip install -e .) to enable it")


def _load():
    """(ffi, lib, reason); reason is "" on success."""
    import importlib
    try:
        # import_module, not "from . import": during the package's own import
        # a missing submodule must surface as ModuleNotFoundError naming it.
        _cblas = importlib.import_module(_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == _MODULE:
            return None, None, _not_built_reason()
        return None, None, f"the C extension {_MODULE} was built but failed to load: {exc}"
    except Exception as exc:  # ImportError from the loader, wrong ABI, missing symbol ...
        return None, None, (f"the C extension {_MODULE} was built but failed to load: "
                            f"{type(exc).__name__}: {exc}")
    lib = _cblas.lib
    if not lib.dln_cpu_ok():
        isa = _cblas.ffi.string(lib.dln_build_isa()).decode()
        return None, None, (f"the C extension {_MODULE} was built for a CPU with {isa}, which this "
                            "CPU lacks; rebuild it here (pip install -e ., or "
                            "ENGINE_CBLAS_NATIVE=0 for a portable build)")
    return _cblas.ffi, lib, ""


ffi, lib, reason = _load()
available = not reason
# Threads the kernel's parallel sweeps may use at import (0 = built without
# OpenMP); each call asks again, so OMP_NUM_THREADS / threadpoolctl limits
# set later are honoured (up to this count, which workspaces are sized for).
openmp_threads = int(lib.dln_openmp_threads()) if available else 0
# Instruction set and vector width the kernels were compiled for.
isa = ffi.string(lib.dln_build_isa()).decode() if available else ""
vector_bytes = int(lib.dln_vector_bytes()) if available else 0

_CTYPE = {np.dtype(np.float64): "double", np.dtype(np.float32): "float"}


class Workspace:
    """Scratch for one (layer shapes, r, d_out, dtype, form), plus cached pointers.

    The C kernel never allocates: its scratch (the chains, the residual, the
    ping-pong buffers of the sweeps and per-thread buffers for up to
    ``max_threads`` threads; ``dln_work_size`` in csrc) is one array
    allocated here. Pointers to the layers, ``c``, ``xs`` and
    ``yred`` are built (after checking each array) the first time they are
    seen and reused while the same array objects are passed, so a step costs
    O(1) Python work plus one identity check of the layer list.

    ``threads``: None (default) lets ``ThreadChooser`` pick each step's
    thread count between 1 and OpenMP's current limit; an int fixes it.
    """

    def __init__(self, shapes, r, d_out, dtype, form, schedule="two-pass", max_threads=None):
        dtype = np.dtype(dtype)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {SCHEDULES}, got {schedule!r}")
        if dtype not in _CTYPE:
            raise TypeError(f"dtype: the cblas backend supports float64 and float32, got {dtype}")
        if form not in _FORM_CODE:
            raise ValueError(f"form: must be 'P', 'T' or None, got {form!r}")
        r, d_out = int(r), int(d_out)
        L = len(shapes)
        if L < 1:
            raise ValueError("layers: a network needs at least one layer")
        widths = [r] + [int(s[0]) for s in shapes]
        for i, shp in enumerate(shapes):
            if tuple(shp) != (widths[i + 1], widths[i]):
                raise ValueError(f"layers: layer {i} has shape {tuple(shp)}, expected "
                                 f"({widths[i + 1]}, {widths[i]}) (layer 0 is B_1 = A_1 U_r, d_1 x r)")
        if widths[-1] != d_out:
            raise ValueError(f"layers: the last layer has {widths[-1]} rows, expected d_out = {d_out}")
        if min(widths) < 1:
            raise ValueError(f"layers: every width must be >= 1, got {widths}")
        self.form = form                 # two-pass chain form; single-pass alternates
        self.schedule = schedule
        self.dtype = dtype
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.r, self.d_out, self.L = r, d_out, L
        self._block_bytes = int(BLOCK_BYTES)
        self._ctype = _CTYPE[dtype]
        f64 = dtype == np.float64
        self._single = schedule == "single-pass"
        if self._single:
            self._fn = lib.dln_step1_f64 if f64 else lib.dln_step1_f32
        else:
            self._fn = lib.dln_step_f64 if f64 else lib.dln_step_f32
        self._form_code = _FORM_CODE[form]
        self._widths = ffi.new("int[]", widths)
        code = lib.DLN_SINGLE if self._single else self._form_code
        # threads: any layer big enough to be split? (else one thread, no region)
        self.parallel = any(widths[i] * widths[i + 1] >= PAR_MIN for i in range(L))
        # per-thread buffers only where a layer can be split across threads
        self.max_threads = max(1, openmp_threads, int(lib.dln_openmp_threads())) if self.parallel else 1
        if max_threads is not None:
            self.max_threads = max(1, min(self.max_threads, int(max_threads)))
        self.threads = None
        self.chooser = ThreadChooser(self.max_threads)
        self.work = np.empty(int(lib.dln_work_size(L, self._widths, code, self.max_threads,
                                                   self._block_bytes)), dtype=dtype)
        self._work_ptr = ffi.from_buffer(self._ctype + "[]", self.work, require_writable=True)
        self._layer_ptrs = ffi.new(self._ctype + " *[]", L)
        self._layer_arrays = None        # the arrays the pointers were taken from
        self._layer_keep = None          # the arrays and buffers the pointers point into
        self._vec = {}                   # "c"/"xs"/"yred" -> (array, pointer)
        self._ex = ffi.new("double *")
        self._state = ffi.new("int *")   # single-pass: which chain in work is valid (0 = none)
        self._beta = None

    @property
    def block_bytes(self):
        """Tile budget (bytes) the scratch was sized for (``BLOCK_BYTES`` at creation)."""
        return self._block_bytes

    def reset(self):
        """Forget the chain kept for the next step (single-pass schedule)."""
        self._state[0] = 0

    def _invalidate(self):
        """The kept chain may be stale: rebuild it, keeping the next sweep's direction."""
        self._state[0] = 3 if self._state[0] in (2, 3) else 0

    def _bind_layers(self, layers):
        # Forget the old binding first: a refusal half-way must not leave a
        # pointer table that a later call with the old arrays would trust.
        self._layer_arrays = None
        self._layer_keep = None
        self._invalidate()
        if len(layers) != self.L:
            raise ValueError(f"layers: expected {self.L} layers for this workspace, got {len(layers)}")
        keep = []
        for i, a in enumerate(layers):
            self._check(a, self.shapes[i], f"layers[{i}]", writable=True)
            buf = ffi.from_buffer(self._ctype + "[]", a, require_writable=True)
            self._layer_ptrs[i] = buf
            keep.append((a, buf))
        self._layer_keep = keep
        self._layer_arrays = list(layers)

    def _check(self, a, shape, what, writable=False, dtype=None):
        dtype = self.dtype if dtype is None else dtype
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{what}: must be a numpy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{what}: must have dtype {dtype}, got {a.dtype}")
        if a.shape != tuple(shape):
            raise ValueError(f"{what}: must have shape {tuple(shape)}, got {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{what}: must be C-contiguous (pass np.ascontiguousarray(...))")
        if not a.flags.aligned:
            raise ValueError(f"{what}: must be aligned")
        if writable and not a.flags.writeable:
            raise ValueError(f"{what}: must be writeable (the step updates it in place)")

    def _vector(self, key, a, shape, dtype, ctype):
        hit = self._vec.get(key)
        if hit is not None and hit[0] is a:
            return hit[1]
        self._check(a, shape, key, dtype=dtype)
        ptr = ffi.from_buffer(ctype + "[]", a)
        self._vec[key] = (a, ptr)
        if key != "c":                   # the kept residual depends on xs and yred
            self._invalidate()
        return ptr

    def call(self, layers, c, beta, xs, yred, lo, hi, do_update):
        # the same array objects as bound? (a C-level loop: ~3 us at L = 512)
        bound = self._layer_arrays
        if (bound is None or len(layers) != len(bound)
                or not all(map(operator.is_, layers, bound))):
            self._bind_layers(layers)
        if not isinstance(c, np.ndarray) or c.dtype != np.float64:
            c = np.ascontiguousarray(c, dtype=np.float64)   # a copy of L step sizes is harmless
        cp = self._vector("c", c, (self.L,), np.dtype(np.float64), "double")
        xp = self._vector("xs", xs, (self.r,), self.dtype, self._ctype)
        yp = self._vector("yred", yred, (self.d_out, self.r), self.dtype, self._ctype)
        beta = float(beta)
        return self._run(cp, beta, xp, yp, lo, hi, do_update)

    def _thread_count(self, phase):
        if not self.parallel or not openmp_threads:
            return 1, False
        cap = min(self.max_threads, max(1, int(lib.dln_openmp_threads())))
        if self.threads is not None:
            return max(1, min(cap, int(self.threads))), False
        if cap != self.chooser.max_threads:     # the OpenMP limit changed since
            self.chooser = ThreadChooser(cap)
        return self.chooser.pick(phase), True

    def _run(self, cp, beta, xp, yp, lo, hi, do_update):
        if self._single and beta != self._beta:
            self._invalidate()
            self._beta = beta
        phase = self._state[0]                  # the kind of step (single-pass: its sweep)
        nt, adaptive = self._thread_count(phase)
        t0 = time.perf_counter()
        if self._single:
            applied = self._fn(self.L, self._widths, self._layer_ptrs, cp, beta, xp, yp,
                               self._block_bytes, nt, self._work_ptr, float(lo), float(hi),
                               do_update, self._state, self._ex)
        else:
            applied = self._fn(self.L, self._widths, self._layer_ptrs, cp, beta, xp, yp,
                               self._form_code, self._block_bytes, nt, self._work_ptr,
                               float(lo), float(hi), do_update, self._ex)
        if adaptive and applied:
            self.chooser.record(nt, phase, time.perf_counter() - t0)
        return float(self._ex[0]), bool(applied)


def workspace(layers, r, d_out, dtype, form=None, schedule=None, max_threads=None):
    """Workspace for these layers (B_1 first, shapes (d_{i+1}, d_i), d_0 = r).

    ``form`` "P" or "T" asks for the two-pass schedule in that chain form;
    with ``form=None`` the schedule is ``schedule`` or the module's
    ``SCHEDULE``, and the two-pass form is chosen by cost (``choose_form``).
    """
    if not available:
        raise RuntimeError(f"the cblas backend is unavailable: {reason}")
    if schedule is None:
        schedule = "two-pass" if form is not None else SCHEDULE
    if schedule == "auto":
        schedule = choose_schedule(int(r), int(d_out))
    form = form or choose_form(r, d_out)
    shapes = [np.shape(a) for a in layers]
    for i, s in enumerate(shapes):
        if len(s) != 2:
            raise ValueError(f"layers[{i}]: must be a 2-D array, got shape {s}")
    return Workspace(shapes, r, d_out, dtype, form, schedule, max_threads)


class Members:
    """K same-shape networks stepped together, in parallel over the members.

    ``members``: K lists of layers (each as for ``workspace``), ``r``,
    ``d_out``, ``dtype``; ``form`` / ``schedule`` as for ``workspace``. Each
    member gets its own one-thread ``Workspace`` (``workspaces``), so a
    member's weights are bit for bit those of stepping it alone; the members
    are spread over the threads (``dln_members`` in csrc: a dynamic
    schedule, no barrier inside a member's step), and ``ThreadChooser``
    picks the thread count of each call from the times of the previous ones
    (unless ``threads`` is set), at most the OpenMP limit in force at the call
    (``kernels.threads.limit(openmp=...)``, as a single network's step). For ensembles: K small networks give two
    cores twice the work of one, where one network's layers are too small to
    split.
    """

    def __init__(self, members, r, d_out, dtype, form=None, schedule=None):
        if not available:
            raise RuntimeError(f"the cblas backend is unavailable: {reason}")
        members = [list(m) for m in members]
        if not members:
            raise ValueError("members: need at least one network")
        self.workspaces = [workspace(m, r, d_out, dtype, form, schedule, max_threads=1) for m in members]
        ws0 = self.workspaces[0]
        for k, ws in enumerate(self.workspaces):
            if ws.shapes != ws0.shapes:
                raise ValueError(f"members[{k}]: layer shapes {ws.shapes} differ from member 0's {ws0.shapes}")
        self.K, self.dtype, self.schedule, self.form = len(members), ws0.dtype, ws0.schedule, ws0.form
        self._fn = lib.dln_members_f64 if ws0.dtype == np.float64 else lib.dln_members_f32
        self._code = lib.DLN_SINGLE if ws0._single else ws0._form_code
        ct = ws0._ctype
        self._layers = ffi.new(ct + " **[]", self.K)
        self._work = ffi.new(ct + " *[]", [w._work_ptr for w in self.workspaces])
        self._c = ffi.new("double *[]", self.K)
        self._state = ffi.new("int[]", self.K)
        self._beta = np.zeros(self.K)
        self._hi = np.zeros(self.K)
        self._active = np.zeros(self.K, dtype=np.intc)
        self._ex = np.zeros(self.K)
        self._applied = np.zeros(self.K, dtype=np.intc)
        self.threads = None
        self.chooser = ThreadChooser(max(1, min(self.K, openmp_threads or 1)))

    def step(self, members, cs, betas, xs, yred, lo=-1.0, his=None, active=None):
        """One step of every active member; returns (excess (K,), applied (K,) bool).

        ``members``: the K layer lists (the same arrays as bound, or new ones),
        ``cs`` K per-layer step arrays, ``betas`` (K,), ``his`` (K,) upper
        gates (default inf), ``active`` (K,) bool (default all)."""
        K = self.K
        if len(members) != K or len(cs) != K or len(betas) != K:
            raise ValueError(f"members: expected {K} members, cs and betas")
        his = np.full(K, math.inf) if his is None else np.asarray(his, dtype=np.float64)
        active = np.ones(K, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        xp = yp = None
        for k, ws in enumerate(self.workspaces):
            lay = members[k]
            bound = ws._layer_arrays
            if bound is None or len(lay) != len(bound) or not all(map(operator.is_, lay, bound)):
                ws._bind_layers(lay)
            c = cs[k]
            if not isinstance(c, np.ndarray) or c.dtype != np.float64:
                c = np.ascontiguousarray(c, dtype=np.float64)
            self._c[k] = ws._vector("c", c, (ws.L,), np.dtype(np.float64), "double")
            xp = ws._vector("xs", xs, (ws.r,), ws.dtype, ws._ctype)
            yp = ws._vector("yred", yred, (ws.d_out, ws.r), ws.dtype, ws._ctype)
            beta = float(betas[k])
            if ws._single and beta != ws._beta:
                ws._invalidate()
                ws._beta = beta
            self._layers[k] = ws._layer_ptrs
            self._state[k] = ws._state[0]
            self._beta[k] = beta
        self._hi[:] = his
        self._active[:] = active
        cap = max(1, min(self.K, openmp_threads or 1, int(lib.dln_openmp_threads())))
        if self.threads is not None:
            nt, adaptive = max(1, min(cap, int(self.threads))), False
        else:
            if cap != self.chooser.max_threads:     # the OpenMP limit changed since (a sweep's run limit)
                self.chooser = ThreadChooser(cap)
            nt, adaptive = self.chooser.pick(self._code), True
        t0 = time.perf_counter()
        self._fn(K, self.workspaces[0].L, self.workspaces[0]._widths, self._layers, self._c,
                 ffi.from_buffer("double[]", self._beta), xp, yp, self._code,
                 self.workspaces[0].block_bytes, nt, self._work, self._state, float(lo),
                 ffi.from_buffer("double[]", self._hi), ffi.from_buffer("int[]", self._active),
                 ffi.from_buffer("double[]", self._ex, require_writable=True),
                 ffi.from_buffer("int[]", self._applied, require_writable=True))
        if adaptive:
            self.chooser.record(nt, self._code, time.perf_counter() - t0)
        for k, ws in enumerate(self.workspaces):
            ws._state[0] = self._state[k]
        return self._ex.copy(), self._applied.astype(bool)


def members(layers_list, r, d_out, dtype, form=None, schedule=None):
    """A ``Members`` stepper for these K same-shape networks."""
    return Members(layers_list, r, d_out, dtype, form, schedule)


def reset(ws):
    """Forget the chain carried between steps (called whenever a stepper is
    bound, and after a training callback, which may edit weights in place).

    The single-pass sweep direction is kept, so the next step rebuilds the
    chain with the grouping the uninterrupted run would have used: a run
    with resets in it stays bit for bit the same.
    """
    _ws(ws)._invalidate()


def get_state(ws):
    """The schedule state a resumed run needs (JSON-able), or None (two-pass).

    Single-pass: ``{"phase": 1}`` when the next sweep is bottom-up, ``2``
    when it is top-down. The chain itself is not saved: ``set_state`` makes
    the next step rebuild it with a read-only pass that groups its sums as
    the sweep would have, so the resumed run is bit for bit the same.
    """
    ws = _ws(ws)
    if not ws._single:
        return None
    return {"phase": 2 if ws._state[0] in (2, 3) else 1}


def set_state(ws, state):
    """Restore what ``get_state`` returned (after ``reset``); None is a no-op."""
    ws = _ws(ws)
    if state is None or not ws._single:
        return
    phase = state.get("phase") if isinstance(state, dict) else None
    if phase not in (1, 2):
        raise ValueError(f"state: expected {{'phase': 1 or 2}} from get_state, got {state!r}")
    ws._state[0] = 0 if phase == 1 else 3


def _ws(ws):
    if not isinstance(ws, Workspace):
        raise TypeError(f"ws: must be a cblas_backend.Workspace, got {type(ws).__name__}")
    return ws


def step(layers, c, beta, xs, yred, ws, lo=-1.0, hi=math.inf):
    """One GD step in place on ``layers``; returns ``(excess_before, applied)``.

    Arguments as in ``numpy_backend.step``: layers[0] is B_1 (d_1 x r),
    ``c`` (L,) the per-layer A-space steps eta / s_i^2, ``beta`` the output
    scale, ``xs`` (r,), ``yred`` (d_out, r). Every array must have the
    workspace's dtype (``c`` is float64), be C-contiguous and have the
    workspace's shapes; the layers must be writeable.
    """
    return _ws(ws).call(layers, c, beta, xs, yred, lo, hi, 1)


def excess(layers, beta, xs, yred, ws) -> float:
    """1/2 ||R||_F^2 for the current weights (the read-only pass only)."""
    ws = _ws(ws)
    c = ws._vec.get("c", (None,))[0]
    if c is None:
        c = np.zeros(ws.L)
    return ws.call(layers, c, beta, xs, yred, -1.0, math.inf, 0)[0]
