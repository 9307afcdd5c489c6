"""Grids of runs on dask.distributed (or serially), every result in SQLite.

    from engine.sweep import grid, run_sweep
    cfgs = grid(init=["gaussian", "orthogonal"], width=[16, 64], depth=[4, 16], seed=[0, 1], steps=500)
    summary = run_sweep(cfgs, "results.db")                  # LocalCluster on this machine
    summary = run_sweep(cfgs, "results.db", workers=0)       # serial, in this process
    summary = run_sweep(cfgs, "results.db", scheduler="tcp://host:8786")   # an existing cluster

A run is described by a *config*: a flat dict of JSON values (see
``engine.runs.DEFAULT_CONFIG``: data, network, learning rate, budget). Its key is a hash
of the config (``engine.results.run_key``), so re-running a sweep skips the
runs already in the database; a failed run is retried. Only this driver
process writes the database, one committed transaction per finished run, so
killing the driver or a worker (even with SIGKILL) loses at most the runs in
flight. A run that raises, or whose worker dies, is stored with
status "failed" and the error, and the sweep goes on.

Each run executes with BLAS (threadpoolctl) and Numba limited to
``threads_per_run`` threads (default 1: one run per core, in parallel) in the
serial and the distributed mode alike, so both modes give identical numbers
on the same backend.

The whole grid is validated before the first run (``normalize_config``: a
ValueError naming the field and the value). On Dask, runs are submitted in
bounded batches (at most ``2 x workers`` in flight, so the driver's memory
does not grow with the grid), the most expensive first (``engine.cost``),
and on a local cluster only while the memory estimates of the runs in flight
fit in the machine's available memory (``engine.memory``). Worker processes
of a local cluster ignore the terminal's Ctrl-C: only the driver reacts, and
it cancels what is in flight and shuts them down.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .results import ResultsDB, ResultsDBError, run_key, utcnow
# a config's fields, checks and run live in engine.runs; sweep re-exports the public names
from .runs import DEFAULT_CONFIG, execute, failed_payload, normalize_config, run_config, subsample_curve  # noqa: F401
from .batch import execute_batch


__all__ = ["DEFAULT_CONFIG", "grid", "grid_size", "iter_grid", "dask_client", "normalize_config", "run_config",
           "run_sweep", "SweepSummary", "subsample_curve", "read_grid_file", "grid_file_configs", "cost_shapes",
           "unfinished", "planned_workers"]


def grid(**axes) -> list[dict]:
    """Cartesian product of the list-valued fields; scalar fields are fixed.

    ``grid(init=["gaussian", "orthogonal"], width=[16, 32], depth=[2, 8], steps=300)``
    gives 8 configs (defaults filled in from DEFAULT_CONFIG), every one checked
    (``normalize_config``). Duplicates (for instance all widths at depth 1) are
    removed, order kept. ``grid_size(**axes)`` gives the count without expanding.
    """
    out, seen = [], set()
    for cfg in iter_grid(**axes):
        k = run_key(cfg)
        if k not in seen:
            seen.add(k)
            out.append(cfg)
    return out


def iter_grid(**axes):
    """The configs of ``grid(**axes)`` one at a time, duplicates included (nothing is held)."""
    names = list(axes)
    values = [_axis(k, v) for k, v in axes.items()]
    for combo in itertools.product(*values):
        yield normalize_config(dict(zip(names, combo)))


def grid_size(**axes) -> int:
    """The number of cells of ``grid(**axes)`` before duplicates are removed: the product of
    the axes' lengths, computed without expanding anything."""
    n = 1
    for k, v in axes.items():
        n *= len(_axis(k, v))
    return n


def _axis(name, v) -> list:
    """The values of one grid axis: any iterable (list, tuple, range, array, generator) is
    crossed; a string, number or None is one fixed value; a set or dict is refused (no order)."""
    if isinstance(v, (str, bytes)) or v is None or np.ndim(v) == 0 and not hasattr(v, "__iter__"):
        return [v.item() if isinstance(v, np.generic) else v]
    if isinstance(v, (set, frozenset, dict)):
        raise TypeError(f"{name}: a grid axis must be ordered (list, tuple, range, array), got a "
                        f"{type(v).__name__}")
    try:
        vals = [x.item() if isinstance(x, np.generic) else x for x in v]
    except TypeError:
        return [v]
    if not vals:
        raise ValueError(f"{name}: the grid axis is empty, so the grid has no cells; give at least one value")
    return vals



