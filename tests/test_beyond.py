"""Beyond the two papers: Hessian / sharpness, Lyapunov spectra, identity init, lazy twin."""
import numpy as np
import pytest
from scipy.special import digamma, polygamma

import engine
from engine import diagnostics as dg

# Two exact computations of the same symmetric eigenvalues (double loop vs chains) agree
# to rounding amplified by the conditioning of small Hessians: 1e-8 relative is ample.
HESS_RTOL = 1e-8


def naive_hessian(net, X, Y):
    """d^2 l / dW_i[a,b] dW_j[c,e] from raw paper-convention products (no chains, no reduction).

    l = 1/2 ||R||^2, R = alpha W_L...W_1 X - Y; dR/dW_i[ab] = alpha W_{L:i+1} E_ab W_{i-1:1} X,
    d^2R/dW_i[ab] dW_j[ce] (i < j) = alpha W_{L:j+1} E_ce W_{j-1:i+1} E_ab W_{i-1:1} X, 0 for i = j.
    """
    Ws = net.weights()
    L = len(Ws)
    alpha = net.alpha

    def prod(lo, hi, d):          # W_hi ... W_lo (identity of size d when empty)
        M = np.eye(d)
        for k in range(lo, hi + 1):
            M = Ws[k - 1] @ M
        return M

    R = alpha * prod(1, L, X.shape[0]) @ X - Y
    idx = [(i, a, b) for i in range(1, L + 1) for a in range(Ws[i - 1].shape[0])
           for b in range(Ws[i - 1].shape[1])]

    def E(i, a, b):
        M = np.zeros(Ws[i - 1].shape)
        M[a, b] = 1.0
        return M

    d = net.widths
    J = {}
    for (i, a, b) in idx:
        J[(i, a, b)] = alpha * prod(i + 1, L, d[i]) @ E(i, a, b) @ prod(1, i - 1, d[0]) @ X
    H = np.zeros((len(idx), len(idx)))
    for u, (i, a, b) in enumerate(idx):
        for v, (j, c, e) in enumerate(idx):
            h = np.sum(J[(i, a, b)] * J[(j, c, e)])
            if i != j:
                (i1, a1, b1), (j1, c1, e1) = sorted([(i, a, b), (j, c, e)])
                d2 = (alpha * prod(j1 + 1, L, d[j1]) @ E(j1, c1, e1) @ prod(i1 + 1, j1 - 1, d[i1])
                      @ E(i1, a1, b1) @ prod(1, i1 - 1, d[0]) @ X)
                h += np.sum(R * d2)
            H[u, v] = h
    return H, idx


def _small(init, seed=1):
    X, Y = engine.synthetic(6, 4, 3, seed=0)        # rank 4 < d_in = 6: null directions in W_1
    prob = engine.Problem(X, Y)
    net = engine.init.by_name(init)([6, 5, 4, 3], seed=seed)
    return net, prob, X, Y


@pytest.mark.parametrize("init", ["gaussian", "orthogonal", "identity"])
@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_sharpness_equals_naive_dense_hessian(init, method):
    net, prob, X, Y = _small(init)
    H, _ = naive_hessian(net, X, Y)
    ref = np.sort(np.linalg.eigvalsh(0.5 * (H + H.T)))[::-1]
    got = dg.sharpness(net, prob, 4, method=method, tol=1e-13)
    np.testing.assert_allclose(got, ref[:4], rtol=HESS_RTOL)


def test_hessian_vector_product_matches_naive():
    net, prob, X, Y = _small("gaussian", seed=3)
    H, idx = naive_hessian(net, X, Y)
    rng = np.random.default_rng(0)
    V = [rng.standard_normal(W.shape) for W in net.weights()]
    v = np.concatenate([x.ravel() for x in V])
    ref = H @ v
    got = np.concatenate([x.ravel() for x in dg.hessian_vector_product(net, prob, V)])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_sharpness_is_lambda_max_of_gram_at_zero_residual():
    """Hessian = J^T J at R = 0, whose top eigenvalue is lambda_max(J J^T) = lambda_max(P)."""
    net = engine.init.gaussian([8, 6, 6, 6, 3], seed=2)
    X, _ = engine.synthetic(8, 5, 3, seed=3)
    prob = engine.Problem(X, net.end_to_end() @ X)     # the net fits its targets exactly
    lam = dg.gram_eigs(net, prob, method="exact").lambda_max
    for method in ("dense", "lanczos"):
        np.testing.assert_allclose(dg.sharpness(net, prob, 1, method=method, tol=1e-14)[0], lam,
                                   rtol=1e-11)
    # away from R = 0 the residual's second-order term changes it: the check above can fail
    X2, Y2 = engine.synthetic(8, 5, 3, seed=4)
    prob2 = engine.Problem(X2, Y2)
    s2 = dg.sharpness(net, prob2, 1)[0]
    assert abs(s2 - dg.gram_eigs(net, prob2).lambda_max) > 1e-3 * s2


