"""The command line for a new user: one seed default, options checked before any output,
`info` naming auto's choice, one-line warnings, progress lines, where results went."""
import os

import pytest

import engine
from engine import kernels
from engine.cli import build_parser, main

SMALL = ["--d-in", "32", "--n", "8", "--d-out", "3", "--width", "16", "--depth", "4", "--backend", "numpy"]


def test_demo_and_train_share_the_seed_defaults():
    p = build_parser()
    demo, train = p.parse_args(["demo"]), p.parse_args(["train"])
    assert demo.seed == train.seed == 0 and demo.data_seed == train.data_seed == 0


def test_demo_nets_are_trains_nets():
    """`demo` and `train` with their defaults train the same network on the same data."""
    from engine import experiments as ex
    _, rows = ex.demo(width=16, depth=3, steps=5, backend="numpy")
    gauss = next(r for r in rows if r["init"] == "gaussian")
    assert ex.outcome(gauss) == "budget"
    prob = engine.Problem(*engine.synthetic(1024, 16, 10, seed=0))
    ref = engine.train(engine.init.gaussian([1024, 16, 16, 10], seed=0), prob, steps=5, backend="numpy")
    assert list(gauss["curve"][1]) == list(ref.excess)


@pytest.mark.parametrize("cmd", [["train"] + SMALL[:-2], ["demo", "--no-plot"],
                                 ["reproduce", "rate_vs_kappa", "--size", "tiny", "--serial"],
                                 ["sweep", "rate_vs_kappa", "--db", "x.db", "--size", "tiny", "--serial"]])
def test_bad_backend_is_refused_before_any_output(cmd, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(cmd + ["--backend", "cuda"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: --backend: unknown backend 'cuda'")
    assert not (tmp_path / "x.db").exists()


def test_bad_stop_and_log_options_are_refused_before_any_output(capsys):
    for extra, msg in ([["--tol", "1e-3", "--atol", "1e-3"], "--tol and --atol: give one"],
                       [["--tol", "-1"], "--tol: must be"], [["--atol", "nan"], "--atol: must be"],
                       [["--log-every", "often"], "--log_every: must be"]):
        assert main(["train"] + SMALL + extra) == 2
        out = capsys.readouterr()
        assert out.out == "" and msg in out.err, (extra, out.err)


def test_info_names_autos_choice_for_widths_and_no_none_versions(capsys):
    assert main(["info", "--widths", "1024,4,10"]) == 0
    out = capsys.readouterr().out
    pick = kernels.auto_choice([1024, 4, 10], 1024, "float64")[0]
    assert f"auto for these widths: {pick}" in out
    assert "None" not in out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "prints its choice for those widths" in out and "engine/kernels" not in out and "None" not in out


def test_train_bottleneck_warns_in_one_line(capsys):
    assert main(["train", "--init", "orthogonal", "--widths", "1024,4,10", "--lr", "1e-6", "--steps", "3",
                 "--backend", "numpy", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: widths: hidden width d_1 = 4 is narrower than d_out")


def test_train_summary_says_where_checkpoint_and_history_went(tmp_path, capsys):
    ck, hist = tmp_path / "r.ckpt", tmp_path / "h.csv"
    assert main(["train"] + SMALL + ["--steps", "30", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint: none written" in out and "history: not written" in out
    assert "stop: l - OPT <= 1e-12 ||Y||_F^2" in out
    assert main(["train"] + SMALL + ["--steps", "30", "--checkpoint", str(ck), "--history", str(hist),
                                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {ck} (state of step 30; continue with 'python -m engine train --resume {ck}" in out
    assert f"history: {hist} (31 rows" in out and hist.exists()


def test_train_progress_lines_when_not_a_terminal(capsys):
    assert main(["train"] + SMALL + ["--steps", "30", "--tol", "0", "--log-every", "10"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [ln.split()[1] for ln in err] == ["10/30", "20/30", "30/30"]


def test_train_atol_is_absolute(capsys):
    assert main(["train"] + SMALL + ["--steps", "5000", "--atol", "1e-3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "stop: l - OPT <= 0.001;" in out and "status converged" in out


def test_reproduce_all_refuses_per_figure_options(capsys):
    for extra in (["--size", "quick"], ["--out", "x.png"], ["--db", "x.db"]):
        assert main(["reproduce", "all", "--out-dir", "d"] + extra) == 2
        assert "reproduce all:" in capsys.readouterr().err
    assert main(["reproduce", "rate_vs_kappa", "--out-dir", "d"]) == 2
    assert "--out-dir: only with 'reproduce all'" in capsys.readouterr().err


def test_reproduce_all_writes_every_figure_and_table(tmp_path, monkeypatch):
    """The command's loop, with each figure replaced by a stub (the real ones: test_figure_tables)."""
    from engine import experiments as ex
    made = []

    def fake(name, out_dir, db=None, **kw):
        made.append((name, os.path.basename(db)))
        return os.path.join(out_dir, name + ".png"), os.path.join(out_dir, name + ".csv")

    monkeypatch.setattr(ex, "reproduce_figure", fake)
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "all", "--out-dir", "docs", "--serial", "--no-progress"]) == 0
    assert made == [(n, f"engine-{n}.db") for n in ex.COMMITTED_FIGURES]


def test_reproduce_writes_the_figures_table_next_to_it(tmp_path, capsys):
    from engine import experiments as ex
    out = tmp_path / "k.png"
    assert main(["reproduce", "rate_vs_kappa", "--size", "tiny", "--serial", "--no-progress",
                 "--db", str(tmp_path / "k.db"), "--out", str(out)]) == 0
    assert f"its table {tmp_path / 'k.csv'}" in capsys.readouterr().out
    header, recs = ex.read_table(str(tmp_path / "k.csv"))
    assert header == ["depth", "width", "kappa", "median_steps_to_eps"] and len(recs) == 6
