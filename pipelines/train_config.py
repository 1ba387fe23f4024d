"""The training configuration: one dataclass, YAML defaults, ``key=value`` overrides.

A recipe (``configs/*.yaml``) sets any subset of the fields below; command-line
overrides come last and win::

    python -m pipelines.train -c configs/convnext_tiny_dcls.yaml seed=1 lr=2e-3 \\
        train=[data/stores/balanced_train] model_args.dims=[64,128,256,512]

Values are parsed as YAML (``[a,b]`` lists, ``true``/``false``, ``null``) and checked
against the field's type; an unknown key, a wrong type or an impossible value is a
:class:`ConfigError` with a one-line message. ``output_dir``, ``release_dir`` and
``name`` may name other fields in braces, e.g. ``runs/{model}-seed{seed}``, so one
recipe serves every seed (``{dataset}`` and, in the two folders, ``{name}`` are the
resolved values). ``python -m pipelines.train --help-config`` lists every key with its
type, default and the comment written beside it below (:func:`describe_keys`).
"""
from __future__ import annotations

import difflib
import logging
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml

from audio_dcls.io import atomic_write
from pipelines.long_clips import LONG_CLIP_MODES

log = logging.getLogger(__name__)

AUGMENTS = ("dcls_audio", "specaugment", "none")  # training augmentations (pipelines.model_input)


