"""Check engine.cost's predictions against measured run times (issue 15 item 2).

    python bench/cost_model.py                 # default sample, ~1 minute on 2 cores
    python bench/cost_model.py --quick         # a smaller sample, ~15 s
    python bench/cost_model.py --check         # exit 1 if a cell or the total is off by more than 25%
    python bench/cost_model.py --dtype float32 # the same sample in float32 (its own calibration)
    python bench/cost_model.py --published     # calibrated on the published-range phase diagram, a few
                                               # of its largest cells run for a few steps (~2 min)

Calibrates a CostModel on the sample's grid exactly as a sweep does (run_config on truncated
copies of its shape classes), then runs every sampled cell serially in this process with the
sweep's thread limit (one BLAS/Numba thread) and compares the measured seconds of each call
with the prediction. Cells run their whole budget (tol = 0, lr = 0.1 x the theorem's: nothing
stops early); a cell that diverges anyway is listed and left out. Cells predicted under
``--min-seconds`` are dominated by per-call noise and only count in the total.
This is a benchmark (it measures); the test suite asserts no timing.
"""
from __future__ import annotations

import argparse
import sys
import time


def sample(quick: bool, dtype: str = "float64"):
    from engine.sweep import grid
    widths = [10, 40, 160] if quick else [10, 20, 40, 80, 160, 320]
    depths = [4, 16] if quick else [4, 16, 64]
    return grid(d_in=1024, n=16, d_out=10, init=["gaussian", "orthogonal"], width=widths, depth=depths,
                seed=0, steps=100 if quick else 200, tol=0, lr_scale=0.1, dtype=dtype)


# Cells of the phase diagram's published grid (engine.experiments.PHASE_GRIDS["published"]), cut to a
# few steps so the check takes minutes: the widest nets, where the weights stream from memory.
PUBLISHED_CELLS = [("gaussian", 1000, 50, 20), ("gaussian", 1000, 200, 6), ("orthogonal", 640, 100, 20),
                   ("gaussian", 320, 700, 20)]


def published(dtype):
    """(calibration configs, cells to run): the published grid as a sweep calibrates on it, and
    PUBLISHED_CELLS of it with their steps cut."""
    from engine.experiments import phase_configs
    from engine.runs import normalize_config
    grid = phase_configs(size="published", dtype=dtype)
    base = dict(grid[0])
    cells = [normalize_config(dict(base, init=i, width=w, depth=d, steps=n, tol=0, lr_scale=0.1))
             for i, w, d, n in PUBLISHED_CELLS]
    return grid, cells


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 when a prediction is off by more than 25%%")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--min-seconds", type=float, default=0.1)
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--published", action="store_true",
                    help="calibrate on the published-range phase diagram, run a few of its largest cells")
    ap.add_argument("--sweep", type=int, default=0, metavar="WORKERS",
                    help="instead: the sample as one sweep on a LocalCluster of WORKERS processes, "
                         "predicted wall time (the estimate line) vs measured")
    a = ap.parse_args(argv)
    if a.sweep:
        return sweep_check(a)
    import warnings
    from engine import cost
    from engine.runs import execute, run_config
    calib, cfgs = published(a.dtype) if a.published else (sample(a.quick, a.dtype),) * 2
    model = cost.CostModel(a.backend, threads_per_run=1).calibrate(calib)
    print(f"{len(cfgs)} cells, {a.dtype}, backend {a.backend}, 1 thread per run; calibration {model.seconds:.1f} s "
          f"({len(model.steps)} shape classes timed)")
    print("| init | width | depth | steps | predicted s | measured s | measured / predicted |")
    print("|---|---|---|---|---|---|---|")
    worst, tot_p, tot_m, skipped = 0.0, 0.0, 0.0, []
    for c in cfgs:
        pred = model.run_seconds(c) - cost.TASK_OVERHEAD   # serial: no Dask task overhead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            res = execute(run_config, c, a.backend, 1)["result"]
            meas = time.perf_counter() - t0
        if res.get("status") != "ok" or res.get("steps_run") != c["steps"]:
            skipped.append((c["init"], c["width"], c["depth"], res.get("status")))
            continue
        ratio = meas / pred
        tot_p += pred
        tot_m += meas
        counted = pred >= a.min_seconds
        if counted:
            worst = max(worst, abs(ratio - 1.0))
        print(f"| {c['init']} | {c['width']} | {c['depth']} | {c['steps']} | {pred:.3f} | {meas:.3f} | "
              f"{ratio:.2f}{'' if counted else ' (below --min-seconds)'} |")
    print(f"total: predicted {tot_p:.1f} s, measured {tot_m:.1f} s, ratio {tot_m / tot_p:.2f}; worst cell "
          f"(predicted >= {a.min_seconds} s) off by {worst:.0%}")
    if skipped:
        print(f"left out (did not run the whole budget): {skipped}")
    ok = worst <= 0.25 and abs(tot_m / tot_p - 1.0) <= 0.25
    print("within 25%" if ok else "NOT within 25%")
    return 0 if ok or not a.check else 1


def sweep_check(a) -> int:
    """The whole sample through run_sweep on ``a.sweep`` worker processes: the estimate it prints
    first against the sweep's measured wall time (cluster start included in both)."""
    import os
    import tempfile
    from engine.sweep import run_sweep
    cfgs = sample(a.quick, a.dtype)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = run_sweep(cfgs, os.path.join(d, "c.db"), workers=a.sweep, backend=a.backend, progress=False,
                      estimate=True)
        wall = time.perf_counter() - t0 - s.estimate.calibration
    ratio = wall / s.estimate.wall
    print(f"sweep of {s.total} runs on {a.sweep} workers: predicted {s.estimate.wall:.1f} s, measured "
          f"{wall:.1f} s (calibration excluded), ratio {ratio:.2f}")
    ok = abs(ratio - 1.0) <= 0.25
    print("within 25%" if ok else "NOT within 25%")
    return 0 if ok or not a.check else 1


if __name__ == "__main__":
    sys.exit(main())
