"""One JIT policy (engine/kernels/_jit.py) and one thread-control module (engine/kernels/threads.py)."""
import os
import re
import subprocess
import sys

import pytest

ENGINE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
numba = pytest.importorskip("numba")


def test_fastmath_sets_never_allow_nan_or_inf_to_vanish():
    from engine.kernels import _jit
    for flags in (_jit.FASTMATH, _jit.FASTMATH_DOT):
        assert not flags & {"nnan", "ninf", "fast"}
    assert _jit.FASTMATH < _jit.FASTMATH_DOT and _jit.EXACT == frozenset()


def test_every_compiled_kernel_goes_through_the_policy():
    """No module but _jit.py calls numba.njit / numba.jit itself."""
    offenders = []
    for dirpath, _, files in os.walk(ENGINE):
        for f in files:
            if f.endswith(".py") and f != "_jit.py":
                text = open(os.path.join(dirpath, f)).read()
                if re.search(r"\bnjit\b|numba\.jit\b|@jit\b(?!\()", text):
                    offenders.append(f)
    assert offenders == []


@pytest.mark.parametrize("value,ok", [("0", True), ("1", True), ("", True), ("maybe", False)])
def test_env_switches(value, ok):
    code = "import engine.kernels._jit as j; print(j.CACHE, j.USE_FASTMATH)"
    env = dict(os.environ, ENGINE_NUMBA_FASTMATH=value, ENGINE_NUMBA_CACHE="0",
               PYTHONPATH=os.path.dirname(ENGINE))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["False", "False" if value == "0" else "True"]
    else:
        assert out.returncode != 0 and "ENGINE_NUMBA_FASTMATH" in out.stderr


def test_limit_restores_blas_and_numba_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from engine.kernels import threads

    def blas():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before_blas, before_nb = blas(), numba.get_num_threads()
    with pytest.raises(RuntimeError):
        with threads.limit(blas=1, numba=1):
            assert set(blas()) <= {1} and numba.get_num_threads() == 1
            raise RuntimeError("restored on error too")
    assert blas() == before_blas and numba.get_num_threads() == before_nb
