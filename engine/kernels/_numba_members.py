"""The member-parallel Numba kernel: one GD step of K same-shape networks in one call.

Used by ``engine.stepper`` for ensembles whose hidden widths are uniform
(d_1 = ... = d_{L-1} = m, L >= 2): ``prange`` over members, each member's
whole two-pass step (``numpy_backend``'s P or T form, notation there) inside,
its products by the ?gemm SciPy ships (Numba's ``np.dot``), BLAS held to one
thread meanwhile (``engine.kernels.threads``). Equal to the numpy backend up
to rounding (summation order); each member is stepped by one thread from start
to end, so results do not depend on the thread count at all.

Storage (``engine.network.Storage``): B1 (K, m, r) the bound first layers,
H (K, L-2, m, m) the hidden layers (C-contiguous), Lw (K, d_out, m) the last
layers; c (K, L) the A-space steps eta / s_i^2 and beta (K,) per member.

    available, reason          whether Numba imports here, and why not
    shape_ok(widths)           the shapes this kernel covers
    workspace(K, widths, r, d_out, dtype, form) -> ws
    step(B1, H, Lw, c, beta, xs, yred, ws, lo, hi, active)
        members with active[k] are stepped (only where finite and lo < excess <= hi[k]);
        ws.ex[k] is the excess before the step (nan when inactive), ws.applied[k] whether applied
"""
from __future__ import annotations

import math

import numpy as np

name = "numba"

try:  # Numba is optional: without it ensembles step member by member.
    import numba as _nb
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS np.dot calls: loaded before thread limits scan)

    from ._jit import EXACT, jit
except Exception as _exc:  # pragma: no cover - numba is a dependency
    available = False
    reason = f"numba cannot be imported: {_exc}"
else:
    available = True
    reason = ""


def shape_ok(widths) -> bool:
    """The kernel covers d_1 = ... = d_{L-1} (= m) with L >= 2."""
    return len(widths) >= 3 and all(h == widths[1] for h in widths[1:-1])


class Workspace:
    """Buffers of the member-parallel kernel for one (K, widths, r, form)."""

    def __init__(self, K, widths, r, d_out, dtype, form):
        L, dt = len(widths) - 1, np.dtype(dtype)
        m = widths[1]
        self.form = form
        self.R = np.empty((K, d_out, r), dtype=dt)
        mm = max(m, r)
        if form == "T":
            self.bufs = (np.empty((K, L - 1, d_out, m), dtype=dt), np.empty((K, d_out, r), dtype=dt), self.R,
                         np.empty((K, d_out * mm), dtype=dt), np.empty((K, d_out * mm), dtype=dt),
                         np.empty((K, m * mm), dtype=dt))
        else:
            self.bufs = (np.empty((K, L - 1, m, r), dtype=dt), np.empty((K, d_out, r), dtype=dt), self.R,
                         np.empty((K, d_out * m), dtype=dt), np.empty((K, d_out * m), dtype=dt),
                         np.empty((K, max(m, d_out) * r), dtype=dt), np.empty((K, max(m, d_out) * m), dtype=dt))
        self.step = _ens_step_T if form == "T" else _ens_step_P
        self.ex = np.empty(K, dtype=np.float64)
        self.applied = np.empty(K, dtype=np.bool_)


def workspace(K, widths, r, d_out, dtype, form):
    """Buffers for ``step``; ``form`` is "T" or "P" (``numpy_backend.choose_form``)."""
    if not available:
        raise RuntimeError(f"the member-parallel kernel is unavailable: {reason}")
    return Workspace(K, widths, r, d_out, dtype, form)


def step(B1, H, Lw, c, beta, xs, yred, ws, lo, hi, active):
    """One GD step of every active member, in place (see the module docstring)."""
    ws.step(B1, H, Lw, c, beta, xs, yred, float(lo), hi, active, *ws.bufs, ws.ex, ws.applied)


