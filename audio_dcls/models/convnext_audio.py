"""ConvNeXt audio taggers, with depthwise (DSC) or DCLS-Gauss token mixing.

Papers:
    Liu et al., "A ConvNet for the 2020s", CVPR 2022 (arXiv:2201.03545).
    Khalfaoui-Hassani, Masquelier, Pellegrini, "Audio classification with
    Dilated Convolution with Learnable Spacings", NeurIPS 2023 ML4Audio
    workshop (arXiv:2309.13972).

timm's ``ConvNeXt`` with two changes for 1×128×1001 log-mel input:

* stem: ``Conv2d(1, C0, (2, 16), stride (2, 16))`` with its bias, followed by
  ConvNeXt's own LayerNorm2d (64×62 maps enter stage 0);
* DCLS variants: every block's ``conv_dw`` (depthwise 7×7) becomes
  ``Dcls2d(C, C, 26 taps, 23×23, padding 11, groups C)``, with one shared
  positions/Σ parameter per stage.

Unique parameters, 527 classes: ConvNeXt-T 28,223,855 (DSC), 28,221,263 (DCLS).
"""
from __future__ import annotations

from typing import Any, Dict

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt

from ._audio_cfg import AUDIOSET_NUM_CLASSES, audio_cfg, check_not_pretrained
from ._dcls_swap import DclsSpec, audio_stem_conv, replace_module, rescale_feature_info, swap_stages_to_dcls

__all__ = ["ConvNeXtAudio"]


class ConvNeXtAudio(ConvNeXt):
    """ConvNeXt over log-mel spectrograms; input (B, 1, 128, T) → logits (B, num_classes).

    Extra arguments over timm's ``ConvNeXt``:
        dcls: swap every depthwise conv for DCLS (positions shared per stage).
        dcls_kernel_count, dcls_dilated_kernel_size, dcls_version: the DCLS layers.
    Everything else (depths, dims, ls_init_value, drop_path_rate, ...) is ConvNeXt's.
    """

    def __init__(
            self,
            in_chans: int = 1,
            num_classes: int = AUDIOSET_NUM_CLASSES,
            dcls: bool = False,
            dcls_kernel_count: int = 26,
            dcls_dilated_kernel_size: int = 23,
            dcls_version: str = "gauss",
            **kwargs: Any,
    ):
        if kwargs.get("stem_type", "patch") != "patch":
            raise ValueError("ConvNeXtAudio replaces the patch stem; stem_type must be 'patch'")
        super().__init__(in_chans=in_chans, num_classes=num_classes, **kwargs)
        old = self.stem[0]
        replace_module(self, "stem.0", audio_stem_conv(in_chans, old.out_channels, bias=old.bias is not None, like=old))
        rescale_feature_info(self, old_stem_stride=old.stride[0])
        self.dcls = dcls
        if dcls:
            spec = DclsSpec(dcls_kernel_count, dcls_dilated_kernel_size, dcls_version)
            stage_names = [
                [f"stages.{i}.blocks.{j}.conv_dw" for j in range(len(stage.blocks))]
                for i, stage in enumerate(self.stages)
            ]
            swap_stages_to_dcls(self, stage_names, spec)


def _create_convnext_audio(variant: str, pretrained: bool = False, **kwargs) -> ConvNeXtAudio:
    check_not_pretrained(variant, pretrained)
    return build_model_with_cfg(
        ConvNeXtAudio,
        variant,
        pretrained=False,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    # 128×1001 → 64×62 after the stem → 8×7 after three 2× downsamplings.
    return audio_cfg(pool_size=(8, 7), first_conv="stem.0", classifier="head.fc", **kwargs)


default_cfgs = generate_default_cfgs({
    "convnext_tiny_audio": _cfg(),
    "convnext_tiny_dcls_audio": _cfg(),
    "convnext_atto_audio": _cfg(),
    "convnext_atto_dcls_audio": _cfg(),
})

_TINY = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
# ConvNeXt-atto widths (timm), a few million parameters: trains on a laptop CPU.
_ATTO = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True)


@register_model
def convnext_tiny_audio(pretrained: bool = False, **kwargs) -> ConvNeXtAudio:
    """ConvNeXt-T, depthwise 7×7 (the DSC baseline of the paper)."""
    return _create_convnext_audio("convnext_tiny_audio", pretrained, **dict(_TINY, **kwargs))


@register_model
def convnext_tiny_dcls_audio(pretrained: bool = False, **kwargs) -> ConvNeXtAudio:
    """ConvNeXt-T with DCLS-Gauss (26 taps on 23×23)."""
    return _create_convnext_audio("convnext_tiny_dcls_audio", pretrained, **dict(_TINY, dcls=True, **kwargs))


@register_model
def convnext_atto_audio(pretrained: bool = False, **kwargs) -> ConvNeXtAudio:
    """ConvNeXt-atto widths, depthwise 7×7 (CPU-sized)."""
    return _create_convnext_audio("convnext_atto_audio", pretrained, **dict(_ATTO, **kwargs))


@register_model
def convnext_atto_dcls_audio(pretrained: bool = False, **kwargs) -> ConvNeXtAudio:
    """ConvNeXt-atto widths with DCLS-Gauss (26 taps on 23×23; CPU-sized)."""
    return _create_convnext_audio("convnext_atto_dcls_audio", pretrained, **dict(_ATTO, dcls=True, **kwargs))
