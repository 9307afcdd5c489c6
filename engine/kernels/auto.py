"""``auto``: the backend and thread count chosen by measurement on this machine.

For a network of shape class (hidden width, depth, d_out, rank r, dtype --
widths and depth rounded to powers of two) a short calibration times a few
GD steps of every candidate (each available backend at 1 thread and at all
usable threads) on a network of that class, and keeps the times in a JSON
file per machine and engine version (``cache_path()``, written atomically).

The calibration network has the real widths and is cut in depth only
where it is larger than ``CALIBRATE_MAX_BYTES`` (three times a large L3):
a cut that made it fit in cache would time another regime than the real
network's (issue 14: a net cut to 32 MiB ranked numpy first at
(1024,16,10,256,64), where the full net ran 1.7x slower with it than with
cblas). Candidates are timed in interleaved rounds, each sample two
consecutive steps (the single-pass schedule alternates two sweeps), and
each keeps its fastest sample: load from other processes only ever adds
time, and interleaving exposes every candidate to the same conditions.
``auto_choice`` then picks the backend of the fastest candidate that fits
the cores available *now* (``available_cpus``: affinity minus the load of
other processes). The thread count of each step is left to the backend
where it chooses it itself from measured step times (numba, and the C
kernel built with OpenMP; ``engine.kernels._threads``): a machine where
another process holds a core then runs one thread instead of a 2-thread
kernel whose per-layer barrier waits for a descheduled thread (issue 14:
12-177 ms instead of 9-16 ms), and returns to two when the core is free.

Overrides, strongest first: an explicit ``backend=`` name (never auto);
``ENGINE_BACKEND=<name>``; ``ENGINE_AUTO=rule`` (the fixed rule of
``kernels.registry._auto_order``, no calibration, no cache); ``ENGINE_AUTO=measure``
(calibrate also below ``MIN_CALIBRATE_BYTES``). By default networks with
fewer than ``MIN_CALIBRATE_BYTES`` of weights use the rule: their steps
take microseconds, where per-call overhead, not the kernel, decides and a
calibration would measure noise. ``ENGINE_CACHE_DIR`` moves the cache
(default ``~/.cache/engine``; ``XDG_CACHE_HOME`` is honoured).
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import tempfile
import time

import numpy as np

# Bump when the calibration or the file layout changes: older files are ignored.
CACHE_FORMAT = 2
# Below this many weight bytes (8 MiB: steps under ~1 ms on 2 cores), the fixed
# rule (see module docstring); it also keeps the unit tests' small nets off the
# calibration and its cache.
MIN_CALIBRATE_BYTES = 8 << 20
# The calibration network is cut to at most this many weight bytes (fewer
# layers, same widths): time per step is linear in depth as long as the cut
# net does not fit in a cache the full one does not fit in -- 96 MiB is 3x
# the L3 of the machines we measure on -- and calibrating a 1 GiB class then
# costs no more than a 96 MiB one (~2 s).
CALIBRATE_MAX_BYTES = 96 << 20
# Interleaved rounds over the candidates; each timed sample is two steps.
CALIBRATE_ROUNDS = 3
CALIBRATE_STEPS = 2


def _pow2(x: int) -> int:
    return 1 << max(0, int(round(math.log2(max(1, x)))))


def shape_class(widths, r, dtype) -> str:
    """The key calibrations are shared under: dtype, hidden width, depth and
    rank rounded to powers of two, d_out exact (it sets the work per weight)."""
    widths = [int(w) for w in widths]
    L = len(widths) - 1
    m = max(widths[1:-1], default=widths[0])
    return f"{np.dtype(dtype).name}-m{_pow2(m)}-L{_pow2(L)}-o{widths[-1]}-r{_pow2(min(r, widths[0]))}"


def weight_bytes(widths, r, dtype) -> int:
    w = [min(int(r), int(widths[0]))] + [int(v) for v in widths[1:]]
    return np.dtype(dtype).itemsize * sum(w[i] * w[i + 1] for i in range(len(w) - 1))


# -- cores available now -----------------------------------------------------------

def available_cpus(affinity=None, load=None, own=None) -> int:
    """Cores this process can use now: its CPU affinity minus the load of
    other processes (1-minute load average minus our own running threads,
    ``own``, rounded to the nearest integer), at least 1. Arguments inject the measurements (tests)."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    if own is None:
        own = 1.0                      # this process, busy calling us
    others = max(0.0, float(load) - float(own))
    return max(1, min(int(affinity), int(affinity) - int(math.floor(others + 0.5))))


# -- the cache ---------------------------------------------------------------------

def cache_dir() -> str:
    d = os.environ.get("ENGINE_CACHE_DIR")
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "engine")


@functools.lru_cache(maxsize=None)
def machine_id() -> str:
    """What a calibration is valid for: CPU, core count, engine and library versions."""
    from .._version import __version__
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"fmt{CACHE_FORMAT}", f"engine{__version__}", cpu, f"cpus{os.cpu_count()}",
             f"numpy{np.__version__}"]
    try:
        import numba
        parts.append(f"numba{numba.__version__}")
    except Exception:
        pass
    return "|".join(parts)


