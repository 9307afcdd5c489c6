"""engine.experiments on tiny grids (serial, numpy backend): tidy rows, the papers'
qualitative claims where a tiny grid can show them, figures, and resume through the DB."""
import math

import numpy as np
import pytest

from engine import experiments as ex
from engine.results import ResultsDB

KW = dict(workers=0, backend="numpy")


def _png(path):
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 200_000


def test_phase_diagram_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    db, fig = tmp_path / "pd.db", tmp_path / "pd.png"
    rows = ex.phase_diagram(db, size="tiny", plot=str(fig), **KW)
    # 2 inits x (depth 1 + 3 widths x 2 deeper depths) x 1 seed
    assert len(rows) == 2 * (1 + 3 * 2)
    assert {"init", "width", "depth", "seed", "d_in", "final_excess", "log10_rel_excess", "status",
            "steps_run", "rate", "lr", "backend"} <= set(rows[0])
    assert all(r["d_in"] == 1024 and r["n"] == 16 and r["d_out"] == 10 for r in rows)
    # depth 1 (linear regression) is trainable for both inits; width 80 beats width 10
    for init in ex.INITS:
        by = {(r["depth"], r["width"]): r for r in rows if r["init"] == init}
        assert by[(1, 1)]["log10_rel_excess"] < -6
        assert by[(4, 80)]["log10_rel_excess"] < by[(4, 10)]["log10_rel_excess"]
    assert _png(fig)
    # re-running with the same database runs nothing new and returns the same rows
    again = ex.phase_diagram(db, size="tiny", **KW)
    strip = lambda rs: sorted((r["key"], r["final_excess"]) for r in rs)  # noqa: E731
    assert strip(again) == strip(rows)
    with ResultsDB(db, readonly=True) as store:
        assert store.experiments() == ["phase_diagram"]


def test_trainability_contour_and_fit_on_synthetic_rows():
    rows = []
    for d in (2, 4, 8):
        for w in (8, 16, 32, 64):
            ok = w >= 4 * d        # trainable from width 4 L up
            rows.append(dict(init="gaussian", depth=d, width=w, status="ok",
                             log10_rel_excess=-10.0 if ok else -0.5))
    cont = ex.trainability_contour(rows, "gaussian")
    assert cont == [(2, 8.0), (4, 16.0), (8, 32.0)]
    slope, icpt = ex.fit_line([d for d, _ in cont], [w for _, w in cont])
    assert slope == pytest.approx(4.0) and icpt == pytest.approx(0.0, abs=1e-9)
    rows[-1]["status"] = "diverged"  # a diverged cell is untrainable: (L=8, m=64) breaks the run
    assert math.isnan(ex.trainability_contour(rows, "gaussian")[-1][1])
    assert math.isnan(ex.fit_line([1], [2])[0])


def test_exponential_curse_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    fig = tmp_path / "ec.png"
    rows = ex.exponential_curse(size="tiny", plot=str(fig), **KW)
    assert len(rows) == 2 * 2 * 3 * 2   # widths {1, 2} x inits x 3 depths x 2 seeds
    assert all(r["d_in"] == r["d_out"] == r["width"] or r["depth"] == 1 for r in rows)
    tab = {(k, i, d): med for k, i, d, med, frac, budget in ex.curse_table(rows)}
    # Shamir's 1-D case: escaping the band takes longer with depth for Gaussian init
    assert tab[(1, "gaussian", 8)] > tab[(1, "gaussian", 2)]
    assert _png(fig)


def test_rate_vs_kappa_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    fig = tmp_path / "rk.png"
    rows = ex.rate_vs_kappa(size="tiny", plot=str(fig), **KW)
    tab = ex.kappa_table(rows)
    for L in (1, 3):
        steps = [s for (LL, w, k, s) in tab if LL == L]
        assert len(steps) == 3 and all(np.isfinite(steps))
        assert steps[0] < steps[1] < steps[2]                 # more steps as kappa grows
        assert steps[2] / steps[0] < 16 * 4                    # ~ linear in kappa, not worse
    assert _png(fig)


def test_width_threshold_tiny(tmp_path):
    pytest.importorskip("matplotlib")
    fig = tmp_path / "wt.png"
    rows = ex.width_threshold(tmp_path / "wt.db", size="tiny", plot=str(fig), **KW)
    tab = ex.threshold_table(rows)
    assert set(tab) == set(ex.INITS)
    for init, pts in tab.items():
        assert [d for d, _ in pts] == [2, 4, 8]
        # bisection probed only a few widths per depth, not the whole grid
        assert len({r["width"] for r in rows if r["init"] == init and r["depth"] == 8}) <= 4
    g = dict(tab["gaussian"])
    assert g[8] >= g[2]
    assert _png(fig)


def test_unknown_experiment_is_a_clear_error():
    with pytest.raises(ValueError, match="experiment: unknown experiment 'nope'"):
        ex.run("nope")


def test_beyond_experiments_tiny_run_and_tabulate(tmp_path):
    """lazy_gap / sharpness / lyapunov_spectra: rows, plots and tables at the tiny size."""
    import numpy as np
    from engine import experiments as ex
    lg = ex.run("lazy_gap", None, size="tiny")
    assert {(r["init"], r["width"]) for r in lg} == {(i, w) for i in ex.INITS for w in (16, 32)}
    assert all(0 <= r["gap"] < 1 for r in lg)
    sh = ex.run("sharpness", None, size="tiny")
    for init in ("gaussian", "orthogonal"):
        rs = [r for r in sh if r["init"] == init]
        assert rs[0]["t"] == 0 and np.isclose(rs[0]["sharpness"] * rs[0]["lr"], 2.5)   # starts above the edge
    ly = ex.run("lyapunov_spectra", None, size="tiny")
    assert all(abs(r["mean_log_sv"]) < 1e-12 for r in ly if r["init"] == "orthogonal")
    assert all(r["mean_log_sv"] < 0 for r in ly if r["init"] == "gaussian" and r["i"] == r["width"])
    for name, rows in (("lazy_gap", lg), ("sharpness", sh), ("lyapunov_spectra", ly)):
        ex.plot(name, rows, str(tmp_path / f"{name}.png"))
        header, recs = ex.figure_table(name, rows)
        assert len(recs) == len(rows) and len(header) == len(recs[0])
