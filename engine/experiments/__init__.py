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

The package: this module holds the registry (EXPERIMENTS, run, plot, configs), the committed
figures (COMMITTED_FIGURES, reproduce_figure, reproduce_all) and their tables; one module per
experiment (phase, hxp, curse, kappa, threshold, beyond, theory_check), custom grids' figures
(custom), what they share (common) and the figure helpers (plotting, whose ``save`` writes
every figure).
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..sweep import dask_client
from . import plotting, theory_check
from .beyond import (LAZY_DATA, LAZY_GRIDS, LYAP_GRIDS, SHARP_DATA, SHARP_GRIDS, TABLE_FIELDS, lazy_gap,
                     lyapunov_spectra, plot_lazy_gap, plot_lyapunov_spectra, plot_sharpness_eos, sharpness_eos)
from .common import HXP_DATA, INITS, STOP_TOL, TRAINABLE_LOG10, fit_line, fmt_line, inits_of
from .curse import CURSE_GRIDS, curse_configs, curse_table, exponential_curse, plot_exponential_curse
from .custom import MAX_FACETS, plot_custom, plot_grid
from .hxp import (CURVE_GRIDS, curve_configs, demo, hxp_curves, hxp_demo, nan_for_none, outcome, plot_demo,
                  plot_hxp_demo)
from .kappa import KAPPA_DATA, KAPPA_GRIDS, kappa_configs, kappa_table, plot_rate_vs_kappa, rate_vs_kappa
from .phase import (PHASE_GRIDS, PHASE_LRS, outside_hxp_note, phase_cells, phase_configs, phase_diagram,
                    phase_name, plot_phase_diagram, precision_text, trainability_contour)
from .threshold import (THRESHOLD_GRIDS, plot_width_threshold, threshold_configs, threshold_table,
                        width_threshold)

__all__ = ["EXPERIMENTS", "COMMITTED_FIGURES", "run", "plot", "configs", "planned_configs", "plot_db",
           "figure_table", "write_table", "read_table", "reproduce_figure", "reproduce_all",
           "FIGURE_OPTIONS", "VALIDATED", "check_options", "TRAINABLE_LOG10", "STOP_TOL", "HXP_DATA", "INITS", "fit_line", "fmt_line", "inits_of",
           "PHASE_GRIDS", "PHASE_LRS", "phase_name", "precision_text", "phase_configs", "phase_diagram", "trainability_contour", "phase_cells", "plot_phase_diagram",
           "outside_hxp_note", "CURVE_GRIDS", "curve_configs", "hxp_curves", "hxp_demo", "plot_hxp_demo", "demo",
           "plot_demo", "outcome", "nan_for_none", "CURSE_GRIDS", "curse_configs", "exponential_curse", "curse_table",
           "plot_exponential_curse", "KAPPA_GRIDS", "KAPPA_DATA", "kappa_configs", "rate_vs_kappa", "kappa_table",
           "plot_rate_vs_kappa", "THRESHOLD_GRIDS", "threshold_configs", "width_threshold", "threshold_table",
           "plot_width_threshold", "LAZY_GRIDS", "LAZY_DATA", "lazy_gap", "plot_lazy_gap", "SHARP_GRIDS",
           "SHARP_DATA", "sharpness_eos", "plot_sharpness_eos", "LYAP_GRIDS", "lyapunov_spectra",
           "plot_lyapunov_spectra", "plot_grid", "plot_custom", "MAX_FACETS", "plotting", "theory_check"]

# name -> (run function, figure function)
EXPERIMENTS = {
    "phase_diagram": (phase_diagram, plot_phase_diagram),
    "exponential_curse": (exponential_curse, plot_exponential_curse),
    "rate_vs_kappa": (rate_vs_kappa, plot_rate_vs_kappa),
    "width_threshold": (width_threshold, plot_width_threshold),
    "lazy_gap": (lazy_gap, plot_lazy_gap),
    "sharpness": (sharpness_eos, plot_sharpness_eos),
    "lyapunov_spectra": (lyapunov_spectra, plot_lyapunov_spectra),
}

# Every figure committed under docs/: name -> (experiment, size). "hxp" is the README's main
# job, "theory-check" engine.experiments.theory_check's default report.
COMMITTED_FIGURES = {
    "hxp": ("hxp", "quick"),
    "phase_diagram": ("phase_diagram", "default"),
    "phase_diagram_stable": ("phase_diagram", "default"),
    "exponential_curse": ("exponential_curse", "quick"),
    "rate_vs_kappa": ("rate_vs_kappa", "quick"),
    "width_threshold": ("width_threshold", "quick"),
    "theory-check": ("theorycheck", None),
    "lazy_gap": ("lazy_gap", "quick"),
    "sharpness": ("sharpness", "quick"),
    "lyapunov": ("lyapunov_spectra", "quick"),
}
# A committed figure's experiment options beyond its size (the README shows the phase diagram at
# the theorems' rates and at lr = 1 / lambda_max(P(0)) side by side, issue 15 item 5).
FIGURE_OPTIONS = {"phase_diagram_stable": {"lr": "stable"}}

# Experiment options and the experiments they were validated for: an option value off its
# default is refused elsewhere (``check_options``). float32: the phase diagram's classification
# of every cell equals float64's on the default grid (tests/test_float32.py); lr = "stable": the
# phase diagram's second version. The defaults are what every experiment runs.
VALIDATED = {"dtype": ("float64", {"float32": ("phase_diagram",)}),
             "lr": ("theory", {"stable": ("phase_diagram",)})}


