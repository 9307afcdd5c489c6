"""Checkpoint/resume: exact resume, atomic writes under kill -9, corruption detected."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import engine
from engine import checkpoint as ck
from engine.train import LearningRateWarning

WIDTHS = [30, 16, 16, 16, 4]


@pytest.fixture(scope="module")
def prob():
    return engine.Problem(*engine.synthetic(30, 12, 4, seed=0))


def _same_run(a, b):
    """Bit-identical histories, records and weights."""
    assert a.steps == b.steps and a.converged == b.converged and a.lr == b.lr
    np.testing.assert_array_equal(a.t, b.t)
    np.testing.assert_array_equal(a.excess, b.excess)
    for W, V in zip(a.net.normalized(), b.net.normalized()):
        np.testing.assert_array_equal(W, V)
    assert a.records.keys() == b.records.keys()
    for k in a.records:
        np.testing.assert_array_equal(a.records[k]["t"], b.records[k]["t"])
        for u, v in zip(a.records[k]["values"], b.records[k]["values"]):
            np.testing.assert_array_equal(u, v)


class Interrupt(Exception):
    pass


def _interrupt_at(t_stop):
    def cb(t, ex, net):
        if t >= t_stop:
            raise Interrupt
    return cb


AVAILABLE = [nm for nm, (ok, _) in engine.kernels.availability().items() if ok]


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("init,dtype", [("gaussian", "float64"), ("orthogonal", "float64"),
                                        ("gaussian", "float32")])
def test_resume_equals_uninterrupted(prob, tmp_path, backend, init, dtype):
    kw = dict(lr="theory", steps=47, record_every=3, record={"distance": 7}, backend=backend)
    ref = engine.train(engine.init.by_name(init)(WIDTHS, seed=1, dtype=dtype), prob, **kw)
    path = tmp_path / "run.ckpt"
    net = engine.init.by_name(init)(WIDTHS, seed=1, dtype=dtype)
    with pytest.raises(Interrupt):     # the process "dies" at step 25, after the checkpoint at 20
        engine.train(net, prob, checkpoint=path, checkpoint_every=10, callback=_interrupt_at(25), **kw)
    saved = ck.load(path)
    assert saved.step == 20 and list(saved.t) == list(range(0, 20, 3))
    res = engine.train(prob=prob, resume=path)
    _same_run(res, ref)
    assert res.backend == ref.backend and res.net.dtype == np.dtype(dtype)
    assert res.net.hidden_uniform
    # the final state was checkpointed: resuming a finished run returns it unchanged
    assert ck.load(path).step == 47
    again = engine.train(prob=prob, resume=path)
    _same_run(again, ref)


def test_resume_extends_run_and_tol(prob, tmp_path):
    path = tmp_path / "c"
    ref = engine.train(engine.init.orthogonal(WIDTHS, seed=2), prob, lr="theory", steps=80,
                       backend="numpy")
    engine.train(engine.init.orthogonal(WIDTHS, seed=2), prob, lr="theory", steps=30,
                 backend="numpy", checkpoint=path)      # only the final state is written
    assert ck.load(path).step == 30
    res = engine.train(prob=prob, resume=path, steps=80)
    _same_run(res, ref)
    # tol: convergence is the same state with or without interruption
    tol = 1e-3 * float(ref.excess[0])
    ref = engine.train(engine.init.orthogonal(WIDTHS, seed=2), prob, lr="theory", steps=500, atol=tol,
                       backend="numpy")
    with pytest.raises(Interrupt):
        engine.train(engine.init.orthogonal(WIDTHS, seed=2), prob, lr="theory", steps=500, atol=tol,
                     backend="numpy", checkpoint=path, checkpoint_every=4, callback=_interrupt_at(6),
                     overwrite=True)   # the path holds the earlier (tol-less) run
    res = engine.train(prob=prob, resume=path)
    assert ref.converged
    _same_run(res, ref)


def test_checkpoint_contents(prob, tmp_path):
    path = tmp_path / "c.npz"
    net = engine.init.gaussian(WIDTHS, seed=3, sigma=[1.0, 2.0, 0.5, 1.0])
    engine.train(net, prob, lr=1e-3, steps=5, backend="numpy", checkpoint=path)
    c = ck.load(path)
    m = c.meta
    assert m["format"] == ck.FORMAT and m["engine_version"] == engine.__version__
    assert m["net"]["init"] == "gaussian" and m["net"]["seed"] == 3 and m["net"]["widths"] == WIDTHS
    assert m["lr"] == 1e-3 and m["backend"] == "numpy" and m["problem"] == prob.fingerprint
    assert c.step == 5 and "Checkpoint(" in repr(c)
    back = c.network(prob)
    np.testing.assert_array_equal(back.sigma, [1.0, 2.0, 0.5, 1.0])
    assert back.log_alpha == net.log_alpha
    for W, V in zip(back.weights(), net.weights()):
        np.testing.assert_array_equal(W, V)
    with zipfile.ZipFile(path) as z:      # no pickles: every member is a plain .npy
        assert all(n.endswith(".npy") for n in z.namelist())


# -- corruption ------------------------------------------------------------------

@pytest.fixture
def good(prob, tmp_path):
    path = tmp_path / "good.ckpt"
    engine.train(engine.init.gaussian(WIDTHS, seed=4), prob, lr=1e-3, steps=3, backend="numpy",
                 checkpoint=path)
    return path


@pytest.mark.parametrize("where", [0.02, 0.3, 0.5, 0.7, 0.97])
def test_flipped_byte_is_rejected(prob, good, where):
    data = bytearray(good.read_bytes())
    k = int(where * len(data))
    data[k] ^= 0x5A
    good.write_bytes(bytes(data))
    with pytest.raises(ck.CorruptCheckpoint, match="^resume: .*(corrupt|not an engine checkpoint)"):
        engine.train(prob=prob, resume=good)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_file_is_rejected(prob, good, keep):
    data = good.read_bytes()
    n = int(keep * len(data)) if isinstance(keep, float) else (keep if keep >= 0 else len(data) - 1)
    good.write_bytes(data[:n])
    with pytest.raises(ck.CorruptCheckpoint, match="^resume: .*corrupt"):
        ck.load(good)


def test_consistent_tampering_fails_checksum(prob, good):
    """Rewrite the container with valid zip CRCs but altered weights: only the sha256 catches it."""
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["layer_2"] = arrays["layer_2"].copy()
    arrays["layer_2"][0, 0] += 1e-12
    np.savez(good, **arrays)
    os.replace(str(good) + ".npz", good)
    with pytest.raises(ck.CorruptCheckpoint, match="no intact checksum trailer"):
        engine.train(prob=prob, resume=good)
    # ... even with a valid whole-file trailer the inner sha256 over the arrays fails
    import hashlib
    body = good.read_bytes()
    good.write_bytes(body + ck._TRAILER_TAG + hashlib.sha256(body).hexdigest().encode() + b"\n")
    with pytest.raises(ck.CorruptCheckpoint, match="fails its checksum .*contents hash"):
        engine.train(prob=prob, resume=good)


def test_every_single_byte_flip_is_rejected(prob, tmp_path):
    """Exhaustive over a small checkpoint's bytes (every 7th, all regions: headers, data,
    zip directory, trailer): no flip is ever loaded."""
    path = tmp_path / "small"
    engine.train(engine.init.gaussian([3, 2, 1], seed=0), engine.Problem(np.eye(3), np.ones((1, 3))),
                 lr=1e-3, steps=1, backend="numpy", checkpoint=path)
    data = path.read_bytes()
    bad = tmp_path / "bad"
    for k in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[k] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ck.CorruptCheckpoint):
            ck.load(bad)


def test_not_a_checkpoint(prob, tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, a=np.ones(3))
    with pytest.raises(ck.CorruptCheckpoint, match="not an engine checkpoint"):
        ck.load(p)
    with open(p, "ab") as f:       # a valid trailer on a plain .npz: still not a checkpoint
        import hashlib
        f.write(ck._TRAILER_TAG + hashlib.sha256(p.read_bytes()).hexdigest().encode() + b"\n")
    with pytest.raises(ck.CorruptCheckpoint, match="not an engine checkpoint"):
        ck.load(p)
    with pytest.raises(FileNotFoundError, match="^resume: .*does not exist"):
        engine.train(prob=prob, resume=tmp_path / "missing.ckpt")


# -- misuse ----------------------------------------------------------------------

def test_resume_refuses_other_data_and_other_settings(prob, good):
    other = engine.Problem(*engine.synthetic(30, 12, 4, seed=99))
    with pytest.raises(ck.CheckpointMismatch, match="^prob: .*different data"):
        engine.train(prob=other, resume=good)
    with pytest.raises(ValueError, match="^lr: the checkpoint was trained with"):
        engine.train(prob=prob, resume=good, lr=2e-3)
    with pytest.raises(ValueError, match="^tol"):
        engine.train(prob=prob, resume=good, tol=1e-9)
    with pytest.raises(ValueError, match="^record_every"):
        engine.train(prob=prob, resume=good, record_every=5)
    with pytest.raises(ValueError, match="^record"):
        engine.train(prob=prob, resume=good, record={"distance": 1})
    with pytest.raises(ValueError, match="^steps: the checkpoint is already at step 3"):
        engine.train(prob=prob, resume=good, steps=2)
    with pytest.raises(ValueError, match="^net: has widths"):
        engine.train(engine.init.gaussian([30, 16, 4], seed=4), prob, resume=good)
    with pytest.raises(ValueError, match="^net: has widths"):
        engine.train(engine.init.gaussian(WIDTHS, seed=4, dtype="float32"), prob, resume=good)
    with pytest.raises(TypeError, match="^net"):
        engine.train("net", prob, resume=good)
    with pytest.raises(TypeError, match="^prob"):
        engine.train(prob=(prob.X, prob.Y), resume=good)
    with pytest.raises(TypeError, match="^resume"):
        engine.train(prob=prob, resume=3)
    # the same values passed explicitly are fine
    res = engine.train(prob=prob, resume=good, lr=1e-3, tol=None, record_every=1, steps=4)
    assert res.steps == 4


def test_checkpoint_arguments_validated_before_training(prob, tmp_path):
    net = engine.init.gaussian(WIDTHS, seed=0)
    with pytest.raises(ValueError, match="^checkpoint: directory .* does not exist"):
        engine.train(net, prob, lr=1e-3, steps=1, checkpoint=tmp_path / "nope" / "c.ckpt")
    with pytest.raises(ValueError, match="^checkpoint: .* is a directory"):
        engine.train(net, prob, lr=1e-3, steps=1, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="^checkpoint_every: needs checkpoint"):
        engine.train(net, prob, lr=1e-3, steps=1, checkpoint_every=5)
    with pytest.raises(ValueError, match="^checkpoint_every"):
        engine.train(net, prob, lr=1e-3, steps=1, checkpoint=tmp_path / "c", checkpoint_every=0)
    with pytest.raises(TypeError, match="^checkpoint"):
        engine.train(net, prob, lr=1e-3, steps=1, checkpoint=1.5)


def test_read_only_directory_refused_up_front(prob, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):     # root ignores permission bits: simulate the answer
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(ro) else real(p, mode))
    try:
        with pytest.raises(PermissionError, match="^checkpoint: .*not writable"):
            engine.train(engine.init.gaussian(WIDTHS, seed=0), prob, lr=1e-3, steps=1,
                         checkpoint=ro / "c.ckpt")
    finally:
        ro.chmod(0o700)


def test_divergence_keeps_last_checkpoint(prob, tmp_path):
    path = tmp_path / "c"
    net = engine.init.orthogonal(WIDTHS, seed=0)
    lr = 3 * engine.theory.lr_bound("orthogonal", prob, net.depth)     # diverges at step 6
    with pytest.warns(LearningRateWarning):
        with pytest.raises(engine.DivergenceError) as info:
            engine.train(net, prob, lr=lr, steps=1000, backend="numpy", checkpoint=path, checkpoint_every=2)
    c = ck.load(path)
    # state 6 exploded: the checkpoint due at step 6 is not written (issue 11 item 2), the
    # file keeps state 4, and resuming it reaches the same divergence, not an instant one
    assert info.value.step == 6 and c.step == 4 and np.isfinite(c.excess).all()
    np.testing.assert_array_equal(c.excess, info.value.result.excess[:len(c.excess)])
    for W in c.network(prob).weights():
        assert np.isfinite(W).all()
    with pytest.raises(engine.DivergenceError) as again:
        engine.train(resume=path, checkpoint_every=1000)
    assert again.value.step == 6


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("lr", [1e308, 1e100, 1e6])
def test_divergence_net_is_last_finite_state_below_threshold(prob, tmp_path, backend, lr):
    """DivergenceError.net is state step-1 exactly (finite, below the threshold), even at lr 1e308,
    and a periodic checkpoint never holds a diverged state."""
    import warnings
    path = tmp_path / "c"
    net = engine.init.gaussian(WIDTHS, seed=2)
    start = net.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(engine.DivergenceError) as info:
            engine.train(net, prob, lr=lr, steps=50, backend=backend, checkpoint=path, checkpoint_every=1)
    e = info.value
    assert e.net_step == e.step - 1
    for W in e.net.weights():
        assert np.isfinite(W).all()
    ref = start.copy()       # replay: the same number of plain steps from the start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine.train(ref, prob, lr=lr, steps=e.net_step, backend=backend)   # steps=0 still binds
    for W, V in zip(e.net.normalized(), ref.normalized()):
        np.testing.assert_array_equal(W, V)
    if path.exists():
        c = ck.load(path)
        assert c.step < e.step
        for W in c.network(prob).weights():
            assert np.isfinite(W).all()


def test_divergence_long_after_a_snapshot_replays_to_the_last_state(prob):
    """Divergence detected far from the last kept copy (SNAPSHOT_EVERY) still returns state step-1."""
    import warnings
    tr = sys.modules["engine.train"]
    net = engine.init.orthogonal(WIDTHS, seed=1)
    lr = 2.5 * engine.theory.lr_bound("orthogonal", prob, net.depth)     # diverges at step 45
    start = net.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(engine.DivergenceError) as info:
            engine.train(net, prob, lr=lr, steps=5000, backend="numpy")
        e = info.value
        assert e.step % tr.SNAPSHOT_EVERY > 1, "choose an lr that diverges between two snapshots"
        ref = start.copy()
        engine.train(ref, prob, lr=lr, steps=e.step - 1, backend="numpy")
    assert e.net_step == e.step - 1
    for W, V in zip(e.net.normalized(), ref.normalized()):
        np.testing.assert_array_equal(W, V)


# -- kill -9 ---------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import engine
    from engine import checkpoint as ck

    path, mode = sys.argv[1], sys.argv[2]
    prob = engine.Problem(*engine.synthetic(30, 12, 4, seed=0))
    net = engine.init.gaussian({widths!r}, seed=1)
    if mode != "free":
        real_savez, calls = np.savez, [0]
        def savez(f, **arrays):
            calls[0] += 1
            if calls[0] == 3:                      # the third checkpoint write dies midway
                if mode == "torn":                 # ... after half of the bytes hit the temp file
                    import io
                    buf = io.BytesIO(); real_savez(buf, **arrays)
                    data = buf.getvalue(); f.write(data[:len(data) // 2]); f.flush(); os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real_savez(f, **arrays)
        ck.np.savez = savez
    engine.train(net, prob, lr="theory", steps={steps}, backend="numpy",
                 checkpoint=path, checkpoint_every=5, record={{"distance": 4}})
""")


