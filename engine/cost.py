"""What a grid of runs will cost, before any of it runs (issue 15 item 2).

    from engine import cost
    est = cost.estimate(cfgs, workers=2)          # calibrates on this machine (~0.1-3 s)
    print(est)     # "36 runs; predicted 12 s on 2 workers (...); peak memory per worker 4.1 MiB ..."

Model. One run of a config (engine.runs.DEFAULT_CONFIG) takes

    T = setup(L) + steps * step(L) + TASK_OVERHEAD

    step(L)  = s0 + FMA(L) / R       FMA(L) = sum_i d_i d_{i-1} (d_out + 2 min(r, d_out)),
                                     the multiply-adds of one exact GD step on the reduced
                                     data (d_0 = r = rank X; docs/design.md, "The step
                                     schedule"); R the measured FMA rate, s0 the per-step
                                     overhead (Python, the loss, the recording)
    setup(L) = u0 + (L - D1) * q     init (q: one more hidden layer: a Gaussian draw, or a
                                     Gaussian draw and a QR for orthogonal), data binding,
                                     the learning-rate rule, bookkeeping

R, s0, u0 and q are measured per *shape class* (data shape, rank, hidden width, dtype;
u0 and q per init and lr rule too) by timing ``engine.runs.run_config``
itself -- the code a worker runs, with the sweep's backend and thread limit
-- on copies of the grid's cells cut to depths D1 = 2 and D2 (a few layers)
and a few steps. At most ``MAX_CLASSES`` classes are timed, the most
expensive first, within ``CALIBRATION_BUDGET`` seconds; the others take the
rate of the nearest timed class (interpolated in log FMA per layer).

Every run is predicted to take its whole step budget: a run that reaches its
tolerance or diverges stops sooner, so the prediction is an upper bound for
grids with a tolerance (checked to within 25% on cells that run their whole
budget: ``python bench/cost_model.py``). The wall time is the makespan of the
sweep's schedule (most expensive runs first, each to the least-loaded worker)
plus ``CLUSTER_START`` for a local Dask cluster. Memory per worker is
``engine.memory``'s estimate of the largest run (in its dtype) plus its data.

float32 (issue 15 item 4) is measured, not assumed: a float32 class is timed in float32 (its
step rate, up to ~2x float64's where the weights stream from memory, slower for tiny nets
where the per-step costs dominate) and is predicted only from float32 classes.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

__all__ = ["CostModel", "Estimate", "estimate", "fma_per_step", "run_bytes", "proxy_seconds", "makespan",
           "MAX_CLASSES", "CALIBRATION_BUDGET", "COST_FIELDS"]

# Shape classes timed at most, and the seconds the timing may take in all (the
# largest classes go first: they decide the total; a long grid may take a small share of its
# nominal cost, up to CALIBRATION_MAX).
MAX_CLASSES = 6
CALIBRATION_BUDGET = 5.0
CALIBRATION_SHARE = 0.002
CALIBRATION_MAX = 20.0
# Weights the deeper calibration net holds at most: beyond the last-level cache of a laptop or
# a server core complex, so its per-layer time is the memory-bound one of big nets.
CACHE_BYTES = 64e6
# Dask's cost per task (submit, schedule, transfer the result, store the row):
# ~2-5 ms measured on a LocalCluster; and starting a LocalCluster of worker processes.
TASK_OVERHEAD = 0.004
CLUSTER_START = 3.0
# Uncalibrated rates for ``proxy_seconds`` (ordering only, never printed as a time):
# a DGEMM-like FMA rate and the per-step / per-layer overheads of the 2-core dev box.
_PROXY_RATE = 1.0e10
_PROXY_STEP = 3.0e-5
_PROXY_LAYER = 2.0e-6
# Config fields that change a run's cost; the others (seeds, lr_scale, tol, escape) only
# multiply the number of runs of each cost.
COST_FIELDS = ("d_in", "n", "d_out", "rank", "kappa", "init", "width", "depth", "steps", "lr", "dtype")


def _dtype(cfg) -> str:
    """A config's dtype (engine.runs.OPTIONAL_FIELDS: absent means float64)."""
    return cfg.get("dtype") or "float64"


