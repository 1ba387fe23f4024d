"""Functional kernels behind the layers; ``ops.config`` is the switchboard of their routes."""
from . import config
from .conv import HAS_TRITON, conv1d, conv2d, fast_depthwise, set_fast_depthwise
from .depthwise_cpu import DepthwiseConv2dCPU, depthwise_conv2d_cpu, weight_grad_fft

__all__ = [
    "config", "HAS_TRITON", "conv1d", "conv2d", "fast_depthwise", "set_fast_depthwise",
    "DepthwiseConv2dCPU", "depthwise_conv2d_cpu", "weight_grad_fft",
]
