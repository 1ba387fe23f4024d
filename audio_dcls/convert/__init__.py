"""Weights in: other projects' checkpoints as our models.

* ``import_dcls_audio`` / ``save_imported_release``: the paper's trained AudioSet
  models (DCLS-Audio's released files) as release folders;
* ``load_init_weights``: ImageNet (or other) weights to start training from,
  everything but the audio stem and the classifier;
* ``read_checkpoint``: safe reading of ``.pth``/``.safetensors`` files;
* ``fetch_url`` / ``resolve_source``: resumable, cached downloads of a URL the user gives.

Nothing here runs at import time of the service, and nothing downloads unless
asked to with a URL.
"""
from .checkpoint_file import ALLOWED_CLASSES, CheckpointContents, read_checkpoint
from .dcls_audio import (
    DCLS_AUDIO_FRONT_END,
    RELEASED_CHECKPOINTS,
    ImportResult,
    ReleasedCheckpoint,
    check_front_end,
    dcls_audio_front_end,
    import_dcls_audio,
    released_checkpoint,
    save_imported_release,
)
from .download import FetchedFile, default_cache_dir, fetch_url, file_sha256, resolve_source
from .errors import CheckpointError
from .init_weights import (
    PAPER_IMAGENET_INIT,
    InitFormat,
    InitFormats,
    InitReport,
    default_init_formats,
    load_init_weights,
)
from .layouts import LAYOUTS, Layout, MappedTensor, detect_layout, rename_state

__all__ = [
    "ALLOWED_CLASSES",
    "CheckpointContents",
    "CheckpointError",
    "DCLS_AUDIO_FRONT_END",
    "FetchedFile",
    "ImportResult",
    "InitFormat",
    "InitFormats",
    "InitReport",
    "LAYOUTS",
    "Layout",
    "MappedTensor",
    "PAPER_IMAGENET_INIT",
    "RELEASED_CHECKPOINTS",
    "ReleasedCheckpoint",
    "check_front_end",
    "dcls_audio_front_end",
    "default_cache_dir",
    "default_init_formats",
    "detect_layout",
    "fetch_url",
    "file_sha256",
    "import_dcls_audio",
    "load_init_weights",
    "read_checkpoint",
    "released_checkpoint",
    "rename_state",
    "resolve_source",
    "save_imported_release",
]
