"""float32's floor of the excess loss on HXP's data (issue 15 item 4): where a converged float32
run's l - OPT stops decreasing, relative to ||Y||_F^2 (the unit of the sweeps' stop rule).

    python bench/float32_floor.py              # ~1 minute on one core
    python bench/float32_floor.py --steps 3000 gaussian:226:8 orthogonal:64:700

Each cell (init:width:depth) runs in float32 at the theorem's rate with no tolerance (tol = 0)
for ``--steps`` steps, one BLAS thread; printed: the excess at the end and the largest and
smallest excess over the last ``--window`` of the steps, all / ||Y||_F^2, and float64's final
excess of the same cell for comparison. A run whose window's largest value is far above its
smallest is still converging (its floor is below the window's max). This measures; the
phase diagram's float32 stop tolerance (engine.experiments.common.STOP_TOL) is chosen from it.
"""
from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

CELLS = ["gaussian:1:1", "gaussian:226:8", "orthogonal:226:8", "orthogonal:226:128", "orthogonal:64:300",
         "orthogonal:64:700", "orthogonal:1000:10"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="*", default=CELLS, help="init:width:depth (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--window", type=float, default=0.2, help="last fraction of the steps (default 0.2)")
    a = ap.parse_args(argv)
    from engine.kernels.threads import limit
    from engine.runs import normalize_config, problem_of, run_config
    print(f"| init | width | depth | float32 final | window max | window min | float64 final |  "
          f"(l - OPT) / ||Y||_F^2 after {a.steps} steps, window = last {a.window:.0%}")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    with limit(blas=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cell in a.cells:
            init, w, d = cell.split(":")
            out = {}
            for dt in ("float32", "float64"):
                cfg = normalize_config(dict(init=init, width=int(w), depth=int(d), steps=a.steps, tol=0, dtype=dt))
                ysq = problem_of(cfg).y_norm_sq
                res = run_config(cfg)
                t, e = (np.asarray(x, float) for x in res["curve"])
                late = e[t >= t[-1] * (1 - a.window)] / ysq
                out[dt] = (res["result"]["final_excess"] / ysq, late.max(), late.min(), res["result"]["status"])
            f32, f64 = out["float32"], out["float64"]
            worst = max(worst, f32[0])
            print(f"| {init} | {w} | {d} | {f32[0]:.2e} | {f32[1]:.2e} | {f32[2]:.2e} | {f64[0]:.2e} |"
                  + ("" if f32[3] == "ok" else f" float32 {f32[3]}"), flush=True)
    print(f"largest float32 final excess: {worst:.2e} ||Y||_F^2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
