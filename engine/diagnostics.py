"""Quantities the proofs reason with, computable at any state (paper convention).

``RECORDERS`` maps a name to a factory ``make(net, prob) -> rec`` where
``rec(net)`` returns the quantity for the current state; ``engine.train(...,
record={name: stride})`` calls it every ``stride`` steps (and at the final
state) and stores the results in ``run.records[name]``.
"""
from __future__ import annotations

import numpy as np

from .network import Network

__all__ = ["distance_from_init", "RECORDERS"]


def distance_from_init(net: Network, net0: Network) -> np.ndarray:
    """||W_i(t) - W_i(0)||_F for i = 1..L, shape (L,) (DH C(t), Claim 7.1; HXP C(t)).

    Computed in normalized storage as s_i ||A_i(t) - A_i(0)||_F (the scales
    s_i never change during GD).
    """
    if not isinstance(net, Network) or not isinstance(net0, Network):
        raise TypeError("net, net0: must be engine Networks")
    if net.widths != net0.widths:
        raise ValueError(f"net0: widths {net0.widths} differ from net's {net.widths}")
    s = net.scales
    out = np.empty(net.depth)
    first = net._first_normalized().astype(np.float64) - net0._first_normalized()
    out[0] = s[0] * np.linalg.norm(first)
    for i in range(1, net.depth):
        out[i] = s[i] * np.linalg.norm(net._layers[i].astype(np.float64) - net0._layers[i])
    return out


def _distance_recorder(net, prob):
    net0 = net.copy()   # one extra copy of the weights for the whole run
    return lambda n: distance_from_init(n, net0)


RECORDERS = {
    "distance": _distance_recorder,
}
