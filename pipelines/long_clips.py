"""Clips longer than the clip length: which window of which clip each training item is.

A store built with ``--max-seconds`` keeps long clips whole; training items are always
one clip length long (``window`` units along the time axis: samples or frames).
``long_clips`` says how items are cut from the clips:

* ``first`` -- one item per clip, its first window (what a store without
  ``--max-seconds`` holds anyway);
* ``random_crop`` -- one item per clip, a window at a random start drawn per epoch
  from (seed, epoch, part, clip): the same whatever the number of processes or
  workers, and again after a resume;
* ``windows`` -- every window of every clip is an item with the clip's labels: windows
  start every ``stride`` units (one clip length); a rest of at least half a window
  becomes one more window that ends at the clip's end, a shorter rest is dropped.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

LONG_CLIP_MODES = ("first", "random_crop", "windows")


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Starts of the ``windows`` items of a clip of ``length`` units (at least one)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    rest = length - (starts[-1] + window)
    if rest * 2 >= window:
        starts.append(length - window)
    return starts


class ClipWindows:
    """Item -> (clip, start) for one store: ``len(self)`` items, ``self[i]`` their window.

    ``lengths``: (N,) clip lengths in units; ``salt`` tells apart the parts of a training
    set (their clips are numbered from 0 each) in the random crops.
    """

    def __init__(self, lengths: np.ndarray, window: int, stride: int, mode: str = "first", seed: int = 0, salt: int = 0):
        if mode not in LONG_CLIP_MODES:
            raise ValueError(f"long_clips must be one of {', '.join(LONG_CLIP_MODES)}, got {mode!r}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.window, self.stride, self.mode, self.seed, self.salt = int(window), int(stride), mode, int(seed), int(salt)
        self._starts = None  # random_crop: this epoch's start of every clip
        if mode == "windows":
            per_clip = [window_starts(int(n), self.window, self.stride) for n in self.lengths]
            counts = np.array([len(s) for s in per_clip], dtype=np.int64)
            self._clip = np.repeat(np.arange(len(per_clip), dtype=np.int64), counts)
            self._start = np.fromiter((s for starts in per_clip for s in starts), dtype=np.int64, count=len(self._clip))
            self._window_no = np.arange(len(self._clip)) - np.repeat(np.cumsum(counts) - counts, counts)  # k of clip's k-th window
        self.set_epoch(0)

    @property
    def items_per_clip(self) -> np.ndarray:
        """(N,) items each clip gives: its windows (``windows``), else 1."""
        if self.mode != "windows":
            return np.ones(len(self.lengths), dtype=np.int64)
        return np.bincount(self._clip, minlength=len(self.lengths))

    @property
    def num_long(self) -> int:
        """Clips longer than one window."""
        return int((self.lengths > self.window).sum())

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's random crops (``random_crop`` only)."""
        if self.mode == "random_crop":
            room = np.maximum(self.lengths - self.window, 0) + 1  # possible starts per clip
            u = np.random.default_rng([self.seed, int(epoch), self.salt, 0xC409]).random(len(self.lengths))
            self._starts = np.minimum((u * room).astype(np.int64), room - 1)

    def __len__(self) -> int:
        return len(self._clip) if self.mode == "windows" else len(self.lengths)

    def __getitem__(self, i: int) -> Tuple[int, int]:
        if self.mode == "windows":
            return int(self._clip[i]), int(self._start[i])
        if not 0 <= i < len(self.lengths):
            raise IndexError(f"item {i} out of range for {len(self.lengths)} clips")
        return int(i), int(self._starts[i]) if self._starts is not None else 0

    def item_ids(self, clip_ids: List[str]) -> List[str]:
        """One id per item: the clip's, with ``#k`` for its k-th window in ``windows`` mode."""
        if self.mode != "windows":
            return list(clip_ids)
        return [f"{clip_ids[c]}#{k}" for c, k in zip(self._clip.tolist(), self._window_no.tolist())]

    def describe(self, seconds_per_unit: float) -> str:
        """What was done, for the log and the run summary."""
        clip = f"{self.window * seconds_per_unit:.3g} s" if self.window else "one clip"
        if not self.num_long:
            return f"no clip is longer than {clip}"
        longest = f"{self.lengths.max() * seconds_per_unit:.1f} s"
        what = {
            "first": f"each is read as its first {clip}",
            "random_crop": f"each epoch reads a random {clip} window of each",
            "windows": f"every {clip} window is an item: {len(self)} items from {len(self.lengths)} clips",
        }[self.mode]
        return f"{self.num_long} of {len(self.lengths)} clips are longer than {clip} (up to {longest}); long_clips={self.mode}: {what}"
