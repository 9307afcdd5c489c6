"""The two papers' theorems as plain functions (paper convention, W-space eta).

Each function cites the statement it evaluates. Universal constants that the
papers leave unspecified ("a sufficiently large universal constant C", O(.),
Omega(.)) are arguments that default to 1; with C = 1 a width requirement or
initial-loss bound is the *shape* of the theorem's condition, not a certified
threshold (the true C is large and unknown). Quantities with explicit
constants in the papers (learning-rate bounds, contraction factors, the
radius of Claim 7.1 / B.2 given B, the Gram bounds of Claim 7.3 / B.4, the
[0.4, 0.6] band) are exact as stated.

Data quantities come from ``engine.Problem`` (r = rank X, kappa, stable rank,
||X||, lambda_r(X^T X) = sigma_min^2(X) after the reduction of DH Assumption
5.1 / HXP Assumption B.1, ||Phi|| = ||W*|| for the minimum-norm minimizer).

DH Theorem 4.1 (Gaussian init, all hidden widths m):
    width       m >= C L max{r kappa^3 d_out (1 + ||Phi||^2), r kappa^3 log(r/delta), log L}  (eq. 4)
    lr          eta <= d_out / (3 L ||X^T X||)
    factor      l(t) - OPT <= (1 - eta L lambda_r(X^T X) / (4 d_out))^t (l(0) - OPT)
    B           l(0) <= B = C max{1, log(r/delta)/d_out, ||Phi||^2} ||X||_F^2   (Prop. 6.5)
    radius      ||W_i(t) - W_i(0)||_F <= 24 sqrt(B d_out) ||X|| / (L sigma_min^2(X))  (Claim 7.1)
    Gram        3/10 L sigma_min^2(X)/d_out <= lambda(P(t)) <= 3 L ||X||^2 / d_out  (eq. 9, Claim 7.3)
HXP Theorem 3.1 (orthogonal init, m >= d_x):
    width       m >= C r~ kappa^2 (d_y (1 + ||W*||^2) + log(r/delta))    (eq. 5)
    lr          eta <= d_y / (2 L ||X||^2)
    factor      1 - eta L lambda_r(X^T X) / (2 d_y)
    B           C (1 + log(r/delta)/d_y + ||W*||^2) ||X||_F^2          (Lemma B.1, eq. 11)
    radius      8 sqrt(B d_y) ||X|| / (L sigma_min^2(X))               (Claim B.2)
    Gram        3/5 L sigma_min^2(X)/d_y <= lambda(P(t)) <= 2 L ||X||^2 / d_y   (Claim B.4)
HXP Theorem 4.1 (Gaussian init, narrow): if max_i d_i <= C L^(1-gamma), with
    (6) alpha^2 prod_i d_i sigma_i^2 <= L^p and (7) d_i sigma_i^2 >= L^(-p),
    and eta <= e^(c L^gamma), then with probability >= 0.9 the loss stays in
    [0.4, 0.6] ||Y||_F^2 for the first e^(Omega(L^gamma)) iterations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validate import positive_float, positive_int

__all__ = [
    "lr_bound", "predicted_factor", "steps_to_excess", "predicted_steps",
    "dh_width", "dh_lr_bound", "dh_factor", "dh_loss_bound", "dh_radius", "dh_gram_bounds",
    "hxp_width", "hxp_lr_bound", "hxp_factor", "hxp_loss_bound", "hxp_radius", "hxp_gram_bounds",
    "gram_bounds", "radius", "loss_bound", "width_requirement",
    "narrow_regime", "condition_6", "condition_7", "stuck_band", "stuck_steps",
    "Summary", "summary",
]

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


def _delta(delta) -> float:
    d = positive_float(delta, "delta")
    if not d < 1.0:
        raise ValueError(f"delta: must be in (0, 1), got {d!r}")
    return d


def _phi_norm(prob) -> float:
    """||Phi|| (spectral) of the minimum-norm minimizer Phi = Y X^+ (d_out x r on reduced data)."""
    red = prob.reduced()
    return float(np.linalg.norm(red.targets / red.s, 2))


def _fro_sq(prob) -> float:
    """||X||_F^2 = sum of squared singular values."""
    s = prob.singular_values
    return float(np.sum(s * s))


# -- generic (by init name), used by engine.train --------------------------------

def lr_bound(init: str, prob, depth: int) -> float:
    """The theorem's largest admissible learning rate for ``init``.

    gaussian:   d_out / (3 L ||X^T X||)   (DH Thm 4.1)
    orthogonal: d_y   / (2 L ||X||^2)     (HXP Thm 3.1)

    Each holds only under its theorem's width condition (DH eq. 4; HXP eq. 5,
    which includes m >= d_x). Outside it the rate can be far too large: an
    orthogonal net with m < d_in (d_in = 1024, m = 16, L = 4) has
    lambda_max(P(0)) ~24x HXP's 2 L ||X||^2 / d_y and diverges within a few
    steps at this rate; the phase diagrams mark such cells as diverged.
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


