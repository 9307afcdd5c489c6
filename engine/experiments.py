"""The papers' experiments, each a grid of runs into a results database, a tidy table and a figure.

    from engine import experiments as ex
    rows = ex.phase_diagram(db="pd.db", plot="phase_diagram.png")      # HXP's phase diagram, small grid
    rows = ex.phase_diagram(db="pd.db", full=True)                     # the published grid (hours; resumable)
    rows = ex.exponential_curse(plot="curse.png")                      # HXP Thm 4.1 / Shamir 2018
    rows = ex.rate_vs_kappa(plot="kappa.png")                          # DH: O(kappa log 1/eps)
    rows = ex.width_threshold(plot="threshold.png")                    # smallest trainable width vs depth

Every function returns a list of dicts, one per run (the config's fields and
the results: ``final_excess``, ``log10_rel_excess``, ``steps_to_tol``,
``escape_steps``, ``rate``, ``status``...), runs its grid through
``engine.sweep.run_sweep`` (``workers=0`` serial by default; ``workers=None``
a dask LocalCluster; ``scheduler="tcp://..."`` a running cluster), and keeps
every run in ``db`` (a temporary in-memory database when None), so re-running
with the same ``db`` skips what is done. ``plot_<name>(rows, path)`` draws the
figure from the rows, for instance rows read back with
``ResultsDB(path, readonly=True).rows(experiment=name)``.

Learning rates: every experiment uses ``lr="theory"``, the init's theorem
rate (DH Thm 4.1 for Gaussian, d_out / (3 L ||X||^2); HXP Thm 3.1 for
orthogonal, d_out / (2 L ||X||^2)). HXP's phase diagram figure used its own
fixed settings, which are not in the paper text we have; with the theorems'
rates the budget is comparable across depths (the predicted per-step factor
is 1 - 1/(12 kappa) or 1 - 1/(4 kappa) at every depth), so a cell is
"trainable" when its loss falls by ``TRAINABLE_LOG10`` decades within the
budget.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from .results import ResultsDB
from .sweep import dask_client, grid, run_sweep

__all__ = ["EXPERIMENTS", "plot_grid", "fmt_line", "figure_table", "reproduce_all", "phase_diagram", "exponential_curse", "rate_vs_kappa", "width_threshold",
           "lazy_gap", "sharpness_eos", "lyapunov_spectra",
           "hxp_demo", "plot_phase_diagram", "plot_exponential_curse", "plot_rate_vs_kappa",
           "plot_width_threshold", "trainability_contour", "fit_line", "configs", "plot", "run"]

# A run is "trainable" when log10((l(T) - OPT) / (l(0) - OPT)) <= this after its budget.
TRAINABLE_LOG10 = -3.0
# HXP's data (HXP Sec. 5; docs/design.md, "The problem"): X in R^{1024 x 16}, W* in R^{10 x 1024}, Y = W* X.
HXP_DATA = {"d_in": 1024, "n": 16, "d_out": 10}
INITS = ("gaussian", "orthogonal")

# Grids. "default" finishes in minutes on 2 cores, "full" is the published grid
# (HXP: widths 10..1000, depths 1..700), "quick" is the README demo's.
PHASE_GRIDS = {
    "tiny": {"widths": [10, 40, 80], "depths": [1, 4, 8], "seeds": [0], "steps": 200},
    "quick": {"widths": [10, 14, 20, 28, 40, 56, 80, 113, 160], "depths": [1, 8, 16, 32, 64, 96],
              "seeds": [0], "steps": 1000},
    "default": {"widths": [10, 14, 20, 28, 40, 56, 80, 113, 160, 226],
                "depths": [1, 8, 16, 24, 32, 48, 64, 96, 128], "seeds": [0, 1], "steps": 1000},
    "full": {"widths": [10, 14, 20, 28, 40, 56, 80, 113, 160, 226, 320, 450, 640, 1000],
             "depths": [1, 10, 25, 50, 100, 150, 200, 300, 400, 500, 600, 700], "seeds": [0, 1, 2],
             "steps": 1000},
}


# --------------------------------------------------------------------------- helpers

def _sweep(name, cfgs, db, workers, scheduler, backend, progress, client=None, threads_per_run=1):
    own = db is None
    store = ResultsDB(":memory:") if own else (db if isinstance(db, ResultsDB) else ResultsDB(db))
    try:
        import warnings
        from .train import BottleneckWarning
        with warnings.catch_warnings():
            # the papers' grids probe widths below d_out on purpose (HXP: widths from 10, d_out = 10;
            # the threshold bisection from 8): a warning per such run would bury the tables
            warnings.simplefilter("ignore", BottleneckWarning)
            summary = run_sweep(cfgs, store, experiment=name, workers=workers, scheduler=scheduler,
                                backend=backend, progress=progress, client=client,
                                threads_per_run=threads_per_run)
        rows = store.rows(experiment=name, keys=summary.keys)
        if own:
            for r in rows:   # no database to read the curves back from later: attach them
                r["curve"] = store.curve(r["key"])
        return rows
    finally:
        if not isinstance(db, ResultsDB):
            store.close()


def _median(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.median(xs)) if xs else float("nan")


def _tol_level(r):
    """log10 of a run's stop threshold relative to its initial excess, log10(tol ||Y||^2 / (l(0) - OPT)),
    or None (no tolerance, or a row from before schema 2 stored it)."""
    thr, e0 = r.get("tol_excess"), r.get("excess0")
    if thr and e0 and thr > 0 and e0 > 0:
        return math.log10(thr / e0)
    return None


def _run_value(r):
    """A run's log10 relative excess as the heat maps draw it: +inf when it diverged; a run
    that stopped at its tolerance (issue 15 item 1: exact early stopping, no extrapolation)
    at the tolerance, clipped there: which step of the last contraction crossed it is noise."""
    if r["status"] == "diverged":
        return math.inf
    v = r["log10_rel_excess"]
    lvl = _tol_level(r)
    return v if lvl is None or v is None else max(v, lvl)


def _cell_value(rows):
    """Median over a cell's seeds of ``_run_value``: log10 relative excess, +inf for a diverged run
    (untrainable), clipped at the tolerance for a run that stopped there."""
    vals = [_run_value(r) for r in rows if r["status"] != "failed"]
    return float(np.median(vals)) if vals else float("nan")


def fit_line(x, y):
    """Least-squares (slope, intercept) of y on x; (nan, nan) with fewer than 2 points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return float("nan"), float("nan")
    s, c = np.polyfit(x[ok], y[ok], 1)
    return float(s), float(c)