class ConfigError(ValueError):
    """A recipe or override that cannot be used (message fits on one line)."""


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------
    model: str = "convnext_tiny_dcls_audio"  # timm name of a registered audio model (see audio_dcls.models)
    model_args: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (depths, dims, ...)
    drop_path: float = 0.4  # stochastic depth rate, given to the model as drop_path_rate
    layer_scale_init: Optional[float] = 1e-6  # layer-scale init value; null keeps the model's own default
    head_bias_init: Union[float, Literal["auto"], None] = None  # initial classifier bias: a logit (e.g. -5.0), 'auto' (per class, the logit of its rate in the training set after label smoothing, clipped to [1e-4, 1 - 1e-4]) or null (the model's: 0, p = 0.5)
    # --- fine-tuning ---------------------------------------------------------------
    init_from: str = ""  # start from these weights ('' = random init): one of our release folders or training checkpoints (last.pt), or an upstream/ImageNet checkpoint (path or URL) that audio_dcls.convert reads; classifier rows are copied by class
    init_fresh_dcls: bool = False  # init_from an upstream file: where it has a plain depthwise conv and the model a DCLS layer, keep that layer's fresh init instead of stopping (the paper's ConvFormer-S18-DCLS from ImageNet ConvFormer-S18)
    freeze: str = "none"  # 'none', 'backbone' (only the classifier trains) or 'stages:N' (the stem and the first N stages stay fixed); frozen parts run in eval mode and are not in the optimizer
    head_lr_scale: float = 1.0  # the classifier's learning rate is lr x this
    backbone_lr_scale: float = 1.0  # every other parameter's learning rate is lr x this (DCLS positions and Σ: x position_lr_scale on top)
    # --- data ----------------------------------------------------------------------
    train: List[str] = field(default_factory=list)  # feature stores (joined; e.g. balanced + unbalanced) or CSVs decoded on the fly
    eval: str = ""  # feature store or CSV evaluated during training ('' = none)
    labels: str = ""  # vocabulary of path,labels CSVs: a label file (index,mid,display_name CSV or one label per line); '' = the init_from release's when it names every label, else the sorted union of the train and eval CSVs' labels (stores keep their own)
    strict_labels: bool = False  # a CSV label outside the vocabulary is an error (false: counted, reported, ignored)
    audio_dir: str = ""  # audio folder for AudioSet segment CSVs named in train/eval (front end runs on the fly)
    crop_frames: int = 0  # train on random crops of this many frames (0 = whole clips); evaluation sees whole clips
    long_clips: str = "first"  # clips kept whole by a --max-seconds store: 'first' window, a 'random_crop' per epoch, or every window an item ('windows')
    workers: int = 4  # DataLoader worker processes per rank (0 = load in the training process)
    # --- optimisation --------------------------------------------------------------
    epochs: int = 60  # passes over the training data
    warmup_epochs: float = 20.0  # linear warmup length, then per-step cosine decay to min_lr
    lr: float = 4e-3  # peak learning rate (for effective_batch; not rescaled automatically)
    min_lr: float = 1e-6  # learning rate at the last step
    warmup_lr: float = 1e-6  # learning rate at the first step of the warmup
    batch_size: int = 64  # clips per process per forward pass (micro-batch)
    effective_batch: int = 4096  # clips per optimizer step over all processes (gradient accumulation fills the gap)
    opt: str = "adamw"  # 'adamw' (torch) or 'lamb' (timm.optim.Lamb)
    weight_decay: float = 0.05  # decoupled weight decay of the >= 2-D weights (never positions/Σ, norms, biases)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/LAMB betas
    position_lr_scale: float = 5.0  # DCLS positions and Σ learn this many times faster (dcls_param_groups)
    clip_grad: float = 0.0  # clip the global gradient norm to this value (0 = off)
    clamp_positions: bool = True  # after each step keep DCLS tap centres inside the dilated grid (as the DCLS training code does)
    # --- regularisation ------------------------------------------------------------
    mixup_alpha: float = 0.8  # mixup on every batch with λ ~ Beta(α, α) (0 = off)
    label_smoothing: float = 0.1  # targets become (1 - ε)·y + ε/C before mixup
    augment: str = "dcls_audio"  # 'dcls_audio' (the paper's: roll, speed perturbation, erasing before the mel scale; needs waveform data), 'specaugment' (masks, roll, gain on log-mels) or 'none'
    augment_args: Dict[str, Any] = field(default_factory=dict)  # overrides of the augmentation's settings: DclsAudioAugmentConfig (audio_dcls.augment) or AugmentConfig (audio_dcls.features) fields, e.g. {speed_p: 0.3}
    ema_decay: float = 0.0  # keep an EMA of the weights (e.g. 0.9998; 0 = off); evaluated and released instead of the raw weights
    # --- execution -----------------------------------------------------------------
    seed: int = 0  # seeds init, data order, mixup, drop path and augmentation
    device: str = "auto"  # 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'; under torchrun: cuda:LOCAL_RANK
    amp: bool = True  # autocast on CUDA (dtype amp_dtype); ignored on CPU
    amp_dtype: str = "bfloat16"  # 'bfloat16' (no loss scaling) or 'float16' (with a GradScaler)
    channels_last: bool = True  # NHWC memory format for model and inputs
    compile: bool = False  # torch.compile the training forward
    threads: int = 0  # torch intra-op threads per process (0 = torch's default)
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = run every epoch); for smoke tests
    # --- outputs -------------------------------------------------------------------
    output_dir: str = "runs/{model}-seed{seed}"  # run folder: config.yaml, last.pt, metrics.csv, steps.csv, train.log
    eval_every: int = 1  # evaluate every N epochs (the last epoch always)
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps inside an epoch (0 = at epoch ends only)
    log_every: int = 20  # a log line every N optimizer steps
    release: bool = True  # write a release folder (what the service loads) at the end
    release_dir: str = ""  # its path ('' = OUTPUT_DIR/release/NAME); the folder name is the service's model name
    name: str = ""  # the release's name ('' = {model}-{dataset}-seed{seed}), so releases of different runs never collide in one MODELS_DIR
    dataset: str = ""  # short name of the training data in the release name ('' = from the train paths: the store or CSV folder, or the folder several parts share)

    def resolved_dataset(self) -> str:
        return self.dataset or dataset_name(self.train)

    def resolved_name(self) -> str:
        return _format_path(self.name or DEFAULT_RELEASE_NAME, self, "name", dataset=self.resolved_dataset())

    def _folder_names(self) -> Dict[str, str]:
        return {"dataset": self.resolved_dataset(), "name": self.resolved_name()}

    def resolved_output_dir(self) -> Path:
        return Path(_format_path(self.output_dir, self, "output_dir", **self._folder_names()))

    def resolved_release_dir(self) -> Path:
        if self.release_dir:
            return Path(_format_path(self.release_dir, self, "release_dir", **self._folder_names()))
        return self.resolved_output_dir() / "release" / self.resolved_name()

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# Settings that may change when a run is resumed: they do not alter the numbers.
RESUMABLE_CHANGES = frozenset({"workers", "log_every", "checkpoint_every", "eval_every", "threads", "max_steps", "device", "compile", "release", "release_dir", "name", "dataset"})
DEFAULT_RELEASE_NAME = "{model}-{dataset}-seed{seed}"
FREEZE_MODES = re.compile(r"^(none|backbone|stages:([1-9][0-9]*))$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def dataset_name(train: Sequence[str]) -> str:
    """A short name for the training data: one store folder's name (a CSV or pack: its
    folder's), or the folder several parts share (data/stores/audioset/{balanced,unbalanced}_train
    -> 'audioset'); letters, digits, '.', '_' and '-' only."""
    if not train:
        return "data"
    paths = [Path(t) for t in train]

    def own(p: Path) -> str:
        return (p.parent.name or p.stem) if p.suffix.lower() in (".csv", ".h5", ".hdf5") else p.name

    parents = {p.parent for p in paths}
    name = own(paths[0]) if len(paths) == 1 or len(parents) != 1 else next(iter(parents)).name or own(paths[0])
    return _NAME_CHARS.sub("_", name).strip("._-") or "data"


def _format_path(template: str, cfg: TrainConfig, key: str, **extra: str) -> str:
    try:
        return template.format(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **extra}) if "{" in template else template
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{key}={template!r}: cannot fill in {e} (braces may only name config fields)") from None


