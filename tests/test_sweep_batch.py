"""engine.batch through engine.sweep: runs that differ only in seed, init or lr trained as one
ensemble give rows identical to separate runs (every stored field but wall_time and
finished_utc, bit for bit, and the curves), resume a partly-done batch, keep the rows of the
members that did not fail, and are batched only when the (injected) measurement says so."""
import math

import numpy as np
import pytest

import engine
from engine import batch, kernels
from engine.results import ResultsDB
from engine.runs import normalize_config, run_config
from engine.sweep import _tasks, grid, run_sweep

pytestmark = pytest.mark.skipif(not kernels.availability()["cblas"][0],
                                reason="batches run only where the C kernel steps the members")

# Stored fields that differ between a batched and a separate run of one config: timing only.
VOLATILE = {"wall_time", "finished_utc"}


@pytest.fixture(autouse=True)
def _fresh_measurements(monkeypatch):
    monkeypatch.setattr(batch, "_MEASURED", {})


def _cells():
    """Several shapes and inits; per-member lr scales (some members diverge), a tolerance
    (some stop early), escape recorded, depth 1, the identity init."""
    data = dict(d_in=32, n=8, d_out=3, seed=[0, 1, 2], steps=150, tol=1e-10)
    return (grid(**data, init=["gaussian", "orthogonal"], width=[8, 16], depth=[1, 3], lr_scale=[1.0, 40.0])
            + grid(**data, init=["identity", "gaussian"], width=[12], depth=[4], lr="stable", escape=0.5)
            + grid(**dict(data, tol=0, steps=40), init="orthogonal", width=[10], depth=[2]))


def _content(db):
    with ResultsDB(db, readonly=True) as store:
        rows = sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in store.rows()),
                      key=lambda r: r["key"])
        curves = {r["key"]: store.curve(r["key"]) for r in rows}
    return rows, curves


def _same(a, b):
    """Rows and curves equal, floats bit for bit (nan == nan)."""
    (ra, ca), (rb, cb) = a, b
    assert [r["key"] for r in ra] == [r["key"] for r in rb]
    for x, y in zip(ra, rb):
        _same_fields(x, y)
    for key in (r["key"] for r in ra):
        ta, ea = ca[key]
        tb, eb = cb[key]
        assert np.array_equal(ta, tb) and np.asarray(ea).tobytes() == np.asarray(eb).tobytes()


def _same_fields(x, y):
    """Dicts with the same keys and values, floats bit for bit (a nan equals a nan)."""
    x, y = ({k: v for k, v in d.items() if k not in VOLATILE} for d in (x, y))
    assert x.keys() == y.keys()
    for k in x:
        if isinstance(x[k], float) and isinstance(y[k], float):
            assert np.float64(x[k]).tobytes() == np.float64(y[k]).tobytes(), (k, x[k], y[k])
        else:
            assert x[k] == y[k], (k, x[k], y[k])


class _Count:
    """Wraps a function of engine.batch, counting calls and the configs of each."""

    def __init__(self, monkeypatch, name):
        self.real, self.calls = getattr(batch, name), []
        monkeypatch.setattr(batch, name, self)

    def __call__(self, *a, **kw):
        self.calls.append(a)
        return self.real(*a, **kw)


def test_batched_rows_equal_separate_runs(tmp_path, monkeypatch):
    cfgs = _cells()
    alone = run_sweep(cfgs, tmp_path / "alone.db", workers=0, progress=False, batch=False)
    runs = _Count(monkeypatch, "run_batch")
    ens = _Count(monkeypatch, "train")
    together = run_sweep(cfgs, tmp_path / "batch.db", workers=0, progress=False, batch=True)
    assert alone.done == together.done == len(cfgs) and together.failed == 0
    # every cell of 3 seeds (x 2 lr scales) is one batch, trained as one ensemble
    # each cell's seeds, inits and lr scales are one batch (depth 1 has one width), trained as one ensemble
    assert len(runs.calls) == len(ens.calls) == 5
    assert sorted(len(c[0]) for c in runs.calls) == [3, 6, 12, 12, 12]
    rows, _ = _content(tmp_path / "batch.db")
    st = {r["status"] for r in rows}
    assert st == {"ok", "diverged"} and any(r["converged"] for r in rows) and any(
        not r["converged"] and r["status"] == "ok" for r in rows)
    assert any(r["escape_steps"] is not None for r in rows)
    _same(_content(tmp_path / "alone.db"), _content(tmp_path / "batch.db"))


