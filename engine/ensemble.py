"""Ensembles: K same-shape networks on the same data, trained in one call.

The papers' statements are probabilistic (DH Thm 4.1 and HXP Thm 3.1 hold
with high probability over the init; near the trainable/untrainable
transition single runs depend strongly on the seed), so experiments need many
seeds per (depth, width) cell. An ``Ensemble`` holds K networks with the same
widths and dtype in one stacked storage and trains them together:

    ens = engine.init.orthogonal([1024] + [32] * 31 + [10], seed=0, ensemble=16)
    res = engine.train(ens, prob, lr="theory", steps=500, tol=1e-20)   # tol relative to ||Y||_F^2
    res.excess            # (K, k) l(t) - OPT at the common record grid res.t
    res.converged         # (K,) bool
    res.diverged          # (K,) bool: that member blew up; the others are unaffected
    res.member(3)         # a TrainResult for member 3 (its network is a copy)

This module gathers the ensemble names; the pieces live where a single
network's do, a network being the K = 1 case:

* storage and views: ``engine.network`` (``Storage`` with a member axis;
  ``Ensemble`` over all its members, ``Ensemble.view(k)`` a Network sharing it);
* stepping: ``engine.stepper`` (the member-parallel Numba kernel,
  ``engine.kernels._numba_members``, for small uniform-width members; any
  backend member by member otherwise: bitwise K separate runs);
* training: ``engine.train`` (one loop: per-member stopping and divergence,
  ``record=``, callbacks, checkpoint and resume), results in
  ``engine.recording.EnsembleResult``.
"""
from __future__ import annotations

from .kernels import _numba_members
from .network import Ensemble
from .problem import Problem
from .recording import EnsembleResult
from .stepper import MEMBER_KERNEL_MAX_BYTES
from .train import stable_lrs
from .train import train as _train

__all__ = ["Ensemble", "EnsembleResult", "train", "stable_lrs", "MEMBER_KERNEL_MAX_BYTES", "member_kernel_available"]


def member_kernel_available() -> tuple[bool, str]:
    """(available, reason) for the member-parallel Numba kernel (``engine.kernels._numba_members``)."""
    return _numba_members.available, _numba_members.reason


def train(ens: Ensemble, prob: Problem, lr="theory", steps: int = 1000, tol=None,
          record_every: int = 1, backend: str = "auto", progress: bool = False, **kwargs) -> EnsembleResult:
    """``engine.train`` for an Ensemble (every keyword of it is accepted: ``atol``, ``record``,
    ``callback``, ``checkpoint``, ``resume``...): each member stops on its own and a diverged
    member is marked, not raised. ``lr``: one rate, one per member, "theory" or "stable"
    (each member's own: ``stable_lrs``). Returns an EnsembleResult."""
    if not isinstance(ens, Ensemble):
        raise TypeError(f"ens: must be an engine Ensemble, got {type(ens).__name__}")
    return _train(ens, prob, lr=lr, steps=steps, tol=tol, record_every=record_every, backend=backend,
                        progress=progress, **kwargs)
