"""Full-batch gradient descent: one step, and the training loop for K >= 1 members.

GD is DH eq. (2) / HXP eq. (3): W_i <- W_i - eta dl/dW_i with eta in the
paper's W-space units. It runs on the reduced data in normalized storage
(see ``engine.network`` and ``engine.kernels.numpy_backend``), which is the
same trajectory exactly.

One loop trains a Network (one member) or an Ensemble (K members stepped
together by ``engine.stepper.Stepper``): each member stops on its own
(tolerance reached, or diverged), records its history and diagnostics, and
the run is checkpointed and resumed bit for bit either way. A Network whose
loss explodes raises DivergenceError; an ensemble member is marked diverged
instead and the others go on.

    train(...)            validate (``_fresh_run`` / ``_resumed_run``), then ``_Loop(run).run()``
    gd_step(net, ...)     one step, keeping the bound stepper between calls
"""
from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from . import checkpoint as ckpt
from . import diagnostics, kernels, theory
from ._validate import nonneg_int, positive_float, positive_int
from .errors import (BottleneckWarning, CheckpointWarning, DivergenceError, EngineWarning,  # noqa: F401
                     LearningRateWarning)
from .network import Ensemble, Network, Storage, check_net_prob
from .problem import Problem
from .recording import (EnsembleResult, Progress, TrainResult, fit_rate, log_every_value, make_recorders,  # noqa: F401
                        records_of)
from . import stepper
from .stepper import Stepper

__all__ = ["gd_step", "train", "stable_lr", "stable_lrs", "LR_RULES", "TrainResult", "DivergenceError", "fit_rate",
           "stop_threshold", "EngineWarning", "LearningRateWarning", "CheckpointWarning", "BottleneckWarning"]

# Growth of the loss, relative to max(l(0), ||Y||_F^2 / 2), treated as divergence.
# GD below the stability bound never increases the loss by more than a small
# factor; 1e8 is far outside that, yet far below float64 overflow, so the
# state at detection still has finite weights.
EXPLODE_FACTOR = 1e8

# Steps between the copies of a checked state kept for divergence (one copy of
# each member's weights; replaying at most this many steps on divergence).
SNAPSHOT_EVERY = 64

# lr above (1 + LR_WARN_RTOL) x the bound is warned about; the slack keeps
# lr = "theory" and rates computed from it in another order from warning.
LR_WARN_RTOL = 1e-9

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
    check_net_prob(net, prob)
    lmax = diagnostics.gram_lambda_max(net, prob)
    if not (np.isfinite(lmax) and lmax > 0):
        raise ValueError(f"lr: 'stable' needs lambda_max(P(0)) > 0 and finite, got {lmax!r} "
                         "(an all-zero layer makes P(0) = 0: give a numeric lr)")
    return 1.0 / lmax


def stable_lrs(ens, prob) -> np.ndarray:
    """(K,) each member's ``stable_lr``: 1 / lambda_max(P_k(0)) (DH eq. 7) of the member in
    its current state (call before training). ``lr="stable"`` uses these, one per member;
    for one shared rate pass ``lr=stable_lrs(ens, prob).min()`` (the largest rate stable,
    in the linearized sense, for every member)."""
    if not isinstance(ens, Ensemble):
        raise TypeError(f"ens: must be an engine Ensemble, got {type(ens).__name__}")
    return np.array([stable_lr(ens.view(k), prob) for k in range(ens.size)])


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
        check_net_prob(net, prob)
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
    if not isinstance(net, Network) or net._gd is None:
        return None
    cache = net._gd
    name, cprob, st, probe = cache
    if cprob is not prob or name != backend or st.version != net._version:
        return None
    if not net._probe_matches(probe):
        return None
    return st


