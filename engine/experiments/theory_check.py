"""Theory check: one trajectory per init, measured against the theorems
(``python -m engine theorycheck``; the committed figure docs/theory-check.png).

On synthetic data of HXP's kind (Y = W* X, W* with N(0, 1) entries; X 32 x 8
with condition number kappa = 2 by default, kappa None for iid N(0, 1) X as in
HXP; data (1024, 16, 10), kappa None is HXP's own shape) ``run_check`` trains
a Gaussian network at DH's learning rate d_out / (3 L ||X||^2) and an
orthogonal network of the same shape at HXP's d_y / (2 L ||X||^2), records
P(t), the partial-product spectra and ||W_i(t) - W_i(0)||_F every step
(``engine.train(record=...)``); ``table`` gives a markdown table of:

* the measured per-step contraction (l(t+1) - OPT) / (l(t) - OPT) against the
  theorem's factor (DH Thm 4.1: 1 - eta L lambda_r / (4 d_out); HXP Thm 3.1:
  1 - eta L lambda_r / (2 d_y)) and against the local prediction
  [(1 - eta lambda_max(P))^2, (1 - eta lambda_min(P))^2] of DH eq. (8);
* lambda_min, lambda_max of P(t) against DH eq. (10) (per state) and eq. (9)
  with Claim 7.3's constants (DH) / Claim B.4's (HXP);
* partial-product spectra against DH B(t) [3/4, 5/4] and HXP Lemma B.1 (= 1);
* max_i ||W_i(t) - W_i(0)||_F against the radius of DH Claim 7.1 / HXP
  Claim B.2 with B = l(0) - OPT.

``figure`` draws the same in four panels; ``record_cost`` times each recordable
diagnostic against one GD step.
"""
from __future__ import annotations

import time

import numpy as np

from .. import diagnostics as dg
from .. import init as _init
from .. import theory
from ..problem import Problem, synthetic
from ..stepper import Stepper
from ..train import train
from . import plotting

_THEOREM = {"gaussian": "DH Thm 4.1", "orthogonal": "HXP Thm 3.1"}


def run_check(width: int = 512, depth: int = 6, steps: int = 80, seed: int = 0,
              data=(32, 8, 2), kappa: float | None = 2.0, backend: str = "numpy") -> dict:
    """Train both inits and collect everything the report shows. Returns a dict per init."""
    d_in, n, d_out = data
    prob = Problem(*synthetic(d_in, n, d_out, seed=seed, kappa=kappa))
    widths = [d_in] + [width] * (depth - 1) + [d_out]
    out = {"prob": prob, "widths": widths}
    for name in ("gaussian", "orthogonal"):
        net = _init.by_name(name)(widths, seed=seed + 1)
        lr = theory.lr_bound(name, prob, depth)
        t0 = time.perf_counter()
        run = train(net, prob, lr=lr, steps=steps, backend=backend,
                    record={"gram": 1, "spectra": steps, "distance": 1})
        wall = time.perf_counter() - t0
        g = np.asarray(run.records["gram"]["values"])
        ex = run.excess
        ok = ex[:-1] > 1e-24 * ex[0]                     # above the float64 rounding floor
        ratio = np.full(len(ex) - 1, np.nan)
        ratio[ok] = ex[1:][ok] / ex[:-1][ok]
        dist = np.asarray(run.records["distance"]["values"]).max(axis=1)
        out[name] = dict(
            run=run, lr=lr, gram=g, ratio=ratio, dist=dist, wall=wall,
            # every bound below is the theorem's only when its width condition holds
            width_note=theory.width_note(net, prob),
            factor=theory.predicted_factor(name, prob, depth, lr),
            gram_bounds=theory.gram_bounds(name, prob, depth),
            radius=theory.radius(name, prob, depth, B=float(ex[0])),
            spectra=run.records["spectra"]["values"], record_time=dict(run.record_time),
        )
    return out


def _fmt(x):
    return f"{x:.4g}"


