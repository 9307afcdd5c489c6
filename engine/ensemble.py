"""Ensembles: K same-shape networks on the same data, trained in one call.

The papers' statements are probabilistic (DH Thm 4.1 and HXP Thm 3.1 hold
with high probability over the init; near the trainable/untrainable
transition single runs depend strongly on the seed), so experiments need many
seeds per (depth, width) cell. An ``Ensemble`` holds K networks with the same
widths and dtype in stacked storage and trains them together:

    ens = engine.ensemble.Ensemble.orthogonal([1024] + [32] * 31 + [10], seeds=range(16))
    res = engine.ensemble.train(ens, prob, lr="theory", steps=500, tol=1e-20)   # tol relative to ||Y||_F^2
    res.excess            # (K, k) l(t) - OPT at the common record grid res.t
    res.converged         # (K,) bool
    res.diverged          # (K,) bool: that member blew up; the others are unaffected
    res.member(3)         # a TrainResult for member 3 (its network is a copy)

Storage (normalized, see ``engine.network``): layer i of every member in one
array of shape (K, d_i, d_{i-1}); when the hidden widths are uniform the
hidden layers of all members are one C-contiguous (K, L-2, m, m) array
(``ens.hidden``), so member k's hidden stack ``hidden[k]`` is itself a
contiguous (L-2, m, m) block. While bound to a Problem, layer 1 is held as
B_1 = A_1 U_r (K, d_1, r) plus the frozen component, exactly as for a single
Network.

Results are those of K separate ``engine.train`` runs:

* ``backend="numpy"`` (or "cblas", or "numba" for shapes the member-parallel
  kernel does not cover) steps the members one after another with that
  single-network backend, on views of the stacked storage: bitwise identical
  to K separate runs with the same backend.
* ``backend="numba"`` with uniform hidden widths runs the member-parallel
  kernel below: one compiled call per GD step for all members, ``prange``
  over members, each member's whole two-pass step (numpy_backend's P or T
  form) inside, its products by the ?gemm SciPy ships (numba's np.dot),
  BLAS held to one thread meanwhile (threadpoolctl). Equal to the numpy
  backend up to rounding (summation order); each member is stepped by one
  thread, so results do not depend on the thread count at all.
* ``backend="auto"`` uses the member-parallel kernel when Numba is available,
  the hidden widths are uniform and each member is small
  (<= ``MEMBER_KERNEL_MAX_BYTES``, latency-bound networks, where running
  members in parallel pays); otherwise it steps the members one after
  another with the single-network ``auto`` backend, which parallelizes
  inside each (memory-bound) step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import kernels, theory
from .kernels import _numba_members
from ._validate import float_dtype, nonneg_int, positive_float, positive_int, widths_list, widths_match_data
from .network import Ensemble, _index
from .problem import Problem
from .stepper import MEMBER_KERNEL_MAX_BYTES, Stepper
from .train import (EXPLODE_FACTOR, SNAPSHOT_EVERY, Progress, TrainResult, fit_rate, stop_threshold,
                    warn_bottleneck)

__all__ = ["Ensemble", "EnsembleResult", "train", "stable_lrs", "MEMBER_KERNEL_MAX_BYTES", "member_kernel_available"]



def member_kernel_available() -> tuple[bool, str]:
    """(available, reason) for the member-parallel Numba kernel (``engine.kernels._numba_members``)."""
    return _numba_members.available, _numba_members.reason


class _EnsStepper:
    """The ensemble loop's view of engine.stepper.Stepper (masks and (K,) arrays)."""

    def __init__(self, ens, prob, lrs, backend):
        self.st = Stepper(ens, prob, lrs, backend)
        self.name, self.schedule = self.st.name, self.st.schedule

    def step(self, lo, hi, active):
        js = np.flatnonzero(active).tolist()
        ex = np.full(len(active), np.nan)
        applied = np.zeros(len(active), dtype=bool)
        e, a = self.st.step_members(js, lo, list(hi))
        ex[js], applied[js] = e, a
        return ex, applied


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------
@dataclass
class EnsembleResult:
    """Histories of an ensemble run; member k's run is ``member(k)``.

    t          (k,) the common record grid: every step index at which some
               member recorded its loss (multiples of record_every and each
               member's final state)
    loss       (K, k) l(t) per member; nan where that member recorded nothing
               (after it stopped, or at another member's final step)
    excess     (K, k) l(t) - OPT, same layout
    steps      (K,) GD steps each member took
    converged  (K,) bool, excess reached ``tol``
    diverged   (K,) bool, the loss became non-finite or exploded; that member
               keeps its last finite state and history, the others are unaffected
    rate       (K,) fitted per-step contraction factor (``engine.fit_rate``)
    predicted  (K,) the theorem's factor for the member's init and lr (nan if none)
    lr         (K,) learning rates (W-space)
    messages   {k: str} why diverged members stopped (and the step whose checked
               state the member's weights were put back to: never non-finite)
    wall_time  seconds for the whole ensemble
    backend    backend that ran; ``schedule`` is "members-parallel" or "sequential"
    opt        OPT of the problem
    ensemble   the trained Ensemble (the object passed in, updated in place)
    """

    t: np.ndarray
    loss: np.ndarray
    excess: np.ndarray
    steps: np.ndarray
    converged: np.ndarray
    diverged: np.ndarray
    rate: np.ndarray
    predicted: np.ndarray
    lr: np.ndarray
    messages: dict
    wall_time: float
    backend: str
    schedule: str
    opt: float
    ensemble: Ensemble
    _hist: list = field(default_factory=list, repr=False)

    def member(self, k: int) -> TrainResult:
        """Member k's run as a TrainResult, identical to a separate ``engine.train``
        run's (for a diverged member: the history DivergenceError.result carries).
        Its ``net`` is a copy of member k now (``Ensemble.member``)."""
        k = _index(k, len(self._hist))
        t, ex = self._hist[k]
        return TrainResult(t=t.copy(), loss=self.opt + ex, excess=ex.copy(), steps=int(self.steps[k]),
                           net=self.ensemble.member(k), converged=bool(self.converged[k]),
                           rate=float(self.rate[k]), predicted=float(self.predicted[k]),
                           lr=float(self.lr[k]), wall_time=self.wall_time, backend=self.backend,
                           opt=self.opt)

    @property
    def results(self) -> list[TrainResult]:
        """``[member(k) for k in range(K)]``."""
        return [self.member(k) for k in range(len(self._hist))]

    def __len__(self) -> int:
        return len(self._hist)

    def __repr__(self) -> str:
        fin = self.excess[:, -1] if self.excess.size else np.array([])
        return (f"EnsembleResult(size={len(self)}, converged={int(self.converged.sum())}, "
                f"diverged={int(self.diverged.sum())}, max steps={int(self.steps.max(initial=0))}, "
                f"median final excess={np.nanmedian(fin) if np.isfinite(fin).any() else float('nan'):.3e}, "
                f"backend={self.backend!r} ({self.schedule}), wall_time={self.wall_time:.3g}s)")


