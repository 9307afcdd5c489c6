"""float32 sweeps (issue 15 item 4) and the phase diagram's variants (items 5, 6): the dtype
field leaves every float64 config and its key as they were, float32 runs really run in float32
and stop at STOP_TOL, the options are refused where they were not validated, the cost model
times each dtype, and -- slow -- float32 classifies the default phase-diagram grid's cells
trainable or not as float64 does."""
import hashlib
import math

import numpy as np
import pytest

from engine import cost, init
from engine import experiments as ex
from engine.cli import main
from engine.results import run_key
from engine.runs import normalize_config, run_config

# Keys computed on main before the dtype field existed (commit a7669b0): a float64 config's
# key must not change, or every stored run of every results database would be run again.
KEY_OF_ORTHOGONAL_64x10 = "138e12e9beb32a4ac73e"
DEFAULT_PHASE_GRID_KEYS_SHA = "5daf147091bb7eb2"   # sha256 of the default grid's keys, concatenated


def test_float64_configs_and_keys_are_as_before_the_dtype_field():
    cfg = {"init": "orthogonal", "width": 64, "depth": 10}
    assert "dtype" not in normalize_config(cfg)
    assert normalize_config(dict(cfg, dtype="float64")) == normalize_config(cfg)
    assert run_key(normalize_config(cfg)) == KEY_OF_ORTHOGONAL_64x10
    assert run_key(normalize_config(dict(cfg, dtype="float64"))) == KEY_OF_ORTHOGONAL_64x10
    keys = "".join(run_key(c) for c in ex.phase_configs(size="default"))
    assert hashlib.sha256(keys.encode()).hexdigest()[:16] == DEFAULT_PHASE_GRID_KEYS_SHA
    keys64 = "".join(run_key(c) for c in ex.phase_configs(size="default", dtype="float64"))
    assert keys64 == keys


def test_float32_config_has_its_own_key_and_runs_in_float32(monkeypatch):
    c32 = normalize_config({"width": 32, "depth": 4, "steps": 50, "dtype": "float32"})
    c64 = normalize_config({"width": 32, "depth": 4, "steps": 50})
    assert c32["dtype"] == "float32" and run_key(c32) != run_key(c64)
    seen = []
    real = init.by_name

    def spy(name):
        f = real(name)

        def built(*a, **kw):
            net = f(*a, **kw)
            seen.append(net.dtype)
            return net
        return built
    monkeypatch.setattr("engine.runs.init.by_name", spy)
    r32, r64 = run_config(c32)["result"], run_config(c64)["result"]
    assert seen == [np.dtype(np.float32), np.dtype(np.float64)]
    # the same trajectory up to float32 rounding (6e-8, amplified by 50 steps of a depth-4 chain)
    assert r32["log10_rel_excess"] == pytest.approx(r64["log10_rel_excess"], abs=1e-3)


@pytest.mark.parametrize("bad", ["float16", "f4", np.float32, None, 32])
def test_bad_dtype_names_the_field(bad):
    with pytest.raises(ValueError, match="dtype"):
        normalize_config({"dtype": bad})


def test_phase_configs_variants():
    c32 = ex.phase_configs(size="tiny", dtype="float32")
    assert {c["dtype"] for c in c32} == {"float32"} and {c["tol"] for c in c32} == {ex.STOP_TOL["float32"]}
    assert {c["tol"] for c in ex.phase_configs(size="tiny")} == {1e-12}
    assert {c["lr"] for c in ex.phase_configs(size="tiny", lr="stable")} == {"stable"}
    pub = ex.phase_configs(size="published")
    assert len(pub) == 2 * 2 * (7 * 8 + 1)     # 2 inits x 2 seeds x (7 depths x 8 widths + depth 1)
    assert {c["width"] for c in pub if c["depth"] > 1} == {10, 20, 40, 80, 160, 320, 640, 1000}
    assert {c["depth"] for c in pub} == {1, 10, 50, 100, 200, 300, 500, 700}
    for kw, name in [({"dtype": "float16"}, "dtype"), ({"lr": 0.1}, "lr"), ({"size": "huge"}, "size")]:
        with pytest.raises(ValueError, match=f"^{name}:"):
            ex.phase_configs(**kw)
    assert ex.phase_name() == "phase_diagram"
    assert ex.phase_name("stable", "float32") == "phase_diagram_stable_float32"


def test_options_refused_where_not_validated():
    with pytest.raises(ValueError, match="dtype: float32 is validated only for phase_diagram"):
        ex.run("exponential_curse", dtype="float32")
    with pytest.raises(ValueError, match="lr: stable is validated only for phase_diagram"):
        ex.planned_configs("rate_vs_kappa", "tiny", lr="stable")
    assert ex.check_options("exponential_curse", dtype="float64", lr="theory") == {}
    assert ex.check_options("phase_diagram", dtype="float32") == {"dtype": "float32"}


