"""``auto`` by measurement (engine.kernels.auto): the decision logic, the
on-disk cache and its invalidation, the overrides, and the fallback to fewer
threads when cores are busy -- all with injected measurements, so no test
depends on a timing (STYLE.md habit 7)."""
import json
import os

import numpy as np
import pytest

import engine
from engine import kernels
from engine.kernels import auto

WIDE = [64] + [512] * 5 + [10]          # 8.6 MB of float64 weights: calibrated by default
TINY = [8, 6, 6, 3]                     # below MIN_CALIBRATE_BYTES: the fixed rule
AVAILABLE = [nm for nm, (ok, _) in kernels.availability().items() if ok]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ENGINE_BACKEND", raising=False)
    monkeypatch.delenv("ENGINE_AUTO", raising=False)
    return tmp_path


class FakeTimer:
    """measure(widths, r, dtype, name, threads) -> seconds from a table; counts calls."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, widths, r, dtype, name, threads):
        self.calls.append((name, threads))
        return self.table.get((name, threads), 1.0)


def _cands():
    return auto.candidates(ncpu=2)


def _table(best, others=1e-2):
    t = {c: others for c in _cands()}
    t[best] = 1e-3
    return t


def _returned(cand):
    """What auto_choice returns for a winning candidate: its backend, and its
    thread count only where the backend does not choose it per step."""
    name, threads = cand
    return name, (None if auto.adapts_threads(name) else threads)


def test_picks_the_fastest_measured_candidate():
    for best in _cands():
        fake = FakeTimer(_table(best))
        name, threads, why = auto.auto_choice(WIDE, 16, "float64", measure=fake, cpus=2,
                                              path=os.path.join(os.environ["ENGINE_CACHE_DIR"],
                                                                f"{best[0]}{best[1]}.json"))
        assert (name, threads) == _returned(best)
        assert "calibrated now" in why and set(fake.calls) == set(_cands())


def test_cache_is_reused_and_invalidated(cache_dir, monkeypatch):
    best = _cands()[-1]
    fake = FakeTimer(_table(best))
    first = auto.auto_choice(WIDE, 16, measure=fake, cpus=2)
    n = len(fake.calls)
    second = auto.auto_choice(WIDE, 16, measure=fake, cpus=2)
    assert second[:2] == first[:2] == _returned(best) and len(fake.calls) == n and "cached in" in second[2]
    path = auto.cache_path()
    rec = json.load(open(path))
    assert rec["machine"] == auto.machine_id()
    assert rec["classes"][auto.shape_class(WIDE, 16, "float64")]["cpus_free"] == 2
    assert not [f for f in os.listdir(cache_dir) if f.startswith(".auto-")]   # no temp file left
    # the same class (widths rounded to powers of two) shares the calibration
    name, _, why = auto.auto_choice([64] + [530] * 5 + [10], 16, measure=fake, cpus=2)
    assert "cached in" in why
    assert len(fake.calls) == n
    # another engine version / machine: the old file is ignored, a new one calibrated
    real_id = auto.machine_id
    monkeypatch.setattr(auto, "machine_id", lambda: "another machine")
    other = _cands()[0]
    fake2 = FakeTimer(_table(other))
    assert auto.auto_choice(WIDE, 16, measure=fake2, cpus=2, path=path)[:2] == _returned(other) and fake2.calls
    monkeypatch.setattr(auto, "machine_id", real_id)
    fake2.calls.clear()
    assert auto.auto_choice(WIDE, 16, measure=fake2, cpus=2, path=path)[:2] == _returned(other)
    assert fake2.calls                              # the file now holds the other machine's: recalibrated
    # a damaged file: recalibrate instead of failing
    with open(path, "w") as fh:
        fh.write("{not json")
    fake3 = FakeTimer(_table(best))
    assert auto.auto_choice(WIDE, 16, measure=fake3, cpus=2)[:2] == _returned(best) and fake3.calls


def test_busy_cores_rank_backends_by_their_one_thread_times():
    """Issue 14 item 4: with a core taken by another process, the backend is
    the one fastest at 1 thread even when another was fastest with 2; its
    thread count is then the per-step chooser's (tests/test_thread_chooser.py
    drives that with simulated load), or 1 where the backend has none."""
    two = [c for c in _cands() if c[1] == 2]
    if len(two) < 2:
        pytest.skip("fewer than two threaded backends available")
    table = {c: 5e-3 for c in _cands()}
    table[two[0]] = 1e-3                                     # fastest when idle
    table[(two[1][0], 1)] = 2e-3                             # another backend's 1-thread run next
    fake = FakeTimer(table)
    assert auto.auto_choice(WIDE, 16, measure=fake, cpus=2)[:2] == _returned(two[0])
    n = len(fake.calls)
    name, threads, why = auto.auto_choice(WIDE, 16, measure=fake, cpus=1)
    assert (name, threads) == _returned((two[1][0], 1)) and "1 core(s) free" in why
    assert len(fake.calls) == n                    # busier than at calibration: the cache holds


def test_threads_are_left_to_backends_that_choose_them():
    """A backend that picks each step's thread count from measured times gets
    None from auto (the load average counts this process's own threads: a
    process that just ran 2-thread steps looks busy to itself)."""
    for name in AVAILABLE:
        fake = FakeTimer({c: (1e-3 if c[0] == name else 1e-2) for c in _cands()})
        path = os.path.join(os.environ["ENGINE_CACHE_DIR"], f"adapt-{name}.json")
        got, threads, _ = auto.auto_choice(WIDE, 16, measure=fake, cpus=2, path=path)
        assert got == name
        if auto.adapts_threads(name):
            assert threads is None


def test_calibration_under_load_is_redone_when_cores_free_up():
    """Times taken with one core busy are replaced once both cores are free."""
    two = [c for c in _cands() if c[1] == 2]
    if not two:
        pytest.skip("no threaded backend available")
    busy = FakeTimer({c: (1.0 if c[1] == 2 else 1e-3) for c in _cands()})   # 2 threads collapse
    assert auto.auto_choice(WIDE, 16, measure=busy, cpus=1)[1] in (1, None)
    quiet = FakeTimer(_table(two[0]))
    name, threads, why = auto.auto_choice(WIDE, 16, measure=quiet, cpus=2)
    assert (name, threads) == _returned(two[0]) and quiet.calls and "calibrated now with 2 core(s)" in why


@pytest.mark.parametrize("affinity, load, own, expect", [
    (2, 0.0, 1.0, 2),          # idle
    (2, 1.0, 1.0, 2),          # only ourselves
    (2, 2.0, 1.0, 1),          # another process spinning on one core
    (2, 7.0, 1.0, 1),          # overloaded: still one
    (8, 3.6, 1.0, 5),
    (1, 0.0, 1.0, 1),
])
def test_available_cpus(affinity, load, own, expect):
    assert auto.available_cpus(affinity=affinity, load=load, own=own) == expect


def test_small_networks_and_env_rule_use_the_fixed_rule(monkeypatch):
    fake = FakeTimer({})
    name, threads, why = auto.auto_choice(TINY, 3, measure=fake)
    assert name == auto._rule(TINY, 3) and threads is None and "fixed rule" in why and not fake.calls
    monkeypatch.setenv("ENGINE_AUTO", "rule")
    name, threads, why = auto.auto_choice(WIDE, 16, measure=fake)
    assert name == kernels.get("auto", shape=(WIDE, 16)).name and "ENGINE_AUTO=rule" in why
    assert not fake.calls
    monkeypatch.setenv("ENGINE_AUTO", "measure")              # calibrate even tiny nets
    auto.auto_choice(TINY, 3, measure=fake, cpus=2)
    assert fake.calls
    monkeypatch.setenv("ENGINE_AUTO", "sometimes")
    with pytest.raises(ValueError, match="ENGINE_AUTO"):
        auto.auto_choice(WIDE, 16, measure=fake)


def test_engine_backend_overrides(monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "numpy")
    assert auto.auto_choice(WIDE, 16) == ("numpy", None, "ENGINE_BACKEND=numpy")
    prob = engine.Problem(*engine.synthetic(8, 20, 3, seed=0))
    run = engine.train(engine.init.orthogonal(TINY, seed=0), prob, steps=2)
    assert run.backend == "numpy"
    monkeypatch.setenv("ENGINE_BACKEND", "cuda")
    with pytest.raises(ValueError, match="ENGINE_BACKEND"):
        auto.auto_choice(WIDE, 16)
    # an explicit backend= is never overridden
    assert engine.train(engine.init.orthogonal(TINY, seed=0), prob, steps=1, backend="numpy").backend == "numpy"


def test_a_failing_candidate_is_never_chosen():
    cands = _cands()

    def measure(widths, r, dtype, name, threads):
        if (name, threads) == cands[0]:
            raise RuntimeError("cannot run here")
        return 1e-3 if (name, threads) == cands[-1] else 1e-2

    got = auto.calibrate(WIDE, 16, "float64", measure=measure, cands=cands)
    assert auto._key(*cands[0]) not in got
    if len(cands) > 1:
        assert auto.auto_choice(WIDE, 16, measure=measure, cpus=2)[:2] == _returned(cands[-1])


def test_train_runs_autos_choice_and_its_threads(monkeypatch):
    """The stepper runs the chosen backend under the chosen thread count, and
    the weights equal those of that backend named explicitly."""
    name = "numba" if "numba" in AVAILABLE else "numpy"
    seen = []
    monkeypatch.setattr(kernels, "auto_choice", lambda w, r, d: (name, 1, "test"))
    real = kernels.thread_limits

    def spy(backend, threads=None):
        seen.append(threads)
        return real(backend, threads)

    monkeypatch.setattr(kernels, "thread_limits", spy)
    prob = engine.Problem(*engine.synthetic(8, 20, 3, seed=0))
    a, b = engine.init.orthogonal(TINY, seed=0), engine.init.orthogonal(TINY, seed=0)
    ra = engine.train(a, prob, steps=3)
    rb = engine.train(b, prob, steps=3, backend=name)
    assert ra.backend == name and 1 in seen
    np.testing.assert_array_equal(ra.loss, rb.loss)


def test_real_calibration_step_runs():
    """measure_step really steps (a positive, finite time; its value is not checked)."""
    t = auto.measure_step([16, 8, 8, 8, 4], 8, "float64", "numpy", None, steps=1)
    assert np.isfinite(t) and t > 0


def test_shape_class_rounds_to_powers_of_two():
    assert auto.shape_class([1024] + [250] * 63 + [10], 16, "float64") == "float64-m256-L64-o10-r16"
    assert auto.shape_class([1024] + [1024] * 31 + [10], 16, np.float32) == "float32-m1024-L32-o10-r16"
