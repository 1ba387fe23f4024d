"""The switchboard of ``audio_dcls.ops``: every kernel-routing setting and every recorded routing choice.

Settings — read from the environment once, when ``audio_dcls.ops`` is first
imported, and changed afterwards only through the setters below or
``override``:

================  ==========================  ==========================================================
setting           environment variable        values (default first)
================  ==========================  ==========================================================
fast_depthwise    —                           True: depthwise stride-1 convolutions take our routes
                                              (the CPU route, the Triton kernels on CUDA); False: stock
wgrad             AUDIO_DCLS_DW_WGRAD         auto: per shape, the recorded route, else (CUDA) the
                                              faster of Triton and FFT, timed once and recorded;
                                              triton; fft
fused_build       AUDIO_DCLS_FUSED_BUILD      on (``1``): DCLS-Gauss kernels built by the fused Triton
                                              kernels on CUDA; off (``0``); force: on any device (CPU
                                              tensors need TRITON_INTERPRET=1, how the tests run it)
strict            AUDIO_DCLS_TRITON_STRICT    False (``0``): a failing Triton kernel falls back to the
                                              stock route with a warning; True (``1``): it raises
fwd_tiles         —                           None (autotuned) or a pinned tile config of the forward /
                                              input-gradient kernel, e.g. dict(BLOCK_R=64, BLOCK_W=32,
                                              BLOCK_K=64, I_BLOCK=1, num_warps=4, num_stages=3)
wgrad_tiles       —                           the same for the weight-gradient kernel (BLOCK_R, BLOCK_W,
                                              I_BLOCK)
interpret         TRITON_INTERPRET            read-only: Triton decides it when the kernels are
                                              decorated, at the same import
================  ==========================  ==========================================================

Settings win over recorded choices: ``wgrad="fft"`` runs the FFT route
whatever was recorded, a pinned tile config runs whatever was autotuned.

Recorded choices — what measurement picked, per shape: the weight-gradient
route under ``wgrad="auto"`` and the autotuned tile config of each kernel.
Both depend on timings, so two runs of the same job can pick differently; a
run resumed from a checkpoint must replay the first run's picks to keep the
bit-identical resume (tile shapes change the order of the fp32 sums). They
travel as plain JSON data::

    state["ops_routes"] = ops.config.routes_state()      # save, with the training checkpoint
    ops.config.load_routes_state(state["ops_routes"])     # resume, before the first step

After loading, a recorded shape runs its recorded route and tiles without
being timed or autotuned again (``route_counts()`` shows it). A shape is
named by its kernel launch, ``encode_key``: "B,C,H,W,HO,WO,KH,KW,dtype" of
the convolution the kernel computes (the input gradient's launch is the
transposed convolution's, on the output-gradient shape).

The fallback registry (Triton failures answered by the stock route,
``audio_dcls.ops.fallbacks``) is owned here too: ``guarded`` runs a kernel
under it, ``fallback_events()`` lists what fell back.

Module-level state lives only here, in one ``Switchboard`` object. It is
process-wide, not per thread: ``override`` is meant for scripts, benchmarks
and tests, not for switching routes between concurrent requests.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, Hashable, Iterator, List, Mapping, Optional, Tuple, TypeVar

import torch

from .fallbacks import FallbackRegistry

T = TypeVar("T")

WGRAD_ROUTES = ("auto", "triton", "fft")
FUSED_BUILD_MODES = ("on", "off", "force")
TILE_KINDS = ("fwd", "wgrad")
# The meta-parameters of each kernel's tile config (the autotuner's search space)...
TILE_PARAMS = {"fwd": ("BLOCK_R", "BLOCK_W", "BLOCK_K", "I_BLOCK"), "wgrad": ("BLOCK_R", "BLOCK_W", "I_BLOCK")}
# ...and the launch options a config may carry (those of ``triton.Config.all_kwargs()``).
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
# Counters of ``route_counts()``: autotuner runs, weight-gradient timings, weight-gradient routes run.
COUNTERS = ("fwd_autotuned", "wgrad_autotuned", "wgrad_timed", "wgrad_triton", "wgrad_fft")
ROUTES_STATE_VERSION = 1


# ----------------------------------------------------------------------------
# Shape keys
# ----------------------------------------------------------------------------
def encode_key(key: tuple) -> str:
    """A shape key (ints, then a torch dtype) as a stable string: (2, 3, 9, torch.float32) -> "2,3,9,float32"."""
    *dims, dtype = key
    if not isinstance(dtype, torch.dtype) or not dims:
        raise TypeError(f"a shape key is ints followed by a torch dtype, got {key!r}")
    return ",".join(str(int(d)) for d in dims) + "," + str(dtype).removeprefix("torch.")


def decode_key(text: str) -> tuple:
    """The inverse of ``encode_key``."""
    *dims, name = str(text).split(",")
    dtype = getattr(torch, name, None)
    try:
        ints = tuple(int(d) for d in dims)
    except ValueError:
        ints = ()
    if not ints or not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a shape key: {text!r} (expected ints and a dtype, e.g. '2,3,9,10,float32')")
    return ints + (dtype,)


def check_tiles(kind: str, config: Mapping, defaults: bool = False) -> dict:
    """A tile config of ``kind`` as the launch keyword arguments, validated.

    ``defaults`` fills num_warps=4 / num_stages=3 when they are missing (pinned
    configs); recorded ones carry their own.
    """
    if kind not in TILE_KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; expected one of {TILE_KINDS}")
    if not isinstance(config, Mapping):
        raise TypeError(f"a {kind} tile config is a dict, got {type(config).__name__}")
    cfg = dict(config)
    unknown = set(cfg) - set(TILE_PARAMS[kind]) - set(LAUNCH_OPTIONS)
    missing = set(TILE_PARAMS[kind]) - set(cfg)
    if unknown or missing:
        raise ValueError(f"{kind} tile config {cfg}: unknown {sorted(unknown)}, missing {sorted(missing)}; "
                         f"expected {TILE_PARAMS[kind]} and optionally {LAUNCH_OPTIONS}")
    if defaults:
        cfg.setdefault("num_warps", 4)
        cfg.setdefault("num_stages", 3)
    for name, value in cfg.items():
        # Block sides and warps: powers of two (tl.arange and the tensor-core tiles need them).
        pow2 = name in TILE_PARAMS[kind] or name == "num_warps"
        positive_int = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if not positive_int or (pow2 and value & (value - 1)):
            raise ValueError(f"{kind} tile config: {name}={value!r} is not a valid value")
    return cfg


# ----------------------------------------------------------------------------
# Recorded choices
# ----------------------------------------------------------------------------
class RouteTable:
    """The routing choices measurement made, per shape key; consulted before measuring again."""

    def __init__(self) -> None:
        self._wgrad: Dict[tuple, str] = {}  # key -> "triton" | "fft"
        self._wgrad_ms: Dict[tuple, Tuple[float, float]] = {}  # key -> (triton ms, fft ms), this process only
        self._tiles: Dict[str, Dict[tuple, dict]] = {kind: {} for kind in TILE_KINDS}  # kind -> key -> launch kwargs
        self._counts: Dict[str, int] = dict.fromkeys(COUNTERS, 0)

    # the kernels' side
    def tiles(self, kind: str, key: tuple) -> Optional[dict]:
        return self._tiles[kind].get(key)

    def record_tiles(self, kind: str, key: tuple, launch_kwargs: dict) -> None:
        self._tiles[kind][key] = dict(launch_kwargs)
        self._counts[f"{kind}_autotuned"] += 1

    def wgrad(self, key: tuple) -> Optional[str]:
        return self._wgrad.get(key)

    def record_wgrad(self, key: tuple, route: str, triton_ms: float, fft_ms: float) -> None:
        self._wgrad[key] = route
        self._wgrad_ms[key] = (triton_ms, fft_ms)
        self._counts["wgrad_timed"] += 1

    def count(self, name: str) -> None:
        self._counts[name] += 1

    # the user's side
    def state(self) -> dict:
        return {
            "version": ROUTES_STATE_VERSION,
            "wgrad": {encode_key(k): v for k, v in sorted(self._wgrad.items(), key=lambda kv: encode_key(kv[0]))},
            "tiles": {kind: {encode_key(k): dict(v) for k, v in sorted(t.items(), key=lambda kv: encode_key(kv[0]))}
                      for kind, t in self._tiles.items()},
        }

    def load(self, state: Mapping) -> None:
        """Replace the recorded choices with ``state``; a state that does not parse changes nothing."""
        if not isinstance(state, Mapping) or state.get("version") != ROUTES_STATE_VERSION:
            version = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not an ops routes state of version {ROUTES_STATE_VERSION} (got {version!r})")
        wgrad = {}
        for text, route in dict(state.get("wgrad", {})).items():
            if route not in ("triton", "fft"):
                raise ValueError(f"weight-gradient route {route!r} for {text!r}: expected 'triton' or 'fft'")
            wgrad[decode_key(text)] = route
        tiles: Dict[str, Dict[tuple, dict]] = {kind: {} for kind in TILE_KINDS}
        for kind, table in dict(state.get("tiles", {})).items():
            if kind not in TILE_KINDS:
                raise ValueError(f"unknown kernel kind {kind!r} in the routes state; expected one of {TILE_KINDS}")
            tiles[kind] = {decode_key(text): check_tiles(kind, cfg) for text, cfg in dict(table).items()}
        self._wgrad, self._wgrad_ms, self._tiles = wgrad, {}, tiles

    def clear(self) -> None:
        self._wgrad, self._wgrad_ms = {}, {}
        self._tiles = {kind: {} for kind in TILE_KINDS}

    def wgrad_timings(self) -> Dict[str, dict]:
        return {
            encode_key(k): {"route": v, "triton_ms": self._wgrad_ms.get(k, (None, None))[0], "fft_ms": self._wgrad_ms.get(k, (None, None))[1]}
            for k, v in self._wgrad.items()
        }

    def counts(self) -> Dict[str, int]:
        return dict(self._counts)


# ----------------------------------------------------------------------------
# The switchboard
# ----------------------------------------------------------------------------
def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("0", ""):
        return False
    if value == "1":
        return True
    raise ValueError(f"{name}={value!r}: expected True/False (or '1'/'0')")


def _as_wgrad(name: str, value) -> str:
    if value not in WGRAD_ROUTES:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(WGRAD_ROUTES)}")
    return value


def _as_fused_build(name: str, value) -> str:
    if isinstance(value, bool):
        mode = "on" if value else "off"
    else:  # the environment's spellings: 1 and 0
        mode = {"1": "on", "0": "off", "": "off"}.get(value, value) if isinstance(value, str) else value
    if mode not in FUSED_BUILD_MODES:
        raise ValueError(f"{name}={value!r}: expected on/1, off/0 or force")
    return mode


def _as_tiles(name: str, value) -> Optional[dict]:
    return None if value is None else check_tiles(name.removesuffix("_tiles"), value, defaults=True)


# The settable fields of the switchboard and how each is validated.
_SETTABLE = {"fast_depthwise": _as_bool, "wgrad": _as_wgrad, "fused_build": _as_fused_build, "strict": _as_bool,
             "fwd_tiles": _as_tiles, "wgrad_tiles": _as_tiles}


@dataclass
class Switchboard:
    """Every routing setting of ``audio_dcls.ops`` with the recorded choices and the fallback registry."""

    fast_depthwise: bool = True  # depthwise stride-1 convs through our routes (CPU route; Triton on CUDA)
    wgrad: str = "auto"  # depthwise weight gradient: auto (recorded, else timed on CUDA) | triton | fft
    fused_build: str = "on"  # DCLS-Gauss kernel build in Triton: on (CUDA tensors) | off | force (any device)
    strict: bool = False  # a failing Triton kernel raises instead of falling back to the stock route
    fwd_tiles: Optional[dict] = None  # pinned forward/input-gradient tile config, else autotuned
    wgrad_tiles: Optional[dict] = None  # pinned weight-gradient tile config, else autotuned
    interpret: bool = False  # TRITON_INTERPRET: kernels run on CPU tensors in Triton's interpreter (read-only)
    routes: RouteTable = field(default_factory=RouteTable)  # choices made by measurement, per shape
    fallbacks: FallbackRegistry = field(default_factory=FallbackRegistry)  # Triton failures -> stock route

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Switchboard":
        """The settings the environment asks for; an unusable value is a ``ValueError`` naming the variable."""
        return cls(
            wgrad=_as_wgrad("AUDIO_DCLS_DW_WGRAD", environ.get("AUDIO_DCLS_DW_WGRAD", "auto")),
            fused_build=_as_fused_build("AUDIO_DCLS_FUSED_BUILD", environ.get("AUDIO_DCLS_FUSED_BUILD", "1")),
            strict=_as_bool("AUDIO_DCLS_TRITON_STRICT", environ.get("AUDIO_DCLS_TRITON_STRICT", "0")),
            # Triton's own reading of the variable: anything but unset, empty or "0" turns it on.
            interpret=environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        )

    def update(self, **changes) -> dict:
        """Validate and apply ``changes``; returns the previous values of the changed settings."""
        unknown = set(changes) - set(_SETTABLE)
        if unknown:
            raise TypeError(f"unknown or read-only ops setting(s) {sorted(unknown)}; settable: {sorted(_SETTABLE)}")
        checked = {name: _SETTABLE[name](name, value) for name, value in changes.items()}
        previous = {name: getattr(self, name) for name in checked}
        for name, value in checked.items():
            setattr(self, name, value)
        return previous

    def settings(self) -> dict:
        """The current settings (not the recorded choices), e.g. for a benchmark report."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("routes", "fallbacks")}