def _spawn(tmp_path, mode, steps=60):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(widths=WIDTHS, steps=steps))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "run.ckpt"), mode],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def uninterrupted(prob):
    return engine.train(engine.init.gaussian(WIDTHS, seed=1), prob, lr="theory", steps=60,
                        backend="numpy", record={"distance": 4})


@pytest.mark.parametrize("mode", ["torn", "before-data"])
def test_kill9_during_write_leaves_previous_checkpoint(prob, tmp_path, mode, uninterrupted):
    proc = _spawn(tmp_path, mode)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    c = ck.load(tmp_path / "run.ckpt")        # the second checkpoint, intact
    assert c.step == 10
    leftovers = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert leftovers, "the kill should have hit a write in progress"
    res = engine.train(resume=tmp_path / "run.ckpt")      # data from the checkpoint itself
    _same_run(res, uninterrupted)


def test_kill9_at_a_random_moment_then_resume(prob, tmp_path):
    """A real, unpatched run killed while it is checkpointing; resume equals the uninterrupted run."""
    path = tmp_path / "run.ckpt"
    proc = _spawn(tmp_path, "free", steps=1500)     # ~300 checkpoint writes
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(path):
                break
            time.sleep(0.001)
        time.sleep(0.003)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the child should have been killed mid-run"
    c = ck.load(path)
    assert 0 < c.step < 1500
    res = engine.train(prob=prob, resume=path)
    ref = engine.train(engine.init.gaussian(WIDTHS, seed=1), prob, lr="theory", steps=1500,
                       backend="numpy", record={"distance": 4})
    _same_run(res, ref)


