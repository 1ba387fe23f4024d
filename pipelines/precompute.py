"""Precompute a store of training clips (see pipelines/feature_store.py): fp16 log-mels
(``--kind logmel``, the default) or int16 waveforms (``--kind waveform``: what the
paper's recipes train on -- the training device augments them and runs the front end).

CPU only -- decoding and the STFT are cheap next to training, so GPUs are never used
here; spread the work over cores with --workers and over machines with --shard.
Importing PANNs HDF5 packs into a waveform store copies their int16 samples as they
are (no decoding) when the pack's rate is the front end's.

One machine (all cores), official AudioSet CSV + a folder of Y{YTID}.wav files::

    python -m pipelines.precompute build data/stores/eval \\
        --audioset-csv ../shared/audioset/eval_segments.csv --audio-dir /data/audioset/eval --workers 16

PANNs HDF5 packs, or your own folder + ``path,labels`` CSV::

    python -m pipelines.precompute build data/stores/bal --hdf5 packs/balanced_train.h5
    python -m pipelines.precompute build data/stores/mine --custom-csv my_sounds/train.csv

Train and eval CSVs against one vocabulary (the sorted union of their labels) in one
call -- OUT is then a folder holding one store per CSV, named by the CSV (here
data/stores/mine/train and data/stores/mine/eval) -- or later splits against the
vocabulary of an earlier store, or an explicit label file::

    python -m pipelines.precompute build data/stores/mine --custom-csv my_sounds/train.csv --custom-csv my_sounds/eval.csv
    python -m pipelines.precompute build data/stores/mine_test --custom-csv my_sounds/test.csv --labels-from data/stores/mine/train
    python -m pipelines.precompute build data/stores/mine --custom-csv my_sounds/train.csv --labels my_labels.txt

Waveform stores (the paper recipes), and clips kept whole up to 60 s instead of cut to
their first 10 s (training then reads them with ``long_clips=first|random_crop|windows``)::

    python -m pipelines.precompute build data/stores/audioset_waveform/eval --kind waveform \\
        --audioset-csv ../shared/audioset/eval_segments.csv --audio-dir /data/audioset/eval
    python -m pipelines.precompute build data/stores/mine_long --custom-csv my_sounds/train.csv --max-seconds 60

N machines splitting one split (same command with i = 0..N-1, each into its own
folder), then join and check::

    python -m pipelines.precompute build part3 --audioset-csv ... --audio-dir ... --shard 3/8
    python -m pipelines.precompute merge data/stores/unbal part0 part1 ... part7
    python -m pipelines.precompute verify data/stores/unbal

A killed run resumes when started again with the same arguments: finished shards
are kept, the rest is redone. Clips that cannot be used are skipped and listed in
STORE/skipped.csv with the reason; the run ends with a report.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from audio_dcls.audio import AudioDecodeError, pad_or_trim
from audio_dcls.features import LogMelConfig
from audio_dcls.io import atomic_write_json
from pipelines.feature_store import (
    SHARD_DIR,
    STORE_KINDS,
    WAVEFORM,
    ClipLayout,
    Plan,
    StoreError,
    default_shard_size,
    finalize_store,
    merge_parts,
    parse_part,
    read_shard_record,
    remove_stale_store_temps,
    to_pcm16,
    verify_store,
    write_shard,
)
from pipelines.sources import AudioSetSource, Clip, ClipSource, CustomCsvSource, PannsHdf5Source
from pipelines.vocabulary import choose_vocabulary, store_vocabulary

log = logging.getLogger("pipelines.precompute")


@dataclass
class BuildReport:
    folder: Path
    part: tuple[int, int]
    num_shards: int  # shards this run was responsible for
    shards_built: int  # built by this run
    shards_kept: int  # finished by an earlier run and kept
    written: int  # clips in this part's shards (new + kept)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), source-level and decode failures
    warned: list[tuple[str, str]] = field(default_factory=list)  # (id, warning): clips decoded and kept, with a decode warning
    trimmed: int = 0  # clips cut to the clip length (or to max_seconds), in this part's shards
    kept_long: int = 0  # clips longer than the clip length kept whole (max_seconds), in this part's shards
    clips_built: int = 0  # clips processed by this run (written or skipped)
    layout: ClipLayout = ClipLayout()
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    finished: bool = False  # manifest.json written (single-part builds)

    def long_clip_notes(self) -> list[str]:
        """What was done with clips longer than the clip length."""
        clip = f"{self.layout.frontend.clip_seconds:g} s"

        def clips(n: int, verb: str) -> str:
            return f"{n} clip {verb}" if n == 1 else f"{n} clips {'were' if verb == 'was' else verb}"

        if not self.layout.variable:
            return [f"{clips(self.trimmed, 'was')} longer than the clip length ({clip}) and cut to the first {clip} (keep long clips whole with --max-seconds)"] if self.trimmed else []
        lines = []
        if self.kept_long:
            lines.append(f"{clips(self.kept_long, 'was')} longer than {clip} and kept whole (training reads them with long_clips=first|random_crop|windows)")
        if self.trimmed:
            lines.append(f"{clips(self.trimmed, 'was')} longer than --max-seconds {self.layout.max_seconds:g} s and cut to the first {self.layout.max_seconds:g} s")
        return lines

    def summary(self) -> str:
        i, n = self.part
        store = "feature store" if self.layout.kind == "logmel" else "waveform store"
        what = store if n == 1 else f"part {i}/{n} of a {store}"
        rate = f", {self.clips_built / self.seconds:.1f} clips/s" if self.seconds > 0 and self.clips_built else ""
        lines = [
            f"{what} at {self.folder}: {self.written} clips in {self.num_shards} shards "
            f"({self.shards_built} built now, {self.shards_kept} kept from an earlier run) in {self.seconds:.1f} s{rate}"
        ]
        lines += [f"note: {x}" for x in self.notes + self.long_clip_notes()]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} clips:")
            for reason, count in Counter(r for _, r in self.skipped).most_common(8):
                lines.append(f"  {count:7d}  {reason}")
            if len({r for _, r in self.skipped}) > 8:
                lines.append("  ...")
            if self.finished:
                lines.append(f"the full list is in {self.folder / 'skipped.csv'}")
        else:
            lines.append("skipped 0 clips")
        if self.warned:
            lines.append(f"kept {len({i for i, _ in self.warned})} clips the decoder warned about (decoded as far as they go):")
            lines += [f"  {i}: {w}" for i, w in self.warned[:8]]
            if len(self.warned) > 8:
                lines.append(f"  ... {len(self.warned) - 8} more, in the shard records (shards/*.json, 'warnings')")
        if n > 1:
            lines.append("join the parts with: python -m pipelines.precompute merge OUT PART...")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------
# the shard builder
# ----------------------------------------------------------------------------------
class ShardBuilder:
    """Decodes clips and writes them as one shard: log-mels, or int16 waveforms.

    Picklable: a process pool sends it with each task, and the copy builds its own
    front end where it runs (the module keeps no per-process state).
    """

    def __init__(self, layout: ClipLayout, folder: Path):
        self.layout = layout
        self.folder = Path(folder)
        self._logmel = None

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_logmel"] = None
        return d

    def __call__(self, task: tuple[int, list[Clip]]) -> dict:
        return self.build(*task)

    def samples(self, clip: Clip) -> tuple[np.ndarray, list[str]]:
        """(The clip at the front end's rate, the decoder's warnings about it): int16 as packed when a
        waveform store can copy them (a PANNs pack at that rate), else decoded float32."""
        sr = self.layout.frontend.sample_rate
        if self.layout.kind == WAVEFORM and clip.h5_path is not None and (clip.sample_rate or sr) == sr:
            x = clip.h5.waveform(clip.h5_path, clip.h5_row)
            if x.dtype == np.int16 and x.ndim == 1:
                return x, []
        return clip.decode(sr)

    def fit(self, x: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """Pad to the clip length and cut to the longest kept -> (samples, cut, kept long)."""
        lay, hop = self.layout, self.layout.frontend.hop_length
        n = len(x)
        cut = n > lay.max_samples + hop  # a hop's worth of slack: encoders pad the last frame
        keep = lay.num_samples if n <= lay.num_samples + hop else min(n, lay.max_samples)
        return pad_or_trim(x, keep), cut, keep > lay.num_samples

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Samples -> the stored array: int16 (L,) or float16 (n_mels, T)."""
        import torch

        if self.layout.kind == WAVEFORM:
            return x if x.dtype == np.int16 else to_pcm16(x)
        if self._logmel is None:
            from audio_dcls.features import LogMel

            self._logmel = LogMel(self.layout.frontend).eval()
        with torch.inference_mode():
            m = self._logmel(torch.from_numpy(x).unsqueeze(0))  # (1, 1, F, T)
        return m[0, 0].to(torch.float16).numpy()  # torch's float16 cast is ~30x faster than numpy's

    def build(self, index: int, clips: list[Clip], on_clip: Callable[[], None] | None = None) -> dict:
        """Decode, encode and write shard ``index``; returns its summary."""
        lay = self.layout
        C = clips[0].num_classes if clips else 0
        fixed = None if lay.variable else np.empty((len(clips), *lay.clip_shape()), dtype=lay.dtype)
        arrays: list[np.ndarray] = []
        targets = np.zeros((len(clips), C), dtype=np.uint8)
        ids, skipped, warned, trimmed, kept_long = [], [], [], 0, 0
        for clip in clips:
            try:
                x, notes = self.samples(clip)
                x, cut, long = self.fit(x)
                a = self.encode(x)
                row = len(ids)
                if fixed is not None:
                    fixed[row] = a
                else:
                    arrays.append(a)
                targets[row, list(clip.labels)] = 1
                ids.append(clip.id)
                warned += [(clip.id, w) for w in notes]
                trimmed, kept_long = trimmed + cut, kept_long + long
            except AudioDecodeError as e:
                skipped.append((clip.id, f"undecodable: {e.reason}"))
            except OSError as e:
                skipped.append((clip.id, f"unreadable: {e.strerror or e}"))
            if on_clip is not None:
                on_clip()
        n = len(ids)
        features = arrays if fixed is None else fixed[:n]
        write_shard(self.folder, index, ids, features, targets[:n], skipped, extra={"trimmed": trimmed, "kept_long": kept_long, "warnings": warned}, layout=lay)
        return {"shard": index, "written": n, "skipped": skipped, "warnings": warned, "trimmed": trimmed, "kept_long": kept_long, "clips": len(clips)}


