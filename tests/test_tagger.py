"""The Python Tagger against the live service: the same file gets the same numbers.

A small release is written in tmp_path, the real service runs on 127.0.0.1
(service.server.BackgroundServer), and ``audio_dcls.Tagger`` on the same release
folder must give what POST /v1/tag and POST /v1/embed answer, window by window.
"""
from __future__ import annotations

import io

import httpx
import jsonschema
import numpy as np
import pytest
import soundfile as sf
import timm
import torch

import audio_dcls
import audio_dcls.models  # noqa: F401  (registers the models)
from audio_dcls.checkpoint import load_release, save_release
from audio_dcls.features import LogMelConfig
from audio_dcls.labels import audioset_vocabulary
from service.server import BackgroundServer
from service.settings import Settings

ARGS = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])
SOURCE = {"kind": "test-import", "file": "tiny.pth", "sha256": "ab" * 32, "reported_map": None}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagger-releases")
    torch.manual_seed(3)
    vocab = audioset_vocabulary()
    model = timm.create_model("convnext_atto_dcls_audio", **ARGS)
    save_release(root / "tiny-tagger", model, "convnext_atto_dcls_audio", dict(ARGS, num_classes=527), LogMelConfig(), list(zip(vocab.mids, vocab.display_names)), "audioset-527", {"epochs": 1}, source=SOURCE)
    return root / "tiny-tagger"


@pytest.fixture(scope="module")
def server(release):
    with BackgroundServer(Settings(models_dir=release.parent, max_batch_size=4, max_wait_ms=5, torch_threads=1)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def tagger(release):
    return audio_dcls.Tagger(release, device="cpu", batch_size=3)


def tone(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t * (1 + 0.05 * np.sin(2 * np.pi * t))) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def audio_file(tmp_path_factory):
    """23.4 s at 44.1 kHz: resampled, 10 s windows at 0, 5, 10 and 13.4 s (the last ending at the end)."""
    path = tmp_path_factory.mktemp("audio") / "street.wav"
    sf.write(path, tone(23.4, 44100, seed=2), 44100, subtype="PCM_16")
    return path


def test_tagger_equals_the_service_for_the_same_file(client, tagger, audio_file):
    data = audio_file.read_bytes()
    tagged = client.post("/v1/tag", files={"file": ("street.wav", data)}, data={"top_k": "527", "window_top_k": "527"})
    embedded = client.post("/v1/embed", files={"file": ("street.wav", data)}, data={"per_window": "true"})
    assert tagged.status_code == 200 and embedded.status_code == 200, (tagged.text, embedded.text)
    tagged, embedded = tagged.json(), embedded.json()

    scores, embedding = tagger.tag(audio_file)
    assert scores.shape == (527,) and embedding.shape == (tagger.embedding_dim,) == (128,)
    sent = 6e-6  # the service sends 5 significant digits: half a unit of the 5th digit of a score below 1, and float32
    np.testing.assert_allclose(scores, tagged["scores"], atol=sent, rtol=0)
    np.testing.assert_allclose(embedding, embedded["embedding"], atol=1e-5, rtol=1e-5)
    assert embedded["embedding_dim"] == 128 and embedded["num_windows"] == tagged["num_windows"] == 4

    w = tagger.tag_windows(audio_file)
    bounds = [(w["start_s"], w["end_s"]) for w in embedded["windows"]]
    assert bounds == [(w["start_s"], w["end_s"]) for w in tagged["windows"]]
    assert bounds == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (13.4, 23.4)]
    np.testing.assert_allclose(w.start_s, [b[0] for b in bounds], atol=1e-6)
    np.testing.assert_allclose(w.end_s, [b[1] for b in bounds], atol=1e-6)
    np.testing.assert_allclose(w.embeddings, [x["embedding"] for x in embedded["windows"]], atol=1e-5, rtol=1e-5)
    for i, window in enumerate(tagged["windows"]):  # every window's scores (top_k = all 527)
        by_index = np.empty(527)
        for t in window["tags"]:
            by_index[t["index"]] = t["score"]
        np.testing.assert_allclose(w.scores[i], by_index, atol=sent, rtol=0)
        np.testing.assert_allclose(w.scores[i][[t["index"] for t in tagged["tags"]]], window["tag_scores"], atol=sent, rtol=0)
    # The service ranks the scores it sends (5 significant digits): the library's top_tags does the same with digits=5.
    from audio_dcls.inference import top_tags

    assert top_tags(scores, tagger.labels, 5, digits=5) == tagged["tags"][:5]


