"""Upstream state-dict layouts and their renaming to ours.

Our models are timm models (with an audio stem and DCLS layers), so their
state-dict keys are timm's. The checkpoints people publish use the layouts of
the code that trained them:

* facebookresearch/ConvNeXt (``downsample_layers.i.j``, ``stages.i.j.dwconv``,
  ``pwconv1/2`` as Linear, ``gamma``): ConvNeXt ImageNet weights, the DCLS
  ImageNet ConvNeXt (``dwconv.P``/``SIG`` added) and DCLS-Audio's ConvNeXt;
* sail-sg/metaformer (``downsample_layers.i.conv``, ``stages.i.j.token_mixer``,
  ``pwconv`` as Linear, an MLP head): ConvFormer ImageNet weights and
  DCLS-Audio's ConvFormers;
* apple/ml-fastvit (a flat ``network.i`` list, MobileOne ``rbr_*`` branches,
  ``convffn``, ``conv_exp``): FastViT weights and DCLS-Audio's FastViT;
* timm's own layout, as our models and timm's checkpoints have it.

Renaming is timm's: each family's ``checkpoint_filter_fn`` converts exactly
these upstream layouts to timm's (reshaping Linear weights into 1×1 convs where
timm uses convs). Those converters look target shapes up in the model's state
dict; here they get the shapes of the model being loaded, and keys the model
lacks are left as they are, so that the caller can name every key that does
not fit instead of failing inside the converter.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from torch import Tensor, nn
from timm.models import convnext as timm_convnext
from timm.models import fastvit as timm_fastvit
from timm.models import metaformer as timm_metaformer

from audio_dcls.models import ConvFormerAudio, ConvNeXtAudio, FastVitAudio

from .errors import CheckpointError

__all__ = ["Layout", "MappedTensor", "LAYOUTS", "detect_layout", "rename_state", "rename_rules"]

_Keys = Sequence[str]


@dataclass(frozen=True)
class MappedTensor:
    source_key: str  # key in the checkpoint
    key: str  # key in our model's state dict
    tensor: Tensor  # the checkpoint's tensor, reshaped where the layouts differ only in shape


def _any(keys: _Keys, pattern: str) -> bool:
    rx = re.compile(pattern)
    return any(rx.search(k) for k in keys)


@dataclass(frozen=True)
class Layout:
    name: str  # e.g. 'facebookresearch/ConvNeXt'
    model_class: Type[nn.Module]  # our model family that takes it
    recognise: Callable[[_Keys], bool]  # True when the keys are in this layout
    classifier_weight: Tuple[str, ...]  # where this layout keeps the classifier weight (first present wins)
    converter: Optional[Callable] = None  # timm checkpoint_filter_fn; None for timm's own layout
    per_key: bool = True  # the converter renames each key on its own (FastViT's needs all keys at once)

    @property
    def family(self) -> str:
        return self.model_class.__name__

    @property
    def is_upstream(self) -> bool:
        return self.converter is not None

    def num_classes(self, state: Mapping[str, Tensor]) -> Optional[int]:
        for key in self.classifier_weight:
            if key in state:
                return int(state[key].shape[0])
        return None


def _fb_convnext(keys: _Keys) -> bool:
    return "downsample_layers.0.0.weight" in keys and _any(keys, r"^stages\.\d+\.\d+\.(dwconv|pwconv1)\.")


def _sail_metaformer(keys: _Keys) -> bool:
    return "downsample_layers.0.conv.weight" in keys and _any(keys, r"^stages\.\d+\.\d+\.token_mixer\.")


def _apple_fastvit(keys: _Keys) -> bool:
    return _any(keys, r"^patch_embed\.") and _any(keys, r"^network\.\d+\.\d+\.(token_mixer|convffn)\.")


def _timm_convnext(keys: _Keys) -> bool:
    return _any(keys, r"^stages\.\d+\.blocks\.\d+\.conv_dw\.")


def _timm_metaformer(keys: _Keys) -> bool:
    return _any(keys, r"^stages\.\d+\.blocks\.\d+\.token_mixer\.pwconv1\.")


def _timm_fastvit(keys: _Keys) -> bool:
    return _any(keys, r"^final_conv\.") and _any(keys, r"^stages\.\d+\.blocks\.\d+\.(token_mixer|mlp)\.")


LAYOUTS: Tuple[Layout, ...] = (
    Layout("facebookresearch/ConvNeXt", ConvNeXtAudio, _fb_convnext, ("head.weight",), timm_convnext.checkpoint_filter_fn),
    Layout("sail-sg/metaformer", ConvFormerAudio, _sail_metaformer, ("head.fc2.weight", "head.weight"), timm_metaformer.checkpoint_filter_fn),
    Layout("apple/ml-fastvit", FastVitAudio, _apple_fastvit, ("head.weight",), timm_fastvit.checkpoint_filter_fn, per_key=False),
    Layout("timm ConvNeXt", ConvNeXtAudio, _timm_convnext, ("head.fc.weight",)),
    Layout("timm MetaFormer", ConvFormerAudio, _timm_metaformer, ("head.fc.fc2.weight", "head.fc.weight")),
    Layout("timm FastViT", FastVitAudio, _timm_fastvit, ("head.fc.weight",)),
)


def detect_layout(keys: Iterable[str], layouts: Sequence[Layout] = LAYOUTS) -> Optional[Layout]:
    keys = list(keys)
    return next((layout for layout in layouts if layout.recognise(keys)), None)


class _TargetShapes:
    """The model's state dict as timm's converters read it (``[key]`` only): a
    key the model lacks, or whose size differs, yields the incoming tensor
    itself, so the converter's reshape is a no-op and the caller reports the key."""

    def __init__(self, target: Mapping[str, Tensor], incoming: Optional[Tensor]):
        self._target = target
        self._incoming = incoming

    def __getitem__(self, key):
        t = self._target.get(key)
        if self._incoming is None:
            return t if t is not None else _NO_TARGET
        if t is None or t.numel() != self._incoming.numel():
            return self._incoming
        return t


