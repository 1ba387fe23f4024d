"""The log-mel front end in standard operators only, for ONNX graphs.

:class:`DftLogMel` computes what :class:`audio_dcls.features.LogMel` computes
(same settings, same reflect-padded centred frames, same HTK filterbank, dB
floor and normalisation), with one change of method: the STFT is a strided
1-D convolution of the padded waveform with a windowed real DFT basis (a
cosine and a sine row per frequency bin, only the bins some mel triangle
covers). Framing, windowing and the DFT become a single ``Conv``, so the graph
needs no complex numbers and no ``STFT``/``DFT`` operator (opset 17 and
later, not implemented by every runtime). torchlibrosa (PANNs' front end)
computes its STFT the same way.

The direct DFT accumulates 1024 float32 products per bin where an FFT needs
about log2(1024) rounding stages, so it differs from ``torch.stft``: by about
5e-6 (normalised units) on white noise, up to about 2e-3 (0.06 dB) in the
quietest bands of signals with ~100 dB between bands, where PyTorch's own
float32 STFT is already 1.7e-3 from a float64 one.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from .features import LogMelConfig, mel_filterbank

__all__ = ["DftLogMel", "dft_basis"]


def dft_basis(config: LogMelConfig, first_bin: int, end_bin: int) -> np.ndarray:
    """(2 * bins, n_fft) float64 windowed DFT rows: cosines, then minus sines.

    Row k of the first half times a frame gives Re X[k], of the second Im X[k].
    The periodic Hann window of ``win_length`` sits centred in ``n_fft``, as in
    ``torch.stft``.
    """
    n_fft = config.n_fft
    window = np.zeros(n_fft)
    left = (n_fft - config.win_length) // 2
    window[left : left + config.win_length] = torch.hann_window(config.win_length, dtype=torch.float64).numpy()
    k = np.arange(first_bin, end_bin, dtype=np.int64)[:, None]
    n = np.arange(n_fft, dtype=np.int64)[None, :]
    # k*n reduced mod n_fft in integers first: the angle stays in [0, 2*pi).
    angle = (2.0 * math.pi / n_fft) * ((k * n) % n_fft)  # (bins, n_fft)
    return np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])


class DftLogMel(nn.Module):
    """Waveform (B, samples) -> normalised log-mel (B, 1, n_mels, T), ONNX-exportable.

    T = samples // hop_length + 1, as for LogMel. Clips need at least
    ``n_fft // 2 + 1`` samples (the reflect padding); unlike LogMel this module
    does not zero-pad shorter ones, since a graph cannot branch on the length.
    The basis and filterbank are non-persistent float32 buffers.
    """

    def __init__(self, config: LogMelConfig = LogMelConfig()):
        super().__init__()
        if config.win_length > config.n_fft:
            raise ValueError(f"win_length {config.win_length} exceeds n_fft {config.n_fft}")
        self.config = config
        fb = mel_filterbank(config)  # (n_freqs, n_mels)
        used = np.flatnonzero(fb.any(axis=1))  # bins no triangle covers add nothing
        first, end = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, fb.shape[0])
        self.num_bins = end - first
        basis = dft_basis(config, first, end)[:, None, :]  # (2 * bins, 1, n_fft)
        self.register_buffer("basis", torch.from_numpy(basis.astype(np.float32)), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(np.ascontiguousarray(fb[first:end].T)), persistent=False)  # (n_mels, bins)

    def power_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> |STFT|^2 of the covered bins, (B, bins, T)."""
        half = self.config.n_fft // 2
        x = waveform.to(torch.float32)  # (B, N)
        x = torch.cat([x[:, 1 : half + 1].flip(-1), x, x[:, -half - 1 : -1].flip(-1)], dim=-1)  # (B, N + n_fft)
        spec = nn.functional.conv1d(x.unsqueeze(1), self.basis, stride=self.config.hop_length)  # (B, 2 * bins, T)
        real, imag = spec[:, : self.num_bins], spec[:, self.num_bins :]
        return real * real + imag * imag

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"DftLogMel expects (batch, samples) audio, got shape {tuple(waveform.shape)}")
        cfg = self.config
        power = self.power_spectrogram(waveform)  # (B, bins, T)
        mel = torch.matmul(self.mel_fb, power)  # (B, n_mels, T)
        db = 10.0 * torch.log10(mel.clamp_min(1e-10))
        return ((db - cfg.mean) / cfg.std).unsqueeze(1)  # (B, 1, n_mels, T)

    def extra_repr(self) -> str:
        c = self.config
        return f"sample_rate={c.sample_rate}, n_fft={c.n_fft}, hop_length={c.hop_length}, n_mels={c.n_mels}, bins={self.num_bins}"
