"""Divergence: lr="theory" never diverges on the papers' setups; lr above the
theorem's bound warns; far above it training stops with DivergenceError that
keeps the history and the last finite network."""
import warnings

import numpy as np
import pytest

import engine
from engine.train import EngineWarning, LearningRateWarning

# Excess below FLOOR x excess(0) is float64 rounding of the residual
# (||R||^2 ~ eps^2 ||Y||^2 ~ 1e-32 relative), where monotonicity is meaningless.
FLOOR = 1e-24


@pytest.fixture(scope="module")
def hxp():
    """HXP Sec. 5's data: X (1024, 16), W* (10, 1024), Y = W* X, iid N(0, 1)."""
    return engine.Problem(*engine.synthetic(1024, 16, 10, seed=0))


# Widths within the regime of the width conditions for this data (r = 16,
# kappa ~ 1.6, d_out = 10: m of a few hundred); narrower nets (m = 64) are
# outside it and indeed show non-monotone excess at the theory rate.
SETUPS = [("gaussian", 256, 2), ("gaussian", 256, 8), ("gaussian", 512, 4),
          ("orthogonal", 256, 2), ("orthogonal", 256, 8), ("orthogonal", 256, 16)]


@pytest.mark.parametrize("init,m,L", SETUPS)
@pytest.mark.parametrize("seed", [0, 1])
def test_theory_lr_never_diverges_on_hxp_setup(hxp, init, m, L, seed):
    net = engine.init.by_name(init)([1024] + [m] * (L - 1) + [10], seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LearningRateWarning)   # "theory" must not warn
        run = engine.train(net, hxp, lr="theory", steps=60, backend="numpy")
    ex = run.excess
    assert np.isfinite(ex).all() and run.steps == 60
    live = ex > FLOOR * ex[0]
    q = ex[1:][live[1:]] / ex[:-1][live[1:]]
    assert (q < 1).all(), "excess must decrease monotonically at the theory rate"
    # the theorem's guarantee: excess(t) <= predicted^t excess(0)
    bound = run.predicted ** run.t * ex[0]
    assert (ex[live] <= bound[live] * (1 + 1e-9)).all()


def test_lr_above_bound_warns(hxp):
    net = engine.init.orthogonal([1024, 256, 256, 10], seed=0)
    bound = engine.theory.lr_bound("orthogonal", hxp, 2)
    with pytest.warns(LearningRateWarning, match=r"^lr: .* exceeds the theorem's bound") as rec:
        engine.train(net, hxp, lr=1.5 * bound, steps=2)
    assert issubclass(LearningRateWarning, EngineWarning) and issubclass(EngineWarning, UserWarning)
    assert "HXP Thm 3.1" in str(rec[0].message)
    # the warning points at the caller, not at engine internals
    assert rec[0].filename == __file__


def test_lr_at_or_below_bound_or_custom_init_does_not_warn(hxp):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LearningRateWarning)
        for init in ("gaussian", "orthogonal"):
            net = engine.init.by_name(init)([1024, 64, 10], seed=0)
            engine.train(net, hxp, lr=engine.theory.lr_bound(init, hxp, 2), steps=1)
            engine.train(net, hxp, lr=0.5 * engine.theory.lr_bound(init, hxp, 2), steps=1)
        custom = engine.init.from_weights(net.weights(), alpha=net.alpha)
        engine.train(custom, hxp, lr=1.0, steps=0)    # no theorem for custom weights


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_far_above_bound_raises_with_history_and_finite_net(hxp, init):
    net = engine.init.by_name(init)([1024, 64, 64, 10], seed=0)
    lr = 200 * engine.theory.lr_bound(init, hxp, 3)
    with pytest.warns(LearningRateWarning):
        with pytest.raises(engine.DivergenceError, match="GD diverged at step") as info:
            engine.train(net, hxp, lr=lr, steps=500, backend="numpy")
    err = info.value
    assert "theorem's bound" in str(err) and err.net is net and err.step >= 1
    assert list(err.result.t) == list(range(err.step))          # nothing recorded is lost
    assert np.isfinite(err.result.loss).all()
    # the attached network is the last finite state (the exploding step was not applied)
    assert all(np.isfinite(W).all() for W in err.net.weights())
    assert np.isfinite(hxp.excess(err.net.end_to_end()))


def test_nan_from_overflow_is_divergence_not_garbage(hxp):
    """A step that overflows to inf/nan is detected; weights are never NaN afterwards."""
    net = engine.init.orthogonal([1024, 32, 32, 32, 10], seed=0)
    with pytest.warns(LearningRateWarning):
        with pytest.raises(engine.DivergenceError) as info:
            engine.train(net, hxp, lr=1e6, steps=50, backend="numpy")
    assert all(np.isfinite(W).all() for W in info.value.net.weights())


def test_gd_step_refuses_nonfinite_state(hxp):
    net = engine.init.orthogonal([1024, 16, 10], seed=0)
    net._layers[1][0, 0] = np.inf        # simulate a corrupted state
    before = [a.copy() for a in net._layers]
    with pytest.raises(engine.DivergenceError, match="not finite"):
        engine.gd_step(net, hxp, 1e-4, backend="numpy")
    for a, b in zip(before[1:], net._layers[1:]):
        np.testing.assert_array_equal(a, b)