def predicted_steps(init: str, prob, depth: int, lr: float, excess0: float, eps: float) -> float:
    """Iterations the theorem for ``init`` predicts to reach l - OPT <= eps from excess0.

    ceil(ln(eps / excess0) / ln(factor)) with the factor of DH Thm 4.1
    (gaussian) or HXP Thm 3.1 (orthogonal); the theorems' O(kappa log(1/eps)).
    Pass excess0 = loss_bound(...) for the a-priori count from B.
    """
    return steps_to_excess(predicted_factor(init, prob, depth, lr), float(excess0), float(eps))


# -- DH Theorem 4.1 -----------------------------------------------------------------

def dh_width(prob, depth: int, delta: float = 0.1, C: float = 1.0) -> float:
    """DH eq. (4): C L max{r kappa^3 d_out (1 + ||Phi||^2), r kappa^3 log(r/delta), log L}.

    C is the theorem's unspecified universal constant (default 1: the shape of
    the requirement only).
    """
    L = positive_int(depth, "depth")
    delta = _delta(delta)
    C = positive_float(C, "C")
    r, kap, d_out = prob.rank, prob.kappa, prob.d_out
    phi2 = _phi_norm(prob) ** 2
    return C * L * max(r * kap ** 3 * d_out * (1.0 + phi2), r * kap ** 3 * math.log(r / delta), math.log(L))


def dh_lr_bound(prob, depth: int) -> float:
    """DH Thm 4.1: eta <= d_out / (3 L ||X^T X||)."""
    return lr_bound("gaussian", prob, depth)


def dh_factor(prob, depth: int, lr: float) -> float:
    """DH Thm 4.1: per-step factor 1 - eta L lambda_r(X^T X) / (4 d_out) of l - OPT."""
    return predicted_factor("gaussian", prob, depth, lr)


def dh_loss_bound(prob, delta: float = 0.1, C: float = 1.0) -> float:
    """DH Prop. 6.5 / eq. (12): B = C max{1, log(r/delta)/d_out, ||Phi||^2} ||X||_F^2.

    C stands for the O(.) constant (default 1: the shape only).
    """
    delta = _delta(delta)
    C = positive_float(C, "C")
    return C * max(1.0, math.log(prob.rank / delta) / prob.d_out, _phi_norm(prob) ** 2) * _fro_sq(prob)


def dh_radius(prob, depth: int, B: float | None = None, delta: float = 0.1, C: float = 1.0) -> float:
    """DH Claim 7.1: R = 24 sqrt(B d_out) ||X|| / (L sigma_min^2(X)); B defaults to dh_loss_bound."""
    L = positive_int(depth, "depth")
    B = dh_loss_bound(prob, delta, C) if B is None else positive_float(B, "B")
    return 24.0 * math.sqrt(B * prob.d_out) * prob.x_norm / (L * prob.lambda_r)


def dh_gram_bounds(prob, depth: int) -> tuple[float, float]:
    """DH eq. (9) with the constants of Claim 7.3 (valid under B(t)):
    (3/10 L sigma_min^2(X) / d_out, 3 L sigma_max^2(X) / d_out)."""
    L = positive_int(depth, "depth")
    return 0.3 * L * prob.lambda_r / prob.d_out, 3.0 * L * prob.x_norm ** 2 / prob.d_out


# -- HXP Theorem 3.1 ----------------------------------------------------------------