_HINTS = typing.get_type_hints(TrainConfig)
FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def _type_name(tp) -> str:
    """How ``--help-config`` writes a field's type: str, float, list[str], float | 'auto' | null."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, List):
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin in (dict, Dict):
        return "mapping"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp) -> Any:
    """Check ``value`` against the annotation ``tp``; returns the value in that type."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X], or X | Literal[...] | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        for a in args:
            try:
                return _coerce(key, value, a)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '4e-3' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin in (list, List):
        (item,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item in (str,):
            value = [value]  # train=data/stores/x means a one-element list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover - a field we forgot


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _read_legacy_keys(settings: Dict[str, Any], origin: str) -> Dict[str, Any]:
    """Keys of earlier versions, read as their replacements: ``specaugment: true|false``
    (before ``augment``) -> ``augment: specaugment|none``."""
    if "specaugment" not in settings:
        return settings
    settings = dict(settings)
    old = settings.pop("specaugment")
    if not isinstance(old, bool):
        raise ConfigError(f"{origin}: specaugment: expected true or false, got {old!r} (it is replaced by augment: dcls_audio|specaugment|none)")
    if "augment" in settings:
        raise ConfigError(f"{origin}: give augment only; specaugment is its old form")
    settings["augment"] = "specaugment" if old else "none"
    if origin != "saved config":
        log.warning("%s: specaugment: %s is read as augment: %s (specaugment is replaced by augment: dcls_audio|specaugment|none)", origin, str(old).lower(), settings["augment"])
    return settings


def apply_settings(values: Dict[str, Any], settings: Dict[str, Any], origin: str) -> None:
    """Merge ``settings`` (from a recipe or overrides) into ``values`` with checking.

    Keys may be dotted into a mapping field: ``model_args.dims``.
    """
    for key, value in _read_legacy_keys(settings, origin).items():
        head, _, rest = str(key).partition(".")
        if head not in _HINTS:
            raise _unknown(head)
        tp = _HINTS[head]
        if rest:
            if typing.get_origin(tp) not in (dict, Dict):
                raise ConfigError(f"{origin}: {key}: {head} is not a mapping")
            target = values.setdefault(head, {})
            target = dict(target)
            target[rest] = value
            values[head] = target
        else:
            values[head] = _coerce(head, value, tp)


def validate(cfg: TrainConfig) -> None:
    """Impossible values -> ConfigError (types were checked on the way in)."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(0 <= cfg.warmup_epochs <= cfg.epochs, f"warmup_epochs must be within [0, epochs={cfg.epochs}], got {cfg.warmup_epochs}")
    need(cfg.lr > 0 and cfg.min_lr >= 0 and cfg.warmup_lr >= 0, "lr must be > 0, min_lr and warmup_lr >= 0")
    need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.effective_batch >= cfg.batch_size, f"effective_batch ({cfg.effective_batch}) must be >= batch_size ({cfg.batch_size})")
    need(cfg.opt in ("adamw", "lamb"), f"opt must be 'adamw' or 'lamb', got {cfg.opt!r}")
    need(cfg.weight_decay >= 0, "weight_decay must be >= 0")
    need(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), f"betas must be two numbers in [0, 1), got {cfg.betas}")
    need(cfg.position_lr_scale > 0, "position_lr_scale must be > 0")
    need(cfg.clip_grad >= 0, "clip_grad must be >= 0")
    need(cfg.mixup_alpha >= 0, "mixup_alpha must be >= 0")
    need(0 <= cfg.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    need(0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    need(0 <= cfg.drop_path < 1, f"drop_path must be in [0, 1), got {cfg.drop_path}")
    need(cfg.amp_dtype in ("bfloat16", "float16"), f"amp_dtype must be 'bfloat16' or 'float16', got {cfg.amp_dtype!r}")
    need(cfg.augment in AUGMENTS, f"augment must be one of {', '.join(AUGMENTS)}, got {cfg.augment!r}")
    need(not cfg.augment_args or cfg.augment != "none", "augment_args are given but augment=none")
    need(cfg.long_clips in LONG_CLIP_MODES, f"long_clips must be one of {', '.join(LONG_CLIP_MODES)}, got {cfg.long_clips!r}")
    need(cfg.crop_frames >= 0 and cfg.workers >= 0 and cfg.threads >= 0 and cfg.max_steps >= 0, "crop_frames, workers, threads and max_steps must be >= 0")
    need(cfg.eval_every >= 1 and cfg.log_every >= 1 and cfg.checkpoint_every >= 0, "eval_every and log_every must be >= 1, checkpoint_every >= 0")
    need(bool(cfg.train), "train is empty: name at least one feature store (train=[path,...])")
    need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"), f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    need(FREEZE_MODES.match(cfg.freeze) is not None, f"freeze must be none, backbone or stages:N (N >= 1), got {cfg.freeze!r}")
    need(cfg.head_lr_scale > 0 and cfg.backbone_lr_scale > 0, "head_lr_scale and backbone_lr_scale must be > 0 (to keep parts fixed, use freeze=)")
    from audio_dcls.checkpoint import RELEASE_NAME

    name = cfg.resolved_name()
    need(RELEASE_NAME.match(name) is not None, f"name {name!r}: a release name is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    cfg.resolved_output_dir()
    cfg.resolved_release_dir()


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        out[key.strip()] = parse_value(text)
    return out


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = (), require_data: bool = True) -> TrainConfig:
    """Defaults <- the YAML recipe at ``path`` <- ``key=value`` overrides, checked."""
    values: Dict[str, Any] = {f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)}
    if path is not None:
        path = Path(path)
        try:
            recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if recipe is None:
            recipe = {}
        if not isinstance(recipe, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of config keys, got {type(recipe).__name__}")
        apply_settings(values, recipe, str(path))
    apply_settings(values, parse_overrides(overrides), "command line")
    cfg = TrainConfig(**values)
    if require_data:
        validate(cfg)
    return cfg


def config_from_dict(d: Dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with ``to_dict`` (e.g. from a checkpoint)."""
    values: Dict[str, Any] = {f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)}
    apply_settings(values, d, "saved config")
    return TrainConfig(**values)


