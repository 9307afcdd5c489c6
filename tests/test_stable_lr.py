"""lr="stable": eta = 1 / lambda_max(P(0)) (P the Gram matrix of DH eq. 7 at init), for any init,
in engine.train, ensembles, sweeps and the CLI (issue 15, item 5)."""
import math
import warnings

import numpy as np
import pytest

import engine
from engine import ensemble as ens_mod
from engine.train import LearningRateWarning, stable_lr
from naive import gram

# The reduced, renormalized chains of engine.diagnostics vs the raw dense P of tests/naive.py:
# lambda_max is well conditioned (absolute error ~ eps ||P||), and these nets are a few layers
# of O(1) products, so the two agree to rounding (measured: < 2e-15 relative).
NAIVE_RTOL = 1e-12


def _nets(d_in, d_out):
    w = [d_in, 9, 11, 7, d_out]
    W = np.random.default_rng(5).standard_normal
    Ws = [W((w[i + 1], w[i])) for i in range(len(w) - 1)]
    return {
        "gaussian": engine.init.gaussian(w, seed=1),
        "gaussian-sigma": engine.init.gaussian(w, seed=2, sigma=[0.5, 1.3, 0.8, 1.1]),
        "orthogonal": engine.init.orthogonal([d_in, 12, 12, 12, d_out], seed=3),
        "identity": engine.init.identity([d_in, 8, 8, d_out], scale=0.9, noise=0.1, seed=4),
        "from_weights": engine.init.from_weights(Ws, alpha=0.05),
    }


@pytest.mark.parametrize("name", ["gaussian", "gaussian-sigma", "orthogonal", "identity", "from_weights"])
def test_stable_lr_is_one_over_naive_lambda_max(name):
    X, Y = engine.synthetic(6, 5, 3, seed=7)
    prob = engine.Problem(X, Y)
    net = _nets(6, 3)[name]
    lam = np.linalg.eigvalsh(gram(net.weights(), net.alpha, prob.X))[-1]
    assert stable_lr(net, prob) == pytest.approx(1.0 / lam, rel=NAIVE_RTOL)


def test_train_lr_stable_takes_it_at_step_0_without_warning():
    X, Y = engine.synthetic(16, 16, 4, seed=0)
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([16, 256, 256, 4], seed=0)
    want = stable_lr(net, prob)
    assert want > engine.theory.lr_bound(net, prob)   # above the theorem's bound: would warn if numeric
    with warnings.catch_warnings():
        warnings.simplefilter("error", LearningRateWarning)
        run = engine.train(net, prob, lr="stable", steps=5, backend="numpy")
    assert run.lr == want
    with pytest.warns(LearningRateWarning):
        engine.train(engine.init.gaussian([16, 256, 256, 4], seed=0), prob, lr=want, steps=1, backend="numpy")


