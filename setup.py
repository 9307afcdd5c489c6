"""Packaging shim.

All metadata lives in pyproject.toml. This file exists for the optional cffi
C kernel (csrc/): once that kernel is added it is built here through
``cffi_modules``, and a failed build (no compiler, no headers) must never make
installation fail -- the ``cblas`` backend then reports itself unavailable.
"""
from setuptools import setup

setup()
