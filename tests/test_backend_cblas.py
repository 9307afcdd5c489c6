"""The optional ``cblas`` backend (C kernel in csrc/, built by setup.py with cffi).

* It says loudly whether the extension is active: where a C compiler exists
  and the backend is unavailable, the test fails and prints why, so a silent
  fallback to another backend cannot pass for success (STYLE.md habit 6).
* It equals the numpy backend (the oracle) over 50+ steps of engine.train,
  for both schedules (two-pass, in both chain forms: r < d_out P form,
  r >= d_out T form; and single-pass alternating), both inits, uniform and
  general widths, float64 and float32, with the fused pass split into one
  block or many row blocks.
* The single-pass schedule's kept state is dropped whenever it could be
  stale (reset, other arrays, other beta), and a refused step keeps it.
* Its wrapper refuses arrays it cannot hand to C safely.
* Without the compiled module it reports itself unavailable, and asking for
  it by name raises engine.BackendUnavailable with the reason.
"""
import importlib.util
import math
import shutil
import sys

import numpy as np
import pytest

import engine
from engine import kernels
from engine.kernels import numpy_backend

cblas = kernels._REGISTRY.get("cblas")
AVAILABLE = cblas is not None and cblas.available
needs_cblas = pytest.mark.skipif(not AVAILABLE, reason="cblas backend unavailable "
                                 "(test_extension_is_built says why)")

# float64: the C kernel performs the same products as the numpy backend in a
# different association (blocked GEMM, FMA); each step adds ~1e-16 relative,
# growing mildly over 50 steps -- measured <= 1e-15, so 1e-10 leaves a wide
# margin yet catches any algebraic error (those show up at 1e-3 or worse).
RTOL64 = 1e-10
# float32: eps = 6e-8, amplified by 60 steps of a depth-4 chain; measured
# ~1e-6 relative on the loss.
RTOL32 = 1e-4
STEPS = 60


def test_extension_is_built():
    """Fails where a compiler exists but the C extension is not active."""
    ok, why = kernels.availability()["cblas"]
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    print(f"cblas backend: available={ok} reason={why!r} compiler={compiler}")
    if compiler is not None:
        assert ok, f"a C compiler ({compiler}) is present but the cblas backend is unavailable: {why}"
    else:
        assert ok or why, "an unavailable backend must say why"


def _data(case):
    if case == "r>d_out":
        return engine.synthetic(12, 30, 4, seed=3, rank=5, noise=0.3)    # r = 5 > d_out = 4: T form
    if case == "r<d_out":
        return engine.synthetic(10, 20, 6, seed=4, rank=3, noise=0.2)    # r = 3 < d_out = 6: P form
    if case == "r=d_out":
        return engine.synthetic(8, 4, 4, seed=5)                          # r = d_out = 4: T form
    raise ValueError(case)


WIDTHS = {
    "uniform": [9, 9, 9, 9],       # hidden layers share one (L-2, m, m) array
    "general": [9, 7, 11, 5],
    "depth2": [7],
    "depth1": [],
}


def _train_both(case, widths, init, dtype, steps=STEPS, **kw):
    X, Y = _data(case)
    prob = engine.Problem(X, Y)
    runs = {}
    for backend in ("numpy", "cblas"):
        net = engine.init.by_name(init)([X.shape[0]] + WIDTHS[widths] + [Y.shape[0]], seed=7, dtype=dtype)
        lr = 0.5 * engine.theory.lr_bound("orthogonal", prob, net.depth)
        runs[backend] = engine.train(net, prob, lr=lr, steps=steps, backend=backend, **kw)
    return runs["numpy"], runs["cblas"]


@pytest.fixture(params=["two-pass", "single-pass"])
def schedule(request, monkeypatch):
    """Run the test under each schedule (the schedule of new workspaces)."""
    if AVAILABLE:
        monkeypatch.setattr(cblas, "SCHEDULE", request.param)
    return request.param


