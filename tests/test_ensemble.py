"""Ensembles equal K separate ``engine.train`` runs.

* members stepped one by one with a single-network backend (numpy here):
  bitwise equal to separate runs with that backend;
* the member-parallel Numba kernel: equal to the numpy backend up to
  summation-order rounding (KERNEL_RTOL), independent of the thread count
  (each member runs on one thread, so bitwise);
* one member diverging leaves the others' results intact.
"""
import numpy as np
import pytest

import engine
from engine import ensemble as E
from engine.ensemble import Ensemble
from engine.train import LearningRateWarning

# The kernel sums the same products as numpy_backend in another order; after
# 50 steps weights differ by ~1e-15 relative and excess losses by ~1e-14
# (measured). 1e-12 leaves two orders of margin and still catches any
# algebra error (which shows up at >= 1e-6).
KERNEL_RTOL = 1e-12
# The excess loss is a difference of nearly equal quantities late in a run;
# compare it relative to its own size with this floor relative to l(0) - OPT.
EXCESS_RTOL = 1e-10
# float32: rounding 6e-8 per operation, amplified over ~L products per step and
# 50 steps; 1e-4 relative is what float32 GD itself can promise here.
FLOAT32_RTOL = 1e-4

NUMBA = E.member_kernel_available()[0]
needs_numba = pytest.mark.skipif(not NUMBA, reason="numba is not importable")

STEPS = 50


def _prob(d_in, n, d_out, seed=1):
    X, Y = engine.synthetic(d_in, n, d_out, seed=seed)
    return engine.Problem(X, Y)


# (d_in, n, d_out, widths-hidden) -> r < d_out (P form) and r > d_out (T form)
CASES = {
    "T-form": ((8, 16, 4), [12] * 5),          # r = 8 > d_out = 4
    "P-form": ((12, 3, 6), [10] * 4),          # r = 3 < d_out = 6
}


