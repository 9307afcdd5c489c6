"""Full-batch gradient descent: one step, and a training loop with recording.

GD is DH eq. (2) / HXP eq. (3): W_i <- W_i - eta dl/dW_i with eta in the
paper's W-space units. It runs on the reduced data in normalized storage
(see ``engine.network`` and ``engine.kernels.numpy_backend``), which is the
same trajectory exactly.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint as _checkpoint_module  # noqa: F401  (makes engine.checkpoint importable)
from . import kernels, theory
from ._validate import nonneg_int, positive_float, positive_int, widths_match_data
from .network import Network
from .problem import Problem
from .stepper import Stepper

__all__ = ["gd_step", "train", "stable_lr", "LR_RULES", "TrainResult", "DivergenceError", "fit_rate", "stop_threshold",
           "EngineWarning", "LearningRateWarning", "CheckpointWarning", "BottleneckWarning"]


class EngineWarning(UserWarning):
    """Base class of the warnings the engine issues."""


class CheckpointWarning(EngineWarning):
    """A checkpoint could not be written (disk full, permissions...); training went on.

    The previous checkpoint file is left intact, and the run's result is still
    returned: a failed write never costs the computation itself.
    """


class LearningRateWarning(EngineWarning):
    """The learning rate exceeds the theorem's bound for the network's init.

    GD may still converge (the bounds are sufficient, not necessary), but the
    theorem's guarantee and ``TrainResult.predicted`` no longer apply, and
    far above the bound training diverges (DivergenceError).
    """


class BottleneckWarning(EngineWarning):
    """A hidden layer is narrower than the rank of the least-squares solution Phi = Y X^+.

    The end-to-end map alpha W_L ... W_1 has rank <= min_i d_i, so it cannot
    reach Phi and l - OPT stays bounded away from 0 (OPT is the minimum over
    all linear maps, DH Sec. 3); the papers' theorems assume every d_i >= d_out.
    """


class DivergenceError(RuntimeError):
    """GD diverged: the loss became non-finite or exploded.

    Attributes
    ----------
    result : TrainResult   the history up to the last finite loss
    net    : Network       the network at the last state whose loss was finite and
                           below the divergence threshold (state ``net_step``,
                           normally ``step - 1``; never non-finite weights, even at
                           lr = 1e308)
    step   : int           the step index t at which divergence was detected
    net_step : int         the step of the state held in ``net``
    """

    def __init__(self, message, result=None, net=None, step=None, net_step=None):
        super().__init__(message)
        self.result = result
        self.net = net
        self.step = step
        self.net_step = net_step


@dataclass
class TrainResult:
    """History of a training run (paper convention, float64).

    t         (k,) step indices at which the loss was recorded (0 = init;
              the last entry is the final state)
    loss      (k,) l(t) = 1/2 ||alpha W_{L:1}(t) X - Y||_F^2
    excess    (k,) l(t) - OPT, computed on reduced data (accurate when tiny)
    steps     number of GD steps taken
    net       the trained network (the object passed in, updated in place)
    converged True when the excess reached the stop threshold (``tol`` / ``atol``)
    rate      fitted per-step contraction factor of the excess over the tail
              (see ``fit_rate``); nan when it cannot be fitted
    predicted the theorem's guaranteed factor for this init and lr (nan if none)
    lr        the learning rate used (W-space)
    wall_time seconds spent in the loop
    backend   name of the backend that ran
    opt       OPT of the problem
    records   {name: {"t": steps, "values": list}} from ``record=``
    record_time {name: seconds spent recording it}
    """

    t: np.ndarray
    loss: np.ndarray
    excess: np.ndarray
    steps: int
    net: Network
    converged: bool
    rate: float
    predicted: float
    lr: float
    wall_time: float
    backend: str
    opt: float
    records: dict = field(default_factory=dict)
    record_time: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"TrainResult(steps={self.steps}, converged={self.converged}, "
                f"excess={self.excess[-1]:.3e}, rate={self.rate:.6g}, predicted={self.predicted:.6g}, "
                f"lr={self.lr:.4g}, backend={self.backend!r}, wall_time={self.wall_time:.3g}s)")


# Growth of the loss, relative to max(l(0), ||Y||_F^2 / 2), treated as divergence.
# GD below the stability bound never increases the loss by more than a small
# factor; 1e8 is far outside that, yet far below float64 overflow, so the
# state at detection still has finite weights.
EXPLODE_FACTOR = 1e8


# Inits without a theorem of their own whose learning rate comes from another's: the
# identity init is HXP eq. (4) with Q_i = I (exact isometries), so HXP Thm 3.1's rate.
THEOREM_INIT = {"gaussian": "gaussian", "orthogonal": "orthogonal", "identity": "orthogonal"}


def theorem_init(init):
    """The init name whose theorem gives ``init``'s lr="theory" (itself, or "orthogonal" for identity)."""
    return THEOREM_INIT.get(init, init)


# The learning-rate rules train() resolves from the network and the data (any other lr is a number).
LR_RULES = ("theory", "stable")


