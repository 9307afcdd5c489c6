"""Command-line interface: ``python -m engine COMMAND``.

Commands
    demo         Gaussian vs orthogonal GD on HXP's data at one (width, depth); table + PNG
    reproduce    one of the papers' experiments at a small default, with its figure
    train        one configuration; summary, optional history CSV, checkpoint, figure
    sweep        a named experiment or a JSON grid file into an SQLite results database
    plot         figures from a results database
    export       a results database to CSV / Parquet
    theorycheck  one trajectory per init measured against DH Thm 4.1 / HXP Thm 3.1; table + PNG
    info         version, backends, threads, BLAS, memory estimate for given widths

The commands parse, check and print; what they run lives in engine.experiments (the papers'
experiments, their figures and tables), engine.sweep (grids, grid files, estimates) and
engine.train.

Bad arguments give a one-line message and exit code 2; a failed command exits 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line message on bad arguments."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Given(argparse.Action):
    """Store the value and remember, in ``namespace.given``, that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = set(getattr(namespace, "given", set())) | {self.dest}


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def _nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}") from None
    if not (v >= 0 and np.isfinite(v)):   # NaN fails this too (it would silently disable the stop)
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _lr(text):
    if text in ("theory", "stable"):
        return text
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'theory', 'stable' or a positive number, got {text!r}") from None


def _record_arg(text):
    from engine import diagnostics
    name, sep, stride = text.partition(":")
    if name not in diagnostics.RECORDERS:
        raise argparse.ArgumentTypeError(
            f"unknown diagnostic {name!r} in {text!r}; choose from {sorted(diagnostics.RECORDERS)}")
    if not sep:
        return name, 1
    return name, _positive_int(stride)


def parse_width_runs(text) -> list:
    """'1024,256x63,10' -> [(1024, 1), (256, 63), (10, 1)], without expanding (for estimates)."""
    runs = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            w, k = (int(x) for x in part.split("x")) if "x" in part else (int(part), 1)
        except ValueError:
            raise ValueError(f"--widths: cannot read {part!r} in {text!r}; "
                             "write widths like 1024,256x63,10 (WxK = K layers of width W)") from None
        if w < 1 or k < 1:
            raise ValueError(f"--widths: widths and counts must be >= 1, got {part!r}")
        runs.append((w, k))
    if sum(k for _, k in runs) < 2:
        raise ValueError(f"--widths: need at least d_0 and d_L, got {text!r}")
    return runs


def parse_widths(text) -> list:
    """'1024,256x63,10' -> [1024] + [256] * 63 + [10] (ValueError naming --widths otherwise)."""
    return [w for w, k in parse_width_runs(text) for _ in range(k)]


def _depth_arg(text):
    v = _positive_int(text)
    if v < 2:
        raise argparse.ArgumentTypeError(f"expected a depth >= 2, got {v}")
    return v


def _ints_arg(k, form):
    """An argparse type: ``k`` comma-separated positive integers, as ``form`` says."""
    def parse(text):
        try:
            vals = tuple(int(v) for v in text.split(","))
        except ValueError:
            vals = ()
        if len(vals) != k or min(vals) < 1:
            raise argparse.ArgumentTypeError(f"expected {form} ({k} positive integers), got {text!r}")
        return vals
    return parse


def _width_runs_arg(text):
    try:
        return parse_width_runs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--widths: ", "")) from None


def _widths_arg(text):
    try:
        return parse_widths(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--widths: ", "")) from None


def _add_exec(p, workers_default_help="one worker process per core (dask LocalCluster)"):
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=_nonneg_int, default=None,
                   help=f"dask worker processes (default: {workers_default_help}; 0 = serial)")
    g.add_argument("--serial", action="store_true", help="run in this process, no dask (= --workers 0)")
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                   help="submit to a running dask scheduler instead of a local cluster")
    g.add_argument("--backend", default="auto", help="auto, numpy, numba or cblas (default auto)")
    g.add_argument("--threads-per-run", type=_nonneg_int, default=1,
                   help="BLAS/Numba threads of each run (default 1; 0 = leave the libraries' defaults)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--estimate", action="store_true",
                   help="print the number of runs, the predicted wall time on this machine and the peak "
                        "memory per worker (engine.cost), then stop without running anything")
    g.add_argument("--yes", action="store_true",
                   help=f"run a grid of more than {MAX_GRID_CELLS} cells (refused without it)")


_SIZES = ["tiny", "quick", "default", "full", "published"]


def _add_variant(p, grid_files=False):
    """--lr and --dtype of a named experiment (validated for phase_diagram only: engine.experiments.VALIDATED)."""
    files = " (a grid file says it in its 'lr' field)" if grid_files else ""
    p.add_argument("--lr", choices=["theory", "stable"], default="theory",
                   help="phase_diagram only: 'theory' (default: each init's theorem rate) or 'stable' "
                        "(1 / lambda_max(P(0)) of each run's network)" + files)
    files = " (a grid file says it in its 'dtype' field)" if grid_files else ""
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="phase_diagram only: float64 (default) or float32 (stops at 1e-9 ||Y||^2, its "
                        "classification checked equal to float64's on the default grid)" + files)


def _variant(name, args, size):
    """The experiment options of --lr / --dtype (only those off their defaults) and a checked
    --size; _UsageError naming the argument where ``name`` was not validated with them."""
    from engine import experiments as ex
    if size == "published" and name != "phase_diagram":
        raise _UsageError(f"--size published: only phase_diagram has the published-range grid (not {name})")
    try:
        return ex.check_options(name, lr=args.lr, dtype=args.dtype)
    except ValueError as exc:
        raise _UsageError(f"--{exc}") from None


# A grid file with more cells than this is refused unless --yes: expanding 10^6 cells alone takes
# ~30 s and ~0.7 GB before the first run, and is more often a typo than a plan.
MAX_GRID_CELLS = 100_000


def _workers(args):
    if args.serial:
        return 0
    if args.workers is not None:
        cores = os.cpu_count() or 1
        if args.workers > cores:
            raise ValueError(f"--workers: {args.workers} worker processes on a machine with {cores} cores "
                             f"would only compete for them; give at most {cores} (one single-threaded "
                             "run per core), or --scheduler for a cluster")
        return args.workers
    if args.scheduler is None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            return 0   # dask is optional: serial without it
        if (os.cpu_count() or 1) < 2:
            return 0
    return None


