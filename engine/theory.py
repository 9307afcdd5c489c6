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
Which setting a network is in (``theorem_setting``): DH Thm 4.1 is stated
for N(0, 1) entries and HXP Thm 3.1 for eq. (4), both with the default
alpha. Two exact equivalences carry them to the nets ``engine.init`` builds:
    (a) entries N(0, s^2), one s for all layers, default alpha
        (prod_i d_i s^2)^(-1/2): the net computes the same function as the
        N(0, 1) net G = W / s, and W-space GD at eta is DH's GD at eta / s^2
        (dl/dG_i = s dl/dW_i, and G_i moves by (1/s) eta dl/dW_i);
    (b) alpha = c alpha_default (either init): l(W; X, Y) = c^2 l_default(W; X, Y / c),
        so W-space GD at eta is the theorem's GD at c^2 eta on targets Y / c;
        l - OPT is c^2 times the theorem's, so the per-step factor is the same.
    Together: W-space eta = (s^2 / c^2) x the theorem's eta (``Setting.lr_scale``),
    the W-space Gram matrix P(t) (eq. 7 / eq. 9) is c^2 / s^2 times the
    theorem's, and the width requirement is evaluated for Y / c (||Phi|| / c).
    c = beta = alpha prod_i s_i in engine's storage. Per-layer sigma_i that
    differ give every layer its own step eta / sigma_i^2 in N(0, 1) units,
    which neither theorem covers; nor do ``from_weights`` nets.
HXP Theorem 4.1 (Gaussian init, narrow): if max_i d_i <= C L^(1-gamma), with
    (6) alpha^2 prod_i d_i sigma_i^2 <= L^p and (7) d_i sigma_i^2 >= L^(-p),
    and eta <= e^(c L^gamma), then with probability >= 0.9 the loss stays in
    [0.4, 0.6] ||Y||_F^2 for the first e^(Omega(L^gamma)) iterations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._draw import NOISY_IDENTITY
from ._validate import positive_float, positive_int, widths_list
from .network import Network

