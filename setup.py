"""Packaging shim: builds the optional cffi C kernel of the ``cblas`` backend.

All metadata lives in pyproject.toml. The C kernel (csrc/, docs/design.md
"Backends") is compiled here through ``cffi_modules`` into
``engine.kernels._cblas``. The build is optional: a failure (no compiler, no
Python headers, cffi missing) is reported as a warning and never makes
installation fail. The reason is written next to where the module would have
been (``engine/kernels/_cblas_build_error.txt``) so that the ``cblas``
backend can report itself unavailable saying why.

Rebuild in place by hand after editing csrc/: ``python setup.py build_ext --inplace``.
"""
import os
import sys
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext

CBLAS_MODULE = "engine.kernels._cblas"
BUILD_ERROR_FILE = "_cblas_build_error.txt"


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed build of the optional C kernel into a warning.

    setuptools builds into build/lib and, for in-place and editable installs,
    then copies the module next to the sources. On failure the cause is
    written to BUILD_ERROR_FILE in both places (so an editable install and a
    wheel both carry it), a stale module from an earlier build is removed
    (it would run old code), and nothing is copied.
    """

    def _fullpath(self, inplace):
        old, self.inplace = self.inplace, inplace
        try:
            return self.get_ext_fullpath(CBLAS_MODULE)
        finally:
            self.inplace = old

    def _targets(self):
        paths = [self._fullpath(False)]
        if self._inplace_requested:
            paths.append(self._fullpath(True))
        return paths

    def _failed(self, exc):
        msg = f"{type(exc).__name__}: {exc}".strip()
        warnings.warn(f"engine: the optional C kernel ({CBLAS_MODULE}) was not built; the 'cblas' "
                      f"backend will be unavailable. Cause: {msg}")
        print(f"WARNING: engine: building {CBLAS_MODULE} failed ({msg}); continuing without "
              "the 'cblas' backend", file=sys.stderr)
        for path in self._targets():
            try:
                if os.path.exists(path):
                    os.remove(path)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(os.path.join(os.path.dirname(path), BUILD_ERROR_FILE), "w") as fh:
                    fh.write(msg + "\n")
            except OSError:
                pass

    def _succeeded(self):
        for path in self._targets():
            try:
                os.remove(os.path.join(os.path.dirname(path), BUILD_ERROR_FILE))
            except OSError:
                pass

    def run(self):
        self._inplace_requested = bool(self.inplace or getattr(self, "editable_mode", False))
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

    def copy_extensions_to_source(self):
        if os.path.exists(self._fullpath(False)):   # skipped when the build failed
            super().copy_extensions_to_source()


CFFI_BUILD_SCRIPT = "engine/kernels/_cblas_build.py"


def _cffi_modules():
    """``cffi_modules`` when the C kernel can be attempted at all, else nothing."""
    here = os.path.dirname(os.path.abspath(__file__))
    missing = [p for p in (CFFI_BUILD_SCRIPT, "csrc/dln_step.c") if not os.path.exists(os.path.join(here, p))]
    if missing:
        warnings.warn(f"engine: {', '.join(missing)} missing; the 'cblas' backend will not be built")
        return {}
    try:
        import cffi  # noqa: F401
    except ImportError:
        warnings.warn("engine: cffi is not installed; the 'cblas' backend will not be built")
        return {}
    return {"cffi_modules": [CFFI_BUILD_SCRIPT + ":ffibuilder"]}


setup(cmdclass={"build_ext": OptionalBuildExt}, **_cffi_modules())
