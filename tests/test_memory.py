"""Memory guard: estimates, the available-memory reading, and refusal before allocation."""
import numpy as np
import pytest

import engine
from engine import memory


def test_estimate_counts_weights_exactly_and_scales():
    w = [1024] + [1000] * 699 + [10]          # DESIGN.md: ~5.6 GB of float64 weights
    parts = memory.breakdown(w)
    n_weights = 1024 * 1000 + 698 * 1000 * 1000 + 1000 * 10
    assert parts["weights"] == 8 * n_weights
    assert 5.5e9 < parts["weights"] < 5.7e9
    total = memory.estimate_bytes(w)
    assert total == sum(parts.values()) and total > parts["weights"]
    # float32 halves everything but the float64 init temporaries
    t32 = memory.estimate_bytes(w, "float32")
    assert t32 - parts["transient"] == (total - parts["transient"]) // 2
    # an ensemble of K multiplies the per-member parts
    p3 = memory.breakdown(w, ensemble=3)
    assert p3["weights"] == 3 * parts["weights"] and p3["transient"] == parts["transient"]


def test_estimate_bounds_what_a_trained_network_holds():
    prob = engine.Problem(*engine.synthetic(20, 30, 3, seed=0))
    net = engine.init.gaussian([20, 16, 16, 16, 3], seed=0)
    engine.train(net, prob, lr=1e-3, steps=2, backend="numpy")
    ws = net._ws[1]
    held = net.nbytes() + sum(a.nbytes for a in ws.scratch.values()) + sum(a.nbytes for a in ws.chain)
    assert held <= memory.estimate_bytes(net.widths)


@pytest.mark.parametrize("bad,name", [([3], "widths"), ([3, 0], r"widths\[1\]")])
def test_estimate_validates(bad, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        memory.estimate_bytes(bad)
    with pytest.raises(ValueError, match="^dtype"):
        memory.estimate_bytes([3, 2], dtype="int32")
    with pytest.raises(ValueError, match="^ensemble"):
        memory.estimate_bytes([3, 2], ensemble=0)


def test_available_bytes_reads_the_system(monkeypatch):
    monkeypatch.delenv(memory.ENV_LIMIT, raising=False)
    avail = memory.available_bytes()
    assert avail is None or avail > 0
    monkeypatch.setenv(memory.ENV_LIMIT, "512M")
    assert memory.available_bytes() == 512 * 1024 ** 2
    monkeypatch.setenv(memory.ENV_LIMIT, "1.5G")
    assert memory.available_bytes() == int(1.5 * 1024 ** 3)
    monkeypatch.setenv(memory.ENV_LIMIT, "off")
    assert memory.available_bytes() is None
    monkeypatch.setenv(memory.ENV_LIMIT, "lots")
    with pytest.raises(ValueError, match=memory.ENV_LIMIT):
        memory.available_bytes()


@pytest.mark.parametrize("init", [engine.init.gaussian, engine.init.orthogonal])
def test_init_refuses_before_allocating(init, monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "1M")
    with pytest.raises(memory.InsufficientMemory) as info:
        init([1024] + [1000] * 50 + [10], seed=0)     # 400 MB: refused at once, nothing drawn
    err = info.value
    assert isinstance(err, MemoryError)
    msg = str(err)
    assert msg.startswith("widths:") and "float32" in msg and "1 MiB" in msg
    assert err.needed == memory.estimate_bytes([1024] + [1000] * 50 + [10]) and err.available == 1024 ** 2
    # small networks still fit under the same limit
    init([8, 8, 2], seed=0)
    monkeypatch.setenv(memory.ENV_LIMIT, "off")
    init([8, 8, 2], seed=0)


def test_from_weights_is_guarded(monkeypatch):
    Ws = [np.ones((40, 30)), np.ones((2, 40))]
    monkeypatch.setenv(memory.ENV_LIMIT, "100")
    with pytest.raises(memory.InsufficientMemory, match="^widths"):
        engine.init.from_weights(Ws, alpha=1.0)


def test_check_limit_keyword_and_float32_hint():
    w = [100, 100, 100, 10]
    need = memory.estimate_bytes(w)
    assert memory.check(w, limit=need) == need
    need32 = memory.estimate_bytes(w, "float32")
    with pytest.raises(memory.InsufficientMemory, match=r"dtype='float32' \(needs about"):
        memory.check(w, limit=need32)
    with pytest.raises(memory.InsufficientMemory, match="still too much"):
        memory.check(w, limit=10)
    with pytest.raises(memory.InsufficientMemory, match="smaller ensemble"):
        memory.check(w, ensemble=4, limit=need)


AVAILABLE = [nm for nm, (ok, _) in engine.kernels.availability().items() if ok]


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("widths", [[50, 40, 5], [50, 64, 64, 64, 5], [50, 8, 100, 3, 5], [50, 5],
                                    [50, 200, 200, 5]])
def test_estimate_bounds_measured_peak(widths, dtype, backend):
    """tracemalloc's peak over init + bind + 3 steps stays below the estimate (numpy-allocated
    memory; warm-up first so caches and compiled code are not counted)."""
    import tracemalloc
    prob = engine.Problem(*engine.synthetic(50, 30, 5, seed=0))
    engine.train(engine.init.gaussian(widths, seed=0, dtype=dtype), prob, lr=1e-4, steps=2, backend=backend)
    tracemalloc.start()
    try:
        net = engine.init.orthogonal(widths, seed=0, dtype=dtype)
        engine.train(net, prob, lr=1e-4, steps=3, backend=backend)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= memory.estimate_bytes(widths, dtype)