def _itemsize(cfg) -> int:
    return 4 if _dtype(cfg) == "float32" else 8


def _rank(cfg) -> int:
    r = cfg.get("rank")
    return int(r) if r else min(int(cfg["d_in"]), int(cfg["n"]))


def _reduced_runs(cfg):
    """Widths of the reduced problem as runs [(w, k)]: d_0 = r (docs/design.md, "Data reduction")."""
    L = int(cfg["depth"])
    if L == 1:
        return [(_rank(cfg), 1), (int(cfg["d_out"]), 1)]
    return [(_rank(cfg), 1), (int(cfg["width"]), L - 1), (int(cfg["d_out"]), 1)]


def fma_per_step(cfg, depth=None) -> float:
    """Multiply-adds of one exact GD step of ``cfg`` (at ``depth`` if given):
    sum_i d_i d_{i-1} (d_out + 2 min(r, d_out)) on the reduced data."""
    if depth is not None:
        cfg = dict(cfg, depth=depth)
    runs = _reduced_runs(cfg)
    d_out, r = int(cfg["d_out"]), _rank(cfg)
    per = d_out + 2 * min(r, d_out)
    total, prev = 0, None
    for w, k in runs:
        if prev is not None:
            total += w * prev
        total += (k - 1) * w * w
        prev = w
    return float(total * per)


def run_bytes(cfg) -> int:
    """Peak bytes of one run: engine.memory's estimate of its network in its dtype plus its data
    (X, Y, and the reduced copies: U_r, Y V_r, S_r in float64; in float32 too for a float32 run)."""
    from . import memory
    L = int(cfg["depth"])
    runs = [(int(cfg["d_in"]), 1)] + ([(int(cfg["width"]), L - 1)] if L > 1 else []) + [(int(cfg["d_out"]), 1)]
    d_in, n, d_out, r = int(cfg["d_in"]), int(cfg["n"]), int(cfg["d_out"]), _rank(cfg)
    red = d_in * r + d_out * r + r * r
    data = 8 * (d_in * n + d_out * n + red) + (4 * red if _dtype(cfg) == "float32" else 0)
    return int(memory.estimate_runs(runs, dtype=_dtype(cfg))) + data


def _init_flops(cfg, depth=None) -> float:
    """Work of the init per hidden layer beyond the first, for scaling q between widths."""
    m = int(cfg["width"])
    return float(m * m * (m if cfg["init"] == "orthogonal" else 1))


def proxy_seconds(cfg) -> float:
    """An uncalibrated cost of one run (seconds on a nominal machine) for ordering runs,
    most expensive first; never shown as a prediction."""
    L = int(cfg["depth"])
    steps = int(cfg["steps"])
    init = (L - 1) * _init_flops(cfg) / _PROXY_RATE if L > 1 else 0.0
    return init + steps * (_PROXY_STEP + L * _PROXY_LAYER + fma_per_step(cfg) / _PROXY_RATE)


def makespan(times, workers: int) -> float:
    """Wall time of running ``times`` (seconds) on ``workers`` workers, longest first, each
    to the least-loaded worker (the sweep's schedule)."""
    times = sorted((float(t) for t in times), reverse=True)
    w = max(1, int(workers))
    if len(times) <= w:
        return times[0] if times else 0.0
    loads = [0.0] * w
    for t in times:
        heapq.heapreplace(loads, loads[0] + t)
    return max(loads)


def _layer_x(cfg) -> float:
    """log of the FMA of one more hidden layer per step (what the rate is interpolated in)."""
    return math.log(max(1.0, fma_per_step(cfg, 3) - fma_per_step(cfg, 2)))


# _step_key: (d_in, n, d_out, rank, kappa, width, dtype); _setup_key adds (init, lr rule).
_WIDTH, _DTYPE, _INIT = 5, 6, 7


