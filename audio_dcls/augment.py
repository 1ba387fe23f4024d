"""The paper's (DCLS-Audio's) training augmentation, batched, plus batch mixup.

Per training clip, in this order (DCLS-Audio ``datasets.py`` / ``augmentations.py``):

1. :func:`roll`: circular shift of the waveform by ``shift ~ U{-L, ..., L-1}`` samples, always;
2. :func:`speed_perturb`, with probability 0.5: nearest-neighbour resampling by
   ``rate ~ U(0.5, 1.5)`` (the clip becomes ~``L * rate`` samples long, i.e. slower
   and lower for rate > 1), then back to ``L`` samples: zero-padded with
   ``left ~ U{0, ..., missing}`` zeros in front, or cropped from ``start ~ U{0, ..., n - L - 1}``
   (DCLS-Audio's ``randint(0, n - L)``: the very last window is never chosen);
3. the power spectrogram (:meth:`audio_dcls.features.LogMel.power_spectrogram`) and
   :func:`erase`, with probability 0.25, of one rectangle of it (all 513 STFT bins x
   frames): timm's ``RandomErasing(probability=0.25, mode='const', max_count=1)``, i.e.
   up to 10 attempts of area ``U(2 %, 1/3)`` and aspect ratio (height/width)
   log-uniform in ``[0.3, 1/0.3]``, ``h = round(sqrt(area * aspect))``,
   ``w = round(sqrt(area / aspect))``, the first attempt with ``h < F`` and ``w < T``
   wins, ``top ~ U{0..F-h}``, ``left ~ U{0..T-w}``; no fitting attempt, no erasing;
4. mel, dB and normalisation (:meth:`audio_dcls.features.LogMel.from_power`).

Per batch, after the front end: :func:`mixup` of the batch with its reverse, targets
label-smoothed first (the trainer's formula).

Every transform is a pure function of the batch and explicit per-clip parameters,
tensors of shape (B,), so a batch is transformed by index arithmetic and one gather,
with no loop over clips, on whatever device the batch is on. The samplers
(:func:`sample_roll`, :func:`sample_speed`, :func:`sample_erase`, gathered by
:meth:`DclsAudioAugment.sample`) draw the parameters on a CPU ``torch.Generator`` and
return CPU tensors that :meth:`AugmentParams.to` moves to the batch's device (a few
hundred numbers per batch). CPU on purpose: the CPU generator gives the same stream
on every machine, so a generator seeded from (seed, epoch, step, micro-batch)
reproduces the same augmentation whether the batch is then augmented on a CPU or a
GPU, and the draws never wait on the device.

The speed index rule is DCLS-Audio's ``arange(0, L, 1/rate).round().clamp(max=L-1)``
evaluated in float64 (position ``k * (1/rate)``, rounded half to even, and ``ceil(L / (1/rate))``
positions, as ``torch.arange`` counts them). DCLS-Audio's float32 ``arange``
stores positions on a 1/32-sample grid near 3e5 and, on the CPU, its values depend on
the thread count and SIMD width (measured: between 1 and 2 threads ~0.3-0.7 % of the
indices move by one sample); float64 is the rule those runs approximate, and the same
on every device.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

import torch
import torch.nn as nn


@dataclass(frozen=True)
class DclsAudioAugmentConfig:
    roll: bool = True  # circular shift of every clip by U{-L..L-1} samples (RandomRoll)
    speed_p: float = 0.5  # probability that a clip is speed-perturbed (SpeedPerturbation p)
    speed_min: float = 0.5  # rate ~ U(speed_min, speed_max); the clip is stretched to ~L * rate samples
    speed_max: float = 1.5
    erase_p: float = 0.25  # probability of erasing one rectangle of a clip's power spectrogram (timm probability)
    erase_min_area: float = 0.02  # rectangle area ~ U(min, max) as a fraction of (STFT bins x frames) (timm min_area)
    erase_max_area: float = 1 / 3  # (timm max_area)
    erase_min_aspect: float = 0.3  # height/width ~ log-uniform in [min, max] (timm min_aspect)
    erase_max_aspect: float = 1 / 0.3  # (timm: max_aspect defaults to 1 / min_aspect)
    erase_attempts: int = 10  # draws until one fits inside the spectrogram; none fits -> no erasing (timm: 10)
    erase_value: float = 0.0  # power written into the rectangle (timm mode='const': 0)

    def __post_init__(self):
        checks = [
            (0.0 <= self.speed_p <= 1.0, "speed_p must be in [0, 1]"),
            (0.0 < self.speed_min <= self.speed_max, "need 0 < speed_min <= speed_max"),
            (0.0 <= self.erase_p <= 1.0, "erase_p must be in [0, 1]"),
            (0.0 < self.erase_min_area <= self.erase_max_area <= 1.0, "need 0 < erase_min_area <= erase_max_area <= 1"),
            (0.0 < self.erase_min_aspect <= self.erase_max_aspect, "need 0 < erase_min_aspect <= erase_max_aspect"),
            (self.erase_attempts >= 1, "erase_attempts must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"augmentation settings: {message}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DclsAudioAugmentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown augmentation settings: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class AugmentParams:
    """Per-clip parameters of one batch, each a (B,) tensor; identity values where a transform is off."""

    shift: torch.Tensor  # int64 roll in samples (0: none)
    rate: torch.Tensor  # float64 speed rate (1.0: none)
    offset: torch.Tensor  # int64 start of the output in the stretched clip (< 0: zero padding in front)
    erase_top: torch.Tensor  # int64 first erased STFT bin
    erase_left: torch.Tensor  # int64 first erased frame
    erase_height: torch.Tensor  # int64 erased bins (0: no erasing)
    erase_width: torch.Tensor  # int64 erased frames

    def to(self, device: torch.device | str) -> "AugmentParams":
        return AugmentParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, index) -> "AugmentParams":
        """The parameters of some clips (an int keeps a batch of one)."""
        index = [index] if isinstance(index, int) else index
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


# ----------------------------------------------------------------------------------
# transforms: pure functions of a batch and (B,) parameters
# ----------------------------------------------------------------------------------
def _check_wave(wave: torch.Tensor, *params: torch.Tensor) -> None:
    if wave.dim() != 2:
        raise ValueError(f"expected a (batch, samples) waveform batch, got shape {tuple(wave.shape)}")
    for p in params:
        if p.shape != (wave.shape[0],):
            raise ValueError(f"expected one parameter per clip, shape ({wave.shape[0]},), got {tuple(p.shape)}")


def roll_index(shift: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(B,) shifts -> (B, L) source index of ``torch.roll(x, shift)``: (j - shift) mod L."""
    j = torch.arange(num_samples, device=shift.device)
    return torch.remainder(j.view(1, -1) - shift.view(-1, 1), num_samples)  # (B, L)


