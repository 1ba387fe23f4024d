"""``make paper-table``: Table 1 of the paper from finished run folders.

Collects every run folder (``config.yaml`` + ``summary.json``, as written by
``pipelines.train``) under the given folders, groups the seeds of one model
and recipe, and writes the paper's Table-1 layout as markdown::

    | Model | Method | Kernel size / count | # Params | Throughput (clips/s) | mAP |

mAP is the mean ± sample standard deviation (ddof 1) over seeds of the final
eval mAP, in percent as in the paper; the seed count is in brackets. # Params
counts unique parameters (shared DCLS positions once). Throughput is measured
here, in this process, on ``--device``: forward passes of randomly initialised
models of each row's architecture at ``--batch-size`` clips of 128×1001
(inference form: DCLS folded, FastViT reparameterised, as the service runs
them); every row is measured on the same device in the same run, so the
ratios compare; ``--no-throughput`` skips it.

CPU (this machine; small batch)::

    python -m pipelines.paper_table runs --out runs/paper_table.md --device cpu --batch-size 4

One GPU (the paper measures throughput on a GPU)::

    python -m pipelines.paper_table runs --out runs/paper_table.md --device cuda --batch-size 64

This job is single-process by design (no torchrun form): a timing must not
share its device with another process.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from audio_dcls.io import atomic_write

log = logging.getLogger("pipelines.paper_table")

# The six models of the paper, in the paper's order: (model name, DSC/DCLS).
PAPER_ORDER = (
    "convnext_tiny_audio", "convnext_tiny_dcls_audio",
    "convformer_s18_audio", "convformer_s18_dcls_audio",
    "fastvit_sa24_audio", "fastvit_sa24_dcls_audio",
)
FAMILY_NAMES = {"convnext": "ConvNeXt", "convformer": "ConvFormer", "fastvit": "FastViT"}


class TableError(ValueError):
    """Nothing to tabulate, or unreadable input (one-line message)."""


@dataclass
class Run:
    folder: Path
    model: str
    model_args: Dict
    seed: int
    mAP: float
    parameters: int
    recipe_key: str  # what must agree between seeds of one row


@dataclass
class Row:
    model: str
    model_args: Dict
    runs: List[Run] = field(default_factory=list)
    throughput: Optional[float] = None


def _recipe_key(cfg: Dict) -> str:
    ignore = {"seed", "output_dir", "release_dir", "release", "name", "workers", "log_every", "eval_every", "checkpoint_every", "threads", "device", "compile", "max_steps"}
    return json.dumps({k: v for k, v in cfg.items() if k not in ignore}, sort_keys=True, default=str)


def find_runs(folders: Sequence[Path]) -> Tuple[List[Run], List[str]]:
    """Every finished run under ``folders``; also the notes on folders left out."""
    runs, notes = [], []
    for top in folders:
        top = Path(top)
        if not top.exists():
            raise TableError(f"{top}: no such folder")
        for summary_path in sorted(top.rglob("summary.json")):
            folder = summary_path.parent
            cfg_path = folder / "config.yaml"
            if not cfg_path.is_file():
                continue  # e.g. an evaluate output folder
            try:
                summary = json.loads(summary_path.read_text())
                cfg = yaml.safe_load(cfg_path.read_text())
            except (ValueError, yaml.YAMLError) as e:
                notes.append(f"{folder}: unreadable ({type(e).__name__}), left out")
                continue
            if not summary.get("finished"):
                notes.append(f"{folder}: run not finished, left out")
                continue
            ev = summary.get("eval")
            if not ev or not isinstance(ev.get("mAP"), (int, float)) or math.isnan(ev["mAP"]):
                notes.append(f"{folder}: no eval mAP, left out")
                continue
            runs.append(Run(folder, summary["model"], summary.get("model_args", {}), int(cfg.get("seed", 0)), float(ev["mAP"]), int(summary.get("parameters", 0)), _recipe_key(cfg)))
    return runs, notes


def group_runs(runs: List[Run]) -> Tuple[List[Row], List[str]]:
    rows: Dict[Tuple[str, str], Row] = {}
    notes = []
    for r in runs:
        key = (r.model, r.recipe_key)
        row = rows.setdefault(key, Row(r.model, r.model_args))
        if any(o.seed == r.seed for o in row.runs):
            notes.append(f"{r.folder}: a second run of {r.model} with seed {r.seed}; only the first ({[o.folder for o in row.runs if o.seed == r.seed][0]}) counts")
            continue
        row.runs.append(r)

    def order(row: Row):
        i = PAPER_ORDER.index(row.model) if row.model in PAPER_ORDER else len(PAPER_ORDER)
        return (i, row.model, -len(row.runs))

    return sorted(rows.values(), key=order), notes


def describe_kernel(model_name: str, model_args: Dict) -> Tuple[str, str]:
    """(method, 'kernel size / count') as in the paper's Table 1."""
    if "_dcls_" in model_name or model_args.get("dcls"):
        size = int(model_args.get("dcls_dilated_kernel_size", 23))
        count = int(model_args.get("dcls_kernel_count", 26))
        return "DCLS-Gauss" if model_args.get("dcls_version", "gauss") == "gauss" else f"DCLS-{model_args['dcls_version']}", f"{size}² / {count}"
    return "DSC (baseline)", "7² / 49"


