"""Numba kernels of the fused GD step; the math is in ``numba_backend``.

Plain loops compiled by Numba. Conventions (all 0-indexed, layer i = M_{i+1}
of the papers, shape (w[i+1], w[i]) with w = [r, d_1, ..., d_{L-1}, d_out]):

    Sst[i, :, :w[i]]   suffix  S_i = beta M_{L-1} ... M_i          (D x w[i]),  Sst[L] = beta I
    Pst[i, :, :w[i]]   prefix, transposed: P_i^T = (M_{i-1} ... M_0 X_red)^T (r x w[i]),
                       Pst[0] = diag(xs)
    Tc[p, :, :w[i]]    carried T chain, transposed: T_i^T = R P_i^T (D x w[i])
    Sc[p, :, :w[i]]    carried suffix of the *old* weights in a top-down sweep

Every chain entry is computed by exactly one helper (``_acc_rows`` for
suffixes, ``_dot_row`` for prefixes), whether in a read-only pass or inside a
fused sweep, with a summation order fixed by the code and independent of the
block partition; so results do not depend on the thread count at all, and a
fresh pass reproduces bit for bit the chain a fused sweep would have left.

Parallel work is split so that no reduction crosses threads: suffix products
S_i = S_{i+1} M_i are split over column blocks of M_i (columns of S_i are
independent), prefix products and T chains over row blocks (rows are
independent); rank-K updates are elementwise and follow either split.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import FASTMATH_DOT
from ._jit import jit as _jit

TILE = 512            # columns per inner tile of a top-down sweep (4 KB float64)
PAR_MIN = 32 * 1024   # a layer with fewer weights runs serially (no parallel-region launch)
COLS_MIN = 64         # fewest columns / rows per parallel block


@_jit()
def _layer(first, stack, last, lst, uniform, i, L):
    """Layer i (0-indexed): from the contiguous hidden stack when ``uniform``."""
    if uniform:
        if i == 0:
            return first
        if i == L - 1:
            return last
        return stack[i - 1]
    return lst[i]


@_jit()
def _nblocks(n_par, n_other, nt):
    """Parallel blocks (at most nt) for a layer with n_par splittable lines of n_other entries."""
    if n_par * n_other < PAR_MIN or nt <= 1:
        return 1
    nb = min(nt, n_par // COLS_MIN)
    return max(nb, 1)


# ---------------------------------------------------------------- helpers
# Hot loops index with unsigned loop variables: Numba's negative-index
# wraparound (a select on every address, which stops vectorization) is not
# emitted for unsigned indices. Views (slices) would avoid it too, but each
# view bumps the array's shared reference count atomically, and two threads
# doing that on the same array ping-pong one cache line (measured: 25x
# slower with 2 threads at m = 1024).
@_jit(fastmath=FASTMATH_DOT)
def _dot_row(M, j, V, vi, q, n):
    """sum_k M[j, k] V[vi, q, k] for k < n.

    The loop starts at 0 (so the index is provably non-negative and a short
    row, e.g. 32, still fills the vectorized body); the zero is taken from M
    to keep its dtype (a non-finite M[j, 0] makes it nan, and the dot would
    be non-finite anyway)."""
    s = M[j, 0] - M[j, 0]
    for k in range(n):
        s += M[j, k] * V[vi, q, k]
    return s


@_jit()
def _acc_rows(out, oi, S, si, M, j, g, k0, k1):
    """out[oi, d, k] += sum_{jj=j..j+g-1} S[si, d, jj] M[jj, k] for k in [k0, k1), 1 <= g <= 4.

    Four rows at a time, and four outputs d at a time (``_acc4x4``: the four
    row operands M[j..j+3, k] are loaded once for four outputs, half the
    loads per multiply-add of one output at a time); fewer rows one by one.
    Every output entry gets the same expression whichever helper computes
    it, so the order of the sum is fixed by this code."""
    D = out.shape[1]
    if g == 4:
        d = 0
        while d + 4 <= D:
            _acc4x4(out, oi, d, S, si, M, j, k0, k1)
            d += 4
        while d < D:
            _acc4x1(out, oi, d, S, si, M, j, k0, k1)
            d += 1
    else:
        u0 = np.uint64(k0)
        u1 = np.uint64(k1)
        for jj in range(j, j + g):
            for d in range(D):
                s0 = S[si, d, jj]
                for k in range(u0, u1):
                    out[oi, d, k] += s0 * M[jj, k]


@_jit()
def _acc4x1(out, oi, d, S, si, M, j, k0, k1):
    s0 = S[si, d, j]
    s1 = S[si, d, j + 1]
    s2 = S[si, d, j + 2]
    s3 = S[si, d, j + 3]
    for k in range(np.uint64(k0), np.uint64(k1)):
        out[oi, d, k] += s0 * M[j, k] + s1 * M[j + 1, k] + s2 * M[j + 2, k] + s3 * M[j + 3, k]


@_jit()
def _acc4x4(out, oi, d, S, si, M, j, k0, k1):
    a0 = S[si, d, j]
    a1 = S[si, d, j + 1]
    a2 = S[si, d, j + 2]
    a3 = S[si, d, j + 3]
    b0 = S[si, d + 1, j]
    b1 = S[si, d + 1, j + 1]
    b2 = S[si, d + 1, j + 2]
    b3 = S[si, d + 1, j + 3]
    c0 = S[si, d + 2, j]
    c1 = S[si, d + 2, j + 1]
    c2 = S[si, d + 2, j + 2]
    c3 = S[si, d + 2, j + 3]
    e0 = S[si, d + 3, j]
    e1 = S[si, d + 3, j + 1]
    e2 = S[si, d + 3, j + 2]
    e3 = S[si, d + 3, j + 3]
    for k in range(np.uint64(k0), np.uint64(k1)):
        m0 = M[j, k]
        m1 = M[j + 1, k]
        m2 = M[j + 2, k]
        m3 = M[j + 3, k]
        out[oi, d, k] += a0 * m0 + a1 * m1 + a2 * m2 + a3 * m3
        out[oi, d + 1, k] += b0 * m0 + b1 * m1 + b2 * m2 + b3 * m3
        out[oi, d + 2, k] += c0 * m0 + c1 * m1 + c2 * m2 + c3 * m3
        out[oi, d + 3, k] += e0 * m0 + e1 * m1 + e2 * m2 + e3 * m3


@_jit()
def _update_row(M, j, U, ui, cu, W, wi, K, k0, k1):
    """M[j, k] -= sum_{e<K} (cu U[ui, e, j]) W[wi, e, k] for k in [k0, k1): a rank-K update."""
    u0 = np.uint64(k0)
    u1 = np.uint64(k1)
    e = 0
    while e + 4 <= K:
        c0 = cu * U[ui, e, j]
        c1 = cu * U[ui, e + 1, j]
        c2 = cu * U[ui, e + 2, j]
        c3 = cu * U[ui, e + 3, j]
        for k in range(u0, u1):
            M[j, k] -= c0 * W[wi, e, k] + c1 * W[wi, e + 1, k] + c2 * W[wi, e + 2, k] + c3 * W[wi, e + 3, k]
        e += 4
    while e < K:
        c0 = cu * U[ui, e, j]
        for k in range(u0, u1):
            M[j, k] -= c0 * W[wi, e, k]
        e += 1


@_jit()
def _update_rows4(M, j, U, ui, cu, W, wi, K, k0, k1):
    """``_update_row`` for rows j..j+3 at once: each W[wi, e, k] is loaded once
    for four rows. Every entry gets the expression ``_update_row`` gives it."""
    u0 = np.uint64(k0)
    u1 = np.uint64(k1)
    e = 0
    while e + 4 <= K:
        a0 = cu * U[ui, e, j]
        a1 = cu * U[ui, e + 1, j]
        a2 = cu * U[ui, e + 2, j]
        a3 = cu * U[ui, e + 3, j]
        b0 = cu * U[ui, e, j + 1]
        b1 = cu * U[ui, e + 1, j + 1]
        b2 = cu * U[ui, e + 2, j + 1]
        b3 = cu * U[ui, e + 3, j + 1]
        c0 = cu * U[ui, e, j + 2]
        c1 = cu * U[ui, e + 1, j + 2]
        c2 = cu * U[ui, e + 2, j + 2]
        c3 = cu * U[ui, e + 3, j + 2]
        f0 = cu * U[ui, e, j + 3]
        f1 = cu * U[ui, e + 1, j + 3]
        f2 = cu * U[ui, e + 2, j + 3]
        f3 = cu * U[ui, e + 3, j + 3]
        for k in range(u0, u1):
            w0 = W[wi, e, k]
            w1 = W[wi, e + 1, k]
            w2 = W[wi, e + 2, k]
            w3 = W[wi, e + 3, k]
            M[j, k] -= a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3
            M[j + 1, k] -= b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3
            M[j + 2, k] -= c0 * w0 + c1 * w1 + c2 * w2 + c3 * w3
            M[j + 3, k] -= f0 * w0 + f1 * w1 + f2 * w2 + f3 * w3
        e += 4
    while e < K:
        a0 = cu * U[ui, e, j]
        b0 = cu * U[ui, e, j + 1]
        c0 = cu * U[ui, e, j + 2]
        f0 = cu * U[ui, e, j + 3]
        for k in range(u0, u1):
            w0 = W[wi, e, k]
            M[j, k] -= a0 * w0
            M[j + 1, k] -= b0 * w0
            M[j + 2, k] -= c0 * w0
            M[j + 3, k] -= f0 * w0
        e += 1


@_jit()
def _zero_cols(A, ai, k0, k1):
    for d in range(A.shape[1]):
        for k in range(np.uint64(k0), np.uint64(k1)):
            A[ai, d, k] = 0


# ------------------------------------------------------------ column blocks
@_jit()
def _suffix_cols(M, n_out, Sst, i, k0, k1):
    """Sst[i][:, k0:k1] = Sst[i+1][:, :n_out] M[:, k0:k1]   (S_i = S_{i+1} M_i).

    Same row grouping and tiling as the new-suffix part of ``_down_cols``, so
    both give the same bits."""
    _zero_cols(Sst, i, k0, k1)
    for jg in range((n_out + 3) // 4):
        j = 4 * jg
        g = min(4, n_out - j)
        for kt in range(k0, k1, TILE):
            _acc_rows(Sst, i, Sst, i + 1, M, j, g, kt, min(kt + TILE, k1))


@_jit()
def _down_cols(M, n_out, k0, k1, Sc, p, has_old, Usrc, ui, cu, K, Wsrc, wi, R, Pst, i, tform,
               Sst, new_chain):
    """One column block of a fused top-down sweep at layer i.

    old suffix  Sc[1-p][:, k] = Sc[p] M_old[:, k]                    (if has_old)
    update      M[:, k] -= (cu Usrc[ui, :K])^T W[:K, k]
                with W = Pst[i] (P form) or W = R Pst[i] (T form, built here)
    new suffix  Sst[i][:, k] = Sst[i+1] M_new[:, k]                   (if new_chain)
    """
    if tform:   # W[d, k] = sum_q R[d, q] Pst[i, q, k], into Wsrc[wi]
        _zero_cols(Wsrc, wi, k0, k1)
        for d in range(Wsrc.shape[1]):
            for q in range(R.shape[1]):
                rr = R[d, q]
                for k in range(np.uint64(k0), np.uint64(k1)):
                    Wsrc[wi, d, k] += rr * Pst[i, q, k]
    if has_old:
        _zero_cols(Sc, 1 - p, k0, k1)
    if new_chain:
        _zero_cols(Sst, i, k0, k1)
    for jg in range((n_out + 3) // 4):
        j = 4 * jg
        g = min(4, n_out - j)
        for kt in range(k0, k1, TILE):
            ke = min(kt + TILE, k1)
            if has_old:
                _acc_rows(Sc, 1 - p, Sc, p, M, j, g, kt, ke)
            if g == 4:
                _update_rows4(M, j, Usrc, ui, cu, Wsrc, wi, K, kt, ke)
            else:
                for jj in range(j, j + g):
                    _update_row(M, jj, Usrc, ui, cu, Wsrc, wi, K, kt, ke)
            if new_chain:
                _acc_rows(Sst, i, Sst, i + 1, M, j, g, kt, ke)


# --------------------------------------------------------------- row blocks
@_jit(fastmath=FASTMATH_DOT)
def _dot4(M, j, V, vi, q, n):
    """(sum_k M[j+g, k] V[vi, q, k] for g = 0..3): four rows share each load of V."""
    z = M[j, 0] - M[j, 0]
    s0 = z
    s1 = z
    s2 = z
    s3 = z
    for k in range(n):
        v = V[vi, q, k]
        s0 += M[j, k] * v
        s1 += M[j + 1, k] * v
        s2 += M[j + 2, k] * v
        s3 += M[j + 3, k] * v
    return s0, s1, s2, s3


@_jit(fastmath=FASTMATH_DOT)
def _dot4x4(M, j, V, vi, q, n):
    """The 16 dots M[j+g, :n] . V[vi, q+h, :n] (g, h < 4): each load of M or V
    serves four multiply-adds (``_dot4``: one load of V per four)."""
    z = M[j, 0] - M[j, 0]
    s00 = z
    s01 = z
    s02 = z
    s03 = z
    s10 = z
    s11 = z
    s12 = z
    s13 = z
    s20 = z
    s21 = z
    s22 = z
    s23 = z
    s30 = z
    s31 = z
    s32 = z
    s33 = z
    for k in range(n):
        m0 = M[j, k]
        m1 = M[j + 1, k]
        m2 = M[j + 2, k]
        m3 = M[j + 3, k]
        v0 = V[vi, q, k]
        v1 = V[vi, q + 1, k]
        v2 = V[vi, q + 2, k]
        v3 = V[vi, q + 3, k]
        s00 += m0 * v0
        s01 += m0 * v1
        s02 += m0 * v2
        s03 += m0 * v3
        s10 += m1 * v0
        s11 += m1 * v1
        s12 += m1 * v2
        s13 += m1 * v3
        s20 += m2 * v0
        s21 += m2 * v1
        s22 += m2 * v2
        s23 += m2 * v3
        s30 += m3 * v0
        s31 += m3 * v1
        s32 += m3 * v2
        s33 += m3 * v3
    return (s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)


@_jit()
def _dots_into(out, oi, M, j, g, V, vi, Q, n):
    """out[oi, q, j+gg] = M[j+gg, :n] . V[vi, q, :n] for q < Q, gg < g (g = 4, or 1).

    Four rows: q in blocks of four (``_dot4x4``), the rest one by one
    (``_dot4``); the blocks depend only on Q, so each entry is always
    computed by the same helper."""
    if g == 4:
        q = 0
        while q + 4 <= Q:
            (t00, t01, t02, t03, t10, t11, t12, t13,
             t20, t21, t22, t23, t30, t31, t32, t33) = _dot4x4(M, j, V, vi, q, n)
            out[oi, q, j] = t00
            out[oi, q + 1, j] = t01
            out[oi, q + 2, j] = t02
            out[oi, q + 3, j] = t03
            out[oi, q, j + 1] = t10
            out[oi, q + 1, j + 1] = t11
            out[oi, q + 2, j + 1] = t12
            out[oi, q + 3, j + 1] = t13
            out[oi, q, j + 2] = t20
            out[oi, q + 1, j + 2] = t21
            out[oi, q + 2, j + 2] = t22
            out[oi, q + 3, j + 2] = t23
            out[oi, q, j + 3] = t30
            out[oi, q + 1, j + 3] = t31
            out[oi, q + 2, j + 3] = t32
            out[oi, q + 3, j + 3] = t33
            q += 4
        while q < Q:
            s0, s1, s2, s3 = _dot4(M, j, V, vi, q, n)
            out[oi, q, j] = s0
            out[oi, q, j + 1] = s1
            out[oi, q, j + 2] = s2
            out[oi, q, j + 3] = s3
            q += 1
    else:
        for q in range(Q):
            out[oi, q, j] = _dot_row(M, j, V, vi, q, n)


@_jit()
def _row_group(j, j1, n_out):
    """Rows in the group starting at j: 4 inside [0, n_out // 4 * 4), else 1.

    Groups are aligned to absolute row indices and block bounds are multiples
    of 4 (``_row_bound``), so every row is computed by the same code whatever
    the partition (thread count)."""
    if j + 4 <= j1 and j + 4 <= n_out // 4 * 4:
        return 4
    return 1


@_jit()
def _row_bound(b, nb, n_out):
    """Start of row block b of nb: a multiple of 4 (n_out for b = nb)."""
    if b >= nb:
        return n_out
    return (b * n_out // nb) // 4 * 4


@_jit()
def _prefix_rows(M, n_in, n_out, Pst, i, j0, j1):
    """Pst[i+1][:, j] = (M[j, :] Pst[i]^T) for rows j in [j0, j1)   (P_{i+1} = M_i P_i)."""
    r = Pst.shape[1]
    j = j0
    while j < j1:
        g = _row_group(j, j1, n_out)
        _dots_into(Pst, i + 1, M, j, g, Pst, i, r, n_in)
        j += g


@_jit()
def _up_rows(M, n_in, n_out, j0, j1, Tc, p, not_last, Sst, i, c, Pst, new_chain):
    """Rows [j0, j1) of a fused bottom-up sweep at layer i, in groups of 4 rows.

    old T chain  Tc[1-p][:, j] = M_old[j, :] Tc[p]^T                  (if not_last)
    update       M[j, :] -= (c Sst[i+1][:, j])^T Tc[p]                (rank D)
    new prefix   Pst[i+1][:, j] = M_new[j, :] Pst[i]^T                (if new_chain)
    """
    D = Tc.shape[1]
    r = Pst.shape[1]
    j = j0
    while j < j1:
        g = _row_group(j, j1, n_out)
        if not_last:
            _dots_into(Tc, 1 - p, M, j, g, Tc, p, D, n_in)
        if g == 4:
            _update_rows4(M, j, Sst, i + 1, c, Tc, p, D, j0 - j0, n_in)   # (k0 = 0 as a runtime value)
        else:
            for jj in range(j, j + g):
                _update_row(M, jj, Sst, i + 1, c, Tc, p, D, j0 - j0, n_in)
        if new_chain:
            _dots_into(Pst, i + 1, M, j, g, Pst, i, r, n_in)
        j += g


# ------------------------------------------------------------------ passes
@_jit()
def _set_diag(A, ai, v):
    """A[ai, :n, :n] = diag(v), n = len(v)."""
    n = v.shape[0]
    for q in range(n):
        for k in range(n):
            A[ai, q, k] = 0
        A[ai, q, q] = v[q]


@_jit()
def _set_identity(A, ai, D, val):
    for d in range(D):
        for k in range(D):
            A[ai, d, k] = 0
        A[ai, d, d] = val


KIND_SUFFIX, KIND_PREFIX, KIND_UP, KIND_DOWN = 0, 1, 2, 3


@_jit()
def _block(kind, b, nb, M, n_out, n_in, i, p, ci, flag, new_chain, tform, K,
           Sst, Pst, Tc, Sc, Usrc, ui, Wsrc, wi, R):
    """Block b of nb of layer i for one kind of work (columns split evenly, rows
    at multiples of 4).

    ``flag`` is has_old for KIND_DOWN and not_last for KIND_UP.
    """
    if kind == KIND_SUFFIX:
        _suffix_cols(M, n_out, Sst, i, b * n_in // nb, (b + 1) * n_in // nb)
    elif kind == KIND_PREFIX:
        _prefix_rows(M, n_in, n_out, Pst, i, _row_bound(b, nb, n_out), _row_bound(b + 1, nb, n_out))
    elif kind == KIND_UP:
        _up_rows(M, n_in, n_out, _row_bound(b, nb, n_out), _row_bound(b + 1, nb, n_out), Tc, p,
                 flag, Sst, i, ci, Pst, new_chain)
    else:
        _down_cols(M, n_out, b * n_in // nb, (b + 1) * n_in // nb, Sc, p, flag, Usrc, ui, ci,
                   K, Wsrc, wi, R, Pst, i, tform, Sst, new_chain)


@_jit(parallel=True)
def _run_layer(kind, nb, M, n_out, n_in, i, p, ci, flag, new_chain, tform, K,
               Sst, Pst, Tc, Sc, Usrc, ui, Wsrc, wi, R):
    """All nb blocks of one layer: in parallel, or serially when nb == 1 (a
    small layer: no parallel-region launch). The only parallel region of the
    backend -- one ``prange`` shared by every kind of work, which keeps
    compilation short."""
    if nb == 1:
        for b in range(nb):
            _block(kind, b, nb, M, n_out, n_in, i, p, ci, flag, new_chain, tform, K,
                   Sst, Pst, Tc, Sc, Usrc, ui, Wsrc, wi, R)
    else:
        for b in prange(nb):
            _block(kind, np.int64(b), nb, M, n_out, n_in, i, p, ci, flag, new_chain, tform, K,
                   Sst, Pst, Tc, Sc, Usrc, ui, Wsrc, wi, R)


@_jit()
def _sweep(kind, first, stack, last, lst, uniform, widths, c, beta, xs, R, Sst, Pst, Tc, Sc,
           Ub, Wb, tform, new_chain, nt):
    """One sweep over all layers.

    KIND_SUFFIX  read-only, top-down: Sst[i] = S_i for i = L..0.
    KIND_PREFIX  read-only, bottom-up: Pst[i] = P_i^T for i = 0..L.
    KIND_UP      fused bottom-up sweep: finish the step with S (stored) and T
                 (carried); if ``new_chain``, build the prefixes of the new weights.
    KIND_DOWN    fused top-down sweep: finish the step with P (stored) and S of
                 the old weights (carried); if ``new_chain``, build the suffixes
                 of the new weights. The update is U^T W with U = c_i S_{i+1},
                 W = R P_i^T when ``tform``, else U = c_i R^T S_{i+1}, W = P_i^T.

    Every argument reaching ``_run_layer`` is a runtime value (never a
    literal), so Numba compiles the parallel kernel once per dtype.
    """
    L = widths.shape[0] - 1
    D = R.shape[0]
    r = R.shape[1]
    top_down = kind == KIND_SUFFIX or kind == KIND_DOWN
    if kind == KIND_SUFFIX:
        _set_identity(Sst, L, D, beta)           # S_L = beta I
    elif kind == KIND_PREFIX:
        _set_diag(Pst, 0, xs)                    # P_0 = X_red = diag(xs)
    elif kind == KIND_UP:
        for d in range(D):                       # T_0^T = R X_red^T = R diag(xs)
            for q in range(r):
                Tc[0, d, q] = R[d, q] * xs[q]
        if new_chain:
            _set_diag(Pst, 0, xs)
    else:
        _set_identity(Sc, 0, D, beta)
        if new_chain:
            _set_identity(Sst, L, D, beta)
    K = D
    if kind == KIND_DOWN and not tform:
        K = r
    for idx in range(L):
        p = idx % 2                              # carried chain ping-pong: read p, write 1-p
        i = L - 1 - idx if top_down else idx
        M = _layer(first, stack, last, lst, uniform, i, L)
        n_out = widths[i + 1]
        n_in = widths[i]
        Usrc = Sc
        ui = p
        Wsrc = Wb
        wi = 0
        if kind == KIND_DOWN and not tform:
            for j in range(n_out):               # Ub[0] = R^T S_{i+1} (r x n_out)
                for q in range(r):
                    s = R[0, q] * Sc[p, 0, j]
                    for d in range(1, D):
                        s += R[d, q] * Sc[p, d, j]
                    Ub[0, q, j] = s
            Usrc = Ub
            ui = 0
            Wsrc = Pst
            wi = i
        if kind == KIND_UP:
            flag = i < L - 1                     # not_last: carry T further
        else:
            flag = i > 0                         # has_old: carry S further
        if top_down:
            nb = _nblocks(n_in, n_out, nt)
        else:
            nb = _nblocks(n_out, n_in, nt)
        _run_layer(kind, nb, M, n_out, n_in, i, p, c[i], flag, new_chain, tform, K,
                   Sst, Pst, Tc, Sc, Usrc, ui, Wsrc, wi, R)


# ----------------------------------------------------------------- residual
@_jit()
def _residual_from_suffix(Sst, xs, yred, R):
    """R = S_0 X_red - Y_red; returns 1/2 ||R||_F^2 (accumulated in float64)."""
    ex = 0.0
    for d in range(R.shape[0]):
        for q in range(R.shape[1]):
            v = Sst[0, d, q] * xs[q] - yred[d, q]
            R[d, q] = v
            ex += np.float64(v) * np.float64(v)
    return 0.5 * ex


@_jit()
def _residual_from_prefix(Pst, L, beta, yred, R):
    """R = beta P_L - Y_red; returns 1/2 ||R||_F^2 (accumulated in float64)."""
    ex = 0.0
    for d in range(R.shape[0]):
        for q in range(R.shape[1]):
            v = beta * Pst[L, q, d] - yred[d, q]
            R[d, q] = v
            ex += np.float64(v) * np.float64(v)
    return 0.5 * ex


# ------------------------------------------------------------------- driver
@_jit()
def step_kernel(first, stack, last, lst, uniform, widths, c, beta, xs, yred,
                Sst, Pst, Tc, Sc, Ub, Wb, R, schedule, tform, phase, valid, ex_in,
                lo, hi, do_update, nt):
    """Excess of the current state and (optionally) one GD step, in one call.

    schedule 0: two-pass, T form   (suffix pass, then fused bottom-up sweep)
    schedule 1: two-pass, P form   (prefix pass, then fused top-down sweep)
    schedule 2: single-pass        (alternating fused sweeps; the chain of the
                next state is built in the same sweep)
    phase 0: the state is the suffix chain (next sweep bottom-up);
    phase 1: the state is the prefix chain (next sweep top-down).
    ``valid``: the stored chain and R belong to the current weights (then
    ``ex_in`` is their excess and no read-only pass is needed).
    ``tform`` selects the update form inside a top-down sweep; ``nt`` is the
    number of parallel blocks per layer (the thread count).

    Returns (excess_before, applied, phase, valid, excess_after).
    """
    L = widths.shape[0] - 1
    single = schedule == 2
    if valid:
        ex = ex_in
    else:
        kind = KIND_SUFFIX if phase == 0 else KIND_PREFIX
        _sweep(kind, first, stack, last, lst, uniform, widths, c, beta, xs, R, Sst, Pst, Tc, Sc,
               Ub, Wb, tform, single, nt)         # (new_chain is ignored by read-only passes)
        if phase == 0:
            ex = _residual_from_suffix(Sst, xs, yred, R)
        else:
            ex = _residual_from_prefix(Pst, L, beta, yred, R)
    if not (do_update and np.isfinite(ex) and lo < ex and ex <= hi):
        return ex, False, phase, True, ex
    kind = KIND_UP if phase == 0 else KIND_DOWN
    _sweep(kind, first, stack, last, lst, uniform, widths, c, beta, xs, R, Sst, Pst, Tc, Sc,
           Ub, Wb, tform, single, nt)
    if not single:
        return ex, True, phase, False, np.nan
    if phase == 0:
        return ex, True, 1, True, _residual_from_prefix(Pst, L, beta, yred, R)
    return ex, True, 0, True, _residual_from_suffix(Sst, xs, yred, R)
