"""The regression problem, its optimum, and the exact data reduction.

Paper convention throughout: X is d_in x n and Y is d_out x n, columns are
samples; the loss of an end-to-end matrix E (d_out x d_in) is
l(E) = 1/2 ||E X - Y||_F^2.

Data reduction (DH Assumption 5.1 and Appendix B, made constructive; see
docs/design.md): with the thin SVD X = U_r S_r V_r^T of rank r,

    l(E) = OPT + 1/2 ||E U_r S_r - Y V_r||_F^2                      (*)

for every E, with OPT = 1/2 ||Y (I - V_r V_r^T)||_F^2 (DH eq. 3). The GD
trajectory therefore depends on the data only through U_r, S_r and Y V_r, and
the excess loss l - OPT is evaluated as the right-hand term of (*) with no
cancellation against OPT.
"""
from __future__ import annotations

import hashlib
import itertools
import numbers
from dataclasses import dataclass

import numpy as np

from ._validate import as_real_matrix

_tokens = itertools.count(1)


@dataclass(frozen=True)
class Reduced:
    """The reduced problem of docs/design.md, in one dtype.

    basis   : (d_in, r)  U_r, orthonormal columns spanning the column space of X.
    s       : (r,)       singular values S_r of X (descending); the reduced input
                         is diag(s), an r x r matrix.
    targets : (d_out, r) Y V_r, the reduced targets.
    """

    basis: np.ndarray
    s: np.ndarray
    targets: np.ndarray


