"""lr="theory", the LearningRateWarning and run.predicted follow the net's theorem setting
(engine.theory module docstring: W-space eta = sigma^2 / c^2 x the theorem's eta)."""
import warnings

import numpy as np
import pytest

import engine
from engine import LearningRateWarning, theory

WIDTHS = [32] + [64] * 3 + [2]


@pytest.fixture(scope="module")
def prob():
    X, Y = engine.synthetic(32, 8, 2, seed=0)
    return engine.Problem(X, Y)


def _alpha10():
    return 10.0 * np.exp(-0.5 * np.sum(np.log(WIDTHS[1:])))


CASES = [("gaussian", dict(sigma=0.1), 0.01), ("gaussian", dict(sigma=0.3), 0.09),
         ("gaussian", dict(sigma=3.0), 9.0), ("gaussian", "alpha10", 0.01),
         ("orthogonal", "alpha10", 0.01)]


@pytest.mark.parametrize("init,kw,scale", CASES)
def test_theory_lr_is_scaled_and_run_stays_within_factor(prob, init, kw, scale):
    kw = dict(alpha=_alpha10()) if kw == "alpha10" else kw
    net = engine.init.by_name(init)(WIDTHS, seed=0, **kw)
    st = theory.theorem_setting(net)
    assert st.applies and st.lr_scale == pytest.approx(scale, rel=1e-9)
    assert theory.lr_bound(net, prob) == pytest.approx(scale * theory.lr_bound(init, prob, 4), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LearningRateWarning)
        run = engine.train(net, prob, lr="theory", steps=60, backend="numpy")
    assert run.predicted == pytest.approx(theory.predicted_factor(init, prob, 4, theory.lr_bound(init, prob, 4)))
    ratios = run.excess[1:] / run.excess[:-1]
    assert np.all(ratios <= run.predicted)


@pytest.mark.parametrize("kw", [dict(sigma=0.1), dict(sigma=3.0)])
def test_numeric_lr_above_true_bound_warns(prob, kw):
    net = engine.init.gaussian(WIDTHS, seed=0, **kw)
    lr = 2.0 * theory.lr_bound(net, prob)
    with pytest.warns(LearningRateWarning, match="sigma"):
        try:
            engine.train(net, prob, lr=lr, steps=1, backend="numpy")
        except engine.DivergenceError:
            pass


def test_theory_lr_refused_for_per_layer_sigma_and_custom(prob):
    net = engine.init.gaussian(WIDTHS, seed=0, sigma=[1.0, 2.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="lr='theory'.*sigma_i differ.*numeric lr"):
        engine.train(net, prob, lr="theory", steps=1)
    custom = engine.init.from_weights(engine.init.gaussian(WIDTHS, seed=0).weights(), alpha=1.0)
    with pytest.raises(ValueError, match="lr='theory'.*from_weights"):
        engine.train(custom, prob, lr="theory", steps=1)


def test_widths_enforce_d_out(prob):
    assert theory.dh_width(prob, 4) >= prob.d_out
    assert theory.hxp_width(prob) >= max(prob.d_in, prob.d_out)


def test_summary_names_unknown_init_and_prints_table(prob):
    with pytest.raises(ValueError, match="init: unknown init 'gausian'.*'gaussian'.*'orthogonal'"):
        theory.summary("gausian", prob, 4)
    text = str(theory.summary(engine.init.gaussian(WIDTHS, seed=0), prob, eps=1e-8))
    assert "W-space" in text and "eps = 1e-08" in text and "width condition" in text


def test_divergence_within_bound_does_not_call_lr_too_large(prob):
    net = engine.init.gaussian([32, 1, 2], seed=0)
    msg = None
    try:
        engine.train(net, prob, lr=theory.lr_bound(net, prob), steps=2000, backend="numpy")
    except engine.DivergenceError as e:
        msg = str(e)
    from engine.train import _lr_verdict
    train_msg = _lr_verdict(net, prob, theory.lr_bound(net, prob))
    assert "is too large" not in train_msg and "width condition" in train_msg
    assert msg is None or "is too large" not in msg
