"""Slow, obviously correct paper-convention implementations: the test oracle.

Raw weights W_i (d_i x d_{i-1}), raw X and Y, the loss of DH eq. (1) /
HXP eq. (2) and the gradient of DH eq. (5); no reduction, no normalization.
Only for small L (the raw product must not overflow).
"""
import numpy as np


def chain(Ws, j, i, d):
    """W_{j:i} = W_j ... W_i (1-indexed, inclusive); identity of size d when j < i."""
    out = np.eye(d)
    for k in range(i, j + 1):
        out = Ws[k - 1] @ out
    return out


def loss(Ws, alpha, X, Y):
    E = alpha * chain(Ws, len(Ws), 1, X.shape[0])
    R = E @ X - Y
    return 0.5 * float(np.sum(R * R))


def grads(Ws, alpha, X, Y):
    """dl/dW_i = alpha W_{L:i+1}^T (alpha W_{L:1} X - Y) (W_{i-1:1} X)^T  (DH eq. 5)."""
    L = len(Ws)
    widths = [X.shape[0]] + [W.shape[0] for W in Ws]
    U = alpha * chain(Ws, L, 1, widths[0]) @ X
    R = U - Y
    out = []
    for i in range(1, L + 1):
        suffix = chain(Ws, L, i + 1, widths[i])
        prefix = chain(Ws, i - 1, 1, widths[0]) @ X
        out.append(alpha * suffix.T @ R @ prefix.T)
    return out


def gd(Ws, alpha, X, Y, lr, steps):
    """``steps`` GD steps (DH eq. 2); returns the final weights and l(0..steps)."""
    Ws = [W.copy() for W in Ws]
    losses = [loss(Ws, alpha, X, Y)]
    for _ in range(steps):
        G = grads(Ws, alpha, X, Y)
        Ws = [W - lr * g for W, g in zip(Ws, G)]
        losses.append(loss(Ws, alpha, X, Y))
    return Ws, np.array(losses)


def gram(Ws, alpha, X):
    """P of DH eq. (7) on the full data, dense, from raw products:
    alpha^2 sum_i (W_{i-1:1}X)^T (W_{i-1:1}X) (x) W_{L:i+1} W_{L:i+1}^T, (n d_out) x (n d_out)."""
    L = len(Ws)
    widths = [X.shape[0]] + [W.shape[0] for W in Ws]
    n, d_out = X.shape[1], widths[-1]
    P = np.zeros((n * d_out, n * d_out))
    for i in range(1, L + 1):
        pre = chain(Ws, i - 1, 1, widths[0]) @ X
        suf = chain(Ws, L, i + 1, widths[i])
        P += alpha ** 2 * np.kron(pre.T @ pre, suf @ suf.T)
    return P