def stable_lr(net: Network, prob: Problem) -> float:
    """The W-space learning rate lr="stable": eta = 1 / lambda_max(P(0)), for any init.

    P(0) is the Gram matrix of DH eq. (7) (HXP eq. 9) of ``net`` in its current
    state -- call it before training, at initialization -- computed exactly by
    ``engine.diagnostics.gram_lambda_max`` (the same chains and matrix as
    ``diagnostics.gram_eigs``), in paper units, so eta is in the units of
    ``engine.train``'s lr.

    Why 1 / lambda_max. To first order in eta one GD step changes the residual
    by vec R(t+1) = (I - eta P(t)) vec R(t) (DH eq. 6). In the linearized
    (lazy) regime P(t) = P(0), l = ||R||^2 / 2 is a quadratic, and GD on it
    contracts every eigendirection of P(0) iff |1 - eta lambda| < 1 for every
    eigenvalue lambda in (0, lambda_max], i.e. iff 0 < eta < 2 / lambda_max
    (beyond it the top direction grows by |1 - eta lambda_max| > 1 per step:
    divergence). eta = 1 / lambda_max is the halfway choice: the factors
    1 - lambda / lambda_max lie in [0, 1) (no direction overshoots or
    oscillates, the top one is removed in one step) and a factor-2 margin to
    the edge is left for P(t) drifting from P(0) during training. It is a
    statement about the linearization at init, not a convergence theorem:
    where P(t) moves far from P(0) (narrow, deep nets) GD at this rate can
    still stall or diverge. For comparison the theorems' rates are the
    inverses of upper bounds on lambda_max(P(t)) along the trajectory:
    DH Thm 4.1's d_out / (3 L ||X||^2) is 1 / DH eq. (9)'s upper bound, so for
    a wide Gaussian net (lambda_max(P(0)) ~ L ||X||^2 / d_out) the stable rate
    is ~3x it; HXP Thm 3.1's d_y / (2 L ||X||^2) is ~1/2 of the stable rate of
    an orthogonal net with m >= d_x. Where the width condition fails (m < d_x)
    lambda_max(P(0)) can be far above the bound the theorem's rate assumes
    (``theory.lr_bound``), and the theorem's rate diverges while the stable
    rate does not.
    """
    from . import diagnostics
    _check_net_prob(net, prob)
    lmax = diagnostics.gram_lambda_max(net, prob)
    if not (np.isfinite(lmax) and lmax > 0):
        raise ValueError(f"lr: 'stable' needs lambda_max(P(0)) > 0 and finite, got {lmax!r} "
                         "(an all-zero layer makes P(0) = 0: give a numeric lr)")
    return 1.0 / lmax


def _check_net_prob(net, prob):
    if not isinstance(net, Network):
        raise TypeError(f"net: must be an engine Network, got {type(net).__name__}")
    if not isinstance(prob, Problem):
        raise TypeError(f"prob: must be an engine.Problem, got {type(prob).__name__}")
    widths_match_data(net.widths, prob)


# bench/ imports the stepper under its old private name (removed once bench/ uses engine.stepper)
_Stepper = Stepper


def gd_step(net: Network, prob: Problem, lr, backend: str = "auto") -> float:
    """One GD step in place (DH eq. 2, W-space learning rate ``lr``).

    Returns l(t), the loss before the step. If that loss is not finite the
    weights are left untouched and DivergenceError is raised.

    A loop of ``gd_step`` calls runs the same schedule as ``train`` and gives
    the same weights bit for bit: the bound stepper (and the single-pass
    chain of the next step, which a backend carries between steps) is kept
    on the network between calls. It is dropped, and the chain rebuilt from
    the weights, when the network changed in between (``Network.version``
    moved, a layer array was replaced or one of the entries ``Network._probe``
    samples differs), or ``prob`` or ``backend`` is another one. After
    editing the weights in place through private storage call ``net.touch()``.
    """
    lr = positive_float(lr, "lr")
    st = _cached_stepper(net, prob, backend)
    if st is None:
        st = Stepper(net, prob, lr, backend)
    elif lr != st.lr:
        st.set_lr(lr)           # the carried chain does not depend on the step size
    net._gd = None              # a refused or failed step leaves no cache behind
    ex, applied = st.step()
    if not applied:
        raise DivergenceError(f"loss is not finite ({ex}); the step was not applied", net=net)
    net._gd = (backend, prob, st, net._probe())
    return prob.opt + ex


def _cached_stepper(net, prob, backend):
    """The stepper of the previous ``gd_step`` on ``net`` if it may go on
    carrying its chain: same problem object, same backend name, and the
    network unchanged since (version, layer identity, probed entries)."""
    cache = getattr(net, "_gd", None)
    if cache is None or not isinstance(net, Network):
        return None
    name, cprob, st, probe = cache
    if cprob is not prob or name != backend or st.version != net._version:
        return None
    if not net._probe_matches(probe):
        return None
    return st


def fit_rate(t, excess, tail: float = 0.5) -> float:
    """Per-step contraction factor q fitted to excess(t) ~ C q^t over the tail.

    Least squares on ln(excess) against t over the last ``tail`` fraction of
    the recorded points, ignoring points at the rounding floor (excess below
    1e-28 times its maximum, where float64 residuals are pure rounding) and
    non-positive ones. Returns nan with fewer than 3 usable points.
    """
    t = np.asarray(t, dtype=np.float64)
    e = np.asarray(excess, dtype=np.float64)
    ok = np.isfinite(e) & (e > 0)
    if ok.sum() < 3:
        return float("nan")
    ok &= e > 1e-28 * e[ok].max()
    t, e = t[ok], e[ok]
    k = max(3, int(math.ceil(tail * len(t))))
    if len(t) < 3:
        return float("nan")
    t, e = t[-k:], e[-k:]
    if np.ptp(t) == 0:
        return float("nan")
    slope = np.polyfit(t, np.log(e), 1)[0]
    return float(np.exp(slope))


