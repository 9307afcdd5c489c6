"""Runs of a sweep that differ only in seed, init or learning rate, trained as one ensemble.

A sweep's runs of one cell -- same data, widths, step budget, tolerance -- differ only in
the seed (and, for a grid over inits, the init and its lr rule). ``run_batch`` trains such a
group as one ``engine.Ensemble`` (one ``engine.train`` call, the members stepped together by
``engine.stepper``) and returns one payload per member that is the payload ``run_config``
gives for that config alone, field for field and bit for bit:

* each member's network is drawn by its own init call, its lr resolved on it alone ("theory"
  from its init, "stable" from its own P(0)), as ``runs.prepare`` does for a single run;
* each member stops on its own (tolerance) or is marked diverged with the history a separate
  run's DivergenceError carries, and the same error text (``train.separate_run_error``);
* only where the members are stepped by the C kernel (``cblas``, alone or the members kernel
  ``cblas_backend.Members``), whose bits are a separate ``cblas`` run's whatever runs beside
  it, and where a separate run of each member would run ``cblas`` too. Anything else
  (another backend, ``stop_at_escape``: the callback stops every member) runs member by member.

Stored fields that differ from separate runs: ``wall_time`` (the batch's training seconds
divided by its size: the member's share) and ``finished_utc``; every other field and the
curve are identical.

Threads: a batch run serially (``workers=0``) may use the threads of the K runs it stands for,
K x threads_per_run, up to the cores (nothing runs beside it; ``batch_threads``); on a cluster a
batch is one task on one worker and keeps that worker's threads_per_run. A batch gains where
its members' steps run in parallel (serially, on cores a one-run-at-a-time sweep leaves idle)
or where per-step call overhead weighs (tiny networks); on one thread the C members kernel
steps K networks in about the time of K separate steps.

Whether a group is batched is measured, not ruled (``decide``): one GD step of every member
is timed both ways -- K steppers one after another under the per-run thread limit, as K
separate runs step, and one stepper of the ensemble under the batch's -- on Gaussian networks
of the group's shape, and the group is batched when the ensemble step is at least BATCH_GAIN
times faster. Measurements are cached per process and class (hidden width and depth rounded
to powers of two, data shape, K, backend, threads): a few ms for small networks, up to
~0.3 s for the largest of the default phase grid.
"""
from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np

from . import kernels, stepper
from .errors import LearningRateWarning
from .network import Ensemble
from .runs import (_error_text, _run_threads, execute, failed_payload, payload, prepare, run_config, tol_of,
                   train_prepared, widths_of)
from .train import separate_run_error, train

__all__ = ["group_key", "groups", "decide", "measure", "measured_depth", "run_batch", "execute_batch", "BATCH_FIELDS"]

# Config fields that may differ between the members of one batch (resolved per member).
BATCH_FIELDS = ("seed", "init", "lr", "lr_scale")

# One measurement sample steps every member n times, n <= MEASURE_MAX_STEPS, for about
# MEASURE_SECONDS (at least once); MEASURE_ROUNDS samples each way.
MEASURE_SECONDS = 0.005
MEASURE_MAX_STEPS = 32
MEASURE_ROUNDS = 3
# The measurement's networks (K members and the ensemble's copies) hold at most this many
# weight bytes: deeper groups are timed on fewer layers of the same widths (see ``measure``).
MEASURE_BYTES = 64 << 20

# A group is batched when its members' steps are measured at least this much faster as one
# ensemble: closer than that is within the noise of a few samples, and a batch is one coarse
# task where K runs could spread over a cluster's workers.
BATCH_GAIN = 1.1

_MEASURED = {}   # _class(...) -> (separate, batched) seconds per step of every member


def group_key(cfg):
    """The fields a batch's members share (every field but BATCH_FIELDS), or None for a config
    that runs alone (``stop_at_escape``: its callback would stop every member)."""
    if cfg.get("stop_at_escape"):
        return None
    return tuple(sorted((k, repr(v)) for k, v in cfg.items() if k not in BATCH_FIELDS))


def groups(cfgs):
    """Indices of ``cfgs`` (normalized configs) grouped by ``group_key``, in order of first
    appearance; configs that run alone are groups of one."""
    out, where = [], {}
    for i, c in enumerate(cfgs):
        k = group_key(c)
        if k is None:
            out.append([i])
        elif k in where:
            out[where[k]].append(i)
        else:
            where[k] = len(out)
            out.append([i])
    return out