class Problem:
    """Least-squares data (X, Y) for a deep linear network.

    Parameters
    ----------
    X : array (d_in, n)
        Inputs, columns are samples. Integer input is converted to float64;
        complex, NaN and Inf are rejected.
    Y : array (d_out, n)
        Targets, columns are samples. Same conversions and checks as X.
        Integer and boolean input is converted to float64 explicitly (exact
        for |values| < 2**53); float32/float16 are widened to float64; data so
        large or small that ||X||^2 or ||Y||_F^2 leaves the float64 range is
        rejected (rescale it). Empty arrays and an all-zero X are rejected.
    rtol : float, optional
        Relative tolerance for the rank: singular values s_j of X with
        s_j <= rtol * s_1 count as zero. The default,
        ``max(d_in, n) * eps(float64)``, is the one of numpy.linalg.matrix_rank
        (the size of rounding in an SVD of X).

    Attributes (paper convention)
    -----------------------------
    rank        r = rank(X).
    opt         OPT = min_W 1/2 ||W X - Y||_F^2 (DH eq. 3).
    phi         Phi = Y X^+ (d_out, d_in), the minimum-norm minimizer (it has
                both minimum Frobenius and minimum spectral norm).
    kappa       lambda_max(X^T X) / lambda_r(X^T X) (DH Sec. 4).
    stable_rank ||X||_F^2 / ||X||^2 (HXP eq. 5, r-tilde).
    x_norm      ||X|| (spectral).
    """

    def __init__(self, X, Y, *, rtol: float | None = None):
        X = as_real_matrix(X, "X")
        Y = as_real_matrix(Y, "Y")
        if Y.shape[1] != X.shape[1]:
            if Y.shape[0] == X.shape[0]:
                # same number of rows: most likely samples as rows (the PyTorch/JAX habit);
                # the message names Y, the argument whose column count disagrees
                n, d_in, d_out = X.shape[0], X.shape[1], Y.shape[1]
                raise ValueError(
                    f"Y: samples must be columns (in X and Y); X has shape {X.shape} and Y {Y.shape}, i.e. "
                    f"{n} samples as rows. engine expects X of shape (d_in, n) = ({d_in}, {n}) and Y of "
                    f"shape (d_out, n) = ({d_out}, {n}): pass X.T and Y.T"
                )
            if X.shape[0] == Y.shape[1]:
                raise ValueError(
                    f"X: samples must be columns; X has shape {X.shape} but Y {Y.shape} has "
                    f"{Y.shape[1]} samples (columns): X looks transposed, pass X.T of shape "
                    f"(d_in, n) = ({X.shape[1]}, {X.shape[0]})"
                )
            raise ValueError(
                f"Y: must have as many columns (samples) as X; X is {X.shape}, Y is {Y.shape}"
            )
        self._X = X
        self._Y = Y
        X.setflags(write=False)
        Y.setflags(write=False)
        self.d_in, self.n = X.shape
        self.d_out = Y.shape[0]
        if rtol is None:
            rtol = max(X.shape) * np.finfo(np.float64).eps
        if isinstance(rtol, (bool, np.bool_)) or not isinstance(rtol, numbers.Real):
            raise TypeError(f"rtol: must be a real number in [0, 1), got {rtol!r}")
        if not (0.0 <= float(rtol) < 1.0):
            raise ValueError(f"rtol: must be in [0, 1), got {rtol!r}")
        self.rtol = float(rtol)
        with np.errstate(over="ignore", under="ignore"):
            y2 = float(np.sum(Y * Y))
        if not np.isfinite(y2):
            raise ValueError("Y: too large: ||Y||_F^2 overflows float64; rescale Y")
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        if s[0] == 0.0:
            raise ValueError("X: has rank 0 (all entries are zero); there is nothing to fit")
        with np.errstate(over="ignore", under="ignore"):
            s2 = s[0] * s[0] * max(X.shape)
        if not np.isfinite(s2):
            raise ValueError(f"X: too large: ||X||^2 = {s[0]:.3g}^2 overflows float64; rescale X")
        if s[0] * s[0] < np.finfo(np.float64).tiny / np.finfo(np.float64).eps:
            raise ValueError(f"X: too small: ||X||^2 = {s[0]:.3g}^2 is at the float64 underflow limit; rescale X")
        r = int(np.count_nonzero(s > self.rtol * s[0]))
        self.rank = r
        self.singular_values = s.copy()
        self.singular_values.setflags(write=False)
        Ur = np.ascontiguousarray(U[:, :r])
        Vr = np.ascontiguousarray(Vt[:r].T)
        yv = Y @ Vr
        # OPT from the residual projection itself, not ||Y||^2 - ||Y V_r||^2,
        # which would cancel catastrophically when the fit is nearly exact.
        if r == self.n:
            self.opt = 0.0  # V_r is square orthogonal: Y lies in the row space exactly
        else:
            resid = Y - yv @ Vr.T
            self.opt = 0.5 * float(np.sum(resid * resid))
        self._red64 = Reduced(Ur, np.ascontiguousarray(s[:r]), np.ascontiguousarray(yv))
        for a in (self._red64.basis, self._red64.s, self._red64.targets):
            a.setflags(write=False)
        self._reduced = {np.dtype(np.float64): self._red64}
        self.token = next(_tokens)  # identifies this problem to bound networks
        self._fingerprint = None

    # -- paper quantities -------------------------------------------------
    @property
    def X(self) -> np.ndarray:
        """(d_in, n) inputs (read-only view)."""
        return self._X

    @property
    def Y(self) -> np.ndarray:
        """(d_out, n) targets (read-only view)."""
        return self._Y

    @property
    def phi(self) -> np.ndarray:
        """Phi = Y X^+ = Y V_r S_r^{-1} U_r^T, shape (d_out, d_in)."""
        red = self._red64
        return (red.targets / red.s) @ red.basis.T

    @property
    def kappa(self) -> float:
        """lambda_max(X^T X) / lambda_r(X^T X) = (s_1 / s_r)^2."""
        s = self._red64.s
        return float((s[0] / s[-1]) ** 2)

    @property
    def stable_rank(self) -> float:
        """||X||_F^2 / ||X||^2 (HXP's r-tilde, below eq. 5)."""
        s = self.singular_values
        return float(np.sum(s * s) / (s[0] * s[0]))

    @property
    def x_norm(self) -> float:
        """||X||, the spectral norm (= sqrt(lambda_max(X^T X)))."""
        return float(self.singular_values[0])

    @property
    def lambda_r(self) -> float:
        """lambda_r(X^T X) = s_r^2, the smallest non-zero eigenvalue."""
        return float(self._red64.s[-1] ** 2)

    @property
    def y_norm_sq(self) -> float:
        """||Y||_F^2."""
        return float(np.sum(self._Y * self._Y))

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of the data: shapes and bytes of X and Y (float64) and rtol.

        Stable across processes and machines of the same byte order; checkpoints
        store it so that resuming on different data is refused.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"X{self._X.shape}Y{self._Y.shape}rtol{self.rtol!r}".encode())
            h.update(self._X.data)
            h.update(self._Y.data)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def reduced(self, dtype=np.float64) -> Reduced:
        """The reduced problem (basis U_r, singular values S_r, targets Y V_r)."""
        dt = np.dtype(dtype)
        red = self._reduced.get(dt)
        if red is None:
            red = Reduced(*(np.ascontiguousarray(a, dtype=dt) for a in
                            (self._red64.basis, self._red64.s, self._red64.targets)))
            for a in (red.basis, red.s, red.targets):
                a.setflags(write=False)
            self._reduced[dt] = red
        return red

    # -- losses -------------------------------------------------------------
    def _check_E(self, E) -> np.ndarray:
        E = as_real_matrix(E, "E")
        if E.shape != (self.d_out, self.d_in):
            raise ValueError(f"E: must have shape (d_out, d_in) = {(self.d_out, self.d_in)}, got {E.shape}")
        return E

    def excess(self, E) -> float:
        """l(E) - OPT = 1/2 ||E U_r S_r - Y V_r||_F^2 for E of shape (d_out, d_in).

        Evaluated on the reduced data, so it is accurate to rounding relative
        to itself even when it is 1e-20 of ||Y||_F^2.
        """
        E = self._check_E(E)
        red = self._red64
        R = (E @ red.basis) * red.s - red.targets
        return 0.5 * float(np.sum(R * R))

    def loss(self, E) -> float:
        """l(E) = 1/2 ||E X - Y||_F^2 = OPT + excess(E)."""
        return self.opt + self.excess(E)

    def __repr__(self) -> str:
        return (f"Problem(d_in={self.d_in}, n={self.n}, d_out={self.d_out}, rank={self.rank}, "
                f"kappa={self.kappa:.4g}, opt={self.opt:.4g})")