def train(net=None, prob: Problem = None, lr=None, steps=None, tol=None, record_every=None, backend=None,
          progress: bool = False, callback=None, record=None, *, atol=None, log_every=None,
          checkpoint=None, checkpoint_every=None, resume=None, overwrite: bool = False):
    """Run full-batch GD for up to ``steps`` steps.

    Parameters
    ----------
    net : Network or Ensemble   trained in place
    prob : Problem
    lr : float, "theory" or "stable" (default "theory"; an Ensemble: also one float per member)
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
    record_every : int    record l(t) every this many steps (default 1; the final state always)
    backend : str         "auto" (default), "numpy", "numba" or "cblas"
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

    An ``engine.Ensemble`` as ``net`` trains all its members together (the
    stepper runs them in one call where that pays, see ``engine.stepper``):
    ``lr`` may then be one rate per member ("theory" and "stable" are per
    member), each member stops on its own (``tol`` reached) and a member whose
    loss diverges is put back to its last finite state below the threshold and
    marked ``diverged`` instead of raising, so one bad seed does not cost the
    others' results. ``record`` is recorded per member, ``callback(t, excess,
    ens)`` gets the (K,) excesses (nan for members not stepped at t; True stops
    every member after step t), and checkpoint / resume work as for a network.
    Results are those of K separate runs (bitwise with a backend that steps
    members one by one). Returns an ``EnsembleResult`` then.

    Arguments left at None on resume take the checkpoint's values.

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
    if not isinstance(overwrite, (bool, np.bool_)):
        raise TypeError(f"overwrite: must be True or False, got {overwrite!r}")
    if resume is None and checkpoint is not None and not overwrite:
        path = _path_arg(checkpoint, "checkpoint")
        if os.path.isfile(path):                     # this run, interrupted: continue it (or refuse)
            lr = _check_same_run(ckpt.load(path), net, prob, lr, tol, atol, record_every, record, backend)
            return train(net, prob, lr=lr, steps=steps, tol=tol, atol=atol, record_every=record_every,
                         backend=backend, progress=progress, callback=callback, record=record,
                         log_every=log_every, checkpoint=path, checkpoint_every=checkpoint_every, resume=path)
    given = dict(lr=lr, steps=steps, tol=tol, atol=atol, record_every=record_every, backend=backend,
                 record=record)
    options = dict(callback=callback, progress=progress, log_every=log_every, checkpoint=checkpoint,
                   checkpoint_every=checkpoint_every)
    if resume is None:
        run = _fresh_run(net, prob, **given, **options)
    else:
        run = _resumed_run(net, prob, resume, **given, **options)
    loop = _Loop(run)
    if run.saved is None:
        _warn_fresh(run)
    return loop.run()


# -- what one run is told ------------------------------------------------------------

@dataclass
class _Run:
    """One run's settings, validated (and on resume merged with the checkpoint's)."""

    model: object                # the Network or Ensemble trained in place
    prob: Problem
    lrs: list                    # W-space learning rate per member
    lr_rule: str                 # "theory", "stable" or None (numbers given)
    steps: int
    threshold: float             # absolute stop threshold on l - OPT, or None
    record_every: int
    backend: str
    record: dict                 # {name: stride} or None
    callback: object
    progress: bool
    log_every: tuple
    checkpoint: str
    checkpoint_every: int
    saved: object = None         # the Checkpoint resumed, or None


def _members(model) -> list:
    """The members of a model as Networks: the Network itself, or views of the ensemble's."""
    return [model] if isinstance(model, Network) else [model.view(k) for k in range(model.size)]


def _fresh_run(net, prob, *, lr, steps, tol, atol, record_every, backend, record, **options) -> _Run:
    threshold = stop_threshold(prob, tol, atol)
    check_net_prob(net, prob, ensemble_ok=True)
    lrs, rule = _learning_rates(net, prob, "theory" if lr is None else lr)
    return _Run(net, prob, lrs, rule, nonneg_int(1000 if steps is None else steps, "steps"), threshold,
                positive_int(1 if record_every is None else record_every, "record_every"),
                "auto" if backend is None else backend, record or None, **_options(**options))


def _options(callback, progress, log_every, checkpoint, checkpoint_every) -> dict:
    if callback is not None and not callable(callback):
        raise TypeError("callback: must be callable")
    if checkpoint is not None:
        checkpoint = _path_arg(checkpoint, "checkpoint")
        ckpt.check_writable(checkpoint)
        if checkpoint_every is not None:
            checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    elif checkpoint_every is not None:
        raise ValueError("checkpoint_every: needs checkpoint=<path> to write to")
    return dict(callback=callback, progress=bool(progress), log_every=log_every_value(log_every),
                checkpoint=checkpoint, checkpoint_every=checkpoint_every)


