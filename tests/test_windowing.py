"""audio_dcls.windowing: the one window rule of the service, the Tagger and pipelines.embed.

The rule, for L samples, windows of W and a hop of H: L <= W gives one window at 0
padded to W; longer audio gets windows at 0, H, 2H, ... while they fit whole, plus one
ending exactly at L when the last of those ends before it. Edges are checked by hand,
the invariants over many lengths.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audio_dcls.windowing import TooManyWindows, cut_windows, num_windows, padded_waveform, plan_windows, window_starts, windows

SR = 32000
W, H = 10 * SR, 5 * SR


@pytest.mark.parametrize(
    "seconds, hop_s, starts_s",
    [
        (3.0, 5.0, [0.0]),  # shorter than a window: one window, padded
        (10.0, 5.0, [0.0]),  # exactly one window
        (10.016, 5.0, [0.0, 0.016]),  # one window + 512 samples: the second ends at the end, no padding
        (10.016, 10.0, [0.0, 0.016]),  # the same with a hop of a whole window (was: a window at 10 s, 99.8 % padding)
        (12.5, 5.0, [0.0, 2.5]),
        (15.0, 5.0, [0.0, 5.0]),  # the regular windows end exactly at the end: nothing added
        (25.5, 5.0, [0.0, 5.0, 10.0, 15.0, 15.5]),  # a long file: hop-spaced, then one ending at 25.5 s
        (30.0, 10.0, [0.0, 10.0, 20.0]),
    ],
)
def test_hand_computed_plans(seconds, hop_s, starts_s):
    n = int(round(seconds * SR))
    plan = plan_windows(n, SR, 10.0, hop_s)
    assert [s / SR for s in plan.starts] == pytest.approx(starts_s, abs=1e-9)
    assert plan.num_windows == num_windows(n, W, int(hop_s * SR)) == len(starts_s)
    assert plan.padded_length == max(n, W)
    last_start, last_end = plan.bounds_s(plan.num_windows - 1)
    assert last_end == pytest.approx(seconds, abs=1e-9)  # every plan reaches the end of the audio, truthfully
    if seconds >= 10.0:
        assert last_end - last_start == pytest.approx(10.0)  # a whole window of audio, no padding
    else:
        assert plan.bounds_s(0) == (0.0, pytest.approx(seconds))  # the padded window ends where the audio does


def test_invariants_over_many_lengths():
    rng = np.random.default_rng(0)
    for window, hop in ((100, 50), (100, 100), (100, 33), (64, 1)):
        for length in list(range(1, 400)) + rng.integers(401, 5000, 50).tolist():
            starts = window_starts(length, window, hop)
            assert len(starts) == num_windows(length, window, hop)
            assert starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:]))
            assert all(b - a <= hop for a, b in zip(starts, starts[1:]))  # no gap wider than the hop
            assert all(b - a == hop for a, b in zip(starts[:-1], starts[1:-1]))  # only the last step may be shorter
            if length <= window:
                assert starts == [0]
            else:
                assert starts[-1] + window == length  # the last window ends at the end: no padding
                covered = np.zeros(length, bool)
                for s in starts:
                    assert s + window <= length
                    covered[s : s + window] = True
                assert covered.all()


def test_bad_windows_and_the_window_limit():
    with pytest.raises(ValueError, match="must not exceed the window"):
        plan_windows(10 * SR, SR, 4.0, 5.0)
    with pytest.raises(ValueError, match="at least one sample"):
        plan_windows(10 * SR, SR, 4.0, 1e-9)
    # 10 minutes at 8 kHz in 2 s windows every 0.5 s: 1 + ceil(598 / 0.5) = 1197 windows.
    with pytest.raises(TooManyWindows) as info:
        plan_windows(600 * 8000, 8000, 2.0, 0.5, max_windows=1000)
    assert info.value.count == 1197 and info.value.limit == 1000 and "1197 windows" in str(info.value)
    assert plan_windows(600 * 8000, 8000, 2.0, 0.5, max_windows=1197).num_windows == 1197


def test_padding_and_cutting():
    audio = np.arange(1, 26, dtype=np.float32)  # 2.5 s at 10 Hz
    plan = plan_windows(25, 10, window_s=1.0, hop_s=0.5)
    assert plan.starts == (0, 5, 10, 15)
    wave = padded_waveform(audio, plan)
    assert wave.dtype == torch.float32 and wave.shape == (25,)  # long audio is never padded
    cut = cut_windows(wave, plan)
    assert cut.shape == (4, 10)
    np.testing.assert_array_equal(cut[3].numpy(), audio[15:25])
    np.testing.assert_array_equal(cut_windows(wave, plan, first=1, count=2).numpy(), cut[1:3].numpy())
    short = plan_windows(4, 10, 1.0, 0.5)
    padded = padded_waveform(torch.from_numpy(audio[:4]), short)
    np.testing.assert_array_equal(padded.numpy(), np.concatenate([audio[:4], np.zeros(6, np.float32)]))


def test_windows_cuts_numpy_and_torch_alike():
    sr = 10
    x = np.arange(1, 24, dtype=np.float32)  # 2.3 s
    frames, starts = windows(x, window_s=1.0, hop_s=0.5, sr=sr)
    assert frames.shape == (4, 10)
    np.testing.assert_array_equal(starts, [0.0, 0.5, 1.0, 1.3])  # the last window pulled back to end at 2.3 s
    np.testing.assert_array_equal(frames[-1], x[13:23])
    frames, starts = windows(x[:4], 1.0, 0.5, sr)  # shorter than one window: one padded window
    assert frames.shape == (1, 10) and starts.tolist() == [0.0]
    np.testing.assert_array_equal(frames[0], np.concatenate([x[:4], np.zeros(6)]))
    stereo = np.stack([x, -x])
    sf, _ = windows(stereo, 1.0, 0.5, sr)
    assert sf.shape == (4, 2, 10) and np.array_equal(sf[:, 1], -sf[:, 0])
    tf, _ = windows(torch.from_numpy(x), 1.0, 0.5, sr)
    assert isinstance(tf, torch.Tensor) and torch.equal(tf, torch.from_numpy(windows(x, 1.0, 0.5, sr)[0]))
