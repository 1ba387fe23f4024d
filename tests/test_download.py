"""audio_dcls.convert.download: cached, resumable downloads, against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import os
import socket

import pytest
import yaml

from audio_dcls.convert import CheckpointError, default_cache_dir, fetch_url
from pipelines import import_checkpoint

from local_http import FileServer
from upstream_checkpoints import layouts, random_state, save_dcls_audio

PAYLOAD = os.urandom(3 * (1 << 20) + 12345)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
HALF = len(PAYLOAD) // 2


def test_cut_connection_resumes_with_a_range_request(tmp_path):
    with FileServer(PAYLOAD, cut={1}) as server:
        got = fetch_url(server.url, cache_dir=tmp_path, show_progress=False)
    assert server.requests == [None, f"bytes={HALF}-"]
    assert got.path.read_bytes() == PAYLOAD and got.sha256 == DIGEST and got.url == server.url
    assert got.path.name == "model.pth" and not list(got.path.parent.glob("*.part"))


def test_partial_file_survives_a_failed_call_and_the_next_call_resumes(tmp_path):
    with FileServer(PAYLOAD, cut={1}) as server:
        with pytest.raises(CheckpointError) as e:
            fetch_url(server.url, cache_dir=tmp_path, retries=0, show_progress=False)
        message = str(e.value)
        assert "\n" not in message and "run again to resume" in message and f"{HALF} bytes kept" in message
        (part,) = tmp_path.rglob("model.pth.part")
        assert part.stat().st_size == HALF
        got = fetch_url(server.url, cache_dir=tmp_path, retries=0, show_progress=False)
    assert server.requests == [None, f"bytes={HALF}-"]
    assert got.sha256 == DIGEST and got.path.read_bytes() == PAYLOAD


def test_a_server_ignoring_ranges_sends_the_whole_file_again(tmp_path):
    with FileServer(PAYLOAD, cut={1}, ranges=False) as server:
        got = fetch_url(server.url, cache_dir=tmp_path, show_progress=False)
    assert server.requests == [None, f"bytes={HALF}-"]
    assert got.path.read_bytes() == PAYLOAD


def test_a_cached_file_is_used_without_a_request(tmp_path):
    with FileServer(PAYLOAD) as server:
        first = fetch_url(server.url, cache_dir=tmp_path, show_progress=False)
        again = fetch_url(server.url, cache_dir=tmp_path, show_progress=False)
    assert server.requests == [None]
    assert again == first


def test_expected_digest_is_checked(tmp_path):
    with FileServer(PAYLOAD) as server:
        with pytest.raises(CheckpointError, match="does not match the expected"):
            fetch_url(server.url, cache_dir=tmp_path, expected_sha256="0" * 64, show_progress=False)
        assert not list(tmp_path.rglob("model.pth*"))
        assert fetch_url(server.url, cache_dir=tmp_path, expected_sha256=DIGEST, show_progress=False).sha256 == DIGEST


def test_http_and_connection_errors_are_one_line(tmp_path):
    with FileServer(PAYLOAD) as server:
        with pytest.raises(CheckpointError) as e:
            fetch_url(server.url.replace("model.pth", "other.pth"), cache_dir=tmp_path, show_progress=False)
    assert str(e.value).endswith("HTTP 404 no such file")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError) as e:
        fetch_url(f"http://127.0.0.1:{port}/x.pth", cache_dir=tmp_path, retries=1, show_progress=False)
    assert "download failed after 2 attempts" in str(e.value) and "\n" not in str(e.value)


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIO_DCLS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AUDIO_DCLS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "audio_dcls"


def test_import_from_a_url_records_it(tmp_path, capsys, one_thread):
    name = "convformer_audio_s18"
    info = layouts()[name]
    path = save_dcls_audio(tmp_path / info["released_file"], name, random_state(info["state_dict"], seed=1))
    data = path.read_bytes()
    with FileServer(data, name=info["released_file"], cut={1}) as server:
        rc = import_checkpoint.main([server.url, "--out", str(tmp_path / "release"), "--cache-dir", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert len(server.requests) == 2 and server.requests[1].startswith("bytes=")
    source = yaml.safe_load((tmp_path / "release" / "config.yaml").read_text())["source"]  # the top-level source: record
    assert source["url"] == server.url and source["sha256"] == hashlib.sha256(data).hexdigest()
    assert source["reported_map"] == 43.14
    assert f"sha256 {source['sha256'][:16]}" in out
    assert next((tmp_path / "cache").rglob(info["released_file"])).read_bytes() == data
