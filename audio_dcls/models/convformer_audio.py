"""ConvFormer audio taggers, with depthwise (DSC) or DCLS-Gauss token mixing.

Papers:
    Yu et al., "MetaFormer Baselines for Vision", TPAMI 2023 (arXiv:2210.13452).
    Khalfaoui-Hassani, Masquelier, Pellegrini, "Audio classification with
    Dilated Convolution with Learnable Spacings", NeurIPS 2023 ML4Audio
    workshop (arXiv:2309.13972).

timm's ``MetaFormer`` with SepConv token mixers, changed for 1×128×1001
log-mel input:

* stem: ``Conv2d(1, C0, (2, 16), stride (2, 16), bias=False)`` followed by
  the stem's own norm (64×62 maps enter stage 0);
* DCLS variants: every SepConv ``dwconv`` (depthwise 7×7 on the 2× expanded
  channels) becomes ``Dcls2d(C, C, 26 taps, 23×23, padding 11, groups C,
  bias=False)``, with one shared positions/Σ parameter per stage;
* the LayerNorm inside the MLP head uses eps 1e-5, as in sail-sg/metaformer
  and DCLS-Audio (``nn.LayerNorm`` defaults), where timm's ``MlpHead`` uses
  1e-6: the released ConvFormer weights were trained with 1e-5.

Unique parameters, 527 classes: ConvFormer-S18 25,797,847 (DSC), 25,781,207 (DCLS).
"""
from __future__ import annotations

from typing import Any, Dict

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.metaformer import LayerNorm2dNoBias, MetaFormer, MlpHead, SepConv

from ._audio_cfg import AUDIOSET_NUM_CLASSES, audio_cfg, check_not_pretrained
from ._dcls_swap import DclsSpec, audio_stem_conv, replace_module, rescale_feature_info, swap_stages_to_dcls

__all__ = ["ConvFormerAudio"]

# LayerNorm eps inside the MLP head of sail-sg/metaformer (nn.LayerNorm's default).
MLP_HEAD_NORM_EPS = 1e-5


class ConvFormerAudio(MetaFormer):
    """ConvFormer over log-mel spectrograms; input (B, 1, 128, T) → logits (B, num_classes).

    Extra arguments over timm's ``MetaFormer``:
        dcls: swap every SepConv depthwise conv for DCLS (positions shared per stage).
        dcls_kernel_count, dcls_dilated_kernel_size, dcls_version: the DCLS layers.
    Everything else (depths, dims, layer_scale_init_values, drop_path_rate, ...)
    is MetaFormer's; the token mixer is always SepConv.
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
        kwargs.setdefault("token_mixers", SepConv)
        kwargs.setdefault("norm_layers", LayerNorm2dNoBias)
        super().__init__(in_chans=in_chans, num_classes=num_classes, **kwargs)
        old = self.stem.conv
        replace_module(self, "stem.conv", audio_stem_conv(in_chans, old.out_channels, bias=False, like=old))
        rescale_feature_info(self, old_stem_stride=old.stride[0])
        self._set_head_norm_eps()
        self.dcls = dcls
        if dcls:
            spec = DclsSpec(dcls_kernel_count, dcls_dilated_kernel_size, dcls_version)
            stage_names = [
                [f"stages.{i}.blocks.{j}.token_mixer.dwconv" for j in range(len(stage.blocks))]
                for i, stage in enumerate(self.stages)
            ]
            swap_stages_to_dcls(self, stage_names, spec)

    def _set_head_norm_eps(self) -> None:
        if isinstance(self.head.fc, MlpHead):
            self.head.fc.norm.eps = MLP_HEAD_NORM_EPS

    def reset_classifier(self, num_classes: int, *args, **kwargs):
        super().reset_classifier(num_classes, *args, **kwargs)
        self._set_head_norm_eps()


def _create_convformer_audio(variant: str, pretrained: bool = False, **kwargs) -> ConvFormerAudio:
    check_not_pretrained(variant, pretrained)
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 6, 2))))))
    return build_model_with_cfg(
        ConvFormerAudio,
        variant,
        pretrained=False,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    # 128×1001 → 64×62 after the stem → 8×8 after three 3×3 stride-2 downsamplings.
    return audio_cfg(pool_size=(8, 8), first_conv="stem.conv", classifier="head.fc", **kwargs)


default_cfgs = generate_default_cfgs({
    "convformer_s18_audio": _cfg(),
    "convformer_s18_dcls_audio": _cfg(),
    "convformer_atto_audio": _cfg(),
    "convformer_atto_dcls_audio": _cfg(),
})

_S18 = dict(depths=(3, 3, 9, 3), dims=(64, 128, 320, 512))
# Not a published ConvFormer size: ConvNeXt-atto's depths and widths with
# ConvFormer blocks, small enough to train on a laptop CPU.
_ATTO = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))


@register_model
def convformer_s18_audio(pretrained: bool = False, **kwargs) -> ConvFormerAudio:
    """ConvFormer-S18, depthwise 7×7 (the DSC baseline of the paper)."""
    return _create_convformer_audio("convformer_s18_audio", pretrained, **dict(_S18, **kwargs))


@register_model
def convformer_s18_dcls_audio(pretrained: bool = False, **kwargs) -> ConvFormerAudio:
    """ConvFormer-S18 with DCLS-Gauss (26 taps on 23×23)."""
    return _create_convformer_audio("convformer_s18_dcls_audio", pretrained, **dict(_S18, dcls=True, **kwargs))


@register_model
def convformer_atto_audio(pretrained: bool = False, **kwargs) -> ConvFormerAudio:
    """ConvFormer blocks at ConvNeXt-atto widths, depthwise 7×7 (CPU-sized)."""
    return _create_convformer_audio("convformer_atto_audio", pretrained, **dict(_ATTO, **kwargs))


@register_model
def convformer_atto_dcls_audio(pretrained: bool = False, **kwargs) -> ConvFormerAudio:
    """ConvFormer blocks at ConvNeXt-atto widths with DCLS-Gauss (CPU-sized)."""
    return _create_convformer_audio("convformer_atto_dcls_audio", pretrained, **dict(_ATTO, dcls=True, **kwargs))
