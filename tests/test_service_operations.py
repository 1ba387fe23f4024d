"""The service under operations: a stuck model, a drain on SIGTERM, refusals in the metrics, a lone request.

A stuck inference is made deterministic through the registry's ``release_loader``
seam: the release the test writes is loaded as usual, and its model's stem is put
behind a :class:`GatedStem`, which (once armed) signals that a forward pass has
started and holds it until the test opens the gate. The SIGTERM test runs the real
``python -m service`` in a subprocess with sixteen uploads held half-sent, so
every one of them is in flight when the signal arrives.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import io
import os
import queue
import signal
import socket
import subprocess
import sys
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
from service.errors import ERROR_CODES
from service.server import BackgroundServer
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])
MODEL = "ops-convnext"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    torch.manual_seed(3)
    vocab = audioset_vocabulary()
    model = timm.create_model("convnext_atto_dcls_audio", **ARGS)
    save_release(root / MODEL, model, "convnext_atto_dcls_audio", dict(ARGS, num_classes=527), LogMelConfig(), list(zip(vocab.mids, vocab.display_names)), "audioset-527", {})
    return root


def wav(seconds: float, sr: int = 32000, seed: int = 0) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * (300 + 50 * seed) * t) + 0.05 * np.random.default_rng(seed).standard_normal(t.shape)
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def tone_flac(seconds: float, sr: int = 8000) -> bytes:
    """A quiet tone: a few KiB of FLAC for any duration."""
    y = 0.01 * np.sin(2 * np.pi * 250 * np.arange(int(seconds * sr)) / sr)
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), sr, format="FLAC")
    return buf.getvalue()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of a Prometheus exposition (labels in any order)."""
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        sample, _, rest = key.partition("{")
        if sample != name:
            continue
        got = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part) if rest else {}
        if {k: v.strip('"') for k, v in got.items()} == {k: str(v) for k, v in labels.items()}:
            return float(value)
    raise AssertionError(f"no sample {name}{labels}")


# --- a model that can be held inside its forward pass ------------------------------------------------
class Gate:
    def __init__(self):
        self.armed = threading.Event()  # from now on every forward pass is counted and waits for `opened`
        self.entered = threading.Event()  # a forward pass has started while armed
        self.opened = threading.Event()
        self.calls = 0  # forward passes while armed


class GatedStem(torch.nn.Module):
    """Takes the place of a model's stem (its first layer): the whole forward pass waits on the gate."""

    def __init__(self, stem: torch.nn.Module, gate: Gate):
        super().__init__()
        self.stem = stem
        self.gate = gate

    def forward(self, x):  # (B, 1, F, T) -> the stem's output
        if self.gate.armed.is_set():
            self.gate.calls += 1
            self.gate.entered.set()
            if not self.gate.opened.wait(120):
                raise RuntimeError("the test never opened the gate")
        return self.stem(x)


def gated_loader(gate: Gate):
    def load(folder, device):
        release = load_release(folder, device=device)
        release.model.stem = GatedStem(release.model.get_submodule("stem"), gate)
        return release

    return load


# --- a stuck inference ---------------------------------------------------------------------------------
def test_stuck_inference_answers_504_drops_its_windows_and_the_service_stays_ready(models_dir):
    gate = Gate()
    settings = Settings(models_dir=models_dir, max_batch_size=2, max_wait_ms=0, request_timeout_s=1.0, torch_threads=1)
    with BackgroundServer(settings, release_loader=gated_loader(gate)) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        gate.armed.set()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # 30 s cut every 5 s: 5 windows, in batches of 2, 2 and 1. The first batch never returns in time.
            stuck = pool.submit(c.post, "/v1/tag", files={"file": ("long.wav", wav(30))})
            assert gate.entered.wait(60)
            assert c.get("/health/ready").status_code == 200  # held in the model, the service is still ready
            r = stuck.result(60)
        assert r.status_code == 504, r.text
        error = r.json()["error"]
        assert error["code"] == "timeout" and "REQUEST_TIMEOUT_S=1 s" in error["message"] and "5 of its 5 windows" in error["message"]
        gate.opened.set()  # the stuck pass returns; the job it belonged to is gone
        after = c.post("/v1/tag", files={"file": ("short.wav", wav(3))})
        assert after.status_code == 200, after.text
        # One pass for the stuck batch, one for the 3 s file: the timed-out job's other two batches never ran.
        assert gate.calls == 2
        assert c.get("/health/ready").status_code == 200
        text = c.get("/metrics").text
        assert metric(text, "audio_dcls_refusals_total", reason="timeout", status=504) == 1
        assert metric(text, "audio_dcls_request_timeouts_total", model=MODEL) == 1


