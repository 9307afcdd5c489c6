"""Sweeps and results databases under faults (issue 11 items 3, 6, 7, 8, 10; issue 12 items 3, 8;
issue 15 items 1-3): runs shared by experiments, damaged and read-only databases, no -wal/-shm
left behind, the whole grid checked first, bounded Dask batches, cost order, memory admission,
exact early stopping."""
import contextlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import engine
from engine.results import ResultsDB, ResultsDBError, run_key
from engine.sweep import grid, normalize_config, run_config, run_sweep

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _sweep_faults  # noqa: E402

SMALL = dict(d_in=16, n=8, d_out=3, steps=20)


def _cfgs(**kw):
    base = dict(SMALL, init="gaussian", width=[8], depth=[2], seed=[0])
    base.update(kw)
    return grid(**base)


def _cli(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ----------------------------------------------------------------- issue 11 item 3: membership

def test_run_shared_by_two_experiments_is_listed_in_both(tmp_path):
    """A run in grids a and b (same config key) is stored once and belongs to both:
    plot/export --experiment b see all of grid b's runs."""
    db = tmp_path / "m.db"
    a = _cfgs(seed=[0, 1])
    b = _cfgs(seed=[0, 1, 2], width=[8, 12])            # contains both of a's runs
    assert len(b) == 6 and {run_key(c) for c in a} <= {run_key(c) for c in b}
    run_sweep(a, db, workers=0, backend="numpy", progress=False, experiment="a")
    s = run_sweep(b, db, workers=0, backend="numpy", progress=False, experiment="b")
    assert s.skipped == 2 and s.done == 4
    with ResultsDB(db, readonly=True) as store:
        assert store.experiments() == ["a", "b"]
        assert len(store.rows(experiment="a")) == 2
        rows_b = store.rows(experiment="b")
        assert len(rows_b) == 6 and {r["experiment"] for r in rows_b} == {"b"}
        assert store.con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 6   # stored once
        both = [r for r in store.rows() if r["experiment"] == "a;b"]
        assert len(both) == 2
    r = _cli("export", "--db", str(db), "--csv", "b.csv", "--experiment", "b", cwd=tmp_path)
    assert r.returncode == 0 and "exported 6 rows" in r.stdout


def _make_schema1_db(path):
    """A database exactly as schema 1 wrote it (no members table, no tol_excess column)."""
    from engine import results
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    cols = ", ".join(f"{n} {t}" for n, t in results.METRICS if n != "tol_excess")
    con.execute(f"CREATE TABLE runs (key TEXT PRIMARY KEY, experiment TEXT, config TEXT NOT NULL, {cols})")
    con.execute("CREATE TABLE curves (key TEXT NOT NULL, t INTEGER NOT NULL, excess REAL, PRIMARY KEY (key, t))")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"),
                                                        ("engine_version", engine.__version__)])
    for i, cfg in enumerate(_cfgs(seed=[0, 1])):
        con.execute("INSERT INTO runs (key, experiment, config, status, init, depth, width, seed) "
                    "VALUES (?, ?, ?, 'ok', ?, ?, ?, ?)",
                    (run_key(cfg), "old", json.dumps(cfg), cfg["init"], cfg["depth"], cfg["width"], cfg["seed"]))
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()


def test_schema_1_database_is_read_and_migrated_in_place(tmp_path):
    db = tmp_path / "v1.db"
    _make_schema1_db(db)
    with ResultsDB(db, readonly=True) as store:        # read as it is (plots, export)
        assert store.experiments() == ["old"] and len(store.rows(experiment="old")) == 2
        assert all(r["tol_excess"] is None for r in store.rows())
    s = run_sweep(_cfgs(seed=[0, 1, 2]), db, workers=0, backend="numpy", progress=False, experiment="new")
    assert s.skipped == 2 and s.done == 1
    with ResultsDB(db, readonly=True) as store:
        assert store.meta()["schema_version"] == "2"
        assert store.experiments() == ["new", "old"]
        assert len(store.rows(experiment="old")) == 2 and len(store.rows(experiment="new")) == 3


# ----------------------------------------------------------------- issue 11 item 6: damaged databases

