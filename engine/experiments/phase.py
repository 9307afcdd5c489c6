"""HXP's phase diagram: log10 relative excess after a budget of GD steps over (width, depth),
per init, with the trainability contour (the smallest width from which every wider cell is
trainable) and its linear fit."""
from __future__ import annotations

import numpy as np

from ..runs import dtype_of
from ..sweep import grid
from . import plotting
from .common import (HXP_DATA, INITS, STOP_TOL, TRAINABLE_LOG10, cell_value, drawn, fit_line, fmt_line, inits_of,
                     size_of, sweep_rows, tol_level)

# Grids. "default" finishes in minutes on 2 cores, "full" is the published grid
# (HXP: widths 10..1000, depths 1..700), "quick" is the README demo's; "published" spans
# the published range with 8 x 8 cells and 2 seeds (issue 15 item 6).
PHASE_GRIDS = {
    "tiny": {"widths": [10, 40, 80], "depths": [1, 4, 8], "seeds": [0], "steps": 200},
    "quick": {"widths": [10, 14, 20, 28, 40, 56, 80, 113, 160], "depths": [1, 8, 16, 32, 64, 96],
              "seeds": [0], "steps": 1000},
    "default": {"widths": [10, 14, 20, 28, 40, 56, 80, 113, 160, 226],
                "depths": [1, 8, 16, 24, 32, 48, 64, 96, 128], "seeds": [0, 1], "steps": 1000},
    "full": {"widths": [10, 14, 20, 28, 40, 56, 80, 113, 160, 226, 320, 450, 640, 1000],
             "depths": [1, 10, 25, 50, 100, 150, 200, 300, 400, 500, 600, 700], "seeds": [0, 1, 2],
             "steps": 1000},
    "published": {"widths": [10, 20, 40, 80, 160, 320, 640, 1000], "depths": [1, 10, 50, 100, 200, 300, 500, 700],
                  "seeds": [0, 1], "steps": 1000},
}
# The phase diagram's learning rates: the init's theorem rate (DH Thm 4.1 / HXP Thm 3.1) or
# "stable", 1 / lambda_max(P(0)) of each run's own network (engine.train.stable_lr; issue 15
# item 5: separates "the theorem's rate is unstable here" from "GD at a stable rate does not train").
PHASE_LRS = ("theory", "stable")


def phase_name(lr="theory", dtype="float64"):
    """The experiment name a phase-diagram variant's runs are stored under in a results database
    (and its figure's default name): "phase_diagram", "phase_diagram_stable",
    "phase_diagram_float32", "phase_diagram_stable_float32"; the variants stay apart in one file."""
    return "phase_diagram" + ("_stable" if lr == "stable" else "") + ("" if dtype == "float64" else f"_{dtype}")


def _check_variant(lr, dtype, size):
    if lr not in PHASE_LRS:
        raise ValueError(f"lr: the phase diagram runs at one of {list(PHASE_LRS)}, got {lr!r}")
    if dtype not in STOP_TOL:
        raise ValueError(f"dtype: the phase diagram runs in one of {sorted(STOP_TOL)}, got {dtype!r}")
    if size not in PHASE_GRIDS:
        raise ValueError(f"size: the phase diagram's grids are {list(PHASE_GRIDS)}, got {size!r}")


def phase_configs(widths=None, depths=None, seeds=None, steps=None, inits=INITS, size="default",
                  data_seed=0, tol=None, lr="theory", dtype="float64"):
    """The runs: HXP's data, widths [1024, m, ..., m, 10] over the grid's (width, depth), at
    learning rate ``lr`` (PHASE_LRS) in ``dtype``, stopping at l - OPT <= tol ||Y||_F^2 (default
    STOP_TOL[dtype]: 1e-12, float32 1e-9); PHASE_GRIDS[size] unless given."""
    _check_variant(lr, dtype, size)
    tol = STOP_TOL[dtype] if tol is None else tol
    g = dict(PHASE_GRIDS[size])
    widths = g["widths"] if widths is None else list(widths)
    depths = g["depths"] if depths is None else list(depths)
    seeds = g["seeds"] if seeds is None else list(seeds)
    steps = g["steps"] if steps is None else int(steps)
    return grid(**HXP_DATA, data_seed=data_seed, init=list(inits), width=widths, depth=depths,
                seed=seeds, steps=steps, tol=tol, lr=lr, dtype=dtype)


