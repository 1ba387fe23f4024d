"""The paper's log-mel front end, as one small nn.Module used offline and online.

32 kHz audio -> centred STFT (n_fft 1024, Hann window 1024, hop 320) -> power ->
128 HTK-scale mel bands between 50 Hz and 14 kHz with unnormalised triangles ->
10*log10(max(x, 1e-10)) (no top_db) -> (x + 18.2696) / 30.5735.
A 10 s clip gives (1, 128, 1001). The filterbank comes from librosa
(``librosa.filters.mel(htk=True, norm=None)``); it agrees with torchaudio's
``melscale_fbanks(mel_scale='htk', norm=None)`` to ~1e-5 (torchaudio builds it in
float32). Note that librosa's *default* is the Slaney mel scale, whose bands differ
completely from the HTK ones the paper (and torchaudio's default) uses, so
``htk=True`` matters.

The module runs in two halves, ``forward = from_power(power_spectrogram(x))``: the
paper's training path erases a rectangle of the power spectrogram in between
(:class:`audio_dcls.augment.DclsAudioAugment`, which wraps this same module).
SpecAugment masks, random time roll and random gain on log-mels read back from a
feature store live in :class:`LogMelAugment`, configured by :class:`AugmentConfig`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn


@dataclass(frozen=True)
class LogMelConfig:
    sample_rate: int = 32000  # Hz; audio is resampled to this before the STFT
    n_fft: int = 1024  # FFT size (samples)
    win_length: int = 1024  # Hann window length (samples)
    hop_length: int = 320  # 10 ms at 32 kHz -> 1001 frames for 10 s (centred)
    n_mels: int = 128  # mel bands
    f_min: float = 50.0  # Hz, lowest band edge
    f_max: float = 14000.0  # Hz, highest band edge
    mean: float = -18.2696  # dB normalisation: (x - mean) / std
    std: float = 30.5735
    clip_seconds: float = 10.0  # clip length the models are trained on

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LogMelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown front-end settings: {sorted(unknown)}")
        return cls(**d)

    @property
    def num_frames(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate)) // self.hop_length + 1


@dataclass(frozen=True)
class AugmentConfig:
    # Defaults follow PANNs' SpecAugment (2 time stripes <= 64 frames, 2 frequency
    # stripes <= 8 bands), which the ConvNeXt/DCLS audio recipes inherit.
    freq_masks: int = 2  # frequency stripes per example
    freq_mask_bands: int = 8  # each stripe is U{0..this} mel bands wide
    time_masks: int = 2  # time stripes per example
    time_mask_frames: int = 64  # each stripe is U{0..this} frames wide
    roll: bool = True  # circular shift of the whole clip by a random number of frames
    gain_db: float = 6.0  # random gain, uniform in [-gain_db, +gain_db] dB; 0 turns it off
    mask_value: float = 0.0  # value written into masked cells (0 = the dataset mean after normalisation)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown augmentation settings: {sorted(unknown)}")
        return cls(**d)


def mel_filterbank(config: LogMelConfig) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float32 HTK mel filterbank, unnormalised triangles."""
    import librosa

    fb = librosa.filters.mel(
        sr=config.sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.f_min,
        fmax=config.f_max,
        htk=True,
        norm=None,
        dtype=np.float64,
    )  # (n_mels, n_freqs)
    return np.ascontiguousarray(fb.T, dtype=np.float32)


class LogMelAugment(nn.Module):
    """SpecAugment masks + random time roll + random gain on normalised log-mels.

    Identity in eval mode. Works on (B, 1, F, T) or (B, F, T); draws from
    ``generator`` when given (reproducible augmentation), else from torch's global RNG.
    """

    def __init__(self, config: AugmentConfig = AugmentConfig(), db_per_unit: float = LogMelConfig.std):
        super().__init__()
        self.config = config
        self.db_per_unit = float(db_per_unit)  # 1.0 in normalised units is this many dB

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training:
            return x
        cfg = self.config
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(1)
        B, _, F, T = x.shape  # (B, C, F, T)
        dev = x.device

        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=generator.device if generator is not None else "cpu").to(dev)

        if cfg.gain_db > 0:
            gain = (rand(B) * 2 - 1) * (cfg.gain_db / self.db_per_unit)
            x = x + gain.to(x.dtype).view(B, 1, 1, 1)
        if cfg.roll and T > 1:
            shift = (rand(B) * T).long().clamp_max(T - 1)  # (B,)
            idx = (torch.arange(T, device=dev).view(1, T) - shift.view(B, 1)) % T  # (B, T)
            x = torch.gather(x, 3, idx.view(B, 1, 1, T).expand_as(x))
        keep = torch.ones(B, 1, F, T, dtype=torch.bool, device=dev)
        keep = self._stripes(keep, cfg.freq_masks, cfg.freq_mask_bands, F, 2, rand)
        keep = self._stripes(keep, cfg.time_masks, cfg.time_mask_frames, T, 3, rand)
        x = torch.where(keep, x, torch.full_like(x, cfg.mask_value))
        return x.squeeze(1) if squeeze else x

    @staticmethod
    def _stripes(keep: torch.Tensor, count: int, max_width: int, size: int, dim: int, rand) -> torch.Tensor:
        if count <= 0 or max_width <= 0:
            return keep
        B = keep.shape[0]
        pos = torch.arange(size, device=keep.device).view(1, 1, size)  # (1, 1, size)
        width = (rand(B, count) * (max_width + 1)).long().clamp_max(max_width)  # (B, count)
        start = (rand(B, count) * (size - width + 1).clamp_min(1)).long()  # (B, count)
        hit = ((pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))).any(1)  # (B, size)
        shape = [B, 1, 1, 1]
        shape[dim] = size
        return keep & ~hit.view(shape)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())


