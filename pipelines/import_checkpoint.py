"""Import a DCLS-Audio checkpoint (the paper's trained AudioSet models) as a release folder.

The paper's code, DCLS-Audio, publishes four trained taggers (Zenodo record
8370979) in its own state-dict layouts. This turns one of them — a local file
or an http(s) URL, downloaded into the cache with resume — into a release
folder (model.safetensors + config.yaml + labels.csv) that
``audio_dcls.checkpoint.load_release``, ``pipelines.evaluate`` and the service
use like any release trained here. The architecture is detected from the keys
(or checked with ``--arch``); every key is mapped, and anything left over,
missing or of the wrong shape stops the import with a one-line error naming
it. Nothing is unpickled but tensors, containers and argparse.Namespace.

The four released files (``--list`` prints them with their URLs)::

    convnext_dcls_audio_tiny.pth   -> convnext_tiny_dcls_audio   45.52 mAP
    convformer_audio_s18.pth       -> convformer_s18_audio       43.14 mAP
    convformer_dcls_audio_s18.pth  -> convformer_s18_dcls_audio  43.68 mAP
    fastvit_dcls_audio_sa24.pth    -> fastvit_sa24_dcls_audio    44.40 mAP

Examples (CPU only; a GPU is never needed to import)::

    python -m pipelines.import_checkpoint https://zenodo.org/record/8370979/files/convnext_dcls_audio_tiny.pth \\
        --out runs/release --name convnext-tiny-dcls-paper
    python -m pipelines.import_checkpoint ~/Downloads/fastvit_dcls_audio_sa24.pth --out runs/release/fastvit-paper
    python -m pipelines.import_checkpoint convformer_dcls_audio_s18.pth --arch convformer_s18_dcls_audio \\
        --weights model --out runs/release/convformer-dcls-paper
    python -m pipelines.import_checkpoint --list

``--out`` is the release folder; with ``--name`` the release goes to
``OUT/NAME`` instead (OUT being a models directory such as the service's
``MODELS_DIR``). Downloads are cached in ``--cache-dir`` (default
``$AUDIO_DCLS_CACHE``, else ``~/.cache/audio_dcls``).

Exit status: 0 done, 1 the checkpoint or an option is wrong (one line on
stderr), 2 bad command line, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

PROG = "import_checkpoint"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m pipelines.{PROG}",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Examples"):],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", nargs="?", help="DCLS-Audio checkpoint: a .pth file or an http(s):// URL")
    p.add_argument("--out", help="release folder to write (or, with --name, the folder to write it in)")
    p.add_argument("--name", help="release name: the release goes to OUT/NAME (the service's model name)")
    p.add_argument("--arch", help="our model to load into (default: detected from the checkpoint's keys)")
    p.add_argument("--weights", choices=("auto", "model", "model_ema"), default="auto",
                   help="checkpoint entry to import: 'model' (the weights the paper evaluated), 'model_ema' "
                        "(EMA weights, when the run kept them); auto = model, or the file itself when it is a bare state dict")
    p.add_argument("--cache-dir", type=Path, help="download cache (default: $AUDIO_DCLS_CACHE or ~/.cache/audio_dcls)")
    p.add_argument("--list", action="store_true", help="print the released DCLS-Audio checkpoints and exit")
    return p


def _print_released() -> None:
    from audio_dcls.convert import RELEASED_CHECKPOINTS

    for r in RELEASED_CHECKPOINTS:
        print(f"{r.file:<31} {r.arch:<27} {r.map_mean:.2f} ± {r.map_std:.2f} mAP  {r.url}")


def _release_folder(out: str, name: Optional[str]) -> Path:
    from audio_dcls.checkpoint import RELEASE_NAME

    folder = Path(out) / name if name else Path(out)
    if not RELEASE_NAME.match(folder.name):
        raise ValueError(f"release name {folder.name!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    return folder


def _check_reloads(folder: Path, model) -> int:
    """Load the written release as the service would and compare every tensor."""
    import torch
    from audio_dcls.checkpoint import load_release

    reloaded = load_release(folder).model.state_dict()
    ours = model.state_dict()
    for key, value in ours.items():
        if not torch.equal(reloaded[key], value):
            raise ValueError(f"{folder}: the written release does not reload {key} identically")
    return len(ours)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        _print_released()
        return 0
    if not args.source or not args.out:
        parser.error("SOURCE and --out are required (or --list)")
    try:
        from audio_dcls.convert import default_cache_dir, import_dcls_audio, save_imported_release

        folder = _release_folder(args.out, args.name)
        cache_dir = args.cache_dir if args.cache_dir is not None else default_cache_dir()
        result = import_dcls_audio(args.source, arch=args.arch, weights=args.weights, cache_dir=cache_dir)
        for line in result.summary():
            print(line)
        save_imported_release(result, folder)
        count = _check_reloads(folder, result.model)
        print(f"  release      {folder} (reloaded: {count} tensors identical)")
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # CheckpointError and ReleaseError are ValueErrors
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
