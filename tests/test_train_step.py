"""pipelines.train_step on its own: one optimizer step against an update computed by hand,
micro-batch randomness that leaves the caller's global RNGs as they were, and a RunState
that round-trips through state_dict()."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from audio_dcls.features import LogMelConfig
from pipelines.model_input import ModelInput
from pipelines.optim import WarmupCosine, build_optimizer
from pipelines.train_config import load_config
from pipelines.train_state import RunState, StepRecipe
from pipelines.train_step import MicroBatch, NonFiniteLoss, train_step

F_BINS, FRAMES, CLASSES, BATCH = 4, 6, 3, 5
LR, WD, EPS_SMOOTH = 1e-2, 0.05, 0.1


def _state(model: nn.Module, mixup_alpha: float = 0.0, crop_frames: int = 0, label_smoothing: float = EPS_SMOOTH) -> RunState:
    cfg = load_config(None, ["train=x", f"lr={LR}", f"weight_decay={WD}"])
    optimizer = build_optimizer(model, cfg)  # AdamW, betas (0.9, 0.999), decay on the weight only
    schedule = WarmupCosine(optimizer, LR, 1e-6, 1e-6, warmup_steps=0, total_steps=10)  # step 0 runs at LR
    recipe = StepRecipe(seed=3, accum=2, label_smoothing=label_smoothing, mixup_alpha=mixup_alpha, clip_grad=0.0,
                        clamp_positions=False, channels_last=False, use_amp=False, amp_dtype=torch.bfloat16)
    inputs = ModelInput(LogMelConfig(), "logmel", crop_frames=crop_frames).train()  # log-mel items: cast, then crops
    return RunState(model, optimizer, schedule, recipe, torch.device("cpu"), inputs=inputs)


def _micro_batches(seed: int = 0, frames: int = FRAMES):
    g = torch.Generator().manual_seed(seed)
    out = []
    for m in range(2):
        x = torch.randn(BATCH, 1, F_BINS, frames, generator=g)
        y = (torch.rand(BATCH, CLASSES, generator=g) < 0.4).float()
        out.append(MicroBatch(m, x, y))
    return out


def _linear(inputs: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, CLASSES))


def test_one_step_is_the_hand_computed_adamw_update(one_thread):
    model = _linear(F_BINS * FRAMES)
    W0, b0 = (p.detach().double().clone() for p in model[1].parameters())
    state = _state(model)
    mbs = _micro_batches()
    result = train_step(state, mbs)

    # By hand: logits z = x W^T + b; BCE-with-logits averaged over B x C per micro-batch, the
    # two micro-batches averaged; dL/dz = (sigmoid(z) - y') / (2 B C) with y' = 0.9 y + 0.1 / C.
    gW, gb, loss = torch.zeros_like(W0), torch.zeros_like(b0), 0.0
    for mb in mbs:
        x = mb.x.double().reshape(BATCH, -1)
        y = mb.y.double() * (1 - EPS_SMOOTH) + EPS_SMOOTH / CLASSES
        z = x @ W0.T + b0
        p = torch.sigmoid(z)
        loss += float((-(y * torch.log(p) + (1 - y) * torch.log(1 - p))).mean()) / 2
        dz = (p - y) / (2 * BATCH * CLASSES)
        gW += dz.T @ x
        gb += dz.sum(0)
    # AdamW's first step: m_hat = g, v_hat = g^2, so p <- p (1 - lr wd) - lr g / (|g| + eps)
    eps = 1e-8
    W1 = W0 * (1 - LR * WD) - LR * gW / (gW.abs() + eps)
    b1 = b0 - LR * gb / (gb.abs() + eps)  # biases: no weight decay
    assert result.loss == pytest.approx(loss, rel=1e-6)
    assert result.lr == pytest.approx(LR) and result.clips == 2 * BATCH
    assert torch.allclose(model[1].weight.detach().double(), W1, rtol=0, atol=1e-6)
    assert torch.allclose(model[1].bias.detach().double(), b1, rtol=0, atol=1e-6)
    assert (state.epoch, state.step_in_epoch, state.global_step) == (0, 1, 1)
    assert all(p.grad is None for p in model.parameters())  # gradients cleared for the next step


def test_micro_batch_randomness_leaves_the_global_rngs_alone(one_thread):
    # dropout draws from torch's global RNG, mixup and the crops from their own generators
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(F_BINS * 4, CLASSES))
    runs = []
    for global_seed in (123, 456):
        model = copy.deepcopy(base)
        state = _state(model, mixup_alpha=0.8, crop_frames=4)
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        random.seed(global_seed)
        before = torch.get_rng_state(), np.random.get_state(), random.getstate()
        result = train_step(state, _micro_batches(frames=FRAMES))
        assert torch.equal(torch.get_rng_state(), before[0])
        after_np = np.random.get_state()
        assert after_np[0] == before[1][0] and np.array_equal(after_np[1], before[1][1]) and after_np[2:] == before[1][2:]
        assert random.getstate() == before[2]
        runs.append((result.loss, [p.detach().clone() for p in model.parameters()]))
    # the draws are a function of (seed, epoch, step, micro-batch), whatever the caller's RNG holds
    (loss_a, params_a), (loss_b, params_b) = runs
    assert loss_a == loss_b and all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    # ... and they do depend on the step: the same batches at the next step draw differently
    model = copy.deepcopy(base)
    state = _state(model, mixup_alpha=0.8, crop_frames=4)
    state.step_in_epoch = 1
    assert train_step(state, _micro_batches(frames=FRAMES)).loss != loss_a


def test_run_state_round_trips_and_bad_steps_are_refused(one_thread):
    model = _linear(F_BINS * FRAMES)
    state = _state(model)
    train_step(state, _micro_batches(seed=1))
    saved = copy.deepcopy(state.state_dict())
    train_step(state, _micro_batches(seed=2))

    resumed = _state(_linear(F_BINS * FRAMES))
    resumed.load_state_dict(saved)
    assert (resumed.epoch, resumed.step_in_epoch, resumed.global_step) == (0, 1, 1)
    train_step(resumed, _micro_batches(seed=2))
    for a, b in zip(state.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)  # Adam moments and the schedule came back too

    with pytest.raises(ValueError, match="1 micro-batches given, the recipe accumulates 2"):
        train_step(state, _micro_batches()[:1])
    weights = [p.detach().clone() for p in state.model.parameters()]
    bad = _micro_batches()
    bad[0].x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match=r"global step 2\)"):
        train_step(state, bad)
    assert state.global_step == 2 and all(torch.equal(a, b) for a, b in zip(weights, state.model.parameters()))