def _widths(case):
    (d_in, n, d_out), hid = CASES[case]
    return _prob(d_in, n, d_out), [d_in] + hid + [d_out]


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _separate(init, widths, seeds, prob, **kw):
    nets = [getattr(engine.init, init)(widths, seed=s) for s in seeds]
    return [engine.train(n, prob, **kw) for n in nets]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_sequential_numpy_is_bitwise_separate_runs(case, init):
    prob, widths = _widths(case)
    seeds = [0, 1, 2]
    ens = getattr(Ensemble, init)(widths, seeds=seeds)
    assert ens.hidden is not None and ens.hidden.flags.c_contiguous
    assert ens.hidden.shape == (3, len(widths) - 3, widths[1], widths[1])
    res = E.train(ens, prob, lr="theory", steps=STEPS, backend="numpy", record_every=3)
    assert res.schedule == "sequential" and res.backend == "numpy"
    ref = _separate(init, widths, seeds, prob, lr="theory", steps=STEPS, backend="numpy", record_every=3)
    for k, rr in enumerate(ref):
        m = res.member(k)
        np.testing.assert_array_equal(m.t, rr.t)
        np.testing.assert_array_equal(m.excess, rr.excess)
        assert m.steps == rr.steps and m.converged == rr.converged
        for a, b in zip(m.net.weights(), rr.net.weights()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(res.excess[k], rr.excess)


def test_general_widths_run_bitwise_as_separate_runs():
    prob = _prob(8, 16, 4)
    widths = [8, 10, 7, 9, 4]
    ens = Ensemble.orthogonal(widths, seeds=[3, 4])
    assert ens.hidden is None
    res = E.train(ens, prob, steps=20, backend="auto")
    # non-uniform hidden widths: the C members kernel takes any shapes, the Numba one does not
    cblas = engine.kernels.availability()["cblas"][0]
    assert res.schedule == ("members-parallel" if cblas else "sequential")
    ref = _separate("orthogonal", widths, [3, 4], prob, steps=20, backend=res.backend)
    for k, rr in enumerate(ref):
        np.testing.assert_array_equal(res.member(k).excess, rr.excess)


@needs_numba
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_member_kernel_equals_numpy(case, init):
    prob, widths = _widths(case)
    seeds = [0, 1, 2, 3]
    ens = getattr(Ensemble, init)(widths, seeds=seeds)
    res = E.train(ens, prob, lr="theory", steps=STEPS, backend="numba")
    assert res.schedule == "members-parallel", "the member-parallel kernel did not run"
    ref = _separate(init, widths, seeds, prob, lr="theory", steps=STEPS, backend="numpy")
    for k, rr in enumerate(ref):
        m = res.member(k)
        np.testing.assert_array_equal(m.t, rr.t)
        np.testing.assert_allclose(m.excess, rr.excess, rtol=EXCESS_RTOL, atol=EXCESS_RTOL * rr.excess[0])
        for a, b in zip(m.net.weights(), rr.net.weights()):
            assert _rel(a, b) <= KERNEL_RTOL


@needs_numba
def test_member_kernel_depth_two_and_float32():
    prob = _prob(8, 16, 4)
    widths = [8, 12, 4]                                       # L = 2: no hidden stack
    res = E.train(Ensemble.gaussian(widths, seeds=[0, 1]), prob, steps=STEPS, backend="numba")
    assert res.schedule == "members-parallel"
    ref = _separate("gaussian", widths, [0, 1], prob, steps=STEPS, backend="numpy")
    for k, rr in enumerate(ref):
        for a, b in zip(res.member(k).net.weights(), rr.net.weights()):
            assert _rel(a, b) <= KERNEL_RTOL
    prob, widths = _widths("T-form")
    ens = Ensemble.orthogonal(widths, seeds=[0, 1], dtype=np.float32)
    res = E.train(ens, prob, steps=STEPS, backend="numba")
    nets = [engine.init.orthogonal(widths, seed=s, dtype=np.float32) for s in (0, 1)]
    for k, n in enumerate(nets):
        rr = engine.train(n, prob, steps=STEPS, backend="numpy")
        np.testing.assert_allclose(res.member(k).excess, rr.excess, rtol=FLOAT32_RTOL,
                                   atol=FLOAT32_RTOL * rr.excess[0])
        for a, b in zip(res.member(k).net.weights(), n.weights()):
            assert _rel(a, b) <= FLOAT32_RTOL


@needs_numba
def test_member_kernel_independent_of_thread_count():
    import numba
    prob, widths = _widths("T-form")
    out = []
    old = numba.get_num_threads()
    try:
        for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(nt)
            ens = Ensemble.orthogonal(widths, seeds=range(5))
            out.append(E.train(ens, prob, steps=20, backend="numba"))
    finally:
        numba.set_num_threads(old)
    # each member is stepped by one thread from start to end: no cross-thread sums
    np.testing.assert_array_equal(out[0].excess, out[1].excess)
    for a, b in zip(out[0].ensemble.members(), out[1].ensemble.members()):
        for wa, wb in zip(a.weights(), b.weights()):
            np.testing.assert_array_equal(wa, wb)


@pytest.mark.filterwarnings("ignore:lr:")
@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_one_member_diverging_keeps_the_others(backend):
    prob, widths = _widths("T-form")
    seeds = [0, 1, 2]
    base = engine.theory.lr_bound("orthogonal", prob, len(widths) - 1)
    lrs = [base, 200 * base, base / 2]
    with pytest.warns(LearningRateWarning, match="members 1 "):
        res = E.train(Ensemble.orthogonal(widths, seeds=seeds), prob, lr=lrs, steps=40, backend=backend)
    assert list(res.diverged) == [False, True, False]
    assert "diverged" in res.messages[1]
    for k in (0, 2):
        net = engine.init.orthogonal(widths, seed=seeds[k])
        rr = engine.train(net, prob, lr=lrs[k], steps=40, backend="numpy")
        np.testing.assert_allclose(res.member(k).excess, rr.excess, rtol=EXCESS_RTOL,
                                   atol=EXCESS_RTOL * rr.excess[0])
    net = engine.init.orthogonal(widths, seed=seeds[1])
    with pytest.raises(engine.DivergenceError) as info:
        engine.train(net, prob, lr=lrs[1], steps=40, backend="numpy")
    bad = res.member(1)
    assert bad.steps == info.value.step
    np.testing.assert_array_equal(bad.t, info.value.result.t)
    np.testing.assert_allclose(bad.excess, info.value.result.excess, rtol=EXCESS_RTOL)
    for w in bad.net.weights():                               # last finite state kept
        assert np.isfinite(w).all()


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_members_stop_at_tol_independently(backend):
    prob, widths = _widths("T-form")
    seeds = [0, 1, 2]
    ens = Ensemble.gaussian(widths, seeds=seeds)
    # tol 1e-3: members 1 and 2 reach it at different steps, member 0 never does
    ref = _separate("gaussian", widths, seeds, prob, steps=400, atol=1e-3, backend="numpy", record_every=7)
    res = E.train(ens, prob, steps=400, atol=1e-3, backend=backend, record_every=7)
    for k, rr in enumerate(ref):
        m = res.member(k)
        assert m.converged == rr.converged and m.steps == rr.steps
        np.testing.assert_array_equal(m.t, rr.t)
        np.testing.assert_allclose(m.excess, rr.excess, rtol=EXCESS_RTOL, atol=EXCESS_RTOL * rr.excess[0])
    assert list(res.converged) == [False, True, True]
    assert len(set(res.steps.tolist())) == 3
    assert res.excess.shape == (3, res.t.size)


def test_from_networks_and_members_roundtrip_and_continue_training():
    prob, widths = _widths("P-form")
    nets = [engine.init.gaussian(widths, seed=s) for s in (5, 6)]
    ens = Ensemble.from_networks(nets)
    for a, b in zip(ens.members(), nets):
        for wa, wb in zip(a.weights(), b.weights()):
            np.testing.assert_array_equal(wa, wb)
    # train 10 + 10 steps as an ensemble vs 10 + 10 steps separately (bound state carried)
    E.train(ens, prob, steps=10, backend="numpy")
    ens2 = Ensemble.from_networks(ens.members())
    res = E.train(ens2, prob, steps=10, backend="numpy")
    for k, n in enumerate(nets):
        engine.train(n, prob, steps=10, backend="numpy")
        rr = engine.train(n, prob, steps=10, backend="numpy")
        np.testing.assert_array_equal(res.member(k).excess, rr.excess)
        for wa, wb in zip(res.member(k).net.weights(), n.weights()):
            np.testing.assert_array_equal(wa, wb)


def test_bad_input():
    prob, widths = _widths("T-form")
    with pytest.raises(TypeError, match="seeds"):
        Ensemble.gaussian(widths, seeds=4)
    with pytest.raises(ValueError, match="nets\\[1\\]"):
        Ensemble.from_networks([engine.init.gaussian(widths), engine.init.gaussian([8, 5, 4])])
    ens = Ensemble.gaussian(widths, seeds=[0, 1])
    with pytest.raises(ValueError, match="lr"):
        E.train(ens, prob, lr=[1e-3], steps=1)
    with pytest.raises(ValueError, match="lr"):
        E.train(ens, prob, lr=-1.0, steps=1)
    with pytest.raises(ValueError, match="backend"):
        E.train(ens, prob, backend="gpu", steps=1)
    with pytest.raises(ValueError, match="widths"):
        E.train(ens, _prob(9, 16, 4), steps=1)
    with pytest.raises(TypeError, match="ens"):
        E.train(engine.init.gaussian(widths), prob, steps=1)
    with pytest.raises(IndexError, match="k"):
        ens.member(2)


@pytest.mark.parametrize("backend,widths", [("cblas", [8, 12, 12, 12, 12, 4]), ("numba", [8, 10, 7, 9, 4])])
def test_member_by_member_with_fast_backends_is_bitwise_separate_runs(backend, widths):
    ok, why = engine.kernels.availability()[backend]
    if not ok:
        pytest.skip(f"{backend} unavailable: {why}")
    prob = _prob(8, 16, 4)
    seeds = [0, 1]
    res = E.train(Ensemble.orthogonal(widths, seeds=seeds), prob, steps=30, backend=backend)
    # cblas: the C members-parallel kernel (one thread per member); numba: non-uniform
    # hidden widths, so member by member. Both must be bitwise separate runs.
    assert res.schedule == ("members-parallel" if backend == "cblas" else "sequential")
    assert res.backend == backend
    for k, rr in enumerate(_separate("orthogonal", widths, seeds, prob, steps=30, backend=backend)):
        np.testing.assert_array_equal(res.member(k).excess, rr.excess)
        for a, b in zip(res.member(k).net.weights(), rr.net.weights()):
            np.testing.assert_array_equal(a, b)


def test_auto_choice_and_fallback_without_numba(monkeypatch):
    prob, widths = _widths("T-form")
    cblas = engine.kernels.availability()["cblas"][0]
    res = E.train(Ensemble.orthogonal(widths, seeds=[0, 1]), prob, steps=3)
    # small members: one call per step, the C kernel first, else the Numba one
    assert res.schedule == ("members-parallel" if cblas or NUMBA else "sequential")
    assert res.backend == ("cblas" if cblas else "numba" if NUMBA else res.backend)
    from engine.kernels import _numba_members
    monkeypatch.setattr(_numba_members, "available", False)
    monkeypatch.setattr(_numba_members, "reason", "numba cannot be imported: (simulated)")
    res = E.train(Ensemble.orthogonal(widths, seeds=[0, 1]), prob, steps=3)
    assert res.schedule == ("members-parallel" if cblas else "sequential")
    if cblas:
        cb = engine.kernels.get("cblas")
        monkeypatch.setattr(cb, "available", False)
        monkeypatch.setattr(cb, "reason", "no C compiler (simulated)")
        res = E.train(Ensemble.orthogonal(widths, seeds=[0, 1]), prob, steps=3)
        assert res.schedule == "sequential"
    with pytest.raises(engine.BackendUnavailable, match="simulated"):
        E.train(Ensemble.orthogonal(widths, seeds=[0, 1]), prob, steps=3, backend="numba")


def test_engine_train_dispatches_an_ensemble():
    """engine.train(Ensemble, ...) is engine.ensemble.train: per-member results
    identical to separate engine.train runs. (record=, callback= and checkpoints,
    refused here before one loop trained both, are tested in test_ensemble_run.py.)"""
    import engine
    X, Y = engine.synthetic(64, 8, 4, seed=0)
    prob = engine.Problem(X, Y)
    widths = [64] + [32] * 7 + [4]
    ens = engine.Ensemble.orthogonal(widths, seeds=range(3))
    run = engine.train(ens, prob, steps=30, backend="numpy")
    assert isinstance(run, engine.EnsembleResult)
    for k in range(3):
        sep = engine.train(engine.init.orthogonal(widths, seed=k), prob, steps=30, backend="numpy")
        np.testing.assert_array_equal(run.member(k).excess, sep.excess)
    again = engine.ensemble.train(ens, prob, steps=30, backend="numpy")
    assert isinstance(again, engine.EnsembleResult) and again.steps.tolist() == [30] * 3


@pytest.mark.parametrize("kind", ["gaussian", "orthogonal"])
def test_init_ensemble_keyword_builds_the_same_members(kind):
    """engine.init.<kind>(widths, seed=s, ensemble=K) is an Ensemble whose member k
    is bitwise engine.init.<kind>(widths, seed=s+k); bad arguments name themselves."""
    widths = [12, 8, 8, 8, 3]
    make = getattr(engine.init, kind)
    ens = make(widths, seed=5, ensemble=3)
    assert isinstance(ens, Ensemble)
    for k, member in enumerate(ens.members()):
        for a, b in zip(member.weights(), make(widths, seed=5 + k).weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="^ensemble"):
        make(widths, ensemble=0)
    with pytest.raises(TypeError, match="^seed"):
        make(widths, seed=None, ensemble=2)
