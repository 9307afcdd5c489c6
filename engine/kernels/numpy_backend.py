"""The ``numpy`` backend: the readable reference GD step (two-pass schedule).

Notation (docs/design.md, "Chain products"): layers M_1 = B_1 = A_1 U_r (d_1 x r),
M_i = A_i (i >= 2); reduced input X_red = diag(xs) (r x r); reduced targets
Y_red (d_out x r); per-layer A-space steps c_i = eta / s_i^2.

    suffix  S_i = beta M_L ... M_{i+1}   (d_out x d_i),  S_L = beta I
    prefix  P_i = M_i ... M_1 X_red      (d_i x r),      P_0 = X_red
    residual R = beta P_L - Y_red = S_0 X_red - Y_red     (d_out x r)
    gradient dl/dM_i = S_i^T R P_{i-1}^T                  (DH eq. 5, normalized)
                     = S_i^T T_{i-1}^T,  T_{i-1} = M_{i-1} ... M_1 X_red R^T  (d_{i-1} x d_out)

Two forms, identical in exact arithmetic, chosen by cost:

* P form (r < d_out): pass 1 bottom-up stores P_1..P_{L-1} and gives R;
  pass 2 top-down carries S_i, forms G_i = (S_i^T R) P_{i-1}^T (rank r) and
  advances S_{i-1} = S_i M_i from the *old* M_i before updating it.
* T form (r >= d_out): pass 1 top-down stores S_{L-1}..S_1 and gives R;
  pass 2 bottom-up carries T_{i-1}, forms G_i = S_i^T T_{i-1}^T (rank d_out)
  and advances T_i = M_i T_{i-1} from the old M_i before updating it.

Each pass touches every weight once (pass 1 reads, pass 2 reads and writes):
three weight passes per step. The stored chain is L*m*min(r, d_out) numbers;
the m x m gradient is formed in a preallocated scratch buffer per layer
shape, so a step allocates nothing proportional to L*m^2.
"""
from __future__ import annotations

import numpy as np

name = "numpy"
available = True
reason = ""


class Workspace:
    """Preallocated buffers for one (layer shapes, r, d_out, dtype, form)."""

    def __init__(self, shapes, r, d_out, dtype, form):
        self.form = form
        L = len(shapes)
        self.scratch = {}
        for shp in shapes:
            if shp not in self.scratch:
                self.scratch[shp] = np.empty(shp, dtype=dtype)
        if form == "P":
            # P_i for i = 1..L (index i-1); the last is the network output / beta.
            self.chain = [np.empty((shapes[i][0], r), dtype=dtype) for i in range(L)]
        else:
            # S_i for i = 1..L-1 (index i-1); S_L = beta I is implicit.
            self.chain = [np.empty((d_out, shapes[i][0]), dtype=dtype) for i in range(L - 1)]
            self.s0 = np.empty((d_out, r), dtype=dtype)
        self.R = np.empty((d_out, r), dtype=dtype)


def choose_form(r: int, d_out: int) -> str:
    """P form costs ~(2r + d_out) flops per weight and T form ~3 d_out."""
    return "P" if r < d_out else "T"


def workspace(layers, r, d_out, dtype, form=None):
    form = form or choose_form(r, d_out)
    return Workspace([a.shape for a in layers], r, d_out, dtype, form)


def _residual_P(layers, beta, xs, yred, ws):
    chain = ws.chain
    np.multiply(layers[0], xs, out=chain[0])           # P_1 = B_1 diag(xs)
    for i in range(1, len(layers)):
        np.matmul(layers[i], chain[i - 1], out=chain[i])  # P_{i+1} = M_{i+1} P_i
    np.multiply(chain[-1], beta, out=ws.R)
    ws.R -= yred
    return ws.R


def _residual_T(layers, beta, xs, yred, ws):
    L = len(layers)
    chain = ws.chain
    S = None                                           # S_L = beta I, implicit
    for i in range(L - 1, 0, -1):                      # compute S_i for i = L-1 .. 1
        out = chain[i - 1]
        if S is None:
            np.multiply(layers[L - 1], beta, out=out)  # S_{L-1} = beta M_L
        else:
            np.matmul(S, layers[i], out=out)           # S_{i} = S_{i+1} M_{i+1}
        S = out
    if S is None:
        np.multiply(layers[0], beta, out=ws.s0)        # L = 1: S_0 = beta M_1
    else:
        np.matmul(S, layers[0], out=ws.s0)             # S_0 = S_1 M_1
    np.multiply(ws.s0, xs, out=ws.R)
    ws.R -= yred
    return ws.R


def excess(layers, beta, xs, yred, ws) -> float:
    """1/2 ||R||_F^2 for the current weights (pass 1 only, nothing written)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _excess(layers, beta, xs, yred, ws)


def _excess(layers, beta, xs, yred, ws) -> float:
    R = (_residual_P if ws.form == "P" else _residual_T)(layers, beta, xs, yred, ws)
    return 0.5 * float(np.sum(np.square(R, dtype=np.float64)))


def step(layers, c, beta, xs, yred, ws, lo=-1.0, hi=np.inf):
    """One GD step in place on ``layers``.

    Returns ``(excess, applied)``: the excess loss 1/2||R||^2 before the step,
    and whether the update was written. The update is skipped (weights left
    untouched) unless ``lo < excess <= hi`` and the excess is finite, so a
    caller can stop at a tolerance or refuse an exploding step without losing
    the current state. Overflow is not warned about: a diverging run shows
    up as a non-finite excess, which the caller handles.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return _step(layers, c, beta, xs, yred, ws, lo, hi)


def _step(layers, c, beta, xs, yred, ws, lo, hi):
    L = len(layers)
    if ws.form == "P":
        R = _residual_P(layers, beta, xs, yred, ws)
    else:
        R = _residual_T(layers, beta, xs, yred, ws)
    ex = 0.5 * float(np.sum(np.square(R, dtype=np.float64)))
    if not (np.isfinite(ex) and lo < ex <= hi):
        return ex, False
    dt = layers[0].dtype
    if ws.form == "P":
        P = ws.chain
        S = None                                        # S_L = beta I
        for i in range(L - 1, -1, -1):                  # layer i+1 in paper indexing
            M = layers[i]
            Q = (R * beta) if S is None else (S.T @ R)  # S_{i+1}^T R, (d_{i+1} x r)
            Q *= dt.type(c[i])
            S_next = None
            if i > 0:
                S_next = (M * beta) if S is None else (S @ M)   # S_i from the old M
                G = np.matmul(Q, P[i - 1].T, out=ws.scratch[M.shape])
                M -= G
            else:
                M -= Q * xs                             # P_0 = diag(xs)
            S = S_next
    else:
        S_chain = ws.chain
        T = (R * xs).T                                  # T_0 = X_red R^T, (r x d_out)
        for i in range(L):
            M = layers[i]
            T_next = M @ T if i < L - 1 else None       # T_{i+1} from the old M
            if i == L - 1:                              # S_L = beta I
                St = np.multiply(T.T, beta * c[i], dtype=dt)
                M -= St
            else:
                Sc = S_chain[i] * dt.type(c[i])         # c_i S_{i+1}, (d_out x d_{i+1})
                G = np.matmul(Sc.T, T.T, out=ws.scratch[M.shape])
                M -= G
            T = T_next
    return ex, True