def _init_pool_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker process; parallelism comes from --workers


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def build_feature_store(
    source: ClipSource,
    out: str | os.PathLike,
    frontend: LogMelConfig = LogMelConfig(),
    workers: int = 1,
    part: tuple[int, int] = (0, 1),
    shard_size: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    kind: str = "logmel",
    max_seconds: float | None = None,
) -> BuildReport:
    """Store every clip of ``source`` in the store folder ``out``: as fp16 log-mels
    (``kind='logmel'``) or int16 waveforms (``'waveform'``), padded or cut to the clip
    length -- or, with ``max_seconds``, kept whole up to that length.

    Resumes a previous run with the same inputs (finished shards are kept). With
    ``part=(i, N)`` only shards k with k % N == i are built and the folder is left for
    :func:`pipelines.feature_store.merge_parts`; otherwise the store is finalized.
    ``progress``: a tqdm bar (None: only when stderr is a terminal).
    """
    t0 = time.perf_counter()
    out = Path(out)
    if max_seconds is not None and max_seconds <= frontend.clip_seconds:
        max_seconds = None  # nothing longer than a clip is kept: a fixed-length store
    layout = ClipLayout(kind, frontend, max_seconds)
    shard_size = shard_size or default_shard_size(len(source), layout.bytes_per_clip)
    if shard_size < 1:
        raise ValueError("--shard-size must be at least 1")
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    plan = Plan(
        frontend=frontend,
        vocabulary=source.vocabulary,
        source=source.describe(),
        fingerprint=source.fingerprint(),
        num_clips=len(source),
        shard_size=shard_size,
        part=part,
        missing=[list(m) for m in source.missing],
        kind=kind,
        max_seconds=max_seconds,
    )
    _prepare_folder(out, plan, overwrite)

    mine = plan.shards_of_part()
    kept_records = {k: r for k in mine if (r := read_shard_record(out, k)) is not None}
    pending = [k for k in mine if k not in kept_records]
    clips = source.clips
    tasks = [(k, clips[k * shard_size : (k + 1) * shard_size]) for k in pending]
    todo = sum(len(t[1]) for t in tasks)
    if kept_records:
        log.info("resuming: %d of %d shards already finished", len(kept_records), len(mine))

    from tqdm import tqdm

    builder = ShardBuilder(layout, out)
    bar = tqdm(total=todo, unit="clip", desc="waveforms" if kind == WAVEFORM else "log-mels", disable=(None if progress is None else not progress), dynamic_ncols=True)
    try:
        if workers == 1 or len(tasks) <= 1:
            results = _run_in_process(builder, tasks, bar)
        else:
            results = _run_pool(builder, tasks, min(workers, len(tasks)), bar)
    finally:
        bar.close()

    skipped = [tuple(m) for m in plan.missing] if part[0] == 0 else []
    for k, r in sorted(kept_records.items()):
        skipped += [tuple(s) for s in r["skipped"]]
    for r in sorted(results, key=lambda r: r["shard"]):
        skipped += [tuple(s) for s in r["skipped"]]
    records = [kept_records[k] for k in sorted(kept_records)] + sorted(results, key=lambda r: r["shard"])
    warned = [tuple(w) for r in records for w in r.get("warnings", [])]  # shards built before warnings existed have none
    report = BuildReport(
        folder=out,
        part=part,
        num_shards=len(mine),
        shards_built=len(results),
        shards_kept=len(kept_records),
        written=sum(r["num_clips"] for r in kept_records.values()) + sum(r["written"] for r in results),
        skipped=skipped,
        warned=warned,
        trimmed=sum(r.get("trimmed", 0) for r in [*kept_records.values(), *results]),
        kept_long=sum(r.get("kept_long", 0) for r in [*kept_records.values(), *results]),
        notes=list(source.notes),
        clips_built=sum(r["clips"] for r in results),
        layout=layout,
    )
    if part == (0, 1):
        finalize_store(out)
        report.finished = True
    report.seconds = time.perf_counter() - t0
    return report


