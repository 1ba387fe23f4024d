"""pipelines.precompute + feature_store: build, read, verify, shard/merge, resume after SIGKILL, errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_dcls.audio import load_audio, pad_or_trim
from audio_dcls.features import LogMel, LogMelConfig
from audio_dcls.labels import LabelVocabulary, audioset_vocabulary
from pipelines.feature_store import FeatureStore, StoreError, verify_store
from pipelines.precompute import build_feature_store, main
from pipelines.sources import AudioSetSource, CustomCsvSource, Segment, write_panns_hdf5, write_segments_csv

REPO = Path(__file__).resolve().parents[1]
CLIP_S = 1.0
FRONTEND = LogMelConfig(clip_seconds=CLIP_S)
VOCAB = audioset_vocabulary()


def make_audioset_folder(root: Path, n: int, seconds: float = CLIP_S, corrupt: int = 0, missing: int = 0) -> tuple[Path, Path]:
    """n real 44.1 kHz stereo clips (tones at distinct pitches), plus `corrupt` damaged files and `missing` absent ones."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    sr = 44100
    t = np.arange(int(sr * seconds)) / sr
    segs = []
    for i in range(n + corrupt + missing):
        ytid = f"clip{i:07d}"
        mids = (VOCAB.mid(i % 527), VOCAB.mid((i * 7 + 1) % 527))
        segs.append(Segment(ytid, 10.0 * i, 10.0 * i + 10, mids))
        if i >= n + corrupt:
            continue
        x = np.stack([0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t), 0.2 * np.sin(2 * np.pi * (300 + 50 * i) * t)], 1).astype(np.float32)
        path = audio / f"Y{ytid}.{'flac' if i % 2 else 'wav'}"
        sf.write(path, x, sr, subtype="PCM_16")
        if i >= n:
            path.write_bytes(path.read_bytes()[:100])  # cut inside its first frame: no audio left
    return write_segments_csv(root / "segments.csv", segs), audio


def build_args(csv_path, audio, out, *extra):
    return ["build", str(out), "--audioset-csv", str(csv_path), "--audio-dir", str(audio), "--clip-seconds", str(CLIP_S), "--no-progress", *map(str, extra)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_audioset_folder(tmp_path_factory.mktemp("as"), n=9, corrupt=1, missing=1)


@pytest.fixture(scope="module")
def store(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "whole"
    assert main(build_args(*dataset, out, "--workers", 1, "--shard-size", 4)) == 0
    return out


def expected_logmel(path: Path) -> np.ndarray:
    x = pad_or_trim(load_audio(path, FRONTEND.sample_rate), int(CLIP_S * FRONTEND.sample_rate))
    return LogMel(FRONTEND).compute(x)


def test_build_then_read_back(store, dataset, capsys):
    csv_path, audio = dataset
    ds = FeatureStore(store)
    assert len(ds) == 9 and ds.ids == [f"clip{i:07d}" for i in range(9)]
    assert ds.frontend == FRONTEND and ds.vocabulary == VOCAB and ds.num_classes == 527
    assert ds.labels.shape == (9, 527) and ds.labels.dtype == np.uint8
    x, y = ds[4]
    assert x.shape == (1, 128, FRONTEND.num_frames) and x.dtype == torch.float32 and y.dtype == torch.float32
    assert y.nonzero().flatten().tolist() == sorted({4, 29})
    # the stored fp16 log-mels are the front end's output (to fp16 precision)
    for i in (0, 4, 8):
        path = next(audio.glob(f"Yclip{i:07d}.*"))
        np.testing.assert_allclose(ds[i][0][0].numpy(), expected_logmel(path), atol=4e-3)
        np.testing.assert_array_equal(ds.labels[i], VOCAB.encode([VOCAB.mid(i % 527), VOCAB.mid((i * 7 + 1) % 527)]))
    assert ds[-1][0].shape == x.shape and ds.ids.index("clip0000003") == 3
    with pytest.raises(IndexError):
        ds[9]
    fp16 = FeatureStore(store, feature_dtype=torch.float16)
    assert fp16[0][0].dtype == torch.float16
    # skipped clips, with reasons, in the report and in skipped.csv
    skipped = dict(ds.skipped)
    assert skipped["clip0000010"] == "no audio file found for this segment"
    assert skipped["clip0000009"].startswith("undecodable: ") and "truncated" in skipped["clip0000009"]
    assert (store / "labels.csv").read_text() == VOCAB.to_csv_text()
    assert verify_store(store).ok


def test_dataloader_workers_read_the_store(store):
    ds = FeatureStore(store)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=2)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (9, 1, 128, FRONTEND.num_frames)
    assert torch.equal(x[7], ds[7][0]) and torch.equal(y, torch.from_numpy(ds.labels.astype(np.float32)))


def test_verify_detects_a_flipped_byte(store, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    assert main(["verify", str(copy)]) == 0
    assert "OK (9 clips in 3 shards, checksums match)" in capsys.readouterr().out
    shard = copy / "shards" / "00001.features.npy"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["verify", str(copy), "--no-checksums"]) == 0  # same size and shape: only the checksum can tell
    assert main(["verify", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "shards/00001.features.npy: sha256 mismatch" in err and "FAILED (1 problems)" in err
    (copy / "shards" / "00002.targets.npy").unlink()
    (copy / "ids.txt").write_text("x\n")
    report = verify_store(copy)
    assert any("00002.targets.npy: missing" in p for p in report.problems)
    assert any(p.startswith("ids.txt") for p in report.problems)


def test_shards_merge_into_the_whole_split(dataset, store, tmp_path, capsys):
    parts = [tmp_path / f"part{i}" for i in range(3)]
    for i, p in enumerate(parts):
        assert main(build_args(*dataset, p, "--workers", 1, "--shard-size", 4, "--shard", f"{i}/3")) == 0
    out = capsys.readouterr().out
    assert "part 2/3 of a feature store" in out and "merge" in out
    assert not (parts[0] / "manifest.json").exists()
    with pytest.raises(StoreError, match="unfinished"):
        FeatureStore(parts[0])
    assert main(["merge", str(tmp_path / "bad"), str(parts[0]), str(parts[2])]) == 1
    assert "parts missing: 1/3" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "bad2"), str(parts[0]), str(parts[0]), str(parts[1])]) == 1
    assert "given twice" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "merged"), *map(str, parts[::-1])]) == 0
    merged, whole = FeatureStore(tmp_path / "merged"), FeatureStore(store)
    assert merged.ids == whole.ids and len(set(merged.ids)) == len(merged.ids)
    np.testing.assert_array_equal(merged.labels, whole.labels)
    for i in range(len(whole)):
        assert torch.equal(merged[i][0], whole[i][0])
    assert merged.skipped == whole.skipped and verify_store(tmp_path / "merged").ok