def _resumed_run(net, prob, resume, *, lr, steps, tol, atol, record_every, backend, record, checkpoint,
                 checkpoint_every, **options) -> _Run:
    """The run saved in the checkpoint ``resume``; arguments given must agree with it (None: the saved value)."""
    if net is not None and not isinstance(net, (Network, Ensemble)):
        raise TypeError(f"net: must be an engine Network, an Ensemble or None, got {type(net).__name__}")
    if prob is not None and not isinstance(prob, Problem):
        raise TypeError(f"prob: must be an engine.Problem, got {type(prob).__name__}")
    path = _path_arg(resume, "resume")
    saved = ckpt.load(path)
    if prob is None:
        prob = saved.problem()
    loaded = saved.network(prob)
    if net is not None:
        _check_adoptable(net, loaded)   # the given net is changed only once all checks passed
    meta = saved.meta
    lrs = _same_lrs_as_saved(lr, saved, loaded, prob)
    threshold = _same_threshold_as_saved(tol, atol, meta["tol"], prob)
    if record_every is not None and positive_int(record_every, "record_every") != meta["record_every"]:
        raise ValueError(f"record_every: the checkpoint was trained with record_every={meta['record_every']!r}; "
                         f"got {record_every!r} (resuming with a different value would not continue the same run)")
    if record is not None and record != meta["record"]:
        raise ValueError(f"record: the checkpoint recorded {meta['record']!r}; got {record!r} "
                         "(a different record= would not continue the same run)")
    if steps is None:
        steps = meta["steps"]
    elif (isinstance(steps, numbers.Integral) and not isinstance(steps, (bool, np.bool_))
          and int(steps) < saved.step):
        raise ValueError(f"steps: the checkpoint is already at step {saved.step}, got steps={steps}")
    backend = meta["backend"] if backend is None else backend
    if checkpoint is None:
        checkpoint = path
        if checkpoint_every is None:
            checkpoint_every = meta["checkpoint_every"]
    run = _Run(loaded, prob, lrs, None, nonneg_int(steps, "steps"), threshold, meta["record_every"], backend,
               meta["record"], **_options(checkpoint=checkpoint, checkpoint_every=checkpoint_every, **options),
               saved=saved)
    kernels.get(backend, shape=(loaded.widths, prob.rank))   # refuse an unknown/unavailable one first
    if net is not None:
        net._store = loaded._store       # the given network (or ensemble) takes the checkpoint's state
        if isinstance(net, Network):
            net._k, net._gd = loaded._k, None
        run.model = net
    return run


def _learning_rates(model, prob, lr):
    """(per-member W-space rates, rule): a number, one per member, "theory" or "stable"."""
    members = _members(model)
    one = isinstance(model, Network)
    if isinstance(lr, str):
        if lr not in LR_RULES:
            many = "" if one else ", a sequence of K of them"
            raise ValueError(f"lr: must be a positive number{many}, 'theory' or 'stable', got {lr!r}")
        if lr == "stable":
            return [stable_lr(n, prob) for n in members], lr   # above the theorem's bound on purpose
        lrs = []
        for k, n in enumerate(members):
            st = theory.theorem_setting(n).require("lr='theory'" if one else f"lr='theory' (member {k})")
            lrs.append(theory.lr_bound(st, prob))
        return lrs, lr
    if one or np.ndim(lr) == 0:
        return [positive_float(lr, "lr")] * len(members), None
    vals = list(lr)
    if len(vals) != len(members):
        raise ValueError(f"lr: a sequence of learning rates needs one per member (K = {len(members)}), "
                         f"got {len(vals)}")
    return [positive_float(v, f"lr[{k}]") for k, v in enumerate(vals)], None


def _same_lrs_as_saved(lr, saved, model, prob):
    """On resume: the saved rate(s), or refuse a given lr that differs from them."""
    theirs = [saved.meta["lr"]] if saved.members is None else list(saved.meta["lr"])
    if lr is None:
        return theirs
    if isinstance(lr, str) and lr == "stable":
        raise ValueError(f"lr: 'stable' is 1 / lambda_max(P(0)) of the network at step 0, which a "
                         f"resumed run no longer holds; omit lr (the checkpoint's lr = {saved.meta['lr']!r} "
                         "is used) or pass that number")
    if isinstance(lr, str) and lr == "theory":
        mine = [_safe_bound(n, prob) for n in _members(model)]
    else:
        mine = _learning_rates(model, prob, lr)[0]
    if mine != theirs:
        raise ValueError(f"lr: the checkpoint was trained with lr={saved.meta['lr']!r}; got {lr!r} "
                         "(resuming with a different value would not continue the same run)")
    return theirs