def read_grid_file(path):
    """(name, parts) of a JSON grid file, each part a dict of axes for ``grid``:
    {"name": "mygrid", "grid": {"init": ["gaussian", "orthogonal"], "width": [16, 64], ...}}, "grid"
    also a list of such dicts ("configs" an older name of it), or the dict or list alone (its name
    then the file's). ValueError for a file that is not such JSON."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"grid file {path!r} is not valid JSON: {exc}") from None
    name = os.path.splitext(os.path.basename(path))[0]
    if isinstance(spec, dict) and ("grid" in spec or "configs" in spec):
        name = spec.get("name", name)
        body = spec.get("grid", spec.get("configs"))
    else:
        body = spec
    parts = body if isinstance(body, list) else [body]
    if not parts or not all(isinstance(p, dict) for p in parts):
        raise ValueError(f"grid file {path!r}: 'grid' must be a dict of fields (lists are crossed) "
                         "or a list of such dicts")
    return name, parts


def grid_file_configs(parts) -> list:
    """The configs of a grid file's parts (``read_grid_file``), part after part, every one checked."""
    return [c for part in parts for c in grid(**part)]


def cost_shapes(parts):
    """(configs, weights): one config per distinct cost of a grid's parts (engine.cost.COST_FIELDS),
    weighted by how many cells it stands for; the axes that do not change the cost are never
    expanded, so a grid of 10^7 cells is estimated from its few shapes."""
    from .cost import COST_FIELDS
    cells, weights = [], []
    for part in parts:
        shape, mult = {}, 1
        for k, v in part.items():
            vals = _axis(k, v)
            if k in COST_FIELDS:
                shape[k] = vals
            else:
                shape[k] = vals[:1]
                mult *= len(vals)
        for c in iter_grid(**shape):
            cells.append(c)
            weights.append(mult)
    return cells, weights


def unfinished(configs, db) -> tuple:
    """(the configs a sweep into ``db`` would still run, how many it would skip): those not stored
    as finished (ok or diverged) in the database ``db`` (a path; None or a missing or unreadable
    file: none finished). Only reads ``db``."""
    if not db or not os.path.exists(db):
        return list(configs), 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # another engine version: the sweep itself says so
            with ResultsDB(db, readonly=True) as store:
                done = {k for k, st in store.statuses().items() if st in ("ok", "diverged")}
    except ResultsDBError:
        done = set()
    todo = [c for c in configs if run_key(c) not in done]
    return todo, len(configs) - len(todo)


def planned_workers(workers=None, scheduler=None) -> tuple:
    """(number of workers, "serial" | "local" | "remote") a sweep with these arguments runs on,
    without starting anything; a remote cluster's size is unknown before connecting: 1."""
    if scheduler is not None:
        return 1, "remote"
    if workers == 0:
        return 1, "serial"
    return int(workers or os.cpu_count() or 1), "local"


@dataclass
class SweepSummary:
    """What a sweep did. ``keys`` are the run keys of the whole grid, in grid order;
    ``failed_total`` counts the grid's runs stored as failed when it ended (those run
    now and, with retry_failed=False, those skipped); ``estimate`` is the cost
    predicted before the first run (``engine.cost.Estimate``, when asked for)."""
    total: int
    skipped: int
    done: int = 0
    failed: int = 0
    diverged: int = 0
    wall_time: float = 0.0
    keys: list = field(default_factory=list)
    mode: str = "serial"
    failed_total: int = 0
    estimate: object = None

    def __str__(self):
        return (f"{self.total} runs: {self.skipped} already in the database, {self.done} done "
                f"({self.diverged} diverged), {self.failed} failed; {self.wall_time:.1f} s ({self.mode})")