@pytest.mark.parametrize("kind", ["logmel", "waveform"])
def test_resume_after_sigkill_has_every_clip_exactly_once(tmp_path, kind):
    csv_path, audio = make_audioset_folder(tmp_path / "data", n=40, seconds=2.0)
    out = tmp_path / "store"
    args = [sys.executable, "-m", "pipelines.precompute", *build_args(csv_path, audio, out, "--workers", 2, "--shard-size", 2, "--kind", kind)]
    args[args.index("--clip-seconds") + 1] = "2"
    args[3:3] = ["--log-level", "DEBUG"]  # a line per finished shard: the event the kill waits for
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log_lines = []
    try:
        for line in proc.stderr:  # blocks until the build writes a line, or ends (EOF)
            log_lines.append(line)
            if sum("finished:" in x for x in log_lines) >= 3:
                break
        else:
            pytest.fail(f"the build ended before three shards were finished: {''.join(log_lines)[-800:]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its workers, as a scheduler would
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = len(list((out / "shards").glob("*.json")))
    assert not (out / "manifest.json").exists() and 3 <= done_before < 20

    report = build_feature_store(AudioSetSource(csv_path, audio_dir=audio), out, frontend=LogMelConfig(clip_seconds=2.0), workers=1, shard_size=2, progress=False, kind=kind)
    assert report.finished and report.shards_kept >= 3 and report.shards_kept + report.shards_built == 20
    assert not list(out.rglob("*.tmp-*"))
    ds = FeatureStore(out)
    assert ds.kind == kind and sorted(ds.ids) == [f"clip{i:07d}" for i in range(40)] and len(set(ds.ids)) == 40
    assert verify_store(out).ok
    cfg = LogMelConfig(clip_seconds=2.0)
    for i in (0, 39):  # one shard from the killed run, one from the rerun
        path = next(audio.glob(f"Yclip{i:07d}.*"))
        got = ds.read(ds.ids.index(f"clip{i:07d}"))
        if kind == "waveform":
            np.testing.assert_array_equal(got, expected_pcm16(path, 2.0))
        else:
            np.testing.assert_allclose(got, LogMel(cfg).compute(pad_or_trim(load_audio(path), 64000)), atol=4e-3)


def test_other_inputs_in_the_same_folder_are_refused(dataset, store, tmp_path, capsys):
    csv_path, audio = make_audioset_folder(tmp_path / "other", n=2)
    target = tmp_path / "s"
    shutil.copytree(store, target)
    assert main(build_args(csv_path, audio, target)) == 1
    err = capsys.readouterr().err.strip()
    assert "built from other inputs" in err and "--overwrite" in err and "\n" not in err
    assert main(build_args(csv_path, audio, target, "--overwrite")) == 0
    assert len(FeatureStore(target)) == 2
    # rerunning a finished build keeps everything
    assert main(build_args(csv_path, audio, target)) == 0
    assert "(0 built now, 1 kept from an earlier run)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["build", "OUT", "--audioset-csv", "/nonexistent.csv", "--audio-dir", "."], "segment CSV not found"),
        (["build", "OUT"], "give exactly one source"),
        (["build", "OUT", "--audioset-csv", "x.csv"], "needs --audio-dir or --manifest"),
        (["build", "OUT", "--hdf5", "a.h5", "--shard", "3/2"], "need 0 <= i < N"),
        (["verify", "/nonexistent"], "no manifest.json"),
        (["merge", "OUT", "/nonexistent"], "not a feature store"),
        (["build", "OUT", "--hdf5", "a.h5", "--kind", "waveform", "--max-seconds", "5"], "--max-seconds 5 is shorter than --clip-seconds 10"),
    ],
)
def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "o")) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) <= 2


