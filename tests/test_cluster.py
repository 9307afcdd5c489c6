"""A real Dask cluster: a scheduler and two workers as separate processes on 127.0.0.1.

The sweep goes through ``scheduler="tcp://127.0.0.1:PORT"`` (as on a
multi-machine cluster); one worker is killed with SIGKILL mid-sweep. Every
run must be stored exactly once, with status "ok", and equal a serial run.
"""
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("distributed")

from engine.results import ResultsDB  # noqa: E402
from engine.sweep import grid, run_sweep  # noqa: E402

VOLATILE = {"wall_time", "finished_utc"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_cli():
    exe = shutil.which("dask", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("the 'dask' command line is not installed")
    return exe


def _spawn(args, log):
    # own session: killing it cannot signal pytest; output to a file, not a pipe that could fill up
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_workers(addr, n, timeout=60.0):
    from distributed import Client
    with Client(addr, timeout="20s") as c:
        c.wait_for_workers(n, timeout=timeout)
        return sorted(c.scheduler_info()["workers"])


def _n_rows(path):
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return 0
    try:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def _rows(path):
    with ResultsDB(path, readonly=True) as db:
        rows = sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in db.rows()),
                      key=lambda r: r["key"])
        n = db.con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        curves = {r["key"]: db.curve(r["key"]) for r in rows}
    return rows, curves, n


def test_scheduler_and_two_worker_processes_survive_a_killed_worker(tmp_path):
    dask = _dask_cli()
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "cluster.log", "w")
    procs = []
    try:
        procs.append(_spawn([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                             "--dashboard-address", ":0", "--no-show"], log))
        for name in ("w0", "w1"):
            # --no-nanny: a SIGKILL really removes the worker (a nanny would restart it)
            procs.append(_spawn([dask, "worker", addr, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                                 "--name", name, "--local-directory", str(tmp_path / name)], log))
        _wait_workers(addr, 2)

        # each run ~0.5-1 s, so the kill lands while runs are in flight on both workers
        cfgs = grid(d_in=32, n=8, d_out=3, init=["gaussian", "orthogonal"], width=[16, 32], depth=[4, 8],
                    seed=[0, 1], steps=15000, tol=0, lr_scale=0.5)
        db = str(tmp_path / "cluster.db")
        out = {}

        def drive():
            try:
                out["summary"] = run_sweep(cfgs, db, scheduler=addr, backend="numpy", progress=False)
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the test thread
                out["error"] = exc

        th = threading.Thread(target=drive)
        th.start()
        deadline = time.monotonic() + 120
        while _n_rows(db) < 2 and th.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert th.is_alive(), "the sweep finished before a worker could be killed (runs too short)"
        os.killpg(procs[1].pid, signal.SIGKILL)     # worker w0, mid-sweep
        procs[1].wait(timeout=10)
        th.join(timeout=300)
        assert not th.is_alive(), "the sweep did not finish after a worker was killed"
        if "error" in out:
            raise out["error"]
        s = out["summary"]
        assert s.total == len(cfgs) and s.failed == 0 and s.done == len(cfgs)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        log.close()

    rows, curves, n = _rows(db)
    assert n == len(cfgs) == len({r["key"] for r in rows})        # every run exactly once
    assert all(r["status"] == "ok" for r in rows)

    serial_db = str(tmp_path / "serial.db")
    run_sweep(cfgs, serial_db, workers=0, backend="numpy", progress=False)
    s_rows, s_curves, s_n = _rows(serial_db)
    assert s_n == n
    for a, b in zip(rows, s_rows):
        assert {k: v for k, v in a.items() if k != "experiment"} == \
               {k: v for k, v in b.items() if k != "experiment"}
    assert curves == s_curves
