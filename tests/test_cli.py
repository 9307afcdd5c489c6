"""python -m engine: demo end to end, info, and clean errors for bad arguments."""
import os
import subprocess
import sys

import pytest

import engine
from engine.cli import main


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_demo_small_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo.png"
    r = _run("demo", "--width", "64", "--depth", "10", "--steps", "300", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "gaussian" in r.stdout and "orthogonal" in r.stdout and "theorem factor" in r.stdout
    assert out.exists() and out.stat().st_size > 5000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_orthogonal_beats_gaussian_at_default_shape():
    """The README's main job: at width 128, depth 64 orthogonal converges fast
    while Gaussian (same width, theory lr) is still far from converged."""
    prob, rows = engine.cli.run_demo(width=128, depth=64, steps=300, backend="numpy")
    by = {r["init"]: r for r in rows}
    assert by["orthogonal"]["status"] == "converged" and by["orthogonal"]["run"].steps < 100
    g = by["gaussian"]["run"]
    assert g.excess[-1] > 1e3 * by["orthogonal"]["run"].excess[-1]


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
