"""The README's main job (HXP): the phase diagram on the "quick" grid next to the Gaussian vs
orthogonal loss curves at one (width, depth); the curves alone are ``python -m engine demo``."""
from __future__ import annotations

import numpy as np

from .. import theory
from ..runs import problem_of, widths_of
from ..sweep import dask_client, grid
from . import plotting
from .common import HXP_DATA, INITS, TRAINABLE_LOG10, inits_of, sweep_rows
from .phase import outside_hxp_note, phase_diagram, phase_into

# The curves' (width, depth, step budget) per size: "quick" is the README's, "tiny" a smoke test.
CURVE_GRIDS = {"tiny": {"width": 32, "depth": 8, "steps": 200},
               "quick": {"width": 128, "depth": 64, "steps": 2000}}


def curve_configs(size="quick", width=None, depth=None, steps=None, seed=0, data_seed=0):
    """The two runs of the curves: Gaussian and orthogonal, widths [1024, m, ..., m, 10] on HXP's
    data, the theorems' lr, stopping at l - OPT <= 1e-12 ||Y||_F^2 (CURVE_GRIDS[size] unless given)."""
    g = CURVE_GRIDS[size]
    return grid(**HXP_DATA, data_seed=data_seed, init=list(INITS), width=g["width"] if width is None else width,
                depth=g["depth"] if depth is None else depth, seed=seed,
                steps=g["steps"] if steps is None else steps, tol=1e-12)


def hxp_curves(db=None, *, size="quick", width=None, depth=None, steps=None, seed=0, data_seed=0, workers=0,
               scheduler=None, backend="auto", progress=False, client=None, threads_per_run=1):
    """Gaussian vs orthogonal GD at one (width, depth) on HXP's data (``curve_configs``), as
    experiment "hxp_demo_curves" in ``db``. Rows as every experiment's, each with its loss curve
    ("curve": (t, excess)) and the label its theorem bound carries ("width_note",
    engine.theory.width_note); Gaussian first."""
    cfgs = curve_configs(size, width, depth, steps, seed, data_seed)
    rows = sweep_rows("hxp_demo_curves", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run,
                      quiet=False, curves=True)
    for r in rows:
        r["width_note"] = theory.width_note((r["init"], widths_of(r)), problem_of(r))
    return sorted(rows, key=lambda r: INITS.index(r["init"]))


def demo(width=128, depth=64, steps=2000, seed=0, data_seed=0, backend="auto"):
    """``python -m engine demo``: ``hxp_curves`` in this process, in memory, with the libraries'
    own thread counts (as engine.train). Init seed and data seed default to 0, as ``train``,
    sweeps and ``reproduce hxp``, so the same defaults give the same networks. Returns
    (problem, rows)."""
    rows = hxp_curves(None, width=width, depth=depth, steps=steps, seed=seed, data_seed=data_seed,
                      backend=backend, threads_per_run=0)
    return problem_of(rows[0]), rows


def nan_for_none(x) -> float:
    """A stored metric as a float: NaN where the database holds NULL (SQLite stores NaN as NULL)."""
    return float("nan") if x is None else float(x)


def outcome(row) -> str:
    """How a curve's run ended: "converged" (at its tolerance), "diverged" or "budget"."""
    if row["status"] == "diverged":
        return "diverged"
    return "converged" if row["converged"] else "budget"


def hxp_demo(db=None, *, workers=0, scheduler=None, backend="auto", progress=False, plot=None, client=None,
             threads_per_run=1, width=None, depth=None, steps=None, size="quick"):
    """The README's main job: HXP's phase diagram on the "quick" grid (``size``), plus the
    Gaussian vs orthogonal loss curves at one (width, depth) (``hxp_curves``, CURVE_GRIDS[size]
    unless given). Returns (phase rows, curve rows)."""
    if client is None:
        with dask_client(workers, scheduler) as cl:
            return hxp_demo(db, backend=backend, progress=progress, plot=plot, client=cl,
                            width=width, depth=depth, steps=steps, size=size, threads_per_run=threads_per_run)
    rows = phase_diagram(db, size=size, backend=backend, progress=progress, client=client,
                         threads_per_run=threads_per_run)
    curves = hxp_curves(db, size=size, width=width, depth=depth, steps=steps, workers=workers, scheduler=scheduler,
                        backend=backend, progress=progress, client=client, threads_per_run=threads_per_run)
    if plot:
        plot_hxp_demo(rows, curves, plot)
    return rows, curves


def curves_into(ax, curves, bounds=False):
    """The curves' relative excess vs step on ``ax`` (log scale), one colour per init; with
    ``bounds``, each init's theorem bound predicted^t too, labelled with its width note."""
    for r in curves:
        t, ex = r.get("curve") or ([], [])
        if not t:
            continue
        e, c = np.asarray(ex, float), plotting.color(r["init"])
        p, rate = nan_for_none(r["predicted"]), nan_for_none(r["rate"])
        ax.semilogy(t, e / e[0], color=c, label=f"{r['init']}: {outcome(r)}, rate {rate:.4f}")
        if bounds and np.isfinite(p) and 0 < p < 1:
            tt = np.arange(0, t[-1] + 1)
            ax.semilogy(tt, p ** tt, color=c, ls=":", lw=1,
                        label=f"{r['init']} theorem bound ({p:.4f}^t) {r['width_note']}")
    ax.set_xlabel("GD step t")
    ax.set_ylabel("(l(t)-OPT)/(l(0)-OPT)")


def plot_demo(curves, path):
    """``demo``'s figure: the two curves with their theorem bounds."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curves_into(ax, curves, bounds=True)
    ax.set_ylim(bottom=1e-14)
    ax.set_title(f"Deep linear net, width {curves[0]['width']}, depth {curves[0]['depth']}, HXP data")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plotting.save(fig, path, dpi=110)


def plot_hxp_demo(rows, curves, path):
    """The phase diagram's panels and, beside them, the curves' panel, in one figure."""
    plt = plotting.pyplot()
    inits = inits_of(rows)
    k = len(inits)
    fig = plt.figure(figsize=(5.2 * k + 5.0, 4.6))
    gs = fig.add_gridspec(1, k + 1, width_ratios=[1] * k + [0.95])
    phase_into(fig, [fig.add_subplot(gs[0, j]) for j in range(k)], rows, TRAINABLE_LOG10, inits)
    ax = fig.add_subplot(gs[0, k])
    curves_into(ax, curves)
    if curves:
        ax.set_title(f"width {curves[0]['width']}, depth {curves[0]['depth']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"HXP: Gaussian vs orthogonal init (X 1024x16, Y = W*X, {plotting.lr_text(list(rows) + list(curves))})"
                 + outside_hxp_note(rows), fontsize=10)
    fig.tight_layout()
    return plotting.save(fig, path)