@pytest.mark.parametrize("args, needle", [
    (["reproduce", "exponential_curse", "--dtype", "float32", "--estimate"], "--dtype: float32 is validated only"),
    (["reproduce", "hxp", "--lr", "stable", "--estimate"], "--lr: stable is validated only"),
    (["reproduce", "lazy_gap", "--size", "published"], "--size published"),
    (["reproduce", "all", "--dtype", "float32"], "--dtype"),
    (["sweep", "width_threshold", "--db", "x.db", "--dtype", "float32"], "--dtype: float32 is validated only"),
])
def test_cli_refuses_unvalidated_options(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_cli_grid_file_takes_dtype_from_its_field(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.json").write_text('{"name": "g", "grid": {"width": [16], "depth": [3], "steps": 20, '
                                     '"dtype": ["float32", "float64"]}}')
    assert main(["sweep", "g.json", "--db", "g.db", "--dtype", "float32"]) == 2
    assert "'dtype' field" in capsys.readouterr().err
    assert main(["sweep", "g.json", "--db", "g.db", "--serial", "--no-progress"]) == 0
    from engine.results import ResultsDB
    with ResultsDB("g.db", readonly=True) as db:
        rows = db.rows(experiment="g")
    assert sorted(r.get("dtype", "float64") for r in rows) == ["float32", "float64"]


def test_cli_phase_diagram_float32_and_stable_tiny(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "phase_diagram", "--size", "tiny", "--dtype", "float32", "--lr", "stable",
                 "--serial", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "phase_diagram_stable_float32.png" in out
    assert (tmp_path / "phase_diagram_stable_float32.png").exists()
    from engine.results import ResultsDB
    with ResultsDB("engine-phase_diagram.db", readonly=True) as db:
        assert db.experiments() == ["phase_diagram_stable_float32"]
        rows = db.rows(experiment="phase_diagram_stable_float32")
    assert {r["dtype"] for r in rows} == {"float32"} and {r["lr_rule"] for r in rows} == {"stable"}
    assert ex.precision_text(rows).startswith("float32, stop at l - OPT <= 1e-09 ||Y||^2")


def test_cost_model_keys_and_memory_by_dtype():
    c64 = normalize_config({"width": 256, "depth": 20})
    c32 = normalize_config(dict(c64, dtype="float32"))
    assert cost.run_bytes(c32) < cost.run_bytes(c64)
    assert cost._step_key(c32) != cost._step_key(c64)
    assert "dtype" in cost.COST_FIELDS
    m = cost.CostModel().calibrate([dict(c64, depth=3, steps=5), dict(c32, depth=3, steps=5)], budget=30)
    assert {k[cost._DTYPE] for k in m.steps} == {"float64", "float32"}


# -- the default grid, float32 against float64 (slow: ~55 s + ~55 s on 2 workers) ---------------
# What float32 changes, measured on the default grid (2026-12-06, 2 workers, ENGINE_AUTO=rule):
# - trainable or not: every cell as float64 except Gaussian L = 48, m = 80, at -3.031 decades in
#   float64 (cblas; -3.112 with --backend numba) and -2.980 in float32: 0.05 decades from the
#   threshold; float64 itself moved this cell from -2.947 to -3.054 between two kernel versions
#   (tests/test_figure_tables.py). A cell within BORDER of the threshold may flip, as there, and
#   the contour of its depth is then not compared. The contours and both fits are identical.
# - diverged or stalled (both untrainable): 6 of 162 cells differ (15 of 324 runs), all narrow
#   (m <= 28, or m = 80 at L = 128) with |log10 relative excess| < 0.5 where they stall. This is
#   not float32 failing: float64 does not determine it either (its cblas and numba kernels, which
#   only sum in another order, differ in 3 cells, 6 runs). It is not asserted equal, and the
#   float32 figure's title says which untrainable cells diverge is decided by rounding.
BORDER = 0.25


def _cells(rows):
    """{(init, depth, width): cell value} and {(init, depth): contour width} of a phase diagram."""
    vals, cont = {}, {}
    for init_ in ex.inits_of(rows):
        vals.update({(init_, d, w): v for d, w, v, n, nd in ex.phase_cells(rows, init_)})
        # nan (no width trainable) as None, so two such depths compare equal
        cont.update({(init_, d): None if math.isnan(w) else w for d, w in ex.trainability_contour(rows, init_)})
    return vals, cont


def _trainable(v):
    return v <= ex.TRAINABLE_LOG10


def _borderline(v):
    return math.isfinite(v) and abs(v - ex.TRAINABLE_LOG10) <= BORDER


@pytest.mark.slow
def test_float32_classifies_the_default_grid_as_float64():
    """Issue 15 item 4: float32 is allowed for the phase diagram because it classifies the default
    grid's cells trainable or not as float64 does (see above for the one borderline cell and for
    diverged vs stalled). float32 runs stop at STOP_TOL["float32"] = 1e-9 ||Y||^2, above float32's
    floor (bench/float32_floor.py): a converged cell sits at ~-8.7 decades instead of ~-11.7, both
    far below TRAINABLE_LOG10 = -3."""
    r64 = ex.phase_diagram(size="default", workers=2)
    r32 = ex.phase_diagram(size="default", workers=2, dtype="float32")
    assert {r.get("dtype") for r in r32} == {"float32"} and {r.get("dtype") for r in r64} == {None}
    assert not [r for r in r32 + r64 if r["status"] == "failed"]
    v64, c64 = _cells(r64)
    v32, c32 = _cells(r32)
    assert v64.keys() == v32.keys()
    flips = {c for c in v64 if _trainable(v64[c]) != _trainable(v32[c])}
    far = {c: (v64[c], v32[c]) for c in flips if not (_borderline(v64[c]) or _borderline(v32[c]))}
    assert not far, f"{len(far)} of {len(v64)} cells change class (trainable or not) in float32: {far}"
    near = {(i, d) for i, d, _ in flips}
    assert {k: w for k, w in c64.items() if k not in near} == {k: w for k, w in c32.items() if k not in near}
    # every converged float32 run stopped at its own tolerance, not at float64's
    assert {r["tol"] for r in r32} == {ex.STOP_TOL["float32"]}
    conv = [r for r in r32 if r["converged"]]
    assert conv and all(r["final_excess"] <= r["tol_excess"] for r in conv)
