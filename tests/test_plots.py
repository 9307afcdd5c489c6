"""Figures say what they show: labelled colour bars, legends for markers, log-scaled numeric
axes, fits that name their support and the depths they leave out, one panel row per varied
grid axis, no "theorem's" lr in a title when it was not used, x on every diverged cell."""
import pytest

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine import experiments as ex  # noqa: E402


def _rows(inits=("gaussian", "orthogonal"), lr_scales=(1.0,), seeds=(0,), diverge=()):
    """Synthetic rows: trainable when width >= 4 * depth (none at depth 64), depth 1 always."""
    out = []
    for init in inits:
        for s in lr_scales:
            for seed in seeds:
                for d in (1, 4, 16, 64):
                    for w in (10, 40, 160):
                        st = "diverged" if (init, d, w, s, seed) in diverge else "ok"
                        good = d == 1 or (w >= 4 * d and d < 64)
                        out.append(dict(init=init, depth=d, width=w, seed=seed, steps=100, lr_rule="theory",
                                        lr_scale=s, status=st, log10_rel_excess=-6.0 if good else -0.5))
    return out


def _capture(monkeypatch):
    figs = []
    monkeypatch.setattr(ex.plotting, "save", lambda fig, path, dpi=90: figs.append(fig) or path)
    return figs


def test_phase_diagram_is_labelled(monkeypatch):
    figs = _capture(monkeypatch)
    ex.plot_phase_diagram(_rows(diverge={("gaussian", 4, 10, 1.0, 0)}), "x.png")
    fig = figs[0]
    heat = [a for a in fig.axes if a.get_xlabel().startswith("width")]
    bars = [a for a in fig.axes if a not in heat]
    assert len(heat) == 2 and len(bars) == 2
    assert all("log10" in b.get_ylabel() for b in bars)
    for a in heat:
        assert a.get_xscale() == "log" and a.get_yscale() == "log"
        assert "(fit through 2 points)" in a.get_title()
        assert "L = 64: none trainable, fit excludes it" in a.get_title()
        labels = [t.get_text() for t in a.get_legend().get_texts()]
        assert any("from this width up" in t for t in labels) and any("not in the fit" in t for t in labels)
    g = [t.get_text() for t in heat[0].get_legend().get_texts()]
    assert "x: a run diverged" in g
    assert "lr = theorem's" in fig._suptitle.get_text()
    plt.close("all")


def test_a_third_init_gets_its_own_panel(monkeypatch):
    figs = _capture(monkeypatch)
    ex.plot_phase_diagram(_rows(inits=("gaussian", "orthogonal", "identity")), "x.png")
    titles = [a.get_title() for a in figs[0].axes if a.get_xlabel().startswith("width")]
    assert [t.split(":")[0] for t in titles] == ["gaussian", "orthogonal", "identity"]
    ex.plot_hxp_demo(_rows(inits=("gaussian", "orthogonal", "identity")), [], "y.png")
    assert sum(a.get_xlabel().startswith("width") for a in figs[1].axes) == 3
    plt.close("all")


def test_custom_grid_has_a_panel_row_per_varied_axis_and_honest_title(monkeypatch):
    figs = _capture(monkeypatch)
    rows = _rows(lr_scales=(1.0, 8.0), seeds=(0, 1), diverge={("orthogonal", 16, 160, 8.0, 1)})
    ex.plot_grid(rows, "g.png")
    fig = figs[0]
    heat = [a for a in fig.axes if a.get_xlabel().startswith("width")]
    assert len(heat) == 2 * 2 * 2                        # (lr_scale, seed) combinations x inits
    assert "lr = theorem's" not in fig._suptitle.get_text()
    assert "lr_scale x theorem's" in fig._suptitle.get_text() and "lr_scale, seed" in fig._suptitle.get_text()
    tagged = [a for a in heat if a.get_title().startswith("[lr_scale = 8.0, seed = 1] orthogonal")]
    assert len(tagged) == 1
    # the one diverged run has its x although the other seed of that cell converged
    xs = [ln for ln in tagged[0].get_lines() if ln.get_marker() == "x"]
    assert xs and list(xs[0].get_xdata()) == [160] and list(xs[0].get_ydata()) == [16]
    plt.close("all")


def test_custom_grid_with_too_many_combinations_is_refused():
    rows = _rows(lr_scales=tuple(float(s) for s in range(1, 6)), seeds=(0, 1))
    with pytest.raises(ValueError, match="^rows: the grid varies lr_scale, seed in 10 combinations"):
        ex.plot_grid(rows, "g.png")
