"""The bodies the service sends, as pydantic models: what /openapi.json, /docs and /redoc show.

Small bodies (health, the model list) go through FastAPI's ``response_model``
and are checked on the way out. The large ones (a tagging result carries 527
scores, a model's details its 527 labels) are built as plain JSON-ready dicts
and sent with ``JSONResponse``; their models only document them (declared with
``responses={200: {"model": ...}}``), and tests/test_service_openapi.py holds
real responses to these schemas. Every model forbids keys it does not list, so
a field added to a response without being documented fails that test.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Dict, List, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors ---------------------------------------------------------------------------------
class ErrorDetail(_Body):
    code: str = Field(description="a stable machine-readable word (see the README's error table)", examples=["model_not_found"])
    message: str = Field(description="what went wrong, in a sentence for people", examples=["no model named 'nope' (available: convnext_tiny_dcls_audio)"])


class ErrorResponse(_Body):
    """Every error the service sends, the framework's own (404, 405, 422) included."""

    error: ErrorDetail


# Per status: what it means on any route, and an example code. Routes add their own wording.
_ERRORS: Mapping[int, tuple] = MappingProxyType({
    400: ("the file is audio we know but cannot be decoded (empty, truncated, damaged, NaN samples)", "undecodable_audio"),
    401: ("API_KEY is set and the request has no or a wrong 'Authorization: Bearer <key>' header", "unauthorized"),
    404: ("no model of that name", "model_not_found"),
    413: ("too large: the body, a file, the audio's duration, its windows or the number of files", "payload_too_large"),
    415: ("not an audio format the service reads", "unsupported_media_type"),
    422: ("a parameter is missing, malformed or out of range", "invalid_parameter"),
    503: ("the models are still loading, none could be loaded, the model's queue is full, or the instance is shutting down; retry after Retry-After seconds", "not_ready"),
    504: ("the result was not ready within REQUEST_TIMEOUT_S; the windows not yet run were dropped", "timeout"),
})
_HEADERS: Mapping[int, tuple] = MappingProxyType({
    401: ("WWW-Authenticate", 'Bearer realm="audio_dcls"', "string"),
    503: ("Retry-After", "seconds to wait before retrying", "integer"),
})


def error_responses(*statuses: int, **wording: str) -> Dict[Union[int, str], Dict[str, Any]]:
    """``responses=`` entries for these error statuses, all with the :class:`ErrorResponse` body.

    ``wording`` overrides the description of a status for one route: ``error_responses(404, 503, s404="...")``.
    """
    out: Dict[Union[int, str], Dict[str, Any]] = {}
    for status in statuses:
        description, code = _ERRORS[status]
        entry: Dict[str, Any] = {
            "model": ErrorResponse,
            "description": wording.get(f"s{status}", description),
            "content": {"application/json": {"example": {"error": {"code": code, "message": description}}}},
        }
        if status in _HEADERS:
            name, what, kind = _HEADERS[status]
            entry["headers"] = {name: {"description": what, "schema": {"type": kind}}}
        out[status] = entry
    return out


# --- health -----------------------------------------------------------------------------------
class Liveness(_Body):
    status: Literal["alive"]


class Readiness(_Body):
    status: Literal["ready"]
    models: List[str] = Field(description="the models served, sorted by name", examples=[["convnext_tiny_dcls_audio", "fastvit_sa24_dcls_audio"]])
    default_model: str = Field(description="the model a request that names none gets", examples=["convnext_tiny_dcls_audio"])
    failed: Dict[str, str] = Field(description="release folders that could not be loaded -> why", examples=[{"old-run": "missing model.safetensors"}])


# --- models and labels --------------------------------------------------------------------------
class Label(_Body):
    index: int = Field(description="position in every score vector", examples=[0])
    mid: str = Field(description="AudioSet ontology id; empty for a class of a custom vocabulary that is not an AudioSet class", examples=["/m/09x0r"])
    name: str = Field(description="display name", examples=["Speech"])


class ModelSummary(_Body):
    name: str = Field(description="the release folder's name, used as `model` in requests", examples=["convnext_tiny_dcls_audio"])
    arch: str = Field(description="the timm model name", examples=["convnext_tiny_dcls_audio"])
    num_classes: int = Field(examples=[527])
    num_parameters: int = Field(description="parameters as trained (DCLS weights and positions): the figure papers quote", examples=[28_590_000])
    num_parameters_inference: int = Field(description="parameters after folding DCLS kernels into dense convolutions", examples=[28_700_000])
    label_source: str = Field(description="where the vocabulary comes from", examples=["audioset-527"])
    embedding_dim: int = Field(description="length of the embeddings POST /v1/embed returns (the vector the classifier reads)", examples=[768])
    sample_rate: int = Field(description="Hz; uploads are resampled to this", examples=[32000])
    clip_seconds: float = Field(description="clip length the model was trained on", examples=[10.0])


