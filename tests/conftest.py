import os
import sys

# tests/naive.py is the paper-convention oracle; make it importable as `naive`.
sys.path.insert(0, os.path.dirname(__file__))

# auto's backend choice by the fixed rule in tests: a measured calibration would time
# backends (slow, load-dependent) and write a cache under the user's home directory.
# The decision logic of the measured mode is tested with injected timers (test_backend_auto.py).
os.environ.setdefault("ENGINE_AUTO", "rule")