def separate_backend(cfg, backend):
    """The backend a separate run of ``cfg`` reports (auto's choice for its shape)."""
    if backend != "auto":
        return backend
    r = min(cfg["rank"] or cfg["n"], cfg["d_in"], cfg["n"])   # the rank of the config's data
    return kernels.auto_choice(widths_of(cfg), r, cfg.get("dtype", "float64"))[0]


def _pow2(x) -> int:
    return 1 << max(0, int(round(math.log2(max(1, int(x))))))


def _class(cfgs, backend, threads, together):
    c = cfgs[0]
    return (c["d_in"], c["n"], c["d_out"], c["rank"], c.get("dtype"), _pow2(c["width"]), _pow2(c["depth"]),
            len(cfgs), backend, threads, together)


def batch_threads(K, threads, mode):
    """Threads a batch of K runs may use: on a cluster a worker's (``threads``, one run's: the
    other workers hold the other cores); run serially, the share of the K runs it stands for,
    K x ``threads``, at most the cores this process may use (nothing runs beside it). The C
    kernel's bits do not depend on its thread count. 0 or None: thread settings left alone."""
    if not threads or mode != "serial":
        return threads
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(int(threads), min(K * int(threads), cores))


def measure(cfgs, backend="auto", threads=1, together=1):
    """(separate, batched): seconds of one GD step of every member of the group ``cfgs``, stepped
    one network after another (K steppers, as K separate runs step) and as one ensemble (one
    stepper), under the sweep's thread limits (``threads`` per run, ``together`` for the batch).
    The members are K copies of one Gaussian network of the group's shape at 1e-6 x the
    theorem's rate: a step's cost depends on neither the init nor the rate, nothing diverges,
    and K orthogonal draws (or lr "stable") would cost more than the timing. Each sample steps
    ``n`` times (about MEASURE_SECONDS in all), the two ways interleaved, the fastest of up to
    MEASURE_ROUNDS samples kept (load only adds time; a round in which the batch is slower ends
    the measurement). A group whose 2K networks would hold more than MEASURE_BYTES of weights is
    timed on the fewest hidden layers that keep it under that (at least one m x m layer): every
    m x m layer costs the same in a step, both ways, so the ratio is that of the full depth,
    and planning a grid of 5 GiB networks (HXP's published range) allocates megabytes, not
    K x 5 GiB in the driver."""
    from .stepper import Stepper
    with _run_threads(together):
        prob, net, lr = prepare(dict(cfgs[0], init="gaussian", lr="theory", lr_scale=1.0,
                                     depth=measured_depth(cfgs[0], len(cfgs))))
        nets = [net] + [net.copy() for _ in cfgs[1:]]   # K copies of one draw: the same work per step
        lrs = [1e-6 * lr] * len(nets)
        ens = Ensemble.from_networks(nets)
        alone = [Stepper(net, prob, lr, backend) for net, lr in zip(nets, lrs)]
        together = Stepper(ens, prob, lrs, backend)
        every = list(range(len(nets)))

        def separate(n):
            with _run_threads(threads):
                for _ in range(n):
                    for st in alone:
                        st.step()

        def batched(n):
            for _ in range(n):
                together.step_members(every)

        separate(1)
        batched(1)                                    # warm-up: binding, workspaces, first touch
        t0 = time.perf_counter()
        separate(1)
        n = int(min(MEASURE_MAX_STEPS, max(1, MEASURE_SECONDS / max(time.perf_counter() - t0, 1e-9))))
        best = [math.inf, math.inf]
        for _ in range(MEASURE_ROUNDS):
            for i, run in enumerate((separate, batched)):
                t0 = time.perf_counter()
                run(n)
                best[i] = min(best[i], (time.perf_counter() - t0) / n)
            if best[0] < best[1]:
                break                                 # no faster at all: more samples will not make it BATCH_GAIN
    return best[0], best[1]


def measured_depth(cfg, K) -> int:
    """The depth ``measure`` times for a group of K members of ``cfg``'s shape: the config's
    depth, or fewer layers (at least 2: one m x m layer) where 2K networks of it would hold more
    than MEASURE_BYTES of weights (K members and the ensemble's copies)."""
    L, m = cfg["depth"], cfg["width"]
    if L <= 2:
        return L
    item = np.dtype(cfg.get("dtype", "float64")).itemsize
    outer = (cfg["d_in"] + cfg["d_out"]) * m * item          # the first and last layers
    hidden = m * m * item                                      # each of the L - 2 hidden layers
    fit = (MEASURE_BYTES / (2 * K) - outer) // hidden
    return int(min(L, max(2, 2 + fit)))


