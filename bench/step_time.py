"""Median ms per GD step of one backend at given (d_in, n, d_out, m, L) configs.

    python bench/step_time.py --backend numpy 1024,16,10,256,64 32,8192,4,256,32

Times the bound stepper (what ``engine.train`` runs each step), after one
warm-up step, over ``--repeat`` steps of an orthogonal network at its theorem
learning rate, float64 unless ``--dtype float32``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import engine
from engine.stepper import Stepper


def measure_config(d_in, n, d_out, m, L, backend="numpy", repeat=30, dtype="float64"):
    X, Y = engine.synthetic(d_in, n, d_out, seed=0)
    prob = engine.Problem(X, Y)
    net = engine.init.orthogonal([d_in] + [m] * (L - 1) + [d_out], seed=0, dtype=dtype)
    # 1e-2 x the theorem's rate: cost does not depend on lr, and repeated steps
    # stay finite even outside HXP's width condition (see bench/common.py)
    lr = 1e-2 * engine.theory.lr_bound("orthogonal", prob, L)
    st = Stepper(net, prob, lr, backend)
    st.step()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ex, applied = st.step()
        ts.append(time.perf_counter() - t0)
        if not applied:
            raise RuntimeError(f"step not applied (excess {ex}): would time a no-op")
    return float(np.median(ts)), float(np.min(ts)), sum(a.nbytes for a in net._layers)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="d_in,n,d_out,m,L")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--dtype", default="float64")
    a = p.parse_args(argv)
    for c in a.configs:
        d_in, n, d_out, m, L = (int(v) for v in c.split(","))
        med, mn, nb = measure_config(d_in, n, d_out, m, L, a.backend, a.repeat, a.dtype)
        print(f"{a.backend:6s} {a.dtype} (d_in,n,d_out,m,L)=({c}): median {1e3 * med:.2f} ms/step, "
              f"min {1e3 * mn:.2f} ms, trained weights {nb / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