def _counting(monkeypatch):
    """Count calls of the cblas step, to prove the C path really ran."""
    calls = {"n": 0}
    real = cblas.step

    def step(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(cblas, "step", step)
    return calls


def _assert_same(ref, got, rtol):
    assert got.backend == "cblas"
    np.testing.assert_allclose(got.loss, ref.loss, rtol=rtol)
    # the run must actually move: otherwise equality would prove nothing
    assert ref.loss[-1] < 0.9 * ref.loss[0]
    for a, b in zip(got.net.normalized(), ref.net.normalized()):
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max())


@needs_cblas
@pytest.mark.parametrize("case", ["r>d_out", "r<d_out", "r=d_out"])
@pytest.mark.parametrize("widths", list(WIDTHS))
@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_equals_numpy_float64(case, widths, init, schedule, monkeypatch):
    calls = _counting(monkeypatch)
    ref, got = _train_both(case, widths, init, np.float64)
    assert calls["n"] == STEPS
    assert got.net._ws[1].schedule == schedule
    _assert_same(ref, got, RTOL64)


@needs_cblas
@pytest.mark.parametrize("case", ["r>d_out", "r<d_out"])
@pytest.mark.parametrize("widths", ["uniform", "general"])
@pytest.mark.parametrize("block_rows", [1, 3])
def test_equals_numpy_with_many_row_blocks(case, widths, block_rows, schedule, monkeypatch):
    """The fused pass split into row blocks of 1 or 3 rows (each layer has <= 11 columns)."""
    monkeypatch.setattr(cblas, "BLOCK_BYTES", block_rows * 8 * 5)   # 5 = narrowest layer's columns
    ref, got = _train_both(case, widths, "gaussian", np.float64)
    _assert_same(ref, got, RTOL64)


@needs_cblas
@pytest.mark.parametrize("case", ["r>d_out", "r<d_out"])
@pytest.mark.parametrize("widths", ["uniform", "general"])
def test_equals_numpy_float32(case, widths, schedule):
    ref, got = _train_both(case, widths, "orthogonal", np.float32)
    assert got.net.normalized()[1].dtype == np.float32
    _assert_same(ref, got, RTOL32)


@needs_cblas
def test_wider_network_multiblock_all_schedules():
    """m = 96 with 4 KiB blocks: several row blocks per layer, BLAS on real-sized products."""
    X, Y = engine.synthetic(64, 40, 12, seed=0, rank=None)
    prob = engine.Problem(X, Y)
    for form in ("P", "T", "single-pass"):
        nets = [engine.init.orthogonal([64, 96, 96, 96, 12], seed=1) for _ in range(2)]
        lr = engine.theory.lr_bound("orthogonal", prob, 4)
        from engine.stepper import Stepper
        old, old_schedule = cblas.BLOCK_BYTES, cblas.SCHEDULE
        cblas.BLOCK_BYTES = 4096
        try:
            s_ref = Stepper(nets[0], prob, lr, "numpy", form=None if form == "single-pass" else form)
            cblas.SCHEDULE = "single-pass"
            s_c = Stepper(nets[1], prob, lr, "cblas", form=None if form == "single-pass" else form)
        finally:
            cblas.BLOCK_BYTES = old
            cblas.SCHEDULE = old_schedule
        assert s_c.ws.block_bytes == 4096
        assert (s_c.ws.schedule, s_c.ws.form) == (("single-pass", "T") if form == "single-pass" else ("two-pass", form))
        for _ in range(STEPS):
            e_ref, _ = s_ref.step()
            e_c, applied = s_c.step()
            assert applied
            assert e_c == pytest.approx(e_ref, rel=RTOL64)
        for a, b in zip(nets[1].normalized(), nets[0].normalized()):
            np.testing.assert_allclose(a, b, rtol=0, atol=RTOL64 * np.abs(b).max())


