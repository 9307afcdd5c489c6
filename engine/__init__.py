"""engine: exact, fast full-batch gradient descent on deep linear networks.

Reproduces and extends Du & Hu 2019 ("Width Provably Matters", DH) and
Hu, Xiao & Pennington 2020 ("Provable Benefit of Orthogonal Initialization",
HXP). Paper convention throughout: X is (d_in, n), Y is (d_out, n), columns
are samples, W_i is (d_i, d_{i-1}), f(x) = alpha W_L ... W_1 x, and learning
rates are in W-space units.

    import engine
    X, Y = engine.synthetic(1024, 16, 10, seed=0)
    prob = engine.Problem(X, Y)
    net = engine.init.orthogonal([1024] + [64] * 31 + [10], seed=0)
    run = engine.train(net, prob, lr="theory", steps=500)
"""
from . import checkpoint, diagnostics, ensemble, init, kernels, memory, stepper, theory
from ._version import __version__
from .checkpoint import CheckpointError, CheckpointMismatch, CorruptCheckpoint
from .errors import (BottleneckWarning, CheckpointWarning, DivergenceError, EngineWarning,
                     LearningRateWarning)
from .kernels import BackendUnavailable
from .memory import InsufficientMemory
from .network import Ensemble, Network
from .problem import Problem, synthetic
from .recording import EnsembleResult, TrainResult, fit_rate
from .stepper import Stepper
from .train import gd_step, stop_threshold, train

__all__ = [
    "Problem", "synthetic", "init", "Network", "gd_step", "train", "TrainResult",
    "DivergenceError", "BackendUnavailable", "fit_rate", "stop_threshold", "theory", "kernels", "diagnostics",
    "checkpoint", "memory", "InsufficientMemory", "CheckpointError", "CorruptCheckpoint",
    "CheckpointMismatch", "EngineWarning", "LearningRateWarning", "CheckpointWarning", "BottleneckWarning",
    "ensemble", "Ensemble", "EnsembleResult", "stepper", "Stepper", "__version__",
]
