"""Figure helpers: matplotlib (headless), the one function that saves a figure, init colours,
log-axis cell edges, the learning-rate text of a title; and the figure of one training run
(``python -m engine train --plot``)."""
from __future__ import annotations

import os

import numpy as np

INIT_COLORS = {"gaussian": "tab:red", "orthogonal": "tab:blue", "identity": "tab:green"}


def color(init):
    """The colour an init is drawn in, in every figure."""
    return INIT_COLORS.get(init, "tab:purple")


def log_edges(values):
    """Cell edges on a log axis: geometric midpoints, the ends half a step out."""
    v = np.asarray(sorted(values), float)
    if len(v) == 1:
        return np.array([v[0] / 1.25, v[0] * 1.25])
    mid = np.sqrt(v[1:] * v[:-1])
    return np.concatenate([[v[0] ** 2 / mid[0]], mid, [v[-1] ** 2 / mid[-1]]])


def lr_text(rows):
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


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (RuntimeError naming the extra without it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib (pip install 'engine[plot]')") from None
    return plt


def save(fig, path, dpi=90):
    """Write ``fig`` to ``path`` (its directories created), close it; returns the path."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def figure_formats() -> set:
    """The file extensions ``save`` can write ("png", "pdf", ...); RuntimeError without matplotlib."""
    plt = pyplot()
    fig = plt.figure()
    kinds = set(fig.canvas.get_supported_filetypes())
    plt.close(fig)
    return kinds


def plot_train_run(run, path, title, label, bound_label):
    """One training run (engine.TrainResult): relative excess vs step with the theorem's per-step
    bound (``bound_label``) when it is below 1 and the lazy twin when recorded; beside it, when
    recorded, the sharpness against 2 / eta (edge of stability)."""
    plt = pyplot()
    sharp = run.records.get("sharpness")
    if sharp is not None:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    else:
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
    e = np.asarray(run.excess)
    ax.semilogy(run.t, e / e[0], label=f"{label}, rate {run.rate:.5f}")
    if np.isfinite(run.predicted) and 0 < run.predicted < 1:
        ax.semilogy(run.t, run.predicted ** np.asarray(run.t, float), ":", label=f"theorem bound {bound_label}")
    lazy = run.records.get("lazy")
    if lazy is not None:
        lv = np.asarray(lazy["values"], dtype=float)
        ax.semilogy(lazy["t"], lv[:, 0] / e[0], "--", label="lazy twin (linearized at t = 0)")
    ax.set_xlabel("GD step t")
    ax.set_ylabel("(l(t)-OPT)/(l(0)-OPT)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    if sharp is not None:
        sv = np.asarray(sharp["values"], dtype=float)[:, 0]
        ax2.plot(sharp["t"], sv, "o-", ms=3, label="sharpness lambda_max(Hessian)")
        ax2.axhline(2.0 / run.lr, color="k", ls="--", lw=1, label=f"2 / eta = {2.0 / run.lr:.4g}")
        ax2.set_xlabel("GD step t")
        ax2.set_ylabel("sharpness")
        ax2.set_title("edge of stability: GD is stable while sharpness < 2/eta", fontsize=9)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