def test_failed_write_warns_and_keeps_result_and_previous_file(prob, tmp_path, monkeypatch):
    """Disk full at the second write: a CheckpointWarning, the run completes, file 1 is intact."""
    import errno
    from engine.train import CheckpointWarning
    path = tmp_path / "c"
    real, calls = ck.np.savez, [0]

    def savez(f, **arrays):
        calls[0] += 1
        if calls[0] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(ck.np, "savez", savez)
    with pytest.warns(CheckpointWarning, match="^checkpoint: writing .* at step [0-9]+ failed .*No space"):
        run = engine.train(engine.init.gaussian(WIDTHS, seed=0), prob, lr=1e-3, steps=30,
                           backend="numpy", checkpoint=path, checkpoint_every=5)
    assert run.steps == 30 and len(run.excess) == 31
    assert ck.load(path).step == 5
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]    # temp files cleaned up


def test_engine_checkpoint_is_importable_as_attribute():
    import importlib
    eng = importlib.import_module("engine")
    assert eng.checkpoint.load is ck.load and eng.memory.estimate_bytes


def test_unsaveable_diagnostic_warns_and_run_completes(prob, tmp_path, monkeypatch):
    from engine import diagnostics
    from engine.train import CheckpointWarning
    monkeypatch.setitem(diagnostics.RECORDERS, "label", lambda net, prob: (lambda n: {"odd": object()}))
    with pytest.warns(CheckpointWarning, match="cannot be checkpointed"):
        run = engine.train(engine.init.gaussian(WIDTHS, seed=0), prob, lr=1e-3, steps=4, backend="numpy",
                           record={"label": 2}, checkpoint=tmp_path / "c", checkpoint_every=2)
    assert run.steps == 4 and len(run.records["label"]["values"]) == 3


