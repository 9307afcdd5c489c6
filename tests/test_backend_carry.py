"""A user's own ``gd_step`` loop runs the schedule ``train`` runs.

``gd_step`` keeps its bound stepper (and with it the chain of the next step
that single-pass schedules carry between steps) on the network between
calls. These tests check that

* a loop of ``gd_step`` calls gives the weights and losses of ``train`` bit
  for bit, on every available backend and schedule, and does not reset the
  backend's carried state between calls (which would cost a weight pass);
* the carry is dropped whenever it could be stale: the weights edited in
  place (detected by the probe, or declared with ``Network.touch``), a layer
  array replaced, another problem or backend, a ``train`` run in between;
  the step after that equals a fresh computation from the current weights.
"""
import numpy as np
import pytest

import engine
from engine import kernels
from engine.network import PROBE_ENTRIES, _probe_index

AVAILABLE = [nm for nm, (ok, _) in kernels.availability().items() if ok]
cblas = kernels._REGISTRY.get("cblas")
HAS_CBLAS = cblas is not None and cblas.available

# One step of every backend from the same weights differs from numpy's by
# rounding (~1e-16 per operation over depth 5); 1e-11 is far above that and
# far below what a stale chain gives (the edits below change the loss by >1%).
RTOL = 1e-11
STEPS = 7


def _setup(widths=(12, 9, 9, 9, 9, 4), n=30, seed=3):
    X, Y = engine.synthetic(widths[0], n, widths[-1], seed=seed, noise=0.3)
    prob = engine.Problem(X, Y)
    net = engine.init.orthogonal(list(widths), seed=1)
    lr = 0.5 * engine.theory.lr_bound("orthogonal", prob, net.depth)
    return prob, net, lr


def _cases():
    """(backend, cblas schedule or None). The widths used below have r = 10
    and d_out = 6 (2 d_out >= r), where numba picks its single-pass schedule;
    cblas is run in its default and in its single-pass schedule."""
    out = [(nm, None) for nm in AVAILABLE]
    if HAS_CBLAS:
        out.append(("cblas", "single-pass"))
    return out


@pytest.fixture
def schedule(monkeypatch, request):
    if request.param is not None:
        monkeypatch.setattr(cblas, "SCHEDULE", request.param)
    return request.param


@pytest.mark.parametrize("backend,schedule", _cases(), indirect=["schedule"])
@pytest.mark.parametrize("widths", [(10, 9, 9, 9, 9, 6), (10, 7, 11, 8, 6)])
def test_gd_step_loop_equals_train_bitwise(backend, schedule, widths):
    prob, net, lr = _setup(widths, n=20)
    ref = net.copy()
    losses = [engine.gd_step(net, prob, lr, backend=backend) for _ in range(STEPS)]
    run = engine.train(ref, prob, lr=lr, steps=STEPS, backend=backend)
    np.testing.assert_array_equal(np.array(losses), run.loss[:-1])
    for a, b in zip(net.normalized(), ref.normalized()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend,schedule", _cases(), indirect=["schedule"])
def test_gd_step_loop_keeps_the_carried_chain(backend, schedule, monkeypatch):
    """Only the first call binds a stepper (and resets the backend's state)."""
    mod = kernels.get(backend)
    if not hasattr(mod, "reset"):
        pytest.skip(f"{backend} carries no state between steps")
    calls = []
    real = mod.reset
    monkeypatch.setattr(mod, "reset", lambda ws: (calls.append(1), real(ws)))
    prob, net, lr = _setup((10, 9, 9, 9, 9, 6), n=20)
    for _ in range(STEPS):
        engine.gd_step(net, prob, lr, backend=backend)
    assert len(calls) == 1
    # another lr keeps the carry too (the carried chain does not depend on it)
    engine.gd_step(net, prob, 0.5 * lr, backend=backend)
    assert len(calls) == 1


def _fresh_step(net, prob, lr):
    """The loss before, and the weights after, one numpy step from net's weights."""
    ref = net.copy()
    loss = engine.gd_step(ref, prob, lr, backend="numpy")
    return loss, ref.normalized()


def _assert_step_is_fresh(net, prob, lr, backend):
    loss_ref, after_ref = _fresh_step(net, prob, lr)
    loss = engine.gd_step(net, prob, lr, backend=backend)
    assert loss == pytest.approx(loss_ref, rel=RTOL)
    for a, b in zip(net.normalized(), after_ref):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL)


