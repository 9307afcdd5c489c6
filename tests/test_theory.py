"""engine.theory: each theorem's formula evaluated against a hand computation
from the raw data (SVD of X, Phi = Y X^+), so a wrong constant or a wrong
data quantity fails."""
import math

import numpy as np
import pytest

import engine
from engine import theory

REL = 1e-12  # formulas are a few float ops on SVD outputs: agreement to rounding


@pytest.fixture(scope="module")
def prob():
    X, Y = engine.synthetic(12, 7, 3, seed=5, noise=0.3)
    return engine.Problem(X, Y)


@pytest.fixture(scope="module")
def raw(prob):
    s = np.linalg.svd(prob.X, compute_uv=False)
    r = int(np.sum(s > 1e-12 * s[0]))
    phi = prob.Y @ np.linalg.pinv(prob.X)
    return dict(s1=s[0], sr=s[r - 1], r=r, fro2=np.sum(s ** 2), kappa=(s[0] / s[r - 1]) ** 2,
                phi=np.linalg.norm(phi, 2), d_out=prob.d_out, d_in=prob.d_in)


def test_lr_and_factors(prob, raw):
    L = 9
    eta_dh = raw["d_out"] / (3 * L * raw["s1"] ** 2)
    eta_hxp = raw["d_out"] / (2 * L * raw["s1"] ** 2)
    assert theory.dh_lr_bound(prob, L) == pytest.approx(eta_dh, rel=REL)
    assert theory.hxp_lr_bound(prob, L) == pytest.approx(eta_hxp, rel=REL)
    lr = 0.5 * eta_dh
    assert theory.dh_factor(prob, L, lr) == pytest.approx(1 - lr * L * raw["sr"] ** 2 / (4 * raw["d_out"]), rel=REL)
    assert theory.hxp_factor(prob, L, lr) == pytest.approx(1 - lr * L * raw["sr"] ** 2 / (2 * raw["d_out"]), rel=REL)
    # at the theorems' own rates the factors are 1 - 1/(12 kappa) and 1 - 1/(4 kappa)
    assert theory.dh_factor(prob, L, eta_dh) == pytest.approx(1 - 1 / (12 * raw["kappa"]), rel=REL)
    assert theory.hxp_factor(prob, L, eta_hxp) == pytest.approx(1 - 1 / (4 * raw["kappa"]), rel=REL)


def test_width_requirements(prob, raw):
    L, delta = 20, 0.05
    r, k, d = raw["r"], raw["kappa"], raw["d_out"]
    dh = L * max(r * k ** 3 * d * (1 + raw["phi"] ** 2), r * k ** 3 * math.log(r / delta), math.log(L))
    assert theory.dh_width(prob, L, delta) == pytest.approx(dh, rel=1e-10)
    assert theory.dh_width(prob, L, delta, C=7) == pytest.approx(7 * dh, rel=1e-10)
    rt = raw["fro2"] / raw["s1"] ** 2
    hxp = rt * k ** 2 * (d * (1 + raw["phi"] ** 2) + math.log(r / delta))
    assert theory.hxp_width(prob, delta) == pytest.approx(max(hxp, raw["d_in"]), rel=1e-10)
    # HXP's requirement does not depend on depth, DH's grows linearly in it
    assert theory.width_requirement("orthogonal", prob, 5) == theory.width_requirement("orthogonal", prob, 500)
    assert theory.width_requirement("gaussian", prob, 40) == pytest.approx(
        2 * theory.width_requirement("gaussian", prob, 20), rel=1e-10)


def test_loss_bounds_and_radii(prob, raw):
    L, delta = 6, 0.1
    r, d = raw["r"], raw["d_out"]
    B_dh = max(1, math.log(r / delta) / d, raw["phi"] ** 2) * raw["fro2"]
    B_hxp = (1 + math.log(r / delta) / d + raw["phi"] ** 2) * raw["fro2"]
    assert theory.dh_loss_bound(prob, delta) == pytest.approx(B_dh, rel=1e-10)
    assert theory.hxp_loss_bound(prob, delta) == pytest.approx(B_hxp, rel=1e-10)
    assert theory.dh_radius(prob, L, B=2.0) == pytest.approx(
        24 * math.sqrt(2.0 * d) * raw["s1"] / (L * raw["sr"] ** 2), rel=REL)
    assert theory.hxp_radius(prob, L, B=2.0) == pytest.approx(
        8 * math.sqrt(2.0 * d) * raw["s1"] / (L * raw["sr"] ** 2), rel=REL)
    assert theory.radius("gaussian", prob, L) == pytest.approx(theory.dh_radius(prob, L, B_dh), rel=REL)


