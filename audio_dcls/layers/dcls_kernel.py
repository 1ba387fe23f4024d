"""Construction of the dense DCLS kernel from its taps.

A DCLS kernel has ``K`` taps per (out, in/groups) channel pair. Tap ``k`` has a
weight ``w_k``, a position ``p_k`` (one coordinate per spatial axis, 0 at the
grid centre) and, for the ``gauss`` and ``triangle`` versions, a learnable
spread ``Σ_k``. Each tap is spread over the dense ``D`` grid by an
interpolation function ``g_k`` normalised to unit sum, and the dense kernel is
``Σ_k w_k · g_k``.

Every interpolation used here is a product of one-dimensional factors
(``g_k(y, x) = g_k^y(y) · g_k^x(x)``), and so is its grid sum. The dense kernel
is therefore a batched matrix product over (C, D_y, K) × (C, K, D_x) instead of
a (C, K, D_y, D_x) tensor: the same numbers with far less memory traffic, in
both directions of autograd.

Axis convention (shared with the reference ``dcls`` package): coordinate 0 of
the positions moves along the *last* spatial axis (width; time in our
spectrograms), coordinate 1 along the one before (height; frequency).
``dilated_kernel_size`` is given in tensor order, ``(D_h, D_w)``, like
``nn.Conv2d.kernel_size``.

Versions:
    gauss     g(d) = exp(-½ (d/σ)²),  σ = |Σ| + 0.27
    bilinear  g(d) = relu(1 - |d|)      (no Σ; the reference calls it 'v1')
    triangle  g(d) = relu(σ - |d|),   σ = |Σ| + 1 (the reference calls it 'max')
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..ops import config as ops_config

try:  # the fused build needs triton, which only CUDA builds of torch carry
    from ..ops import dcls_kernel_triton as _fused
except ImportError:  # pragma: no cover - depends on the installed torch
    _fused = None

VERSIONS = ("gauss", "bilinear", "triangle")
# Names the reference package uses for the same interpolations.
REFERENCE_VERSION_NAMES = {"gauss": "gauss", "bilinear": "v1", "triangle": "max"}
_SIGMA_OFFSET = {"gauss": 0.27, "triangle": 1.0}
_NORM_EPS = 1e-7
# Gaussian tails are cut below this value. Far taps otherwise leave
# subnormal floats (e^-88 and less) in the kernel, and subnormal arithmetic
# makes the CPU convolution over ten times slower. The cut is 8σ out and
# changes kernel values by less than 1e-15 of the tap weight.
_GAUSS_FLOOR = 1e-15
_LOG_GAUSS_FLOOR = math.log(_GAUSS_FLOOR)
_SUBNORMAL = torch.finfo(torch.float32).tiny


def check_version(version: str) -> str:
    aliases = {v: k for k, v in REFERENCE_VERSION_NAMES.items()}
    version = aliases.get(version, version)
    if version not in VERSIONS:
        raise ValueError(f"unknown DCLS version {version!r}; expected one of {VERSIONS}")
    return version


def _axis_profile(grid: Tensor, position: Tensor, sigma: Optional[Tensor], version: str) -> Tensor:
    """One-dimensional interpolation factor of every tap along one axis.

    grid: (D,) absolute grid coordinates; position: (C, K) tap centres in grid
    coordinates; sigma: (C, K) raw Σ or None. Returns (C, K, D).
    """
    d = grid - position.unsqueeze(-1)  # (C, K, D)
    if version == "gauss":
        s = sigma.abs().unsqueeze(-1) + _SIGMA_OFFSET["gauss"]
        # Clamping the exponent first matters too: the CPU exp() takes a
        # ~70x slower path for arguments below about -87.
        g = torch.exp((-0.5 * (d / s) ** 2).clamp_min(_LOG_GAUSS_FLOOR))
        return torch.where(g <= _GAUSS_FLOOR, torch.zeros_like(g), g)
    if version == "bilinear":
        return torch.relu(1.0 - d.abs())
    s = sigma.abs().unsqueeze(-1) + _SIGMA_OFFSET["triangle"]
    return torch.relu(s - d.abs())


def _check_shapes(positions: Tensor, sigma: Optional[Tensor], sizes: Tuple[int, ...], version: str) -> None:
    if positions.shape[0] != len(sizes):
        raise ValueError(f"positions have {positions.shape[0]} coordinates for a {len(sizes)}-D kernel")
    if version != "bilinear" and sigma is None:
        raise ValueError(f"version {version!r} needs sigma")


def dcls_tap_profiles(
    positions: Tensor,
    sigma: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    version: str = "gauss",
    grids: Optional[Sequence[Tensor]] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[List[Tensor], Tensor]:
    """The part of the kernel that depends on positions and Σ only.

    Layers that share positions (one stage of the audio models) can compute
    this once and each apply their own weights with ``kernel_from_profiles``.

    Returns the per-axis profiles in tensor-axis order, each (C, K, D_axis)
    with C = O·I/g, and the inverse grid sums 1/(Σ_grid g_k + eps), (C, K).
    """
    version = check_version(version)
    sizes = tuple(int(s) for s in dilated_kernel_size)
    _check_shapes(positions, sigma, sizes, version)
    n = len(sizes)
    dtype = dtype or positions.dtype
    taps = positions.shape[-1]
    if grids is None:
        grids = [torch.arange(s, device=positions.device, dtype=dtype) for s in sizes]
    # Coordinate i of the positions runs along tensor axis n-1-i.
    profiles = []
    for axis in range(n):
        coord = n - 1 - axis
        centre = positions[coord].reshape(-1, taps).to(dtype) + sizes[axis] // 2
        sig = None if sigma is None else sigma[coord].reshape(-1, taps).to(dtype)
        profiles.append(_axis_profile(grids[axis].to(dtype), centre, sig, version))
    norm = profiles[0].sum(-1)
    for prof in profiles[1:]:
        norm = norm * prof.sum(-1)
    return profiles, 1.0 / (norm + _NORM_EPS)


def kernel_from_profiles(weight: Tensor, profiles: Sequence[Tensor], inv_norm: Tensor) -> Tensor:
    """Dense kernel (O, I/g, *D) from tap weights (O, I/g, K) and ``dcls_tap_profiles``."""
    out_c, in_c, taps = weight.shape
    sizes = tuple(p.shape[-1] for p in profiles)
    scale = weight.reshape(out_c * in_c, taps) * inv_norm  # (C, K)
    if len(profiles) == 1:
        kernel = torch.bmm(scale.unsqueeze(1), profiles[0]).squeeze(1)  # (C, D)
    else:
        rows = profiles[0] * scale.unsqueeze(-1)  # (C, K, D_h)
        kernel = torch.bmm(rows.transpose(1, 2), profiles[1])  # (C, D_h, D_w)
    # Tiny tap weights can still produce subnormals; flush them (see above). GPUs handle
    # subnormals at full speed, and there these three extra kernel launches per layer only cost.
    if kernel.device.type == "cpu":
        kernel = torch.where(kernel.abs() < _SUBNORMAL, torch.zeros_like(kernel), kernel)
    return kernel.reshape(out_c, in_c, *sizes)


def build_dcls_kernel(
    weight: Tensor,
    positions: Tensor,
    sigma: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    version: str = "gauss",
    grids: Optional[Sequence[Tensor]] = None,
) -> Tensor:
    """Dense kernel of a DCLS layer.

    Args:
        weight: (O, I/g, K) tap weights.
        positions: (n, O, I/g, K) tap positions, n = number of spatial axes
            (1 or 2); coordinate 0 runs along the last spatial axis.
        sigma: like ``positions`` (raw Σ), or None for ``bilinear``.
        dilated_kernel_size: (D,) or (D_h, D_w), tensor order.
        version: 'gauss', 'bilinear' or 'triangle'.
        grids: optional precomputed ``arange(D)`` per axis in tensor order
            (the layers keep them as buffers).

    Returns:
        (O, I/g, D) or (O, I/g, D_h, D_w) kernel in ``weight``'s dtype.
    """
    if positions.shape[1:] != weight.shape:
        raise ValueError(f"positions {tuple(positions.shape)} do not match weight {tuple(weight.shape)}")
    profiles, inv_norm = dcls_tap_profiles(positions, sigma, dilated_kernel_size, version, grids, weight.dtype)
    return kernel_from_profiles(weight, profiles, inv_norm)


def _fused_gauss_applies(weights: Sequence[Tensor], positions: Tensor, sigma: Optional[Tensor], version: str) -> bool:
    """Whether ``shared_kernels`` takes the fused Triton build.

    The ``fused_build`` setting of ``ops.config`` (AUDIO_DCLS_FUSED_BUILD): on
    (default) for CUDA tensors, off never, ``force`` on any device (CPU tensors
    need TRITON_INTERPRET=1: how the tests run it).
    """
    mode = ops_config.fused_build()
    if _fused is None or mode == "off":
        return False
    if version != "gauss" or sigma is None or positions.shape[0] != 2 or not (positions.is_cuda or mode == "force"):
        return False
    return all(t.dtype == torch.float32 for t in (positions, sigma, *weights))


class DclsKernel(nn.Module):
    """Builds the dense kernel of a DCLS layer; usable on its own.

    Holds only the index grids, as non-persistent buffers, so that moving the
    module with ``.to(device, dtype)`` moves them and state dicts stay free of
    them. The learnable tensors are passed to ``forward``.
    """

    def __init__(self, dilated_kernel_size: Tuple[int, ...], version: str = "gauss"):
        super().__init__()
        self.dilated_kernel_size = tuple(int(s) for s in dilated_kernel_size)
        self.version = check_version(version)
        for axis, size in enumerate(self.dilated_kernel_size):
            self.register_buffer(f"grid{axis}", torch.arange(size, dtype=torch.float32), persistent=False)

    def grids(self):
        return [getattr(self, f"grid{axis}") for axis in range(len(self.dilated_kernel_size))]

    def forward(self, weight: Tensor, positions: Tensor, sigma: Optional[Tensor]) -> Tensor:
        return build_dcls_kernel(weight, positions, sigma, self.dilated_kernel_size, self.version, self.grids())

    def profiles(self, positions: Tensor, sigma: Optional[Tensor], dtype: torch.dtype) -> Tuple[List[Tensor], Tensor]:
        return dcls_tap_profiles(positions, sigma, self.dilated_kernel_size, self.version, self.grids(), dtype)

    def shared_kernels(self, weights: Sequence[Tensor], positions: Tensor, sigma: Optional[Tensor]) -> List[Tensor]:
        """Kernels of several layers that share ``positions``/``sigma``, one per weight.

        On CUDA, 2-D Gauss kernels in fp32 come from two fused Triton kernels (one
        forward, one backward, for all the layers); elsewhere the shared profiles are
        computed once and each layer's weights applied to them.
        """
        def torch_build() -> List[Tensor]:
            profiles, inv_norm = self.profiles(positions, sigma, weights[0].dtype)
            return [kernel_from_profiles(w, profiles, inv_norm) for w in weights]

        if not _fused_gauss_applies(weights, positions, sigma, self.version):
            return torch_build()
        # A shape whose kernel fails to compile falls back to the PyTorch build, with one
        # warning, like the depthwise kernels (ops.config.fallback_events(); strict mode raises).
        key = (len(weights), tuple(weights[0].shape), self.dilated_kernel_size)
        return ops_config.guarded(
            "dcls_build", key,
            lambda: list(_fused.dcls_gauss_kernels(torch.stack(list(weights)), positions, sigma, self.dilated_kernel_size).unbind(0)),
            torch_build,
        )

    def extra_repr(self) -> str:
        return f"dilated_kernel_size={self.dilated_kernel_size}, version={self.version!r}"