def _settings(ens):
    """Each member's ``theory.Setting`` (from its init, sigma and alpha)."""
    return [theory._member_setting(init, ens.depth, ens._sigmas[k], ens._log_beta[k])
            for k, init in enumerate(ens.inits)]


def stable_lrs(ens, prob) -> np.ndarray:
    """(K,) each member's ``engine.train.stable_lr``: 1 / lambda_max(P_k(0)) (DH eq. 7), computed
    on a copy of the member in its current state (call before training). ``lr="stable"`` uses
    these, one per member; for one shared rate pass ``lr=stable_lrs(ens, prob).min()``
    (the largest rate stable, in the linearized sense, for every member)."""
    from .train import stable_lr
    if not isinstance(ens, Ensemble):
        raise TypeError(f"ens: must be an engine Ensemble, got {type(ens).__name__}")
    return np.array([stable_lr(ens.member(k), prob) for k in range(ens.size)])


def _lr_per_member(ens, prob, lr):
    K = ens.size
    if isinstance(lr, str):
        if lr == "stable":
            return stable_lrs(ens, prob)   # chosen above the theorem's bound on purpose: no warning
        if lr != "theory":
            raise ValueError(f"lr: must be a positive number, a sequence of K of them, 'theory' or "
                             f"'stable', got {lr!r}")
        lrs = []
        for k, st in enumerate(_settings(ens)):
            if not st.applies:
                st.require(f"lr='theory' (member {k})")
            lrs.append(theory.lr_bound(st, prob))
        return np.array(lrs)
    if np.ndim(lr) == 0:
        lrs = np.full(K, positive_float(lr, "lr"))
    else:
        vals = list(lr)
        if len(vals) != K:
            raise ValueError(f"lr: a sequence of learning rates needs one per member (K = {K}), got {len(vals)}")
        lrs = np.array([positive_float(v, f"lr[{k}]") for k, v in enumerate(vals)])
    _warn_above_bound(ens, prob, lrs)
    return lrs


