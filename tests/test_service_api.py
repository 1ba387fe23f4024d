"""The service's contract: the OpenAPI document, the body limits per route, and the command line.

The document is walked route by route against a table written here (which
statuses each route can answer), and real responses from a live server on
127.0.0.1 are validated against the schemas the document declares for them.
The command line is run as a real subprocess.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
import soundfile as sf
import timm
import torch

import audio_dcls.models  # noqa: F401  (registers the models)
from audio_dcls.checkpoint import save_release
from audio_dcls.features import LogMelConfig
from audio_dcls.labels import audioset_vocabulary
from service.server import BackgroundServer
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "api-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_UPLOAD = 256 * 1024
MAX_FILES = 4
OVERHEAD = 256 * 1024  # service.app.MULTIPART_OVERHEAD, restated: the limits below are hand-computed
TAG_LIMIT = MAX_UPLOAD + OVERHEAD
BATCH_LIMIT = MAX_UPLOAD * MAX_FILES + OVERHEAD

# Every route the document must describe, and every status it can answer (the oracle for the walk).
EXPECTED = {
    ("get", "/health/live"): {200},
    ("get", "/health/ready"): {200, 503},
    ("get", "/metrics"): {200, 401},
    ("get", "/v1/models"): {200, 401, 503},
    ("get", "/v1/models/{name}"): {200, 401, 404, 422, 503},
    ("get", "/v1/labels"): {200, 401, 404, 422, 503},
    ("post", "/v1/tag"): {200, 400, 401, 404, 413, 415, 422, 503, 504},
    ("post", "/v1/tag/batch"): {200, 401, 404, 413, 422, 503},
    ("get", "/v1/limits"): {200, 401},
    ("post", "/v1/embed"): {200, 400, 401, 404, 413, 415, 422, 503, 504},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    torch.manual_seed(2)
    args = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    vocab = audioset_vocabulary()
    model = timm.create_model("convnext_atto_dcls_audio", **args)
    save_release(root / "api-convnext", model, "convnext_atto_dcls_audio", dict(args, num_classes=527), LogMelConfig(), list(zip(vocab.mids, vocab.display_names)), "audioset-527", {"epochs": 1})
    settings = Settings(models_dir=root, api_key=API_KEY, max_upload_bytes=MAX_UPLOAD, max_batch_files=MAX_FILES, torch_threads=1)
    with BackgroundServer(settings) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def spec(server):
    r = httpx.get(server.url + "/openapi.json", timeout=30)  # no key: the document is public
    assert r.status_code == 200, r.text
    return r.json()


def wav(seconds: float, sr: int = 32000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * 440 * (1 + seed) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def declared_only(server, method: str, path: str, length: int, headers=None) -> tuple:
    """Send only the headers of a request declaring a ``length``-byte body: (status, JSON body).

    The body never follows, so an answer proves the server decided from the route and the header alone.
    """
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.putrequest(method, path)
        for name, value in {"Content-Length": str(length), "Content-Type": "multipart/form-data; boundary=x", **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def error_of(status_and_body: tuple, status: int, code: str) -> str:
    got, body = status_and_body
    assert got == status, body
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]["message"]


# --- the document ---------------------------------------------------------------------------------
def _schema_for(spec: dict, method: str, template: str, status: int, media: str = "application/json") -> dict:
    responses = spec["paths"][template][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {template} does not document {status}"
    return {"$ref": responses[str(status)]["content"][media]["schema"]["$ref"], "components": spec["components"]}


def conforms(spec: dict, method: str, template: str, response: httpx.Response) -> dict:
    """Validate a real response against the schema the document declares for its route and status."""
    body = response.json()
    jsonschema.Draft202012Validator(_schema_for(spec, method, template, response.status_code)).validate(body)
    return body


def test_every_route_and_status_is_documented_with_a_schema(spec):
    operations = {(m, p): op for p, ops in spec["paths"].items() for m, op in ops.items()}
    assert set(operations) == set(EXPECTED)
    for (method, path), op in operations.items():
        where = f"{method.upper()} {path}"
        assert {int(s) for s in op["responses"]} == EXPECTED[(method, path)], where
        assert op.get("summary") and op.get("description"), f"{where}: no summary or description"
        for status, response in op["responses"].items():
            assert response.get("description"), (where, status)
            content = response.get("content")
            assert content, f"{where} {status}: no body documented"
            if int(status) >= 400:
                assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}, (where, status)
                assert content["application/json"]["example"]["error"]["code"], (where, status)
            elif path == "/metrics":
                assert set(content) == {"text/plain"} and content["text/plain"]["schema"] == {"type": "string"}
            else:
                ref = content["application/json"]["schema"].get("$ref", "")
                assert ref.startswith("#/components/schemas/") and spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"], (where, ref)
        if 503 in EXPECTED[(method, path)]:
            assert "Retry-After" in op["responses"]["503"]["headers"], where
    # FastAPI's own 422 shape ({"detail": [...]}) is what the service never sends.
    text = json.dumps(spec)
    assert "HTTPValidationError" not in text and '"detail"' not in text
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"] and error["additionalProperties"] is False


def test_security_scheme_is_declared_on_every_route_but_health(spec):
    schemes = spec["components"]["securitySchemes"]
    (name, scheme), = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for (method, path) in EXPECTED:
        op = spec["paths"][path][method]
        if path.startswith("/health/"):
            assert "security" not in op, path
        else:
            assert op["security"] == [{name: []}], path
            assert "401" in op["responses"], path
    assert "API_KEY" in spec["info"]["description"]


def test_docs_pages_and_assets_need_no_key_and_no_cdn(server):
    for page in ("/docs", "/redoc"):
        r = httpx.get(server.url + page, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        policy = dict(p.strip().split(" ", 1) for p in r.headers["content-security-policy"].split(";"))
        assert policy["default-src"] == policy["connect-src"] == "'self'" and policy["img-src"] == "'self' data:", policy
        assert "http://" not in r.text and "https://" not in r.text, f"{page} refers to another host"
        assets = [a.split('"')[0] for a in r.text.split('src="')[1:] + r.text.split('href="')[1:]]
        assert any(a.endswith(".js") for a in assets), page
        for asset in assets:
            got = httpx.get(server.url + asset, timeout=30)
            assert got.status_code == 200 and len(got.content) > 1000, (page, asset, got.status_code)
    # Routes the document lists still need the key.
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401


def test_real_responses_match_the_documented_schemas(server, client, spec):
    assert conforms(spec, "get", "/health/live", client.get("/health/live")) == {"status": "alive"}
    assert conforms(spec, "get", "/health/ready", client.get("/health/ready"))["models"] == ["api-convnext"]
    listing = conforms(spec, "get", "/v1/models", client.get("/v1/models"))
    assert listing["default"] == "api-convnext"
    details = conforms(spec, "get", "/v1/models/{name}", client.get("/v1/models/api-convnext"))
    assert details["training"] == {"epochs": 1} and len(details["labels"]) == 527
    assert details["populated_classes"] is None  # this release does not record them
    assert conforms(spec, "get", "/v1/labels", client.get("/v1/labels"))["num_classes"] == 527
    tagged = conforms(spec, "post", "/v1/tag", client.post("/v1/tag", files={"file": ("a.wav", wav(3))}, data={"top_k": "3"}))
    assert tagged["filename"] == "a.wav" and len(tagged["scores"]) == 527 and len(tagged["tags"]) == 3
    lean = conforms(spec, "post", "/v1/tag", client.post("/v1/tag", files={"file": ("a.wav", wav(3))}, data={"include": "none"}))
    assert "scores" not in lean and "windows" not in lean and lean["warnings"] == []
    cut = wav(3)[:-50]
    warned = conforms(spec, "post", "/v1/tag", client.post("/v1/tag", files={"file": ("cut.wav", cut)}, data={"include": "windows", "window_top_k": "2"}))
    assert warned["warnings"][0].startswith("truncated: ") and len(warned["windows"][0]["tags"]) == 2
    files = [("files", ("a.wav", wav(3))), ("files", ("bad.wav", b"not audio" * 100)), ("files", ("cut.wav", cut))]
    batch = conforms(spec, "post", "/v1/tag/batch", client.post("/v1/tag/batch", files=files))
    assert [x["status"] for x in batch["results"]] == [200, 415, 200] and batch["results"][2]["result"]["warnings"]
    limits = conforms(spec, "get", "/v1/limits", client.get("/v1/limits"))
    assert limits["max_upload_bytes"] == MAX_UPLOAD and limits["max_batch_files"] == MAX_FILES
    assert limits["body_limits"] == {"/v1/tag": TAG_LIMIT, "/v1/embed": TAG_LIMIT, "/v1/tag/batch": BATCH_LIMIT}
    conforms(spec, "get", "/v1/limits", httpx.get(server.url + "/v1/limits", timeout=30))  # 401
    conforms(spec, "post", "/v1/tag", client.post("/v1/tag", files={"file": ("a.wav", wav(3))}, data={"include": "everything"}))  # 422
    twelve_s = wav(12, sr=8000)  # two windows, within MAX_UPLOAD
    embedded = conforms(spec, "post", "/v1/embed", client.post("/v1/embed", files={"file": ("a.wav", twelve_s)}))
    assert embedded["filename"] == "a.wav" and len(embedded["embedding"]) == embedded["embedding_dim"] == details["embedding_dim"] == 128
    assert embedded["warnings"] == []
    per_window = conforms(spec, "post", "/v1/embed", client.post("/v1/embed", files={"file": ("a.wav", twelve_s)}, data={"per_window": "true"}))
    assert [len(w["embedding"]) for w in per_window["windows"]] == [128, 128]
    # include=embedding: the tagging result carries what POST /v1/embed returns for the file
    with_embedding = conforms(spec, "post", "/v1/tag", client.post("/v1/tag", files={"file": ("a.wav", twelve_s)}, data={"include": "embedding"}))
    assert with_embedding["embedding_dim"] == 128 and with_embedding["embedding"] == embedded["embedding"] and "scores" not in with_embedding
    assert details["source"] is None  # trained here: no source record
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    # Errors, each on a route that documents it.
    conforms(spec, "get", "/v1/models", httpx.get(server.url + "/v1/models", timeout=30))  # 401
    conforms(spec, "get", "/v1/models/{name}", client.get("/v1/models/nope"))  # 404
    conforms(spec, "get", "/v1/models/{name}", client.get("/v1/models/not%20a%20name"))  # 422
    conforms(spec, "get", "/v1/labels", client.get("/v1/labels", params={"model": "../x"}))  # 422
    conforms(spec, "post", "/v1/tag", client.post("/v1/tag", files={"file": ("a.wav", b"RIFF" + b"\0" * 40)}))  # 400 or 415
    conforms(spec, "post", "/v1/tag", client.post("/v1/tag", files={"file": ("a.wav", wav(3))}, data={"top_k": "0"}))  # 422
    conforms(spec, "post", "/v1/tag", client.post("/v1/tag", files={"file": ("a.wav", b"\0" * (MAX_UPLOAD + OVERHEAD + 10))}))  # 413
    conforms(spec, "post", "/v1/embed", client.post("/v1/embed", files={"file": ("a.wav", b"not audio" * 100)}))  # 415
    conforms(spec, "post", "/v1/embed", client.post("/v1/embed", files={"file": ("a.wav", wav(3))}, data={"window_s": "0"}))  # 422
    conforms(spec, "post", "/v1/embed", client.post("/v1/embed", files={"file": ("a.wav", b"\0" * (MAX_UPLOAD + OVERHEAD + 10))}))  # 413


# --- body limits per route ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, path, status",
    [
        ("POST", "/v1/tags", 404),  # a mistyped route
        ("POST", "/v2/tag", 404),
        ("PUT", "/v1/tag", 405),  # a route that takes a body, with the wrong method
        ("POST", "/v1/models", 405),  # routes that take none
        ("POST", "/health/live", 405),
        ("DELETE", "/v1/labels", 405),
    ],
)
def test_unknown_routes_and_wrong_methods_answer_404_405_whatever_the_body_size(server, method, path, status):
    code = "not_found" if status == 404 else "method_not_allowed"
    error_of(declared_only(server, method, path, 10 * BATCH_LIMIT, AUTH), status, code)


def test_a_real_big_body_to_a_mistyped_route_is_404(server, client):
    r = client.post("/v1/tags", files={"file": ("a.wav", b"\0" * (2 * TAG_LIMIT))})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    text = client.get("/metrics").text
    assert 'route="unmatched",status="404"' in text and 'audio_dcls_http_requests_total{method="GET",route="/v1/models",status="401"}' in text


def test_413_names_the_routes_own_limit(server, client):
    # Sizes for people (KiB/MiB) and the exact byte counts for machines.
    message = error_of(declared_only(server, "POST", "/v1/tag", TAG_LIMIT + 1, AUTH), 413, "payload_too_large")
    assert f"(512 KiB, {TAG_LIMIT + 1} bytes)" in message and f"the 512 KiB limit of POST /v1/tag ({TAG_LIMIT} bytes:" in message
    assert f"MAX_UPLOAD_BYTES={MAX_UPLOAD} bytes (256 KiB)" in message
    message = error_of(declared_only(server, "POST", "/v1/embed", TAG_LIMIT + 1, AUTH), 413, "payload_too_large")
    assert f"limit of POST /v1/embed ({TAG_LIMIT} bytes:" in message and f"MAX_UPLOAD_BYTES={MAX_UPLOAD}" in message
    message = error_of(declared_only(server, "POST", "/v1/tag/batch", BATCH_LIMIT + 1, AUTH), 413, "payload_too_large")
    assert f"the 1.2 MiB limit of POST /v1/tag/batch ({BATCH_LIMIT} bytes:" in message
    assert f"MAX_BATCH_FILES={MAX_FILES}" in message and f"MAX_UPLOAD_BYTES={MAX_UPLOAD}" in message
    # A body over /v1/tag's limit is within the batch route's: there each file is refused on its own.
    big = b"\0" * (MAX_UPLOAD + 1)
    r = client.post("/v1/tag", files={"file": ("big.wav", big), "extra": ("pad.bin", b"\0" * OVERHEAD)})
    assert r.status_code == 413 and f"limit of POST /v1/tag ({TAG_LIMIT} bytes:" in r.json()["error"]["message"]
    r = client.post("/v1/tag/batch", files=[("files", ("big.wav", big)), ("files", ("ok.wav", wav(2))), ("files", ("pad.wav", b"\0" * OVERHEAD))])
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == [413, 200, 415]  # zeros: no format we know
    assert r.json()["results"][0]["error"]["message"] == f"the file (256 KiB, {MAX_UPLOAD + 1} bytes) exceeds the 256 KiB limit (MAX_UPLOAD_BYTES={MAX_UPLOAD})"
    # Refused before routing, and still counted under the route asked for.
    assert 'audio_dcls_http_requests_total{method="POST",route="/v1/tag",status="413"}' in client.get("/metrics").text


def test_streamed_body_is_cut_off_at_the_routes_limit(client):
    def chunks():
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        for _ in range(TAG_LIMIT // 65536 + 2):
            yield b"\0" * 65536
        yield b"\r\n--xyz--\r\n"

    r = client.post("/v1/tag", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert "bytes so far)" in message and f"limit of POST /v1/tag ({TAG_LIMIT} bytes:" in message


# --- the command line ----------------------------------------------------------------------------------
def run_cli(*args, env=None, timeout=60):
    environ = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout)


def test_cli_help_prints_usage_and_exits_without_serving():
    # Before the CLI existed, --help started a server and never returned (the timeout would fire).
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m service")
    for flag in ("--host", "--port", "--models-dir", "--log-level"):
        assert flag in r.stdout
    assert "MAX_UPLOAD_BYTES" in r.stdout and "API_KEY" in r.stdout  # the settings left to the environment
    assert "Uvicorn running" not in r.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
        (["--port", "70000"], "PORT must be in 1-65535, got 70000"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
        (["serve"], "unrecognized arguments: serve"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(args, words):
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m service: ") and words in lines[0], r.stderr
    assert r.stdout == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_flags_override_the_environment(tmp_path):
    port = _free_port()
    models = tmp_path / "no-models-here"
    env = dict(os.environ, PORT=str(_free_port()), MODELS_DIR=str(tmp_path / "from-env"), LOG_LEVEL="error")
    cmd = [sys.executable, "-m", "service", "--port", str(port), "--models-dir", str(models), "--host", "127.0.0.1", "--log-level", "trace"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a hung start ends the read loop below instead of the test run
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:  # wait for uvicorn's own "listening" line: an event, not a guess
            seen.append(line)
            if "Uvicorn running on" in line:
                break
        assert f"Uvicorn running on http://127.0.0.1:{port}" in "".join(seen), "".join(seen)
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/health/live", timeout=30).json() == {"status": "alive"}
        ready = httpx.get(base + "/health/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "no_models"
        assert f"MODELS_DIR={models}" in ready.json()["error"]["message"]  # the flag's folder, not the variable's
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(60)