def run_sweep(configs, db, *, experiment=None, workers=None, scheduler=None, backend="auto",
              threads_per_run=1, progress=True, retry_failed=True, func=None, lock_timeout=10.0,
              allow_version_mismatch=False, client=None, estimate=False, max_in_flight=None,
              memory_budget="auto", batch="auto") -> SweepSummary:
    """Run every config not yet in the database ``db`` (a path or a ResultsDB).

    configs : normalized or partial configs (any iterable); all are checked before the
              first run (ValueError naming the field and value).
    workers : None -> a dask LocalCluster with one single-threaded worker
              process per core (cpu count); an int > 0 -> that many workers;
              0 -> serial, in this process.
    scheduler : "tcp://host:port" of a running dask scheduler (overrides workers).
    client : a client from ``dask_client(...)`` to share one cluster between sweeps
             (overrides workers and scheduler).
    backend : engine backend for every run ("auto" picks the fastest available).
    threads_per_run : BLAS and Numba threads per run; 0 leaves them alone.
    retry_failed : re-run configs stored with status "failed" (default True).
    func : the run function, ``func(config, backend) -> {"result", "curve"}``
           (default ``run_config``); must be importable by the workers.
    estimate : print one line first -- runs to do, predicted wall time on this machine,
               peak memory per worker (``engine.cost``, calibrated in ~0.1-3 s) -- and keep
               it as ``summary.estimate`` (the CLI prints its own line, for the whole command).
    max_in_flight : runs submitted to Dask and not yet finished, at most (default 2 x workers).
    batch : "auto" -- configs that differ only in seed, init or lr (``engine.batch.group_key``) run
            as one ensemble (one task) where that gives each of them the row a separate run
            gives and a measurement (``engine.batch.decide``) predicts it faster; True: wherever
            the rows are the same, unmeasured; False: every run alone. Only with the default
            ``func``.
    memory_budget : bytes the runs in flight may need together (engine.cost.run_bytes);
                    "auto": the machine's available memory (engine.memory.available_bytes,
                    ENGINE_MEMORY_LIMIT) on a local cluster, no limit on a remote one; None: no limit.

    Returns SweepSummary. Database problems raise engine.results.ResultsDBError
    subclasses with a one-line message (locked, read-only, other version).
    """
    from .kernels import BACKEND_NAMES
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend: unknown backend {backend!r}; choose one of {list(BACKEND_NAMES)}")
    func = run_config if func is None else func
    # the whole grid is checked before the database is touched or anything runs
    # Each run is held as (key, canonical JSON, cost, bytes) -- ~0.5 KB, not a dict of ~1 KB --
    # until it is submitted: the driver's memory per run of a 10^5-cell grid (issue 11 item 8).
    from . import cost
    from .results import canonical_config, key_of_canonical
    cfgs, keys, seen = [], [], set()
    for c in configs:
        c = normalize_config(c)
        text = canonical_config(c)
        k = key_of_canonical(text)
        keys.append(k)
        if k not in seen:
            seen.add(k)
            cfgs.append((k, text, cost.proxy_seconds(c), cost.run_bytes(c)))
    del seen
    own = not isinstance(db, ResultsDB)
    store = ResultsDB(db, lock_timeout=lock_timeout, allow_version_mismatch=allow_version_mismatch) if own else db
    try:
        store.add_members(experiment, [p[0] for p in cfgs])
        have = store.statuses()
        finished = {"ok", "diverged"} if retry_failed else {"ok", "diverged", "failed"}
        pending = [p for p in cfgs if have.get(p[0]) not in finished]
        del have
        summary = SweepSummary(total=len(cfgs), skipped=len(cfgs) - len(pending), keys=keys)
        t0 = time.perf_counter()
        bar = None

        def record(k, c, out):
            res = out["result"]
            res.setdefault("finished_utc", utcnow())
            store.put(k, c, res, out.get("curve"), experiment=experiment)
            st = res.get("status")
            if st == "failed":
                summary.failed += 1
            else:
                summary.done += 1
                summary.diverged += st == "diverged"
            if bar is not None:
                bar.set_postfix(done=summary.done, failed=summary.failed, refresh=False)
                bar.update(1)

        def go(cl):
            nonlocal bar
            W, mode = _workers_of(cl)
            if estimate:
                from . import cost
                est = cost.estimate([json.loads(p[1]) for p in pending], W, backend=backend,
                                    threads_per_run=threads_per_run, mode=mode, skipped=summary.skipped)
                summary.estimate = est
                print(f"sweep: {est}", flush=True)
            bar = _bar(len(pending), progress)
            tasks = _tasks(pending, batch if func is run_config else False, backend, threads_per_run, W, mode)
            return _run_on(cl, tasks, record, func, backend, threads_per_run, W, mode,
                           max_in_flight, memory_budget)

        try:
            if pending:
                if client is not None:
                    summary.mode = go(client)
                else:
                    with dask_client(workers, scheduler) as cl:
                        summary.mode = go(cl)
        except KeyboardInterrupt:
            if bar is not None:
                bar.leave = False   # interrupted: erase the bar, the one line said is the CLI's
            raise
        finally:
            if bar is not None:
                bar.close()
        summary.wall_time = time.perf_counter() - t0
        grid_keys = {p[0] for p in cfgs}
        summary.failed_total = sum(1 for k, st in store.statuses().items() if st == "failed" and k in grid_keys)
        return summary
    finally:
        if own:
            store.close()


