"""audio_dcls.augment: each transform against a per-clip computation, the samplers' distributions
(tolerances from the sample size, fixed seeds), timm's RandomErasing as the oracle of the
erasing sampler, and the batched DclsAudioAugment against clip-by-clip application."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from audio_dcls.augment import (
    AugmentParams,
    DclsAudioAugment,
    DclsAudioAugmentConfig,
    erase,
    mixup,
    roll,
    sample_erase,
    sample_roll,
    sample_speed,
    smooth_labels,
    speed_index,
    speed_perturb,
    stretched_length,
)
from audio_dcls.features import LogMel

Z = 4.5  # tolerance in standard errors of the estimate; every test has fixed seeds
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mean(values: torch.Tensor, mean: float, var: float, slack: float = 0.0) -> None:
    """Sample mean within Z standard errors of ``mean`` (population variance ``var``)."""
    values = values.double()
    tol = Z * math.sqrt(var / values.numel()) + slack
    assert abs(values.mean().item() - mean) <= tol, (values.mean().item(), mean, tol)


def assert_uniform_moments(values: torch.Tensor, low: float, high: float, slack: float = 0.0) -> None:
    """Mean and variance of draws from U(low, high): Var(mean) = a²/12n, Var(s²) ≈ (a⁴/80 − a⁴/144)/n."""
    a, n = high - low, values.numel()
    assert_mean(values, (low + high) / 2, a * a / 12, slack)
    var_tol = Z * a * a * math.sqrt((1 / 80 - 1 / 144) / n) + slack
    assert abs(values.double().var().item() - a * a / 12) <= var_tol


def dcls_audio_speed(x: torch.Tensor, rate: float, offset: int) -> torch.Tensor:
    """One clip (L,) as DCLS-Audio's SpeedPerturbation transforms it (the index rule in float64)."""
    L = x.numel()
    idx = torch.arange(0, L, 1.0 / rate, dtype=torch.float64).round().long().clamp(max=L - 1)
    y = x[idx]
    n = y.numel()
    if n < L:
        left = -offset
        assert 0 <= left <= L - n
        return F.pad(y, (left, L - n - left))
    if n > L:
        assert 0 <= offset < n - L
        return y[offset : offset + L]
    assert offset == 0
    return y


# ----------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_roll_is_torch_roll_per_clip(device):
    L = 997
    x = torch.randn(6, L, generator=gen(0)).to(device)
    shift = torch.tensor([0, 1, -1, -L, L - 1, 433])
    y = roll(x, shift)
    for b in range(6):
        assert torch.equal(y[b].cpu(), torch.roll(x[b].cpu(), int(shift[b])))


@pytest.mark.parametrize("device", DEVICES)
def test_speed_perturb_is_dcls_audios_rule_per_clip(device):
    L = 32000
    x = torch.randn(8, L, generator=gen(1))
    rate, offset = sample_speed(8, L, gen(2), p=1.0)
    # and the corners: slowest/fastest rate, identity, both ends of the padding and the crop
    n_slow, n_fast = (int(v) for v in stretched_length(torch.tensor([0.5, 1.5]), L))
    rate = torch.cat([rate, torch.tensor([0.5, 0.5, 1.5, 1.5, 1.0], dtype=torch.float64)])
    offset = torch.cat([offset, torch.tensor([0, -(L - n_slow), 0, n_fast - L - 1, 0])])
    x = torch.cat([x, torch.randn(5, L, generator=gen(3))])
    y = speed_perturb(x.to(device), rate, offset).cpu()
    for b in range(len(x)):
        assert torch.equal(y[b], dcls_audio_speed(x[b], float(rate[b]), int(offset[b]))), b


def test_stretched_length_counts_as_arange_does():
    L = 320000
    rate, _ = sample_speed(300, L, gen(4), p=1.0)
    rate = torch.cat([rate, torch.tensor([0.5, 1.0, 1.5, 1.2, 0.8, 2 / 3], dtype=torch.float64)])
    n = stretched_length(rate, L)
    for r, k in zip(rate.tolist(), n.tolist()):
        assert torch.arange(0, L, 1.0 / r, dtype=torch.float64).numel() == k


