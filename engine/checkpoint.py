"""Checkpoints of training runs: atomic, checksummed, exact.

``engine.train(net, prob, ..., checkpoint="run.ckpt", checkpoint_every=k)``
writes the state of the run every k steps (and the final state), and
``engine.train(resume="run.ckpt")`` (or with ``prob=`` for data too large to
store) continues it; ``net`` may be an Ensemble (every array then has a
leading member axis, see "the state of a training run" below). The resumed
trajectory is bit-identical to an uninterrupted one on the same backend:
weights are stored exactly as trained (normalized storage A_i in their dtype,
the first layer as the bound pair B_1 = A_1 U_r and A_1 (I - U_r U_r^T), the
log-scales log s_i and log beta), never re-derived.

File format (one ``.npz`` zip container, no pickles):

    meta      uint8  JSON (UTF-8): format, version, engine version, widths,
                     dtype, init, seed, step t, lr, backends, tol, steps,
                     record_every, record strides, checkpoint_every, the
                     problem's fingerprint (sha256 of X and Y), wall time
    layer_i   A_i as stored (i = 0..L-1; layer_0 is B_1 when bound)
    perp      A_1 (I - U_r U_r^T) (only when bound)
    log_s, log_beta, sigma            scales and init parameters
    hist_t, hist_excess               history recorded so far (t < step)
    hist_n                            entries per member (ensembles: histories concatenated)
    data_X, data_Y                    the data (only up to DATA_LIMIT bytes)
    start_*   the network at the start of the run (only with ``record=``,
              whose diagnostics such as "distance" refer to it)
    rec*_     each recorder's steps, values and seconds (m<j>_rec* for ensemble member j)
    sha256    hex digest over every other entry (name, dtype, shape, bytes)

followed by a trailer ``\nENGINE-CHECKPOINT-SHA256:<hex>\n`` holding the
sha256 of every byte of the file before it (zip readers ignore it).

Writing is atomic: a temp file in the same directory, the trailer appended
after re-reading it, flush + fsync, then
``os.replace`` onto the path and an fsync of the directory, so a crash or a
kill -9 at any moment leaves either the previous checkpoint or the new one,
never a mixture. Reading verifies the container and the checksum and raises
``CorruptCheckpoint`` for a torn, truncated or altered file; it is never
loaded. A checkpoint for other data is refused with ``CheckpointMismatch``.

Gradient descent draws no random numbers, so there is no RNG state to save
beyond the init's seed (kept in ``meta`` for the record).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import time

import numpy as np

from . import memory
from ._version import __version__
from .network import Ensemble, Network, Storage
from .problem import Problem

__all__ = ["CheckpointError", "CorruptCheckpoint", "CheckpointMismatch", "Checkpoint",
           "load", "save", "save_run", "restore_recorders", "check_writable", "FORMAT", "VERSION"]

FORMAT = "engine-checkpoint"
VERSION = 1

# Whole-file integrity: the zip container is followed by this tag, the sha256
# (hex) of every byte before it, and a newline. Zip readers ignore the
# trailing bytes; any flipped byte anywhere (data, zip headers, directory) or
# a truncation fails the check before anything is parsed.
_TRAILER_TAG = b"\nENGINE-CHECKPOINT-SHA256:"
_TRAILER_LEN = len(_TRAILER_TAG) + 64 + 1
_CHUNK = 1 << 24

# X and Y are stored in the checkpoint (so ``train(resume=path)`` needs no
# ``prob``) when together they take at most this many bytes.
DATA_LIMIT = 64 * 1024 ** 2


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, read or used."""


class CorruptCheckpoint(CheckpointError):
    """The file is torn, truncated, altered or not a checkpoint (checksum or container)."""


class CheckpointMismatch(CheckpointError, ValueError):
    """The checkpoint does not belong to the given problem or settings."""


# -- container -----------------------------------------------------------------

def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        if key == "sha256":
            continue
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.data if a.size else b"")
    return h.hexdigest()


def _encode_json(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)