def test_panns_hdf5_to_store(tmp_path):
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal((3, 32000)) * 2000).astype(np.int16)
    tgt = np.zeros((3, 527), bool)
    tgt[0, 1] = tgt[1, [2, 3]] = True
    write_panns_hdf5(tmp_path / "p.h5", ["Yaaaaaaaaaaa.wav", "Ybbbbbbbbbbb.wav", "Ycccccccccc_.wav"], wav, tgt)
    assert main(["build", str(tmp_path / "s"), "--hdf5", str(tmp_path / "p.h5"), "--clip-seconds", "1", "--workers", "1", "--no-progress"]) == 0
    ds = FeatureStore(tmp_path / "s")
    assert ds.ids == ["aaaaaaaaaaa", "bbbbbbbbbbb", "cccccccccc_"]
    np.testing.assert_array_equal(ds.labels, tgt.astype(np.uint8))
    np.testing.assert_allclose(ds[1][0][0].numpy(), LogMel(FRONTEND).compute(wav[1] / 32768.0), atol=4e-3)


def test_custom_csv_to_store_keeps_its_vocabulary(tmp_path):
    for i, name in enumerate(["a.wav", "b.wav"]):
        sf.write(tmp_path / name, 0.1 * np.sin(np.arange(16000) * (0.1 + i * 0.05)).astype(np.float32), 16000)
    (tmp_path / "train.csv").write_text("path,labels\na.wav,knock\nb.wav,knock;squeak\n")
    assert main(["build", str(tmp_path / "s"), "--custom-csv", str(tmp_path / "train.csv"), "--clip-seconds", "1", "--workers", "1", "--no-progress"]) == 0
    ds = FeatureStore(tmp_path / "s")
    # AudioSet names get their MID (Knock /m/07r4wb8, Squeak /m/07q6cd_)
    assert ds.vocabulary == LabelVocabulary(["/m/07r4wb8", "/m/07q6cd_"], ["Knock", "Squeak"]) == LabelVocabulary.from_csv(tmp_path / "s" / "labels.csv")
    assert ds.ids == ["a.wav", "b.wav"] and ds.labels.tolist() == [[1, 0], [1, 1]]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["source"]["kind"] == "custom_csv"