_EXPERIMENT_HELP = {
    "hxp": "the README demo: HXP phase diagram (quick grid) + Gaussian vs orthogonal curves",
    "phase_diagram": "HXP phase diagram: log10 rel. loss over (width, depth), per init, with the contour",
    "exponential_curse": "HXP Thm 4.1 / Shamir 2018: steps to leave the [0.4, 0.6]||Y||^2 band vs depth",
    "rate_vs_kappa": "DH: steps to eps vs kappa, deep wide Gaussian net next to linear regression (L = 1)",
    "width_threshold": "smallest trainable width per depth and init (bisection), with fitted slope",
    "lazy_gap": "gap between the true run and its lazy (linearized) twin vs width, depth 8, both inits",
    "sharpness": "edge of stability: Hessian top eigenvalue during GD vs 2/eta, both inits",
    "lyapunov_spectra": "log singular values of the product, Gaussian vs orthogonal vs finite-width theory",
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m engine",
                description="Exact, fast GD on deep linear networks (Du & Hu 2019; Hu, Xiao & Pennington 2020).",
                epilog="examples:\n  python -m engine reproduce hxp        # the papers' main result in ~1-2 minutes\n"
                       "  python -m engine train --init orthogonal --width 128 --depth 64\n"
                       "  python -m engine sweep phase_diagram --db pd.db && python -m engine plot --db pd.db\n"
                       "  python -m engine info --widths 1024,256x63,10\n"
                       "'python -m engine COMMAND --help' shows each command's options.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter

    d = sub.add_parser(
        "demo", help="Gaussian vs orthogonal init at one width and depth (HXP data), table + figure",
        description=(
            "Train a Gaussian (DH) and an orthogonal (HXP) deep linear network of the same shape "
            "on HXP's data (X: 1024x16, Y = W* X, iid N(0,1)), each at its theorem's learning rate, "
            "print final excess loss, steps, fitted per-step rate and the theorem's predicted "
            "factor, and plot excess loss vs step."),
        epilog="examples:\n  python -m engine demo\n  python -m engine demo --width 256 --depth 100 --steps 3000 --out demo.png",
        formatter_class=raw)
    d.add_argument("--width", type=_positive_int, default=128, help="hidden width m (default 128)")
    d.add_argument("--depth", type=_positive_int, default=64, help="depth L (default 64)")
    d.add_argument("--steps", type=_positive_int, default=2000, help="GD step budget (default 2000)")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="init seed (default 0, as train, sweep and reproduce)")
    d.add_argument("--data-seed", type=_nonneg_int, default=0, help="data seed (default 0)")
    d.add_argument("--backend", default="auto", help="auto, numpy, numba or cblas (default auto)")
    d.add_argument("--out", default="engine-demo.png", help="figure path (default engine-demo.png)")
    d.add_argument("--no-plot", action="store_true", help="skip the figure")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser(
        "reproduce", help="run one of the papers' experiments at a small default and draw its figure",
        description="Run a paper experiment into a results database (resumable: re-running skips "
                    "finished runs) and draw its figure.\n\nexperiments:\n" +
                    "\n".join(f"  {k:18s} {v}" for k, v in _EXPERIMENT_HELP.items()),
        epilog="examples:\n  python -m engine reproduce hxp                       # ~1-2 min on 2 cores\n"
               "  python -m engine reproduce all --out-dir docs        # every committed figure + table\n"
               "  python -m engine reproduce phase_diagram --out pd.png  # default grid, a few minutes\n"
               "  python -m engine reproduce phase_diagram --full --db full.db   # the published grid (hours)\n"
               "  python -m engine reproduce exponential_curse --size quick --serial",
        formatter_class=raw)
    r.add_argument("experiment", choices=list(_EXPERIMENT_HELP) + ["all"], metavar="EXPERIMENT",
                   help="one of: " + ", ".join(_EXPERIMENT_HELP) + "; 'all' = every figure committed under "
                        "docs/ at its committed grid size, with its table NAME.csv (use --out-dir)")
    r.add_argument("--out-dir", default=None, metavar="DIR",
                   help="with 'all': directory for the figures and their tables (default .)")
    r.add_argument("--size", choices=_SIZES, default=None,
                   help="grid size: tiny (smoke test), quick, default, full; published (phase_diagram only: "
                        "8 widths 10..1000 x 8 depths 1..700, 2 seeds) (default: 'default'; 'quick' for hxp)")
    r.add_argument("--full", action="store_true", help="the published grid (= --size full)")
    _add_variant(r)
    r.add_argument("--db", default=None, help="results database (default engine-EXPERIMENT.db)")
    r.add_argument("--out", default=None, help="figure path (default EXPERIMENT.png)")
    _add_exec(r)
    r.set_defaults(func=cmd_reproduce)

    t = sub.add_parser(
        "train", help="train one configuration, print a summary (optionally history CSV, checkpoint, figure)",
        description="Train one deep linear network by full-batch GD and print a summary. Data: HXP's "
                    "(X 1024x16, Y = W* X) unless --d-in/--n/--d-out/--kappa/--rank say otherwise.",
        epilog="examples:\n  python -m engine train --init orthogonal --width 128 --depth 64\n"
               "  python -m engine train --widths 1024,256x63,10 --lr 1e-5 --steps 500 --history h.csv --plot t.png\n"
               "  python -m engine train --d-in 16 --n 16 --d-out 2 --kappa 10 --width 256 --depth 4 --tol 1e-10",
        formatter_class=raw)
    t.add_argument("--init", choices=["gaussian", "orthogonal", "identity"], default="gaussian",
                   help="initialization (default gaussian; identity: engine.init.identity, HXP's lr)")
    t.add_argument("--width", type=_positive_int, default=128, help="hidden width m (default 128)")
    t.add_argument("--depth", type=_positive_int, default=16, help="depth L (default 16)")
    t.add_argument("--widths", type=_widths_arg, default=None,
                   help="explicit widths d_0,...,d_L, e.g. 1024,256x63,10 (overrides --width/--depth)")
    # _Given: --resume needs to tell data options given on the command line from their defaults
    t.add_argument("--d-in", type=_positive_int, default=1024, action=_Given, help="input dimension (default 1024)")
    t.add_argument("--n", type=_positive_int, default=16, action=_Given, help="samples (default 16)")
    t.add_argument("--d-out", type=_positive_int, default=10, action=_Given, help="output dimension (default 10)")
    t.add_argument("--kappa", type=_positive_float, default=None, action=_Given,
                   help="prescribed condition number of X")
    t.add_argument("--rank", type=_positive_int, default=None, action=_Given, help="prescribed rank of X")
    t.add_argument("--data-seed", type=_nonneg_int, default=0, action=_Given, help="data seed (default 0)")
    t.add_argument("--seed", type=_nonneg_int, default=0, help="init seed (default 0, as demo, sweep and reproduce)")
    t.add_argument("--lr", type=_lr, default="theory", help="learning rate (W-space), 'theory' (default: the init's theorem rate) or 'stable' "
                        "(1 / lambda_max(P(0)), any init)")
    t.add_argument("--steps", type=_nonneg_int, default=None,
                   help="GD step budget (default 1000; with --resume: the checkpoint's, raise it to extend the run)")
    t.add_argument("--tol", type=float, default=None,
                   help="relative tolerance: stop when l - OPT <= TOL * ||Y||_F^2 (default 1e-12 unless "
                        "--atol is given; 0 = run every step); the meaning of tol in engine.train too")
    t.add_argument("--atol", type=float, default=None,
                   help="absolute tolerance: stop when l - OPT <= ATOL (instead of --tol)")
    t.add_argument("--backend", default="auto", help="auto, numpy, numba or cblas (default auto)")
    t.add_argument("--history", default=None, metavar="CSV", help="write t, loss, excess to this CSV")
    t.add_argument("--checkpoint", default=None, metavar="PATH", help="checkpoint file (if this engine supports it)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=100, help="steps between checkpoints (default 100)")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh over an existing --checkpoint file (default: resume it when it holds "
                        "this same run, refuse otherwise)")
    t.add_argument("--resume", default=None, metavar="PATH",
                   help="continue the run saved in this checkpoint (its data, network, lr, tol and backend; "
                        "the other options describing the run are ignored). Data above 64 MiB are not "
                        "stored in it: give the run's data options (--d-in, --n, --d-out, --kappa, --rank, "
                        "--data-seed) again, as the summary of that run prints them")
    t.add_argument("--plot", default=None, metavar="PNG",
                   help="figure of the excess loss vs step (with --record sharpness: sharpness vs 2/eta; "
                        "with --record lazy: the linearized run)")
    t.add_argument("--record", type=_record_arg, action="append", default=None, metavar="NAME:STRIDE",
                   help="record a diagnostic every STRIDE steps (repeatable), NAME one of "
                        "gram, spectra, interior, distance, sharpness, lazy; e.g. --record sharpness:10")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    t.add_argument("--log-every", default=None, metavar="N|Ns",
                   help="progress as one line on stderr every N steps (500) or N seconds (10s); default: "
                        "a bar on a terminal, otherwise a line every 10 s")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "sweep", help="run a named experiment or a JSON grid file into a results database",
        description="Run a grid of configurations into an SQLite results database: one row per run, "
                    "committed as it finishes; re-running skips finished runs (and retries failed ones). "
                    "TARGET is an experiment name (" + ", ".join(k for k in _EXPERIMENT_HELP if k != "hxp") +
                    ") or a JSON grid file: {\"name\": \"mygrid\", \"grid\": {\"init\": [\"gaussian\", "
                    "\"orthogonal\"], \"width\": [16, 64], \"depth\": [4, 16], \"seed\": [0, 1], \"steps\": 500}} "
                    "(lists are crossed; \"grid\" may also be a list of such dicts; fields: see "
                    "engine.sweep.DEFAULT_CONFIG).",
        epilog="examples:\n  python -m engine sweep phase_diagram --db pd.db\n"
               "  python -m engine sweep phase_diagram --full --db full.db --scheduler tcp://10.0.0.1:8786\n"
               "  python -m engine sweep grid.json --db g.db --workers 4 --export g.csv",
        formatter_class=raw)
    s.add_argument("target", metavar="TARGET", help="experiment name or JSON grid file")
    s.add_argument("--db", required=True, help="results database (created if absent)")
    s.add_argument("--size", choices=_SIZES, default=None,
                   help="grid size of a named experiment (default 'default'; published: phase_diagram only)")
    s.add_argument("--full", action="store_true", help="the published grid (= --size full)")
    _add_variant(s, grid_files=True)
    s.add_argument("--export", default=None, metavar="CSV", help="also export all rows to this CSV")
    s.add_argument("--no-retry-failed", action="store_true", help="do not re-run runs stored as failed (grid files)")
    s.add_argument("--lock-timeout", type=_positive_float, default=10.0,
                   help="seconds to wait for a database locked by another process (default 10)")
    s.add_argument("--allow-version-mismatch", action="store_true",
                   help="add runs to a database written by another engine version")
    _add_exec(s)
    s.set_defaults(func=cmd_sweep)

    pl = sub.add_parser(
        "plot", help="figures from a results database",
        description="Draw the figure of every experiment stored in a results database (or one, with "
                    "--experiment). Named experiments get their paper figure; a custom grid gets a "
                    "heat map over (width, depth) per init, or its loss curves.",
        epilog="examples:\n  python -m engine plot --db pd.db\n  python -m engine plot --db g.db --experiment mygrid --out-dir figs",
        formatter_class=raw)
    pl.add_argument("--db", required=True, help="results database")
    pl.add_argument("--experiment", default=None, help="only this experiment")
    pl.add_argument("--out-dir", default=".", help="directory for the PNGs (default .)")
    pl.set_defaults(func=cmd_plot)

    e = sub.add_parser(
        "export", help="export a results database to CSV (and Parquet if pyarrow is installed)",
        description="Write one row per run (config fields and results) to CSV or Parquet.",
        epilog="examples:\n  python -m engine export --db pd.db --csv pd.csv\n  python -m engine export --db pd.db --parquet pd.parquet",
        formatter_class=raw)
    e.add_argument("--db", required=True, help="results database")
    e.add_argument("--csv", default=None, help="CSV output path")
    e.add_argument("--parquet", default=None, help="Parquet output path (needs pyarrow)")
    e.add_argument("--experiment", default=None, help="only this experiment")
    e.set_defaults(func=cmd_export)

    tc = sub.add_parser(
        "theorycheck", help="one trajectory per init measured against DH Thm 4.1 / HXP Thm 3.1 (table + figure)",
        description="Train a Gaussian network at DH's learning rate d_out / (3 L ||X||^2) and an orthogonal one "
                    "of the same shape at HXP's d_y / (2 L ||X||^2) on synthetic data (Y = W* X; X 32x8 with "
                    "condition number 2 by default), recording P(t), the partial-product spectra and the "
                    "distance from init every step, and print a markdown table of the measured per-step "
                    "contraction, Gram eigenvalues, spectra and distance against the theorems' factors, bounds "
                    "and radii (engine.experiments.theory_check).",
        epilog="examples:\n  python -m engine theorycheck --out docs/theory-check.png\n"
               "  python -m engine theorycheck --data 1024,16,10 --kappa 0      # HXP's own data shape\n"
               "  python -m engine theorycheck --record-cost 256,64",
        formatter_class=raw)
    tc.add_argument("--out", default=None, help="write the figure here (PNG)")
    tc.add_argument("--steps", type=_positive_int, default=80, help="GD steps (default 80)")
    tc.add_argument("--width", type=_positive_int, default=512, help="hidden width m (default 512)")
    tc.add_argument("--depth", type=_depth_arg, default=6, help="depth L >= 2 (default 6)")
    tc.add_argument("--data", type=_ints_arg(3, "d_in,n,d_out"), default=(32, 8, 2), metavar="D_IN,N,D_OUT",
                    help="data shape (default 32,8,2)")
    tc.add_argument("--kappa", type=_nonneg_float, default=2.0,
                    help="condition number of X^T X (default 2; 0: iid N(0,1) X, as HXP)")
    tc.add_argument("--seed", type=_nonneg_int, default=0, help="data seed; the inits use seed + 1 (default 0)")
    tc.add_argument("--backend", default="numpy", help="auto, numpy, numba or cblas (default numpy)")
    tc.add_argument("--record-cost", type=_ints_arg(2, "M,L"), default=None, metavar="M,L",
                    help="instead: time each diagnostic at width M, depth L (HXP data 1024x16, d_out 10) "
                         "relative to one GD step, e.g. --record-cost 256,64")
    tc.set_defaults(func=cmd_theorycheck)

    i = sub.add_parser("info", help="version, backends, threads, BLAS, memory estimate",
                       description="Print the engine version, each backend's availability (and why not), "
                                   "the thread settings and BLAS libraries, and with --widths the memory a "
                                   "network of those widths needs.",
                       epilog="examples:\n  python -m engine info\n  python -m engine info --widths 1024,1000x699,10 --dtype float32",
                       formatter_class=raw)
    i.add_argument("--widths", type=_width_runs_arg, default=None, help="widths d_0,...,d_L, e.g. 1024,256x63,10")
    i.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="dtype (default float64)")
    i.add_argument("--ensemble", type=_positive_int, default=1, help="ensemble members (default 1)")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # outside a command (parsing, imports): nothing ran, nothing to keep
        _quiet_stderr_line("interrupted: nothing had started, nothing to keep")
        return 130
    except BrokenPipeError:
        return _closed_stdout()


