"""Every available fast backend, in every schedule, follows the numpy backend.

Generic over ``engine.kernels.availability()``: each available backend other
than ``numpy`` (the oracle) is run on copies of the same networks and must
reproduce numpy's weights and losses over STEPS steps. A backend module may
list its schedules in ``FORMS`` (values of the ``form`` argument of its
``workspace``); each is tested, plus the default choice.

The backends compute the same exact algebra (docs/design.md) with different
association orders, so they differ by rounding only: ~1e-16 per operation,
amplified mildly by 60 steps of GD on depth <= 6.
"""
import numpy as np
import pytest

import engine
from engine import kernels
from engine.stepper import Stepper

# float64: rounding (1e-16) amplified by 60 steps of depth-6 GD stays below
# 1e-13 in practice; 1e-10 is the bound and still catches any
# algebraic error (those show up at 1e-3 or worse).
RTOL = 1e-10
# float32 against the float64 numpy run: float32 rounding (6e-8) amplified by
# 60 steps of a depth-5 chain; measured ~1e-5, bound with margin.
RTOL32 = 2e-4
STEPS = 60

FAST = [nm for nm, (ok, _) in kernels.availability().items() if ok and nm != "numpy"]


def _forms(name):
    mod = kernels.get(name)
    return [None] + list(getattr(mod, "FORMS", ()))


CASES = [(nm, form) for nm in FAST for form in _forms(nm)]

# (d_in, n, d_out, widths of hidden layers, rank or None); r = rank X
PROBLEMS = {
    "r>d_out uniform": (12, 30, 4, [9, 9, 9], None),        # r = 12 > d_out = 4, stacked hidden layers
    "r<d_out uniform": (10, 20, 6, [8, 8, 8, 8], 3),         # r = 3 < d_out = 6
    "r>d_out general": (12, 7, 3, [9, 7, 11], None),         # r = 7, general widths
    "r<d_out general": (10, 20, 6, [5, 9], 2),               # r = 2, narrow first layer
    "r=d_out depth2": (6, 40, 3, [7], 3),                    # L = 2
    "depth1": (6, 40, 3, [], None),                          # L = 1: linear regression
}


def _problem(key):
    d_in, n, d_out, hidden, rank = PROBLEMS[key]
    X, Y = engine.synthetic(d_in, n, d_out, seed=3, rank=rank, noise=0.3)
    return engine.Problem(X, Y), [d_in] + hidden + [d_out]


def _run(net, prob, lr, backend, form, steps=STEPS):
    st = Stepper(net, prob, lr, backend, form=form)
    return np.array([st.step()[0] for _ in range(steps)])


def _assert_nets_close(a, b, rtol):
    for Wa, Wb in zip(a.weights(), b.weights()):
        np.testing.assert_allclose(Wa, Wb, rtol=0, atol=rtol * np.abs(Wb).max())


def test_some_fast_backend_is_tested():
    # says loudly which backends this file covers (a silent empty list would pass everything)
    print("fast backends tested:", FAST)
    assert kernels.availability()["numpy"][0]


@pytest.mark.parametrize("backend,form", CASES)
@pytest.mark.parametrize("key", list(PROBLEMS))
@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_equals_numpy(backend, form, key, init):
    prob, widths = _problem(key)
    ref = engine.init.by_name(init)(widths, seed=5)
    net = ref.copy()
    lr = 0.5 * engine.theory.lr_bound("orthogonal", prob, ref.depth)
    l_ref = _run(ref, prob, lr, "numpy", None)
    l_net = _run(net, prob, lr, backend, form)
    assert l_ref[-1] < 0.5 * l_ref[0]          # the run moves: equality then means something
    np.testing.assert_allclose(l_net, l_ref, rtol=RTOL)
    _assert_nets_close(net, ref, RTOL)