__all__ = [
    "Setting", "theorem_setting", "width_condition_met", "width_note", "THEOREMS", "NOISY_IDENTITY",
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
THEOREMS = {"gaussian": "DH Thm 4.1", "orthogonal": "HXP Thm 3.1"}

# The init name engine.init.identity gives a net drawn with noise > 0 (outside every theorem):
# _draw.NOISY_IDENTITY, re-exported here.

# alpha counts as the default when ln(alpha / alpha_default) = ln(beta) is this
# close to 0: an alpha passed as the default computed by hand differs by rounding.
_ALPHA_DEFAULT_ATOL = 1e-9
# per-layer sigma_i count as one sigma within this relative spread (rounding)
_SIGMA_UNIFORM_RTOL = 1e-12


def _consts(init: str):
    try:
        return _CONSTANTS[init]
    except (KeyError, TypeError):
        raise ValueError(
            f"init: unknown init {init!r}; the theorems cover "
            + ", ".join(f"{k!r} ({v})" for k, v in THEOREMS.items())) from None


@dataclass(frozen=True)
class Setting:
    """How a network relates to the setting of DH Thm 4.1 or HXP Thm 3.1.

    init          "gaussian" or "orthogonal" (the theorem's init), or the net's
                  own init name when no theorem applies
    depth         L
    sigma         the uniform entry standard deviation s (1 for orthogonal)
    output_scale  c = alpha / alpha_default (1 for the default alpha)
    reason        why no theorem applies (None when one does)

    See the module docstring for the equivalences (a), (b) behind ``lr_scale``.
    """

    init: str
    depth: int
    sigma: float = 1.0
    output_scale: float = 1.0
    reason: str | None = None

    @property
    def applies(self) -> bool:
        """True when the net is exactly in (a rescaling of) the theorem's setting."""
        return self.reason is None

    @property
    def theorem(self) -> str | None:
        """"DH Thm 4.1", "HXP Thm 3.1", or None."""
        return THEOREMS[self.init] if self.applies else None

    @property
    def lr_scale(self) -> float:
        """s^2 / c^2: W-space eta = lr_scale x the theorem's eta (its eta_bound scales alike)."""
        return self.sigma ** 2 / self.output_scale ** 2

    def require(self, arg: str = "net") -> "Setting":
        """self, or ValueError (naming ``arg``) saying why no theorem applies."""
        if self.reason is not None:
            raise ValueError(
                f"{arg}: no theorem covers this network: {self.reason}. "
                "Pass a numeric lr (W-space) instead; theory.lr_bound('gaussian', prob, depth) "
                "and theory.lr_bound('orthogonal', prob, depth) are the bounds for the "
                "theorems' own settings (DH Thm 4.1: N(0, 1) entries; HXP Thm 3.1: eq. 4; "
                "default alpha)")
        return self


def _member_setting(init, depth, sigma, log_beta) -> Setting:
    """The Setting of a net built as ``init`` with per-layer sigma and ln(beta)."""
    L = int(depth)
    if init == NOISY_IDENTITY:
        # engine.init.identity(noise > 0) names its nets so: the perturbed hidden
        # layers are no longer isometries, so HXP Lemma B.1's premise (and with it
        # Thm 3.1's rate and factor) fails, and no theorem gives a rate for them
        return Setting(str(init), L, reason=(
            "identity init with init noise > 0 (engine.init.identity(noise=...)) perturbs the "
            "hidden isometries HXP Thm 3.1 relies on (Lemma B.1), and no theorem covers the "
            "perturbed net; noise=0 is HXP's setting"))
    if init == "identity":
        # engine.init.identity(scale=g, noise=0): W_i = g x its eq. (4)-like weights with
        # the orthogonal alpha, i.e. sigma = g (equivalence a) and c = g^L (b).
        g = float(np.exp(float(log_beta) / L))
        if abs(float(log_beta)) <= _ALPHA_DEFAULT_ATOL:
            g = 1.0
        return Setting("orthogonal", L, sigma=g, output_scale=g ** L)
    if init not in _CONSTANTS:
        how = "from_weights (custom) weights" if init == "custom" else f"init {init!r}"
        return Setting(str(init), L, reason=f"{how} are not drawn as either theorem assumes")
    c = float(np.exp(log_beta))
    if abs(float(log_beta)) <= _ALPHA_DEFAULT_ATOL:
        c = 1.0
    if not (np.isfinite(c) and c > 0):
        return Setting(init, L, reason=f"alpha / alpha_default = exp({float(log_beta):.6g}) is not "
                                       "representable in float64")
    s = 1.0
    if init == "gaussian" and sigma is not None:
        sig = np.asarray(sigma, dtype=np.float64).ravel()
        if sig.size and np.ptp(sig) > _SIGMA_UNIFORM_RTOL * np.max(sig):
            return Setting(init, L, reason=(
                f"the per-layer sigma_i differ ({np.min(sig):.4g} .. {np.max(sig):.4g}); "
                "W-space GD then takes a different step eta / sigma_i^2 in each layer of the "
                "N(0, 1) net, which DH Thm 4.1 does not cover"))
        if sig.size:
            s = float(sig[0])
    return Setting(init, L, sigma=s, output_scale=c)


def theorem_setting(net) -> Setting:
    """The Setting of an ``engine.Network`` (or a Setting, returned as is).

    Gaussian nets with one sigma for all layers and orthogonal nets are in a
    theorem's setting for any alpha (equivalences (a), (b) in the module
    docstring); per-layer sigma_i that differ and ``from_weights`` nets are not.
    """
    if isinstance(net, Setting):
        return net
    if not isinstance(net, Network):
        raise TypeError(f"net: must be an engine Network or a theory.Setting, got {type(net).__name__}")
    return _member_setting(net.init, net.depth, net.sigma, net._log_beta)


def _resolve(init, depth) -> Setting:
    """init name + depth -> the theorem's own setting; Network / Setting -> its setting."""
    if isinstance(init, str) or init is None or not hasattr(init, "depth"):
        _consts(init)
        return Setting(init, positive_int(depth, "depth"))
    st = theorem_setting(init)
    if depth is not None and positive_int(depth, "depth") != st.depth:
        raise ValueError(f"depth: {depth} differs from the network's depth {st.depth}")
    return st


def _hidden(widths):
    return list(widths[1:-1])


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


# -- generic (by init name or network), used by engine.train ---------------------

def lr_bound(init, prob, depth: int | None = None) -> float:
    """The theorem's largest admissible W-space learning rate.

    ``init`` is "gaussian" or "orthogonal" (the theorem's own setting: N(0, 1)
    entries / eq. 4, default alpha; ``depth`` required), or an engine
    Network / Setting (depth taken from it), for which the bound is scaled
    by ``Setting.lr_scale`` = sigma^2 / c^2 (module docstring):

    gaussian:   lr_scale x d_out / (3 L ||X^T X||)   (DH Thm 4.1)
    orthogonal: lr_scale x d_y   / (2 L ||X||^2)     (HXP Thm 3.1)

    Raises ValueError (naming ``lr``) for a net no theorem covers. Each bound
    holds only under its theorem's width condition (``width_condition_met``;
    DH eq. 4, HXP eq. 5 with m >= max{d_x, d_y}). Outside it the rate can be
    far too large: for an orthogonal net with m < d_in (d_in = 1024, m = 16,
    L = 4, HXP's data with data_seed 0) lambda_max(P(0)) / (HXP's
    2 L ||X||^2 / d_y) is 24.1 for init seed 0, 1.28 for seed 1 and 1.16 for
    seed 2 (measured with ``diagnostics.gram_eigs``), and at this rate the
    three runs diverge at steps 2, 9 and 26; the phase diagrams mark such
    cells as diverged.
    """
    st = _resolve(init, depth).require()
    k, _ = _consts(st.init)
    return st.lr_scale * prob.d_out / (k * st.depth * prob.x_norm ** 2)


def predicted_factor(init, prob, depth: int | None = None, lr: float | None = None) -> float:
    """Per-step contraction of l - OPT the theorem guarantees at W-space learning rate ``lr``.

    gaussian:   1 - (eta / lr_scale) L lambda_r(X^T X) / (4 d_out)   (DH Thm 4.1)
    orthogonal: 1 - (eta / lr_scale) L lambda_r(X^T X) / (2 d_y)     (HXP Thm 3.1)

    ``init`` as in ``lr_bound`` (lr_scale = 1 for a name). Only meaningful for
    lr <= lr_bound(...) and under the width condition.
    """
    st = _resolve(init, depth).require()
    _, j = _consts(st.init)
    if lr is None:
        raise TypeError("lr: required")
    eta = positive_float(lr, "lr") / st.lr_scale
    return 1.0 - eta * st.depth * prob.lambda_r / (j * prob.d_out)


def steps_to_excess(factor: float, excess0: float, eps: float) -> float:
    """Steps t with factor^t * excess0 <= eps: ceil(ln(eps/excess0) / ln factor)."""
    if excess0 <= eps:
        return 0.0
    if not 0.0 < factor < 1.0:
        return float("inf")
    return float(np.ceil(np.log(eps / excess0) / np.log(factor)))


def predicted_steps(init, prob, depth: int | None = None, lr: float | None = None,
                    excess0: float | None = None, eps: float | None = None) -> float:
    """Iterations the theorem for ``init`` predicts to reach l - OPT <= eps from excess0.

    ceil(ln(eps / excess0) / ln(factor)) with the factor of DH Thm 4.1
    (gaussian) or HXP Thm 3.1 (orthogonal); the theorems' O(kappa log(1/eps)).
    Pass excess0 = loss_bound(...) for the a-priori count from B.
    """
    if excess0 is None or eps is None:
        raise TypeError("excess0, eps: required")
    return steps_to_excess(predicted_factor(init, prob, depth, lr), float(excess0), float(eps))


def width_condition_met(net, prob, delta: float = 0.1, C: float = 1.0) -> bool:
    """True when every hidden width of ``net`` meets its theorem's width requirement.

    DH eq. (4) (which assumes m >= d_out) / HXP eq. (5) (m >= max{d_x, d_y}),
    for the network's setting (``theorem_setting``: Y / c when alpha = c
    alpha_default). With the default C = 1 this is the *shape* of the
    condition only (module docstring). False when no theorem applies; True
    for depth 1 (no hidden width to constrain). For the theorems' own
    settings without building a net pass ``(init, widths)``, e.g.
    ``width_condition_met(("gaussian", [1024, 256, 256, 10]), prob)``.
    Unequal hidden widths (the theorems take them all equal to m) count as
    met when every one of them meets the requirement.
    """
    met, _, _, _ = _width_check(net, prob, delta, C)
    return met


def _width_check(net, prob, delta, C):
    """(met, setting, narrowest hidden width or None, required width or None) for
    ``width_condition_met`` / ``width_note``. ``net``: a Network, (init name, widths)
    or (Setting, widths) (an ensemble member: its setting with the ensemble's widths)."""
    if isinstance(net, tuple):
        init, widths = net
        widths = widths_list(widths)
        if isinstance(init, Setting):
            st = init
            if st.depth != len(widths) - 1:
                raise ValueError(f"net: the Setting's depth {st.depth} differs from the widths' "
                                 f"depth {len(widths) - 1}")
        else:
            _consts(init)
            st = Setting(init, len(widths) - 1)
    else:
        st = theorem_setting(net)
        widths = net.widths
    if not st.applies:
        return False, st, None, None
    hidden = _hidden(widths)
    if not hidden:
        return True, st, None, None
    req = width_requirement(st, prob, st.depth, delta, C)
    return min(hidden) >= req, st, min(hidden), req


def width_note(net, prob, delta: float = 0.1, C: float = 1.0) -> str:
    """The label every drawn or printed theorem bound carries: whether it applies.

    "(width condition met)" or "(width condition NOT met: m = 128 < required 1.2e+05)"
    for the theorem's width requirement (``width_requirement``: DH eq. 4 / HXP eq. 5
    with m >= max{d_x, d_y}; C = 1 by default, so "met" is met in shape only), or
    "(no theorem applies)" when none covers ``net``. ``net`` as in
    ``width_condition_met`` (a Network, (init, widths) or (Setting, widths)).
    A bound drawn for a net whose condition is NOT met is the theorem's formula
    evaluated outside its hypotheses: the curve may break it.
    """
    met, st, m, req = _width_check(net, prob, delta, C)
    if not st.applies:
        return "(no theorem applies)"
    if met:
        return "(width condition met)"
    return f"(width condition NOT met: m = {m} < required {req:.4g})"


# -- DH Theorem 4.1 -----------------------------------------------------------------

def _dh_width(prob, L, delta, C, c):
    r, kap, d_out = prob.rank, prob.kappa, prob.d_out
    phi2 = (_phi_norm(prob) / c) ** 2
    req = C * L * max(r * kap ** 3 * d_out * (1.0 + phi2), r * kap ** 3 * math.log(r / delta), math.log(L))
    return max(req, float(d_out))


def dh_width(prob, depth: int, delta: float = 0.1, C: float = 1.0) -> float:
    """DH eq. (4): max(C L max{r kappa^3 d_out (1 + ||Phi||^2), r kappa^3 log(r/delta), log L}, d_out).

    C is the theorem's unspecified universal constant (default 1: the shape of
    the requirement only). DH assume m >= d_out throughout (the end-to-end map
    must be able to reach rank d_out), so the requirement is never below d_out.
    """
    L = positive_int(depth, "depth")
    return _dh_width(prob, L, _delta(delta), positive_float(C, "C"), 1.0)


def dh_lr_bound(prob, depth: int) -> float:
    """DH Thm 4.1: eta <= d_out / (3 L ||X^T X||)."""
    return lr_bound("gaussian", prob, depth)


def dh_factor(prob, depth: int, lr: float) -> float:
    """DH Thm 4.1: per-step factor 1 - eta L lambda_r(X^T X) / (4 d_out) of l - OPT."""
    return predicted_factor("gaussian", prob, depth, lr)


def _dh_loss_bound(prob, delta, C, c):
    return C * max(1.0, math.log(prob.rank / delta) / prob.d_out, (_phi_norm(prob) / c) ** 2) * _fro_sq(prob)


def dh_loss_bound(prob, delta: float = 0.1, C: float = 1.0) -> float:
    """DH Prop. 6.5 / eq. (12): B = C max{1, log(r/delta)/d_out, ||Phi||^2} ||X||_F^2.

    C stands for the O(.) constant (default 1: the shape only).
    """
    return _dh_loss_bound(prob, _delta(delta), positive_float(C, "C"), 1.0)


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

def _hxp_width(prob, delta, C, c):
    w2 = (_phi_norm(prob) / c) ** 2
    req = C * prob.stable_rank * prob.kappa ** 2 * (prob.d_out * (1.0 + w2) + math.log(prob.rank / delta))
    return max(req, float(prob.d_in), float(prob.d_out))


def hxp_width(prob, delta: float = 0.1, C: float = 1.0) -> float:
    """HXP eq. (5) and Thm 3.1's m >= max{d_x, d_y}:
    max(C r~ kappa^2 (d_y (1 + ||W*||^2) + log(r/delta)), d_x, d_y).

    r~ = ||X||_F^2 / ||X||^2 is the stable rank; W* the minimum-norm minimizer.
    Independent of the depth. C as in ``dh_width`` (default 1).
    """
    return _hxp_width(prob, _delta(delta), positive_float(C, "C"), 1.0)


def hxp_lr_bound(prob, depth: int) -> float:
    """HXP Thm 3.1: eta <= d_y / (2 L ||X||^2)."""
    return lr_bound("orthogonal", prob, depth)


def hxp_factor(prob, depth: int, lr: float) -> float:
    """HXP Thm 3.1: per-step factor 1 - eta L lambda_r(X^T X) / (2 d_y) of l - l*."""
    return predicted_factor("orthogonal", prob, depth, lr)


def _hxp_loss_bound(prob, delta, C, c):
    return C * (1.0 + math.log(prob.rank / delta) / prob.d_out + (_phi_norm(prob) / c) ** 2) * _fro_sq(prob)


def hxp_loss_bound(prob, delta: float = 0.1, C: float = 1.0) -> float:
    """HXP Lemma B.1, eq. (11): B = C (1 + log(r/delta)/d_y + ||W*||^2) ||X||_F^2."""
    return _hxp_loss_bound(prob, _delta(delta), positive_float(C, "C"), 1.0)


def hxp_radius(prob, depth: int, B: float | None = None, delta: float = 0.1, C: float = 1.0) -> float:
    """HXP Claim B.2: R = 8 sqrt(B d_y) ||X|| / (L sigma_min^2(X)); B defaults to hxp_loss_bound."""
    L = positive_int(depth, "depth")
    B = hxp_loss_bound(prob, delta, C) if B is None else positive_float(B, "B")
    return 8.0 * math.sqrt(B * prob.d_out) * prob.x_norm / (L * prob.lambda_r)


def hxp_gram_bounds(prob, depth: int) -> tuple[float, float]:
    """HXP Claim B.4 (valid under B(t)): (3/5 L sigma_min^2(X)/d_y, 2 L ||X||^2/d_y)."""
    L = positive_int(depth, "depth")
    return 0.6 * L * prob.lambda_r / prob.d_out, 2.0 * L * prob.x_norm ** 2 / prob.d_out


# -- by init name or network ------------------------------------------------------------
# For a Network / Setting the quantities are in W-space units of that net
# (module docstring): P(t) bounds / lr_scale, loss bounds c^2 B(Y / c),
# distances sigma x the theorem's (it bounds ||G_i(t) - G_i(0)|| with G = W / sigma).

def gram_bounds(init, prob, depth: int | None = None) -> tuple[float, float]:
    """(lower, upper) on the eigenvalues of P(t): DH eq. (9) / HXP Claim B.4 by ``init``."""
    st = _resolve(init, depth).require()
    lo, hi = (dh_gram_bounds if st.init == "gaussian" else hxp_gram_bounds)(prob, st.depth)
    return lo / st.lr_scale, hi / st.lr_scale


def loss_bound(init, prob, delta: float = 0.1, C: float = 1.0) -> float:
    """Initial-loss bound B: DH Prop. 6.5 / HXP Lemma B.1 by ``init`` (a name: the
    theorem's own setting; a Network / Setting: c^2 B(Y / c))."""
    st = _resolve(init, getattr(init, "depth", 1)).require()
    f = _dh_loss_bound if st.init == "gaussian" else _hxp_loss_bound
    c = st.output_scale
    return c * c * f(prob, _delta(delta), positive_float(C, "C"), c)


def radius(init, prob, depth: int | None = None, B: float | None = None, delta: float = 0.1,
           C: float = 1.0) -> float:
    """Bound on ||W_i(t) - W_i(0)||_F: DH Claim 7.1 / HXP Claim B.2 by ``init``.

    B (W-space loss units) defaults to ``loss_bound``."""
    st = _resolve(init, depth).require()
    B = loss_bound(st, prob, delta, C) if B is None else positive_float(B, "B")
    f = dh_radius if st.init == "gaussian" else hxp_radius
    c = st.output_scale
    return st.sigma * f(prob, st.depth, B / (c * c), delta, C)


def width_requirement(init, prob, depth: int | None = None, delta: float = 0.1, C: float = 1.0) -> float:
    """Width required by DH eq. (4) (gaussian) or HXP eq. (5) (orthogonal);
    for a Network / Setting evaluated on the targets Y / c of its setting."""
    st = _resolve(init, depth).require()
    delta, C = _delta(delta), positive_float(C, "C")
    if st.init == "gaussian":
        return _dh_width(prob, st.depth, delta, C, st.output_scale)
    return _hxp_width(prob, delta, C, st.output_scale)


# -- HXP Theorem 4.1 (the exponential curse of narrow Gaussian nets) ---------------------

def _widths_depth(widths):
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
    """All theorem quantities for one (problem, setting, lr); see ``summary``.

    Units: lr and lr_bound in W-space learning-rate units (the same as
    ``engine.train``'s lr); loss_bound in loss units (l = 1/2 ||.||_F^2);
    radius a Frobenius distance in W-space; gram_* eigenvalues of P(t) (1/lr);
    width_requirement a width; steps_to_eps a number of GD steps counted from
    l(0) - OPT = loss_bound to l - OPT <= eps x loss_bound. ``print(s)``
    shows them as a table.
    """

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
    eps: float = 1e-10
    theorem: str = ""
    width: int | None = None               # the net's narrowest hidden width (None: no net given)
    width_condition_met: bool | None = None

    def __str__(self) -> str:
        if self.width_condition_met is None:
            w, wn = "not checked", "pass a network for its widths"
        elif self.width_condition_met:
            w, wn = "met", ("no hidden layer" if self.width is None
                            else f"narrowest hidden width {self.width}; in shape only (C = {self.C:g})")
        else:
            w, wn = "NOT met", (f"m = {self.width} < required {self.width_requirement:.4g}: the bounds "
                                "below are the formulas outside the theorem's hypotheses")
        rows = [
            ("theorem", f"{self.theorem} ({self.init} init), depth L = {self.depth}", ""),
            ("lr", f"{self.lr:.6g}", "W-space" + (" (= the bound)" if self.lr == self.lr_bound else "")),
            ("lr bound", f"{self.lr_bound:.6g}", "W-space, largest lr the theorem allows"),
            ("factor", f"{self.factor:.8g}", "per step, on l(t) - OPT"),
            ("width requirement", f"{self.width_requirement:.6g}",
             f"hidden width m (shape only: C = {self.C:g}, delta = {self.delta:g})"),
            ("width condition", w, wn),
            ("loss bound B", f"{self.loss_bound:.6g}", "loss units, l(0) <= B w.p. >= 1 - delta"),
            ("radius", f"{self.radius:.6g}", "Frobenius, W-space: ||W_i(t) - W_i(0)||_F"),
            ("Gram eigenvalues", f"[{self.gram_lower:.6g}, {self.gram_upper:.6g}]", "of P(t), units of 1/lr"),
            ("steps to eps", f"{self.steps_to_eps:.6g}",
             f"GD steps from l(0) - OPT = B to l - OPT <= eps B, eps = {self.eps:g}"),
        ]
        k = max(len(r[0]) for r in rows)
        v = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{k}}  {b:<{v}}  {c}".rstrip() for a, b, c in rows)


