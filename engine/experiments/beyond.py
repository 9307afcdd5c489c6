"""Beyond the two papers: small, serial, deterministic experiments for engine.diagnostics (the lazy
twin's gap, the edge of stability, Lyapunov spectra of the product). They take the usual
reproduce keywords (db, workers, backend, ...) and ignore the ones that do not apply: each is
one process, seconds, nothing to resume."""
from __future__ import annotations

import warnings

import numpy as np

from .. import diagnostics as dg
from ..init import gaussian, identity, orthogonal
from ..problem import Problem, synthetic
from ..train import train
from . import plotting
from .common import INITS, drawn, inits_of, one_blas_thread


def _status(res):
    """converged / diverged / ran (the run's outcome, as in the results tables)."""
    if res.converged:
        return "converged"
    return "diverged" if not np.all(np.isfinite(res.excess)) else "ran"


def _settings(grids, size, **given):
    """The settings of ``size`` ("tiny", else "quick") from ``grids``, those given (not None) replacing them."""
    g = dict(grids["tiny" if size == "tiny" else "quick"])
    g.update({k: v for k, v in given.items() if v is not None})
    return g


def _problem(data):
    """The synthetic Problem of ``data`` (d_in, n, d_out), seed 0."""
    return Problem(*synthetic(data["d_in"], data["n"], data["d_out"], seed=0))


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
    g = _settings(LAZY_GRIDS, size, widths=widths, depth=depth, steps=steps, stride=stride)
    prob = _problem(LAZY_DATA)
    makers = {"gaussian": gaussian, "orthogonal": orthogonal, "identity": identity}
    rows = []
    with one_blas_thread():
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
    return drawn(rows, plot, plot_lazy_gap)


def plot_lazy_gap(rows, path):
    """The gap vs width (log-log), one line per init."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for init in inits_of(rows):
        rs = sorted((r for r in rows if r["init"] == init), key=lambda r: r["width"])
        ax.loglog([r["width"] for r in rs], [r["gap"] for r in rs], "o-", color=plotting.color(init), label=init)
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
    return plotting.save(fig, path)


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
    g = _settings(SHARP_GRIDS, size, width=width, depth=depth, steps=steps, stride=stride, lr_factor=lr_factor)
    prob = _problem(SHARP_DATA)
    rows = []
    with one_blas_thread():
        for init, make in (("gaussian", gaussian), ("orthogonal", orthogonal)):
            ws = [SHARP_DATA["d_in"]] + [g["width"]] * (g["depth"] - 1) + [SHARP_DATA["d_out"]]
            net = make(ws, seed=0)
            lr = g["lr_factor"] / float(dg.sharpness(net, prob, 1)[0])
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
    return drawn(rows, plot, plot_sharpness_eos)


def plot_sharpness_eos(rows, path):
    """eta x sharpness vs step per init, against 2 (sharpness = 2 / eta)."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for init in inits_of(rows):
        rs = [r for r in rows if r["init"] == init]
        ax.plot([r["t"] for r in rs], [r["sharpness"] * r["lr"] for r in rs], "-", color=plotting.color(init),
                label=f"{init}: eta sharpness")
    ax.axhline(2.0, color="k", ls="--", lw=1, label="2 (sharpness = 2/eta)")
    if rows:
        ax.set_title(f"edge of stability, width {rows[0]['width']}, depth {rows[0]['depth']}", fontsize=9)
    ax.set_xlabel("GD step t")
    ax.set_ylabel("eta x sharpness")
    ax.legend(fontsize=8)
    return plotting.save(fig, path)


LYAP_GRIDS = {"quick": dict(width=32, depths=(16, 64), seeds=8),
              "tiny": dict(width=8, depths=(4, 8), seeds=2)}


def lyapunov_spectra(db=None, *, size=None, width=None, depths=None, seeds=None, plot=None, **_ignored):
    """Log singular values of the product A_L ... A_1 (engine.diagnostics.lyapunov), Gaussian
    vs orthogonal, vs the exact finite-width expectation for Gaussian (Hanin & Nica):
    E sum = L (1/2)[ln(2/m) + digamma((m - i + 1)/2)] for the i-th exponent; 0 for orthogonal.
    Rows: one per (init, depth, i): init, width, depth, i, mean_log_sv (over seeds), sd, expected.
    """
    from scipy.special import digamma
    g = _settings(LYAP_GRIDS, size, width=width, depths=depths, seeds=seeds)
    m = int(g["width"])
    i = np.arange(1, m + 1)
    rows = []
    with one_blas_thread():
        for init, make in (("gaussian", gaussian), ("orthogonal", orthogonal)):
            for L in g["depths"]:
                ly = np.array([dg.lyapunov(make([m] * (L + 1), seed=s)) for s in range(g["seeds"])])
                exp = L * 0.5 * (np.log(2.0 / m) + digamma((m - i + 1) / 2)) if init == "gaussian" \
                    else np.zeros(m)
                for k in range(m):
                    rows.append(dict(init=init, width=m, depth=int(L), i=k + 1, mean_log_sv=float(ly[:, k].mean()),
                                     sd=float(ly[:, k].std(ddof=1)) if g["seeds"] > 1 else 0.0,
                                     expected=float(exp[k]), status="converged"))
    return drawn(rows, plot, plot_lyapunov_spectra)


def plot_lyapunov_spectra(rows, path):
    """Mean log singular values (+- sd over seeds) per index, one panel per depth."""
    plt = plotting.pyplot()
    depths = sorted({r["depth"] for r in rows})
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False)
    for ax, L in zip(axes[0], depths):
        for init in inits_of(rows):
            rs = [r for r in rows if r["init"] == init and r["depth"] == L]
            ax.errorbar([r["i"] for r in rs], [r["mean_log_sv"] for r in rs], yerr=[r["sd"] for r in rs],
                        fmt="o", ms=3, color=plotting.color(init), label=init)
            if init == "gaussian":
                ax.plot([r["i"] for r in rs], [r["expected"] for r in rs], "k-", lw=1,
                        label="finite-width expectation")
        ax.set_title(f"width {rows[0]['width']}, depth {L}", fontsize=9)
        ax.set_xlabel("index i")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("log singular value of A_L...A_1")
    return plotting.save(fig, path)


# The columns of each experiment's table (its rows' fields, in order).
TABLE_FIELDS = {
    "lazy_gap": ["init", "depth", "width", "steps", "gap", "final_rel_excess", "lazy_final_rel_excess", "status"],
    "sharpness": ["init", "width", "depth", "lr", "t", "sharpness", "two_over_lr", "excess", "status"],
    "lyapunov_spectra": ["init", "width", "depth", "i", "mean_log_sv", "sd", "expected"],
}