class _Default:
    """A keyword's default, distinguishable from the same value passed explicitly
    (on resume, defaults are taken from the checkpoint)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _given(x) -> bool:
    return not isinstance(x, _Default)


def _value(x):
    return x.value if isinstance(x, _Default) else x


def train(net: Network = None, prob: Problem = None, lr=_Default("theory"), steps=_Default(1000),
          tol=_Default(None), record_every=_Default(1), backend=_Default("auto"),
          progress: bool = False, callback=None, record=_Default(None), *,
          atol=_Default(None), log_every=None,
          checkpoint=None, checkpoint_every=None, resume=None, overwrite: bool = False) -> TrainResult:
    """Run full-batch GD for up to ``steps`` steps.

    Parameters
    ----------
    net : Network         trained in place
    prob : Problem
    lr : float, "theory" or "stable"
        W-space learning rate. "stable" (any init, ``from_weights`` too) takes
        1 / lambda_max(P(0)), P(0) the Gram matrix of DH eq. (7) of ``net`` at
        the start (``stable_lr``, which says why: GD on the linearized
        quadratic is stable for eta < 2 / lambda_max; no LearningRateWarning;
        refused on resume). "theory" takes the theorem's rate for the init:
        d_out / (3 L ||X||^2) for Gaussian (DH Thm 4.1), d_out / (2 L ||X||^2)
        for orthogonal (HXP Thm 3.1), times sigma^2 / c^2 for entries
        N(0, sigma^2) and alpha = c x the default (``theory.theorem_setting``:
        W-space GD at eta is the theorem's GD at eta c^2 / sigma^2). Refused
        (ValueError naming lr) where no theorem applies: per-layer sigma_i
        that differ, ``from_weights`` nets.
    steps : int >= 0      maximum number of GD steps (default 1000)
    tol : float >= 0, optional
        RELATIVE stopping tolerance: stop as soon as l(t) - OPT <= tol * ||Y||_F^2
        (that state is kept, not stepped). Default None: run all ``steps``.
        The same meaning as ``--tol`` of the command line (whose default is
        1e-12) and the ``tol`` field of sweep configs.
    atol : float >= 0, optional (keyword)
        ABSOLUTE stopping tolerance: stop as soon as l(t) - OPT <= atol.
        Give ``tol`` or ``atol``, not both (ValueError). See ``stop_threshold``.
    record_every : int    record l(t) every this many steps (the final state always)
    backend : str         "auto", "numpy", "numba" or "cblas"
    progress : bool
        Report progress on stderr: on a terminal a bar (tqdm) showing the
        relative excess (l - OPT) / ||Y||_F^2 and the ETA; otherwise (a log
        file, a pipe) one line every ``log_every`` (default every 10 seconds)
        and a last line at the end.
    log_every : int or str, optional (keyword)
        With ``progress=True``: one line every this many steps (int), or every
        this many seconds ("10s"); given explicitly, lines are written even on
        a terminal instead of the bar.
    callback : callable, optional
        ``callback(t, excess, net)`` at each recorded step t < steps, called
        after step t was applied: ``excess`` is l(t) - OPT and ``net`` already
        holds W(t+1). Return True to stop (state t+1 is then recorded as final).
    record : dict {name: stride}, optional
        Diagnostics from ``engine.diagnostics.RECORDERS`` to record every
        ``stride`` steps and at the final state, e.g. {"distance": 10}.
        Results go to ``run.records[name] = {"t": (k,) int array, "values": [...]}``
        and the seconds spent on each to ``run.record_time[name]`` (not counted
        in ``wall_time``); steps in between are not slowed.
    checkpoint : path, optional
        Write the run's state to this file (``engine.checkpoint``: atomic,
        checksummed) every ``checkpoint_every`` steps and at the final state.
        The directory must exist and be writable (checked before training).
        With ``record=`` the network at the start is saved too (one more copy
        of the weights in memory and on disk).
        If the file already exists it is never silently overwritten: when it
        holds this same run (widths, dtype, init, seed, sigma, data
        fingerprint, lr, tol, record_every, record and backend all equal) the
        run is resumed from it, exactly as ``resume=checkpoint`` would (so
        re-running an interrupted script continues it); otherwise
        ``CheckpointMismatch`` names what differs, unless ``overwrite=True``.
    checkpoint_every : int >= 1, optional
        Steps between checkpoints; None writes only the final state.
    overwrite : bool
        With ``checkpoint=``: start afresh and replace an existing checkpoint
        file instead of resuming it or refusing.
    resume : path, optional
        Continue the run saved in this checkpoint: ``train(resume=path)``
        (the data X, Y are stored in the checkpoint when they take at most
        ``checkpoint.DATA_LIMIT`` bytes; otherwise pass ``prob=``), or
        ``train(prob=prob, resume=path)``. The network comes from the file: with ``net=None`` a new
        Network is returned in ``run.net``; a given ``net`` of the same widths
        and dtype has its state replaced by the checkpoint's (so
        ``train(net, prob, resume=path)`` works too). ``prob`` must hold the
        same data (checked by fingerprint), and
        lr, tol, record_every and record default to the saved ones (passing
        different ones is refused: that would be another run). ``steps``
        defaults to the saved total and may be raised to extend the run;
        ``backend`` defaults to the backend that ran (the resumed trajectory
        is then bit-identical to an uninterrupted one); ``checkpoint`` and
        ``checkpoint_every`` default to the resumed file and its cadence.
        The returned history covers the whole run from step 0.

    An ``engine.ensemble.Ensemble`` as ``net`` trains all its members in one
    call (``engine.ensemble.train``; no callback, record or checkpoint) and
    returns an ``EnsembleResult`` with per-member histories.

    Returns TrainResult. Raises DivergenceError (carrying the history and the
    network at its last finite state) when the loss becomes non-finite or
    exceeds EXPLODE_FACTOR * max(l(0), ||Y||_F^2 / 2); the last checkpoint
    written is left as it was. Warns with LearningRateWarning when a numeric
    lr exceeds the theorem's bound for a Gaussian or orthogonal init
    (``theory.lr_bound``); "theory" never does. Raises
    ``checkpoint.CorruptCheckpoint`` for a damaged checkpoint and
    ``checkpoint.CheckpointMismatch`` for one from other data. A checkpoint
    that cannot be written (OSError: disk full, permissions; or diagnostics
    whose values are not numeric) gives a CheckpointWarning and training goes on.
    """
    from .ensemble import Ensemble   # deferred: ensemble imports this module
    if isinstance(net, Ensemble):
        if callback is not None or _value(record) is not None:
            raise ValueError("net: an Ensemble does not support callback= or record=; "
                             "train its members separately (ens.members()) to use them")
        if checkpoint is not None or checkpoint_every is not None or resume is not None:
            raise ValueError("net: an Ensemble does not support checkpoint=, checkpoint_every= or resume=")
        from . import ensemble
        return ensemble.train(net, prob, lr=_value(lr), steps=_value(steps), tol=_value(tol),
                              atol=_value(atol), record_every=_value(record_every),
                              backend=_value(backend), progress=progress)
    ckpt = _checkpoint_module
    if not isinstance(overwrite, (bool, np.bool_)):
        raise TypeError(f"overwrite: must be True or False, got {overwrite!r}")
    if resume is None and checkpoint is not None and not overwrite:
        path = _path_arg(checkpoint, "checkpoint")
        if os.path.isfile(path):
            if isinstance(_value(lr), str) and _value(lr) == "stable":
                _check_net_prob(net, prob)
                lr = stable_lr(net, prob)   # of the fresh network: the state at step 0
            _check_same_run(ckpt.load(path), net, prob, lr, tol, atol, record_every, record, backend)
            return train(net, prob, lr=lr, steps=steps, tol=tol, atol=atol, record_every=record_every,
                         backend=backend, progress=progress, callback=callback, record=record,
                         log_every=log_every,
                         checkpoint=path, checkpoint_every=checkpoint_every, resume=path)
    saved = None
    if resume is not None:
        if net is not None and not isinstance(net, Network):
            raise TypeError(f"net: must be an engine Network or None, got {type(net).__name__}")
        if prob is not None and not isinstance(prob, Problem):
            raise TypeError(f"prob: must be an engine.Problem, got {type(prob).__name__}")
        resume = _path_arg(resume, "resume")
        saved = ckpt.load(resume)
        if prob is None:
            prob = saved.problem()
        loaded = saved.network(prob)
        if net is not None:
            _check_adoptable(net, loaded)   # the given net is changed only once all checks passed
        meta = saved.meta
        lr = _same_as_saved(lr, meta["lr"], "lr", loaded, prob)
        thr = _same_threshold_as_saved(tol, atol, meta["tol"], prob)
        record_every = _same_as_saved(record_every, meta["record_every"], "record_every")
        rec_saved = meta["record"]
        if _given(record) and (record or None) != rec_saved:
            raise ValueError(f"record: the checkpoint recorded {rec_saved!r}; got {record!r} "
                             "(a different record= would not continue the same run)")
        record = rec_saved
        if not _given(steps):
            steps = meta["steps"]
        elif (isinstance(steps, numbers.Integral) and not isinstance(steps, (bool, np.bool_))
              and int(steps) < saved.step):
            raise ValueError(f"steps: the checkpoint is already at step {saved.step}, got steps={steps}")
        if not _given(backend):
            backend = meta["backend"]
        if checkpoint is None:
            checkpoint = resume
            if checkpoint_every is None:
                checkpoint_every = meta["checkpoint_every"]
    lr, steps, tol, atol, record_every, backend, record = map(
        _value, (lr, steps, tol, atol, record_every, backend, record))
    if saved is None:
        thr = stop_threshold(prob, tol, atol)
    log_every = _log_every_value(log_every)

    lr_rule = lr if isinstance(lr, str) else None
    if isinstance(lr, str):
        if lr not in LR_RULES:
            raise ValueError(f"lr: must be a positive number, 'theory' or 'stable', got {lr!r}")
        _check_net_prob(net, prob)
        if lr == "theory":
            lr = theory.lr_bound(theory.theorem_setting(net).require("lr='theory'"), prob)
        else:
            lr = stable_lr(net, prob)   # net is at its initial state here (no resume)
    lr = positive_float(lr, "lr")
    steps = nonneg_int(steps, "steps")
    record_every = positive_int(record_every, "record_every")
    if callback is not None and not callable(callback):
        raise TypeError("callback: must be callable")
    if checkpoint is not None:
        checkpoint = _path_arg(checkpoint, "checkpoint")
        _check_writable_dir(checkpoint)
        if checkpoint_every is not None:
            checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    elif checkpoint_every is not None:
        raise ValueError("checkpoint_every: needs checkpoint=<path> to write to")
    if saved is not None:
        kernels.get(backend, shape=(loaded.widths, prob.rank))   # refuse an unknown/unavailable one first
        if net is None:
            net = loaded
        else:
            _adopt(net, loaded)

    st = Stepper(net, prob, lr, backend)
    if saved is None:
        if lr_rule != "stable":   # "stable" is above the theorem's bound on purpose: no warning
            _warn_above_bound(net, prob, lr)
        warn_bottleneck(net.widths, prob)
    elif saved.meta.get("backend") == st.name:
        st.set_schedule_state(0, saved.meta.get("backend_state"))
    start_net = None
    if record:
        if saved is not None:
            start_net = saved.start_network(prob)
        elif checkpoint is not None:
            start_net = net.copy()
    recorders = _make_recorders(record, net if start_net is None else start_net, prob, lr)
    opt = prob.opt
    ts, exs = [], []
    lo = -1.0 if thr is None else thr
    hi = math.inf
    converged = False
    t = 0
    prev_wall = 0.0
    if saved is not None:
        ts, exs = saved.t.tolist(), saved.excess.tolist()
        t = saved.step
        hi = float(saved.meta["hi"])
        prev_wall = float(saved.meta["wall_time"])
        _restore_recorders(recorders, saved)
    t_resumed = t
    limit = steps
    bar = Progress(limit, t, progress, log_every, prob.y_norm_sq, thr) if progress else None
    t0 = time.perf_counter()

    def save_state():
        try:
            _save_checkpoint(checkpoint, net, prob, start_net, recorders, t, ts, exs, hi, lr, thr,
                             limit, record_every, record, st.name, checkpoint_every,
                             prev_wall + time.perf_counter() - t0, st.schedule_state())
        except (OSError, ckpt.CheckpointError) as exc:
            warnings.warn(f"checkpoint: writing {checkpoint!r} at step {t} failed "
                          f"({type(exc).__name__}: {exc}); training continues and the previous "
                          "checkpoint file, if any, is intact", CheckpointWarning, stacklevel=3)

    # Last-good state (issue 11, item 2): DivergenceError.net must be the last
    # state whose loss was finite and below the threshold, but the kernel
    # applies step t in place as soon as state t's loss passes, so state t-1 is
    # gone when state t turns out bad (at lr 1e308 the weights are then inf).
    # A copy of a checked state is kept every SNAPSHOT_EVERY steps (and at the
    # start); on divergence it is restored and GD replayed up to state t-1
    # (deterministic, same backend and schedule phase: the exact state).
    snap = [None]

    def diverged(t_bad, ex):
        good = _rewind(st, snap[0], t_bad - 1)
        res = _result(ts, exs, t_bad, net, False, lr, opt, t0, st.name)
        res.wall_time += prev_wall
        _attach_records(res, recorders)
        why = "is not finite" if not np.isfinite(ex) else f"exceeded {EXPLODE_FACTOR:g} x its initial scale"
        return DivergenceError(
            f"GD diverged at step {t_bad}: loss {opt + ex:.4g} {why}; {_lr_verdict(net, prob, lr)}. "
            f"The history and the network at step {good} (the last finite state below the "
            "threshold) are attached (.result, .net).",
            result=res, net=net, step=t_bad, net_step=good)

    try:
        while True:
            due_ckpt = (checkpoint_every is not None and t > t_resumed and t % checkpoint_every == 0
                        and t < limit)
            if t < limit and (due_ckpt or t == t_resumed or t % SNAPSHOT_EVERY == 0):
                # check state t *before* its step is applied: only a finite state below
                # the threshold becomes a snapshot or a checkpoint
                ex = st.excess()
                st.reset()   # the next step rebuilds its chain (bit-identical, see kernels)
                if t > 0 and (not np.isfinite(ex) or ex > hi):
                    raise diverged(t, ex)
                snap[0] = _snapshot(st, t, snap[0])
                if due_ckpt:
                    save_state()
            # diagnostics see state t, so they run before step t is applied
            for rec in recorders:
                if t % rec.stride == 0:
                    rec(t, net)
            if t < limit:
                ex, applied = st.step(lo, hi)
            else:
                ex, applied = st.excess(), False
            if t == 0:
                base = max(opt + ex, 0.5 * prob.y_norm_sq)
                hi = EXPLODE_FACTOR * base if base > 0 else math.inf
            if not np.isfinite(ex) or ex > hi:
                raise diverged(t, ex)
            if thr is not None and ex <= thr:
                converged = True
            stop = converged or t >= limit
            if stop:
                if checkpoint is not None:
                    limit = t
                    save_state()   # the final state, before its (recomputable) records
                for rec in recorders:
                    if not rec.t or rec.t[-1] != t:
                        rec(t, net)   # the final state (not stepped) is always recorded
            if t % record_every == 0 or stop:
                ts.append(t)
                exs.append(ex)
                if callback is not None and not stop:
                    if callback(t, ex, net):
                        limit = t + 1   # step t is already applied; record state t+1 and stop
                    # the callback may have edited the weights in place, which a
                    # backend carrying the next step's chain (single-pass) cannot see
                    st.reset()
            if bar is not None:
                bar.update(t, ex, stop)
            if stop:
                break
            t += 1
    finally:
        if bar is not None:
            bar.close()
    res = _result(ts, exs, t, net, converged, lr, opt, t0, st.name, prob)
    res.wall_time += prev_wall
    _attach_records(res, recorders)
    return res


# Steps between the copies of a checked state kept for DivergenceError.net
# (one copy of the weights; replaying at most this many steps on divergence).
SNAPSHOT_EVERY = 64


def _snapshot(st, t, old):
    """(t, copies of the layers, schedule state) of the current (checked) state t."""
    layers = st.model._layers
    if old is None or len(old[1]) != len(layers):
        bufs = [a.copy() for a in layers]
    else:
        bufs = old[1]
        for dst, src in zip(bufs, layers):
            dst[...] = src
    return (t, bufs, st.schedule_state())


def _rewind(st, snap, target):
    """Put state ``target`` into the network: restore the snapshot, replay GD from it.

    Returns the step of the state now held (``target``, or the current one when
    there is no earlier snapshot, i.e. the very first state was bad).
    """
    if snap is None or snap[0] > target or target < 0:
        return target + 1
    s, bufs, sched = snap
    for dst, src in zip(st.model._layers, bufs):
        dst[...] = src
    st.reset()
    st.set_schedule_state(0, sched)
    for _ in range(s, target):
        st.step()
    st.reset()
    return target


def _check_same_run(saved, net, prob, lr, tol, atol, record_every, record, backend):
    """Refuse (CheckpointMismatch naming ``checkpoint`` and what differs) unless the existing
    checkpoint ``saved`` holds the run these arguments describe."""
    _check_net_prob(net, prob)
    m, nm = saved.meta, saved.meta["net"]
    diffs = []

    def cmp(name, mine, theirs):
        if mine != theirs:
            diffs.append(f"{name} {mine!r} (checkpoint: {theirs!r})")

    cmp("widths", list(net.widths), list(nm["widths"]))
    cmp("dtype", net.dtype.str, nm["dtype"])
    cmp("init", net.init, nm["init"])
    seed = net.seed if isinstance(net.seed, (int, type(None))) else repr(net.seed)
    if seed is None or isinstance(seed, str):
        diffs.append("seed: this network has no integer seed, so it cannot be told to be the "
                     "checkpoint's run")
    else:
        cmp("seed", seed, nm.get("seed"))
    sig = None if net.sigma is None else net.sigma.tolist()
    theirs = saved.arrays.get("sigma")
    cmp("sigma", sig, None if theirs is None else theirs.tolist())
    if prob.fingerprint != m["problem"]:
        diffs.append("data (problem fingerprint differs)")
    lr_v = _value(lr)
    if isinstance(lr_v, str) and lr_v == "theory":
        lr_v = _safe_bound(net, prob)
    cmp("lr", lr_v, m["lr"])
    # checkpoints store the absolute stop threshold under "tol"
    cmp("stop threshold (tol/atol)", stop_threshold(prob, _value(tol), _value(atol)), m["tol"])
    cmp("record_every", _value(record_every), m["record_every"])
    cmp("record", _value(record) or None, m["record"])
    if _given(backend) or _value(backend) != "auto":
        name = kernels.get(_value(backend), shape=(net.widths, prob.rank)).name
        cmp("backend", name, m["backend"])
    elif kernels.get("auto", shape=(net.widths, prob.rank)).name != m["backend"]:
        diffs.append(f"backend 'auto' -> {kernels.get('auto', shape=(net.widths, prob.rank)).name!r} "
                     f"(checkpoint: {m['backend']!r})")
    if diffs:
        raise _checkpoint_module.CheckpointMismatch(
            f"checkpoint: {saved.path!r} already exists and holds another run (step {saved.step}): "
            + "; ".join(diffs) + ". Pass overwrite=True (CLI: --overwrite) to replace it, "
            "another path, or resume=<path> to continue it")


def _check_adoptable(net, loaded):
    if net.widths != loaded.widths or net.dtype != loaded.dtype:
        raise ValueError(
            f"net: has widths {list(net.widths)} and dtype {net.dtype}, but the checkpoint holds "
            f"widths {list(loaded.widths)} and dtype {loaded.dtype}; pass net=None to get the "
            "checkpoint's network")


def _adopt(net, loaded):
    """Give ``net`` the state of ``loaded`` (same widths and dtype, else refuse)."""
    _check_adoptable(net, loaded)
    net._store, net._k, net._gd = loaded._store, loaded._k, None


def _tol_value(tol, name="tol"):
    if tol is None:
        return None
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise TypeError(f"{name}: must be a finite number >= 0 or None, got {tol!r}")
    tol = float(tol)
    if not (tol >= 0 and np.isfinite(tol)):
        raise ValueError(f"{name}: must be a finite number >= 0, got {tol!r}")
    return tol


def stop_threshold(prob, tol=None, atol=None):
    """The absolute excess at which training stops, l(t) - OPT <= threshold, or None.

    ``tol`` is relative to the targets' energy: threshold = tol * ||Y||_F^2
    (dimensionless, comparable across data sets; the meaning of ``tol``
    everywhere: ``engine.train``, ensembles, sweep configs, ``--tol``).
    ``atol`` is the threshold itself, in the loss's units. Neither given:
    None (every step runs). Both given: ValueError.
    """
    tol = _tol_value(tol, "tol")
    atol = _tol_value(atol, "atol")
    if tol is not None and atol is not None:
        raise ValueError(f"tol: give either tol (relative: l - OPT <= tol ||Y||_F^2) or atol "
                         f"(absolute: l - OPT <= atol), not both; got tol={tol!r}, atol={atol!r}")
    if atol is not None:
        return atol
    if tol is None:
        return None
    if not isinstance(prob, Problem):
        raise TypeError(f"prob: must be an engine.Problem, got {type(prob).__name__}")
    return tol * prob.y_norm_sq


def _same_threshold_as_saved(tol, atol, saved_thr, prob):
    """On resume: the saved absolute threshold, or refuse a tol/atol giving another one.

    Checkpoints store the absolute threshold under "tol" (older ones stored
    the absolute ``tol`` of the time under the same key, so they resume as
    they were written)."""
    if not _given(tol) and not _given(atol):
        return saved_thr
    thr = stop_threshold(prob, _value(tol), _value(atol))
    if thr != saved_thr:
        name = "tol" if _given(tol) and _value(tol) is not None or not _given(atol) else "atol"
        shown = "none (every step)" if saved_thr is None else f"l - OPT <= {saved_thr!r}"
        raise ValueError(f"{name}: the checkpoint was trained with the stop threshold {shown}; "
                         f"tol={_value(tol)!r}, atol={_value(atol)!r} give "
                         f"{'none' if thr is None else repr(thr)} (resuming with a different value "
                         "would not continue the same run)")
    return saved_thr


def _same_as_saved(x, saved_value, name, net=None, prob=None):
    """On resume: the saved value, or ``x`` if given and equal to it (else refuse)."""
    if not _given(x):
        return saved_value
    val = x
    if name == "lr" and isinstance(x, str) and x == "stable":
        raise ValueError(f"lr: 'stable' is 1 / lambda_max(P(0)) of the network at step 0, which a "
                         f"resumed run no longer holds; omit lr (the checkpoint's lr = {saved_value!r} "
                         "is used) or pass that number")
    if name == "lr" and isinstance(x, str) and x == "theory":
        val = _safe_bound(net, prob)
    elif name == "record_every":
        val = positive_int(x, name)
    elif name == "lr":
        val = positive_float(x, name)
    if val != saved_value:
        raise ValueError(f"{name}: the checkpoint was trained with {name}={saved_value!r}; got {x!r} "
                         "(resuming with a different value would not continue the same run)")
    return saved_value


def _path_arg(p, name):
    if not isinstance(p, (str, os.PathLike)):
        raise TypeError(f"{name}: must be a file path, got {type(p).__name__}")
    p = os.fspath(p)
    if not p:
        raise ValueError(f"{name}: must be a non-empty file path")
    return p


def _check_writable_dir(path):
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise ValueError(f"checkpoint: directory {d!r} does not exist")
    if not os.access(d, os.W_OK):
        raise PermissionError(f"checkpoint: directory {d!r} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint: {path!r} is a directory, not a file path")


def _save_checkpoint(path, net, prob, start_net, recorders, t, ts, exs, hi, lr, tol, steps,
                     record_every, record, backend_name, every, wall, backend_state=None):
    from . import __version__, checkpoint as ckpt

    arrays, net_meta = ckpt.pack_network(net)
    meta = {"engine_version": __version__, "net": net_meta, "t": int(t), "lr": lr, "tol": tol,
            "steps": int(steps), "record_every": record_every, "record": record or None,
            "backend": backend_name, "backend_state": backend_state, "checkpoint_every": every,
            "problem": prob.fingerprint, "hi": repr(float(hi)), "wall_time": wall}
    if prob.X.nbytes + prob.Y.nbytes <= ckpt.DATA_LIMIT:
        arrays["data_X"], arrays["data_Y"] = prob.X, prob.Y
        meta["rtol"] = prob.rtol
    arrays["hist_t"] = np.asarray(ts, dtype=np.int64)
    arrays["hist_excess"] = np.asarray(exs, dtype=np.float64)
    if start_net is not None:
        a2, m2 = ckpt.pack_network(start_net, prefix="start_")
        arrays.update(a2)
        meta["start"] = m2
    meta["recorders"] = [_pack_recorder(rec, k, arrays, t) for k, rec in enumerate(recorders)]
    ckpt.save(path, arrays, meta)


def _pack_recorder(rec, k, arrays, t):
    """Store a recorder's entries for steps < t (those at t are recomputed on resume)."""
    n = len(rec.t)
    while n and rec.t[n - 1] >= t:
        n -= 1
    arrays[f"rec{k}_t"] = np.asarray(rec.t[:n], dtype=np.int64)
    vals = [np.asarray(v) for v in rec.values[:n]]
    for v in vals:
        if v.dtype == object:
            from .checkpoint import CheckpointError
            raise CheckpointError(f"record: values of diagnostic {rec.name!r} cannot be checkpointed "
                                  f"(type {type(rec.values[0]).__name__})")
    kind = "stacked" if vals and len({(v.shape, v.dtype) for v in vals}) == 1 else "each"
    if kind == "stacked":
        arrays[f"rec{k}_values"] = np.stack(vals)
    else:
        for j, v in enumerate(vals):
            arrays[f"rec{k}_v{j}"] = v
    scalar = bool(vals) and all(np.ndim(v) == 0 and not isinstance(v0, np.ndarray)
                                for v, v0 in zip(vals, rec.values))
    return {"name": rec.name, "n": n, "kind": kind, "scalar": scalar, "seconds": rec.seconds}