def _same_threshold_as_saved(tol, atol, saved_thr, prob):
    """On resume: the saved absolute threshold, or refuse a tol/atol giving another one.

    Checkpoints store the absolute threshold under "tol" (older ones stored
    the absolute ``tol`` of the time under the same key, so they resume as
    they were written)."""
    if tol is None and atol is None:
        return saved_thr
    thr = stop_threshold(prob, tol, atol)
    if thr != saved_thr:
        name = "tol" if tol is not None else "atol"
        shown = "none (every step)" if saved_thr is None else f"l - OPT <= {saved_thr!r}"
        raise ValueError(f"{name}: the checkpoint was trained with the stop threshold {shown}; "
                         f"tol={tol!r}, atol={atol!r} give {'none' if thr is None else repr(thr)} "
                         "(resuming with a different value would not continue the same run)")
    return saved_thr


def _check_same_run(saved, net, prob, lr, tol, atol, record_every, record, backend):
    """Refuse (CheckpointMismatch naming ``checkpoint`` and what differs) unless the existing
    checkpoint ``saved`` holds the run these arguments describe. Returns ``lr`` for the resumed
    call ("stable" resolved on the fresh network: the state at step 0)."""
    check_net_prob(net, prob, ensemble_ok=True)
    members = _members(net)
    if isinstance(lr, str) and lr == "stable":
        lr = [stable_lr(n, prob) for n in members] if isinstance(net, Ensemble) else stable_lr(net, prob)
    m, nm = saved.meta, saved.meta["net"]
    diffs = []

    def cmp(name, mine, theirs):
        if mine != theirs:
            diffs.append(f"{name} {mine!r} (checkpoint: {theirs!r})")

    one = isinstance(net, Network)
    cmp("members", None if one else net.size, nm.get("members"))
    cmp("widths", list(net.widths), list(nm["widths"]))
    cmp("dtype", net.dtype.str, nm["dtype"])
    inits = [n.init for n in members]
    cmp("init", inits[0] if one else inits, nm["init"])
    seeds = [n.seed if isinstance(n.seed, (int, type(None))) else repr(n.seed) for n in members]
    if any(s is None or isinstance(s, str) for s in seeds):
        diffs.append("seed: this network has no integer seed, so it cannot be told to be the "
                     "checkpoint's run")
    else:
        cmp("seed", seeds[0] if one else seeds, nm.get("seed"))
    sig = [None if n.sigma is None else n.sigma.tolist() for n in members]
    theirs = saved.arrays.get("sigma")
    theirs = [None] * len(members) if theirs is None else [None if np.isnan(r).all() else r.tolist()
                                                           for r in theirs.reshape(len(members), -1)]
    cmp("sigma", sig[0] if one else sig, theirs[0] if one else theirs)
    if prob.fingerprint != m["problem"]:
        diffs.append("data (problem fingerprint differs)")
    lr_v = "theory" if lr is None else lr
    if isinstance(lr_v, str) and lr_v == "theory":
        lr_v = [_safe_bound(n, prob) for n in members]
    elif not isinstance(lr_v, str):
        lr_v = [lr_v] * len(members) if np.ndim(lr_v) == 0 else list(lr_v)
    cmp("lr", lr_v[0] if one and isinstance(lr_v, list) else lr_v, m["lr"])
    # checkpoints store the absolute stop threshold under "tol"
    cmp("stop threshold (tol/atol)", stop_threshold(prob, tol, atol), m["tol"])
    cmp("record_every", 1 if record_every is None else record_every, m["record_every"])
    cmp("record", record or None, m["record"])
    name = stepper.choose(net, prob, "auto" if backend is None else backend)[1].name
    if backend is None and name != m["backend"]:
        diffs.append(f"backend 'auto' -> {name!r} (checkpoint: {m['backend']!r})")
    elif backend is not None:
        cmp("backend", name, m["backend"])
    if diffs:
        raise ckpt.CheckpointMismatch(
            f"checkpoint: {saved.path!r} already exists and holds another run (step {saved.step}): "
            + "; ".join(diffs) + ". Pass overwrite=True (CLI: --overwrite) to replace it, "
            "another path, or resume=<path> to continue it")
    return lr


