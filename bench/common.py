"""Shared helpers for the asv suites and ``bench/compare.py``.

* ``problem(d_in, n, d_out)``   seeded HXP-style data (cached per process)
* ``stepper(...)``              a network bound to its problem, ready to step
                                (what ``engine.train`` runs each step)
* ``bandwidth()``               streaming memory bandwidth in bytes/s, measured
                                with a NumPy copy of a 256 MiB array (cached)
* ``floor_seconds(nbytes)``     t_floor = 2 * weight bytes / bandwidth
                                (docs/design.md, "The physical limit")
* ``gemm_rate(dtype)``          ?GEMM multiply-adds per second, measured with
                                a 1024^3 NumPy matmul (BLAS threads as set; cached)
* ``fma_min(cfg)``              FMA_min = sum_i d_i d_{i-1} (d_out + 2 min(r, d_out))
* ``limit_seconds(cfg, dtype)`` t_limit = max(t_floor, FMA_min / gemm rate)
* ``median_step_seconds(fn)``   median seconds of ``fn()`` over repeats

Nothing here is imported by ``engine`` itself.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:           # `python bench/compare.py` and asv both find this module
    sys.path.insert(0, _HERE)

# Array size of the bandwidth measurement: far larger than any cache, small
# enough to allocate anywhere (256 MiB, twice: source and destination).
BANDWIDTH_BYTES = 256 << 20
# A measured bandwidth is reused for this long (seconds) through a small file
# in the temp dir, so every asv benchmark process of one run sees the same
# figure without paying ~0.5 s each. ENGINE_BENCH_BANDWIDTH (bytes/s) overrides.
BANDWIDTH_MAX_AGE = 3600.0
# Skip configurations whose weights alone need more than this (bytes).
MAX_WEIGHT_BYTES = 2 << 30


def backend_available(name: str) -> tuple[bool, str]:
    import engine
    return engine.kernels.availability().get(name, (False, f"unknown backend {name!r}"))


@functools.lru_cache(maxsize=None)
def problem(d_in: int, n: int, d_out: int, seed: int = 0):
    import engine
    X, Y = engine.synthetic(d_in, n, d_out, seed=seed)
    return engine.Problem(X, Y)


def widths(d_in, d_out, m, L):
    return [d_in] + [m] * (L - 1) + [d_out]


def weight_bytes(d_in, n, d_out, m, L, itemsize=8) -> int:
    """Bytes of the trained weights of one network: B_1 (m x r), L-2 hidden m x m, A_L (d_out x m)."""
    r = min(d_in, n)
    if L == 1:
        return d_out * r * itemsize
    return itemsize * (m * r + (L - 2) * m * m + d_out * m)


# Depth up to which ``network`` draws a true Haar orthogonal init; deeper
# nets reuse a few Haar bases (below) so that setting up L = 512, m = 1024
# takes a second, not minutes of QR factorizations.
HAAR_MAX_DEPTH = 8


def network(d_in, d_out, m, L, dtype="float64", seed=0):
    """An orthogonal network (HXP eq. 4 scaling, init label "orthogonal").

    For L > HAAR_MAX_DEPTH the hidden layers are signed column permutations
    of four Haar m x m matrices: exactly orthogonal, so GD at the theorem's
    rate is as stable as from a Haar init (which is all a timing needs).
    """
    # one BLAS thread for the QR factorizations: a threaded LAPACK QR on a
    # machine where another process holds a core took 5.7 s instead of 0.1 s
    # (its threads wait at barriers for a descheduled thread), which made the
    # asv suite's setups minutes long
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        return _network(d_in, d_out, m, L, dtype, seed)


def _network(d_in, d_out, m, L, dtype, seed):
    import engine
    from engine.init import haar_semi_orthogonal
    from engine.network import Network, _alloc_layers
    w = widths(d_in, d_out, m, L)
    if L <= HAAR_MAX_DEPTH:
        return engine.init.orthogonal(w, seed=seed, dtype=dtype)
    edge = engine.init.orthogonal([d_in, m, m, d_out], seed=seed)
    rng = np.random.default_rng(seed + 1)
    bases = [haar_semi_orthogonal(rng, m, m) for _ in range(4)]
    layers, stack = _alloc_layers(w, np.dtype(dtype))
    layers[0][...] = edge._layers[0]
    layers[-1][...] = edge._layers[-1]
    for i in range(1, L - 1):
        layers[i][...] = bases[i % 4][:, rng.permutation(m)] * rng.choice([-1.0, 1.0], m)
    log_s = 0.5 * np.log(np.asarray(w[1:], dtype=np.float64))
    return Network(layers, log_s, 0.0, init="orthogonal", seed=seed, dtype=dtype, _stack=stack)


# Timing runs step at this fraction of the theorem's lr. A step's cost does
# not depend on lr, but hundreds of repeated steps must stay finite: outside
# HXP's width condition (m < rank X, e.g. d_in = 1024, n = 65536, m = 256) the
# theorem's rate diverges within ~15 steps, and a backend then refuses the
# update, which would time a cheap no-op instead of a step.
TIMING_LR_SCALE = 1e-2


class CheckedStep:
    """``st.step`` that fails loudly if the update was not applied."""

    def __init__(self, st):
        self.st = st

    def __call__(self):
        ex, applied = self.st.step()
        if not applied:
            raise RuntimeError(f"benchmark step not applied (excess {ex}): timing a no-op")
        return ex


def stepper(d_in, n, d_out, m, L, backend="numpy", dtype="float64", seed=0, lr_scale=TIMING_LR_SCALE):
    """A bound ``engine.stepper.Stepper`` (what ``engine.train`` runs each step)
    on an orthogonal net at ``lr_scale`` times its theorem lr; ``.checked`` is
    its step function that raises if a step was not applied."""
    import engine
    from engine.stepper import Stepper
    prob = problem(d_in, n, d_out)
    net = network(d_in, d_out, m, L, dtype=dtype, seed=seed)
    lr = lr_scale * engine.theory.lr_bound("orthogonal", prob, L)
    st = Stepper(net, prob, lr, backend)
    st.checked = CheckedStep(st)
    return st


# A measurement stops early once it has taken this long (seconds) and has at
# least MIN_SAMPLES samples: slow baselines (seconds per step) keep a run short.
MAX_TIME = 10.0
MIN_SAMPLES = 3


def median_step_seconds(fn, repeat=20, min_time=0.0, warmup=1, max_time=MAX_TIME):
    """Median seconds of ``fn()`` over ``repeat`` calls (more while under ``min_time``
    seconds; fewer, but at least MIN_SAMPLES, once past ``max_time`` seconds)."""
    for _ in range(warmup):
        fn()
    ts = []
    start = time.perf_counter()
    while len(ts) < repeat or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if len(ts) >= 10 * max(repeat, 1) and elapsed >= min_time:
            break
        if len(ts) >= MIN_SAMPLES and elapsed >= max_time:
            break
    return float(np.median(ts))


def _measure_bandwidth(nbytes=BANDWIDTH_BYTES, repeat=5) -> float:
    """Bytes moved per second by ``np.copyto`` (read src + write dst), best of ``repeat``."""
    from threadpoolctl import threadpool_limits  # noqa: F401  (copy is single-threaded in numpy)
    n = nbytes // 8
    src = np.ones(n)
    dst = np.empty(n)
    np.copyto(dst, src)                      # fault the pages in
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n * 8 / best


def _cache_path():
    return os.path.join(tempfile.gettempdir(), f"engine-bench-rates-{os.getuid() if hasattr(os, 'getuid') else 0}.json")


def _cached_rate(key, env, measure):
    """A machine rate: env variable ``env`` if set, else a fresh (<= BANDWIDTH_MAX_AGE s
    old) figure from the temp-dir cache (shared by the asv processes of one run),
    else ``measure()`` now, written back atomically."""
    val = os.environ.get(env)
    if val:
        return float(val)
    path = _cache_path()
    try:
        with open(path) as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        rec = {}
    if not isinstance(rec, dict):
        rec = {}
    hit = rec.get(key)
    try:
        if time.time() - hit["time"] <= BANDWIDTH_MAX_AGE and hit["value"] > 0:
            return float(hit["value"])
    except (KeyError, TypeError):
        pass
    value = measure()
    rec[key] = {"time": time.time(), "value": value}
    try:
        tmp = path + f".{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(rec, fh)
        os.replace(tmp, path)
    except OSError:
        pass
    return value


def forget_cached_rates() -> None:
    """Drop the temp-dir cache of machine rates, so the next bandwidth() / gemm_rate()
    measure now: bench/compare.py's t_limit must come from rates of its own run (the
    cache is for the asv processes of one run, which must agree on the rates)."""
    try:
        os.remove(_cache_path())
    except OSError:
        pass
    bandwidth.cache_clear()
    gemm_rate.cache_clear()


@functools.lru_cache(maxsize=None)
def bandwidth() -> float:
    """Streaming bandwidth (bytes/s): env ENGINE_BENCH_BANDWIDTH, else a fresh
    (<= BANDWIDTH_MAX_AGE s old) cached measurement, else measured now."""
    return _cached_rate("bandwidth", "ENGINE_BENCH_BANDWIDTH", _measure_bandwidth)


# Size of the matmul that measures the ?GEMM rate: large enough to run at the
# BLAS's peak (~1e9 multiply-adds, tens of ms on 2 cores), small enough to be cheap.
GEMM_SIZE = 1024


def _measure_gemm(dtype="float64", n=GEMM_SIZE, repeat=5) -> float:
    """Multiply-adds per second of an n x n x n matmul in ``dtype``, best of ``repeat``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    np.matmul(a, b, out=out)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return float(n) ** 3 / best