def test_same_input_same_vector_and_arrays_equal_files(client, tagger, audio_file):
    scores, embedding = tagger.tag(audio_file)
    again_scores, again = tagger.tag(str(audio_file))
    assert np.array_equal(again, embedding) and np.array_equal(again_scores, scores)
    # The samples as an array at their own rate: decoded by the caller, resampled by the Tagger.
    samples, sr = sf.read(audio_file, dtype="float32")
    from_array = tagger.tag(samples, sample_rate=sr)
    np.testing.assert_allclose(from_array[1], embedding, atol=1e-6)
    np.testing.assert_allclose(tagger.tag(torch.from_numpy(np.stack([samples, samples])), sample_rate=sr)[1], embedding, atol=1e-6)
    np.testing.assert_allclose(tagger.tag(audio_file.read_bytes())[0], scores, atol=0)
    # Over HTTP twice: the same vector (the batch it lands in does not matter).
    data = audio_file.read_bytes()
    first, second = (client.post("/v1/embed", files={"file": ("a.wav", data)}).json() for _ in range(2))
    np.testing.assert_allclose(first["embedding"], second["embedding"], atol=1e-6)
    assert all(set(w) == {"index", "start_s", "end_s"} for w in first["windows"])  # no per-window vectors unless asked


def test_a_clip_shorter_than_a_window_and_custom_windows(client, release, tagger):
    short = tone(3.0, 16000, seed=4)
    buf = io.BytesIO()
    sf.write(buf, short, 16000, format="FLAC")
    body = client.post("/v1/embed", files={"file": ("short.flac", buf.getvalue())}, data={"window_s": "4", "hop_s": "2", "per_window": "1"}).json()
    assert body["num_windows"] == 1 and body["windows"][0]["start_s"] == 0.0 and body["windows"][0]["end_s"] == pytest.approx(3.0)
    custom = audio_dcls.Tagger(release, device="cpu", window_s=4.0, hop_s=2.0)
    w = custom.tag_windows(buf.getvalue())
    assert w.plan.num_windows == 1 and w.plan.padded_length == 4 * 32000
    np.testing.assert_allclose(w.embeddings[0], body["windows"][0]["embedding"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(custom.tag(buf.getvalue())[1], body["embedding"], atol=1e-5, rtol=1e-5)


def test_tagger_refuses_bad_input_with_a_clear_message(release, tagger, tmp_path):
    with pytest.raises(ValueError, match="give sample_rate="):
        tagger.tag(np.zeros(32000, np.float32))
    with pytest.raises(ValueError, match="sample_rate is for arrays"):
        tagger.tag(tmp_path / "x.wav", sample_rate=32000)
    with pytest.raises(ValueError, match=r"\(channels, samples\)"):
        tagger.tag(np.zeros((32000, 2), np.float32), sample_rate=32000)
    with pytest.raises(ValueError, match="NaN"):
        tagger.tag(np.full(32000, np.nan, np.float32), sample_rate=32000)
    with pytest.raises(ValueError, match="must not exceed the window"):
        audio_dcls.Tagger(release, device="cpu", window_s=4.0, hop_s=5.0)
    with pytest.raises(ValueError, match="window_s must be in"):
        audio_dcls.Tagger(release, device="cpu", window_s=1.0)
    (tmp_path / "notes.wav").write_text("not audio\n" * 100)
    from audio_dcls.audio import AudioDecodeError

    with pytest.raises(AudioDecodeError):
        tagger.tag(tmp_path / "notes.wav")


def test_embed_route_errors_batching_and_the_model_record(client, server, release):
    data = io.BytesIO()
    sf.write(data, tone(12.0, 32000), 32000, format="WAV")
    before = _batched_windows(client)
    assert client.post("/v1/embed", files={"file": ("a.wav", data.getvalue())}).json()["num_windows"] == 2
    assert _batched_windows(client) - before == 2  # the embed windows went through the model's batching worker
    for form, status, code in (({"hop_s": "6", "window_s": "4"}, 422, "invalid_parameter"), ({"model": "nope"}, 404, "model_not_found"), ({"window_s": "1"}, 422, "invalid_parameter")):
        r = client.post("/v1/embed", files={"file": ("a.wav", data.getvalue())}, data=form)
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    r = client.post("/v1/embed", files={"file": ("notes.wav", b"not audio\n" * 100)})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    # The release's source record, top-level in config.yaml, is shown with the model.
    assert load_release(release).source == SOURCE
    details = client.get("/v1/models/tiny-tagger").json()
    assert details["source"] == SOURCE and details["embedding_dim"] == 128
    assert client.get("/v1/models").json()["models"][0]["embedding_dim"] == 128
    spec = client.get("/openapi.json").json()
    schema = {"$ref": "#/components/schemas/ModelDetails", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(details)


def _batched_windows(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('audio_dcls_batch_size_sum{model="tiny-tagger"}'):
            return float(line.split()[-1])
    return 0.0
