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
from . import checkpoint, diagnostics, init, kernels, memory, theory
from . import ensemble
from .checkpoint import CheckpointError, CheckpointMismatch, CorruptCheckpoint
from .kernels import BackendUnavailable
from .ensemble import Ensemble, EnsembleResult
from .memory import InsufficientMemory
from .network import Network
from .problem import Problem, synthetic
from .train import (BottleneckWarning, CheckpointWarning, DivergenceError, EngineWarning, LearningRateWarning,
                    TrainResult, fit_rate, gd_step, stop_threshold, train)

__version__ = "0.1.0"

__all__ = [
    "Problem", "synthetic", "init", "Network", "gd_step", "train", "TrainResult",
    "DivergenceError", "BackendUnavailable", "fit_rate", "stop_threshold", "theory", "kernels", "diagnostics",
    "checkpoint", "memory", "InsufficientMemory", "CheckpointError", "CorruptCheckpoint",
    "CheckpointMismatch", "EngineWarning", "LearningRateWarning", "CheckpointWarning", "BottleneckWarning",
    "ensemble", "Ensemble", "EnsembleResult", "__version__",
]
