"""FastViT audio taggers, with depthwise (DSC) or DCLS-Gauss convolutions.

Papers:
    Vasu et al., "FastViT: A Fast Hybrid Vision Transformer using Structural
    Reparameterization", ICCV 2023 (arXiv:2303.14189).
    Khalfaoui-Hassani, Masquelier, Pellegrini, "Audio classification with
    Dilated Convolution with Learnable Spacings", NeurIPS 2023 ML4Audio
    workshop (arXiv:2309.13972).

timm's ``FastVit``, changed for 1×128×1001 log-mel input:

* stem: the whole MobileOne stem is replaced by ``Conv2d(1, C0, (2, 16),
  stride (2, 16), bias=False)``, no norm (64×62 maps enter stage 0);
* DCLS variants: the depthwise 7×7 conv of every ConvFFN (``mlp.conv.conv``;
  its BatchNorm stays) and the conv of the RepCPE positional encoding
  (``pos_emb.pos_enc``, last stage of the SA models) become
  ``Dcls2d(C, C, 26 taps, 23×23, padding 11, groups C)`` with the original
  bias setting; each stage's DCLS layers, RepCPE included, share one
  positions/Σ parameter. RepMixer's 3×3 convs and every strided or grouped
  downsampling conv stay as they are.

``audio_dcls.models.prepare_for_inference`` folds the DCLS kernels and then
applies FastViT's structural reparameterisation (RepCPE identity at the
centre of the 23×23 kernel).

Unique parameters, 527 classes: FastViT-SA24 21,064,015 (DSC), 21,016,655 (DCLS).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.fastvit import FastVit, RepConditionalPosEnc

from ._audio_cfg import AUDIOSET_NUM_CLASSES, audio_cfg, check_not_pretrained
from ._dcls_swap import DclsSpec, audio_stem_conv, replace_module, rescale_feature_info, swap_stages_to_dcls

__all__ = ["FastVitAudio"]


class FastVitAudio(FastVit):
    """FastViT over log-mel spectrograms; input (B, 1, 128, T) → logits (B, num_classes).

    Extra arguments over timm's ``FastVit``:
        dcls: swap the ConvFFN depthwise convs and RepCPE convs for DCLS
            (positions shared per stage).
        dcls_kernel_count, dcls_dilated_kernel_size, dcls_version: the DCLS layers.
    Everything else (layers, embed_dims, layer_scale_init_value,
    drop_path_rate, ...) is FastVit's.
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
        if kwargs.get("fork_feat", False):
            raise ValueError("FastVitAudio is a tagger; fork_feat is not supported (use features_only=True)")
        if kwargs.get("inference_mode", False):
            raise ValueError("build in training form and call audio_dcls.models.prepare_for_inference instead of inference_mode=True")
        super().__init__(in_chans=in_chans, num_classes=num_classes, **kwargs)
        # The MobileOne stem (three blocks, 4× reduction) goes entirely.
        replace_module(self, "stem", audio_stem_conv(in_chans, self.stem[0].out_chs, bias=False, like=self.stem))
        rescale_feature_info(self, old_stem_stride=4)
        self.dcls = dcls
        if dcls:
            spec = DclsSpec(dcls_kernel_count, dcls_dilated_kernel_size, dcls_version)
            stage_names = []
            for i, stage in enumerate(self.stages):
                names = []
                if isinstance(stage.pos_emb, RepConditionalPosEnc):
                    names.append(f"stages.{i}.pos_emb.pos_enc")
                names += [f"stages.{i}.blocks.{j}.mlp.conv.conv" for j in range(len(stage.blocks))]
                stage_names.append(names)
            swap_stages_to_dcls(self, stage_names, spec)
            for stage in self.stages:
                if isinstance(stage.pos_emb, RepConditionalPosEnc):
                    # RepCPE builds its reparameterised kernel from spatial_shape.
                    size = spec.dilated_kernel_size
                    stage.pos_emb.spatial_shape = (size, size)


def _create_fastvit_audio(variant: str, pretrained: bool = False, **kwargs) -> FastVitAudio:
    check_not_pretrained(variant, pretrained)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        FastVitAudio,
        variant,
        pretrained=False,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    # 128×1001 → 64×62 after the stem → 8×8 after three 7×7 stride-2 patch embeddings.
    return audio_cfg(pool_size=(8, 8), first_conv="stem", classifier="head.fc", **kwargs)


default_cfgs = generate_default_cfgs({
    "fastvit_sa24_audio": _cfg(),
    "fastvit_sa24_dcls_audio": _cfg(),
    "fastvit_t8_audio": _cfg(),
    "fastvit_t8_dcls_audio": _cfg(),
})

_SA24 = dict(
    layers=(4, 4, 12, 4),
    embed_dims=(64, 128, 256, 512),
    mlp_ratios=(4, 4, 4, 4),
    pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))),
    token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
)
# FastViT-T8: RepMixer everywhere, no RepCPE; trains on a laptop CPU.
_T8 = dict(
    layers=(2, 2, 4, 2),
    embed_dims=(48, 96, 192, 384),
    mlp_ratios=(3, 3, 3, 3),
    token_mixers=("repmixer", "repmixer", "repmixer", "repmixer"),
)


@register_model
def fastvit_sa24_audio(pretrained: bool = False, **kwargs) -> FastVitAudio:
    """FastViT-SA24, depthwise 7×7 (the DSC baseline of the paper)."""
    return _create_fastvit_audio("fastvit_sa24_audio", pretrained, **dict(_SA24, **kwargs))


@register_model
def fastvit_sa24_dcls_audio(pretrained: bool = False, **kwargs) -> FastVitAudio:
    """FastViT-SA24 with DCLS-Gauss (26 taps on 23×23) in ConvFFNs and RepCPE."""
    return _create_fastvit_audio("fastvit_sa24_dcls_audio", pretrained, **dict(_SA24, dcls=True, **kwargs))


@register_model
def fastvit_t8_audio(pretrained: bool = False, **kwargs) -> FastVitAudio:
    """FastViT-T8, depthwise 7×7 (CPU-sized)."""
    return _create_fastvit_audio("fastvit_t8_audio", pretrained, **dict(_T8, **kwargs))


@register_model
def fastvit_t8_dcls_audio(pretrained: bool = False, **kwargs) -> FastVitAudio:
    """FastViT-T8 with DCLS-Gauss (26 taps on 23×23) in ConvFFNs (CPU-sized)."""
    return _create_fastvit_audio("fastvit_t8_dcls_audio", pretrained, **dict(_T8, dcls=True, **kwargs))