def test_resume_into_a_given_network(prob, tmp_path):
    """train(net, prob, resume=path): the given network takes the checkpoint's state."""
    path = tmp_path / "c"
    kw = dict(lr="theory", steps=20, backend="numpy")
    ref = engine.train(engine.init.orthogonal(WIDTHS, seed=5), prob, **kw)
    with pytest.raises(Interrupt):
        engine.train(engine.init.orthogonal(WIDTHS, seed=5), prob, checkpoint=path, checkpoint_every=4,
                     callback=_interrupt_at(9), **kw)
    mine = engine.init.orthogonal(WIDTHS, seed=123)       # another seed: its state is replaced
    before = mine.normalized()
    for bad in (dict(lr=1.0), dict(steps=-1), dict(backend="cuda"), dict(tol=1e-3)):
        with pytest.raises(ValueError):                   # refused: the given net is untouched
            engine.train(mine, prob, resume=path, **bad)
        for a, b in zip(before, mine.normalized()):
            np.testing.assert_array_equal(a, b)
    res = engine.train(mine, prob, resume=path, lr="theory", steps=20, tol=None)
    assert res.net is mine and mine.hidden_uniform
    _same_run(res, ref)


def _odd_step_resume(backend, every=3, stop=4, dtype="float64"):
    """Interrupt right after a checkpoint at an odd step (3) of a run where alternating
    single-pass schedules are chosen (r = 16 <= 2 d_out = 20) and compare with an
    uninterrupted run: bit-identical requires the sweep phase to be resumed too."""
    import tempfile
    prob = engine.Problem(*engine.synthetic(64, 16, 10, seed=0))
    widths = [64, 32, 32, 32, 10]
    kw = dict(lr="theory", steps=20, backend=backend)
    ref = engine.train(engine.init.gaussian(widths, seed=1, dtype=dtype), prob, **kw)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c")
        with pytest.raises(Interrupt):
            engine.train(engine.init.gaussian(widths, seed=1, dtype=dtype), prob, checkpoint=path,
                         checkpoint_every=every, callback=_interrupt_at(stop), **kw)
        assert ck.load(path).step == every
        res = engine.train(prob=prob, resume=path)
    _same_run(res, ref)


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resume_at_odd_step_with_default_schedule(backend, dtype):
    _odd_step_resume(backend, dtype=dtype)


