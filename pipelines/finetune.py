"""``make finetune``: your own sounds -> feature stores -> fine-tuning -> evaluation -> release -> REPORT.md.

The custom-data twin of ``make train-audioset``. Give a training and an evaluation CSV
``path,labels`` (labels separated by ';'; paths relative to each CSV's folder unless
``AUDIO_DIR``); the release to start from (``INIT_FROM``, default: the embedded default's
``runs/release/convnext_atto_dcls_audio-mini-seed0`` when it exists; ``none``: from scratch)
and a name (``NAME``, default ``{model}-{dataset}-seed{seed}``, the dataset being the
training CSV's folder)::

    make finetune TRAIN_CSV=my_sounds/train.csv EVAL_CSV=my_sounds/eval.csv
    make finetune TRAIN_CSV=my_sounds/train.csv EVAL_CSV=my_sounds/eval.csv AUDIO_DIR=/data/clips \\
        INIT_FROM=runs/release/convnext_atto_dcls_audio-mini-seed0 NAME=my-tagger ARGS="epochs=20 freeze=stages:2"

or directly (CPU; one GPU with ``device=cuda``; the recipe is configs/finetune_cpu.yaml)::

    python -m pipelines.finetune --train-csv my_sounds/train.csv --eval-csv my_sounds/eval.csv --name my-tagger
    python -m pipelines.finetune --train-csv ... --eval-csv ... --init-from RELEASE device=cuda batch_size=64 effective_batch=64

Steps: (1) the vocabulary (``--labels FILE``, else the parent's when it names every
label -- its classifier is then kept whole --, else the sorted union of both CSVs'
labels); (2) both CSVs precomputed into stores under ``data/stores/finetune/NAME/`` with
the parent's front-end settings; (3) ``pipelines.train`` with ``init_from=`` the parent
and its architecture (``runs/finetune/NAME/``); (4) ``pipelines.evaluate`` on the eval
store; (5) the release ``runs/release/NAME/`` and ``runs/finetune/NAME/REPORT.md``. A
rerun reuses what is built and trained (a finished run with other settings is refused).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from audio_dcls.features import LogMelConfig
from audio_dcls.io import atomic_write
from pipelines.init_from import INIT_SUMMARY_FILE, Parent, read_parent
from pipelines.train_audioset import EMBEDDED_RELEASE, SetupError, _cores, config_path, run_evaluation, run_job, run_training
from pipelines.vocabulary import VocabularyChoice, choose_vocabulary

log = logging.getLogger("pipelines.finetune")

FINETUNE_CONFIG = "configs/finetune_cpu.yaml"
NO_PARENT = ("none", "scratch")


@dataclass
class Plan:
    """What the command will do, decided before anything is built."""

    name: str
    dataset: str
    parent: Optional[Parent]
    init_from: str  # what init_from= gets ('' from scratch)
    vocabulary: VocabularyChoice
    frontend: LogMelConfig
    overrides: List[str]  # for pipelines.train, before the user's ARGS
    stores: Path
    run_dir: Path
    release: Path


def choose_parent(init_from: Optional[str], runs: Path) -> tuple[str, Optional[Parent]]:
    """(init_from value, our parent or None): INIT_FROM, else the embedded default's release when it exists."""
    if init_from and init_from.lower() in NO_PARENT:
        return "", None
    if not init_from:
        default = runs / "release" / EMBEDDED_RELEASE
        if not default.is_dir():
            log.warning("no INIT_FROM and no %s (run `make train-audioset` first to fine-tune it): training FROM SCRATCH", default)
            return "", None
        init_from = str(default)
        log.info("INIT_FROM not given: fine-tuning the embedded default's release %s", default)
    return init_from, read_parent(init_from)