_BOARD = Switchboard.from_environ(os.environ)


# ----------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------
def settings() -> dict:
    """All current settings as a dict (see the table above)."""
    return _BOARD.settings()


def fast_depthwise_enabled() -> bool:
    return _BOARD.fast_depthwise


def wgrad_route() -> str:
    return _BOARD.wgrad


def fused_build() -> str:
    return _BOARD.fused_build


def strict() -> bool:
    return _BOARD.strict


def interpret() -> bool:
    return _BOARD.interpret


def forced_tiles(kind: str) -> Optional[dict]:
    """The pinned tile config of ``kind`` ("fwd" or "wgrad") as launch keyword arguments, or None (autotuned)."""
    if kind not in TILE_KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; expected one of {TILE_KINDS}")
    return _BOARD.fwd_tiles if kind == "fwd" else _BOARD.wgrad_tiles


def set_fast_depthwise(enabled: bool) -> bool:
    """Turn the fast depthwise routes on or off; returns the previous state."""
    return _BOARD.update(fast_depthwise=enabled)["fast_depthwise"]


def set_wgrad_route(route: str) -> str:
    """"auto", "triton" or "fft"; returns the previous route."""
    return _BOARD.update(wgrad=route)["wgrad"]


def set_fused_build(mode) -> str:
    """"on"/True, "off"/False or "force"; returns the previous mode."""
    return _BOARD.update(fused_build=mode)["fused_build"]