def test_resume_at_odd_step_cblas_single_pass(monkeypatch):
    if "cblas" not in AVAILABLE:
        pytest.skip("cblas backend not available here")
    from engine.kernels import cblas_backend
    monkeypatch.setattr(cblas_backend, "SCHEDULE", "single-pass")
    _odd_step_resume("cblas")


def test_resume_without_prob_uses_stored_data(prob, tmp_path, monkeypatch):
    path = tmp_path / "c"
    kw = dict(lr="theory", steps=25, backend="numpy")
    ref = engine.train(engine.init.orthogonal(WIDTHS, seed=6), prob, **kw)
    with pytest.raises(Interrupt):
        engine.train(engine.init.orthogonal(WIDTHS, seed=6), prob, checkpoint=path, checkpoint_every=5,
                     callback=_interrupt_at(12), **kw)
    c = ck.load(path)
    assert c.problem().fingerprint == prob.fingerprint
    res = engine.train(resume=path)                 # the call: no prob needed
    _same_run(res, ref)
    # data above the limit are not stored: then prob= is required, with a clear message
    monkeypatch.setattr(ck, "DATA_LIMIT", 10)
    engine.train(engine.init.orthogonal(WIDTHS, seed=6), prob, checkpoint=path, **kw)
    with pytest.raises(TypeError, match="^prob: checkpoint .* does not store the data"):
        engine.train(resume=path)
    _same_run(engine.train(prob=prob, resume=path), ref)


