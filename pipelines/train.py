"""Train an audio tagger: the paper's recipe, one process or torchrun DDP, exact resume.

CPU (the small recipe of the embedded mini-AudioSet, on the stores ``make train-audioset`` builds)::

    python -m pipelines.train -c configs/cpu_mini.yaml
    python -m pipelines.train -c configs/cpu_mini.yaml seed=1
    # on stores you built yourself (see pipelines.make_mini_audioset):
    python -m pipelines.train -c configs/cpu_mini.yaml train=[data/stores/mini_train] eval=data/stores/mini_eval

One GPU (gradient accumulation reaches the recipe's effective batch of 4096)::

    python -m pipelines.train -c configs/convnext_tiny_dcls.yaml seed=0 device=cuda

N GPUs on one machine, or several machines (same command on each node)::

    torchrun --nproc_per_node 8 -m pipelines.train -c configs/convnext_tiny_dcls.yaml seed=0
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --master_addr HOST --master_port 29500 \\
        -m pipelines.train -c configs/convnext_tiny_dcls.yaml

Resume an interrupted run (same command plus ``--resume``)::

    python -m pipelines.train -c configs/convnext_tiny_dcls.yaml seed=0 --resume

What a run folder (``output_dir``) holds: ``config.yaml`` (the resolved config),
``last.pt`` (the latest checkpoint, replaced atomically), ``metrics.csv`` (one row
per epoch), ``steps.csv`` (loss and lr per optimizer step), ``train.log``,
``summary.json`` (final metrics) and ``release/<model>/`` — the release folder the
service loads (safetensors weights, config.yaml, labels.csv; no pickle).

Reproducibility. The data order of epoch e is a permutation drawn from (seed, e);
optimizer step s takes the next ``effective_batch`` clips of it, cut into
micro-batches m = a·world + rank (a = accumulation index). Every random draw of a
micro-batch (mixup λ, crops, SpecAugment, drop path) comes from a generator seeded
with (seed, e, s, m). So a run gives the same numbers with 1 process × 2
accumulation steps or 2 processes × 1, and a resumed run continues exactly where
the checkpoint left off. Checkpoints also carry every RNG state of every rank.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from audio_dcls.features import AugmentConfig, LogMelAugment, LogMelConfig
from audio_dcls.labels import LabelVocabulary
from pipelines.evaluate import DataSpec, EvaluationError, collate_items, open_data, predict
from pipelines.train_config import (
    ConfigError,
    TrainConfig,
    config_differences,
    config_from_dict,
    load_config,
    save_config,
)

log = logging.getLogger("pipelines.train")

CHECKPOINT_FORMAT = "audio_dcls.train_checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "last.pt"
AUDIOSET_LABEL_SOURCE = "audioset-527"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or from another run."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops (the last good checkpoint stays)."""


# ----------------------------------------------------------------------------------
# model, optimizer, schedule
# ----------------------------------------------------------------------------------
# Layer-scale keyword of each family (timm's names differ).
_LAYER_SCALE_KWARG = {"convnext": "ls_init_value", "convformer": "layer_scale_init_values", "fastvit": "layer_scale_init_value"}


def model_kwargs(cfg: TrainConfig, num_classes: int) -> Dict:
    """timm.create_model keyword arguments: model_args + drop path + layer scale."""
    kw = dict(cfg.model_args)
    kw["num_classes"] = num_classes
    kw.setdefault("drop_path_rate", cfg.drop_path)
    if cfg.layer_scale_init is not None:
        family = cfg.model.split("_")[0]
        key = _LAYER_SCALE_KWARG.get(family)
        if key is None:
            raise ConfigError(f"layer_scale_init: no known layer-scale argument for {cfg.model!r}; set layer_scale_init=null or pass it in model_args")
        kw.setdefault(key, cfg.layer_scale_init)
    return kw


def build_model(cfg: TrainConfig, num_classes: int) -> Tuple[nn.Module, str, Dict]:
    """(model, arch, model_args for the release) — the release args leave out
    drop path, which only matters in training."""
    import timm

    import audio_dcls  # noqa: F401  (registers the audio models)

    kw = model_kwargs(cfg, num_classes)
    if not timm.models.is_model(cfg.model):
        raise ConfigError(f"model: unknown architecture {cfg.model!r} (e.g. {', '.join(audio_dcls.models.list_audio_models()[:4])}, ...)")
    try:
        model = timm.create_model(cfg.model, pretrained=False, **kw)
    except TypeError as e:
        raise ConfigError(f"model_args: {cfg.model} does not accept them ({e})") from None
    release_args = {k: v for k, v in kw.items() if k != "drop_path_rate"}
    return model, cfg.model, release_args


