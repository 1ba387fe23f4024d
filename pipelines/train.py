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

Fine-tune a release onto your own ``path,labels`` CSVs (CPU; ``pipelines.finetune`` /
``make finetune`` does stores, training, evaluation and a report in one command)::

    python -m pipelines.train -c configs/finetune_cpu.yaml train=[my_sounds/train.csv] eval=my_sounds/eval.csv \
        init_from=runs/release/convnext_atto_dcls_audio-mini-seed0 freeze=stages:2

Every config key with its type, default and meaning: ``python -m pipelines.train --help-config``.

What a run folder (``output_dir``) holds: ``config.yaml`` (the resolved config),
``labels.csv`` (the label vocabulary, row i = output i), ``last.pt`` (the latest
checkpoint, replaced atomically), ``metrics.csv`` (one row per epoch), ``steps.csv``
(loss and lr per optimizer step), ``train.log`` (written by this CLI),
``summary.json`` (final metrics), ``init_from.json`` (what ``init_from`` loaded) and
``release/NAME/`` — the release folder the service loads (safetensors weights,
config.yaml, labels.csv; no pickle), NAME = ``name`` or ``{model}-{dataset}-seed{seed}``.

Data path. DataLoader workers return the clips as stored (int16 waveforms or fp16
log-mels; audio decoded on the fly as int16 waveforms); each micro-batch moves to the
device as it is, and there the run's ModelInput applies ``augment`` (``dcls_audio``, the
paper's, needs waveforms; ``specaugment``; ``none``) and the front end, then the step
smooths the labels and mixes the batch. Long clips of a ``--max-seconds`` store become
items as ``long_clips`` says (first, random_crop, windows).

In Python, :func:`train` runs a whole run; :func:`pipelines.train_step.train_step`
is one optimizer step on a :class:`pipelines.train_state.RunState`.

Reproducibility. The data order of epoch e is a permutation drawn from (seed, e);
optimizer step s takes the next ``effective_batch`` clips of it, cut into
micro-batches m = a·world + rank (a = accumulation index). Every random draw of a
micro-batch (augmentation, mixup λ, crops, drop path) comes from a generator seeded
with (seed, e, s, m); torch's global RNG is forked around it, not consumed. So a run gives the same numbers with 1 process × 2
accumulation steps or 2 processes × 1, and a resumed run continues exactly where
the checkpoint left off. Checkpoints also carry every RNG state of every rank.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from audio_dcls import ops
from audio_dcls.io import atomic_write_json
from audio_dcls.labels import LabelVocabulary
from pipelines.checkpoints import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    read_checkpoint,
    remove_stale_checkpoint_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pipelines.data import DataError, DataSpec, collate_items, is_custom_csv, open_data, open_training_data
from pipelines.distributed import DistEnv, barrier, gather_objects, init_distributed, shutdown_distributed, torchrun_rank
from pipelines.model_input import check_augment_fits
from pipelines.run_log import RunLog
from pipelines.sampling import GlobalBatchSampler
from pipelines.scoring import NothingScored, Scores, ScoringOptions, align_targets, check_frontend, score
from pipelines.init_from import INIT_SUMMARY_FILE, InitFromError, Parent, initialise, read_parent
from pipelines.train_config import ConfigError, TrainConfig, config_differences, describe_keys, load_config, save_config
from pipelines.train_state import RunState, build_run_state, release_model_args
from pipelines.train_step import MicroBatch, NonFiniteLoss, StepResult, train_step
from pipelines.vocabulary import VocabularyChoice, choose_vocabulary

log = logging.getLogger("pipelines.train")


# ----------------------------------------------------------------------------------
# setting a run up
# ----------------------------------------------------------------------------------
def check_run_folder(cfg: TrainConfig, resume: bool) -> Tuple[Optional[Dict], Optional[Dict]]:
    """(the checkpoint to resume, or None; the summary of a run that already finished, or None).
    Refuses to overwrite a run, and to resume one with settings that change its numbers."""
    out = cfg.resolved_output_dir()
    ckpt_path = out / CHECKPOINT_FILE
    if not resume:
        if ckpt_path.exists():
            raise ConfigError(f"{out} already holds a run ({CHECKPOINT_FILE}); pass --resume to continue it or choose another output_dir")
        return None, None
    ckpt = read_checkpoint(ckpt_path)
    changed = config_differences(ckpt["config_obj"], cfg)
    if changed:
        old, new = ckpt["config_obj"].to_dict(), cfg.to_dict()
        shown = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:4])
        raise ConfigError(f"--resume: the config differs from the checkpoint's ({shown}); use the same settings or a new output_dir")
    if ckpt["epoch"] >= cfg.epochs and (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text())
        if summary.get("finished"):
            log.warning("%s: this run already finished (%d epochs); nothing to resume", out, cfg.epochs)
            return ckpt, summary
    return ckpt, None


