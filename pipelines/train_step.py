"""One optimizer step: micro-batches in, gradients accumulated, weights updated.

:func:`train_step` can be called on its own (a notebook, a test): it needs only a
:class:`~pipelines.train_state.RunState` and the step's micro-batches, as the
DataLoader delivers them (int16 waveforms or fp16 log-mels). Each micro-batch moves to
the device as it is; there the run's ModelInput (augmentation, front end, crops) makes
the log-mels, then label smoothing and mixup, then the model. Every random draw of a
micro-batch -- augmentation parameters, crop offsets, mixup lambda, drop path -- comes
from generators seeded with (seed, epoch, step, micro-batch index); torch's global
RNG is forked around the micro-batch, so the caller's RNG state is left as it was.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audio_dcls.augment import mixup, smooth_labels
from pipelines.distributed import mean_over_ranks
from pipelines.sampling import derive_seed
from pipelines.train_state import RunState, StepRecipe


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops (the last good checkpoint stays)."""


@dataclass
class MicroBatch:
    index: int  # m = a·world + rank: its place in the global batch (seeds its randomness)
    x: Optional[torch.Tensor]  # as loaded: (B, L) int16 waveforms or (B, 1, F, T) fp16 log-mels; None when every clip was skipped
    y: Optional[torch.Tensor]  # (B, C) multi-hot targets


@dataclass
class StepResult:
    loss: float  # mean training loss of the step over all processes
    lr: float  # base learning rate of the step (before each group's lr_scale)
    clips: int  # clips this process trained on


def clamp_dcls_positions(model: nn.Module) -> None:
    """Keep every DCLS tap centre inside its dilated grid (shared positions once)."""
    from audio_dcls.layers import DCLS_LAYERS

    seen = set()
    for m in model.modules():
        if isinstance(m, tuple(DCLS_LAYERS)) and id(m.P) not in seen:
            seen.add(id(m.P))
            m.clamp_positions()


@contextmanager
def micro_batch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global RNG (CPU, and the training GPU) seeded with ``seed`` inside the block,
    restored after it: drop path and any other global draw become a function of the seed."""
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.default_generator.manual_seed(seed)
        for gpu in gpus:
            with torch.cuda.device(gpu):
                torch.cuda.manual_seed(seed)
        yield


def prepare_micro_batch(x: torch.Tensor, y: torch.Tensor, recipe: StepRecipe, inputs: Optional[nn.Module], generator: torch.Generator, lam_rng: np.random.Generator, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Move one micro-batch to ``device`` as loaded, then there: model input (front end,
    augmentation, crops), label smoothing and mixup."""
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True).float()
    x = inputs(x, generator=generator) if inputs is not None else x.float()  # (B, 1, F, T)
    if recipe.mixup_alpha <= 0:
        return x, smooth_labels(y, recipe.label_smoothing)
    return mixup(x, y, float(lam_rng.beta(recipe.mixup_alpha, recipe.mixup_alpha)), recipe.label_smoothing)


def _micro_batch_backward(state: RunState, mb: MicroBatch, sync: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch (loss / accum into the gradients); its loss."""
    r = state.recipe
    seed = derive_seed(r.seed, state.epoch, state.step_in_epoch, mb.index)
    with micro_batch_rng(seed, state.device):
        gen = torch.Generator().manual_seed(seed ^ 0x9E3779B9)
        lam_rng = np.random.default_rng([r.seed, state.epoch, state.step_in_epoch, mb.index, 1])
        x, y = prepare_micro_batch(mb.x, mb.y, r, state.inputs, gen, lam_rng, state.device)
        if r.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # DDP all-reduces the gradients on the last micro-batch only
        no_sync = state.world > 1 and not sync
        with state.train_model.no_sync() if no_sync else nullcontext():
            with torch.autocast(state.device.type, dtype=r.amp_dtype, enabled=r.use_amp):
                logits = state.train_model(x)  # (B, C)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            state.scaler.scale(loss / r.accum).backward()
    return loss.detach()


def train_step(state: RunState, micro_batches: Sequence[MicroBatch]) -> StepResult:
    """One optimizer step over ``recipe.accum`` micro-batches: set the step's learning rate,
    accumulate gradients, clip, update, clamp DCLS positions, update the EMA, and advance
    ``state.step_in_epoch`` / ``state.global_step``. Raises NonFiniteLoss (weights untouched)
    when the loss is NaN or infinite."""
    r = state.recipe
    if len(micro_batches) != r.accum:
        raise ValueError(f"train_step: {len(micro_batches)} micro-batches given, the recipe accumulates {r.accum}")
    lr = state.schedule.step_update(state.global_step)
    state.frozen.set_eval()  # frozen parts never train: no dropout, no drop path, BatchNorm statistics fixed
    step_loss = torch.zeros((), dtype=torch.float64, device=state.device)
    clips = 0
    for a, mb in enumerate(micro_batches):
        if mb.x is None:
            continue
        step_loss += _micro_batch_backward(state, mb, sync=a == len(micro_batches) - 1).double()
        clips += mb.x.shape[0]
    loss = float(mean_over_ranks(step_loss / r.accum, state.world))
    if not math.isfinite(loss):
        state.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(f"non-finite training loss ({loss}) at epoch {state.epoch}, step {state.step_in_epoch} (global step {state.global_step})")
    if r.clip_grad > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), r.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    if r.clamp_positions:
        clamp_dcls_positions(state.model)
    state.step_in_epoch += 1
    state.global_step += 1
    if state.ema is not None:
        state.ema.update(state.model, step=state.global_step)
    return StepResult(loss, lr, clips)
