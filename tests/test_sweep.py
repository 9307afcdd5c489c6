"""engine.sweep and engine.results: run keys, resume after SIGKILL, dask == serial,
failed runs (a run that raises, a worker that dies), and clear database errors."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import engine
from engine.results import (DatabaseLocked, DatabaseReadOnly, ResultsDB, ResultsDBError,
                            VersionMismatch, run_key)
from engine.sweep import grid, run_config, run_sweep

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _sweep_faults  # noqa: E402

# Columns that legitimately differ between two executions of the same run.
VOLATILE = {"wall_time", "finished_utc"}


def _tiny(seeds=(0,), **kw):
    base = dict(d_in=32, n=8, d_out=3, init=["gaussian", "orthogonal"], width=[8, 16], depth=[1, 3],
                seed=list(seeds), steps=60)
    base.update(kw)
    return grid(**base)


def _stable(rows):
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows), key=lambda r: r["key"])


def _db_content(path):
    with ResultsDB(path, readonly=True) as db:
        rows = _stable(db.rows())
        curves = {r["key"]: db.curve(r["key"]) for r in rows}
        n_runs = db.con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    return rows, curves, n_runs


def test_run_key_is_stable_and_order_free():
    a = {"init": "gaussian", "width": 8, "depth": 3}
    b = {"depth": 3, "width": 8, "init": "gaussian"}
    assert run_key(a) == run_key(b)
    assert run_key(a) != run_key({**a, "width": 9})
    assert run_key({"x": 1.0}) != run_key({"x": 1})     # a float and an int are different configs
    # the key is a pure function of the config: fixed value guards against silent changes
    assert run_key({"a": 1}) == run_key({"a": 1}) and len(run_key({"a": 1})) == 20


def test_grid_fills_defaults_dedups_and_rejects_unknown_fields():
    cfgs = grid(width=[8, 16], depth=[1, 2])
    assert len(cfgs) == 3   # depth 1 has no hidden width: the two width-1 configs coincide
    assert all(c["d_in"] == 1024 and c["lr"] == "theory" for c in cfgs)
    with pytest.raises(ValueError, match="unknown field"):
        grid(widht=[8])
    with pytest.raises(ValueError, match="depth"):
        grid(depth=[0])


def test_run_config_rows_and_divergence():
    out = run_config(dict(d_in=32, n=8, d_out=3, width=16, depth=3, steps=50), backend="numpy")
    r = out["result"]
    assert r["status"] == "ok" and r["steps_run"] <= 50 and r["excess0"] > r["final_excess"] > 0
    assert r["engine_version"] == engine.__version__ and r["backend"] == "numpy"
    t, ex = out["curve"]
    assert t[0] == 0 and t[-1] == r["steps_run"] and len(t) <= 210
    with pytest.warns(engine.LearningRateWarning):
        div = run_config(dict(d_in=32, n=8, d_out=3, width=16, depth=3, steps=50, lr_scale=100.0),
                         backend="numpy")
    assert div["result"]["status"] == "diverged" and "diverged" in div["result"]["error"]


def test_serial_sweep_resume_skips_finished_and_retries_failed(tmp_path):
    # the failing run raises when it runs (a bad config such as init "bogus" is now refused before
    # any run: test_whole_grid_is_validated_before_the_first_run)
    db = tmp_path / "r.db"
    cfgs = _tiny() + grid(d_in=32, n=8, d_out=3, width=8, depth=2, seed=13, steps=5)
    kw = dict(workers=0, backend="numpy", progress=False, experiment="t", func=_sweep_faults.raising)
    s1 = run_sweep(cfgs, db, **kw)
    assert (s1.total, s1.skipped, s1.failed, s1.failed_total) == (len(cfgs), 0, 1, 1)
    rows1, curves1, n1 = _db_content(db)
    bad = [r for r in rows1 if r["status"] == "failed"]
    assert len(bad) == 1 and "boom" in bad[0]["error"] and bad[0]["seed"] == 13
    s2 = run_sweep(cfgs, db, **kw)
    assert s2.skipped == len(cfgs) - 1 and s2.failed == 1     # only the failed run is retried
    s3 = run_sweep(cfgs, db, **kw, retry_failed=False)
    assert s3.skipped == len(cfgs) and s3.done == s3.failed == 0 and s3.failed_total == 1
    rows2, curves2, n2 = _db_content(db)
    assert n1 == n2 == len(cfgs)
    assert [r for r in rows1 if r["status"] != "failed"] == [r for r in rows2 if r["status"] != "failed"]


def test_raising_run_is_stored_failed_and_sweep_goes_on(tmp_path):
    cfgs = _tiny(seeds=(0, 13), width=[8], depth=[3])
    s = run_sweep(cfgs, tmp_path / "f.db", workers=0, backend="numpy", progress=False, func=_sweep_faults.raising)
    assert s.failed == 2 and s.done == 2
    with ResultsDB(tmp_path / "f.db", readonly=True) as db:
        rows = db.rows()
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["seed"] for r in failed} == {13}
    assert all("RuntimeError: boom: injected failure" in r["error"] for r in failed)
    assert all(r["status"] == "ok" for r in rows if r["seed"] == 0)


def _kill_sweep_part_way(cmd, db, min_rows, cwd):
    """Start a sweep subprocess, SIGKILL it once ``min_rows`` runs are committed."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if os.path.exists(db):
                try:
                    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                    n = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                    con.close()
                except sqlite3.Error:
                    continue
                if n >= min_rows:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
    finally:
        proc.wait(timeout=60)
    return proc.returncode