@needs_cblas
@pytest.mark.parametrize("form", ["P", "T", "single-pass"])
def test_step_gate_and_excess(form):
    """lo < excess <= hi gates the update; excess() writes nothing; both match numpy."""
    X, Y = _data("r>d_out")
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([12, 9, 9, 9, 4], seed=0)
    net._bind(prob)
    red = prob.reduced(net.dtype)
    layers = net._layers
    c = np.full(net.depth, 1e-3)
    if form == "single-pass":
        ws = cblas.workspace(layers, prob.rank, prob.d_out, net.dtype, schedule=form)
        ws_np = numpy_backend.workspace(layers, prob.rank, prob.d_out, net.dtype)
    else:
        ws = cblas.workspace(layers, prob.rank, prob.d_out, net.dtype, form)
        ws_np = numpy_backend.workspace(layers, prob.rank, prob.d_out, net.dtype, form)
    before = [a.copy() for a in layers]
    ex = cblas.excess(layers, net.beta, red.s, red.targets, ws)
    assert ex == pytest.approx(numpy_backend.excess(layers, net.beta, red.s, red.targets, ws_np), rel=1e-13)
    for lo, hi in ((ex, math.inf), (-1.0, 0.5 * ex), (-1.0, math.nan)):
        e, applied = cblas.step(layers, c, net.beta, red.s, red.targets, ws, lo, hi)
        assert not applied and e == pytest.approx(ex, rel=1e-13)
        for a, b in zip(layers, before):
            assert np.array_equal(a, b)
    e, applied = cblas.step(layers, c, net.beta, red.s, red.targets, ws, -1.0, ex)
    assert applied and e == pytest.approx(ex, rel=1e-13)
    assert any(not np.array_equal(a, b) for a, b in zip(layers, before))


@needs_cblas
def test_single_pass_state_is_dropped_when_it_could_be_stale():
    """The kept chain belongs to the weights it was computed from; reset or new
    arrays / beta / data make the next step recompute it (docs/design.md)."""
    X, Y = _data("r>d_out")
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([12, 9, 9, 9, 4], seed=0)
    net._bind(prob)
    red = prob.reduced(net.dtype)
    layers = net._layers
    c = np.full(net.depth, 1e-3)
    ws = cblas.workspace(layers, prob.rank, prob.d_out, net.dtype, schedule="single-pass")
    ws_np = numpy_backend.workspace(layers, prob.rank, prob.d_out, net.dtype)

    def exact():
        return numpy_backend.excess(layers, net.beta, red.s, red.targets, ws_np)

    for _ in range(3):                     # both sweep directions, and back
        e, applied = cblas.step(layers, c, net.beta, red.s, red.targets, ws)
        assert applied
        assert cblas.excess(layers, net.beta, red.s, red.targets, ws) == pytest.approx(exact(), rel=1e-13)
    # weights changed behind the kernel's back: stale until reset
    layers[2] *= 0.5
    stale = cblas.excess(layers, net.beta, red.s, red.targets, ws)
    assert stale != pytest.approx(exact(), rel=1e-6)
    cblas.reset(ws)
    assert cblas.excess(layers, net.beta, red.s, red.targets, ws) == pytest.approx(exact(), rel=1e-13)
    # a new beta, new data arrays or new layer arrays each drop the state
    cblas.step(layers, c, net.beta, red.s, red.targets, ws)
    assert cblas.excess(layers, 2.0 * net.beta, red.s, red.targets, ws) == pytest.approx(
        numpy_backend.excess(layers, 2.0 * net.beta, red.s, red.targets, ws_np), rel=1e-13)
    assert cblas.excess(layers, net.beta, red.s, red.targets, ws) == pytest.approx(exact(), rel=1e-13)
    layers[1] *= 0.5
    assert cblas.excess(layers, net.beta, red.s.copy(), red.targets, ws) == pytest.approx(exact(), rel=1e-13)
    layers[3] *= 0.5
    assert cblas.excess(layers, net.beta, red.s, red.targets.copy(), ws) == pytest.approx(exact(), rel=1e-13)
    layers[0] = layers[0].copy() * 0.5
    assert cblas.excess(layers, net.beta, red.s, red.targets, ws) == pytest.approx(exact(), rel=1e-13)


