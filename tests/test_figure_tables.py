"""The committed figures' tables (docs/NAME.csv) equal a fresh run's: tables, not pixels.

`python -m engine reproduce all --out-dir docs` regenerates every committed figure and its
table; this test recomputes each table in memory at the committed grid size and compares.
Numbers are compared to 1e-5 relative (the CSV keeps 6 significant digits), everything else
(status, counts, widths) exactly. The expensive ones are marked slow.
"""
import math
import os

import pytest

from engine import experiments as ex

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs")
CHEAP = ["rate_vs_kappa", "theory-check", "lazy_gap", "sharpness", "lyapunov"]                  # seconds each
SLOW = ["width_threshold", "exponential_curse", "hxp", "phase_diagram"]


def _same(a, b):
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) and math.isnan(y):
        return True
    return math.isclose(x, y, rel_tol=1e-5, abs_tol=0.0)


def _check(name, tmp_path):
    committed = os.path.join(DOCS, f"{name}.csv")
    assert os.path.exists(committed), (f"docs/{name}.csv is missing: run "
                                       "'python -m engine reproduce all --out-dir docs'")
    _, fresh = ex.reproduce_figure(name, str(tmp_path), db=None, workers=0)
    h1, r1 = ex.read_table(committed)
    h2, r2 = ex.read_table(fresh)
    assert h1 == h2
    assert len(r1) == len(r2), f"{name}: {len(r1)} committed rows, {len(r2)} fresh"
    diff = [(a, b) for a, b in zip(r1, r2) if len(a) != len(b) or not all(map(_same, a, b))]
    assert not diff, (f"docs/{name}.csv differs from a fresh run in {len(diff)} rows, e.g. "
                      f"committed {diff[0][0]} vs fresh {diff[0][1]}; regenerate with "
                      "'python -m engine reproduce all --out-dir docs'")


@pytest.mark.parametrize("name", CHEAP)
def test_cheap_figure_table_matches_a_fresh_run(name, tmp_path):
    _check(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_expensive_figure_table_matches_a_fresh_run(name, tmp_path):
    _check(name, tmp_path)


def test_every_committed_figure_is_regenerated_by_reproduce_all():
    pngs = {f[:-4] for f in os.listdir(DOCS) if f.endswith(".png")}
    assert pngs == set(ex.COMMITTED_FIGURES) == set(CHEAP) | set(SLOW)


def test_tables_round_trip_and_compare(tmp_path):
    p = ex.write_table(str(tmp_path / "t.csv"), ["a", "b", "c"], [["x", 1, 0.1234567891], ["y", None, math.inf]])
    h, r = ex.read_table(p)
    assert h == ["a", "b", "c"] and r == [["x", "1", "0.123457"], ["y", "", "inf"]]
    assert _same("0.123457", "0.1234571") and not _same("0.123457", "0.123470") and not _same("ok", "diverged")


def test_fit_line_text_has_a_proper_sign_and_its_support():
    assert ex.fmt_line(4.0, -0.2, 2) == "width = 4.00 L + 0 (fit through 2 points)"
    assert ex.fmt_line(1.3, -3.4, 5) == "width = 1.30 L - 3 (fit through 5 points)"
    assert ex.fmt_line(-1e-17, 40.0, 2) == "width = 0.00 L + 40 (fit through 2 points)"
    assert ex.fmt_line(float("nan"), float("nan"), 1).endswith("no fit (fewer than 2 points)")