def _check_adoptable(net, loaded):
    """Refuse (ValueError naming ``net``) a given model that cannot take the checkpoint's state."""
    kind = "an Ensemble of %d" if isinstance(loaded, Ensemble) else "a Network"
    ok = (type(net) is type(loaded) and net.widths == loaded.widths and net.dtype == loaded.dtype
          and (isinstance(net, Network) or net.size == loaded.size))
    if not ok:
        raise ValueError(
            f"net: has widths {list(net.widths)} and dtype {net.dtype}, but the checkpoint holds "
            f"{kind % getattr(loaded, 'size', 1) if '%' in kind else kind} of widths {list(loaded.widths)} "
            f"and dtype {loaded.dtype}; pass net=None to get the checkpoint's network")

def _path_arg(p, name):
    if not isinstance(p, (str, os.PathLike)):
        raise TypeError(f"{name}: must be a file path, got {type(p).__name__}")
    p = os.fspath(p)
    if not p:
        raise ValueError(f"{name}: must be a non-empty file path")
    return p

# -- the loop --------------------------------------------------------------------------

class _Loop:
    """One training run of K >= 1 members: stepping, stopping, divergence, recording, checkpoints.

    State t of every running member is checked (its excess computed, nothing
    written) before its step at the start, every SNAPSHOT_EVERY steps and at
    each checkpoint: only a finite state below the divergence threshold becomes
    a snapshot or a checkpoint. A member whose loss becomes non-finite or
    exceeds its threshold is put back to its last state below it (the snapshot,
    replayed: GD is deterministic) -- a Network then raises DivergenceError, an
    ensemble member is marked diverged and the others go on.
    """

    def __init__(self, run: _Run):
        self.cfg = run
        model, prob = run.model, run.prob
        self.single = isinstance(model, Network)
        self.nets = _members(model)
        K = len(self.nets)
        self.st = Stepper(model, prob, run.lrs[0] if self.single else run.lrs, run.backend)
        saved = run.saved
        self.start = None        # the model at step 0, for diagnostics that refer to it ("distance", "lazy")
        if run.record:
            if saved is not None:
                self.start = saved.start_network(prob)
            elif run.checkpoint is not None:
                self.start = _copy(model)
        starts = self.nets if self.start is None else _members(self.start)
        self.recorders = make_recorders(run.record, starts, prob, run.lrs)
        self.opt, self.ysq = prob.opt, prob.y_norm_sq
        self.lo = -1.0 if run.threshold is None else run.threshold
        self.limit = run.steps
        self.t, self.prev_wall = 0, 0.0
        self.hist = [([], []) for _ in range(K)]
        self.hi = [math.inf] * K
        self.running = list(range(K))
        self.converged, self.diverged, self.stop_t = [False] * K, [False] * K, [0] * K
        self.messages = {}
        self.snaps = [None] * K
        if saved is not None:
            self._restore(saved)
        self.t_resumed = self.t

    # -- the run -------------------------------------------------------------------
    def run(self):
        run = self.cfg
        bar = (Progress(self.limit, self.t, True, run.log_every, self.ysq, run.threshold)
               if run.progress else None)
        self.t0 = time.perf_counter()
        every = run.checkpoint_every
        try:
            while self.running:
                t = self.t
                due = every is not None and self.t_resumed < t < self.limit and t % every == 0
                if t < self.limit and (due or t == self.t_resumed or t % SNAPSHOT_EVERY == 0):
                    self._check(t)
                    if due:
                        self._save()
                if self.running and self._step(t, bar):
                    break
                self.t = t + 1
        finally:
            if bar is not None:
                bar.close()
        return self._result()

    def _check(self, t):
        """Check state t of every running member before its step: stop the diverged, snapshot the rest."""
        js = self.running
        ex = self.st.excess_members(js)
        self.st.reset()   # the next step rebuilds its chain (bit-identical, see kernels)
        for j, e in zip(js, ex):
            if t > 0 and not (math.isfinite(e) and e <= self.hi[j]):
                self._diverge(j, t, e)
            else:
                self._snapshot(j, t)
        self.running = [j for j in js if not self.diverged[j]]

    def _step(self, t, bar) -> bool:
        """Step t of every running member (diagnostics of state t first); True when none runs on."""
        run, js = self.cfg, self.running
        for j in js:                      # diagnostics see state t, so they run before step t is applied
            for rec in self.recorders[j]:
                if t % rec.stride == 0:
                    rec(t, self.nets[j])
        if t < self.limit:
            ex = self.st.step_members(js, self.lo, self.hi)[0]
        else:
            ex = self.st.excess_members(js)
        if t == 0:
            for j, e in zip(js, ex):
                base = max(self.opt + e, 0.5 * self.ysq)
                self.hi[j] = EXPLODE_FACTOR * base if base > 0 else math.inf
        good, stopping = [], []
        for j, e in zip(js, ex):
            if not (math.isfinite(e) and e <= self.hi[j]):
                self._diverge(j, t, e)
                continue
            if run.threshold is not None and e <= run.threshold:
                self.converged[j] = True
            good.append((j, e))
            if self.converged[j] or t >= self.limit:
                stopping.append(j)
        going = [j for j, _ in good if j not in stopping]
        if not going and run.checkpoint is not None:
            self.limit = t
            self._save()                  # the final state, before its (recomputable) records
        for j in stopping:
            self.stop_t[j] = t
            for rec in self.recorders[j]:
                if not rec.t or rec.t[-1] != t:
                    rec(t, self.nets[j])  # the final state (not stepped) is always recorded
        due = t % run.record_every == 0
        for j, e in good:
            if due or j in stopping:
                self.hist[j][0].append(t)
                self.hist[j][1].append(e)
        if going and due and run.callback is not None:
            self._callback(t, good)
        if bar is not None and (good or not going):
            bar.update(t, max(e for _, e in good) if good else float("nan"), not going)
        self.running = going
        return not going

    def _callback(self, t, good):
        """callback(t, excess, net) after step t (an ensemble: excess (K,), nan for members
        not stepped); True stops every member after this step (state t+1 is then final)."""
        if self.single:
            stop = self.cfg.callback(t, good[0][1], self.cfg.model)
        else:
            ex = np.full(len(self.nets), np.nan)
            for j, e in good:
                ex[j] = e
            stop = self.cfg.callback(t, ex, self.cfg.model)
        if stop:
            self.limit = t + 1            # step t is already applied; record state t+1 and stop
        # the callback may have edited the weights in place, which a backend
        # carrying the next step's chain (single-pass) cannot see
        self.st.reset()

    # -- divergence ------------------------------------------------------------------
    def _diverge(self, j, t, e):
        good = self._rewind(j, t - 1)
        why = "is not finite" if not math.isfinite(e) else f"exceeded {EXPLODE_FACTOR:g} x its initial scale"
        # an lr within the theorem's bound is never called too large
        head = (f"GD diverged at step {t}: loss {self.opt + e:.4g} {why}; "
                f"{_lr_verdict(self.nets[j], self.cfg.prob, self.cfg.lrs[j])}")
        self.diverged[j], self.stop_t[j] = True, t
        if self.single:
            raise DivergenceError(_divergence_text(head, good), result=self._member_result(0, t, predict=False),
                                  net=self.cfg.model, step=t, net_step=good)
        self.messages[j] = f"{head}{_KEPT}{good}"

    def _snapshot(self, j, t):
        """Keep a copy of member j's (checked) state t and its schedule state."""
        layers, old = self.nets[j]._layers, self.snaps[j]
        if old is None or len(old[1]) != len(layers):
            bufs = [a.copy() for a in layers]
        else:
            bufs = old[1]
            for dst, src in zip(bufs, layers):
                dst[...] = src
        self.snaps[j] = (t, bufs, self.st.schedule_state(j))

    def _rewind(self, j, target):
        """Put state ``target`` into member j: restore its snapshot, replay GD from it.

        Returns the step of the state now held (``target``, or the current one when
        there is no earlier snapshot, i.e. the very first state was bad).
        """
        snap = self.snaps[j]
        if snap is None or snap[0] > target or target < 0:
            return target + 1
        s, bufs, sched = snap
        for dst, src in zip(self.nets[j]._layers, bufs):
            dst[...] = src
        self.st.reset([j])
        self.st.set_schedule_state(j, sched)
        for _ in range(s, target):
            self.st.step_members([j])
        self.st.reset([j])
        return target

    # -- checkpoints -----------------------------------------------------------------
    def _save(self):
        run, st, t = self.cfg, self.st, self.t
        settings = {"tol": run.threshold, "steps": int(self.limit), "record_every": run.record_every,
                    "record": run.record, "backend": st.name, "checkpoint_every": run.checkpoint_every,
                    "wall_time": self.prev_wall + time.perf_counter() - self.t0}
        if self.single:
            settings.update(lr=run.lrs[0], hi=repr(float(self.hi[0])), backend_state=st.schedule_state(0))
        else:
            settings.update(lr=list(run.lrs), hi=[repr(float(h)) for h in self.hi],
                            backend_state=[st.schedule_state(j) for j in range(len(self.nets))],
                            members=[self._status(j) for j in range(len(self.nets))])
        try:
            ckpt.save_run(run.checkpoint, model=run.model, prob=run.prob, start=self.start,
                          recorders=self.recorders, histories=self.hist, t=t, settings=settings)
        except (OSError, ckpt.CheckpointError) as exc:
            warnings.warn(f"checkpoint: writing {run.checkpoint!r} at step {t} failed "
                          f"({type(exc).__name__}: {exc}); training continues and the previous "
                          "checkpoint file, if any, is intact", CheckpointWarning, stacklevel=4)

    def _status(self, j) -> dict:
        status = ("diverged" if self.diverged[j] else "running" if j in self.running
                  else "converged" if self.converged[j] else "stopped")
        return {"status": status, "stop": int(self.stop_t[j]), "message": self.messages.get(j)}

    def _restore(self, saved):
        """Continue the run ``saved`` holds: histories, thresholds, recorders, member states."""
        meta = saved.meta
        self.t = saved.step
        self.prev_wall = float(meta["wall_time"])
        self.hist = [(ts.tolist(), es.tolist()) for ts, es in saved.histories()]
        ckpt.restore_recorders(self.recorders, saved)
        same = meta.get("backend") == self.st.name
        if self.single:
            self.hi = [float(meta["hi"])]
            if same:
                self.st.set_schedule_state(0, meta.get("backend_state"))
            return
        self.hi = [float(h) for h in meta["hi"]]
        for j, m in enumerate(meta["members"]):
            self.diverged[j] = m["status"] == "diverged"
            self.converged[j] = m["status"] == "converged"
            self.stop_t[j] = int(m["stop"])
            if m["message"] is not None:
                self.messages[j] = m["message"]
            if same:
                self.st.set_schedule_state(j, meta["backend_state"][j])
        self.running = [j for j, m in enumerate(meta["members"]) if m["status"] == "running"]

    # -- results ---------------------------------------------------------------------
    def _wall(self) -> float:
        return self.prev_wall + time.perf_counter() - self.t0

    def _member_result(self, j, steps, predict=True) -> TrainResult:
        """Member j's history as a TrainResult (wall time without its recording)."""
        run = self.cfg
        t = np.asarray(self.hist[j][0], dtype=np.int64)
        ex = np.asarray(self.hist[j][1], dtype=np.float64)
        records, seconds = records_of(self.recorders[j])
        return TrainResult(t=t, loss=self.opt + ex, excess=ex, steps=int(steps), net=self.nets[j],
                           converged=self.converged[j], rate=fit_rate(t, ex),
                           predicted=self._predicted(j) if predict else float("nan"), lr=run.lrs[j],
                           wall_time=self._wall() - sum(seconds.values()), backend=self.st.name,
                           opt=self.opt, records=records, record_time=seconds)

    def _predicted(self, j) -> float:
        """The theorem's contraction factor for member j's init and lr (nan where none applies)."""
        setting = theory.theorem_setting(self.nets[j])
        if self.diverged[j] or not setting.applies:
            return float("nan")
        return theory.predicted_factor(setting, self.cfg.prob, lr=self.cfg.lrs[j])

    def _result(self):
        if self.single:
            return self._member_result(0, self.t)
        K = len(self.nets)
        hist = [(np.asarray(ts, dtype=np.int64), np.asarray(es, dtype=np.float64)) for ts, es in self.hist]
        grid = np.unique(np.concatenate([h[0] for h in hist]))
        excess = np.full((K, grid.size), np.nan)
        for k, (ts, es) in enumerate(hist):
            excess[k, np.searchsorted(grid, ts)] = es
        records, seconds = zip(*(records_of(recs) for recs in self.recorders))
        total = {name: sum(s[name] for s in seconds) for name in seconds[0]}
        return EnsembleResult(
            t=grid, loss=self.opt + excess, excess=excess, steps=np.array(self.stop_t, dtype=np.int64),
            converged=np.array(self.converged), diverged=np.array(self.diverged),
            rate=np.array([fit_rate(ts, es) for ts, es in hist]),
            predicted=np.array([self._predicted(k) for k in range(K)]), lr=np.array(self.cfg.lrs),
            messages=dict(self.messages), wall_time=self._wall() - sum(total.values()), backend=self.st.name,
            schedule=self.st.schedule, opt=self.opt, ensemble=self.cfg.model, records=list(records),
            record_time=total, _hist=hist)