@needs_cblas
def test_single_pass_through_train_resets_between_calls(monkeypatch):
    """gd_step keeps its stepper between calls but drops the carried chain
    when the weights were edited in between (Network._probe sees the edit),
    so the edit is seen; train after gd_step continues exactly."""
    monkeypatch.setattr(cblas, "SCHEDULE", "single-pass")
    X, Y = _data("r<d_out")
    prob = engine.Problem(X, Y)
    nets = [engine.init.orthogonal([10, 9, 9, 6], seed=2) for _ in range(2)]
    lr = 0.5 * engine.theory.lr_bound("orthogonal", prob, 3)
    for backend, net in zip(("numpy", "cblas"), nets):
        engine.gd_step(net, prob, lr, backend=backend)
        net._layers[1] *= 0.9              # an edit between calls
        losses = [engine.gd_step(net, prob, lr, backend=backend) for _ in range(3)]
        net._layers[2] *= 1.1
        run = engine.train(net, prob, lr=lr, steps=20, backend=backend)
        net.losses = losses + list(run.loss)
    np.testing.assert_allclose(nets[1].losses, nets[0].losses, rtol=RTOL64)


@needs_cblas
def test_nonfinite_weights_leave_state_untouched():
    X, Y = _data("r<d_out")
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([10, 9, 9, 6], seed=0)
    net._bind(prob)
    red = prob.reduced(net.dtype)
    net._layers[1][0, 0] = np.inf
    before = [a.copy() for a in net._layers]
    ws = cblas.workspace(net._layers, prob.rank, prob.d_out, net.dtype)
    e, applied = cblas.step(net._layers, np.full(3, 1e-3), net.beta, red.s, red.targets, ws)
    assert not applied and not np.isfinite(e)
    for a, b in zip(net._layers, before):
        assert np.array_equal(a, b)


# -- the wrapper refuses what it cannot pass to C safely ----------------------

def _direct_setup(dtype=np.float64):
    X, Y = _data("r>d_out")
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([12, 9, 9, 9, 4], seed=0, dtype=dtype)
    net._bind(prob)
    red = prob.reduced(net.dtype)
    layers = list(net._layers)
    ws = cblas.workspace(layers, prob.rank, prob.d_out, net.dtype)
    return layers, np.full(net.depth, 1e-3), net.beta, red.s, red.targets, ws


@needs_cblas
@pytest.mark.parametrize("bad, match", [
    ("layer_fortran", r"layers\[1\]: must be C-contiguous"),
    ("layer_strided", r"layers\[2\]: must be C-contiguous"),
    ("layer_dtype", r"layers\[0\]: must have dtype float64"),
    ("layer_shape", r"layers\[3\]: must have shape"),
    ("layer_readonly", r"layers\[1\]: must be writeable"),
    ("layer_list", r"layers\[2\]: must be a numpy array"),
    ("too_few_layers", r"layers: expected 4 layers"),
    ("xs_dtype", r"xs: must have dtype float64"),
    ("xs_shape", r"xs: must have shape"),
    ("yred_strided", r"yred: must be C-contiguous"),
    ("c_shape", r"c: must have shape"),
    ("ws_type", r"ws: must be a cblas_backend.Workspace"),
])
def test_refuses_bad_arrays(bad, match):
    layers, c, beta, xs, yred, ws = _direct_setup()
    # bind good arrays first, so refusal must also work after the pointer cache is warm
    cblas.excess(layers, beta, xs, yred, ws)
    orig, before = list(layers), [a.copy() for a in layers]
    if bad == "layer_fortran":
        layers[1] = np.asfortranarray(layers[1])
    elif bad == "layer_strided":
        big = np.zeros((9, 18))
        big[:, ::2] = layers[2]
        layers[2] = big[:, ::2]
    elif bad == "layer_dtype":
        layers[0] = layers[0].astype(np.float32)
    elif bad == "layer_shape":
        layers[3] = np.zeros((4, 8))
    elif bad == "layer_readonly":
        layers[1] = layers[1].copy()
        layers[1].flags.writeable = False
    elif bad == "layer_list":
        layers[2] = layers[2].tolist()
    elif bad == "too_few_layers":
        layers = layers[:-1]
    elif bad == "xs_dtype":
        xs = xs.astype(np.float32)
    elif bad == "xs_shape":
        xs = np.concatenate([xs, xs])
    elif bad == "yred_strided":
        yred = np.repeat(yred, 2, axis=1)[:, ::2]
    elif bad == "c_shape":
        c = np.ones(7)
    elif bad == "ws_type":
        ws = numpy_backend.workspace(layers, len(xs), yred.shape[0], np.float64)
    with pytest.raises((TypeError, ValueError), match=match):
        cblas.step(layers, c, beta, xs, yred, ws)
    for a, b in zip(orig, before):                  # nothing was written
        assert np.array_equal(a, b)
    # the workspace still works with the good arrays, and gives the numpy step
    good = _direct_setup()
    ws_np = numpy_backend.workspace(before, len(good[3]), good[4].shape[0], np.float64)
    e_ref, _ = numpy_backend.step(before, *good[1:5], ws_np)
    e, applied = cblas.step(orig, *good[1:5], good[5] if bad == "ws_type" else ws)
    assert applied and e == pytest.approx(e_ref, rel=1e-13)
    for a, b in zip(orig, before):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


