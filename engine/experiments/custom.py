"""Figures of a custom grid (``python -m engine plot`` on a grid file's database): heat maps
over (width, depth), one panel row per combination of the other fields it varies, or its loss
curves when width and depth do not both vary."""
from __future__ import annotations

import numpy as np

from ..runs import DEFAULT_CONFIG
from . import plotting
from .common import TRAINABLE_LOG10, inits_of
from .phase import phase_into

# Config fields a custom grid may vary (a row's "lr" is the rate used, "lr_rule" the config's)
# and how many panel rows plot_grid draws at most.
GRID_FIELDS = tuple("lr_rule" if k == "lr" else k for k in DEFAULT_CONFIG)
MAX_FACETS = 8


def plot_grid(rows, path, threshold=TRAINABLE_LOG10):
    """A custom grid's heat maps: one row of panels (one per init) for every combination of the
    other config fields the grid varies (lr_scale, seed, steps, ...), each titled with it; a
    field that does not vary is named once in the figure title."""
    fixed = {"init", "width", "depth"}
    fields = sorted({k for r in rows for k in r if k in GRID_FIELDS} - fixed)
    varied = [f for f in fields if len({repr(r.get(f)) for r in rows}) > 1]
    combos = sorted({tuple(repr(r.get(f)) for f in varied) for r in rows})
    if len(combos) > MAX_FACETS:
        raise ValueError(f"rows: the grid varies {', '.join(varied)} in {len(combos)} combinations; "
                         f"plot at most {MAX_FACETS} (select rows, e.g. one seed, first)")
    plt = plotting.pyplot()
    inits = inits_of(rows)
    fig, axes = plt.subplots(len(combos), len(inits), figsize=(5.6 * len(inits), 4.6 * len(combos)),
                             squeeze=False)
    for i, combo in enumerate(combos):
        sub = [r for r in rows if tuple(repr(r.get(f)) for f in varied) == combo]
        phase_into(fig, list(axes[i]), sub, threshold, inits)
        if varied:
            tag = ", ".join(f"{f} = {v}" for f, v in zip(varied, combo))
            for ax in axes[i]:
                ax.set_title(f"[{tag}] " + ax.get_title(), fontsize=7)
    steps = sorted({r["steps"] for r in rows})
    fig.suptitle(f"grid: {plotting.lr_text(rows)}, budget {'/'.join(map(str, steps))} steps"
                 + (f"; panels per {', '.join(varied)}" if varied else ""), fontsize=9)
    fig.tight_layout()
    return plotting.save(fig, path)


def plot_custom(rows, path, store=None):
    """A custom grid's figure: ``plot_grid``'s heat maps when width and depth both vary, else the
    loss curves of its first 40 runs (read from ``store``, a ResultsDB, or the rows' "curve")."""
    widths = {r["width"] for r in rows if r["depth"] > 1}
    depths = {r["depth"] for r in rows}
    if len(widths) > 1 and len(depths) > 1:
        return plot_grid(rows, path)
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows[:40]:
        t, e = store.curve(r["key"]) if store is not None else r.get("curve", ([], []))
        if t and e[0]:
            ax.semilogy(t, np.asarray(e) / e[0], lw=1,
                        label=f"{r['init']} m={r['width']} L={r['depth']} s={r['seed']}")
    ax.set_xlabel("GD step t")
    ax.set_ylabel("(l(t)-OPT)/(l(0)-OPT)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return plotting.save(fig, path)
