"""The exponential curse of Gaussian init (HXP Thm 4.1; Shamir 2018): steps to leave the
[0.4, 0.6] ||Y||_F^2 band vs depth, widths all equal k."""
from __future__ import annotations

import numpy as np

from ..sweep import grid
from . import plotting
from .common import INITS, drawn, inits_of, size_of, sweep_rows

# Grids: widths k (= d_in = d_out), depths, seeds, step budget.
CURSE_GRIDS = {
    "tiny": {"ks": [1, 2], "depths": [2, 4, 8], "seeds": [0, 1], "steps": 2000},
    "quick": {"ks": [1, 4], "depths": [2, 4, 8, 12, 16, 24, 32, 48, 64], "seeds": [0, 1, 2, 3, 4],
              "steps": 20000},
    "default": {"ks": [1, 2, 4], "depths": [2, 4, 8, 12, 16, 24, 32, 48, 64, 96],
                "seeds": list(range(7)), "steps": 50000},
    "full": {"ks": [1, 2, 4, 8], "depths": [2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256],
             "seeds": list(range(25)), "steps": 1000000},
}


def curse_configs(ks=None, depths=None, seeds=None, steps=None, inits=INITS, size="default", n=8):
    """The runs: per width k, data X (k x n), Y = W* X, every width k; no tolerance, stop on
    leaving the band (l(t) <= 0.4 ||Y||_F^2); CURSE_GRIDS[size] unless given."""
    g = CURSE_GRIDS[size]
    ks = g["ks"] if ks is None else list(ks)
    cfgs = []
    for k in ks:
        cfgs += grid(d_in=k, n=n, d_out=k, width=k, init=list(inits),
                     depth=g["depths"] if depths is None else list(depths),
                     seed=g["seeds"] if seeds is None else list(seeds),
                     steps=g["steps"] if steps is None else int(steps), tol=0, escape=0.4,
                     stop_at_escape=True)
    return cfgs


def exponential_curse(db=None, *, full=False, size=None, ks=None, depths=None, seeds=None, steps=None,
                      inits=INITS, workers=0, scheduler=None, backend="auto", progress=False, plot=None, client=None,
                      threads_per_run=1):
    """Steps until l(t) <= 0.4 ||Y||_F^2 (leaving HXP Thm 4.1's [0.4, 0.6] ||Y||_F^2 band) vs depth.

    All widths equal k (d_in = d_out = width = k; k = 1 is Shamir 2018's
    1-D network), data X (k x 8), Y = W* X; lr = the init's theorem rate; a
    run that has not escaped after ``steps`` steps is censored
    (``escape_steps`` None). Default: k in {1, 2, 4}, depths 2..96, 7
    seeds, budget 5e4 steps.
    """
    cfgs = curse_configs(ks, depths, seeds, steps, inits, size_of(full, size))
    rows = sweep_rows("exponential_curse", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run)
    return drawn(rows, plot, plot_exponential_curse)


def curse_table(rows):
    """[(k, init, depth, median escape steps, fraction escaped, budget)]; censored runs count
    as the budget in the median (so a median at the budget means most did not escape)."""
    out = []
    keys = sorted({(r["d_in"], r["init"], r["depth"]) for r in rows})
    for k, init, d in keys:
        rs = [r for r in rows if (r["d_in"], r["init"], r["depth"]) == (k, init, d) and r["status"] != "failed"]
        if not rs:
            continue
        budget = max(r["steps"] for r in rs)
        vals = [r["escape_steps"] if r["escape_steps"] is not None else budget for r in rs]
        frac = sum(r["escape_steps"] is not None for r in rs) / len(rs)
        out.append((k, init, d, float(np.median(vals)), frac, budget))
    return out


def plot_exponential_curse(rows, path):
    """Median escape steps vs depth (log y), per init and width, with the budget line."""
    plt = plotting.pyplot()
    tab = curse_table(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = ["o-", "s--", "^-.", "d:"]
    ks = sorted({t[0] for t in tab})
    budget = max((t[5] for t in tab), default=1)
    for init in inits_of(rows):
        for ki, k in enumerate(ks):
            pts = [t for t in tab if t[0] == k and t[1] == init]
            if not pts:
                continue
            if k == 1 and init == "orthogonal":
                continue   # 1-D orthogonal weights are +-1: nothing random to average (see docs)
            d = [t[2] for t in pts]
            m = [max(t[3], 0.5) for t in pts]
            lab = f"{init}, width {k}" + (" (Shamir 1-D)" if k == 1 else "")
            ax.semilogy(d, m, styles[ki % 4], color=plotting.color(init), label=lab, ms=4,
                        alpha=1.0 if init == "gaussian" else 0.8)
    ax.axhline(budget, color="gray", lw=0.8, ls=":")
    ax.text(0.02, budget * 0.6, f"budget {budget:g} steps (median at budget: most runs stuck)",
            fontsize=7, color="gray", transform=ax.get_yaxis_transform())
    ax.set_xlabel("depth L")
    ax.set_ylabel("median steps until l(t) <= 0.4 ||Y||_F^2")
    ax.set_title("Exponential curse of Gaussian init (HXP Thm 4.1; Shamir 2018), lr = theorem's", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return plotting.save(fig, path)
