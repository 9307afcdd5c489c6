"""ms per GD step: every engine backend vs plain NumPy backprop, PyTorch, JAX.

    python bench/compare.py                  # the table (markdown) on the issue's configs
    python bench/compare.py --quick          # fewer repeats (noisy; for a smoke run)
    python bench/compare.py --check          # assert every implementation computes the same step
    python bench/compare.py --scaling        # n-, L- and m-scaling and the ensemble ratio
    python bench/compare.py --under-load     # auto with another process spinning on one core
    python bench/compare.py --configs 64,16,10,32,8 --quick    # any (d_in, n, d_out, m, L)

All in float64, one GD step of the same network in the same normalized
parametrization (docs/design.md: A_i = W_i / s_i, per-layer step c_i = lr / s_i^2,
output scale beta), same machine, same run:

* engine backends (``numpy``, ``numba``, ``cblas`` where available): the bound
  stepper ``engine.train`` runs each step (reduced data, chain products);
* (a) ``numpy-backprop``: forward through activations H_i = A_i H_{i-1}
  (stored), backward G <- A_i^T G, on the raw data (d_in x n);
* (b) ``numpy-chain``: a researcher's own ~20-line NumPy version of the
  engine's trick (thin-SVD data reduction, suffix products cached top-down,
  one bottom-up loop advancing the T chain and applying the update with ``@``);
* (c) ``torch``: PyTorch eager CPU autograd (``loss.backward()``), if importable;
* (d) ``jax``: ``jax.jit`` of a step built on ``jax.value_and_grad`` with
  ``jax_enable_x64``, hidden layers stacked and scanned (``lax.scan``), if importable.

Columns: the median ms per step (of repeats in this run) for each engine
backend; ``auto`` (the backend ``auto`` picks, its figure from this run) and
a user's loop of ``engine.gd_step`` calls with auto; the limit

    t_limit = max(2 * trained weight bytes / bandwidth, FMA_min / DGEMM rate)
    FMA_min = sum_i d_i d_{i-1} (d_out + 2 min(r, d_out))

with the bandwidth (NumPy copy of 256 MiB) and the DGEMM rate (NumPy
1024^3 matmul, BLAS threads as set) measured in this run; auto / t_limit,
gd_step loop / train, auto / best backend; auto in float32 against its own
t_limit (float32 bytes, SGEMM rate); each baseline and its ratio to auto
(train) and to the gd_step loop. Torch and JAX are optional and never
imported by ``engine``. Default configs: a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CONFIGS = [(1024, 16, 10, 64, 32), (1024, 16, 10, 256, 64), (1024, 16, 10, 1024, 32),
           (32, 8192, 4, 256, 32), (16, 64, 4, 32, 512)]
ENGINE_BACKENDS = ("numpy", "numba", "cblas")
BASELINES = ("numpy-backprop", "numpy-chain", "torch", "jax")
# --check: one step of every implementation from the same init agrees with the
# engine's numpy backend to this relative error. The step is exact algebra in
# every implementation; only summation order differs (rounding ~1e-15 times
# a condition factor of a few hundred at depth 6).
CHECK_RTOL = 1e-10
CHECK_CONFIG = (24, 40, 5, 16, 6)          # r = 24 > d_out: reduction matters, first layer is wide


# --------------------------------------------------------------------------
# the network every implementation steps, as plain arrays
# --------------------------------------------------------------------------
def _setup(cfg, seed=0, lr_scale=1.0):
    """(prob, net, lr, c (L,), beta, A list of normalized float64 copies);
    lr = lr_scale x the orthogonal theorem rate (timings use common.TIMING_LR_SCALE)."""
    import engine
    d_in, n, d_out, m, L = cfg
    prob = common.problem(d_in, n, d_out)
    net = common.network(d_in, d_out, m, L, seed=seed)
    lr = lr_scale * engine.theory.lr_bound("orthogonal", prob, L)
    c = lr / np.exp(2.0 * net._log_s)
    return prob, net, lr, c, net.beta, net.normalized()


class NumpyBackprop:
    """Plain NumPy: forward storing activations, backward through them (float64)."""
    name = "numpy-backprop"

    def __init__(self, A, c, beta, X, Y):
        self.A = [np.ascontiguousarray(a) for a in A]
        self.c, self.beta, self.X, self.Y = c, beta, X, Y
        self.H = [None] * (len(A) + 1)

    def step(self):
        A, H = self.A, self.H
        H[0] = self.X
        for i, a in enumerate(A):
            H[i + 1] = a @ H[i]
        R = self.beta * H[-1] - self.Y
        loss = 0.5 * float(np.sum(R * R))
        G = self.beta * R
        for i in range(len(A) - 1, -1, -1):
            grad = G @ H[i].T
            if i > 0:
                G = A[i].T @ G                  # from the old A_i
            A[i] -= self.c[i] * grad
        return loss

    def weights(self):
        return self.A


class NumpyChain:
    """A researcher's own NumPy version of the engine's trick (float64): thin-SVD
    data reduction, suffix products cached top-down, then one bottom-up loop
    that advances the T chain and applies each update with plain ``@``."""
    name = "numpy-chain"

    def __init__(self, A, c, beta, X, Y):
        U, s, Vt = np.linalg.svd(X, full_matrices=False)          # X = U diag(s) V^T
        r = int(np.sum(s > max(X.shape) * np.finfo(np.float64).eps * s[0]))
        self.U, self.s, self.Yr = U[:, :r], s[:r], Y @ Vt[:r].T    # Y V_r: (d_out, r)
        self.const = 0.5 * (float(np.sum(Y * Y)) - float(np.sum(self.Yr * self.Yr)))
        B1 = A[0] @ self.U                                          # only A_1 U_r is trained
        self.perp = A[0] - B1 @ self.U.T
        self.M, self.c, self.beta = [B1] + [np.array(a) for a in A[1:]], c, beta

    def step(self):
        M, L = self.M, len(self.M)
        S = [None] * L                                              # S[k] = beta M_L ... M_{k+2}
        S[-1] = self.beta * np.eye(M[-1].shape[0])
        for k in range(L - 2, -1, -1):
            S[k] = S[k + 1] @ M[k + 1]
        R = (S[0] @ M[0]) * self.s - self.Yr                        # residual on reduced data
        T = (R * self.s).T                                          # T_0 = X_red R^T
        for k in range(L):
            T_next = M[k] @ T                                       # from the old M_k
            M[k] -= self.c[k] * (S[k].T @ T.T)                      # dl/dM_k = S_k^T T_{k-1}^T
            T = T_next
        return self.const + 0.5 * float(np.sum(R * R))

    def weights(self):
        return [self.perp + self.M[0] @ self.U.T] + self.M[1:]


class TorchEager:
    """PyTorch eager autograd on CPU, float64."""
    name = "torch"

    def __init__(self, A, c, beta, X, Y):
        import torch
        self.torch = torch
        self.A = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in A]
        self.c = [float(v) for v in c]
        self.beta = float(beta)
        self.X = torch.tensor(X, dtype=torch.float64)
        self.Y = torch.tensor(Y, dtype=torch.float64)

    def step(self):
        torch = self.torch
        H = self.X
        for a in self.A:
            H = a @ H
        R = self.beta * H - self.Y
        loss = 0.5 * (R * R).sum()
        loss.backward()
        with torch.no_grad():
            for a, ci in zip(self.A, self.c):
                a -= ci * a.grad
                a.grad = None
        return float(loss.detach())

    def weights(self):
        return [a.detach().numpy() for a in self.A]


class JaxJit:
    """jax.jit(step) with step built on jax.value_and_grad; hidden layers scanned."""
    name = "jax"

    def __init__(self, A, c, beta, X, Y):
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        self.jax = jax
        L = len(A)
        self.L = L
        first, last = jnp.asarray(A[0]), jnp.asarray(A[-1])
        hidden = jnp.asarray(np.stack(A[1:-1])) if L >= 3 else None
        self.params = (first, hidden, last) if L >= 2 else (first, None, None)
        cs = jnp.asarray(c)
        Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
        bj = float(beta)

        def forward(params):
            f, h, la = params
            H = f @ Xj
            if h is not None:
                H, _ = jax.lax.scan(lambda H, a: (a @ H, None), H, h)
            if la is not None:
                H = la @ H
            R = bj * H - Yj
            return 0.5 * jnp.sum(R * R)

        vg = jax.value_and_grad(forward)

        def step(params):
            loss, g = vg(params)
            f, h, la = params
            gf, gh, gl = g
            f = f - cs[0] * gf
            if h is not None:
                h = h - cs[1] * gh                 # uniform hidden widths: one c for all
            if la is not None:
                la = la - cs[L - 1] * gl
            return loss, (f, h, la)

        self._step = jax.jit(step)

    def step(self):
        loss, self.params = self._step(self.params)
        loss.block_until_ready()
        return float(loss)

    def weights(self):
        f, h, la = self.params
        out = [np.asarray(f)]
        if h is not None:
            out += list(np.asarray(h))
        if la is not None:
            out.append(np.asarray(la))
        return out


_BASELINE_CLASSES = {"numpy-backprop": NumpyBackprop, "numpy-chain": NumpyChain, "torch": TorchEager,
                     "jax": JaxJit}


def baseline_available(name):
    if name in ("numpy-backprop", "numpy-chain"):
        return True, ""
    try:
        __import__("torch" if name == "torch" else "jax")
        return True, ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


def _engine_available():
    return [b for b in ENGINE_BACKENDS if common.backend_available(b)[0]]


# --------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------
def check(cfg=CHECK_CONFIG, verbose=True, baselines=BASELINES):
    """Assert one step of every implementation equals the engine's numpy backend.

    Compares the loss l(0) and the gradient of every layer, recovered in each
    implementation as (A_i(0) - A_i(1)) / c_i in normalized storage.
    """
    import engine
    from engine.stepper import Stepper
    prob, net0, lr, c, beta, A0 = _setup(cfg)
    ref_loss = None
    ref_grads = None
    rows = []

    def grads_from(A1):
        return [(a0 - a1) / ci for a0, a1, ci in zip(A0, A1, c)]

    for be in _engine_available():
        net = net0.copy()
        st = Stepper(net, prob, lr, be)
        ex, applied = st.step()
        assert applied
        loss = prob.opt + ex
        g = grads_from(net.normalized())
        if ref_loss is None:
            ref_loss, ref_grads = loss, g
        rows.append((f"engine {be}", loss, g))
    from engine.ensemble import Ensemble, member_kernel_available
    from engine.ensemble import train as ens_train
    if member_kernel_available()[0]:
        ens = Ensemble.from_networks([net0, net0])
        res = ens_train(ens, prob, lr=lr, steps=1, backend="numba")
        assert res.schedule == "members-parallel"
        rows.append(("engine ensemble", prob.opt + res.excess[0, 0], grads_from(ens.member(1).normalized())))
    for name in baselines:
        ok, why = baseline_available(name)
        if not ok:
            if verbose:
                print(f"check: {name} skipped ({why})")
            continue
        impl = _BASELINE_CLASSES[name]([a.copy() for a in A0], c, beta, prob.X, prob.Y)
        loss = impl.step()
        rows.append((name, loss, grads_from(impl.weights())))
    worst = 0.0
    for label, loss, g in rows:
        el = abs(loss - ref_loss) / abs(ref_loss)
        eg = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(g, ref_grads))
        worst = max(worst, el, eg)
        if verbose:
            print(f"check {label:16s} loss {loss:.15g}  rel.err loss {el:.1e}  max rel.err grad {eg:.1e}")
        assert el <= CHECK_RTOL and eg <= CHECK_RTOL, f"{label} disagrees with the engine's numpy backend"
    if verbose:
        print(f"check: all {len(rows)} implementations agree to {worst:.1e} (tolerance {CHECK_RTOL:g}) "
              f"at (d_in, n, d_out, m, L) = {cfg}")
    return worst


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------
def measure_engine(cfg, backend, repeat, min_time, dtype="float64"):
    d_in, n, d_out, m, L = cfg
    st = common.stepper(d_in, n, d_out, m, L, backend, dtype=dtype)
    return common.median_step_seconds(st.checked, repeat=repeat, min_time=min_time, warmup=2)


def measure_baseline(cfg, name, repeat, min_time):
    prob, net, lr, c, beta, A = _setup(cfg, lr_scale=common.TIMING_LR_SCALE)
    impl = _BASELINE_CLASSES[name](A, c, beta, prob.X, prob.Y)
    impl.step()                                   # warm-up (JAX compiles here)
    return common.median_step_seconds(impl.step, repeat=repeat, min_time=min_time, warmup=0)


def measure_gd_step_loop(cfg, backend, repeat, min_time):
    """Seconds per call of a user's own loop ``engine.gd_step(net, prob, lr)``."""
    import engine
    d_in, n, d_out, m, L = cfg
    prob = common.problem(d_in, n, d_out)
    net = common.network(d_in, d_out, m, L)
    lr = common.TIMING_LR_SCALE * engine.theory.lr_bound("orthogonal", prob, L)
    return common.median_step_seconds(lambda: engine.gd_step(net, prob, lr, backend=backend),
                                      repeat=repeat, min_time=min_time, warmup=2)


