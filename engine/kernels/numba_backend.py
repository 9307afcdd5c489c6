"""The ``numba`` backend: the whole GD step, all layers, in one compiled call.

Same semantics as ``numpy_backend`` (the oracle; notation there and in
docs/design.md, "Chain products" and "The step schedule"): layers M_1 = B_1
(d_1 x r), M_i = A_i; suffix S_i = beta M_L ... M_{i+1} (d_out x d_i);
prefix P_i = M_i ... M_1 X_red (d_i x r); residual R = beta P_L - Y_red
(d_out x r); gradient dl/dM_i = S_i^T R P_{i-1}^T = S_i^T T_{i-1}^T with
T_{i-1} = P_{i-1} R^T (DH eq. 5 in normalized weights).

Schedules (``form`` argument of ``workspace``):

* ``"T"`` -- two-pass, T form: a read-only top-down pass stores the
  suffixes S_i and gives R; a fused bottom-up sweep carries T_i from the old
  block of M_i and applies the rank-d_out update while the block is in
  cache. 3 weight passes per step, ~3 d_out multiply-adds per weight.
* ``"P"`` -- two-pass, P form: a read-only bottom-up pass stores the
  prefixes P_i; a fused top-down sweep carries S_i from the old block and
  applies the rank-r update G_i = (S_i^T R) P_{i-1}^T. ~(2r + d_out)
  multiply-adds per weight: cheaper when r < d_out.
* ``"single"`` -- single-pass alternating schedule (docs/design.md): a bottom-up
  sweep finishes step t with the stored S(t) and the carried T(t), and from
  each *new* block builds the prefix chain P(t+1), hence R(t+1) and
  l(t+1); the next, top-down, sweep finishes step t+1 with the stored
  P(t+1) and the carried S(t+1) of the old blocks, and builds S(t+2) from
  the new blocks. 2 weight passes per step (the floor); l(t) returned by a
  step was computed by the previous sweep. After ``reset`` (a new stepper),
  one read-only pass rebuilds the chain of the current phase -- bit for bit
  the chain the previous sweep would have left, so a resumed trajectory is
  identical to the uninterrupted one as long as the phase is kept (it is
  kept in the workspace, which ``engine.train`` caches on the network).

Without ``form``, ``choose_form`` picks by cost (see there).

Parallelism: each step runs at most ``numba.get_num_threads()`` threads;
below that, ``ThreadChooser`` (``engine.kernels._threads``) picks each
step's count from the measured times of the previous steps (one thread when
another process holds a core: every split layer ends at a barrier that would
wait for a descheduled thread), unless ``Workspace.threads`` fixes it. The
suffix products split over column blocks of M_i and the
prefix / T products over row blocks, so no sum crosses threads and every
number is computed in an order fixed by the code: results are bitwise
independent of the thread count (a stronger form of the per-thread-partials
rule of STYLE.md). Layers with fewer than ``_numba_kernels.PAR_MIN``
weights run serially inside the same call (no parallel-region launch), so
small deep networks are latency-bound, not launch-bound.

Layers are passed without copying: when the hidden widths are uniform and
layers[1:L-1] are views of one contiguous (L-2, m, m) array (verified by
pointer arithmetic in ``workspace``), that array is passed as is; otherwise
a ``numba.typed.List`` of the layer arrays, built once per workspace.
"""
from __future__ import annotations

import operator
import time

import numpy as np

from ._threads import ThreadChooser

name = "numba"
try:
    import numba
    from numba import typed as _typed
    from numba import types as _types

    from . import _numba_kernels as _k
except Exception as exc:  # ImportError, or a broken numba install
    available = False
    reason = f"numba is not importable: {type(exc).__name__}: {exc}"
    _k = None
else:
    available = True
    reason = ""

FORMS = ("T", "P", "single")

# The single-pass schedule stores the prefix chain (L x d_i x r numbers) and
# builds it in every other sweep at ~r multiply-adds per weight; beyond this
# rank the two-pass T form is cheaper (and stores only d_out columns).
SINGLE_MAX_RANK = 64


