"""Command-line interface: ``python -m engine COMMAND``.

Commands
    demo   Gaussian vs orthogonal GD on HXP's data at one (width, depth); table + PNG
    info   version, backends and their availability, thread settings
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


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m engine",
                description="Exact, fast GD on deep linear networks (Du & Hu 2019; Hu, Xiao & Pennington 2020).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser(
        "demo", help="Gaussian vs orthogonal init at one width and depth (HXP data), table + figure",
        description=(
            "Train a Gaussian (DH) and an orthogonal (HXP) deep linear network of the same shape "
            "on HXP's data (X: 1024x16, Y = W* X, iid N(0,1)), each at its theorem's learning rate, "
            "print final excess loss, steps, fitted per-step rate and the theorem's predicted "
            "factor, and plot excess loss vs step."),
        epilog="examples:\n  python -m engine demo\n  python -m engine demo --width 256 --depth 100 --steps 3000 --out demo.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--width", type=_positive_int, default=128, help="hidden width m (default 128)")
    d.add_argument("--depth", type=_positive_int, default=64, help="depth L (default 64)")
    d.add_argument("--steps", type=_positive_int, default=2000, help="GD step budget (default 2000)")
    d.add_argument("--seed", type=int, default=0, help="seed for data and inits (default 0)")
    d.add_argument("--backend", default="auto", help="auto, numpy, numba or cblas (default auto)")
    d.add_argument("--out", default="engine-demo.png", help="figure path (default engine-demo.png)")
    d.add_argument("--no-plot", action="store_true", help="skip the figure")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("info", help="version, backends, threads",
                       description="Print the engine version, each backend's availability (and why not), "
                                   "and the thread settings.",
                       epilog="example:\n  python -m engine info",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a clear one-line error instead of a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def cmd_info(args) -> int:
    import engine
    from engine import kernels

    print(f"engine {engine.__version__} (numpy {np.__version__}, python {sys.version.split()[0]})")
    print("backends:")
    for name, (ok, why) in kernels.availability().items():
        print(f"  {name:7s} {'available' if ok else 'unavailable: ' + why}")
    print(f"  auto  -> {kernels.get('auto').name}")
    print(f"cpu cores: {os.cpu_count()}")
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            print(f"  {pool.get('user_api')}: {pool.get('internal_api')} "
                  f"{pool.get('version')} threads={pool.get('num_threads')}")
    except ImportError:
        pass
    return 0


def run_demo(width=128, depth=64, steps=2000, seed=0, backend="auto"):
    """Train Gaussian and orthogonal nets of widths [1024, m, ..., m, 10] on HXP data.

    Returns a list of dict rows (one per init) with the TrainResult under "run".
    """
    import engine

    X, Y = engine.synthetic(1024, 16, 10, seed=seed)
    prob = engine.Problem(X, Y)
    widths = [1024] + [width] * (depth - 1) + [10]
    tol = 1e-12 * prob.y_norm_sq
    rows = []
    for init in ("gaussian", "orthogonal"):
        net = engine.init.by_name(init)(widths, seed=seed + 1)
        row = {"init": init}
        try:
            run = engine.train(net, prob, lr="theory", steps=steps, tol=tol, backend=backend)
            row.update(run=run, status="converged" if run.converged else "budget")
        except engine.DivergenceError as exc:
            run = exc.result
            row.update(run=run, status="diverged")
        rows.append(row)
    return prob, rows


def cmd_demo(args) -> int:
    t0 = time.perf_counter()
    prob, rows = run_demo(args.width, args.depth, args.steps, args.seed, args.backend)
    print(f"HXP data: X 1024x16, Y = W* X (10x16), ||Y||_F^2 = {prob.y_norm_sq:.4g}, kappa = {prob.kappa:.3f}")
    print(f"network: width {args.width}, depth {args.depth}; lr = the theorem's (DH Thm 4.1 / HXP Thm 3.1); "
          f"tol = 1e-12 ||Y||_F^2; budget {args.steps} steps")
    print()
    hdr = f"{'init':11s} {'lr':>10s} {'steps':>6s} {'status':>10s} {'final excess':>13s} " \
          f"{'excess/l(0)':>12s} {'fitted rate':>12s} {'theorem factor':>15s} {'time s':>7s}"
    print(hdr)
    print("-" * len(hdr))
    for row in rows:
        run = row["run"]
        print(f"{row['init']:11s} {run.lr:10.4g} {run.steps:6d} {row['status']:>10s} "
              f"{run.excess[-1]:13.4e} {run.excess[-1] / run.excess[0]:12.3e} {run.rate:12.6f} "
              f"{run.predicted:15.6f} {run.wall_time:7.2f}")
    print()
    print("fitted rate: per-step contraction of l - OPT fitted over the tail of the run; theorem factor: "
          "the per-step factor the theorem guarantees (when its width condition holds).")
    if not args.no_plot:
        path = plot_demo(rows, args.out, args.width, args.depth)
        if path:
            print(f"figure: {path}")
    print(f"total time {time.perf_counter() - t0:.1f} s")
    return 0


def plot_demo(rows, path, width, depth):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'engine[plot]')", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"gaussian": "tab:red", "orthogonal": "tab:blue"}
    for row in rows:
        run = row["run"]
        ax.semilogy(run.t, run.excess / run.excess[0], color=colors[row["init"]],
                    label=f"{row['init']} (rate {run.rate:.4f})")
        if np.isfinite(run.predicted) and 0 < run.predicted < 1:
            tt = np.arange(0, run.t[-1] + 1)
            ax.semilogy(tt, run.predicted ** tt, color=colors[row["init"]], ls=":", lw=1,
                        label=f"{row['init']} theorem bound ({run.predicted:.4f}^t)")
    ax.set_xlabel("GD step t")
    ax.set_ylabel("(l(t) - OPT) / (l(0) - OPT)")
    ax.set_ylim(bottom=1e-14)
    ax.set_title(f"Deep linear net, width {width}, depth {depth}, HXP data")
    ax.legend(fontsize=8)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
