"""The CLI under faults (issue 11 items 7, 8, 10; issue 12 item 3; issue 15 item 2): bad grids refused
before any run, failed runs give a non-zero exit, huge grids and too many workers refused, the
estimate line first, Ctrl-C on a Dask LocalCluster prints one line, a closed stdout ends quietly,
and every checkpoint the CLI writes the CLI can resume."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import engine
from engine.cli import main

SMALL = {"d_in": 16, "n": 8, "d_out": 3, "width": 8, "depth": 2, "steps": 20}


def _cli(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _rows(db):
    if not os.path.exists(db):
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


# ----------------------------------------------------------------- issue 11 item 7

@pytest.mark.parametrize("text,needles", [
    ('{"init": ["gaussian", "xavier"]}', ["init", "'xavier'"]),
    ('{"lr": -1}', ["lr", "-1"]),
    ('{"tol": -1}', ["tol", "-1"]),
    ('{"seed": [0, 1.5]}', ["seed", "1.5"]),
    ('{"rank": 99}', ["rank", "99"]),
    ('{"lr": NaN}', ["lr", "nan"]),
    ('{"width": [8, NaN]}', ["width", "nan"]),
    ('{"seed": []}', ["seed", "empty"]),
])
def test_bad_grid_is_refused_before_any_run_naming_field_and_value(tmp_path, text, needles):
    spec = json.loads(text)
    body = {**SMALL, **spec} if not isinstance(spec, list) else spec
    (tmp_path / "g.json").write_text(json.dumps(body).replace("NaN", "NaN"))
    r = _cli("sweep", "g.json", "--db", "g.db", "--serial", "--backend", "numpy", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in needles), r.stderr
    assert _rows(tmp_path / "g.db") == 0 and r.stdout == ""


def test_failed_runs_make_the_sweep_exit_1_and_say_how_many(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps({**SMALL, "seed": [0, 1]}))
    env = {"ENGINE_MEMORY_LIMIT": "1K"}       # every run is refused by the memory guard when it starts
    r = _cli("sweep", "g.json", "--db", "g.db", "--serial", "--backend", "numpy", "--no-progress", cwd=tmp_path,
             env=env)
    assert r.returncode == 1, r.stderr
    assert "error: 2 runs failed" in r.stderr and "0 done" in r.stdout
    r = _cli("reproduce", "rate_vs_kappa", "--size", "tiny", "--serial", "--backend", "numpy", "--no-progress",
             cwd=tmp_path, env=env)
    assert r.returncode == 1 and "runs failed" in r.stderr, r.stderr
    r = _cli("sweep", "g.json", "--db", "g.db", "--serial", "--backend", "numpy", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "2 done" in r.stdout, r.stderr     # retried, and all ok now


def test_huge_grid_prints_count_and_estimate_then_is_refused_without_yes(tmp_path):
    spec = {"d_in": 16, "n": 8, "d_out": 3, "width": list(range(8, 108)), "depth": list(range(2, 102)),
            "seed": list(range(100)), "steps": 10}
    (tmp_path / "big.json").write_text(json.dumps(spec))
    r = _cli("sweep", "big.json", "--db", "big.db", "--serial", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stdout.startswith("estimate: 1000000 runs to do; predicted")
    assert "1000000 cells" in r.stderr and "--yes" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "big.db").exists()


def test_more_workers_than_cores_is_refused(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps(SMALL))
    r = _cli("sweep", "g.json", "--db", "g.db", "--workers", "99999", cwd=tmp_path)
    assert r.returncode == 2 and "--workers: 99999" in r.stderr and not (tmp_path / "g.db").exists()


# ----------------------------------------------------------------- issue 15 item 2

def test_every_sweep_starts_with_the_estimate_and_estimate_only_runs_nothing(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps({"name": "g", "grid": {**SMALL, "seed": [0, 1, 2]}}))
    r = _cli("sweep", "g.json", "--db", "g.db", "--serial", "--backend", "numpy", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("estimate: 3 runs to do; predicted") and "peak memory per worker" in first
    r = _cli("sweep", "g.json", "--db", "g.db", "--serial", "--backend", "numpy", "--no-progress", cwd=tmp_path)
    assert r.stdout.startswith("estimate: 0 runs to do (3 more already in the database)")
    r = _cli("reproduce", "rate_vs_kappa", "--size", "tiny", "--serial", "--backend", "numpy", "--no-progress",
             cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("estimate: 6 runs to do; predicted"), r.stderr
    r = _cli("reproduce", "phase_diagram", "--estimate", "--serial", "--backend", "numpy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("estimate: 324 runs to do; predicted")
    assert not (tmp_path / "engine-phase_diagram.db").exists()


# ----------------------------------------------------------------- issue 11 item 8, issue 12 item 3: Ctrl-C

def _interrupt_when(cmd, cwd, ready, timeout=180):
    """Start ``cmd`` in its own process group (as a shell does for a foreground job), send SIGINT to
    the whole group once ``ready()`` holds (as Ctrl-C in a terminal does); returns (rc, stdout,
    stderr, seconds from SIGINT to exit, processes of the group left afterwards)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the command ended before it could be interrupted: " + proc.stderr.read()
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - t0
    left = []
    for _ in range(50):   # killed workers are zombies until init reaps them: wait for that
        left = [p for p in subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(proc.pid)], capture_output=True,
                                          text=True).stdout.splitlines() if p.split() and "Z" not in p.split()[1]]
        if not left:
            break
        time.sleep(0.2)
    for p in left:   # do not leave anything behind even when the test fails
        os.kill(int(p.split()[0]), signal.SIGKILL)
    return proc.returncode, out, err, took, left


