"""Input validation shared by every public entry point.

Each helper raises an exception whose message starts with the name of the
offending argument, so a user can tell at once what to fix.
"""
from __future__ import annotations

import numbers

import numpy as np


def as_real_matrix(a, name: str, dtype=np.float64) -> np.ndarray:
    """Return ``a`` as a C-contiguous 2-D real float array, or raise.

    Integer and boolean input is converted (exactly, for |int| < 2**53);
    complex input is rejected rather than silently dropping the imaginary
    part; NaN and Inf are rejected.
    """
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name}: cannot be converted to an array ({exc})") from None
    if arr.dtype == object:
        raise TypeError(f"{name}: must be a numeric array, got dtype=object")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name}: complex input is not supported (got dtype={arr.dtype})")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name}: must be a numeric array, got dtype={arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name}: must be a 2-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: must not be empty, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return arr


def positive_float(x, name: str) -> float:
    """A finite, strictly positive real number (learning rates, scales)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: must be a positive real number, got {x!r}")
    x = float(x)
    if not np.isfinite(x) or x <= 0.0:
        raise ValueError(f"{name}: must be finite and > 0, got {x!r}")
    return x


def nonneg_int(x, name: str) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}: must be a non-negative integer, got {x!r}")
    x = int(x)
    if x < 0:
        raise ValueError(f"{name}: must be >= 0, got {x}")
    return x


def positive_int(x, name: str) -> int:
    x = nonneg_int(x, name)
    if x == 0:
        raise ValueError(f"{name}: must be >= 1, got 0")
    return x


def nonempty_list(x, name: str, what: str, one: str) -> list:
    """``x`` as a list: TypeError naming ``name`` unless it is a sequence (of ``what``),
    ValueError unless it holds at least one (``one``)."""
    try:
        out = list(x)
    except TypeError:
        raise TypeError(f"{name}: must be a sequence of {what}, got {x!r}") from None
    if not out:
        raise ValueError(f"{name}: needs at least one {one}")
    return out


def widths_list(widths, name: str = "widths") -> tuple[int, ...]:
    """``[d_0, ..., d_L]``: at least two positive integers (depth L >= 1)."""
    if isinstance(widths, (set, frozenset, dict)) or not hasattr(widths, "__len__") and not hasattr(widths, "__iter__"):
        # a set has no order and a dict's keys are an accident: [d_0, ..., d_L] must be ordered
        raise TypeError(f"{name}: must be an ordered sequence (list, tuple, array) of positive "
                        f"integers [d_0, ..., d_L], got a {type(widths).__name__}")
    if isinstance(widths, (str, bytes)):
        raise TypeError(f"{name}: must be a sequence of positive integers [d_0, ..., d_L], got {widths!r}")
    try:
        seq = list(widths)
    except TypeError:
        raise TypeError(f"{name}: must be a sequence of positive integers [d_0, ..., d_L], got {widths!r}") from None
    if len(seq) < 2:
        raise ValueError(f"{name}: needs at least two entries [d_0, d_1] (depth >= 1), got {seq!r}")
    out = []
    for k, d in enumerate(seq):
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{name}[{k}]: must be a positive integer, got {d!r}")
        if int(d) < 1:
            raise ValueError(f"{name}[{k}]: must be >= 1, got {int(d)}")
        out.append(int(d))
    return tuple(out)


def float_dtype(dtype, name: str = "dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: not a dtype: {dtype!r}") from None
    if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"{name}: must be float64 or float32, got {dt}")
    return dt


def seed_value(seed, name: str = "seed"):
    """Seeds accepted by numpy.random.default_rng: None, int >= 0, SeedSequence."""
    if seed is None or isinstance(seed, (np.random.SeedSequence, np.random.Generator)):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name}: must be a non-negative integer or None, got {seed!r}")
    if int(seed) < 0:
        raise ValueError(f"{name}: must be >= 0, got {seed}")
    return int(seed)


def widths_match_data(widths, prob) -> None:
    """Raise ValueError naming ``widths`` unless d_0 = d_in and d_L = d_out of ``prob``."""
    if prob.d_in != widths[0]:
        raise ValueError(f"widths: d_0 = {widths[0]} does not match the data's d_in = {prob.d_in}")
    if prob.d_out != widths[-1]:
        raise ValueError(f"widths: d_L = {widths[-1]} does not match the data's d_out = {prob.d_out}")