def _warn_above_bound(ens, prob, lrs):
    """One LearningRateWarning (as engine.train gives) naming the members whose lr exceeds their bound."""
    import warnings
    from .train import LR_WARN_RTOL, LearningRateWarning
    over = []
    for k, st in enumerate(_settings(ens)):
        if st.applies:
            bound = theory.lr_bound(st, prob)
            if lrs[k] > bound * (1.0 + LR_WARN_RTOL):
                over.append((k, lrs[k] / bound))
    if over:
        shown = ", ".join(f"{k} (x{f:.3g})" for k, f in over[:8]) + (", ..." if len(over) > 8 else "")
        warnings.warn(f"lr: exceeds the theorem's bound (theory.lr_bound) for members {shown}; "
                      "the convergence guarantee does not apply to them and GD may diverge",
                      LearningRateWarning, stacklevel=4)


def train(ens: Ensemble, prob: Problem, lr="theory", steps: int = 1000, tol=None,
          record_every: int = 1, backend: str = "auto", progress: bool = False, *,
          atol=None) -> EnsembleResult:
    """Run full-batch GD on every member of ``ens`` for up to ``steps`` steps.

    The same contract as ``engine.train``, member by member: each member
    stops on its own (``tol`` reached; the state is kept, not stepped), and a
    member whose loss becomes non-finite or exceeds EXPLODE_FACTOR times its
    initial scale is marked ``diverged`` and put back to its last checked state
    (finite and below the threshold; checked every ``train.SNAPSHOT_EVERY`` steps)
    instead of raising, so one bad seed does not cost the others' results.

    Parameters
    ----------
    ens : Ensemble        trained in place
    prob : Problem
    lr : float, sequence of K floats, "theory" or "stable"
        W-space learning rate(s); "theory" takes each member's theorem rate
        (``engine.theory.lr_bound`` of the member's ``theory.Setting``; DH Thm 4.1 /
        HXP Thm 3.1), refused (ValueError) for members no theorem covers.
        "stable" takes each member's own 1 / lambda_max(P_k(0)) (``stable_lrs``,
        ``engine.train.stable_lr``), per member so that the results stay those
        of K separate ``engine.train(lr="stable")`` runs; a shared rate is
        ``lr=stable_lrs(ens, prob).min()``.
    steps, tol, atol, record_every, progress : as in ``engine.train``
        (``tol`` relative: a member stops when its l - OPT <= tol ||Y||_F^2;
        ``atol`` absolute; default neither: every step runs; the progress
        report shows the largest excess among the members still running)
    backend : "auto", "numpy", "numba" or "cblas" (see the module docstring)

    Returns EnsembleResult.
    """
    if not isinstance(ens, Ensemble):
        raise TypeError(f"ens: must be an engine Ensemble, got {type(ens).__name__}")
    if not isinstance(prob, Problem):
        raise TypeError(f"prob: must be an engine.Problem, got {type(prob).__name__}")
    widths_match_data(ens.widths, prob)
    lrs = _lr_per_member(ens, prob, lr)
    steps = nonneg_int(steps, "steps")
    record_every = positive_int(record_every, "record_every")
    tol = stop_threshold(prob, tol, atol)     # from here on: the absolute threshold
    warn_bottleneck(ens.widths, prob, stacklevel=3)
    if not isinstance(backend, str) or backend not in kernels.BACKEND_NAMES:
        raise ValueError(f"backend: unknown backend {backend!r}; choose one of {list(kernels.BACKEND_NAMES)}")

    st = _EnsStepper(ens, prob, lrs, backend)
    return _train_loop(ens, prob, st, lrs, steps, tol, record_every, progress)