def _closed_stdout() -> int:
    """stdout was closed by its reader (``python -m engine info | head -3``): end quietly.
    Further writes (and the interpreter's flush at exit) go to /dev/null instead of raising."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pragma: no cover - stdout without a descriptor
        pass
    return 141   # 128 + SIGPIPE, as a shell reports a command a closed pipe stopped


def _quiet_stderr_line(text):
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # pragma: no cover - stderr closed too
        pass


def _main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from engine.checkpoint import CheckpointError
    from engine.results import ResultsDBError
    import warnings

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line   # restored on exit of the block
            return int(args.func(args) or 0)
    except BrokenPipeError:
        return _closed_stdout()
    except (ValueError, TypeError, _UsageError, ResultsDBError,
            FileNotFoundError, IsADirectoryError, CheckpointError) as exc:   # bad arguments, paths or files
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _quiet_stderr_line(_interrupt_message(args))
        return 130
    except Exception as exc:  # a clear one-line error instead of a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _interrupt_message(args) -> str:
    """The one line printed on Ctrl-C: what is kept and how to resume (issue 11 item 1, issue 12 item 3)."""
    cmd = args.command
    if cmd == "train":
        path = getattr(args, "checkpoint", None) or getattr(args, "resume", None)
        if path and os.path.isfile(path):
            return (f"interrupted: checkpoint {path} keeps the state of its last write (every "
                    f"{args.checkpoint_every} steps); run the same command again to resume from it")
        return "interrupted: nothing was saved (give --checkpoint PATH to make a run resumable)"
    if cmd in ("sweep", "reproduce"):
        if cmd == "reproduce" and getattr(args, "experiment", None) == "all":
            return ("interrupted: every finished run is in the engine-NAME.db files here; run the same "
                    "command again to resume (finished runs are skipped)")
        if getattr(args, "estimate", False):
            return "interrupted: nothing had run (--estimate only predicts), nothing to keep"
        db = getattr(args, "db", None) or f"engine-{getattr(args, 'experiment', '')}.db"
        return (f"interrupted: every finished run is in {db}; run the same command again to resume "
                "(finished runs are skipped)")
    if cmd == "demo":
        return "interrupted: the demo keeps nothing until it finishes (seconds to minutes); run it again"
    if cmd in ("plot", "export"):
        return (f"interrupted: the database {getattr(args, 'db', '')} is unchanged (only read); the "
                f"{'figures' if cmd == 'plot' else 'export'} may be incomplete: run the same command again")
    if cmd == "theorycheck":
        return "interrupted: theorycheck keeps nothing until it finishes; run it again"
    return "interrupted: nothing to keep"


class _UsageError(Exception):
    """A bad combination of arguments (exit 2)."""


def _check_backend(name, widths=None):
    """Refuse an unknown or unavailable --backend before any work or output (ValueError /
    BackendUnavailable naming backend)."""
    from engine import kernels
    try:
        kernels.get(name, shape=None if widths is None else (widths, 1))
    except kernels.BackendUnavailable as exc:
        raise _UsageError(f"--{exc}") from None
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None


def _stop_args(args):
    """(tol, atol) for engine.train from --tol / --atol; both relative/absolute as in the API."""
    for name in ("tol", "atol"):
        v = getattr(args, name)
        if v is not None and not (v >= 0 and np.isfinite(v)):
            raise ValueError(f"--{name}: must be a finite number >= 0, got {v}")
    if args.tol is not None and args.atol is not None:
        raise _UsageError("--tol and --atol: give one (--tol relative to ||Y||_F^2, --atol absolute)")
    if args.atol is not None:
        return None, (args.atol if args.atol > 0 else None)
    tol = 1e-12 if args.tol is None else args.tol
    return (tol if tol > 0 else None), None


def _log_every(args):
    from engine.recording import log_every_value
    try:
        log_every_value(args.log_every)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--{exc}") from None


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def cmd_theorycheck(args) -> int:
    from engine.experiments import theory_check as tc
    _check_backend(args.backend)
    if args.record_cost:
        m, L = args.record_cost
        res = {init: tc.record_cost(m, L, backend=args.backend, init=init) for init in ("orthogonal", "gaussian")}
        print(f"| (m, L) = ({m}, {L}), {args.backend} backend | orthogonal: seconds | in GD steps "
              "| gaussian: seconds | in GD steps |")
        print("|---|---|---|---|---|")
        for (name, so, ro), (_, sg, rg) in zip(res["orthogonal"], res["gaussian"]):
            print(f"| {name} | {so:.4f} | {ro:.2f} | {sg:.4f} | {rg:.2f} |")
        return 0
    t0 = time.perf_counter()
    res = tc.run_check(args.width, args.depth, args.steps, args.seed, data=args.data,
                       kappa=args.kappa if args.kappa > 0 else None, backend=args.backend)
    print(tc.table(res))
    if args.out:
        tc.figure(res, args.out)
        print(f"\nfigure written to {args.out}")
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_info(args) -> int:
    import engine
    from engine import kernels

    print(f"engine {engine.__version__} (numpy {np.__version__}, python {sys.version.split()[0]})")
    print("backends:")
    for name, (ok, why) in kernels.availability().items():
        print(f"  {name:7s} {'available' if ok else 'unavailable: ' + why}")
    if args.widths is None:
        print("  auto    picks per network shape ('python -m engine info --widths 1024,256x63,10' "
              "prints its choice for those widths, and why)")
    if kernels.availability()["cblas"][0]:
        from engine.kernels import cblas_backend
        print(f"  cblas schedule={cblas_backend.SCHEDULE} openmp_threads={cblas_backend.openmp_threads}")
    print(f"cpu cores: {os.cpu_count()}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if var in os.environ:
            print(f"  {var}={os.environ[var]}")
    if "numba" in sys.modules:
        try:
            import numba
            print(f"  numba {numba.__version__} threads={numba.get_num_threads()}")
        except Exception:  # pragma: no cover
            pass
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            # OpenMP runtimes report no version: name the library instead
            lib = pool.get("prefix") or os.path.basename(pool.get("filepath") or "") or "?"
            impl = pool.get("internal_api")
            desc = lib if impl in (None, lib, pool.get("user_api")) else f"{impl} ({lib})"
            ver = f" {pool['version']}" if pool.get("version") else ""
            print(f"  {pool.get('user_api')}: {desc}{ver} threads={pool.get('num_threads')}")
    except ImportError:
        pass
    try:
        import distributed
        print(f"dask.distributed {distributed.__version__} (sweeps run on a LocalCluster by default)")
    except ImportError:
        print("dask.distributed not installed: sweeps run serially (pip install 'engine[dist]')")
    if args.widths is not None:
        # arithmetic on the run-length form: 1000x10000000 is never expanded into a list
        runs = args.widths
        from engine import memory
        est = memory.estimate_runs(runs, dtype=args.dtype, ensemble=args.ensemble)
        weights = memory.breakdown_runs(runs, dtype=args.dtype, ensemble=args.ensemble)["weights"]
        avail = memory.available_bytes()
        depth = sum(k for _, k in runs) - 1
        print(f"memory for widths [{runs[0][0]}, ..., {runs[-1][0]}] (depth {depth}, {args.dtype}"
              f"{', ensemble %d' % args.ensemble if args.ensemble > 1 else ''}): "
              f"{_fmt_bytes(est)} (engine.memory.estimate_bytes; weights alone {_fmt_bytes(weights)})")
        if avail is not None:
            print(f"  available: {_fmt_bytes(avail)}" + ("" if est <= avail else
                  "  -> does not fit: try --dtype float32 or smaller widths"))
        # what backend="auto" runs for these widths (data of rank d_0); may calibrate once
        if depth <= 100_000 and est <= (avail or est):
            w = [d for d, k in runs for _ in range(k)]
            name, threads, why = kernels.auto_choice(w, w[0], args.dtype)
            print(f"auto for these widths: {name}"
                  f"{'' if threads is None else f', {threads} thread(s)'} -- {why}")
        else:
            print("auto for these widths: not evaluated (the network is too deep or does not fit)")
    return 0


# ------------------------------------------------------------------ reproduce / sweep / plot / export

def _size(args):
    if args.full and args.size not in (None, "full"):
        raise _UsageError("--full and --size disagree; give one")
    return "full" if args.full else (args.size or "default")


def cmd_reproduce(args) -> int:
    from engine import experiments as ex
    name = args.experiment
    size = _size(args)
    _check_backend(args.backend)
    workers = _workers(args)
    if name == "all":
        return _reproduce_all(args, workers)
    if args.out_dir is not None:
        raise _UsageError("--out-dir: only with 'reproduce all' (give --out for one figure)")
    if name == "hxp" and (args.full or args.size not in ("tiny", "quick", None)):
        raise _UsageError("reproduce hxp: --size must be tiny or quick (use 'reproduce phase_diagram' "
                          "for the default and full grids)")
    if name == "hxp":
        size = args.size or "quick"
    opts = _variant(name, args, size)
    db = args.db or f"engine-{name}.db"
    out = args.out or f"{ex.phase_name(**opts) if name == 'phase_diagram' else name}.png"
    t0 = time.perf_counter()
    kw = dict(workers=workers, scheduler=args.scheduler, backend=args.backend, progress=not args.no_progress,
              threads_per_run=args.threads_per_run, **opts)
    if args.estimate:
        _announce(name, size, db, args, workers, options=opts)
        return 0
    from engine.results import ResultsDB
    ResultsDB(db).close()   # a locked, read-only or foreign database fails before anything else
    _announce(name, size, db, args, workers, options=opts)
    print(f"{name}: {_EXPERIMENT_HELP[name]}")
    print(f"database {db} (re-run to resume), {'serial' if workers == 0 else 'dask'}; figure {out}")
    if name == "hxp":
        rows, curves = ex.hxp_demo(db, plot=out, size=size, **kw)
        _print_phase(rows)
        for r in curves:
            print(f"  curve {r['init']:10s} width {r['width']} depth {r['depth']}: {r['status']}, "
                  f"{r['steps_run']} steps, final rel. excess {r['rel_excess']:.3e}, "
                  f"rate {ex.nan_for_none(r['rate']):.5f}")
        header, recs = ex.figure_table("hxp", rows, curves)
        rows = rows + curves
    else:
        rows = ex.run(name, db, size=size, plot=out, **kw)
        _SUMMARIES[name](rows)
        header, recs = ex.figure_table(name, rows)
    table = ex.write_table(os.path.splitext(out)[0] + ".csv", header, recs)   # the numbers the figure draws
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"{len(rows)} runs ({failed} failed); figure {out}, its table {table}; "
          f"{time.perf_counter() - t0:.1f} s")
    return _failed_exit(failed, db)


def _failed_exit(failed, db) -> int:
    """Exit status of a sweep: 1 (and one line on stderr saying how many) when any run failed."""
    if not failed:
        return 0
    print(f"error: {failed} run{'s' if failed != 1 else ''} failed (stored with status 'failed' and "
          f"the error in {db}; 'python -m engine export --db {db} --csv runs.csv' shows them; run the same "
          "command again to retry them)", file=sys.stderr)
    return 1


def _announce(name, size, db, args, workers, cells=None, weights=None, note="", options=None):
    """The first line of a sweep (issue 15 item 2): runs to do, predicted wall time on this
    machine, peak memory per worker. Runs already in ``db`` are not counted. ``options``: the
    experiment's lr / dtype (``_variant``)."""
    from engine import cost, sweep
    from engine import experiments as ex
    if cells is None:
        cells, note = ex.planned_configs(name, size, **(options or {}))
        if cells is None:
            print(f"estimate: {name} is a serial loop of seconds, not a sweep: nothing to predict")
            return None
    skipped = 0
    if weights is None:
        cells, skipped = sweep.unfinished(cells, db)
    W, mode = sweep.planned_workers(workers, args.scheduler)
    est = cost.estimate(cells, W, backend=args.backend, threads_per_run=args.threads_per_run, mode=mode,
                        weights=weights, skipped=skipped)
    remote = "; a cluster of N such workers takes about 1/N of it" if mode == "remote" else ""
    print(f"estimate: {est}{note}{remote}", flush=True)
    return est


