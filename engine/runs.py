"""One run of a config: the config's fields and defaults, their checks, and the training run
that gives one row of a results database.

    from engine.runs import normalize_config, run_config
    cfg = normalize_config({"init": "orthogonal", "width": 64, "depth": 10})   # defaults filled, checked
    out = run_config(cfg)              # {"result": {metric: value}, "curve": (t, excess)}

``engine.sweep`` runs grids of configs (serially or on Dask) through ``execute``;
``engine.cost`` times ``run_config`` to predict a sweep's wall time.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
import warnings

import numpy as np

from . import init, theory
from ._version import __version__
from .errors import DivergenceError, LearningRateWarning
from .kernels.threads import limit as threads_limit
from .problem import Problem, synthetic
from .train import stable_lr, theorem_init, train

__all__ = ["DEFAULT_CONFIG", "OPTIONAL_FIELDS", "DTYPES", "CURVE_POINTS", "normalize_config", "widths_of",
           "problem_of", "subsample_curve", "run_config", "prepare", "train_prepared", "payload", "failed_payload",
           "execute", "dtype_of"]

# Every config field and its default. Data: engine.synthetic(d_in, n, d_out, seed=data_seed,
# rank=, kappa=). Network: widths [d_in] + [width] * (depth - 1) + [d_out], init
# seed ``seed``. Training: lr ("theory" = the init's theorem rate, "stable" = 1 / lambda_max(P(0))
# of the run's network (engine.train.stable_lr), or a number; times lr_scale),
# at most ``steps`` GD steps, stopping when l - OPT <= tol * ||Y||_F^2 (tol=0: never).
# ``escape``: also record the first step t with l(t) <= escape * ||Y||_F^2
# (HXP Thm 4.1's band is [0.4, 0.6] ||Y||_F^2) and stop there if stop_at_escape.
DEFAULT_CONFIG = {
    "d_in": 1024, "n": 16, "d_out": 10, "data_seed": 0, "rank": None, "kappa": None,
    "init": "gaussian", "width": 64, "depth": 10, "seed": 0,
    "lr": "theory", "lr_scale": 1.0, "steps": 1000, "tol": 1e-12,
    "escape": None, "stop_at_escape": False,
}

# Fields added after results databases (and the committed tables under docs/) were written:
# name -> default. A field at its default is left out of the normalized config, so the config
# and its key (engine.results.run_key, a hash of the config) are those of before the field
# existed, and every stored run is still found. ``dtype``: the network's storage and step
# dtype (float64; float32 where an experiment validated it, issue 15 item 4).
OPTIONAL_FIELDS = {"dtype": "float64"}
DTYPES = ("float64", "float32")

# Points kept of each loss curve in the database.
CURVE_POINTS = 200


def normalize_config(config: dict) -> dict:
    """The config with defaults filled in, unknown fields rejected and every field checked
    (ValueError / TypeError naming the field and the offending value)."""
    if not isinstance(config, dict):
        raise TypeError(f"config: must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULT_CONFIG) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"config: unknown field(s) {unknown}; known fields are "
                         f"{sorted(set(DEFAULT_CONFIG) | set(OPTIONAL_FIELDS))}")
    out = dict(DEFAULT_CONFIG)
    out.update(config)
    for k in ("d_in", "n", "d_out", "width", "depth", "steps"):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if k == "steps" else 1):
            raise ValueError(f"config: {k} must be a {'non-negative' if k == 'steps' else 'positive'} "
                             f"integer, got {v!r}")
        out[k] = int(v)
    if out["depth"] == 1:
        out["width"] = 1   # no hidden layer: width is meaningless, keep the key unique
    _check_fields(out)
    for k, default in OPTIONAL_FIELDS.items():
        if out.get(k, default) == default:
            out.pop(k, None)   # at its default: not in the config, so not in its key
    return out


def _number(v):
    """v as a float if it is a real number (not a bool), else None."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    return float(v)


