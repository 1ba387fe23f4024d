"""Replacing DCLS layers by plain convolutions for inference.

After training, a DCLS layer is just a convolution with a fixed dense
kernel. Folding builds that kernel once and swaps the layer for an
``nn.Conv1d``/``nn.Conv2d`` holding it, which every runtime (TorchScript,
ONNX, TensorRT) understands.
"""
from __future__ import annotations

import torch
from torch import nn

from .dcls_conv import Dcls1d, Dcls2d, _DclsNd


@torch.no_grad()
def fold_dcls_layer(layer: _DclsNd) -> nn.Module:
    conv_cls = nn.Conv2d if isinstance(layer, Dcls2d) else nn.Conv1d
    kernel = layer.kernel_builder(layer.weight, layer.P, layer.SIG)
    conv = conv_cls(
        layer.in_channels,
        layer.out_channels,
        layer.dilated_kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        groups=layer.groups,
        bias=layer.bias is not None,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    conv.weight.copy_(kernel)
    if layer.bias is not None:
        conv.bias.copy_(layer.bias)
    conv.train(layer.training)
    return conv


def fold_dcls(model: nn.Module) -> nn.Module:
    """Swap every DCLS layer of ``model`` (in place) for its folded conv.

    Returns the model, or the folded conv when ``model`` is itself a DCLS layer.
    """
    if isinstance(model, (Dcls1d, Dcls2d)):
        return fold_dcls_layer(model)
    names = [name for name, m in model.named_modules() if isinstance(m, (Dcls1d, Dcls2d))]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = model.get_submodule(name)
        setattr(parent, child, fold_dcls_layer(layer))
        if layer.shared_kernel_cache is not None:  # its group no longer builds a kernel for it
            layer.shared_kernel_cache.forget(layer)
            layer.shared_kernel_cache = None
    return model