def set_strict(enabled: bool) -> bool:
    """Strict mode (Triton failures raise); returns the previous state."""
    return _BOARD.update(strict=enabled)["strict"]


def force_tiles(kind: str, config: Optional[dict]) -> Optional[dict]:
    """Pin the tile config of ``kind`` ("fwd" or "wgrad"), None to autotune again; returns the previous one."""
    if kind not in TILE_KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; expected one of {TILE_KINDS}")
    return _BOARD.update(**{f"{kind}_tiles": config})[f"{kind}_tiles"]


@contextlib.contextmanager
def override(**changes) -> Iterator[None]:
    """Change settings for the duration of a block, e.g. ``with ops.config.override(wgrad="fft"):``.

    Keywords: fast_depthwise, wgrad, fused_build, strict, fwd_tiles, wgrad_tiles
    (validated before anything changes; restored on exit, also on an error).
    """
    previous = _BOARD.update(**changes)
    try:
        yield
    finally:
        _BOARD.update(**previous)


def routes() -> RouteTable:
    """The live table of recorded choices (the kernels consult and fill it)."""
    return _BOARD.routes


def routes_state() -> dict:
    """The recorded routing choices as plain JSON-able data, to store with a training checkpoint.

    ``{"version": 1, "wgrad": {key: "triton" | "fft"}, "tiles": {"fwd": {key: launch kwargs}, "wgrad": {...}}}``
    with shape keys encoded by ``encode_key``. The trainer saves it as
    ``state_dict()["ops_routes"] = ops.config.routes_state()``.
    """
    return _BOARD.routes.state()


