"""A release folder as a tagger in one call: scores and an embedding for a file or an array.

::

    from audio_dcls import Tagger

    tagger = Tagger("runs/release/convnext-tiny-dcls-paper", device="cuda")
    scores, embedding = tagger.tag("dog_bark.wav")         # (527,) probabilities, (768,) vector
    for t in tagger.top_tags(scores, 5):
        print(f"{t['name']:<30} {t['score']:.3f}")
    windows = tagger.tag_windows(waveform, sample_rate=44100)  # per window: times, scores, embeddings

It is the service without HTTP: the same release loading and model
preparation (:func:`audio_dcls.inference.prepare_release`), the same front
end, the same windows (:func:`audio_dcls.windowing.plan_windows`: 10 s every
5 s by default, the last one ending at the end of the audio, a clip shorter
than a window padded to one) and the same clip reading (a class's maximum
over the windows, the mean embedding), so ``tag`` gives what ``POST /v1/tag``
and ``POST /v1/embed`` answer for the same file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from audio_dcls.audio import load_audio, resample
from audio_dcls.inference import PreparedRelease, clip_embedding, clip_scores, prepare_release, top_tags
from audio_dcls.windowing import DEFAULT_WINDOW_S, MAX_WINDOW_S, MIN_WINDOW_S, WindowPlan, cut_windows, padded_waveform, plan_windows

__all__ = ["Tagger", "WindowOutputs"]

AudioArg = Union[str, os.PathLike, bytes, np.ndarray, torch.Tensor]


@dataclass
class WindowOutputs:
    plan: WindowPlan  # where the windows lie (samples at the model's rate)
    scores: np.ndarray  # (W, C) float32 class probabilities per window
    embeddings: np.ndarray  # (W, D) float32 embedding per window

    @property
    def start_s(self) -> np.ndarray:
        """(W,) where each window starts, seconds."""
        return np.array([self.plan.bounds_s(i)[0] for i in range(self.plan.num_windows)])

    @property
    def end_s(self) -> np.ndarray:
        """(W,) where each window ends (the audio's end for a padded one), seconds."""
        return np.array([self.plan.bounds_s(i)[1] for i in range(self.plan.num_windows)])


class Tagger:
    """Tags audio with one release folder.

    release_dir: a release folder (training, ``pipelines.import_checkpoint``).
    device: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.
    window_s, hop_s: analysis windows (default 10 s, hop half a window, as the service).
    batch_size: windows per forward pass (the scores do not depend on it).
    """

    def __init__(
        self,
        release_dir: Union[str, os.PathLike],
        device: Union[str, torch.device] = "auto",
        window_s: float = DEFAULT_WINDOW_S,
        hop_s: Optional[float] = None,
        batch_size: int = 16,
    ):
        if not (MIN_WINDOW_S <= window_s <= MAX_WINDOW_S):
            raise ValueError(f"window_s must be in {MIN_WINDOW_S:g}-{MAX_WINDOW_S:g} s, got {window_s:g}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.prepared: PreparedRelease = prepare_release(release_dir, device)
        self.window_s = float(window_s)
        self.hop_s = hop_s
        self.batch_size = int(batch_size)
        plan_windows(1, self.sample_rate, self.window_s, self.hop_s)  # a bad hop fails here, not at the first file

    # --- what the model is --------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.prepared.release.name

    @property
    def labels(self) -> List[Tuple[str, str]]:
        """(AudioSet MID, display name) of each score, in order."""
        return self.prepared.labels

    @property
    def sample_rate(self) -> int:
        return self.prepared.sample_rate

    @property
    def embedding_dim(self) -> int:
        return self.prepared.embedding_dim

    @property
    def device(self) -> torch.device:
        return self.prepared.device

    # --- tagging ---------------------------------------------------------------------------
    def load(self, audio: AudioArg, sample_rate: Optional[int] = None) -> np.ndarray:
        """A file (path or bytes, any format the service reads) or an array -> mono float32 at the model's rate.

        An array is (samples,) or (channels, samples) at ``sample_rate`` Hz, float in [-1, 1]
        or integer PCM; a file's rate is read from the file (``sample_rate`` must then be None).
        """
        if isinstance(audio, (str, os.PathLike, bytes, bytearray)):
            if sample_rate is not None:
                raise ValueError("sample_rate is for arrays; a file's own rate is read from the file")
            return load_audio(Path(audio) if not isinstance(audio, (bytes, bytearray)) else bytes(audio), target_sr=self.sample_rate)
        return self._from_array(audio, sample_rate)

    def _from_array(self, audio, sample_rate: Optional[int]) -> np.ndarray:
        if sample_rate is None:
            raise ValueError("give sample_rate= with an array (the rate its samples were taken at)")
        x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        if x.ndim == 2:
            if x.shape[0] > x.shape[1]:
                raise ValueError(f"a 2-D array is (channels, samples); got shape {x.shape} (transpose it)")
            x = x.mean(axis=0)
        elif x.ndim != 1:
            raise ValueError(f"expected (samples,) or (channels, samples), got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError("the array holds no samples")
        if np.issubdtype(x.dtype, np.unsignedinteger):
            raise ValueError(f"unsigned samples ({x.dtype}): give floats in [-1, 1] or signed PCM")
        if np.issubdtype(x.dtype, np.signedinteger):
            x = x / float(np.iinfo(x.dtype).max + 1)  # int16 PCM / 32768
        x = np.asarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError("the array holds NaN or infinite samples")
        return resample(x, int(sample_rate), self.sample_rate)

    def tag_windows(self, audio: AudioArg, sample_rate: Optional[int] = None) -> WindowOutputs:
        """Scores and embeddings of every window of ``audio`` (see :meth:`load` for what it may be)."""
        samples = self.load(audio, sample_rate)
        plan = plan_windows(samples.shape[0], self.sample_rate, self.window_s, self.hop_s)
        waveform = padded_waveform(samples, plan)
        scores, embeddings = [], []
        for first in range(0, plan.num_windows, self.batch_size):
            out = self.prepared.infer(cut_windows(waveform, plan, first, self.batch_size))  # (B, window) in
            scores.append(out.scores.float().cpu().numpy())
            embeddings.append(out.embeddings.float().cpu().numpy())
        return WindowOutputs(plan, np.concatenate(scores), np.concatenate(embeddings))

    def tag(self, audio: AudioArg, sample_rate: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """-> (scores (C,), embedding (D,)): each class's maximum over the windows, the mean embedding."""
        w = self.tag_windows(audio, sample_rate)
        return clip_scores(w.scores), clip_embedding(w.embeddings)

    def top_tags(self, scores: np.ndarray, k: int = 10, threshold: Optional[float] = None) -> List[dict]:
        """The ``k`` best classes of a score vector, best first: ``[{"index", "mid", "name", "score"}]``."""
        return top_tags(np.asarray(scores), self.labels, k, threshold)

    def __repr__(self) -> str:
        r = self.prepared.release
        return f"Tagger({r.name!r}, arch={r.arch}, classes={len(r.labels)}, embedding_dim={self.embedding_dim}, device={self.device})"