# ----------------------------------------------------------------------------------
# waveform stores, long clips
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wave_store(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("wave") / "whole"
    assert main(build_args(*dataset, out, "--kind", "waveform", "--workers", 1, "--shard-size", 4)) == 0
    return out


def expected_pcm16(path: Path, seconds: float = CLIP_S) -> np.ndarray:
    """The decoder's float samples, padded/cut, as int16 round(x * 32768) (clipped)."""
    x = pad_or_trim(load_audio(path, 32000), int(seconds * 32000)).astype(np.float64)
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


def test_waveform_store_holds_the_decoded_samples(wave_store, store, dataset, tmp_path, capsys):
    csv_path, audio = dataset
    ds = FeatureStore(wave_store)
    manifest = json.loads((wave_store / "manifest.json").read_text())
    assert (ds.kind, manifest["kind"], manifest["feature_dtype"], manifest["feature_shape"]) == ("waveform", "waveform", "int16", [32000])
    assert ds.ids == FeatureStore(store).ids and ds.skipped == FeatureStore(store).skipped  # same clips and skips as the log-mel store
    np.testing.assert_array_equal(ds.labels, FeatureStore(store).labels)
    assert sorted(p.name for p in (wave_store / "shards").glob("00000.*")) == ["00000.json", "00000.targets.npy", "00000.waveforms.npy"]
    for i in (0, 3, 8):
        x, y = ds[i]
        assert x.dtype == torch.int16 and x.shape == (32000,)
        np.testing.assert_array_equal(x.numpy(), expected_pcm16(next(audio.glob(f"Yclip{i:07d}.*"))))
    assert torch.equal(FeatureStore(wave_store, feature_dtype=torch.float32)[3][0], ds[3][0].float() / 32768)
    with pytest.raises(StoreError, match="holds no log-mels"):
        ds.logmel(0)
    # shard i/N + merge, and verify, work the same for this kind
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, p in enumerate(parts):
        assert main(build_args(*dataset, p, "--kind", "waveform", "--workers", 1, "--shard-size", 4, "--shard", f"{i}/2")) == 0
    assert "part 1/2 of a waveform store" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "merged"), *map(str, parts)]) == 0
    merged = FeatureStore(tmp_path / "merged")
    assert merged.ids == ds.ids and all(torch.equal(merged[i][0], ds[i][0]) for i in range(len(ds)))
    assert main(["verify", str(tmp_path / "merged")]) == 0
    shard = tmp_path / "merged" / "shards" / "00001.waveforms.npy"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.unlink()  # a hard link to part 1's file: write a new one
    shard.write_bytes(bytes(data))
    assert main(["verify", str(tmp_path / "merged")]) == 1
    assert "shards/00001.waveforms.npy: sha256 mismatch" in capsys.readouterr().err
    # a log-mel build into the waveform store's folder is another store: refused
    assert main(build_args(*dataset, wave_store)) == 1
    assert "built from other inputs" in capsys.readouterr().err


def test_workers_return_clips_as_stored(wave_store, store):
    """Training items are the stored bytes: int16 waveforms / fp16 log-mels, batched by the workers."""
    from pipelines.data import collate_items, open_data

    for folder, dtype, shape in ((wave_store, torch.int16, (32000,)), (store, torch.float16, (1, 128, FRONTEND.num_frames))):
        data = open_data(str(folder))
        assert data.item_kind == FeatureStore(folder).kind
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=4, num_workers=2, collate_fn=collate_items)
        batches = list(loader)
        x = torch.cat([b[0] for b in batches])
        assert x.dtype == dtype and x.shape == (9, *shape)
        assert torch.equal(x[5], torch.from_numpy(FeatureStore(folder).read(5)).reshape(shape))
        data.close()


def test_panns_pack_into_a_waveform_store_copies_the_samples(tmp_path, capsys):
    rng = np.random.default_rng(1)
    wav = (rng.standard_normal((5, 40000)) * 3000).astype(np.int16)  # 1.25 s rows, stored as 1 s clips
    tgt = np.zeros((5, 527), bool)
    tgt[np.arange(5), np.arange(5) * 3] = True
    write_panns_hdf5(tmp_path / "p.h5", [f"Y{c * 11}.wav" for c in "abcde"], wav, tgt)
    assert main(["build", str(tmp_path / "w"), "--hdf5", str(tmp_path / "p.h5"), "--kind", "waveform", "--clip-seconds", "1", "--workers", "1", "--no-progress"]) == 0
    assert "5 clips were longer than the clip length (1 s) and cut to the first 1 s (keep long clips whole with --max-seconds)" in capsys.readouterr().out
    ds = FeatureStore(tmp_path / "w")
    assert ds.ids == [c * 11 for c in "abcde"]
    np.testing.assert_array_equal(np.stack([ds.read(i) for i in range(5)]), wav[:, :32000])  # bit for bit
    np.testing.assert_array_equal(ds.labels, tgt.astype(np.uint8))
    # kept whole with --max-seconds: the full rows
    assert main(["build", str(tmp_path / "long"), "--hdf5", str(tmp_path / "p.h5"), "--kind", "waveform", "--clip-seconds", "1", "--max-seconds", "2", "--workers", "1", "--no-progress"]) == 0
    assert "5 clips were longer than 1 s and kept whole" in capsys.readouterr().out
    long = FeatureStore(tmp_path / "long")
    np.testing.assert_array_equal(np.stack([long.read(i) for i in range(5)]), wav)


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory):
    """Clips of 0.5, 1, 2.5 and 4 s: padded, as they are, kept whole, and cut at --max-seconds 3."""
    root = tmp_path_factory.mktemp("long")
    sr = 32000
    rng = np.random.default_rng(2)
    segs = []
    for i, seconds in enumerate((0.5, 1.0, 2.5, 4.0)):
        ytid = f"long{i:07d}"
        segs.append(Segment(ytid, 0.0, 10.0, (VOCAB.mid(i),)))
        (root / "audio").mkdir(exist_ok=True)
        sf.write(root / "audio" / f"Y{ytid}.flac", (0.2 * rng.standard_normal(int(sr * seconds))).astype(np.float32), sr, subtype="PCM_16")
    return write_segments_csv(root / "segments.csv", segs), root / "audio"