def _step_key(cfg):
    return (int(cfg["d_in"]), int(cfg["n"]), int(cfg["d_out"]), cfg.get("rank"), cfg.get("kappa"),
            int(cfg["width"]) if int(cfg["depth"]) > 1 else 0, _dtype(cfg))


def _setup_key(cfg):
    lr = cfg.get("lr")
    return _step_key(cfg) + (cfg["init"], lr if isinstance(lr, str) else "number")


@dataclass
class _StepFit:
    points: list   # [(depth, seconds per step)] measured, by depth
    s0: float      # seconds per step, fixed (intercept of the first two points)
    rate: float    # FMA per second of one more layer at the deepest points (memory-bound for big nets)
    x: float       # log FMA per square hidden layer (for interpolation between classes)

    def seconds(self, depth: int) -> float:
        """Seconds per step at ``depth``: piecewise linear through the measured points (the time
        per layer changes where the weights stop fitting in cache), the last slope beyond."""
        pts = self.points
        if len(pts) == 1:
            return pts[0][1]
        for (la, ta), (lb, tb) in zip(pts, pts[1:]):
            if depth <= lb:
                return ta + (depth - la) * (tb - ta) / (lb - la)
        (la, ta), (lb, tb) = pts[-2], pts[-1]
        return tb + (depth - lb) * max(0.0, (tb - ta) / (lb - la))


@dataclass
class _SetupFit:
    u: float       # seconds at depth D1
    q: float       # seconds per hidden layer beyond D1
    d1: int
    work: float    # _init_flops of the class (to scale q to other widths)


