"""Pretrained-config records and entrypoint guards shared by the audio families.

timm keeps, per registered model, a ``PretrainedCfg`` describing the input
the weights expect. Ours extends it with what an audio model also needs to be
used correctly: the log-mel front-end settings and the label set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from timm.models import PretrainedCfg

from audio_dcls.features import LogMelConfig
from audio_dcls.labels import AUDIOSET_LABEL_SET, AUDIOSET_LABELS_CSV, AUDIOSET_NUM_CLASSES

AUDIOSET_LABEL_FILE = AUDIOSET_LABELS_CSV.name  # in audio_dcls/data/
AUDIO_INPUT_SIZE = (1, 128, 1001)  # (channels, mel bands, frames) of a 10 s clip
PAPER_NAME = "Audio classification with Dilated Convolution with Learnable Spacings"
PAPER_ID = "arXiv:2309.13972"


@dataclass
class AudioPretrainedCfg(PretrainedCfg):
    front_end: Optional[Dict[str, Any]] = None  # LogMelConfig.to_dict() of the expected input
    label_set: Optional[str] = None  # name of the label vocabulary the head predicts
    label_file: Optional[str] = None  # CSV (index, mid, display_name) in audio_dcls/data/


def audio_cfg(**kwargs) -> AudioPretrainedCfg:
    """Record for one audio model: no weight source, log-mel input, AudioSet labels.

    The input is already normalised by the front end, hence mean 0 / std 1.
    Any time length works (global pooling); 1001 frames is the training size.
    """
    cfg = dict(
        url="",
        num_classes=AUDIOSET_NUM_CLASSES,
        input_size=AUDIO_INPUT_SIZE,
        fixed_input_size=False,
        interpolation="",
        crop_pct=1.0,
        mean=(0.0,),
        std=(1.0,),
        license="mit",
        paper_name=PAPER_NAME,
        paper_ids=PAPER_ID,
        front_end=LogMelConfig().to_dict(),
        label_set=AUDIOSET_LABEL_SET,
        label_file=AUDIOSET_LABEL_FILE,
    )
    cfg.update(kwargs)
    return AudioPretrainedCfg(**cfg)


def check_not_pretrained(variant: str, pretrained: bool) -> None:
    """Our models are never fetched from a hub; trained weights load from release folders."""
    if pretrained:
        raise ValueError(
            f"{variant}: pretrained=True is not supported (audio_dcls never downloads weights); "
            "create the model with pretrained=False and load a trained checkpoint from its release folder"
        )
