"""Depthwise large-kernel 2-D convolution on CUDA: Triton kernels with autograd.

PyTorch's depthwise path (cuDNN or its own CUDA kernels) is far from the
arithmetic limit for large kernels, the weight gradient above all: on an H100
a 23×23 depthwise layer of an audio ConvNeXt-T spends most of its
forward + backward there. Here every pass becomes small matrix products that
run on the tensor cores, with fp32 accumulation.

Notation, one channel c: input X (H, W), output Y (HO, WO), kernel w (KH, KW),
zero padding (PH, PW), stride 1; the rows of all images of the batch are
stacked, r = b·HO + y.

* forward — for every kernel row i, an output tile (rows × columns) takes
      Y[r, x] += Σ_k X[r + i − PH, k] · T_i[k, x],   T_i[k, x] = w[i, k − x + PW]
  T_i (the Toeplitz matrix of kernel row i, zero off its band) is gathered
  from the weight; one product takes a block of kernel rows side by side.
  Only the input columns that reach the tile and the kernel rows that land
  inside the image are visited, so small late-stage maps (8×7 under a 23×23
  kernel) do not pay for the padding.
* input gradient — the same kernel: the stride-1 transposed convolution is a
  correlation with the flipped kernel and padding K − 1 − P.
* weight gradient — for a block of kernel rows i and a tile of output columns,
      M_i[x, k] = Σ_r G[r, x] · X[r + i − PH, k]
  is one matrix product whose reduction runs over batch × rows; afterwards
  dW[i, j] = Σ_x M_i[x, x + j − PW] sums the diagonals. Partial sums per
  split of the rows go to a buffer that is summed once, so the result is
  deterministic (no atomics).
* an FFT weight gradient (``depthwise_cpu.weight_grad_fft``, in fp32) is timed
  against the Triton one the first time a shape is seen on CUDA and the faster
  kept and recorded (``wgrad`` in ``ops.config``: auto | triton | fft).

Inputs may be fp32, fp16 or bf16 (fp32 accumulation; fp32 products follow
``torch.backends.cudnn.allow_tf32`` like stock convolutions: tf32, else
3×tf32). Under CUDA autocast the input is cast to the autocast dtype as
``F.conv2d`` would be; the weight is cast inside the kernel, so the weight
gradient comes back in the weight's own dtype. The kernels read NCHW rows
padded with zero columns to 16-byte boundaries; one relayout kernel builds
that copy from NCHW or channels_last input (cast included) and turns results
back into the input's memory format, so channels_last activations (which
timm's ConvNeXt blocks produce even in an NCHW model) cost one coalesced
pass each way.

Tile shapes are autotuned per layer shape. The autotuned tiles and the timed
weight-gradient routes are recorded in ``ops.config`` (``routes_state()``), so
a resumed run replays the first run's choices; pinned tiles and a fixed route
are settings there too. A kernel that fails to compile on an unusual
GPU/Triton combination falls back, with one warning, to the stock operation
for that shape (``ops.config.fallback_events()`` lists them; strict mode
raises instead). With ``TRITON_INTERPRET=1`` (set before this module is
imported) the kernels run on CPU tensors in Triton's interpreter, which is
how they are tested without a GPU.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

import triton
import triton.language as tl

from . import config
from .depthwise_cpu import is_stride1_depthwise, weight_grad_fft

log = logging.getLogger(__name__)

# Triton turns its interpreter on or off when the kernels below are decorated,
# so for this module the setting is fixed at import.
INTERPRET = config.interpret()
# The interpreter multiplies bf16 operands of tl.dot as their raw 16-bit
# patterns; under it the kernels upcast dot operands to fp32 (DOT_FP32), which
# gives the same products as bf16 tensor cores with fp32 accumulation.
MAX_KERNEL_SIZE = 31  # per axis (the issue asks for 3..31; larger would work, untested)
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Shape arguments change from layer to layer; specialising on them (divisible
# by 16, equal to 1) would recompile every kernel per layer shape.
_NO_SPECIALIZE = ["B", "C", "H", "W", "HO", "WO", "PH", "PW"]


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------
@triton.jit(do_not_specialize=_NO_SPECIALIZE + ["HAS_BIAS", "LX8", "XS8"])
def _dw_conv_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    B, C, H, W, HO, WO, PH, PW, LX8, XS8, HAS_BIAS,
    KH: tl.constexpr, KW: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, I_BLOCK: tl.constexpr,
):
    """Y = X ⋆ w (+ bias): one (BLOCK_R stacked rows × BLOCK_W columns) output tile of one channel.

    Each product covers I_BLOCK kernel rows at once: the input rows shifted by
    i0 .. i0 + I_BLOCK − 1 side by side against their Toeplitz blocks stacked,
    a (BLOCK_R × I_BLOCK·BLOCK_K) @ (I_BLOCK·BLOCK_K × BLOCK_W) product.

    X is stored with aligned zero columns: row stride XS = 8·XS8 and column k
    of the image at LX + k, LX = 8·LX8, zeros up to XS. Every load then
    starts on a 16-byte boundary and needs no per-column mask of its own.
    """
    pid_r = tl.program_id(0)
    pid_w = tl.program_id(1)
    c = tl.program_id(2)
    n_rows = B * HO
    LX = LX8 * 8
    XS = XS8 * 8

    r0 = pid_r * BLOCK_R
    rows = r0 + tl.arange(0, BLOCK_R)  # (BLOCK_R,) stacked output rows b·HO + y
    row_ok = rows < n_rows
    img = rows // HO
    y = rows - img * HO
    x0 = pid_w * BLOCK_W
    cols = x0 + tl.arange(0, BLOCK_W)  # (BLOCK_W,) output columns

    # Kernel rows that land inside the image for at least one row of the tile.
    r1 = tl.minimum(r0 + BLOCK_R, n_rows) - 1
    one_image = (r0 // HO) == (r1 // HO)
    y_lo = tl.where(one_image, r0 % HO, 0)
    y_hi = tl.where(one_image, r1 % HO, HO - 1)
    i_lo = tl.maximum(PH - y_hi, 0)
    i_hi = tl.minimum(H + PH - y_lo, KH)
    # Stored columns that reach the tile's output columns, from an aligned start.
    x1 = tl.minimum(x0 + BLOCK_W, WO) - 1
    u_lo = (tl.maximum(x0 - PW + LX, LX) // 8) * 8
    u_hi = tl.minimum(x1 - PW + KW + LX, W + LX)
    n_k = tl.cdiv(u_hi - u_lo, BLOCK_K)
    n_steps = tl.cdiv(i_hi - i_lo, I_BLOCK) * n_k

    nn = tl.arange(0, I_BLOCK * BLOCK_K)  # (N,) = (kernel row in block, stored column in chunk)
    ib = nn // BLOCK_K
    kk = nn % BLOCK_K
    x_plane = (img * C + c).to(tl.int64) * H * XS  # (BLOCK_R,)
    w_base = w_ptr + c * (KH * KW)
    acc = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.float32)
    for step in range(0, n_steps):
        ii = i_lo + (step // n_k) * I_BLOCK + ib  # (N,) kernel row
        us = u_lo + (step % n_k) * BLOCK_K + kk  # (N,) stored column
        i_ok = ii < i_hi
        yi = y[:, None] + ii[None, :] - PH  # (BLOCK_R, N) input row
        a_ok = row_ok[:, None] & (yi >= 0) & (yi < H) & (i_ok & (us < XS))[None, :]
        a = tl.load(x_ptr + x_plane[:, None] + yi * XS + us[None, :], mask=a_ok, other=0.0)  # (BLOCK_R, N)
        j = (us - LX + PW)[:, None] - cols[None, :]  # (N, BLOCK_W) kernel column of each pair
        t_ok = (j >= 0) & (j < KW) & i_ok[:, None]
        t = tl.load(w_base + ii[:, None] * KW + j, mask=t_ok, other=0.0).to(a.dtype)  # stacked T_i
        if DOT_FP32:
            a = a.to(tl.float32)
            t = t.to(tl.float32)
        acc = tl.dot(a, t, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c).to(tl.float32)

    y_plane = (img * C + c).to(tl.int64) * HO * WO
    y_ptrs = y_ptr + (y_plane + y * WO)[:, None] + cols[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < WO)[None, :])


@triton.jit(do_not_specialize=_NO_SPECIALIZE + ["LX8", "XS8", "LG8", "GS8", "N_WT_SLOTS"])
def _dw_conv_wgrad_kernel(
    x_ptr, g_ptr, part_ptr,
    B, C, H, W, HO, WO, PH, PW, LX8, XS8, LG8, GS8, N_WT_SLOTS,
    KH: tl.constexpr, KW: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, I_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Partial dW for one channel, I_BLOCK kernel rows, BLOCK_W output columns and one split of the rows.

    X and G are stored like the forward's input (aligned zero columns; G's
    image columns start at LG = 8·LG8, rows are GS = 8·GS8 long).
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    n_wt = tl.cdiv(WO, BLOCK_W)
    n_ib = tl.cdiv(KH, I_BLOCK)
    wt = pid % n_wt
    c = (pid // n_wt) // n_ib
    i0 = ((pid // n_wt) % n_ib) * I_BLOCK
    LX = LX8 * 8
    XS = XS8 * 8
    LG = LG8 * 8
    GS = GS8 * 8
    x0 = wt * BLOCK_W
    u_lo = (tl.maximum(x0 - PW + LX, LX) // 8) * 8  # first stored column of X the tile reaches

    xo = x0 + tl.arange(0, BLOCK_W)  # (BLOCK_W,) output columns
    ug = LG + xo  # their stored columns in G
    nn = tl.arange(0, I_BLOCK * BLOCK_N)  # (N,) = (kernel row in block, stored column of X)
    ib = nn // BLOCK_N
    ux = u_lo + nn % BLOCK_N
    n_ok = (ux < XS) & (i0 + ib < KH)

    n_rows = B * HO
    rows_per_split = tl.cdiv(tl.cdiv(n_rows, n_splits), BLOCK_R) * BLOCK_R
    r_start = split * rows_per_split
    r_end = tl.minimum(r_start + rows_per_split, n_rows)
    acc = tl.zeros((BLOCK_W, I_BLOCK * BLOCK_N), dtype=tl.float32)
    for r0 in range(r_start, r_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)  # (BLOCK_R,) stacked output rows
        row_ok = rows < r_end
        img = rows // HO
        y = rows - img * HO
        plane = (img * C + c).to(tl.int64)
        g = tl.load(
            g_ptr + (plane * HO * GS + y * GS)[:, None] + ug[None, :],
            mask=row_ok[:, None] & (ug < GS)[None, :], other=0.0,
        )  # (BLOCK_R, BLOCK_W)
        yi = y[:, None] + (i0 + ib)[None, :] - PH  # (BLOCK_R, N) input row for each kernel row
        x_ok = row_ok[:, None] & (yi >= 0) & (yi < H) & n_ok[None, :]
        xt = tl.load(x_ptr + (plane * H * XS)[:, None] + yi * XS + ux[None, :], mask=x_ok, other=0.0)  # (BLOCK_R, N)
        gt = tl.trans(g)
        if DOT_FP32:
            gt = gt.to(tl.float32)
            xt = xt.to(tl.float32)
        acc = tl.dot(gt, xt, acc, input_precision=PRECISION)  # (BLOCK_W, N)

    # dW[i, j] = Σ_x M_i[x, x + j − PW]: sum the diagonals.
    acc3 = tl.reshape(acc, (BLOCK_W, I_BLOCK, BLOCK_N))
    jj = (u_lo - LX + PW + tl.arange(0, BLOCK_N))[None, None, :] - xo[:, None, None]  # (BLOCK_W, 1, BLOCK_N)
    ii = i0 + tl.arange(0, I_BLOCK)
    out = part_ptr + ((split * N_WT_SLOTS + wt) * C + c).to(tl.int64) * (KH * KW) + ii * KW
    for j in range(0, KW):  # a loop, not unrolled: keeps the kernel (and its compile time) small
        v = tl.sum(tl.sum(tl.where(jj == j, acc3, 0.0), axis=2), axis=0)  # (I_BLOCK,)
        tl.store(out + j, v, mask=ii < KH)


@triton.jit(do_not_specialize=["C", "H", "W", "S", "LD"])
def _relayout_kernel(
    src_ptr, dst_ptr, C, H, W, S, LD,
    s_b, s_c, s_h, s_w, d_b, d_c, d_h, d_w,
    BLOCK_C: tl.constexpr, BLOCK_U: tl.constexpr,
):
    """dst[b, c, y, LD + u] = src[b, c, y, u] for u in [0, W), zeros elsewhere in [0, S); any strides, with a cast.

    One (BLOCK_C channels × BLOCK_U columns) tile of one image row: read
    along the source's contiguous axis and written along the destination's
    (the compiler moves the tile through shared memory when they differ,
    e.g. channels_last to NCHW), so both sides stay coalesced.
    """
    row = tl.program_id(0)  # b·H + y
    b = row // H
    y = row - b * H
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    up = tl.program_id(2) * BLOCK_U + tl.arange(0, BLOCK_U)  # (BLOCK_U,) destination column
    u = up - LD  # source column
    c_ok = (c < C)[:, None]
    src = src_ptr + b.to(tl.int64) * s_b + y * s_h + c[:, None] * s_c + u[None, :] * s_w
    v = tl.load(src, mask=c_ok & ((u >= 0) & (u < W))[None, :], other=0.0)  # (BLOCK_C, BLOCK_U)
    dst = dst_ptr + b.to(tl.int64) * d_b + y * d_h + c[:, None] * d_c + up[None, :] * d_w
    tl.store(dst, v.to(dst_ptr.dtype.element_ty), mask=c_ok & (up < S)[None, :])


# ----------------------------------------------------------------------------
# Autotuning
# ----------------------------------------------------------------------------
def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _pow2_at_least(n: int, low: int = 16) -> int:
    """The smallest power of two >= max(n, low) (plain Python: triton's helpers are slow to call from Python)."""
    return max(low, 1 << max(0, int(n) - 1).bit_length())


def _cfg(num_warps: int, num_stages: int, **kwargs) -> triton.Config:
    return triton.Config(kwargs, num_warps=num_warps, num_stages=num_stages)


# (BLOCK_R stacked output rows, BLOCK_W output columns, BLOCK_K stored columns and I_BLOCK
# kernel rows per product). Few on purpose: each is compiled per kernel size and dtype on
# first use. Measured on an H100 with I_BLOCK = 1 only: (64, 16, 32) won the 64×62 maps,
# (128, 32, 32) the 32×31 ones and its clamp (128, 16, 16) the smaller ones.
_FWD_CONFIGS = [
    _cfg(4, 3, BLOCK_R=64, BLOCK_W=16, BLOCK_K=32, I_BLOCK=1),
    _cfg(8, 3, BLOCK_R=128, BLOCK_W=32, BLOCK_K=32, I_BLOCK=1),
    _cfg(4, 2, BLOCK_R=64, BLOCK_W=16, BLOCK_K=64, I_BLOCK=4),
    _cfg(4, 2, BLOCK_R=64, BLOCK_W=32, BLOCK_K=64, I_BLOCK=4),
    _cfg(8, 2, BLOCK_R=128, BLOCK_W=32, BLOCK_K=64, I_BLOCK=2),
    _cfg(8, 2, BLOCK_R=128, BLOCK_W=16, BLOCK_K=32, I_BLOCK=4),
]
# (BLOCK_R rows reduced per product, BLOCK_W output columns, I_BLOCK kernel rows)
_WGRAD_CONFIGS = [
    _cfg(4, 3, BLOCK_R=64, BLOCK_W=32, I_BLOCK=4),
    _cfg(8, 3, BLOCK_R=128, BLOCK_W=32, I_BLOCK=2),
    _cfg(8, 3, BLOCK_R=64, BLOCK_W=64, I_BLOCK=2),
    _cfg(4, 3, BLOCK_R=64, BLOCK_W=16, I_BLOCK=4),
]
def _dedupe(configs: List[triton.Config]) -> List[triton.Config]:
    seen, out = set(), []
    for cfg in configs:
        key = (tuple(sorted(cfg.kwargs.items())), cfg.num_warps, cfg.num_stages)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def _clamp_fwd(cfg: triton.Config, named_args) -> triton.Config:
    """Tiles no larger than the shape needs: output columns, stored columns one tile reaches, kernel rows."""
    wo, w, kw = named_args["WO"], named_args["W"], named_args["KW"]
    bw = min(cfg.kwargs["BLOCK_W"], _pow2_at_least(wo))
    bk = min(cfg.kwargs["BLOCK_K"], _pow2_at_least(min(bw + kw + 6, w)))
    ib = min(cfg.kwargs["I_BLOCK"], _pow2_at_least(named_args["KH"], 1))
    return _cfg(cfg.num_warps, cfg.num_stages, BLOCK_R=cfg.kwargs["BLOCK_R"], BLOCK_W=bw, BLOCK_K=bk, I_BLOCK=ib)


def _clamp_wgrad(cfg: triton.Config, named_args) -> triton.Config:
    kw_ = dict(cfg.kwargs)
    kw_["BLOCK_W"] = min(kw_["BLOCK_W"], _pow2_at_least(named_args["WO"]))
    kw_["I_BLOCK"] = min(kw_["I_BLOCK"], _pow2_at_least(named_args["KH"], 1))
    return _cfg(cfg.num_warps, cfg.num_stages, **kw_)


def tile_candidates(kind: str, named_args) -> List[triton.Config]:
    """The tile configs the autotuner tries for ``kind`` ("fwd" or "wgrad") on a shape.

    ``named_args`` needs WO, W, KW, KH (the kernel's arguments of those names).
    The tests compile each of them for sm_90 without a GPU (tests/triton_compile.py).
    """
    if kind == "fwd":
        return _dedupe([_clamp_fwd(cfg, named_args) for cfg in _FWD_CONFIGS])
    if kind == "wgrad":
        return _dedupe([_clamp_wgrad(cfg, named_args) for cfg in _WGRAD_CONFIGS])
    raise ValueError(f"unknown kernel kind {kind!r}; expected 'fwd' or 'wgrad'")


def _prune_fwd(configs, named_args, **kwargs):
    # The interpreter runs every candidate alike: tuning there only costs time.
    out = tile_candidates("fwd", named_args)
    return out[:1] if INTERPRET else out


def _prune_wgrad(configs, named_args, **kwargs):
    out = tile_candidates("wgrad", named_args)
    return out[:1] if INTERPRET else out


def band_block(args) -> int:
    """Stored columns one weight-gradient tile needs: BLOCK_W + KW − 1 from an aligned start, or the whole row."""
    return _pow2_at_least(min(args["BLOCK_W"] + args["KW"] + 6, args["W"]))


def _autotune(configs, key, prune, reset_to_zero=None):
    kwargs = dict(configs=configs, key=key, prune_configs_by={"early_config_prune": prune}, reset_to_zero=reset_to_zero)
    params = inspect.signature(triton.autotune).parameters
    if "do_bench" in params:  # short timings: tuning happens inside the first training steps
        def do_bench(fn, quantiles):
            return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)
        kwargs["do_bench"] = do_bench
    return triton.autotune(**kwargs)