def roll(wave: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, L) batch, (B,) int shifts -> each clip ``torch.roll``-ed by its shift."""
    _check_wave(wave, shift)
    return torch.gather(wave, 1, roll_index(shift.to(wave.device), wave.shape[1]))


def stretched_length(rate: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(B,) rates -> (B,) int64 length of the nearest-neighbour stretched clip, ceil(L / (1 / rate))."""
    step = 1.0 / rate.to(torch.float64)
    return torch.ceil(num_samples / step).long()


def _speed_source(rate: torch.Tensor, offset: torch.Tensor, num_samples: int, base: torch.Tensor | int, pad: int) -> torch.Tensor:
    """(B, L) int64 ``min(round(k / rate), L - 1) + base[b]`` for k = j + offset[b] inside the stretched clip, else ``pad``.

    Positions stay float64 (exact integers, far below 2**53) until one final conversion:
    the cheapest order of the passes over the (B, L) grid.
    """
    B, L, dev = rate.shape[0], num_samples, rate.device
    step = (1.0 / rate.to(torch.float64)).view(B, 1)  # (B, 1)
    n = stretched_length(rate, L)  # (B,)
    pos = torch.arange(L, dtype=torch.float64, device=dev).view(1, L) + offset.to(torch.float64).view(B, 1)  # k, (B, L)
    pos.mul_(step).round_().clamp_(max=L - 1)  # round half to even, as torch.round
    if not isinstance(base, int) or base != 0:
        pos += base.to(torch.float64).view(B, 1) if isinstance(base, torch.Tensor) else float(base)
    j = torch.arange(L, device=dev).view(1, L)
    first, end = (-offset).clamp_min(0).view(B, 1), (n - offset).clamp_max(L).view(B, 1)  # valid j: [first, end)
    return pos.masked_fill_((j < first) | (j >= end), pad).long()  # (B, L)