def _train_loop(ens, prob, st, lrs, steps, tol, record_every, progress):
    K = ens.size

    opt = prob.opt
    lo = -1.0 if tol is None else tol
    hi = np.full(K, math.inf)
    never = np.full(K, -math.inf)                          # "compute the excess, apply nothing"
    active = np.ones(K, dtype=bool)
    converged = np.zeros(K, dtype=bool)
    diverged = np.zeros(K, dtype=bool)
    stop_t = np.zeros(K, dtype=np.int64)
    hist = [([], []) for _ in range(K)]
    messages = {}
    bar = Progress(steps, 0, True, None, prob.y_norm_sq, tol) if progress else None
    t0 = time.perf_counter()
    t = 0
    # Each member's last checked state (issue 11, item 2): every SNAPSHOT_EVERY
    # steps the states are checked without stepping (hi = -inf applies nothing)
    # and members still finite and below their threshold are copied; a member
    # that diverges later is put back to its copy, so no diverged member is
    # returned with non-finite or exploded weights (at lr = 1e308 the step
    # after a finite loss overflows the weights).
    snaps = [None] * K
    settings = _settings(ens)
    from .train import _lr_verdict
    snap_t = np.zeros(K, dtype=np.int64)
    frozen_at = {}

    def restore(k):
        if snaps[k] is not None:
            for dst, src in zip(ens._member_layers(k), snaps[k]):
                dst[...] = src
            frozen_at[int(k)] = int(snap_t[k])

    try:
        while True:
            if t < steps and t % SNAPSHOT_EVERY == 0:
                pre, _ = st.step(lo, never, active)
                with np.errstate(invalid="ignore"):
                    ok = active & np.isfinite(pre) & ((pre <= hi) if t > 0 else True)
                for k in np.flatnonzero(ok):
                    lay = ens._member_layers(k)
                    if snaps[k] is None:
                        snaps[k] = [a.copy() for a in lay]
                    else:
                        for dst, src in zip(snaps[k], lay):
                            dst[...] = src
                    snap_t[k] = t
            ex, _ = st.step(lo, hi if t < steps else never, active)
            if t == 0:
                base = np.maximum(opt + ex, 0.5 * prob.y_norm_sq)
                with np.errstate(invalid="ignore", over="ignore"):
                    hi = np.where(base > 0, EXPLODE_FACTOR * base, math.inf)
            with np.errstate(invalid="ignore"):
                bad = active & (~np.isfinite(ex) | (ex > hi))
            for k in np.flatnonzero(bad):
                diverged[k] = True
                stop_t[k] = t
                why = "is not finite" if not np.isfinite(ex[k]) else f"exceeded {EXPLODE_FACTOR:g} x its initial scale"
                restore(k)
                kept = f"; weights kept from step {frozen_at[int(k)]}" if int(k) in frozen_at else ""
                # the wording of a single run's DivergenceError (engine.train): an lr within
                # the theorem's bound is never called too large
                verdict = _lr_verdict(settings[k], prob, float(lrs[k]), ens.widths)
                messages[int(k)] = f"GD diverged at step {t}: loss {opt + ex[k]:.4g} {why}; {verdict}{kept}"
            good = active & ~bad
            if tol is not None:
                converged |= good & (ex <= tol)
            stop = good & (converged | (t >= steps))
            rec = good & (stop | (t % record_every == 0))
            for k in np.flatnonzero(rec):
                hist[k][0].append(t)
                hist[k][1].append(ex[k])
            stop_t[stop] = t
            if bar is not None and (good.any() or not active.any()):
                worst = float(np.max(ex[good])) if good.any() else float("nan")
                bar.update(t, worst, not (active & ~(stop | bad)).any())
            active &= ~(stop | bad)
            if not active.any():
                break
            t += 1
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0

    hist = [(np.asarray(ts, dtype=np.int64), np.asarray(es, dtype=np.float64)) for ts, es in hist]
    grid = np.unique(np.concatenate([h[0] for h in hist])) if K else np.zeros(0, np.int64)
    excess = np.full((K, grid.size), np.nan)
    for k, (ts, es) in enumerate(hist):
        excess[k, np.searchsorted(grid, ts)] = es
    rate = np.array([fit_rate(ts, es) for ts, es in hist])
    predicted = np.full(K, np.nan)
    for k, setting in enumerate(_settings(ens)):
        if not diverged[k] and setting.applies:
            predicted[k] = theory.predicted_factor(setting, prob, lr=lrs[k])
    return EnsembleResult(t=grid, loss=opt + excess, excess=excess, steps=stop_t, converged=converged,
                          diverged=diverged, rate=rate, predicted=predicted, lr=lrs, messages=messages,
                          wall_time=wall, backend=st.name, schedule=st.schedule, opt=opt, ensemble=ens,
                          _hist=hist)