def test_a_write_removes_temp_files_left_by_a_killed_earlier_write(prob, tmp_path):
    """A kill -9 mid-write leaves `<name>.<random>.tmp`; the next successful write
    of the same checkpoint deletes such leftovers (older than its own start) and
    leaves newer ones (a concurrent writer's) and other files alone."""
    import os
    import time
    path = tmp_path / "run.ckpt"
    stale = tmp_path / "run.ckpt.abc123.tmp"
    fresh = tmp_path / "run.ckpt.def456.tmp"
    other = tmp_path / "other.ckpt.zzz.tmp"
    for f in (stale, fresh, other):
        f.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    os.utime(fresh, (time.time() + 60, time.time() + 60))
    engine.train(engine.init.orthogonal(WIDTHS, seed=1), prob, steps=3, backend="numpy", checkpoint=path)
    assert ck.load(path).step == 3
    assert not stale.exists() and fresh.exists() and other.exists()


# -- issue 11: one file descriptor, every field validated ----------------------------

def _rewrite(path, edit_meta=None, edit_arrays=None):
    """Rewrite a checkpoint with edited metadata/arrays and *valid* checksums (a hostile tool)."""
    import json
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    arrays.pop("sha256")
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    ck.save(path, arrays, meta)


def test_load_reads_size_and_contents_through_one_descriptor(prob, tmp_path, monkeypatch):
    """A writer's os.replace between 'size of the path' and 'open the path' must not make an
    intact checkpoint look corrupt (seen 14 times in 3308 racing loads)."""
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    engine.train(engine.init.gaussian(WIDTHS, seed=4), prob, lr=1e-3, steps=3, backend="numpy", checkpoint=a)
    engine.train(engine.init.gaussian(WIDTHS, seed=5), prob, lr=1e-3, steps=7, backend="numpy",
                 checkpoint=b, record={"distance": 2})
    real_getsize, real_open = os.path.getsize, open
    swapped = []

    def racing_getsize(p):          # the writer replaces the file right after its size was read
        n = real_getsize(p)
        if os.fspath(p) == str(a) and not swapped:
            swapped.append(1)
            os.replace(b, a)
        return n

    monkeypatch.setattr(os.path, "getsize", racing_getsize)
    c = ck.load(a)
    assert c.step in (3, 7)       # whichever file was opened, it is read whole and intact


