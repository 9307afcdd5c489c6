"""DH's O(kappa log 1/eps): steps to eps vs the condition number of X, a deep wide Gaussian net
next to linear regression GD (L = 1)."""
from __future__ import annotations

import numpy as np

from ..sweep import grid
from . import plotting
from .common import drawn, fit_line, median, size_of, sweep_rows

# Grids; the data: X 16 x 16 with a prescribed kappa, Y = W* X (2 x 16).
KAPPA_GRIDS = {
    "tiny": {"kappas": [1, 4, 16], "width": 64, "depth": 3, "seeds": [0], "steps": 20000},
    "quick": {"kappas": [1, 2, 4, 8, 16, 32], "width": 256, "depth": 4, "seeds": [0], "steps": 50000},
    "default": {"kappas": [1, 2, 4, 8, 16, 32, 64], "width": 512, "depth": 4, "seeds": [0, 1],
                "steps": 100000},
    "full": {"kappas": [1, 2, 4, 8, 16, 32, 64, 128], "width": 1024, "depth": 8, "seeds": [0, 1, 2],
             "steps": 200000},
}
KAPPA_DATA = {"d_in": 16, "n": 16, "d_out": 2}


def kappa_configs(kappas=None, width=None, depth=None, seeds=None, steps=None, eps=1e-8, size="default",
                  init="gaussian"):
    """The runs: per kappa and seed, the deep net (KAPPA_GRIDS[size] unless given) and linear
    regression (L = 1), stopping at l - OPT <= eps ||Y||_F^2."""
    g = KAPPA_GRIDS[size]
    kappas = [float(k) for k in (g["kappas"] if kappas is None else kappas)]
    common = dict(**KAPPA_DATA, kappa=kappas, init=init, seed=g["seeds"] if seeds is None else list(seeds),
                  data_seed=0, steps=g["steps"] if steps is None else int(steps), tol=eps)
    deep = grid(width=g["width"] if width is None else int(width),
                depth=g["depth"] if depth is None else int(depth), **common)
    shallow = grid(depth=1, **common)   # linear regression GD (L = 1)
    return deep + shallow


def rate_vs_kappa(db=None, *, full=False, size=None, kappas=None, width=None, depth=None, seeds=None,
                  steps=None, eps=1e-8, workers=0, scheduler=None, backend="auto", progress=False, plot=None, client=None,
                  threads_per_run=1):
    """DH's O(kappa log 1/eps): steps until l - OPT <= eps ||Y||_F^2 vs kappa of X.

    X (16 x 16) with prescribed condition number kappa (engine.synthetic),
    Y = W* X (2 x 16); a wide Gaussian net (default width 512, depth 4) at
    DH Thm 4.1's rate, next to linear regression GD (L = 1, same init and
    lr rule).
    """
    cfgs = kappa_configs(kappas, width, depth, seeds, steps, eps, size_of(full, size))
    rows = sweep_rows("rate_vs_kappa", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run)
    return drawn(rows, plot, plot_rate_vs_kappa)


def kappa_table(rows):
    """[(depth, width, kappa, median steps to eps (nan if not reached), slope)] per (depth, width)."""
    out = []
    for L, w in sorted({(r["depth"], r["width"]) for r in rows}):
        for k in sorted({r["kappa"] for r in rows}):
            rs = [r for r in rows if (r["depth"], r["width"], r["kappa"]) == (L, w, k) and r["status"] == "ok"]
            st = [r["steps_to_tol"] for r in rs]
            med = median(st) if st and all(s is not None for s in st) else float("nan")
            out.append((L, w, k, med))
    return out


def plot_rate_vs_kappa(rows, path):
    """Median steps to eps vs kappa (log-log), deep net and linear regression, each with its fitted power."""
    plt = plotting.pyplot()
    tab = kappa_table(rows)
    fig, ax = plt.subplots(figsize=(6.0, 4.3))
    for (L, w), color in zip(sorted({(t[0], t[1]) for t in tab}, reverse=True), ["tab:red", "black", "tab:green"]):
        pts = [t for t in tab if (t[0], t[1]) == (L, w) and np.isfinite(t[3])]
        if not pts:
            continue
        k = np.array([t[2] for t in pts])
        s = np.array([t[3] for t in pts])
        slope, _ = fit_line(np.log(k), np.log(s)) if len(k) > 1 else (float("nan"), 0)
        lab = (f"deep Gaussian net L={L}, width {w}" if L > 1 else "linear regression GD (L=1)") + \
              f": steps ~ kappa^{slope:.2f}"
        ax.loglog(k, s, "o-" if L > 1 else "s--", color=color, label=lab, ms=4)
    ax.set_xlabel("kappa = lambda_max(X^T X) / lambda_r(X^T X)")
    ax.set_ylabel("steps until l - OPT <= eps ||Y||_F^2")
    eps = next((r["tol"] for r in rows), float("nan"))
    ax.set_title(f"DH: O(kappa log 1/eps) steps (eps = {eps:g}), lr = DH Thm 4.1's", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return plotting.save(fig, path)