class _NoTarget:
    shape = ()

    def numel(self):
        return -1


_NO_TARGET = _NoTarget()


class _ModelView:
    """What timm's converters use of the model: ``state_dict()`` and ``head``."""

    head = None  # FastViT's converter asks only to map CLIP projection heads, which ours are not

    def __init__(self, target: Mapping[str, Tensor], incoming: Optional[Tensor] = None):
        self._shapes = _TargetShapes(target, incoming)

    def state_dict(self):
        return self._shapes


def rename_state(layout: Layout, state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> List[MappedTensor]:
    """Every checkpoint tensor with its key in our layout, in checkpoint order.

    ``target`` is our model's state dict (a meta-device model is enough): the
    converters need its shapes. Two checkpoint keys landing on one of ours is
    an error.
    """
    if not layout.is_upstream:
        mapped = [MappedTensor(k, k, v) for k, v in state.items()]
    elif layout.per_key:
        mapped = []
        for k, v in state.items():
            out = layout.converter({k: v}, _ModelView(target, v))
            if len(out) != 1:  # e.g. timm drops ConvNeXt distillation heads
                raise CheckpointError(f"{layout.name}: timm's converter has no counterpart for checkpoint key {k}")
            ((new_key, new_v),) = out.items()
            mapped.append(MappedTensor(k, new_key, new_v))
    else:
        out = layout.converter(dict(state), _ModelView(target))
        if len(out) != len(state):
            raise CheckpointError(f"{layout.name}: timm's converter turned {len(state)} keys into {len(out)}; this checkpoint is not in the layout it handles")
        mapped = [MappedTensor(k, new_key, new_v) for (k, _), (new_key, new_v) in zip(state.items(), out.items())]
        for m in mapped:
            if m.tensor.numel() != state[m.source_key].numel():  # the zip relies on the converter keeping key order
                raise CheckpointError(f"{layout.name}: could not pair {m.source_key} with its renamed key")
    seen: Dict[str, str] = {}
    for m in mapped:
        if m.key in seen:
            raise CheckpointError(f"{layout.name}: checkpoint keys {seen[m.key]} and {m.source_key} both map to {m.key}")
        seen[m.key] = m.source_key
    return mapped


def _pattern(key: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "#", key)


def rename_rules(mapped: Sequence[MappedTensor]) -> List[Tuple[str, str, int]]:
    """(checkpoint pattern, our pattern, key count) per distinct rename, digits as '#'.

    The shared trailing names of the two keys are cut off, so a rule reads like
    ``stages.#.#.pwconv1 -> stages.#.blocks.#.mlp.fc1``; identical keys are left out.
    """
    rules: Dict[Tuple[str, str], int] = {}
    for m in mapped:
        if m.source_key == m.key:
            continue
        a, b = _pattern(m.source_key).split("."), _pattern(m.key).split(".")
        while len(a) > 1 and len(b) > 1 and a[-1] == b[-1] != "#":
            a, b = a[:-1], b[:-1]
        rule = (".".join(a), ".".join(b))
        rules[rule] = rules.get(rule, 0) + 1
    return [(a, b, n) for (a, b), n in rules.items()]