def choose_form(r: int, d_out: int) -> str:
    """Schedule for a problem with rank r and d_out outputs.

    Multiply-adds per weight and step: two-pass T form 3 d_out; two-pass P
    form 2r + d_out; single-pass (d_out + r + min(r, d_out)) / 2 + d_out.
    The single pass reads and writes each weight once (2 passes instead of 3)
    and wins whenever the step is bandwidth-bound, which it is for
    d_out <= 16 on this machine (AVX-512 FMA vs ~35 GB/s); ranks above
    ``SINGLE_MAX_RANK`` make its prefix chain too costly and fall back to the
    cheaper two-pass form.
    """
    if r <= SINGLE_MAX_RANK and 2 * d_out >= r:
        return "single"
    return "P" if r < d_out else "T"


_EMPTY_LISTS = {}


def _empty_list(dtype):
    lst = _EMPTY_LISTS.get(dtype)
    if lst is None:
        lst = _typed.List.empty_list(_types.Array(numba.from_dtype(dtype), 2, "C"))
        _EMPTY_LISTS[dtype] = lst
    return lst


def _hidden_stack(layers):
    """The (L-2, m_out, m_in) array whose slices are layers[1:L-1], or None."""
    L = len(layers)
    if L < 3:
        return None
    base = layers[1].base
    if not (isinstance(base, np.ndarray) and base.ndim == 3 and base.shape[0] == L - 2
            and base.flags.c_contiguous and base.dtype == layers[1].dtype
            and base.shape[1:] == layers[1].shape):
        return None
    p0 = base.__array_interface__["data"][0]
    step = base.strides[0]
    for k in range(1, L - 1):
        a = layers[k]
        if (a.shape != base.shape[1:] or not a.flags.c_contiguous
                or a.__array_interface__["data"][0] != p0 + (k - 1) * step):
            return None
    return base