def display_model(model_name: str) -> str:
    base = model_name.replace("_dcls_audio", "").replace("_audio", "")
    family, _, size = base.partition("_")
    return f"{FAMILY_NAMES.get(family, family)}-{size.upper() if len(size) <= 4 else size}"


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def measure_throughput(model_name: str, model_args: Dict, device: str, batch_size: int, iters: int, frames: int = 1001) -> float:
    """Clips per second of the inference form, after warm-up."""
    import torch

    from audio_dcls.labels import AUDIOSET_NUM_CLASSES
    from audio_dcls.model_factory import build_model
    from audio_dcls.models import prepare_for_inference

    torch.manual_seed(0)
    model = build_model(model_name, model_args, model_args.get("num_classes", AUDIOSET_NUM_CLASSES)).to(device)
    prepare_for_inference(model)
    x = torch.randn(batch_size, 1, 128, frames, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync()
        seconds = time.perf_counter() - t0
    return batch_size * iters / seconds


def render_markdown(rows: List[Row], throughput_note: str, notes: List[str]) -> str:
    lines = [
        "| Model | Method | Kernel size / count | # Params | Throughput (clips/s) | mAP (%) |",
        "|---|---|---|---:|---:|---|",
    ]
    for row in rows:
        method, kernel = describe_kernel(row.model, row.model_args)
        mean, std = mean_std([r.mAP * 100 for r in row.runs])
        seeds = ",".join(str(r.seed) for r in sorted(row.runs, key=lambda r: r.seed))
        score = f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"
        params = row.runs[0].parameters
        tp = f"{row.throughput:,.1f}" if row.throughput is not None else "—"
        lines.append(f"| {display_model(row.model)} (`{row.model}`) | {method} | {kernel} | {params / 1e6:.2f} M | {tp} | {score} ({len(row.runs)} seed{'s' if len(row.runs) > 1 else ''}: {seeds}) |")
    lines += ["", throughput_note, "mAP: mean ± sample standard deviation over seeds of the final eval mAP (classes with at least one positive)."]
    if notes:
        lines += ["", "Left out:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def build_table(folders: Sequence[Path], device: Optional[str] = "cpu", batch_size: int = 8, iters: int = 3) -> str:
    runs, notes = find_runs(folders)
    if not runs:
        raise TableError(f"no finished run folder (config.yaml + summary.json with an eval mAP) under {', '.join(map(str, folders))}")
    rows, more = group_runs(runs)
    notes += more
    if device:
        for row in rows:
            args = {k: v for k, v in row.model_args.items()}
            row.throughput = measure_throughput(row.model, args, device, batch_size, iters)
        note = f"Throughput: inference form, batch {batch_size} of 1×128×1001 log-mels, {iters} timed passes, on {device}, measured by this run."
    else:
        note = "Throughput: not measured (--no-throughput)."
    return render_markdown(rows, note, notes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.paper_table", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="folders searched (recursively) for run folders")
    p.add_argument("--out", type=Path, help="markdown file to write (default: print only)")
    p.add_argument("--device", default="cpu", help="where throughput is measured (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="throughput batch (default %(default)s)")
    p.add_argument("--iters", type=int, default=3, help="timed forward passes per model (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the CPU timing (0 = default)")
    p.add_argument("--no-throughput", action="store_true", help="leave the throughput column empty")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.batch_size < 1 or args.iters < 1:
            raise TableError("--batch-size and --iters must be >= 1")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        device = None
        if not args.no_throughput:
            from audio_dcls.device import resolve_device

            device = str(resolve_device(args.device))
        text = build_table(args.folders, device, args.batch_size, args.iters)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.out, text)
        print(text, end="")
        if args.out:
            print(f"wrote {args.out}")
        return 0
    except (TableError, OSError, ValueError) as e:
        print(f"paper_table: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
