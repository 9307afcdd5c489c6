"""The one JIT policy of the package: every compiled kernel is decorated by ``jit``.

    @jit()                                  fastmath FASTMATH, cached, serial
    @jit(fastmath=FASTMATH_DOT)             dot products that may be vectorized
    @jit(fastmath=EXACT, parallel=True)     IEEE semantics, prange

Flags (STYLE.md: every kernel states its fastmath set, and none has nnan/ninf):

    FASTMATH      {"nsz", "arcp", "contract", "afn"}: no nnan/ninf (a diverging
                  run must show up as inf/nan), no reassoc (summation order fixed
                  by the code, so results are reproducible across schedules and
                  thread counts); contract allows FMA.
    FASTMATH_DOT  FASTMATH | {"reassoc"}: lets LLVM vectorize a reduction whose
                  order is still fixed by the (single) compiled helper.
    EXACT         no fastmath at all: kernels that must reproduce the numpy
                  reference to rounding (the ensemble member kernels).

Environment (read once, at import):

    ENGINE_NUMBA_CACHE=0      compile in memory only (default: cache=True, so
                              compilation is paid once per machine)
    ENGINE_NUMBA_FASTMATH=0   no fastmath flags anywhere (to rule fastmath out
                              when a result looks wrong)

Kernels themselves are plain Python elsewhere (``_numba_kernels``,
``_numba_members``); this module is imported only where Numba is.
"""
from __future__ import annotations

import os

from numba import njit

__all__ = ["jit", "FASTMATH", "FASTMATH_DOT", "EXACT", "CACHE", "USE_FASTMATH"]

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn"})
FASTMATH_DOT = FASTMATH | {"reassoc"}
EXACT = frozenset()


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "default"):
        return default
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}: must be 0 or 1, got {os.environ[name]!r}")


CACHE = _env_flag("ENGINE_NUMBA_CACHE", True)
USE_FASTMATH = _env_flag("ENGINE_NUMBA_FASTMATH", True)


def jit(fastmath=FASTMATH, parallel: bool = False, nogil: bool = False):
    """``numba.njit`` with the package's policy (cache and fastmath as configured above)."""
    flags = set(fastmath) if USE_FASTMATH else set()
    return njit(cache=CACHE, fastmath=flags if flags else False, parallel=parallel, nogil=nogil)