def test_sharpness_depth_500():
    net = engine.init.orthogonal([4] + [6] * 499 + [2], seed=0)
    X, _ = engine.synthetic(4, 3, 2, seed=1)
    prob = engine.Problem(X, net.end_to_end() @ X)
    s = dg.sharpness(net, prob, 1, tol=1e-12)[0]
    assert np.isfinite(s) and s > 0
    np.testing.assert_allclose(s, dg.gram_eigs(net, prob).lambda_max, rtol=1e-9)


def test_sharpness_includes_null_directions_and_bad_input():
    net, prob, *_ = _small("gaussian")
    n_red = 5 * prob.rank + 5 * 4 + 4 * 3
    ev = dg.sharpness(net, prob, n_red + 2)          # more than the reduced count: zeros of W_1 U_perp
    assert ev.shape == (n_red + 2,)
    assert np.sum(ev == 0.0) >= 2
    with pytest.raises(ValueError, match="method"):
        dg.sharpness(net, prob, method="power")
    with pytest.raises(ValueError, match="k"):
        dg.sharpness(net, prob, 0)
    with pytest.raises(ValueError, match="V"):
        dg.hessian_vector_product(net, prob, [np.zeros((2, 2))] * 3)


def test_record_sharpness_and_cli_plot(tmp_path):
    X, Y = engine.synthetic(8, 6, 2, seed=0)
    prob = engine.Problem(X, Y)
    net = engine.init.orthogonal([8, 16, 16, 2], seed=0)
    run = engine.train(net, prob, lr="theory", steps=20, record={"sharpness": 5})
    assert list(run.records["sharpness"]["t"]) == [0, 5, 10, 15, 20]
    v = np.asarray(run.records["sharpness"]["values"])
    assert v.shape == (5, 1) and np.all(v > 0)
    np.testing.assert_allclose(v[-1], dg.sharpness(run.net, prob, 1), rtol=1e-8)
    from engine.cli import main
    png = tmp_path / "t.png"
    assert main(["train", "--width", "16", "--depth", "3", "--steps", "10", "--record", "sharpness:5",
                 "--record", "lazy:2", "--plot", str(png), "--no-progress", "--d-in", "8", "--n", "6",
                 "--d-out", "2"]) == 0
    assert png.stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["train", "--record", "nosuch:3"])


# -- Lyapunov ---------------------------------------------------------------------------------

def test_lyapunov_orthogonal_and_identity_are_zero():
    ly = dg.lyapunov(engine.init.orthogonal([12] * 65, seed=0))
    assert ly.shape == (12,) and ly.dtype == np.float64
    np.testing.assert_allclose(ly, 0.0, atol=1e-12)
    np.testing.assert_allclose(dg.lyapunov(engine.init.identity([16] + [8] * 40 + [3]), i=2), 0.0, atol=1e-13)


def test_lyapunov_equals_log_svd_of_formed_product():
    net = engine.init.gaussian([7] * 9, seed=4)
    A = np.eye(7)
    for a in net.normalized()[2:7]:       # A_7 ... A_3
        A = a @ A
    ref = np.log(np.linalg.svd(A, compute_uv=False))
    np.testing.assert_allclose(dg.lyapunov(net, 3, 7, tol=0.0, max_sweeps=500), ref, atol=1e-11)
    # the same from paper-convention weights (scales: RMS entry; documented)
    Ws = net.weights()
    net2 = engine.init.from_weights(Ws, alpha=1.0)
    s = net2.scales
    A2 = np.eye(7)
    for W, sk in zip(Ws[2:7], s[2:7]):
        A2 = (W / sk) @ A2
    np.testing.assert_allclose(dg.lyapunov(net2, 3, 7, tol=0.0, max_sweeps=500),
                               np.log(np.linalg.svd(A2, compute_uv=False)), atol=1e-11)


