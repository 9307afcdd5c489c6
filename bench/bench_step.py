"""asv suites: one GD step against width, depth, n and backend.

    asv run --python=same --quick                         # everything, one sample each
    asv run --python=same --quick --bench "StepTime.time_step\\(32, 8"   # a subset

Data: HXP's setup (d_in = 1024, d_out = 10, entries N(0, 1)) with n samples;
network: orthogonal init (``common.network``) at the theorem learning rate,
so GD is stable at every depth and every timed step is a real, applied
step. What is timed is the bound stepper ``engine.train`` runs each step.

    time_step                 seconds per step
    peakmem_step              peak RSS while stepping
    track_steps_per_second    1 / median step time
    track_fraction_of_floor   t_floor / median step time, t_floor = 2 * weight
                              bytes / bandwidth (bandwidth measured in this run,
                              ``common.bandwidth``); 1.0 = at the physical limit

Unavailable backends and configurations whose weights exceed
``common.MAX_WEIGHT_BYTES`` are skipped (NotImplementedError in setup).
"""
try:
    from . import common
except ImportError:  # imported as a top-level module (bench/ on sys.path)
    import common

D_IN, D_OUT = 1024, 10
WIDTHS = [32, 128, 512, 1024]
DEPTHS = [8, 64, 512]
NS = [16, 8192]
BACKENDS = ["numpy", "numba", "cblas"]


class _StepBase:
    params = (WIDTHS, DEPTHS, NS, BACKENDS)
    param_names = ["width", "depth", "n", "backend"]
    dtype = "float64"
    timeout = 600
    # several steps per sample for fast configs; asv picks the number itself
    min_run_count = 2

    def setup(self, m, L, n, backend):
        ok, why = common.backend_available(backend)
        if not ok:
            raise NotImplementedError(f"backend {backend} unavailable: {why}")
        itemsize = 8 if self.dtype == "float64" else 4
        self.nbytes = common.weight_bytes(D_IN, n, D_OUT, m, L, itemsize)
        if self.nbytes > common.MAX_WEIGHT_BYTES:
            raise NotImplementedError(f"weights need {self.nbytes / 2**30:.1f} GiB")
        self.st = common.stepper(D_IN, n, D_OUT, m, L, backend, dtype=self.dtype)
        ex, applied = self.st.step()            # JIT warm-up (cache=True: loads from the cache)
        if not applied:
            raise RuntimeError(f"the warm-up step was not applied (excess {ex})")


class StepTime(_StepBase):
    def time_step(self, m, L, n, backend):
        self.st.checked()


class StepMemory(_StepBase):
    def peakmem_step(self, m, L, n, backend):
        self.st.step()


class StepThroughput(_StepBase):
    def setup(self, m, L, n, backend):
        super().setup(m, L, n, backend)
        self.seconds = common.median_step_seconds(self.st.checked, repeat=5, min_time=0.3, warmup=1)

    def track_steps_per_second(self, m, L, n, backend):
        return 1.0 / self.seconds

    track_steps_per_second.unit = "steps/s"

    def track_fraction_of_floor(self, m, L, n, backend):
        return common.floor_seconds(self.nbytes) / self.seconds

    track_fraction_of_floor.unit = "t_floor / t_step"


class StepFloat32(_StepBase):
    """float32 at the widths where the floor target applies (m >= 512)."""
    params = ([512, 1024], [64], [16], BACKENDS)
    dtype = "float32"

    def setup(self, m, L, n, backend):
        super().setup(m, L, n, backend)
        self.seconds = common.median_step_seconds(self.st.checked, repeat=5, min_time=0.3, warmup=1)

    def time_step(self, m, L, n, backend):
        self.st.checked()

    def track_fraction_of_floor(self, m, L, n, backend):
        return common.floor_seconds(self.nbytes) / self.seconds

    track_fraction_of_floor.unit = "t_floor / t_step"


class Bandwidth:
    """The streaming bandwidth the floors of this run are computed from."""

    def track_bandwidth(self):
        return common.bandwidth() / 1e9

    track_bandwidth.unit = "GB/s"