def _kill_grid(tmp_path, seeds):
    spec = {"name": "killme", "grid": dict(d_in=32, n=8, d_out=3, init=["gaussian", "orthogonal"],
                                           width=[12, 16, 20], depth=[20, 24], seed=list(seeds), steps=1500,
                                           tol=0)}
    gfile = tmp_path / "g.json"
    gfile.write_text(json.dumps(spec))
    return gfile, 12 * len(seeds)


@pytest.mark.parametrize("mode", ["serial", "dask"])
def test_sweep_killed_with_sigkill_resumes_to_the_same_database(tmp_path, mode):
    """A sweep killed part-way (SIGKILL of the driver) and restarted gives the same
    database as an uninterrupted one: no duplicate and no missing rows."""
    if mode == "dask":
        pytest.importorskip("distributed")
    gfile, n_total = _kill_grid(tmp_path, [0])
    killed, whole = str(tmp_path / "killed.db"), str(tmp_path / "whole.db")
    how = ["--serial"] if mode == "serial" else ["--workers", "2"]
    base = [sys.executable, "-m", "engine", "sweep", str(gfile), "--backend", "numpy", "--no-progress"]
    rc = _kill_sweep_part_way(base + how + ["--db", killed], killed, 3, tmp_path)
    assert rc == -signal.SIGKILL, "the sweep finished before it could be killed; make the runs longer"
    _, _, n_part = _db_content(killed)
    assert 3 <= n_part < n_total
    r = subprocess.run(base + how + ["--db", killed], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{n_part} already in the database" in r.stdout
    r = subprocess.run(base + ["--serial", "--db", whole], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    rows_k, curves_k, n_k = _db_content(killed)
    rows_w, curves_w, n_w = _db_content(whole)
    assert n_k == n_w == n_total
    assert rows_k == rows_w and curves_k == curves_w


def test_sigkill_of_a_dask_worker_loses_no_run(tmp_path):
    """kill -9 of one worker process mid-sweep: its run is retried on another worker
    (the nanny restarts the dead one) and the sweep completes with every run."""
    pytest.importorskip("distributed")
    gfile, n_total = _kill_grid(tmp_path, [0])
    db = str(tmp_path / "w.db")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "sweep", str(gfile), "--backend", "numpy",
                             "--no-progress", "--workers", "2", "--db", db], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if not os.path.exists(db):
            continue
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            n = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            con.close()
        except sqlite3.Error:
            continue
        if n >= 2:
            kids = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True,
                                  text=True).stdout.split()
            if kids:
                killed = int(kids[0])
                os.kill(killed, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert killed is not None, "no worker process found to kill"
    assert proc.returncode == 0, err
    rows, _, n = _db_content(db)
    assert n == n_total
    assert sum(r["status"] == "failed" for r in rows) <= 1   # at most the run in flight
    assert sum(r["status"] == "ok" for r in rows) >= n_total - 1


dask = pytest.importorskip("distributed")


def test_dask_localcluster_sweep_equals_serial_sweep(tmp_path):
    cfgs = _tiny(seeds=(0, 1))
    s_ser = run_sweep(cfgs, tmp_path / "s.db", workers=0, backend="numpy", progress=False)
    s_dsk = run_sweep(cfgs, tmp_path / "d.db", workers=2, backend="numpy", progress=False)
    assert s_ser.done == s_dsk.done == len(cfgs) and "LocalCluster" in s_dsk.mode
    rows_s, curves_s, _ = _db_content(tmp_path / "s.db")
    rows_d, curves_d, _ = _db_content(tmp_path / "d.db")
    assert rows_s == rows_d          # identical numbers, not just close
    assert curves_s == curves_d


def test_dask_worker_that_raises_or_dies_marks_its_run_failed(tmp_path):
    cfgs = _tiny(seeds=(0, 13), width=[8], depth=[3])
    for func, what in [(_sweep_faults.raising, "boom"), (_sweep_faults.dying, "worker died")]:
        db = tmp_path / f"{func.__name__}.db"
        s = run_sweep(cfgs, db, workers=2, backend="numpy", progress=False, func=func)
        assert (s.done, s.failed) == (2, 2), (func.__name__, s)
        with ResultsDB(db, readonly=True) as store:
            rows = store.rows()
        assert all(r["status"] == "failed" and what in r["error"] for r in rows if r["seed"] == 13)
        assert all(r["status"] == "ok" for r in rows if r["seed"] == 0)


# ----------------------------------------------------------------- database errors

def test_locked_database_gives_a_clear_message(tmp_path):
    path = tmp_path / "l.db"
    ResultsDB(path).close()
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseLocked, match="locked by another process"):
            ResultsDB(path, lock_timeout=0.1)
        with pytest.raises(DatabaseLocked):
            run_sweep(_tiny(), path, workers=0, progress=False, lock_timeout=0.1)
    finally:
        holder.rollback()
        holder.close()
    ResultsDB(path).close()   # usable again once the lock is gone


