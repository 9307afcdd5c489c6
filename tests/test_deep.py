"""Very deep networks train with finite, decreasing loss (normalized storage)."""
import numpy as np
import pytest

import engine


@pytest.mark.parametrize("init", ["orthogonal", "gaussian"])
def test_depth_700_trains(init):
    X, Y = engine.synthetic(32, 16, 4, seed=0)
    prob = engine.Problem(X, Y)
    net = engine.init.by_name(init)([32] + [64] * 699 + [4], seed=0)
    assert net.depth == 700
    run = engine.train(net, prob, lr=0.5 * engine.theory.lr_bound("gaussian", prob, 700),
                       steps=60, backend="numpy")
    assert np.isfinite(run.loss).all()
    assert run.loss[-1] < run.loss[0]
    if init == "orthogonal":
        # orthogonal init is well conditioned at any depth (HXP Thm 3.1): steady decrease
        assert np.all(np.diff(run.loss) < 0)
        assert run.excess[-1] < 0.5 * run.excess[0]
    W = net.weights()
    assert all(np.isfinite(w).all() for w in W)
