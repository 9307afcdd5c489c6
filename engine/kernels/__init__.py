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

from . import numpy_backend  # noqa: F401
from .auto import auto_choice  # noqa: F401  (the choice ``auto`` runs: measured, or the fixed rule)
from .registry import (_MISSING, _REGISTRY, BACKEND_NAMES, BackendUnavailable, _auto_order,  # noqa: F401
                       availability, get)
# thread control lives in ``threads``; these names are what backends and callers import
from .threads import thread_limits  # noqa: F401
