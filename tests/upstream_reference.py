"""The upstream models' forward passes, written out by hand on their own state-dict keys.

The oracle for the importer: each function computes what DCLS-Audio's model
code computes (ConvNeXt as in facebookresearch/ConvNeXt, ConvFormer as in
sail-sg/metaformer, FastViT as in apple/ml-fastvit, each with the audio stem
and ``Dcls2d`` layers), in eval mode, from the *upstream* keys — never from our
model or its key names. The DCLS kernels are built by the reference package
``dcls`` (``DCLS.construct.modules.ConstructKernel2d``) in the block tests; the
whole-model passes use ``gauss_kernel`` below, the same formula written out
separably (the reference builds a (23, 23, 2, C, 1, 26) tensor per layer,
seconds per layer; ``test_gauss_kernel_is_the_reference_packages`` checks the two agree).

Facts of the upstream definitions these follow (read from DCLS-Audio's models/):
ConvNeXt LayerNorms eps 1e-6 (channels-first in stem/downsampling); ConvFormer
norms without bias eps 1e-6, StarReLU, res_scale on stages 2-3, final
LayerNorm eps 1e-6, MLP head fc1 -> SquaredReLU -> LayerNorm (eps 1e-5) -> fc2;
FastViT BatchNorm eps 1e-5, MobileOne branches summed (skip BN + conv-BN +
1x1 scale conv-BN), GELU except in RepMixer (no act) and in the large-kernel
patch-embedding conv (its activation call is commented out upstream),
squeeze-excite before the activation in conv_exp, RepCPE ``x + pe(x)``,
attention with head_dim 32 and ``(q * scale) @ k^T``.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from DCLS.construct.modules import ConstructKernel2d

Sd = Dict[str, torch.Tensor]
STEM = (2, 16)
DCLS_SIZE = 23


def reference_kernel(w: torch.Tensor, p: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
    """The dense kernel of a depthwise Gauss DCLS layer, built by the reference package."""
    c, _, taps = w.shape
    return ConstructKernel2d(c, c, c, taps, (DCLS_SIZE, DCLS_SIZE), "gauss")(w, p, sig)


def gauss_kernel(w: torch.Tensor, p: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
    """Same numbers: tap k is exp(-((y-p1)/s1)^2/2 - ((x-p0)/s0)^2/2) over the 23x23 grid,
    normalised to unit sum (+1e-7), weighted by w_k; s = |SIG| + 0.27; P[0] moves along x (time)."""
    grid = torch.arange(DCLS_SIZE, dtype=w.dtype)
    centre = DCLS_SIZE // 2
    gx = torch.exp(-0.5 * ((grid - (p[0, :, 0, :, None] + centre)) / (sig[0, :, 0, :, None].abs() + 0.27)) ** 2)  # (C, K, D)
    gy = torch.exp(-0.5 * ((grid - (p[1, :, 0, :, None] + centre)) / (sig[1, :, 0, :, None].abs() + 0.27)) ** 2)
    norm = gx.sum(-1) * gy.sum(-1) + 1e-7  # (C, K)
    return torch.einsum("ck,cky,ckx->cyx", w[:, 0] / norm, gy, gx).unsqueeze(1)  # (C, 1, D, D)


def depthwise_kernel(sd: Sd, prefix: str, build=gauss_kernel) -> torch.Tensor:
    """The dense depthwise kernel of ``prefix``: a 7x7 conv weight, or a DCLS layer's built kernel."""
    w = sd[prefix + "weight"]
    if w.dim() == 4:
        return w
    return build(w, sd[prefix + "P"], sd[prefix + "SIG"])