def cache_path() -> str:
    import hashlib
    h = hashlib.sha1(machine_id().encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), f"auto-{h}.json")


def _load_cache(path):
    try:
        with open(path) as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return {}
    if not isinstance(rec, dict) or rec.get("machine") != machine_id():
        return {}                      # another machine or version: recalibrate
    classes = rec.get("classes")
    return classes if isinstance(classes, dict) else {}


def _save_cache(path, classes) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auto-", dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as fh:
            json.dump({"machine": machine_id(), "classes": classes}, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass                           # a read-only home only costs a recalibration next time


# -- calibration -----------------------------------------------------------------

def candidates(ncpu=None):
    """[(backend name, threads)] to calibrate: each available backend at 1
    thread and at ``ncpu`` threads (numpy: as its BLAS is set, threads None)."""
    from .registry import _REGISTRY, availability
    ncpu = ncpu or (os.cpu_count() or 1)
    out = []
    for name, (ok, _) in availability().items():
        if not ok:
            continue
        if name == "numpy":
            out.append(("numpy", None))
            continue
        if name == "cblas" and not getattr(_REGISTRY["cblas"], "openmp_threads", 0):
            out.append(("cblas", None))   # serial kernel: BLAS threads as set
            continue
        out.append((name, 1))
        if ncpu > 1:
            out.append((name, ncpu))
    return out


def _key(name, threads):
    return f"{name}:{threads if threads is not None else '-'}"


def _unkey(key):
    name, t = key.split(":")
    return name, (None if t == "-" else int(t))


def _calibration_net(widths, r, dtype):
    """(net, prob, lr): a Gaussian network of these widths, cut in depth to
    CALIBRATE_MAX_BYTES, on random data of rank r; lr keeps it finite."""
    from .. import init, theory
    from ..problem import Problem
    widths = [int(w) for w in widths]
    per_layer = max(1, weight_bytes(widths, r, dtype) // max(1, len(widths) - 1))
    L = len(widths) - 1
    keep = max(3, min(L, CALIBRATE_MAX_BYTES // per_layer))
    if keep < L:
        widths = widths[:keep] + [widths[-1]]
    rng = np.random.default_rng(0)
    d_in = widths[0]
    n = max(1, min(int(r), d_in))
    X = rng.standard_normal((d_in, n))
    Y = rng.standard_normal((widths[-1], n))
    prob = Problem(X, Y)
    net = init.gaussian(widths, seed=0, dtype=dtype)
    lr = 1e-3 * theory.lr_bound("gaussian", prob, net.depth)   # stays finite for many steps
    return net, prob, lr


class _Candidate:
    """A bound stepper of one backend at a fixed thread count, for timing."""

    def __init__(self, widths, r, dtype, name, threads):
        # the backend's own step, as engine.train runs it (layer 1 held as B_1,
        # A-space steps eta / s_i^2), without importing the stepper: kernels sit
        # below stepper and train in the import graph
        from .registry import get
        from .threads import thread_limits
        net, prob, lr = _calibration_net(widths, r, dtype)
        self.backend = backend = get(name)
        net._bind(prob)
        red = prob.reduced(net.dtype)
        ws = backend.workspace(net._layers, prob.rank, prob.d_out, net.dtype)
        if threads is not None and hasattr(ws, "threads"):
            ws.threads = threads                   # exactly this many: no per-step choice
        c = lr / np.exp(2.0 * net._log_s)
        self._step = lambda: backend.step(net._layers, c, net.beta, red.s, red.targets, ws)
        self.limits = lambda: thread_limits(backend, threads)
        self.sample()                              # warm-up (JIT cache load, first touch)

    def sample(self, steps=CALIBRATE_STEPS) -> float:
        """Seconds per step over ``steps`` consecutive steps."""
        with self.limits():
            t0 = time.perf_counter()
            for _ in range(steps):
                self._step()
            return (time.perf_counter() - t0) / steps


def measure_step(widths, r, dtype, name, threads, steps=CALIBRATE_STEPS, budget=math.inf) -> float:
    """Seconds per step of backend ``name`` at ``threads`` threads on a
    Gaussian network of these widths (depth cut to CALIBRATE_MAX_BYTES): the
    fastest of CALIBRATE_ROUNDS samples of ``steps`` steps. A candidate
    whose sample takes longer than ``budget`` seconds is not sampled further."""
    cand = _Candidate(widths, r, dtype, name, threads)
    best = math.inf
    for _ in range(CALIBRATE_ROUNDS):
        best = min(best, cand.sample(steps))
        if best > budget:
            break
    return best


def calibrate(widths, r, dtype, measure=None, cands=None) -> dict:
    """{candidate key: seconds per step} for every candidate (``measure`` injects timings).

    Real timings: every candidate is built first, then sampled in
    interleaved rounds; each keeps its fastest sample. A candidate slower
    than 4x the best after a round is dropped from later rounds (a 2-thread
    kernel on a busy machine can take 100x the best)."""
    cands = cands if cands is not None else candidates()
    out = {}
    if measure is not None:
        for name, threads in cands:
            try:
                out[_key(name, threads)] = float(measure(widths, r, dtype, name, threads))
            except Exception:          # a candidate that cannot run is never chosen
                continue
        return out
    live = {}
    for name, threads in cands:
        try:
            live[_key(name, threads)] = _Candidate(widths, r, dtype, name, threads)
        except Exception:
            continue
    for _ in range(CALIBRATE_ROUNDS):
        for key, cand in list(live.items()):
            try:
                t = cand.sample()
            except Exception:
                live.pop(key)
                out.pop(key, None)
                continue
            out[key] = min(out.get(key, math.inf), t)
        if out:
            best = min(out.values())
            for key in [k for k in live if out.get(k, math.inf) > 4.0 * best]:
                live.pop(key)
    return out


# -- the choice ------------------------------------------------------------------

def _rule(widths, r):
    from .registry import _REGISTRY, _auto_order
    for nm in _auto_order((widths, r)):
        mod = _REGISTRY.get(nm)
        if mod is not None and mod.available:
            return nm
    return "numpy"


def auto_choice(widths, r, dtype="float64", *, measure=None, cpus=None, path=None):
    """(backend name, threads or None, reason) that ``auto`` runs for a network of
    these widths trained on data of rank ``r`` (``n`` samples of full rank: r = n).

    ``threads`` None leaves the thread settings as they are. ``measure``
    (widths, r, dtype, name, threads) -> seconds and ``cpus`` (cores available
    now) inject measurements for tests; ``path`` moves the cache file.
    """
    from .registry import BACKEND_NAMES, get
    widths = [int(w) for w in widths]
    dtype = np.dtype(dtype).name
    env = os.environ.get("ENGINE_BACKEND", "").strip()
    if env and env != "auto":
        if env not in BACKEND_NAMES:
            raise ValueError(f"ENGINE_BACKEND: unknown backend {env!r}; choose one of {list(BACKEND_NAMES)}")
        get(env)                       # unavailable -> BackendUnavailable with the reason
        return env, None, f"ENGINE_BACKEND={env}"
    mode = os.environ.get("ENGINE_AUTO", "").strip().lower() or "default"
    if mode not in ("default", "rule", "measure"):
        raise ValueError(f"ENGINE_AUTO: must be 'rule' or 'measure', got {mode!r}")
    nbytes = weight_bytes(widths, r, dtype)
    if mode == "rule" or (mode == "default" and nbytes < MIN_CALIBRATE_BYTES):
        why = "ENGINE_AUTO=rule" if mode == "rule" else (
            f"weights {nbytes} B < {MIN_CALIBRATE_BYTES} B: per-call overhead decides")
        return _rule(widths, r), None, f"fixed rule ({why})"
    path = path or cache_path()
    cls = shape_class(widths, r, dtype)
    free = cpus if cpus is not None else available_cpus()
    entry = _load_cache(path).get(cls)
    where = f"cached in {path}"
    times = entry.get("times") if isinstance(entry, dict) else None
    # a calibration taken while other processes held cores is redone once more
    # cores are free: its multi-thread times are those of the busy machine
    if not isinstance(times, dict) or not times or entry.get("cpus_free", 0) < free:
        times = calibrate(widths, r, dtype, measure=measure)
        if not times:
            return _rule(widths, r), None, "fixed rule (no candidate could be calibrated)"
        classes = _load_cache(path)     # another process may have added classes meanwhile
        classes[cls] = {"times": times, "cpus_free": free}
        _save_cache(path, classes)
        where = f"calibrated now with {free} core(s) free, saved to {path}"
    return _pick(times, free, cls, where)


def adapts_threads(name) -> bool:
    """Does backend ``name`` choose each step's thread count itself
    (``engine.kernels._threads``)? Then ``auto`` leaves the count to it."""
    from .registry import _REGISTRY
    if name == "numba":
        return True
    return name == "cblas" and bool(getattr(_REGISTRY.get("cblas"), "openmp_threads", 0))


def _pick(times, cpus, cls, where):
    """The backend of the fastest calibrated candidate using at most ``cpus``
    threads. Its thread count is returned only for a backend that does not
    choose it per step; the others get None: the load average cannot tell
    other processes' load from this process's own recent steps (a process
    that just ran 2-thread steps looks like a busy machine to itself for a
    minute), while the per-step times can."""
    fits = {k: t for k, t in times.items() if (_unkey(k)[1] or 1) <= cpus}
    if not fits:
        fits = times
    best = min(fits, key=fits.get)
    name, threads = _unkey(best)
    if adapts_threads(name):
        threads = None
    shown = ", ".join(f"{k} {1e3 * t:.3g} ms" for k, t in sorted(times.items(), key=lambda kv: kv[1]))
    note = "" if len(fits) == len(times) else f"; {cpus} core(s) free now, so ranked at most {cpus} thread(s)"
    return name, threads, f"measured for class {cls} ({where}): {shown}{note}"