def fmt_line(slope, icpt, n, var="L", y="width"):
    """'width = 4.00 L - 3 (fit through 2 points)': the fit with its sign and its support."""
    if not (np.isfinite(slope) and np.isfinite(icpt)):
        return f"{y}: no fit (fewer than 2 points)"
    c = round(icpt)
    sign = "-" if c < 0 else "+"
    slope = 0.0 if abs(slope) < 0.005 else slope      # no "-0.00"
    return f"{y} = {slope:.2f} {var} {sign} {abs(c):.0f} (fit through {n} points)"


def inits_of(rows):
    """The inits present in ``rows``: the papers' two first, any other (e.g. "identity") after."""
    present = {r["init"] for r in rows}
    return [i for i in INITS if i in present] + sorted(present - set(INITS))


phase_inits = inits_of   # the name another branch gave the same helper


_INIT_COLORS = {"gaussian": "tab:red", "orthogonal": "tab:blue", "identity": "tab:green"}


def _color(init):
    return _INIT_COLORS.get(init, "tab:purple")


def _log_edges(values):
    """Cell edges on a log axis: geometric midpoints, the ends half a step out."""
    v = np.asarray(sorted(values), float)
    if len(v) == 1:
        return np.array([v[0] / 1.25, v[0] * 1.25])
    mid = np.sqrt(v[1:] * v[:-1])
    return np.concatenate([[v[0] ** 2 / mid[0]], mid, [v[-1] ** 2 / mid[-1]]])


def _lr_text(rows):
    """What the rows' learning rate was, for a title: never "theorem's" unless it was used."""
    lrs = {str(r.get("lr_rule", r.get("lr", "theory"))) for r in rows}
    scales = {float(r.get("lr_scale", 1.0) or 1.0) for r in rows}
    if lrs == {"theory"}:
        if scales == {1.0}:
            return "lr = theorem's"
        if len(scales) == 1:
            return f"lr = {scales.pop():g} x theorem's"
        return "lr = lr_scale x theorem's"
    if len(lrs) == 1 and scales == {1.0}:
        return f"lr = {lrs.pop()}"
    return "lr varies (see panels)"


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib (pip install 'engine[plot]')") from None
    return plt


def _save(fig, path):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- phase diagram

def phase_configs(widths=None, depths=None, seeds=None, steps=None, inits=INITS, size="default",
                  data_seed=0, tol=1e-12):
    g = dict(PHASE_GRIDS[size])
    widths = g["widths"] if widths is None else list(widths)
    depths = g["depths"] if depths is None else list(depths)
    seeds = g["seeds"] if seeds is None else list(seeds)
    steps = g["steps"] if steps is None else int(steps)
    return grid(**HXP_DATA, data_seed=data_seed, init=list(inits), width=widths, depth=depths,
                seed=seeds, steps=steps, tol=tol)


def phase_diagram(db=None, *, full=False, size=None, widths=None, depths=None, seeds=None, steps=None,
                  inits=INITS, workers=0, scheduler=None, backend="auto", progress=False, plot=None, client=None,
        threads_per_run=1):
    """HXP's phase diagram: log10 relative excess after ``steps`` GD steps over (depth, width), per init.

    HXP data (X 1024 x 16, Y = W* X), widths [1024, m, ..., m, 10], lr = the
    init's theorem rate, stop early at l - OPT <= 1e-12 ||Y||_F^2. Grid
    ``size``: "default" (10 widths 10..226 x 9 depths 1..128 x 2 seeds x 2
    inits, a few minutes on 2 cores), "quick", or "full" (= ``full=True``:
    widths 10..1000, depths 1..700, 3 seeds, hours; resumable through ``db``).
    """
    size = "full" if full else (size or "default")
    cfgs = phase_configs(widths, depths, seeds, steps, inits, size)
    rows = _sweep("phase_diagram", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run)
    if plot:
        plot_phase_diagram(rows, plot)
    return rows


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
        ok = [_cell_value(cells[w]) <= threshold for w in ws]
        wmin = float("nan")
        for i in range(len(ws) - 1, -1, -1):
            if not ok[i]:
                break
            wmin = float(ws[i])
        out.append((d, wmin))
    return out


