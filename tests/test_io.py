"""audio_dcls.io: atomic writes leave the old file or the whole new one, never a part or a temp file."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from audio_dcls.io import atomic_open, atomic_path, atomic_write, atomic_write_json, remove_stale_temp_files


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_bytes_text_and_json(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write(tmp_path / "b.txt", "dB — ünïcode\n").read_text(encoding="utf-8") == "dB — ünïcode\n"
    atomic_write_json(tmp_path / "c.json", {"mAP": 0.5, "ids": ["x"]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"mAP": 0.5, "ids": ["x"]}
    assert (tmp_path / "c.json").read_text().endswith("\n")
    atomic_write(tmp_path / "b.txt", "replaced")
    assert (tmp_path / "b.txt").read_text() == "replaced"
    assert _names(tmp_path) == ["a.bin", "b.txt", "c.json"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0600


def test_streaming_writer_and_a_failure_midway(tmp_path):
    path = tmp_path / "x.npy"
    with atomic_open(path, "wb") as f:
        np.save(f, np.arange(5))
    assert np.load(path).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(path, "wb") as f:
            np.save(f, np.arange(1000))
            raise RuntimeError("disk on fire")
    assert np.load(path).tolist() == [0, 1, 2, 3, 4] and _names(tmp_path) == ["x.npy"]  # the old file, untouched
    with atomic_open(tmp_path / "t.csv", "w", newline="") as f:
        f.write("a,b\r\n")
    assert (tmp_path / "t.csv").read_bytes() == b"a,b\r\n"
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "y", "ab"):
            pass


def test_path_variant_for_writers_that_take_a_file_name(tmp_path):
    path = tmp_path / "obj.pkl"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".obj.pkl.tmp-") and not path.exists()
        tmp.write_bytes(pickle.dumps({"k": 1}))
    assert pickle.loads(path.read_bytes()) == {"k": 1} and _names(tmp_path) == ["obj.pkl"]
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "never") as tmp:
            tmp.write_bytes(b"half")
            raise KeyError("x")
    assert _names(tmp_path) == ["obj.pkl"]


def test_stale_temp_files_of_killed_writers(tmp_path):
    (tmp_path / ".last.pt.tmp-123-abcd").write_bytes(b"")
    (tmp_path / ".last.pt.tmp-77").write_bytes(b"")  # an older naming
    (tmp_path / "00001.features.npy.tmp-9").write_bytes(b"")  # the undotted one of older stores
    (tmp_path / "last.pt").write_bytes(b"keep")
    assert remove_stale_temp_files(tmp_path, "last.pt") == 2
    assert _names(tmp_path) == ["00001.features.npy.tmp-9", "last.pt"]
    assert remove_stale_temp_files(tmp_path) == 1 and _names(tmp_path) == ["last.pt"]
    assert remove_stale_temp_files(tmp_path / "missing") == 0