def test_lyapunov_gaussian_matches_exact_finite_width_expectation():
    """QR accumulation of a product of N(0, 1/m) matrices: the i-th log|R_ii| per layer is
    (1/2) ln(chi^2_{m-i+1} / m), independent over layers (Bartlett decomposition), so the
    Benettin sum has mean L (1/2)[ln(2/m) + digamma((m-i+1)/2)] and variance
    L trigamma((m-i+1)/2) / 4 exactly."""
    m, L, S = 6, 40, 60
    i = np.arange(1, m + 1)
    mean = L * 0.5 * (np.log(2.0 / m) + digamma((m - i + 1) / 2))
    sd = np.sqrt(L * polygamma(1, (m - i + 1) / 2) / 4 / S)
    est = np.mean([dg.lyapunov(engine.init.gaussian([m] * (L + 1), seed=s), max_sweeps=1)
                   for s in range(S)], axis=0)
    assert np.all(np.abs(est - mean) < 4.5 * sd), (est, mean, sd)
    # exact singular values differ from the Benettin sums by O(1), not O(L): per layer within 3/L
    exact = np.mean([dg.lyapunov(engine.init.gaussian([m] * (L + 1), seed=s)) for s in range(10)], axis=0)
    assert np.all(np.abs(exact - mean) / L < 3.0 / L + 4.5 * sd * np.sqrt(S / 10) / L)


def test_lyapunov_top_exponent_spread_grows_like_depth_over_width():
    """Hanin & Nica: the log of ||A_L...A_1 x|| is ~ Gaussian with variance ~ L/(2m)."""
    def var(m, L, S=80):
        top = [dg.lyapunov(engine.init.gaussian([m] * (L + 1), seed=s))[0] for s in range(S)]
        return np.var(top, ddof=1) / (L * polygamma(1, m / 2) / 4)
    r1, r2, r3 = var(6, 24), var(6, 96), var(24, 96)
    for r in (r1, r2, r3):
        assert 0.55 < r < 1.8, (r1, r2, r3)


def test_lyapunov_deep_narrow_is_finite_where_the_product_underflows():
    net = engine.init.gaussian([10] * 701, seed=0)
    ly = dg.lyapunov(net)
    assert np.all(np.isfinite(ly)) and np.all(np.diff(ly) <= 0)
    assert ly[-1] < -1000                            # e^-1000: the formed product loses it
    i = np.arange(1, 11)
    mean = 700 * 0.5 * (np.log(0.2) + digamma((10 - i + 1) / 2))
    assert np.all(np.abs(ly - mean) < 5 * np.sqrt(700 * polygamma(1, (10 - i + 1) / 2) / 4) + 3)


def test_lyapunov_bad_input():
    net = engine.init.gaussian([1024, 8, 8, 10], seed=0)
    with pytest.raises(ValueError, match="i: no partial product"):
        dg.lyapunov(net)
    np.testing.assert_equal(dg.lyapunov(net, i=2).shape, (8,))
    with pytest.raises(ValueError, match="j:"):
        dg.lyapunov(net, i=2, j=3)
    with pytest.raises(ValueError, match="i:"):
        dg.lyapunov(net, i=0)
    with pytest.raises(ValueError, match="max_sweeps"):
        dg.lyapunov(net, i=2, max_sweeps=0)


# -- identity init ----------------------------------------------------------------------------