def _reproduce_all(args, workers) -> int:
    from engine import experiments as ex
    if args.out or args.db or args.size or args.full or args.lr != "theory" or args.dtype != "float64":
        raise _UsageError("reproduce all: --out, --db, --size, --full, --lr and --dtype do not apply (each "
                          "figure uses its committed grid and settings; databases are engine-NAME.db here; "
                          "use --out-dir)")
    out_dir = args.out_dir or "."
    t0 = time.perf_counter()
    if args.estimate:
        for name, (exp, size) in ex.COMMITTED_FIGURES.items():
            print(f"{name}: ", end="")
            _announce(exp, size, f"engine-{name}.db", args, workers, options=ex.FIGURE_OPTIONS.get(name))
        return 0
    print(f"every committed figure and its table into {out_dir}/ ({', '.join(ex.COMMITTED_FIGURES)}); "
          f"databases engine-NAME.db here (re-run to resume), {'serial' if workers == 0 else 'dask'}")
    for name in ex.COMMITTED_FIGURES:
        exp, size = ex.COMMITTED_FIGURES[name]
        print(f"{name}: ", end="")
        _announce(exp, size, f"engine-{name}.db", args, workers, options=ex.FIGURE_OPTIONS.get(name))
        t1 = time.perf_counter()
        png, csv_path = ex.reproduce_all(out_dir, db_dir=".", names=[name], workers=workers,
                                         scheduler=args.scheduler, backend=args.backend,
                                         progress=not args.no_progress, threads_per_run=args.threads_per_run)[0]
        print(f"  {name:18s} {png}, {csv_path} ({time.perf_counter() - t1:.1f} s)")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    failed, where = 0, []
    from engine.results import ResultsDB, ResultsDBError
    for name in ex.COMMITTED_FIGURES:   # the figures drawn from sweeps keep their runs in engine-NAME.db
        db = f"engine-{name}.db"
        if os.path.exists(db):
            try:
                with ResultsDB(db, readonly=True) as store:
                    n = sum(st == "failed" for st in store.statuses().values())
            except ResultsDBError:
                continue
            if n:
                failed += n
                where.append(db)
    return _failed_exit(failed, ", ".join(where))