@pytest.mark.parametrize("backend,form", CASES)
def test_float32_close_to_numpy(backend, form):
    prob, widths = _problem("r>d_out uniform")
    ref = engine.init.orthogonal(widths, seed=1)
    net = engine.init.orthogonal(widths, seed=1, dtype=np.float32)
    ref32 = engine.init.orthogonal(widths, seed=1, dtype=np.float32)
    lr = 0.5 * engine.theory.lr_bound("orthogonal", prob, ref.depth)
    l_ref = _run(ref, prob, lr, "numpy", None)
    l_ref32 = _run(ref32, prob, lr, "numpy", None)
    l_net = _run(net, prob, lr, backend, form)
    assert net.normalized()[1].dtype == np.float32
    np.testing.assert_allclose(l_net, l_ref, rtol=RTOL32)
    np.testing.assert_allclose(l_net, l_ref32, rtol=RTOL32)
    _assert_nets_close(net, ref, RTOL32)


@pytest.mark.parametrize("backend,form", CASES)
def test_resume_continues_trajectory(backend, form):
    """Steps split over two steppers (binding a new stepper resets the
    backend's carried state, as every train()/gd_step() call does) equal one
    uninterrupted run, bit for bit, at odd and even split points."""
    prob, widths = _problem("r>d_out uniform")
    net = engine.init.gaussian(widths, seed=2)
    lr = 0.5 * engine.theory.lr_bound("gaussian", prob, net.depth)
    full = net.copy()
    l_full = _run(full, prob, lr, backend, form, 12)
    for k in (1, 2):
        part = net.copy()
        l_part = np.concatenate([_run(part, prob, lr, backend, form, k),
                                 _run(part, prob, lr, backend, form, 12 - k)])
        np.testing.assert_array_equal(l_part, l_full)
        for Wa, Wb in zip(part.weights(), full.weights()):
            np.testing.assert_array_equal(Wa, Wb)
    # and through the public API
    a, b = net.copy(), net.copy()
    r_full = engine.train(a, prob, lr=lr, steps=7, backend=backend)
    r1 = engine.train(b, prob, lr=lr, steps=3, backend=backend)
    r2 = engine.train(b, prob, lr=lr, steps=4, backend=backend)
    np.testing.assert_array_equal(np.concatenate([r1.loss[:-1], r2.loss]), r_full.loss)


@pytest.mark.parametrize("backend,form", CASES)
def test_lo_hi_refuse_the_update(backend, form):
    prob, widths = _problem("r<d_out general")
    net = engine.init.orthogonal(widths, seed=0)
    ref = net.copy()
    lr = 0.5 * engine.theory.lr_bound("orthogonal", prob, net.depth)
    st = Stepper(net, prob, lr, backend, form=form)
    st_ref = Stepper(ref, prob, lr, "numpy")
    for _ in range(3):
        ex_ref, ok = st_ref.step()
        assert ok
        ex, ok = st.step()
        assert ok and ex == pytest.approx(ex_ref, rel=RTOL)
    before = [w.copy() for w in net.normalized()]
    ex_now = st_ref.excess()
    for lo, hi in ((-1.0, 0.5 * ex_now), (2.0 * ex_now, np.inf), (ex_now * (1 + 1e-6), np.inf)):
        ex, ok = st.step(lo, hi)
        assert not ok
        assert ex == pytest.approx(ex_now, rel=RTOL)
        for w, w0 in zip(net.normalized(), before):
            np.testing.assert_array_equal(w, w0)
    assert st.excess() == pytest.approx(ex_now, rel=RTOL)
    # after refusals the trajectory continues exactly where it was
    ex, ok = st.step()
    assert ok and ex == pytest.approx(ex_now, rel=RTOL)
    st_ref.step()
    _assert_nets_close(net, ref, RTOL)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("backend", FAST)
def test_divergence_keeps_last_finite_state(backend):
    prob, widths = _problem("r>d_out uniform")
    net = engine.init.gaussian(widths, seed=0)
    with pytest.raises(engine.DivergenceError) as info:
        engine.train(net, prob, lr=1e4, steps=200, backend=backend)
    assert all(np.all(np.isfinite(w)) for w in info.value.net.weights())
    assert np.all(np.isfinite(info.value.result.loss))
