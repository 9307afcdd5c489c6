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


def test_compare_check_and_quick_table(capsys, monkeypatch):
    monkeypatch.setenv("ENGINE_BENCH_BANDWIDTH", "1e10")      # skip the 256 MiB measurement
    common.bandwidth.cache_clear()
    assert compare.check(TINY, verbose=False, baselines=("numpy-backprop",)) <= compare.CHECK_RTOL
    assert compare.main(["--quick", "--repeat", "2", "--baselines", "numpy-backprop",
                         "--configs", ",".join(map(str, TINY))]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("| (16,8,3,8,4)")]
    assert len(rows) == 1 and "numpy-backprop" in text and "floor" in text
    common.bandwidth.cache_clear()


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


def test_asv_suite_setup_skips_and_steps():
    import bench_step
    suite = bench_step.StepTime()
    with pytest.raises(NotImplementedError):
        suite.setup(1024, 512, 16, "numpy")                    # > MAX_WEIGHT_BYTES: skipped
    suite.setup(32, 8, 16, "numpy")
    suite.time_step(32, 8, 16, "numpy")