def test_float64_rule_is_dcls_audios_float32_arange_up_to_one_sample():
    """DCLS-Audio's float32 arange rounds positions to float32 first; the rules differ by at most
    one sample, on well under 1 % of the indices."""
    L, moved, total = 320000, 0, 0
    rate, _ = sample_speed(6, L, gen(5), p=1.0)
    for r in rate.tolist():
        f32 = torch.arange(0, L, 1.0 / r).round().long().clamp(max=L - 1)  # DCLS-Audio, as written
        ours = speed_index(torch.tensor([r], dtype=torch.float64), torch.zeros(1, dtype=torch.long), L)[0]
        m = min(L, f32.numel())
        d = (ours[:m] - f32[:m]).abs()
        assert d.max() <= 1
        moved, total = moved + int((d > 0).sum()), total + m
    assert moved / total < 0.01


@pytest.mark.parametrize("device", DEVICES)
def test_erase_is_slice_assignment_per_clip(device):
    B, H, W = 5, 513, 201
    power = torch.rand(B, H, W, generator=gen(6)) + 0.5
    top, left, h, w = sample_erase(B, H, W, gen(7), p=1.0)
    h[1] = 0  # one clip without a rectangle
    top[2], left[2], h[2], w[2] = H - 3, W - 4, 3, 4  # one in the far corner
    out = erase(power.to(device), top, left, h, w, value=-1.0).cpu()
    ref = power.clone()
    for b in range(B):
        ref[b, top[b] : top[b] + h[b], left[b] : left[b] + w[b]] = -1.0
    assert torch.equal(out, ref) and torch.equal(out[1], power[1])
    four_d = erase(power.unsqueeze(1), top, left, h, w, value=-1.0)  # (B, 1, F, T) too
    assert torch.equal(four_d, ref.unsqueeze(1))
    with pytest.raises(ValueError, match="one parameter per clip"):
        erase(power, top[:2], left, h, w)


def test_mixup_is_the_hand_computed_mix_with_smoothed_targets():
    x = torch.arange(3 * 4, dtype=torch.float32).view(3, 1, 2, 2)
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    lam, eps, C = 0.3, 0.1, 5
    xm, ym = mixup(x, y, lam, label_smoothing=eps)
    ys = 0.9 * y + eps / C
    for i in range(3):
        assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[2 - i])
        assert torch.allclose(ym[i], lam * ys[i] + (1 - lam) * ys[2 - i])
    assert torch.equal(smooth_labels(y, 0.0), y) and torch.allclose(smooth_labels(y, eps), ys)
    xm1, ym1 = mixup(x, y, 1.0)
    assert torch.equal(xm1, x) and torch.equal(ym1, y)


# ----------------------------------------------------------------------------------
# samplers
# ----------------------------------------------------------------------------------
def test_roll_shifts_are_uniform_over_minus_L_to_L():
    L, N = 1000, 40000
    s = sample_roll(N, L, gen(8))
    assert s.dtype == torch.long and s.min() == -L and s.max() == L - 1
    assert_mean(s, -0.5, ((2 * L) ** 2 - 1) / 12)


def test_speed_rates_and_probability():
    L, N = 32000, 40000
    rate, offset = sample_speed(N, L, gen(9), p=0.5, low=0.5, high=1.5)
    on = rate != 1.0
    assert_mean(on.double(), 0.5, 0.25)
    assert torch.equal(offset[~on], torch.zeros_like(offset[~on]))
    assert rate[on].min() >= 0.5 and rate[on].max() < 1.5
    assert_uniform_moments(rate[on], 0.5, 1.5)
    n = stretched_length(rate, L)
    assert ((offset >= -(L - n).clamp_min(0)) & (offset <= (n - L - 1).clamp_min(0))).all()
    none, _ = sample_speed(100, L, gen(10), p=0.0)
    assert torch.equal(none, torch.ones(100, dtype=torch.float64))


@pytest.mark.parametrize("rate", [0.8, 1.2])
def test_speed_offsets_are_uniform_over_the_pad_or_crop_positions(rate):
    L, N = 50, 22000
    r, offset = sample_speed(N, L, gen(11), p=1.0, low=rate, high=rate)
    n = int(stretched_length(r[:1], L))
    positions = torch.arange(-(L - n), 1) if n < L else torch.arange(0, n - L)  # DCLS-Audio: randint(0, n - L)
    counts = torch.stack([(offset == v).sum() for v in positions]).double()
    assert counts.sum() == N  # nothing outside
    q = 1 / len(positions)
    assert ((counts / N - q).abs() <= Z * math.sqrt(q * (1 - q) / N)).all()


