"""The dense kernels of DCLS-Gauss layers that share positions, in two Triton kernels.

Built with PyTorch operations, the kernel of one DCLS layer costs some thirty
small kernel launches forward and backward (profiles, grid sums, scaling, a
batched product, and their gradients); the 18 layers of a ConvNeXt-T add
hundreds of launches per training step on tensors of a few hundred
kilobytes, which leaves the GPU waiting on the host. Here all L layers of a
group that shares one positions/Σ parameter (a stage of the audio models)
are built by one program per channel:

* forward — the two Gaussian profiles of the K taps along each axis, their
  grid sums, then for each layer l the kernel
      kernel_l = (g_y · (w_l / (S_y S_x + eps)))ᵀ @ g_x,
  one (K × D_h)ᵀ (K × D_w) product in fp32;
* backward — the same profiles recomputed, the weight gradient of each
  layer and the position and Σ gradients summed over the layers, in one pass:
      A_l = g_x @ dK_lᵀ,  ds_l = Σ_y A_l ⊙ g_y,  dw_l = ds_l / (S_y S_x + eps),
      dg_y += s_l A_l,  dg_x += (g_y s_l) @ dK_l,
  then through the grid sums and g = exp(−½ z²), z = (t − p − D//2) / σ:
      ∂g/∂p = g z / σ,  ∂g/∂σ = g z² / σ,  σ = |Σ| + 0.27.

Numbers are those of ``audio_dcls.layers.dcls_kernel`` (same exponent clamp
and tail cut, fp32 throughout, products in IEEE fp32, no TF32). Only the
'gauss' version in 2-D is built here; ``DclsKernel.shared_kernels`` uses it on
CUDA and the PyTorch path everywhere else. Under ``TRITON_INTERPRET=1`` the
kernels run on CPU tensors (how CI checks them).
"""
from __future__ import annotations

import torch
from torch import Tensor

import triton
import triton.language as tl

# The constants inside the kernels are those of audio_dcls.layers.dcls_kernel:
# σ = |Σ| + 0.27, grid-sum eps 1e-7, tails below 1e-15 cut, exponent clamped at
# log(1e-15) = -34.538776394910684.