def _restore_recorders(recorders, saved):
    infos = saved.meta.get("recorders", [])
    for k, (rec, info) in enumerate(zip(recorders, infos)):
        n = info["n"]
        rec.t = saved.arrays[f"rec{k}_t"].tolist()
        if info["kind"] == "stacked":
            stacked = saved.arrays[f"rec{k}_values"]
            vals = [stacked[j] for j in range(n)]
        else:
            vals = [saved.arrays[f"rec{k}_v{j}"] for j in range(n)]
        if info["scalar"]:
            vals = [v.item() for v in vals]
        rec.values = vals
        rec.seconds = float(info["seconds"])


class _Recorder:
    def __init__(self, name, stride, fn):
        self.name, self.stride, self.fn = name, stride, fn
        self.t, self.values, self.seconds = [], [], 0.0

    def __call__(self, t, net):
        t0 = time.perf_counter()
        # a recorder that needs the step index (the lazy twin's closed form in t) says so
        self.values.append(self.fn(net, t) if getattr(self.fn, "wants_step", False) else self.fn(net))
        self.t.append(t)
        self.seconds += time.perf_counter() - t0


def _make_recorders(record, net, prob, lr=None):
    if record is None:
        return []
    from . import diagnostics
    if not isinstance(record, dict):
        raise TypeError("record: must be a dict {diagnostic name: stride}")
    out = []
    for name, stride in record.items():
        if name not in diagnostics.RECORDERS:
            raise ValueError(f"record: unknown diagnostic {name!r}; choose from {sorted(diagnostics.RECORDERS)}")
        stride = positive_int(stride, f"record[{name!r}]")
        make = diagnostics.RECORDERS[name]
        fn = make(net, prob, lr) if getattr(make, "wants_lr", False) else make(net, prob)
        out.append(_Recorder(name, stride, fn))
    return out