@pytest.mark.parametrize("how", ["reproduce", "sweep"])
def test_ctrl_c_on_a_local_cluster_prints_one_line_and_exits(tmp_path, how):
    pytest.importorskip("distributed")
    if how == "reproduce":
        cmd = ["reproduce", "phase_diagram", "--workers", "2", "--no-progress"]
        db = tmp_path / "engine-phase_diagram.db"
    else:
        spec = {"d_in": 32, "n": 8, "d_out": 3, "init": ["gaussian", "orthogonal"], "width": [12, 16, 20],
                "depth": [20, 24], "seed": [0, 1, 2], "steps": 20000, "tol": 0}
        (tmp_path / "g.json").write_text(json.dumps(spec))
        cmd = ["sweep", "g.json", "--db", "s.db", "--workers", "2", "--backend", "numpy", "--no-progress"]
        db = tmp_path / "s.db"
    rc, out, err, took, left = _interrupt_when([sys.executable, "-m", "engine", *cmd], tmp_path,
                                               lambda: _rows(db) >= 1)
    assert rc == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: every finished run is in") \
        and "run the same command again" in lines[0], err
    assert left == [], "worker processes outlived the interrupted command"
    assert took < 30   # a hang guard; measured: ~0.5 s
    assert not [f for f in os.listdir(tmp_path) if f.endswith(("-wal", "-shm"))]
    n = _rows(db)
    assert n >= 1   # what finished is kept


def test_ctrl_c_while_the_local_cluster_starts_is_not_lost(tmp_path):
    """SIGINT as soon as the first worker process exists (it is still importing): the workers
    ignore it, the driver still gets it (exit 130, one line; before: worker tracebacks, or with the
    driver ignoring SIGINT while the cluster starts, a Ctrl-C lost), and the half-started cluster
    prints nothing at exit (before: 'AssertionError: Status.init')."""
    pytest.importorskip("distributed")
    spec = {"d_in": 32, "n": 8, "d_out": 3, "width": [12, 16], "depth": [20, 24], "seed": [0, 1, 2],
            "steps": 20000, "tol": 0}
    (tmp_path / "g.json").write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, "-m", "engine", "sweep", "g.json", "--db", "s.db", "--workers", "2",
                             "--backend", "numpy", "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:   # the first worker process spawned
            kids = subprocess.run(["pgrep", "-f", "-g", str(proc.pid), "spawn_main"], capture_output=True,
                                  text=True).stdout.split()
            if kids:
                break
            time.sleep(0.02)
        assert proc.poll() is None and kids, "no worker process was seen starting"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted:"), err