def speed_index(rate: torch.Tensor, offset: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(B,) rates and offsets -> (B, L) source index of :func:`speed_perturb`, -1 for zero padding.

    Output sample j of clip b is sample k = j + offset[b] of the stretched clip, which
    is input sample ``min(round(k / rate[b]), L - 1)``, for 0 <= k < stretched length; else 0.
    """
    return _speed_source(rate, offset, num_samples, 0, -1)


def speed_perturb(wave: torch.Tensor, rate: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(B, L) batch -> (B, L): each clip stretched by rate[b], then padded or cropped at offset[b].

    ``offset = -left`` pads ``left`` zeros in front (and the rest behind) of a clip that
    became shorter; ``offset = start`` crops ``[start, start + L)`` out of a longer one.
    """
    _check_wave(wave, rate, offset)
    B, L = wave.shape
    ext = torch.cat([wave, wave.new_zeros(B, 1)], 1)  # (B, L + 1): padding reads the zero at L
    return torch.gather(ext, 1, _speed_source(rate.to(wave.device), offset.to(wave.device), L, 0, L))


def erase(
    power: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    value: float = 0.0,
) -> torch.Tensor:
    """(B, ..., F, T) -> a copy with ``[top:top+height, left:left+width]`` of the last two dims set to value, per clip.

    height or width 0 leaves a clip as it is.
    """
    B, F, T = power.shape[0], power.shape[-2], power.shape[-1]
    for p in (top, left, height, width):
        if p.shape != (B,):
            raise ValueError(f"expected one parameter per clip, shape ({B},), got {tuple(p.shape)}")
    lead = [B] + [1] * (power.dim() - 3)
    dev = power.device
    top, left, height, width = (p.to(dev).view(*lead, 1, 1) for p in (top, left, height, width))
    f = torch.arange(F, device=dev).view(*[1] * (power.dim() - 2), F, 1)
    t = torch.arange(T, device=dev).view(*[1] * (power.dim() - 1), T)
    rows, cols = (f >= top) & (f < top + height), (t >= left) & (t < left + width)  # (B, ..., F, 1), (B, ..., 1, T)
    inside = rows & cols  # (B, ..., F, T), one pass over the grid
    return power.masked_fill(inside, value)


def smooth_labels(y: torch.Tensor, eps: float) -> torch.Tensor:
    """(1 − eps)·y + eps/C over the last dim C (the paper: 0.9·y + 0.1/527)."""
    return y * (1.0 - eps) + eps / y.shape[-1] if eps > 0 else y


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, label_smoothing: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batch mixup with the batch reversed: λ·x + (1 − λ)·x.flip(0); targets smoothed first, then mixed alike.

    ``lam ~ Beta(α, α)`` is drawn by the caller, once per batch (the paper: α = 0.8).
    """
    y = smooth_labels(y, label_smoothing)
    return x * lam + x.flip(0) * (1.0 - lam), y * lam + y.flip(0) * (1.0 - lam)


# ----------------------------------------------------------------------------------
# samplers: parameters drawn on a CPU generator
# ----------------------------------------------------------------------------------
def _cpu_generator(generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"augmentation parameters are drawn on a CPU generator (same stream on every device), got one on {generator.device}")
    return generator


def _uniform(n: int, low: float, high: float, generator: Optional[torch.Generator], *shape: int) -> torch.Tensor:
    u = torch.rand(n, *shape, generator=generator, dtype=torch.float64)
    return low + (high - low) * u


def _below(u: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """U{0..count-1} from u ~ U[0, 1) (count >= 1)."""
    return torch.minimum((u * count).long(), count - 1)


def sample_roll(batch: int, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B,) int64 shifts ~ U{-L..L-1} (DCLS-Audio's ``randint(-L, L)``)."""
    return torch.randint(-num_samples, num_samples, (batch,), generator=_cpu_generator(generator))


def sample_speed(
    batch: int,
    num_samples: int,
    generator: Optional[torch.Generator] = None,
    p: float = 0.5,
    low: float = 0.5,
    high: float = 1.5,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B,) float64 rates and (B,) int64 offsets for :func:`speed_perturb`.

    With probability p a clip gets rate ~ U(low, high), and the offset that pads it with
    ``left ~ U{0..missing}`` zeros in front (offset = -left) or crops from ``start ~ U{0..n-L-1}``;
    otherwise rate 1 and offset 0 (the identity).
    """
    g = _cpu_generator(generator)
    on = torch.rand(batch, generator=g, dtype=torch.float64) < p
    rate = torch.where(on, _uniform(batch, low, high, g), torch.ones(batch, dtype=torch.float64))
    n = stretched_length(rate, num_samples)
    u = torch.rand(batch, generator=g, dtype=torch.float64)
    left = _below(u, (num_samples - n).clamp_min(0) + 1)  # U{0..missing}
    start = _below(u, (n - num_samples).clamp_min(1))  # U{0..n-L-1}
    offset = torch.where(n < num_samples, -left, torch.where(n > num_samples, start, torch.zeros_like(n)))
    return rate, offset


def sample_erase(
    batch: int,
    height: int,
    width: int,
    generator: Optional[torch.Generator] = None,
    p: float = 0.25,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    max_aspect: float = 1 / 0.3,
    attempts: int = 10,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) int64 top, left, height, width of one rectangle per clip on a (height x width) image.

    timm's ``RandomErasing`` with ``max_count=1``: with probability p, ``attempts`` draws of
    (area, aspect); the first whose rounded size fits strictly inside the image is placed
    uniformly. Clips without a rectangle get height = width = 0.
    """
    g = _cpu_generator(generator)
    on = torch.rand(batch, generator=g, dtype=torch.float64) < p
    area = _uniform(batch, min_area, max_area, g, attempts) * (height * width)  # (B, attempts)
    aspect = torch.exp(_uniform(batch, math.log(min_aspect), math.log(max_aspect), g, attempts))  # (B, attempts)
    h = torch.sqrt(area * aspect).round().long()  # round half to even, as Python's round()
    w = torch.sqrt(area / aspect).round().long()
    fits = (h < height) & (w < width)  # (B, attempts)
    first = fits.long().argmax(1, keepdim=True)  # first fitting attempt (0 if none)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)  # (B,)
    keep = on & fits.any(1)
    h, w = torch.where(keep, h, 0), torch.where(keep, w, 0)
    top = _below(torch.rand(batch, generator=g, dtype=torch.float64), height - h + 1)  # U{0..H-h}
    left = _below(torch.rand(batch, generator=g, dtype=torch.float64), width - w + 1)  # U{0..W-w}
    return torch.where(keep, top, 0), torch.where(keep, left, 0), h, w


# ----------------------------------------------------------------------------------
# the paper's training front end
# ----------------------------------------------------------------------------------
class DclsAudioAugment(nn.Module):
    """Waveform batch (B, L) -> augmented normalised log-mel (B, 1, n_mels, T), as DCLS-Audio trains.

    Wraps the front end (``LogMel``, the same object evaluation and the service use):
    roll and speed perturbation on the waveform (composed into one gather), the power
    spectrogram, erasing, then mel/dB/normalisation. In eval mode it is the plain front
    end. ``forward`` draws the parameters from ``generator`` (CPU; torch's global RNG
    when None) unless ``params`` are given; :meth:`sample` draws them alone.
    """

    def __init__(self, front_end: nn.Module, config: DclsAudioAugmentConfig = DclsAudioAugmentConfig()):
        super().__init__()
        self.front_end = front_end
        self.config = config

    def sample(self, batch: int, num_samples: int, generator: Optional[torch.Generator] = None) -> AugmentParams:
        """CPU parameters for a batch of ``batch`` clips of ``num_samples`` samples."""
        cfg = self.config
        shift = sample_roll(batch, num_samples, generator) if cfg.roll else torch.zeros(batch, dtype=torch.long)
        rate, offset = sample_speed(batch, num_samples, generator, cfg.speed_p, cfg.speed_min, cfg.speed_max)
        top, left, height, width = sample_erase(
            batch, self.front_end.n_freqs, self.front_end.num_frames(num_samples), generator,
            cfg.erase_p, cfg.erase_min_area, cfg.erase_max_area, cfg.erase_min_aspect, cfg.erase_max_aspect,
            cfg.erase_attempts,
        )
        return AugmentParams(shift, rate, offset, top, left, height, width)

    def augment_waveform(self, wave: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """(B, L) -> (B, L): speed_perturb(roll(wave, shift), rate, offset), one gather."""
        _check_wave(wave, params.shift, params.rate, params.offset)
        L = wave.shape[1]
        params = params.to(wave.device)
        # The clip twice, then a zero: rolled[k] = wave[(k - shift) mod L] = ext[k + L - (shift mod L)]
        # with no modulo per sample, and padding reads the zero at 2L.
        ext = torch.cat([wave, wave, wave.new_zeros(wave.shape[0], 1)], 1)  # (B, 2L + 1)
        base = L - torch.remainder(params.shift, L)  # (B,)
        return torch.gather(ext, 1, _speed_source(params.rate, params.offset, L, base, 2 * L))  # (B, L)

    def augment_power(self, power: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """(B, n_freqs, T) -> (B, n_freqs, T) with each clip's rectangle erased."""
        return erase(power, params.erase_top, params.erase_left, params.erase_height, params.erase_width, self.config.erase_value)

    def forward(
        self,
        wave: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        params: Optional[AugmentParams] = None,
    ) -> torch.Tensor:
        if not self.training:
            return self.front_end(wave)
        if params is None:
            params = self.sample(wave.shape[0], wave.shape[-1], generator)
        x = self.augment_waveform(wave, params)  # (B, L)
        power = self.augment_power(self.front_end.power_spectrogram(x), params)  # (B, n_freqs, T)
        return self.front_end.from_power(power)  # (B, 1, n_mels, T)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.config.to_dict().items())