def _bar(total, enabled):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm
    b = tqdm(total=total, unit="run", desc="sweep", file=sys.stderr, dynamic_ncols=True)
    b.set_postfix(done=0, failed=0)
    return b


class _Serial:
    """Stand-in for a dask client: run in this process (workers=0, or dask missing)."""
    mode = "serial"


class _Lazy:
    """A dask client started on first use: a sweep with nothing left to run starts no cluster."""
    client = None
    cluster = None
    start = None
    n_workers = None    # of the LocalCluster it will start (None: a remote scheduler)

    def get(self):
        if self.client is None:
            self.client = self.start()
        return self.client


def _workers_of(cl):
    """(number of workers, "serial" | "local" | "remote") of what ``dask_client`` yielded."""
    if isinstance(cl, _Serial):
        return 1, "serial"
    if isinstance(cl, _Lazy) and cl.n_workers is not None:
        return cl.n_workers, "local"
    client = cl.get() if isinstance(cl, _Lazy) else cl
    try:
        info = client.scheduler_info()
        n = sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values())
    except Exception:  # pragma: no cover - an odd client
        n = 1
    local = getattr(client, "cluster", None) is not None
    return max(1, n), ("local" if local else "remote")


@contextlib.contextmanager
def _workers_ignore_sigint():
    """While a LocalCluster lives: its worker processes start with SIGINT ignored, so the
    terminal's Ctrl-C, sent to the whole foreground process group, reaches only the driver,
    which cancels the runs in flight and shuts the workers down (no worker tracebacks, issue 12
    item 3). Workers are spawned (also when the nanny restarts one) through a two-line shell
    shim, ``trap '' INT; exec python "$@"``: an ignored signal stays ignored across exec and
    Python keeps it so. Setting SIG_IGN in the driver instead would drop a Ctrl-C that arrives
    while the cluster starts; blocking it does not carry over (spawn resets the mask).
    Where the shim cannot run (no /bin/sh, a noexec temp directory) the ``engine._dask_worker``
    preload still sets SIG_IGN once a worker is up. One shim per process, shared by nested or
    concurrent clusters (reference-counted)."""
    import multiprocessing.spawn as mp_spawn
    import shlex
    import shutil
    import subprocess
    import tempfile
    if os.name != "posix" or not os.path.exists("/bin/sh"):
        yield
        return
    with _SHIM_LOCK:
        if _SHIM["users"] == 0:
            real = os.fsdecode(mp_spawn.get_executable())
            d = tempfile.mkdtemp(prefix="engine-dask-")
            shim = os.path.join(d, "python")
            try:
                with open(shim, "w") as f:
                    f.write("#!/bin/sh\n# engine.sweep: a dask worker leaves the terminal's Ctrl-C to the driver\n"
                            f"trap '' INT\nexec {shlex.quote(real)} \"$@\"\n")
                os.chmod(shim, 0o700)
                ok = subprocess.run([shim, "-c", "pass"], capture_output=True, timeout=60).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                mp_spawn.set_executable(shim)
            _SHIM.update(real=real, dir=d, ok=ok)
        _SHIM["users"] += 1
    try:
        yield
    finally:
        with _SHIM_LOCK:
            _SHIM["users"] -= 1
            if _SHIM["users"] == 0:
                if _SHIM["ok"]:
                    mp_spawn.set_executable(_SHIM["real"])
                shutil.rmtree(_SHIM["dir"], ignore_errors=True)


_SHIM = {"users": 0, "real": None, "dir": None, "ok": False}
_SHIM_LOCK = threading.Lock()