def save(path, arrays: dict, meta: dict) -> None:
    """Write ``arrays`` plus ``meta`` (JSON-able) to ``path`` atomically, with a checksum."""
    path = os.fspath(path)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["meta"] = _encode_json(dict(meta, format=FORMAT, version=VERSION))
    payload["sha256"] = np.frombuffer(_digest(payload).encode(), dtype=np.uint8)
    d = os.path.dirname(os.path.abspath(path))
    started = time.time()
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w+b") as f:
            np.savez(f, **payload)
            f.flush()
            f.seek(0)
            body = _hash_stream(f, None)
            f.seek(0, os.SEEK_END)
            f.write(_TRAILER_TAG + body.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)
    _remove_stale_temps(path, tmp, started)


def check_writable(path) -> None:
    """Refuse a checkpoint path whose directory is missing or not writable, or that is a directory
    (ValueError / PermissionError naming checkpoint), before any work."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise ValueError(f"checkpoint: directory {d!r} does not exist")
    if not os.access(d, os.W_OK):
        raise PermissionError(f"checkpoint: directory {d!r} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint: {path!r} is a directory, not a file path")


def _remove_stale_temps(path: str, current: str, started: float) -> None:
    """Delete temp files a killed earlier write of ``path`` left behind.

    Only files older than this write's start are removed, so a temp file
    another live writer is still filling is never touched. They are never
    read (a temp file only becomes the checkpoint by the atomic rename).
    """
    pattern = glob.escape(os.path.abspath(path)) + ".*.tmp"
    for stale in glob.glob(pattern):
        if stale == current:
            continue
        try:
            if os.stat(stale).st_mtime < started - 1.0:
                os.unlink(stale)
        except OSError:
            pass


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _hash_stream(f, nbytes) -> str:
    """sha256 (hex) of the next ``nbytes`` bytes of ``f`` (all of it for None), in chunks."""
    h = hashlib.sha256()
    left = nbytes
    while left is None or left > 0:
        chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
        if not chunk:
            break
        h.update(chunk)
        if left is not None:
            left -= len(chunk)
    return h.hexdigest()


def _check_file(f, path) -> None:
    """Verify the whole-file trailer of the open file ``f``: sha256 of every byte before it.

    Size and contents come from the same open file descriptor, so a writer's
    ``os.replace`` onto ``path`` between the two reads cannot mix two files
    (the old file stays readable through the descriptor until it is closed).
    """
    size = os.fstat(f.fileno()).st_size
    if size < _TRAILER_LEN:
        raise CorruptCheckpoint(f"resume: checkpoint {path!r} is corrupt or truncated and was not "
                                f"loaded ({size} bytes)")
    f.seek(size - _TRAILER_LEN)
    trailer = f.read(_TRAILER_LEN)
    if not trailer.startswith(_TRAILER_TAG) or not trailer.endswith(b"\n"):
        raise CorruptCheckpoint(f"resume: {path!r} is corrupt, truncated or not an engine "
                                "checkpoint (no intact checksum trailer); it was not loaded")
    stored = trailer[len(_TRAILER_TAG):-1].decode("ascii", "replace")
    f.seek(0)
    actual = _hash_stream(f, size - _TRAILER_LEN)
    if stored != actual:
        raise CorruptCheckpoint(
            f"resume: checkpoint {path!r} fails its checksum (stored sha256 {stored[:16]}..., "
            f"file hashes to {actual[:16]}...); it is corrupt and was not loaded")
    f.seek(0)


def _read(path) -> dict:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"resume: {path!r} is a directory, not a checkpoint file")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"resume: checkpoint {path!r} does not exist") from None
    with f:
        _check_file(f, path)
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise CorruptCheckpoint(
                f"resume: checkpoint {path!r} is corrupt or truncated and was not loaded "
                f"({type(exc).__name__}: {exc})") from None
    if "sha256" not in arrays or "meta" not in arrays:
        raise CorruptCheckpoint(f"resume: {path!r} is not an engine checkpoint (no checksum or metadata)")
    stored = bytes(arrays["sha256"]).decode("ascii", "replace")
    actual = _digest(arrays)
    if stored != actual:
        raise CorruptCheckpoint(
            f"resume: checkpoint {path!r} fails its checksum (stored sha256 {stored[:16]}..., "
            f"contents hash to {actual[:16]}...); it is corrupt and was not loaded")
    try:
        meta = json.loads(bytes(arrays.pop("meta")).decode())
    except Exception as exc:  # pragma: no cover - a valid checksum makes this unreachable
        raise CorruptCheckpoint(f"resume: checkpoint {path!r} has unreadable metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCheckpoint(f"resume: {path!r} is not an engine checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"resume: checkpoint {path!r} has format version {meta.get('version')}, "
            f"this engine reads version {VERSION}")
    arrays.pop("sha256")
    arrays["__meta__"] = meta
    return arrays


# -- networks ------------------------------------------------------------------

def pack_network(net, prefix: str = "") -> tuple[dict, dict]:
    """Arrays and JSON metadata that rebuild ``net`` exactly (bound state included).

    A Network's arrays are its own (``layer_i`` is A_i, or B_1 for i = 0 while
    bound); an Ensemble's have a leading member axis, and its metadata a
    ``members`` count and per-member ``init`` / ``seed`` lists (``sigma`` is
    (K, L) with rows of NaN for members without one).
    """
    store = net._store
    ensemble = isinstance(net, Ensemble)
    ids = list(range(store.size)) if ensemble else [net._k]

    def take(values):
        return np.stack(values) if ensemble else values[0]

    arrays = {f"{prefix}layer_{i}": (store.blocks[i] if ensemble else store.layers[net._k][i])
              for i in range(store.depth)}
    arrays[f"{prefix}log_s"] = take([store.log_s[k] for k in ids])
    arrays[f"{prefix}log_beta"] = take([np.array(store.log_beta[k]) for k in ids])
    sigmas = [store.sigmas[k] for k in ids]
    if any(s is not None for s in sigmas):
        arrays[f"{prefix}sigma"] = take([np.full(store.depth, np.nan) if s is None else s for s in sigmas])
    if store.bound is not None:
        arrays[f"{prefix}perp"] = take([store.perp[k] for k in ids])
    seeds = [s if isinstance(s, (int, type(None))) else repr(s) for s in (store.seeds[k] for k in ids)]
    meta = {"widths": list(store.widths), "dtype": store.dtype.str, "bound": store.bound is not None}
    if ensemble:
        meta.update(members=store.size, init=list(store.inits), seed=seeds)
    else:
        meta.update(init=store.inits[net._k], seed=seeds[0])
    return arrays, meta


def unpack_network(arrays: dict, meta: dict, prob, prefix: str = ""):
    """Inverse of ``pack_network`` (a Network, or an Ensemble when ``meta`` has ``members``);
    a bound network is bound to ``prob`` (checked by the caller)."""
    widths = tuple(meta["widths"])
    dtype = np.dtype(meta["dtype"])
    K = meta.get("members")
    single = K is None
    n = 1 if single else K
    memory.check(widths, dtype, ensemble=n)   # the guard init functions apply, before allocating

    def member(a, k):
        return a if single else a[k]

    first = arrays[f"{prefix}layer_0"]
    r = None
    if meta["bound"]:
        r = prob.rank
        if first.shape[-2:] != (widths[1], r):
            raise CheckpointMismatch(
                f"prob: the checkpoint's first layer has shape {first.shape[-2:]}, which does not fit "
                f"this problem (rank {r})")
    store = Storage(widths, n, dtype, first_cols=r)
    inits = [meta["init"]] if single else meta["init"]
    seeds = [meta.get("seed")] if single else meta["seed"]
    sig = arrays.get(f"{prefix}sigma")
    for k in range(n):
        for i, dst in enumerate(store.layers[k]):
            dst[...] = member(arrays[f"{prefix}layer_{i}"], k)
        s = None if sig is None else member(sig, k)
        store.set_member(k, member(arrays[f"{prefix}log_s"], k), float(member(arrays[f"{prefix}log_beta"], k)),
                         init=inits[k], seed=seeds[k] if not isinstance(seeds[k], str) else None,
                         sigma=None if s is None or np.isnan(s).all() else s)
    if meta["bound"]:
        perp = arrays[f"{prefix}perp"]
        store.restore_bound(prob, perp[None] if single else perp)
    return Network._view(store) if single else Ensemble(store)


# -- field validation ----------------------------------------------------------
#
# A checkpoint with a valid checksum can still hold bad metadata (written by a
# buggy or hostile tool that recomputed the checksums). Every field is checked
# here, so such a file fails at load with CorruptCheckpoint naming the field,
# never later with a raw KeyError, IndexError or broadcast error, and never
# silently (a "nan" divergence threshold would switch divergence detection off).

def _bad(path, field, why):
    return CorruptCheckpoint(f"resume: checkpoint {path!r} has an invalid field {field!r}: {why}; "
                             "it was not loaded")


def _get(meta, key, path, prefix=""):
    if not isinstance(meta, dict) or key not in meta:
        raise _bad(path, prefix + key, "missing")
    return meta[key]


def _int_field(v, field, path, lo=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(path, field, f"must be an integer >= {lo}, got {v!r}")
    return v


def _real_field(v, field, path, lo=None, positive=False, allow_inf=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(path, field, f"must be a number, got {v!r}")
    v = float(v)
    if v != v or (not allow_inf and not np.isfinite(v)):
        raise _bad(path, field, f"must be a finite number, got {v!r}")
    if positive and not v > 0:
        raise _bad(path, field, f"must be > 0, got {v!r}")
    if lo is not None and v < lo:
        raise _bad(path, field, f"must be >= {lo}, got {v!r}")
    return v


def _array_field(arrays, key, path, shape=None, ndim=None, dtype=None, finite=True):
    if key not in arrays:
        raise _bad(path, key, "missing")
    a = arrays[key]
    if ndim is not None and a.ndim != ndim:
        raise _bad(path, key, f"must be {ndim}-D, got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise _bad(path, key, f"must have shape {tuple(shape)}, got {a.shape}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise _bad(path, key, f"must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if finite:
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise _bad(path, key, f"must be numeric, got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise _bad(path, key, "contains NaN or Inf")
    return a


def _check_net_fields(arrays, net, path, prefix=""):
    """The packed network (``pack_network``): a Network, or an Ensemble with ``members``."""
    where = "net." if not prefix else "start."
    widths = _get(net, "widths", path, where)
    if (not isinstance(widths, list) or len(widths) < 2
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
        raise _bad(path, where + "widths", f"must be a list of >= 2 positive integers, got {widths!r}")
    dt = _get(net, "dtype", path, where)
    try:
        dtype = np.dtype(dt)
    except TypeError:
        raise _bad(path, where + "dtype", f"not a dtype: {dt!r}") from None
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise _bad(path, where + "dtype", f"must be float64 or float32, got {dt!r}")
    K = net.get("members")
    if K is not None:
        _int_field(K, where + "members", path, lo=1)
    lead = () if K is None else (K,)

    def per_member(key, ok, what):
        v = _get(net, key, path, where)
        vals = [v] if K is None else v
        if K is not None and not (isinstance(v, list) and len(v) == K):
            raise _bad(path, where + key, f"must be a list of {K} entries (one per member), got {v!r}")
        if not all(ok(x) for x in vals):
            raise _bad(path, where + key, f"must be {what}, got {v!r}")

    per_member("init", lambda x: isinstance(x, str), "a string")
    if "seed" in net:
        per_member("seed", lambda s: s is None or isinstance(s, str) or (isinstance(s, int) and not isinstance(s, bool)),
                   "an integer, None or a string")
    bound = _get(net, "bound", path, where)
    if not isinstance(bound, bool):
        raise _bad(path, where + "bound", f"must be true or false, got {bound!r}")
    L = len(widths) - 1
    n_layers = sum(1 for k in arrays if k.startswith(prefix + "layer_") and k[len(prefix) + 6:].isdigit())
    if n_layers != L:
        raise _bad(path, where + "widths", f"{widths!r} give depth {L} but the file holds {n_layers} layers")
    for i in range(1, L):
        _array_field(arrays, f"{prefix}layer_{i}", path, shape=lead + (widths[i + 1], widths[i]), dtype=dtype)
    if bound:
        first = _array_field(arrays, f"{prefix}layer_0", path, ndim=2 + len(lead), dtype=dtype)
        if first.shape[:-2] != lead or first.shape[-2] != widths[1] or not 1 <= first.shape[-1] <= widths[0]:
            raise _bad(path, f"{prefix}layer_0", f"must have shape {lead + (widths[1],)} + (r,) with 1 <= r <= "
                       f"{widths[0]} (bound first layer), got {first.shape}")
        _array_field(arrays, f"{prefix}perp", path, shape=lead + (widths[1], widths[0]), dtype=dtype)
    else:
        _array_field(arrays, f"{prefix}layer_0", path, shape=lead + (widths[1], widths[0]), dtype=dtype)
    _array_field(arrays, f"{prefix}log_s", path, shape=lead + (L,))
    _array_field(arrays, f"{prefix}log_beta", path, shape=lead)
    if f"{prefix}sigma" in arrays:
        sig = _array_field(arrays, f"{prefix}sigma", path, finite=K is None)
        rows = sig.reshape(-1, sig.shape[-1]) if sig.ndim else sig.reshape(1, 1)
        # an ensemble member without sigma has a row of NaN
        if sig.size and not all((r > 0).all() or (K is not None and np.isnan(r).all()) for r in rows):
            raise _bad(path, f"{prefix}sigma", "must be > 0")
    return K


def _check_members(meta, K, path):
    """An ensemble run's per-member settings and states (lists of K)."""
    for key in ("lr", "hi", "backend_state", "members"):
        v = _get(meta, key, path)
        if not (isinstance(v, list) and len(v) == K):
            raise _bad(path, key, f"must be a list of {K} entries (one per member), got {v!r}")
    for k, v in enumerate(meta["lr"]):
        _real_field(v, f"lr[{k}]", path, positive=True)
    for k, v in enumerate(meta["hi"]):
        _threshold_field(v, f"hi[{k}]", path)
    for k, s in enumerate(meta["backend_state"]):
        if s is not None and not isinstance(s, dict):
            raise _bad(path, f"backend_state[{k}]", f"must be null or an object, got {s!r}")
    for k, m in enumerate(meta["members"]):
        f = f"members[{k}]"
        if not isinstance(m, dict) or m.get("status") not in MEMBER_STATUS:
            raise _bad(path, f, f"must be an object with a status in {MEMBER_STATUS}, got {m!r}")
        _int_field(_get(m, "stop", path, f + "."), f + ".stop", path)
        if not (m.get("message") is None or isinstance(m["message"], str)):
            raise _bad(path, f + ".message", "must be a string or null")


