"""A real Dask cluster: a scheduler and two workers as separate processes on 127.0.0.1.

The sweep goes through ``scheduler="tcp://127.0.0.1:PORT"`` (as on a
multi-machine cluster); one worker is killed with SIGKILL mid-sweep. Every
run must be stored exactly once, with status "ok", and equal a serial run.
"""
import os
import signal
import sqlite3
import sys
import threading
import time

import pytest

pytest.importorskip("distributed")

from engine.results import ResultsDB  # noqa: E402
from engine.sweep import grid, run_sweep  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from cluster import dask_cli, process_cluster  # noqa: E402

VOLATILE = {"wall_time", "finished_utc"}


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
    if dask_cli() is None:
        pytest.skip("the 'dask' command line is not installed")
    with process_cluster(2, str(tmp_path)) as (addr, workers):
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
        os.killpg(workers[0].pid, signal.SIGKILL)     # worker w0, mid-sweep
        workers[0].wait(timeout=10)
        th.join(timeout=300)
        assert not th.is_alive(), "the sweep did not finish after a worker was killed"
        if "error" in out:
            raise out["error"]
        s = out["summary"]
        assert s.total == len(cfgs) and s.failed == 0 and s.done == len(cfgs)

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
