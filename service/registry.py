"""The models a service instance serves: every release folder under ``MODELS_DIR``.

Loading a release goes through :func:`audio_dcls.checkpoint.load_release`
(safetensors weights, YAML config, CSV labels: nothing is unpickled), then
:func:`audio_dcls.models.prepare_for_inference` (DCLS kernels folded into plain
convolutions, FastViT branches merged), then a warm-up pass at the batch sizes
the worker will use. Only after every folder has been tried does the registry
report ready; a folder that fails to load is logged and listed under
``failed`` and the others are served.

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

from audio_dcls.device import resolve_device
from audio_dcls.checkpoint import RELEASE_NAME, Release, ReleaseError, load_release
from audio_dcls.features import LogMel
from audio_dcls.models import prepare_for_inference

from .batching import BatchWorker
from .metrics import ServiceMetrics
from .settings import Settings

log = logging.getLogger("service.registry")

# Shortest and longest analysis windows a request may ask for. Below ~1.3 s the
# 16x-strided stem and three 2x downsamplings leave nothing of the time axis.
MIN_WINDOW_S = 2.0
MAX_WINDOW_S = 60.0


class Tagger(torch.nn.Module):
    """Waveforms (B, samples) at the release's rate -> class probabilities (B, C)."""

    def __init__(self, frontend: LogMel, model: torch.nn.Module):
        super().__init__()
        self.frontend = frontend
        self.model = model

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.frontend(waveforms)  # (B, 1, n_mels, T)
        return torch.sigmoid(self.model(x))  # (B, C)


@dataclass
class LoadedModel:
    release: Release
    tagger: Tagger
    worker: BatchWorker
    device: torch.device
    load_seconds: float
    num_parameters: int  # of the model as trained (DCLS weights + positions), the figure papers quote
    num_parameters_inference: int  # after folding/reparameterisation (dense kernels)

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def sample_rate(self) -> int:
        return self.release.frontend.sample_rate

    def infer(self, waveforms: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.tagger(waveforms.to(self.device, non_blocking=True))

    def summary(self) -> dict:
        r = self.release
        return {
            "name": r.name,
            "arch": r.arch,
            "num_classes": len(r.labels),
            "num_parameters": self.num_parameters,
            "num_parameters_inference": self.num_parameters_inference,
            "label_source": r.label_source,
            "sample_rate": r.frontend.sample_rate,
            "clip_seconds": r.frontend.clip_seconds,
        }

    def details(self) -> dict:
        r = self.release
        d = self.summary()
        d.update(
            {
                "model_args": _jsonable(r.model_args),
                "frontend": r.frontend.to_dict(),
                "training": _jsonable(r.training),
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
                log.info("model %s ready (%s, %.2fM parameters, %.1f s)", loaded.name, loaded.release.arch, loaded.num_parameters / 1e6, loaded.load_seconds)
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

    def load_one(self, folder: Path) -> LoadedModel:
        s = self.settings
        t0 = time.perf_counter()
        device = resolve_device(s.device)
        release = self.release_loader(folder, device=device)
        trained_parameters = release.num_parameters
        model = prepare_for_inference(release.model)
        release.model = model
        frontend = LogMel(release.frontend).to(device).eval()
        tagger = Tagger(frontend, model).eval()
        loaded = LoadedModel(
            release=release,
            tagger=tagger,
            worker=None,  # type: ignore[arg-type]  (started below, after the warm-up)
            device=device,
            load_seconds=0.0,
            num_parameters=trained_parameters,
            num_parameters_inference=sum(p.numel() for p in model.parameters()),
        )
        if s.warmup:
            self._warm_up(loaded)
        worker = BatchWorker(
            release.name,
            loaded.infer,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            queue_size=s.queue_size,
            torch_threads=s.torch_threads,
            on_batch=self.metrics.batch_observer(release.name),
            incoming=self.incoming,
        )
        loaded.worker = worker.start()
        self.metrics.watch_worker(release.name, worker)
        loaded.load_seconds = time.perf_counter() - t0
        return loaded

    @staticmethod
    def _warm_up(loaded: LoadedModel) -> None:
        """First passes allocate and pick kernels; pay for them before the first user does.

        Also proves the model runs at the shortest window a request may ask for.
        """
        sr = loaded.sample_rate
        clip = int(round(loaded.release.frontend.clip_seconds * sr))
        shortest = int(round(MIN_WINDOW_S * sr))
        for batch, samples in ((1, clip), (2, clip), (1, shortest)):
            out = loaded.infer(torch.zeros(batch, samples))
            if out.shape != (batch, len(loaded.release.labels)) or not torch.isfinite(out).all():
                raise ReleaseError(f"{loaded.name}: warm-up gave output {tuple(out.shape)} (expected ({batch}, {len(loaded.release.labels)}), finite)")