if available:
    prange = _nb.prange

    @jit(fastmath=EXACT, nogil=True)
    def _layer(B1, H, Lw, i, L):
        """M_{i+1} (0-based i): B1, H[i-1] or Lw."""
        if i == 0:
            return B1
        if i == L - 1:
            return Lw
        return H[i - 1]


    @jit(fastmath=EXACT, nogil=True)
    def _member_T(B1, H, Lw, c, beta, xs, yred, lo, hi, Sch, s0, R, Ta, Tb, G):
        """One GD step of one member, T form (numpy_backend._step, ws.form == "T").

        Pass 1 top-down stores S_{L-1}..S_1 and gives R; pass 2 bottom-up carries
        T^T (d_out x d_i, in the flat buffers Ta/Tb), advancing it from the old
        M_i before M_i -= c_i S_i^T T_{i-1}^T. Products by ?gemm (numba's np.dot
        calls the BLAS SciPy ships): at m = 32 that is ~2x faster than compiled
        loops. G: flat (m*m) gradient scratch.
        """
        L = H.shape[0] + 2
        d_out, r = R.shape
        S = Sch[L - 2]
        for o in range(d_out):
            for j in range(Lw.shape[1]):
                S[o, j] = Lw[o, j] * beta
        for i in range(L - 2, 0, -1):
            np.dot(Sch[i], H[i - 1], Sch[i - 1])
        np.dot(Sch[0], B1, s0)
        ex = 0.0
        for o in range(d_out):
            for j in range(r):
                v = s0[o, j] * xs[j] - yred[o, j]
                R[o, j] = v
                ex += v * v
        ex *= 0.5
        if not (math.isfinite(ex) and lo < ex <= hi):
            return ex, False
        Tt = Ta[:d_out * r].reshape((d_out, r))
        for o in range(d_out):
            for j in range(r):
                Tt[o, j] = R[o, j] * xs[j]
        for i in range(L):
            M = _layer(B1, H, Lw, i, L)
            rows, cols = M.shape
            if i == L - 1:
                f = beta * c[i]
                for a in range(rows):
                    for b in range(cols):
                        M[a, b] -= Tt[a, b] * f
                break
            Tn = (Tb if (i % 2 == 0) else Ta)[:d_out * rows].reshape((d_out, rows))
            np.dot(Tt, M.T, Tn)                      # T_i^T = T_{i-1}^T M_i^T, old M_i
            Gi = G[:rows * cols].reshape((rows, cols))
            np.dot(Sch[i].T, Tt, Gi)                 # S_i^T T_{i-1}^T
            ci = c[i]
            for a in range(rows):
                for b in range(cols):
                    M[a, b] -= ci * Gi[a, b]
            Tt = Tn
        return ex, True


    @jit(fastmath=EXACT, parallel=True, nogil=True)
    def _ens_step_T(B1, H, Lw, c, beta, xs, yred, lo, hi, active, Sch, s0, R, Ta, Tb, G, ex_out, applied_out):
        for k in prange(B1.shape[0]):
            if active[k]:
                ex, ok = _member_T(B1[k], H[k], Lw[k], c[k], beta[k], xs, yred, lo, hi[k],
                                        Sch[k], s0[k], R[k], Ta[k], Tb[k], G[k])
                ex_out[k] = ex
                applied_out[k] = ok
            else:
                ex_out[k] = np.nan
                applied_out[k] = False


    @jit(fastmath=EXACT, nogil=True)
    def _member_P(B1, H, Lw, c, beta, xs, yred, lo, hi, Pch, Pout, R, Sa, Sb, Q, G):
        """One GD step of one member, P form (numpy_backend._step, ws.form == "P").

        Pass 1 bottom-up stores P_1..P_{L-1} and gives R; pass 2 top-down
        carries S_i (flat buffers Sa/Sb), forming Q = c_i S_i^T R and advancing
        S_{i-1} = S_i M_i from the old M_i before M_i -= Q P_{i-1}^T. Products
        by ?gemm as in ``_member_T``. Q, G: flat scratch.
        """
        L = H.shape[0] + 2
        d_out, r = R.shape
        m = B1.shape[0]
        P1 = Pch[0]
        for a in range(m):
            for j in range(r):
                P1[a, j] = B1[a, j] * xs[j]
        for i in range(1, L - 1):
            np.dot(H[i - 1], Pch[i - 1], Pch[i])
        np.dot(Lw, Pch[L - 2], Pout)
        ex = 0.0
        for o in range(d_out):
            for j in range(r):
                v = Pout[o, j] * beta - yred[o, j]
                R[o, j] = v
                ex += v * v
        ex *= 0.5
        if not (math.isfinite(ex) and lo < ex <= hi):
            return ex, False
        S = Sa.reshape((d_out, m))
        use_b = True                      # S_{i-1} goes to Sb and Sa in turn
        for i in range(L - 1, -1, -1):
            M = _layer(B1, H, Lw, i, L)
            rows, cols = M.shape
            ci = c[i]
            Qi = Q[:rows * r].reshape((rows, r))
            if i == L - 1:
                for a in range(rows):
                    for j in range(r):
                        Qi[a, j] = (R[a, j] * beta) * ci
            else:
                np.dot(S.T, R, Qi)        # S_{i+1}^T R
                for a in range(rows):
                    for j in range(r):
                        Qi[a, j] *= ci
            if i > 0:
                Sn = (Sb if use_b else Sa).reshape((d_out, cols))   # cols == m for i > 0
                use_b = not use_b
                if i == L - 1:
                    for o in range(d_out):
                        for b in range(cols):
                            Sn[o, b] = M[o, b] * beta
                else:
                    np.dot(S, M, Sn)
                Gi = G[:rows * cols].reshape((rows, cols))
                np.dot(Qi, Pch[i - 1].T, Gi)
                for a in range(rows):
                    for b in range(cols):
                        M[a, b] -= Gi[a, b]
                S = Sn
            else:
                for a in range(rows):
                    for b in range(cols):
                        M[a, b] -= Qi[a, b] * xs[b]
        return ex, True


    @jit(fastmath=EXACT, parallel=True, nogil=True)
    def _ens_step_P(B1, H, Lw, c, beta, xs, yred, lo, hi, active, Pch, Pout, R, Sa, Sb, Q, G, ex_out, applied_out):
        for k in prange(B1.shape[0]):
            if active[k]:
                ex, ok = _member_P(B1[k], H[k], Lw[k], c[k], beta[k], xs, yred, lo, hi[k],
                                   Pch[k], Pout[k], R[k], Sa[k], Sb[k], Q[k], G[k])
                ex_out[k] = ex
                applied_out[k] = ok
            else:
                ex_out[k] = np.nan
                applied_out[k] = False
