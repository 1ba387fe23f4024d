"""A depthwise ``nn.Conv2d`` that runs the Triton kernels on CUDA.

``DepthwiseConv2d`` is ``nn.Conv2d`` (same constructor, parameters, state
dict and CPU numerics); only its CUDA forward changes: a depthwise, stride-1,
undilated, zero-padded convolution goes through
``audio_dcls.ops.depthwise_triton`` (tensor-core kernels for the forward and
both gradients, much faster than PyTorch's depthwise path for 7×7 and larger
kernels). Any other case, and every CPU call, is the stock ``nn.Conv2d``.

``use_fast_depthwise(model)`` swaps the eligible ``nn.Conv2d`` modules of a
model in place, sharing their parameters, so a stock depthwise baseline (the
DSC models) gets the same kernels as the DCLS layers::

    model = use_fast_depthwise(timm.create_model("convnext_tiny_audio"))
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from ..ops.conv import HAS_TRITON, depthwise_triton, fast_routes_allowed


def _resolved_padding(conv: nn.Conv2d) -> Optional[Tuple[int, int]]:
    """Symmetric integer padding of ``conv``, or None when it has none (even 'same' kernels)."""
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if any(k % 2 == 0 for k in conv.kernel_size):  # 'same' pads asymmetrically here
            return None
        return (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    return (int(padding[0]), int(padding[1]))


def is_fast_depthwise_candidate(conv: nn.Module, min_kernel_size: int = 1) -> bool:
    """A plain ``nn.Conv2d`` that is depthwise (multiplier 1), stride 1, undilated, zero-padded,
    with a kernel of at least ``min_kernel_size`` along some axis."""
    return (
        type(conv) is nn.Conv2d
        and max(conv.kernel_size) >= min_kernel_size
        and conv.groups == conv.in_channels == conv.out_channels
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and _resolved_padding(conv) is not None
    )


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose depthwise stride-1 CUDA forward runs the Triton kernels."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "DepthwiseConv2d":
        """A ``DepthwiseConv2d`` sharing ``conv``'s parameters, hooks and mode."""
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device="meta", dtype=conv.weight.dtype,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        for name, value in vars(conv).items():  # forward/backward/state-dict hooks and their flags
            if "hook" in name:
                setattr(new, name, value)
        new.train(conv.training)
        return new

    def _triton_padding(self, x: Tensor) -> Optional[Tuple[int, int]]:
        if not HAS_TRITON or not x.is_cuda or self.padding_mode != "zeros" or not fast_routes_allowed():
            return None
        padding = _resolved_padding(self)
        if padding is None:
            return None
        if not depthwise_triton.triton_path_applies(x, self.weight, self.stride, padding, self.dilation, self.groups):
            return None
        return padding

    def forward(self, x: Tensor) -> Tensor:
        padding = self._triton_padding(x)
        if padding is not None:
            return depthwise_triton.depthwise_conv2d_triton(x, self.weight, self.bias, padding)  # (B, C, H', W')
        return super().forward(x)


def use_fast_depthwise(model: nn.Module, min_kernel_size: int = 5) -> nn.Module:
    """Swap every depthwise stride-1 ``nn.Conv2d`` of ``model`` for a ``DepthwiseConv2d`` with the same parameters.

    Kernels smaller than ``min_kernel_size`` (FastViT's 3×3 RepMixer convs)
    stay with PyTorch: three taps leave the tensor-core tiles mostly empty and
    cuDNN's direct kernels are cheap there. Works in place (the same parameter
    objects stay in the model, so an optimizer built earlier keeps working)
    and returns the model — or the new module when ``model`` itself is such a
    convolution.
    """
    if is_fast_depthwise_candidate(model, min_kernel_size):
        return DepthwiseConv2d.from_conv(model)
    names = [
        name for name, module in model.named_modules() if name and is_fast_depthwise_candidate(module, min_kernel_size)
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, DepthwiseConv2d.from_conv(model.get_submodule(name)))
    return model


__all__ = ["DepthwiseConv2d", "use_fast_depthwise", "is_fast_depthwise_candidate"]