def auto_backend(cfg, dtype="float64"):
    """The backend ``auto`` runs for this config (what ``engine.train`` picks)."""
    from engine import kernels
    d_in, n, d_out, m, L = cfg
    chooser = getattr(kernels, "auto_choice", None)
    if chooser is not None:
        return chooser(common.widths(d_in, d_out, m, L), min(d_in, n), dtype)[0]
    return kernels.get("auto", shape=(common.widths(d_in, d_out, m, L), min(d_in, n))).name


def _fmt_ms(s):
    if s is None:
        return "n/a"
    ms = 1e3 * s
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def compare(configs, repeat=15, min_time=0.5, out=print, baselines=BASELINES):
    """Measure every config and print the table (markdown); returns the rows.

    Per config: each engine backend's bound stepper (what ``train`` runs);
    ``auto`` = the backend auto picks (its figure from this run); a user's
    ``gd_step`` loop with auto; each baseline; t_limit = max(2 * trained
    weight bytes / bandwidth, FMA_min / DGEMM rate) with both rates measured
    in this run (``common.limit_seconds``).
    """
    eng = _engine_available()
    base = [b for b in baselines if baseline_available(b)[0]]
    bw, gemm = common.bandwidth(), common.gemm_rate("float64")
    sgemm = common.gemm_rate("float32")
    results = []
    for cfg in configs:
        row = {"cfg": cfg}
        for be in eng:
            row[be] = measure_engine(cfg, be, repeat, min_time)
        row["auto_name"] = auto_backend(cfg)
        row["auto"] = row[row["auto_name"]]
        row["gd_step"] = measure_gd_step_loop(cfg, "auto", repeat, min_time)
        # float32: the backend auto picks for float32, against float32 bytes and the SGEMM rate
        row["auto32_name"] = auto_backend(cfg, "float32")
        row["auto32"] = measure_engine(cfg, row["auto32_name"], repeat, min_time, dtype="float32")
        row["limit32"] = common.limit_seconds(*cfg, dtype="float32")
        for b in base:
            row[b] = measure_baseline(cfg, b, repeat, min_time)
        row["limit"] = common.limit_seconds(*cfg)
        row["best"] = min(row[be] for be in eng)
        row["best_name"] = min(eng, key=lambda be: row[be])
        results.append(row)
    head = (["(d_in, n, d_out, m, L)"] + [f"engine {be}" for be in eng]
            + ["auto", "gd_step loop", "t_limit", "auto / t_limit", "gd_step loop / train",
               "auto / best", "float32 auto", "float32 t_limit", "float32 auto / t_limit"]
            + list(base) + [f"{b} / auto" for b in base]
            + [f"{b} / gd_step loop" for b in base])
    out(_env_line(bw, gemm, sgemm))
    out("")
    out("ms per GD step (median of repeats in one run), float64 unless marked float32 "
        "(against float32 bytes and the SGEMM rate); auto = the backend "
        "`auto` picks, in bold the fastest backend:")
    out("")
    out("| " + " | ".join(head) + " |")
    out("|" + "---|" * len(head))
    for row in results:
        cells = [str(row["cfg"]).replace(" ", "")]
        cells += [("**" + _fmt_ms(row[be]) + "**") if be == row["best_name"] else _fmt_ms(row[be]) for be in eng]
        cells += [f"{_fmt_ms(row['auto'])} ({row['auto_name']})", _fmt_ms(row["gd_step"]),
                  _fmt_ms(row["limit"]), f"{row['auto'] / row['limit']:.1f}x",
                  f"{row['gd_step'] / row['auto']:.2f}", f"{row['auto'] / row['best']:.2f}",
                  f"{_fmt_ms(row['auto32'])} ({row['auto32_name']})", _fmt_ms(row["limit32"]),
                  f"{row['auto32'] / row['limit32']:.1f}x"]
        cells += [_fmt_ms(row[b]) for b in base]
        cells += [f"{row[b] / row['auto']:.1f}x" for b in base]
        cells += [f"{row[b] / row['gd_step']:.1f}x" for b in base]
        out("| " + " | ".join(cells) + " |")
    return results


