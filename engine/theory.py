"""The theorems' learning rates and predicted per-step contraction factors.

All quantities in paper convention (W-space learning rate eta).

* DH Theorem 4.1 (Gaussian init): eta <= d_out / (3 L ||X^T X||), and then
  l(t) - OPT <= (1 - eta L lambda_r(X^T X) / (4 d_out))^t (l(0) - OPT).
* HXP Theorem 3.1 (orthogonal init): eta <= d_y / (2 L ||X||^2), and then
  l(t) - l* <= (1 - eta L lambda_r(X^T X) / (2 d_y))^t (l(0) - l*).

(||X^T X|| = ||X||^2, so the two learning-rate bounds differ only in 3 vs 2.)
These hold with high probability when the width conditions (DH eq. 4,
HXP eq. 5) are met; they are reported for any width so the prediction can be
compared with what GD actually does.
"""
from __future__ import annotations

import numpy as np

from ._validate import positive_float, positive_int

# (learning-rate denominator k in eta = d_out / (k L ||X||^2),
#  contraction denominator j in 1 - eta L lambda_r / (j d_out))
_CONSTANTS = {
    "gaussian": (3.0, 4.0),    # DH Theorem 4.1
    "orthogonal": (2.0, 2.0),  # HXP Theorem 3.1
}


def _consts(init: str):
    try:
        return _CONSTANTS[init]
    except (KeyError, TypeError):
        raise ValueError(
            f"init: no theorem gives a learning rate for init {init!r}; "
            f"choose one of {sorted(_CONSTANTS)} or pass a numeric lr") from None


def lr_bound(init: str, prob, depth: int) -> float:
    """The theorem's largest admissible learning rate for ``init``.

    gaussian:   d_out / (3 L ||X^T X||)   (DH Thm 4.1)
    orthogonal: d_y   / (2 L ||X||^2)     (HXP Thm 3.1)
    """
    k, _ = _consts(init)
    L = positive_int(depth, "depth")
    return prob.d_out / (k * L * prob.x_norm ** 2)


def predicted_factor(init: str, prob, depth: int, lr: float) -> float:
    """Per-step contraction of l - OPT the theorem guarantees at learning rate ``lr``.

    gaussian:   1 - eta L lambda_r(X^T X) / (4 d_out)   (DH Thm 4.1)
    orthogonal: 1 - eta L lambda_r(X^T X) / (2 d_y)     (HXP Thm 3.1)

    Only meaningful for lr <= lr_bound(init, prob, depth).
    """
    _, j = _consts(init)
    L = positive_int(depth, "depth")
    eta = positive_float(lr, "lr")
    return 1.0 - eta * L * prob.lambda_r / (j * prob.d_out)


def steps_to_excess(factor: float, excess0: float, eps: float) -> float:
    """Steps t with factor^t * excess0 <= eps: ceil(ln(eps/excess0) / ln factor)."""
    if excess0 <= eps:
        return 0.0
    if not 0.0 < factor < 1.0:
        return float("inf")
    return float(np.ceil(np.log(eps / excess0) / np.log(factor)))
