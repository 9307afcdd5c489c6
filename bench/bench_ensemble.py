"""asv suites: ensembles of K same-shape networks in one call.

    time_ensemble_train        ``engine.ensemble.train(ens, steps=STEPS)`` (backend auto)
    time_sequential_train      K separate ``engine.train(net, steps=STEPS)`` calls (backend auto)
    track_speedup              time_sequential / time_ensemble (target >= 1.7 at K = 16, m = 32, L = 32)
    track_c_members_speedup    K sequential C-kernel steps / one members-parallel C step
                               (``cblas_backend.Members``)

Data: d_in = 1024, n = 16, d_out = 10 (HXP); orthogonal members at the
theorem learning rate. Networks continue training from call to call.
"""
import os
import time

import numpy as np

try:
    from . import common
except ImportError:  # run as a script
    import common

STEPS = 50
D_IN, N, D_OUT = 1024, 16, 10


def _setup_members(K, m, L):
    import engine
    from engine.ensemble import Ensemble
    prob = common.problem(D_IN, N, D_OUT)
    nets = [common.network(D_IN, D_OUT, m, L, seed=s) for s in range(K)]
    ens = Ensemble.from_networks(nets)
    lr = engine.theory.lr_bound("orthogonal", prob, L)
    return prob, nets, ens, lr


def run_ensemble(ens, prob, lr, steps=STEPS, backend="auto"):
    from engine.ensemble import train
    return train(ens, prob, lr=lr, steps=steps, backend=backend)


def run_sequential(nets, prob, lr, steps=STEPS, backend="auto"):
    import engine
    return [engine.train(n, prob, lr=lr, steps=steps, backend=backend) for n in nets]


def speedup(K=16, m=32, L=32, steps=STEPS, repeat=5, backend="auto"):
    """(seconds per ensemble call, seconds per K sequential calls, ratio), medians of ``repeat``."""
    prob, nets, ens, lr = _setup_members(K, m, L)
    run_ensemble(ens, prob, lr, 1, backend)            # JIT warm-up, binding
    run_sequential(nets, prob, lr, 1, backend)
    te, ts = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run_ensemble(ens, prob, lr, steps, backend)
        te.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_sequential(nets, prob, lr, steps, backend)
        ts.append(time.perf_counter() - t0)
    e, s = float(np.median(te)), float(np.median(ts))
    return e, s, s / e


def c_members_speedup(K=16, m=32, L=32, steps=STEPS, repeat=5):
    """The C kernel's members-parallel step (``cblas_backend.Members``: one C
    call steps all K networks, members spread over the threads) against K
    single-network C steppers called one after the other (what K separate
    ``train`` calls run). Returns (seconds per step of all K, members;
    sequential; ratio), medians of ``repeat`` blocks of ``steps`` steps."""
    from engine.kernels import cblas_backend as cb
    from engine.stepper import Stepper
    if not cb.available:
        raise NotImplementedError(cb.reason)
    prob, nets, ens, lr = _setup_members(K, m, L)
    seq = [Stepper(n.copy(), prob, lr, "cblas") for n in nets]
    for n in nets:
        n._bind(prob)
    red = prob.reduced(nets[0].dtype)
    cs = [lr / np.exp(2.0 * n._log_s) for n in nets]
    betas = [n.beta for n in nets]
    layers = [n._layers for n in nets]
    ms = cb.members(layers, prob.rank, prob.d_out, nets[0].dtype)
    ms.step(layers, cs, betas, red.s, red.targets)
    for st in seq:
        st.step()
    te, ts = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(steps):
            ms.step(layers, cs, betas, red.s, red.targets)
        te.append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        for _ in range(steps):
            for st in seq:
                st.step()
        ts.append((time.perf_counter() - t0) / steps)
    e, s = float(np.median(te)), float(np.median(ts))
    return e, s, s / e


class EnsembleTrain:
    # width 128 only in the full grid: its 16-member ensemble takes seconds a call
    params = ([4, 16], [32, 128] if os.environ.get("ENGINE_ASV_GRID") == "full" else [32], [32])
    param_names = ["members", "width", "depth"]
    timeout = 600

    def setup(self, K, m, L):
        self.prob, self.nets, self.ens, self.lr = _setup_members(K, m, L)
        run_ensemble(self.ens, self.prob, self.lr, 1)
        run_sequential(self.nets, self.prob, self.lr, 1)

    def time_ensemble_train(self, K, m, L):
        run_ensemble(self.ens, self.prob, self.lr)

    def time_sequential_train(self, K, m, L):
        run_sequential(self.nets, self.prob, self.lr)


class EnsembleSpeedup:
    params = ([16], [32], [32])
    param_names = ["members", "width", "depth"]
    timeout = 600

    def track_speedup(self, K, m, L):
        return speedup(K, m, L, repeat=3)[2]

    track_speedup.unit = "x (sequential time / ensemble time)"

    def track_c_members_speedup(self, K, m, L):
        return c_members_speedup(K, m, L, repeat=3)[2]

    track_c_members_speedup.unit = "x (K sequential C steps / one members-parallel C step)"


if __name__ == "__main__":
    e, s, r = speedup()
    print(f"16 members (m=32, L=32), {STEPS} steps: ensemble {1e3 * e:.1f} ms, "
          f"16 sequential train() calls {1e3 * s:.1f} ms, speedup {r:.2f}x")
    e, s, r = c_members_speedup()
    print(f"16 members (m=32, L=32), C kernel: members-parallel {1e3 * e:.3f} ms per step of all 16, "
          f"16 sequential C steps {1e3 * s:.3f} ms, speedup {r:.2f}x")
