"""cffi build script for the C kernel of the ``cblas`` backend.

API mode, out of line: ``setup.py`` builds it through
``cffi_modules=["engine/kernels/_cblas_build.py:ffibuilder"]`` into the extension module
``engine.kernels._cblas``. To rebuild in place by hand after editing the C
code: ``python setup.py build_ext --inplace`` (or reinstall with
``pip install -e .``).

This script lives inside the package (not in csrc/) so that every sdist
carries it: setup.py needs it to run at all. The C sources in csrc/ travel
as the extension's ``sources`` and ``depends``.

The kernel calls no BLAS: its products are register-blocked micro-kernels
(csrc/dln_step_impl.h), vectorized for the CPU it is built on. Its declarations
(``cdef``) are generated from the C header csrc/dln_step.h (``cdef_from_header``), so
the header is the one place the interface is written down
(tests/test_backend_cblas.py checks the built module against it).
"""
import os
import re
import shlex
import subprocess
import sysconfig
import tempfile

from cffi import FFI


def _openmp_flags():
    """["-fopenmp"] if the C compiler builds and links an OpenMP program, else [].

    The kernel's parallel loops are OpenMP pragmas; without OpenMP it still
    builds and runs on one thread. Set
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


def _native_flags():
    """["-march=native"] if the C compiler accepts it, else [] (a portable build).

    The micro-kernels are written with vector extensions whose width follows
    the instruction set the compiler targets (csrc/dln_step.c), so building
    for the machine it runs on gives AVX-512 where the CPU has it; without
    the flag they still build, for the compiler's baseline (e.g. SSE2 on
    x86-64). The extension checks at import that the CPU has what the build
    assumed (``dln_cpu_ok``), so a build carried to another machine is
    reported unavailable instead of crashing. ENGINE_CBLAS_NATIVE=0 builds
    the portable baseline.
    """
    if os.environ.get("ENGINE_CBLAS_NATIVE", "1") == "0":
        return []
    return ["-march=native"] if _compiles(["-march=native"]) else []


def _compiles(flags):
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write("int main(void) { return 0; }\n")
        try:
            res = subprocess.run(shlex.split(cc) + flags + [src, "-o", os.path.join(tmp, "probe")],
                                 capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
    return res.returncode == 0


NATIVE_FLAGS = _native_flags()

# The header, relative to the repository root where setup.py runs (cffi executes this script
# without __file__; run directly or imported, it is found from the script's own path).
HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
                      if "__file__" in globals() else ".", "csrc", "dln_step.h")


def cdef_from_header(text: str) -> str:
    """The declarations of a C header as cffi's ``cdef`` takes them: comments removed,
    preprocessor lines dropped except ``#define NAME <integer>`` (cffi's integer constants;
    an include guard's bare ``#define`` goes), blank lines dropped."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if re.fullmatch(r"#\s*define\s+\w+\s+-?\d+", stripped):
                out.append(re.sub(r"\s+", " ", stripped))
            continue
        out.append(line.rstrip())
    return "\n".join(out) + "\n"


def header_cdef(path=HEADER) -> str:
    """``cdef_from_header`` of csrc/dln_step.h, the kernel's one declaration of its interface."""
    with open(path) as fh:
        return cdef_from_header(fh.read())


ffibuilder = FFI()
ffibuilder.cdef(header_cdef())

# Paths relative to the repository root, where setup.py runs (setuptools
# wants relative source paths). -ffp-contract=fast: a*b+c is one FMA
# wherever the target has FMA, in the vector and the scalar code alike (ISO C
# modes turn contraction off), so every number is computed the same way
# whichever path -- vector lane or scalar tail -- computes it.
ffibuilder.set_source(
    "engine.kernels._cblas",
    '#include "dln_step.h"',
    sources=["csrc/dln_step.c"],
    include_dirs=["csrc"],
    depends=["csrc/dln_step.h", "csrc/dln_step_impl.h"],
    extra_compile_args=["-O3", "-std=gnu99", "-ffp-contract=fast"] + NATIVE_FLAGS + OPENMP_FLAGS,
    extra_link_args=OPENMP_FLAGS,
)
