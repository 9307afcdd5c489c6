"""Property-based tests of the public API (hypothesis).

Over random widths, depths, shapes, dtypes and arguments, every call through
``engine.Problem``, ``engine.init.*``, ``engine.gd_step`` and ``engine.train``
(with every available backend) either works and agrees with the reference
(the numpy backend, and ``naive.py``'s raw paper-convention GD), or raises a
documented exception whose message starts with the name of the offending
argument. Never a crash, never a silent wrong answer.

Settings: derandomized (reproducible in CI), no deadline, modest example
counts so the file runs in a few seconds.
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import engine
import naive
from engine.kernels import BackendUnavailable

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

AVAILABLE = [nm for nm, (ok, _) in engine.kernels.availability().items() if ok]
UNAVAILABLE = [nm for nm, (ok, _) in engine.kernels.availability().items() if not ok]

# Backends vs numpy backend after a few steps: the same algebra in another
# order, float64 rounding ~1e-16 per op amplified mildly -> 1e-9 is ample;
# float32 (6e-8 per op) -> 1e-3.
RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-3}
# raw paper-convention GD vs the engine, float64, a few steps (tests/test_equivalence.py)
RTOL_NAIVE = 1e-8

VALIDATION_ERRORS = (ValueError, TypeError, BackendUnavailable)


def assert_names(exc, *names):
    """The message starts with one of the argument names (optionally indexed: widths[2])."""
    msg = str(exc)
    assert any(re.match(rf"{re.escape(n)}(\[[^\]]*\])?:", msg) for n in names), msg


# -- data ----------------------------------------------------------------------------

DTYPES = ["int8", "int64", "uint8", "bool", "float16", "float32", "float64", "complex128"]


@st.composite
def arrays(draw, rows=None, cols=None):
    r = draw(st.integers(0, 5)) if rows is None else rows
    c = draw(st.integers(0, 6)) if cols is None else cols
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 3, size=(r, c))
    if dtype.kind == "b":
        a = a > 0
    elif dtype.kind == "u":
        a = np.abs(a)
    a = a.astype(dtype)
    special = draw(st.sampled_from([None, None, None, np.nan, np.inf, -np.inf]))
    if special is not None and a.size and dtype.kind in "fc":
        a.flat[draw(st.integers(0, a.size - 1))] = special
    if draw(st.booleans()) and a.ndim == 2 and a.shape[1] > 1:
        a = a[:, ::2]                                 # non-contiguous view
    return a


@SETTINGS
@given(data=st.data())
def test_problem_builds_or_names_the_argument(data):
    X = data.draw(arrays())
    same_n = data.draw(st.booleans())
    Y = data.draw(arrays(cols=X.shape[1] if same_n and X.ndim == 2 else None))
    if data.draw(st.integers(0, 9)) == 0:
        X = X.ravel()                                  # wrong dimensionality
    try:
        prob = engine.Problem(X, Y)
    except VALIDATION_ERRORS as exc:
        assert_names(exc, "X", "Y")
        return
    # it worked: the input must have been valid, and the quantities right
    Xf, Yf = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    assert Xf.ndim == 2 and Yf.ndim == 2 and Xf.shape[1] == Yf.shape[1] and Xf.size and Yf.size
    assert np.isfinite(Xf).all() and np.isfinite(Yf).all() and not np.iscomplexobj(X)
    assert prob.X.dtype == np.float64 and prob.rank == np.linalg.matrix_rank(Xf)
    E = np.random.default_rng(0).normal(size=(Yf.shape[0], Xf.shape[0]))
    scale = 1 + 0.5 * np.sum((E @ Xf) ** 2) + 0.5 * np.sum(Yf ** 2)
    assert abs(prob.loss(E) - 0.5 * np.sum((E @ Xf - Yf) ** 2)) <= 1e-10 * scale
    assert prob.opt >= 0 and prob.excess(prob.phi) <= 1e-10 * scale


# -- inits -----------------------------------------------------------------------------

WIDTH = st.one_of(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7),
                  st.sampled_from([0, -2, 2.5, True, "3", None]))


@SETTINGS
@given(widths=st.lists(WIDTH, min_size=0, max_size=6),
       init=st.sampled_from(["gaussian", "orthogonal"]),
       dtype=st.sampled_from(["float64", "float32", np.float32, "int64", "complex128", "f8"]),
       seed=st.one_of(st.integers(0, 1000), st.sampled_from([None, -1, 1.5])))
def test_init_builds_or_names_the_argument(widths, init, dtype, seed):
    try:
        net = engine.init.by_name(init)(widths, seed=seed, dtype=dtype)
    except VALIDATION_ERRORS as exc:
        assert_names(exc, "widths", "dtype", "seed")
        return
    assert len(widths) >= 2 and all(type(w) is int and w >= 1 for w in widths)
    assert net.widths == tuple(widths) and net.depth == len(widths) - 1
    assert net.dtype == np.dtype(dtype) and np.dtype(dtype).kind == "f"
    Ws = net.weights()
    assert [W.shape for W in Ws] == [(widths[i + 1], widths[i]) for i in range(len(widths) - 1)]
    assert all(np.isfinite(W).all() for W in Ws)
    if init == "orthogonal":     # HXP eq. 4: W W^T or W^T W = max(d_i, d_{i-1}) I
        for W in Ws:
            G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
            tol = 1e-10 if net.dtype == np.float64 else 1e-4
            np.testing.assert_allclose(G, max(W.shape) * np.eye(len(G)), atol=tol * max(W.shape))


# -- gd_step / train through every backend -------------------------------------------

@st.composite
def setups(draw):
    d_in = draw(st.integers(1, 6))
    n = draw(st.integers(1, 6))
    d_out = draw(st.integers(1, 4))
    L = draw(st.integers(1, 4))
    hidden = draw(st.lists(st.integers(1, 7), min_size=L - 1, max_size=L - 1))
    uniform = draw(st.booleans())
    if uniform and hidden:
        hidden = [hidden[0]] * len(hidden)
    widths = [d_in] + hidden + [d_out]
    if draw(st.integers(0, 7)) == 0:              # widths not matching the data
        k = draw(st.sampled_from([0, -1]))
        widths[k] += draw(st.integers(1, 3))
    seed = draw(st.integers(0, 500))
    X, Y = engine.synthetic(d_in, n, d_out, seed=seed, noise=draw(st.sampled_from([0.0, 0.3])))
    int_data = draw(st.booleans())
    if int_data:                                   # integer data is converted explicitly
        X, Y = np.rint(3 * X).astype(np.int32), np.rint(3 * Y).astype(np.int64)
        assume(np.any(X))
    init = draw(st.sampled_from(["gaussian", "orthogonal"]))
    dtype = draw(st.sampled_from([np.float64, np.float64, np.float32]))
    frac = draw(st.sampled_from([0.1, 0.5, 1.0]))
    bad_lr = draw(st.sampled_from([None] * 6 + [0.0, -1e-3, np.nan, np.inf, "fast", True]))
    steps = draw(st.sampled_from([0, 1, 3, 5, 5, -1]))
    backend = draw(st.sampled_from(["auto", "numpy"] + AVAILABLE + UNAVAILABLE + ["cuda"]))
    return dict(X=X, Y=Y, widths=widths, init=init, dtype=dtype, frac=frac, bad_lr=bad_lr,
                steps=steps, backend=backend, seed=seed)


def _train_all(s):
    prob = engine.Problem(s["X"], s["Y"])
    make = lambda: engine.init.by_name(s["init"])(s["widths"], seed=s["seed"], dtype=s["dtype"])  # noqa: E731
    net = make()
    if s["bad_lr"] is None:
        try:
            lr = s["frac"] * engine.theory.lr_bound(s["init"], prob, net.depth)
        except ValueError:
            lr = 1e-3
    else:
        lr = s["bad_lr"]
    return prob, make, net, lr


@SETTINGS
@given(s=setups())
def test_train_agrees_across_backends_or_names_the_argument(s):
    prob, make, net, lr = _train_all(s)
    try:
        run = engine.train(net, prob, lr=lr, steps=s["steps"], backend=s["backend"])
    except VALIDATION_ERRORS as exc:
        assert_names(exc, "widths", "lr", "steps", "backend")
        if "widths" in str(exc):
            assert net.widths[0] != prob.d_in or net.widths[-1] != prob.d_out
        elif str(exc).startswith("backend"):
            assert s["backend"] not in ["auto"] + AVAILABLE
        return
    # it worked: the arguments were valid
    assert s["bad_lr"] is None and s["steps"] >= 0 and s["backend"] in ["auto"] + AVAILABLE
    assert np.isfinite(run.excess).all() and len(run.t) == s["steps"] + 1
    # every available backend agrees with the numpy reference
    ref = engine.train(make(), prob, lr=lr, steps=s["steps"], backend="numpy")
    rtol = RTOL[np.dtype(s["dtype"])]
    scale = max(float(ref.excess[0]), 1e-300)
    for backend in AVAILABLE:
        other = engine.train(make(), prob, lr=lr, steps=s["steps"], backend=backend)
        np.testing.assert_allclose(other.excess, ref.excess, rtol=rtol, atol=rtol * scale * 1e-3)
        for W, V in zip(other.net.weights(), ref.net.weights()):
            np.testing.assert_allclose(W, V, rtol=0, atol=rtol * (1 + np.abs(V).max()))
    # and the numpy backend agrees with raw paper-convention GD
    if np.dtype(s["dtype"]) == np.float64:
        n0 = make()
        X, Y = prob.X, prob.Y
        W_ref, loss_ref = naive.gd(n0.weights(), n0.alpha, X, Y, lr, s["steps"])
        np.testing.assert_allclose(ref.loss, loss_ref, rtol=RTOL_NAIVE, atol=1e-12 * (1 + loss_ref[0]))
        for W, V in zip(ref.net.weights(), W_ref):
            np.testing.assert_allclose(W, V, rtol=0, atol=RTOL_NAIVE * (1 + np.abs(V).max()))


@SETTINGS
@given(s=setups())
def test_gd_step_agrees_with_naive_or_names_the_argument(s):
    prob, make, net, lr = _train_all(s)
    before = [W.copy() for W in net.normalized()]
    try:
        loss = engine.gd_step(net, prob, lr, backend=s["backend"])
    except VALIDATION_ERRORS as exc:
        assert_names(exc, "widths", "lr", "backend")
        # a refused call leaves the network as it was
        for a, b in zip(before, net.normalized()):
            np.testing.assert_array_equal(a, b)
        return
    n0 = make()
    W_ref, loss_ref = naive.gd(n0.weights(), n0.alpha, prob.X, prob.Y, lr, 1)
    rtol = RTOL_NAIVE if np.dtype(s["dtype"]) == np.float64 else RTOL[np.dtype(np.float32)]
    assert loss == pytest.approx(loss_ref[0], rel=rtol, abs=1e-12)
    for W, V in zip(net.weights(), W_ref):
        np.testing.assert_allclose(W, V, rtol=0, atol=rtol * (1 + np.abs(V).max()))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                    st.sampled_from(["theory", "0.1", None, [1e-3], True])),
       steps=st.one_of(st.integers(-3, 4), st.sampled_from([1.5, "3", None])),
       tol=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["1e-3"])),
       record_every=st.one_of(st.integers(-1, 3), st.sampled_from([2.0, None])))
def test_train_scalar_arguments(lr, steps, tol, record_every):
    prob = engine.Problem(*engine.synthetic(5, 4, 2, seed=0))
    net = engine.init.orthogonal([5, 6, 2], seed=0)
    try:
        run = engine.train(net, prob, lr=lr, steps=steps, tol=tol, record_every=record_every,
                           backend="numpy")
    except VALIDATION_ERRORS as exc:
        assert_names(exc, "lr", "steps", "tol", "record_every")
        return
    except engine.DivergenceError as exc:        # a valid but far too large lr
        assert np.isfinite(exc.result.loss).all() and all(np.isfinite(W).all() for W in exc.net.weights())
        return
    assert run.steps <= steps and np.isfinite(run.loss).all()


# -- checkpoint/resume -----------------------------------------------------------------

@settings(max_examples=20, deadline=None, derandomize=True)
@given(widths_tail=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       uniform=st.booleans(),
       init=st.sampled_from(["gaussian", "orthogonal"]),
       dtype=st.sampled_from(["float64", "float32"]),
       steps=st.integers(1, 25), every=st.integers(1, 7), stop=st.integers(0, 25),
       record_every=st.integers(1, 4), n=st.integers(1, 7))
def test_interrupted_and_resumed_equals_uninterrupted(widths_tail, uniform, init, dtype, steps, every,
                                                      stop, record_every, n):
    import os
    import tempfile
    if uniform and len(widths_tail) > 2:
        widths_tail = [widths_tail[0]] * (len(widths_tail) - 1) + [widths_tail[-1]]
    widths = [5] + widths_tail
    prob = engine.Problem(*engine.synthetic(5, n, widths[-1], seed=n))
    kw = dict(lr="theory", steps=steps, record_every=record_every, backend="numpy",
              record={"distance": 3})
    make = lambda: engine.init.by_name(init)(widths, seed=7, dtype=dtype)  # noqa: E731
    ref = engine.train(make(), prob, **kw)

    class Stop(Exception):
        pass

    def cb(t, ex, net):
        if t >= stop:
            raise Stop
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.ckpt")
        try:
            engine.train(make(), prob, checkpoint=path, checkpoint_every=every, callback=cb, **kw)
        except Stop:
            pass
        if not os.path.exists(path):               # interrupted before the first checkpoint
            assume(False)
        res = engine.train(prob=prob, resume=path)
    np.testing.assert_array_equal(res.t, ref.t)
    np.testing.assert_array_equal(res.excess, ref.excess)
    for a, b in zip(res.net.normalized(), ref.net.normalized()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(res.records["distance"]["t"], ref.records["distance"]["t"])
    for a, b in zip(res.records["distance"]["values"], ref.records["distance"]["values"]):
        np.testing.assert_array_equal(a, b)