def _attach_records(res, recorders):
    for rec in recorders:
        res.records[rec.name] = {"t": np.asarray(rec.t, dtype=np.int64), "values": rec.values}
        res.record_time[rec.name] = rec.seconds
        res.wall_time -= rec.seconds


# lr above (1 + LR_WARN_RTOL) x the bound is warned about; the slack keeps
# lr = "theory" and rates computed from it in another order from warning.
LR_WARN_RTOL = 1e-9


def warn_bottleneck(widths, prob, stacklevel=3):
    """Warn (BottleneckWarning) when min hidden width < rank(Phi); returns True if it warned."""
    hidden = list(widths[1:-1])
    if not hidden:
        return False
    m = min(hidden)
    if m >= min(prob.d_out, prob.rank):
        return False              # cheap exit: rank(Phi) <= min(d_out, r)
    rank_phi = int(np.linalg.matrix_rank(prob.phi))
    if m >= rank_phi:
        return False
    i = hidden.index(m) + 1
    warnings.warn(
        f"widths: hidden width d_{i} = {m} is narrower than d_out = {prob.d_out}: the end-to-end map "
        f"alpha W_L...W_1 has rank <= {m} and cannot reach rank(Phi) = {rank_phi} (Phi = Y X^+), so "
        f"l - OPT cannot go to 0; the theorems (DH Thm 4.1, HXP Thm 3.1) assume every d_i >= d_out",
        BottleneckWarning, stacklevel=stacklevel)
    return True