def _print_phase(rows):
    from engine import experiments as ex
    for init in ex.inits_of(rows):
        cont = ex.trainability_contour(rows, init)
        pts = [(d, w) for d, w in cont if np.isfinite(w)]
        slope, icpt = ex.fit_line([d for d, _ in pts], [w for _, w in pts])
        txt = ", ".join(f"L={d}: {int(w) if np.isfinite(w) else '>max'}" for d, w in cont)
        left = [d for d, w in cont if not np.isfinite(w)]
        note = f" (L = {', '.join(map(str, left))}: none trainable, not in the fit)" if left else ""
        print(f"  {init:10s} smallest trainable width: {txt}; fit {ex.fmt_line(slope, icpt, len(pts))}{note}")


def _print_curse(rows):
    from engine import experiments as ex
    for k, init, d, med, frac, budget in ex.curse_table(rows):
        print(f"  width {k} {init:10s} depth {d:4d}: median steps to leave band {med:9.0f} "
              f"({frac:.0%} escaped within {budget})")


def _print_kappa(rows):
    from engine import experiments as ex
    for L, w, k, med in ex.kappa_table(rows):
        print(f"  L={L:3d} width {w:5d} kappa {k:7.1f}: median steps to eps {med:9.0f}")


def _print_threshold(rows):
    from engine import experiments as ex
    for init, pts in ex.threshold_table(rows).items():
        slope, icpt = ex.fit_line([d for d, _ in pts], [w for _, w in pts])
        txt = ", ".join(f"L={d}: {int(w) if np.isfinite(w) else '>max'}" for d, w in pts)
        n = sum(np.isfinite(w) for _, w in pts)
        print(f"  {init:10s} {txt}; fit {ex.fmt_line(slope, icpt, n)}")


