"""Embeddings of a data set with a release folder: one vector per clip, and per window on request.

The embedding is the vector the model's classifier reads (``audio_dcls.inference``:
768 numbers for ConvNeXt-T, 512 for ConvFormer-S18, 1024 for FastViT-SA24). Audio
(``--audio-dir``, ``--csv``) is decoded, cut into windows and pooled exactly as the
service and ``audio_dcls.Tagger`` do it (``audio_dcls.windowing``: 10 s windows every
5 s by default, the last one ending at the end of the file, a shorter file padded to
one window; the clip embedding is the mean over its windows), so a file gets the same
vector here as from ``Tagger.tag`` and ``POST /v1/embed``. A store holds one clip per
item -- a log-mel, or an int16 waveform the release's front end turns into one on the
device: each is one window. Outputs, in ``--out``:

    embeddings.npy     (N, D) float32 clip embeddings; row i belongs to line i of ids.txt
    ids.txt            the clip ids: store ids, CSV paths / YouTube ids, paths under --audio-dir
    scores.npy         (N, C) float32 clip scores, each class's maximum over the windows (--scores)
    windows.npy        (M, D) float32 per-window embeddings (--windows)
    window_index.csv   row, clip, id, window, start_s, end_s of each row of windows.npy (--windows)
    skipped.csv        id, reason of every clip listed but not embedded (missing, undecodable)
    summary.json       model, embedding size, data, counts, window settings, device, speed, and the
                       decoder's warnings about files it could still use (cut short, damaged)

CPU (every audio file under a folder)::

    python -m pipelines.embed runs/release/convnext-tiny-dcls-paper --audio-dir ~/sounds \\
        --out runs/embed/sounds --device cpu --workers 2

Single GPU (AudioSet eval set, precomputed; or an AudioSet CSV + its audio, per window)::

    python -m pipelines.embed runs/release/convnext-tiny-dcls-paper --store data/stores/audioset/eval \\
        --out runs/embed/eval --device cuda --batch-size 128 --workers 8
    python -m pipelines.embed RELEASE --csv ../shared/audioset/eval_segments.csv --audio-dir /data/audioset/eval \\
        --out runs/embed/eval-windows --device cuda --windows

N GPUs (each process embeds a contiguous slice; rank 0 gathers them and writes the files)::

    torchrun --nproc_per_node 8 -m pipelines.embed RELEASE --store data/stores/audioset/eval --out runs/embed/eval --device cuda

Exit status: 0 done, 1 an input or option is wrong (one line on stderr), 2 bad
command line, 130 interrupted.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from audio_dcls.inference import PreparedRelease, clip_embedding, clip_scores
from audio_dcls.io import atomic_open, atomic_write, atomic_write_json
from audio_dcls.windowing import DEFAULT_WINDOW_S, MAX_WINDOW_S, MIN_WINDOW_S, WindowPlan, padded_waveform, plan_windows
from pipelines.data import DataError, StoreItems, collate_items, open_clip_source
from pipelines.distributed import dist_info, gather_objects, init_distributed, shutdown_distributed, torchrun_rank
from pipelines.feature_store import PCM16_SCALE, WAVEFORM

log = logging.getLogger("pipelines.embed")
PROG = "embed"


class EmbedError(ValueError):
    """Input the embedding job cannot use (one-line message)."""


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 32  # windows (audio) or clips (store) per forward pass
    workers: int = 2  # DataLoader processes decoding audio / reading the store
    window_s: float = DEFAULT_WINDOW_S  # analysis window for audio
    hop_s: Optional[float] = None  # step between windows (None: half a window)
    keep_windows: bool = False  # also return every window's embedding
    progress: Optional[bool] = None  # a tqdm bar on rank 0 (None: when stderr is a terminal)


# ----------------------------------------------------------------------------------
# what is embedded
# ----------------------------------------------------------------------------------
class AudioClips(Dataset):
    """Clips (pipelines.sources.Clip) decoded at the model's rate, padded for their window plan.

    Item: (index, plan, padded waveform, "", decode warnings) or (index, None, None, skip reason, ()).
    """

    def __init__(self, clips, sample_rate: int, window_s: float, hop_s: Optional[float]):
        self.clips = list(clips)
        self.sample_rate = sample_rate
        self.window_s = window_s
        self.hop_s = hop_s

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        from audio_dcls.audio import AudioDecodeError

        try:
            audio, warnings = self.clips[i].decode(self.sample_rate)
        except AudioDecodeError as e:
            return i, None, None, f"undecodable: {e.reason}", ()
        except OSError as e:
            return i, None, None, f"unreadable: {e.strerror or e}", ()
        plan = plan_windows(audio.shape[0], self.sample_rate, self.window_s, self.hop_s)
        return i, plan, padded_waveform(audio, plan), "", tuple(warnings)


def _as_list(batch):
    return batch


def clips_in_folder(folder: Path) -> list:
    """Every audio file under ``folder`` as a Clip whose id is its path relative to the folder."""
    from pipelines.sources import Clip, scan_audio_files

    try:
        files = scan_audio_files(folder)
    except FileNotFoundError as e:
        raise EmbedError(str(e)) from None
    if not files:
        raise EmbedError(f"{folder}: no audio files in it (or below it)")
    return [Clip(p.relative_to(folder).as_posix(), (), 0, path=str(p)) for p in files]


@dataclass
class EmbedInput:
    dataset: Dataset  # AudioClips, or StoreItems for a feature store
    ids: List[str]  # clip id per dataset index
    missing: List[Tuple[str, str]]  # listed clips without audio
    description: Dict
    is_store: bool
    source: Optional[object] = None  # the ClipSource of a CSV (HDF5 packs to close)
    item_kind: str = "logmel"  # a store's items: 'logmel' or 'waveform' (int16, through the release's front end)

    def close(self) -> None:
        for part in (self.dataset, self.source):
            close = getattr(part, "close", None)
            if close is not None:
                close()


def open_input(prepared: PreparedRelease, store: Optional[str], csv_path: Optional[str], audio_dir: Optional[str], options: EmbedOptions) -> EmbedInput:
    """``--store S``, ``--csv C [--audio-dir D]`` or ``--audio-dir D`` -> what to embed."""
    from pipelines.feature_store import FeatureStore, StoreError
    from pipelines.scoring import check_frontend

    if store:
        if options.keep_windows:
            raise EmbedError("--windows needs audio (--csv or --audio-dir): a store holds one clip-length item per clip, one window each")
        try:
            fs = FeatureStore(Path(store))
        except StoreError as e:
            raise EmbedError(str(e)) from None
        check_frontend(prepared.release.frontend, fs.frontend)
        return EmbedInput(StoreItems(fs), list(fs.ids), list(fs.skipped), {"kind": "feature_store", "store_kind": fs.kind, "path": str(store)}, True, item_kind=fs.kind)
    sr = prepared.sample_rate
    if csv_path:
        try:
            source = open_clip_source(Path(csv_path), audio_dir)
        except DataError:
            raise
        except (ValueError, OSError, KeyError) as e:
            raise EmbedError(f"{csv_path}: {' '.join(str(e).split())}") from None
        clips, missing, description = source.clips, [tuple(m) for m in source.missing], source.describe()
    else:
        folder, source = Path(audio_dir), None
        clips, missing, description = clips_in_folder(folder), [], {"kind": "audio_folder", "path": str(folder.resolve())}
    if not clips:
        if source is not None:
            source.close()
        raise EmbedError(f"{csv_path or audio_dir}: no clip with audio ({len(missing)} listed clips are missing)")
    dataset = AudioClips(clips, sr, options.window_s, options.hop_s)
    return EmbedInput(dataset, [c.id for c in clips], missing, description, False, source)


# ----------------------------------------------------------------------------------
# the forward passes
# ----------------------------------------------------------------------------------
@dataclass
class Embedded:
    """What one rank embedded (or, gathered, the whole set), in dataset order."""

    rows: List[int] = field(default_factory=list)  # dataset index of each embedded clip
    embeddings: List[np.ndarray] = field(default_factory=list)  # (D,) per embedded clip
    scores: List[np.ndarray] = field(default_factory=list)  # (C,) per embedded clip
    windows: List[np.ndarray] = field(default_factory=list)  # (W, D) per embedded clip (keep_windows)
    bounds: List[List[Tuple[float, float]]] = field(default_factory=list)  # (start_s, end_s) per window (keep_windows)
    skipped: List[Tuple[int, str]] = field(default_factory=list)  # (dataset index, reason)
    warned: List[Tuple[int, str]] = field(default_factory=list)  # (dataset index, decode warning) of embedded clips


class WindowBatcher:
    """Windows of consecutive clips in batches of ``batch_size`` through the model; clip results in order."""

    def __init__(self, prepared: PreparedRelease, batch_size: int, keep_windows: bool, out: Embedded):
        self.prepared = prepared
        self.batch_size = batch_size
        self.keep_windows = keep_windows
        self.out = out
        self.queue: List[Tuple[int, int, torch.Tensor]] = []  # (clip slot, window, (window,) view)
        self.open: List[list] = []  # per clip not yet finished: [row, plan, scores (W, C), embeddings (W, D), windows done]

    def add(self, row: int, plan: WindowPlan, waveform: torch.Tensor) -> None:
        self.open.append([row, plan, None, None, 0])
        for w, start in enumerate(plan.starts):
            slot = len(self.open) - 1  # this clip is the last open one (a flush may drop finished ones before it)
            self.queue.append((slot, w, waveform[start : start + plan.window]))
            if len(self.queue) == self.batch_size:
                self.flush()

    def flush(self) -> None:
        if self.queue:
            out = self.prepared.infer(torch.stack([t for _, _, t in self.queue]))  # (B, window) in
            scores, embeddings = (t.float().cpu().numpy() for t in out)  # (B, C), (B, D)
            for k, (slot, w, _) in enumerate(self.queue):
                clip = self.open[slot]
                if clip[2] is None:
                    n = clip[1].num_windows
                    clip[2], clip[3] = np.empty((n, scores.shape[1]), np.float32), np.empty((n, embeddings.shape[1]), np.float32)
                clip[2][w], clip[3][w] = scores[k], embeddings[k]
                clip[4] += 1
            self.queue.clear()
        self._finish_done()

    def _finish_done(self) -> None:
        done = 0
        while done < len(self.open) and self.open[done][2] is not None and self.open[done][4] == self.open[done][1].num_windows:
            row, plan, scores, embeddings, _ = self.open[done]
            self.out.rows.append(row)
            self.out.scores.append(clip_scores(scores))
            self.out.embeddings.append(clip_embedding(embeddings))
            if self.keep_windows:
                self.out.windows.append(embeddings)
                self.out.bounds.append([plan.bounds_s(i) for i in range(plan.num_windows)])
            done += 1
        if done:  # later clips' slots shift down
            del self.open[:done]
            self.queue = [(slot - done, w, t) for slot, w, t in self.queue]


def _loader(data: EmbedInput, lo: int, hi: int, options: EmbedOptions, device: torch.device) -> DataLoader:
    subset = Subset(data.dataset, range(lo, hi))
    if data.is_store:
        return DataLoader(subset, batch_size=options.batch_size, num_workers=options.workers, collate_fn=collate_items, pin_memory=device.type == "cuda")
    return DataLoader(subset, batch_size=1, num_workers=options.workers, collate_fn=_as_list)


def _embed_slice(prepared: PreparedRelease, data: EmbedInput, lo: int, hi: int, options: EmbedOptions, show: bool) -> Embedded:
    from tqdm import tqdm

    out = Embedded()
    batcher = WindowBatcher(prepared, options.batch_size, options.keep_windows, out)
    for batch in tqdm(_loader(data, lo, hi, options, prepared.device), desc="embedding", unit="batch" if data.is_store else "clip", disable=not show, dynamic_ncols=True):
        if data.is_store:
            x, _, idx, skipped, warned = batch
            out.skipped += skipped
            out.warned += warned
            if x is not None:
                outputs = prepared.infer(x.float() / PCM16_SCALE) if data.item_kind == WAVEFORM else prepared.infer_logmel(x)
                scores, embeddings = (t.float().cpu().numpy() for t in outputs)
                out.rows += idx.tolist()
                out.scores += list(scores)
                out.embeddings += list(embeddings)
            continue
        for i, plan, waveform, reason, warnings in batch:
            if reason:
                out.skipped.append((i, reason))
            else:
                out.warned += [(i, w) for w in warnings]
                batcher.add(i, plan, waveform)
    batcher.flush()
    return out


def embed_dataset(prepared: PreparedRelease, data: EmbedInput, options: EmbedOptions = EmbedOptions()) -> Embedded:
    """Embed every clip of ``data``. Under torch.distributed each rank embeds one contiguous
    slice and rank 0 gets the gathered whole (the other ranks get their own slice)."""
    rank, world = dist_info()
    n = len(data.dataset)
    per = -(-n // world)
    lo, hi = min(rank * per, n), min((rank + 1) * per, n)
    show = (sys.stderr.isatty() if options.progress is None else options.progress) and rank == 0
    mine = _embed_slice(prepared, data, lo, hi, options, show)
    if world == 1:
        return mine
    parts = gather_objects(mine, world)
    if rank != 0:
        return mine
    whole = Embedded()
    for part in parts:  # rank order = dataset order
        for name in ("rows", "embeddings", "scores", "windows", "bounds", "skipped", "warned"):
            getattr(whole, name).extend(getattr(part, name))
    return whole


# ----------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------
def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def write_outputs(out: Path, prepared: PreparedRelease, data: EmbedInput, result: Embedded, write_scores: bool) -> Dict[str, str]:
    """The files of the module docstring (summary.json apart) into ``out``; returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    dim = prepared.embedding_dim
    files = {"embeddings": out / "embeddings.npy", "ids": out / "ids.txt", "skipped": out / "skipped.csv"}
    _save_npy(files["embeddings"], np.stack(result.embeddings).astype(np.float32) if result.rows else np.zeros((0, dim), np.float32))
    atomic_write(files["ids"], "".join(f"{data.ids[i]}\n" for i in result.rows))
    if write_scores:
        files["scores"] = out / "scores.npy"
        _save_npy(files["scores"], np.stack(result.scores).astype(np.float32) if result.rows else np.zeros((0, len(prepared.labels)), np.float32))
    if result.windows:
        files["windows"], files["window_index"] = out / "windows.npy", out / "window_index.csv"
        _save_npy(files["windows"], np.concatenate(result.windows).astype(np.float32))
        with atomic_open(files["window_index"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "clip", "id", "window", "start_s", "end_s"])
            row = 0
            for clip, (i, bounds) in enumerate(zip(result.rows, result.bounds)):
                for k, (t0, t1) in enumerate(bounds):
                    w.writerow([row, clip, data.ids[i], k, f"{t0:.6f}", f"{t1:.6f}"])
                    row += 1
    with atomic_open(files["skipped"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "reason"])
        w.writerows(data.missing)
        w.writerows((data.ids[i], reason) for i, reason in result.skipped)
    return {k: str(v) for k, v in files.items()}