def _env_line(bw, gemm=None, sgemm=None):
    import engine
    parts = [f"machine: {_cpu_name()} ({platform.machine()}), {os.cpu_count()} CPUs",
             f"bandwidth {bw / 1e9:.1f} GB/s (NumPy copy)"]
    if gemm is not None:
        parts.append(f"DGEMM {2 * gemm / 1e9:.0f} GFLOP/s (NumPy 1024^3 matmul)")
    if sgemm is not None:
        parts.append(f"SGEMM {2 * sgemm / 1e9:.0f} GFLOP/s")
    parts.append(f"load average {os.getloadavg()[0]:.2f} at the start")
    try:
        from engine.kernels import cblas_backend
        if cblas_backend.available:
            parts.append(f"C kernel built for {cblas_backend.isa} "
                         f"({cblas_backend.openmp_threads} OpenMP threads)")
    except Exception:
        pass
    parts.append(f"numpy {np.__version__}")
    try:
        import numba
        parts.append(f"numba {numba.__version__} ({numba.get_num_threads()} threads)")
    except Exception:
        pass
    for mod in ("torch", "jax"):
        if baseline_available(mod)[0]:
            parts.append(f"{mod} {__import__(mod).__version__}")
    parts.append(f"engine {engine.__version__}")
    return "Environment: " + "; ".join(parts)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --------------------------------------------------------------------------
