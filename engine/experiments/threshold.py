"""The smallest trainable width per depth and init, found by bisection over a width grid
(one sweep per bisection round), with its linear fit."""
from __future__ import annotations

import numpy as np

from ..sweep import dask_client, grid
from . import plotting
from .common import (HXP_DATA, INITS, TRAINABLE_LOG10, cell_value, fit_line, fmt_line, inits_of, size_of,
                     sweep_rows)

# Grids: depths, the width grid bisected, seeds, step budget.
THRESHOLD_GRIDS = {
    "tiny": {"depths": [2, 4, 8], "widths": [8, 16, 32, 64, 128], "seeds": [0], "steps": 300},
    "quick": {"depths": [4, 8, 16, 32], "widths": [8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256],
              "seeds": [0], "steps": 1000},
    "default": {"depths": [4, 8, 16, 32, 48, 64], "widths": [8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256],
                "seeds": [0, 1], "steps": 1000},
    "full": {"depths": [4, 8, 16, 32, 64, 128, 256, 512],
             "widths": [8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024],
             "seeds": [0, 1, 2, 3, 4], "steps": 1000},
}


def threshold_configs(inits=INITS, depths=None, widths=None, seeds=None, steps=None, size="default"):
    """Probes of the bisection: HXP data, the theorem's lr, stopping at 1e-12 ||Y||_F^2; with the
    defaults every cell of THRESHOLD_GRIDS[size] (the most the bisection may probe)."""
    g = THRESHOLD_GRIDS[size]
    return grid(**HXP_DATA, init=list(inits), depth=g["depths"] if depths is None else list(depths),
                width=g["widths"] if widths is None else list(widths), seed=g["seeds"] if seeds is None else seeds,
                steps=g["steps"] if steps is None else steps, tol=1e-12)


def width_threshold(db=None, *, full=False, size=None, depths=None, widths=None, seeds=None, steps=None,
                    inits=INITS, threshold=TRAINABLE_LOG10, workers=0, scheduler=None, backend="auto",
                    progress=False, plot=None, client=None, threads_per_run=1):
    """For each depth and init, the smallest width on a grid at which GD is trainable
    (median log10 relative excess over seeds <= ``threshold`` after ``steps`` steps; HXP data,
    theorem lr), found by bisection over the sorted width grid (assumes trainability is
    monotone in width). Every bisection round is one sweep into ``db``.

    Returns the rows of all runs made; ``threshold_table(rows)`` gives the thresholds.
    """
    if client is None:
        with dask_client(workers, scheduler) as cl:
            return width_threshold(db, full=full, size=size, depths=depths, widths=widths, seeds=seeds,
                                   steps=steps, inits=inits, threshold=threshold, backend=backend,
                                   progress=progress, plot=plot, client=cl, threads_per_run=threads_per_run)
    g = THRESHOLD_GRIDS[size_of(full, size)]
    depths = g["depths"] if depths is None else list(depths)
    widths = sorted(g["widths"] if widths is None else widths)
    seeds = g["seeds"] if seeds is None else list(seeds)
    steps = g["steps"] if steps is None else int(steps)
    # per (init, depth): bracket [lo, hi] of indices into widths; hi = len -> none trainable yet
    state = {(i, d): [0, len(widths)] for i in inits for d in depths}
    all_rows = {}

    # first probe the widest width, then bisect
    probes = {(i, d): len(widths) - 1 for i, d in state}
    while probes:
        cfgs = []
        for (init, d), j in probes.items():
            cfgs += threshold_configs([init], [d], [widths[j]], seeds, steps)
        for r in sweep_rows("width_threshold", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run):
            all_rows[r["key"]] = r
        nxt = {}
        for (init, d), j in probes.items():
            cell = [r for r in all_rows.values() if (r["init"], r["depth"], r["width"]) == (init, d, widths[j])]
            lo, hi = state[(init, d)]
            if cell_value(cell) <= threshold:
                hi = j
            else:
                lo = j + 1
            state[(init, d)] = [lo, hi]
            if lo < hi and hi < len(widths):
                nxt[(init, d)] = (lo + hi) // 2
        probes = nxt
    rows = list(all_rows.values())
    if plot:
        plot_width_threshold(rows, plot, threshold, widths)
    return rows


def threshold_table(rows, threshold=TRAINABLE_LOG10):
    """{init: [(depth, smallest trainable width probed or nan)]} from width_threshold's rows."""
    out = {}
    for init in inits_of(rows):
        res = []
        for d in sorted({r["depth"] for r in rows if r["init"] == init}):
            cells = {}
            for r in rows:
                if r["init"] == init and r["depth"] == d:
                    cells.setdefault(r["width"], []).append(r)
            ok = [w for w in cells if cell_value(cells[w]) <= threshold]
            res.append((d, float(min(ok)) if ok else float("nan")))
        if res:
            out[init] = res
    return out


def plot_width_threshold(rows, path, threshold=TRAINABLE_LOG10, widths=None):
    """Smallest trainable width vs depth per init with its fit; depths where none is trainable
    drawn at the widest width probed (not in the fit)."""
    plt = plotting.pyplot()
    tab = threshold_table(rows, threshold)
    fig, ax = plt.subplots(figsize=(6.0, 4.3))
    wmax = max((r["width"] for r in rows), default=1)
    for init, pts in tab.items():
        d = np.array([p[0] for p in pts], float)
        w = np.array([p[1] for p in pts], float)
        slope, icpt = fit_line(d, w)
        ax.plot(d[np.isfinite(w)], w[np.isfinite(w)], "o-", color=plotting.color(init),
                label=f"{init}: {fmt_line(slope, icpt, int(np.isfinite(w).sum()))}")
        cens = ~np.isfinite(w)
        if cens.any():
            ax.plot(d[cens], np.full(cens.sum(), wmax), "^", color=plotting.color(init), mfc="none",
                    label=f"{init}: none trainable up to width {wmax} (not in the fit)")
    ax.set_xlabel("depth L")
    ax.set_ylabel("smallest trainable width")
    ax.set_title(f"Width threshold (HXP data, lr = theorem's, trainable: log10 rel. loss <= {threshold:g})",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return plotting.save(fig, path)