def depthwise(x: torch.Tensor, sd: Sd, prefix: str, build=gauss_kernel) -> torch.Tensor:
    k = depthwise_kernel(sd, prefix, build)
    return F.conv2d(x, k, sd.get(prefix + "bias"), padding=k.shape[-1] // 2, groups=x.shape[1])


# --- ConvNeXt (facebookresearch/ConvNeXt, DCLS-Audio models/convnext.py) -------------------
def _ln_channels_first(x, w, b, eps=1e-6):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    return w[:, None, None] * x + b[:, None, None]


def convnext_block(x: torch.Tensor, sd: Sd, p: str, build=gauss_kernel) -> torch.Tensor:
    """dwconv -> permute -> LayerNorm -> Linear -> GELU -> Linear -> gamma -> permute, plus the input."""
    y = depthwise(x, sd, p + "dwconv.", build)
    y = y.permute(0, 2, 3, 1)  # (B, H, W, C)
    y = F.layer_norm(y, (y.shape[-1],), sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)
    y = F.linear(y, sd[p + "pwconv1.weight"], sd[p + "pwconv1.bias"])
    y = F.gelu(y)
    y = F.linear(y, sd[p + "pwconv2.weight"], sd[p + "pwconv2.bias"])
    y = sd[p + "gamma"] * y
    return x + y.permute(0, 3, 1, 2)


def convnext_forward(sd: Sd, x: torch.Tensor, depths=(3, 3, 9, 3)) -> torch.Tensor:
    for i, depth in enumerate(depths):
        d = f"downsample_layers.{i}."
        if i == 0:
            x = F.conv2d(x, sd[d + "0.weight"], sd[d + "0.bias"], stride=STEM)
            x = _ln_channels_first(x, sd[d + "1.weight"], sd[d + "1.bias"])
        else:
            x = _ln_channels_first(x, sd[d + "0.weight"], sd[d + "0.bias"])
            x = F.conv2d(x, sd[d + "1.weight"], sd[d + "1.bias"], stride=2)
        for j in range(depth):
            x = convnext_block(x, sd, f"stages.{i}.{j}.")
    x = x.mean([-2, -1])
    x = F.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"], 1e-6)
    return F.linear(x, sd["head.weight"], sd["head.bias"])


# --- ConvFormer (sail-sg/metaformer, DCLS-Audio models/metaformer.py); channels last ---------
def _star_relu(x, sd, p):
    return sd[p + "scale"] * F.relu(x) ** 2 + sd[p + "bias"]


def convformer_block(x: torch.Tensor, sd: Sd, p: str) -> torch.Tensor:
    """(B, H, W, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    res1 = sd.get(p + "res_scale1.scale")
    res2 = sd.get(p + "res_scale2.scale")
    y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], None, 1e-6)
    t = p + "token_mixer."
    y = F.linear(y, sd[t + "pwconv1.weight"])
    y = _star_relu(y, sd, t + "act1.")
    y = depthwise(y.permute(0, 3, 1, 2), sd, t + "dwconv.").permute(0, 2, 3, 1)
    y = F.linear(y, sd[t + "pwconv2.weight"])
    x = (x * res1 if res1 is not None else x) + y
    y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], None, 1e-6)
    y = F.linear(y, sd[p + "mlp.fc1.weight"])
    y = _star_relu(y, sd, p + "mlp.act.")
    y = F.linear(y, sd[p + "mlp.fc2.weight"])
    return (x * res2 if res2 is not None else x) + y


def convformer_head(sd: Sd, x: torch.Tensor) -> torch.Tensor:
    """MlpHead on pooled, normalised features (B, C)."""
    y = F.linear(x, sd["head.fc1.weight"], sd["head.fc1.bias"])
    y = F.relu(y) ** 2
    y = F.layer_norm(y, (y.shape[-1],), sd["head.norm.weight"], sd["head.norm.bias"], 1e-5)
    return F.linear(y, sd["head.fc2.weight"], sd["head.fc2.bias"])


def convformer_forward(sd: Sd, x: torch.Tensor, depths=(3, 3, 9, 3)) -> torch.Tensor:
    for i, depth in enumerate(depths):
        d = f"downsample_layers.{i}."
        if i == 0:
            x = F.conv2d(x, sd[d + "conv.weight"], sd.get(d + "conv.bias"), stride=STEM).permute(0, 2, 3, 1)
            x = F.layer_norm(x, (x.shape[-1],), sd[d + "post_norm.weight"], None, 1e-6)
        else:
            x = F.layer_norm(x, (x.shape[-1],), sd[d + "pre_norm.weight"], None, 1e-6).permute(0, 3, 1, 2)
            x = F.conv2d(x, sd[d + "conv.weight"], sd[d + "conv.bias"], stride=2, padding=1).permute(0, 2, 3, 1)
        for j in range(depth):
            x = convformer_block(x, sd, f"stages.{i}.{j}.")
    x = x.mean([1, 2])
    x = F.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"], 1e-6)
    return convformer_head(sd, x)


# --- FastViT (apple/ml-fastvit, DCLS-Audio models/fastvit.py); channels first ---------------
def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"], False, 0.0, 1e-5)


def _conv_bn(x, sd, p, stride, padding, groups):
    return _bn(F.conv2d(x, sd[p + "conv.weight"], None, stride, padding, groups=groups), sd, p + "bn.")


def _squeeze_excite(x, sd, p):
    s = F.avg_pool2d(x, kernel_size=x.shape[-2:])
    s = F.relu(F.conv2d(s, sd[p + "reduce.weight"], sd[p + "reduce.bias"]))
    s = torch.sigmoid(F.conv2d(s, sd[p + "expand.weight"], sd[p + "expand.bias"]))
    return x * s


def mobileone(x, sd, p, stride=1, padding=0, groups=1, act=True, se=False):
    """Skip BN + every conv-BN branch + the 1x1 scale conv-BN, then SE and GELU."""
    out = 0
    if p + "rbr_skip.weight" in sd:
        out = out + _bn(x, sd, p + "rbr_skip.")
    if p + "rbr_scale.conv.weight" in sd:
        out = out + _conv_bn(x, sd, p + "rbr_scale.", stride, 0, groups)
    i = 0
    while p + f"rbr_conv.{i}.conv.weight" in sd:
        out = out + _conv_bn(x, sd, p + f"rbr_conv.{i}.", stride, padding, groups)
        i += 1
    if se:
        out = _squeeze_excite(out, sd, p + "se.")
    return F.gelu(out) if act else out


def _conv_ffn(x, sd, p, build=gauss_kernel):
    y = _bn(depthwise(x, sd, p + "conv.conv.", build), sd, p + "conv.bn.")
    y = F.gelu(F.conv2d(y, sd[p + "fc1.weight"], sd[p + "fc1.bias"]))
    return F.conv2d(y, sd[p + "fc2.weight"], sd[p + "fc2.bias"])


def repmixer_block(x: torch.Tensor, sd: Sd, p: str, build=gauss_kernel) -> torch.Tensor:
    c = x.shape[1]
    t = p + "token_mixer."
    mixed = mobileone(x, sd, t + "mixer.", 1, 1, c, act=False)
    normed = mobileone(x, sd, t + "norm.", 1, 1, c, act=False)
    x = x + sd[t + "layer_scale"] * (mixed - normed)
    return x + sd[p + "layer_scale"] * _conv_ffn(x, sd, p + "convffn.", build)


def _mhsa(x, sd, p, head_dim=32):
    b, c, h, w = x.shape
    n, heads = h * w, c // head_dim
    t = torch.flatten(x, 2).transpose(-2, -1)  # (B, N, C)
    qkv = F.linear(t, sd[p + "qkv.weight"]).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = ((q * head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    t = (attn @ v).transpose(1, 2).reshape(b, n, c)
    t = F.linear(t, sd[p + "proj.weight"], sd[p + "proj.bias"])
    return t.transpose(-2, -1).reshape(b, c, h, w)


def attention_block(x: torch.Tensor, sd: Sd, p: str) -> torch.Tensor:
    x = x + sd[p + "layer_scale_1"] * _mhsa(_bn(x, sd, p + "norm."), sd, p + "token_mixer.")
    return x + sd[p + "layer_scale_2"] * _conv_ffn(x, sd, p + "convffn.")


def _patch_embed(x, sd, p):
    c = x.shape[1]
    y = _conv_bn(x, sd, p + "0.lkb_origin.", 2, 3, c) + _conv_bn(x, sd, p + "0.small_conv.", 2, 1, c)  # no act
    return mobileone(y, sd, p + "1.")


def fastvit_forward(sd: Sd, x: torch.Tensor, layers=(4, 4, 12, 4), attention_from: int = 3) -> torch.Tensor:
    x = F.conv2d(x, sd["patch_embed.weight"], None, stride=STEM)
    net = 0
    for i, depth in enumerate(layers):
        if i > 0:
            x = _patch_embed(x, sd, f"network.{net}.proj.")
            net += 1
        if f"network.{net}.pe.weight" in sd:
            x = x + depthwise(x, sd, f"network.{net}.pe.")
            net += 1
        block = attention_block if i >= attention_from else repmixer_block
        for j in range(depth):
            x = block(x, sd, f"network.{net}.{j}.")
        net += 1
    x = mobileone(x, sd, "conv_exp.", 1, 1, groups=x.shape[1], se=True)
    x = x.mean([-2, -1])
    return F.linear(x, sd["head.weight"], sd["head.bias"])