# --under-load
# --------------------------------------------------------------------------
SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def under_load(configs, seconds=4.0, repeat=15, min_time=0.5, out=print):
    """Issue 14 item 4: ``auto``'s step while another process spins on one
    core, against its quiet single-thread time (target: <= 1.5x).

    Per config: the quiet median of the backend auto picks with its thread
    count fixed at 1; the quiet median of auto as ``engine.train`` runs it;
    then a CPU-bound process is started and auto (a fresh stepper, as a
    user's new run would get) steps for ``seconds``: its median, mean
    (which includes the steps before it adapts) and worst step."""
    import subprocess
    rows = []
    for cfg in configs:
        name = auto_backend(cfg)
        st1 = common.stepper(*cfg, backend=name)
        if hasattr(st1.ws, "threads"):
            st1.ws.threads = 1
        quiet1 = common.median_step_seconds(st1.checked, repeat=repeat, min_time=min_time, warmup=2)
        del st1
        st = common.stepper(*cfg, backend="auto")
        quiet = common.median_step_seconds(st.checked, repeat=repeat, min_time=min_time, warmup=2)
        del st
        spin = subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds + 30)])
        try:
            time.sleep(0.5)                      # the spinner is running
            st = common.stepper(*cfg, backend="auto")
            st.checked()
            ts = []
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end or len(ts) < 5:
                t0 = time.perf_counter()
                st.checked()
                ts.append(time.perf_counter() - t0)
            del st
        finally:
            spin.kill()
            spin.wait()
        ts = np.array(ts)
        rows.append((cfg, name, quiet1, quiet, float(np.median(ts)), float(ts.mean()), float(ts.max()),
                     len(ts)))
    out("auto under load: another process spinning on one core (ms per step; target: loaded "
        "median <= 1.5 x the quiet single-thread time):")
    out("")
    out("| (d_in, n, d_out, m, L) | backend | quiet, 1 thread | quiet, auto | loaded median | "
        "loaded mean | loaded worst | steps | loaded median / quiet 1 thread |")
    out("|---|---|---|---|---|---|---|---|---|")
    for cfg, name, q1, q, med, mean, worst, n in rows:
        out(f"| {str(cfg).replace(' ', '')} | {name} | {_fmt_ms(q1)} | {_fmt_ms(q)} | {_fmt_ms(med)} | "
            f"{_fmt_ms(mean)} | {_fmt_ms(worst)} | {n} | {med / q1:.2f} |")
    return rows


