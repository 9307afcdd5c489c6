"""Backends: one semantics, several implementations, chosen by name.

Each backend is a module (or object) with

    name        str
    available   bool
    reason      str      why it is unavailable ("" when available)
    workspace(layers, r, d_out, dtype, form=None) -> ws
    step(layers, c, beta, xs, yred, ws, lo, hi) -> (excess_before, applied)
    excess(layers, beta, xs, yred, ws) -> float
    reset(ws)            optional: forget state carried between steps;
                         called whenever a stepper is (re)bound

with the arguments described in ``numpy_backend``. ``numpy`` is the
reference and the oracle for every faster path.
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
    try:
        mod = importlib.import_module(f"{__name__}.{name}_backend")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}_backend":
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

# Order in which ``auto`` prefers available backends.
_AUTO_ORDER = ("numba", "cblas", "numpy")


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
        for nm in _AUTO_ORDER:
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
