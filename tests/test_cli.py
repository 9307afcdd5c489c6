"""python -m engine: every command end to end on tiny grids, and clean errors (exit 2) for bad arguments."""
import csv
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import engine
from engine.cli import main


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_demo_small_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo.png"
    r = _run("demo", "--width", "64", "--depth", "10", "--steps", "300", "--out", str(out), "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert "gaussian" in r.stdout and "orthogonal" in r.stdout and "theorem factor" in r.stdout
    assert out.exists() and out.stat().st_size > 5000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_orthogonal_beats_gaussian_at_default_shape():
    """The README's main job: at width 128, depth 64 orthogonal converges fast
    while Gaussian (same width, theory lr) is still far from converged."""
    from engine import experiments as ex
    prob, rows = ex.demo(width=128, depth=64, steps=300, backend="numpy")
    by = {r["init"]: r for r in rows}
    assert ex.outcome(by["orthogonal"]) == "converged" and by["orthogonal"]["steps_run"] < 100
    assert by["gaussian"]["final_excess"] > 1e3 * by["orthogonal"]["final_excess"]


def test_info():
    r = _run("info")
    assert r.returncode == 0 and "numpy" in r.stdout and "available" in r.stdout


@pytest.mark.parametrize("args", [["demo", "--width", "0"], ["demo", "--depth", "x"], ["nope"]])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_bad_backend_is_one_line_error(tmp_path):
    r = _run("demo", "--width", "8", "--depth", "3", "--steps", "2", "--backend", "cuda", "--no-plot")
    assert r.returncode == 2
    assert "backend" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ reproduce / sweep / plot / export / train

def _png(path):
    return os.path.exists(path) and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["hxp", "phase_diagram", "exponential_curse", "rate_vs_kappa", "width_threshold"])
