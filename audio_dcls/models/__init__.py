"""Audio taggers registered in timm: ConvNeXt, ConvFormer and FastViT, DSC or DCLS.

Importing this package registers the models; then e.g.
``timm.create_model('convnext_tiny_dcls_audio')`` gives a 527-class tagger
for 1×128×1001 log-mel input.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import timm

from . import convformer_audio, convnext_audio, fastvit_audio
from ._audio_cfg import AudioPretrainedCfg
from ._dcls_swap import DclsSpec, dcls_stage_layers
from .convformer_audio import ConvFormerAudio
from .convnext_audio import ConvNeXtAudio
from .fastvit_audio import FastVitAudio
from .inference import prepare_for_inference, reparameterize_rep_cpe

_FAMILY_MODULES = ("convnext_audio", "convformer_audio", "fastvit_audio")
_DCLS_TAG = "_dcls_audio"
_DSC_TAG = "_audio"


def list_audio_models(dcls: Optional[bool] = None) -> List[str]:
    """Names of our registered models; ``dcls`` True/False keeps one form only."""
    names = timm.list_models(module=list(_FAMILY_MODULES))
    if dcls is None:
        return names
    return [n for n in names if n.endswith(_DCLS_TAG) == dcls]


def dcls_counterpart(name: str) -> str:
    """'convnext_tiny_audio' → 'convnext_tiny_dcls_audio'."""
    if name.endswith(_DCLS_TAG) or not name.endswith(_DSC_TAG):
        raise ValueError(f"{name!r} is not the name of a DSC audio model")
    return name[: -len(_DSC_TAG)] + _DCLS_TAG


def audio_model_pairs() -> List[Tuple[str, str]]:
    """(DSC, DCLS) name pairs of every registered family size."""
    return [(n, dcls_counterpart(n)) for n in list_audio_models(dcls=False)]


__all__ = [
    "AudioPretrainedCfg",
    "ConvFormerAudio",
    "ConvNeXtAudio",
    "DclsSpec",
    "FastVitAudio",
    "audio_model_pairs",
    "dcls_counterpart",
    "dcls_stage_layers",
    "list_audio_models",
    "prepare_for_inference",
    "reparameterize_rep_cpe",
]
