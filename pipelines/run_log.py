"""The run folder's record of a training run: metrics.csv, steps.csv, TensorBoard.

Only rank 0 writes (a RunLog made with ``enabled=False`` does nothing). A resumed run
first cuts both CSVs back to its checkpoint, so that the rows after it are written
once, by the resumed run.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Dict, Sequence

from audio_dcls.io import atomic_open

EPOCH_FIELDS = ("epoch", "step", "train_loss", "lr", "epoch_seconds", "clips_per_second", "eval_mAP", "eval_mAUC", "eval_d_prime", "eval_classes_scored")
STEP_FIELDS = ("step", "epoch", "loss", "lr")


def truncate_csv(path: Path, fields: Sequence[str], keep: Callable[[Dict[str, str]], bool]) -> None:
    """Rewrite ``path`` (atomically) with the complete rows ``keep(row)`` accepts; a header alone if it is new."""
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if None not in r.values() and keep(r)]
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def append_csv(path: Path, fields: Sequence[str], row: Dict) -> None:
    """One row more (a log, appended in place; a row torn by a kill is dropped by the next resume)."""
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow({k: row.get(k, "") for k in fields})


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder / "tb"))


class RunLog:
    """metrics.csv (one row per epoch), steps.csv (one per optimizer step) and TensorBoard scalars."""

    def __init__(self, folder: Path, enabled: bool):
        self.folder = Path(folder)
        self.enabled = enabled
        self.epoch_csv = self.folder / "metrics.csv"
        self.step_csv = self.folder / "steps.csv"
        self._tb = None

    def start(self, epoch: int, global_step: int) -> None:
        """Keep the rows before (epoch, global_step), where this run starts or resumes."""
        if not self.enabled:
            return
        truncate_csv(self.epoch_csv, EPOCH_FIELDS, lambda r: int(r["epoch"]) < epoch)
        truncate_csv(self.step_csv, STEP_FIELDS, lambda r: int(r["step"]) <= global_step)
        self._tb = _tensorboard(self.folder)

    def step(self, global_step: int, epoch: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        append_csv(self.step_csv, STEP_FIELDS, {"step": global_step, "epoch": epoch, "loss": f"{loss:.8f}", "lr": f"{lr:.6e}"})
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, global_step)
            self._tb.add_scalar("train/lr", lr, global_step)

    def epoch(self, row: Dict, global_step: int) -> None:
        if not self.enabled:
            return
        append_csv(self.epoch_csv, EPOCH_FIELDS, row)
        if self._tb is not None and row.get("eval_mAP"):
            self._tb.add_scalar("eval/mAP", float(row["eval_mAP"]), global_step)
            self._tb.add_scalar("eval/mAUC", float(row["eval_mAUC"]), global_step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
