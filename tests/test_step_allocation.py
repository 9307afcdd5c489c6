"""A GD step allocates nothing proportional to L*m^2 (issue 2, docs/design.md).

numpy reports its buffers to tracemalloc, so the traced peak during a step
bounds what the step allocates. Weights are L*m^2*8 bytes; the step may
allocate O(m^2) (a few layer-sized temporaries) and O(L*m*d_out) chains.
"""
import tracemalloc

import numpy as np
import pytest

import engine


@pytest.mark.parametrize("d_in,n,d_out", [(64, 8, 4), (16, 200, 4)])   # P form and T form
def test_step_allocates_no_L_m2(d_in, n, d_out):
    m, L = 128, 40
    prob = engine.Problem(*engine.synthetic(d_in, n, d_out, seed=0))
    net = engine.init.orthogonal([d_in] + [m] * (L - 1) + [d_out], seed=0)
    lr = engine.theory.lr_bound("orthogonal", prob, L)
    engine.gd_step(net, prob, lr, backend="numpy")      # bind + workspace (allocated once)
    weight_bytes = L * m * m * 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(3):
            engine.gd_step(net, prob, lr, backend="numpy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 4 layer-sized temporaries plus small chains: far below the 40 layers of weights
    assert peak < 4 * m * m * 8 + 64 * 1024, (peak, weight_bytes)
    assert peak < weight_bytes / 8
