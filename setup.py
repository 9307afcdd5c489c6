"""Packaging shim: builds the optional cffi C kernel of the ``cblas`` backend.

All metadata lives in pyproject.toml. The C kernel (csrc/, DESIGN.md
"Backends") is compiled here through ``cffi_modules`` into
``engine.kernels._cblas``. The build is optional: a failure (no compiler, no
Python headers, cffi missing) is reported as a warning and never makes
installation fail. The reason is written next to where the module would have
been (``engine/kernels/_cblas_build_error.txt``) so that the ``cblas``
backend can report itself unavailable saying why.
"""
import os
import sys
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext

CBLAS_MODULE = "engine.kernels._cblas"
BUILD_ERROR_FILE = "_cblas_build_error.txt"


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed build of the optional C kernel into a warning."""

    def _marker(self):
        return os.path.join(os.path.dirname(self.get_ext_fullpath(CBLAS_MODULE)), BUILD_ERROR_FILE)

    def _failed(self, exc):
        msg = f"{type(exc).__name__}: {exc}".strip()
        warnings.warn(f"engine: the optional C kernel ({CBLAS_MODULE}) was not built; the 'cblas' "
                      f"backend will be unavailable. Cause: {msg}")
        print(f"WARNING: engine: building {CBLAS_MODULE} failed ({msg}); continuing without "
              "the 'cblas' backend", file=sys.stderr)
        try:
            path = self._marker()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                fh.write(msg + "\n")
        except OSError:
            pass

    def _succeeded(self):
        try:
            os.remove(self._marker())
        except OSError:
            pass

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 -- any build failure must not fail the install
            self._failed(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
        else:
            self._succeeded()


def _cffi_modules():
    try:
        import cffi  # noqa: F401
    except ImportError:
        warnings.warn("engine: cffi is not installed; the 'cblas' backend will not be built")
        return {}
    return {"cffi_modules": ["csrc/build_cblas.py:ffibuilder"]}


setup(cmdclass={"build_ext": OptionalBuildExt}, **_cffi_modules())