@pytest.mark.parametrize("argv,where", [
    (["demo", "--width", "8", "--depth", "2", "--steps", "5", "--no-plot"], "engine.experiments.demo"),
    (["export", "--db", "DB", "--csv", "x.csv"], "engine.results.ResultsDB.export_csv"),
    (["plot", "--db", "DB"], "engine.experiments.plot_db"),
    (["theorycheck", "--steps", "5"], "engine.experiments.theory_check.run_check"),
    (["info"], "engine.kernels.availability"),
])
def test_ctrl_c_in_any_command_prints_one_line(tmp_path, monkeypatch, capsys, argv, where):
    from engine.sweep import grid, run_sweep
    db = tmp_path / "r.db"
    run_sweep(grid(**{**SMALL, "width": [8, 12], "depth": [2, 3]}), db, workers=0, backend="numpy",
              progress=False, experiment="g")
    capsys.readouterr()
    import importlib
    mod, attr = where.rsplit(".", 1)
    try:
        obj = importlib.import_module(mod)
    except ModuleNotFoundError:   # a class attribute: module.Class.method
        mod, cls = mod.rsplit(".", 1)
        obj = getattr(importlib.import_module(mod), cls)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(obj, attr, interrupted)
    monkeypatch.chdir(tmp_path)
    assert main([str(db) if a == "DB" else a for a in argv]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    # one line, saying what is kept (and how to get it back), not a bare "interrupted"
    assert len(err) == 1 and err[0].startswith("interrupted: ") and ("again" in err[0] or "nothing" in err[0]), err


def test_closed_stdout_ends_quietly(tmp_path):
    """`python -m engine info | head -3`: the reader closes the pipe; no 'error: BrokenPipeError'."""
    proc = subprocess.Popen([sys.executable, "-m", "engine", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()             # the reader is gone before the first line
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == 141


# ----------------------------------------------------------------- issue 11 item 10

def test_cli_resumes_its_checkpoint_when_the_data_are_not_stored_in_it(tmp_path, monkeypatch, capsys):
    """Data above checkpoint.DATA_LIMIT are not stored in the checkpoint; `train --resume` then
    rebuilds them from the same data options (printed in the summary) and checks the fingerprint."""
    monkeypatch.setattr(engine.checkpoint, "DATA_LIMIT", 0)     # as if X, Y took more than 64 MiB
    ck = tmp_path / "run.ckpt"
    data = ["--d-in", "32", "--n", "8", "--d-out", "3", "--data-seed", "5"]
    base = ["train", "--init", "orthogonal", *data, "--width", "16", "--depth", "4", "--tol", "0",
            "--backend", "numpy", "--no-progress"]
    assert main(base + ["--steps", "20", "--checkpoint", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "data_X" not in engine.checkpoint.load(ck).arrays
    hint = [ln for ln in out.splitlines() if ln.startswith("checkpoint:")][0]
    assert "--d-in 32 --n 8 --d-out 3 --data-seed 5" in hint
    # without the data options: a clear refusal naming them (defaults are other data)
    assert main(["train", "--resume", str(ck), "--steps", "30", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not store its data" in err[0] and "--d-in" in err[0]
    # other data options: refused too
    assert main(["train", "--resume", str(ck), "--d-in", "32", "--n", "8", "--d-out", "3",
                 "--data-seed", "6", "--steps", "30", "--no-progress"]) == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(ck), *data, "--steps", "30", "--no-progress"]) == 0
    c = engine.checkpoint.load(ck)
    assert c.step == 30
    prob = engine.Problem(*engine.synthetic(32, 8, 3, seed=5))
    ref = engine.train(engine.init.orthogonal([32, 16, 16, 16, 3], seed=0), prob, steps=30, backend="numpy")
    np.testing.assert_array_equal(c.excess, ref.excess[:len(c.excess)])
    # re-running the first command resumes as well (its data options are the run's)
    assert main(base + ["--steps", "40", "--checkpoint", str(ck)]) == 0
    assert engine.checkpoint.load(ck).step == 40
