"""Turning timm's image backbones into the paper's audio models.

Three edits are shared by every family:

* the stem becomes one non-overlapping ``(2, 16)`` patch convolution, so a
  1×128×1001 log-mel spectrogram enters the first stage as a 64×62 map;
* each depthwise 7×7 convolution named by the family becomes a DCLS-Gauss
  layer (26 taps on a 23×23 grid by default), built in its place;
* the DCLS layers of one stage share one positions/Σ parameter.

Modules are replaced through ``get_submodule``/``setattr`` on their parent,
and every new weight is initialised the way timm initialises the convs of
these models (truncated normal, std 0.02, zero bias).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from timm.layers import trunc_normal_

from audio_dcls.layers import Dcls2d, share_positions, share_kernel_build

# (frequency, time) extent and stride of the patch stem: 128×1001 -> 64×62.
AUDIO_STEM_PATCH: Tuple[int, int] = (2, 16)


@dataclass(frozen=True)
class DclsSpec:
    """How a depthwise conv is rebuilt as DCLS."""

    kernel_count: int = 26  # learnable taps per channel (the paper's setting)
    dilated_kernel_size: int = 23  # side of the square grid the taps move on
    version: str = "gauss"  # tap interpolation: 'gauss', 'bilinear' or 'triangle'
    init_std: float = 0.02  # std of the truncated-normal tap weight init


@torch.no_grad()
def init_conv_trunc_normal_(module: nn.Module, std: float = 0.02) -> None:
    """timm's conv init for these families: trunc-normal weights, zero bias."""
    trunc_normal_(module.weight, std=std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule ``name`` is; returns the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def audio_stem_conv(in_chans: int, out_chans: int, bias: bool, like: Optional[nn.Module] = None) -> nn.Conv2d:
    """The shared patch stem ``Conv2d(in_chans, C0, (2, 16), stride (2, 16))``.

    ``like`` (an existing module) supplies the device and dtype.
    """
    factory = {}
    if like is not None:
        ref = next(iter(like.parameters()), None)
        if ref is not None:
            factory = {"device": ref.device, "dtype": ref.dtype}
    conv = nn.Conv2d(in_chans, out_chans, AUDIO_STEM_PATCH, stride=AUDIO_STEM_PATCH, bias=bias, **factory)
    init_conv_trunc_normal_(conv)
    return conv


def dcls_from_depthwise(conv: nn.Conv2d, spec: DclsSpec) -> Dcls2d:
    """A DCLS layer taking the place of a depthwise stride-1 convolution."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d to replace, got {type(conv).__name__}")
    c = conv.in_channels
    if not (conv.groups == c == conv.out_channels) or tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1):
        raise ValueError(
            f"only depthwise stride-1 convs are swapped for DCLS; got {c}->{conv.out_channels}, "
            f"groups={conv.groups}, stride={tuple(conv.stride)}, dilation={tuple(conv.dilation)}"
        )
    layer = Dcls2d(
        c,
        c,
        kernel_count=spec.kernel_count,
        dilated_kernel_size=spec.dilated_kernel_size,
        padding=spec.dilated_kernel_size // 2,  # 'same' output size
        groups=c,
        bias=conv.bias is not None,
        version=spec.version,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    init_conv_trunc_normal_(layer, spec.init_std)  # positions/Σ keep the DCLS init
    return layer


def swap_stages_to_dcls(model: nn.Module, stage_names: Sequence[Sequence[str]], spec: DclsSpec) -> List[List[Dcls2d]]:
    """Swap the named depthwise convs of each stage and tie each stage's positions.

    ``stage_names[i]`` lists the submodule names of stage ``i``; all its DCLS
    layers end up holding one P and one Σ parameter. Returns the layers per stage.
    """
    stages = []
    for names in stage_names:
        layers = []
        for name in names:
            layer = dcls_from_depthwise(model.get_submodule(name), spec)
            replace_module(model, name, layer)
            layers.append(layer)
        share_positions(layers)
        if layers:
            # Built together once per forward of the stage's innermost common container (a
            # one-layer stage: the layer's parent), which runs every layer of the group.
            parts = os.path.commonprefix([n.split(".") for n in names])
            parent = ".".join(parts[:-1] if len(names) == 1 else parts)
            share_kernel_build(model.get_submodule(parent) if parent else model, layers)
        stages.append(layers)
    return stages


def dcls_stage_layers(model: nn.Module) -> List[List[Dcls2d]]:
    """The DCLS layers of ``model`` grouped by the P parameter they share, in model order."""
    groups = {}
    for module in model.modules():
        if isinstance(module, Dcls2d):
            groups.setdefault(id(module.P), []).append(module)
    return list(groups.values())


def rescale_feature_info(model: nn.Module, old_stem_stride: int) -> None:
    """Re-state ``feature_info`` reductions for the (2, 16) stem.

    timm records one integer per stage; we keep the time-axis reduction (the
    frequency axis is reduced 8× less).
    """
    for info in getattr(model, "feature_info", []):
        info["reduction"] = info["reduction"] // old_stem_stride * AUDIO_STEM_PATCH[1]