def test_gram_bounds(prob, raw):
    L, d = 11, raw["d_out"]
    lo, hi = theory.gram_bounds("gaussian", prob, L)
    assert lo == pytest.approx(0.3 * L * raw["sr"] ** 2 / d, rel=REL)
    assert hi == pytest.approx(3 * L * raw["s1"] ** 2 / d, rel=REL)
    lo, hi = theory.gram_bounds("orthogonal", prob, L)
    assert lo == pytest.approx(0.6 * L * raw["sr"] ** 2 / d, rel=REL)
    assert hi == pytest.approx(2 * L * raw["s1"] ** 2 / d, rel=REL)


def test_steps_to_excess(prob):
    assert theory.steps_to_excess(0.5, 1.0, 1.0 / 1024) == 10
    assert theory.steps_to_excess(0.5, 1.0, 2.0) == 0
    assert theory.steps_to_excess(1.0, 1.0, 0.5) == math.inf
    L = 4
    lr = theory.lr_bound("orthogonal", prob, L)
    q = theory.hxp_factor(prob, L, lr)
    n = theory.predicted_steps("orthogonal", prob, L, lr, 3.0, 3e-8)
    assert q ** n * 3.0 <= 3e-8 < q ** (n - 1) * 3.0


def test_summary(prob):
    s = theory.summary("gaussian", prob, 8)
    assert s.lr == s.lr_bound == theory.dh_lr_bound(prob, 8)
    assert s.factor == theory.dh_factor(prob, 8, s.lr)
    assert s.gram_lower < s.gram_upper and s.radius > 0 and s.steps_to_eps > 0
    assert theory.summary("orthogonal", prob, 8, lr=1e-4).lr == 1e-4


def test_hxp_theorem_4_1_conditions():
    w = [4] + [8] * 299 + [2]            # L = 300
    assert theory.narrow_regime(w, gamma=0.5)          # 8 <= 300^0.5
    assert not theory.narrow_regime(w, gamma=0.7)      # 8 > 300^0.3 = 5.5
    assert theory.narrow_regime(w, gamma=0.7, C=2)
    # default Gaussian init (sigma = 1, Xavier alpha) satisfies (6) with equality and (7)
    assert theory.condition_6(w) and theory.condition_7(w)
    # alpha too large by L: (6) fails for p = 1; tiny sigma fails (7)
    L = 300
    g = np.log(np.array(w[1:], float))
    assert not theory.condition_6(w, log_alpha=-0.5 * g.sum() + math.log(L))
    assert theory.condition_6(w, log_alpha=-0.5 * g.sum() + math.log(L), p=2.01)
    assert not theory.condition_7(w, sigma=1e-3)
    assert theory.condition_7(w, sigma=0.1)            # 8 * 0.01 >= 1/300
    prob = engine.Problem(*engine.synthetic(4, 5, 2, seed=0))
    lo, hi = theory.stuck_band(prob)
    assert lo == pytest.approx(0.4 * np.sum(prob.Y ** 2)) and hi == pytest.approx(0.6 * np.sum(prob.Y ** 2))
    assert theory.stuck_steps(100, 0.5) == pytest.approx(math.exp(10))


def test_bad_input(prob):
    with pytest.raises(ValueError, match="init"):
        theory.gram_bounds("identity", prob, 3)
    with pytest.raises(ValueError, match="delta"):
        theory.dh_width(prob, 3, delta=1.5)
    with pytest.raises(ValueError, match="depth"):
        theory.dh_radius(prob, 0)
    with pytest.raises(ValueError, match="gamma"):
        theory.narrow_regime([3, 3, 3], gamma=2)
    with pytest.raises(ValueError, match="sigma"):
        theory.condition_7([3, 3, 3], sigma=[1.0])


def test_theorycheck_cli(tmp_path, capsys):
    """python -m engine.theorycheck: the table, the figure and --record-cost run (tiny sizes)."""
    from engine import theorycheck
    out = tmp_path / "tc.png"
    assert theorycheck.main(["--steps", "6", "--width", "24", "--depth", "3", "--data", "6,4,2",
                             "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "theorem's per-step factor" in text and "eq. (10) lower" in text
    assert out.stat().st_size > 10_000
    assert theorycheck.main(["--record-cost", "16,4"]) == 0
    text = capsys.readouterr().out
    for name in ("GD step", "gram (exact", "gram (matrix-free", "spectra", "interior", "distance"):
        assert name in text
    with pytest.raises(SystemExit):
        theorycheck.main(["--data", "6,4"])