def test_stable_rate_trains_where_the_theorem_rate_diverges():
    """HXP's data, orthogonal m = 16 < d_x = 1024, L = 4 (theory.lr_bound's docstring): the
    theorem's rate is ~24x 1/lambda_max(P(0)) and diverges within a few steps; the stable rate
    converges to tol."""
    X, Y = engine.synthetic(1024, 16, 10, seed=0)
    prob = engine.Problem(X, Y)
    widths = [1024, 16, 16, 16, 10]
    with pytest.raises(engine.DivergenceError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine.train(engine.init.orthogonal(widths, seed=0), prob, lr="theory", steps=1000, tol=1e-12)
    run = engine.train(engine.init.orthogonal(widths, seed=0), prob, lr="stable", steps=1000, tol=1e-12)
    assert run.converged and run.excess[-1] <= 1e-12 * prob.y_norm_sq


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_linear_stability_edge_at_two_over_lambda_max(init):
    """The docstring's claim, on real GD of a wide net (near-linear regime): below 2/lambda_max
    the excess falls at every step; just above it the top direction grows and the loss rises."""
    X, Y = engine.synthetic(8, 8, 2, seed=1)
    prob = engine.Problem(X, Y)
    net0 = engine.init.by_name(init)([8, 256, 256, 2], seed=0)
    s = stable_lr(net0, prob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LearningRateWarning)
        ex = {f: engine.train(net0.copy(), prob, lr=f * s, steps=30, backend="numpy").excess
              for f in (1.0, 1.8, 2.2)}
    assert np.all(np.diff(ex[1.0]) < 0) and np.all(np.diff(ex[1.8]) < 0)
    assert np.any(np.diff(ex[2.2]) > 0)


def test_resume_refuses_stable(tmp_path):
    X, Y = engine.synthetic(8, 8, 2, seed=1)
    prob = engine.Problem(X, Y)
    path = str(tmp_path / "r.ckpt")
    net = engine.init.orthogonal([8, 16, 16, 2], seed=0)
    want = stable_lr(net, prob)
    run = engine.train(net, prob, lr="stable", steps=4, checkpoint=path, backend="numpy")
    assert run.lr == want
    with pytest.raises(ValueError, match="^lr: 'stable'"):
        engine.train(prob=prob, resume=path, lr="stable", steps=8)
    # re-running the same script (same fresh net, checkpoint exists) resumes it: P(0) of the fresh net
    again = engine.train(engine.init.orthogonal([8, 16, 16, 2], seed=0), prob, lr="stable", steps=8,
                         checkpoint=path, backend="numpy")
    assert again.steps == 8 and again.lr == want


def test_bad_lr_string_names_stable():
    X, Y = engine.synthetic(8, 8, 2, seed=1)
    prob = engine.Problem(X, Y)
    with pytest.raises(ValueError, match="'theory' or 'stable'"):
        engine.train(engine.init.gaussian([8, 8, 2]), prob, lr="stabel")


def test_ensemble_stable_is_per_member_and_equals_separate_runs():
    X, Y = engine.synthetic(8, 8, 2, seed=1)
    prob = engine.Problem(X, Y)
    widths = [8, 12, 12, 12, 2]
    ens = ens_mod.Ensemble.gaussian(widths, seeds=range(3))
    lrs = ens_mod.stable_lrs(ens, prob)
    singles = [engine.init.gaussian(widths, seed=k) for k in range(3)]
    assert list(lrs) == [stable_lr(n, prob) for n in singles]
    assert len(set(lrs)) == 3      # per member, not one shared rate
    res = ens_mod.train(ens, prob, lr="stable", steps=20, backend="numpy")
    for k, n in enumerate(singles):
        one = engine.train(n, prob, lr="stable", steps=20, backend="numpy")
        np.testing.assert_array_equal(res.member(k).excess, one.excess)


def test_sweep_lr_stable_row_and_scale():
    from engine.sweep import grid, run_sweep
    from engine.results import ResultsDB
    cfgs = grid(d_in=8, n=8, d_out=2, init=["gaussian", "orthogonal"], width=16, depth=3, seed=0,
                lr="stable", lr_scale=[1.0, 0.5], steps=10, tol=0)
    with ResultsDB(":memory:") as db:
        run_sweep(cfgs, db, workers=0, progress=False, backend="numpy")
        rows = db.rows()
    X, Y = engine.synthetic(8, 8, 2, seed=0)
    prob = engine.Problem(X, Y)
    for r in rows:
        net = engine.init.by_name(r["init"])([8, 16, 16, 2], seed=0)
        assert r["lr_rule"] == "stable" and r["status"] == "ok"
        assert r["lr"] == pytest.approx(stable_lr(net, prob) * r["lr_scale"], rel=1e-15)


def test_cli_train_lr_stable(capsys):
    from engine.cli import main
    assert main(["train", "--d-in", "8", "--n", "8", "--d-out", "2", "--width", "16", "--depth", "3",
                 "--lr", "stable", "--steps", "5", "--no-progress", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    X, Y = engine.synthetic(8, 8, 2, seed=0)
    want = stable_lr(engine.init.gaussian([8, 16, 16, 2], seed=0), engine.Problem(X, Y))
    assert f"lr {want:.5g} (stable: 1/lambda_max(P(0)))" in out