@functools.lru_cache(maxsize=None)
def gemm_rate(dtype="float64") -> float:
    """?GEMM multiply-adds per second (env ENGINE_BENCH_GEMM_F64 / _F32 overrides)."""
    dtype = np.dtype(dtype).name
    tag = "F64" if dtype == "float64" else "F32"
    return _cached_rate(f"gemm_{dtype}", f"ENGINE_BENCH_GEMM_{tag}", lambda: _measure_gemm(dtype))


def fma_min(d_in, n, d_out, m, L) -> int:
    """FMA_min = sum_i d_i d_{i-1} (d_out + 2 min(r, d_out)): the multiply-adds of
    an exact step -- one chain, the other chain, the rank-min(r, d_out) update --
    over the trained layers (d_0 = r = min(d_in, n): layer 1 is B_1 = A_1 U_r)."""
    w = [min(d_in, n)] + [m] * (L - 1) + [d_out]
    k = d_out + 2 * min(w[0], d_out)
    return sum(w[i + 1] * w[i] for i in range(L)) * k


def limit_seconds(d_in, n, d_out, m, L, dtype="float64") -> float:
    """t_limit = max(2 * trained weight bytes / bandwidth, FMA_min / ?GEMM rate),
    both rates measured in this run (issue 14's yardstick)."""
    itemsize = np.dtype(dtype).itemsize
    return max(floor_seconds(weight_bytes(d_in, n, d_out, m, L, itemsize)),
               fma_min(d_in, n, d_out, m, L) / gemm_rate(dtype))


def floor_seconds(nbytes: int) -> float:
    """t_floor = 2 * weight bytes / bandwidth: every weight read once and written once."""
    return 2.0 * nbytes / bandwidth()