def make_plan(args: argparse.Namespace, overrides: List[str]) -> Plan:
    from pipelines.train_config import dataset_name, load_config

    for what, path in (("TRAIN_CSV / --train-csv", args.train_csv), ("EVAL_CSV / --eval-csv", args.eval_csv)):
        if not path:
            raise SetupError(f"{what} is required (a CSV with the columns path,labels)")
        if not Path(path).is_file():
            raise SetupError(f"{what}: {path} does not exist")
    runs = Path(args.runs)
    init_from, parent = choose_parent(args.init_from, runs)
    vocab = choose_vocabulary([args.train_csv, args.eval_csv], args.labels, parent.vocabulary if parent else None, f"the parent release {parent.name}" if parent else "", release_must_cover=True)
    arch = parent.overrides() if parent is not None else []
    dataset = dataset_name([args.train_csv])
    probe = load_config(config_path(args.config), [f"dataset={dataset}", *arch, *overrides], require_data=False)
    name = args.name or probe.resolved_name()
    stores = Path(args.stores) if args.stores else Path(args.data_dir) / "stores" / "finetune" / name
    run_dir = runs / "finetune" / name
    release = runs / "release" / name
    base = [f"dataset={dataset}", f"name={name}", f"output_dir={run_dir}", f"release_dir={release}", f"train=[{stores / 'train'}]", f"eval={stores / 'eval'}"]
    base += arch
    if init_from:
        base.append(f"init_from={init_from}")
    if args.device != "auto":
        base.append(f"device={args.device}")
    frontend = parent.frontend if parent is not None else LogMelConfig(clip_seconds=args.clip_seconds)
    return Plan(name, dataset, parent, init_from, vocab, frontend, base, stores, run_dir, release)


def build_custom_store(csv_path: str, audio_dir: Optional[str], plan: Plan, out: Path, workers: int, strict: bool) -> Dict:
    """Precompute one CSV into ``out`` with the plan's vocabulary and front end (rebuilt when its inputs change)."""
    from pipelines.precompute import build_feature_store
    from pipelines.sources import CustomCsvSource

    source = CustomCsvSource(csv_path, audio_dir=audio_dir, vocabulary=plan.vocabulary.vocabulary, strict=strict)
    if len(source) == 0:
        raise SetupError(f"{csv_path}: no clip with audio ({len(source.missing)} listed clips missing, e.g. {source.missing[0].reason if source.missing else '?'})")
    for note in source.notes:
        log.warning("%s: %s", Path(csv_path).name, note)
    report = build_feature_store(source, out, frontend=plan.frontend, workers=workers, overwrite=True)
    log.info("%s", report.summary().replace("\n", "; "))
    return {"csv": str(csv_path), "store": str(out), "clips": report.written, "skipped": len(report.skipped), "unknown_labels": dict(source.unknown_labels), "trimmed": report.trimmed}


def _per_class_rows(eval_dir: Path) -> List[Dict[str, str]]:
    path = eval_dir / "per_class.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_report(path: Path, plan: Plan, stores: Dict[str, Dict], train_summary: Dict, eval_summary: Dict, seconds: float) -> None:
    """REPORT.md: where the model came from, the vocabulary, the data, the scores, and what to run next."""
    init = {}
    if (plan.run_dir / INIT_SUMMARY_FILE).is_file():
        init = json.loads((plan.run_dir / INIT_SUMMARY_FILE).read_text())
    p = plan.parent
    start = (f"fine-tuned from `{plan.init_from}` ({p.arch}, weights sha256 `{p.sha256[:16]}…`)" if p is not None
             else f"fine-tuned from `{plan.init_from}`" if plan.init_from else "trained FROM SCRATCH (no parent release)")
    ev = eval_summary
    lines = [f"# make finetune — {plan.name}", "", f"Model {start}.", ""]
    lines += [f"- {x}" for x in init.get("summary", [])]
    lines += [
        "",
        "| | |",
        "|---|---|",
        f"| vocabulary | {plan.vocabulary.describe()} |",
        f"| training data | {stores['train']['clips']} clips from `{stores['train']['csv']}` ({stores['train']['skipped']} skipped) |",
        f"| eval data | {stores['eval']['clips']} clips from `{stores['eval']['csv']}` ({stores['eval']['skipped']} skipped) |",
        f"| training | {train_summary.get('global_steps')} steps, {train_summary.get('epochs')} epochs, freeze={train_summary.get('freeze', 'none')}, {train_summary.get('seconds')} s |",
        f"| eval mAP | **{ev['mAP']:.4f}** over {ev['classes_scored_ap']} of {ev['num_classes']} classes (classes without positives are not scored) |",
        f"| eval mAUC / d′ | {ev['mAUC']:.4f} / {ev['d_prime']:.3f} |",
        f"| release folder | `{plan.release}` (self-contained: it never needs the parent's files) |",
        f"| run folder | `{plan.run_dir}` (config.yaml, labels.csv, init_from.json, train.log, eval/) |",
        f"| wall time | {seconds:.0f} s for this command |",
        "",
    ]
    for split in ("train", "eval"):
        for label, clips in sorted(stores[split]["unknown_labels"].items()):
            lines.append(f"- unknown label `{label}` in {clips} {split} clips: not in the vocabulary, ignored")
    rows = _per_class_rows(plan.run_dir / "eval")
    if rows:
        lines += ["", "| class | MID | eval positives | AP |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['mid'] or '—'} | {r['positives']} | {r['AP'] or '—'} |" for r in rows[:40]]
        if len(rows) > 40:
            lines.append(f"| … {len(rows) - 40} more in `{plan.run_dir / 'eval' / 'per_class.csv'}` | | | |")
    lines += [
        "",
        "Next:",
        "",
        f"    MODELS_DIR={plan.release.parent} make serve          # tag files with it (model name {plan.name})",
        f"    python -m pipelines.evaluate {plan.release} --csv OTHER.csv --out runs/eval/{plan.name}",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(lines))


