"""The ``cblas`` backend: the whole GD step in one call of a C kernel (csrc/).

Same semantics as ``numpy_backend`` (the oracle; see its docstring for the
notation): P form for r < d_out, T form otherwise; every layer in one C call;
the update is written only if the excess before the step is finite and
``lo < excess <= hi``, otherwise no weight is touched; the excess before the
step is returned.

The kernel (csrc/dln_step_impl.h) has both schedules of docs/design.md ("The
step schedule"), each walking every layer in row
blocks of ``BLOCK_BYTES`` (sized for L2):

* ``two-pass`` (3 weight passes): a read-only pass computes one chain and
  the residual, then a fused read-write pass advances the other chain from
  each OLD block and applies the rank-d_out (T form) or rank-r (P form)
  update to that block while it is still in cache.
* ``single-pass`` (2 weight passes): sweeps alternate direction; per block,
  advance the old chain, apply the update, advance the next step's chain from
  the new block. The chain and residual of the next step are kept in the
  workspace between calls (``reset`` forgets them); the first step after a
  reset pays one read-only pass. ``get_state`` / ``set_state`` carry the
  sweep direction through a checkpoint, and the rebuilt chain groups its
  sums as the sweep did, so a resumed run is bit for bit the same.

``SCHEDULE`` picks the schedule of new workspaces; an explicit ``form``
("P"/"T") asks for the two-pass schedule in that form.

Its products call the ?gemm that SciPy already ships: the function pointers
are taken at import time from ``scipy.linalg.cython_blas.__pyx_capi__`` and
passed into the C code, so the extension links no BLAS. It is built by
``setup.py`` through cffi; when that build failed (or was skipped) the
backend reports ``available = False`` and ``reason`` says why, distinguishing
"not built" from "built but failed to load".

Parallelism: when the extension was built with OpenMP (``openmp_threads`` >
0), each fused layer is split across threads into disjoint row ranges (T
chain, P chain) or column ranges (S chain) -- no reductions, so the result
does not depend on the thread count -- and BLAS is held to one thread for the
duration of the call (restored afterwards) so the two never oversubscribe
the cores. Without OpenMP the kernel is serial and BLAS threads as it likes.
The thread count follows OMP_NUM_THREADS / threadpoolctl's "openmp" limit.

float64 (dgemm) and float32 (sgemm). The wrapper checks dtype,
C-contiguity, writability and shapes of every array before any pointer goes
to C, and raises TypeError / ValueError naming the argument otherwise.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading

import numpy as np

from .numpy_backend import choose_form

name = "cblas"

# Target size of one row block of a layer in the fused pass. The machines we
# measure on have 512 KiB - 2 MiB of L2 per core; a 256 KiB block leaves room
# for the chain slices the block is multiplied with, and is large enough that
# each ?gemm call does thousands of flops per call overhead.
BLOCK_BYTES = 256 * 1024

_MODULE = f"{__package__}._cblas"
_BUILD_ERROR_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cblas_build_error.txt")

_FORM_CODE = {"P": 0, "T": 1}
SCHEDULES = ("two-pass", "single-pass")

# Schedule of workspaces built with form=None. Measured on the 2-core dev
# machine (float64, (d_in, n, d_out) = (1024, 16, 10)): at m = 1024, L = 32
# single-pass alternates 38 ms bottom-up and 65 ms top-down sweeps (the
# top-down S products have a short inner dimension), 50 ms on average, vs
# 42-47 ms two-pass; at m = 256 single-pass wins (6.4 vs 7.8 ms). The
# machine is compute-bound at d_out = 10, where saving a weight pass does not
# pay for the extra rank-r products, so two-pass is the default.
SCHEDULE = "two-pass"


def _not_built_reason() -> str:
    why = "no C compiler or Python headers at install time, or installed without building extensions"
    try:
        with open(_BUILD_ERROR_FILE) as fh:
            why = "the build failed: " + fh.read().strip()
    except OSError:
        pass
    return (f"the C extension {_MODULE} was not built ({why}); install a C compiler and "
            "reinstall engine (pip install -e .) to enable it")


def _capsule_pointer(capsule) -> int:
    """Address held by a PyCapsule (as exported by Cython's __pyx_capi__)."""
    get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))
    get_ptr = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
        ("PyCapsule_GetPointer", ctypes.pythonapi))
    addr = get_ptr(capsule, get_name(capsule))
    if not addr:
        raise RuntimeError("PyCapsule_GetPointer returned NULL")
    return addr