def _threshold_field(hi, field, path):
    try:
        hi_v = float(hi)
    except (TypeError, ValueError):
        raise _bad(path, field, f"must be a number (the divergence threshold), got {hi!r}") from None
    if not hi_v > 0:   # NaN fails this too: it would switch divergence detection off
        raise _bad(path, field, f"must be a number > 0 or inf (the divergence threshold), got {hi!r}")


def _check_history(arrays, ht, t, path, field="hist_t"):
    if ht.size and (ht[0] < 0 or ht[-1] >= max(t, 1) or (np.diff(ht) <= 0).any()):
        raise _bad(path, field, f"must be increasing steps in [0, t = {t}), got {ht[:3]}...{ht[-3:]}")


def _check_recorders(arrays, infos, rec, path, key, field):
    if not isinstance(infos, list):
        raise _bad(path, field, f"must be a list, got {type(infos).__name__}")
    if len(infos) != len(rec or {}):
        raise _bad(path, field, f"has {len(infos)} entries for record={rec!r}")
    for k, info in enumerate(infos):
        f = f"{field}[{k}]"
        if not isinstance(info, dict):
            raise _bad(path, f, "must be an object")
        n = _int_field(_get(info, "n", path, f + "."), f + ".n", path)
        kind = _get(info, "kind", path, f + ".")
        _real_field(_get(info, "seconds", path, f + "."), f + ".seconds", path, lo=0.0)
        if not isinstance(_get(info, "scalar", path, f + "."), bool):
            raise _bad(path, f + ".scalar", "must be true or false")
        _array_field(arrays, f"{key(k)}_t", path, shape=(n,), finite=False)
        if kind == "stacked":
            v = _array_field(arrays, f"{key(k)}_values", path, finite=False)
            if v.ndim < 1 or v.shape[0] != n:
                raise _bad(path, f"{key(k)}_values", f"must hold {n} values, got shape {v.shape}")
        elif kind == "each":
            for j in range(n):
                _array_field(arrays, f"{key(k)}_v{j}", path, finite=False)
        else:
            raise _bad(path, f + ".kind", f"must be 'stacked' or 'each', got {kind!r}")