def table_records(res: dict) -> list:
    """The report's rows: [quantity, Gaussian's value, orthogonal's value], as text."""
    prob = res["prob"]
    L = len(res["widths"]) - 1
    scale = L / prob.d_out                                 # P's natural unit: L sigma^2(X) / d_out
    rows = []

    def row(label, fn):
        rows.append([label, fn(res["gaussian"]), fn(res["orthogonal"])])

    row("learning rate eta (theorem's bound)", lambda r: _fmt(r["lr"]))
    row("width condition (DH eq. 4 / HXP eq. 5, C = 1)", lambda r: r["width_note"].strip("()"))
    row("theorem's per-step factor", lambda r: _fmt(r["factor"]))
    row("measured per-step contraction, max over t", lambda r: _fmt(np.nanmax(r["ratio"])))
    row("measured per-step contraction, median", lambda r: _fmt(np.nanmedian(r["ratio"])))
    row("first-order bound (1 - eta lambda_min(P(0)))^2, eq. (8)", lambda r: _fmt((1 - r["lr"] * r["gram"][0, 0]) ** 2))
    row("steps with contraction > theorem's factor",
        lambda r: f"{int(np.sum(r['ratio'] > r['factor']))} of {int(np.sum(np.isfinite(r['ratio'])))}")
    row("lambda_min(P(t)) / (L/d_out), min over t", lambda r: _fmt(r["gram"][:, 0].min() / scale))
    row("lambda_max(P(t)) / (L/d_out), max over t", lambda r: _fmt(r["gram"][:, 1].max() / scale))
    row("eq. (10) lower / (L/d_out), min over t", lambda r: _fmt(r["gram"][:, 2].min() / scale))
    row("eq. (10) upper / (L/d_out), max over t", lambda r: _fmt(r["gram"][:, 3].max() / scale))
    row("theorem's Gram bounds / (L/d_out)",
        lambda r: f"[{_fmt(r['gram_bounds'][0] / scale)}, {_fmt(r['gram_bounds'][1] / scale)}]")
    rows.append(["sigma_r^2(X), ‖X‖^2 (the ideal range)", f"{_fmt(prob.lambda_r)}, {_fmt(prob.x_norm ** 2)}", "same"])

    def spec(r, k):
        sp = r["spectra"][k]
        lo = min(sp.suffix_min.min(), sp.prefix_min.min())
        hi = max(sp.suffix_max.max(), sp.prefix_max.max())
        return f"[{lo:.3f}, {hi:.3f}]"

    row("normalized partial spectra at t = 0", lambda r: spec(r, 0))
    row("normalized partial spectra at the end", lambda r: spec(r, -1))
    row("max_i ‖W_i(t) - W_i(0)‖_F at the end", lambda r: _fmt(r["dist"][-1]))
    row("radius R (Claim 7.1 / B.2, B = l(0) - OPT)", lambda r: _fmt(r["radius"]))
    row("final excess l - OPT (from l(0) - OPT)",
        lambda r: f"{r['run'].excess[-1]:.3g} (from {r['run'].excess[0]:.3g})")
    return rows


def table(res: dict) -> str:
    """The report as a markdown table."""
    lines = ["| quantity | Gaussian (DH Thm 4.1) | orthogonal (HXP Thm 3.1) |", "|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(rec)} |" for rec in table_records(res)])