_TUNE_KEY = ["B", "C", "H", "W", "HO", "WO", "KH", "KW"]
_dw_conv_fwd_tuned = _autotune(_FWD_CONFIGS, _TUNE_KEY, _prune_fwd)(_dw_conv_kernel)
_dw_conv_wgrad_tuned = _autotune(_WGRAD_CONFIGS, _TUNE_KEY, _prune_wgrad, reset_to_zero=["part_ptr"])(
    triton.heuristics({"BLOCK_N": band_block})(_dw_conv_wgrad_kernel)
)


class _Launcher:
    """Launches a kernel with its pinned tile config, else the one recorded for the shape, else autotunes and records.

    The autotuner and heuristics wrappers cost tens of microseconds of Python
    per launch (three launches per layer and step add up in a whole model), so
    a known config goes to the kernel straight away. The record lives in
    ``ops.config``: a resumed run loads it and launches the first run's tiles.
    """

    def __init__(self, kind: str, tuned):
        self.kind = kind  # "fwd" or "wgrad", the switchboard's name for the kernel
        self.tuned = tuned
        self.direct = tuned.fn  # the heuristics wrapper or the kernel itself

    def __call__(self, key: tuple, grid, *args) -> None:
        meta = config.forced_tiles(self.kind) or config.routes().tiles(self.kind, key)
        if meta is not None:
            self.direct[grid](*args, **meta)
            return
        self.tuned[grid](*args)
        best = getattr(self.tuned, "best_config", None)
        if best is not None and hasattr(best, "all_kwargs"):
            config.routes().record_tiles(self.kind, key, best.all_kwargs())