def test_reproduce_tiny_writes_db_and_figure(tmp_path, name):
    pytest.importorskip("matplotlib")
    r = _run("reproduce", name, "--size", "tiny", "--serial", "--backend", "numpy", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _png(tmp_path / f"{name}.png") and (tmp_path / f"engine-{name}.db").exists()
    assert "0 failed" in r.stdout and "Traceback" not in r.stderr
    r = _run("plot", "--db", f"engine-{name}.db", "--out-dir", "again", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _png(tmp_path / "again" / f"{name}.png")


def test_sweep_grid_file_plot_export_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    spec = {"name": "mygrid", "grid": {"d_in": 32, "n": 8, "d_out": 3, "init": ["gaussian", "orthogonal"],
                                       "width": [8, 16], "depth": [2, 4], "seed": [0], "steps": 50}}
    (tmp_path / "g.json").write_text(json.dumps(spec))
    r = _run("sweep", "g.json", "--db", "g.db", "--serial", "--backend", "numpy", "--no-progress",
             "--export", "g.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "8 runs: 0 already in the database, 8 done" in r.stdout
    r = _run("sweep", "g.json", "--db", "g.db", "--serial", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "8 already in the database, 0 done" in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "g.csv")))
    assert len(rows) == 8 and rows[0]["experiment"] == "mygrid"
    r = _run("plot", "--db", "g.db", "--out-dir", "figs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _png(tmp_path / "figs" / "mygrid.png")
    r = _run("export", "--db", "g.db", "--csv", "all.csv", cwd=tmp_path)
    assert r.returncode == 0 and "exported 8 rows" in r.stdout


def test_sweep_with_dask_localcluster(tmp_path):
    pytest.importorskip("distributed")
    spec = {"d_in": 32, "n": 8, "d_out": 3, "width": [8, 16], "depth": 3, "seed": [0, 1], "steps": 30}
    (tmp_path / "g.json").write_text(json.dumps(spec))
    r = _run("sweep", "g.json", "--db", "g.db", "--workers", "2", "--backend", "numpy", "--no-progress",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 done" in r.stdout and "LocalCluster" in r.stdout


def test_train_summary_history_plot_checkpoint(tmp_path):
    pytest.importorskip("matplotlib")
    import inspect
    args = ["train", "--init", "orthogonal", "--d-in", "32", "--n", "8", "--d-out", "3", "--width", "16",
            "--depth", "4", "--steps", "40", "--backend", "numpy", "--history", "h.csv", "--plot", "t.png"]
    has_ckpt = "checkpoint" in inspect.signature(engine.train).parameters
    if has_ckpt:
        args += ["--checkpoint", "c.ckpt", "--checkpoint-every", "10"]
    r = _run(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "status" in r.stdout and "fitted rate" in r.stdout
    hist = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert hist[0]["t"] == "0" and float(hist[-1]["excess"]) < float(hist[0]["excess"])
    assert _png(tmp_path / "t.png")
    if has_ckpt:
        assert (tmp_path / "c.ckpt").exists()


def test_info_memory_estimate():
    r = _run("info", "--widths", "1024,256x63,10", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    assert "memory for widths" in r.stdout and "depth 64" in r.stdout and "float32" in r.stdout


@pytest.mark.parametrize("args", [
    ["reproduce", "nope"],
    ["reproduce", "phase_diagram", "--size", "huge"],
    ["reproduce", "hxp", "--size", "default"],
    ["reproduce", "phase_diagram", "--full", "--size", "tiny"],
    ["train", "--lr", "-1"],
    ["train", "--lr", "fast"],
    ["train", "--widths", "10x"],
    ["train", "--widths", "32,8,3", "--d-in", "16"],
    ["train", "--steps", "-3"],
    ["sweep", "no_such_thing", "--db", "x.db"],
    ["sweep", "phase_diagram"],
    ["export", "--db", "x.db"],
    ["info", "--widths", "a,b"],
    ["plot", "--db", "missing.db"],
])
def test_more_bad_arguments_exit_2(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        code = main(args)
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_bad_grid_file_and_database_errors_are_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    r = _run("sweep", "bad.json", "--db", "x.db", "--serial", cwd=tmp_path)
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "typo.json").write_text(json.dumps({"widht": [8]}))
    r = _run("sweep", "typo.json", "--db", "x.db", "--serial", cwd=tmp_path)
    assert r.returncode == 2 and "unknown field" in r.stderr
    # a database of another engine version
    (tmp_path / "ok.json").write_text(json.dumps({"d_in": 8, "n": 4, "d_out": 2, "width": 4, "depth": 2, "steps": 5}))
    r = _run("sweep", "ok.json", "--db", "v.db", "--serial", "--backend", "numpy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(tmp_path / "v.db")
    con.execute("UPDATE meta SET value = '0.0.1' WHERE key = 'engine_version'")
    con.commit()
    con.close()
    r = _run("sweep", "ok.json", "--db", "v.db", "--serial", cwd=tmp_path)
    assert r.returncode == 2 and "written by engine 0.0.1" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a locked database (another process holds a write transaction)
    from engine.results import ResultsDB
    ResultsDB(tmp_path / "l.db").close()
    holder = sqlite3.connect(tmp_path / "l.db")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        r = _run("sweep", "ok.json", "--db", "l.db", "--serial", "--lock-timeout", "0.2", cwd=tmp_path)
    finally:
        holder.rollback()
        holder.close()
    assert r.returncode == 2 and "is locked by another process" in r.stderr and "Traceback" not in r.stderr


def test_sweep_named_experiment_then_plot(tmp_path):
    pytest.importorskip("matplotlib")
    r = _run("sweep", "rate_vs_kappa", "--size", "tiny", "--db", "k.db", "--serial", "--backend", "numpy",
             "--no-progress", "--export", "k.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rate_vs_kappa: 6 runs in k.db (0 failed)" in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "k.csv")))
    assert len(rows) == 6 and json.loads(rows[0]["config"])["lr"] == "theory"
    r = _run("plot", "--db", "k.db", cwd=tmp_path)
    assert r.returncode == 0 and _png(tmp_path / "rate_vs_kappa.png")


def test_theorycheck_subcommand_passes_its_arguments_through(tmp_path, capsys):
    from engine.cli import main
    out = tmp_path / "tc.png"
    assert main(["theorycheck", "--steps", "5", "--width", "32", "--depth", "3", "--out", str(out)]) == 0
    assert "theorem" in capsys.readouterr().out.lower()
    assert out.exists() and out.stat().st_size > 0
    with pytest.raises(SystemExit) as e:        # a bad option: exit 2, as every command's
        main(["theorycheck", "--no-such-option"])
    assert e.value.code == 2


def test_train_resume_continues_the_checkpointed_run(tmp_path, capsys):
    """`train --resume` takes data, network, lr and backend from the checkpoint
    (not from the option defaults) and extends the run to --steps."""
    ck = tmp_path / "run.ckpt"
    base = ["train", "--init", "orthogonal", "--d-in", "32", "--n", "8", "--d-out", "3",
            "--width", "16", "--depth", "4", "--tol", "0", "--backend", "numpy", "--no-progress"]
    assert main(base + ["--steps", "40", "--checkpoint", str(ck)]) == 0
    assert engine.checkpoint.load(ck).step == 40
    assert main(["train", "--resume", str(ck), "--steps", "60", "--no-progress"]) == 0
    c = engine.checkpoint.load(ck)
    assert c.step == 60
    ref = engine.train(engine.init.orthogonal([32, 16, 16, 16, 3], seed=0),   # the CLI default init seed
                       engine.Problem(*engine.synthetic(32, 8, 3, seed=0)), steps=60, backend="numpy")
    np.testing.assert_array_equal(c.excess, ref.excess[:len(c.excess)])
    assert main(["train", "--resume", str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- issue 11 (reliability) -------------------------------------------------------------

TRAIN_SMALL = ["train", "--init", "orthogonal", "--d-in", "32", "--n", "8", "--d-out", "3",
               "--width", "16", "--depth", "4", "--tol", "0", "--backend", "numpy", "--no-progress"]


def test_train_rerun_with_existing_checkpoint_resumes_or_refuses(tmp_path, capsys, monkeypatch):
    """Item 1: re-running `train --checkpoint` continues the run; another run is refused
    (exit 2) unless --overwrite; the Ctrl-C line talks about the checkpoint."""
    ck = tmp_path / "run.ckpt"
    assert main(TRAIN_SMALL + ["--steps", "20", "--checkpoint", str(ck), "--checkpoint-every", "5"]) == 0
    capsys.readouterr()
    import functools
    calls = []
    real = engine.train

    @functools.wraps(real)
    def spy(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(engine, "train", spy)
    monkeypatch.setattr(sys.modules["engine.train"], "train", spy)   # train() resumes by calling itself
    assert main(TRAIN_SMALL + ["--steps", "40", "--checkpoint", str(ck), "--checkpoint-every", "5"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert any(kw.get("resume") == str(ck) for kw in calls), "the second call must resume the file"
    c = engine.checkpoint.load(ck)
    ref = real(engine.init.orthogonal([32, 16, 16, 16, 3], seed=0),   # the CLI default init seed
               engine.Problem(*engine.synthetic(32, 8, 3, seed=0)), steps=40, backend="numpy")
    assert c.step == 40
    np.testing.assert_array_equal(c.excess, ref.excess[:len(c.excess)])
    before = ck.read_bytes()
    assert main(TRAIN_SMALL + ["--steps", "40", "--lr", "1e-4", "--checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and ck.read_bytes() == before
    assert main(TRAIN_SMALL + ["--steps", "10", "--lr", "1e-4", "--checkpoint", str(ck), "--overwrite"]) == 0
    assert engine.checkpoint.load(ck).step == 10

    @functools.wraps(real)
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", interrupted)
    capsys.readouterr()
    assert main(TRAIN_SMALL + ["--steps", "10", "--lr", "1e-4", "--checkpoint", str(ck)]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ck) in err and "resume" in err and "database" not in err


@pytest.mark.parametrize("extra,needle", [
    (["--tol", "nan"], "--tol"), (["--tol", "inf"], "--tol"), (["--data-seed", "-5"], "--data-seed"),
    (["--seed", "-1"], "--seed"), (["--plot", "t.xyz"], "--plot"),
    (["--history", "/proc/engine-no/h.csv"], "--history"),
    (["--history", "afile/h.csv"], "--history"),
])
def test_train_bad_options_fail_before_training(extra, needle, capsys, monkeypatch, tmp_path):
    """Item 9: NaN tol, negative seeds, an unwritable --history and an unknown --plot format are
    refused up front (exit 2, naming the option), not after the run."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a directory")
    ran = []
    monkeypatch.setattr(engine, "train", lambda *a, **k: ran.append(1))
    try:
        code = main(TRAIN_SMALL + ["--steps", "5"] + extra)
    except SystemExit as exc:          # argparse's own exit for a bad value
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err.strip().splitlines()[-1] and not ran   # usage, then one error line


def test_info_huge_widths_is_arithmetic(capsys):
    """Item 9: the estimate for 10^7 layers is computed from the run-length form, not a list."""
    import time
    import tracemalloc
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        assert main(["info", "--widths", "1024,1000x10000000,10"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5 and peak < 20 * 1024 ** 2
    assert "depth 10000001" in capsys.readouterr().out