def param_groups(model: nn.Module, cfg: TrainConfig) -> List[Dict]:
    """dcls_param_groups with every group's base ``lr`` = cfg.lr and its
    multiplier in ``lr_scale``: the schedule sets lr = schedule(t) · lr_scale."""
    from audio_dcls.layers import dcls_param_groups

    groups = dcls_param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, position_lr_scale=cfg.position_lr_scale)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    betas = tuple(cfg.betas)
    if cfg.opt == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


class WarmupCosine:
    """Per-step schedule: linear warmup from ``warmup_lr`` to ``lr`` over
    ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``. Each
    parameter group gets schedule(t) × its ``lr_scale``.

    Stateless apart from its settings: the learning rate of update t is a
    function of t, so a resumed run recomputes it exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, min_lr: float, warmup_lr: float, warmup_steps: int, total_steps: int):
        self.optimizer = optimizer
        self.lr, self.min_lr, self.warmup_lr = lr, min_lr, warmup_lr
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def lr_at(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * t / self.warmup_steps
        decay = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / decay)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def step_update(self, t: int) -> float:
        base = self.lr_at(t)
        for g in self.optimizer.param_groups:
            g["lr"] = base * g.get("lr_scale", 1.0)
        return base

    def state_dict(self) -> Dict:
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup_lr": self.warmup_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}

    def load_state_dict(self, d: Dict) -> None:
        for k in ("lr", "min_lr", "warmup_lr", "warmup_steps", "total_steps"):
            setattr(self, k, d[k])


# ----------------------------------------------------------------------------------
# data order and per-micro-batch randomness
# ----------------------------------------------------------------------------------
def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class GlobalBatchSampler:
    """The distributed sampler: which clips each rank reads for each optimizer step.

    Epoch e visits a permutation drawn from (seed, e); optimizer step s uses
    clips [s·G, (s+1)·G) of it, G = micro_batch · world · accum, split into micro-
    batches m = a·world + rank. The last incomplete global batch is dropped.
    Iterating from ``start_step`` replays exactly the rest of an epoch.
    """

    def __init__(self, num_items: int, micro_batch: int, world: int, rank: int, accum: int, seed: int):
        self.num_items, self.micro_batch, self.world, self.rank, self.accum, self.seed = num_items, micro_batch, world, rank, accum, seed
        self.global_batch = micro_batch * world * accum
        self.steps_per_epoch = num_items // self.global_batch

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0x5A3]).permutation(self.num_items)

    def micro_batch_indices(self, epoch: int, step: int, a: int, order: Optional[np.ndarray] = None) -> Tuple[int, List[int]]:
        order = self.order(epoch) if order is None else order
        m = a * self.world + self.rank
        start = step * self.global_batch + m * self.micro_batch
        return m, order[start : start + self.micro_batch].tolist()

    def batches(self, epoch: int, start_step: int = 0) -> List[List[int]]:
        order = self.order(epoch)
        return [self.micro_batch_indices(epoch, s, a, order)[1] for s in range(start_step, self.steps_per_epoch) for a in range(self.accum)]


def smooth_labels(y: torch.Tensor, eps: float) -> torch.Tensor:
    """(1 − ε)·y + ε/C (the paper: 0.9·y + 0.1/C)."""
    return y * (1.0 - eps) + eps / y.shape[-1] if eps > 0 else y


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mix each clip with the batch reversed: λ·x + (1 − λ)·x.flip(0), same for targets."""
    return x * lam + x.flip(0) * (1.0 - lam), y * lam + y.flip(0) * (1.0 - lam)


def random_crop(x: torch.Tensor, frames: int, generator: torch.Generator) -> torch.Tensor:
    """A random window of ``frames`` time frames per clip; (B, 1, F, T) -> (B, 1, F, frames)."""
    T = x.shape[-1]
    if frames <= 0 or frames >= T:
        return x
    starts = torch.randint(0, T - frames + 1, (x.shape[0],), generator=generator)
    return torch.stack([x[i, ..., s : s + frames] for i, s in enumerate(starts.tolist())])


