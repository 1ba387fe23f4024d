"""Everything a training run carries from step to step, and how it is built from a config.

:class:`RunState` holds the model, optimizer, schedule, AMP scaler, EMA and the step
counters; ``state_dict()`` / ``load_state_dict()`` are what a checkpoint saves and a
resume restores. :class:`StepRecipe` is what one optimizer step does (accumulation,
label smoothing, mixup, clipping, AMP), read once from the config; the front end and
augmentation that turn a raw batch into model input are the run's
:class:`~pipelines.model_input.ModelInput`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from audio_dcls.features import LogMelConfig
from audio_dcls.model_factory import ModelBuildError, build_model
from pipelines.model_input import training_input
from pipelines.model_parts import FrozenParts, ModelPartsError, classifier_layer, freeze_parts
from pipelines.optim import WarmupCosine, build_optimizer
from pipelines.train_config import ConfigError, TrainConfig

# Layer-scale keyword of each family (timm's names differ).
_LAYER_SCALE_KWARG = {"convnext": "ls_init_value", "convformer": "layer_scale_init_values", "fastvit": "layer_scale_init_value"}


def release_model_args(cfg: TrainConfig, num_classes: int) -> Dict[str, Any]:
    """The model's arguments as a release records them: model_args + num_classes + layer scale
    (which shapes the parameters); drop path is left out, it only acts in training."""
    kw = dict(cfg.model_args)
    kw["num_classes"] = num_classes
    if cfg.layer_scale_init is not None:
        key = _LAYER_SCALE_KWARG.get(cfg.model.split("_")[0])
        if key is None:
            raise ConfigError(f"layer_scale_init: no known layer-scale argument for {cfg.model!r}; set layer_scale_init=null or pass it in model_args")
        kw.setdefault(key, cfg.layer_scale_init)
    return kw


AUTO_BIAS_CLIP = 1e-4  # head_bias_init=auto: class rates are clipped to [1e-4, 1 - 1e-4] (logits within ±9.21)


def auto_head_bias(label_rate: np.ndarray, label_smoothing: float) -> torch.Tensor:
    """Per class, the logit of the mean training target -- (1 - ε)·rate + ε/C, what label smoothing
    makes of the class's rate in the training set -- clipped: the best constant prediction under
    the training loss, so the first steps learn the sounds instead of the priors."""
    rate = np.asarray(label_rate, dtype=np.float64)
    p = (1.0 - label_smoothing) * rate + label_smoothing / len(rate)
    p = np.clip(p, AUTO_BIAS_CLIP, 1.0 - AUTO_BIAS_CLIP)
    return torch.from_numpy(np.log(p / (1.0 - p))).float()


def build_training_model(cfg: TrainConfig, num_classes: int, label_rate: Optional[np.ndarray] = None) -> nn.Module:
    """audio_dcls.model_factory.build_model with the training-only arguments layered on:
    drop path, and the classifier bias prior ``head_bias_init`` (``auto`` needs
    ``label_rate``, the (C,) fraction of training clips carrying each class)."""
    kw = release_model_args(cfg, num_classes)
    kw.setdefault("drop_path_rate", cfg.drop_path)
    try:
        model = build_model(cfg.model, kw, num_classes)
    except ModelBuildError as e:
        raise ConfigError(f"model: {e}") from None
    if cfg.head_bias_init is not None:
        # Starting every class at p = 0.5 costs the first few hundred steps on mostly negative
        # classes (and inflates Adam's second moments); a prior logit avoids it.
        try:
            _, head = classifier_layer(model)
        except ModelPartsError as e:
            raise ConfigError(f"head_bias_init: {e}") from None
        if head.bias is None:
            raise ConfigError(f"head_bias_init: {cfg.model} has no classifier bias")
        with torch.no_grad():
            if cfg.head_bias_init == "auto":
                if label_rate is None or len(label_rate) != num_classes:
                    raise ConfigError("head_bias_init=auto needs the training set's label frequencies")
                head.bias.copy_(auto_head_bias(label_rate, cfg.label_smoothing))
            else:
                head.bias.fill_(cfg.head_bias_init)
    return model


@dataclass(frozen=True)
class StepRecipe:
    seed: int  # the run's seed: micro-batch randomness derives from (seed, epoch, step, micro-batch)
    accum: int  # micro-batches per optimizer step on each process
    label_smoothing: float  # targets -> (1 - eps)·y + eps/C
    mixup_alpha: float  # lambda ~ Beta(alpha, alpha) per micro-batch (0 = off)
    clip_grad: float  # global gradient-norm clip (0 = off)
    clamp_positions: bool  # keep DCLS tap centres inside their grid after each step
    channels_last: bool  # NHWC inputs
    use_amp: bool  # autocast the forward (CUDA only)
    amp_dtype: torch.dtype  # its dtype

    @classmethod
    def from_config(cls, cfg: TrainConfig, accum: int, device: torch.device) -> "StepRecipe":
        return cls(
            seed=cfg.seed,
            accum=accum,
            label_smoothing=cfg.label_smoothing,
            mixup_alpha=cfg.mixup_alpha,
            clip_grad=cfg.clip_grad,
            clamp_positions=cfg.clamp_positions,
            channels_last=cfg.channels_last,
            use_amp=cfg.amp and device.type == "cuda",
            amp_dtype=torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16,
        )


class RunState:
    """Model, optimizer, schedule, scaler, EMA and counters of one run (one process).

    ``epoch`` / ``step_in_epoch`` say where the run goes on: the next optimizer step is
    step ``step_in_epoch`` of epoch ``epoch``. ``train_model`` is what the forward pass
    calls -- the model itself, or its DDP / torch.compile wrapper -- and ``inputs`` what
    turns a raw batch on the device into model input (a ModelInput: front end,
    augmentation, crops; None: the batch is already log-mels, cast to float32); neither
    is state. ``world`` is the number of processes.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: WarmupCosine, recipe: StepRecipe, device: torch.device, scaler: Optional[torch.amp.GradScaler] = None, ema: Optional[nn.Module] = None, inputs: Optional[nn.Module] = None, world: int = 1, frozen: Optional[FrozenParts] = None):
        self.model = model
        self.train_model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
        self.ema = ema
        self.recipe = recipe
        self.device = device
        self.inputs = inputs
        self.world = world
        self.frozen = frozen if frozen is not None else FrozenParts("none")  # kept in eval mode by train_step
        self.init_summary = None  # what init_from loaded (pipelines.init_from.InitSummary), fresh runs only
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and released: the EMA weights when the run keeps them."""
        return self.ema.module if self.ema is not None else self.model

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0

    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
        }

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.schedule.load_state_dict(d["scheduler"])
        if d.get("scaler") is not None:
            self.scaler.load_state_dict(d["scaler"])
        if self.ema is not None and d.get("ema") is not None:
            self.ema.module.load_state_dict(d["ema"])
        self.epoch, self.step_in_epoch, self.global_step = int(d["epoch"]), int(d["step_in_epoch"]), int(d["global_step"])


def build_run_state(
    cfg: TrainConfig,
    num_classes: int,
    device: torch.device,
    steps_per_epoch: int,
    accum: int,
    frontend: LogMelConfig = LogMelConfig(),
    item_kind: str = "logmel",
    world: int = 1,
    label_rate: Optional[np.ndarray] = None,
    initialise: Optional[Callable[[nn.Module], Any]] = None,
) -> RunState:
    """A fresh run: model initialised from ``cfg.seed`` (then ``initialise(model)``, e.g. the
    ``init_from`` weights, whose result is kept as ``state.init_summary``), the ``freeze``
    setting applied, optimizer over what is left to train, warmup-cosine schedule over
    ``cfg.epochs`` epochs, EMA, scaler, and the model input (front end ``frontend`` for data
    of ``item_kind``, augmentation) on ``device``, as configured. ``label_rate``: for
    ``head_bias_init=auto``."""
    inputs = training_input(cfg, frontend, item_kind).to(device)
    torch.manual_seed(cfg.seed)
    model = build_training_model(cfg, num_classes, label_rate)
    summary = initialise(model) if initialise is not None else None
    try:
        frozen = freeze_parts(model, cfg.freeze)
    except ModelPartsError as e:
        raise ConfigError(str(e)) from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    schedule = WarmupCosine(optimizer, cfg.lr, cfg.min_lr, cfg.warmup_lr, warmup_steps, steps_per_epoch * cfg.epochs)
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    recipe = StepRecipe.from_config(cfg, accum, device)
    scaler = torch.amp.GradScaler("cuda", enabled=recipe.use_amp and recipe.amp_dtype == torch.float16)
    state = RunState(model, optimizer, schedule, recipe, device, scaler, ema, inputs, world, frozen)
    state.init_summary = summary
    return state