@pytest.mark.parametrize("field,edit", [
    ("t", lambda m: m.update(t=-1)),
    ("hi", lambda m: m.update(hi="nan")),
    ("lr", lambda m: m.pop("lr")),
    ("lr", lambda m: m.update(lr=-1.0)),
    ("steps", lambda m: m.update(steps=1)),
    ("tol", lambda m: m.update(tol=float("nan"))),
    ("record_every", lambda m: m.update(record_every=0)),
    ("net.widths", lambda m: m["net"].update(widths=[30, 16, 4])),
    ("net.dtype", lambda m: m["net"].update(dtype="<i8")),
    ("net", lambda m: m.pop("net")),
    ("wall_time", lambda m: m.update(wall_time="x")),
    ("recorders", lambda m: m.update(recorders=[{"n": 1}])),
])
def test_checksum_valid_bad_metadata_names_the_field(good, field, edit):
    _rewrite(good, edit_meta=edit)
    with pytest.raises(ck.CorruptCheckpoint, match=f"invalid field '{field}'"):
        ck.load(good)


@pytest.mark.parametrize("field,edit", [
    ("layer_2", lambda a: a.update(layer_2=np.zeros((3, 3)))),
    ("log_s", lambda a: a.update(log_s=np.zeros(2))),
    ("hist_excess", lambda a: a.update(hist_excess=np.zeros(1))),
    ("layer_1", lambda a: a.update(layer_1=np.full((16, 16), np.nan))),
    ("net.widths", lambda a: a.pop("layer_3")),
    ("data_Y", lambda a: a.update(data_Y=np.zeros((4, 5)))),
])
def test_checksum_valid_bad_arrays_name_the_field(good, field, edit):
    _rewrite(good, edit_arrays=edit)
    with pytest.raises(ck.CorruptCheckpoint, match=f"invalid field '{field}'"):
        ck.load(good)
    with pytest.raises(ck.CorruptCheckpoint, match=field):
        engine.train(resume=good)