def phase_diagram(db=None, *, full=False, size=None, widths=None, depths=None, seeds=None, steps=None,
                  inits=INITS, workers=0, scheduler=None, backend="auto", progress=False, plot=None, client=None,
                  threads_per_run=1, lr="theory", dtype="float64"):
    """HXP's phase diagram: log10 relative excess after ``steps`` GD steps over (depth, width), per init.

    HXP data (X 1024 x 16, Y = W* X), widths [1024, m, ..., m, 10], lr = the
    init's theorem rate, stop early at l - OPT <= 1e-12 ||Y||_F^2. Grid
    ``size``: "default" (10 widths 10..226 x 9 depths 1..128 x 2 seeds x 2
    inits, a few minutes on 2 cores), "quick", or "full" (= ``full=True``:
    widths 10..1000, depths 1..700, 3 seeds, hours; resumable through ``db``), or "published"
    (8 widths 10..1000 x 8 depths 1..700, 2 seeds). ``lr``: "theory" or "stable" (1 / lambda_max
    of P(0), each run's own). ``dtype``: "float64" or "float32" (stopping at 1e-9 ||Y||_F^2,
    STOP_TOL; its classification equals float64's on the default grid, tests/test_float32.py).
    The runs are stored as experiment ``phase_name(lr, dtype)``.
    """
    cfgs = phase_configs(widths, depths, seeds, steps, inits, size_of(full, size), lr=lr, dtype=dtype)
    rows = sweep_rows(phase_name(lr, dtype), cfgs, db, workers, scheduler, backend, progress, client,
                      threads_per_run)
    return drawn(rows, plot, plot_phase_diagram)


def trainability_contour(rows, init, threshold=TRAINABLE_LOG10):
    """[(depth, w_min)]: for each depth > 1, the smallest grid width from which every wider
    cell is trainable (median over seeds <= ``threshold``); w_min = nan when none is."""
    out = []
    for d in sorted({r["depth"] for r in rows if r["init"] == init and r["depth"] > 1}):
        cells = {}
        for r in rows:
            if r["init"] == init and r["depth"] == d:
                cells.setdefault(r["width"], []).append(r)
        ws = sorted(cells)
        ok = [cell_value(cells[w]) <= threshold for w in ws]
        wmin = float("nan")
        for i in range(len(ws) - 1, -1, -1):
            if not ok[i]:
                break
            wmin = float(ws[i])
        out.append((d, wmin))
    return out


def phase_cells(rows, init, threshold=TRAINABLE_LOG10):
    """[(depth, width, value, n_runs, n_diverged)] of one init's heat map: value = median over the
    cell's runs of log10 relative excess (+inf for a diverged run); depth 1 (linear regression:
    no hidden width) is one cell, width 0."""
    out = []
    for d in sorted({r["depth"] for r in rows if r["init"] == init}):
        ws = [0] if d == 1 else sorted({r["width"] for r in rows if r["init"] == init and r["depth"] == d})
        for w in ws:
            cell = [r for r in rows if r["init"] == init and r["depth"] == d and (d == 1 or r["width"] == w)
                    and r["status"] != "failed"]
            if cell:
                out.append((d, w, cell_value(cell), len(cell), sum(r["status"] == "diverged" for r in cell)))
    return out


def plot_phase_diagram(rows, path, threshold=TRAINABLE_LOG10):
    """Heat map per init: median over seeds of log10((l(T)-OPT)/(l(0)-OPT)) over (width, depth);
    x = diverged; dots: the trainability contour (smallest width from which every wider cell
    is trainable); the title gives its linear fit width = a L + b."""
    plt = plotting.pyplot()
    inits = inits_of(rows)
    fig, axes = plt.subplots(1, len(inits), figsize=(5.6 * len(inits), 4.6), squeeze=False)
    phase_into(fig, list(axes[0]), rows, threshold, inits)
    steps = max((r["steps"] for r in rows), default=0)
    seeds = len({r["seed"] for r in rows})
    fig.suptitle(f"HXP phase diagram: X 1024x16, Y = W*X, {plotting.lr_text(rows)}, budget {steps} steps, "
                 f"median over {seeds} seed{'s' if seeds > 1 else ''}\n{precision_text(rows)}"
                 + outside_hxp_note(rows), fontsize=9)
    fig.tight_layout()
    return plotting.save(fig, path)


def precision_text(rows):
    """The rows' dtype and stop rule, for a title: 'float64, stop at l - OPT <= 1e-12 ||Y||^2'; for
    float32 also what tests/test_float32.py found it to share with float64 and what not."""
    dtypes = sorted({dtype_of(r) for r in rows})
    tols = sorted({float(r["tol"]) for r in rows if r.get("tol")})
    stop = (f", stop at l - OPT <= {tols[0]:g} ||Y||^2" if len(tols) == 1 else
            ", stop at l - OPT <= tol ||Y||^2, tol varies" if tols else ", no early stop")
    why = (" (above float32's floor, ~1e-12 ||Y||^2); float32 classifies trainable / untrainable as float64 "
           "on the default grid, but which untrainable cells diverge (x) is decided by rounding"
           if "float32" in dtypes else "")
    return f"{' and '.join(dtypes)}{stop}{why}"