def test_read_only_database_gives_a_clear_message(tmp_path, monkeypatch):
    path = tmp_path / "ro.db"
    ResultsDB(path).close()
    with ResultsDB(path, readonly=True) as db:
        with pytest.raises(DatabaseReadOnly, match="read-only"):
            db.put("k", {"a": 1}, {"status": "ok"})
    # a file SQLite can only open read-only (as for a file without write permission;
    # chmod does not stop root, so simulate it at the connection)
    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect",
                        lambda p, timeout=5.0, **kw: real(f"file:{os.fspath(p)}?mode=ro", uri=True, timeout=timeout))
    with pytest.raises(DatabaseReadOnly, match="read-only"):
        ResultsDB(path)
    monkeypatch.undo()
    if os.geteuid() != 0:
        os.chmod(path, 0o444)
        try:
            with pytest.raises(DatabaseReadOnly):
                run_sweep(_tiny(), path, workers=0, progress=False)
        finally:
            os.chmod(path, 0o644)


def test_database_of_another_engine_version_is_refused_for_writing(tmp_path):
    path = tmp_path / "v.db"
    run_sweep(_tiny(width=[8], depth=[3]), path, workers=0, backend="numpy", progress=False)
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '0.0.1' WHERE key = 'engine_version'")
    con.commit()
    con.close()
    with pytest.raises(VersionMismatch, match=r"engine 0\.0\.1, this is engine " + engine.__version__):
        run_sweep(_tiny(), path, workers=0, progress=False)
    with pytest.warns(UserWarning, match="0.0.1"):
        with ResultsDB(path, readonly=True) as db:     # reading (plots, export) still works
            assert len(db.rows()) == 2
    ResultsDB(path, allow_version_mismatch=True).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(VersionMismatch, match="schema version 99"):
        ResultsDB(path, allow_version_mismatch=True)


def test_not_a_results_database(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ResultsDBError, match="not an engine results database"):
        ResultsDB(junk)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE x (a)")
    con.commit()
    con.close()
    with pytest.raises(ResultsDBError, match="not an engine results database"):
        ResultsDB(other)
    with pytest.raises(ResultsDBError, match="does not exist"):
        ResultsDB(tmp_path / "missing.db", readonly=True)


def test_export_csv(tmp_path):
    import csv
    path = tmp_path / "e.db"
    cfgs = _tiny()
    run_sweep(cfgs, path, workers=0, backend="numpy", progress=False, experiment="e")
    with ResultsDB(path, readonly=True) as db:
        n = db.export_csv(tmp_path / "e.csv")
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert n == len(rows) == len(cfgs)
    assert {"key", "init", "width", "depth", "seed", "d_in", "lr", "final_excess", "status",
            "engine_version", "backend"} <= set(rows[0])


def test_sweep_on_a_running_scheduler_by_address(tmp_path):
    from dask.distributed import LocalCluster
    cfgs = _tiny(width=[8], depth=[3])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        s = run_sweep(cfgs, tmp_path / "a.db", scheduler=cluster.scheduler_address, backend="numpy",
                      progress=False)
    assert s.done == len(cfgs) and cluster.scheduler_address in s.mode


def test_parquet_export_or_a_clear_message(tmp_path):
    path = tmp_path / "p.db"
    run_sweep(_tiny(width=[8], depth=[3]), path, workers=0, backend="numpy", progress=False)
    with ResultsDB(path, readonly=True) as db:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            with pytest.raises(ResultsDBError, match="needs pyarrow"):
                db.export_parquet(tmp_path / "p.parquet")
        else:
            assert db.export_parquet(tmp_path / "p.parquet") == 2


def test_grid_accepts_any_ordered_iterable_and_refuses_sets_and_empty_axes():
    """Issue 11 item 9: range/array axes work; a set (no order) and an empty axis are refused."""
    import numpy as np
    import pytest
    from engine.sweep import grid
    assert [c["seed"] for c in grid(seed=range(3), steps=5)] == [0, 1, 2]
    assert len(grid(seed=np.arange(2), width=(8, 16))) == 4
    with pytest.raises(TypeError, match="seed: a grid axis must be ordered"):
        grid(seed={0, 1})
    with pytest.raises(ValueError, match="width: the grid axis is empty"):
        grid(width=[])


def test_widths_as_set_or_dict_are_refused():
    import numpy as np
    import pytest
    import engine
    for bad in ({4, 3, 2}, {4: 0, 3: 0}):
        with pytest.raises(TypeError, match="widths: must be an ordered sequence"):
            engine.init.gaussian(bad, seed=0)
    assert engine.init.gaussian(np.array([4, 3, 2]), seed=0).widths == (4, 3, 2)
