"""The backends by name: which exist, which can run here, and ``get(name)``.

Below ``auto`` (the measured choice) and the package's re-exports, so that
neither imports the other (the import graph has no cycles:
tests/test_import_graph.py).
"""
from __future__ import annotations

from . import numpy_backend

BACKEND_NAMES = ("auto", "numpy", "numba", "cblas")

_REGISTRY = {"numpy": numpy_backend}

# Optional backends live in their own modules (``numba_backend``,
# ``cblas_backend``), each exposing ``name, available, reason, workspace,
# step, excess``. A module that is absent or fails to import is reported
# unavailable with the reason, so asking for it by name fails clearly instead
# of silently falling back.
_MISSING = {}


def _load_optional(name):
    import importlib
    full = f"{__package__}.{name}_backend"
    try:
        mod = importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name == full:
            _MISSING[name] = f"the {name} backend is not implemented in this version of engine"
        else:
            _MISSING[name] = f"importing it failed: {exc}"
        return
    except Exception as exc:  # a broken optional backend must not break `import engine`
        _MISSING[name] = f"importing it failed: {type(exc).__name__}: {exc}"
        return
    _REGISTRY[name] = mod


for _nm in ("numba", "cblas"):
    _load_optional(_nm)
del _nm

# ``auto`` for networks too small to calibrate (``auto.MIN_CALIBRATE_BYTES``)
# and with ENGINE_AUTO=rule: the C kernel first wherever it is built. Its
# register-blocked micro-kernels run every layer of a step in one call with
# no BLAS call and no parallel region for layers that fit in cache, which is
# what decides on small networks. Measured with bench/compare.py on the
# 2-core AMD EPYC (Zen 5, AVX-512), 2026-12-04, other jobs running (load
# average 2.9): cblas fastest on all five of issue 14's configs, ahead of
# numba by 2.7x at (1024,16,10,64,32), 3.8x at (16,64,4,32,512), 2.6x at
# (1024,16,10,256,64), 1.3x at (1024,16,10,1024,32). Then numba (its fused
# kernels need no compiler at install), then numpy.
_WIDE = 256
_AUTO_ORDER = ("cblas", "numba", "numpy")
_AUTO_ORDER_NARROW = ("cblas", "numba", "numpy")


class BackendUnavailable(RuntimeError):
    """A backend was requested by name but cannot run here (the message says why)."""


def availability() -> dict[str, tuple[bool, str]]:
    """{name: (available, reason)} for every concrete backend."""
    out = {}
    for nm in BACKEND_NAMES[1:]:
        mod = _REGISTRY.get(nm)
        if mod is None:
            out[nm] = (False, _MISSING.get(nm, "unknown"))
        else:
            out[nm] = (bool(mod.available), mod.reason)
    return out


def get(name: str = "auto", *, shape=None):
    """The backend module for ``name``; ``auto`` picks the best available one.

    Raises ValueError naming ``backend`` for an unknown name and
    BackendUnavailable (with the reason) for a known but unavailable one.
    """
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"backend: unknown backend {name!r}; choose one of {list(BACKEND_NAMES)}")
    if name == "auto":
        for nm in _auto_order(shape):
            mod = _REGISTRY.get(nm)
            if mod is not None and mod.available:
                return mod
        raise BackendUnavailable("backend: no backend is available")  # numpy always is
    mod = _REGISTRY.get(name)
    if mod is None:
        raise BackendUnavailable(f"backend: {name!r} is unavailable: {_MISSING.get(name, 'unknown')}")
    if not mod.available:
        raise BackendUnavailable(f"backend: {name!r} is unavailable: {mod.reason}")
    return mod


def _auto_order(shape=None):
    """Backends in the order ``auto`` tries them for ``shape`` = (widths, rank)
    (see the measured rule above); without a shape, the wide-network order."""
    if shape is not None:
        widths = shape[0]
        hidden = max(widths[1:-1], default=0)
        if hidden < _WIDE:
            return _AUTO_ORDER_NARROW
    return _AUTO_ORDER