def dask_client(workers=None, scheduler=None):
    """Context manager yielding what ``run_sweep(client=...)`` takes, so several sweeps
    (bisection rounds, an experiment's parts) share one cluster:

        with dask_client(workers=2) as client:
            run_sweep(cfgs1, db, client=client); run_sweep(cfgs2, db, client=client)

    workers=0 (and no scheduler) gives a serial stand-in; without dask installed
    too (with a warning), unless a scheduler address was given (RuntimeError).
    """

    @contextlib.contextmanager
    def cm():
        if scheduler is None and workers == 0:
            yield _Serial()
            return
        try:
            import dask
            from dask.distributed import Client, LocalCluster
        except ImportError:
            if scheduler is not None:
                raise RuntimeError("scheduler: dask.distributed is not installed "
                                   "(pip install 'engine[dist]'), cannot reach a cluster") from None
            warnings.warn("dask.distributed is not installed (pip install 'engine[dist]'): running serially")
            s = _Serial()
            s.mode = "serial (no dask)"
            yield s
            return
        import logging
        lazy = _Lazy()
        if scheduler is None:
            lazy.n_workers = planned_workers(workers)[0]

        def start():
            # A task whose worker dies is retried once on another worker; if that one
            # dies too the task is reported as KilledWorker and stored as failed. Worker
            # saturation 1.0 with one thread per worker keeps exactly one run on each
            # worker, so a dying worker takes no innocent queued run down with it.
            with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                                  "distributed.scheduler.worker-saturation": 1.0}):
                if scheduler is not None:
                    try:
                        client = Client(scheduler, timeout="10s")
                    except OSError as exc:
                        raise RuntimeError(f"scheduler: cannot connect to {scheduler!r}: {exc}") from None
                    client.engine_mode = f"dask scheduler {scheduler}"
                else:
                    n = lazy.n_workers
                    # warnings.catch_warnings: the scheduler's HTTP server warns when port 8787 is
                    # taken (another cluster) and moves to another one, which concerns no one here
                    from distributed.deploy.spec import SpecCluster
                    before = set(SpecCluster._instances)
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            lazy.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                        dashboard_address=None, silence_logs=logging.CRITICAL,
                                                        preload=["engine._dask_worker"])
                            client = Client(lazy.cluster)
                    except BaseException:
                        # interrupted (or failed) while starting: a half-started cluster would be
                        # closed again at exit by distributed, with a traceback ("Status.init")
                        for c in set(SpecCluster._instances) - before - {lazy.cluster}:
                            _kill_workers(c)
                            c.shutdown_on_close = False
                        raise
                    client.engine_mode = f"dask LocalCluster, {n} worker processes"
            return client

        lazy.start = start
        with _workers_ignore_sigint() if scheduler is None else contextlib.nullcontext():
            try:
                yield lazy
            except BaseException:
                _close(lazy, fast=True)
                raise
            else:
                _close(lazy, fast=False)
    return cm()


def _close(lazy, fast):
    """Close the client and the LocalCluster; ``fast`` (after an interrupt or an error): do not
    wait for runs in flight, kill the worker processes after a short grace, log nothing."""
    if lazy.client is None and lazy.cluster is None:
        return
    import logging
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with contextlib.suppress(Exception):
            if lazy.client is not None:
                if fast:
                    lazy.client.close(timeout=2)
                else:
                    lazy.client.close()
        if lazy.cluster is not None:
            if fast:
                _kill_workers(lazy.cluster)
            with contextlib.suppress(Exception):
                lazy.cluster.close(timeout=5 if fast else None)
    finally:
        quiet.setLevel(level)