def summarise(prepared: PreparedRelease, data: EmbedInput, result: Embedded, options: EmbedOptions, seconds: float, files: Dict[str, str]) -> Dict:
    r = prepared.release
    return {
        "model": {"release": str(r.path), "name": r.name, "arch": r.arch, "embedding_dim": prepared.embedding_dim, "num_classes": len(r.labels)},
        "data": data.description,
        "clips_listed": len(data.ids) + len(data.missing),
        "clips_embedded": len(result.rows),
        "clips_skipped": len(result.skipped) + len(data.missing),
        "clips_with_warnings": len({i for i, _ in result.warned}),
        "decode_warnings": [[data.ids[i], w] for i, w in result.warned[:100]],  # the first 100, as pipelines.evaluate lists them
        "windows": None if data.is_store else {"window_s": options.window_s, "hop_s": options.hop_s if options.hop_s is not None else options.window_s / 2, "per_window": options.keep_windows},
        "device": str(prepared.device),
        "seconds": round(seconds, 2),
        "clips_per_second": round(len(result.rows) / max(seconds, 1e-9), 2),
        "files": files,
    }


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m pipelines.{PROG}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", help="release folder (training, pipelines.import_checkpoint)")
    src = p.add_argument_group("data (one of)")
    src.add_argument("--store", help="feature store folder (one window per clip)")
    src.add_argument("--csv", help="AudioSet segment CSV (with --audio-dir) or path,labels CSV")
    src.add_argument("--audio-dir", help="audio folder: for --csv, or alone to embed every audio file under it")
    p.add_argument("--out", required=True, help="folder for embeddings.npy, ids.txt, skipped.csv, summary.json")
    p.add_argument("--windows", action="store_true", help="also write per-window embeddings (windows.npy + window_index.csv)")
    p.add_argument("--scores", action="store_true", help="also write the clip scores (scores.npy) from the same forward passes")
    p.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S, help="analysis window for audio, seconds (default %(default)s)")
    p.add_argument("--hop-s", type=float, help="step between windows, seconds (default: half a window)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--batch-size", type=int, default=32, help="windows (audio) or clips (store) per forward pass (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = default)")
    return p