def _timm_rectangles(count: int, H: int, W: int, seed: int) -> torch.Tensor:
    """(count, 4) top, left, h, w of timm RandomErasing(probability=1, 'const', max_count=1) on (1, H, W)."""
    from timm.data.random_erasing import RandomErasing

    eraser = RandomErasing(probability=1.0, mode="const", max_count=1, device="cpu")
    img, rects = torch.ones(1, H, W), []
    state = random.getstate()
    random.seed(seed)
    try:
        for _ in range(count):
            eraser(img.fill_(1.0))
            rows, cols = (img[0] == 0).any(1).nonzero(), (img[0] == 0).any(0).nonzero()
            if len(rows) == 0:
                rects.append((0, 0, 0, 0))
            else:
                rects.append((int(rows[0]), int(cols[0]), len(rows), len(cols)))
    finally:
        random.setstate(state)
    return torch.tensor(rects, dtype=torch.float64)


def test_erasing_on_the_paper_spectrogram_matches_timm():
    """Same rectangle distribution as timm's RandomErasing on (1, 513, 1001): its attempt loop,
    rounding and placement (moments of top, left, h, w and area, within sampling error)."""
    H, W, N = 513, 1001, 3000
    ref = _timm_rectangles(N, H, W, seed=0)
    ours = torch.stack(sample_erase(4 * N, H, W, gen(12), p=1.0), 1).double()  # (4N, 4)
    assert (ours[:, 2] > 0).all() and (ref[:, 2] > 0).all()  # 10 attempts: one always fits
    assert ((ours[:, 0] + ours[:, 2] <= H) & (ours[:, 1] + ours[:, 3] <= W) & (ours[:, 2] < H) & (ours[:, 3] < W)).all()
    for a, b in ((ours, ref), (ours[:, 2:3] * ours[:, 3:4], ref[:, 2:3] * ref[:, 3:4])):
        se = torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
        assert ((a.mean(0) - b.mean(0)).abs() <= Z * se).all(), (a.mean(0), b.mean(0), se)


def test_erasing_probability_area_and_aspect():
    H, W, N = 513, 1001, 40000
    cfg = DclsAudioAugmentConfig()
    top, left, h, w = sample_erase(N, H, W, gen(13), p=cfg.erase_p)
    on = h > 0
    assert_mean(on.double(), 0.25, 0.25 * 0.75)
    assert torch.equal(w > 0, on) and (top[~on] == 0).all() and (left[~on] == 0).all()
    # rounding moves each side by <= 0.5: the drawn area lies between the shrunk and grown rectangles
    hf, wf = h[on].double(), w[on].double()
    assert ((hf - 0.5) * (wf - 0.5) <= H * W / 3).all() and ((hf + 0.5) * (wf + 0.5) >= 0.02 * H * W).all()
    # without rejection (small rectangles on a square) area and log-aspect are uniform as drawn
    S, lo, hi = 1000, 0.02, 0.05
    _, _, h, w = sample_erase(N, S, S, gen(14), p=1.0, min_area=lo, max_area=hi)
    hf, wf = h.double(), w.double()
    assert_uniform_moments(hf * wf / S**2, lo, hi, slack=0.5 * (hf + wf).max().item() / S**2)
    log_aspect = torch.log(hf / wf)
    assert_uniform_moments(log_aspect, math.log(0.3), -math.log(0.3), slack=1.0 / min(hf.min(), wf.min()).item())


def test_erasing_places_the_rectangle_uniformly_up_to_the_far_edge():
    """timm's randint(0, H - h) includes H - h: a 3x4 rectangle on 10x12 starts at U{0..7} x U{0..8}."""
    N = 20000
    # area 12/120 and aspect 3/4 exactly: h = round(sqrt(9)) = 3, w = round(sqrt(16)) = 4
    top, left, h, w = sample_erase(N, 10, 12, gen(21), p=1.0, min_area=0.1, max_area=0.1, min_aspect=0.75, max_aspect=0.75)
    assert (h == 3).all() and (w == 4).all()
    for pos, count in ((top, 8), (left, 9)):
        freq = torch.bincount(pos, minlength=count).double() / N
        assert len(freq) == count
        assert ((freq - 1 / count).abs() <= Z * math.sqrt((1 / count) * (1 - 1 / count) / N)).all()


