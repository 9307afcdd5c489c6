"""The engine's warnings and the error a diverging run raises.

    EngineWarning           base class of every warning the engine issues
    LearningRateWarning     a numeric lr above the theorem's bound
    BottleneckWarning       a hidden layer narrower than rank(Phi)
    CheckpointWarning       a checkpoint could not be written (training went on)
    DivergenceError         GD diverged (a single network; ensemble members are marked instead)
"""
from __future__ import annotations

__all__ = ["EngineWarning", "LearningRateWarning", "BottleneckWarning", "CheckpointWarning", "DivergenceError"]


class EngineWarning(UserWarning):
    """Base class of the warnings the engine issues."""


class CheckpointWarning(EngineWarning):
    """A checkpoint could not be written (disk full, permissions...); training went on.

    The previous checkpoint file is left intact, and the run's result is still
    returned: a failed write never costs the computation itself.
    """


class LearningRateWarning(EngineWarning):
    """The learning rate exceeds the theorem's bound for the network's init.

    GD may still converge (the bounds are sufficient, not necessary), but the
    theorem's guarantee and ``TrainResult.predicted`` no longer apply, and
    far above the bound training diverges (DivergenceError).
    """


class BottleneckWarning(EngineWarning):
    """A hidden layer is narrower than the rank of the least-squares solution Phi = Y X^+.

    The end-to-end map alpha W_L ... W_1 has rank <= min_i d_i, so it cannot
    reach Phi and l - OPT stays bounded away from 0 (OPT is the minimum over
    all linear maps, DH Sec. 3); the papers' theorems assume every d_i >= d_out.
    """


class DivergenceError(RuntimeError):
    """GD diverged: the loss became non-finite or exploded.

    Attributes
    ----------
    result : TrainResult   the history up to the last finite loss
    net    : Network       the network at the last state whose loss was finite and
                           below the divergence threshold (state ``net_step``,
                           normally ``step - 1``; never non-finite weights, even at
                           lr = 1e308)
    step   : int           the step index t at which divergence was detected
    net_step : int         the step of the state held in ``net``
    """

    def __init__(self, message, result=None, net=None, step=None, net_step=None):
        super().__init__(message)
        self.result = result
        self.net = net
        self.step = step
        self.net_step = net_step
