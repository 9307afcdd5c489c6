"""Problem: OPT, Phi, rank, kappa, and the exact data reduction (DH Appendix B)."""
import numpy as np
import pytest

import engine


def test_quantities_match_direct_formulas():
    X, Y = engine.synthetic(9, 25, 3, seed=0, rank=4, noise=0.2)
    p = engine.Problem(X, Y)
    assert p.rank == np.linalg.matrix_rank(X) == 4
    phi = Y @ np.linalg.pinv(X)
    np.testing.assert_allclose(p.phi, phi, rtol=1e-10, atol=1e-12)
    assert p.opt == pytest.approx(0.5 * np.sum((phi @ X - Y) ** 2), rel=1e-10)
    ev = np.linalg.eigvalsh(X.T @ X)[::-1]
    assert p.kappa == pytest.approx(ev[0] / ev[p.rank - 1], rel=1e-8)
    assert p.x_norm == pytest.approx(np.linalg.norm(X, 2), rel=1e-12)
    assert p.stable_rank == pytest.approx(np.sum(X ** 2) / np.linalg.norm(X, 2) ** 2, rel=1e-12)
    E = np.random.default_rng(1).standard_normal((3, 9))
    assert p.loss(E) == pytest.approx(0.5 * np.sum((E @ X - Y) ** 2), rel=1e-12)


def test_opt_zero_when_realizable():
    X, Y = engine.synthetic(1024, 16, 10, seed=0)
    p = engine.Problem(X, Y)
    assert p.rank == 16 and p.opt == 0.0
    np.testing.assert_allclose(p.phi @ X, Y, rtol=1e-9, atol=1e-9)


def test_prescribed_rank_and_kappa():
    X, _ = engine.synthetic(30, 50, 2, seed=0, rank=7, kappa=250.0)
    p = engine.Problem(X, np.zeros((2, 50)) + 1.0)
    assert p.rank == 7
    assert p.kappa == pytest.approx(250.0, rel=1e-9)
    assert np.sum(X ** 2) == pytest.approx(30 * 50, rel=1e-9)


def test_excess_accurate_when_tiny():
    """l - OPT at ~1e-24 of ||Y||_F^2, with OPT ~ ||Y||_F^2, is exact to 1e-12.

    X has singular values 4, 2, 1, 1/2 on a permuted diagonal, so its SVD is
    exact in floating point; Y has integer entries, so Phi = Y X^+ is exact;
    E = Phi + 2^-40 D with small integers D is exact too. The true excess is
    then 1/2 ||2^-40 D_r S_r||^2 in exact arithmetic. l(E) - OPT computed
    naively would be pure rounding (~1e-16 ||Y||^2, 1e8 times the answer).
    """
    s = np.array([4.0, 2.0, 1.0, 0.5])
    cols = [2, 0, 5, 7]
    X = np.zeros((6, 9))
    X[[0, 1, 2, 3], cols] = s
    rng = np.random.default_rng(0)
    Y = rng.integers(-50, 50, size=(3, 9)).astype(float)
    p = engine.Problem(X, Y)
    assert p.rank == 4 and p.opt > 0.1 * p.y_norm_sq
    D = np.zeros((3, 6))
    D[:, :4] = rng.integers(1, 9, size=(3, 4))
    E = p.phi + 2.0 ** -40 * D
    exact = 0.5 * np.sum((2.0 ** -40 * D[:, :4] * s) ** 2)
    assert exact < 1e-22 * p.y_norm_sq
    assert p.excess(E) == pytest.approx(exact, rel=1e-12)
    assert p.loss(E) >= p.opt


def test_training_excess_far_below_rounding_of_opt():
    """With OPT > 0, GD's reported excess keeps falling geometrically to
    1e-22 of ||Y||^2 -- a million times below the rounding of OPT itself --
    which it could not if it were computed as l - OPT."""
    X, Y = engine.synthetic(8, 40, 2, seed=0, noise=1.0)
    p = engine.Problem(X, Y)
    assert p.opt > 0.1 * p.y_norm_sq
    net = engine.init.orthogonal([8, 16, 16, 2], seed=0)
    run = engine.train(net, p, lr="theory", steps=20000, tol=1e-22)
    assert run.converged and run.excess[-1] <= 1e-22 * p.y_norm_sq
    # the tail is still a clean geometric decay (log-linear), not a noise floor
    tail = run.excess[-200:]
    ratios = tail[1:] / tail[:-1]
    assert np.all(ratios < 1.0)
    assert np.std(np.log(ratios)) < 0.05 * abs(np.mean(np.log(ratios)))


def test_trajectory_independent_of_n_with_same_row_space():
    """Duplicating samples (same row space, scaled so X X^T is unchanged) gives
    the same loss and trajectory: GD sees the data only through U_r, S_r, Y V_r."""
    X, Y = engine.synthetic(10, 6, 3, seed=0)
    p1 = engine.Problem(X, Y)
    k = 5
    X2 = np.repeat(X, k, axis=1) / np.sqrt(k)
    Y2 = np.repeat(Y, k, axis=1) / np.sqrt(k)
    p2 = engine.Problem(X2, Y2)
    assert p2.rank == p1.rank and p2.n == k * p1.n
    runs = []
    for p in (p1, p2):
        net = engine.init.gaussian([10, 12, 12, 3], seed=3)
        runs.append((engine.train(net, p, lr=1e-2, steps=40), net))
    np.testing.assert_allclose(runs[0][0].loss, runs[1][0].loss, rtol=1e-10)
    for a, b in zip(runs[0][1].weights(), runs[1][1].weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * np.abs(b).max())


def test_reduced_loss_equals_raw_loss_along_run():
    """After each step the engine's l(t) equals the raw 1/2||alpha W_{L:1} X - Y||^2."""
    X, Y = engine.synthetic(6, 40, 2, seed=1, rank=3, noise=0.4)
    p = engine.Problem(X, Y)
    net = engine.init.orthogonal([6, 8, 8, 2], seed=0)
    for _ in range(20):
        E = net.end_to_end()
        l = engine.gd_step(net, p, 5e-3)
        assert l == pytest.approx(0.5 * np.sum((E @ X - Y) ** 2), rel=1e-11)
