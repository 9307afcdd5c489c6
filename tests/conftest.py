import os
import sys

# tests/naive.py is the paper-convention oracle; make it importable as `naive`.
sys.path.insert(0, os.path.dirname(__file__))