def _check_fields(cfg) -> None:
    """Every field a run would otherwise reject only when it runs (issue 11 item 7), so a
    grid with one bad value fails before its first run, naming the field and the value."""

    def bad(field, want):
        return ValueError(f"config: {field} must be {want}, got {cfg[field]!r}")

    for k in ("seed", "data_seed"):
        v = cfg[k]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
            raise bad(k, "an integer >= 0")
        cfg[k] = int(v)
    if cfg["init"] not in init.INITS:
        raise ValueError(f"config: init must be one of {sorted(init.INITS)}, got {cfg['init']!r}")
    lr = cfg["lr"]
    if isinstance(lr, str):
        if lr not in ("theory", "stable"):
            raise bad("lr", "'theory', 'stable' or a positive finite number")
    else:
        x = _number(lr)
        if x is None or not (x > 0 and math.isfinite(x)):
            raise bad("lr", "'theory', 'stable' or a positive finite number")
    x = _number(cfg["lr_scale"])
    if x is None or not (x > 0 and math.isfinite(x)):
        raise bad("lr_scale", "a positive finite number")
    if cfg["tol"] is not None:
        x = _number(cfg["tol"])
        if x is None or not (x >= 0 and math.isfinite(x)):
            raise bad("tol", "a finite number >= 0 (0 or null: run every step)")
    r = cfg["rank"]
    if r is not None:
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)) or r < 1:
            raise bad("rank", "null or an integer >= 1")
        if r > min(cfg["d_in"], cfg["n"]):
            raise ValueError(f"config: rank must be <= min(d_in, n) = {min(cfg['d_in'], cfg['n'])}, got {r!r}")
    if cfg["kappa"] is not None:
        x = _number(cfg["kappa"])
        if x is None or not (x >= 1 and math.isfinite(x)):
            raise bad("kappa", "null or a finite number >= 1")
    if cfg["escape"] is not None:
        x = _number(cfg["escape"])
        if x is None or not (x > 0 and math.isfinite(x)):
            raise bad("escape", "null or a positive finite number (a fraction of ||Y||_F^2)")
    if not isinstance(cfg["stop_at_escape"], (bool, np.bool_)):
        raise bad("stop_at_escape", "true or false")
    if "dtype" in cfg and (not isinstance(cfg["dtype"], str) or cfg["dtype"] not in DTYPES):
        raise bad("dtype", f"one of {list(DTYPES)} (a string)")



def dtype_of(cfg: dict) -> str:
    """The dtype of a (normalized) config or a results row: "float64" unless it says float32."""
    return cfg.get("dtype") or OPTIONAL_FIELDS["dtype"]


def widths_of(cfg: dict) -> list:
    return [cfg["d_in"]] + [cfg["width"]] * (cfg["depth"] - 1) + [cfg["d_out"]]


_PROBLEMS = {}


def problem_of(cfg):
    """engine.Problem for the config's data, cached per process (workers reuse it)."""
    key = (cfg["d_in"], cfg["n"], cfg["d_out"], cfg["data_seed"], cfg["rank"], cfg["kappa"])
    prob = _PROBLEMS.get(key)
    if prob is None:
        X, Y = synthetic(cfg["d_in"], cfg["n"], cfg["d_out"], seed=cfg["data_seed"],
                            rank=cfg["rank"], kappa=cfg["kappa"])
        prob = Problem(X, Y)
        if len(_PROBLEMS) > 16:
            _PROBLEMS.clear()
        _PROBLEMS[key] = prob
    return prob


def subsample_curve(t, excess, points: int = CURVE_POINTS):
    """At most ~``points`` (t, excess) pairs: log- and linearly spaced indices, first and last kept."""
    t = np.asarray(t)
    e = np.asarray(excess)
    n = len(t)
    if n <= points:
        return t.tolist(), e.tolist()
    half = points // 2
    idx = np.unique(np.concatenate([
        np.geomspace(1, n, half).astype(np.int64) - 1,
        np.linspace(0, n - 1, points - half).astype(np.int64), [0, n - 1]]))
    return t[idx].tolist(), e[idx].tolist()


def run_config(config: dict, backend: str = "auto") -> dict:
    """Train one config; returns {"result": {metric: value}, "curve": (t, excess)}.

    Never raises for a diverging run (status "diverged", metrics of the last
    finite state); raises for anything else (bad config, out of memory...).
    """
    cfg = normalize_config(config)
    prob, net, lr = prepare(cfg)
    return train_prepared(cfg, prob, net, lr, backend)


def prepare(cfg):
    """(problem, network at init, W-space lr) of the normalized config ``cfg``: lr "theory" is the
    theorem's rate of the init, "stable" 1 / lambda_max(P(0)) of this very network; times lr_scale."""
    prob = problem_of(cfg)
    net = init.by_name(cfg["init"])(widths_of(cfg), seed=cfg["seed"], dtype=np.dtype(dtype_of(cfg)))
    lr = cfg["lr"]
    if lr == "theory":
        lr = theory.lr_bound(theorem_init(cfg["init"]), prob, cfg["depth"])
    elif lr == "stable":   # 1 / lambda_max(P(0)) of this very network, before its first step
        lr = stable_lr(net, prob)
    return prob, net, float(lr) * float(cfg["lr_scale"])