def _copy(model):
    """A deep copy of a Network or an Ensemble (binding included)."""
    if isinstance(model, Network):
        return model.copy()
    return Ensemble(Storage.collect([(model._store, k) for k in range(model.size)]))


# -- divergence messages -----------------------------------------------------------------

_KEPT = "; weights kept from step "


def _divergence_text(head, good) -> str:
    return (f"{head}. The history and the network at step {good} (the last finite state below the "
            "threshold) are attached (.result, .net).")


def separate_run_error(message: str) -> str:
    """The DivergenceError message a separate run of a diverged ensemble member raises, from
    the member's ``EnsembleResult.messages`` entry (same head, same step kept)."""
    head, _, good = message.rpartition(_KEPT)
    return _divergence_text(head, good)


# -- learning-rate warnings and verdicts -----------------------------------------------

def _warn_fresh(run):
    """A fresh run's warnings: numeric rates above the theorem's bound, a bottleneck layer."""
    if run.lr_rule is None:      # "theory" is the bound; "stable" is above it on purpose
        _warn_above_bound(run.model, run.prob, run.lrs)
    warn_bottleneck(run.model.widths, run.prob, stacklevel=4)


def _warn_above_bound(model, prob, lrs):
    """One LearningRateWarning naming the rate (a Network) or the members (an Ensemble) above the bound."""
    over = []
    for k, (net, lr) in enumerate(zip(_members(model), lrs)):
        bound = _safe_bound(net, prob)
        if bound is not None and lr > bound * (1.0 + LR_WARN_RTOL):
            over.append((k, net, lr, bound))
    if not over:
        return
    if isinstance(model, Network):
        _, net, lr, bound = over[0]
        st = theory.theorem_setting(net)
        rule = f"d_out / ({'3' if st.init == 'gaussian' else '2'} L ||X||^2)"
        if st.lr_scale != 1.0:
            rule += (f" x sigma^2 / c^2 = x {st.lr_scale:.4g} for sigma = {st.sigma:.4g}, "
                     f"c = alpha / alpha_default = {st.output_scale:.4g}")
        msg = (f"lr: {lr:.4g} exceeds the theorem's bound {bound:.4g} for {net.init} init "
               f"({st.theorem}: {rule}) by a factor {lr / bound:.3g}; the convergence guarantee does not "
               "apply and GD may diverge")
    else:
        shown = ", ".join(f"{k} (x{lr / b:.3g})" for k, _, lr, b in over[:8]) + (", ..." if len(over) > 8 else "")
        msg = (f"lr: exceeds the theorem's bound (theory.lr_bound) for members {shown}; "
               "the convergence guarantee does not apply to them and GD may diverge")
    warnings.warn(msg, LearningRateWarning, stacklevel=4)   # the caller of train()


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

