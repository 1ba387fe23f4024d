"""The one place a model is built from its name and arguments.

Training, evaluation, release folders and the service all go through
:func:`build_model`; training-only arguments (drop path) are the trainer's to add
to ``model_args``.
"""
from __future__ import annotations

from typing import Any, Dict

from torch import nn


class ModelBuildError(ValueError):
    """An unknown architecture, or arguments it does not accept (one-line message)."""


def build_model(arch: str, model_args: Dict[str, Any], num_classes: int) -> nn.Module:
    """``timm.create_model(arch, num_classes=num_classes, **model_args)`` for a registered
    audio model, randomly initialised (weights come from a checkpoint or a release)."""
    import timm

    from audio_dcls.models import list_audio_models  # importing it registers the audio models

    if not timm.models.is_model(arch):
        raise ModelBuildError(f"unknown architecture {arch!r} (e.g. {', '.join(list_audio_models()[:4])}, ...)")
    kwargs = {**model_args, "num_classes": int(num_classes)}
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as e:
        raise ModelBuildError(f"{arch} does not accept these arguments ({e})") from None