def _print_beyond(rows):
    print(f"  {len(rows)} rows (init, width, depth, ...): see the table NAME.csv")


_SUMMARIES = {"phase_diagram": _print_phase, "exponential_curse": _print_curse,
              "rate_vs_kappa": _print_kappa, "width_threshold": _print_threshold,
              "lazy_gap": _print_beyond, "sharpness": _print_beyond, "lyapunov_spectra": _print_beyond}


def _drain(items: list):
    """Yield the items of ``items`` in order, dropping each from the list as it goes, so the
    caller's list and its consumer's copy are not both held whole (a 10^5-cell grid)."""
    items.reverse()
    while items:
        yield items.pop()


def cmd_sweep(args) -> int:
    from engine import experiments as ex
    from engine import sweep
    size = _size(args)
    _check_backend(args.backend)
    workers = _workers(args)
    t0 = time.perf_counter()
    kw = dict(workers=workers, scheduler=args.scheduler, backend=args.backend, progress=not args.no_progress,
              threads_per_run=args.threads_per_run)
    target = args.target
    from engine.results import ResultsDB
    if target in ex.EXPERIMENTS:
        opts = _variant(target, args, size)
        kw.update(opts)
        if args.estimate:
            _announce(target, size, args.db, args, workers, options=opts)
            return 0
        # the database first: a locked, read-only or foreign one fails before anything else
        db = ResultsDB(args.db, allow_version_mismatch=args.allow_version_mismatch, lock_timeout=args.lock_timeout)
        try:
            _announce(target, size, args.db, args, workers, options=opts)
            rows = ex.run(target, db, size=size, **kw)
        finally:
            db.close()
        failed = sum(r["status"] == "failed" for r in rows)
        print(f"{target}: {len(rows)} runs in {args.db} ({failed} failed); {time.perf_counter() - t0:.1f} s")
    elif os.path.exists(target):
        for opt, default in (("lr", "theory"), ("dtype", "float64")):
            if getattr(args, opt) != default:
                raise _UsageError(f"--{opt}: for a named experiment only; a grid file gives it in its "
                                  f"{opt!r} field, e.g. \"{opt}\": [\"{getattr(args, opt)}\"]")
        name, parts = sweep.read_grid_file(target)
        cells = sum(sweep.grid_size(**p) for p in parts)
        if cells > MAX_GRID_CELLS and not args.yes or args.estimate:
            shapes, weights = sweep.cost_shapes(parts)
            est = _announce(name, None, None, args, workers, cells=shapes, weights=weights)
            if args.estimate:
                return 0
            raise _UsageError(f"grid: {target} has {cells} cells (more than {MAX_GRID_CELLS}; predicted "
                              f"{est.wall / 3600:.1f} h); pass --yes to run it, or make the grid smaller")
        cfgs = sweep.grid_file_configs(parts)
        ResultsDB(args.db, allow_version_mismatch=args.allow_version_mismatch, lock_timeout=args.lock_timeout).close()
        _announce(name, None, args.db, args, workers, cells=cfgs)
        summary = sweep.run_sweep(_drain(cfgs), args.db, experiment=name, retry_failed=not args.no_retry_failed,
                            allow_version_mismatch=args.allow_version_mismatch, lock_timeout=args.lock_timeout,
                            **kw)
        print(f"{name}: {summary} -> {args.db}")
        failed = summary.failed_total
    else:
        raise ValueError(f"TARGET: {target!r} is neither an experiment ({', '.join(ex.EXPERIMENTS)}) "
                         "nor an existing grid file")
    if args.export:
        with ResultsDB(args.db, readonly=True) as store:
            n = store.export_csv(args.export)
        print(f"exported {n} rows to {args.export}")
    return _failed_exit(failed, args.db)