def synthetic(d_in: int, n: int, d_out: int, seed=0, *, rank: int | None = None,
              kappa: float | None = None, noise: float = 0.0):
    """Synthetic regression data (X, Y), paper convention.

    Default: HXP's experiment (docs/design.md, "The problem"): X (d_in, n) and
    W* (d_out, d_in) with iid N(0, 1) entries and Y = W* X.

    Parameters
    ----------
    rank : int, optional
        Prescribed rank r <= min(d_in, n) of X.
    kappa : float >= 1, optional
        Prescribed condition number lambda_max(X^T X)/lambda_r(X^T X). X is then
        U diag(s) V^T with Haar-random U (d_in, r), V (n, r) and singular
        values geometrically spaced with s_1^2/s_r^2 = kappa, scaled so that
        ||X||_F^2 = d_in * n as for iid N(0, 1) entries.
    noise : float >= 0
        Standard deviation of iid Gaussian label noise added to Y. With n > r
        this makes OPT > 0.

    Returns
    -------
    X : (d_in, n) float64, Y : (d_out, n) float64
    """
    from ._validate import positive_int, seed_value

    d_in = positive_int(d_in, "d_in")
    n = positive_int(n, "n")
    d_out = positive_int(d_out, "d_out")
    rng = np.random.default_rng(seed_value(seed))
    full = min(d_in, n)
    if rank is not None:
        rank = positive_int(rank, "rank")
        if rank > full:
            raise ValueError(f"rank: must be <= min(d_in, n) = {full}, got {rank}")
    if kappa is not None:
        kappa = _real(kappa, "kappa")
        if not np.isfinite(kappa) or kappa < 1.0:
            raise ValueError(f"kappa: must be a finite number >= 1, got {kappa!r}")
    noise = _real(noise, "noise")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise: must be finite and >= 0, got {noise!r}")

    if kappa is None and rank is None:
        X = rng.standard_normal((d_in, n))
    elif kappa is None:
        X = rng.standard_normal((d_in, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(rank)
    else:
        r = full if rank is None else rank
        U = _haar_columns(rng, d_in, r)
        V = _haar_columns(rng, n, r)
        s = np.sqrt(kappa) ** (-np.linspace(0.0, 1.0, r)) if r > 1 else np.ones(1)
        s *= np.sqrt(d_in * n / np.sum(s * s))
        X = (U * s) @ V.T
    W_star = rng.standard_normal((d_out, d_in))
    Y = W_star @ X
    if noise > 0:
        Y = Y + noise * rng.standard_normal((d_out, n))
    return X, Y


def _real(x, name: str) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: must be a real number, got {x!r}")
    return float(x)


def _haar_columns(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """(n, k) with orthonormal columns, the first k columns of a Haar matrix.

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q
    (Mezzadri 2007), which makes the distribution exactly Haar.
    """
    G = rng.standard_normal((n, k))
    Q, R = np.linalg.qr(G)
    d = np.sign(np.diag(R))
    d[d == 0] = 1.0
    return Q * d
