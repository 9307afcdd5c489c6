"""gd_step equals raw paper-convention GD (DH eq. 2 and 5), to rounding.

The reduction and normalization are exact algebra (docs/design.md), so the only
difference is floating-point rounding: ~1e-15 per operation, growing mildly
over 30-40 steps. RTOL = 1e-9 leaves a wide margin yet would catch any
algebraic error (those show up at 1e-3 or worse).
"""
import numpy as np
import pytest

import engine
import naive
from engine.stepper import Stepper

RTOL = 1e-9
STEPS = 35


def _data(case):
    if case == "n<d_in":
        return engine.synthetic(12, 7, 3, seed=1)
    if case == "n>d_in":
        return engine.synthetic(6, 40, 3, seed=2, noise=0.5)           # OPT > 0
    if case == "rank-deficient":
        return engine.synthetic(12, 30, 4, seed=3, rank=5, noise=0.3)  # r = 5 > d_out = 4
    if case == "r<d_out":
        return engine.synthetic(10, 20, 6, seed=4, rank=3, noise=0.2)
    raise ValueError(case)


CASES = ["n<d_in", "n>d_in", "rank-deficient", "r<d_out"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("form", [None, "P", "T"])
def test_gd_matches_paper_convention(case, init, form):
    X, Y = _data(case)
    prob = engine.Problem(X, Y)
    d_in, d_out = X.shape[0], Y.shape[0]
    widths = [d_in, 9, 8, 9, d_out]
    net = engine.init.by_name(init)(widths, seed=5)
    W0, alpha = net.weights(), net.alpha
    lr = 0.5 * engine.theory.lr_bound("orthogonal", prob, net.depth)
    W_ref, loss_ref = naive.gd(W0, alpha, X, Y, lr, STEPS)
    if form is None:
        losses = [engine.gd_step(net, prob, lr, backend="numpy") for _ in range(STEPS)]
    else:
        st = Stepper(net, prob, lr, "numpy", form=form)
        losses = [prob.opt + st.step()[0] for _ in range(STEPS)]
    np.testing.assert_allclose(losses, loss_ref[:STEPS], rtol=RTOL)
    # the run must actually move: otherwise equality would prove nothing
    assert loss_ref[-1] < 0.9 * loss_ref[0]
    for W, Wr in zip(net.weights(), W_ref):
        np.testing.assert_allclose(W, Wr, rtol=0, atol=RTOL * np.abs(Wr).max())
    assert prob.loss(net.end_to_end()) == pytest.approx(loss_ref[-1], rel=RTOL)


def test_train_history_matches_paper_convention():
    X, Y = _data("n>d_in")
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([6, 7, 7, 3], seed=0)
    W0, alpha = net.weights(), net.alpha
    lr = 0.004
    _, loss_ref = naive.gd(W0, alpha, X, Y, lr, 30)
    run = engine.train(net, prob, lr=lr, steps=30, backend="numpy")
    assert list(run.t) == list(range(31))
    np.testing.assert_allclose(run.loss, loss_ref, rtol=RTOL)
    np.testing.assert_allclose(run.excess, loss_ref - prob.opt, rtol=1e-8)


def test_depth_one_is_linear_regression():
    X, Y = engine.synthetic(5, 20, 2, seed=0, noise=0.1)
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([5, 2], seed=0)
    W = net.weights()[0] * net.alpha
    lr = 1.0 / prob.x_norm ** 2
    for _ in range(25):
        l = engine.gd_step(net, prob, lr)
        assert l == pytest.approx(0.5 * np.sum((W @ X - Y) ** 2), rel=1e-12)
        W = W - lr * net.alpha ** 2 * (W @ X - Y) @ X.T
    np.testing.assert_allclose(net.end_to_end(), W, rtol=1e-12, atol=1e-14)


def test_rebinding_to_another_problem_keeps_weights():
    X, Y = engine.synthetic(8, 5, 2, seed=0)
    p1 = engine.Problem(X, Y)
    p2 = engine.Problem(*engine.synthetic(8, 30, 2, seed=1))
    net = engine.init.orthogonal([8, 6, 6, 2], seed=0)
    W0 = net.weights()
    engine.gd_step(net, p1, 1e-3)
    W1 = net.weights()
    assert any(np.abs(a - b).max() > 1e-6 for a, b in zip(W0, W1))
    # binding to p2 and back must not change the network itself (beyond rounding)
    E = net.end_to_end()
    from engine.stepper import Stepper
    Stepper(net, p2, 1e-3, "numpy")
    np.testing.assert_allclose(net.end_to_end(), E, rtol=1e-13, atol=1e-13)
    for a, b in zip(net.weights(), W1):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def test_float32_close_to_float64():
    X, Y = engine.synthetic(16, 8, 4, seed=0)
    prob = engine.Problem(X, Y)
    n64 = engine.init.orthogonal([16, 12, 12, 4], seed=0)
    n32 = engine.init.orthogonal([16, 12, 12, 4], seed=0, dtype=np.float32)
    lr = engine.theory.lr_bound("orthogonal", prob, 3)
    r64 = engine.train(n64, prob, lr=lr, steps=20)
    r32 = engine.train(n32, prob, lr=lr, steps=20)
    # float32 rounding (6e-8) amplified by 20 steps of a depth-3 chain
    np.testing.assert_allclose(r32.loss, r64.loss, rtol=2e-4)
    assert n32.normalized()[1].dtype == np.float32
