"""The tagging service over real HTTP: uvicorn on 127.0.0.1, requests through httpx.

Release folders are written in the test with save_release (random-initialised
small models), audio files are generated here, and every response is checked
against a single-request answer or a hand-computed value.
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import struct
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import timm
import torch

import audio_dcls.models  # noqa: F401  (registers the models)
from audio_dcls.checkpoint import load_release, save_release
from audio_dcls.features import LogMelConfig
from audio_dcls.labels import audioset_vocabulary
from service.server import BackgroundServer
from service.settings import Settings, SettingsError

CONVNEXT_ARGS = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])
FASTVIT_ARGS = dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 64, 128])
TRAINING = {"epochs": 3, "val_mAP": 0.123, "recipe": "configs/test.yaml"}
MAX_UPLOAD = 20 * 1024 * 1024
API_KEY = "s3cret-key"


# --- fixtures ------------------------------------------------------------------------------
def _labels():
    v = audioset_vocabulary()
    return list(zip(v.mids, v.display_names))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    torch.manual_seed(0)
    labels = _labels()
    convnext = timm.create_model("convnext_atto_dcls_audio", **CONVNEXT_ARGS)
    save_release(root / "tiny-convnext", convnext, "convnext_atto_dcls_audio", dict(CONVNEXT_ARGS, num_classes=527), LogMelConfig(), labels, "audioset-527", TRAINING)
    # A second model with another front-end rate: the service must resample per model.
    fastvit = timm.create_model("fastvit_t8_dcls_audio", **FASTVIT_ARGS)
    save_release(root / "tiny-fastvit", fastvit, "fastvit_t8_dcls_audio", dict(FASTVIT_ARGS, num_classes=527), LogMelConfig(sample_rate=16000, f_max=8000.0), labels, "audioset-527", {})
    # A release whose weights are garbage: logged and listed, the others still served.
    broken = root / "broken"
    save_release(broken, convnext, "convnext_atto_dcls_audio", dict(CONVNEXT_ARGS, num_classes=527), LogMelConfig(), labels, "audioset-527", {})
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    # A folder offering only a pickle: loading it would run code; it must be refused unread.
    bait = root / "pickled"
    bait.mkdir()
    marker = root / "PICKLE_WAS_LOADED"
    torch.save({"boom": _PickleBomb(str(marker))}, bait / "model.pt")
    (bait / "config.yaml").write_text((root / "tiny-convnext" / "config.yaml").read_text())
    (bait / "labels.csv").write_text((root / "tiny-convnext" / "labels.csv").read_text())
    return root


class _PickleBomb:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def server(models_dir):
    settings = Settings(models_dir=models_dir, max_batch_size=16, max_wait_ms=40, queue_size=64, max_upload_bytes=MAX_UPLOAD, torch_threads=1)
    with BackgroundServer(settings) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


# --- audio generated for the tests --------------------------------------------------------------
def clip(seconds: float, sr: int = 32000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A tone whose pitch depends on the seed, plus noise: clips differ from each other."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = 200.0 * (1 + seed % 7)
    y = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))) + 0.05 * rng.standard_normal(t.shape)
    y = y.astype(np.float32)
    if channels > 1:
        y = np.stack([y * (1 - 0.1 * c) for c in range(channels)], axis=1)
    return y


def encode(y: np.ndarray, sr: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def wav_header(sr: int, channels: int, bits: int, data_bytes: int, fmt_code: int = 1) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_code, channels, sr, sr * block, block, bits)
    return b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_bytes)


def post_tag(client, data: bytes, filename: str = "clip.wav", **form):
    return client.post("/v1/tag", files={"file": (filename, data, "application/octet-stream")}, data={k: str(v) for k, v in form.items()})


def assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# --- settings ---------------------------------------------------------------------------------
def test_settings_from_env():
    s = Settings.from_env({"MODELS_DIR": "/models", "MAX_BATCH_SIZE": "8", "MAX_WAIT_MS": "2.5", "API_KEY": "", "WARMUP": "false", "PORT": "9000"})
    assert s.models_dir == Path("/models") and s.max_batch_size == 8 and s.max_wait_ms == 2.5 and s.port == 9000
    assert s.api_key is None and s.warmup is False
    assert Settings.from_env({}).models_dir == Path("runs/release")
    s = Settings.from_env({"DRAIN_SECONDS": "5", "REQUEST_TIMEOUT_S": "2.5"})
    assert s.drain_seconds == 5 and s.request_timeout_s == 2.5
    assert Settings().drain_seconds == 30 and Settings().request_timeout_s == 120
    bad = ({"MAX_BATCH_SIZE": "0"}, {"MAX_BATCH_SIZE": "lots"}, {"WARMUP": "maybe"}, {"PORT": "70000"}, {"LOG_LEVEL": "loud"}, {"DRAIN_SECONDS": "0"}, {"REQUEST_TIMEOUT_S": "-1"})
    for env in bad:
        with pytest.raises(SettingsError):
            Settings.from_env(env)


# --- health, models, labels ---------------------------------------------------------------------
def test_health_and_models(client, models_dir):
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["models"] == ["tiny-convnext", "tiny-fastvit"]
    assert set(body["failed"]) == {"broken", "pickled"}
    assert "missing model.safetensors" in body["failed"]["pickled"]
    assert not (models_dir / "PICKLE_WAS_LOADED").exists()

    models = client.get("/v1/models").json()
    assert models["default"] == "tiny-convnext"
    by_name = {m["name"]: m for m in models["models"]}
    assert set(by_name) == {"tiny-convnext", "tiny-fastvit"}
    reference = timm.create_model("convnext_atto_dcls_audio", **CONVNEXT_ARGS)
    assert by_name["tiny-convnext"]["num_parameters"] == sum(p.numel() for p in reference.parameters())
    assert by_name["tiny-fastvit"]["sample_rate"] == 16000

    details = client.get("/v1/models/tiny-convnext").json()
    assert details["arch"] == "convnext_atto_dcls_audio" and details["default"] is True
    assert details["frontend"] == LogMelConfig().to_dict()
    assert details["training"] == TRAINING
    assert len(details["labels"]) == 527
    assert details["labels"][0] == {"index": 0, "mid": "/m/09x0r", "name": "Speech"}
    assert details["batching"]["max_batch_size"] == 16

    labels = client.get("/v1/labels").json()
    assert labels["model"] == "tiny-convnext" and labels["num_classes"] == 527 and labels["label_source"] == "audioset-527"
    assert labels["labels"] == details["labels"]
    assert client.get("/v1/labels", params={"model": "tiny-fastvit"}).json()["model"] == "tiny-fastvit"


def test_model_name_errors(client):
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")
    assert_error(client.get("/v1/models/..%2F..%2Fetc"), 404)
    assert_error(client.get("/v1/labels", params={"model": "nope"}), 404, "model_not_found")
    assert_error(client.get("/v1/labels", params={"model": "../secrets"}), 422, "invalid_parameter")
    data = encode(clip(3), 32000)
    assert_error(post_tag(client, data, model="nope"), 404, "model_not_found")
    assert_error(post_tag(client, data, model="../../etc/passwd"), 422, "invalid_parameter")


def test_framework_errors_use_the_json_shape(client):
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/v1/tag"), 405, "method_not_allowed")
    assert_error(client.post("/v1/tag", data={"top_k": "3"}), 422, "invalid_parameter")  # no file


# --- tagging ------------------------------------------------------------------------------------------
def test_tag_result_shape_and_values(client, server):
    sr = 44100
    y = clip(12.5, sr=sr, seed=3)
    r = post_tag(client, encode(y, sr), filename="tone.wav", top_k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-convnext" and body["filename"] == "tone.wav"
    assert body["duration_s"] == pytest.approx(12.5, abs=1e-3)
    assert body["sample_rate"] == 32000 and body["window_s"] == 10 and body["hop_s"] == 5
    # 12.5 s, 10 s windows every 5 s: one at 0; the next at 5 would run 2.5 s past the end, so the last
    # window is pulled back to end at the end of the audio (audio_dcls.windowing): no padding.
    assert [(w["start_s"], w["end_s"]) for w in body["windows"]] == [(0.0, 10.0), (2.5, 12.5)]
    assert body["num_windows"] == 2
    scores = np.array(body["scores"])
    assert scores.shape == (527,) and ((scores >= 0) & (scores <= 1)).all()
    # Clip scores are the maximum over windows; top tags are the best clip scores.
    order = np.argsort(-scores, kind="stable")[:5]
    assert [t["index"] for t in body["tags"]] == order.tolist()
    vocab = audioset_vocabulary()
    for t in body["tags"]:
        assert t["mid"] == vocab.mids[t["index"]] and t["name"] == vocab.display_names[t["index"]]
        assert t["score"] == pytest.approx(scores[t["index"]])
    for w in body["windows"]:
        assert len(w["tags"]) == 3  # window_top_k's default, whatever top_k
        for t in w["tags"]:
            assert t["score"] <= scores[t["index"]] + 1e-7
        assert len(w["tag_scores"]) == 5  # the window's score of each clip tag
    # Each clip tag's score is the best of its window scores.
    for j, t in enumerate(body["tags"]):
        assert max(w["tag_scores"][j] for w in body["windows"]) == t["score"]
    assert body["warnings"] == []
    # The maximum over windows reaches the clip score of each top tag.
    for t in body["tags"]:
        window_best = max((wt["score"] for w in body["windows"] for wt in w["tags"] if wt["index"] == t["index"]), default=None)
        if window_best is not None:
            assert window_best <= t["score"] + 1e-7
    timing = body["timing"]
    assert set(timing) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert 0 < timing["inference_ms"] <= timing["total_ms"]

    # The same audio computed directly with the loaded model (the oracle: front end + model, one window at a time).
    loaded = server.registry.models["tiny-convnext"]
    from audio_dcls.audio import load_audio

    audio = torch.from_numpy(load_audio(encode(y, sr), target_sr=32000))
    assert audio.shape[0] == 400000
    with torch.inference_mode():
        direct = torch.stack([loaded.waveform_model(audio[None, s : s + 320000]).scores[0] for s in (0, 80000)]).numpy()
    np.testing.assert_allclose(scores, direct.max(0), atol=1e-5)

    # threshold keeps only tags at or above it; a file name with a misleading extension still decodes by content.
    floor = float(np.sort(scores)[-3])
    r2 = post_tag(client, encode(y, sr), filename="tone.mp3", top_k=10, threshold=floor)
    assert r2.status_code == 200
    assert [t["index"] for t in r2.json()["tags"]] == order[:3].tolist()


def _significant_digits(x: float) -> int:
    return len(f"{x:.15g}".lstrip("-0.").replace(".", "").split("e")[0].rstrip("0"))


def test_lean_responses_include_window_top_k_and_rounding(client):
    long_file = encode(clip(47, seed=6), 32000)  # 9 windows
    full = post_tag(client, long_file, top_k=527).json()
    # Every score has at most 5 significant digits; the windows list window_top_k tags whatever top_k.
    numbers = full["scores"] + [t["score"] for t in full["tags"]] + [x for w in full["windows"] for x in w["tag_scores"]]
    assert max(_significant_digits(x) for x in numbers) <= 5 and min(x for x in numbers) > 0
    assert len(full["tags"]) == 527 and all(len(w["tags"]) == 3 and len(w["tag_scores"]) == 527 for w in full["windows"])
    # Ranked by the scores as sent, ties by index: a client sorting `scores` gets the same tags.
    assert [t["index"] for t in full["tags"]] == sorted(range(527), key=lambda i: (-full["scores"][i], i))
    seven = post_tag(client, long_file, top_k=4, window_top_k=7).json()
    assert all(len(w["tags"]) == 7 and len(w["tag_scores"]) == 4 for w in seven["windows"])
    assert seven["windows"][2]["tags"][:3] == full["windows"][2]["tags"]
    # include= keeps or leaves out the large parts; the rest of the result is unchanged.
    base = {k for k in full if k not in ("scores", "windows")}
    for include, parts in (("none", set()), ("scores", {"scores"}), ("windows", {"windows"}), ("windows, scores", {"scores", "windows"})):
        body = post_tag(client, long_file, top_k=5, include=include).json()
        assert set(body) == base | parts, include
        assert [t["index"] for t in body["tags"]] == [t["index"] for t in full["tags"][:5]]
    assert_error(post_tag(client, long_file, include="scores,embeddings"), 422, "invalid_parameter")
    lean = post_tag(client, long_file, include="none")
    assert len(lean.content) < len(post_tag(client, long_file).content) / 3


def test_large_results_are_gzipped(client):
    data = encode(clip(60, seed=7), 32000)
    r = client.post("/v1/tag", files={"file": ("a.wav", data)}, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    wire = int(r.headers["content-length"])
    assert wire < len(r.content) / 2  # httpx inflated it: the JSON is at least twice its size on the wire
    assert r.json()["num_windows"] == 11
    plain = client.post("/v1/tag", files={"file": ("a.wav", data)}, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.json()["scores"] == r.json()["scores"]
    small = client.get("/health/live", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers  # under the 1 KiB floor: not worth compressing


def test_second_model_resamples_to_its_own_rate(client):
    r = post_tag(client, encode(clip(4, sr=48000, seed=2), 48000, fmt="FLAC"), filename="c.flac", model="tiny-fastvit", window_s=4, hop_s=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-fastvit" and body["sample_rate"] == 16000 and body["num_windows"] == 1
    assert body["duration_s"] == pytest.approx(4.0, abs=1e-3)


def test_concurrent_requests_match_single_requests(client, server):
    files = [encode(clip(s, seed=i), 32000) for i, s in enumerate([3, 10, 17, 6.5, 10, 23, 2, 14])]
    single = []
    for data in files:
        r = post_tag(client, data, top_k=3)
        assert r.status_code == 200
        single.append(r.json())
    before = _batch_histogram(client)
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        together = list(pool.map(lambda d: post_tag(client, d, top_k=3), files))
    after = _batch_histogram(client)
    for a, b in zip(single, together):
        assert b.status_code == 200
        b = b.json()
        assert b["num_windows"] == a["num_windows"]
        np.testing.assert_allclose(b["scores"], a["scores"], atol=2e-5)
        for wa, wb in zip(a["windows"], b["windows"]):
            np.testing.assert_allclose([t["score"] for t in wb["tags"]], [t["score"] for t in wa["tags"]], atol=2e-5)
    # The concurrent round really shared forward passes: fewer batches than windows.
    windows = sum(x["num_windows"] for x in single)
    assert after["sum"] - before["sum"] == windows
    assert after["count"] - before["count"] < windows


def _batch_histogram(client):
    text = client.get("/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith('audio_dcls_batch_size_sum{model="tiny-convnext"}'):
            out["sum"] = float(line.split()[-1])
        if line.startswith('audio_dcls_batch_size_count{model="tiny-convnext"}'):
            out["count"] = float(line.split()[-1])
    return out


def test_batch_route(client):
    good1, good2 = encode(clip(3, seed=4), 32000), encode(clip(11, seed=5), 22050, subtype="FLOAT")
    files = [("files", ("a.wav", good1)), ("files", ("bad.wav", b"RIFF\x00\x00garbage")), ("files", ("b.wav", good2))]
    r = client.post("/v1/tag/batch", files=files, data={"top_k": "4"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-convnext"
    assert [x["status"] for x in body["results"]] == [200, 415, 200]  # RIFF without WAVE: not audio we know
    assert [x["filename"] for x in body["results"]] == ["a.wav", "bad.wav", "b.wav"]
    assert set(body["results"][1]["error"]) == {"code", "message"}
    for data, res in ((good1, body["results"][0]), (good2, body["results"][2])):
        alone = post_tag(client, data, top_k=4).json()
        np.testing.assert_allclose(res["result"]["scores"], alone["scores"], atol=2e-5)
    too_many = [("files", (f"{i}.wav", good1)) for i in range(17)]
    assert_error(client.post("/v1/tag/batch", files=too_many), 413, "too_many_files")
    assert_error(client.post("/v1/tag/batch", data={"top_k": "4"}), 422)


@pytest.mark.parametrize(
    "form",
    [
        {"top_k": 0},
        {"top_k": 528},
        {"top_k": "ten"},
        {"threshold": 1.5},
        {"threshold": -0.1},
        {"threshold": "nan"},
        {"window_s": 1},
        {"window_s": 61},
        {"hop_s": 0},
        {"window_s": 4, "hop_s": 5},
    ],
)
def test_bad_parameters_are_422(client, form):
    assert_error(post_tag(client, encode(clip(2), 32000), **form), 422, "invalid_parameter")


def test_size_limits(client):
    # Declared too large: refused from the Content-Length before the body is read.
    big = np.random.default_rng(0).bytes(MAX_UPLOAD + 1024)
    assert_error(post_tag(client, big), 413, "payload_too_large")

    # Streamed without a Content-Length: cut off while it arrives.
    def chunks():
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        for _ in range(MAX_UPLOAD // (1 << 20) + 2):
            yield b"\0" * (1 << 20)
        yield b"\r\n--xyz--\r\n"

    r = client.post("/v1/tag", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert_error(r, 413)
    # Too many windows for the limit: 10 minutes cut every 0.5 s (2 s windows) gives 1197.
    long_quiet = encode(np.zeros(600 * 8000, np.float32), 8000, fmt="FLAC")
    assert_error(post_tag(client, long_quiet, window_s=2, hop_s=0.5), 413, "too_many_windows")


# --- the corrupt-input corpus ------------------------------------------------------------------------
def _corpus():
    sr = 32000
    floats = clip(2).copy()
    floats[1000:1010] = np.nan
    thirty_min = wav_header(8000, 1, 8, 30 * 60 * 8000) + bytes([128]) * (30 * 60 * 8000)  # unsigned 8-bit silence
    png = b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(3000)
    return {
        "empty": ("empty.wav", b"", 400),
        "random_bytes": ("noise.bin", np.random.default_rng(0).bytes(50_000), 415),
        "wrong_extension": ("picture.wav", png, 415),
        "text_as_mp3": ("notes.mp3", b"hello, this is not audio\n" * 200, 415),
        "header_only": ("header.wav", wav_header(sr, 1, 16, sr * 2 * 5), 400),
        "flac_cut_in_first_frame": ("cut.flac", encode(clip(2), sr, fmt="FLAC")[:100], 400),
        "nan_float": ("nan.wav", encode(floats, sr, subtype="FLOAT"), 400),
        "zero_samples": ("zero.wav", wav_header(sr, 1, 16, 0), 400),
        "thirty_minutes": ("long.wav", thirty_min, 413),
        "thirty_minutes_flac": ("long.flac", encode(np.zeros(30 * 60 * 8000, np.float32), 8000, fmt="FLAC"), 413),
        "bad_sample_rate": ("rate0.wav", wav_header(0, 1, 16, 64) + b"\0" * 64, 400),
    }


def test_corrupt_corpus_gets_4xx_and_the_service_stays_ready(client):
    before = _decode_error_counts(client)
    statuses = {}
    for name, (filename, data, expected) in _corpus().items():
        r = post_tag(client, data, filename=filename)
        statuses[name] = r.status_code
        assert r.status_code < 500, (name, r.text)
        assert_error(r, expected)
    after = _decode_error_counts(client)
    assert after["unsupported"] - before["unsupported"] == 3
    assert after["too_long"] - before["too_long"] == 2
    assert client.get("/health/ready").status_code == 200
    # A 96 kHz 6-channel file that is whole is real audio: downmixed, resampled and tagged.
    r = post_tag(client, encode(clip(3, sr=96000, channels=6), 96000, subtype="PCM_24"), filename="surround.wav")
    assert r.status_code == 200, r.text
    assert r.json()["duration_s"] == pytest.approx(3.0, abs=1e-3)
    # Files cut short are not refused: the audio that is there is tagged, and the result says what was missing.
    good, six = encode(clip(4), 32000), encode(clip(3, sr=96000, channels=6), 96000, subtype="PCM_24")
    cut_flac = encode(clip(4), 32000, fmt="FLAC")
    warned_before = _metric_values(client, "audio_dcls_decode_warnings_total")["truncated"]
    cases = (
        ("truncated.wav", good[: len(good) // 2], 2.0, "truncated: the header announces 256,000 bytes of audio but only 127,978 are present"),
        ("surround.wav", six[: len(six) // 3], 1.0, None),
        ("cut.flac", cut_flac[: len(cut_flac) * 3 // 4], None, None),
    )
    for name, data, seconds, warning in cases:
        r = post_tag(client, data, filename=name)
        assert r.status_code == 200, r.text
        if seconds is not None:
            assert r.json()["duration_s"] == pytest.approx(seconds, abs=0.01)
        [got] = r.json()["warnings"]
        assert got.startswith("truncated: ") and (warning is None or got == warning), got
    assert _metric_values(client, "audio_dcls_decode_warnings_total")["truncated"] - warned_before == 3
    r = client.post("/v1/tag/batch", files=[("files", ("whole.wav", good)), ("files", ("truncated.wav", good[: len(good) // 2]))])
    assert [x["result"]["warnings"] for x in r.json()["results"]] == [[], [cases[0][3]]]
    # The same corpus sent at once through the batch route: per-file errors, no 5xx.
    corpus = list(_corpus().values())
    small = [(f, d) for f, d, _ in corpus if len(d) < 5_000_000]
    r = client.post("/v1/tag/batch", files=[("files", x) for x in small])
    assert r.status_code == 200
    assert all(400 <= x["status"] < 500 for x in r.json()["results"])
    assert client.get("/health/ready").status_code == 200


def _metric_values(client, name: str) -> dict:
    """{first label value: value} of a metric with one label."""
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{"):
            label = line.split('="')[1].split('"')[0]
            counts[label] = float(line.split()[-1])
    return counts


def _decode_error_counts(client):
    return _metric_values(client, "audio_dcls_decode_errors_total")


def test_metrics(client):
    client.get("/health/live")
    assert_error(client.get("/v1/models/nope"), 404)
    text = client.get("/metrics").text
    assert 'audio_dcls_http_requests_total{method="GET",route="/health/live",status="200"}' in text
    # Labelled by route template, not by raw path.
    assert 'route="/v1/models/{name}",status="404"' in text
    assert "/v1/models/nope" not in text
    assert 'audio_dcls_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/health/live",status="200"}' in text
    assert 'audio_dcls_queue_depth{model="tiny-convnext"} 0.0' in text
    assert 'audio_dcls_batch_size_count{model="tiny-convnext"}' in text
    assert 'audio_dcls_decode_errors_total{reason="unsupported"}' in text
    assert "audio_dcls_ready 1.0" in text


# --- API key, queue limits, readiness --------------------------------------------------------------------
@pytest.fixture(scope="module")
def strict_server(models_dir, tmp_path_factory):
    only = tmp_path_factory.mktemp("one-model")
    os.symlink(models_dir / "tiny-convnext", only / "tiny-convnext")
    settings = Settings(models_dir=only, api_key=API_KEY, max_batch_size=1, max_wait_ms=0, queue_size=1, torch_threads=1)
    with BackgroundServer(settings) as s:
        yield s


def test_api_key(strict_server):
    with httpx.Client(base_url=strict_server.url, timeout=60) as c:
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/ready").status_code == 200
        assert c.get("/").status_code == 200 and "<html" in c.get("/").text
        for path in ("/v1/models", "/v1/labels", "/metrics", "/v1/models/tiny-convnext"):
            err = assert_error(c.get(path), 401, "unauthorized")
            assert "Bearer" in err["message"]
            assert_error(c.get(path, headers={"Authorization": "Bearer wrong"}), 401)
            assert c.get(path, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        r = c.post("/v1/tag", files={"file": ("a.wav", encode(clip(2), 32000))})
        assert_error(r, 401)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        ok = c.post("/v1/tag", files={"file": ("a.wav", encode(clip(2), 32000))}, headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200


def test_full_queue_answers_503_with_retry_after(strict_server):
    # One job running and one queued fill this server (max_batch_size=1, queue_size=1).
    data = encode(clip(90, sr=8000), 8000)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=strict_server.url, timeout=120, headers=headers) as c:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda _: c.post("/v1/tag", files={"file": ("l.wav", data)}, data={"window_s": "2", "hop_s": "0.5"}), range(10)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) <= {200, 503} and codes[0] == 200 and codes[-1] == 503, codes
        for r in responses:
            if r.status_code == 503:
                assert_error(r, 503, "queue_full")
                assert int(r.headers["Retry-After"]) >= 1
        assert c.get("/health/ready").status_code == 200
        text = c.get("/metrics").text
        assert f'audio_dcls_queue_rejections_total{{model="tiny-convnext"}} {codes.count(503)}.0' in text
        assert f'audio_dcls_refusals_total{{reason="queue_full",status="503"}} {codes.count(503)}.0' in text


def test_not_ready_without_models(tmp_path):
    with BackgroundServer(Settings(models_dir=tmp_path / "empty")) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.get("/health/live").status_code == 200
        r = c.get("/health/ready")
        err = assert_error(r, 503, "no_models")
        assert "no release folders" in err["message"] and r.headers["Retry-After"]
        assert_error(c.get("/v1/models"), 503, "no_models")
        assert_error(post_tag(c, encode(clip(2), 32000)), 503, "no_models")
        assert "audio_dcls_ready 0.0" in c.get("/metrics").text


def test_web_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
        assert asset in page.text


def test_not_ready_while_loading(models_dir, tmp_path):
    # The registry reads each release folder through release_loader: this one holds loading open
    # until the test has seen the service answer while it loads.
    only = tmp_path / "models"
    only.mkdir()
    os.symlink(models_dir / "tiny-convnext", only / "tiny-convnext")
    loading, gate = threading.Event(), threading.Event()

    def held_open(folder, device):
        loading.set()
        assert gate.wait(120), "the test never let loading finish"
        return load_release(folder, device=device)

    server = BackgroundServer(Settings(models_dir=only, torch_threads=1), release_loader=held_open)
    try:
        server.start(wait_ready=False)
        assert loading.wait(60)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/health/live").status_code == 200
            r = c.get("/health/ready")
            err = assert_error(r, 503, "not_ready")
            assert "loading models (0/1 release folders done)" in err["message"] and r.headers["Retry-After"] == "5"
            assert_error(c.get("/v1/models"), 503, "not_ready")
            assert_error(c.get("/v1/labels"), 503, "not_ready")
            assert_error(post_tag(c, encode(clip(2), 32000)), 503, "not_ready")
            text = c.get("/metrics").text
            assert "audio_dcls_ready 0.0" in text
            assert 'audio_dcls_refusals_total{reason="not_ready",status="503"} 4.0' in text  # ready, models, labels, tag
            gate.set()
            assert server.registry.wait(120)
            assert c.get("/health/ready").json()["models"] == ["tiny-convnext"]
            assert post_tag(c, encode(clip(2), 32000)).status_code == 200
    finally:
        gate.set()
        server.stop()
