"""cffi build script for the C kernel of the ``cblas`` backend.

API mode, out of line: ``setup.py`` builds it through
``cffi_modules=["engine/kernels/_cblas_build.py:ffibuilder"]`` into the extension module
``engine.kernels._cblas``. To rebuild in place by hand after editing the C
code: ``python setup.py build_ext --inplace`` (or reinstall with
``pip install -e .``).

This script lives inside the package (not in csrc/) so that every sdist
carries it: setup.py needs it to run at all. The C sources in csrc/ travel
as the extension's ``sources`` and ``depends``.

The kernel links no BLAS: engine/kernels/cblas_backend.py passes it the
address of the ?gemm that SciPy already ships (scipy.linalg.cython_blas).
"""
import os
import shlex
import subprocess
import sysconfig
import tempfile

from cffi import FFI


def _openmp_flags():
    """["-fopenmp"] if the C compiler builds and links an OpenMP program, else [].

    The kernel's parallel loops are OpenMP pragmas; without OpenMP it still
    builds and runs serially (BLAS then provides the only parallelism). Set
    ENGINE_CBLAS_OPENMP=0 to build without it.
    """
    if os.environ.get("ENGINE_CBLAS_OPENMP", "1") == "0":
        return []
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_probe.c")
        with open(src, "w") as fh:
            fh.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
        try:
            res = subprocess.run(shlex.split(cc) + ["-fopenmp", src, "-o", os.path.join(tmp, "omp_probe")],
                                 capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return []
    return ["-fopenmp"] if res.returncode == 0 else []


OPENMP_FLAGS = _openmp_flags()

ffibuilder = FFI()
ffibuilder.cdef("""
#define DLN_FORM_P 0
#define DLN_FORM_T 1
#define DLN_SINGLE 2
int dln_openmp_threads(void);
long long dln_work_size(int L, const int *widths, int form);
int dln_step_f64(void *dgemm, int L, const int *widths, double **layers,
                 const double *c, double beta, const double *xs,
                 const double *yred, int form, long long block_bytes,
                 double *work, double lo, double hi, int do_update,
                 double *excess);
int dln_step_f32(void *sgemm, int L, const int *widths, float **layers,
                 const double *c, double beta, const float *xs,
                 const float *yred, int form, long long block_bytes,
                 float *work, double lo, double hi, int do_update,
                 double *excess);
int dln_step1_f64(void *dgemm, int L, const int *widths, double **layers,
                  const double *c, double beta, const double *xs,
                  const double *yred, long long block_bytes, double *work,
                  double lo, double hi, int do_update, int *state, double *excess);
int dln_step1_f32(void *sgemm, int L, const int *widths, float **layers,
                  const double *c, double beta, const float *xs,
                  const float *yred, long long block_bytes, float *work,
                  double lo, double hi, int do_update, int *state, double *excess);
""")

# Paths relative to the repository root, where setup.py runs (setuptools
# wants relative source paths).
ffibuilder.set_source(
    "engine.kernels._cblas",
    '#include "dln_step.h"',
    sources=["csrc/dln_step.c"],
    include_dirs=["csrc"],
    depends=["csrc/dln_step.h", "csrc/dln_step_impl.h"],
    extra_compile_args=["-O3", "-std=c99"] + OPENMP_FLAGS,
    extra_link_args=OPENMP_FLAGS,
)