def hxp_width(prob, delta: float = 0.1, C: float = 1.0) -> float:
    """HXP eq. (5): max(C r~ kappa^2 (d_y (1 + ||W*||^2) + log(r/delta)), d_x).

    r~ = ||X||_F^2 / ||X||^2 is the stable rank; W* the minimum-norm minimizer.
    Independent of the depth. C as in ``dh_width`` (default 1).
    """
    delta = _delta(delta)
    C = positive_float(C, "C")
    w2 = _phi_norm(prob) ** 2
    req = C * prob.stable_rank * prob.kappa ** 2 * (prob.d_out * (1.0 + w2) + math.log(prob.rank / delta))
    return max(req, float(prob.d_in))


def hxp_lr_bound(prob, depth: int) -> float:
    """HXP Thm 3.1: eta <= d_y / (2 L ||X||^2)."""
    return lr_bound("orthogonal", prob, depth)


def hxp_factor(prob, depth: int, lr: float) -> float:
    """HXP Thm 3.1: per-step factor 1 - eta L lambda_r(X^T X) / (2 d_y) of l - l*."""
    return predicted_factor("orthogonal", prob, depth, lr)


def hxp_loss_bound(prob, delta: float = 0.1, C: float = 1.0) -> float:
    """HXP Lemma B.1, eq. (11): B = C (1 + log(r/delta)/d_y + ||W*||^2) ||X||_F^2."""
    delta = _delta(delta)
    C = positive_float(C, "C")
    return C * (1.0 + math.log(prob.rank / delta) / prob.d_out + _phi_norm(prob) ** 2) * _fro_sq(prob)


def hxp_radius(prob, depth: int, B: float | None = None, delta: float = 0.1, C: float = 1.0) -> float:
    """HXP Claim B.2: R = 8 sqrt(B d_y) ||X|| / (L sigma_min^2(X)); B defaults to hxp_loss_bound."""
    L = positive_int(depth, "depth")
    B = hxp_loss_bound(prob, delta, C) if B is None else positive_float(B, "B")
    return 8.0 * math.sqrt(B * prob.d_out) * prob.x_norm / (L * prob.lambda_r)


def hxp_gram_bounds(prob, depth: int) -> tuple[float, float]:
    """HXP Claim B.4 (valid under B(t)): (3/5 L sigma_min^2(X)/d_y, 2 L ||X||^2/d_y)."""
    L = positive_int(depth, "depth")
    return 0.6 * L * prob.lambda_r / prob.d_out, 2.0 * L * prob.x_norm ** 2 / prob.d_out


# -- by init name ---------------------------------------------------------------------

def _pick(init, dh, hxp):
    _consts(init)
    return dh if init == "gaussian" else hxp


def gram_bounds(init: str, prob, depth: int) -> tuple[float, float]:
    """(lower, upper) on the eigenvalues of P(t): DH eq. (9) / HXP Claim B.4 by ``init``."""
    return _pick(init, dh_gram_bounds, hxp_gram_bounds)(prob, depth)


def radius(init: str, prob, depth: int, B: float | None = None, delta: float = 0.1, C: float = 1.0) -> float:
    """Bound on ||W_i(t) - W_i(0)||_F: DH Claim 7.1 / HXP Claim B.2 by ``init``."""
    return _pick(init, dh_radius, hxp_radius)(prob, depth, B, delta, C)


def loss_bound(init: str, prob, delta: float = 0.1, C: float = 1.0) -> float:
    """Initial-loss bound B: DH Prop. 6.5 / HXP Lemma B.1 by ``init``."""
    return _pick(init, dh_loss_bound, hxp_loss_bound)(prob, delta, C)


def width_requirement(init: str, prob, depth: int, delta: float = 0.1, C: float = 1.0) -> float:
    """Width required by DH eq. (4) (gaussian) or HXP eq. (5) (orthogonal)."""
    if _pick(init, True, False):
        return dh_width(prob, depth, delta, C)
    positive_int(depth, "depth")
    return hxp_width(prob, delta, C)


# -- HXP Theorem 4.1 (the exponential curse of narrow Gaussian nets) ---------------------

def _widths_depth(widths):
    from ._validate import widths_list
    w = widths_list(widths)
    return w, len(w) - 1