@pytest.mark.parametrize("damage,needle", [
    ("ALTER TABLE runs DROP COLUMN final_excess", "no column final_excess"),
    ("ALTER TABLE runs DROP COLUMN status", "no column status"),
    ("UPDATE runs SET config = '{not json'", "not valid JSON"),
    ("UPDATE runs SET config = '[1, 2]'", "not a JSON object"),
    ("DROP TABLE curves", "table 'curves' is missing"),
])
def test_damaged_database_is_a_one_line_error(tmp_path, damage, needle):
    db = tmp_path / "d.db"
    run_sweep(_cfgs(), db, workers=0, backend="numpy", progress=False, experiment="e")
    con = sqlite3.connect(db)
    if "DROP COLUMN status" in damage:   # a NOT NULL column cannot be dropped: rebuild the table without it
        cols = [r[1] for r in con.execute("PRAGMA table_info(runs)") if r[1] != "status"]
        con.executescript(f"CREATE TABLE r2 AS SELECT {', '.join(cols)} FROM runs; DROP TABLE runs; "
                          "ALTER TABLE r2 RENAME TO runs;")
    else:
        con.execute(damage)
    con.commit()
    con.close()
    with pytest.raises(ResultsDBError, match=needle):
        with ResultsDB(db, readonly=True) as store:
            store.rows()
    for cmd in (["export", "--db", "d.db", "--csv", "x.csv"], ["plot", "--db", "d.db"]):
        r = _cli(*cmd, cwd=tmp_path)
        assert r.returncode == 2, (cmd, r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "IndexError" not in err[0], r.stderr


# ----------------------------------------------------------------- issue 12 item 8 / 11 item 10: WAL files, read-only storage

def _sidecars(d):
    return sorted(f for f in os.listdir(d) if f.endswith(("-wal", "-shm")))


def test_no_wal_or_shm_files_stay_after_a_clean_exit(tmp_path):
    db = tmp_path / "w.db"
    run_sweep(_cfgs(seed=[0, 1]), db, workers=0, backend="numpy", progress=False, experiment="e")
    assert _sidecars(tmp_path) == []
    with ResultsDB(db, readonly=True) as store:
        store.rows()
    assert _sidecars(tmp_path) == []
    (tmp_path / "g.json").write_text(json.dumps({"name": "g", "grid": dict(SMALL, width=8, depth=2)}))
    for cmd in (["sweep", "g.json", "--db", "c.db", "--serial", "--backend", "numpy", "--no-progress"],
                ["export", "--db", "c.db", "--csv", "c.csv"]):
        r = _cli(*cmd, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert _sidecars(tmp_path) == [], cmd
    # while a writer has it open, the WAL is in use; its clean close removes the files
    w = ResultsDB(db)
    w.put("k", {"a": 1}, {"status": "ok"})
    w.close()
    assert _sidecars(tmp_path) == []


@contextlib.contextmanager
def _read_only_dir(d):
    """``d`` made read-only for everyone, root included: a read-only bind mount of it onto itself
    (root), else chmod 555 (a normal user). Skips the test when neither is possible."""
    d = str(d)
    if os.geteuid() == 0:
        ok = subprocess.run(["mount", "--bind", d, d], capture_output=True).returncode == 0
        if ok and subprocess.run(["mount", "-o", "remount,bind,ro", d], capture_output=True).returncode == 0:
            try:
                yield
            finally:
                subprocess.run(["umount", d], capture_output=True)
            return
        if ok:
            subprocess.run(["umount", d], capture_output=True)
        pytest.skip("running as root without permission to mount a read-only directory")
    os.chmod(d, 0o555)
    try:
        yield
    finally:
        os.chmod(d, 0o755)


def test_plot_and_export_from_read_only_storage(tmp_path):
    """A finished sweep's database on read-only storage can be plotted and exported; so can a
    WAL-mode file left by an older engine (opened immutable)."""
    pytest.importorskip("matplotlib")
    ro = tmp_path / "ro"
    ro.mkdir()
    run_sweep(_cfgs(width=[8, 12], depth=[2, 3]), ro / "r.db", workers=0, backend="numpy", progress=False,
              experiment="g")
    shutil.copy(ro / "r.db", ro / "legacy.db")
    con = sqlite3.connect(ro / "legacy.db")
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"   # as engine <= schema 1 left files
    con.close()
    out = tmp_path / "out"
    out.mkdir()
    with _read_only_dir(ro):
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")
        for name in ("r.db", "legacy.db"):
            with ResultsDB(ro / name, readonly=True) as store:
                assert len(store.rows(experiment="g")) == 4
                assert store.immutable == (name == "legacy.db")
            r = _cli("export", "--db", str(ro / name), "--csv", str(out / f"{name}.csv"), cwd=out)
            assert r.returncode == 0 and "exported 4 rows" in r.stdout, r.stderr
            r = _cli("plot", "--db", str(ro / name), "--out-dir", str(out / name), cwd=out)
            assert r.returncode == 0, r.stderr
            assert (out / name / "g.png").exists()


# ----------------------------------------------------------------- issue 11 item 7: the whole grid first

@pytest.mark.parametrize("field,value", [
    ("init", "xavier"), ("lr", -1), ("lr", float("nan")), ("tol", -1), ("seed", 1.5), ("rank", 99),
    ("kappa", 0.5), ("lr_scale", 0), ("data_seed", -1), ("escape", float("inf")), ("lr", "fast"),
])
def test_whole_grid_is_validated_before_the_first_run(tmp_path, field, value):
    cfgs = _cfgs(seed=[0, 1])
    with pytest.raises((ValueError, TypeError), match=field) as e:
        run_sweep(cfgs + [dict(SMALL, **{field: value})], tmp_path / "v.db", workers=0, progress=False)
    assert repr(value) in str(e.value) or str(value) in str(e.value)
    assert not (tmp_path / "v.db").exists()          # nothing ran, nothing was created
    with pytest.raises((ValueError, TypeError), match=field):
        grid(**{**SMALL, field: [value]})


def test_unknown_backend_is_refused_before_the_first_run(tmp_path):
    with pytest.raises(ValueError, match="backend: unknown backend 'bogus'"):
        run_sweep(_cfgs(), tmp_path / "b.db", workers=0, backend="bogus", progress=False)
    assert not (tmp_path / "b.db").exists()


def test_grid_size_counts_without_expanding():
    from engine.sweep import grid_size
    assert grid_size(width=range(100), depth=range(1, 101), seed=range(100)) == 10 ** 6
    assert grid_size(width=[8, 16], steps=5) == 2
    with pytest.raises(ValueError, match="seed: the grid axis is empty"):
        grid_size(seed=[])


def test_sweep_summary_counts_failed_runs(tmp_path):
    cfgs = _cfgs(seed=[0, 13])
    s = run_sweep(cfgs, tmp_path / "f.db", workers=0, backend="numpy", progress=False, func=_sweep_faults.raising)
    assert s.failed == s.failed_total == 1


# ----------------------------------------------------------------- issue 15 item 1: exact early stopping

def test_runs_stop_exactly_at_tol_and_record_step_and_value():
    cfg = normalize_config(dict(d_in=16, n=8, d_out=3, init="orthogonal", width=32, depth=3, steps=5000,
                                tol=1e-6))
    res = run_config(cfg, backend="numpy")["result"]
    assert res["status"] == "ok" and res["converged"]
    T = res["steps_to_tol"]
    assert T == res["steps_run"] < cfg["steps"]
    prob = engine.Problem(*engine.synthetic(16, 8, 3, seed=0))
    thr = 1e-6 * prob.y_norm_sq
    assert res["tol_excess"] == pytest.approx(thr, rel=1e-15)
    # the same run without a tolerance: T is the first step at or below the threshold, and the
    # stored value is that step's (no extrapolation to the budget)
    full = engine.train(engine.init.orthogonal([16, 32, 32, 3], seed=0), prob, lr="theory", steps=T,
                        backend="numpy")
    ex = np.asarray(full.excess)
    assert ex[T] <= thr < ex[T - 1] and (ex[:T] > thr).all()
    assert res["final_excess"] == ex[T]


def test_diverging_run_records_its_step_and_last_finite_value():
    with pytest.warns(engine.LearningRateWarning):
        res = run_config(dict(d_in=16, n=8, d_out=3, width=16, depth=3, steps=500, lr_scale=100.0),
                         backend="numpy")["result"]
    assert res["status"] == "diverged" and res["steps_run"] < 500
    assert math.isfinite(res["final_excess"]) and not res["converged"]


def test_heat_map_shows_a_converged_cell_at_the_tolerance():
    from engine import experiments as ex
    base = dict(init="gaussian", depth=4, width=16, seed=0, steps=100, excess0=2.0, tol_excess=2e-12,
                status="ok")
    conv = dict(base, converged=1, log10_rel_excess=math.log10(1.3e-12 / 2.0))
    budget = dict(base, width=32, converged=0, log10_rel_excess=-5.0)
    div = dict(base, width=64, status="diverged", converged=0, log10_rel_excess=-1.0)
    cells = {w: v for d, w, v, n, nd in ex.phase_cells([conv, budget, div], "gaussian")}
    assert cells[16] == pytest.approx(-12.0)           # clipped at the tolerance, not 1.3e-12's -12.19
    assert cells[32] == -5.0 and cells[64] == math.inf


# ----------------------------------------------------------------- issue 15 items 2-3: cost, order, memory

def test_fma_count_and_longest_first_makespan():
    from engine import cost
    cfg = normalize_config(dict(d_in=1024, n=16, d_out=10, width=100, depth=5))
    # reduced widths [16, 100, 100, 100, 100, 10], each layer d_i d_{i-1} (d_out + 2 min(r, d_out)) FMA
    assert cost.fma_per_step(cfg) == (16 * 100 + 3 * 100 * 100 + 100 * 10) * (10 + 20)
    assert cost.makespan([5, 4, 3, 3, 3], 2) == 10   # longest first (the optimum, 9, is not what runs)
    assert cost.makespan([1, 1], 4) == 1 and cost.makespan([], 2) == 0
    assert cost.proxy_seconds(dict(cfg, steps=2000)) > cost.proxy_seconds(cfg) > \
        cost.proxy_seconds(dict(cfg, width=50))


def test_estimate_predicts_runs_time_and_memory():
    from engine import cost
    cfgs = _cfgs(width=[8, 16], depth=[2, 4], seed=[0, 1])
    est = cost.estimate(cfgs, workers=2, backend="numpy", mode="local")
    assert est.runs == len(cfgs) == 8 and est.calibrated and est.calibration > 0
    assert est.wall >= cost.CLUSTER_START and est.serial >= max(est.times) > 0
    assert est.peak_bytes == max(cost.run_bytes(c) for c in cfgs)
    longer = cost.estimate([dict(c, steps=200) for c in cfgs], workers=2, backend="numpy", mode="local")
    assert longer.serial > est.serial
    assert "8 runs to do; predicted" in str(est) and "peak memory per worker" in str(est)


dask = pytest.importorskip("distributed")


def test_dask_submits_in_bounded_batches(tmp_path, monkeypatch):
    """Issue 11 item 8: at most 2 x workers runs are submitted and not yet stored, however large
    the grid (before: every run was submitted at once)."""
    from engine.sweep import dask_client
    cfgs = _cfgs(width=[8, 9, 10, 11, 12], seed=list(range(6)))
    db = tmp_path / "b.db"
    outstanding = []
    with dask_client(workers=2) as cl:
        client = cl.get()
        real = client.submit
        submitted = [0]

        def counting_submit(*a, **kw):
            submitted[0] += 1
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            stored = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            con.close()
            outstanding.append(submitted[0] - stored)
            return real(*a, **kw)

        monkeypatch.setattr(client, "submit", counting_submit)
        s = run_sweep(cfgs, db, client=cl, backend="numpy", progress=False)
    assert s.done == len(cfgs) == 30 and len(outstanding) == 30
    assert max(outstanding) <= 4


def test_most_expensive_runs_first_and_memory_admission(tmp_path, monkeypatch):
    """Issue 15 item 3: runs start in decreasing predicted cost; with a memory budget that holds
    one run, no two runs overlap in time."""
    from engine import cost
    log = tmp_path / "runs.log"
    monkeypatch.setenv("ENGINE_TEST_RUN_LOG", str(log))
    cfgs = _cfgs(width=[8, 32, 16], depth=[2, 6, 4], steps=60)
    run_sweep(cfgs, tmp_path / "o.db", workers=1, max_in_flight=1, backend="numpy", progress=False,
              func=_sweep_faults.logging_run)
    order = [tuple(map(int, ln.split()[:2])) for ln in log.read_text().splitlines()]
    want = [(c["width"], c["depth"]) for c in sorted(cfgs, key=lambda c: -cost.proxy_seconds(c))]
    assert order == want
    log.unlink()
    cfgs = _cfgs(width=[48, 64], depth=[5, 6], steps=60)
    need = sorted(cost.run_bytes(c) for c in cfgs)
    budget = need[-1]
    assert need[0] + need[1] > budget          # any two runs together exceed it
    s = run_sweep(cfgs, tmp_path / "m.db", workers=2, backend="numpy", progress=False, memory_budget=budget,
                  func=_sweep_faults.logging_run)
    assert s.done == len(cfgs)
    spans = sorted(tuple(map(float, ln.split()[2:])) for ln in log.read_text().splitlines())
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), "two runs held memory at once"
