"""A Dask cluster of separate processes on 127.0.0.1, and its 1-vs-2-worker scaling.

    python bench/cluster.py                  # throughput of 1 vs 2 worker processes
    python bench/cluster.py --steps 100      # shorter runs

``process_cluster(n)`` starts ``dask scheduler`` and ``n`` ``dask worker``
processes (one thread each, no nanny, so a killed worker stays dead) exactly
as one would on separate machines, and yields the scheduler address for
``engine.sweep.run_sweep(..., scheduler=addr)`` / ``--scheduler``. The test
``tests/test_cluster.py`` uses it to kill a worker mid-sweep.

The benchmark runs the same grid of mid-size nets (HXP data 1024x16 -> 10,
widths 128/256, depths 8/16, both inits, 2 seeds: 16 runs, fixed step count,
no early stop) on 1 and then 2 worker processes and prints runs/s and the
scaling efficiency (throughput_2 / (2 throughput_1)). Every worker first runs
each shape of the grid for a few steps (imports, Numba compilation, auto's
calibration), outside the timing: the table is the steady-state throughput.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dask_cli():
    """Path of the ``dask`` command, or None."""
    return shutil.which("dask", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


@contextlib.contextmanager
def process_cluster(n_workers, workdir, timeout=60.0):
    """Scheduler + ``n_workers`` worker processes; yields (address, [worker Popen])."""
    from distributed import Client
    exe = dask_cli()
    if exe is None:
        raise RuntimeError("the 'dask' command line (dask[distributed]) is not installed")
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    # output to a file, not a pipe that could fill up; own sessions so a kill cannot reach the caller
    log = open(os.path.join(workdir, "cluster.log"), "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def spawn(args):
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    procs = [spawn([exe, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                    "--dashboard-address", ":0", "--no-show"])]
    try:
        for i in range(n_workers):
            procs.append(spawn([exe, "worker", addr, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                                "--name", f"w{i}", "--local-directory", os.path.join(workdir, f"w{i}")]))
        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(n_workers, timeout=timeout)
        yield addr, procs[1:]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log.close()


def scaling_grid(steps):
    from engine.sweep import grid
    return grid(init=["gaussian", "orthogonal"], width=[128, 256], depth=[8, 16], seed=[0, 1],
                steps=steps, tol=0, lr_scale=0.5)


def _warm(backend):
    """On a worker: run every shape of the scaling grid for 3 steps (one-time costs)."""
    from engine.runs import run_config
    seen = set()
    for c in scaling_grid(3):
        shape = (c["init"], c["width"], c["depth"])
        if shape not in seen:
            seen.add(shape)
            run_config(c, backend)
    return len(seen)


def measure(n_workers, steps, backend="auto"):
    """Wall seconds of the scaling grid on ``n_workers`` warm worker processes (fresh database)."""
    from distributed import Client
    from engine.sweep import run_sweep
    with tempfile.TemporaryDirectory() as d:
        with process_cluster(n_workers, d) as (addr, _):
            with Client(addr, timeout="30s") as c:
                c.run(_warm, backend)
            t = time.perf_counter()
            s = run_sweep(scaling_grid(steps), os.path.join(d, "r.db"), scheduler=addr, backend=backend,
                          progress=False)
            wall = time.perf_counter() - t
        if s.failed:
            raise RuntimeError(f"{s.failed} runs failed")
        return wall, s.total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--backend", default="auto")
    a = ap.parse_args(argv)
    w1, n = measure(1, a.steps, a.backend)
    w2, _ = measure(2, a.steps, a.backend)
    print(f"{n} runs x {a.steps} steps, backend {a.backend}, one thread per worker")
    print("| workers | wall s | runs/s |")
    print("|---|---|---|")
    print(f"| 1 | {w1:.1f} | {n / w1:.2f} |")
    print(f"| 2 | {w2:.1f} | {n / w2:.2f} |")
    print(f"scaling efficiency (2 workers): {w1 / (2 * w2):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
