"""engine.diagnostics against naive paper-convention computations (tests/naive.py):
P(t) (DH eq. 7) entry by entry and by its action on one GD step (DH eq. 6),
exact vs matrix-free eigenvalues, partial-product spectra, interior norms,
recording inside train(), and no overflow at L = 700."""
import numpy as np
import pytest

import engine
from engine import diagnostics as dg
from naive import chain, grads

# Reduced vs raw computations differ only by rounding in O(L) matmuls of
# O(1)-normalized factors: ~1e-15 * L * cond, well inside 1e-9 for these sizes.
ALGEBRA = 1e-9
# The requirement for exact vs matrix-free (Lanczos run to tol 1e-13).
EIG_AGREE = 1e-8


def _naive_P(Ws, alpha, X):
    """alpha^2 sum_i (W_{i-1:1}X)^T (W_{i-1:1}X) (x) W_{L:i+1} W_{L:i+1}^T, on the full data."""
    L = len(Ws)
    widths = [X.shape[0]] + [W.shape[0] for W in Ws]
    n, d_out = X.shape[1], widths[-1]
    P = np.zeros((n * d_out, n * d_out))
    for i in range(1, L + 1):
        pre = chain(Ws, i - 1, 1, widths[0]) @ X
        suf = chain(Ws, L, i + 1, widths[i])
        P += alpha ** 2 * np.kron(pre.T @ pre, suf @ suf.T)
    return P


@pytest.fixture(scope="module")
def small():
    # rank-deficient X (r = 3 < n = 6 < d_in = 7): P on full data has n d_out - r d_out zero eigenvalues
    X, Y = engine.synthetic(7, 6, 2, seed=3, rank=3, noise=0.5)
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([7, 9, 8, 10, 2], seed=4)
    return prob, net


def test_gram_matrix_matches_naive_eigenvalues(small):
    prob, net = small
    P = dg.gram_matrix(net, prob)
    r, d = prob.rank, prob.d_out
    assert P.shape == (r * d, r * d)
    full = np.linalg.eigvalsh(_naive_P(net.weights(), net.alpha, prob.X))
    red = np.linalg.eigvalsh(P)
    scale = full[-1]
    np.testing.assert_allclose(full[-r * d:], red, rtol=ALGEBRA, atol=ALGEBRA * scale)
    np.testing.assert_allclose(full[:-r * d], 0.0, atol=ALGEBRA * scale)


def test_gram_is_first_order_change_of_residual(small):
    """DH eq. (6): vec(R(t+1) - R(t)) = -eta P vec(R(t)) + O(eta^2).

    With dR = (R(t+1) - R(t)) / eta, ||dR + P vec R|| is O(eta): it must
    halve when eta halves. A P with a wrong normalization (a missing alpha^2
    or 1/s_i^2) leaves an O(1) error that does not shrink with eta."""
    prob, net0 = small
    red = prob.reduced()
    P = dg.gram_matrix(net0, prob)

    def residual(n):
        return (n.end_to_end() @ red.basis) * red.s - red.targets

    R0 = residual(net0)
    pred = -(P @ R0.reshape(-1, order="F"))
    errs = []
    base = engine.theory.lr_bound("gaussian", prob, net0.depth)
    for eta in (1e-3 * base, 0.5e-3 * base):
        net = net0.copy()
        engine.gd_step(net, prob, eta, backend="numpy")
        dR = (residual(net) - R0).reshape(-1, order="F") / eta
        errs.append(np.linalg.norm(dR - pred) / np.linalg.norm(pred))
    assert errs[0] < 1e-2
    assert 1.9 < errs[0] / errs[1] < 2.1, errs
    # a deliberately wrong P (off by 20%) is rejected at this eta
    wrong = 1.2 * pred
    assert np.linalg.norm(dR - wrong) / np.linalg.norm(wrong) > 0.1


