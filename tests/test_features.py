"""audio_dcls.features: parity with the torchaudio oracle, shapes, buffers, augmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio  # the oracle of the front end (the test extra installs it)

from audio_dcls.features import AugmentConfig, LogMel, LogMelAugment, LogMelConfig, mel_filterbank


def oracle(x: torch.Tensor, c: LogMelConfig = LogMelConfig()) -> torch.Tensor:
    spec = torchaudio.transforms.Spectrogram(n_fft=c.n_fft, win_length=c.win_length, hop_length=c.hop_length, power=2.0, center=True)
    mel = torchaudio.transforms.MelScale(n_mels=c.n_mels, sample_rate=c.sample_rate, f_min=c.f_min, f_max=c.f_max, n_stft=c.n_fft // 2 + 1, mel_scale="htk", norm=None)
    db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
    return (db(mel(spec(x))) - c.mean) / c.std  # (B, n_mels, T)


def test_matches_torchaudio_within_1e4():
    g = torch.Generator().manual_seed(0)
    n = 32000 * 2
    t = torch.arange(n) / 32000
    x = torch.stack([
        0.1 * torch.randn(n, generator=g),  # noise
        0.5 * torch.sin(2 * math.pi * 1000 * t) + 0.01 * torch.randn(n, generator=g),  # tone
        torch.zeros(n),  # silence: the 1e-10 floor
        torch.cat([torch.zeros(n // 2), 0.9 * torch.sign(torch.sin(2 * math.pi * 220 * t[: n // 2]))]),  # onset, square
    ])
    out = LogMel()(x)
    assert out.shape == (4, 1, 128, n // 320 + 1)
    assert (out[:, 0] - oracle(x)).abs().max().item() <= 1e-4


def test_ten_seconds_give_1001_frames_and_silence_is_the_hand_computed_floor():
    lm = LogMel()
    out = lm(torch.zeros(2, 320000))
    assert out.shape == (2, 1, 128, 1001) == (2, 1, lm.config.n_mels, lm.config.num_frames)
    floor = (10 * math.log10(1e-10) + 18.2696) / 30.5735  # -2.67323...
    assert torch.allclose(out, torch.full_like(out, floor), atol=1e-6)
    assert lm(torch.zeros(320000)).shape == (1, 1, 128, 1001)  # unbatched input


def test_filterbank_is_librosa_htk_and_agrees_with_torchaudio():
    fb = mel_filterbank(LogMelConfig())  # (513, 128)
    ta = torchaudio.functional.melscale_fbanks(513, 50.0, 14000.0, 128, 32000, norm=None, mel_scale="htk").numpy()
    assert fb.shape == (513, 128) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, ta, atol=5e-5)
    # triangles peak at 1 (unnormalised) and nothing lies outside 50 Hz - 14 kHz
    assert abs(fb.max() - 1.0) < 0.01
    freqs = np.arange(513) * 32000 / 1024
    assert fb[(freqs < 50) | (freqs > 14000)].max() == 0
    # the Slaney scale (librosa's default) would be a different front end altogether
    import librosa

    slaney = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=128, fmin=50, fmax=14000, htk=False, norm=None).T
    assert np.abs(slaney - fb).max() > 0.5


def test_buffers_are_not_saved_and_follow_the_module():
    lm = LogMel()
    assert lm.state_dict() == {}
    assert {n for n, _ in lm.named_buffers()} == {"window", "mel_fb"}
    x = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
    ref = lm(x)
    half = LogMel().half()  # buffers follow the module; the STFT still runs in float32
    assert half.mel_fb.dtype == torch.float16
    out = half(x.half())
    assert out.dtype == torch.float16
    assert (out.float() - ref).abs().max() < 0.05  # 1.5 dB: fp16 input and filterbank weights


def test_config_round_trip_and_frames():
    c = LogMelConfig(clip_seconds=5.0)
    assert LogMelConfig.from_dict(c.to_dict()) == c
    assert c.num_frames == 501
    with pytest.raises(ValueError, match="unknown front-end settings"):
        LogMelConfig.from_dict({**c.to_dict(), "fmin": 3})
    assert AugmentConfig.from_dict(AugmentConfig(time_masks=1).to_dict()) == AugmentConfig(time_masks=1)


def test_numpy_convenience_equals_forward():
    lm = LogMel()
    x = np.random.default_rng(1).standard_normal((3, 16000)).astype(np.float32) * 0.1
    np.testing.assert_allclose(lm.compute(x, batch_size=2), lm(torch.from_numpy(x))[:, 0].numpy(), atol=1e-6)
    assert lm.compute(x[0]).shape == (128, 51)


def test_short_input_is_padded_not_an_error():
    out = LogMel()(torch.randn(1, 100))
    assert out.shape == (1, 1, 128, 513 // 320 + 1)
    assert torch.isfinite(out).all()


def test_augmentation_only_in_training_mode():
    x = LogMel()(0.1 * torch.randn(2, 32000, generator=torch.Generator().manual_seed(0)))  # (2, 1, 128, 101)
    aug = LogMelAugment(AugmentConfig())
    assert torch.equal(aug.eval()(x), x)
    aug.train()
    a = aug(x, generator=torch.Generator().manual_seed(1))
    b = aug(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)  # reproducible with a generator, and not a no-op


def test_masks_gain_and_roll_do_what_they_say():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 128, 200, generator=g)
    only_masks = LogMelAugment(AugmentConfig(freq_masks=2, freq_mask_bands=8, time_masks=2, time_mask_frames=20, roll=False, gain_db=0.0, mask_value=-7.0)).train()
    y = only_masks(x, generator=g)
    masked = y == -7.0
    # masks are whole stripes: a masked cell's full band row or full frame column is masked
    for b in range(4):
        rows = masked[b, 0].all(dim=1)
        cols = masked[b, 0].all(dim=0)
        assert torch.equal(masked[b, 0], rows[:, None] | cols[None, :])
        assert rows.sum() <= 16 and cols.sum() <= 40
    assert torch.equal(y[~masked], x[~masked])

    only_gain = LogMelAugment(AugmentConfig(freq_masks=0, time_masks=0, roll=False, gain_db=6.0), db_per_unit=30.5735).train()
    d = only_gain(x, generator=g) - x
    per_clip = d.flatten(1)
    assert torch.allclose(per_clip, per_clip[:, :1].expand_as(per_clip), atol=1e-5)  # one offset per clip
    assert (per_clip[:, 0].abs() <= 6.0 / 30.5735 + 1e-6).all()

    only_roll = LogMelAugment(AugmentConfig(freq_masks=0, time_masks=0, roll=True, gain_db=0.0)).train()
    r = only_roll(x, generator=g)
    for b in range(4):
        assert any(torch.equal(r[b], torch.roll(x[b], s, dims=-1)) for s in range(200))
    assert torch.equal(only_roll.eval()(x), x)


def logmel_before_the_split(lm: LogMel, waveform: torch.Tensor) -> torch.Tensor:
    """LogMel.forward as it was before power_spectrogram/from_power (commit 22b18d6), step by step."""
    c = lm.config
    waveform = waveform.unsqueeze(0) if waveform.dim() == 1 else waveform
    x = waveform.to(torch.float32)
    if x.shape[-1] < c.n_fft // 2 + 1:
        x = torch.nn.functional.pad(x, (0, c.n_fft // 2 + 1 - x.shape[-1]))
    half = c.n_fft // 2
    x = torch.cat([x[:, 1 : half + 1].flip(-1), x, x[:, -half - 1 : -1].flip(-1)], dim=-1)
    spec = torch.stft(x, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=lm.window.float(),
                      center=False, normalized=False, onesided=True, return_complex=True)
    spec = spec[:, lm._bins[0] : lm._bins[1]]
    power = spec.real.square().addcmul_(spec.imag, spec.imag)
    mel = torch.matmul(power.transpose(1, 2), lm.mel_fb.float()).transpose(1, 2)
    db = 10.0 * torch.log10(mel.clamp_min(1e-10))
    return ((db - c.mean) / c.std).unsqueeze(1).to(lm.mel_fb.dtype)


def test_forward_is_bit_identical_to_before_the_split():
    """The service's and the stores' numbers do not move: same bits as the pre-split forward."""
    g = torch.Generator().manual_seed(5)
    lm = LogMel()
    for x in (0.1 * torch.randn(3, 320000, generator=g), 0.3 * torch.randn(1, 8000, generator=g),
              torch.randn(1, 100, generator=g), 0.1 * torch.randn(20000, generator=g), torch.zeros(2, 4000)):
        assert torch.equal(lm(x), logmel_before_the_split(lm, x))
    half = LogMel().half()
    x = (0.1 * torch.randn(2, 16000, generator=g)).half()
    assert torch.equal(half(x), logmel_before_the_split(half, x))


def test_power_spectrogram_is_torchaudios_and_from_power_finishes_forward():
    g = torch.Generator().manual_seed(6)
    lm = LogMel()
    x = 0.1 * torch.randn(2, 32000, generator=g)
    power = lm.power_spectrogram(x)
    assert power.shape == (2, 513, 101) and power.dtype == torch.float32 and lm.n_freqs == 513
    ref = torchaudio.transforms.Spectrogram(n_fft=1024, hop_length=320, power=2.0)(x)  # all 513 bins, as the paper erases them
    assert torch.allclose(power, ref, rtol=1e-4, atol=1e-6 * ref.max().item())
    assert torch.equal(lm.from_power(power), lm(x))
    for n in (100, 513, 640, 32000, 32001, 320000):
        assert lm.power_spectrogram(torch.zeros(1, n)).shape[-1] == lm.num_frames(n)
    with pytest.raises(ValueError, match="from_power expects"):
        lm.from_power(power[:, :448])
