"""The numba backend: activation, layouts, thread-count independence, resume,
and the thread-control context manager of engine.kernels.

Equality with the numpy backend for every schedule is in test_backends_equal.
"""
import importlib.util

import numpy as np
import pytest

import engine
from engine import kernels
from engine.stepper import Stepper

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")

# float64 rounding amplified by a dozen steps of depth-4 GD (as in test_backends_equal)
RTOL = 1e-10


def _nb():
    return kernels.get("numba")


def test_numba_backend_is_active_when_numba_is_installed():
    # loud: a silently unavailable backend would make every other numba test vacuous
    ok, why = kernels.availability()["numba"]
    assert ok, why


def _problem(d_in=16, n=30, d_out=4, seed=0):
    return engine.Problem(*engine.synthetic(d_in, n, d_out, seed=seed, noise=0.2))


def _steps(net, prob, lr, form, k, threads=None):
    st = Stepper(net, prob, lr, "numba", form=form)
    st.ws.threads = threads             # None: chosen per step; an int: exactly that many
    return np.array([st.step()[0] for _ in range(k)]), st


def test_uniform_widths_use_the_contiguous_stack():
    prob = _problem()
    net = engine.init.orthogonal([16, 12, 12, 12, 4], seed=0)
    _, st = _steps(net, prob, 1e-3, None, 1)
    assert st.ws.uniform and st.ws.stack is net._stack
    net = engine.init.orthogonal([16, 12, 10, 12, 4], seed=0)
    _, st = _steps(net, prob, 1e-3, None, 1)
    assert not st.ws.uniform and len(st.ws.lst) == net.depth


def test_choose_form():
    nb = _nb()
    assert nb.choose_form(16, 10) == "single"     # HXP: r = 16, d_out = 10
    assert nb.choose_form(3, 6) == "single"
    assert nb.choose_form(200, 10) == "T"         # large rank: two-pass T form
    assert nb.choose_form(100, 200) == "P"


@pytest.mark.parametrize("form", ["T", "P", "single"])
def test_thread_count_does_not_change_a_bit(form):
    """Parallel blocks split columns (suffixes) or rows (prefixes, T chains),
    so no sum crosses threads: 1 and 2 threads give identical bits."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba is configured with a single thread")
    prob = _problem(d_in=16, n=30, d_out=4 if form != "P" else 20)
    m = 256                                  # 256 x 256 layers are split into parallel blocks
    widths = [16, m, m, m, prob.d_out]
    lr = 0.5 * engine.theory.lr_bound("gaussian", prob, 4)
    runs = []
    old = numba.get_num_threads()
    try:
        for nt in (1, 2):
            numba.set_num_threads(nt)
            net = engine.init.gaussian(widths, seed=1)
            losses, st = _steps(net, prob, lr, form, 6, threads=nt)
            assert st.ws.parallel
            runs.append((losses, net.normalized()))
    finally:
        numba.set_num_threads(old)
    (l1, w1), (l2, w2) = runs
    np.testing.assert_array_equal(l1, l2)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_into_a_fresh_network():
    """A copy of the network (what a checkpoint restores) gets a fresh
    workspace whose single-pass phase starts over. After an even number of
    steps the phase matches and the continuation is bit-identical; after an
    odd number the gradient of the next step is formed in the other
    association order, so it agrees to rounding only."""
    prob = _problem()
    widths = [16, 12, 12, 12, 4]
    net = engine.init.gaussian(widths, seed=3)
    lr = 0.5 * engine.theory.lr_bound("gaussian", prob, 4)
    full = net.copy()
    l_full, _ = _steps(full, prob, lr, "single", 12)
    for k, exact in ((4, True), (3, False)):
        part = net.copy()
        l1, _ = _steps(part, prob, lr, "single", k)
        restored = part.copy()               # new object: no cached workspace
        l2, _ = _steps(restored, prob, lr, "single", 12 - k)
        losses = np.concatenate([l1, l2])
        if exact:
            np.testing.assert_array_equal(losses, l_full)
            for a, b in zip(restored.normalized(), full.normalized()):
                np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(losses, l_full, rtol=RTOL)


def test_replaced_layer_arrays_are_picked_up():
    """If the network's arrays are replaced between steps (rebinding), the
    workspace rebinds to the new arrays instead of writing to stale ones."""
    prob = _problem()
    net = engine.init.orthogonal([16, 12, 10, 12, 4], seed=0)
    ref = net.copy()
    lr = 1e-2
    st = Stepper(net, prob, lr, "numba", form="single")
    st_ref = Stepper(ref, prob, lr, "numpy")
    for _ in range(2):
        st.step()
        st_ref.step()
    net._layers[:] = [a.copy() for a in net._layers]
    for _ in range(2):
        ex, _ = st.step()
        ex_ref, _ = st_ref.step()
        assert ex == pytest.approx(ex_ref, rel=RTOL)
    for a, b in zip(net.weights(), ref.weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * np.abs(b).max())


def test_excess_without_stepping():
    prob = _problem()
    net = engine.init.orthogonal([16, 12, 12, 4], seed=0)
    ref = net.copy()
    st = Stepper(net, prob, 1e-2, "numba")
    st_ref = Stepper(ref, prob, 1e-2, "numpy")
    before = net.normalized()
    assert st.excess() == pytest.approx(st_ref.excess(), rel=RTOL)
    for a, b in zip(net.normalized(), before):
        np.testing.assert_array_equal(a, b)
    st.step()
    st_ref.step()
    assert st.excess() == pytest.approx(st_ref.excess(), rel=RTOL)


def test_thread_limits_restores_global_state():
    import numba
    import threadpoolctl

    def blas_threads():
        return [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]

    nt0, blas0 = numba.get_num_threads(), blas_threads()
    with kernels.thread_limits("numba", threads=1):
        assert numba.get_num_threads() == 1
        assert all(n == 1 for n in blas_threads())
    assert numba.get_num_threads() == nt0 and blas_threads() == blas0
    with pytest.raises(RuntimeError):
        with kernels.thread_limits(kernels.get("numba"), threads=1):
            raise RuntimeError("boom")
    assert numba.get_num_threads() == nt0 and blas_threads() == blas0
    with kernels.thread_limits("numpy", threads=1):
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == blas0


def test_auto_follows_the_measured_rule():
    avail = {nm for nm, (ok, _) in kernels.availability().items() if ok}
    wide = ([1024] + [256] * 7 + [10], 16)
    narrow = ([16] + [32] * 7 + [4], 16)
    first = "cblas" if "cblas" in avail else "numba"       # the C kernel first everywhere
    assert kernels.get("auto", shape=wide).name == first
    assert kernels.get("auto", shape=narrow).name == first
    assert kernels.get("auto").name == first