def _warn_above_bound(net, prob, lr):
    bound = _safe_bound(net, prob)
    if bound is not None and lr > bound * (1.0 + LR_WARN_RTOL):
        st = theory.theorem_setting(net)
        rule = f"d_out / ({'3' if st.init == 'gaussian' else '2'} L ||X||^2)"
        if st.lr_scale != 1.0:
            rule += f" x sigma^2 / c^2 = x {st.lr_scale:.4g} for sigma = {st.sigma:.4g}, c = alpha / alpha_default = {st.output_scale:.4g}"
        warnings.warn(
            f"lr: {lr:.4g} exceeds the theorem's bound {bound:.4g} for {net.init} init "
            f"({st.theorem}: {rule}) by a factor "
            f"{lr / bound:.3g}; the convergence guarantee does not apply and GD may diverge",
            LearningRateWarning, stacklevel=3)


def _safe_bound(net, prob):
    """The theorem's W-space bound for ``net`` (``theory.lr_bound``), or None if no theorem applies."""
    st = theory.theorem_setting(net)
    return theory.lr_bound(st, prob) if st.applies else None


def _lr_verdict(net, prob, lr, widths=None) -> str:
    """What the divergence message says about ``lr``: never that an lr within the bound is too large.

    ``net`` is a Network, or a ``theory.Setting`` with the network's ``widths``
    (an ensemble member, engine.ensemble.train)."""
    bound = _safe_bound(net, prob)
    if bound is None:
        return f"lr = {lr:.4g} is too large for this network (no theorem gives a bound for it)"
    if lr > bound * (1.0 + LR_WARN_RTOL):
        return (f"lr = {lr:.4g} is too large: {lr / bound:.3g} x the theorem's bound "
                f"lr <= {bound:.4g} for this init")
    st = theory.theorem_setting(net)
    where = "DH eq. 4" if st.init == "gaussian" else "HXP eq. 5, m >= max{d_x, d_y}"
    if theory.width_condition_met(net if widths is None else (st, widths), prob):
        cond = (f"the width condition ({where}) holds only in shape (with its unknown "
                "universal constant set to 1)")
    else:
        cond = f"this network does not meet the width condition ({where})"
    return (f"lr = {lr:.4g} is within the theorem's bound lr <= {bound:.4g} for this init, but "
            f"{st.theorem} guarantees convergence only for wide enough networks and {cond}; "
            "a smaller lr may still converge")