def summary(init, prob, depth: int | None = None, lr=None, *, eps: float = 1e-10,
            delta: float = 0.1, C: float = 1.0) -> Summary:
    """The theorem for ``init`` (DH Thm 4.1 or HXP Thm 3.1) evaluated at once.

    ``init`` is "gaussian" / "orthogonal" (the theorem's own setting, ``depth``
    required) or an engine Network (its setting, ``theorem_setting``; then
    the width condition is checked against its widths too). lr defaults to
    the theorem's bound; steps_to_eps counts GD steps from the bound B,
    l(0) - OPT = B, to l - OPT <= eps * B at the theorem's factor. C and delta
    as in the individual functions. ``print(summary(...))`` gives a table
    with units. An unknown init name raises ValueError naming ``init``.
    """
    st = _resolve(init, depth).require()
    L = st.depth
    bound = lr_bound(st, prob)
    lr = bound if lr is None else positive_float(lr, "lr")
    eps = positive_float(eps, "eps")
    fac = predicted_factor(st, prob, lr=lr)
    B = loss_bound(st, prob, delta, C)
    lo, hi = gram_bounds(st, prob)
    width = met = None
    if not isinstance(init, (str, Setting)):
        hidden = _hidden(init.widths)
        width = min(hidden) if hidden else None
        met = width_condition_met(init, prob, delta, C)
    return Summary(init=st.init, depth=L, lr=lr, lr_bound=bound, factor=fac,
                   width_requirement=width_requirement(st, prob, L, delta, C), loss_bound=B,
                   radius=radius(st, prob, L, B, delta, C), gram_lower=lo, gram_upper=hi,
                   steps_to_eps=steps_to_excess(fac, B, eps * B), C=C, delta=delta, eps=eps,
                   theorem=THEOREMS[st.init], width=width, width_condition_met=met)