def test_gram_naive_gradient_form(small):
    """Same identity, with the gradient of tests/naive.py (DH eq. 5) instead of the engine's step:
    sum_i W_{L:i+1} G_i W_{i-1:1} X alpha = P vec(R) exactly (the first-order term)."""
    prob, net = small
    Ws, alpha, X, Y = net.weights(), net.alpha, prob.X, prob.Y
    G = grads(Ws, alpha, X, Y)
    L = len(Ws)
    widths = net.widths
    first = sum(alpha * chain(Ws, L, i + 1, widths[i]) @ G[i - 1] @ chain(Ws, i - 1, 1, widths[0]) @ X
                for i in range(1, L + 1))
    R = alpha * chain(Ws, L, 1, widths[0]) @ X - Y
    Pfull = _naive_P(Ws, alpha, X)
    np.testing.assert_allclose(first.reshape(-1, order="F"), Pfull @ R.reshape(-1, order="F"),
                               rtol=ALGEBRA, atol=ALGEBRA * np.abs(first).max())


@pytest.mark.parametrize("init,widths,shape", [
    ("gaussian", [12, 30, 30, 30, 30, 3], (12, 8, 3)),
    ("orthogonal", [16, 20, 20, 20, 4], (16, 10, 4)),
    ("gaussian", [9, 5, 6, 5, 4], (9, 7, 4)),   # narrow: some Kronecker factors rank-deficient
])
def test_exact_vs_matrix_free(init, widths, shape):
    prob = engine.Problem(*engine.synthetic(*shape, seed=1))
    net = engine.init.by_name(init)(widths, seed=2)
    ex = dg.gram_eigs(net, prob, method="exact")
    mf = dg.gram_eigs(net, prob, method="matrix-free")
    assert mf.lambda_max == pytest.approx(ex.lambda_max, rel=EIG_AGREE)
    assert mf.lambda_min == pytest.approx(ex.lambda_min, rel=EIG_AGREE, abs=EIG_AGREE * ex.lambda_max)
    assert ex.lower == mf.lower and ex.upper == mf.upper
    # DH eq. (10): the per-state bounds bracket the spectrum (deterministic inequalities)
    assert ex.lower <= ex.lambda_min * (1 + 1e-12) and ex.lambda_max <= ex.upper * (1 + 1e-12)
    op = dg.gram_operator(net, prob)
    v = np.random.default_rng(0).standard_normal(op.shape[0])
    np.testing.assert_allclose(op @ v, dg.gram_matrix(net, prob) @ v, rtol=1e-12, atol=1e-12 * ex.lambda_max * np.linalg.norm(v))


def test_gram_eigs_bound_is_tight_for_orthogonal():
    """HXP Lemma B.1: at orthogonal init every factor is an exact isometry (m >= d_in),
    so each Kronecker term is (X^T X) (x) I / d_out and P = L (X^T X (x) I) / d_out,
    except that the last term has W_{L:L+1} = I of size d_out (also I): the spectrum
    is exactly L sigma^2(X) / d_out and eq. (10) is tight."""
    prob = engine.Problem(*engine.synthetic(6, 5, 3, seed=0))
    L = 7
    net = engine.init.orthogonal([6] + [10] * (L - 1) + [3], seed=1)
    g = dg.gram_eigs(net, prob)
    assert g.lambda_max == pytest.approx(L * prob.x_norm ** 2 / 3, rel=1e-12)
    assert g.lambda_min == pytest.approx(L * prob.lambda_r / 3, rel=1e-12)
    assert g.lower == pytest.approx(g.lambda_min, rel=1e-12) and g.upper == pytest.approx(g.lambda_max, rel=1e-12)


