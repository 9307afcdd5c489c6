"""Memory guard: estimate what a network needs and refuse before allocating.

A depth-700, width-1000 network is 5.6 GB of float64 weights; allocating it on
a machine without that much free memory ends in swapping or the OOM killer,
losing whatever else the process held. The init functions therefore call
``check(widths, dtype)`` before they allocate anything, and refuse with
``InsufficientMemory`` (a ``MemoryError``) whose message gives the estimate,
what is available, and what to try instead.

    estimate_bytes(widths, dtype="float64", ensemble=1) -> int
    breakdown(widths, dtype="float64", ensemble=1)      -> dict of the parts
    available_bytes()                                   -> int or None
    check(widths, dtype="float64", ensemble=1, *, limit=None)

Override (for tests, or to let a job use swap on purpose): the environment
variable ``ENGINE_MEMORY_LIMIT`` replaces the measured available memory. It
takes a byte count with an optional K/M/G/T suffix (powers of 1024), e.g.
``ENGINE_MEMORY_LIMIT=512M``, or ``off`` to disable the check. The ``limit=``
keyword of ``check`` does the same for one call.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ._validate import float_dtype, positive_int, widths_list

__all__ = ["estimate_bytes", "estimate_runs", "breakdown", "breakdown_runs", "available_bytes", "check", "InsufficientMemory",
           "ENV_LIMIT"]

ENV_LIMIT = "ENGINE_MEMORY_LIMIT"

# float64 layer-sized temporaries alive at once while the orthogonal init draws
# one layer (G, LAPACK's working copy, Q, R, the transpose); measured with
# tracemalloc in tests/test_memory.py.
TRANSIENT_LAYERS = 5

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


class InsufficientMemory(MemoryError):
    """The estimated memory for a network exceeds what is available.

    Attributes: ``needed`` and ``available`` (bytes).
    """

    def __init__(self, message, needed=None, available=None):
        super().__init__(message)
        self.needed = needed
        self.available = available


# Bytes per layer beyond the arrays themselves (numpy array headers, the views
# and per-layer lists of the workspaces, the kernels' per-layer pointers),
# measured with tracemalloc over init + 3 steps of [50] + [m] * (L - 1) + [5]
# for m in {1, 4, 16}, L in {500, 1500, 2000}: numpy ~300, cblas ~540, numba ~1350-1550
# bytes per layer, rounded up with margin (tests/test_memory.py::test_estimate_bounds_deep_narrow_peak).
# Without it the estimate was 3x (m = 4) to 27x (m = 1) below the peak.
PER_LAYER_BYTES = 2048


def _runs_of(widths):
    """[(w, k), ...]: run-length form of [d_0, ..., d_L] (k consecutive layers of width w)."""
    runs = []
    for w in widths:
        if runs and runs[-1][0] == w:
            runs[-1][1] += 1
        else:
            runs.append([w, 1])
    return [(w, k) for w, k in runs]


def breakdown(widths, dtype="float64", ensemble: int = 1) -> dict:
    """The parts of ``estimate_bytes`` (bytes each), for reports such as ``engine info``.

    weights    K * sum_i d_i d_{i-1} * itemsize: A_1..A_L in normalized storage.
    bind       K * 2 d_1 d_0 * itemsize: while bound to a Problem the first layer
               is held as B_1 = A_1 U_r (d_1 x r, r <= d_0) plus the frozen
               A_1 (I - U_r U_r^T) (d_1 x d_0), i.e. up to one extra copy of
               layer 1 and B_1 (docs/design.md, "Data reduction").
    workspace  K * (one scratch buffer per distinct layer shape + the stored
               chain, at most sum_i d_i * d_out numbers, + O(d_out d_0))
               * itemsize: the numpy backend's buffers for one step
               (``kernels.numpy_backend.Workspace``).
    snapshot   = weights: the copy of a checked state that training keeps so
               that a diverging run returns its last finite state
               (``train.SNAPSHOT_EVERY``).
    per_layer  K * L * PER_LAYER_BYTES: Python and array-header overhead per
               layer, which dominates for deep narrow nets (measured).
    transient  TRANSIENT_LAYERS * max_i d_i d_{i-1} * 8: float64 temporaries of
               the init while one layer is drawn (the Gaussian draw; for the
               orthogonal init the Gaussian matrix, LAPACK's copy, Q, R and a
               transpose), not multiplied by K since members are drawn one
               after another.

    Not counted: the Problem's data (X, Y, U_r), optional recorders such as
    ``record={"distance": k}`` (one more copy of the weights), checkpoint
    loading (one more copy while reading).
    """
    return breakdown_runs(_runs_of(widths_list(widths)), dtype, ensemble)


def breakdown_runs(runs, dtype="float64", ensemble: int = 1) -> dict:
    """``breakdown`` for widths given as runs [(w, k), ...] (k consecutive widths w), computed
    arithmetically: ``[(1024, 1), (1000, 10**7), (10, 1)]`` costs nothing to evaluate."""
    dt = float_dtype(dtype)
    K = positive_int(ensemble, "ensemble")
    runs = [(positive_int(w, "widths"), positive_int(k, "widths")) for w, k in runs]
    L = sum(k for _, k in runs) - 1
    if L < 1:
        raise ValueError(f"widths: needs at least two entries [d_0, d_1] (depth >= 1), got {runs!r}")
    isz = dt.itemsize
    n_weights, biggest, shapes = 0, 0, set()
    for j, (w, k) in enumerate(runs):
        if k > 1:                       # k - 1 square layers inside the run
            n_weights += (k - 1) * w * w
            biggest = max(biggest, w * w)
            shapes.add((w, w))
        if j + 1 < len(runs):           # the layer from this run into the next
            v = runs[j + 1][0]
            n_weights += v * w
            biggest = max(biggest, v * w)
            shapes.add((v, w))
    d0, d_out = runs[0][0], runs[-1][0]
    d1 = d0 if runs[0][1] > 1 else runs[1][0]
    weights = K * n_weights * isz
    bind = K * 2 * d1 * d0 * isz
    chain = (sum(w * k for w, k in runs) - d0) * d_out + 2 * d_out * d0
    workspace = K * (sum(a * b for a, b in shapes) + chain) * isz
    transient = TRANSIENT_LAYERS * biggest * 8
    return {"weights": int(weights), "bind": int(bind), "workspace": int(workspace),
            "snapshot": int(weights), "per_layer": int(K * L * PER_LAYER_BYTES),
            "transient": int(transient)}


def estimate_bytes(widths, dtype="float64", ensemble: int = 1) -> int:
    """Bytes needed to initialize and train a network (or ``ensemble`` of them).

    widths   [d_0, ..., d_L]; dtype float64 or float32; ensemble K >= 1 members of
    the same shape. The sum of ``breakdown``: weights + layer-1 binding +
    one step's workspace + the divergence snapshot + per-layer overhead +
    init temporaries; an upper bound of tracemalloc's measured peak on every
    backend (tests/test_memory.py).
    """
    return int(sum(breakdown(widths, dtype, ensemble).values()))


def estimate_runs(runs, dtype="float64", ensemble: int = 1) -> int:
    """``estimate_bytes`` for widths as runs [(w, k), ...] (see ``breakdown_runs``)."""
    return int(sum(breakdown_runs(runs, dtype, ensemble).values()))


def _parse_limit(text: str):
    """Bytes from '123', '512M', '1.5G'; None for 'off'; ValueError otherwise.

    An empty value is an error, not "off": ``ENGINE_MEMORY_LIMIT=`` left empty
    by a script must not silently switch the guard off.
    """
    s = text.strip().upper()
    if s == "OFF":
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?", s)
    if m is None:
        raise ValueError(f"{ENV_LIMIT}: must be a byte count like 123, 512M, 2G or 'off', got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _measured_available():
    """MemAvailable from /proc/meminfo (Linux), else sysconf free pages, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes():
    """Bytes available for new allocations, or None when unknown or the check is off.

    ``ENGINE_MEMORY_LIMIT`` (see the module docstring) overrides the measurement.
    """
    env = os.environ.get(ENV_LIMIT)
    if env is not None:
        return _parse_limit(env)
    return _measured_available()


