"""Starting an audio model from pretrained (ImageNet) weights.

The paper starts ConvNeXt-T and ConvFormer-S18 from ImageNet-1k weights
(DCLS-Audio's ``--finetune``): everything loads but the stem, whose 3-channel
RGB patches cannot become a 1-channel (2, 16) audio patch, and the
classifier, whose 1000 ImageNet classes are not AudioSet's 527. Those two
stay freshly initialised; everything else must fit exactly, or the load
stops with a one-line error naming the key (``strict=False`` skips and
reports instead).

``load_init_weights(model, path_or_url)`` is the one entry point. It reads
the file safely (``checkpoint_file``), fetches URLs into the cache
(``download``), and asks an ordered registry of formats (``InitFormats``)
which one the checkpoint is in: facebookresearch/ConvNeXt (plain or DCLS),
sail-sg/metaformer, apple/ml-fastvit, or timm's own layout (``.pth`` or
``.safetensors``), each renamed with timm's converters (``layouts``). Other
formats (e.g. our own release folders, for fine-tuning) are added with
``InitFormats.register``. The returned ``InitReport`` lists what was loaded,
skipped and kept fresh, for the run log and the run folder.

The DCLS ImageNet ConvNeXt keeps positions per layer key like DCLS-Audio's
models. Our models hold one positions/Σ tensor per stage, so the copies of a
stage must be equal; ``unshared_positions='last'`` instead takes the last
block's copy, which is what loading into DCLS-Audio's tied parameters did.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

from torch import nn

from .checkpoint_file import CheckpointContents, read_checkpoint
from .download import FetchedFile, resolve_source
from .errors import CheckpointError
from .key_match import match_state, shared_parameter_groups
from .layouts import LAYOUTS, Layout, MappedTensor, rename_state

__all__ = [
    "PAPER_IMAGENET_INIT",
    "InitFormat",
    "InitFormats",
    "InitReport",
    "InitSource",
    "default_init_formats",
    "imagenet_fresh_parts",
    "load_init_weights",
]

# The ImageNet-1k weights the paper's runs started from, per model (DCLS-Audio's
# model code and README). FastViT-SA24 had no ImageNet pretraining.
PAPER_IMAGENET_INIT: Mapping[str, Optional[Mapping[str, Any]]] = types.MappingProxyType({
    "convnext_tiny_dcls_audio": types.MappingProxyType({
        "file": "convnext_dcls_gauss_tiny_1k_224_ema.pth",
        "url": "https://zenodo.org/record/8029747/files/convnext_dcls_gauss_tiny_1k_224_ema.pth",
        "note": "DCLS-Gauss ConvNeXt-T (23x23, 26 taps), facebookresearch/ConvNeXt layout",
    }),
    "convnext_tiny_audio": types.MappingProxyType({
        "file": "convnext_tiny_1k_224_ema.pth",
        "url": "https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224_ema.pth",
        "note": "facebookresearch/ConvNeXt; no DSC ConvNeXt-T audio weights were released",
    }),
    "convformer_s18_audio": types.MappingProxyType({
        "file": "convformer_s18.pth",
        "url": "https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth",
        "note": "sail-sg/metaformer (timm's convformer_s18 holds the same weights)",
    }),
    "convformer_s18_dcls_audio": types.MappingProxyType({
        "file": "convformer_s18.pth",
        "url": "https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth",
        "note": "no DCLS ImageNet ConvFormer is named by DCLS-Audio: its depthwise 7x7 weights cannot "
                "become DCLS taps, so those layers start fresh (fresh_dcls=True)",
    }),
    "fastvit_sa24_dcls_audio": None,
    "fastvit_sa24_audio": None,
})


class InitSource:
    """A checkpoint to initialise from: a local file (or folder) and, lazily, its contents."""

    def __init__(self, fetched: FetchedFile, origin: str, weights: str = "auto"):
        self.path: Path = fetched.path  # local path (downloaded into the cache for a URL)
        self.origin = origin  # what the caller gave: path or URL
        self.sha256 = fetched.sha256  # '' for a folder
        self.url = fetched.url
        self.weights = weights  # which entry of a checkpoint dict to use ('auto', 'model', 'model_ema', ...)
        self._contents: Optional[CheckpointContents] = None

    @property
    def is_file(self) -> bool:
        return self.path.is_file()

    def contents(self) -> CheckpointContents:
        if self._contents is None:
            self._contents = read_checkpoint(self.path, self.weights)
        return self._contents


FreshParts = Dict[str, str]  # state-dict key prefix -> why it stays freshly initialised


@dataclass(frozen=True)
class InitFormat:
    name: str  # shown in reports and errors
    recognise: Callable[[InitSource], bool]  # True when the source is in this format
    read: Callable[[InitSource, nn.Module], List[MappedTensor]]  # its tensors, keyed as in the model
    fresh: Callable[[nn.Module], FreshParts]  # what the model keeps from its own initialisation
    model_class: Optional[Type[nn.Module]] = None  # the model family it can initialise (None: any)


class InitFormats:
    """An ordered registry of checkpoint formats; the first that recognises a source reads it."""

    def __init__(self, formats=()):
        self._formats: List[InitFormat] = list(formats)

    def register(self, fmt: InitFormat, first: bool = False) -> None:
        """Add a format; ``first`` puts it before the others (a more specific format)."""
        if first:
            self._formats.insert(0, fmt)
        else:
            self._formats.append(fmt)

    def names(self) -> List[str]:
        return [f.name for f in self._formats]

    def find(self, source: InitSource) -> InitFormat:
        for fmt in self._formats:
            if fmt.recognise(source):
                return fmt
        raise CheckpointError(f"{source.origin}: format not recognised (known: {', '.join(self.names())})")


def _stem_prefix(model: nn.Module) -> Optional[str]:
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    return f"{first_conv}." if first_conv else None


def _classifier_prefix(model: nn.Module) -> Optional[str]:
    num_classes = getattr(model, "num_classes", None)
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            name = n
    return f"{name}." if name else None


def imagenet_fresh_parts(model: nn.Module) -> FreshParts:
    """The audio stem and the classifier: what an image checkpoint cannot provide."""
    parts = {}
    stem, head = _stem_prefix(model), _classifier_prefix(model)
    if stem:
        parts[stem] = "audio stem (fresh init)"
    if head:
        parts[head] = "classifier (fresh init)"
    return parts


def _layout_format(layout: Layout) -> InitFormat:
    def recognise(source: InitSource) -> bool:
        return source.is_file and layout.recognise(list(source.contents().state))

    def read(source: InitSource, model: nn.Module) -> List[MappedTensor]:
        return rename_state(layout, source.contents().state, model.state_dict())

    return InitFormat(layout.name, recognise, read, imagenet_fresh_parts, layout.model_class)


def default_init_formats() -> InitFormats:
    """A new registry with the upstream and timm layouts (LAYOUTS), in that order."""
    return InitFormats(_layout_format(layout) for layout in LAYOUTS)


@dataclass
class InitReport:
    source: str  # what was given (path or URL)
    path: str  # the file read
    sha256: str
    format: str  # the format recognised
    model: str  # the model initialised (class and timm name)
    loaded: List[Tuple[str, str]] = field(default_factory=list)  # (checkpoint key, model key)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (checkpoint key, why)
    kept: List[Tuple[str, str]] = field(default_factory=list)  # (model key, why it keeps its init)
    shared_copies: int = 0  # repeated copies of shared positions/Σ checked equal
    loaded_values: int = 0  # numbers loaded (parameters and buffers)

    def lines(self) -> List[str]:
        out = [
            f"init from {self.source} ({self.format}, sha256 {self.sha256[:16]}…) into {self.model}",
            f"  loaded   {len(self.loaded)} tensors ({self.loaded_values:,} values)"
            + (f"; {self.shared_copies} repeated copies of shared DCLS positions/spreads checked equal" if self.shared_copies else ""),
        ]
        for title, rows in (("skipped", self.skipped), ("fresh", self.kept)):
            by_reason: Dict[str, List[str]] = {}
            for key, why in rows:
                by_reason.setdefault(why, []).append(key)
            for why, keys in by_reason.items():
                shown = ", ".join(keys[:4]) + (f", … ({len(keys)} keys)" if len(keys) > 4 else "")
                out.append(f"  {title:<8} {why}: {shown}")
        return out

    def summary(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> Dict[str, Any]:
        return {
            "source": self.source,
            "path": self.path,
            "sha256": self.sha256,
            "format": self.format,
            "model": self.model,
            "loaded": [list(p) for p in self.loaded],
            "skipped": [list(p) for p in self.skipped],
            "kept_fresh": [list(p) for p in self.kept],
            "shared_copies_checked": self.shared_copies,
            "loaded_values": self.loaded_values,
        }


def _model_name(model: nn.Module) -> str:
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return f"{type(model).__name__} {arch}" if arch else type(model).__name__


def load_init_weights(
    model: nn.Module,
    source,
    strict: bool = True,
    fresh_dcls: bool = False,
    unshared_positions: str = "error",
    weights: str = "auto",
    cache_dir: Optional[Path] = None,
    formats: Optional[InitFormats] = None,
    show_progress: Optional[bool] = None,
) -> InitReport:
    """Load pretrained weights (a file path or an http(s) URL) into ``model``, in place.

    strict: every checkpoint tensor but the stem's and the classifier's must load, and every
        model tensor but theirs must be provided; False skips what does not fit and reports it.
    fresh_dcls: where the checkpoint has a plain depthwise conv and the model a DCLS layer,
        keep that layer's init instead of stopping (e.g. ConvFormer-S18 DCLS from ConvFormer-S18).
    unshared_positions: 'error' or 'last' (see the module docstring).
    weights: checkpoint entry to use ('auto', 'model', 'model_ema', 'state_dict').
    formats: the registry to detect the format with (default: ``default_init_formats()``).
    """
    fetched = resolve_source(source, cache_dir, show_progress)
    src = InitSource(fetched, str(source), weights)
    formats = formats if formats is not None else default_init_formats()
    fmt = formats.find(src)
    name = _model_name(model)
    if fmt.model_class is not None and not isinstance(model, fmt.model_class):
        raise CheckpointError(f"{src.origin}: a {fmt.name} checkpoint cannot initialise {name} (it is for {fmt.model_class.__name__})")
    mapped = fmt.read(src, model)
    target = model.state_dict()
    match = match_state(
        mapped,
        target,
        f"{src.path.name} -> {name}",
        fresh=fmt.fresh(model),
        strict=strict,
        fresh_dcls=fresh_dcls,
        shared=shared_parameter_groups(model),
        unshared_positions=unshared_positions,
    )
    result = model.load_state_dict(match.tensors, strict=False)
    if result.unexpected_keys:  # match_state only keeps model keys; a failure here is ours
        raise CheckpointError(f"{src.origin}: internal error, unexpected keys {result.unexpected_keys[:3]}")
    return InitReport(
        source=src.origin,
        path=str(src.path),
        sha256=src.sha256,
        format=fmt.name,
        model=name,
        loaded=[(m.source_key, m.key) for m in match.loaded],
        skipped=list(match.skipped),
        kept=list(match.kept),
        shared_copies=match.shared_copies,
        loaded_values=sum(m.tensor.numel() for m in match.loaded),
    )