def load_routes_state(state: Mapping) -> None:
    """Replace the recorded choices with a ``routes_state()`` of an earlier run; they are used from the next call on.

    On resume, before the first step: ``ops.config.load_routes_state(state["ops_routes"])``.
    A state that does not parse raises ``ValueError`` and leaves the table as it was.
    """
    _BOARD.routes.load(state)


def clear_routes() -> None:
    """Forget the recorded choices: the next call of each shape measures again."""
    _BOARD.routes.clear()


def wgrad_timings() -> Dict[str, dict]:
    """{key: {"route", "triton_ms", "fft_ms"}} of each recorded weight-gradient route (timings None when loaded)."""
    return _BOARD.routes.wgrad_timings()


def route_counts() -> Dict[str, int]:
    """How often, in this process, the autotuner ran per kernel, a weight gradient was timed, and each route ran."""
    return _BOARD.routes.counts()


def guarded(kind: str, key: Hashable, triton_call: Callable[[], T], stock_call: Callable[[], T]) -> T:
    """``triton_call()`` under the fallback registry: on failure (unless strict) ``stock_call()``, now and later."""
    return _BOARD.fallbacks.guarded(kind, key, triton_call, stock_call, strict=_BOARD.strict)


def fallback_events() -> List[dict]:
    """Shapes whose Triton kernel failed to build or launch and ran the stock route instead."""
    return _BOARD.fallbacks.events()
