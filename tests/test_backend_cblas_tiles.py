"""The C kernel's register-blocked micro-kernels on the shapes that reach every path.

test_backend_cblas.py checks the backend's contract on small networks; these
tests aim at the tiling of csrc/dln_step_impl.h:

* widths that are not multiples of the vector width (scalar tails of the row
  dots, of the updates and of the column strips), d_out and r above the
  register blocks (grouped dot products and grouped rank-K updates), both
  top-down update forms of the single-pass schedule (r <= d_out: rank r,
  r > d_out: rank d_out), float64 and float32 -- all equal to the numpy
  oracle;
* tiles of every size (block_bytes from 1 KiB, many k-chunks and one-row
  tiles, to the default) give the same bits: every number is computed by
  the same operations whatever the tiling;
* 1 and 2 threads give the same bits on layers large enough to be split;
* a single-pass run resumed from a checkpoint repeats the uninterrupted one
  bit for bit on such shapes.
"""
import numpy as np
import pytest

import engine
from engine import kernels
from engine.stepper import Stepper

cblas = kernels._REGISTRY.get("cblas")
AVAILABLE = cblas is not None and cblas.available
pytestmark = pytest.mark.skipif(not AVAILABLE, reason="cblas backend unavailable "
                                "(test_backend_cblas.py::test_extension_is_built says why)")

# Same tolerances as test_backend_cblas.py (there: why): products in another
# association than numpy's, ~1e-16 per step.
RTOL64 = 1e-10
RTOL32 = 1e-4
STEPS = 12

# (d_in, n, d_out, hidden widths): r = min(d_in, n)
SHAPES = {
    "tails": (40, 19, 13, [37, 45, 70]),      # r = 19 > d_out = 13 > 12: grouped K, tails
    "r<d_out": (30, 5, 17, [33, 9, 66]),      # r = 5: P-form top-down, rank 5
    "narrow": (8, 8, 3, [5, 7, 6, 3]),        # everything below one vector
    "wide-r": (80, 70, 4, [41, 50]),          # r = 70 > 64: two-pass only
}


def _net(shape, dtype=np.float64, seed=2):
    d_in, n, d_out, hidden = SHAPES[shape]
    X, Y = engine.synthetic(d_in, n, d_out, seed=seed)
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([d_in] + hidden + [d_out], seed=seed, dtype=dtype)
    return prob, net


def _run(shape, backend, schedule=None, form=None, dtype=np.float64, steps=STEPS, threads=None,
         monkeypatch=None, block=None):
    prob, net = _net(shape, dtype)
    if schedule is not None:
        monkeypatch.setattr(cblas, "SCHEDULE", schedule)
    if block is not None:
        monkeypatch.setattr(cblas, "BLOCK_BYTES", block)
    lr = 0.3 * engine.theory.lr_bound("gaussian", prob, net.depth)
    st = Stepper(net, prob, lr, backend, form=form)
    if threads is not None:
        st.ws.threads = threads
    losses = []
    for _ in range(steps):
        ex, applied = st.step()
        assert applied
        losses.append(ex)
    return np.array(losses), [a.copy() for a in net._layers], st


def _variants():
    out = []
    for shape in SHAPES:
        for sched, form in (("two-pass", "P"), ("two-pass", "T"), ("single-pass", None)):
            if sched == "single-pass" and shape == "wide-r":
                continue
            out.append((shape, sched, form))
    return out


@pytest.mark.parametrize("shape, schedule, form", _variants())
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_numpy(shape, schedule, form, dtype, monkeypatch):
    l_ref, w_ref, _ = _run(shape, "numpy", form=form, dtype=dtype)
    l_c, w_c, st = _run(shape, "cblas", schedule=schedule, form=form, dtype=dtype,
                        monkeypatch=monkeypatch, block=1024)
    assert st.ws.schedule == schedule
    rtol = RTOL64 if dtype == np.float64 else RTOL32
    assert l_ref[-1] < 0.9 * l_ref[0]                       # the run moves
    np.testing.assert_allclose(l_c, l_ref, rtol=rtol)
    for a, b in zip(w_c, w_ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max())


@pytest.mark.parametrize("shape, schedule, form", _variants())
def test_tiling_does_not_change_a_bit(shape, schedule, form, monkeypatch):
    """1 KiB tiles (many k-chunks, one-row top-down tiles) vs the default."""
    runs = [_run(shape, "cblas", schedule=schedule, form=form, monkeypatch=monkeypatch, block=b)
            for b in (1024, 3 * 1024, cblas.BLOCK_BYTES)]
    for losses, weights, _ in runs[1:]:
        np.testing.assert_array_equal(losses, runs[0][0])
        for a, b in zip(weights, runs[0][1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not (AVAILABLE and cblas.openmp_threads >= 2),
                    reason="the C kernel has fewer than 2 OpenMP threads")
@pytest.mark.parametrize("schedule, form", [("two-pass", "P"), ("two-pass", "T"), ("single-pass", None)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_threads_do_not_change_a_bit(schedule, form, dtype, monkeypatch):
    """Layers of 197 x 197 and 197 x 173 (>= PAR_MIN weights) are split across threads."""
    monkeypatch.setitem(SHAPES, "split", (64, 24, 11, [197, 197, 173]))
    runs = [_run("split", "cblas", schedule=schedule, form=form, dtype=dtype, threads=t,
                 monkeypatch=monkeypatch, block=4096) for t in (1, 2)]
    assert runs[1][2].ws.parallel
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", ["tails", "r<d_out"])
@pytest.mark.parametrize("split", [3, 4])
def test_single_pass_resume_is_bit_identical(shape, split, monkeypatch):
    monkeypatch.setattr(cblas, "SCHEDULE", "single-pass")
    l_ref, w_ref, _ = _run(shape, "cblas", steps=8)
    prob, net = _net(shape)
    lr = 0.3 * engine.theory.lr_bound("gaussian", prob, net.depth)
    st = Stepper(net, prob, lr, "cblas")
    losses = [st.step()[0] for _ in range(split)]
    state = cblas.get_state(st.ws)
    resumed = net.copy()
    st2 = Stepper(resumed, prob, lr, "cblas")
    cblas.reset(st2.ws)
    cblas.set_state(st2.ws, state)
    losses += [st2.step()[0] for _ in range(8 - split)]
    np.testing.assert_array_equal(losses, l_ref)
    for a, b in zip(resumed._layers, w_ref):
        np.testing.assert_array_equal(a, b)


def test_build_reports_its_instruction_set():
    """The kernels say what they were compiled for, and this CPU runs it."""
    assert cblas.isa in ("avx512f", "avx2", "avx", "sse2", "neon", "generic")
    assert cblas.vector_bytes in (16, 32, 64)
    assert cblas.lib.dln_cpu_ok() == 1