# --------------------------------------------------------------------------
# --scaling
# --------------------------------------------------------------------------
def _fit_exponent(xs, ts):
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def scaling(quick=False, out=print):
    """The issue's scaling targets, with the engine's best available backend per point."""
    eng = _engine_available()
    repeat, min_time = (5, 0.2) if quick else (15, 0.5)

    def best(cfg):
        return min(measure_engine(cfg, be, repeat, min_time) for be in eng)

    out(_env_line(common.bandwidth(), common.gemm_rate()))
    out("")
    out("| target | measured | configs |")
    out("|---|---|---|")
    # n-independence
    n_big = 8192 if quick else 65536
    m_n, L_n = (256, 32)
    t16 = best((1024, 16, 10, m_n, L_n))
    tbig = best((1024, n_big, 10, m_n, L_n))
    out(f"| step time independent of n (within 10%) | t(n={n_big}) / t(n=16) = {tbig / t16:.3f} "
        f"({1e3 * t16:.3g} vs {1e3 * tbig:.3g} ms) | d_in=1024, d_out=10, m={m_n}, L={L_n} |")
    # L exponent
    Ls = [16, 64, 256] if quick else [16, 32, 64, 128, 256, 512]
    m_L = 128
    tL = [best((1024, 16, 10, m_L, L)) for L in Ls]
    out(f"| linear in L (exponent 1.00 +- 0.1) | exponent {_fit_exponent(Ls, tL):.3f} "
        f"(ms: {', '.join(_fmt_ms(t) for t in tL)}) | m={m_L}, L={Ls} |")
    # m exponent
    ms = [256, 512, 1024] if quick else [256, 512, 1024, 2048]
    L_m = 16 if quick else 32
    tm = [best((1024, 16, 10, m, L_m)) for m in ms]
    out(f"| quadratic in m for m >= 256 (exponent 2) | exponent {_fit_exponent(ms, tm):.3f} "
        f"(ms: {', '.join(_fmt_ms(t) for t in tm)}) | L={L_m}, m={ms} |")
    # fraction of t_limit at m >= 256
    for dtype in ("float64", "float32"):
        for m in (256, 1024):
            cfg = (1024, 16, 10, m, 32)
            ts = {}
            for be in eng:
                st = common.stepper(*cfg, backend=be, dtype=dtype)
                ts[be] = common.median_step_seconds(st.checked, repeat=repeat, min_time=min_time, warmup=2)
            b = min(ts, key=ts.get)
            lim = common.limit_seconds(*cfg, dtype=dtype)
            out(f"| m >= 256: step <= 1.5 x t_limit ({dtype}) | {ts[b] / lim:.2f} x t_limit "
                f"({_fmt_ms(ts[b])} ms, {b}; t_limit {_fmt_ms(lim)} ms) | {cfg} |")
    # ensemble
    import bench_ensemble
    e, s, r = bench_ensemble.speedup(16, 32, 32, repeat=3 if quick else 5)
    out(f"| ensemble of 16 (m=32, L=32) >= 1.7x 16 sequential calls | {r:.2f}x "
        f"({1e3 * e / bench_ensemble.STEPS:.3g} vs {1e3 * s / bench_ensemble.STEPS:.3g} ms per step of all 16) "
        f"| d_in=1024, n=16, d_out=10, {bench_ensemble.STEPS} steps |")