def fmt_bytes(nbytes) -> str:
    """A byte count to 3 significant digits in B, KiB, MiB, GiB or TiB ("5.33 GiB")."""
    x = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:.3g} {unit}" if unit != "B" else f"{int(x)} B"
        x /= 1024
    return f"{x:.3g} TiB"  # pragma: no cover


def check(widths, dtype="float64", ensemble: int = 1, *, limit=None) -> int:
    """Raise InsufficientMemory if ``estimate_bytes`` exceeds the available memory.

    ``limit`` (bytes, or a string like "512M") replaces ``available_bytes()``
    for this call. Returns the estimate. When the available memory cannot be
    determined (or the check is switched off) nothing is refused.
    """
    need = estimate_bytes(widths, dtype, ensemble)
    if limit is None:
        avail = available_bytes()
    elif isinstance(limit, str):
        avail = _parse_limit(limit)
    else:
        avail = int(limit)
    if avail is None or need <= avail:
        return need
    dt = np.dtype(dtype)
    parts = breakdown(widths, dtype, ensemble)
    hints = []
    if dt == np.float64:
        need32 = estimate_bytes(widths, "float32", ensemble)
        if need32 <= avail:
            hints.append(f"dtype='float32' (needs about {fmt_bytes(need32)})")
        else:
            hints.append(f"dtype='float32' halves it (about {fmt_bytes(need32)}, still too much)")
    hints.append("smaller widths or depth" + (" or a smaller ensemble" if ensemble > 1 else "")
                 + " (a smaller grid cell)")
    what = "network" if ensemble == 1 else f"ensemble of {ensemble} networks"
    raise InsufficientMemory(
        f"widths: this {what} needs about {fmt_bytes(need)} "
        f"(weights {fmt_bytes(parts['weights'])}, first-layer binding {fmt_bytes(parts['bind'])}, "
        f"workspace {fmt_bytes(parts['workspace'])}, divergence snapshot {fmt_bytes(parts['snapshot'])}, "
        f"per-layer overhead {fmt_bytes(parts['per_layer'])}, init temporaries {fmt_bytes(parts['transient'])}) "
        f"but only {fmt_bytes(avail)} is available. Try {'; or '.join(hints)}. "
        f"Set {ENV_LIMIT} (bytes, e.g. 64G, or 'off') to override.",
        needed=need, available=avail)