def run(args: argparse.Namespace, overrides: List[str]) -> int:
    t0 = time.perf_counter()
    plan = make_plan(args, overrides)
    log.info("%s: vocabulary %s", plan.name, plan.vocabulary.describe())
    workers = args.workers or _cores()
    stores = {
        split: build_custom_store(csv_path, args.audio_dir, plan, plan.stores / split, workers, args.strict)
        for split, csv_path in (("train", args.train_csv), ("eval", args.eval_csv))
    }
    train_summary = run_training(config_path(args.config), plan.overrides + overrides, 1)
    release = Path(train_summary["release"])
    eval_dir = Path(train_summary["run_dir"]) / "eval"
    eval_summary = run_evaluation(release, plan.stores / "eval", eval_dir, "cpu" if args.device == "auto" else args.device, 0)
    report = plan.run_dir / "REPORT.md"
    write_report(report, plan, stores, train_summary, eval_summary, time.perf_counter() - t0)
    print(report.read_text(encoding="utf-8"))
    print(f"finetune finished: eval mAP {eval_summary['mAP']:.4f}; release folder {release}; report {report}")
    return 0


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m pipelines.finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides anywhere on the line (python -m pipelines.train --help-config)")
    p.add_argument("--train-csv", default=env.get("TRAIN_CSV") or None, help="training CSV path,labels (default: $TRAIN_CSV)")
    p.add_argument("--eval-csv", default=env.get("EVAL_CSV") or None, help="evaluation CSV path,labels (default: $EVAL_CSV)")
    p.add_argument("--audio-dir", default=env.get("AUDIO_DIR") or None, help="base folder of the CSVs' relative paths (default: $AUDIO_DIR, else each CSV's folder)")
    p.add_argument("--init-from", default=env.get("INIT_FROM") or None, help=f"the release (or last.pt) to fine-tune (default: $INIT_FROM, else runs/release/{EMBEDDED_RELEASE} when it exists); 'none' trains from scratch")
    p.add_argument("--name", default=env.get("NAME") or None, help="release and run name (default: $NAME, else {model}-{dataset}-seed{seed})")
    p.add_argument("--labels", default=None, help="the vocabulary: index,mid,display_name CSV or one label per line (default: the parent's when it names every label, else the sorted union of both CSVs' labels)")
    p.add_argument("--strict", action="store_true", help="a CSV label outside the vocabulary is an error (default: reported and ignored)")
    p.add_argument("--config", default=FINETUNE_CONFIG, help="training recipe (default %(default)s)")
    p.add_argument("--clip-seconds", type=float, default=LogMelConfig.clip_seconds, help="clip length when training from scratch (with a parent: the parent's)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--data-dir", default="data", help="the stores go to DATA_DIR/stores/finetune/NAME (default %(default)s)")
    p.add_argument("--stores", default=None, help="store folder for this run (default: DATA_DIR/stores/finetune/NAME)")
    p.add_argument("--runs", default="runs", help="run folders and releases go here; the default parent is looked up here (default %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="precompute processes (default: all cores)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    return run_job("finetune", args.overrides, lambda overrides: run(args, overrides))


if __name__ == "__main__":
    sys.exit(main())
