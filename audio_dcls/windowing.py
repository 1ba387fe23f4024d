"""Analysis windows over audio of any length: where each window starts, and the padding.

The taggers see fixed windows (10 s, as trained). The service, the Python
:class:`audio_dcls.Tagger` and ``pipelines.embed`` all cut audio with
:func:`plan_windows`, by one rule. With ``L`` samples of audio, windows of
``W`` samples and a hop of ``H`` samples (``H <= W``):

* ``L <= W`` (no longer than one window): one window at 0, zero-padded to
  ``W`` samples -- as AudioSet's short clips are in training;
* ``L > W``: windows at 0, H, 2H, ... for as long as they fit whole (the
  last regular start is ``floor((L - W) / H) * H``); when that window ends
  before the audio does, one more window ends exactly at the end (start
  ``L - W``), overlapping its predecessor by more than the hop does.

So no window of audio longer than one window holds padding, every sample is
in some window, and the count is ``1 + ceil((L - W) / H)``. A 10.016 s file
with 10 s windows every 5 s gets windows at 0 s and 0.016 s (not a second one
at 5 s that would be half padding); with a 10 s hop, at 0 s and 0.016 s too
(not at 10 s, 99.8 % padding). This is the sliding inference of PANNs- and
EfficientAT-style tools with the tail window pulled back inside the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from audio_dcls.audio import pad_or_trim

__all__ = [
    "DEFAULT_WINDOW_S",
    "MAX_WINDOW_S",
    "MIN_WINDOW_S",
    "TooManyWindows",
    "WindowPlan",
    "cut_windows",
    "default_hop_s",
    "num_windows",
    "padded_waveform",
    "plan_windows",
    "window_starts",
    "windows",
]

# The window the models are trained on, and the shortest and longest a caller may ask for:
# below ~1.3 s the 16x-strided stem and three 2x downsamplings leave nothing of the time axis.
DEFAULT_WINDOW_S = 10.0
MIN_WINDOW_S = 2.0
MAX_WINDOW_S = 60.0


class TooManyWindows(ValueError):
    """The audio would be cut into more windows than the caller allows."""

    def __init__(self, message: str, count: int, limit: int):
        super().__init__(message)
        self.count = count
        self.limit = limit


def default_hop_s(window_s: float) -> float:
    """Half a window: every moment is heard by two windows (one near the edges)."""
    return window_s / 2.0


def window_starts(length: int, window: int, hop: int) -> List[int]:
    """First sample of each window over ``length`` samples (the module's rule)."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got {window} and {hop}")
    if hop > window:
        raise ValueError(f"the hop ({hop} samples) must not exceed the window ({window}): audio between windows would go unheard")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def num_windows(length: int, window: int, hop: int) -> int:
    """How many windows :func:`window_starts` gives, without listing them."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got {window} and {hop}")
    return 1 if length <= window else 1 + math.ceil((length - window) / hop)


@dataclass(frozen=True)
class WindowPlan:
    starts: Tuple[int, ...]  # first sample of each window
    window: int  # samples per window
    num_samples: int  # samples of the audio itself
    sample_rate: int  # Hz

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    @property
    def padded_length(self) -> int:
        """Samples the waveform is padded to so that every window is whole (only short audio grows)."""
        return max(self.num_samples, self.window)

    def bounds_s(self, i: int) -> Tuple[float, float]:
        """(start, end) of window ``i`` in seconds of the audio; a padded window ends where the audio does."""
        start = self.starts[i]
        return start / self.sample_rate, min(start + self.window, self.num_samples) / self.sample_rate


def plan_windows(num_samples: int, sample_rate: int, window_s: float, hop_s: Optional[float] = None, max_windows: Optional[int] = None) -> WindowPlan:
    """The windows over ``num_samples`` samples at ``sample_rate`` (hop default: half a window).

    Raises ValueError for a window or hop that rounds to no sample or a hop longer than the
    window, and :class:`TooManyWindows` when there would be more than ``max_windows``.
    """
    hop_s = default_hop_s(window_s) if hop_s is None else hop_s
    window, hop = int(round(window_s * sample_rate)), int(round(hop_s * sample_rate))
    if window <= 0 or hop <= 0:
        raise ValueError(f"window_s ({window_s:g}) and hop_s ({hop_s:g}) must give at least one sample at {sample_rate} Hz")
    count = num_windows(num_samples, window, hop)
    if max_windows is not None and count > max_windows:
        raise TooManyWindows(
            f"{num_samples / sample_rate:.1f} s of audio cut every {hop_s:g} s gives {count} windows, more than the limit of {max_windows}",
            count,
            max_windows,
        )
    return WindowPlan(tuple(window_starts(num_samples, window, hop)), window, int(num_samples), int(sample_rate))


def padded_waveform(audio, plan: WindowPlan) -> torch.Tensor:
    """Mono audio (N,) (numpy or torch) -> float32 tensor of ``plan.padded_length`` samples."""
    if isinstance(audio, torch.Tensor):
        return pad_or_trim(audio.detach().to("cpu", torch.float32).contiguous(), plan.padded_length)
    return torch.from_numpy(np.ascontiguousarray(pad_or_trim(np.asarray(audio, dtype=np.float32), plan.padded_length)))


def cut_windows(waveform: torch.Tensor, plan: WindowPlan, first: int = 0, count: Optional[int] = None) -> torch.Tensor:
    """Windows ``first .. first + count`` of a padded waveform (..., N) -> (count, ..., window)."""
    stop = plan.num_windows if count is None else min(plan.num_windows, first + count)
    return torch.stack([waveform[..., s : s + plan.window] for s in plan.starts[first:stop]])


def windows(x, window_s: float, hop_s: float, sr: int = 32000):
    """Cut audio (last axis; numpy or torch) into the windows of :func:`plan_windows`.

    Returns (frames, starts): frames (W, ..., window) like ``x``; starts (W,) float64
    numpy of window start times in seconds.
    """
    plan = plan_windows(x.shape[-1], sr, window_s, hop_s)
    padded = pad_or_trim(x, plan.padded_length)
    cut = [padded[..., s : s + plan.window] for s in plan.starts]
    frames = np.stack(cut) if isinstance(x, np.ndarray) else torch.stack(cut)
    return frames, np.asarray(plan.starts, dtype=np.float64) / float(sr)
