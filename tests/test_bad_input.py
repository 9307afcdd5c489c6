"""Every public entry rejects bad input with an exception naming the argument."""
import numpy as np
import pytest

import engine


@pytest.fixture
def prob():
    return engine.Problem(*engine.synthetic(6, 5, 2, seed=0))


@pytest.fixture
def net():
    return engine.init.gaussian([6, 4, 2], seed=0)


@pytest.mark.parametrize("X,Y,name", [
    (np.ones((3, 4)), np.ones((2, 5)), "Y"),            # sample counts differ
    (np.ones(4), np.ones((2, 4)), "X"),                  # 1-D
    (np.ones((3, 0)), np.ones((2, 0)), "X"),             # empty
    (np.full((3, 4), np.nan), np.ones((2, 4)), "X"),
    (np.ones((3, 4)), np.full((2, 4), np.inf), "Y"),
    (np.ones((3, 4), complex), np.ones((2, 4)), "X"),
    (np.zeros((3, 4)), np.ones((2, 4)), "X"),            # rank 0
    ([[1, 2], [3]], np.ones((2, 2)), "X"),               # ragged
])
def test_problem_rejects(X, Y, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        engine.Problem(X, Y)


def test_problem_converts_integers():
    p = engine.Problem(np.arange(12).reshape(3, 4), np.ones((1, 4), dtype=np.int32))
    assert p.X.dtype == np.float64 and p.rank == 2


@pytest.mark.parametrize("kw,name", [
    (dict(d_in=0, n=3, d_out=2), "d_in"),
    (dict(d_in=3, n=-1, d_out=2), "n"),
    (dict(d_in=3, n=3, d_out=2.5), "d_out"),
    (dict(d_in=3, n=3, d_out=2, rank=4), "rank"),
    (dict(d_in=3, n=3, d_out=2, kappa=0.5), "kappa"),
    (dict(d_in=3, n=3, d_out=2, noise=-1), "noise"),
    (dict(d_in=3, n=3, d_out=2, seed=-2), "seed"),
])
def test_synthetic_rejects(kw, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        engine.synthetic(**kw)


@pytest.mark.parametrize("init", [engine.init.gaussian, engine.init.orthogonal])
@pytest.mark.parametrize("widths,name", [
    ([5], "widths"), ([5, 0, 2], r"widths\[1\]"), ([5, 2.5, 2], r"widths\[1\]"),
    (5, "widths"), ([5, -3], r"widths\[1\]"),
])
def test_init_rejects_widths(init, widths, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        init(widths, seed=0)


def test_init_rejects_other_arguments():
    with pytest.raises(ValueError, match="^sigma"):
        engine.init.gaussian([3, 4, 2], sigma=[1.0])
    with pytest.raises(ValueError, match=r"^sigma\[1\]"):
        engine.init.gaussian([3, 4, 2], sigma=[1.0, -1.0])
    with pytest.raises(ValueError, match="^alpha"):
        engine.init.gaussian([3, 4, 2], alpha=0.0)
    with pytest.raises(ValueError, match="^dtype"):
        engine.init.orthogonal([3, 4, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="^init"):
        engine.init.by_name("xavier")
    with pytest.raises(ValueError, match=r"^Ws\[1\]"):
        engine.init.from_weights([np.ones((3, 2)), np.ones((2, 4))], alpha=1.0)
    with pytest.raises(ValueError, match=r"^Ws\[0\]"):
        engine.init.from_weights([np.full((3, 2), np.nan)], alpha=1.0)
    with pytest.raises(ValueError, match="^alpha"):
        engine.init.from_weights([np.ones((3, 2))], alpha=float("inf"))


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_nonpositive_or_nonfinite_lr(net, prob, lr):
    with pytest.raises(ValueError, match="^lr"):
        engine.gd_step(net, prob, lr)
    with pytest.raises(ValueError, match="^lr"):
        engine.train(net, prob, lr=lr, steps=1)


def test_lr_wrong_type_or_string(net, prob):
    with pytest.raises(TypeError, match="^lr"):
        engine.gd_step(net, prob, "0.1")
    with pytest.raises(ValueError, match="^lr"):
        engine.train(net, prob, lr="fast", steps=1)
    custom = engine.init.from_weights(net.weights(), alpha=net.alpha)
    # no theorem covers from_weights nets: lr='theory' is refused naming lr and why (issue 10)
    with pytest.raises(ValueError, match="^lr='theory': no theorem covers this network: from_weights"):
        engine.train(custom, prob, lr="theory", steps=1)


def test_widths_not_matching_data(prob):
    for widths in ([7, 4, 2], [6, 4, 3]):
        net = engine.init.gaussian(widths, seed=0)
        with pytest.raises(ValueError, match="^widths"):
            engine.gd_step(net, prob, 1e-3)
        with pytest.raises(ValueError, match="^widths"):
            engine.train(net, prob, lr=1e-3, steps=1)


def test_unknown_and_unavailable_backend(net, prob):
    with pytest.raises(ValueError, match="^backend"):
        engine.gd_step(net, prob, 1e-3, backend="cuda")
    for name, (ok, why) in engine.kernels.availability().items():
        if not ok:
            with pytest.raises(engine.BackendUnavailable, match=f"^backend: '{name}' is unavailable"):
                engine.gd_step(net, prob, 1e-3, backend=name)


def test_train_rejects_bad_arguments(net, prob):
    with pytest.raises(ValueError, match="^steps"):
        engine.train(net, prob, lr=1e-3, steps=-1)
    with pytest.raises(TypeError, match="^steps"):
        engine.train(net, prob, lr=1e-3, steps=1.5)
    with pytest.raises(ValueError, match="^record_every"):
        engine.train(net, prob, lr=1e-3, steps=3, record_every=0)
    with pytest.raises(ValueError, match="^tol"):
        engine.train(net, prob, lr=1e-3, steps=3, tol=-1.0)
    with pytest.raises(TypeError, match="^net"):
        engine.train("net", prob, lr=1e-3, steps=3)
    with pytest.raises(TypeError, match="^prob"):
        engine.gd_step(net, (prob.X, prob.Y), 1e-3)


def test_problem_methods_reject_bad_E(prob):
    with pytest.raises(ValueError, match="^E"):
        prob.excess(np.ones((2, 5)))
    with pytest.raises(ValueError, match="^E"):
        prob.loss(np.full((2, 6), np.nan))


def test_bad_input_leaves_network_unchanged(net, prob):
    before = net.weights()
    with pytest.raises(ValueError):
        engine.gd_step(net, prob, -1.0)
    for a, b in zip(before, net.weights()):
        np.testing.assert_array_equal(a, b)


def test_unavailable_backend_message_says_why(net, prob, monkeypatch):
    """A backend known but not usable here is refused by name, with the reason, never silently replaced."""
    from engine import kernels
    fake = type("FakeBackend", (), {"name": "cblas", "available": False,
                                    "reason": "the C extension was not built (no C compiler at install time)"})
    monkeypatch.setitem(kernels._REGISTRY, "cblas", fake)
    with pytest.raises(engine.BackendUnavailable, match=r"^backend: 'cblas' is unavailable: .*no C compiler"):
        engine.gd_step(net, prob, 1e-3, backend="cblas")
    with pytest.raises(engine.BackendUnavailable, match="no C compiler"):
        engine.train(net, prob, lr=1e-3, steps=1, backend="cblas")
    assert kernels.availability()["cblas"] == (False, fake.reason)
    # a missing module is reported the same way
    monkeypatch.delitem(kernels._REGISTRY, "numba", raising=False)
    monkeypatch.setitem(kernels._MISSING, "numba", "importing it failed: No module named 'numba'")
    with pytest.raises(engine.BackendUnavailable, match=r"^backend: 'numba' is unavailable: .*No module named"):
        engine.gd_step(net, prob, 1e-3, backend="numba")
    # auto still works (numpy is always there)
    engine.gd_step(net, prob, 1e-3, backend="auto")


@pytest.mark.parametrize("rtol", [-0.1, 1.0, float("nan"), "1e-8", True])
def test_problem_rejects_bad_rtol(rtol):
    with pytest.raises((ValueError, TypeError), match="^rtol"):
        engine.Problem(np.eye(3), np.ones((1, 3)), rtol=rtol)


@pytest.mark.parametrize("X,Y,name", [
    (np.full((3, 4), 1e160), np.ones((1, 4)), "X"),     # ||X||^2 overflows
    (np.full((3, 4), 1e-160), np.ones((1, 4)), "X"),    # ||X||^2 underflows
    (np.ones((3, 4)), np.full((1, 4), 1e200), "Y"),     # ||Y||^2 overflows
])
def test_problem_rejects_data_outside_float64_range(X, Y, name):
    with pytest.raises(ValueError, match=f"^{name}: too (large|small)"):
        engine.Problem(X, Y)


def test_problem_dtype_conversions_are_explicit():
    X = np.arange(12, dtype=np.int64).reshape(3, 4)
    for dt in (np.int8, np.uint16, np.bool_, np.float16, np.float32):
        p = engine.Problem(X.astype(dt) + (1 if dt == np.bool_ else 0), np.ones((1, 4), dtype=dt))
        assert p.X.dtype == np.float64 and p.Y.dtype == np.float64 and p.X.flags.c_contiguous
    # non-contiguous views are copied to contiguous storage, values unchanged
    big = np.arange(40.0).reshape(5, 8)
    p = engine.Problem(big[:, ::2], np.ones((1, 4)))
    np.testing.assert_array_equal(p.X, big[:, ::2])
    with pytest.raises(TypeError, match="^Y: complex"):
        engine.Problem(X, np.ones((1, 4), dtype=np.complex64))
    with pytest.raises(TypeError, match="^X: must be a numeric array"):
        engine.Problem(np.array([["a", "b"], ["c", "d"]]), np.ones((1, 2)))


@pytest.mark.parametrize("kw,name", [
    (dict(kappa="big"), "kappa"), (dict(noise="0.1"), "noise"), (dict(kappa=float("inf")), "kappa"),
])
def test_synthetic_rejects_non_numbers(kw, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        engine.synthetic(4, 3, 2, **kw)


@pytest.mark.parametrize("tol", ["1e-3", float("nan"), float("inf"), True])
def test_train_rejects_bad_tol(net, prob, tol):
    with pytest.raises((ValueError, TypeError), match="^tol"):
        engine.train(net, prob, lr=1e-3, steps=1, tol=tol)


def test_init_rejects_bad_seed_and_dtype():
    with pytest.raises(TypeError, match="^seed"):
        engine.init.gaussian([3, 2], seed=1.5)
    with pytest.raises(ValueError, match="^seed"):
        engine.init.orthogonal([3, 2], seed=-1)
    with pytest.raises(ValueError, match="^dtype"):
        engine.init.gaussian([3, 2], dtype=np.complex128)
    with pytest.raises(TypeError, match="^dtype"):
        engine.init.gaussian([3, 2], dtype="nonsense-dtype")
    with pytest.raises(TypeError, match=r"^widths\[0\]"):
        engine.init.gaussian([True, 2])


def test_float32_network_on_float64_problem_and_other_bad_objects(prob):
    net = engine.init.gaussian([6, 4, 2], seed=0, dtype=np.float32)
    engine.gd_step(net, prob, 1e-3)            # float32 storage trains on float32 reduced data
    assert net.normalized()[0].dtype == np.float32
    with pytest.raises(TypeError, match="^net"):
        engine.gd_step(net.weights(), prob, 1e-3)
    with pytest.raises(TypeError, match="^prob"):
        engine.train(net, None, lr=1e-3, steps=1)


def test_samples_as_rows_suggests_transposing():
    """Issue 12 item 8: X, Y given as (n, d) (the PyTorch/JAX habit) -> the error says to pass .T."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((32, 16)), rng.standard_normal((10, 16))   # d_in 32, d_out 10, n 16
    with pytest.raises(ValueError, match=r"samples must be columns.*pass X\.T and Y\.T"):
        engine.Problem(X.T, Y.T)
    with pytest.raises(ValueError, match=r"X looks transposed, pass X\.T of shape \(d_in, n\) = \(32, 16\)"):
        engine.Problem(X.T, Y)
    assert engine.Problem(X, Y).n == 16   # the paper convention: (32, 16) and (10, 16)
