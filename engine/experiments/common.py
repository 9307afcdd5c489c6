"""What the experiments share: HXP's data, the inits, the trainability threshold, a grid run
into a results database, and the per-cell summaries every table and figure uses."""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import BottleneckWarning
from ..kernels.threads import limit
from ..results import ResultsDB
from ..sweep import run_sweep

# A run is "trainable" when log10((l(T) - OPT) / (l(0) - OPT)) <= this after its budget.
TRAINABLE_LOG10 = -3.0
# The phase diagram's stop rule l - OPT <= tol ||Y||_F^2, per dtype (issue 15 items 1 and 4).
# float64: 1e-12, far above its rounding floor (converged runs reach 1e-31..1e-29 of l(0) - OPT).
# float32: the excess of a converged float32 run stops decreasing and fluctuates at
# 8e-15..3e-12 ||Y||_F^2 (2000 steps, tol 0, on HXP's data at depths 1..700, widths 1..1000,
# both inits; the largest at depth 700, width 64: ``python bench/float32_floor.py``), so 1e-12
# would be reached or not by rounding; 1e-9 is 2.6 decades above the largest value measured
# and 5.7 below TRAINABLE_LOG10 (l(0) - OPT is ~0.55 ||Y||_F^2), so it changes no cell's class,
# only the level at which a converged cell is clipped (~-8.7 decades instead of ~-11.7).
STOP_TOL = {"float64": 1e-12, "float32": 1e-9}
# HXP's data (HXP Sec. 5; docs/design.md, "The problem"): X in R^{1024 x 16}, W* in R^{10 x 1024}, Y = W* X.
HXP_DATA = {"d_in": 1024, "n": 16, "d_out": 10}
INITS = ("gaussian", "orthogonal")


def sweep_rows(name, cfgs, db, workers, scheduler, backend, progress, client=None, threads_per_run=1,
               quiet=True, curves=False):
    """Run the configs ``cfgs`` as experiment ``name`` into ``db`` (a path, a ResultsDB, or None: a
    temporary in-memory database) through engine.sweep.run_sweep; returns their rows. Each row
    carries its loss curve ("curve": (t, excess)) when ``curves`` or ``db`` is None (nothing to
    read it back from later). ``quiet``: no BottleneckWarning per run (the papers' grids probe
    widths below d_out on purpose: HXP's widths from 10 with d_out = 10, the threshold
    bisection's from 8; a warning per such run would bury the tables)."""
    own = db is None
    store = ResultsDB(":memory:") if own else (db if isinstance(db, ResultsDB) else ResultsDB(db))
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore", BottleneckWarning)
            summary = run_sweep(cfgs, store, experiment=name, workers=workers, scheduler=scheduler,
                                backend=backend, progress=progress, client=client,
                                threads_per_run=threads_per_run)
        rows = store.rows(experiment=name, keys=summary.keys)
        if own or curves:
            for r in rows:
                r["curve"] = store.curve(r["key"])
        return rows
    finally:
        if not isinstance(db, ResultsDB):
            store.close()


def size_of(full, size):
    """The grid size an experiment runs: "full" when ``full``, else ``size`` (default "default")."""
    return "full" if full else (size or "default")


def drawn(rows, plot, draw):
    """``rows``, after ``draw(rows, plot)`` draws their figure to the path ``plot`` (when given)."""
    if plot:
        draw(rows, plot)
    return rows


def median(xs):
    """Median of the values that are not None or NaN (NaN when none is)."""
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.median(xs)) if xs else float("nan")


def tol_level(r):
    """log10 of a run's stop threshold relative to its initial excess, log10(tol ||Y||^2 / (l(0) - OPT)),
    or None (no tolerance, or a row from before schema 2 stored it)."""
    thr, e0 = r.get("tol_excess"), r.get("excess0")
    if thr and e0 and thr > 0 and e0 > 0:
        return math.log10(thr / e0)
    return None


def run_value(r):
    """A run's log10 relative excess as the heat maps draw it: +inf when it diverged; a run
    that stopped at its tolerance (issue 15 item 1: exact early stopping, no extrapolation)
    at the tolerance, clipped there: which step of the last contraction crossed it is noise."""
    if r["status"] == "diverged":
        return math.inf
    v = r["log10_rel_excess"]
    lvl = tol_level(r)
    return v if lvl is None or v is None else max(v, lvl)


def cell_value(rows):
    """Median over a cell's seeds of ``run_value``: log10 relative excess, +inf for a diverged run
    (untrainable), clipped at the tolerance for a run that stopped there."""
    vals = [run_value(r) for r in rows if r["status"] != "failed"]
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


def one_blas_thread():
    """One BLAS thread: these loops are many tiny matmuls, where a second BLAS thread costs
    far more in hand-offs than it saves (a 20x slowdown measured with 2 threads)."""
    return limit(blas=1)