class CostModel:
    """Seconds per run of configs, calibrated on this machine (see the module docstring).

    backend, threads_per_run : as the sweep will run them (engine.sweep.run_sweep).
    """

    def __init__(self, backend: str = "auto", threads_per_run: int = 1):
        self.backend = backend
        self.threads = threads_per_run
        self.steps = {}      # _step_key -> _StepFit
        self.setups = {}     # _setup_key -> _SetupFit
        self.seconds = 0.0   # time spent calibrating
        self.problem = None  # why a calibration run failed (the prediction then uses proxy_seconds)

    # -- calibration ----------------------------------------------------------------
    def _time(self, cfg):
        """(seconds of the whole call, seconds of training, steps run) of run_config(cfg)."""
        import warnings
        from .runs import execute, run_config
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the cells' own warnings (bottleneck, lr) come with the sweep
            t0 = time.perf_counter()
            out = execute(run_config, cfg, self.backend, self.threads)
            total = time.perf_counter() - t0
        res = out["result"]
        if res.get("status") == "failed":
            raise RuntimeError(f"calibration run failed: {res.get('error')}")
        return total, float(res.get("wall_time") or 0.0), int(res.get("steps_run") or 0)

    def _depths(self, cfg, depths=()):
        """Depths to time a class at: 2, and up to three of its grid depths cut to ~CACHE_BYTES
        of weights (deep enough that the weights stream from memory as the full net's do: a
        per-layer time taken on a net that fits in cache is up to ~2x too fast for one that
        does not; shallow enough to stay cheap). Depth-1 classes: (1,)."""
        L = int(cfg["depth"])
        if L == 1:
            return (1,)
        m = int(cfg["width"])
        cap = max(3, int(CACHE_BYTES / (_itemsize(cfg) * m * m)))
        cands = sorted({min(int(d), cap) for d in (depths or (L,)) if int(d) > 2} |
                       ({cap} if max(depths or (L,)) > cap else set()))
        if len(cands) > 3:
            cands = [cands[0], cands[len(cands) // 2], cands[-1]]
        return tuple([2] + (cands or [3]))

    def _step_time(self, cfg, depth):
        """Seconds per step of ``cfg`` at ``depth``: the difference of a 2-step and an n-step run,
        so train's fixed costs (binding, the first loss, the last one) are not spread over a few
        steps; at 1e-6 x the theorem's rate, so nothing diverges or stops early and the updates
        stay far from subnormal numbers (lr = 1e-300 makes the products subnormal: ~2x slower
        arithmetic, measured)."""
        # Gaussian init whatever the cell's: the step does not depend on it, and an orthogonal
        # init (a QR per layer) would cost more than the steps timed
        c = dict(cfg, depth=depth, init="gaussian", lr="theory", lr_scale=1e-6, tol=0, escape=None,
                 stop_at_escape=False)
        _, w1, n1 = self._time(dict(c, steps=2))
        per = w1 / max(n1, 1)
        n2 = int(min(400, max(10, 2 + 0.05 / max(per, 1e-7))))
        best = math.inf
        for rep in range(2):
            _, w1, n1 = self._time(dict(c, steps=2))
            _, w2, n2r = self._time(dict(c, steps=n2))
            if n2r > n1:
                best = min(best, max(w2 - w1, 0.0) / (n2r - n1))
            if w2 > 0.2:   # long enough that a second try buys little against the budget
                break
        return best if math.isfinite(best) else per

    def _setup_time(self, cfg, depth):
        """Seconds of a run of no step at ``depth``: init, binding, lr rule, first loss, bookkeeping."""
        c = dict(cfg, depth=depth, steps=0)
        t = self._time(c)[0]
        return t if t > 0.2 else min(t, self._time(c)[0])

    def _calibrate_step(self, cfg, depths=()):
        ds = self._depths(cfg, depths)
        pts = [(d, self._step_time(cfg, d)) for d in ds]
        x = _layer_x(cfg) if int(cfg["depth"]) > 1 else 0.0
        if len(pts) == 1:
            d, t = pts[0]
            return _StepFit(pts, 0.0, fma_per_step(cfg, d) / max(t, 1e-12), x)
        (da, ta), (db, tb) = pts[-2], pts[-1]
        fa, fb = fma_per_step(cfg, da), fma_per_step(cfg, db)
        rate = (fb - fa) / (tb - ta) if tb > ta else fb / max(tb, 1e-12)
        (d1, t1), (d2, t2) = pts[0], pts[1]
        f1, f2 = fma_per_step(cfg, d1), fma_per_step(cfg, d2)
        s0 = max(0.0, t1 - f1 * (t2 - t1) / (f2 - f1)) if t2 > t1 else 0.0
        return _StepFit(pts, s0, rate, x)

    def _calibrate_setup(self, cfg):
        ds = self._depths(cfg)
        u1 = self._setup_time(cfg, ds[0])
        if len(ds) == 1:
            return _SetupFit(u1, 0.0, ds[0], 1.0)
        d2 = ds[-1]
        u2 = self._setup_time(cfg, d2)
        return _SetupFit(u1, max(0.0, (u2 - u1) / (d2 - ds[0])), ds[0], _init_flops(cfg))

    def calibrate(self, cfgs, budget: float = None, max_classes: int = MAX_CLASSES):
        """Time up to ``max_classes`` shape classes of ``cfgs`` (normalized configs), the most
        expensive first, until ``budget`` seconds are spent (default: CALIBRATION_BUDGET, up to
        CALIBRATION_SHARE of the grid's nominal cost for a long grid, at most CALIBRATION_MAX).
        Returns self."""
        t0 = time.perf_counter()
        if budget is None:
            nominal = sum(proxy_seconds(c) for c in cfgs)
            budget = min(CALIBRATION_MAX, max(CALIBRATION_BUDGET, CALIBRATION_SHARE * nominal))
        reps = {}
        for c in cfgs:
            k = _setup_key(c)
            if k not in reps or int(c["depth"]) > int(reps[k]["depth"]):
                reps[k] = c
        by_step, depths = {}, {}
        for k, c in reps.items():
            by_step.setdefault(_step_key(c), []).append(c)
        for c in cfgs:
            depths.setdefault(_step_key(c), set()).add(int(c["depth"]))
        # most expensive classes first (per-layer FMA, then depth); then spread over the rest
        order = sorted(by_step, key=lambda k: -max(proxy_seconds(c) for c in by_step[k]))
        if len(order) > max_classes:
            pick = {round(i * (len(order) - 1) / (max_classes - 1)) for i in range(max_classes)}
            # every dtype's most expensive class too: a dtype is predicted from its own timings only
            pick |= {min(i for i, k in enumerate(order) if k[_DTYPE] == dt) for dt in {k[_DTYPE] for k in order}}
            order = [order[i] for i in sorted(pick)]
        for k in order:
            if time.perf_counter() - t0 > budget and self.steps:
                break
            try:
                if k not in self.steps:
                    self.steps[k] = self._calibrate_step(max(by_step[k], key=lambda c: int(c["depth"])),
                                                         sorted(depths[k]))
                for c in by_step[k]:
                    sk = _setup_key(c)
                    first = not any(s[_INIT:] == sk[_INIT:] for s in self.setups)   # this init and lr rule's first
                    if sk not in self.setups and (time.perf_counter() - t0 <= budget or first):
                        self.setups[sk] = self._calibrate_setup(c)
            except RuntimeError as exc:   # e.g. the memory guard refuses the cell: the sweep will say so
                self.problem = str(exc)
                self.steps.pop(k, None)
        self.seconds += time.perf_counter() - t0
        return self

    # -- prediction -----------------------------------------------------------------
    def _step_fit(self, cfg) -> _StepFit:
        fit = self.steps.get(_step_key(cfg))
        if fit is not None:
            return fit
        if not self.steps:
            raise RuntimeError("cost model: not calibrated (call calibrate(cfgs) first)")
        deep = int(cfg["depth"]) > 1
        x = _layer_x(cfg) if deep else 0.0
        # the timed classes of this dtype (calibrate times each dtype's costliest class), others
        # only if none of it was timed (a calibration run failed)
        same = {k: f for k, f in self.steps.items() if k[_DTYPE] == _dtype(cfg)} or self.steps
        pts = sorted(((f.x, f) for k, f in same.items() if (k[_WIDTH] > 0) == deep), key=lambda p: p[0]) or \
            sorted(((f.x, f) for f in same.values()), key=lambda p: p[0])
        # log-rate linear in log FMA-per-layer between the timed classes, constant beyond
        lo = [p for p in pts if p[0] <= x]
        hi = [p for p in pts if p[0] >= x]
        if lo and hi and hi[0][0] > lo[-1][0]:
            (xa, fa), (xb, fb) = lo[-1], hi[0]
            w = (x - xa) / (xb - xa)
            rate = math.exp((1 - w) * math.log(fa.rate) + w * math.log(fb.rate))
            return _StepFit([], (1 - w) * fa.s0 + w * fb.s0, rate, x)
        f = (lo[-1] if lo else hi[0])[1]
        return _StepFit([], f.s0, f.rate, x)

    def _setup_seconds(self, cfg) -> float:
        L = int(cfg["depth"])
        fit = self.setups.get(_setup_key(cfg))
        if fit is not None:
            return fit.u + max(0, L - fit.d1) * fit.q
        if not self.setups:
            return 0.0
        # the nearest timed class of the same init (and lr rule, if timed), its per-layer cost
        # scaled by the init's work per layer (m^2 draws; m^3 for a QR)
        key = _setup_key(cfg)
        same = ([(k, f) for k, f in self.setups.items() if k[_INIT:] == key[_INIT:]]
                or [(k, f) for k, f in self.setups.items() if k[_INIT] == key[_INIT]])
        scale = bool(same)
        same = same or list(self.setups.items())
        w = int(cfg["width"]) if L > 1 else 0
        k, f = min(same, key=lambda kf: abs(math.log(max(kf[0][_WIDTH], 1)) - math.log(max(w, 1))))
        if L > 1 and k[_WIDTH] > 0:
            q = f.q * (_init_flops(cfg) / f.work if scale and f.work > 0 else (w / k[_WIDTH]) ** 2)
        else:
            q = f.q
        return f.u + max(0, L - f.d1) * q

    def run_seconds(self, cfg) -> float:
        """Predicted seconds of one run of the normalized config ``cfg`` over its whole budget."""
        if not self.steps:   # nothing could be timed: the nominal machine of proxy_seconds
            return proxy_seconds(cfg) + TASK_OVERHEAD
        fit = self._step_fit(cfg)
        # a timed class: through its measured points; another: its FMA at the interpolated rate
        step = fit.seconds(int(cfg["depth"])) if fit.points else fit.s0 + fma_per_step(cfg) / fit.rate
        return self._setup_seconds(cfg) + int(cfg["steps"]) * step + TASK_OVERHEAD


@dataclass
class Estimate:
    """What ``estimate`` predicts for a grid. Times in seconds, memory in bytes."""
    runs: int
    wall: float
    serial: float
    workers: int
    peak_bytes: int
    peak_run: dict = field(default_factory=dict)
    calibration: float = 0.0
    calibrated: bool = True
    mode: str = "serial"
    skipped: int = 0
    times: list = field(default_factory=list, repr=False)

    def __str__(self):
        from .memory import fmt_bytes
        where = {"serial": "serially", "remote": "on one worker of this machine's speed"}.get(
            self.mode, f"on {self.workers} worker{'s' if self.workers != 1 else ''}")
        done = f" ({self.skipped} more already in the database)" if self.skipped else ""
        pr = self.peak_run
        big = (f"largest run: width {pr.get('width')}, depth {pr.get('depth')}" if pr else "")
        how = (f"calibrated on this machine in {self.calibration:.1f} s" if self.calibrated else
               "NOT calibrated: no calibration run succeeded, nominal rates")
        return (f"{self.runs} runs to do{done}; predicted {_fmt_seconds(self.wall)} {where} "
                f"({_fmt_seconds(self.serial)} of runs, at most: a run stopping at its tolerance or "
                f"diverging ends sooner; {how}); "
                f"peak memory per worker {fmt_bytes(self.peak_bytes)}" + (f" ({big})" if big else ""))


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def estimate(cfgs, workers: int = 1, *, backend: str = "auto", threads_per_run: int = 1, mode: str = None,
             model: CostModel = None, weights=None, skipped: int = 0, budget: float = None) -> Estimate:
    """Predicted wall time, serial time and peak memory per worker of running ``cfgs``
    (normalized configs; ``weights[i]``: how many runs ``cfgs[i]`` stands for) on
    ``workers`` workers. ``mode``: "serial", "local" (a LocalCluster: adds its start-up)
    or "remote"; default serial for workers <= 1, else local."""
    cfgs = list(cfgs)
    weights = [1] * len(cfgs) if weights is None else [int(w) for w in weights]
    mode = mode or ("serial" if workers <= 1 else "local")
    if model is None:
        model = CostModel(backend, threads_per_run)
    if cfgs:
        model.calibrate(cfgs, budget=budget)
    times, total, n = [], 0.0, sum(weights)
    for c, w in zip(cfgs, weights):
        t = model.run_seconds(c)
        total += t * w
        if len(times) < 200_000:
            times.extend([t] * min(w, 200_000 - len(times)))
    W = 1 if mode == "serial" else max(1, int(workers))
    if len(times) == n:
        wall = makespan(times, W)
    else:   # too many to schedule one by one: the bound of a longest-first schedule
        wall = max(total / W, max(times, default=0.0))
    if mode == "local" and n:
        wall += CLUSTER_START
    peak, peak_cfg = 0, {}
    for c in cfgs:
        b = run_bytes(c)
        if b > peak:
            peak, peak_cfg = b, c
    return Estimate(runs=n, wall=wall, serial=total, workers=W, peak_bytes=peak, peak_run=peak_cfg,
                    calibration=model.seconds, calibrated=bool(model.steps) or not cfgs, mode=mode,
                    skipped=skipped, times=times)