class ModelList(_Body):
    default: Optional[str] = Field(description="the default model", examples=["convnext_tiny_dcls_audio"])
    models: List[ModelSummary]
    failed: Dict[str, str] = Field(description="release folders that could not be loaded -> why")


class FrontendSettings(_Body):
    """The release's log-mel front end (audio_dcls.features.LogMelConfig)."""

    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    mean: float
    std: float
    clip_seconds: float


class BatchingSettings(_Body):
    max_batch_size: int = Field(description="most windows in one forward pass")
    max_wait_ms: float = Field(description="how long a partial batch waits for requests already on their way")
    queue_size: int = Field(description="requests waiting before 503 queue_full")


class ModelDetails(ModelSummary):
    default: bool = Field(description="whether this is the default model")
    model_args: Dict[str, Any] = Field(description="keyword arguments the model was built with")
    frontend: FrontendSettings
    training: Dict[str, Any] = Field(description="the training summary stored in the release (recipe, epochs, validation mAP, ...)")
    populated_classes: Optional[List[int]] = Field(
        description="indices of the labels with at least one positive clip in the training data, when the release records them (null when it does not)",
        examples=[[0, 1, 74, 137]],
    )
    source: Optional[Dict[str, Any]] = Field(
        description="where the weights come from when they were not trained here (pipelines.import_checkpoint: file, URL, SHA-256, "
        "the paper's reported mAP, ...); null for a release trained here",
        examples=[{"kind": "dcls-audio-checkpoint", "file": "convnext_dcls_audio_tiny.pth", "sha256": "9f2c...", "reported_map": 45.52}],
    )
    device: str = Field(examples=["cpu"])
    batching: BatchingSettings
    labels: List[Label]


class WindowRange(_Body):
    min: float
    max: float
    default: float


class Limits(_Body):
    """What the service accepts, from its settings: a client can refuse a file before uploading it."""

    max_upload_bytes: int = Field(description="largest file (each file of a batch request), MAX_UPLOAD_BYTES", examples=[33554432])
    max_batch_files: int = Field(description="most files in one POST /v1/tag/batch, MAX_BATCH_FILES", examples=[16])
    max_audio_seconds: float = Field(description="longest audio after decoding, MAX_AUDIO_SECONDS", examples=[600.0])
    max_windows: int = Field(description="most analysis windows per file, MAX_WINDOWS", examples=[512])
    request_timeout_s: float = Field(description="a result not ready this long after the upload is answered 504, REQUEST_TIMEOUT_S", examples=[120.0])
    body_limits: Dict[str, int] = Field(description="route -> largest request body in bytes (files plus form fields)", examples=[{"/v1/tag": 33816576}])
    window_s: WindowRange = Field(description="the analysis windows a request may ask for, seconds")
    max_top_k: int = Field(description="largest top_k and window_top_k", examples=[527])


class LabelList(_Body):
    model: str = Field(examples=["convnext_tiny_dcls_audio"])
    label_source: str = Field(examples=["audioset-527"])
    num_classes: int = Field(examples=[527])
    labels: List[Label]


# --- tagging ------------------------------------------------------------------------------------------
class Tag(Label):
    score: float = Field(ge=0.0, le=1.0, description="the class probability", examples=[0.91])


class Window(_Body):
    index: int
    start_s: float = Field(description="where the window starts in the file, seconds")
    end_s: float = Field(description="where it ends: start_s + window_s, or the file's end for a file shorter than one window (zero-padded)")
    tags: List[Tag] = Field(description="this window's `window_top_k` best tags, best first")
    tag_scores: List[float] = Field(description="this window's score for each of the clip's `tags`, in their order: a class x time map of the clip's top classes")


class Timing(_Body):
    decode_ms: float = Field(description="decoding and resampling")
    queue_ms: float = Field(description="waiting for the model's first batch")
    inference_ms: float = Field(description="this file's share of the forward passes")
    total_ms: float = Field(description="from the upload read to the result")


_TAG_EXAMPLE = {
    "model": "convnext_tiny_dcls_audio",
    "duration_s": 12.5,
    "sample_rate": 32000,
    "window_s": 10.0,
    "hop_s": 5.0,
    "num_windows": 2,
    "tags": [{"index": 74, "mid": "/m/0bt9lr", "name": "Dog", "score": 0.91}, {"index": 75, "mid": "/m/05tny_", "name": "Bark", "score": 0.84}],
    "scores": [0.0123, 0.0009, 0.0031],
    "windows": [
        {"index": 0, "start_s": 0.0, "end_s": 10.0, "tags": [{"index": 74, "mid": "/m/0bt9lr", "name": "Dog", "score": 0.91}], "tag_scores": [0.91, 0.84]},
        {"index": 1, "start_s": 2.5, "end_s": 12.5, "tags": [{"index": 75, "mid": "/m/05tny_", "name": "Bark", "score": 0.79}], "tag_scores": [0.62, 0.79]},
    ],
    "warnings": [],
    "timing": {"decode_ms": 3.1, "queue_ms": 0.4, "inference_ms": 38.2, "total_ms": 44.0},
}