def tol_of(cfg):
    """The relative stop tolerance engine.train takes (None: every step runs)."""
    return float(cfg["tol"]) if cfg["tol"] else None


@contextlib.contextmanager
def quiet_lr(cfg):
    """Warnings as a run of ``cfg`` trains: lr "stable" is above the theorem's bound on purpose."""
    with warnings.catch_warnings():
        if cfg["lr"] == "stable":
            warnings.simplefilter("ignore", LearningRateWarning)
        yield


def train_prepared(cfg, prob, net, lr, backend="auto") -> dict:
    """Train the prepared (``prepare``) run of ``cfg``; its payload (see ``run_config``)."""
    ysq = prob.y_norm_sq
    escape = cfg["escape"]
    state = {"escape": None}

    def callback(t, ex, _net):
        if escape is not None and state["escape"] is None and prob.opt + ex <= escape * ysq:
            state["escape"] = t
            return bool(cfg["stop_at_escape"])
        return False

    status, error = "ok", None
    try:
        with quiet_lr(cfg):
            run = train(net, prob, lr=lr, steps=cfg["steps"], tol=tol_of(cfg), backend=backend,
                        callback=callback if escape is not None else None)
    except DivergenceError as exc:
        run, status, error = exc.result, "diverged", str(exc)
    t, ex = np.asarray(run.t), np.asarray(run.excess, dtype=np.float64)
    if escape is not None and state["escape"] is None and len(ex) and prob.opt + ex[-1] <= escape * ysq:
        state["escape"] = int(t[-1])   # the final state (not passed to the callback)
    return payload(cfg, prob, run, t, ex, status=status, error=error, escape=state["escape"],
                   wall_time=float(run.wall_time))


def payload(cfg, prob, run, t, ex, *, status, error, escape, wall_time) -> dict:
    """The row and curve of a trained run: ``run`` a TrainResult (steps, converged, rate,
    predicted, lr, backend), ``t``, ``ex`` its history (l - OPT)."""
    tol = tol_of(cfg)
    ex0, exf = float(ex[0]), float(ex[-1])
    rel = exf / ex0 if ex0 > 0 else float("nan")
    result = {
        "init": cfg["init"], "depth": cfg["depth"], "width": cfg["width"], "seed": cfg["seed"],
        "status": status, "excess0": ex0, "final_excess": exf, "rel_excess": rel,
        "log10_rel_excess": math.log10(rel) if rel > 0 else float("-inf"),
        "steps_run": int(run.steps), "steps_to_tol": int(run.steps) if run.converged else None,
        "escape_steps": escape, "converged": bool(run.converged), "rate": float(run.rate),
        "predicted": float(run.predicted), "lr": float(run.lr), "wall_time": wall_time,
        "backend": run.backend, "engine_version": __version__, "error": error,
        "tol_excess": tol * prob.y_norm_sq if tol else None,   # the absolute stop threshold (l - OPT units)
    }
    return {"result": result, "curve": subsample_curve(t, ex)}


def failed_payload(config, error, backend) -> dict:
    cfg = dict(config)
    return {"result": {"init": cfg.get("init"), "depth": cfg.get("depth"), "width": cfg.get("width"),
                       "seed": cfg.get("seed"), "status": "failed", "error": error,
                       "backend": backend, "engine_version": __version__}, "curve": None}


def _error_text(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _run_threads(threads):
    """The thread limits of one run (engine.kernels.threads.limit): every BLAS and OpenMP pool
    at ``threads``, and Numba's pool too when Numba is already loaded (never imported for it)."""
    if not threads:
        return threads_limit()
    nb = sys.modules.get("numba")
    numba = max(1, min(int(threads), nb.config.NUMBA_NUM_THREADS)) if nb is not None else None
    return threads_limit(blas=threads, openmp=threads, numba=numba)


def execute(func, config, backend, threads):
    """Run one config with BLAS, OpenMP and (when loaded) Numba threads limited to ``threads``
    (0 or None: left alone); exceptions become a failed payload."""
    try:
        with _run_threads(threads):
            out = func(config, backend)
        if not isinstance(out, dict) or "result" not in out:
            raise TypeError(f"run function returned {type(out).__name__}, expected a dict with 'result'")
        return out
    except Exception as exc:
        return failed_payload(config, _error_text(exc), backend)