def plot_phase_diagram(rows, path, threshold=TRAINABLE_LOG10):
    """Heat map per init: median over seeds of log10((l(T)-OPT)/(l(0)-OPT)) over (width, depth);
    x = diverged; dots: the trainability contour (smallest width from which every wider cell
    is trainable); the title gives its linear fit width = a L + b."""
    plt = _pyplot()
    inits = inits_of(rows)
    fig, axes = plt.subplots(1, len(inits), figsize=(5.6 * len(inits), 4.6), squeeze=False)
    _phase_into(fig, list(axes[0]), rows, threshold, inits)
    steps = max((r["steps"] for r in rows), default=0)
    seeds = len({r["seed"] for r in rows})
    fig.suptitle(f"HXP phase diagram: X 1024x16, Y = W*X, {_lr_text(rows)}, budget {steps} steps, "
                 f"median over {seeds} seed{'s' if seeds > 1 else ''}" + _outside_hxp_note(rows), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- exponential curse

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
    size = "full" if full else (size or "default")
    cfgs = curse_configs(ks, depths, seeds, steps, inits, size)
    rows = _sweep("exponential_curse", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run)
    if plot:
        plot_exponential_curse(rows, plot)
    return rows


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
    plt = _pyplot()
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
            ax.semilogy(d, m, styles[ki % 4], color=_color(init), label=lab, ms=4,
                        alpha=1.0 if init == "gaussian" else 0.8)
    ax.axhline(budget, color="gray", lw=0.8, ls=":")
    ax.text(0.02, budget * 0.6, f"budget {budget:g} steps (median at budget: most runs stuck)",
            fontsize=7, color="gray", transform=ax.get_yaxis_transform())
    ax.set_xlabel("depth L")
    ax.set_ylabel("median steps until l(t) <= 0.4 ||Y||_F^2")
    ax.set_title("Exponential curse of Gaussian init (HXP Thm 4.1; Shamir 2018), lr = theorem's", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- rate vs kappa

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
    size = "full" if full else (size or "default")
    cfgs = kappa_configs(kappas, width, depth, seeds, steps, eps, size)
    rows = _sweep("rate_vs_kappa", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run)
    if plot:
        plot_rate_vs_kappa(rows, plot)
    return rows


def kappa_table(rows):
    """[(depth, width, kappa, median steps to eps (nan if not reached), slope)] per (depth, width)."""
    out = []
    for L, w in sorted({(r["depth"], r["width"]) for r in rows}):
        for k in sorted({r["kappa"] for r in rows}):
            rs = [r for r in rows if (r["depth"], r["width"], r["kappa"]) == (L, w, k) and r["status"] == "ok"]
            st = [r["steps_to_tol"] for r in rs]
            med = _median(st) if st and all(s is not None for s in st) else float("nan")
            out.append((L, w, k, med))
    return out


def plot_rate_vs_kappa(rows, path):
    plt = _pyplot()
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
    return _save(fig, path)


# --------------------------------------------------------------------------- width threshold

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


def width_threshold(db=None, *, full=False, size=None, depths=None, widths=None, seeds=None, steps=None,
                    inits=INITS, threshold=TRAINABLE_LOG10, workers=0, scheduler=None, backend="auto",
                    progress=False, plot=None, client=None,
        threads_per_run=1):
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
    size = "full" if full else (size or "default")
    g = THRESHOLD_GRIDS[size]
    depths = g["depths"] if depths is None else list(depths)
    widths = sorted(g["widths"] if widths is None else widths)
    seeds = g["seeds"] if seeds is None else list(seeds)
    steps = g["steps"] if steps is None else int(steps)
    # per (init, depth): bracket [lo, hi] of indices into widths; hi = len -> none trainable yet
    state = {(i, d): [0, len(widths)] for i in inits for d in depths}
    all_rows = {}

    def cfgs_for(init, d, w):
        return grid(**HXP_DATA, init=init, depth=d, width=w, seed=seeds, steps=steps, tol=1e-12)

    # first probe the widest width, then bisect
    probes = {(i, d): len(widths) - 1 for i, d in state}
    while probes:
        cfgs = []
        for (init, d), j in probes.items():
            cfgs += cfgs_for(init, d, widths[j])
        for r in _sweep("width_threshold", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run):
            all_rows[r["key"]] = r
        nxt = {}
        for (init, d), j in probes.items():
            cell = [r for r in all_rows.values() if (r["init"], r["depth"], r["width"]) == (init, d, widths[j])]
            lo, hi = state[(init, d)]
            if _cell_value(cell) <= threshold:
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
            ok = [w for w in cells if _cell_value(cells[w]) <= threshold]
            res.append((d, float(min(ok)) if ok else float("nan")))
        if res:
            out[init] = res
    return out


def plot_width_threshold(rows, path, threshold=TRAINABLE_LOG10, widths=None):
    plt = _pyplot()
    tab = threshold_table(rows, threshold)
    fig, ax = plt.subplots(figsize=(6.0, 4.3))
    wmax = max((r["width"] for r in rows), default=1)
    for init, pts in tab.items():
        d = np.array([p[0] for p in pts], float)
        w = np.array([p[1] for p in pts], float)
        slope, icpt = fit_line(d, w)
        ax.plot(d[np.isfinite(w)], w[np.isfinite(w)], "o-", color=_color(init),
                label=f"{init}: {fmt_line(slope, icpt, int(np.isfinite(w).sum()))}")
        cens = ~np.isfinite(w)
        if cens.any():
            ax.plot(d[cens], np.full(cens.sum(), wmax), "^", color=_color(init), mfc="none",
                    label=f"{init}: none trainable up to width {wmax} (not in the fit)")
    ax.set_xlabel("depth L")
    ax.set_ylabel("smallest trainable width")
    ax.set_title(f"Width threshold (HXP data, lr = theorem's, trainable: log10 rel. loss <= {threshold:g})",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- README demo

def hxp_demo(db=None, *, workers=0, scheduler=None, backend="auto", progress=False, plot=None, client=None,
             threads_per_run=1,
             width=128, depth=64, steps=2000, size="quick"):
    """The README's main job: HXP's phase diagram on the "quick" grid (``size``), plus the
    Gaussian vs orthogonal loss curves at one (width, depth). Returns (phase rows, curve rows)."""
    if client is None:
        with dask_client(workers, scheduler) as cl:
            return hxp_demo(db, backend=backend, progress=progress, plot=plot, client=cl,
                            width=width, depth=depth, steps=steps, size=size, threads_per_run=threads_per_run)
    rows = phase_diagram(db, size=size, backend=backend, progress=progress, client=client,
                         threads_per_run=threads_per_run)
    cfgs = grid(**HXP_DATA, init=list(INITS), width=width, depth=depth, seed=0, steps=steps, tol=1e-12)
    curves = _sweep("hxp_demo_curves", cfgs, db, workers, scheduler, backend, progress, client, threads_per_run)
    if db is not None:
        store = ResultsDB(db, readonly=True) if not isinstance(db, ResultsDB) else db
        try:
            for r in curves:
                r["curve"] = store.curve(r["key"])
        finally:
            if store is not db:
                store.close()
    if plot:
        plot_hxp_demo(rows, curves, plot)
    return rows, curves


def plot_hxp_demo(rows, curves, path):
    plt = _pyplot()
    # draw the phase diagram panels, then the curves panel, in one figure
    inits = inits_of(rows)
    k = len(inits)
    fig = plt.figure(figsize=(5.2 * k + 5.0, 4.6))
    gs = fig.add_gridspec(1, k + 1, width_ratios=[1] * k + [0.95])
    _phase_into(fig, [fig.add_subplot(gs[0, j]) for j in range(k)], rows, TRAINABLE_LOG10, inits)
    ax = fig.add_subplot(gs[0, k])
    for r in curves:
        t, ex = r.get("curve") or ([], [])
        if t:
            e = np.asarray(ex, float)
            ax.semilogy(t, e / e[0], color=_color(r["init"]),
                        label=f"{r['init']}: {r['status']}, rate {r['rate']:.4f}")
    if curves:
        ax.set_title(f"width {curves[0]['width']}, depth {curves[0]['depth']}", fontsize=9)
    ax.set_xlabel("GD step t")
    ax.set_ylabel("(l(t)-OPT)/(l(0)-OPT)")
    if curves:
        ax.legend(fontsize=7)
    fig.suptitle(f"HXP: Gaussian vs orthogonal init (X 1024x16, Y = W*X, {_lr_text(list(rows) + list(curves))})"
                 + _outside_hxp_note(rows), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _outside_hxp_note(rows):
    """A second title line when orthogonal cells have widths m < d_x: HXP Thm 3.1 assumes
    m >= max{d_x, d_y}, so those cells use engine's extension of eq. (4) and HXP's rate
    there is the formula outside the theorem (it diverges left of the boundary)."""
    narrow = [r for r in rows if r.get("init") == "orthogonal" and r.get("depth", 1) > 1
              and r.get("d_in") is not None and r["width"] < r["d_in"]]
    if not narrow:
        return ""
    d_x = max(r["d_in"] for r in narrow)
    every = all(r["width"] < r["d_in"] for r in rows if r.get("init") == "orthogonal" and r.get("depth", 1) > 1)
    return (f"\n{'every' if every else 'some'} orthogonal width < d_x = {d_x}: outside HXP Thm 3.1 (m >= d_x; "
            "eq. 4 extended to m < d_x), so the flat boundary is largely where HXP's rate becomes unstable")


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
                out.append((d, w, _cell_value(cell), len(cell), sum(r["status"] == "diverged" for r in cell)))
    return out


def _phase_into(fig, axes, rows, threshold=TRAINABLE_LOG10, inits=None):
    """One heat map per init on numeric log axes (width, depth): cells span geometric midpoints
    between grid values; depth 1 (no hidden layer) spans every width."""
    from matplotlib.lines import Line2D
    deep = [r for r in rows if r["depth"] > 1]
    widths = sorted({r["width"] for r in deep}) or sorted({r["width"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    xe, ye = _log_edges(widths), _log_edges(depths)
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
        levels = [_tol_level(r) for r in rows]
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


def plot_grid(rows, path, threshold=TRAINABLE_LOG10):
    """A custom grid's heat maps: one row of panels (one per init) for every combination of the
    other config fields the grid varies (lr_scale, seed, steps, ...), each titled with it; a
    field that does not vary is named once in the figure title."""
    fixed = {"init", "width", "depth"}
    fields = sorted({k for r in rows for k in r if k in _GRID_FIELDS} - fixed)
    varied = [f for f in fields if len({repr(r.get(f)) for r in rows}) > 1]
    combos = sorted({tuple(repr(r.get(f)) for f in varied) for r in rows})
    if len(combos) > MAX_FACETS:
        raise ValueError(f"rows: the grid varies {', '.join(varied)} in {len(combos)} combinations; "
                         f"plot at most {MAX_FACETS} (select rows, e.g. one seed, first)")
    plt = _pyplot()
    inits = inits_of(rows)
    fig, axes = plt.subplots(len(combos), len(inits), figsize=(5.6 * len(inits), 4.6 * len(combos)),
                             squeeze=False)
    for i, combo in enumerate(combos):
        sub = [r for r in rows if tuple(repr(r.get(f)) for f in varied) == combo]
        _phase_into(fig, list(axes[i]), sub, threshold, inits)
        if varied:
            tag = ", ".join(f"{f} = {v}" for f, v in zip(varied, combo))
            for ax in axes[i]:
                ax.set_title(f"[{tag}] " + ax.get_title(), fontsize=7)
    steps = sorted({r["steps"] for r in rows})
    fig.suptitle(f"grid: {_lr_text(rows)}, budget {'/'.join(map(str, steps))} steps"
                 + (f"; panels per {', '.join(varied)}" if varied else ""), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# Config fields a custom grid may vary (engine.sweep.DEFAULT_CONFIG) and how many panel rows
# plot_grid draws at most.
_GRID_FIELDS = ("d_in", "n", "d_out", "data_seed", "rank", "kappa", "init", "width", "depth", "seed",
                "lr_rule", "lr_scale", "steps", "tol", "escape", "stop_at_escape")
MAX_FACETS = 8


# --------------------------------------------------------------------------- figure tables, reproduce all

def _fmt_cell(x):
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(int(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}"
    return str(x)


def figure_table(name, rows, curves=None):
    """(header, records): the numbers figure ``name`` draws, one record per drawn point or cell.

    phase_diagram / hxp: per init, depth, width the cell value (median over seeds of log10
    relative excess; inf = diverged) with its run and divergence counts and the depth's
    trainability contour (hxp adds the two curves' summaries); exponential_curse: curse_table;
    rate_vs_kappa: kappa_table; width_threshold: threshold_table.
    """
    if name in ("phase_diagram", "hxp"):
        header = ["panel", "init", "depth", "width", "log10_rel_excess", "runs", "diverged",
                  "trainable_from_width", "status", "steps", "rate"]
        recs = []
        for init in inits_of(rows):
            cont = dict(trainability_contour(rows, init))
            for d, w, v, n, nd in phase_cells(rows, init):
                recs.append(["phase", init, d, w, v, n, nd, cont.get(d), "", "", ""])
        for r in sorted(curves or [], key=lambda r: r["init"]):
            rel = r["rel_excess"]
            recs.append(["curve", r["init"], r["depth"], r["width"],
                         math.log10(rel) if rel and rel > 0 else float("nan"), 1,
                         int(r["status"] == "diverged"), "", r["status"], r["steps_run"], r["rate"]])
        return header, recs
    if name == "exponential_curse":
        return (["width", "init", "depth", "median_escape_steps", "fraction_escaped", "budget"],
                [list(t) for t in curse_table(rows)])
    if name == "rate_vs_kappa":
        return ["depth", "width", "kappa", "median_steps_to_eps"], [list(t) for t in kappa_table(rows)]
    if name == "width_threshold":
        return (["init", "depth", "smallest_trainable_width"],
                [[init, d, w] for init, pts in threshold_table(rows).items() for d, w in pts])
    if name in _BEYOND_FIELDS:
        f = _BEYOND_FIELDS[name]
        return f, [[r[k] for k in f] for r in rows]
    raise ValueError(f"name: no table for figure {name!r}")


def write_table(path, header, records):
    """A figure's table as CSV (floats to 6 significant digits); returns the path."""
    import csv
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for rec in records:
            w.writerow([_fmt_cell(x) for x in rec])
    return path


def read_table(path):
    """(header, records as lists of strings) of a CSV written by write_table."""
    import csv
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


# Every figure committed under docs/: name -> (experiment, size). "hxp" is the README's main
# job, "theory-check" engine.theorycheck's default report.
COMMITTED_FIGURES = {
    "hxp": ("hxp", "quick"),
    "phase_diagram": ("phase_diagram", "default"),
    "exponential_curse": ("exponential_curse", "quick"),
    "rate_vs_kappa": ("rate_vs_kappa", "quick"),
    "width_threshold": ("width_threshold", "quick"),
    "theory-check": ("theorycheck", None),
}


def reproduce_figure(name, out_dir, db=None, **kw):
    """Regenerate committed figure ``name`` (COMMITTED_FIGURES) as out_dir/NAME.png and its table
    out_dir/NAME.csv; ``db``: results database (None: in memory). Returns (png, csv)."""
    if name not in COMMITTED_FIGURES:
        raise ValueError(f"name: unknown figure {name!r}; choose one of {sorted(COMMITTED_FIGURES)}")
    png, csv_path = os.path.join(out_dir, f"{name}.png"), os.path.join(out_dir, f"{name}.csv")
    exp, size = COMMITTED_FIGURES[name]
    if exp == "theorycheck":
        from . import theorycheck
        res = theorycheck.run_check()
        theorycheck.figure(res, png)
        lines = [ln.strip("|").split(" | ") for ln in theorycheck.table(res).splitlines()]
        header, recs = ["quantity", "gaussian", "orthogonal"], [[c.strip() for c in ln] for ln in lines[2:]]
    elif exp == "hxp":
        rows, curves = hxp_demo(db, plot=png, size=size, **kw)
        header, recs = figure_table("hxp", rows, curves)
    else:
        rows = run(exp, db, size=size, plot=png, **kw)
        header, recs = figure_table(exp, rows)
    write_table(csv_path, header, recs)
    return png, csv_path


def reproduce_all(out_dir="docs", db_dir=None, names=None, **kw):
    """Regenerate every committed figure and its table into ``out_dir``
    (``python -m engine reproduce all --out-dir docs``); databases engine-NAME.db in ``db_dir``
    (None: in memory, nothing resumable). Returns [(png, csv)]."""
    names = list(names or COMMITTED_FIGURES)
    for name in names:
        if name not in COMMITTED_FIGURES:
            raise ValueError(f"names: unknown figure {name!r}; choose from {sorted(COMMITTED_FIGURES)}")
    workers, scheduler = kw.pop("workers", 0), kw.pop("scheduler", None)
    out = []
    with dask_client(workers, scheduler) as cl:      # one cluster for all figures
        for name in names:
            db = None if db_dir is None else os.path.join(db_dir, f"engine-{name}.db")
            out.append(reproduce_figure(name, out_dir, db, client=cl, workers=workers, scheduler=scheduler,
                                        **kw))
    return out


# --------------------------------------------------------------------------- registry

EXPERIMENTS = {
    "phase_diagram": (phase_diagram, plot_phase_diagram),
    "exponential_curse": (exponential_curse, plot_exponential_curse),
    "rate_vs_kappa": (rate_vs_kappa, plot_rate_vs_kappa),
    "width_threshold": (width_threshold, plot_width_threshold),
}


def run(name, db=None, **kw):
    """Run the experiment called ``name`` (see EXPERIMENTS); returns its rows."""
    return _get(name)[0](db, **kw)


def plot(name, rows, path):
    """Draw the figure of experiment ``name`` from its rows."""
    return _get(name)[1](rows, path)


def configs(name, size="default"):
    """The config list of a grid experiment (width_threshold is adaptive: its widest probes)."""
    if name == "phase_diagram":
        return phase_configs(size=size)
    if name == "exponential_curse":
        return curse_configs(size=size)
    if name == "rate_vs_kappa":
        return kappa_configs(size=size)
    _get(name)
    raise ValueError(f"experiment: {name!r} is adaptive (bisection); run it with engine.experiments.run")


def _get(name):
    try:
        return EXPERIMENTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"experiment: unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}") from None


# --------------------------------------------------------------------------- beyond the two papers
# Small, serial, deterministic experiments for engine.diagnostics (issue "beyond the two
# papers"). They take the usual reproduce keywords (db, workers, backend, ...) and ignore
# the ones that do not apply: each is one process, seconds, nothing to resume.

def _one_blas_thread():
    """One BLAS thread: these loops are many tiny matmuls, where a second BLAS thread costs
    far more in hand-offs than it saves (a 20x slowdown measured with 2 threads)."""
    from .kernels.threads import limit
    return limit(blas=1)


def _status(res):
    """converged / diverged / ran (the run's outcome, as in the results tables)."""
    if res.converged:
        return "converged"
    return "diverged" if not np.all(np.isfinite(res.excess)) else "ran"


LAZY_GRIDS = {"quick": dict(widths=(16, 32, 64, 128, 256), depth=8, steps=300, stride=10),
              "tiny": dict(widths=(16, 32), depth=4, steps=40, stride=10)}
LAZY_DATA = {"d_in": 32, "n": 8, "d_out": 4}


def lazy_gap(db=None, *, size=None, widths=None, depth=None, steps=None, stride=None,
             inits=INITS + ("identity",),
             plot=None, **_ignored):
    """Gap between the true run and its lazy (linearized) twin vs width at fixed depth.

    Per init and width: GD at lr="theory" with ``record={"lazy": stride}`` (the twin is
    vec R(t) = (I - eta P(0))^t vec R(0), Chizat et al. 2019; DH eq. 6 without the
    second-order term). The gap is max over recorded t of |l(t) - l_lin(t)| / l(0): the
    largest departure from the lazy regime, in units of the initial excess (OPT = 0 here).
    Rows: dicts with init, width, depth, steps, gap, final_rel_excess, lazy_final_rel_excess, status.
    """
    from .init import gaussian, identity, orthogonal
    from .problem import Problem, synthetic
    from .train import train
    g = dict(LAZY_GRIDS["tiny" if size == "tiny" else "quick"])
    for k, v in dict(widths=widths, depth=depth, steps=steps, stride=stride).items():
        if v is not None:
            g[k] = v
    X, Y = synthetic(LAZY_DATA["d_in"], LAZY_DATA["n"], LAZY_DATA["d_out"], seed=0)
    prob = Problem(X, Y)
    makers = {"gaussian": gaussian, "orthogonal": orthogonal, "identity": identity}
    rows = []
    with _one_blas_thread():
        for init in inits:
            for m in g["widths"]:
                ws = [LAZY_DATA["d_in"]] + [int(m)] * (g["depth"] - 1) + [LAZY_DATA["d_out"]]
                net = makers[init](ws, seed=0)
                res = train(net, prob, lr="theory", steps=g["steps"], record={"lazy": g["stride"]})
                v = np.asarray(res.records["lazy"]["values"], dtype=np.float64)
                lin, true = v[:, 0], v[:, 1]
                l0 = true[0]
                rows.append(dict(init=init, width=int(m), depth=g["depth"], steps=g["steps"],
                                 gap=float(np.max(np.abs(true - lin)) / l0),
                                 final_rel_excess=float(true[-1] / l0),
                                 lazy_final_rel_excess=float(lin[-1] / l0), status=_status(res)))
    if plot:
        plot_lazy_gap(rows, plot)
    return rows


def plot_lazy_gap(rows, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for init in inits_of(rows):
        rs = sorted((r for r in rows if r["init"] == init), key=lambda r: r["width"])
        ax.loglog([r["width"] for r in rs], [r["gap"] for r in rs], "o-", color=_color(init), label=init)
    if rows:
        ax.set_title(f"lazy twin gap, depth {rows[0]['depth']}, {rows[0]['steps']} steps at lr=theory",
                     fontsize=9)
    ws = sorted({r["width"] for r in rows})
    if ws:   # label the grid's widths, not matplotlib's crowded log minor ticks
        ax.set_xticks(ws, [str(w) for w in ws])
        ax.minorticks_off()
    ax.set_xlabel("width m (log scale)")
    ax.set_ylabel("max_t |l(t) - l_lin(t)| / l(0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


SHARP_GRIDS = {"quick": dict(width=16, depth=6, steps=400, stride=5, lr_factor=2.5),
               "tiny": dict(width=8, depth=3, steps=40, stride=5, lr_factor=2.5)}
SHARP_DATA = {"d_in": 16, "n": 8, "d_out": 2}


def sharpness_eos(db=None, *, size=None, width=None, depth=None, steps=None, stride=None, lr_factor=None,
                  plot=None, **_ignored):
    """Sharpness (top Hessian eigenvalue, ``record={"sharpness": stride}``) during GD vs 2/eta.

    Edge of stability (Cohen et al. 2021): GD at rate eta is stable at a minimum only while
    sharpness <= 2/eta. Per init, eta = lr_factor / sharpness(W(0)) (lr_factor < 2: stable
    at the start); the sharpness rises during training (progressive sharpening) and stops
    at or near 2/eta. Rows: one per (init, recorded step): init, width, depth, lr, t,
    sharpness, two_over_lr, excess, status.
    """
    from . import diagnostics as dg
    from .init import gaussian, orthogonal
    from .problem import Problem, synthetic
    from .train import train
    g = dict(SHARP_GRIDS["tiny" if size == "tiny" else "quick"])
    for k, v in dict(width=width, depth=depth, steps=steps, stride=stride, lr_factor=lr_factor).items():
        if v is not None:
            g[k] = v
    X, Y = synthetic(SHARP_DATA["d_in"], SHARP_DATA["n"], SHARP_DATA["d_out"], seed=0)
    prob = Problem(X, Y)
    rows = []
    with _one_blas_thread():
        for init, make in (("gaussian", gaussian), ("orthogonal", orthogonal)):
            ws = [SHARP_DATA["d_in"]] + [g["width"]] * (g["depth"] - 1) + [SHARP_DATA["d_out"]]
            net = make(ws, seed=0)
            lr = g["lr_factor"] / float(dg.sharpness(net, prob, 1)[0])
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = train(net, prob, lr=lr, steps=g["steps"], record={"sharpness": g["stride"]},
                            record_every=g["stride"])
            ts = list(res.records["sharpness"]["t"])
            vals = np.asarray(res.records["sharpness"]["values"], dtype=np.float64)[:, 0]
            ex_by_t = dict(zip(np.asarray(res.t).tolist(), np.asarray(res.excess).tolist()))
            for t, s in zip(ts, vals):
                rows.append(dict(init=init, width=g["width"], depth=g["depth"], lr=lr, t=int(t),
                                 sharpness=float(s), two_over_lr=2.0 / lr,
                                 excess=ex_by_t.get(int(t), float("nan")), status=_status(res)))
    if plot:
        plot_sharpness_eos(rows, plot)
    return rows


def plot_sharpness_eos(rows, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for init in inits_of(rows):
        rs = [r for r in rows if r["init"] == init]
        ax.plot([r["t"] for r in rs], [r["sharpness"] * r["lr"] for r in rs], "-", color=_color(init),
                label=f"{init}: eta sharpness")
    ax.axhline(2.0, color="k", ls="--", lw=1, label="2 (sharpness = 2/eta)")
    if rows:
        ax.set_title(f"edge of stability, width {rows[0]['width']}, depth {rows[0]['depth']}", fontsize=9)
    ax.set_xlabel("GD step t")
    ax.set_ylabel("eta x sharpness")
    ax.legend(fontsize=8)
    return _save(fig, path)


LYAP_GRIDS = {"quick": dict(width=32, depths=(16, 64), seeds=8),
              "tiny": dict(width=8, depths=(4, 8), seeds=2)}


def lyapunov_spectra(db=None, *, size=None, width=None, depths=None, seeds=None, plot=None, **_ignored):
    """Log singular values of the product A_L ... A_1 (engine.diagnostics.lyapunov), Gaussian
    vs orthogonal, vs the exact finite-width expectation for Gaussian (Hanin & Nica):
    E sum = L (1/2)[ln(2/m) + digamma((m - i + 1)/2)] for the i-th exponent; 0 for orthogonal.
    Rows: one per (init, depth, i): init, width, depth, i, mean_log_sv (over seeds), sd, expected.
    """
    from scipy.special import digamma
    from . import diagnostics as dg
    from .init import gaussian, orthogonal
    g = dict(LYAP_GRIDS["tiny" if size == "tiny" else "quick"])
    for k, v in dict(width=width, depths=depths, seeds=seeds).items():
        if v is not None:
            g[k] = v
    m = int(g["width"])
    i = np.arange(1, m + 1)
    rows = []
    with _one_blas_thread():
        for init, make in (("gaussian", gaussian), ("orthogonal", orthogonal)):
            for L in g["depths"]:
                ly = np.array([dg.lyapunov(make([m] * (L + 1), seed=s)) for s in range(g["seeds"])])
                exp = L * 0.5 * (np.log(2.0 / m) + digamma((m - i + 1) / 2)) if init == "gaussian" \
                    else np.zeros(m)
                for k in range(m):
                    rows.append(dict(init=init, width=m, depth=int(L), i=k + 1, mean_log_sv=float(ly[:, k].mean()),
                                     sd=float(ly[:, k].std(ddof=1)) if g["seeds"] > 1 else 0.0,
                                     expected=float(exp[k]), status="converged"))
    if plot:
        plot_lyapunov_spectra(rows, plot)
    return rows


def plot_lyapunov_spectra(rows, path):
    plt = _pyplot()
    depths = sorted({r["depth"] for r in rows})
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False)
    for ax, L in zip(axes[0], depths):
        for init in inits_of(rows):
            rs = [r for r in rows if r["init"] == init and r["depth"] == L]
            ax.errorbar([r["i"] for r in rs], [r["mean_log_sv"] for r in rs], yerr=[r["sd"] for r in rs],
                        fmt="o", ms=3, color=_color(init), label=init)
            if init == "gaussian":
                ax.plot([r["i"] for r in rs], [r["expected"] for r in rs], "k-", lw=1,
                        label="finite-width expectation")
        ax.set_title(f"width {rows[0]['width']}, depth {L}", fontsize=9)
        ax.set_xlabel("index i")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("log singular value of A_L...A_1")
    return _save(fig, path)


_BEYOND_FIELDS = {
    "lazy_gap": ["init", "depth", "width", "steps", "gap", "final_rel_excess", "lazy_final_rel_excess", "status"],
    "sharpness": ["init", "width", "depth", "lr", "t", "sharpness", "two_over_lr", "excess", "status"],
    "lyapunov_spectra": ["init", "width", "depth", "i", "mean_log_sv", "sd", "expected"],
}
EXPERIMENTS.update({
    "lazy_gap": (lazy_gap, plot_lazy_gap),
    "sharpness": (sharpness_eos, plot_sharpness_eos),
    "lyapunov_spectra": (lyapunov_spectra, plot_lyapunov_spectra),
})
COMMITTED_FIGURES.update({"lazy_gap": ("lazy_gap", "quick"), "sharpness": ("sharpness", "quick"),
                          "lyapunov": ("lyapunov_spectra", "quick")})