class TagResult(_Body):
    """One file's tags: the clip's top tags, every class score, and each window's top tags (the last two unless
    `include` leaves them out). Every score has 5 significant digits."""

    model_config = ConfigDict(json_schema_extra={"examples": [_TAG_EXAMPLE]})

    model: str
    duration_s: float = Field(description="the decoded audio's duration")
    sample_rate: int = Field(description="the rate the audio was resampled to (the model's)")
    window_s: float
    hop_s: float
    num_windows: int
    tags: List[Tag] = Field(description="the clip's top_k best classes (only those >= threshold when given), best first")
    scores: List[float] = Field(None, description="every class's clip score (its maximum over the windows), in label order (GET /v1/labels); with `include=scores` (the default)")
    windows: List[Window] = Field(None, description="the analysis windows in time order; with `include=windows` (the default)")
    embedding_dim: int = Field(None, description="length of `embedding`; with `include=embedding`")
    embedding: List[float] = Field(None, description="the clip's embedding as POST /v1/embed returns it (the mean of its windows'); with `include=embedding`")
    warnings: List[str] = Field(
        description="what the decoder found wrong with a file it could still use, `<kind>: <sentence>` (kinds: truncated, damaged, header, format_change); empty for a sound file",
        examples=[["truncated: the header announces 29,102 bytes of audio but only 29,020 are present"]],
    )
    timing: Timing


class TagResponse(TagResult):
    model_config = ConfigDict(json_schema_extra={"examples": [dict(_TAG_EXAMPLE, filename="dog_bark.wav")]})

    filename: Optional[str] = Field(description="the uploaded file's name, as sent")


class BatchFileResult(_Body):
    filename: Optional[str]
    status: Literal[200]
    result: TagResult


class BatchFileError(_Body):
    filename: Optional[str]
    status: int = Field(ge=400, le=599, description="the status this file alone would have got")
    error: ErrorDetail


class BatchTagResponse(_Body):
    """One entry per uploaded file, in upload order: its result or its error."""

    model: str
    results: List[Union[BatchFileResult, BatchFileError]]


# --- embeddings -----------------------------------------------------------------------------------------
class EmbeddingWindow(_Body):
    index: int
    start_s: float = Field(description="where the window starts in the file, seconds")
    end_s: float = Field(description="where it ends: start_s + window_s, or the file's end for a file shorter than one window (zero-padded)")
    embedding: Optional[List[float]] = Field(None, description="this window's embedding (only with per_window=true; absent otherwise)")


_EMBED_EXAMPLE = {
    "model": "convnext_tiny_dcls_audio",
    "filename": "dog_bark.wav",
    "duration_s": 12.5,
    "sample_rate": 32000,
    "window_s": 10.0,
    "hop_s": 5.0,
    "num_windows": 2,
    "embedding_dim": 768,
    "embedding": [0.312, -1.204, 0.057],
    "windows": [
        {"index": 0, "start_s": 0.0, "end_s": 10.0, "embedding": [0.298, -1.187, 0.061]},
        {"index": 1, "start_s": 2.5, "end_s": 12.5, "embedding": [0.326, -1.221, 0.053]},
    ],
    "warnings": [],
    "timing": {"decode_ms": 3.1, "queue_ms": 0.4, "inference_ms": 38.2, "total_ms": 44.0},
}


class EmbedResponse(_Body):
    """One file's embedding: the mean over its windows of the vector the model's classifier reads."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EMBED_EXAMPLE]})

    model: str
    filename: Optional[str] = Field(description="the uploaded file's name, as sent")
    duration_s: float = Field(description="the decoded audio's duration")
    sample_rate: int = Field(description="the rate the audio was resampled to (the model's)")
    window_s: float
    hop_s: float
    num_windows: int
    embedding_dim: int = Field(description="length of every embedding (768 ConvNeXt-T, 512 ConvFormer-S18, 1024 FastViT-SA24)")
    embedding: List[float] = Field(description="the clip's embedding: the mean of its windows' embeddings")
    windows: List[EmbeddingWindow] = Field(description="where each window lies; each carries its embedding with per_window=true")
    warnings: List[str] = Field(
        description="what the decoder found wrong with a file it could still use, `<kind>: <sentence>` (kinds: truncated, damaged, header, format_change); empty for a sound file",
        examples=[["truncated: the header announces 29,102 bytes of audio but only 29,020 are present"]],
    )
    timing: Timing
