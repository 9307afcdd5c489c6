"""Thread control: BLAS, OpenMP and Numba thread counts, changed only inside a context manager.

    with limit(blas=1):              # BLAS pools at 1 thread inside, restored on exit
        ...
    with thread_limits(backend, threads):   # what a backend's step needs (see there)
        ...

Global state (threadpoolctl limits, ``numba.set_num_threads``) is restored on
exit, also on error (STYLE.md, habit 5). One threadpoolctl controller serves
the whole package: building one scans the loaded libraries (~2 ms), entering a
limit then costs ~7 us. It is rebuilt when modules were imported since it was
built, so a BLAS loaded later (SciPy's, which Numba's ``np.dot`` calls) is not
missed.
"""
from __future__ import annotations

import contextlib
import sys

__all__ = ["limit", "thread_limits", "controller"]

_CONTROLLER = None          # (len(sys.modules) when built, ThreadpoolController)
# {"blas" | "openmp": the count the innermost enclosing ``limit`` set}: a nested limit asking
# for the same count changes nothing and is skipped (a stepper limits every step; inside a
# sweep's run limit that cost ~20 us a step, more than a small network's step). All of the
# package's thread control goes through ``limit``, so this is the count in force.
_ACTIVE = {}


def controller():
    """The shared threadpoolctl.ThreadpoolController (rebuilt after new imports)."""
    global _CONTROLLER
    n = len(sys.modules)
    if _CONTROLLER is None or _CONTROLLER[0] != n:
        import threadpoolctl
        _CONTROLLER = (n, threadpoolctl.ThreadpoolController())
    return _CONTROLLER[1]


@contextlib.contextmanager
def limit(blas=None, openmp=None, numba=None):
    """Inside the block at most ``blas`` BLAS threads, ``openmp`` OpenMP threads and
    ``numba`` Numba threads (None: that pool is left as it is)."""
    with contextlib.ExitStack() as stack:
        for api, n in (("blas", blas), ("openmp", openmp)):
            if n is None or _ACTIVE.get(api) == int(n):
                continue              # already so inside an enclosing limit: nothing to change
            stack.enter_context(controller().limit(limits=int(n), user_api=api))
            stack.callback(_ACTIVE.__setitem__, api, _ACTIVE.get(api))
            _ACTIVE[api] = int(n)
        if numba is not None:
            import numba as _numba
            old = _numba.get_num_threads()
            _numba.set_num_threads(int(numba))
            stack.callback(_numba.set_num_threads, old)
        yield


def thread_limits(backend, threads=None):
    """Keep BLAS threads and Numba threads from oversubscribing the cores.

    Inside the block:

    * ``numba`` backend: BLAS pools are limited to 1 thread (its kernels call
      no BLAS; an idle OpenBLAS pool that spins after a call would steal the
      cores from Numba's threads), and Numba uses ``threads`` threads if given.
    * ``cblas`` / ``numpy``: their parallelism is the BLAS pool (and, for
      cblas, the kernel's OpenMP threads), so both get ``threads`` threads if
      given (else are left as is) and Numba's pool, which sleeps, is left alone.

    ``backend`` is a backend module or its name.
    """
    name = backend if isinstance(backend, str) else getattr(backend, "name", "")
    if name == "numba":
        return limit(blas=1, numba=threads)
    if threads is None:
        return limit()
    return limit(blas=threads, openmp=threads if name == "cblas" else None)
