"""asv suites: one GD step on issue 14's configs, per backend.

    asv run --python=same --quick                  # everything once (README: minutes, not hours)
    asv run --python=same --quick --bench "StepTime.time_step"       # a subset
    ENGINE_ASV_GRID=full asv run --python=same --quick                # + the width x depth x n grid

Configs are (d_in, n, d_out, m, L) (HXP's d_in = 1024, d_out = 10 among
them), written "d_in-n-d_out-m-L" in asv's tables. Network: orthogonal init
(``common.network``) at ``common.TIMING_LR_SCALE`` times the theorem rate, so
every timed step is a real, applied step. What is timed is the bound stepper
``engine.train`` runs each step.

    time_step                 seconds per step (asv's own sampling)
    peakmem_step              peak RSS while stepping
    track_steps_per_second    1 / median step time
    track_fraction_of_limit   t_limit / median step time, with
                              t_limit = max(2 * weight bytes / bandwidth,
                              FMA_min / GEMM rate), both rates measured in this
                              run (``common.limit_seconds``); 1.0 = at the limit
    track_bandwidth, track_gemm_rate   the two rates of this run

The tracks of one dtype share one measurement of every config
(``setup_cache``: one process steps them all once), so the suite costs about
one setup per config and benchmark kind. Unavailable backends and configs
whose weights exceed ``common.MAX_WEIGHT_BYTES`` are skipped
(NotImplementedError in setup).

Why the earlier suite did not finish: a 4 x 3 x 2 width x depth x n grid
(72 configs with the backends) measured again in a new process for every
track (setup per benchmark and parameter), with networks of up to 1 GiB
built each time; ``track_fraction_of_floor`` alone took 3.5 min.
"""
import itertools
import os

try:
    from . import common
except ImportError:  # imported as a top-level module (bench/ on sys.path)
    import common

# issue 14's configs (d_in, n, d_out, m, L)
CONFIGS = ["1024-16-10-64-32", "1024-16-10-256-64", "1024-16-10-1024-32",
           "16-64-4-32-512", "32-8192-4-256-32"]
if os.environ.get("ENGINE_ASV_GRID") == "full":
    CONFIGS += [f"1024-{n}-10-{m}-{L}" for m, L, n in
                itertools.product([32, 128, 512, 1024], [8, 64, 512], [16, 8192])]
BACKENDS = ["numpy", "numba", "cblas"]
# float32 is measured where its limit applies (issue 14: m >= 256)
FLOAT32_CONFIGS = [c for c in CONFIGS if int(c.split("-")[3]) >= 256]
# one shared measurement: median of REPEAT steps (at least MIN_TIME s; at most
# MAX_TIME s once 3 are taken: a 2-thread kernel on a busy machine can take
# 0.5 s a step, and the suite must stay short)
REPEAT, MIN_TIME, MAX_TIME = 5, 0.2, 2.0


def parse(cfg):
    return tuple(int(v) for v in cfg.split("-"))


def _prepare(cfg, backend, dtype):
    """A bound, warmed-up stepper, or NotImplementedError saying why not."""
    ok, why = common.backend_available(backend)
    if not ok:
        raise NotImplementedError(f"backend {backend} unavailable: {why}")
    d_in, n, d_out, m, L = parse(cfg)
    itemsize = 8 if dtype == "float64" else 4
    nbytes = common.weight_bytes(d_in, n, d_out, m, L, itemsize)
    if nbytes > common.MAX_WEIGHT_BYTES:
        raise NotImplementedError(f"weights need {nbytes / 2**30:.1f} GiB")
    st = common.stepper(d_in, n, d_out, m, L, backend, dtype=dtype)
    st.checked()                                # JIT warm-up (cache=True: loads from the cache)
    return st


def measure_all(configs, dtype):
    """{(config, backend): median seconds per step, or the reason it is skipped},
    plus this run's rates and every config's t_limit."""
    out = {"limit": {}, "bandwidth": common.bandwidth(), "gemm": common.gemm_rate(dtype)}
    for cfg in configs:
        out["limit"][cfg] = common.limit_seconds(*parse(cfg), dtype=dtype)
        for be in BACKENDS:
            try:
                st = _prepare(cfg, be, dtype)
            except NotImplementedError as exc:
                out[cfg, be] = str(exc)
                continue
            out[cfg, be] = common.median_step_seconds(st.checked, repeat=REPEAT, min_time=MIN_TIME,
                                                      warmup=0, max_time=MAX_TIME)
            del st
    return out


class _StepBase:
    params = (CONFIGS, BACKENDS)
    param_names = ["config", "backend"]
    dtype = "float64"
    timeout = 300
    # asv's sampling: a step is 0.1-100 ms; 2-5 samples of >= 0.05 s each
    # keep a full (not --quick) run at seconds per benchmark
    repeat = (2, 5, 4.0)
    sample_time = 0.05
    warmup_time = 0.05

    def setup(self, cfg, backend):
        self.st = _prepare(cfg, backend, self.dtype)


class StepTime(_StepBase):
    def time_step(self, cfg, backend):
        self.st.checked()


class StepMemory(_StepBase):
    def peakmem_step(self, cfg, backend):
        self.st.step()


class StepThroughput:
    """Median step time of every (config, backend) measured once, in one process."""
    params = (CONFIGS, BACKENDS)
    param_names = ["config", "backend"]
    dtype = "float64"
    timeout = 600

    def setup_cache(self):
        return measure_all(CONFIGS, "float64")

    def setup(self, cache, cfg, backend):
        got = cache[cfg, backend]
        if isinstance(got, str):
            raise NotImplementedError(got)

    def track_steps_per_second(self, cache, cfg, backend):
        return 1.0 / cache[cfg, backend]

    track_steps_per_second.unit = "steps/s"

    def track_fraction_of_limit(self, cache, cfg, backend):
        return cache["limit"][cfg] / cache[cfg, backend]

    track_fraction_of_limit.unit = "t_limit / t_step"


class StepThroughputFloat32(StepThroughput):
    """float32 against the float32 bytes and SGEMM rate (m >= 256)."""
    params = (FLOAT32_CONFIGS, BACKENDS)
    dtype = "float32"

    def setup_cache(self):                      # its own (asv keys the cache by the function)
        return measure_all(FLOAT32_CONFIGS, "float32")


class Rates:
    """The streaming bandwidth and GEMM rates the limits of this run use."""

    def track_bandwidth(self):
        return common.bandwidth() / 1e9

    track_bandwidth.unit = "GB/s"

    def track_gemm_rate(self):
        return 2.0 * common.gemm_rate("float64") / 1e9

    track_gemm_rate.unit = "GFLOP/s (DGEMM)"