def test_partial_spectra_match_naive(small):
    prob, net = small
    Ws, X = net.weights(), prob.X
    L, w = net.depth, net.widths
    sp = dg.partial_spectra(net, prob)
    s = np.linalg.svd(X, compute_uv=False)
    sx_max, sx_min = s[0], s[prob.rank - 1]
    assert list(sp.suffix_i) == list(range(2, L + 1)) and list(sp.prefix_i) == list(range(1, L))
    for k, i in enumerate(sp.suffix_i):
        sv = np.linalg.svd(chain(Ws, L, i, w[i - 1]), compute_uv=False)
        norm = np.sqrt(np.prod(w[i - 1:L], dtype=float))          # m^((L-i+1)/2)
        assert sp.suffix_max[k] == pytest.approx(sv[0] / norm, rel=ALGEBRA)
        assert sp.suffix_min[k] == pytest.approx(sv[min(w[-1], w[i - 1]) - 1] / norm, rel=ALGEBRA)
    U, S, Vt = np.linalg.svd(X, full_matrices=False)
    Xr = U[:, :prob.rank] * S[:prob.rank]                           # same singular structure as X
    for k, i in enumerate(sp.prefix_i):
        M = chain(Ws, i, 1, w[0]) @ Xr
        sv = np.linalg.svd(M, compute_uv=False)
        norm = np.sqrt(np.prod(w[1:i + 1], dtype=float))           # m^(i/2)
        assert sp.prefix_max[k] == pytest.approx(sv[0] / (norm * sx_max), rel=ALGEBRA)
        assert sp.prefix_min[k] == pytest.approx(sv[min(w[i], prob.rank) - 1] / (norm * sx_min), rel=ALGEBRA)
        # and W_{i:1} X (full data) has the same top singular value
        assert np.linalg.svd(chain(Ws, i, 1, w[0]) @ X, compute_uv=False)[0] == pytest.approx(sv[0], rel=ALGEBRA)


def test_hxp_lemma_b1_exact():
    """HXP Lemma B.1, eq. (10): sigma_max = sigma_min = m^((j-i+1)/2) for every
    partial product at orthogonal init (m >= max(d_in, d_out)), to rounding."""
    prob = engine.Problem(*engine.synthetic(8, 5, 3, seed=0))
    net = engine.init.orthogonal([8] + [12] * 9 + [3], seed=5)
    sp = dg.partial_spectra(net, prob)
    for a in (sp.suffix_max, sp.suffix_min, sp.prefix_max, sp.prefix_min):
        np.testing.assert_allclose(a, 1.0, rtol=1e-12)
    it = dg.interior_norms(net)
    assert len(it.i) == 36       # all 1 < i <= j < 10
    np.testing.assert_allclose(it.norm, 1.0, rtol=1e-6)


def test_interior_norms_match_naive(small):
    _, net = small
    Ws, w = net.weights(), net.widths
    it = dg.interior_norms(net, tol=1e-10)
    assert sorted(zip(it.i, it.j)) == [(2, 2), (2, 3), (3, 3)]
    for i, j, v in zip(it.i, it.j, it.norm):
        exact = np.linalg.norm(chain(Ws, j, i, w[i - 1]), 2) / np.sqrt(np.prod(w[i:j + 1], dtype=float))
        assert v == pytest.approx(exact, rel=1e-7)


def test_interior_pairs_sampling():
    p = dg.default_pairs(40, max_pairs=20, seed=1)
    assert p.shape == (20, 2) and tuple(p[0]) == (2, 39)
    assert all(1 < i <= j < 40 for i, j in p) and len({tuple(x) for x in p}) == 20
    np.testing.assert_array_equal(p, dg.default_pairs(40, max_pairs=20, seed=1))
    net = engine.init.gaussian([3, 4, 4, 4, 2], seed=0)
    with pytest.raises(ValueError, match="pairs"):
        dg.interior_norms(net, pairs=[(1, 2)])
    with pytest.raises(ValueError, match="pairs"):
        dg.interior_norms(net, pairs=[(2, 4)])


def test_deep_no_overflow():
    """L = 700: raw products would be 32^350 ~ 1e526; everything stays finite and O(1)."""
    prob = engine.Problem(*engine.synthetic(6, 4, 2, seed=0))
    net = engine.init.orthogonal([6] + [32] * 699 + [2], seed=0)
    sp = dg.partial_spectra(net, prob)
    np.testing.assert_allclose(sp.suffix_max, 1.0, rtol=1e-10)
    np.testing.assert_allclose(sp.prefix_min, 1.0, rtol=1e-10)
    g = dg.gram_eigs(net, prob)
    assert g.lambda_max == pytest.approx(700 * prob.x_norm ** 2 / 2, rel=1e-10)
    gnet = engine.init.gaussian([6] + [8] * 699 + [2], seed=0)   # narrow: products decay like e^(-cL)
    sp = dg.partial_spectra(gnet, prob)
    assert np.all(np.isfinite(sp.log_suffix_max)) and sp.log_suffix_max[0] < -10
    it = dg.interior_norms(gnet, pairs=[(2, 699), (300, 310)])
    assert np.all(np.isfinite(it.log_norm)) and it.log_norm[0] < -10