def _kill_workers(cluster):
    """SIGKILL the worker processes of a LocalCluster (their runs are abandoned anyway): closing
    it politely waits for a run in flight, which may take minutes."""
    for w in list(getattr(cluster, "workers", {}).values()):
        proc = getattr(w, "process", None)
        pid = getattr(getattr(proc, "process", None), "pid", None) if proc is not None else None
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _tasks(pending, batch, backend, threads, n_workers, mode) -> list:
    """``pending`` [(key, canonical config JSON, cost, bytes)] as tasks [(keys, texts, cost, bytes, threads)]:
    one run each, or a batch of runs trained as one ensemble (``engine.batch``; ``batch``: "auto",
    True or False as in ``run_sweep``). On a cluster, batches are split while there are fewer
    tasks than workers (a batch runs on one worker). A batch's cost and bytes are its runs' sums;
    its threads ``batch.batch_threads`` (serially: the share of the runs it stands for)."""
    from . import batch as batching
    if not batch or len(pending) < 2:
        return [_merged([p], threads) for p in pending]
    cfgs = [json.loads(p[1]) for p in pending]
    plan = []                                   # lists of indices into pending
    for idx in batching.groups(cfgs):
        group = [cfgs[i] for i in idx]
        if batch == "auto":
            together = batching.decide(group, backend, threads, batching.batch_threads(len(idx), threads, mode))
        else:
            together = len(idx) > 1 and all(batching.separate_backend(c, backend) == "cblas" for c in group)
        plan.extend([idx] if together else [[i] for i in idx])
    while mode != "serial" and len(plan) < n_workers:
        j = max(range(len(plan)), key=lambda i: len(plan[i]))
        big = plan[j]
        if len(big) < 2:
            break
        plan[j:j + 1] = [big[:len(big) // 2], big[len(big) // 2:]]
    return [_merged([pending[i] for i in idx], batching.batch_threads(len(idx), threads, mode)) for idx in plan]


def _merged(items, threads) -> tuple:
    """One task (keys, texts, cost, bytes, threads) of the runs ``items`` [(key, text, cost, bytes)].
    A batch's memory is counted twice: its members' networks are drawn one by one, then copied
    into the ensemble."""
    need = sum(p[3] for p in items)
    return ([p[0] for p in items], [p[1] for p in items], sum(p[2] for p in items), need * (1 + (len(items) > 1)),
            threads)


def _run_task(func, cfgs, backend, threads, together=None) -> list:
    """Payloads of one task: a run alone (``runs.execute``) or a batch (``batch.execute_batch``,
    ``together`` threads)."""
    if len(cfgs) == 1:
        return [execute(func, cfgs[0], backend, threads)]
    return execute_batch(cfgs, backend, threads, together)


def _run_on(client, tasks, record, func, backend, threads, n_workers=1, mode="serial",
            max_in_flight=None, memory_budget="auto") -> str:
    """Run ``tasks`` [(keys, canonical config JSONs, cost, bytes, threads)] on ``client``; ``record(key,
    config, out)`` stores each run's result as its task finishes."""
    if isinstance(client, _Serial):   # in grid order
        for keys, texts, _, _, together in tasks:
            cs = [json.loads(t) for t in texts]
            for k, c, out in zip(keys, cs, _run_task(func, cs, backend, threads, together)):
                record(k, c, out)
        return client.mode
    from dask.distributed import as_completed
    if isinstance(client, _Lazy):
        client = client.get()
    if memory_budget == "auto":
        from .memory import available_bytes
        memory_budget = available_bytes() if mode == "local" else None
    limit = max(1, int(max_in_flight) if max_in_flight else 2 * n_workers)
    # most expensive first, so the makespan does not end on one big run started last (issue 15 item 3)
    queue = deque((keys, texts, need) for keys, texts, _, need, _ in sorted(tasks, key=lambda p: -p[2]))
    futs = {}
    held = [0]
    ac = as_completed()

    def pick():
        """The next task (in cost order) whose memory fits beside those in flight; a task larger
        than the whole budget goes alone (its worker's memory guard then decides)."""
        if memory_budget is None:
            return queue.popleft()
        for i in range(min(len(queue), _SCAN)):
            need = queue[i][2]
            if held[0] + need <= memory_budget or (not futs and i == 0):
                item = queue[i]
                del queue[i]
                return item
        return None

    def admit():
        while queue and len(futs) < limit:
            item = pick()
            if item is None:
                return
            keys, texts, need = item
            cs = [json.loads(t) for t in texts]
            name = "run" if len(keys) == 1 else "batch"
            f = client.submit(_run_task, func, cs, backend, threads, key=f"engine-{name}-{keys[0]}", pure=False)
            futs[f] = (keys, cs, need)
            held[0] += need
            ac.add(f)

    try:
        admit()
        for f in ac:
            keys, cs, need = futs.pop(f)
            held[0] -= need
            try:
                # result() rather than the status: a finished result can be lost with a
                # worker that dies later; the scheduler then recomputes it and this waits
                outs = f.result()
            except Exception as exc:
                name = type(exc).__name__
                if name == "KilledWorker":
                    msg = f"worker died while running this config (KilledWorker: {exc})"
                else:
                    msg = f"{name}: {exc}"
                outs = [failed_payload(c, msg, backend) for c in cs]
            for k, c, out in zip(keys, cs, outs):
                record(k, c, out)
            f.release()
            admit()
    finally:
        for f in futs:   # interrupted: do not leave work queued on a shared cluster
            with contextlib.suppress(Exception):
                f.cancel()
    return getattr(client, "engine_mode", "dask")


# Runs looked at, in cost order, for one that fits in the memory left.
_SCAN = 256