def _prepare_folder(out: Path, plan: Plan, overwrite: bool) -> None:
    """Keep a folder of the same plan (to resume), clear or refuse one of another, write plan.json."""
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    if (out / "plan.json").exists():
        old = Plan.read(out)
        if not (old.same_inputs(plan) and old.part == plan.part):
            if not overwrite:
                raise StoreError(f"{out} holds a feature store built from other inputs or settings; use a new folder or pass --overwrite")
            _clear_store(out)
            (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    elif any((out / SHARD_DIR).iterdir()) and not overwrite:
        raise StoreError(f"{out}/{SHARD_DIR} has files but no plan.json; use a new folder or pass --overwrite")
    elif overwrite:
        _clear_store(out)
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    stale = remove_stale_store_temps(out)
    if stale:
        log.info("removed %d temporary files left by an interrupted run", stale)
    atomic_write_json(out / "plan.json", plan.to_dict())


def _log_shard_finished(record: dict) -> None:
    # at DEBUG: a line per shard on disk, for whoever follows (or interrupts) a build by its log
    log.debug("shard %d finished: %d clips written, %d skipped", record["shard"], record["written"], len(record["skipped"]))


def _run_in_process(builder: ShardBuilder, tasks, bar) -> list[dict]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = []
        for k, clips in tasks:
            results.append(builder.build(k, clips, on_clip=lambda: bar.update(1)))
            _log_shard_finished(results[-1])
        return results
    finally:
        torch.set_num_threads(threads)  # in-process run: leave the caller's setting as it was


def _run_pool(builder: ShardBuilder, tasks, workers: int, bar) -> list[dict]:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # fork is cheapest (no re-import of torch); each worker pins torch to one thread,
    # which also keeps OpenMP out of forked children. Unlike multiprocessing.Pool, the
    # executor notices a worker that dies (OOM killer) instead of waiting for it forever.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    results = []
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker)
    try:
        pending = {ex.submit(builder, t) for t in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                r = f.result()  # re-raises a worker's exception here
                results.append(r)
                bar.update(r["clips"])
                _log_shard_finished(r)
    except BrokenProcessPool:
        ex.shutdown(wait=False, cancel_futures=True)
        raise StoreError("a worker process died (out of memory?); the finished shards are kept, rerun the same command to resume") from None
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return results


def _clear_store(out: Path) -> None:
    """Remove what a build writes (and nothing else the user may keep in the folder)."""
    import shutil

    shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
    for name in ("plan.json", "manifest.json", "ids.txt", "labels.csv", "skipped.csv"):
        (out / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------
def open_sources(args: argparse.Namespace) -> list[tuple[Path, ClipSource]]:
    """(store folder, source) for each store the command builds: one, or one per --custom-csv."""
    given = [x for x in ("audioset_csv", "hdf5", "custom_csv") if getattr(args, x)]
    if len(given) != 1:
        raise ValueError("give exactly one source: --audioset-csv (with --audio-dir or --manifest), --hdf5 or --custom-csv")
    if (args.labels or args.labels_from or args.strict) and not args.custom_csv:
        raise ValueError("--labels, --labels-from and --strict go with --custom-csv (AudioSet and PANNs packs use the 527 AudioSet classes)")
    if args.labels and args.labels_from:
        raise ValueError("give --labels or --labels-from, not both")
    if args.manifest and not args.audioset_csv:
        raise ValueError("--manifest goes with --audioset-csv")
    if args.audio_dir and args.hdf5:
        raise ValueError("--audio-dir does not apply to --hdf5 packs")
    if args.audioset_csv:
        if not args.audio_dir and not args.manifest:
            raise ValueError("--audioset-csv needs --audio-dir or --manifest")
        return [(args.out, AudioSetSource(args.audioset_csv, audio_dir=args.audio_dir, manifest=args.manifest))]
    if args.hdf5:
        return [(args.out, PannsHdf5Source(args.hdf5))]
    csvs = list(args.custom_csv)
    if args.labels_from:
        vocab, origin = store_vocabulary(args.labels_from), f"the store {args.labels_from}"
    else:
        choice = choose_vocabulary(csvs, labels_file=args.labels)
        vocab, origin = choice.vocabulary, choice.source
    log.info("vocabulary: %d classes from %s", len(vocab), origin)
    if len(csvs) == 1:
        outs = [args.out]
    else:
        stems = [Path(c).stem for c in csvs]
        if len(set(stems)) != len(stems):
            raise ValueError(f"with several --custom-csv each store is named by its CSV, and these share a name: {', '.join(map(str, csvs))}")
        outs = [args.out / stem for stem in stems]
    sources = []
    for out, csv_path in zip(outs, csvs):
        src = CustomCsvSource(csv_path, audio_dir=args.audio_dir, vocabulary=vocab, strict=args.strict)
        src.notes.insert(0, f"vocabulary: {len(vocab)} classes from {origin}")
        sources.append((out, src))
    return sources


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.precompute", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="store the clips of a source as log-mels or waveforms (resumable)")
    b.add_argument("out", type=Path, help="store folder (created; an unfinished one is resumed)")
    src = b.add_argument_group("source (exactly one)")
    src.add_argument("--audioset-csv", type=Path, help="official AudioSet segment CSV")
    src.add_argument("--hdf5", type=Path, nargs="+", help="PANNs-style HDF5 pack(s)")
    src.add_argument("--custom-csv", type=Path, action="append", help="CSV with path,labels (labels separated by ';'); repeat it to build several stores (OUT/<csv name>) against one vocabulary")
    src.add_argument("--audio-dir", type=Path, help="audio folder (AudioSet: Y{YTID}.ext etc.; custom: base of relative paths)")
    src.add_argument("--manifest", type=Path, help="AudioSet only: CSV ytid,path instead of scanning --audio-dir")
    src.add_argument("--labels", type=Path, help="custom only: the vocabulary, an index,mid,display_name CSV or one label per line (default: the sorted union of the labels of every --custom-csv)")
    src.add_argument("--labels-from", type=Path, metavar="STORE", help="custom only: the vocabulary of an earlier store (e.g. its train split)")
    src.add_argument("--strict", action="store_true", help="custom only: a label outside the vocabulary is an error (default: counted, listed, and the clip keeps its other labels)")
    b.add_argument("--workers", type=int, default=_default_workers(), help="processes (default: all cores available, %(default)s here)")
    b.add_argument("--shard", default="0/1", metavar="i/N", help="build only part i of N (for N machines); join with merge")
    b.add_argument("--shard-size", type=int, default=None, help="clips per shard file (default: 16-512, about 64 shards)")
    b.add_argument("--kind", choices=STORE_KINDS, default="logmel", help="store fp16 log-mels (default) or int16 waveforms (the paper recipes' data path: augmentation and front end on the training device)")
    b.add_argument("--clip-seconds", type=float, default=LogMelConfig.clip_seconds, help="clips are padded/cut to this length (default %(default)s)")
    b.add_argument("--max-seconds", type=float, default=None, help="keep clips longer than --clip-seconds whole, up to this many seconds (default: cut them to their first --clip-seconds)")
    b.add_argument("--overwrite", action="store_true", help="discard a store from other inputs in OUT instead of refusing")
    b.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    m = sub.add_parser("merge", help="join the part folders of a --shard i/N build into one store")
    m.add_argument("out", type=Path, help="new store folder")
    m.add_argument("parts", type=Path, nargs="+", help="the N part folders")
    m.add_argument("--copy", action="store_true", help="copy shard files instead of hard-linking them")

    v = sub.add_parser("verify", help="check a store's checksums, shapes and counts")
    v.add_argument("store", type=Path)
    v.add_argument("--no-checksums", action="store_true", help="sizes, shapes and counts only (fast)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "build":
            part = parse_part(args.shard)
            if args.max_seconds is not None and args.max_seconds < args.clip_seconds:
                raise ValueError(f"--max-seconds {args.max_seconds:g} is shorter than --clip-seconds {args.clip_seconds:g}")
            frontend = LogMelConfig(clip_seconds=args.clip_seconds)
            for out, source in open_sources(args):
                if len(source) == 0:
                    raise ValueError(f"the source has no usable clips ({len(source.missing)} listed clips are missing)")
                log.info("%s: %d clips to ingest, %d missing from the source", out, len(source), len(source.missing))
                report = build_feature_store(
                    source, out, frontend=frontend, workers=args.workers, part=part,
                    shard_size=args.shard_size, overwrite=args.overwrite, progress=False if args.no_progress else None,
                    kind=args.kind, max_seconds=args.max_seconds,
                )
                print(report.summary())
            return 0
        if args.command == "merge":
            manifest = merge_parts(args.out, args.parts, copy=args.copy)
            print(f"merged {len(args.parts)} parts into {args.out}: {manifest['num_clips']} clips in {len(manifest['shards'])} shards, {manifest['num_skipped']} skipped (see {args.out / 'skipped.csv'})")
            return 0
        if args.command == "verify":
            report = verify_store(args.store, checksums=not args.no_checksums)
            if report.ok:
                print(f"{args.store}: OK ({report.num_clips} clips in {report.num_shards} shards{', checksums match' if not args.no_checksums else ''})")
                return 0
            for problem in report.problems:
                print(f"{args.store}: {problem}", file=sys.stderr)
            print(f"{args.store}: FAILED ({len(report.problems)} problems)", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("precompute: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (StoreError, ValueError, OSError, AudioDecodeError) as e:
        msg = " ".join(str(e).split())
        print(f"precompute: error: {msg}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