def _result(ts, exs, steps, net, converged, lr, opt, t0, backend, prob=None):
    t = np.asarray(ts, dtype=np.int64)
    ex = np.asarray(exs, dtype=np.float64)
    predicted = float("nan")
    st = theory.theorem_setting(net)
    if prob is not None and st.applies:
        predicted = theory.predicted_factor(st, prob, lr=lr)
    return TrainResult(t=t, loss=opt + ex, excess=ex, steps=int(steps), net=net,
                       converged=converged, rate=fit_rate(t, ex), predicted=predicted,
                       lr=lr, wall_time=time.perf_counter() - t0, backend=backend, opt=opt)


def _log_every_value(x):
    """``log_every`` -> None, ("steps", N) or ("seconds", S) (ValueError naming it otherwise)."""
    if x is None:
        return None
    if isinstance(x, str):
        text = x.strip()
        try:
            if text.endswith("s"):
                sec = float(text[:-1])
                if sec > 0 and math.isfinite(sec):
                    return ("seconds", sec)
            else:
                return ("steps", positive_int(int(text), "log_every"))
        except ValueError:
            pass
        raise ValueError(f"log_every: must be a positive number of steps (500) or of seconds ('10s'), "
                         f"got {x!r}")
    return ("steps", positive_int(x, "log_every"))