class LogMel(nn.Module):
    """Waveform (B, samples) at ``config.sample_rate`` -> normalised log-mel (B, 1, n_mels, T).

    T = samples // hop_length + 1 (centred frames; 1001 for 10 s at 32 kHz).
    ``power_spectrogram`` (waveform -> (B, n_fft // 2 + 1, T) power) and ``from_power``
    (power -> log-mel) are the two halves of ``forward``. The
    window and filterbank are non-persistent buffers: they follow ``.to(device)`` but
    never enter a state_dict, so checkpoints carry only ``config``. The STFT always
    runs in float32 (also under autocast or after ``.half()``: the -100 dB floor does not
    fit float16); the output comes back in the module's dtype.
    """

    def __init__(self, config: LogMelConfig = LogMelConfig()):
        super().__init__()
        if config.win_length > config.n_fft:
            raise ValueError(f"win_length {config.win_length} exceeds n_fft {config.n_fft}")
        if not (0 <= config.f_min < config.f_max <= config.sample_rate / 2):
            raise ValueError(f"mel range {config.f_min}-{config.f_max} Hz does not fit {config.sample_rate} Hz audio")
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        fb = mel_filterbank(config)  # (n_freqs, n_mels)
        # Only the STFT bins some triangle covers (about 2..448 of 513 by default) take part:
        # the others have zero weight, so skipping them changes nothing but the cost.
        used = np.flatnonzero(fb.any(axis=1))
        self._bins = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, fb.shape[0])
        self.register_buffer("mel_fb", torch.from_numpy(fb[self._bins[0] : self._bins[1]].copy()), persistent=False)  # (used bins, n_mels)

    @property
    def n_freqs(self) -> int:
        """Rows of the power spectrogram: n_fft // 2 + 1 (513)."""
        return self.config.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames T of a clip of ``num_samples`` samples (short clips are zero-padded to n_fft // 2 + 1 first)."""
        return max(num_samples, self.config.n_fft // 2 + 1) // self.config.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) or (samples,) -> (B, 1, n_mels, T) normalised log-mel."""
        return self.from_power(self.power_spectrogram(waveform))

    def power_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) or (samples,) -> float32 |STFT|^2, (B, n_freqs, T), all n_fft // 2 + 1 bins.

        The first half of the front end, where the paper's training path erases a
        rectangle (:func:`audio_dcls.augment.erase`) before :meth:`from_power`.
        """
        cfg = self.config
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"LogMel expects (batch, samples) audio, got shape {tuple(waveform.shape)}")
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.to(torch.float32)  # (B, N)
            min_len = cfg.n_fft // 2 + 1  # reflect padding needs more samples than half a window
            if x.shape[-1] < min_len:
                x = nn.functional.pad(x, (0, min_len - x.shape[-1]))
            # centre the frames: reflect-pad n_fft // 2 on both sides (as torch.stft(center=True,
            # pad_mode="reflect") does, but cat + flip is 4x cheaper than its padding kernel)
            half = cfg.n_fft // 2
            x = torch.cat([x[:, 1 : half + 1].flip(-1), x, x[:, -half - 1 : -1].flip(-1)], dim=-1)  # (B, N + n_fft)
            spec = torch.stft(
                x,
                n_fft=cfg.n_fft,
                hop_length=cfg.hop_length,
                win_length=cfg.win_length,
                window=self.window.float(),
                center=False,
                normalized=False,
                onesided=True,
                return_complex=True,
            )  # (B, n_freqs, T)
            return spec.real.square().addcmul_(spec.imag, spec.imag)  # |X|^2, 3x faster than abs()**2

    def from_power(self, power: torch.Tensor) -> torch.Tensor:
        """(B, n_freqs, T) power spectrogram -> (B, 1, n_mels, T) normalised log-mel, in the module's dtype."""
        cfg = self.config
        if power.dim() != 3 or power.shape[1] != self.n_freqs:
            raise ValueError(f"LogMel.from_power expects (batch, {self.n_freqs}, frames), got shape {tuple(power.shape)}")
        out_dtype = self.mel_fb.dtype
        with torch.autocast(device_type=power.device.type, enabled=False):
            used = power.to(torch.float32)[:, self._bins[0] : self._bins[1]]  # (B, used bins, T)
            mel = torch.matmul(used.transpose(1, 2), self.mel_fb.float()).transpose(1, 2)  # (B, n_mels, T)
            db = 10.0 * torch.log10(mel.clamp_min(1e-10))
            return ((db - cfg.mean) / cfg.std).unsqueeze(1).to(out_dtype)  # (B, 1, n_mels, T)

    @torch.inference_mode()
    def compute(self, waveforms: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """numpy (B, samples) or (samples,) -> float32 numpy (B, n_mels, T), no augmentation."""
        w = np.asarray(waveforms, dtype=np.float32)
        single = w.ndim == 1
        w = w[None] if single else w
        was_training = self.training
        self.eval()
        try:
            out = [self.forward(torch.from_numpy(w[i : i + batch_size])).squeeze(1).numpy() for i in range(0, len(w), batch_size)]
        finally:
            self.train(was_training)
        res = np.concatenate(out) if out else np.zeros((0, self.config.n_mels, 0), np.float32)
        return res[0] if single else res

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"sample_rate={c.sample_rate}, n_fft={c.n_fft}, win_length={c.win_length}, hop_length={c.hop_length}, "
            f"n_mels={c.n_mels}, f_min={c.f_min}, f_max={c.f_max}"
        )