def test_identity_init_structure():
    w = [20, 8, 8, 8, 3]
    net = engine.init.identity(w, seed=5)
    Ws = net.weights()
    for W in Ws[1:-1]:
        np.testing.assert_allclose(W, np.sqrt(8) * np.eye(8), atol=1e-15)
    np.testing.assert_allclose(Ws[0] @ Ws[0].T, 20 * np.eye(8), atol=1e-12)   # orthogonal init's rule
    np.testing.assert_allclose(Ws[-1] @ Ws[-1].T, 8 * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(net.log_alpha, -0.5 * np.sum(np.log(w[1:])), rtol=1e-14)
    sc = engine.init.identity(w, scale=0.5, seed=5)
    np.testing.assert_allclose(sc.end_to_end(), 0.5 ** 4 * net.end_to_end(), rtol=1e-13)
    noisy = engine.init.identity(w, noise=0.1, seed=5)
    assert not np.allclose(noisy.weights()[1], Ws[1])
    assert engine.init.by_name("identity") is engine.init.identity
    for bad, match in (({"scale": 0.0}, "scale"), ({"noise": -1.0}, "noise"), ({"noise": "x"}, "noise")):
        with pytest.raises((ValueError, TypeError), match=match):
            engine.init.identity(w, **bad)


def test_identity_theory_lr_cli_sweep_and_phase_panel(tmp_path):
    X, Y = engine.synthetic(8, 6, 2, seed=0)
    prob = engine.Problem(X, Y)
    run = engine.train(engine.init.identity([8, 16, 16, 16, 2]), prob, lr="theory", steps=30)
    assert run.lr == engine.theory.lr_bound("orthogonal", prob, 4)
    assert run.excess[-1] < run.excess[0]
    from engine.cli import main
    assert main(["train", "--init", "identity", "--width", "16", "--depth", "3", "--steps", "5",
                 "--no-progress", "--d-in", "8", "--n", "6", "--d-out", "2"]) == 0
    from engine import sweep
    res = sweep.run_config({"init": "identity", "d_in": 8, "n": 6, "d_out": 2, "width": 16, "depth": 3,
                            "steps": 20})
    assert res["result"]["init"] == "identity"
    from engine import experiments as ex
    rows = [{"init": init, "depth": d, "width": wd, "steps": 10, "status": "ok",
             "log10_rel_excess": -3.0, "seed": 0}
            for init in ("gaussian", "orthogonal", "identity") for d in (2, 4) for wd in (8, 16)]
    assert ex.inits_of(rows) == ["gaussian", "orthogonal", "identity"]
    seen = {}
    save = ex.plotting.save

    def spy(fig, path, dpi=90):
        seen["panels"] = sum(1 for a in fig.axes if a.get_title())   # colorbars have no title
        return save(fig, path, dpi)

    ex.plotting.save = spy
    try:
        ex.plot_phase_diagram(rows, str(tmp_path / "pd.png"))
    finally:
        ex.plotting.save = save
    assert seen["panels"] == 3 and (tmp_path / "pd.png").stat().st_size > 0


# -- the lazy twin ----------------------------------------------------------------------------

def test_lazy_twin_is_the_linearized_iteration():
    X, Y = engine.synthetic(8, 5, 3, seed=0)
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([8, 12, 12, 3], seed=1)
    lr = 0.5 * engine.theory.lr_bound("gaussian", prob, 3)
    twin = dg.LazyTwin(net, prob, lr)
    P = dg.gram_matrix(net, prob)
    r = dg.reduced_residual(net, prob).reshape(-1, order="F")
    for t in range(6):
        np.testing.assert_allclose(twin.excess(t), 0.5 * r @ r, rtol=1e-10)
        r = r - lr * (P @ r)
    np.testing.assert_allclose(twin.excess0, prob.excess(net.end_to_end()), rtol=1e-12)


def test_record_lazy_tracks_true_excess_to_first_order_and_gap_shrinks_with_width():
    X, Y = engine.synthetic(8, 5, 2, seed=0)
    prob = engine.Problem(X, Y)

    def gap(m):
        net = engine.init.orthogonal([8] + [m] * 3 + [2], seed=2)
        lr = engine.theory.lr_bound("orthogonal", prob, 4)
        run = engine.train(net, prob, lr=lr, steps=40, record={"lazy": 1})
        v = np.asarray(run.records["lazy"]["values"])
        assert v.shape == (41, 2)
        np.testing.assert_allclose(v[:, 1], run.excess, rtol=1e-9)
        np.testing.assert_allclose(v[0, 0], v[0, 1], rtol=1e-12)
        # one step: the twin differs from GD at second order in eta only
        assert abs(v[1, 0] - v[1, 1]) < 0.05 * abs(v[0, 1] - v[1, 1])
        return np.max(np.abs(v[:, 0] - v[:, 1])) / v[0, 1]

    g = [gap(m) for m in (16, 64, 256)]
    assert g[0] > g[1] > g[2], g


def test_sharpness_and_lyapunov_run_under_one_blas_thread(monkeypatch):
    """Their inner kernels (Hessian-vector products, QR sweeps) see a BLAS limit of 1 thread,
    and the caller's limit is restored afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    for name in ("_hvp_reduced", "_qr_sweep"):
        orig = getattr(dg, name)

        def spy(*a, _orig=orig, **k):
            seen.append(blas_threads())
            return _orig(*a, **k)

        monkeypatch.setattr(dg, name, spy)
    X, Y = engine.synthetic(6, 5, 2, seed=0)
    prob = engine.Problem(X, Y)
    net = engine.init.gaussian([6, 8, 8, 2], seed=0)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert before and max(before) == 2          # else the check below could not fail
        dg.sharpness(net, prob, 1, method="lanczos")
        dg.lyapunov(engine.init.gaussian([8] * 6, seed=0))
        assert blas_threads() == before
    assert seen and all(all(n == 1 for n in s) for s in seen), seen