# ----------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------
def _rng_state() -> Dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint_atomic(path: Path, payload: Dict) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read_checkpoint(path: Path) -> Dict:
    """Load a training checkpoint (tensors and plain Python only; no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or foreign objects
        raise CheckpointError(f"{path}: not a readable training checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an audio_dcls training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')}, this code reads {CHECKPOINT_VERSION}")
    ckpt["config_obj"] = config_from_dict(ckpt["config"])
    return ckpt


# ----------------------------------------------------------------------------------
# logs
# ----------------------------------------------------------------------------------
EPOCH_FIELDS = ["epoch", "step", "train_loss", "lr", "epoch_seconds", "clips_per_second", "eval_mAP", "eval_mAUC", "eval_d_prime", "eval_classes_scored"]
STEP_FIELDS = ["step", "epoch", "loss", "lr"]


def _truncate_csv(path: Path, fields: List[str], keep) -> None:
    """Keep the rows ``keep(row)`` accepts (a resumed run rewrites what came after its checkpoint)."""
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if keep(r)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _append_csv(path: Path, fields: List[str], row: Dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow({k: row.get(k, "") for k in fields})
        f.flush()


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder / "tb"))


# ----------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------
@dataclass
class Env:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    distributed: bool


def setup_env(cfg: TrainConfig) -> Env:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda, but CUDA is not available on this machine (use device=cpu)")
        if world > 1 or device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Env(rank, world, local_rank, device, distributed)


def _setup_logging(rank: int, folder: Optional[Path]) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_audio_dcls_train", False):
            root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if folder is not None and rank == 0:
        handlers.append(logging.FileHandler(folder / "train.log"))
    for h in handlers:
        h._audio_dcls_train = True
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _open_training_data(cfg: TrainConfig) -> DataSpec:
    parts = [open_data(p, cfg.audio_dir or None) for p in cfg.train]
    first = parts[0]
    for p, spec in zip(cfg.train[1:], parts[1:]):
        if spec.vocabulary != first.vocabulary:
            raise ConfigError(f"train: {p} uses another label vocabulary than {cfg.train[0]}")
        if spec.frontend != first.frontend:
            raise ConfigError(f"train: {p} was computed with other front-end settings than {cfg.train[0]}")
    if len(parts) == 1:
        return first
    return DataSpec(ConcatDataset([p.dataset for p in parts]), first.vocabulary, first.frontend, [i for p in parts for i in p.ids], {"kind": "concat", "parts": [p.description for p in parts]})


def _label_source(vocab: LabelVocabulary, data: DataSpec) -> str:
    if vocab.is_audioset:
        return AUDIOSET_LABEL_SOURCE
    return f"custom-{len(vocab)}:{vocab.fingerprint()[:12]}"


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _clamp_positions(model: nn.Module) -> None:
    from audio_dcls.layers import DCLS_LAYERS

    seen = set()
    for m in model.modules():
        if isinstance(m, tuple(DCLS_LAYERS)) and id(m.P) not in seen:
            seen.add(id(m.P))
            m.clamp_positions()


def train(cfg: TrainConfig, resume: bool = False, progress: Optional[bool] = None) -> Dict:
    """Run (or resume) training as configured; returns the final summary (rank 0: also written)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = setup_env(cfg)
    out = cfg.resolved_output_dir()
    ckpt_path = out / CHECKPOINT_FILE
    # --- the run folder: refuse to overwrite, or check what we resume ---------------
    ckpt = None
    if resume:
        ckpt = read_checkpoint(ckpt_path)
        changed = config_differences(ckpt["config_obj"], cfg)
        if changed:
            old, new = ckpt["config_obj"].to_dict(), cfg.to_dict()
            shown = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:4])
            raise ConfigError(f"--resume: the config differs from the checkpoint's ({shown}); use the same settings or a new output_dir")
        if ckpt["epoch"] >= cfg.epochs and (out / "summary.json").is_file():
            summary = json.loads((out / "summary.json").read_text())
            if summary.get("finished"):
                logging.getLogger("pipelines.train").warning("%s: this run already finished (%d epochs); nothing to resume", out, cfg.epochs)
                return summary
    elif ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run ({CHECKPOINT_FILE}); pass --resume to continue it or choose another output_dir")
    if env.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".{CHECKPOINT_FILE}.tmp-*"):  # a process killed while writing a checkpoint
            stale.unlink(missing_ok=True)
    if env.distributed:
        dist.barrier()
    _setup_logging(env.rank, out)
    is_main = env.rank == 0

    # --- data --------------------------------------------------------------------------
    data = _open_training_data(cfg)
    eval_data = open_data(cfg.eval, cfg.audio_dir or None, data.frontend) if cfg.eval else None
    if eval_data is not None and eval_data.vocabulary != data.vocabulary:
        raise ConfigError(f"eval: {cfg.eval} uses another label vocabulary than the training data")
    vocab = data.vocabulary
    num_classes = len(vocab)
    micro = cfg.batch_size
    if cfg.effective_batch % (micro * env.world):
        raise ConfigError(f"effective_batch {cfg.effective_batch} is not a multiple of batch_size x processes = {micro} x {env.world}")
    accum = cfg.effective_batch // (micro * env.world)
    sampler = GlobalBatchSampler(len(data.dataset), micro, env.world, env.rank, accum, cfg.seed)
    if sampler.steps_per_epoch == 0:
        raise ConfigError(f"the training data has {len(data.dataset)} clips, fewer than one effective batch ({cfg.effective_batch})")
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    # --- model, optimizer, schedule, EMA, AMP ------------------------------------------
    torch.manual_seed(cfg.seed)
    model, arch, release_args = build_model(cfg, num_classes)
    if cfg.head_bias_init is not None:
        # Starting every class at p = 0.5 costs the first few hundred steps on 500+ mostly
        # negative classes (and inflates Adam's second moments); a prior logit avoids it.
        head = model.get_classifier()
        if getattr(head, "bias", None) is None:
            raise ConfigError(f"head_bias_init: {arch} has no classifier bias")
        with torch.no_grad():
            head.bias.fill_(cfg.head_bias_init)
    model.to(env.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    raw_model = model
    optimizer = build_optimizer(raw_model, cfg)
    schedule = WarmupCosine(optimizer, cfg.lr, cfg.min_lr, cfg.warmup_lr, warmup_steps, total_steps)
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(raw_model, decay=cfg.ema_decay)
    use_amp = cfg.amp and env.device.type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    augment = LogMelAugment(AugmentConfig(), db_per_unit=data.frontend.std).train() if cfg.specaugment else None

    start_epoch, start_step, global_step = 0, 0, 0
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
        start_epoch, start_step, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        rngs = ckpt["rng"]
        _set_rng_state(rngs[env.rank] if len(rngs) == env.world else rngs[0])
        if ckpt.get("world_size") != env.world:
            log.warning("resuming a %s-process run with %d processes: same data order and randomness, float sums may differ slightly", ckpt.get("world_size"), env.world)
        log.info("resumed %s at epoch %d, step %d of %d (global step %d)", ckpt_path, start_epoch, start_step, steps_per_epoch, global_step)

    train_model: nn.Module = raw_model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(raw_model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    # --- logs --------------------------------------------------------------------------
    epoch_csv, step_csv = out / "metrics.csv", out / "steps.csv"
    tb = None
    if is_main:
        save_config(cfg, out / "config.yaml")
        _truncate_csv(epoch_csv, EPOCH_FIELDS, lambda r: int(r["epoch"]) < start_epoch)
        _truncate_csv(step_csv, STEP_FIELDS, lambda r: int(r["step"]) <= global_step)
        tb = _tensorboard(out)
        log.info(
            "%s: %s parameters, %d classes, %d training clips, %d steps/epoch x %d epochs, batch %d x %d processes x %d accumulation = %d, device %s",
            arch, f"{_count_params(raw_model):,}", num_classes, len(data.dataset), steps_per_epoch, cfg.epochs, micro, env.world, accum, cfg.effective_batch, env.device,
        )
    show_bar = is_main and (sys.stderr.isatty() if progress is None else progress)

    def kept_note() -> str:
        if not ckpt_path.exists():
            return "no checkpoint was written yet. Lower lr, set clip_grad, or check the data"
        good = read_checkpoint(ckpt_path)
        return (
            f"the last good checkpoint {ckpt_path} (epoch {good['epoch']}, step {good['step_in_epoch']}, global step {good['global_step']}) is kept. "
            "Lower lr, set clip_grad, or check the data, then continue it with --resume"
        )

    def checkpoint(epoch: int, step_in_epoch: int, history_note: str) -> None:
        # A diverged update can leave inf/NaN weights before any loss shows it: never save those.
        if not all(bool(torch.isfinite(p).all()) for p in raw_model.parameters()):
            raise NonFiniteLoss(f"non-finite weights after global step {global_step} (epoch {epoch}); stopped, {kept_note()}")
        rngs = [None] * env.world
        state = _rng_state()
        if env.distributed:
            dist.all_gather_object(rngs, state)
        else:
            rngs = [state]
        if not is_main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": cfg.to_dict(),
            "arch": arch,
            "model_args": release_args,
            "frontend": data.frontend.to_dict(),
            "labels": [[m, n] for m, n in zip(vocab.mids, vocab.display_names)],
            "label_source": _label_source(vocab, data),
            "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "ema": ema.module.state_dict() if ema is not None else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "world_size": env.world,
            "rng": rngs,
            "note": history_note,
        }
        save_checkpoint_atomic(ckpt_path, payload)

    def run_eval() -> Optional[Dict]:
        if eval_data is None:
            return None
        from audio_dcls.metrics import tagging_metrics

        net = ema.module if ema is not None else raw_model
        preds = predict(net, eval_data.dataset, num_classes, max(1, micro), env.device, cfg.workers, amp_dtype if use_amp else None, cfg.channels_last, progress=False)
        keep = preds.scored
        if not keep.any():
            log.warning("evaluation: no clip could be scored")
            return None
        metrics = tagging_metrics(preds.targets[keep], preds.scores[keep])
        return {"metrics": metrics, "skipped": len(preds.skipped)}

    # --- the loop ----------------------------------------------------------------------
    t_run = time.perf_counter()
    last_eval = None
    stop = False
    first_epoch_done = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        loader = DataLoader(
            data.dataset,
            batch_sampler=sampler.batches(epoch, start_step),
            num_workers=cfg.workers,
            collate_fn=collate_items,
            pin_memory=env.device.type == "cuda",
            persistent_workers=False,
        )
        batches = iter(loader)
        t_epoch = time.perf_counter()
        loss_sum, loss_count, clips = 0.0, 0, 0
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True)
        train_model.train()
        for step in range(start_step, steps_per_epoch):
            lr = schedule.step_update(global_step)
            step_loss = torch.zeros((), dtype=torch.float64, device=env.device)
            for a in range(accum):
                x, y, _idx, skipped = next(batches)
                m = a * env.world + env.rank
                if skipped:
                    log.warning("rank %d skipped %d clips in step %d (e.g. %s)", env.rank, len(skipped), global_step, skipped[0][1])
                if x is None:
                    continue
                seed = derive_seed(cfg.seed, epoch, step, m)
                torch.manual_seed(seed)  # drop path and any other draw from torch's global RNG
                gen = torch.Generator().manual_seed(seed ^ 0x9E3779B9)
                lam_rng = np.random.default_rng([cfg.seed, epoch, step, m, 1])
                x = x.float()
                if cfg.crop_frames:
                    x = random_crop(x, cfg.crop_frames, gen)
                if augment is not None:
                    x = augment(x, generator=gen)
                y = smooth_labels(y.float(), cfg.label_smoothing)
                if cfg.mixup_alpha > 0:
                    x, y = mixup(x, y, float(lam_rng.beta(cfg.mixup_alpha, cfg.mixup_alpha)))
                x = x.to(env.device, non_blocking=True)
                y = y.to(env.device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                sync = nullcontext() if (not env.distributed or a == accum - 1) else train_model.no_sync()
                with sync:
                    with torch.autocast(env.device.type, dtype=amp_dtype, enabled=use_amp):
                        logits = train_model(x)  # (B, C)
                    loss = F.binary_cross_entropy_with_logits(logits.float(), y)
                    scaler.scale(loss / accum).backward()
                step_loss += loss.detach().double()
                clips += x.shape[0]
            step_loss /= accum
            if env.distributed:
                dist.all_reduce(step_loss)
                step_loss /= env.world
            loss_value = float(step_loss)
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(f"non-finite training loss ({loss_value}) at epoch {epoch}, step {step} (global step {global_step}); stopped, {kept_note()}")
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if cfg.clamp_positions:
                _clamp_positions(raw_model)
            global_step += 1
            if ema is not None:
                ema.update(raw_model, step=global_step)
            loss_sum += loss_value
            loss_count += 1
            if is_main:
                _append_csv(step_csv, STEP_FIELDS, {"step": global_step, "epoch": epoch, "loss": f"{loss_value:.8f}", "lr": f"{lr:.6e}"})
                if tb is not None:
                    tb.add_scalar("train/loss", loss_value, global_step)
                    tb.add_scalar("train/lr", lr, global_step)
                if global_step % cfg.log_every == 0 and not show_bar:
                    log.info("epoch %d step %d/%d: loss %.5f lr %.3e", epoch, step + 1, steps_per_epoch, loss_value, lr)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                bar.update(1)
            if cfg.max_steps and global_step >= cfg.max_steps:
                stop = True
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch and not stop:
                checkpoint(epoch, step + 1, "inside the epoch")
            if stop:
                break
        if bar is not None:
            bar.close()
        del batches, loader
        epoch_done = not stop or step + 1 == steps_per_epoch
        seconds = time.perf_counter() - t_epoch
        row = {
            "epoch": epoch,
            "step": global_step,
            "train_loss": f"{loss_sum / max(1, loss_count):.6f}",
            "lr": f"{schedule.lr_at(max(0, global_step - 1)):.6e}",
            "epoch_seconds": f"{seconds:.2f}",
            "clips_per_second": f"{clips * env.world / max(seconds, 1e-9):.2f}",
        }
        if eval_data is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or stop):
            last_eval = run_eval()
            if last_eval is not None:
                mt = last_eval["metrics"]
                row.update(eval_mAP=f"{mt.mAP:.6f}", eval_mAUC=f"{mt.mAUC:.6f}", eval_d_prime=f"{mt.d_prime:.4f}", eval_classes_scored=mt.classes_scored_ap)
                if tb is not None:
                    tb.add_scalar("eval/mAP", mt.mAP, global_step)
                    tb.add_scalar("eval/mAUC", mt.mAUC, global_step)
                log.info("epoch %d: train loss %s; eval %s", epoch, row["train_loss"], mt.describe())
        else:
            log.info("epoch %d: train loss %s (%.1f s)", epoch, row["train_loss"], seconds)
        if is_main:
            _append_csv(epoch_csv, EPOCH_FIELDS, row)
        if epoch_done:
            checkpoint(epoch + 1, 0, "end of epoch")
        else:
            checkpoint(epoch, step + 1, "stopped at max_steps")
        start_step = 0
        if stop:
            break

    # --- the end: summary and release --------------------------------------------------
    wall = time.perf_counter() - t_run
    summary: Dict = {
        "model": arch,
        "model_args": release_args,
        "parameters": _count_params(raw_model),
        "epochs": cfg.epochs,
        "global_steps": global_step,
        "effective_batch": cfg.effective_batch,
        "processes": env.world,
        "seed": cfg.seed,
        "weights": "ema" if ema is not None else "raw",
        "train_data": cfg.train,
        "train_clips": len(data.dataset),
        "eval_data": cfg.eval or None,
        "seconds": round(wall, 1),
        "finished": not stop or global_step >= total_steps,
        "run_dir": str(out),
    }
    if last_eval is not None:
        summary["eval"] = last_eval["metrics"].summary()
        summary["eval"]["clips_skipped"] = last_eval["skipped"]
    if is_main:
        if cfg.release:
            from audio_dcls.checkpoint import save_release

            release_dir = cfg.resolved_release_dir()
            net = ema.module if ema is not None else raw_model
            save_release(
                release_dir,
                net,
                arch,
                release_args,
                data.frontend,
                list(zip(vocab.mids, vocab.display_names)),
                _label_source(vocab, data),
                training={k: v for k, v in summary.items() if k != "run_dir"},
            )
            summary["release"] = str(release_dir)
            log.info("release folder: %s", release_dir)
        tmp = out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        tmp.replace(out / "summary.json")
        if tb is not None:
            tb.close()
    if env.distributed:
        dist.barrier()
    return summary


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML recipe (configs/*.yaml); without it, the defaults of pipelines/train_config.py")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=1 lr=2e-3 train=[a,b]")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last.pt")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    code = 0
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        summary = train(cfg, resume=args.resume, progress=False if args.no_progress else None)
        if int(os.environ.get("RANK", "0")) == 0:
            ev = summary.get("eval")
            score = f", eval mAP {ev['mAP']:.4f} ({ev['classes_scored_ap']} classes scored)" if ev else ""
            print(f"trained {summary['model']} for {summary['global_steps']} steps in {summary['seconds']:.0f} s{score}; run folder {summary['run_dir']}" + (f", release {summary['release']}" if "release" in summary else ""))
    except KeyboardInterrupt:
        print("train: interrupted; continue with the same command plus --resume", file=sys.stderr)
        code = 130
    except NonFiniteLoss as e:
        print(f"train: error: {e}", file=sys.stderr)
        code = 3
    except (ConfigError, CheckpointError, EvaluationError, ValueError, OSError) as e:
        print(f"train: error: {' '.join(str(e).split())}", file=sys.stderr)
        code = 1
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