def check_options(name, **options):
    """ValueError naming the option when experiment ``name`` was not validated with its value
    (VALIDATED); returns the options that differ from their defaults (what to pass on)."""
    out = {}
    for opt, value in options.items():
        if opt not in VALIDATED:
            raise ValueError(f"{opt}: not an experiment option; known: {sorted(VALIDATED)}")
        default, allowed = VALIDATED[opt]
        if value == default:
            continue
        if value not in allowed:
            raise ValueError(f"{opt}: {value!r} is not one of {[default] + list(allowed)}")
        if name not in allowed[value]:
            raise ValueError(f"{opt}: {value} is validated only for {', '.join(allowed[value])} "
                             f"(not for {name}); run {name} with {opt} {default}")
        out[opt] = value
    return out


def _fmt_cell(x):
    """A table cell as text: "" for None, integers (and booleans) as integers, floats to 6 digits."""
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
    if name in TABLE_FIELDS:
        f = TABLE_FIELDS[name]
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


def reproduce_figure(name, out_dir, db=None, **kw):
    """Regenerate committed figure ``name`` (COMMITTED_FIGURES) as out_dir/NAME.png and its table
    out_dir/NAME.csv; ``db``: results database (None: in memory). Returns (png, csv)."""
    if name not in COMMITTED_FIGURES:
        raise ValueError(f"name: unknown figure {name!r}; choose one of {sorted(COMMITTED_FIGURES)}")
    png, csv_path = os.path.join(out_dir, f"{name}.png"), os.path.join(out_dir, f"{name}.csv")
    exp, size = COMMITTED_FIGURES[name]
    kw = dict(FIGURE_OPTIONS.get(name, {}), **kw)
    if exp == "theorycheck":
        res = theory_check.run_check()
        theory_check.figure(res, png)
        header, recs = ["quantity", "gaussian", "orthogonal"], theory_check.table_records(res)
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


def run(name, db=None, **kw):
    """Run the experiment called ``name`` (see EXPERIMENTS); returns its rows. The options of
    VALIDATED (lr, dtype) are refused off their defaults where not validated (``check_options``)."""
    func = _get(name)[0]
    opts = {k: kw.pop(k) for k in list(kw) if k in VALIDATED}
    return func(db, **kw, **check_options(name, **opts))


def plot(name, rows, path):
    """Draw the figure of experiment ``name`` from its rows."""
    return _get(name)[1](rows, path)


def configs(name, size="default", **options):
    """The config list of a grid experiment (width_threshold is adaptive: its widest probes);
    ``options``: the phase diagram's lr and dtype (``check_options``)."""
    options = check_options(name, **options)
    if name == "phase_diagram":
        return phase_configs(size=size, **options)
    if name == "exponential_curse":
        return curse_configs(size=size)
    if name == "rate_vs_kappa":
        return kappa_configs(size=size)
    _get(name)
    raise ValueError(f"experiment: {name!r} is adaptive (bisection) or a serial loop, not a grid; "
                     "run it with engine.experiments.run")


def planned_configs(name, size="default", **options):
    """(configs, note): the runs experiment ``name`` (or "hxp", ``hxp_demo``) makes at ``size``,
    for its cost estimate. width_threshold's bisection is adaptive: every cell it may probe,
    an upper bound the note says; (None, "") for the serial loops (lazy_gap, sharpness,
    lyapunov_spectra), which are not sweeps. ``options``: as ``configs``."""
    options = check_options(name, **options)
    if name == "hxp":
        return phase_configs(size=size) + curve_configs(size), ""
    if name == "width_threshold":
        return threshold_configs(size=size), " (adaptive: every cell its bisection may probe, at most)"
    if name in ("phase_diagram", "exponential_curse", "rate_vs_kappa"):
        return configs(name, size, **options), ""
    return None, ""


def plot_db(store, names, out_dir="."):
    """Draw the figures of the experiments ``names`` stored in ``store`` (a ResultsDB) into
    out_dir/NAME.png: an experiment of EXPERIMENTS its figure, the phase diagram with the HXP
    curves ("hxp_demo_curves") both phase_diagram.png and hxp.png, any other grid plot_custom's.
    Returns [(name, path)] in drawing order, path None for an experiment without successful runs."""
    stored, out, done = set(store.experiments()), [], set()
    for name in names:
        if name in done:
            continue
        path = os.path.join(out_dir, f"{name}.png")
        rows = [r for r in store.rows(experiment=name) if r["status"] != "failed"]
        if not rows:
            out.append((name, None))
            continue
        if name in ("phase_diagram", "hxp_demo_curves") and {"phase_diagram", "hxp_demo_curves"} <= stored:
            curves = store.rows(experiment="hxp_demo_curves")
            for r in curves:
                r["curve"] = store.curve(r["key"])
            pd = [r for r in store.rows(experiment="phase_diagram") if r["status"] != "failed"]
            out.append(("phase_diagram", plot_phase_diagram(pd, os.path.join(out_dir, "phase_diagram.png"))))
            name, path = "hxp", plot_hxp_demo(pd, curves, os.path.join(out_dir, "hxp.png"))
            done |= {"phase_diagram", "hxp_demo_curves"}
        elif name in EXPERIMENTS:
            plot(name, rows, path)
        elif name.startswith("phase_diagram_"):    # a variant: phase_name(lr, dtype)
            plot_phase_diagram(rows, path)
        else:
            plot_custom(rows, path, store)
        done.add(name)
        out.append((name, path))
    return out


def _get(name):
    try:
        return EXPERIMENTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"experiment: unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}") from None