def run_vocabulary(cfg: TrainConfig, parent: Optional[Parent], ckpt: Optional[Dict]) -> Optional[VocabularyChoice]:
    """The vocabulary ``path,labels`` training CSVs are read into (see pipelines.vocabulary); None
    leaves the training data its own (stores, AudioSet CSVs, HDF5 packs). A resumed run keeps its checkpoint's."""
    if ckpt is not None:
        labels = [tuple(x) for x in ckpt["labels"]]
        return VocabularyChoice(LabelVocabulary([m for m, _ in labels], [n for _, n in labels]), "the run's checkpoint")
    train_csvs = [t for t in cfg.train if is_custom_csv(t)]
    if not train_csvs:
        return choose_vocabulary([], labels_file=cfg.labels) if cfg.labels else None
    csvs = train_csvs + ([cfg.eval] if cfg.eval and is_custom_csv(cfg.eval) else [])
    release = parent.vocabulary if parent is not None else None
    return choose_vocabulary(csvs, cfg.labels or None, release, f"the init_from {parent.format} {parent.name}" if parent else "", release_must_cover=True)


def _report_unknown_labels(what: str, data: DataSpec) -> None:
    for label, clips in sorted(data.unknown_labels.items()):
        log.warning("%s: label %r (%d clips) is not in the %d-class vocabulary; ignored, those clips keep their other labels", what, label, clips, len(data.vocabulary))


def open_run_data(cfg: TrainConfig, vocab: Optional[VocabularyChoice] = None, frontend=None) -> Tuple[DataSpec, Optional[DataSpec]]:
    """The training data and the evaluation data (read into the run's vocabulary and front end
    where it is decoded on the fly; a store must match the front end and share classes)."""
    data = open_training_data(cfg.train, cfg.audio_dir or None, vocab.vocabulary if vocab else None, frontend, cfg.strict_labels, cfg.long_clips, cfg.seed)
    _report_unknown_labels("train", data)
    try:
        check_augment_fits(cfg.augment, data.item_kind, f"train={cfg.train[0] if len(cfg.train) == 1 else cfg.train}")
    except BaseException:
        data.close()
        raise
    if not cfg.eval:
        return data, None
    try:
        eval_data = open_data(cfg.eval, cfg.audio_dir or None, data.frontend, data.vocabulary, cfg.strict_labels)
        check_frontend(data.frontend, eval_data.frontend)
        no_clips = np.zeros((0, len(eval_data.vocabulary)), np.uint8)
        _, unknown = align_targets(no_clips, eval_data.vocabulary, data.vocabulary)
    except BaseException:
        data.close()
        raise
    _report_unknown_labels("eval", eval_data)
    if unknown:
        log.warning("eval: %d classes of %s are not among the training classes; they are not scored", len(unknown), cfg.eval)
    return data, eval_data


def check_parent(cfg: TrainConfig, parent: Parent, data: DataSpec) -> None:
    """The parent must be the architecture this config builds, on the data's front end."""
    if parent.arch != cfg.model:
        raise InitFromError(f"init_from: {parent.path} is a {parent.arch} model and this config builds {cfg.model}; set {parent.needs()} (pipelines.finetune does)")
    try:
        check_frontend(parent.frontend, data.frontend)
    except DataError as e:
        raise InitFromError(f"init_from: {parent.path}: {e}") from None


def plan_steps(cfg: TrainConfig, num_clips: int, env: DistEnv) -> GlobalBatchSampler:
    """The sampler of the run: micro-batch x processes x accumulation = effective batch."""
    micro = cfg.batch_size
    if cfg.effective_batch % (micro * env.world):
        raise ConfigError(f"effective_batch {cfg.effective_batch} is not a multiple of batch_size x processes = {micro} x {env.world}")
    accum = cfg.effective_batch // (micro * env.world)
    sampler = GlobalBatchSampler(num_clips, micro, env.world, env.rank, accum, cfg.seed)
    if sampler.steps_per_epoch == 0:
        raise ConfigError(f"the training data has {num_clips} clips, fewer than one effective batch ({cfg.effective_batch})")
    return sampler