@pytest.mark.parametrize("kind", ["waveform", "logmel"])
def test_max_seconds_keeps_long_clips_whole(long_dataset, tmp_path, capsys, kind):
    csv_path, audio = long_dataset
    out = tmp_path / "s"
    assert main(build_args(csv_path, audio, out, "--kind", kind, "--max-seconds", 3, "--workers", 1, "--shard-size", 3)) == 0
    report = capsys.readouterr().out
    assert "2 clips were longer than 1 s and kept whole" in report and "1 clip was longer than --max-seconds 3 s and cut to the first 3 s" in report
    ds = FeatureStore(out)
    assert ds.layout.variable and verify_store(out).ok
    seconds = (1.0, 1.0, 2.5, 3.0)  # padded to one clip, as it is, whole, cut at 3 s
    units = [ds.layout.units(int(s * 32000)) for s in seconds]
    assert ds.lengths.tolist() == units
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lengths"] == {"unit": ds.layout.unit, "min": units[0], "max": units[3], "longest_seconds": pytest.approx(3.0, abs=0.011), "longer_than_clip": 2}
    for i, s in enumerate(seconds):
        path = next(audio.glob(f"Ylong{i:07d}.*"))
        if kind == "waveform":
            np.testing.assert_array_equal(ds.read(i), expected_pcm16(path, s))
        else:  # the log-mel of the whole clip
            x = pad_or_trim(load_audio(path, 32000), int(s * 32000))
            np.testing.assert_allclose(ds[i][0][0].numpy(), LogMel(FRONTEND).compute(x), atol=4e-3)
    # parts of a variable-length store merge into the same store
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, p in enumerate(parts):
        assert main(build_args(csv_path, audio, p, "--kind", kind, "--max-seconds", 3, "--workers", 1, "--shard-size", 3, "--shard", f"{i}/2")) == 0
    assert main(["merge", str(tmp_path / "m"), *map(str, parts)]) == 0
    merged = FeatureStore(tmp_path / "m")
    assert merged.lengths.tolist() == units and all(np.array_equal(merged.read(i), ds.read(i)) for i in range(4))
    # damaged clip boundaries are found
    offsets = tmp_path / "m" / "shards" / "00000.offsets.npy"
    bad = np.load(offsets)
    bad[1] -= 1
    offsets.unlink()
    np.save(offsets, bad)
    problems = verify_store(tmp_path / "m", checksums=False).problems
    assert len(problems) == 1 and "clip boundaries" in problems[0]


def test_clips_cut_short_are_kept_and_their_warnings_reported(tmp_path, capsys):
    for name in ("whole.wav", "cut.wav"):
        sf.write(tmp_path / name, 0.1 * np.sin(np.arange(16000) * 0.1).astype(np.float32), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(cut.read_bytes()[:-82])  # the header announces 82 bytes more than the file holds
    (tmp_path / "train.csv").write_text("path,labels\nwhole.wav,knock\ncut.wav,knock\n")
    assert main(["build", str(tmp_path / "s"), "--custom-csv", str(tmp_path / "train.csv"), "--clip-seconds", "1", "--workers", "1", "--no-progress"]) == 0
    warning = "truncated: the header announces 32,000 bytes of audio but only 31,918 are present"
    assert FeatureStore(tmp_path / "s").ids == ["whole.wav", "cut.wav"]  # kept, not skipped
    printed = capsys.readouterr().out
    assert "kept 1 clips the decoder warned about" in printed and f"cut.wav: {warning}" in printed
    record = json.loads((tmp_path / "s" / "shards" / "00000.json").read_text())
    assert record["warnings"] == [["cut.wav", warning]] and record["skipped"] == []
    report = build_feature_store(CustomCsvSource(tmp_path / "train.csv"), tmp_path / "s", LogMelConfig(clip_seconds=1.0))
    assert report.warned == [("cut.wav", warning)]  # resumed: the kept shard's warnings are reported again
