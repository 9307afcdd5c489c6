"""Checkpoints of training runs: atomic, checksummed, exact.

``engine.train(net, prob, ..., checkpoint="run.ckpt", checkpoint_every=k)``
writes the state of the run every k steps (and the final state), and
``engine.train(resume="run.ckpt")`` (or with ``prob=`` for data too large to
store) continues it. The resumed
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
    data_X, data_Y                    the data (only up to DATA_LIMIT bytes)
    start_*   the network at the start of the run (only with ``record=``,
              whose diagnostics such as "distance" refer to it)
    rec_*     each recorder's steps, values and seconds
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

from .network import Network, _alloc_layers

__all__ = ["CheckpointError", "CorruptCheckpoint", "CheckpointMismatch", "Checkpoint",
           "load", "save", "FORMAT", "VERSION"]

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


def _check_file(path) -> None:
    """Verify the whole-file trailer: sha256 of every byte before it."""
    size = os.path.getsize(path)
    if size < _TRAILER_LEN:
        raise CorruptCheckpoint(f"resume: checkpoint {path!r} is corrupt or truncated and was not "
                                f"loaded ({size} bytes)")
    with open(path, "rb") as f:
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


def _read(path) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"resume: checkpoint {path!r} does not exist")
    _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
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
    if meta.get("format") != FORMAT:
        raise CorruptCheckpoint(f"resume: {path!r} is not an engine checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"resume: checkpoint {path!r} has format version {meta.get('version')}, "
            f"this engine reads version {VERSION}")
    arrays.pop("sha256")
    arrays["__meta__"] = meta
    return arrays


# -- networks ------------------------------------------------------------------

def pack_network(net: Network, prefix: str = "") -> tuple[dict, dict]:
    """Arrays and JSON metadata that rebuild ``net`` exactly (bound state included)."""
    arrays = {f"{prefix}layer_{i}": a for i, a in enumerate(net._layers)}
    arrays[f"{prefix}log_s"] = net._log_s
    arrays[f"{prefix}log_beta"] = np.array(net._log_beta)
    if net.sigma is not None:
        arrays[f"{prefix}sigma"] = net.sigma
    if net._bound is not None:
        arrays[f"{prefix}perp"] = net._perp
    seed = net.seed if isinstance(net.seed, (int, type(None))) else repr(net.seed)
    meta = {"widths": list(net.widths), "dtype": net.dtype.str, "init": net.init, "seed": seed,
            "bound": net._bound is not None}
    return arrays, meta


def unpack_network(arrays: dict, meta: dict, prob, prefix: str = "") -> Network:
    """Inverse of ``pack_network``; a bound network is bound to ``prob`` (checked by the caller)."""
    widths = tuple(meta["widths"])
    dtype = np.dtype(meta["dtype"])
    L = len(widths) - 1
    layers, stack = _alloc_layers(widths, dtype)
    for i in range(1, L):
        layers[i][...] = arrays[f"{prefix}layer_{i}"]
    first = arrays[f"{prefix}layer_0"]
    if not meta["bound"]:
        layers[0][...] = first
    seed = meta.get("seed")
    net = Network(layers, arrays[f"{prefix}log_s"], float(arrays[f"{prefix}log_beta"]),
                  init=meta["init"], seed=seed if not isinstance(seed, str) else None,
                  sigma=arrays.get(f"{prefix}sigma"), dtype=dtype, _stack=stack)
    if meta["bound"]:
        basis = prob.reduced(dtype).basis
        if first.shape != (widths[1], basis.shape[1]):
            raise CheckpointMismatch(
                f"prob: the checkpoint's first layer has shape {first.shape}, which does not fit "
                f"this problem (rank {basis.shape[1]})")
        net._layers[0] = np.ascontiguousarray(first, dtype=dtype)
        net._perp = np.ascontiguousarray(arrays[f"{prefix}perp"], dtype=dtype)
        net._bound = (prob.token, basis)
    return net


class Checkpoint:
    """A verified checkpoint read from disk.

    Attributes: ``path``, ``meta`` (dict), ``step`` (the state's step t),
    ``t`` and ``excess`` (history recorded before t), ``lr``.
    """

    def __init__(self, path, arrays):
        self.path = os.fspath(path)
        self.meta = arrays.pop("__meta__")
        self.arrays = arrays
        self.step = int(self.meta["t"])
        self.lr = float(self.meta["lr"])
        self.t = arrays["hist_t"]
        self.excess = arrays["hist_excess"]

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
        from .problem import Problem
        prob = Problem(self.arrays["data_X"], self.arrays["data_Y"], rtol=float(self.meta["rtol"]))
        self.check_problem(prob)
        return prob

    def network(self, prob) -> Network:
        """The network at step ``self.step``, bound to ``prob`` (which must match)."""
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
        return (f"Checkpoint({self.path!r}, step={self.step}, widths={m['net']['widths']}, "
                f"init={m['net']['init']!r}, lr={self.lr:.4g}, backend={m['backend']!r})")


def load(path) -> Checkpoint:
    """Read and verify a checkpoint (raises CorruptCheckpoint, never returns a damaged one)."""
    return Checkpoint(path, _read(path))