def test_run_batch_equals_run_config_field_by_field():
    cfgs = [normalize_config(c) for c in grid(d_in=20, n=6, d_out=2, init=["gaussian", "orthogonal"],
                                               width=[9], depth=[5], seed=[3, 4], lr_scale=[1.0, 30.0],
                                               steps=80, tol=1e-12)]
    outs = batch.run_batch(cfgs)
    for c, got in zip(cfgs, outs):
        want = run_config(c)
        _same_fields(got["result"], want["result"])
        assert got["curve"] == want["curve"]
    assert {o["result"]["status"] for o in outs} == {"ok", "diverged"}
    diverged = [o["result"]["error"] for o in outs if o["result"]["status"] == "diverged"]
    assert all(e.startswith("GD diverged at step") and "are attached (.result, .net)" in e for e in diverged)


def test_resumed_batch_runs_only_missing_members(tmp_path, monkeypatch):
    cfgs = grid(d_in=24, n=6, d_out=2, init="gaussian", width=[8], depth=[3], seed=[0, 1, 2, 3], steps=60)
    run_sweep(cfgs, tmp_path / "alone.db", workers=0, progress=False, batch=False)
    db = tmp_path / "batch.db"
    run_sweep([cfgs[0], cfgs[2]], db, workers=0, progress=False, batch=False)   # part of the cell done
    runs = _Count(monkeypatch, "run_batch")
    s = run_sweep(cfgs, db, workers=0, progress=False, batch=True)
    assert s.skipped == 2 and s.done == 2
    assert [[c["seed"] for c in call[0]] for call in runs.calls] == [[1, 3]]
    _same(_content(tmp_path / "alone.db"), _content(db))


def test_a_failing_member_keeps_the_others_rows(tmp_path, monkeypatch):
    cfgs = grid(d_in=24, n=6, d_out=2, init="gaussian", width=[8], depth=[3], seed=[0, 1, 2], steps=60)
    run_sweep(cfgs, tmp_path / "alone.db", workers=0, progress=False, batch=False)
    real = batch.prepare

    def prepare(cfg):
        if cfg["seed"] == 1:
            raise MemoryError("member 1 does not fit")
        return real(cfg)

    monkeypatch.setattr(batch, "prepare", prepare)
    s = run_sweep(cfgs, tmp_path / "batch.db", workers=0, progress=False, batch=True)
    assert (s.done, s.failed) == (2, 1)
    rows, curves = _content(tmp_path / "batch.db")
    bad = [r for r in rows if r["seed"] == 1]
    assert bad[0]["status"] == "failed" and "MemoryError: member 1 does not fit" in bad[0]["error"]
    want = _content(tmp_path / "alone.db")
    _same(([r for r in want[0] if r["seed"] != 1], want[1]),
          ([r for r in rows if r["seed"] != 1], {k: v for k, v in curves.items() if k != bad[0]["key"]}))


def test_a_batch_that_fails_as_a_whole_reruns_its_members_alone(tmp_path, monkeypatch):
    cfgs = grid(d_in=24, n=6, d_out=2, init="orthogonal", width=[8], depth=[3], seed=[0, 1], steps=60)
    run_sweep(cfgs, tmp_path / "alone.db", workers=0, progress=False, batch=False)

    def broken(*a, **kw):
        raise RuntimeError("the ensemble broke")

    monkeypatch.setattr(batch, "train", broken)
    s = run_sweep(cfgs, tmp_path / "batch.db", workers=0, progress=False, batch=True)
    assert (s.done, s.failed) == (2, 0)
    _same(_content(tmp_path / "alone.db"), _content(tmp_path / "batch.db"))


def test_decision_follows_the_measurement(tmp_path, monkeypatch):
    group = [normalize_config(c) for c in grid(d_in=24, n=6, d_out=2, width=[8], depth=[3], seed=[0, 1])]
    seen = []

    def timer(times):
        def t(cfgs, backend, threads, together):
            seen.append(len(cfgs))
            return times
        return t

    assert batch.decide(group, timer=timer((1.0, 0.5)))
    monkeypatch.setattr(batch, "_MEASURED", {})
    assert not batch.decide(group, timer=timer((1.0, 0.99)))   # within BATCH_GAIN: not worth a coarse task
    assert not batch.decide(group, timer=timer((1.0, 0.2)))    # cached for this class: no new measurement
    assert seen == [2, 2]
    assert not batch.decide(group[:1], timer=timer((1.0, 0.1)))   # nothing to batch
    assert not batch.decide(group, backend="numpy", timer=timer((1.0, 0.1)))   # not bitwise there

    cfgs = grid(d_in=24, n=6, d_out=2, init="gaussian", width=[8], depth=[3], seed=[0, 1, 2], steps=30)
    for times, calls in (((1.0, 0.5), 1), ((1.0, 2.0), 0)):
        monkeypatch.setattr(batch, "_MEASURED", {})
        monkeypatch.setattr(batch, "measure", timer(times))
        runs = _Count(monkeypatch, "run_batch")
        run_sweep(cfgs, tmp_path / f"d{calls}.db", workers=0, progress=False)   # batch="auto"
        assert len(runs.calls) == calls
        monkeypatch.setattr(batch, "run_batch", runs.real)


