"""Sharing one positions/Σ parameter between several DCLS layers.

The DCLS audio recipe ties the tap positions (and spreads) of every DCLS
layer in one stage while each layer keeps its own weights. Sharing is done by
making the layers hold the *same* ``nn.Parameter`` object: autograd then sums
the gradients of all sharers into it, ``model.parameters()`` lists it once,
and state dicts keep one entry per layer (all equal), so loading works as for
unshared layers.
"""
from __future__ import annotations

from typing import Sequence

from .dcls_conv import _DclsNd


def share_positions(layers: Sequence[_DclsNd]) -> None:
    """Make every layer use the positions (and Σ) of ``layers[0]``."""
    layers = list(layers)
    if not layers:
        return
    owner = layers[0]
    for layer in layers[1:]:
        if not isinstance(layer, _DclsNd):
            raise TypeError(f"can only share positions between DCLS layers, got {type(layer).__name__}")
        if layer.P.shape != owner.P.shape or layer.version != owner.version:
            raise ValueError(
                f"cannot share positions between layers with P {tuple(owner.P.shape)} ({owner.version}) "
                f"and P {tuple(layer.P.shape)} ({layer.version})"
            )
        if layer.dilated_kernel_size != owner.dilated_kernel_size:
            raise ValueError(f"dilated sizes differ: {owner.dilated_kernel_size} vs {layer.dilated_kernel_size}")
        layer.P = owner.P
        if owner.SIG is not None:
            layer.SIG = owner.SIG


def positions_are_shared(a: _DclsNd, b: _DclsNd) -> bool:
    return a.P is b.P and a.SIG is b.SIG
