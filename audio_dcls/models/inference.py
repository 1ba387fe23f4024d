"""The inference form of a trained audio model.

Training-time structure that costs time but adds nothing once the weights are
fixed is removed:

* every DCLS layer becomes a plain convolution holding its dense kernel
  (``audio_dcls.layers.fold_dcls``), which any runtime (ONNX, TensorRT)
  understands;
* FastViT's train-time branches (MobileOne, RepMixer, ReparamLargeKernelConv,
  RepCPE) are merged into single convolutions (structural reparameterisation).

Folding comes first: the RepCPE of a DCLS FastViT adds its identity to the
folded 23×23 kernel, so the merge reads the kernel size from the folded conv
itself rather than from the size the block was declared with.

The inference form also runs in channels_last memory format: on the CPU,
oneDNN computes a 23×23 depthwise convolution 10-25× faster on NHWC than on
NCHW tensors. The 1-channel spectrogram cannot carry a memory format, so the
stem's output is converted; every later layer keeps NHWC. Memory format
changes neither outputs nor exported graphs.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from timm.models.fastvit import RepConditionalPosEnc

from audio_dcls.layers import fold_dcls

__all__ = ["prepare_for_inference", "reparameterize_rep_cpe"]


@torch.no_grad()
def reparameterize_rep_cpe(module: RepConditionalPosEnc) -> None:
    """Merge ``x + pos_enc(x)`` into one convolution (in place).

    The identity is a 1 at the kernel centre of each channel's own input
    slice, whatever the kernel size (7×7 as declared, 23×23 once a DCLS
    ``pos_enc`` has been folded).
    """
    if module.reparam_conv is not None:
        return
    conv = module.pos_enc
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(
            f"RepCPE holds a {type(conv).__name__}; fold DCLS layers (fold_dcls) before reparameterising"
        )
    kh, kw = conv.kernel_size
    if conv.in_channels != conv.out_channels or tuple(conv.stride) != (1, 1) or tuple(conv.padding) != (kh // 2, kw // 2):
        raise ValueError("RepCPE reparameterisation needs a 'same'-padded stride-1 conv with in == out channels")
    weight = conv.weight.detach().clone()  # (C, C/g, kh, kw)
    channels = torch.arange(conv.out_channels, device=weight.device)
    weight[channels, channels % weight.shape[1], kh // 2, kw // 2] += 1.0
    bias = conv.bias.detach().clone() if conv.bias is not None else weight.new_zeros(conv.out_channels)
    merged = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        (kh, kw),
        stride=1,
        padding=(kh // 2, kw // 2),
        groups=conv.groups,
        bias=True,
        device=weight.device,
        dtype=weight.dtype,
    )
    merged.weight.copy_(weight)
    merged.bias.copy_(bias)
    module.reparam_conv = merged
    module.spatial_shape = (kh, kw)
    del module.pos_enc


def _stem_output_channels_last(module: nn.Module, inputs, output):
    return output.contiguous(memory_format=torch.channels_last)


def _run_channels_last(model: nn.Module) -> None:
    model.to(memory_format=torch.channels_last)
    stem = getattr(model, "stem", None)
    if isinstance(stem, nn.Module) and _stem_output_channels_last not in stem._forward_hooks.values():
        stem.register_forward_hook(_stem_output_channels_last)


def _reparameterize_tree(module: nn.Module) -> None:
    for child in module.children():
        if isinstance(child, RepConditionalPosEnc):
            reparameterize_rep_cpe(child)
        elif callable(getattr(child, "reparameterize", None)) and getattr(child, "reparam_conv", None) is None:
            child.reparameterize()
        _reparameterize_tree(child)


@torch.no_grad()
def prepare_for_inference(model: nn.Module, inplace: bool = True, channels_last: bool = True) -> nn.Module:
    """Fold DCLS kernels, reparameterise FastViT branches, switch to eval mode.

    Eval-mode outputs are unchanged (up to float rounding); the result has no
    DCLS layers and no multi-branch blocks, and exports to ONNX. Idempotent.
    With ``inplace=False`` the model is copied first; ``channels_last`` (the
    fast layout for large depthwise kernels) makes the stem emit NHWC maps.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()  # BatchNorm merges use running statistics
    fold_dcls(model)
    _reparameterize_tree(model)
    if channels_last:
        _run_channels_last(model)
    return model.eval()