_launch_fwd = _Launcher("fwd", _dw_conv_fwd_tuned)
_launch_wgrad = _Launcher("wgrad", _dw_conv_wgrad_tuned)


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------
def _round8(n: int) -> int:
    return (int(n) + 7) // 8 * 8


class Padded(NamedTuple):
    """An NCHW tensor stored with aligned zero columns, the layout the kernels read.

    ``data`` is (B, C, H, S) with S a multiple of 8; the image occupies
    columns [left, left + width) (left a multiple of 8), zeros elsewhere.
    """

    data: Tensor
    left: int
    width: int

    def image(self) -> Tensor:
        return self.data[..., self.left:self.left + self.width]


def relayout(src: Tensor, dst: Tensor, left: int = 0) -> Tensor:
    """Copy ``src`` (B, C, H, W) into columns [left, left + W) of ``dst`` (B, C, H, S), zeros in the others.

    Any layouts and float dtypes on either side, in one pass (a torch copy
    across layouts reads or writes with a stride of C elements).
    """
    b, c, h, w = src.shape
    width = dst.shape[-1]

    def stock():
        dst.zero_()
        dst[..., left:left + w].copy_(src)
        return dst

    if not (src.is_cuda or INTERPRET) or src.numel() == 0:
        return stock()
    block_c = 32 if src.stride(1) == 1 or dst.stride(1) == 1 else 8
    grid = (b * h, _cdiv(c, block_c), _cdiv(width, 64))

    def triton_call():
        _relayout_kernel[grid](src, dst, c, h, w, width, left, *src.stride(), *dst.stride(), BLOCK_C=block_c, BLOCK_U=64)
        return dst

    return config.guarded("relayout", (src.dtype, dst.dtype, src.stride(1) == 1, dst.stride(1) == 1), triton_call, stock)