def validate_fields(meta, arrays, path) -> None:
    """Check every field of a checksum-valid checkpoint; raise CorruptCheckpoint naming the first bad one."""
    K = _check_net_fields(arrays, _get(meta, "net", path), path)
    t = _int_field(_get(meta, "t", path), "t", path)
    steps = _int_field(_get(meta, "steps", path), "steps", path)
    if steps < t:
        raise _bad(path, "steps", f"must be >= the saved step t = {t}, got {steps}")
    if K is None:
        _real_field(_get(meta, "lr", path), "lr", path, positive=True)
        state = meta.get("backend_state")
        if state is not None and not isinstance(state, dict):
            raise _bad(path, "backend_state", f"must be null or an object, got {state!r}")
        _threshold_field(_get(meta, "hi", path), "hi", path)
    else:
        _check_members(meta, K, path)
    tol = _get(meta, "tol", path)
    if tol is not None:
        _real_field(tol, "tol", path, lo=0.0)
    _int_field(_get(meta, "record_every", path), "record_every", path, lo=1)
    every = _get(meta, "checkpoint_every", path)
    if every is not None:
        _int_field(every, "checkpoint_every", path, lo=1)
    rec = _get(meta, "record", path)
    if rec is not None and not (isinstance(rec, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in rec.items())):
        raise _bad(path, "record", f"must be null or {{name: stride >= 1}}, got {rec!r}")
    if not isinstance(_get(meta, "backend", path), str):
        raise _bad(path, "backend", f"must be a backend name, got {meta['backend']!r}")
    fp = _get(meta, "problem", path)
    if not (isinstance(fp, str) and len(fp) >= 16):
        raise _bad(path, "problem", f"must be the problem's sha256 fingerprint, got {fp!r}")
    _real_field(_get(meta, "wall_time", path), "wall_time", path, lo=0.0)
    ht = _array_field(arrays, "hist_t", path, ndim=1)
    if not np.issubdtype(ht.dtype, np.integer):
        raise _bad(path, "hist_t", f"must hold integer steps, got dtype {ht.dtype}")
    _array_field(arrays, "hist_excess", path, shape=ht.shape, finite=False)
    if K is None:
        _check_history(arrays, ht, t, path)
    else:
        counts = _array_field(arrays, "hist_n", path, shape=(K,))
        if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any() or counts.sum() != ht.size:
            raise _bad(path, "hist_n", f"must be {K} counts adding up to {ht.size} entries, got {counts}")
        for part in np.split(ht, np.cumsum(counts)[:-1]):
            _check_history(arrays, part, t, path)
    if np.isnan(arrays["hist_excess"]).any():
        raise _bad(path, "hist_excess", "contains NaN")
    if "data_X" in arrays or "data_Y" in arrays:
        widths = meta["net"]["widths"]
        X = _array_field(arrays, "data_X", path, ndim=2)
        _array_field(arrays, "data_Y", path, shape=(widths[-1], X.shape[1]))
        if X.shape[0] != widths[0]:
            raise _bad(path, "data_X", f"must have d_0 = {widths[0]} rows, got {X.shape}")
        r = _real_field(_get(meta, "rtol", path), "rtol", path, lo=0.0)
        if r >= 1:
            raise _bad(path, "rtol", f"must be < 1, got {r!r}")
    if "start" in meta:
        _check_net_fields(arrays, meta["start"], path, prefix="start_")
    recs = meta.get("recorders", [])
    if K is None:
        _check_recorders(arrays, recs, rec, path, _recorder_key(None), "recorders")
    elif not (isinstance(recs, list) and len(recs) == K):
        raise _bad(path, "recorders", f"must be a list of {K} lists (one per member), got {type(recs).__name__}")
    else:
        for j, infos in enumerate(recs):
            _check_recorders(arrays, infos, rec, path, _recorder_key(j), f"recorders[{j}]")