def test_measure_times_both_ways():
    group = [normalize_config(c) for c in grid(d_in=24, n=6, d_out=2, width=[8], depth=[3], seed=[0, 1])]
    separate, together = batch.measure(group)
    assert 0 < separate < math.inf and 0 < together < math.inf


def test_measuring_a_group_of_huge_networks_allocates_megabytes():
    """Planning HXP's published grid (width 1000, depth 700: 2.6 GiB per float32 net) must not
    draw K full networks in the driver: the group is timed on a few layers of its widths."""
    import tracemalloc
    cfgs = [normalize_config(dict(d_in=1024, n=16, d_out=10, init=i, width=1000, depth=700, seed=s,
                                  dtype="float32"))
            for i in ("gaussian", "orthogonal") for s in (0, 1)]
    L = batch.measured_depth(cfgs[0], len(cfgs))
    assert 2 <= L < 700
    per_net = 4 * (1024 * 1000 + (L - 2) * 1000 * 1000 + 1000 * 10)
    assert 2 * len(cfgs) * per_net <= batch.MEASURE_BYTES
    small = normalize_config(dict(d_in=32, n=8, d_out=3, width=16, depth=12))
    assert batch.measured_depth(small, 4) == 12          # small groups are timed at their depth
    tracemalloc.start()
    try:
        separate, together = batch.measure(cfgs, "cblas")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0 < separate < math.inf and 0 < together < math.inf
    assert peak < 3 * batch.MEASURE_BYTES


def test_groups_split_only_on_shared_fields():
    cfgs = [normalize_config(c) for c in
            grid(d_in=24, n=6, d_out=2, init=["gaussian", "orthogonal"], width=[8, 9], depth=[3], seed=[0, 1],
                 lr=["theory", "stable"])]
    gs = batch.groups(cfgs)
    assert sorted(len(g) for g in gs) == [8, 8]          # seeds, inits and lr rules share a batch
    assert all(len({cfgs[i]["width"] for i in g}) == 1 for g in gs)
    alone = [normalize_config(dict(c, escape=0.5, stop_at_escape=True)) for c in cfgs[:3]]
    assert batch.groups(alone) == [[0], [1], [2]]       # the callback would stop every member


def test_a_cluster_gets_at_least_one_task_per_worker():
    cfgs = [normalize_config(c) for c in grid(d_in=24, n=6, d_out=2, width=[8], depth=[3], seed=list(range(6)))]
    from engine.results import canonical_config, key_of_canonical
    pending = [(key_of_canonical(canonical_config(c)), canonical_config(c), 1.0, 10) for c in cfgs]
    assert [len(t[0]) for t in _tasks(pending, True, "auto", 1, 1, "serial")] == [6]
    tasks = _tasks(pending, True, "auto", 1, 4, "local")
    assert sorted(len(t[0]) for t in tasks) == [1, 1, 2, 2] and sum(t[2] for t in tasks) == 6.0
    assert sorted(k for t in tasks for k in t[0]) == sorted(p[0] for p in pending)
    assert [len(t[0]) for t in _tasks(pending, False, "auto", 1, 1, "serial")] == [1] * 6


def test_dask_batch_is_one_task_with_rows_of_separate_runs(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    cfgs = grid(d_in=24, n=6, d_out=2, init=["gaussian", "orthogonal"], width=[8], depth=[3, 4],
                seed=[0, 1, 2], steps=60, lr_scale=[1.0, 40.0])
    run_sweep(cfgs, tmp_path / "alone.db", workers=0, progress=False, batch=False)
    s = run_sweep(cfgs, tmp_path / "dask.db", workers=2, progress=False, batch=True)
    assert s.done == len(cfgs) and s.failed == 0 and "LocalCluster" in s.mode
    _same(_content(tmp_path / "alone.db"), _content(tmp_path / "dask.db"))


def test_batch_threads_are_the_share_of_the_runs_it_stands_for(monkeypatch):
    import os
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert batch.batch_threads(2, 1, "serial") == 2
    assert batch.batch_threads(8, 1, "serial") == 4          # at most the cores
    assert batch.batch_threads(3, 2, "serial") == 4
    assert batch.batch_threads(4, 1, "local") == 1           # a cluster's worker keeps its share
    assert batch.batch_threads(4, 0, "serial") == 0          # thread settings left alone