class Workspace:
    """Chains, buffers and schedule state for one (layer shapes, r, d_out, dtype, form).

    Shapes (dmax = max(r, d_1, ..., d_L), L layers, D = d_out):
    Sst (L+1, D, dmax) suffixes; Pst (L+1, r, dmax) transposed prefixes;
    Tc, Sc (2, D, dmax) carried chains; Ub (1, r, dmax), Wb (1, D, dmax)
    update factors; R (D, r). Buffers a schedule never touches are (1, 1, 1).
    """

    def __init__(self, layers, r, d_out, dtype, form):
        if form not in FORMS:
            raise ValueError(f"form: the numba backend knows {FORMS}, got {form!r}")
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype: float64 or float32, got {dt}")
        self.form = form
        self.dtype = dt
        L = len(layers)
        D = d_out
        self.widths = np.array([r] + [a.shape[0] for a in layers], dtype=np.int64)
        dmax = int(self.widths.max())
        self.schedule = {"T": 0, "P": 1, "single": 2}[form]
        self.tform = r > D                    # update form inside a top-down sweep
        uses_S = self.schedule in (0, 2)
        uses_P = self.schedule in (1, 2)
        dummy = np.zeros((1, 1, 1), dtype=dt)
        self.Sst = np.zeros((L + 1, D, dmax), dtype=dt) if uses_S else dummy
        self.Pst = np.zeros((L + 1, r, dmax), dtype=dt) if uses_P else dummy
        self.Tc = np.zeros((2, D, dmax), dtype=dt) if uses_S else dummy
        self.Sc = np.zeros((2, D, dmax), dtype=dt) if uses_P else dummy
        self.Ub = np.zeros((1, r, dmax), dtype=dt) if uses_P and not self.tform else dummy
        self.Wb = np.zeros((1, D, dmax), dtype=dt) if uses_P and self.tform else dummy
        self.R = np.zeros((D, r), dtype=dt)
        # any layer big enough for parallel blocks (see _numba_kernels.PAR_MIN)?
        w = self.widths
        self.parallel = bool(np.any(w[1:] * w[:-1] >= _k.PAR_MIN))
        self.phase = 1 if self.schedule == 1 else 0
        # threads: None = chosen per step from measured step times (ThreadChooser,
        # up to numba.get_num_threads()); an int fixes the count
        self.threads = None
        self.chooser = ThreadChooser(1)
        self.valid = False
        self.ex = float("nan")
        self._bind(layers)

    def _bind(self, layers):
        for a in layers:
            if a.dtype != self.dtype or not a.flags.c_contiguous or not a.flags.writeable:
                raise ValueError("layers: the numba backend needs writeable C-contiguous "
                                 f"{self.dtype} arrays")
        self.refs = list(layers)
        stack = _hidden_stack(layers)
        self.uniform = stack is not None
        if self.uniform:
            self.stack = stack
            self.lst = _empty_list(self.dtype)
        else:
            self.stack = np.zeros((1, 1, 1), dtype=self.dtype)
            lst = _typed.List.empty_list(_types.Array(numba.from_dtype(self.dtype), 2, "C"))
            for a in layers:
                lst.append(a)
            self.lst = lst
        self.valid = False

    def _thread_count(self, key=None):
        """(threads for this step of kind ``key``, whether the chooser picked it)."""
        if not self.parallel:
            return 1, False
        cap = max(1, numba.get_num_threads())
        if self.threads is not None:
            return max(1, min(cap, int(self.threads))), False
        if cap != self.chooser.max_threads:      # the Numba thread count changed since
            self.chooser = ThreadChooser(cap)
        return self.chooser.pick(key), True

    def run(self, layers, c, beta, xs, yred, lo, hi, do_update):
        if len(layers) != len(self.refs) or not all(map(operator.is_, layers, self.refs)):
            self._bind(layers)               # the network's arrays were replaced
        dt = self.dtype
        c = np.ascontiguousarray(c, dtype=dt)
        xs = np.ascontiguousarray(xs, dtype=dt)
        yred = np.ascontiguousarray(yred, dtype=dt)
        key = (self.phase, self.valid)
        nt, adaptive = self._thread_count(key)
        t0 = time.perf_counter()
        ex, applied, phase, valid, ex_after = _k.step_kernel(
            layers[0], self.stack, layers[-1], self.lst, self.uniform, self.widths, c,
            dt.type(beta), xs, yred, self.Sst, self.Pst, self.Tc, self.Sc, self.Ub, self.Wb,
            self.R, self.schedule, self.tform, self.phase, self.valid, self.ex,
            float(lo), float(hi), do_update, nt)
        if adaptive and applied:
            self.chooser.record(nt, key, time.perf_counter() - t0)
        if applied:
            self.phase, self.valid, self.ex = int(phase), bool(valid), float(ex_after)
        else:
            self.valid, self.ex = bool(valid), float(ex)
        return float(ex), bool(applied)


def workspace(layers, r, d_out, dtype, form=None):
    """Buffers for ``step``; ``form`` is "T", "P", "single" or None (``choose_form``)."""
    if not available:
        raise RuntimeError(f"the numba backend is unavailable: {reason}")
    return Workspace(layers, r, d_out, dtype, form or choose_form(r, d_out))


def reset(ws) -> None:
    """Forget the chain carried between steps (the weights may have changed).

    The schedule's phase is kept, so the next step rebuilds exactly the chain
    the uninterrupted run would have had (see the module docstring).
    """
    ws.valid = False


def step(layers, c, beta, xs, yred, ws, lo=-1.0, hi=np.inf):
    """One GD step in place on ``layers``; same contract as ``numpy_backend.step``.

    Returns ``(excess, applied)``: 1/2 ||R||^2 before the step and whether the
    update was written (only if finite and ``lo < excess <= hi``; otherwise the
    weights are untouched).
    """
    if ws.parallel:
        # BLAS pools limited to 1 thread while Numba's threads run (restored after)
        from .threads import thread_limits
        with thread_limits(name):
            return ws.run(layers, c, beta, xs, yred, lo, hi, True)
    return ws.run(layers, c, beta, xs, yred, lo, hi, True)


def excess(layers, beta, xs, yred, ws) -> float:
    """1/2 ||R||_F^2 for the current weights (nothing written to them)."""
    c = np.zeros(len(layers))
    return ws.run(layers, c, beta, xs, yred, -1.0, np.inf, False)[0]


def kernel_threads() -> int:
    """Threads the kernels use now (``numba.get_num_threads``)."""
    return numba.get_num_threads() if available else 1