def _load():
    """(ffi, lib, {dtype: gemm pointer}, reason); reason is "" on success."""
    import importlib
    try:
        # import_module, not "from . import": during the package's own import
        # a missing submodule must surface as ModuleNotFoundError naming it.
        _cblas = importlib.import_module(_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == _MODULE:
            return None, None, None, _not_built_reason()
        return None, None, None, f"the C extension {_MODULE} was built but failed to load: {exc}"
    except Exception as exc:  # ImportError from the loader, wrong ABI, missing symbol ...
        return None, None, None, (f"the C extension {_MODULE} was built but failed to load: "
                                  f"{type(exc).__name__}: {exc}")
    try:
        from scipy.linalg import cython_blas
        capi = cython_blas.__pyx_capi__
        ptrs = {np.dtype(np.float64): _cblas.ffi.cast("void *", _capsule_pointer(capi["dgemm"])),
                np.dtype(np.float32): _cblas.ffi.cast("void *", _capsule_pointer(capi["sgemm"]))}
    except Exception as exc:
        return None, None, None, (f"the C extension is built, but SciPy's BLAS could not be reached "
                                  f"through scipy.linalg.cython_blas: {type(exc).__name__}: {exc}")
    return _cblas.ffi, _cblas.lib, ptrs, ""


ffi, lib, _GEMM, reason = _load()
available = not reason
# Threads the kernel's own parallel loops may use at import (0 = built without
# OpenMP); each call asks again, so OMP_NUM_THREADS / threadpoolctl limits
# set later are honoured.
openmp_threads = int(lib.dln_openmp_threads()) if available else 0

_BLAS_CONTROLLER = None
_SERIAL_LOCK = threading.Lock()
_serial_depth = 0
_serial_limiter = None


@contextlib.contextmanager
def _serial_blas():
    """Hold BLAS to one thread while inside; the original limits come back on exit.

    BLAS thread counts are process-wide, so steps running concurrently in
    several Python threads share one limit: the first to enter sets it, the
    last to leave restores the original (a per-call save/restore would let
    overlapping calls restore each other's "1"). The ThreadpoolController is
    built once (it scans the loaded libraries); entering and leaving then
    costs ~10 us per step.
    """
    global _BLAS_CONTROLLER, _serial_depth, _serial_limiter
    with _SERIAL_LOCK:
        if _serial_depth == 0:
            if _BLAS_CONTROLLER is None:
                from threadpoolctl import ThreadpoolController
                _BLAS_CONTROLLER = ThreadpoolController()
            _serial_limiter = _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
        _serial_depth += 1
    try:
        yield
    finally:
        with _SERIAL_LOCK:
            _serial_depth -= 1
            if _serial_depth == 0:
                _serial_limiter.restore_original_limits()
                _serial_limiter = None

_CTYPE = {np.dtype(np.float64): "double", np.dtype(np.float32): "float"}


class Workspace:
    """Scratch for one (layer shapes, r, d_out, dtype, form), plus cached pointers.

    The C kernel never allocates: its scratch (one chain, the residual, and
    the ping-pong buffers of the fused pass; ``dln_work_size`` in csrc) is
    one array allocated here. Pointers to the layers, ``c``, ``xs`` and
    ``yred`` are built (after checking each array) the first time they are
    seen and reused while the same array objects are passed, so a step costs
    O(1) Python work plus one ``map(id, layers)``.
    """

    def __init__(self, shapes, r, d_out, dtype, form, schedule="two-pass"):
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
        self.block_bytes = BLOCK_BYTES
        self._ctype = _CTYPE[dtype]
        f64 = dtype == np.float64
        self._single = schedule == "single-pass"
        if self._single:
            self._fn = lib.dln_step1_f64 if f64 else lib.dln_step1_f32
        else:
            self._fn = lib.dln_step_f64 if f64 else lib.dln_step_f32
        self._gemm = _GEMM[dtype]
        self._form_code = _FORM_CODE[form]
        self._widths = ffi.new("int[]", widths)
        code = lib.DLN_SINGLE if self._single else self._form_code
        self.work = np.empty(int(lib.dln_work_size(L, self._widths, code)), dtype=dtype)
        self._work_ptr = ffi.from_buffer(self._ctype + "[]", self.work, require_writable=True)
        self._layer_ptrs = ffi.new(self._ctype + " *[]", L)
        self._layer_ids = None
        self._layer_keep = None          # the arrays and buffers the pointers point into
        self._vec = {}                   # "c"/"xs"/"yred" -> (array, pointer)
        self._ex = ffi.new("double *")
        self._state = ffi.new("int *")   # single-pass: which chain in work is valid (0 = none)
        self._beta = None

    def reset(self):
        """Forget the chain kept for the next step (single-pass schedule)."""
        self._state[0] = 0

    def _invalidate(self):
        """The kept chain may be stale: rebuild it, keeping the next sweep's direction."""
        self._state[0] = 3 if self._state[0] in (2, 3) else 0

    def _bind_layers(self, layers):
        # Forget the old binding first: a refusal half-way must not leave a
        # pointer table that a later call with the old arrays would trust.
        self._layer_ids = None
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
        self._layer_ids = tuple(map(id, layers))

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
        if tuple(map(id, layers)) != self._layer_ids:
            self._bind_layers(layers)
        if not isinstance(c, np.ndarray) or c.dtype != np.float64:
            c = np.ascontiguousarray(c, dtype=np.float64)   # a copy of L step sizes is harmless
        cp = self._vector("c", c, (self.L,), np.dtype(np.float64), "double")
        xp = self._vector("xs", xs, (self.r,), self.dtype, self._ctype)
        yp = self._vector("yred", yred, (self.d_out, self.r), self.dtype, self._ctype)
        beta = float(beta)
        if openmp_threads and lib.dln_openmp_threads() > 1:
            with _serial_blas():
                return self._run(cp, beta, xp, yp, lo, hi, do_update)
        return self._run(cp, beta, xp, yp, lo, hi, do_update)

    def _run(self, cp, beta, xp, yp, lo, hi, do_update):
        if self._single:
            if beta != self._beta:
                self._invalidate()
                self._beta = beta
            applied = self._fn(self._gemm, self.L, self._widths, self._layer_ptrs, cp, beta,
                               xp, yp, self.block_bytes, self._work_ptr,
                               float(lo), float(hi), do_update, self._state, self._ex)
        else:
            applied = self._fn(self._gemm, self.L, self._widths, self._layer_ptrs, cp, beta,
                               xp, yp, self._form_code, self.block_bytes, self._work_ptr,
                               float(lo), float(hi), do_update, self._ex)
        return float(self._ex[0]), bool(applied)


def workspace(layers, r, d_out, dtype, form=None, schedule=None):
    """Workspace for these layers (B_1 first, shapes (d_{i+1}, d_i), d_0 = r).

    ``form`` "P" or "T" asks for the two-pass schedule in that chain form;
    with ``form=None`` the schedule is ``schedule`` or the module's
    ``SCHEDULE``, and the two-pass form is chosen by cost (``choose_form``).
    """
    if not available:
        raise RuntimeError(f"the cblas backend is unavailable: {reason}")
    if schedule is None:
        schedule = "two-pass" if form is not None else SCHEDULE
    form = form or choose_form(r, d_out)
    shapes = [np.shape(a) for a in layers]
    for i, s in enumerate(shapes):
        if len(s) != 2:
            raise ValueError(f"layers[{i}]: must be a 2-D array, got shape {s}")
    return Workspace(shapes, r, d_out, dtype, form, schedule)


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