# -- the state of a training run ---------------------------------------------------
#
# engine.train writes the state of a run at step t: the model at state t, the
# history and the recorded diagnostics of steps < t (those at t are recomputed
# on resume), and the settings that make the resumed run the same run. A
# Network's run keeps the single-network layout; an ensemble's has one entry per
# member in ``lr``, ``hi``, ``backend_state``, ``members`` (status, stop step,
# message) and ``recorders``, and its history as ``hist_t`` / ``hist_excess``
# concatenated over members with ``hist_n`` entries each.

# What a member of an ensemble run is doing: stepping, or stopped and why.
MEMBER_STATUS = ("running", "converged", "stopped", "diverged")


def _recorder_key(j):
    """Array name prefix of recorder k (of ensemble member j; None for a Network's run)."""
    return (lambda k: f"rec{k}") if j is None else (lambda k: f"m{j}_rec{k}")


def save_run(path, *, model, prob, start, recorders, histories, t, settings) -> None:
    """Write the state of a training run at step ``t`` to ``path`` (atomic, checksummed).

    model       the Network or Ensemble at state t
    start       the model at step 0 (kept with ``record=``, whose diagnostics refer to it) or None
    recorders   per member, its ``engine.recording.Recorder`` list
    histories   per member, (steps, excesses) recorded so far
    settings    JSON-able: lr, tol (the absolute stop threshold), steps, record_every,
                record, backend, backend_state, checkpoint_every, hi, wall_time (and members)
    Raises CheckpointError for diagnostics whose values are not numeric, OSError from the disk.
    """
    single = isinstance(model, Network)
    arrays, net_meta = pack_network(model)
    meta = dict(settings, engine_version=__version__, net=net_meta, t=int(t), problem=prob.fingerprint)
    if prob.X.nbytes + prob.Y.nbytes <= DATA_LIMIT:
        arrays["data_X"], arrays["data_Y"] = prob.X, prob.Y
        meta["rtol"] = prob.rtol
    arrays["hist_t"] = np.asarray([s for ts, _ in histories for s in ts], dtype=np.int64)
    arrays["hist_excess"] = np.asarray([e for _, es in histories for e in es], dtype=np.float64)
    if not single:
        arrays["hist_n"] = np.array([len(ts) for ts, _ in histories], dtype=np.int64)
    if start is not None:
        a2, m2 = pack_network(start, prefix="start_")
        arrays.update(a2)
        meta["start"] = m2
    infos = [[_pack_recorder(rec, _recorder_key(None if single else j)(k), arrays, t)
              for k, rec in enumerate(recs)] for j, recs in enumerate(recorders)]
    meta["recorders"] = infos[0] if single else infos
    save(path, arrays, meta)