def _safe_bound(net, prob):
    """The theorem's W-space bound for ``net`` (``theory.lr_bound``), or None if no theorem applies."""
    st = theory.theorem_setting(net)
    return theory.lr_bound(st, prob) if st.applies else None

def _lr_verdict(net, prob, lr) -> str:
    """What the divergence message says about ``lr`` for network ``net`` (an ensemble member's
    view too): never that an lr within the bound is too large."""
    bound = _safe_bound(net, prob)
    if bound is None:
        return f"lr = {lr:.4g} is too large for this network (no theorem gives a bound for it)"
    if lr > bound * (1.0 + LR_WARN_RTOL):
        return (f"lr = {lr:.4g} is too large: {lr / bound:.3g} x the theorem's bound "
                f"lr <= {bound:.4g} for this init")
    st = theory.theorem_setting(net)
    where = "DH eq. 4" if st.init == "gaussian" else "HXP eq. 5, m >= max{d_x, d_y}"
    if theory.width_condition_met(net, prob):
        cond = (f"the width condition ({where}) holds only in shape (with its unknown "
                "universal constant set to 1)")
    else:
        cond = f"this network does not meet the width condition ({where})"
    return (f"lr = {lr:.4g} is within the theorem's bound lr <= {bound:.4g} for this init, but "
            f"{st.theorem} guarantees convergence only for wide enough networks and {cond}; "
            "a smaller lr may still converge")


# -- stopping ---------------------------------------------------------------------------

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