@triton.jit
def _profile(P, S, coord, c, C, K, D: tl.constexpr, offs_k, offs_d):
    """Gaussian profile of the K taps of channel c along one axis: (g, z, σ, sign Σ, kept)."""
    mask_k = offs_k < K
    p = tl.load(P + (coord * C + c) * K + offs_k, mask=mask_k, other=0.0)
    raw = tl.load(S + (coord * C + c) * K + offs_k, mask=mask_k, other=0.0)
    sig = tl.abs(raw) + 0.27
    z = (offs_d[None, :].to(tl.float32) - (p[:, None] + D // 2)) / sig[:, None]  # (BK, BD)
    e = -0.5 * z * z
    g = tl.exp(tl.maximum(e, -34.538776394910684))  # exponent clamped as in the PyTorch build
    kept = (g > 1e-15) & (e > -34.538776394910684) & mask_k[:, None] & (offs_d[None, :] < D)
    g = tl.where(kept, g, 0.0)
    sign = tl.where(raw > 0, 1.0, tl.where(raw < 0, -1.0, 0.0))
    return g, z, sig, sign, kept


@triton.jit
def _dcls_gauss_fwd(P, S, W, OUT, L, C, K, DH: tl.constexpr, DW: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    c = tl.program_id(0)
    offs_k = tl.arange(0, BK)
    offs_h = tl.arange(0, BH)
    offs_w = tl.arange(0, BW)
    gy, _zy, _sy, _ny, _ky = _profile(P, S, 1, c, C, K, DH, offs_k, offs_h)  # coordinate 1 runs along the height
    gx, _zx, _sx, _nx, _kx = _profile(P, S, 0, c, C, K, DW, offs_k, offs_w)
    inv = 1.0 / (tl.sum(gy, 1) * tl.sum(gx, 1) + 1e-7)  # (BK,)
    mask_k = offs_k < K
    out_mask = (offs_h[:, None] < DH) & (offs_w[None, :] < DW)
    for l in range(L):
        w = tl.load(W + (l * C + c) * K + offs_k, mask=mask_k, other=0.0)
        rows = gy * (w * inv)[:, None]  # (BK, BH)
        kern = tl.dot(tl.trans(rows), gx, input_precision="ieee")  # (BH, BW)
        tl.store(OUT + ((l * C + c) * DH + offs_h[:, None]) * DW + offs_w[None, :], kern, mask=out_mask)


@triton.jit
def _dcls_gauss_bwd(P, S, W, GRAD, DP, DS, DW_, L, C, K, DH: tl.constexpr, DW: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    c = tl.program_id(0)
    offs_k = tl.arange(0, BK)
    offs_h = tl.arange(0, BH)
    offs_w = tl.arange(0, BW)
    mask_k = offs_k < K
    gy, zy, sy, ny, ky = _profile(P, S, 1, c, C, K, DH, offs_k, offs_h)
    gx, zx, sx, nx, kx = _profile(P, S, 0, c, C, K, DW, offs_k, offs_w)
    sum_y = tl.sum(gy, 1)
    sum_x = tl.sum(gx, 1)
    inv = 1.0 / (sum_y * sum_x + 1e-7)
    grad_mask = (offs_h[:, None] < DH) & (offs_w[None, :] < DW)
    dgy = tl.zeros((BK, BH), dtype=tl.float32)
    dgx = tl.zeros((BK, BW), dtype=tl.float32)
    dinv = tl.zeros((BK,), dtype=tl.float32)
    for l in range(L):
        w = tl.load(W + (l * C + c) * K + offs_k, mask=mask_k, other=0.0)
        s = w * inv
        dk = tl.load(GRAD + ((l * C + c) * DH + offs_h[:, None]) * DW + offs_w[None, :], mask=grad_mask, other=0.0)  # (BH, BW)
        a = tl.dot(gx, tl.trans(dk), input_precision="ieee")  # (BK, BH): Σ_x g_x[k, x] dK[y, x]
        ds = tl.sum(a * gy, 1)  # (BK,)
        dgy += s[:, None] * a
        dgx += tl.dot(gy * s[:, None], dk, input_precision="ieee")  # (BK, BW)
        tl.store(DW_ + (l * C + c) * K + offs_k, ds * inv, mask=mask_k)
        dinv += ds * w
    dnorm = -dinv * inv * inv  # inv = 1 / (S_y S_x + eps)
    dgy += (dnorm * sum_x)[:, None]
    dgx += (dnorm * sum_y)[:, None]
    ty = tl.where(ky, dgy * gy, 0.0)
    tx = tl.where(kx, dgx * gx, 0.0)
    tl.store(DP + (1 * C + c) * K + offs_k, tl.sum(ty * zy, 1) / sy, mask=mask_k)
    tl.store(DP + (0 * C + c) * K + offs_k, tl.sum(tx * zx, 1) / sx, mask=mask_k)
    tl.store(DS + (1 * C + c) * K + offs_k, tl.sum(ty * zy * zy, 1) / sy * ny, mask=mask_k)
    tl.store(DS + (0 * C + c) * K + offs_k, tl.sum(tx * zx * zx, 1) / sx * nx, mask=mask_k)


def _blocks(taps: int, dh: int, dw: int):
    # Block sides are powers of two, and tl.dot needs 16 or more.
    return tuple(max(16, triton.next_power_of_2(n)) for n in (taps, dh, dw))


class DclsGaussKernels(torch.autograd.Function):
    """(positions (2, O, I/g, K), Σ like it, weights (L, O, I/g, K)) -> kernels (L, O, I/g, D_h, D_w)."""

    @staticmethod
    def forward(ctx, positions: Tensor, sigma: Tensor, weights: Tensor, sizes) -> Tensor:
        dh, dw = sizes
        layers, out_c, in_c, taps = weights.shape
        c = out_c * in_c
        p, s, w = (t.detach().float().contiguous() for t in (positions, sigma, weights))
        out = torch.empty(layers, out_c, in_c, dh, dw, device=w.device, dtype=torch.float32)
        bk, bh, bw = _blocks(taps, dh, dw)
        _dcls_gauss_fwd[(c,)](p, s, w, out, layers, c, taps, dh, dw, bk, bh, bw)
        ctx.save_for_backward(p, s, w)
        ctx.sizes = (dh, dw)
        ctx.dtypes = (positions.dtype, sigma.dtype, weights.dtype)
        return out.to(weights.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        p, s, w = ctx.saved_tensors
        dh, dw = ctx.sizes
        layers, out_c, in_c, taps = w.shape
        c = out_c * in_c
        grad = grad.float().contiguous()
        dp, ds, dwt = torch.empty_like(p), torch.empty_like(s), torch.empty_like(w)
        bk, bh, bw = _blocks(taps, dh, dw)
        _dcls_gauss_bwd[(c,)](p, s, w, grad, dp, ds, dwt, layers, c, taps, dh, dw, bk, bh, bw)
        pd, sd, wd = ctx.dtypes
        return dp.to(pd), ds.to(sd), dwt.to(wd), None


def dcls_gauss_kernels(weights: Tensor, positions: Tensor, sigma: Tensor, dilated_kernel_size) -> Tensor:
    """Dense kernels (L, O, I/g, D_h, D_w) of L 2-D DCLS-Gauss layers sharing positions and Σ."""
    if positions.dim() != 4 or positions.shape[0] != 2 or sigma.shape != positions.shape or weights.shape[1:] != positions.shape[1:]:
        raise ValueError(f"expected positions/Σ (2, O, I/g, K) and weights (L, O, I/g, K), got {tuple(positions.shape)}, {tuple(sigma.shape)}, {tuple(weights.shape)}")
    return DclsGaussKernels.apply(positions, sigma, weights, tuple(int(d) for d in dilated_kernel_size))