def _pack_recorder(rec, key, arrays, t):
    """Store a recorder's entries for steps < t (those at t are recomputed on resume)."""
    n = len(rec.t)
    while n and rec.t[n - 1] >= t:
        n -= 1
    arrays[f"{key}_t"] = np.asarray(rec.t[:n], dtype=np.int64)
    vals = [np.asarray(v) for v in rec.values[:n]]
    for v in vals:
        if v.dtype == object:
            raise CheckpointError(f"record: values of diagnostic {rec.name!r} cannot be checkpointed "
                                  f"(type {type(rec.values[0]).__name__})")
    kind = "stacked" if vals and len({(v.shape, v.dtype) for v in vals}) == 1 else "each"
    if kind == "stacked":
        arrays[f"{key}_values"] = np.stack(vals)
    else:
        for j, v in enumerate(vals):
            arrays[f"{key}_v{j}"] = v
    scalar = bool(vals) and all(np.ndim(v) == 0 and not isinstance(v0, np.ndarray)
                                for v, v0 in zip(vals, rec.values))
    return {"name": rec.name, "n": n, "kind": kind, "scalar": scalar, "seconds": rec.seconds}


def restore_recorders(recorders, saved) -> None:
    """Give each member's recorders (made for the same ``record=``) the entries ``saved`` holds."""
    single = saved.members is None
    infos = saved.meta.get("recorders", [])
    for j, recs in enumerate(recorders):
        key = _recorder_key(None if single else j)
        for k, (rec, info) in enumerate(zip(recs, infos if single else infos[j])):
            n = info["n"]
            rec.t = saved.arrays[f"{key(k)}_t"].tolist()
            if info["kind"] == "stacked":
                stacked = saved.arrays[f"{key(k)}_values"]
                vals = [stacked[i] for i in range(n)]
            else:
                vals = [saved.arrays[f"{key(k)}_v{i}"] for i in range(n)]
            if info["scalar"]:
                vals = [v.item() for v in vals]
            rec.values = vals
            rec.seconds = float(info["seconds"])