EDITS = {
    # scale a hidden layer (a view of the stacked hidden block) in place
    "scale stacked layer": lambda net: net._layers[2].__imul__(0.9),
    # the last layer, in place
    "scale last layer": lambda net: net._layers[-1].__imul__(1.1),
    # one probed entry of layer 1
    "one probed entry": lambda net: net._layers[1].flat.__setitem__(
        int(_probe_index(net._layers[1].size)[1]), 0.7),
    # replace a layer array by an equal-valued copy scaled
    "replace layer": lambda net: net._layers.__setitem__(3, net._layers[3] * 0.8),
    # an entry the probe does not see, declared with touch()
    "unprobed entry + touch": lambda net: (_edit_unprobed(net, 3), net.touch()),
}


def _edit_unprobed(net, k):
    a = net._layers[k]
    seen = set(_probe_index(a.size).tolist())
    j = next(j for j in range(a.size) if j not in seen)
    a.flat[j] += 0.5


@pytest.mark.parametrize("backend,schedule", _cases(), indirect=["schedule"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_edit_between_calls_invalidates_the_carry(backend, schedule, edit):
    prob, net, lr = _setup((10, 9, 9, 9, 9, 6), n=20)
    for _ in range(3):
        engine.gd_step(net, prob, lr, backend=backend)
    before = engine.gd_step(net.copy(), prob, lr, backend="numpy")
    EDITS[edit](net)
    after = engine.gd_step(net.copy(), prob, lr, backend="numpy")
    assert abs(after - before) > 1e-6 * before      # the edit matters: a stale chain would show
    _assert_step_is_fresh(net, prob, lr, backend)
    _assert_step_is_fresh(net, prob, lr, backend)    # and the carry resumes correctly


@pytest.mark.parametrize("backend,schedule", _cases(), indirect=["schedule"])
def test_other_problem_or_train_between_calls(backend, schedule):
    prob, net, lr = _setup((10, 9, 9, 9, 9, 6), n=20)
    prob2, _, _ = _setup((10, 9, 9, 9, 9, 6), n=20, seed=8)   # same shapes, other data
    for _ in range(2):
        engine.gd_step(net, prob, lr, backend=backend)
    _assert_step_is_fresh(net, prob2, lr, backend)
    _assert_step_is_fresh(net, prob, lr, backend)
    engine.train(net, prob2, lr=lr, steps=3, backend=backend)
    _assert_step_is_fresh(net, prob2, lr, backend)
    engine.train(net, prob, lr=lr, steps=2, backend=backend)
    _assert_step_is_fresh(net, prob, lr, backend)
    for other in AVAILABLE:                          # switching backends
        _assert_step_is_fresh(net, prob, lr, other)
        _assert_step_is_fresh(net, prob, lr, backend)


def test_version_counts_api_changes():
    prob, net, lr = _setup()
    v0 = net.version
    engine.gd_step(net, prob, lr, backend="numpy")       # binds (layer 1 held as B_1) and steps
    v1 = net.version
    assert v1 >= v0 + 2
    engine.train(net, prob, lr=lr, steps=3, backend="numpy")
    assert net.version == v1 + 3
    net.touch()
    assert net.version == v1 + 4
    net._unbind()
    assert net.version == v1 + 5


def test_probe_indices():
    for size in (1, 2, 7, 81, 10 ** 6):
        idx = _probe_index(size)
        assert idx.min() == 0 and idx.max() == size - 1 and len(idx) <= PROBE_ENTRIES
        assert np.all(np.diff(idx) > 0)
    # the probe reads both storage layouts and sees an in-place edit of either
    for widths in [(10, 9, 9, 9, 6), (10, 7, 11, 6)]:
        prob, net, _ = _setup(widths, n=20)
        net._bind(prob)
        p = net._probe()
        assert net._probe_matches(p)
        net._layers[1].flat[0] += 1.0
        assert not net._probe_matches(p)
        p = net._probe()
        net._log_beta += 1.0
        assert not net._probe_matches(p)


def test_refused_step_drops_the_cache():
    prob, net, lr = _setup()
    engine.gd_step(net, prob, lr, backend="numpy")
    net._layers[1].flat[0] = np.inf
    with pytest.raises(engine.DivergenceError):
        engine.gd_step(net, prob, lr, backend="numpy")
    assert net._gd is None
    net._layers[1].flat[0] = 0.0
    net.touch()
    loss_ref, _ = _fresh_step(net, prob, lr)
    assert engine.gd_step(net, prob, lr, backend="numpy") == pytest.approx(loss_ref, rel=RTOL)