def test_resume_from_a_directory_names_the_argument(tmp_path):
    with pytest.raises(IsADirectoryError, match="resume: .* is a directory"):
        engine.train(resume=tmp_path)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        ck.load(tmp_path)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_ensemble_member_diverging_at_huge_lr_keeps_finite_weights(prob, backend):
    """Issue 11 item 2 for ensembles: a member that diverges (lr 1e308) is returned with the
    weights of a checked, finite state, and the other members are unaffected."""
    import warnings
    ens = engine.init.gaussian(WIDTHS, seed=3, ensemble=3)
    lr0 = engine.theory.lr_bound("gaussian", prob, len(WIDTHS) - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = engine.train(ens, prob, lr=[lr0, 1e308, 1e100], steps=100, backend=backend)
    assert list(res.diverged) == [False, True, True]
    for k in range(3):
        for W in ens.member(k).weights() if hasattr(ens, "member") else ens.members()[k].weights():
            assert np.isfinite(W).all()
    assert "weights kept from step 0" in res.messages[1]


# -- issue 11 item 1: an existing checkpoint is resumed or refused, never overwritten -----

def test_existing_checkpoint_is_resumed_not_overwritten(prob, tmp_path):
    path = tmp_path / "run.ckpt"
    kw = dict(lr="theory", steps=30, backend="numpy", checkpoint=path, checkpoint_every=5)
    with pytest.raises(Interrupt):
        engine.train(engine.init.gaussian(WIDTHS, seed=1), prob, callback=_interrupt_at(12), **kw)
    assert ck.load(path).step == 10
    seen = []
    res = engine.train(engine.init.gaussian(WIDTHS, seed=1), prob,          # the same call again
                       callback=lambda t, ex, net: seen.append(t), **kw)
    assert seen[0] == 10, "the re-run must continue from the checkpoint, not from step 0"
    ref = engine.train(engine.init.gaussian(WIDTHS, seed=1), prob, lr="theory", steps=30, backend="numpy")
    _same_run(res, ref)
    assert ck.load(path).step == 30


@pytest.mark.parametrize("change,field", [
    (dict(lr=1e-3), "lr"), (dict(seed=2), "seed"), (dict(widths=[30, 8, 8, 8, 4]), "widths"),
    (dict(tol=1e-3), "tol"), (dict(init="orthogonal"), "init"), (dict(data=1), "data"),
])
def test_existing_checkpoint_of_another_run_is_refused_unless_overwrite(prob, tmp_path, change, field):
    path = tmp_path / "run.ckpt"
    engine.train(engine.init.gaussian(WIDTHS, seed=1), prob, lr=2e-3, steps=20, backend="numpy",
                 checkpoint=path, checkpoint_every=5)
    before = path.read_bytes()
    widths = change.get("widths", WIDTHS)
    net = engine.init.by_name(change.get("init", "gaussian"))(widths, seed=change.get("seed", 1))
    p = engine.Problem(*engine.synthetic(30, 12, 4, seed=7)) if "data" in change else prob
    kw = dict(lr=change.get("lr", 2e-3), steps=20, backend="numpy", checkpoint=path, checkpoint_every=5,
              tol=change.get("tol"))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ck.CheckpointMismatch, match=f"checkpoint: .*already exists.*{field}.*overwrite=True"):
            engine.train(net, p, **kw)
        assert path.read_bytes() == before
        res = engine.train(net, p, overwrite=True, **kw)
    assert res.steps == 20 and ck.load(path).meta["lr"] == kw["lr"]


def test_resume_refuses_numpy_integer_steps_below_the_saved_step(good):
    with pytest.raises(ValueError, match="steps: the checkpoint is already at step 3"):
        engine.train(resume=good, steps=np.int64(2))