def resume_state(state: RunState, ckpt: Dict, env: DistEnv, path: Path, steps_per_epoch: int) -> None:
    """The checkpoint's run state, and this rank's RNG states (rank 0's after a change of world size)."""
    state.load_state_dict(ckpt)
    rngs = ckpt["rng"]
    set_rng_state(rngs[env.rank] if len(rngs) == env.world else rngs[0])
    # The kernel routes the first run measured (autotuned tiles, weight-gradient route per
    # shape): measuring again could pick others and change the float sums.
    routes = ckpt.get("ops_routes")
    if routes:
        ops.config.load_routes_state(routes[env.rank] if len(routes) == env.world else routes[0])
    if ckpt.get("world_size") != env.world:
        log.warning("resuming a %s-process run with %d processes: same data order and randomness, float sums may differ slightly", ckpt.get("world_size"), env.world)
    log.info("resumed %s at epoch %d, step %d of %d (global step %d)", path, state.epoch, state.step_in_epoch, steps_per_epoch, state.global_step)


def wrap_for_training(model: nn.Module, cfg: TrainConfig, env: DistEnv) -> nn.Module:
    """What the forward pass calls: DDP under torchrun, compiled when asked."""
    wrapped = model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------
@dataclass
class _EpochMeter:
    loss_sum: float = 0.0
    steps: int = 0
    clips: int = 0

    def add(self, r: StepResult) -> None:
        self.loss_sum += r.loss
        self.steps += 1
        self.clips += r.clips