class Checkpoint:
    """A verified checkpoint read from disk.

    Attributes: ``path``, ``meta`` (dict), ``step`` (the state's step t),
    ``members`` (K for an ensemble's run, None for a network's), ``t`` and
    ``excess`` (history recorded before t; all members' concatenated for an
    ensemble, see ``histories``), ``lr`` (a network's; per member in ``meta``).
    """

    def __init__(self, path, arrays):
        self.path = os.fspath(path)
        self.meta = arrays.pop("__meta__")
        validate_fields(self.meta, arrays, self.path)
        self.arrays = arrays
        self.step = int(self.meta["t"])
        self.members = self.meta["net"].get("members")
        self.lr = float(self.meta["lr"]) if self.members is None else float("nan")
        self.t = arrays["hist_t"]
        self.excess = arrays["hist_excess"]

    def histories(self) -> list:
        """Per member, (steps, excesses) recorded before ``step``."""
        if self.members is None:
            return [(self.t, self.excess)]
        cut = np.cumsum(self.arrays["hist_n"])[:-1]
        return list(zip(np.split(self.t, cut), np.split(self.excess, cut)))

    def check_problem(self, prob) -> None:
        if prob.fingerprint != self.meta["problem"]:
            raise CheckpointMismatch(
                f"prob: this checkpoint was trained on different data (its problem fingerprint "
                f"{self.meta['problem'][:16]}... differs from this problem's "
                f"{prob.fingerprint[:16]}...); resuming on other data would not continue the run")

    def problem(self):
        """The Problem the run was trained on, rebuilt from the stored X and Y.

        Raises TypeError naming ``prob`` when the data were too large to store
        (``DATA_LIMIT``): pass the Problem yourself then.
        """
        if "data_X" not in self.arrays:
            raise TypeError(
                f"prob: checkpoint {self.path!r} does not store the data (X and Y exceed "
                f"{DATA_LIMIT // 1024 ** 2} MiB); pass prob=engine.Problem(X, Y)")
        prob = Problem(self.arrays["data_X"], self.arrays["data_Y"], rtol=float(self.meta["rtol"]))
        self.check_problem(prob)
        return prob

    def network(self, prob):
        """The network (or ensemble) at step ``self.step``, bound to ``prob`` (which must match)."""
        self.check_problem(prob)
        return unpack_network(self.arrays, self.meta["net"], prob)

    def start_network(self, prob):
        """The network at the start of the run (saved only when diagnostics were recorded)."""
        if "start" not in self.meta:
            return None
        self.check_problem(prob)
        return unpack_network(self.arrays, self.meta["start"], prob, prefix="start_")

    def __repr__(self) -> str:
        m = self.meta
        what = "" if self.members is None else f"members={self.members}, "
        return (f"Checkpoint({self.path!r}, step={self.step}, {what}widths={m['net']['widths']}, "
                f"init={m['net']['init']!r}, lr={m['lr']!r}, backend={m['backend']!r})")


def load(path) -> Checkpoint:
    """Read and verify a checkpoint (raises CorruptCheckpoint, never returns a damaged one)."""
    return Checkpoint(path, _read(path))