@needs_cblas
def test_refuses_unsupported_dtype_and_mismatched_shapes():
    layers, c, beta, xs, yred, ws = _direct_setup()
    with pytest.raises(TypeError, match="dtype: the cblas backend supports float64 and float32"):
        cblas.workspace([a.astype(np.float16) for a in layers], len(xs), yred.shape[0], np.float16)
    with pytest.raises(ValueError, match=r"layers: layer 2 has shape"):
        cblas.workspace(layers[:2] + [np.zeros((9, 8))] + layers[3:], len(xs), yred.shape[0], np.float64)
    with pytest.raises(ValueError, match="expected d_out"):
        cblas.workspace(layers, len(xs), yred.shape[0] + 1, np.float64)
    # a float32 workspace refuses float64 layers
    layers32, c32, beta32, xs32, yred32, ws32 = _direct_setup(np.float32)
    with pytest.raises(TypeError, match=r"layers\[0\]: must have dtype float32"):
        cblas.step(layers, c32, beta32, xs32, yred32, ws32)


# -- the unavailable path ------------------------------------------------------

def _fresh_backend_without_extension(monkeypatch):
    """Import a fresh copy of cblas_backend as if the extension had never been built."""
    monkeypatch.setitem(sys.modules, "engine.kernels._cblas", None)   # import raises ModuleNotFoundError
    monkeypatch.delattr(kernels, "_cblas", raising=False)
    path = kernels.__path__[0] + "/cblas_backend.py"
    spec = importlib.util.spec_from_file_location("engine.kernels._cblas_backend_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unavailable_without_extension(monkeypatch, tmp_path):
    mod = _fresh_backend_without_extension(monkeypatch)
    assert mod.available is False
    assert "was not built" in mod.reason and "engine.kernels._cblas" in mod.reason
    # a recorded build failure is quoted in the reason
    marker = tmp_path / "_cblas_build_error.txt"
    marker.write_text("CompileError: command 'gcc' failed: No such file or directory\n")
    monkeypatch.setattr(mod, "_BUILD_ERROR_FILE", str(marker))
    assert "the build failed: CompileError: command 'gcc' failed" in mod._not_built_reason()

    monkeypatch.setitem(kernels._REGISTRY, "cblas", mod)
    assert kernels.availability()["cblas"] == (False, mod.reason)
    X, Y = _data("r>d_out")
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([12, 9, 9, 4], seed=0)
    with pytest.raises(engine.BackendUnavailable, match="'cblas' is unavailable: the C extension .* was not built"):
        engine.train(net, prob, lr=1e-3, steps=3, backend="cblas")
    assert kernels.get("auto") is not mod          # auto never picks an unavailable backend


def test_built_but_broken_extension_is_reported_as_such(monkeypatch):
    """An extension that exists but cannot be loaded is not reported as 'not built'."""

    class _Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "engine.kernels._cblas":
                raise ImportError("undefined symbol: dln_step_f64 (simulated)")
            return None

    monkeypatch.delitem(sys.modules, "engine.kernels._cblas", raising=False)
    monkeypatch.delattr(kernels, "_cblas", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Broken()] + sys.meta_path)
    path = kernels.__path__[0] + "/cblas_backend.py"
    spec = importlib.util.spec_from_file_location("engine.kernels._cblas_backend_probe2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.available is False
    assert "was built but failed to load" in mod.reason and "simulated" in mod.reason


# The kernel's parallel loops split a layer into disjoint row or column
# ranges (no reductions), and BLAS is held to one thread inside; a different
# thread count can only change how a BLAS kernel tiles one product. 1e-12
# allows for that and is far below any algebraic error.
RTOL_THREADS = 1e-12


@needs_cblas
@pytest.mark.parametrize("variant", ["P", "T", "single-pass"])
def test_independent_of_thread_count_and_equal_to_numpy(variant, monkeypatch):
    """m = 192: layers large enough for the kernel's parallel loops (>= 32768
    entries), with 4 KiB blocks so each thread walks several blocks."""
    from threadpoolctl import threadpool_limits
    from engine.stepper import Stepper
    monkeypatch.setattr(cblas, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(cblas, "SCHEDULE", "single-pass")
    form = None if variant == "single-pass" else variant
    X, Y = engine.synthetic(64, 40, 12, seed=0)
    prob = engine.Problem(X, Y)
    widths = [64, 192, 192, 192, 12]
    lr = engine.theory.lr_bound("orthogonal", prob, 4)
    nets, losses = [], []
    for backend, threads in (("numpy", 2), ("cblas", 1), ("cblas", 2)):
        net = engine.init.orthogonal(widths, seed=1)
        with threadpool_limits(limits=threads):
            st = Stepper(net, prob, lr, backend, form=form)
            losses.append([st.step()[0] for _ in range(20)])
        nets.append(net)
    np.testing.assert_allclose(losses[2], losses[1], rtol=RTOL_THREADS)
    np.testing.assert_allclose(losses[1], losses[0], rtol=RTOL64)
    for a, b, ref in zip(nets[2].normalized(), nets[1].normalized(), nets[0].normalized()):
        np.testing.assert_allclose(a, b, rtol=0, atol=RTOL_THREADS * np.abs(b).max())
        np.testing.assert_allclose(b, ref, rtol=0, atol=RTOL64 * np.abs(ref).max())


@needs_cblas
def test_blas_threads_restored_after_a_step():
    """The kernel calls no BLAS and leaves the BLAS limits as they were (STYLE.md habit 5)."""
    from threadpoolctl import threadpool_info, threadpool_limits
    X, Y = engine.synthetic(16, 8, 4, seed=0)
    prob = engine.Problem(X, Y)
    net = engine.init.orthogonal([16, 12, 12, 4], seed=0)
    with threadpool_limits(limits=2, user_api="blas"):
        before = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
        engine.train(net, prob, lr=1e-3, steps=3, backend="cblas")
        after = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    assert after == before


@needs_cblas
def test_blas_threads_restored_after_concurrent_steps():
    """Steps overlapping in several Python threads leave the BLAS limits as
    they were, and each network gets the result a run on its own gets."""
    import threading
    from threadpoolctl import threadpool_info, threadpool_limits
    X, Y = engine.synthetic(64, 40, 12, seed=0)
    prob = engine.Problem(X, Y)
    nets = [engine.init.orthogonal([64, 192, 192, 12], seed=s) for s in range(3)]
    lr = engine.theory.lr_bound("orthogonal", prob, 3)
    errors = []

    def work(net):
        try:
            engine.train(net, prob, lr=lr, steps=15, backend="cblas")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    with threadpool_limits(limits=2, user_api="blas"):
        before = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
        threads = [threading.Thread(target=work, args=(n,)) for n in nets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    assert not errors and after == before
    for s, net in enumerate(nets):
        ref = engine.init.orthogonal([64, 192, 192, 12], seed=s)
        engine.train(ref, prob, lr=lr, steps=15, backend="cblas")
        for a, b in zip(net._layers, ref._layers):
            np.testing.assert_array_equal(a, b)


@needs_cblas
@pytest.mark.parametrize("split", [3, 4])
@pytest.mark.parametrize("m", [9, 192])
def test_single_pass_resume_is_bit_identical(split, m, monkeypatch):
    """get_state / set_state carry the sweep direction; the chain rebuilt after
    reset groups its sums as the sweep did, so resuming after an odd (top-down
    next) or even (bottom-up next) number of steps repeats the run exactly.
    m = 192 with 4 KiB blocks takes the parallel, many-block paths."""
    monkeypatch.setattr(cblas, "BLOCK_BYTES", 4096)
    X, Y = engine.synthetic(64, 40, 12, seed=0)
    prob = engine.Problem(X, Y)
    widths = [64, m, m, m, 12]

    def stepper(net):
        net._bind(prob)
        red = prob.reduced(net.dtype)
        ws = cblas.workspace(net._layers, prob.rank, prob.d_out, net.dtype, schedule="single-pass")
        c = np.full(net.depth, 0.3 * engine.theory.lr_bound("orthogonal", prob, 4)) / np.exp(2 * net._log_s)
        return lambda: cblas.step(net._layers, c, net.beta, red.s, red.targets, ws), ws

    ref = engine.init.orthogonal(widths, seed=1)
    step, ws = stepper(ref)
    ref_ex = [step()[0] for _ in range(8)]

    net = engine.init.orthogonal(widths, seed=1)
    step, ws = stepper(net)
    ex = [step()[0] for _ in range(split)]
    state = cblas.get_state(ws)
    assert state == {"phase": 2 if split % 2 else 1}
    resumed = net.copy()
    step, ws2 = stepper(resumed)
    cblas.reset(ws2)
    cblas.set_state(ws2, state)
    ex += [step()[0] for _ in range(8 - split)]
    assert ex == ref_ex
    for a, b in zip(resumed._layers, ref._layers):
        np.testing.assert_array_equal(a, b)


@needs_cblas
def test_state_api_on_two_pass_and_bad_state():
    layers, c, beta, xs, yred, _ = _direct_setup()
    ws = cblas.workspace(layers, len(xs), yred.shape[0], np.float64, schedule="two-pass")
    assert cblas.get_state(ws) is None
    cblas.set_state(ws, None)
    ws1 = cblas.workspace(layers, len(xs), yred.shape[0], np.float64, schedule="single-pass")
    with pytest.raises(ValueError, match="state: expected"):
        cblas.set_state(ws1, {"phase": 7})


# -- the cffi declarations come from the C header ---------------------------------

def _build_script():
    import runpy
    import os
    return runpy.run_path(os.path.join(os.path.dirname(engine.__file__), "kernels", "_cblas_build.py"))


def test_cdef_is_generated_from_the_header():
    """Every prototype and integer #define of csrc/dln_step.h, nothing else (comments, the
    include guard), in a form cffi parses."""
    import re
    from cffi import FFI
    build = _build_script()
    with open(build["HEADER"]) as fh:
        header = fh.read()
    code = re.sub(r"/\*.*?\*/", " ", header, flags=re.S)
    funcs = set(re.findall(r"\b(dln_\w+)\s*\(", code))
    consts = dict(re.findall(r"#define\s+(DLN_\w+)\s+(\d+)", code))
    assert len(funcs) >= 11 and consts == {"DLN_FORM_P": "0", "DLN_FORM_T": "1", "DLN_SINGLE": "2"}
    cdef = build["cdef_from_header"](header)
    assert "/*" not in cdef and "DLN_STEP_H" not in cdef and "#endif" not in cdef
    ffi = FFI()
    ffi.cdef(cdef)
    declared = {k.split(" ", 1)[1] for k in ffi._parser._declarations}
    assert declared == funcs | set(consts)


@needs_cblas
def test_built_module_declares_what_the_header_declares():
    """The built extension's functions and constants are the header's, with the header's types
    (a stale build after editing the header fails here): the header's declarations are bound
    to the built library's symbols and compared to the module's, one by one."""
    from cffi import FFI
    from engine.kernels import _cblas
    build = _build_script()
    ffi = FFI()
    ffi.cdef(build["header_cdef"]())
    lib = ffi.dlopen(_cblas.__file__)
    names = {k.split(" ", 1)[1] for k in ffi._parser._declarations}
    assert set(dir(_cblas.lib)) == names
    for name in sorted(names):
        got, want = getattr(_cblas.lib, name), getattr(lib, name)
        if isinstance(want, int):
            assert got == want, name
        else:
            assert _cblas.ffi.typeof(got).cname == ffi.typeof(want).cname, name