def save_config(cfg: TrainConfig, path: Path) -> None:
    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_differences(old: TrainConfig, new: TrainConfig) -> List[str]:
    """Keys whose values differ, other than those allowed to change on resume."""
    a, b = old.to_dict(), new.to_dict()
    return [k for k in FIELD_NAMES if k not in RESUMABLE_CHANGES and a[k] != b[k]]


def field_comments() -> Dict[str, str]:
    """Each field's comment as written beside it in ``TrainConfig`` (the one place keys are documented)."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    source = textwrap.dedent(inspect.getsource(TrainConfig))
    comments = {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    out: Dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = comments.get(node.end_lineno, "")
    return out


def section_titles() -> Dict[str, str]:
    """The section a field opens ('model', 'data', ...), keyed by the first field under each ``# --- x ---`` line."""
    import inspect
    import textwrap

    lines = textwrap.dedent(inspect.getsource(TrainConfig)).splitlines()
    out: Dict[str, str] = {}
    pending = None
    for line in lines:
        m = re.match(r"\s*# --- (.+?) -+\s*$", line)
        if m:
            pending = m.group(1)
            continue
        f = re.match(r"\s*(\w+):", line)
        if f and pending:
            out[f.group(1)] = pending
            pending = None
    return out


def describe_keys() -> str:
    """Every config key with its type, default and comment (``--help-config``)."""
    comments, sections = field_comments(), section_titles()
    defaults = TrainConfig()
    lines = ["Config keys (set them in a YAML recipe, or as key=value on the command line):"]
    for f in fields(TrainConfig):
        if f.name in sections:
            lines += ["", f"# {sections[f.name]}"]
        default = getattr(defaults, f.name)
        lines.append(f"  {f.name}: {_type_name(_HINTS[f.name])} = {yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}")
        lines.append(f"      {comments.get(f.name) or '(undocumented)'}")
    return "\n".join(lines)
