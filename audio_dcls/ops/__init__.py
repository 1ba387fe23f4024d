"""Functional kernels behind the layers."""
from .conv import conv1d, conv2d, fast_depthwise, set_fast_depthwise
from .depthwise_cpu import DepthwiseConv2dCPU, depthwise_conv2d_cpu, weight_grad_fft

__all__ = ["conv1d", "conv2d", "fast_depthwise", "set_fast_depthwise", "DepthwiseConv2dCPU", "depthwise_conv2d_cpu", "weight_grad_fft"]
