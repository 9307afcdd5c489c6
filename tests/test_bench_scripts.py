"""Smoke tests of the benchmark scripts (bench/): they run and compute the
same thing as the engine. No timings are asserted (benchmarks measure, tests assert)."""
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import common  # noqa: E402
import compare  # noqa: E402

TINY = (16, 8, 3, 8, 4)
# orthogonality of the deep benchmark nets holds to QR rounding
ORTHO_ATOL = 1e-12


def _fake_rates(monkeypatch):
    monkeypatch.setenv("ENGINE_BENCH_BANDWIDTH", "1e10")      # skip the 256 MiB measurement
    monkeypatch.setenv("ENGINE_BENCH_GEMM_F64", "1e10")
    monkeypatch.setenv("ENGINE_BENCH_GEMM_F32", "2e10")
    for fn in (common.bandwidth, common.gemm_rate):
        fn.cache_clear()


def test_compare_check_and_quick_table(capsys, monkeypatch):
    _fake_rates(monkeypatch)
    baselines = ("numpy-backprop", "numpy-chain")
    assert compare.check(TINY, verbose=False, baselines=baselines) <= compare.CHECK_RTOL
    assert compare.main(["--quick", "--repeat", "2", "--baselines", *baselines,
                         "--configs", ",".join(map(str, TINY))]) == 0
    text = capsys.readouterr().out
    head = [ln for ln in text.splitlines() if ln.startswith("| (d_in, n, d_out, m, L)")]
    rows = [ln for ln in text.splitlines() if ln.startswith("| (16,8,3,8,4)")]
    assert len(rows) == 1 and len(head) == 1
    cols = [c.strip() for c in head[0].strip("|").split("|")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == len(cols)
    for name in ("t_limit", "auto / t_limit", "gd_step loop / train", "auto / best",
                 "numpy-chain", "numpy-chain / auto", "numpy-chain / gd_step loop"):
        assert name in cols
    assert float(cells[cols.index("t_limit")]) == pytest.approx(
        1e3 * common.limit_seconds(*TINY), rel=1e-2)
    assert "DGEMM 20 GFLOP/s" in text
    for fn in (common.bandwidth, common.gemm_rate):
        fn.cache_clear()


@pytest.mark.parametrize("cfg", [TINY, (12, 30, 4, 9, 1), (12, 30, 4, 9, 2), (6, 40, 3, 5, 3)])
def test_numpy_chain_baseline_equals_the_oracle(cfg):
    """The numpy-chain baseline computes the engine's step (loss and every layer's
    update), depth 1 and 2 included; ``compare.check`` covers it at TINY above."""
    prob, net, lr, c, beta, A0 = compare._setup(cfg)
    impl = compare.NumpyChain([a.copy() for a in A0], c, beta, prob.X, prob.Y)
    import engine
    for _ in range(3):
        loss = impl.step()
        assert loss == pytest.approx(engine.gd_step(net, prob, lr, backend="numpy"), rel=1e-12)
    for a, b in zip(impl.weights(), net.normalized()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bench_network_is_orthogonal_and_stable():
    net = common.network(16, 3, 8, common.HAAR_MAX_DEPTH + 4, seed=0)
    for a in net._layers[1:-1]:
        np.testing.assert_allclose(a @ a.T, np.eye(8), atol=ORTHO_ATOL)
    st = common.stepper(16, 8, 3, 8, common.HAAR_MAX_DEPTH + 4)
    ex0, ok = st.step()
    for _ in range(20):
        ex, ok = st.step()
        assert ok
    assert ex < ex0


def test_asv_suite_setup_skips_and_steps(monkeypatch):
    import bench_step
    suite = bench_step.StepTime()
    monkeypatch.setattr(common, "MAX_WEIGHT_BYTES", 1000)
    with pytest.raises(NotImplementedError, match="weights need"):
        suite.setup("1024-16-10-64-32", "numpy")              # > MAX_WEIGHT_BYTES: skipped
    monkeypatch.undo()
    suite.setup("32-8-4-8-8", "numpy")
    suite.time_step("32-8-4-8-8", "numpy")


def test_asv_throughput_cache(monkeypatch):
    """The shared measurement gives every track its figure, and skips say why."""
    import bench_step
    monkeypatch.setenv("ENGINE_BENCH_BANDWIDTH", "1e10")
    monkeypatch.setenv("ENGINE_BENCH_GEMM_F64", "1e10")
    for fn in (common.bandwidth, common.gemm_rate):
        fn.cache_clear()
    monkeypatch.setattr(bench_step, "BACKENDS", ["numpy", "nonexistent"])
    monkeypatch.setattr(bench_step, "REPEAT", 2)
    monkeypatch.setattr(bench_step, "MIN_TIME", 0.0)
    cache = bench_step.measure_all(["16-8-3-8-4"], "float64")
    suite = bench_step.StepThroughput()
    suite.setup(cache, "16-8-3-8-4", "numpy")
    with pytest.raises(NotImplementedError, match="unavailable"):
        suite.setup(cache, "16-8-3-8-4", "nonexistent")
    limit = common.limit_seconds(16, 8, 3, 8, 4)
    assert limit == max(2 * common.weight_bytes(16, 8, 3, 8, 4) / 1e10,
                        common.fma_min(16, 8, 3, 8, 4) / 1e10)
    assert suite.track_fraction_of_limit(cache, "16-8-3-8-4", "numpy") == pytest.approx(
        limit / cache["16-8-3-8-4", "numpy"])
    assert suite.track_steps_per_second(cache, "16-8-3-8-4", "numpy") > 0
    for fn in (common.bandwidth, common.gemm_rate):
        fn.cache_clear()


def test_fma_min_counts_the_exact_step():
    # r = min(d_in, n) = 8: layer widths [8, 8, 8, 8, 3]; per weight d_out + 2 min(r, d_out) = 9
    assert common.fma_min(16, 8, 3, 8, 4) == (8 * 8 * 3 + 3 * 8) * 9


def test_under_load_table(capsys, monkeypatch):
    """--under-load runs auto beside a spinning process and prints one row per config."""
    _fake_rates(monkeypatch)
    rows = compare.under_load([TINY], seconds=0.2, repeat=2, min_time=0.0)
    assert len(rows) == 1 and rows[0][7] >= 5
    text = capsys.readouterr().out
    assert any(ln.startswith("| (16,8,3,8,4) |") for ln in text.splitlines())