def _options(args) -> EmbedOptions:
    if args.store and (args.csv or args.audio_dir):
        raise EmbedError("give --store, or --csv (with --audio-dir for an AudioSet CSV), or --audio-dir alone")
    if not (args.store or args.csv or args.audio_dir):
        raise EmbedError("nothing to embed: give --store, --csv or --audio-dir")
    if args.batch_size < 1 or args.workers < 0:
        raise EmbedError("--batch-size must be >= 1 and --workers >= 0")
    if not (MIN_WINDOW_S <= args.window_s <= MAX_WINDOW_S):
        raise EmbedError(f"--window-s must be in {MIN_WINDOW_S:g}-{MAX_WINDOW_S:g} s")
    if args.hop_s is not None and not (0 < args.hop_s <= args.window_s):
        raise EmbedError(f"--hop-s must be > 0 and at most --window-s ({args.window_s:g})")
    return EmbedOptions(args.batch_size, args.workers, args.window_s, args.hop_s, args.windows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from audio_dcls.inference import prepare_release

    args = _parser().parse_args(argv)
    rank = torchrun_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = None
    try:
        options = _options(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        env = init_distributed(args.device)
        if not Path(args.release).is_dir():
            raise EmbedError(f"{args.release}: no such release folder")
        prepared = prepare_release(args.release, env.device)
        data = open_input(prepared, args.store, args.csv, args.audio_dir, options)
        t0 = time.perf_counter()
        result = embed_dataset(prepared, data, options)
        if rank == 0:
            files = write_outputs(Path(args.out), prepared, data, result, args.scores)
            summary = summarise(prepared, data, result, options, time.perf_counter() - t0, files)
            atomic_write_json(Path(args.out) / "summary.json", summary)
            print(
                f"{prepared.release.name}: {summary['clips_embedded']} clips embedded ({prepared.embedding_dim} numbers each), "
                f"{summary['clips_skipped']} skipped, {summary['clips_with_warnings']} embedded with decode warnings, "
                f"{summary['clips_per_second']} clips/s; wrote {args.out}"
            )
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # EmbedError, DataError, ReleaseError, DeviceError are ValueErrors
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    finally:
        if data is not None:
            data.close()
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