# Without an explicit log_every, progress lines off a terminal come this often (seconds).
LOG_SECONDS_DEFAULT = 10.0


class Progress:
    """Progress of a GD loop on a stream (stderr by default).

    On a terminal (and without an explicit ``log_every``): a tqdm bar over the
    step budget whose postfix is the current relative excess
    (l - OPT) / ||Y||_F^2 and, when a stop threshold is set and the excess
    contracts, the estimated steps and time until it is reached. tqdm's own
    ETA is the time to the end of the budget.

    Otherwise (a log file, a pipe, a batch job): one line per ``log_every``,
    ("steps", N) or ("seconds", S), default every LOG_SECONDS_DEFAULT
    seconds, and a last line when the loop stops::

        step 1200/2000 (60%)  l - OPT 3.1e-05 = 1.2e-07 ||Y||^2  410 steps/s  ETA 2 s (budget)
    """

    def __init__(self, total, start, enabled=True, log_every=None, y_norm_sq=1.0, threshold=None,
                 stream=None, tty=None):
        self.total, self.start = int(total), int(start)
        self.ysq = float(y_norm_sq) if y_norm_sq and y_norm_sq > 0 else 1.0
        self.threshold = threshold
        self.stream = sys.stderr if stream is None else stream
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.every = log_every
        self.bar = None
        if enabled and tty and log_every is None:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=self.total, initial=self.start, unit="step", leave=False,
                                file=self.stream)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                pass
        if self.every is None:
            self.every = ("seconds", LOG_SECONDS_DEFAULT)
        self.lines = enabled and self.bar is None
        self.t0 = time.perf_counter()
        self.last_log = self.t0
        self.last_t = self.start
        self.hist = []            # (t, excess) of the last points, for the contraction estimate
        self.done_line = False

    def _to_threshold(self, t, ex):
        """Estimated steps until the threshold, from the contraction over the recent points."""
        if self.threshold is None or not (ex > self.threshold > 0) or len(self.hist) < 2:
            return None
        (t1, e1), (t2, e2) = self.hist[0], self.hist[-1]
        if t2 <= t1 or not (e2 > 0 and e1 > e2):
            return None
        per_step = math.log(e2 / e1) / (t2 - t1)
        return math.log(self.threshold / ex) / per_step

    def describe(self, t, ex, final=False):
        """One log line for state t with excess ``ex`` (l - OPT)."""
        el = time.perf_counter() - self.t0
        done = t - self.start
        rate = done / el if el > 0 and done > 0 else float("nan")
        pct = f" ({100.0 * t / self.total:.0f}%)" if self.total else ""
        line = (f"step {t}/{self.total}{pct}  l - OPT {ex:.3e} = {ex / self.ysq:.3e} ||Y||^2  "
                f"{rate:.4g} steps/s")
        if final:
            return line + f"  done in {el:.3g} s"
        left = self._to_threshold(t, ex)
        budget_eta = (self.total - t) / rate if rate == rate and rate > 0 else float("nan")
        if left is not None and left < self.total - t and rate == rate:
            line += f"  ETA {left / rate:.3g} s (to tol, ~{left:.0f} steps)"
        elif budget_eta == budget_eta:
            line += f"  ETA {budget_eta:.3g} s (budget)"
        return line

    def update(self, t, ex, stop=False):
        """State t has excess ``ex``; ``stop``: the loop ends at it."""
        if not self.hist or t - self.hist[-1][0] >= max(1, (t - self.start) // 20):
            self.hist.append((t, float(ex)))
            self.hist = self.hist[-8:]
        if self.bar is not None:
            self.bar.n = t
            post = f"rel. excess {ex / self.ysq:.2e}"
            left = self._to_threshold(t, ex)
            if left is not None:
                post += f", ~{left:.0f} steps to tol"
            self.bar.set_postfix_str(post, refresh=False)
            if stop:
                self.bar.refresh()
            else:
                self.bar.update(0)   # redraws at most every tqdm mininterval
            return
        if not self.lines:
            return
        now = time.perf_counter()
        kind, n = self.every
        due = (t - self.last_t >= n) if kind == "steps" else (now - self.last_log >= n)
        if stop:
            print(self.describe(t, ex, final=True), file=self.stream, flush=True)
            self.done_line = True
        elif due and t > self.start:
            print(self.describe(t, ex), file=self.stream, flush=True)
            self.last_log, self.last_t = now, t

    def close(self):
        if self.bar is not None:
            self.bar.close()
