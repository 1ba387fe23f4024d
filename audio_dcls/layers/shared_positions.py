"""Sharing one positions/Σ parameter between several DCLS layers.

The DCLS audio recipe ties the tap positions (and spreads) of every DCLS
layer in one stage while each layer keeps its own weights. Sharing is done by
making the layers hold the *same* ``nn.Parameter`` object: autograd then sums
the gradients of all sharers into it, ``model.parameters()`` lists it once,
and state dicts keep one entry per layer (all equal), so loading works as for
unshared layers.

Layers that share positions also share everything the kernel build derives
from them (the per-axis tap profiles and their grid sums). ``share_kernel_build``
lets the group build all its kernels together once per forward pass of the
module that contains them, instead of layer by layer.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import nn

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


class SharedKernelCache:
    """The kernels of a group of layers sharing positions, valid during one forward of a module.

    The first layer of the group that needs its kernel builds every layer's
    (``DclsKernel.shared_kernels``: the tap profiles once, or on CUDA one fused
    kernel for the whole group); the others take theirs. This happens only while
    ``active``: outside that window (a layer called on its own, activation-checkpoint
    recomputation in the backward) every layer builds its own kernel, so no shared
    tensor ever outlives the autograd graph it belongs to.
    """

    def __init__(self, layers: Sequence[_DclsNd]):
        self.layers = list(layers)
        self.active = False
        self.builds = 0  # group builds so far (one per forward of the container when all goes well)
        self._entries: Dict[Tuple, Dict[int, torch.Tensor]] = {}

    def start(self, *_):
        self.active = True
        self._entries.clear()

    def stop(self, *_):
        self.active = False
        self._entries.clear()

    def forget(self, layer: _DclsNd) -> None:
        """Drop a layer that left the model (folded, replaced)."""
        self.layers = [m for m in self.layers if m is not layer]

    def kernel(self, layer: _DclsNd) -> torch.Tensor:
        owner = self.layers[0]
        sig = owner.SIG
        key = (
            id(owner.P), owner.P._version,
            None if sig is None else (id(sig), sig._version),
            tuple((id(m.weight), m.weight._version, m.weight.dtype) for m in self.layers),
            owner.P.device, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
        )
        entry = self._entries.get(key)
        if entry is None:
            kernels = owner.kernel_builder.shared_kernels([m.weight for m in self.layers], owner.P, sig)
            self.builds += 1
            entry = self._entries[key] = {id(m): k for m, k in zip(self.layers, kernels)}
        return entry[id(layer)]


class _StartCache:
    # A callable object rather than a closure: deepcopy/pickle of the model then
    # carry the hook along with the cache the copied layers point at.
    def __init__(self, cache: SharedKernelCache):
        self.cache = cache

    def __call__(self, module, args):
        if not torch.compiler.is_compiling():  # compiled graphs build per layer (see _DclsNd._build_kernel)
            self.cache.start()


class _StopCache(_StartCache):
    def __call__(self, module, args, output):
        if not torch.compiler.is_compiling():
            self.cache.stop()


def share_kernel_build(container: nn.Module, layers: Sequence[_DclsNd]) -> SharedKernelCache:
    """Let ``layers`` (which share positions) build their kernels together, once
    during each forward of ``container``, a module that runs all of them."""
    layers = list(layers)
    for layer in layers[1:]:
        if not positions_are_shared(layers[0], layer):
            raise ValueError("share_kernel_build needs layers that share positions (share_positions first)")
    cache = SharedKernelCache(layers)
    for layer in layers:
        layer.shared_kernel_cache = cache
    container.register_forward_pre_hook(_StartCache(cache))
    container.register_forward_hook(_StopCache(cache), always_call=True)
    return cache