def test_recorded_during_training():
    prob = engine.Problem(*engine.synthetic(10, 6, 3, seed=0))
    net = engine.init.gaussian([10, 40, 40, 40, 3], seed=0)
    run = engine.train(net, prob, lr="theory", steps=12,
                       record={"gram": 5, "spectra": 4, "interior": 6, "distance": 3})
    assert list(run.records["gram"]["t"]) == [0, 5, 10, 12]
    assert list(run.records["spectra"]["t"]) == [0, 4, 8, 12]
    assert list(run.records["interior"]["t"]) == [0, 6, 12]
    g = np.asarray(run.records["gram"]["values"])
    assert g.shape == (4, 4) and np.all(g[:, 0] <= g[:, 1])
    final = dg.gram_eigs(net, prob)
    np.testing.assert_allclose(g[-1], final, rtol=1e-12)
    assert run.records["distance"]["values"][0].max() == 0.0
    assert set(run.record_time) == {"gram", "spectra", "interior", "distance"}


def test_float32_network_and_unbound():
    prob = engine.Problem(*engine.synthetic(10, 6, 3, seed=0))
    n64 = engine.init.gaussian([10, 20, 20, 3], seed=1)
    n32 = engine.init.gaussian([10, 20, 20, 3], seed=1, dtype=np.float32)
    a, b = dg.gram_eigs(n64, prob), dg.gram_eigs(n32, prob)
    np.testing.assert_allclose(a, b, rtol=1e-5)   # float32 weights: ~1e-7 per entry
    n64._bind(prob)                               # bound: layer 1 held as B_1 = A_1 U_r
    np.testing.assert_allclose(dg.gram_eigs(n64, prob), a, rtol=1e-12)


def test_bad_input():
    prob = engine.Problem(*engine.synthetic(10, 6, 3, seed=0))
    net = engine.init.gaussian([10, 20, 20, 3], seed=1)
    with pytest.raises(ValueError, match="method"):
        dg.gram_eigs(net, prob, method="lanczos")
    with pytest.raises(ValueError, match="widths"):
        dg.partial_spectra(engine.init.gaussian([9, 20, 3], seed=0), prob)
    with pytest.raises(TypeError, match="prob"):
        dg.gram_eigs(net, "prob")
    with pytest.raises(TypeError, match="net"):
        dg.interior_norms("net")


def test_non_finite_weights_fail_clearly():
    prob = engine.Problem(*engine.synthetic(6, 4, 2, seed=0))
    net = engine.init.gaussian([6, 8, 8, 2], seed=0)
    net._layers[1][0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        dg.gram_eigs(net, prob)


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_interior_norms_lanczos_path(init):
    """Width 48 > 32 takes the Lanczos path; near-orthogonal products (clustered
    singular values, where power iteration stalls ~1% low) must be exact too."""
    prob = engine.Problem(*engine.synthetic(8, 6, 2, seed=0))
    net = engine.init.by_name(init)([8] + [48] * 7 + [2], seed=3)
    engine.train(net, prob, lr=0.05 * engine.theory.lr_bound(init, prob, 8), steps=3, backend="numpy")
    Ws, w = net.weights(), net.widths
    it = dg.interior_norms(net)
    assert len(it.i) == 21
    for i, j, v in zip(it.i, it.j, it.norm):
        exact = np.linalg.norm(chain(Ws, j, i, w[i - 1]), 2) / np.sqrt(np.prod(w[i:j + 1], dtype=float))
        assert v == pytest.approx(exact, rel=1e-6)