def cmd_plot(args) -> int:
    from engine import experiments as ex
    from engine.results import ResultsDB
    with ResultsDB(args.db, readonly=True) as store:
        if store.version_warning:
            print(f"note: {store.version_warning}", file=sys.stderr)
        names = [args.experiment] if args.experiment else [n for n in store.experiments() if n]
        if args.experiment and args.experiment not in store.experiments():
            raise ValueError(f"--experiment: {args.experiment!r} is not in {args.db} "
                             f"(it has {store.experiments()})")
        if not names:
            raise ValueError(f"{args.db} holds no runs")
        for name, path in ex.plot_db(store, names, args.out_dir):
            print(f"figure: {path}" if path else f"{name}: no successful runs, no figure")
    return 0


def cmd_export(args) -> int:
    from engine.results import ResultsDB
    if not args.csv and not args.parquet:
        raise _UsageError("give --csv PATH and/or --parquet PATH")
    with ResultsDB(args.db, readonly=True) as store:
        if args.csv:
            print(f"exported {store.export_csv(args.csv, args.experiment)} rows to {args.csv}")
        if args.parquet:
            print(f"exported {store.export_parquet(args.parquet, args.experiment)} rows to {args.parquet}")
    return 0


# ------------------------------------------------------------------ train

def _where_saved(run, args, checkpoint):
    """The summary's lines saying where the checkpoint and the history went."""
    if checkpoint:
        import engine
        try:
            saved = engine.checkpoint.load(checkpoint)
            step, stored = saved.step, "data_X" in saved.arrays
            data = "" if stored else " " + _data_options(args)   # data above 64 MiB: not in the file
            print(f"checkpoint: {checkpoint} (state of step {step}; continue with "
                  f"'python -m engine train --resume {checkpoint}{data} --steps N')")
        except (OSError, engine.checkpoint.CheckpointError) as exc:
            print(f"checkpoint: {checkpoint} could not be read back ({exc})")
    else:
        print("checkpoint: none written (--checkpoint PATH keeps a resumable state)")
    if getattr(args, "history", None):
        import csv
        d = os.path.dirname(os.path.abspath(args.history))
        os.makedirs(d, exist_ok=True)
        with open(args.history, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t", "loss", "excess"])
            for a, b, c in zip(run.t, run.loss, run.excess):
                w.writerow([int(a), repr(float(b)), repr(float(c))])
        print(f"history: {args.history} ({len(run.t)} rows: t, loss, excess)")
    elif not getattr(args, "resume", None):
        print("history: not written (--history CSV writes t, loss, excess)")


def _resume_problem(args, saved):
    """The Problem to resume ``saved`` on: None when the checkpoint stores its data and no data
    option was given; else the synthetic data of the data options, which must be the run's
    (issue 11 item 10: a checkpoint of data above 64 MiB holds only their fingerprint)."""
    import engine
    stored = "data_X" in saved.arrays
    if stored and not args.data_given:
        return None
    X, Y = engine.synthetic(args.d_in, args.n, args.d_out, seed=args.data_seed, rank=args.rank, kappa=args.kappa)
    prob = engine.Problem(X, Y)
    if prob.fingerprint != saved.meta["problem"]:
        opts = _data_options(args)
        if stored:
            raise ValueError(f"--d-in/--n/--d-out/--kappa/--rank/--data-seed: {opts} give other data than the "
                             f"run in {args.resume} was trained on; leave them out (the checkpoint stores its data)")
        raise ValueError(f"--resume: {args.resume} does not store its data (X and Y above "
                         f"{engine.checkpoint.DATA_LIMIT // 1024 ** 2} MiB) and the data options ({opts}"
                         f"{'' if args.data_given else ', the defaults'}) give other data than it was trained on; "
                         "pass the data options of the run that wrote it")
    return prob


def _resume_train(args) -> int:
    """``train --resume PATH``: everything describing the run comes from the checkpoint (the
    data from the data options when it does not store them)."""
    import engine
    saved = engine.checkpoint.load(args.resume)
    prob = _resume_problem(args, saved)
    kw = {} if args.steps is None else {"steps": args.steps}
    if prob is not None:
        kw["prob"] = prob
    if args.checkpoint:
        kw.update(checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    last = f", last recorded l - OPT {saved.excess[-1]:.4e} at t = {int(saved.t[-1])}" if len(saved.t) else ""
    print(f"resuming {args.resume}: state of step {saved.step}{last}")
    try:
        run = engine.train(resume=args.resume, progress=not args.no_progress, log_every=args.log_every, **kw)
        status = "converged" if run.converged else "budget"
    except engine.DivergenceError as exc:
        run, status = exc.result, "diverged"
        print(f"diverged: {exc}", file=sys.stderr)
    net = run.net if status != "diverged" else None
    ex0 = run.excess[0]
    shape = f", widths [{net.widths[0]}, ..., {net.widths[-1]}], depth {net.depth}, {net.init}" if net else ""
    print(f"lr {run.lr:.5g}, backend {run.backend}{shape}")
    print(f"status {status}: {run.steps} steps in all, l - OPT {ex0:.4e} -> {run.excess[-1]:.4e} "
          f"(relative {run.excess[-1] / ex0 if ex0 > 0 else float('nan'):.3e}), fitted rate {run.rate:.6f}")
    _where_saved(run, args, args.checkpoint or args.resume)
    return 0 if status != "diverged" else 1


# train's data options (HXP's data by default: X 1024 x 16, Y = W* X, 10 outputs).
_DATA_OPTIONS = ("d_in", "n", "d_out", "kappa", "rank", "data_seed")


def _data_given(args) -> bool:
    """Whether any data option was given on the command line (not just its default)."""
    return bool(set(_DATA_OPTIONS) & getattr(args, "given", set()))


def _data_options(args) -> str:
    """The data options that rebuild this run's data (for the resume hint)."""
    out = f"--d-in {args.d_in} --n {args.n} --d-out {args.d_out} --data-seed {args.data_seed}"
    if args.kappa is not None:
        out += f" --kappa {args.kappa!r}"
    if args.rank is not None:
        out += f" --rank {args.rank}"
    return out


def cmd_train(args) -> int:
    import engine
    # every option is checked before any output or work
    args.data_given = _data_given(args)
    _check_backend(args.backend, args.widths)
    tol, atol = _stop_args(args)
    _log_every(args)
    if args.resume:
        if args.history or args.plot or args.record:
            raise _UsageError("--resume: --history, --plot and --record are not supported when resuming")
        return _resume_train(args)
    if args.steps is None:
        args.steps = 1000
    _check_outputs(args)
    widths = args.widths or [args.d_in] + [args.width] * (args.depth - 1) + [args.d_out]
    if widths[0] != args.d_in or widths[-1] != args.d_out:
        raise ValueError(f"--widths: d_0 = {widths[0]} and d_L = {widths[-1]} must match the data's "
                         f"d_in = {args.d_in} and d_out = {args.d_out}")
    kw = {}
    if args.checkpoint:
        engine.checkpoint.check_writable(args.checkpoint)
        kw.update(checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, overwrite=args.overwrite)
        if os.path.isfile(args.checkpoint) and not args.overwrite:
            print(f"checkpoint {args.checkpoint} exists: resuming it if it holds this run "
                  "(--overwrite starts afresh)")
    X, Y = engine.synthetic(args.d_in, args.n, args.d_out, seed=args.data_seed, rank=args.rank, kappa=args.kappa)
    prob = engine.Problem(X, Y)
    if args.record:
        kw["record"] = dict(args.record)
    net = engine.init.by_name(args.init)(widths, seed=args.seed)
    print(f"data: X {args.d_in}x{args.n}, Y {args.d_out}x{args.n}, rank {prob.rank}, kappa {prob.kappa:.4g}, "
          f"||Y||_F^2 {prob.y_norm_sq:.4g}")
    print(f"network: {args.init} (seed {args.seed}), depth {len(widths) - 1}, widths [{widths[0]}, "
          f"{widths[1] if len(widths) > 2 else ''}{', ...' if len(widths) > 3 else ''}, {widths[-1]}]")
    stop = (f"l - OPT <= {atol:g}" if atol is not None else
            f"l - OPT <= {tol:g} ||Y||_F^2" if tol is not None else "none (every step)")
    print(f"stop: {stop}; budget {args.steps} steps")
    try:
        run = engine.train(net, prob, lr=args.lr, steps=args.steps, tol=tol, atol=atol, backend=args.backend,
                           progress=not args.no_progress, log_every=args.log_every, **kw)
        status = "converged" if run.converged else "budget"
    except engine.DivergenceError as exc:
        run, status = exc.result, "diverged"
        print(f"diverged: {exc}", file=sys.stderr)
    ex0 = run.excess[0]
    rule = {"theory": "theory", "stable": "stable: 1/lambda_max(P(0))"}.get(args.lr, "given")
    note = engine.theory.width_note(net, prob)
    print(f"lr {run.lr:.5g} ({rule}), backend {run.backend}")
    print(f"status {status}: {run.steps} steps, l - OPT {ex0:.4e} -> {run.excess[-1]:.4e} "
          f"(relative {run.excess[-1] / ex0 if ex0 > 0 else float('nan'):.3e}), fitted rate {run.rate:.6f}, "
          f"theorem factor {run.predicted:.6f} {note}, {run.wall_time:.2f} s")
    _where_saved(run, args, args.checkpoint)
    if args.plot:
        from engine.experiments import plotting
        plotting.plot_train_run(run, args.plot, f"{args.init}, depth {len(widths) - 1}, {status}", args.init, note)
        print(f"figure: {args.plot}")
    return 0 if status != "diverged" else 1


def _check_outputs(args):
    """Refuse an unwritable --history or a --plot format matplotlib cannot write *before* training."""
    if args.history:
        d = os.path.dirname(os.path.abspath(args.history))
        if os.path.isdir(args.history):
            raise ValueError(f"--history: {args.history!r} is a directory, not a CSV file path")
        probe = d
        while not os.path.isdir(probe):   # the directories are created later: check the first existing one
            if os.path.exists(probe):
                raise ValueError(f"--history: {args.history!r} cannot be written ({probe!r} is a file, "
                                 "not a directory)")
            probe = os.path.dirname(probe)
        try:   # really create a file there: os.access says yes for root even on /proc
            import tempfile
            with tempfile.TemporaryFile(dir=probe):
                pass
            writable = not os.path.exists(args.history) or os.access(args.history, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            raise ValueError(f"--history: {args.history!r} cannot be written (directory {probe!r} "
                                  "or the file is not writable)")
    if args.plot:
        ext = os.path.splitext(args.plot)[1].lower().lstrip(".")
        try:
            from engine.experiments import plotting
            kinds = plotting.figure_formats()
        except RuntimeError:
            raise _UsageError("--plot: needs matplotlib (pip install 'engine[plot]')") from None
        if ext not in kinds:
            raise ValueError(f"--plot: cannot write a {'.' + ext if ext else 'file without extension'} "
                             f"figure; use one of {', '.join('.' + k for k in sorted(kinds))}")


def cmd_demo(args) -> int:
    t0 = time.perf_counter()
    _check_backend(args.backend)
    from engine import experiments as ex
    prob, rows = ex.demo(args.width, args.depth, args.steps, args.seed, args.data_seed, args.backend)
    for r in rows:
        if r["status"] == "failed":
            raise RuntimeError(f"the {r['init']} run failed: {r['error']}")
    print(f"HXP data: X 1024x16, Y = W* X (10x16), ||Y||_F^2 = {prob.y_norm_sq:.4g}, kappa = {prob.kappa:.3f}")
    print(f"network: width {args.width}, depth {args.depth}; lr = the theorem's (DH Thm 4.1 / HXP Thm 3.1); "
          f"tol = 1e-12 ||Y||_F^2; budget {args.steps} steps")
    print()
    hdr = f"{'init':11s} {'lr':>10s} {'steps':>6s} {'status':>10s} {'final excess':>13s} " \
          f"{'excess/l(0)':>12s} {'fitted rate':>12s} {'theorem factor':>15s} {'time s':>7s}"
    print(hdr)
    print("-" * len(hdr))
    num = ex.nan_for_none
    for r in rows:
        print(f"{r['init']:11s} {r['lr']:10.4g} {r['steps_run']:6d} {ex.outcome(r):>10s} "
              f"{num(r['final_excess']):13.4e} {num(r['rel_excess']):12.3e} {num(r['rate']):12.6f} "
              f"{num(r['predicted']):15.6f} {r['wall_time']:7.2f}")
    for r in rows:
        print(f"{r['init']} theorem factor {num(r['predicted']):.6f} {r['width_note']}")
    print()
    print("fitted rate: per-step contraction of l - OPT fitted over the tail of the run; theorem factor: "
          "the per-step factor the theorem guarantees (only when its width condition holds).")
    if not args.no_plot:
        try:
            print(f"figure: {ex.plot_demo(rows, args.out)}")
        except RuntimeError:
            print("matplotlib is not installed: no figure (pip install 'engine[plot]')", file=sys.stderr)
    print(f"total time {time.perf_counter() - t0:.1f} s")
    return 0
