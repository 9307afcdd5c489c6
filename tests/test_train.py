"""train(): recording, tolerance, theory learning rate, fitted rate, divergence."""
import numpy as np
import pytest

import engine


@pytest.fixture
def prob():
    return engine.Problem(*engine.synthetic(16, 8, 4, seed=0))


def test_theory_lr(prob):
    L = 5
    assert engine.theory.lr_bound("gaussian", prob, L) == pytest.approx(4 / (3 * L * prob.x_norm ** 2))
    assert engine.theory.lr_bound("orthogonal", prob, L) == pytest.approx(4 / (2 * L * prob.x_norm ** 2))
    net = engine.init.orthogonal([16, 32, 32, 32, 32, 4], seed=0)
    run = engine.train(net, prob, lr="theory", steps=5)
    assert run.lr == engine.theory.lr_bound("orthogonal", prob, L)
    assert run.predicted == pytest.approx(1 - run.lr * L * prob.lambda_r / (2 * 4))


def test_record_every_and_final_state(prob):
    net = engine.init.orthogonal([16, 20, 20, 4], seed=0)
    run = engine.train(net, prob, lr="theory", steps=23, record_every=5)
    assert list(run.t) == [0, 5, 10, 15, 20, 23]
    assert run.steps == 23
    assert run.excess[-1] == pytest.approx(prob.excess(net.end_to_end()), rel=1e-9)
    assert run.loss.dtype == np.float64 and run.net is net


def test_tol_stops_at_state_below_tol(prob):
    net = engine.init.orthogonal([16, 32, 32, 4], seed=0)
    tol = 1e-6 * prob.y_norm_sq       # tol is relative to ||Y||_F^2
    run = engine.train(net, prob, lr="theory", steps=10_000, tol=1e-6)
    assert run.converged and run.steps < 10_000
    assert run.excess[-1] <= tol and run.excess[-2] > tol
    assert prob.excess(net.end_to_end()) == pytest.approx(run.excess[-1], rel=1e-6)


def test_fitted_rate_matches_geometric_decay(prob):
    net = engine.init.orthogonal([16, 64, 64, 4], seed=0)
    run = engine.train(net, prob, lr="theory", steps=200)
    q = run.excess[1:] / run.excess[:-1]
    tail = q[len(q) // 2:]
    assert run.rate == pytest.approx(np.exp(np.mean(np.log(tail))), rel=2e-2)
    # HXP Thm 3.1's guarantee holds here (width 64 >= d_in, d_out)
    assert run.rate <= run.predicted


def test_fit_rate_exact_on_synthetic_sequence():
    t = np.arange(50)
    assert engine.fit_rate(t, 3.0 * 0.9 ** t) == pytest.approx(0.9, rel=1e-12)
    assert np.isnan(engine.fit_rate([0, 1], [1.0, 0.5]))


def test_divergence_raises_with_history_and_finite_net(prob):
    net = engine.init.orthogonal([16, 20, 20, 4], seed=0)
    lr = 50 * engine.theory.lr_bound("orthogonal", prob, 3)
    with pytest.raises(engine.DivergenceError, match="diverged") as info, \
            pytest.warns(engine.LearningRateWarning, match="^lr: .* exceeds the theorem's bound"):
        engine.train(net, prob, lr=lr, steps=1000)
    err = info.value
    assert err.net is net and err.step > 0
    assert len(err.result.loss) == err.step and np.isfinite(err.result.loss).all()
    assert all(np.isfinite(W).all() for W in err.net.weights())
    assert np.isfinite(err.net.end_to_end()).all()


def test_callback_can_stop(prob):
    net = engine.init.orthogonal([16, 20, 20, 4], seed=0)
    seen = []

    def cb(t, ex, n):
        seen.append(t)
        return t >= 4

    run = engine.train(net, prob, lr="theory", steps=100, callback=cb)
    assert seen == [0, 1, 2, 3, 4] and run.steps == 5 and list(run.t) == [0, 1, 2, 3, 4, 5]
    assert run.excess[-1] == pytest.approx(prob.excess(net.end_to_end()), rel=1e-9)


def test_steps_zero_records_initial_loss(prob):
    net = engine.init.gaussian([16, 8, 4], seed=0)
    run = engine.train(net, prob, lr=1e-3, steps=0)
    assert run.steps == 0 and len(run.loss) == 1
    assert run.loss[0] == pytest.approx(prob.loss(net.end_to_end()))


def test_record_distance_matches_direct_computation(prob):
    net = engine.init.gaussian([16, 24, 24, 4], seed=0)
    W0 = net.weights()
    run = engine.train(net, prob, lr=1e-3, steps=12, record={"distance": 5})
    rec = run.records["distance"]
    assert list(rec["t"]) == [0, 5, 10, 12]
    assert np.all(rec["values"][0] == 0)
    direct = [np.linalg.norm(W - V) for W, V in zip(net.weights(), W0)]
    np.testing.assert_allclose(rec["values"][-1], direct, rtol=1e-10)
    assert run.record_time["distance"] >= 0
    # state t is what is recorded: replay 5 steps and compare
    net2 = engine.init.gaussian([16, 24, 24, 4], seed=0)
    engine.train(net2, prob, lr=1e-3, steps=5)
    d5 = [np.linalg.norm(W - V) for W, V in zip(net2.weights(), W0)]
    np.testing.assert_allclose(rec["values"][1], d5, rtol=1e-10)


def test_record_rejects_unknown(prob):
    net = engine.init.gaussian([16, 8, 4], seed=0)
    with pytest.raises(ValueError, match="^record"):
        engine.train(net, prob, lr=1e-3, steps=2, record={"nope": 1})
    with pytest.raises(ValueError, match="^record"):
        engine.train(net, prob, lr=1e-3, steps=2, record={"distance": 0})


@pytest.mark.parametrize("backend", [b for b, (ok, _) in engine.kernels.availability().items() if ok])
def test_callback_editing_weights_in_place_is_seen_by_every_backend(backend):
    """A callback that changes the weights in place (here: halves the last layer
    at step 3) must affect the next step on every backend, including one that
    carries the next step's chain between steps (numba single-pass)."""
    X, Y = engine.synthetic(32, 4, 3, seed=1)
    prob = engine.Problem(X, Y)

    def cb(t, ex, net):
        if t == 3:
            net._layers[-1] *= 0.5
        return False

    runs = []
    for b in ("numpy", backend):
        net = engine.init.orthogonal([32] + [16] * 5 + [3], seed=2)
        runs.append(engine.train(net, prob, steps=10, backend=b, callback=cb))
    np.testing.assert_allclose(runs[1].excess, runs[0].excess, rtol=1e-10)
