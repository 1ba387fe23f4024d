"""Depthwise large-kernel 2-D convolution for the CPU with a custom backward.

PyTorch's CPU path for a 23×23 depthwise convolution is slow in two places:
the NCHW forward (oneDNN only takes the fast route in channels_last) and, far
more, the weight gradient. This function keeps stock numerics and replaces
only the routes:

* forward: ``F.conv2d`` on a channels_last input;
* input gradient: the same depthwise convolution applied to the output
  gradient with the kernel flipped (a stride-1 transposed convolution is a
  correlation with the flipped kernel and complementary padding);
* weight gradient: the per-channel cross-correlation of the padded input with
  the output gradient, computed with real FFTs and summed over the batch in
  the frequency domain, so one inverse transform per channel suffices.

Only stride 1, dilation 1 and multiplier 1 (``groups == C_in == C_out``) are
handled; ``depthwise_conv2d`` falls back to ``F.conv2d`` otherwise.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _smooth_size(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _useful_taps(size: int, kernel: int, pad: int) -> Tuple[int, int]:
    """Kernel rows [lo, hi) that ever touch the input of a stride-1 conv.

    On maps smaller than the kernel (late stages: 8×7 maps under a 23×23
    kernel) the outer taps only ever meet padding zeros: dropping them changes
    no output and their weight gradient is exactly zero.
    """
    out = size + 2 * pad - kernel + 1
    return max(0, pad - (out - 1)), min(kernel, pad + size)


def weight_grad_fft(x: Tensor, grad_out: Tensor, kernel_size: Tuple[int, int], padding: Tuple[int, int]) -> Tensor:
    """dW[c, i, j] = Σ_b Σ_{y,x} grad_out[b, c, y, x] · x_pad[b, c, y + i, x + j]."""
    (kh, kw), (ph, pw) = kernel_size, padding
    b, c, h, w = x.shape
    # A circular correlation over any size >= the padded input equals the
    # linear one at lags i < kh, j < kw (grad_out is kh-1, kw-1 smaller), so
    # the padding and the FFT size are one zero-filled buffer.
    size = (_smooth_size(h + 2 * ph), _smooth_size(w + 2 * pw))
    xp = x.new_zeros(b, c, *size)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    fx = torch.fft.rfft2(xp)
    fg = torch.fft.rfft2(grad_out, s=size)
    spec = torch.einsum("bchw,bchw->chw", fx, fg.conj())  # batch sum in the frequency domain
    corr = torch.fft.irfft2(spec, s=size)
    return corr[:, :kh, :kw].unsqueeze(1).contiguous()


class DepthwiseConv2dCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, padding: Tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        xc = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(xc, weight, None, 1, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        ph, pw = ctx.padding
        kh, kw = weight.shape[-2:]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            g = grad_out.contiguous(memory_format=torch.channels_last)
            flipped = weight.flip((-2, -1))
            grad_x = F.conv2d(g, flipped, None, 1, (kh - 1 - ph, kw - 1 - pw), 1, x.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_fft(x.contiguous(), grad_out.contiguous(), (kh, kw), (ph, pw)).to(weight.dtype)
        return grad_x, grad_w, None


def is_stride1_depthwise(x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> bool:
    """A stride-1, undilated, multiplier-1 depthwise 2-D convolution whose input gradient
    (the same convolution with the flipped kernel) has a non-negative padding K − 1 − P:
    the case both fast routes (CPU here, Triton on CUDA) compute."""
    if x.dim() != 4 or weight.dim() != 4 or tuple(stride) != (1, 1) or tuple(dilation) != (1, 1):
        return False
    c = x.shape[1]
    if groups != c or weight.shape[0] != c or weight.shape[1] != 1:
        return False
    (kh, kw), (ph, pw) = weight.shape[-2:], padding
    return 0 <= ph <= kh - 1 and 0 <= pw <= kw - 1


def fast_path_applies(x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> bool:
    """Whether ``DepthwiseConv2dCPU`` computes this convolution."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and is_stride1_depthwise(x, weight, stride, padding, dilation, groups)


def depthwise_conv2d_cpu(x: Tensor, weight: Tensor, bias: Optional[Tensor], padding: Tuple[int, int]) -> Tensor:
    (kh, kw), (ph, pw) = weight.shape[-2:], padding
    h0, h1 = _useful_taps(x.shape[-2], kh, ph)
    w0, w1 = _useful_taps(x.shape[-1], kw, pw)
    if (h0, h1, w0, w1) != (0, kh, 0, kw):
        weight = weight[:, :, h0:h1, w0:w1]
        padding = (ph - h0, pw - w0)
    y = DepthwiseConv2dCPU.apply(x, weight.to(x.dtype), tuple(padding))
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    return y