def figure(res: dict, path: str) -> None:
    """Four panels: contraction, P(t) eigenvalues, partial spectra, distance from init."""
    plt = plotting.pyplot()
    prob = res["prob"]
    L = len(res["widths"]) - 1
    scale = L / prob.d_out
    colors = {"gaussian": "tab:blue", "orthogonal": "tab:orange"}
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))

    a = ax[0, 0]
    for name, c in colors.items():
        r = res[name]
        t = np.arange(len(r["ratio"]))
        a.plot(t, r["ratio"], ".", color=c, ms=4, label=f"{name}: measured")
        a.axhline(r["factor"], color=c, ls="--",
                  label=f"{_THEOREM[name]} factor {r['factor']:.3f} {r['width_note']}")
        lam = r["gram"][:-1]
        a.fill_between(t, (1 - r["lr"] * lam[:, 1]) ** 2, (1 - r["lr"] * lam[:, 0]) ** 2,
                       color=c, alpha=0.2, label="(1 - eta lambda(P(t)))^2, eq. (8)")
    a.set_xlabel("step t")
    a.set_ylabel("(l(t+1) - OPT) / (l(t) - OPT)")
    a.set_title("per-step contraction vs the theorems' factors")
    a.legend(fontsize=7, loc="lower right")

    a = ax[0, 1]
    for name, c in colors.items():
        r = res[name]
        g = r["gram"] / scale
        t = np.arange(len(g))
        a.plot(t, g[:, 0], color=c, label=f"{name}: lambda_min, lambda_max")
        a.plot(t, g[:, 1], color=c)
        a.plot(t, g[:, 2], color=c, ls=":", label="eq. (10) bounds (this state)")
        a.plot(t, g[:, 3], color=c, ls=":")
        lo, hi = r["gram_bounds"]
        a.axhline(lo / scale, color=c, ls="--", lw=0.8, label=f"{_THEOREM[name]} bounds")
        a.axhline(hi / scale, color=c, ls="--", lw=0.8)
    a.set_yscale("log")
    a.set_xlabel("step t")
    a.set_ylabel("eigenvalue of P(t) / (L / d_out)")
    a.set_title(f"P(t) (DH eq. 7); sigma_r^2(X) = {prob.lambda_r:.0f}, ||X||^2 = {prob.x_norm ** 2:.0f}")
    a.legend(fontsize=7)

    a = ax[1, 0]
    for name, c in colors.items():
        for k, (ls, when) in enumerate([("-", "t = 0"), (":", "end")]):
            sp = res[name]["spectra"][0 if k == 0 else -1]
            a.plot(sp.suffix_i, sp.suffix_max, ls, color=c, label=f"{name} W_(L:i), {when}")
            a.plot(sp.suffix_i, sp.suffix_min, ls, color=c)
            a.plot(sp.prefix_i, sp.prefix_max, ls, color=c, alpha=0.5, marker=".", ms=3)
            a.plot(sp.prefix_i, sp.prefix_min, ls, color=c, alpha=0.5, marker=".", ms=3)
    for y, lab in ((0.75, "DH B(t): [3/4, 5/4]"), (1.25, None)):
        a.axhline(y, color="k", ls="--", lw=0.8, label=lab)
    for y, lab in ((0.8, "DH Props 6.2-6.3: [0.8, 1.2]"), (1.2, None)):
        a.axhline(y, color="gray", ls=":", lw=0.8, label=lab)
    a.set_xlabel("i")
    a.set_ylabel("sigma_max, sigma_min (normalized)")
    a.set_title("partial products W_(L:i) (lines), W_(i:1)X (dots); HXP Lemma B.1: = 1")
    a.legend(fontsize=7)

    a = ax[1, 1]
    for name, c in colors.items():
        r = res[name]
        a.plot(np.arange(len(r["dist"])), r["dist"], color=c, label=f"{name}: max_i ||W_i(t) - W_i(0)||_F")
        a.axhline(r["radius"], color=c, ls="--", label=f"{'Claim 7.1' if name == 'gaussian' else 'Claim B.2'} radius")
    a.set_yscale("log")
    a.set_xlabel("step t")
    a.set_title("distance from init vs the proofs' radius (B = l(0) - OPT)")
    a.legend(fontsize=7)

    w = res["widths"]
    fig.suptitle(f"engine theory check: X {w[0]}x{prob.n}, d_out {prob.d_out}, width {w[1]}, depth {L}; "
                 f"regenerate: python -m engine.theorycheck --out {path}", fontsize=10)
    fig.tight_layout()
    plotting.save(fig, path, dpi=110)


def record_cost(width: int = 256, depth: int = 64, data=(1024, 16, 10), repeat: int = 5,
                backend: str = "numpy", init: str = "orthogonal") -> list[tuple[str, float, float]]:
    """Seconds to compute each recordable diagnostic once, and that time in units of one GD step.

    HXP's data shape by default; a network of the given init after 5 GD steps.
    The init matters for ``interior``: power iteration stops at once on the
    near-isometric orthogonal products and needs tens of iterations on
    Gaussian ones (small top singular-value gaps of short products). Each time is the minimum over ``repeat``
    calls (the least disturbed by other load); the step is timed like
    ``bench/step_time.py`` (the bound stepper that ``engine.train`` runs).
    Returns [(name, seconds, seconds / step)], the step itself first.
    """
    d_in, n, d_out = data
    prob = Problem(*synthetic(d_in, n, d_out, seed=0))
    net0 = _init.by_name(init)([d_in] + [width] * (depth - 1) + [d_out], seed=0)
    net = net0.copy()
    # 1% of HXP's rate: a step costs the same at any lr, and narrow widths
    # (m < d_in, where HXP's rate is outside the theorem and diverges) stay finite
    st = Stepper(net, prob, 0.01 * theory.lr_bound(init, prob, depth), backend)
    for _ in range(5):
        st.step()
    state = net.copy()       # diagnostics see this state; the step timing goes on with ``net``

    def best(fn, k):
        ts = []
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    step = best(st.step, 4 * repeat)
    pairs = dg.default_pairs(depth)
    items = [
        ("GD step", None),
        ("gram (exact, r d_out = %d)" % (prob.rank * d_out), lambda: dg.gram_eigs(state, prob, method="exact")),
        ("gram (matrix-free, eigsh)", lambda: dg.gram_eigs(state, prob, method="matrix-free")),
        ("spectra", lambda: dg.partial_spectra(state, prob)),
        ("interior (%d pairs)" % len(pairs), lambda: dg.interior_norms(state, pairs)),
        ("distance", lambda: dg.distance_from_init(state, net0)),
    ]
    out = [("GD step", step, 1.0)]
    for name, fn in items[1:]:
        t = best(fn, 1 if name.startswith("interior") else repeat)
        out.append((name, t, t / step))
    return out