def narrow_regime(widths, gamma: float, C: float = 1.0) -> bool:
    """HXP Thm 4.1 hypothesis: max{d_0, ..., d_L} <= C L^(1 - gamma), 0 < gamma <= 1."""
    w, L = _widths_depth(widths)
    gamma = positive_float(gamma, "gamma")
    if gamma > 1:
        raise ValueError(f"gamma: must be in (0, 1], got {gamma!r}")
    return max(w) <= positive_float(C, "C") * L ** (1.0 - gamma)


def _gains(widths, sigma):
    w, L = _widths_depth(widths)
    if sigma is None:
        sig = np.ones(L)
    elif np.ndim(sigma) == 0:
        sig = np.full(L, positive_float(sigma, "sigma"))
    else:
        sig = np.asarray(sigma, dtype=np.float64)
        if sig.shape != (L,) or not np.all(np.isfinite(sig)) or np.any(sig <= 0):
            raise ValueError(f"sigma: must be positive and have one entry per layer (L = {L})")
    return np.log(np.asarray(w[1:], dtype=np.float64)) + 2.0 * np.log(sig), L


def condition_6(widths, sigma=None, log_alpha: float | None = None, p: float = 1.0) -> bool:
    """HXP eq. (6): alpha^2 prod_i d_i sigma_i^2 <= L^p (the paper's L^(O(1)); p defaults to 1).

    Evaluated in logs; log_alpha defaults to the DH/Xavier choice
    -1/2 sum log(d_i sigma_i^2), for which the left side is exactly 1.
    """
    g, L = _gains(widths, sigma)
    la = -0.5 * float(np.sum(g)) if log_alpha is None else float(log_alpha)
    return 2.0 * la + float(np.sum(g)) <= p * math.log(L) + 1e-12


def condition_7(widths, sigma=None, p: float = 1.0) -> bool:
    """HXP eq. (7): d_i sigma_i^2 >= L^(-p) for every layer (p defaults to 1)."""
    g, L = _gains(widths, sigma)
    return bool(np.all(g >= -p * math.log(L) - 1e-12))


def stuck_band(prob) -> tuple[float, float]:
    """HXP Thm 4.1: the band (0.4 ||Y||_F^2, 0.6 ||Y||_F^2) the loss l(t) stays in."""
    y2 = prob.y_norm_sq
    return 0.4 * y2, 0.6 * y2


def stuck_steps(depth: int, gamma: float, c: float = 1.0) -> float:
    """HXP Thm 4.1: e^(c L^gamma), the order of the number of stuck iterations
    (and of the largest admissible eta). c is the unspecified constant (default 1)."""
    L = positive_int(depth, "depth")
    return math.exp(positive_float(c, "c") * L ** positive_float(gamma, "gamma"))


# -- everything at once ---------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    """All theorem quantities for one (problem, init, depth, lr); see ``summary``."""

    init: str
    depth: int
    lr: float
    lr_bound: float
    factor: float
    width_requirement: float
    loss_bound: float
    radius: float
    gram_lower: float
    gram_upper: float
    steps_to_eps: float
    C: float
    delta: float


def summary(init: str, prob, depth: int, lr=None, *, eps: float = 1e-10,
            delta: float = 0.1, C: float = 1.0) -> Summary:
    """The theorem for ``init`` (DH Thm 4.1 or HXP Thm 3.1) evaluated at once.

    lr defaults to the theorem's bound; steps_to_eps counts iterations from the
    bound B to l - OPT <= eps * B. C and delta as in the individual functions.
    """
    L = positive_int(depth, "depth")
    bound = lr_bound(init, prob, L)
    lr = bound if lr is None else positive_float(lr, "lr")
    fac = predicted_factor(init, prob, L, lr)
    B = loss_bound(init, prob, delta, C)
    lo, hi = gram_bounds(init, prob, L)
    return Summary(init=init, depth=L, lr=lr, lr_bound=bound, factor=fac,
                   width_requirement=width_requirement(init, prob, L, delta, C), loss_bound=B,
                   radius=radius(init, prob, L, B), gram_lower=lo, gram_upper=hi,
                   steps_to_eps=steps_to_excess(fac, B, eps * B), C=C, delta=delta)