def pad_columns(t: Tensor, pad_left: int, dtype: torch.dtype) -> Padded:
    """One copy of ``t`` (any layout) into the kernels' layout, cast to ``dtype``."""
    b, c, h, w = t.shape
    left = _round8(pad_left)
    data = torch.empty((b, c, h, _round8(left + w)), dtype=dtype, device=t.device)
    return Padded(relayout(t, data, left), left, w)


def _in_format(t: Tensor, channels_last: bool, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` and in NCHW or channels_last memory, copied only when needed."""
    if t.dtype == dtype and _is_channels_last(t) == channels_last and (channels_last or t.is_contiguous()):
        return t
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return relayout(t, torch.empty(t.shape, dtype=dtype, device=t.device, memory_format=fmt))


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "tf32x3"
    return "tf32"  # ignored by tl.dot for 16-bit inputs


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_sms(x: Tensor) -> int:
    return _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device()) if x.is_cuda else 4


def conv_forward_padded(xp: Padded, weight: Tensor, bias: Optional[Tensor], ph: int, pw: int) -> Tensor:
    """``conv_forward`` on an input already in the kernels' layout (``pad_columns(x, pw, dtype)``)."""
    x = xp.data
    b, c, h, _ = x.shape
    w = xp.width
    kh, kw = weight.shape[-2:]
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    y = torch.empty((b, c, ho, wo), dtype=x.dtype, device=x.device)
    # One kernel signature per compute dtype whatever the parameters' dtypes: the
    # (tiny) weight and the bias in fp32; the kernel rounds the weight to the
    # compute dtype as autocast would, and adds the bias to the fp32 sums.
    weight = weight.float().contiguous()
    has_bias = bias is not None
    bias_arg = bias.float().contiguous() if has_bias else weight  # never read without a bias

    def grid(meta):
        return (_cdiv(b * ho, meta["BLOCK_R"]), _cdiv(wo, meta["BLOCK_W"]), c)

    _launch_fwd(
        (b, c, h, w, ho, wo, kh, kw, x.dtype), grid,
        x, weight, bias_arg, y, b, c, h, w, ho, wo, ph, pw, xp.left // 8, x.shape[-1] // 8, int(has_bias),
        kh, kw, _precision(x.dtype), INTERPRET,  # KH, KW, PRECISION, DOT_FP32
    )
    return y


def conv_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], ph: int, pw: int) -> Tensor:
    """Stride-1 depthwise correlation of ``x`` (B, C, H, W) with ``weight`` (C, 1, KH, KW); NCHW result."""
    return conv_forward_padded(pad_columns(x, pw, x.dtype), weight, bias, ph, pw)


def _weight_grad_splits(x: Tensor, kh: int, wo: int, n_rows: int) -> int:
    """Splits of the stacked rows so that the grid fills the GPU (each split keeps >= 256 rows)."""
    c = x.shape[1]
    nominal = c * _cdiv(kh, 4) * _cdiv(wo, 32)
    wanted = _cdiv(4 * _num_sms(x), nominal)
    return max(1, min(wanted, n_rows // 256 if x.is_cuda else _cdiv(n_rows, 16)))


def weight_grad_padded(xp: Padded, gp: Padded, kernel_size: Tuple[int, int], ph: int, pw: int) -> Tensor:
    """``weight_grad_triton`` on ``x`` and ``grad_out`` already in the kernels' layout."""
    x, g = xp.data, gp.data
    b, c, h, _ = x.shape
    w, wo = xp.width, gp.width
    ho = g.shape[2]
    kh, kw = kernel_size
    splits = _weight_grad_splits(x, kh, wo, b * ho)
    n_wt_slots = _cdiv(wo, 16)  # the narrowest tile: any config fits its column tiles here
    part = torch.zeros((splits, n_wt_slots, c, kh, kw), dtype=torch.float32, device=x.device)

    def grid(meta):
        return (c * _cdiv(kh, meta["I_BLOCK"]) * _cdiv(wo, meta["BLOCK_W"]), splits)

    _launch_wgrad(
        (b, c, h, w, ho, wo, kh, kw, x.dtype), grid,
        x, g, part, b, c, h, w, ho, wo, ph, pw,
        xp.left // 8, x.shape[-1] // 8, gp.left // 8, g.shape[-1] // 8, n_wt_slots,
        kh, kw, _precision(x.dtype), INTERPRET,  # KH, KW, PRECISION, DOT_FP32
    )
    return part.sum((0, 1)).unsqueeze(1)


def weight_grad_triton(x: Tensor, grad_out: Tensor, kernel_size: Tuple[int, int], ph: int, pw: int) -> Tensor:
    """dW (C, 1, KH, KW) in fp32 of the stride-1 depthwise convolution, from ``x`` and ``grad_out`` of one dtype."""
    kw = kernel_size[1]
    return weight_grad_padded(pad_columns(x, pw, x.dtype), pad_columns(grad_out, kw - 1 - pw, x.dtype), kernel_size, ph, pw)


def weight_grad_fft_fp32(x: Tensor, grad_out: Tensor, kernel_size: Tuple[int, int], ph: int, pw: int) -> Tensor:
    """The FFT route in fp32 (cuFFT has no bf16 transforms for these sizes), autocast off."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return weight_grad_fft(x.float(), grad_out.float(), kernel_size, (ph, pw))


# ----------------------------------------------------------------------------
# The weight-gradient route
# ----------------------------------------------------------------------------
def _time_ms(fn, reps: int = 3) -> float:
    fn()  # warm (and autotune)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def _wgrad_route(key: tuple, is_cuda: bool, triton_call, fft_call) -> str:
    """The setting, else the route recorded for ``key``, else (CUDA, outside graph capture) the faster one, recorded.

    A recorded route wins on any device: that is how a resumed run (or a test
    on the CPU) replays a choice made by timing on a GPU.
    """
    route = config.wgrad_route()
    if route != "auto":
        return route
    table = config.routes()
    route = table.wgrad(key)
    if route is not None:
        return route
    if not is_cuda or torch.cuda.is_current_stream_capturing():
        return "triton"  # nothing to time against on the CPU; no timing inside a CUDA graph
    t_triton = _time_ms(triton_call)
    t_fft = _time_ms(fft_call)
    route = "fft" if t_fft < t_triton else "triton"
    table.record_wgrad(key, route, t_triton, t_fft)
    log.info("depthwise weight gradient %s: triton %.3f ms, fft %.3f ms -> %s", key, t_triton, t_fft, route)
    return route


def _weight_grad(xp: Padded, gp: Padded, kernel_size: Tuple[int, int], ph: int, pw: int) -> Tensor:
    """dW in fp32 by the route chosen for this shape (Triton or FFT)."""
    b, c, h = xp.data.shape[:3]
    # The weight-gradient kernel's own launch key: route and tiles of a shape are recorded under one name.
    key = (b, c, h, xp.width, gp.data.shape[2], gp.width, *kernel_size, xp.data.dtype)

    def fft_call():
        return weight_grad_fft_fp32(xp.image(), gp.image(), kernel_size, ph, pw)

    def triton_call():
        return config.guarded("wgrad", key, lambda: weight_grad_padded(xp, gp, kernel_size, ph, pw), fft_call)

    route = _wgrad_route(key, xp.data.is_cuda, triton_call, fft_call)
    config.routes().count(f"wgrad_{route}")
    return fft_call() if route == "fft" else triton_call()


# ----------------------------------------------------------------------------
# Autograd and the public entry points
# ----------------------------------------------------------------------------
def _stock_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], ph: int, pw: int) -> Tensor:
    return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), 1, (ph, pw), 1, x.shape[1])


class DepthwiseConv2dTriton(torch.autograd.Function):
    """Stride-1 depthwise convolution computed in ``dtype``; ``x`` may be of any layout, ``weight`` of a wider dtype.

    The result is in ``dtype`` and in ``x``'s memory format; the input
    gradient comes back in ``x``'s dtype and memory format, the weight and
    bias gradients in theirs.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], ph: int, pw: int, dtype: torch.dtype) -> Tensor:
        xp = pad_columns(x, pw, dtype)  # (B, C, H, S): cast, NCHW and padded in one pass
        ctx.save_for_backward(xp.data, weight)
        ctx.stored = (xp.left, xp.width)
        ctx.padding = (ph, pw)
        ctx.x_dtype = x.dtype
        ctx.x_channels_last = _is_channels_last(x)
        ctx.bias_dtype = None if bias is None else bias.dtype
        key = (tuple(x.shape), tuple(weight.shape[-2:]), ph, pw, dtype)
        y = config.guarded("fwd", key, lambda: conv_forward_padded(xp, weight, bias, ph, pw),
                     lambda: _stock_conv(xp.image(), weight, bias, ph, pw))  # (B, C, HO, WO) NCHW
        return _in_format(y, ctx.x_channels_last, dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x_data, weight = ctx.saved_tensors
        xp = Padded(x_data, *ctx.stored)
        ph, pw = ctx.padding
        kh, kw = weight.shape[-2:]
        qh, qw = kh - 1 - ph, kw - 1 - pw  # padding of the transposed convolution
        gp = pad_columns(grad_out, qw, x_data.dtype)  # (B, C, HO, S')
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip((-2, -1)).contiguous()
            key = (tuple(grad_out.shape), (kh, kw), qh, qw, x_data.dtype)
            grad_x = config.guarded("dgrad", key, lambda: conv_forward_padded(gp, flipped, None, qh, qw),
                              lambda: _stock_conv(gp.image(), flipped, None, qh, qw))  # (B, C, H, W) NCHW
            grad_x = _in_format(grad_x, ctx.x_channels_last, ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(xp, gp, (kh, kw), ph, pw).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3), dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None


@functools.lru_cache(maxsize=None)
def _capability_ok(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 0)  # bf16/tf32 tensor-core products


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype ``F.conv2d`` would compute in: the autocast dtype when autocast applies to ``x``."""
    device_type = x.device.type
    if x.dtype in _COMPUTE_DTYPES and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def triton_path_applies(x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> bool:
    """Whether ``depthwise_conv2d_triton`` computes ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``."""
    if not x.is_cuda or weight.device != x.device or not is_stride1_depthwise(x, weight, stride, padding, dilation, groups):
        return False
    kh, kw = weight.shape[-2:]
    if not (1 <= kh <= MAX_KERNEL_SIZE and 1 <= kw <= MAX_KERNEL_SIZE) or kh * kw == 1:
        return False
    ph, pw = padding
    if x.shape[0] == 0 or x.shape[2] + 2 * ph < kh or x.shape[3] + 2 * pw < kw:
        return False
    if _compute_dtype(x) not in _COMPUTE_DTYPES or not weight.is_floating_point():
        return False
    autocast = x.dtype in _COMPUTE_DTYPES and torch.is_autocast_enabled("cuda")
    if not autocast and weight.dtype != x.dtype:
        return False  # F.conv2d raises on mixed dtypes outside autocast; let it
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return _capability_ok(index)


def _is_channels_last(x: Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def depthwise_conv2d_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, padding=(0, 0)) -> Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, 1, groups=C)`` through the Triton kernels (autograd-capable).

    ``weight`` is (C, 1, KH, KW); under autocast the computation runs in the
    autocast dtype. The output keeps ``x``'s memory format (NCHW or
    channels_last).
    """
    if not (x.is_cuda or INTERPRET):
        raise ValueError("depthwise_conv2d_triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
    ph, pw = (padding, padding) if isinstance(padding, int) else (int(padding[0]), int(padding[1]))
    return DepthwiseConv2dTriton.apply(x, weight, bias, ph, pw, _compute_dtype(x))  # (B, C, HO, WO)


__all__ = [
    "DepthwiseConv2dTriton",
    "Padded",
    "band_block",
    "conv_forward",
    "conv_forward_padded",
    "depthwise_conv2d_triton",
    "pad_columns",
    "relayout",
    "tile_candidates",
    "triton_path_applies",
    "weight_grad_fft_fp32",
    "weight_grad_padded",
    "weight_grad_triton",
]
