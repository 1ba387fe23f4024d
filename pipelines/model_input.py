"""From a batch as the DataLoader delivers it to what the model sees, on the batch's device.

The workers only read bytes (int16 waveforms or fp16 log-mels, as stored); the batch
moves to the training (or scoring) device as it is, and there :class:`ModelInput` does
the rest, batched:

* waveform items: int16 / 32768 -> in training with ``augment: dcls_audio``, the
  paper's augmentation around the front end (roll, speed perturbation, erasing on the
  power spectrogram: :class:`audio_dcls.augment.DclsAudioAugment`), else the plain
  front end (:class:`audio_dcls.features.LogMel`, the object the service runs);
* log-mel items: fp16 -> float32;
* then, in training only: a random crop of ``crop_frames`` frames, and with
  ``augment: specaugment`` SpecAugment masks, time roll and gain
  (:class:`audio_dcls.features.LogMelAugment`).

Every random draw comes from the ``generator`` passed in (a CPU generator seeded from
(seed, epoch, step, micro-batch) by :mod:`pipelines.train_step`), so the batch is
augmented the same on a CPU or a GPU, with one process or many. In eval mode the
module is the front end alone. Mixup and label smoothing follow in the training step.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from audio_dcls.features import LogMelConfig
from pipelines.feature_store import PCM16_SCALE, STORE_KINDS, WAVEFORM
from pipelines.train_config import AUGMENTS, ConfigError


def random_crop(x: torch.Tensor, frames: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A random window of ``frames`` time frames per clip; (B, 1, F, T) -> (B, 1, F, frames)."""
    T = x.shape[-1]
    if frames <= 0 or frames >= T:
        return x
    starts = torch.randint(0, T - frames + 1, (x.shape[0],), generator=generator)
    return torch.stack([x[i, ..., s : s + frames] for i, s in enumerate(starts.tolist())])


def check_augment_fits(augment: str, item_kind: str, where: str) -> None:
    """A waveform augmentation needs waveform data: one line naming the fix otherwise."""
    if augment == "dcls_audio" and item_kind != WAVEFORM:
        raise ConfigError(
            f"augment=dcls_audio (the paper's: roll, speed perturbation and erasing before the mel scale) needs waveforms, "
            f"but {where} holds log-mels: build waveform stores (python -m pipelines.precompute build OUT --kind waveform ...) "
            f"or set augment=specaugment or augment=none"
        )


class ModelInput(nn.Module):
    """Raw batch -> normalised log-mel (B, 1, n_mels, T) float32 on the batch's device.

    ``item_kind``: 'waveform' ((B, L) int16 or float) or 'logmel' ((B, 1, F, T)).
    ``augment``: 'dcls_audio', 'specaugment' or 'none', with ``augment_args`` overriding
    its settings (``DclsAudioAugmentConfig`` / ``AugmentConfig`` fields); it acts in
    training mode only, like ``crop_frames``.
    """

    def __init__(self, frontend: LogMelConfig, item_kind: str, augment: str = "none", augment_args: Optional[Dict[str, Any]] = None, crop_frames: int = 0):
        super().__init__()
        if item_kind not in STORE_KINDS:
            raise ValueError(f"item_kind must be one of {', '.join(STORE_KINDS)}, got {item_kind!r}")
        if augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        check_augment_fits(augment, item_kind, "the data")
        args = dict(augment_args or {})
        if args and augment == "none":
            raise ConfigError("augment_args are given but augment=none")
        self.item_kind, self.augment, self.crop_frames = item_kind, augment, int(crop_frames)
        self.front_end = self.waveform_augment = self.logmel_augment = None
        try:
            if item_kind == WAVEFORM:
                from audio_dcls.features import LogMel

                self.front_end = LogMel(frontend)
            if augment == "dcls_audio":
                from audio_dcls.augment import DclsAudioAugment, DclsAudioAugmentConfig

                self.waveform_augment = DclsAudioAugment(self.front_end, DclsAudioAugmentConfig.from_dict(args))
            elif augment == "specaugment":
                from audio_dcls.features import AugmentConfig, LogMelAugment

                self.logmel_augment = LogMelAugment(AugmentConfig.from_dict(args), db_per_unit=frontend.std)
        except (TypeError, ValueError) as e:  # unknown or impossible augment_args
            raise ConfigError(f"augment_args: {' '.join(str(e).split())}") from None

    def forward(self, raw: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.item_kind == WAVEFORM:
            wave = raw.float()
            if raw.dtype == torch.int16:
                wave = wave * (1.0 / PCM16_SCALE)  # (B, L), a power of two: exact
            if self.training and self.waveform_augment is not None:
                x = self.waveform_augment(wave, generator=generator)  # (B, 1, F, T)
            else:
                x = self.front_end(wave)  # (B, 1, F, T)
        else:
            x = raw.float()  # (B, 1, F, T)
        if self.training:
            if self.crop_frames:
                x = random_crop(x, self.crop_frames, generator)
            if self.logmel_augment is not None:
                x = self.logmel_augment(x, generator=generator)
        return x

    def extra_repr(self) -> str:
        return f"item_kind={self.item_kind}, augment={self.augment}, crop_frames={self.crop_frames}"


def training_input(cfg, frontend: LogMelConfig, item_kind: str, where: str = "the training data") -> ModelInput:
    """The configured ModelInput of a run (``cfg``: TrainConfig), in training mode."""
    check_augment_fits(cfg.augment, item_kind, where)
    return ModelInput(frontend, item_kind, cfg.augment, cfg.augment_args, cfg.crop_frames).train()


def scoring_input(frontend: LogMelConfig, item_kind: str) -> ModelInput:
    """The front end alone (eval mode): what evaluation runs on the scoring device."""
    return ModelInput(frontend, item_kind).eval()