def decide(cfgs, backend="auto", threads=1, together=None, timer=None):
    """True when the group ``cfgs`` (normalized, one ``group_key``) is to run as one batch: a
    separate run of each member would run ``cblas`` and ``timer`` (default ``measure``; cached
    per class) finds one step of the ensemble at least BATCH_GAIN times faster than one step
    of each member alone."""
    if len(cfgs) < 2 or group_key(cfgs[0]) is None:
        return False
    if any(separate_backend(c, backend) != "cblas" for c in cfgs):
        return False
    together = threads if together is None else together
    key = _class(cfgs, backend, threads, together)
    if key not in _MEASURED:
        _MEASURED[key] = (timer or measure)(cfgs, backend, threads, together)
    separate, batched = _MEASURED[key]
    return separate >= BATCH_GAIN * batched


def execute_batch(cfgs, backend, threads, together=None):
    """``runs.execute`` for a batch: payloads of ``run_batch(cfgs)`` with ``together`` threads
    (default ``threads``: see ``batch_threads``); any failure of the batch as a whole reruns
    its members one by one, ``threads`` each."""
    if len(cfgs) == 1:
        return [execute(run_config, cfgs[0], backend, threads)]
    try:
        with _run_threads(threads if together is None else together):
            return run_batch(cfgs, backend)
    except Exception:
        return [execute(run_config, c, backend, threads) for c in cfgs]


def run_batch(cfgs, backend="auto"):
    """Payloads of the normalized configs ``cfgs`` (one ``group_key``), each identical to
    ``run_config(cfg, backend)``'s but for ``wall_time`` (see the module docstring). A member
    whose setup fails gets its failed payload; the others run on."""
    out, members = [None] * len(cfgs), []
    for i, c in enumerate(cfgs):
        try:
            members.append((i,) + prepare(c))
        except Exception as exc:
            out[i] = failed_payload(c, _error_text(exc), backend)
    ens = Ensemble.from_networks([m[2] for m in members]) if len(members) > 1 else None
    if ens is None or not _bitwise(members[0][2], ens, members[0][1], backend):
        for i, prob, net, lr in members:
            try:
                out[i] = train_prepared(cfgs[i], prob, net, lr, backend)
            except Exception as exc:
                out[i] = failed_payload(cfgs[i], _error_text(exc), backend)
        return out
    idx, prob, lrs = [m[0] for m in members], members[0][1], [m[3] for m in members]
    del members                           # the ensemble holds copies of the prepared networks
    cfg0 = cfgs[idx[0]]
    with warnings.catch_warnings():       # lr warnings are not stored; "stable" is above the bound on purpose
        warnings.simplefilter("ignore", LearningRateWarning)
        res = train(ens, prob, lr=lrs, steps=cfg0["steps"], tol=tol_of(cfg0), backend=backend)
    wall = float(res.wall_time) / len(idx)
    for j, i in enumerate(idx):
        run, diverged = res.member(j), bool(res.diverged[j])
        t, ex = run.t, np.asarray(run.excess, dtype=np.float64)
        out[i] = payload(cfgs[i], prob, run, t, ex, status="diverged" if diverged else "ok",
                         error=separate_run_error(res.messages[j]) if diverged else None,
                         escape=_escape(cfgs[i], prob, t, ex), wall_time=wall)
    return out


def _bitwise(net, ens, prob, backend) -> bool:
    """Do the members step on the C kernel alone and together (bit for bit the same)?"""
    if stepper.choose(net, prob, backend)[1].name != "cblas":
        return False
    how, mod, _ = stepper.choose(ens, prob, backend)
    return mod.name == "cblas" and how in (stepper._CMembers, stepper._Sequential)


def _escape(cfg, prob, t, ex):
    """The first recorded step with l(t) <= escape ||Y||_F^2 (every step is recorded), or None:
    what a separate run's callback finds (``stop_at_escape`` runs are never batched)."""
    if cfg["escape"] is None:
        return None
    hit = np.flatnonzero(prob.opt + ex <= cfg["escape"] * prob.y_norm_sq)
    return int(t[hit[0]]) if hit.size else None