def outside_hxp_note(rows):
    """A second title line when orthogonal cells have widths m < d_x: HXP Thm 3.1 assumes
    m >= max{d_x, d_y}, so those cells use engine's extension of eq. (4) and HXP's rate
    there is the formula outside the theorem (it diverges left of the boundary); at
    lr = "stable" no theorem's rate is used, and the line says so instead."""
    narrow = [r for r in rows if r.get("init") == "orthogonal" and r.get("depth", 1) > 1
              and r.get("d_in") is not None and r["width"] < r["d_in"]]
    if not narrow:
        return ""
    d_x = max(r["d_in"] for r in narrow)
    every = all(r["width"] < r["d_in"] for r in rows if r.get("init") == "orthogonal" and r.get("depth", 1) > 1)
    head = f"\n{'every' if every else 'some'} orthogonal width < d_x = {d_x}: outside HXP Thm 3.1 (m >= d_x"
    if {r.get("lr_rule", r.get("lr")) for r in narrow} == {"stable"}:
        # no theorem's rate here: eta = 1 / lambda_max(P(0)) of each run (engine.train.stable_lr)
        return head + "); lr = 1 / lambda_max(P(0)) is stable for the linearization at init, not a theorem's rate"
    return head + "; eq. 4 extended to m < d_x), so the flat boundary is largely where HXP's rate becomes unstable"


def phase_into(fig, axes, rows, threshold=TRAINABLE_LOG10, inits=None):
    """One heat map per init on numeric log axes (width, depth): cells span geometric midpoints
    between grid values; depth 1 (no hidden layer) spans every width."""
    from matplotlib.lines import Line2D
    deep = [r for r in rows if r["depth"] > 1]
    widths = sorted({r["width"] for r in deep}) or sorted({r["width"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    xe, ye = plotting.log_edges(widths), plotting.log_edges(depths)
    inits = inits_of(rows) if inits is None else inits
    for ax, init in zip(axes, inits):
        Z = np.full((len(depths), len(widths)), np.nan)
        div_pts = []
        for d, w, v, n, nd in phase_cells(rows, init, threshold):
            i = depths.index(d)
            cols = range(len(widths)) if d == 1 else [widths.index(w)]
            for j in cols:
                Z[i, j] = min(v, 1.0)
            if nd:
                div_pts.append((np.sqrt(xe[0] * xe[-1]) if d == 1 else w, d, nd, n))
        # the colour scale starts at the tolerance when every run had one: converged cells (clipped
        # there by _run_value) get its colour
        levels = [tol_level(r) for r in rows]
        vmin = min(levels) if levels and None not in levels else -12
        im = ax.pcolormesh(xe, ye, np.ma.masked_invalid(Z), cmap="viridis_r", vmin=vmin, vmax=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(widths, [str(w) for w in widths], rotation=60, fontsize=7)
        ax.set_yticks(depths, [str(d) for d in depths], fontsize=7)
        ax.minorticks_off()
        ax.set_xlim(xe[0], xe[-1])
        ax.set_ylim(ye[0], ye[-1])
        handles = []
        if div_pts:
            ax.plot([p[0] for p in div_pts], [p[1] for p in div_pts], "x", color="white", ms=5, mew=1.5)
            handles.append(Line2D([], [], ls="", marker="x", color="black", label="x: a run diverged"))
        cont = trainability_contour(rows, init, threshold)
        fit = [(d, w) for d, w in cont if np.isfinite(w)]
        none = [d for d, w in cont if not np.isfinite(w)]
        if fit:
            ax.plot([w for _, w in fit], [d for d, _ in fit], "o", color="black", mfc="white", ms=5)
            handles.append(Line2D([], [], ls="", marker="o", color="black", mfc="white",
                                  label=f"trainable (<= {threshold:g}) from this width up"))
        if none:
            ax.plot([xe[-1] * 0.97] * len(none), none, ">", color="black", mfc="white", ms=6, clip_on=False)
            handles.append(Line2D([], [], ls="", marker=">", color="black", mfc="white",
                                  label=f"no width <= {widths[-1]} trainable (not in the fit)"))
        slope, icpt = fit_line([d for d, _ in fit], [w for _, w in fit])
        title = f"{init}: {fmt_line(slope, icpt, len(fit))}"
        if none:
            title += f"\nL = {', '.join(map(str, none))}: none trainable, fit excludes {'it' if len(none) == 1 else 'them'}"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("width m (log scale)")
        ax.set_ylabel("depth L (log scale; L = 1: linear regression)")
        if handles:
            ax.legend(handles=handles, fontsize=6, loc="lower right", framealpha=0.8)
        cb = fig.colorbar(im, ax=ax, shrink=0.85)
        cb.set_label("log10 (l(T) - OPT) / (l(0) - OPT)"
                     + ("\n(a run stopped at tol: at tol, clipped)" if vmin != -12 else ""), fontsize=7)
