"""What a training run records and reports.

    TrainResult, EnsembleResult     the histories a run returns (one network, K members)
    fit_rate(t, excess)             the per-step contraction factor fitted to a history
    Recorder, make_recorders        diagnostics recorded every ``stride`` steps (``record=``,
                                    names from ``engine.diagnostics.RECORDERS``)
    Progress                        the progress bar / log lines of ``progress=True``

Recorders see the state t before step t is applied; their time is kept apart
(``record_time``) and not counted in ``wall_time``. Their checkpointing is the
checkpoint format's business (``engine.checkpoint``).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import diagnostics
from ._validate import positive_int
from .network import Ensemble, Network, _index

__all__ = ["TrainResult", "EnsembleResult", "fit_rate", "Recorder", "make_recorders", "Progress",
           "log_every_value", "LOG_SECONDS_DEFAULT"]


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
    messages   {k: str} why diverged members stopped (and the step whose state the
               member's weights were put back to: the last finite one below the threshold)
    wall_time  seconds for the whole ensemble (recording excluded)
    backend    backend that ran; ``schedule`` is "members-parallel" or "sequential"
    opt        OPT of the problem
    ensemble   the trained Ensemble (the object passed in, updated in place)
    records    [K] per member {name: {"t": steps, "values": list}} from ``record=``
    record_time {name: seconds spent recording it, all members}
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
    records: list = field(default_factory=list)
    record_time: dict = field(default_factory=dict)
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
                           opt=self.opt, records=dict(self.records[k]) if self.records else {},
                           record_time=dict(self.record_time))

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


class Recorder:
    """One diagnostic of one member: ``rec(t, net)`` appends its value at state t."""

    def __init__(self, name, stride, fn):
        self.name, self.stride, self.fn = name, stride, fn
        self.t, self.values, self.seconds = [], [], 0.0

    def __call__(self, t, net):
        t0 = time.perf_counter()
        # a recorder that needs the step index (the lazy twin's closed form in t) says so
        self.values.append(self.fn(net, t) if getattr(self.fn, "wants_step", False) else self.fn(net))
        self.t.append(t)
        self.seconds += time.perf_counter() - t0


def make_recorders(record, nets, prob, lrs):
    """Per member, the recorders of ``record`` = {name: stride} (or None): a list of
    lists aligned with ``nets`` (the members at the start of the run) and ``lrs``."""
    if record is None:
        return [[] for _ in nets]
    if not isinstance(record, dict):
        raise TypeError("record: must be a dict {diagnostic name: stride}")
    strides = {}
    for name, stride in record.items():
        if name not in diagnostics.RECORDERS:
            raise ValueError(f"record: unknown diagnostic {name!r}; choose from {sorted(diagnostics.RECORDERS)}")
        strides[name] = positive_int(stride, f"record[{name!r}]")
    out = []
    for net, lr in zip(nets, lrs):
        recs = []
        for name, stride in strides.items():
            make = diagnostics.RECORDERS[name]
            fn = make(net, prob, lr) if getattr(make, "wants_lr", False) else make(net, prob)
            recs.append(Recorder(name, stride, fn))
        out.append(recs)
    return out


def records_of(recorders) -> tuple[dict, dict]:
    """({name: {"t": steps, "values": list}}, {name: seconds}) of one member's recorders."""
    return ({rec.name: {"t": np.asarray(rec.t, dtype=np.int64), "values": rec.values} for rec in recorders},
            {rec.name: rec.seconds for rec in recorders})


def log_every_value(x):
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