def _parse_cfg(text):
    vals = tuple(int(v) for v in text.split(","))
    if len(vals) != 5 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"config must be d_in,n,d_out,m,L (positive ints), got {text!r}")
    return vals


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few repeats (noisy), smaller scaling sweeps")
    p.add_argument("--check", action="store_true", help="only assert that all implementations agree")
    p.add_argument("--scaling", action="store_true", help="the n-, L-, m-scaling and ensemble targets")
    p.add_argument("--under-load", action="store_true",
                   help="auto's step with another process spinning on one core vs its quiet 1-thread time")
    p.add_argument("--configs", nargs="+", type=_parse_cfg, default=None, metavar="d_in,n,d_out,m,L")
    p.add_argument("--repeat", type=int, default=None, help="timed steps per measurement (median)")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                   help="baselines to run when importable (default: all)")
    a = p.parse_args(argv)
    common.forget_cached_rates()        # t_limit from rates measured in this run, never a cached hour-old one
    if a.check:
        check(baselines=a.baselines)
        return 0
    check(verbose=False, baselines=a.baselines)   # never time implementations that compute something else
    if a.scaling:
        scaling(quick=a.quick)
        return 0
    if a.under_load:
        under_load(a.configs or CONFIGS, seconds=1.0 if a.quick else 4.0,
                   repeat=a.repeat or (3 if a.quick else 15), min_time=0.0 if a.quick else 0.5)
        print("")
        print(f"Command: python bench/compare.py --under-load{' --quick' if a.quick else ''}")
        return 0
    repeat = a.repeat or (3 if a.quick else 15)
    compare(a.configs or CONFIGS, repeat=repeat, min_time=0.0 if a.quick else 0.5, baselines=a.baselines)
    print("")
    print(f"Command: python bench/compare.py{' --quick' if a.quick else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
