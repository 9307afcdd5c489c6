"""asv suites: JIT compile time and start-up, each in a fresh Python process.

    track_cold_import_and_first_step   NUMBA_CACHE_DIR = a new empty directory:
                                       ``import engine`` + the first step,
                                       compilation included (target <= 10 s)
    track_warm_import_and_first_step   the same with that cache already filled
                                       by a previous process (target <= 1 s)

``kernel``: "numba" is the single-network backend (``backend="numba"``);
"ensemble" the member-parallel kernel of ``engine.ensemble``. Also runnable
by hand: ``python bench/bench_compile.py``.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    from . import common
except ImportError:  # run as a script
    import common

_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import engine
t1 = time.perf_counter()
kind = sys.argv[1]
X, Y = engine.synthetic(64, 16, 10, seed=0)
prob = engine.Problem(X, Y)
widths = [64] + [32] * 7 + [10]
if kind == "ensemble":
    from engine.ensemble import Ensemble, train
    ens = Ensemble.orthogonal(widths, seeds=range(4))
    t2 = time.perf_counter()
    train(ens, prob, steps=1, backend="numba")
else:
    net = engine.init.orthogonal(widths, seed=0)
    t2 = time.perf_counter()
    engine.train(net, prob, steps=1, backend=kind)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first_step": t3 - t2, "total": (t1 - t0) + (t3 - t2)}))
"""


def probe(kind, cache_dir):
    """Run the probe in a fresh interpreter with NUMBA_CACHE_DIR=cache_dir; returns its timings."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", _PROBE, kind], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"probe failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Compile:
    params = (["numba", "ensemble"],)
    param_names = ["kernel"]
    timeout = 900
    number = 1
    repeat = 1

    def setup_cache(self):
        """One Numba cache per kernel kind, filled once by a cold probe (shared
        by the warm track, which then costs one warm probe, not a cold one)."""
        ok, why = common.backend_available("numba")
        if not ok:
            return {"unavailable": why}
        dirs = {}
        for kind in self.params[0]:
            # a fixed place, emptied first: runs do not pile up caches in the temp dir
            d = os.path.join(tempfile.gettempdir(), f"engine-asv-numba-cache-{kind}")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            probe(kind, d)
            dirs[kind] = d
        return dirs

    def setup(self, dirs, kind):
        if "unavailable" in dirs:
            raise NotImplementedError(f"numba backend unavailable: {dirs['unavailable']}")
        self.cache = tempfile.mkdtemp(prefix="engine-numba-cache-")

    def teardown(self, dirs, kind):
        shutil.rmtree(self.cache, ignore_errors=True)

    def track_cold_import_and_first_step(self, dirs, kind):
        return probe(kind, self.cache)["total"]

    track_cold_import_and_first_step.unit = "seconds"

    def track_warm_import_and_first_step(self, dirs, kind):
        return probe(kind, dirs[kind])["total"]

    track_warm_import_and_first_step.unit = "seconds"


if __name__ == "__main__":
    for kind in ("numba", "ensemble"):
        d = tempfile.mkdtemp(prefix="engine-numba-cache-")
        try:
            cold = probe(kind, d)
            warm = probe(kind, d)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        print(f"{kind:9s} cold: import {cold['import']:.2f} s + first step {cold['first_step']:.2f} s; "
              f"warm cache: import {warm['import']:.2f} s + first step {warm['first_step']:.2f} s "
              f"= {warm['total']:.2f} s")
