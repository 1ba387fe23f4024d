"""Dilated Convolution with Learnable Spacings (DCLS) layers.

Khalfaoui-Hassani, Pellegrini, Masquelier, "Dilated convolution with learnable
spacings", ICLR 2023; "... with Gaussian interpolation", TMLR 2023; and for
audio, "Audio classification with dilated convolution with learnable
spacings", NeurIPS 2023 ML4Audio workshop.

Parameters, their names (``weight``, ``P``, ``SIG``, ``bias``), shapes and
initial distributions match the reference ``dcls`` package, so state dicts
move between the two. Differences, all deliberate:

* non-square dilated sizes place each coordinate on its own axis;
* the index grids are non-persistent buffers (``.to()`` works at any time);
* in eval mode the dense kernel is cached until a parameter changes;
* depthwise stride-1 layers run through ``audio_dcls.ops.conv2d``'s fast
  routes (same numbers, faster backward).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import init
from torch.nn.modules.utils import _pair, _single

from ..ops import conv1d, conv2d
from .dcls_kernel import DclsKernel, check_version

_size_any = Union[int, Tuple[int, ...]]


class _DclsNd(nn.Module):
    """Shared machinery of ``Dcls1d`` and ``Dcls2d``."""

    _ndim: int = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        dilated_kernel_size: _size_any,
        stride: _size_any = 1,
        padding: _size_any = 0,
        groups: int = 1,
        bias: bool = True,
        version: str = "gauss",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})")
        if kernel_count < 1:
            raise ValueError(f"kernel_count must be >= 1, got {kernel_count}")
        tup = _pair if self._ndim == 2 else _single
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_count = kernel_count
        self.dilated_kernel_size = tuple(int(s) for s in tup(dilated_kernel_size))
        if min(self.dilated_kernel_size) < 1:
            raise ValueError(f"dilated_kernel_size must be positive, got {self.dilated_kernel_size}")
        self.stride = tup(stride)
        self.padding = tup(padding)
        self.groups = groups
        self.version = check_version(version)
        factory = {"device": device, "dtype": dtype}
        n = self._ndim
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_count, **factory))
        self.P = nn.Parameter(torch.empty(n, out_channels, in_channels // groups, kernel_count, **factory))
        if self.version == "bilinear":
            self.register_parameter("SIG", None)
        else:
            self.SIG = nn.Parameter(torch.empty(n, out_channels, in_channels // groups, kernel_count, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.kernel_builder = DclsKernel(self.dilated_kernel_size, self.version)
        self._cached_kernel: Optional[Tensor] = None
        self._cache_key = None
        # Set by share_kernel_build when this layer's positions are shared.
        self.shared_kernel_cache = None
        self.reset_parameters()

    # Coordinate i of P runs along tensor axis n-1-i (0 = width/time).
    def position_limits(self) -> Tuple[int, ...]:
        return tuple(self.dilated_kernel_size[self._ndim - 1 - i] // 2 for i in range(self._ndim))

    def reset_parameters(self) -> None:
        # Same distributions as nn.ConvNd with the taps as the kernel extent.
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2]
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)
        self.reset_positions()

    @torch.no_grad()
    def reset_positions(self) -> None:
        for i, lim in enumerate(self.position_limits()):
            init.normal_(self.P[i], 0.0, 0.5).clamp_(-lim, lim)
        if self.SIG is not None:
            init.constant_(self.SIG, 0.23 if self.version == "gauss" else 0.0)

    @torch.no_grad()
    def clamp_positions(self) -> None:
        """Keep every tap centre inside the dilated grid (bilinear recipe)."""
        for i, lim in enumerate(self.position_limits()):
            self.P[i].clamp_(-lim, lim)

    def is_depthwise(self) -> bool:
        return self.groups == self.in_channels == self.out_channels

    # -- kernel ---------------------------------------------------------------
    def _learnable(self):
        return [t for t in (self.weight, self.P, self.SIG) if t is not None]

    def _kernel_key(self):
        # Version counters move on every in-place update (optimizer steps,
        # load_state_dict, clamp_positions); ids catch replaced parameters.
        return (
            tuple((id(t), t._version, t.device, t.dtype) for t in self._learnable()),
            torch.is_inference_mode_enabled(),
        )

    def construct_kernel(self) -> Tensor:
        """The dense kernel, (O, I/g, *dilated_kernel_size).

        In eval mode, when no gradient is wanted, the kernel is built once and
        reused until a parameter changes or the layer goes back to training.
        """
        needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in self._learnable())
        if self.training or needs_graph:
            return self._build_kernel()
        key = self._kernel_key()
        if self._cached_kernel is None or key != self._cache_key:
            self._cached_kernel = self._build_kernel()
            self._cache_key = key
        return self._cached_kernel

    def _build_kernel(self) -> Tensor:
        if torch.compiler.is_compiling():
            # Plain tensor operations: the compiler fuses them (and the shared work) itself.
            return self.kernel_builder(self.weight, self.P, self.SIG)
        cache = self.shared_kernel_cache
        if cache is not None and cache.active:
            return cache.kernel(self)
        # A group of one: on CUDA this is the fused build too.
        return self.kernel_builder.shared_kernels([self.weight], self.P, self.SIG)[0]

    def train(self, mode: bool = True):
        self._cached_kernel = None
        self._cache_key = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._cached_kernel = None
        self._cache_key = None
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}, "
            f"dilated_kernel_size={self.dilated_kernel_size}, stride={self.stride}, padding={self.padding}"
        )
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", version={self.version!r}"


class Dcls1d(_DclsNd):
    """1-D DCLS convolution: input (B, C_in, L) → (B, C_out, L_out)."""

    _ndim = 1

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.construct_kernel()  # (O, I/g, D)
        return conv1d(x, kernel, self.bias, self.stride, self.padding, 1, self.groups)


class Dcls2d(_DclsNd):
    """2-D DCLS convolution: input (B, C_in, H, W) → (B, C_out, H_out, W_out)."""

    _ndim = 2

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.construct_kernel()  # (O, I/g, D_h, D_w)
        return conv2d(x, kernel, self.bias, self.stride, self.padding, 1, self.groups)


DCLS_LAYERS = (Dcls1d, Dcls2d)