# --- the drain, in this process ------------------------------------------------------------------------
def test_drain_refuses_new_uploads_and_answers_a_request_past_drain_seconds(models_dir):
    gate = Gate()
    settings = Settings(models_dir=models_dir, drain_seconds=1.0, torch_threads=1)
    server = BackgroundServer(settings, release_loader=gated_loader(gate)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
            gate.armed.set()
            held = pool.submit(c.post, "/v1/tag", files={"file": ("a.wav", wav(3))})
            assert gate.entered.wait(60)
            server.drain()  # what SIGTERM does to `python -m service`
            ready = c.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "shutting_down" and ready.headers["Retry-After"]
            refused = c.post("/v1/tag", files={"file": ("b.wav", wav(3))})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            assert refused.headers["Retry-After"] == "5"
            assert c.get("/v1/models").status_code == 200  # reads still answered
            text = c.get("/metrics").text
            assert metric(text, "audio_dcls_draining") == 1
            r = held.result(60)  # still in the model when DRAIN_SECONDS run out: answered, not cut off
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "shutting_down" and "DRAIN_SECONDS=1" in r.json()["error"]["message"]
            gate.opened.set()
        assert server.join(60), "the server did not exit after the drain"
    finally:
        gate.opened.set()
        server.stop()


class ServiceProcess:
    """`python -m service` in a subprocess; its log lines are read in a thread so the test can wait for one."""

    def __init__(self, env: dict):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = dict(os.environ, HOST="127.0.0.1", PORT=str(self.port), LOG_LEVEL="info", **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.log: list = []
        threading.Thread(target=self._read, daemon=True).start()
        self.watchdog = threading.Timer(300, self.proc.kill)  # a hang ends the test instead of the run
        self.watchdog.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put("")  # the process ended

    def wait_for(self, text: str, timeout: float = 120) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            assert line, f"the service exited before logging {text!r}:\n{''.join(self.log)}"
            if text in line:
                return line

    def close(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_during_16_requests_answers_them_all_then_exits_0(models_dir):
    service = ServiceProcess({"MODELS_DIR": str(models_dir), "TORCH_THREADS": "1", "DRAIN_SECONDS": "120"})
    try:
        service.wait_for("ready: serving ops-convnext")
        request = httpx.Client().build_request("POST", service.url + "/v1/tag", files={"file": ("clip.wav", wav(3))}, data={"top_k": "3"})
        body = request.read()
        head = (
            f"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\nContent-Type: {request.headers['Content-Type']}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        # Sixteen uploads, each sent but for its last 100 bytes: all in flight, none finished.
        sockets = [socket.create_connection(("127.0.0.1", service.port), timeout=120) for _ in range(16)]
        for s in sockets:
            s.sendall(head + body[:-100])
        with httpx.Client(base_url=service.url, timeout=60) as c:
            while metric(c.get("/metrics").text, "audio_dcls_http_requests_in_flight") < 17:  # the 16 and this scrape
                pass
            service.proc.send_signal(signal.SIGTERM)
            line = service.wait_for("draining:")
            assert "16 request(s) in flight" in line, line
            ready = c.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "shutting_down"
            late = c.post("/v1/tag", files={"file": ("late.wav", wav(3))})
            assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down" and late.headers["Retry-After"]
        statuses = []
        for s in sockets:
            s.sendall(body[-100:])
            response = http.client.HTTPResponse(s)
            response.begin()  # a reset would raise here
            payload = response.read()
            statuses.append(response.status)
            if response.status == 200:
                assert len(httpx.Response(200, content=payload).json()["tags"]) == 3
            s.close()
        assert statuses == [200] * 16  # every upload in flight at the signal was answered in full
        assert service.proc.wait(120) == 0, "".join(service.log)
        assert any("drained after" in line for line in service.log)
    finally:
        service.close()


# --- refusals in the metrics -----------------------------------------------------------------------------
def test_every_refusal_is_counted_by_its_code_and_every_series_exists_from_the_start(models_dir):
    key = "metrics-key"
    auth = {"Authorization": f"Bearer {key}"}
    settings = Settings(models_dir=models_dir, api_key=key, max_upload_bytes=200_000, max_batch_files=2, max_audio_seconds=20, max_windows=4, torch_threads=1)
    with BackgroundServer(settings) as server, httpx.Client(base_url=server.url, timeout=60, headers=auth) as c:
        first = c.get("/metrics").text
        assert "_created" not in first
        for code, status in ERROR_CODES.items():
            assert metric(first, "audio_dcls_refusals_total", reason=code, status=status) == 0
        for kind in ("truncated", "damaged", "header", "format_change"):
            assert metric(first, "audio_dcls_decode_warnings_total", kind=kind) == 0
        for name in ("audio_dcls_queue_rejections_total", "audio_dcls_request_timeouts_total", "audio_dcls_audio_seconds_total", "audio_dcls_batch_size_count"):
            assert metric(first, name, model=MODEL) == 0
        assert metric(first, "audio_dcls_http_requests_total", route="/v1/tag", method="POST", status=200) == 0
        assert metric(first, "audio_dcls_http_requests_total", route="/v1/tag", method="POST", status=413) == 0
        assert metric(first, "process_resident_memory_bytes") > 0 and metric(first, "process_open_fds") > 0
        assert metric(first, "python_gc_objects_collected_total", generation=0) >= 0 and "python_info{" in first

        good = wav(2)
        seen = []

        def send(method, path, **kw):
            r = c.request(method, path, **kw)
            if r.status_code >= 400:
                seen.append((r.json()["error"]["code"], r.status_code))
            return r

        assert "needs an API key" in send("GET", "/v1/models", headers={"Authorization": ""}).json()["error"]["message"]  # 401: no key
        assert "the API key is wrong" in send("GET", "/v1/models", headers={"Authorization": "Bearer nope"}).json()["error"]["message"]
        send("POST", "/v1/tag", files={"file": ("big.wav", b"\0" * 600_000)})  # 413 payload_too_large, before reading it
        send("POST", "/v1/tag", files={"file": ("long.flac", tone_flac(25))})  # 413 audio_too_long
        send("POST", "/v1/tag", files={"file": ("many.flac", tone_flac(15))}, data={"window_s": "2", "hop_s": "2"})  # 413 too_many_windows
        send("POST", "/v1/tag/batch", files=[("files", ("a.wav", good))] * 3)  # 413 too_many_files
        send("POST", "/v1/tag", files={"file": ("notes.wav", b"just some text\n" * 100)})  # 415
        send("POST", "/v1/tag", files={"file": ("empty.wav", b"")})  # 400
        send("POST", "/v1/tag", files={"file": ("a.wav", good)}, data={"top_k": "0"})  # 422
        send("POST", "/v1/tag", files={"file": ("a.wav", good)}, data={"model": "nope"})  # 404
        # Files refused inside a batch request count too (the request itself is a 200).
        batch = send("POST", "/v1/tag/batch", files=[("files", ("t.txt", b"text " * 100)), ("files", ("cut.wav", good[:-1000]))])
        assert [x["status"] for x in batch.json()["results"]] == [415, 200]
        assert batch.json()["results"][1]["result"]["warnings"][0].startswith("truncated: ")
        seen.append(("unsupported_media_type", 415))

        text = c.get("/metrics").text
        expected = {}
        for code_status in seen:
            expected[code_status] = expected.get(code_status, 0) + 1
        assert set(code for code, _ in expected) == {
            "unauthorized", "payload_too_large", "audio_too_long", "too_many_windows", "too_many_files",
            "unsupported_media_type", "undecodable_audio", "invalid_parameter", "model_not_found",
        }
        for (code, status), count in expected.items():
            assert metric(text, "audio_dcls_refusals_total", reason=code, status=status) == count, code
        assert metric(text, "audio_dcls_decode_warnings_total", kind="truncated") == 1
        assert metric(text, "audio_dcls_decode_errors_total", reason="unsupported") == 2
        assert metric(text, "audio_dcls_decode_errors_total", reason="undecodable") == 1
        assert "_created" not in text


# --- a lone request never waits for company --------------------------------------------------------------
def test_a_lone_request_never_waits_for_max_wait(models_dir):
    # MAX_WAIT_MS is ten minutes: a worker that waited for a fuller batch would time the requests out.
    settings = Settings(models_dir=models_dir, max_batch_size=16, max_wait_ms=600_000, torch_threads=1)
    with BackgroundServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        for seconds in (3, 23):  # one window; five windows in one batch
            r = c.post("/v1/tag", files={"file": ("a.wav", wav(seconds))})
            assert r.status_code == 200, r.text
        r = c.post("/v1/tag/batch", files=[("files", ("a.wav", wav(3))), ("files", ("b.wav", wav(4, seed=1)))])
        assert [x["status"] for x in r.json()["results"]] == [200, 200]
