"""One training loop for K >= 1 members: an ensemble run records diagnostics, calls back,
checkpoints and resumes exactly as K separate runs would (issue 13)."""
import warnings

import numpy as np
import pytest

import engine
from engine import checkpoint as ck

WIDTHS = [12, 10, 10, 10, 4]
# the member-parallel kernel sums in another order than numpy (test_ensemble.KERNEL_RTOL)
KERNEL_RTOL = 1e-12
NUMBA = engine.ensemble.member_kernel_available()[0]
CBLAS = engine.kernels.availability()["cblas"][0]
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not NUMBA, reason="numba unavailable")),
            pytest.param("cblas", marks=pytest.mark.skipif(not CBLAS, reason="C kernel not built"))]


@pytest.fixture(scope="module")
def prob():
    return engine.Problem(*engine.synthetic(12, 8, 4, seed=1))


class Interrupt(Exception):
    pass


def _interrupt_at(t_stop):
    def cb(t, ex, model):
        if t >= t_stop:
            raise Interrupt
    return cb


def _same_history(res, ref):
    """EnsembleResults identical: histories, states, records, weights."""
    np.testing.assert_array_equal(res.t, ref.t)
    np.testing.assert_array_equal(res.excess, ref.excess)
    for name in ("steps", "converged", "diverged", "lr"):
        np.testing.assert_array_equal(getattr(res, name), getattr(ref, name))
    assert res.messages == ref.messages
    for k in range(len(ref)):
        a, b = res.member(k), ref.member(k)
        for W, V in zip(a.net.normalized(), b.net.normalized()):
            np.testing.assert_array_equal(W, V)
        assert a.records.keys() == b.records.keys()
        for name in a.records:
            np.testing.assert_array_equal(a.records[name]["t"], b.records[name]["t"])
            for u, v in zip(a.records[name]["values"], b.records[name]["values"]):
                np.testing.assert_array_equal(u, v)


def test_records_per_member_equal_separate_runs(prob):
    kw = dict(lr="theory", steps=23, record_every=4, backend="numpy", record={"distance": 5, "gram": 7})
    res = engine.train(engine.init.gaussian(WIDTHS, seed=3, ensemble=3), prob, **kw)
    assert set(res.record_time) == {"distance", "gram"}
    for k in range(3):
        ref = engine.train(engine.init.gaussian(WIDTHS, seed=3 + k), prob, **kw)
        got = res.member(k)
        np.testing.assert_array_equal(got.excess, ref.excess)
        for name in ("distance", "gram"):
            np.testing.assert_array_equal(got.records[name]["t"], ref.records[name]["t"])
            for u, v in zip(got.records[name]["values"], ref.records[name]["values"]):
                np.testing.assert_array_equal(np.asarray(u, dtype=float), np.asarray(v, dtype=float))
    assert list(res.records[0]["distance"]["t"]) == [0, 5, 10, 15, 20, 23]