class Trainer:
    """The epoch loop around :func:`train_step`: data loading, evaluation, logs, checkpoints,
    summary and release. Build it with :meth:`build`, then :meth:`run` it once."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, data: DataSpec, eval_data: Optional[DataSpec], sampler: GlobalBatchSampler, state: RunState, progress: Optional[bool] = None):
        self.cfg, self.env = cfg, env
        self.data, self.eval_data = data, eval_data
        self.sampler, self.state = sampler, state
        self.out = cfg.resolved_output_dir()
        self.ckpt_path = self.out / CHECKPOINT_FILE
        self.release_args = release_model_args(cfg, len(data.vocabulary))
        self.logs = RunLog(self.out, env.is_main)
        self.show_bar = env.is_main and (sys.stderr.isatty() if progress is None else progress)
        self.stopped = False  # max_steps reached
        self.last_eval: Optional[Scores] = None
        self.vocabulary_source = f"the training data's own ({cfg.train[0]})"
        self.init_record: Optional[Dict] = None  # init_from: source, format and parent (name, sha256, ...)

    @classmethod
    def build(cls, cfg: TrainConfig, env: DistEnv, ckpt: Optional[Dict] = None, progress: Optional[bool] = None) -> "Trainer":
        parent = read_parent(cfg.init_from) if cfg.init_from and ckpt is None else None
        vocab = run_vocabulary(cfg, parent, ckpt)
        data, eval_data = open_run_data(cfg, vocab, parent.frontend if parent is not None else None)
        try:
            if parent is not None:
                check_parent(cfg, parent, data)
            sampler = plan_steps(cfg, len(data.dataset), env)
            label_rate = data.label_rate() if cfg.head_bias_init == "auto" else None
            init = (lambda model: initialise(model, cfg.init_from, data.vocabulary, parent, cfg.init_fresh_dcls)) if cfg.init_from and ckpt is None else None
            state = build_run_state(cfg, len(data.vocabulary), env.device, sampler.steps_per_epoch, sampler.accum, data.frontend, data.item_kind, env.world, label_rate, init)
            if ckpt is not None:
                resume_state(state, ckpt, env, cfg.resolved_output_dir() / CHECKPOINT_FILE, sampler.steps_per_epoch)
            state.train_model = wrap_for_training(state.model, cfg, env)
        except BaseException:
            data.close()
            if eval_data is not None:
                eval_data.close()
            raise
        trainer = cls(cfg, env, data, eval_data, sampler, state, progress)
        if vocab is not None:
            trainer.vocabulary_source = vocab.source
        if state.init_summary is not None:
            s = state.init_summary
            trainer.init_record = {"source": s.source, "format": s.format, "parent": s.parent}
        elif ckpt is not None:
            trainer.init_record = ckpt.get("init_from")
        return trainer

    def close(self) -> None:
        self.logs.close()
        self.data.close()
        if self.eval_data is not None:
            self.eval_data.close()

    def run(self) -> Dict:
        """Train to the last epoch (or max_steps), then write summary.json and the release."""
        t0 = time.perf_counter()
        self._start()
        while self.state.epoch < self.cfg.epochs and not self.stopped:
            self._run_epoch()
        summary = self._summary(time.perf_counter() - t0)
        if self.env.is_main:
            self._finish(summary)
        barrier()
        return summary

    def _start(self) -> None:
        s, cfg = self.state, self.cfg
        self.logs.start(s.epoch, s.global_step)
        if not self.env.is_main:
            return
        save_config(cfg, self.out / "config.yaml")
        self.data.vocabulary.to_csv(self.out / "labels.csv")
        log.info(
            "%s: %s parameters, %d classes, %d training clips, %d steps/epoch x %d epochs, batch %d x %d processes x %d accumulation = %d, device %s",
            cfg.model, f"{_count_params(s.model):,}", len(self.data.vocabulary), len(self.data.dataset), self.sampler.steps_per_epoch, cfg.epochs,
            cfg.batch_size, self.env.world, self.sampler.accum, cfg.effective_batch, self.env.device,
        )
        log.info("vocabulary: %d classes from %s", len(self.data.vocabulary), self.vocabulary_source)
        if s.init_summary is not None:
            for line in s.init_summary.lines:
                log.info("%s", line)
            atomic_write_json(self.out / INIT_SUMMARY_FILE, s.init_summary.to_dict())
        if s.frozen.modules:
            log.info("%s", s.frozen.describe())
            if not cfg.init_from:
                log.warning("freeze=%s without init_from: the frozen parts keep their random initialisation", cfg.freeze)
        log.info("data path: %s items -> %s on %s (augment=%s), then label smoothing %g and mixup alpha %g", self.data.item_kind,
                 "front end" if self.data.item_kind == "waveform" else "log-mels", self.env.device, cfg.augment, cfg.label_smoothing, cfg.mixup_alpha)
        for note in self.data.notes:
            log.info("long clips: %s", note)

    # --- one epoch -------------------------------------------------------------------
    def _run_epoch(self) -> None:
        s, cfg = self.state, self.cfg
        epoch, t0 = s.epoch, time.perf_counter()
        meter = self._train_steps()
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "step": s.global_step,
            "train_loss": f"{meter.loss_sum / max(1, meter.steps):.6f}",
            "lr": f"{s.schedule.lr_at(max(0, s.global_step - 1)):.6e}",
            "epoch_seconds": f"{seconds:.2f}",
            "clips_per_second": f"{meter.clips * self.env.world / max(seconds, 1e-9):.2f}",
        }
        if self.eval_data is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or self.stopped):
            self.last_eval = self._evaluate()
            if self.last_eval is not None:
                mt = self.last_eval.metrics
                row.update(eval_mAP=f"{mt.mAP:.6f}", eval_mAUC=f"{mt.mAUC:.6f}", eval_d_prime=f"{mt.d_prime:.4f}", eval_classes_scored=mt.classes_scored_ap)
                log.info("epoch %d: train loss %s; eval %s", epoch, row["train_loss"], mt.describe())
        else:
            log.info("epoch %d: train loss %s (%.1f s)", epoch, row["train_loss"], seconds)
        self.logs.epoch(row, s.global_step)
        if s.step_in_epoch == self.sampler.steps_per_epoch:
            s.next_epoch()
            self._checkpoint("end of epoch")
        else:
            self._checkpoint("stopped at max_steps")

    def _train_steps(self) -> _EpochMeter:
        """The optimizer steps of the current epoch, from state.step_in_epoch on."""
        s, cfg, steps = self.state, self.cfg, self.sampler.steps_per_epoch
        self.data.set_epoch(s.epoch)  # the epoch's random crops of long clips, before the workers start
        loader = DataLoader(
            self.data.dataset,
            batch_sampler=self.sampler.batches(s.epoch, s.step_in_epoch),
            num_workers=cfg.workers,
            collate_fn=collate_items,
            pin_memory=self.env.device.type == "cuda",
            persistent_workers=False,
        )
        batches = iter(loader)
        meter = _EpochMeter()
        bar = self._progress_bar()
        s.train_model.train()
        try:
            while s.step_in_epoch < steps and not self.stopped:
                result = self._step(self._micro_batches(batches))
                meter.add(result)
                if bar is not None:
                    bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}")
                    bar.update(1)
                self.stopped = bool(cfg.max_steps) and s.global_step >= cfg.max_steps
                if cfg.checkpoint_every and s.step_in_epoch % cfg.checkpoint_every == 0 and s.step_in_epoch < steps and not self.stopped:
                    self._checkpoint("inside the epoch")
        finally:
            if bar is not None:
                bar.close()
        return meter

    def _progress_bar(self):
        if not self.show_bar:
            return None
        from tqdm import tqdm

        s = self.state
        return tqdm(total=self.sampler.steps_per_epoch, initial=s.step_in_epoch, desc=f"epoch {s.epoch}", unit="step", dynamic_ncols=True)

    def _micro_batches(self, batches) -> List[MicroBatch]:
        out = []
        for a in range(self.sampler.accum):
            x, y, _idx, skipped, _warned = next(batches)
            if skipped:
                log.warning("rank %d skipped %d clips in step %d (e.g. %s)", self.env.rank, len(skipped), self.state.global_step, skipped[0][1])
            out.append(MicroBatch(a * self.env.world + self.env.rank, x, y))
        return out

    def _step(self, micro: List[MicroBatch]) -> StepResult:
        s = self.state
        try:
            result = train_step(s, micro)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e}; stopped, {self._kept_note()}") from None
        self.logs.step(s.global_step, s.epoch, result.loss, result.lr)
        if self.env.is_main and s.global_step % self.cfg.log_every == 0 and not self.show_bar:
            log.info("epoch %d step %d/%d: loss %.5f lr %.3e", s.epoch, s.step_in_epoch, self.sampler.steps_per_epoch, result.loss, result.lr)
        return result

    def _evaluate(self) -> Optional[Scores]:
        s, cfg = self.state, self.cfg
        amp = s.recipe.amp_dtype if s.recipe.use_amp else None
        options = ScoringOptions(cfg.batch_size, self.env.device, cfg.workers, amp, cfg.channels_last, progress=False)
        try:
            return score(s.eval_model, self.data.vocabulary, self.data.frontend, self.eval_data, options)
        except NothingScored as e:
            log.warning("evaluation: %s", e)
            return None

    # --- checkpoints -----------------------------------------------------------------
    def _kept_note(self) -> str:
        if not self.ckpt_path.exists():
            return "no checkpoint was written yet. Lower lr, set clip_grad, or check the data"
        good = read_checkpoint(self.ckpt_path)
        return (
            f"the last good checkpoint {self.ckpt_path} (epoch {good['epoch']}, step {good['step_in_epoch']}, global step {good['global_step']}) is kept. "
            "Lower lr, set clip_grad, or check the data, then continue it with --resume"
        )

    def _checkpoint(self, note: str) -> None:
        s, env = self.state, self.env
        # A diverged update can leave inf/NaN weights before any loss shows it: never save those.
        if not all(bool(torch.isfinite(p).all()) for p in s.model.parameters()):
            raise NonFiniteLoss(f"non-finite weights after global step {s.global_step} (epoch {s.epoch}); stopped, {self._kept_note()}")
        rngs = gather_objects(rng_state(), env.world)
        routes = gather_objects(ops.config.routes_state(), env.world)  # each rank measures its own
        if not env.is_main:
            return
        vocab = self.data.vocabulary
        header = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "arch": self.cfg.model,
            "model_args": self.release_args,
            "frontend": self.data.frontend.to_dict(),
            "labels": [[m, n] for m, n in zip(vocab.mids, vocab.display_names)],
            "label_source": vocab.label_set,
            "init_from": self.init_record,
        }
        save_checkpoint(self.ckpt_path, {**header, **s.state_dict(), "world_size": env.world, "rng": rngs, "ops_routes": routes, "note": note})

    # --- the end ---------------------------------------------------------------------
    def _summary(self, seconds: float) -> Dict:
        s, cfg = self.state, self.cfg
        summary: Dict = {
            "model": cfg.model,
            "model_args": self.release_args,
            "parameters": _count_params(s.model),
            "epochs": cfg.epochs,
            "global_steps": s.global_step,
            "effective_batch": cfg.effective_batch,
            "processes": self.env.world,
            "seed": cfg.seed,
            "weights": "ema" if s.ema is not None else "raw",
            "train_data": cfg.train,
            "train_clips": len(self.data.dataset),
            "data_path": {"items": self.data.item_kind, "augment": cfg.augment, "long_clips": self.data.notes or None},
            "eval_data": cfg.eval or None,
            "vocabulary": self.vocabulary_source,
            "init_from": self.init_record,
            "freeze": cfg.freeze,
            "seconds": round(seconds, 1),
            "finished": not self.stopped or s.global_step >= self.sampler.steps_per_epoch * cfg.epochs,
            "run_dir": str(self.out),
        }
        if self.last_eval is not None:
            summary["eval"] = self.last_eval.metrics.summary()
            summary["eval"]["clips_skipped"] = len(self.last_eval.skipped)
        return summary

    def _finish(self, summary: Dict) -> None:
        """Rank 0: the release folder (when configured) and summary.json."""
        if self.cfg.release:
            from audio_dcls.checkpoint import save_release

            vocab = self.data.vocabulary
            release_dir = self.cfg.resolved_release_dir()
            training = {k: v for k, v in summary.items() if k != "run_dir"}
            # The classes the training data had positives for: the service shows what the model can know.
            training["populated_classes"] = self.data.populated_classes()
            save_release(release_dir, self.state.eval_model, self.cfg.model, self.release_args, self.data.frontend, list(zip(vocab.mids, vocab.display_names)), vocab.label_set, training=training)
            summary["release"] = str(release_dir)
            log.info("release folder: %s", release_dir)
        atomic_write_json(self.out / "summary.json", summary)


def train(cfg: TrainConfig, resume: bool = False, progress: Optional[bool] = None) -> Dict:
    """Run (or resume) training as configured; returns the final summary (rank 0: also written).

    Leaves the process's logging and thread settings alone (the CLI sets those); joins the
    torchrun process group when there is one."""
    env = init_distributed(cfg.device)
    ckpt, finished = check_run_folder(cfg, resume)
    if finished is not None:
        return finished
    out = cfg.resolved_output_dir()
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_checkpoint_temps(out)  # a process killed while writing a checkpoint
    barrier()
    trainer = Trainer.build(cfg, env, ckpt, progress)
    try:
        return trainer.run()
    finally:
        trainer.close()


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML recipe (configs/*.yaml); without it, the defaults (see --help-config)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides anywhere on the line, e.g. seed=1 lr=2e-3 train=[a,b]")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last.pt")
    p.add_argument("--name", help="the release's name (the same as name=NAME; default {model}-{dataset}-seed{seed})")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-config", action="store_true", help="list every config key with its type, default and meaning, and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    return p


def _setup_logging(rank: int, folder: Path) -> Tuple[List[logging.Handler], int]:
    """stderr for every rank (warnings only off rank 0) and the run's train.log on rank 0;
    returns what to undo: the handlers added and the root level before."""
    root = logging.getLogger()
    before = root.level
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(folder / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return handlers, before


def _restore_logging(handlers: List[logging.Handler], level: int) -> None:
    root = logging.getLogger()
    for h in handlers:
        root.removeHandler(h)
        h.close()
    root.setLevel(level)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.help_config:
        print(describe_keys())
        return 0
    code = 0
    added: Tuple[List[logging.Handler], int] = ([], logging.getLogger().level)
    threads = torch.get_num_threads()
    try:
        cfg = load_config(args.config, [*args.overrides, *([f"name={args.name}"] if args.name else [])])
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        added = _setup_logging(torchrun_rank(), cfg.resolved_output_dir())
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        summary = train(cfg, resume=args.resume, progress=False if args.no_progress else None)
        if torchrun_rank() == 0:
            ev = summary.get("eval")
            score_note = f", eval mAP {ev['mAP']:.4f} ({ev['classes_scored_ap']} classes scored)" if ev else ""
            print(f"trained {summary['model']} for {summary['global_steps']} steps in {summary['seconds']:.0f} s{score_note}; run folder {summary['run_dir']}" + (f", release {summary['release']}" if "release" in summary else ""))
    except KeyboardInterrupt:
        print("train: interrupted; continue with the same command plus --resume", file=sys.stderr)
        code = 130
    except NonFiniteLoss as e:
        print(f"train: error: {e}", file=sys.stderr)
        code = 3
    except (ConfigError, CheckpointError, DataError, ValueError, OSError, KeyError) as e:
        print(f"train: error: {' '.join(str(e).split())}", file=sys.stderr)
        code = 1
    finally:
        shutdown_distributed()
        _restore_logging(*added)
        torch.set_num_threads(threads)  # called in-process (tests, notebooks): leave the caller's setting
    return code


if __name__ == "__main__":
    sys.exit(main())
