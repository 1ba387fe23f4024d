"""The models a service instance serves: every release folder under ``MODELS_DIR``.

Loading a release goes through :func:`audio_dcls.inference.prepare_release`
(:func:`audio_dcls.checkpoint.load_release` -- safetensors weights, YAML
config, CSV labels: nothing is unpickled -- then
:func:`audio_dcls.models.prepare_for_inference`: DCLS kernels folded into
plain convolutions, FastViT branches merged, behind the release's front end),
the very path the Python :class:`audio_dcls.Tagger` takes, then a warm-up
pass at the batch sizes the worker will use. Only after every folder has been
tried does the registry report ready; a folder that fails to load is logged
and listed under ``failed`` and the others are served.

Model names are the folder names, checked against
:data:`audio_dcls.checkpoint.RELEASE_NAME`; a request's model name is only ever
a key into a dict, never joined to a path.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from audio_dcls.checkpoint import RELEASE_NAME, Release, ReleaseError, load_release
from audio_dcls.inference import ModelOutput, PreparedRelease, WaveformModel, prepare_release
from audio_dcls.windowing import MIN_WINDOW_S

from .batching import BatchWorker
from .metrics import ServiceMetrics
from .settings import Settings

log = logging.getLogger("service.registry")

POPULATED_KEY = "populated_classes"  # in a release's training summary: label indices with >= 1 positive training clip


@dataclass
class LoadedModel:
    prepared: PreparedRelease  # the release, its prepared model behind its front end
    worker: BatchWorker
    load_seconds: float

    @property
    def release(self) -> Release:
        return self.prepared.release

    @property
    def waveform_model(self) -> WaveformModel:
        return self.prepared.model

    @property
    def device(self) -> torch.device:
        return self.prepared.device

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def sample_rate(self) -> int:
        return self.prepared.sample_rate

    @property
    def embedding_dim(self) -> int:
        return self.prepared.embedding_dim

    def infer(self, waveforms: torch.Tensor) -> ModelOutput:
        return self.prepared.infer(waveforms)

    def summary(self) -> dict:
        r = self.release
        return {
            "name": r.name,
            "arch": r.arch,
            "num_classes": len(r.labels),
            "num_parameters": self.prepared.num_parameters,
            "num_parameters_inference": self.prepared.num_parameters_inference,
            "embedding_dim": self.embedding_dim,
            "label_source": r.label_source,
            "sample_rate": r.frontend.sample_rate,
            "clip_seconds": r.frontend.clip_seconds,
        }

    def details(self) -> dict:
        r = self.release
        d = self.summary()
        training = _jsonable(r.training)
        d.update(
            {
                "model_args": _jsonable(r.model_args),
                "frontend": r.frontend.to_dict(),
                "training": {k: v for k, v in training.items() if k != POPULATED_KEY},
                "populated_classes": populated_classes(training, len(r.labels)),
                "source": _jsonable(r.source) if r.source else None,
                "device": str(self.device),
                "batching": {
                    "max_batch_size": self.worker.max_batch_size,
                    "max_wait_ms": self.worker.max_wait_s * 1000.0,
                    "queue_size": self.worker.queue_size,
                },
                "labels": labels_payload(r.labels),
            }
        )
        return d


def populated_classes(training: dict, num_classes: int) -> Optional[List[int]]:
    """The label indices the release's training data had positives for (pipelines.train records them
    under ``training.populated_classes``); None when the release does not say or says nonsense."""
    value = training.get(POPULATED_KEY)
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_classes for i in value):
        if value is not None:
            log.warning("ignoring training.%s of the release: not a list of label indices below %d", POPULATED_KEY, num_classes)
        return None
    return sorted(set(value))


def labels_payload(labels) -> List[dict]:
    return [{"index": i, "mid": mid, "name": name} for i, (mid, name) in enumerate(labels)]


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def find_release_folders(models_dir: Path) -> List[Path]:
    """Sub-folders of ``models_dir`` that look like releases, sorted by name.

    Hidden folders (the ``.name.xxxx`` temporaries an atomic save leaves while it
    writes) are skipped, so are names the URL scheme could not carry.
    """
    if not models_dir.is_dir():
        return []
    found = []
    for p in sorted(models_dir.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if not RELEASE_NAME.match(p.name):
            log.warning("skipping %s: folder name is not a valid model name", p)
            continue
        found.append(p)
    return found


class ModelRegistry:
    """Loads the release folders (in a background thread) and owns their workers.

    ``release_loader(folder, device=...)`` reads one release folder; the default is
    :func:`audio_dcls.checkpoint.load_release`. ``incoming`` counts the requests
    on their way to a worker (see :class:`service.batching.BatchWorker`).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        incoming: Optional[Callable[[], int]] = None,
        release_loader: Callable[..., Release] = load_release,
    ):
        self.settings = settings
        self.metrics = metrics
        self.incoming = incoming
        self.release_loader = release_loader
        self.models: Dict[str, LoadedModel] = {}
        self.failed: Dict[str, str] = {}  # folder name -> why it was not loaded
        self.state = "starting"  # starting -> loading -> ready | failed (no model could be loaded)
        self.progress = (0, 0)  # (tried, found)
        self.error: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._closed = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        self._thread.start()

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state == "ready"

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(30)
        for m in self.models.values():
            m.worker.stop()

    @property
    def ready(self) -> bool:
        return self.state == "ready" and all(m.worker.is_alive() for m in self.models.values())

    def not_ready_reason(self) -> str:
        if self.state in ("starting", "loading"):
            tried, found = self.progress
            return f"loading models ({tried}/{found} release folders done)"
        if self.state == "failed":
            return self.error or "no model could be loaded"
        dead = [n for n, m in self.models.items() if not m.worker.is_alive()]
        if dead:
            return f"inference worker stopped for: {', '.join(dead)}"
        return "not ready"

    # --- lookup ---------------------------------------------------------------------------
    @property
    def default_name(self) -> Optional[str]:
        if self.settings.default_model and self.settings.default_model in self.models:
            return self.settings.default_model
        return min(self.models) if self.models else None

    def get(self, name: Optional[str]) -> Optional[LoadedModel]:
        if name is None:
            name = self.default_name
        return self.models.get(name) if name is not None else None

    # --- loading ---------------------------------------------------------------------------
    def _load_all(self) -> None:
        s = self.settings
        self.state = "loading"
        torch.set_num_threads(max(s.torch_threads, 1))
        folders = find_release_folders(s.models_dir)
        self.progress = (0, len(folders))
        for i, folder in enumerate(folders):
            if self._closed.is_set():
                return
            try:
                loaded = self.load_one(folder)
            except Exception as e:  # a broken folder must not take the others down
                reason = str(e) if isinstance(e, ReleaseError) else f"{e.__class__.__name__}: {e}"
                self.failed[folder.name] = reason
                log.error("model %s not loaded: %s", folder.name, reason)
            else:
                self.models[loaded.name] = loaded
                self.metrics.models_loaded.set(len(self.models))
                log.info("model %s ready (%s, %.2fM parameters, %.1f s)", loaded.name, loaded.release.arch, loaded.prepared.num_parameters / 1e6, loaded.load_seconds)
            self.progress = (i + 1, len(folders))
        if not self.models:
            self.state = "failed"
            if not folders:
                self.error = f"no release folders under MODELS_DIR={s.models_dir} (train one with `make train-audioset`)"
            else:
                self.error = f"none of the {len(folders)} release folders under {s.models_dir} could be loaded: " + "; ".join(
                    f"{k}: {v}" for k, v in self.failed.items()
                )
            log.error("%s", self.error)
            return
        if s.default_model and s.default_model not in self.models:
            log.warning("DEFAULT_MODEL=%s is not loaded; using %s", s.default_model, self.default_name)
        self.state = "ready"
        self.metrics.ready.set(1)
        log.info("ready: serving %s", ", ".join(sorted(self.models)))

    def load_one(self, folder: Path) -> LoadedModel:
        s = self.settings
        t0 = time.perf_counter()
        prepared = prepare_release(folder, s.device, release_loader=self.release_loader)
        if s.warmup:
            self._warm_up(prepared)
        name = prepared.release.name
        worker = BatchWorker(
            name,
            prepared.infer,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            queue_size=s.queue_size,
            torch_threads=s.torch_threads,
            on_batch=self.metrics.batch_observer(name),
            incoming=self.incoming,
        )
        loaded = LoadedModel(prepared=prepared, worker=worker.start(), load_seconds=0.0)
        self.metrics.watch_worker(name, worker)
        loaded.load_seconds = time.perf_counter() - t0
        return loaded

    @staticmethod
    def _warm_up(prepared: PreparedRelease) -> None:
        """First passes allocate and pick kernels; pay for them before the first user does.

        Also proves the model runs at the shortest window a request may ask for.
        """
        sr, name = prepared.sample_rate, prepared.release.name
        clip = int(round(prepared.release.frontend.clip_seconds * sr))
        shortest = int(round(MIN_WINDOW_S * sr))
        expected = (len(prepared.labels), prepared.embedding_dim)
        for batch, samples in ((1, clip), (2, clip), (1, shortest)):
            scores, embeddings = prepared.infer(torch.zeros(batch, samples))
            if scores.shape != (batch, expected[0]) or embeddings.shape != (batch, expected[1]) or not (torch.isfinite(scores).all() and torch.isfinite(embeddings).all()):
                raise ReleaseError(
                    f"{name}: warm-up gave outputs {tuple(scores.shape)} and {tuple(embeddings.shape)} (expected ({batch}, {expected[0]}) and ({batch}, {expected[1]}), finite)"
                )
