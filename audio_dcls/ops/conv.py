"""Convolution dispatch for DCLS layers and our depthwise modules.

``conv2d`` has ``F.conv2d``'s signature and numerics; for depthwise stride-1
convolutions it routes to a faster implementation of the same operation:
``depthwise_cpu`` on the CPU and, when the Triton kernels are importable, the
GPU kernels on CUDA. Everything else goes to ``F.conv2d`` unchanged. Whether
the fast routes are taken at all is the ``fast_depthwise`` setting of
``ops.config``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair, _single

from . import config
from .depthwise_cpu import depthwise_conv2d_cpu, fast_path_applies

try:  # The GPU kernels need triton, which only CUDA builds of torch carry.
    from . import depthwise_triton
except ImportError:  # pragma: no cover - depends on the installed torch
    depthwise_triton = None

HAS_TRITON = depthwise_triton is not None


def set_fast_depthwise(enabled: bool) -> bool:
    """Turn the fast depthwise routes on or off; returns the previous state (``ops.config.set_fast_depthwise``)."""
    return config.set_fast_depthwise(enabled)


@contextlib.contextmanager
def fast_depthwise(enabled: bool) -> Iterator[None]:
    """The fast depthwise routes on or off for a block: ``ops.config.override(fast_depthwise=enabled)``."""
    with config.override(fast_depthwise=enabled):
        yield


def fast_routes_allowed() -> bool:
    """Our routes are on and nothing is tracing: TorchScript and ONNX export see stock operators."""
    return config.fast_depthwise_enabled() and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export()


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if fast_routes_allowed():
        if HAS_TRITON and x.is_cuda and depthwise_triton.triton_path_applies(x, weight, stride, padding, dilation, groups):
            return depthwise_triton.depthwise_conv2d_triton(x, weight, bias, padding)
        if fast_path_applies(x, weight, stride, padding, dilation, groups):
            return depthwise_conv2d_cpu(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """``F.conv1d`` through the 2-D dispatch (a 1-D signal is a 1-row image)."""
    (stride,), (padding,), (dilation,) = _single(stride), _single(padding), _single(dilation)
    y = conv2d(x.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, stride), (0, padding), (1, dilation), groups)
    return y.squeeze(-2)
