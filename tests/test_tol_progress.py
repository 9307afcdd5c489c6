"""One meaning of ``tol`` (relative to ||Y||_F^2) everywhere, ``atol`` absolute; progress reports."""
import io

import numpy as np
import pytest

import engine
from engine.train import Progress

WIDTHS = [16, 24, 24, 4]


@pytest.fixture
def prob():
    return engine.Problem(*engine.synthetic(16, 8, 4, seed=0))


def test_tol_is_relative_to_y_norm_and_atol_absolute(prob):
    rel = 1e-6
    a = engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=5000, tol=rel, backend="numpy")
    b = engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=5000, atol=rel * prob.y_norm_sq,
                     backend="numpy")
    assert a.converged and b.converged and a.steps == b.steps < 5000
    assert a.excess[-1] <= rel * prob.y_norm_sq < a.excess[-2]
    # an absolute tol of the same number would stop far later: y_norm_sq is large here
    assert prob.y_norm_sq > 10
    c = engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=5000, atol=rel, backend="numpy")
    assert c.steps > a.steps
    assert engine.stop_threshold(prob, tol=rel) == rel * prob.y_norm_sq
    assert engine.stop_threshold(prob, atol=rel) == rel
    assert engine.stop_threshold(prob) is None


def test_tol_and_atol_together_or_bad_are_refused(prob):
    net = engine.init.orthogonal(WIDTHS, seed=0)
    with pytest.raises(ValueError, match="^tol: give either tol .* or atol"):
        engine.train(net, prob, steps=3, tol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="^atol"):
        engine.train(net, prob, steps=3, atol=-1.0)
    with pytest.raises(TypeError, match="^atol"):
        engine.train(net, prob, steps=3, atol="1e-3")
    ens = engine.init.orthogonal(WIDTHS, seed=0, ensemble=2)
    with pytest.raises(ValueError, match="^tol: give either"):
        engine.train(ens, prob, steps=3, tol=1e-3, atol=1e-3)


def test_ensemble_tol_is_relative(prob):
    ens = engine.init.orthogonal(WIDTHS, seed=0, ensemble=2)
    res = engine.train(ens, prob, steps=5000, tol=1e-6, backend="numpy")
    ref = engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=5000, tol=1e-6, backend="numpy")
    assert res.converged.all()
    assert int(res.steps[0]) == ref.steps


def test_resume_keeps_the_stop_threshold(prob, tmp_path):
    path = tmp_path / "c.ckpt"

    def stop_at(k):
        return lambda t, ex, net: t + 1 >= k

    ref = engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=5000, tol=1e-6, backend="numpy")
    engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=5000, tol=1e-6, backend="numpy",
                 checkpoint=path, checkpoint_every=5, callback=stop_at(7))
    saved = engine.checkpoint.load(path)
    # the checkpoint holds the absolute threshold under "tol", as checkpoints
    # written when tol was absolute did: those resume unchanged
    assert saved.meta["tol"] == 1e-6 * prob.y_norm_sq
    with pytest.raises(ValueError, match="^tol: the checkpoint was trained with the stop threshold"):
        engine.train(prob=prob, resume=path, tol=1e-7)
    with pytest.raises(ValueError, match="^atol: the checkpoint"):
        engine.train(prob=prob, resume=path, atol=1e-6)
    # the same threshold given either way is accepted; the run finishes as if uninterrupted
    same = engine.train(prob=prob, resume=path, atol=1e-6 * prob.y_norm_sq, steps=5000, checkpoint=None)
    assert same.converged and same.steps == ref.steps
    np.testing.assert_array_equal(same.excess[-1], ref.excess[-1])


def test_progress_lines_off_a_terminal_every_n_steps(prob, capsys):
    engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=40, backend="numpy",
                 progress=True, log_every=10)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split()[1] for ln in lines] == ["10/40", "20/40", "30/40", "40/40"]
    assert all("||Y||^2" in ln and "l - OPT" in ln for ln in lines)
    assert "ETA" in lines[0] and "done in" in lines[-1]


def test_progress_without_log_every_writes_only_the_last_line_of_a_short_run(prob, capsys):
    engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=20, backend="numpy", progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("step 20/20") and "done in" in lines[0]


def test_progress_eta_to_tol_and_bar_postfix():
    out = io.StringIO()
    p = Progress(1000, 0, log_every=("steps", 10), y_norm_sq=2.0, threshold=1e-6, stream=out, tty=False)
    for t in range(0, 31):
        p.update(t, 0.5 ** t)
    lines = out.getvalue().splitlines()
    # at t = 10 the excess 0.5^10 contracts by 1/2 per step: ~10 more steps to 1e-6;
    # once below the threshold the ETA is the budget's
    assert len(lines) == 3 and "(to tol, ~10 steps)" in lines[0] and "(budget)" in lines[-1]
    bar_out = io.StringIO()
    pb = Progress(100, 0, y_norm_sq=2.0, threshold=1e-12, stream=bar_out, tty=True)
    for t in range(0, 10):
        pb.update(t, 0.5 ** t)
    pb.update(10, 0.5 ** 10, stop=True)
    pb.close()
    assert pb.bar is not None and "rel. excess" in bar_out.getvalue() and "steps to tol" in bar_out.getvalue()


@pytest.mark.parametrize("bad", [0, -3, "x", "0s", "-1s", 1.5])
def test_bad_log_every_is_refused(prob, bad):
    with pytest.raises((ValueError, TypeError), match="^log_every"):
        engine.train(engine.init.orthogonal(WIDTHS, seed=0), prob, steps=3, progress=True, log_every=bad)


def test_bottleneck_narrower_than_d_out_warns():
    """HXP data, orthogonal 1024 -> 4 -> 10: rank(alpha W_2 W_1) <= 4 < rank(Phi) = 10."""
    prob = engine.Problem(*engine.synthetic(1024, 16, 10, seed=0))
    with pytest.warns(engine.BottleneckWarning, match=r"^widths: hidden width d_1 = 4 .* rank\(Phi\) = 10"):
        engine.train(engine.init.orthogonal([1024, 4, 10], seed=0), prob, lr=1e-5, steps=2)
    with pytest.warns(engine.BottleneckWarning):
        engine.train(engine.init.orthogonal([1024, 4, 10], seed=0, ensemble=2), prob, lr=1e-5, steps=2)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", engine.BottleneckWarning)
        engine.train(engine.init.orthogonal([1024, 10, 10], seed=0), prob, steps=2)   # d_1 = d_out: fine
        # a bottleneck not below rank(Phi) is fine too: Y of rank 2 through a width-3 layer
        small = engine.Problem(*engine.synthetic(8, 2, 4, seed=0))
        engine.train(engine.init.gaussian([8, 3, 4], seed=0), small, steps=2)


def test_ensemble_progress_reports_the_worst_running_member(prob, capsys):
    ens = engine.init.orthogonal(WIDTHS, seed=0, ensemble=3)
    res = engine.train(ens, prob, steps=30, backend="numpy", progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("step 30/30") and "done in" in lines[0]
    worst = float(np.nanmax(res.excess[:, -1]))
    assert f"l - OPT {worst:.3e}" in lines[0]