def test_callback_sees_every_member_and_stops_all(prob):
    seen = []

    def cb(t, ex, ens):
        seen.append((t, ex.copy()))
        assert isinstance(ens, engine.Ensemble)
        return t >= 4

    ens = engine.init.orthogonal(WIDTHS, seed=0, ensemble=2)
    res = engine.train(ens, prob, steps=100, backend="numpy", callback=cb)
    assert [t for t, _ in seen] == [0, 1, 2, 3, 4]
    assert all(ex.shape == (2,) and np.isfinite(ex).all() for _, ex in seen)
    assert res.steps.tolist() == [5, 5] and list(res.t) == [0, 1, 2, 3, 4, 5]
    for k in range(2):       # the same as a single run stopped by its callback at t = 4
        ref = engine.train(engine.init.orthogonal(WIDTHS, seed=k), prob, steps=100, backend="numpy",
                           callback=lambda t, ex, net: t >= 4)
        np.testing.assert_array_equal(res.member(k).excess, ref.excess)
        np.testing.assert_array_equal(seen[2][1][k], ref.excess[2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_ensemble_resumes_bit_identically(prob, tmp_path, backend):
    """Members stopping at different steps (tol), one diverging (lr 1e4 x), records and
    interruptions between checkpoints: the resumed run is the uninterrupted one, bit for bit."""
    base = engine.theory.lr_bound("gaussian", prob, len(WIDTHS) - 1)
    kw = dict(lr=[base, 2 * base, 1e4 * base, 3 * base], steps=150, tol=2e-3, record_every=3, backend=backend,
              record={"distance": 7})
    make = lambda: engine.init.gaussian(WIDTHS, seed=5, ensemble=4)   # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", engine.LearningRateWarning)
        ref = engine.train(make(), prob, **kw)
        assert ref.diverged.tolist() == [False, False, True, False]
        assert ref.converged.tolist() == [False, True, False, True]
        assert ref.steps.tolist() == [150, 100, 1, 84], "members should stop at different steps"
        path = tmp_path / "ens.ckpt"
        with pytest.raises(Interrupt):       # after 2 members stopped, between two checkpoints
            engine.train(make(), prob, checkpoint=path, checkpoint_every=20, callback=_interrupt_at(125), **kw)
        saved = ck.load(path)
        assert saved.step == 120 and saved.members == 4
        assert [m["status"] for m in saved.meta["members"]] == ["running", "converged", "diverged", "converged"]
        res = engine.train(prob=prob, resume=path)
    assert isinstance(res, engine.EnsembleResult) and res.schedule == ref.schedule
    _same_history(res, ref)
    # the final state was written: resuming the finished run gives it again
    assert ck.load(path).step == 150
    _same_history(engine.train(prob=prob, resume=path), ref)


@pytest.mark.skipif(not NUMBA, reason="numba unavailable")
def test_member_kernel_run_matches_numpy_with_records(prob):
    kw = dict(lr="theory", steps=40, record={"distance": 10})
    a = engine.train(engine.init.orthogonal(WIDTHS, seed=2, ensemble=3), prob, backend="numba", **kw)
    b = engine.train(engine.init.orthogonal(WIDTHS, seed=2, ensemble=3), prob, backend="numpy", **kw)
    assert a.schedule == "members-parallel" and b.schedule == "sequential"
    np.testing.assert_allclose(a.excess, b.excess, rtol=1e-10)
    for k in range(3):
        for u, v in zip(a.records[k]["distance"]["values"], b.records[k]["distance"]["values"]):
            np.testing.assert_allclose(u, v, rtol=KERNEL_RTOL, atol=KERNEL_RTOL)


def test_resume_into_a_given_ensemble_and_rerun_same_call(prob, tmp_path):
    path = tmp_path / "c"
    kw = dict(lr="theory", steps=20, backend="numpy", checkpoint=path, checkpoint_every=4)
    ref = engine.train(engine.init.orthogonal(WIDTHS, seed=1, ensemble=2), prob, lr="theory", steps=20,
                       backend="numpy")
    with pytest.raises(Interrupt):
        engine.train(engine.init.orthogonal(WIDTHS, seed=1, ensemble=2), prob, callback=_interrupt_at(9), **kw)
    seen = []
    again = engine.train(engine.init.orthogonal(WIDTHS, seed=1, ensemble=2), prob,     # the same call again
                         callback=lambda t, ex, ens: seen.append(t), **kw)
    assert seen[0] == 8, "the re-run must continue from the checkpoint"
    _same_history(again, ref)
    mine = engine.init.orthogonal(WIDTHS, seed=9, ensemble=2)
    with pytest.raises(ValueError, match="^net: has widths"):
        engine.train(engine.init.orthogonal(WIDTHS, seed=9, ensemble=3), prob, resume=path)
    res = engine.train(mine, prob, resume=path, steps=20)
    assert res.ensemble is mine
    _same_history(res, ref)
    with pytest.raises(ck.CheckpointMismatch, match="seed"):
        engine.train(engine.init.orthogonal(WIDTHS, seed=2, ensemble=2), prob, **kw)


@pytest.mark.parametrize("tol,error", [(True, TypeError), ("x", TypeError), (-1.0, ValueError)])
def test_ensemble_tol_is_validated_naming_tol(prob, tol, error):
    """Drift fixed by one loop: on the ensemble path tol=True was accepted and tol='x' failed
    without naming tol."""
    ens = engine.init.orthogonal(WIDTHS, seed=0, ensemble=2)
    with pytest.raises(error, match="^tol"):
        engine.train(ens, prob, steps=2, tol=tol)
    with pytest.raises(error, match="^tol"):
        engine.ensemble.train(ens, prob, steps=2, tol=tol)


def test_view_shares_storage_and_member_copies(prob):
    ens = engine.init.gaussian(WIDTHS, seed=0, ensemble=3)
    v, c = ens.view(1), ens.member(1)
    for a, b in zip(v.weights(), c.weights()):
        np.testing.assert_array_equal(a, b)
    old = v._layers[2][0, 0]
    v._layers[2][0, 0] = old + 1.0
    assert ens.member(1)._layers[2][0, 0] == v._layers[2][0, 0] != c._layers[2][0, 0]
    v._layers[2][0, 0] = old
    # a view trains like the member on its own
    engine.train(c, prob, steps=5, backend="numpy")
    engine.train(v, prob, steps=5, backend="numpy")
    for a, b in zip(v.normalized(), c.normalized()):
        np.testing.assert_array_equal(a, b)


def test_ensemble_checkpoint_fields_validated(prob, tmp_path):
    path = tmp_path / "c"
    engine.train(engine.init.gaussian(WIDTHS, seed=0, ensemble=2), prob, lr=1e-3, steps=3, backend="numpy",
                 checkpoint=path)
    import json
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    arrays.pop("sha256")
    for field, edit in [("members[1]", lambda m: m["members"][1].update(status="resting")),
                        ("lr", lambda m: m.update(lr=[1e-3])),
                        ("hi[0]", lambda m: m["hi"].__setitem__(0, "nan"))]:
        bad = json.loads(json.dumps(meta))
        edit(bad)
        ck.save(path, arrays, bad)
        with pytest.raises(ck.CorruptCheckpoint, match=rf"invalid field '{field}'".replace("[", r"\[")):
            ck.load(path)