def test_sampler_reproducible_and_cpu_only():
    aug = DclsAudioAugment(LogMel())
    a, b = aug.sample(16, 32000, gen(15)), aug.sample(16, 32000, gen(15))
    for name in ("shift", "rate", "offset", "erase_top", "erase_left", "erase_height", "erase_width"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).shape == (16,) and getattr(a, name).device.type == "cpu"
    assert not torch.equal(a.shift, aug.sample(16, 32000, gen(16)).shift)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU generator"):
            aug.sample(2, 32000, torch.Generator(device="cuda"))


def test_config_round_trip_and_checks():
    c = DclsAudioAugmentConfig(speed_p=0.3)
    assert DclsAudioAugmentConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown augmentation settings"):
        DclsAudioAugmentConfig.from_dict({"speed_prob": 0.3})
    with pytest.raises(ValueError, match="speed_min"):
        DclsAudioAugmentConfig(speed_min=1.6)
    with pytest.raises(ValueError, match="erase_p"):
        DclsAudioAugmentConfig(erase_p=1.5)


# ----------------------------------------------------------------------------------
# the batched module
# ----------------------------------------------------------------------------------
def _forced_params(aug: DclsAudioAugment, B: int, L: int) -> AugmentParams:
    """Parameters with every case present: speed on/off, pad/crop, erase on/off."""
    p = DclsAudioAugment(aug.front_end, DclsAudioAugmentConfig(speed_p=1.0, erase_p=1.0)).sample(B, L, gen(17))
    p.rate[0], p.offset[0] = 1.0, 0  # no speed change
    p.erase_height[1] = 0  # no erasing
    return p


@pytest.mark.parametrize("device", DEVICES)
def test_batched_module_equals_its_stages_and_clip_by_clip(device):
    L, B = 16000, 5
    aug = DclsAudioAugment(LogMel()).to(device).train()
    x = (0.1 * torch.randn(B, L, generator=gen(18))).to(device)
    p = _forced_params(aug, B, L)
    assert (p.rate[2:] < 1).any() and (p.rate[2:] > 1).any()  # both padding and cropping occur
    wave = aug.augment_waveform(x, p)
    assert torch.equal(wave, speed_perturb(roll(x, p.shift), p.rate, p.offset))  # one gather == the two transforms
    power = aug.front_end.power_spectrogram(wave)
    erased = aug.augment_power(power, p)
    assert torch.equal(erased, erase(power, p.erase_top, p.erase_left, p.erase_height, p.erase_width))
    out = aug(x, params=p)
    assert out.shape == (B, 1, 128, L // 320 + 1)
    assert torch.equal(out, aug.front_end.from_power(erased))
    for b in range(B):
        one = p[b]
        assert torch.equal(aug.augment_waveform(x[b : b + 1], one)[0], wave[b])
        assert torch.equal(aug.augment_power(power[b : b + 1], one)[0], erased[b])
        assert torch.allclose(aug(x[b : b + 1], params=one)[0], out[b], atol=1e-5)
        ref = dcls_audio_speed(torch.roll(x[b].cpu(), int(p.shift[b])), float(p.rate[b]), int(p.offset[b]))
        assert torch.equal(wave[b].cpu(), ref)


def test_module_draws_from_the_generator_and_is_the_front_end_in_eval():
    L = 16000
    x = 0.1 * torch.randn(3, L, generator=gen(19))
    aug = DclsAudioAugment(LogMel()).train()
    a, b = aug(x, generator=gen(20)), aug(x, generator=gen(20))
    assert torch.equal(a, b)
    assert torch.equal(a, aug(x, params=aug.sample(3, L, gen(20))))
    assert not torch.equal(a, aug.front_end(x))
    assert torch.equal(aug.eval()(x, generator=gen(20)), aug.front_end(x))
    assert aug.state_dict() == {}  # nothing of it enters a checkpoint
