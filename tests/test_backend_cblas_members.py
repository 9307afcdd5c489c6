"""cblas_backend.Members: K same-shape networks stepped in one C call, in
parallel over the members. Each member must get exactly the weights and
losses of stepping it alone with the C kernel (same code, one thread), for
any thread count; the gate (hi, active) must skip members without touching
them, and a member's single-pass chain must carry over between calls."""
import math

import numpy as np
import pytest

import engine
from engine import kernels

cblas = kernels._REGISTRY.get("cblas")
AVAILABLE = cblas is not None and cblas.available
pytestmark = pytest.mark.skipif(not AVAILABLE, reason="cblas backend unavailable")

K = 5
STEPS = 6


def _setup(schedule, dtype, widths=(24, 40, 40, 40, 6), n=20):
    X, Y = engine.synthetic(widths[0], n, widths[-1], seed=1)
    prob = engine.Problem(X, Y)
    nets = [engine.init.gaussian(list(widths), seed=s, dtype=dtype) for s in range(K)]
    for net in nets:
        net._bind(prob)
    red = prob.reduced(np.dtype(dtype))
    lr = 0.3 * engine.theory.lr_bound("gaussian", prob, len(widths) - 1)
    cs = [lr / np.exp(2.0 * net._log_s) for net in nets]
    return prob, nets, red, cs


@pytest.mark.parametrize("schedule", ["two-pass", "single-pass"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_members_equal_stepping_each_alone(schedule, dtype, threads):
    prob, nets, red, cs = _setup(schedule, dtype)
    alone = [net.copy() for net in nets]
    for net in alone:
        net._bind(prob)
    ms = cblas.members([net._layers for net in nets], prob.rank, prob.d_out, dtype, schedule=schedule)
    ms.threads = threads
    wss = [cblas.workspace(net._layers, prob.rank, prob.d_out, dtype, schedule=schedule) for net in alone]
    for _ in range(STEPS):
        ex, applied = ms.step([net._layers for net in nets], cs, [net.beta for net in nets],
                              red.s, red.targets)
        assert applied.all()
        for k in range(K):
            e, ok = cblas.step(alone[k]._layers, cs[k], alone[k].beta, red.s, red.targets, wss[k])
            assert ok and e == ex[k]
    for a, b in zip(nets, alone):
        for x, y in zip(a._layers, b._layers):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("schedule", ["two-pass", "single-pass"])
def test_gate_and_inactive_members_are_untouched(schedule):
    prob, nets, red, cs = _setup(schedule, np.float64)
    ms = cblas.members([net._layers for net in nets], prob.rank, prob.d_out, np.float64, schedule=schedule)
    layers = [net._layers for net in nets]
    betas = [net.beta for net in nets]
    ex0, _ = ms.step(layers, cs, betas, red.s, red.targets)
    before = [[a.copy() for a in lay] for lay in layers]
    his = np.full(K, math.inf)
    his[1] = 0.0                                 # member 1: refused by the gate
    active = np.ones(K, dtype=bool)
    active[3] = False                            # member 3: not stepped at all
    ex, applied = ms.step(layers, cs, betas, red.s, red.targets, his=his, active=active)
    assert list(applied) == [True, False, True, False, True]
    for k in (1, 3):
        for a, b in zip(layers[k], before[k]):
            np.testing.assert_array_equal(a, b)
    # the refused member resumes where it was: its next step equals a fresh one's
    ref = nets[1].copy()
    ref._bind(prob)
    ex2, applied2 = ms.step(layers, cs, betas, red.s, red.targets)
    assert applied2.all()
    ws = cblas.workspace(ref._layers, prob.rank, prob.d_out, np.float64, schedule="two-pass")
    e_ref, _ = cblas.step(ref._layers, cs[1], ref.beta, red.s, red.targets, ws)
    assert ex2[1] == pytest.approx(e_ref, rel=1e-12)


def test_members_must_share_shapes():
    prob, nets, red, cs = _setup("two-pass", np.float64)
    other = engine.init.gaussian([24, 40, 41, 40, 6], seed=0)
    other._bind(prob)
    with pytest.raises(ValueError, match=r"members\[1\]"):
        cblas.members([nets[0]._layers, other._layers], prob.rank, prob.d_out, np.float64)


@pytest.mark.skipif(not cblas.openmp_threads or cblas.openmp_threads < 2, reason="needs an OpenMP build, 2+ threads")
def test_members_keep_within_the_openmp_limit_in_force():
    """Inside a sweep's run limit (threads.limit(openmp=1)) the members kernel runs one thread,
    as a single network's step does; outside it, up to min(K, OpenMP threads) again."""
    from engine.kernels import threads
    prob, nets, red, cs = _setup("two-pass", np.float64)
    ms = cblas.members([net._layers for net in nets], prob.rank, prob.d_out, np.float64)
    step = lambda: ms.step([net._layers for net in nets], cs, [net.beta for net in nets], red.s, red.targets)
    with threads.limit(openmp=1):
        step()
        assert ms.chooser.max_threads == 1
    step()
    assert ms.chooser.max_threads == min(K, cblas.openmp_threads)
