"""pipelines.sources: official CSVs, AudioSet file naming, manifests, PANNs HDF5, custom CSVs."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_dcls.labels import LabelVocabulary, audioset_vocabulary
from pipelines.sources import (
    AudioSetSource,
    CustomCsvSource,
    PannsHdf5Source,
    Segment,
    clip_id_from_audio_name,
    match_segment_file,
    read_segments_csv,
    write_panns_hdf5,
    write_segments_csv,
)

def _labels_matrix(src) -> np.ndarray:
    """(N, C) uint8 multi-hot matrix of a source's clips."""
    y = np.zeros((len(src), len(src.vocabulary)), dtype=np.uint8)
    for i, c in enumerate(src):
        y[i, list(c.labels)] = 1
    return y


SHARED = Path(__file__).resolve().parents[2] / "shared" / "audioset"
needs_shared = pytest.mark.skipif(not (SHARED / "eval_segments.csv").exists(), reason="../shared/audioset not present")


@needs_shared
@pytest.mark.parametrize("name,segments,positives", [("eval_segments.csv", 20371, 51804), ("balanced_train_segments.csv", 22160, 52882)])
def test_real_segment_csvs_parse_completely(name, segments, positives):
    parsed = read_segments_csv(SHARED / name)
    assert len(parsed.segments) == segments == parsed.header["num_segs"]
    assert parsed.num_positive_labels == positives == parsed.header["num_positive_labels"]
    mids = {m for s in parsed.segments for m in s.mids}
    assert len(mids) == 527 and mids <= set(audioset_vocabulary().mids)
    first = parsed.segments[0]
    assert len(first.ytid) == 11 and first.end - first.start == pytest.approx(10.0)
    if name == "eval_segments.csv":
        assert first == Segment("--4gqARaEJE", 0.0, 10.0, ("/m/068hy", "/m/07q6cd_", "/m/0bt9lr", "/m/0jbk"))


def test_segment_csv_writer_round_trips_in_the_official_layout(tmp_path):
    segs = [Segment("abcdefghijk", 30.0, 40.0, ("/m/09x0r", "/t/dd00088")), Segment("-_012345678", 0.5, 10.5, ("/m/015jpf",))]
    p = write_segments_csv(tmp_path / "s.csv", segs)
    lines = p.read_text().splitlines()
    assert lines[0].startswith("# Segments csv created") and lines[2] == "# YTID, start_seconds, end_seconds, positive_labels"
    assert lines[3] == 'abcdefghijk, 30.000, 40.000, "/m/09x0r,/t/dd00088"'
    parsed = read_segments_csv(p)
    assert parsed.segments == segs and parsed.header["num_positive_labels"] == 3


@pytest.mark.parametrize(
    "line,message",
    [("abc, 0.000, 10.000, \"/m/09x0r\"", "not a YouTube id"), ("abcdefghijk, x, 10.000, \"/m/09x0r\"", "not numbers"), ("abcdefghijk, 0.000", "expected 4 fields")],
)
def test_malformed_segment_rows_name_the_line(tmp_path, line, message):
    p = tmp_path / "bad.csv"
    p.write_text("# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"line 4: .*{message}"):
        read_segments_csv(p)


def _tiny_wav(path: Path):
    """A short silent file; the format follows the suffix (.wav, .flac, .ogg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(160, np.float32), 16000)


SEGMENTS = [
    Segment("aaaaaaaaaaa", 30.0, 40.0, ("/m/09x0r",)),  # Y{id}.wav
    Segment("bbbbbbbbbbb", 0.0, 10.0, ("/m/015jpf", "/m/01z47d")),  # {id}.flac in a sub-folder
    Segment("ccccccccccc", 30.0, 40.0, ("/m/09x0r",)),  # {id}_{s}_{e} seconds
    Segment("ddddddddddd", 12.5, 22.5, ("/m/09x0r",)),  # {id}_{ms}_{ms}
    Segment("Yeeeeeeeeee", 30.0, 40.0, ("/m/09x0r",)),  # id starting with Y, file Y{id}_{s}_{e}
    Segment("ff_ffff_fff", 60.0, 70.0, ("/m/09x0r", "/m/notreal")),  # id with underscores, {id}_{s}_{e}
    Segment("ggggggggggg", 10.0, 20.0, ("/m/09x0r",)),  # missing
    Segment("hhhhhhhhhhh", 10.0, 20.0, ("/m/09x0r",)),  # a file for another segment of the video
]


def _audioset_folder(tmp_path: Path) -> tuple[Path, Path]:
    csv_path = write_segments_csv(tmp_path / "segs.csv", SEGMENTS)
    audio = tmp_path / "audio"
    for name in [
        "Yaaaaaaaaaaa.wav",
        "sub/bbbbbbbbbbb.flac",
        "ccccccccccc_30.000_40.000.wav",
        "ddddddddddd_12500_22500.ogg",
        "YYeeeeeeeeee_30.000_40.000.wav",
        "ff_ffff_fff_60_70.wav",
        "hhhhhhhhhhh_50.000_60.000.wav",
        "zzzzzzzzzzz.wav",
    ]:
        _tiny_wav(audio / name)
    (audio / "notes.txt").write_text("not audio")
    return csv_path, audio


def test_audioset_folder_matches_every_naming_convention(tmp_path):
    csv_path, audio = _audioset_folder(tmp_path)
    src = AudioSetSource(csv_path, audio_dir=audio)
    found = {c.id: Path(c.path).name for c in src}
    assert found == {
        "aaaaaaaaaaa": "Yaaaaaaaaaaa.wav",
        "bbbbbbbbbbb": "bbbbbbbbbbb.flac",
        "ccccccccccc": "ccccccccccc_30.000_40.000.wav",
        "ddddddddddd": "ddddddddddd_12500_22500.ogg",
        "Yeeeeeeeeee": "YYeeeeeeeeee_30.000_40.000.wav",
        "ff_ffff_fff": "ff_ffff_fff_60_70.wav",
    }
    assert [c.id for c in src] == [s.ytid for s in SEGMENTS[:6]]  # CSV order
    assert {m.id: m.reason for m in src.missing} == {"ggggggggggg": "no audio file found for this segment", "hhhhhhhhhhh": "no audio file found for this segment"}
    assert src.unmatched_files == 2  # the wrong-time file and the unrelated one
    # labels: indices into the 527 classes; the unknown MID is dropped and reported
    b = next(c for c in src if c.id == "bbbbbbbbbbb")
    assert b.labels == (393, 394) and b.target.shape == (527,) and b.target.sum() == 2
    assert src.unknown_mids == {"/m/notreal": 1} and any("outside the vocabulary" in n for n in src.notes)
    assert src.describe()["missing"] == 2


def test_match_segment_file_rules():
    by = {s.ytid: s for s in SEGMENTS}
    assert match_segment_file("aaaaaaaaaaa", by) == "aaaaaaaaaaa"
    assert match_segment_file("Yaaaaaaaaaaa", by) == "aaaaaaaaaaa"
    assert match_segment_file("Yeeeeeeeeee", by) == "Yeeeeeeeeee"  # the id itself, not Y + 'eeeeeeeeee'
    assert match_segment_file("aaaaaaaaaaa_30000_40000", by) == "aaaaaaaaaaa"
    assert match_segment_file("Yaaaaaaaaaaa_30_40", by) == "aaaaaaaaaaa"
    assert match_segment_file("aaaaaaaaaaa_31.000_41.000", by) is None
    assert match_segment_file("aaaaaaaaaaa_x_y", by) is None
    assert match_segment_file("unknown", by) is None


def test_manifest_instead_of_scanning(tmp_path):
    csv_path, audio = _audioset_folder(tmp_path)
    man = tmp_path / "manifest.csv"
    man.write_text("ytid,path\nYaaaaaaaaaaa,audio/Yaaaaaaaaaaa.wav\nccccccccccc,audio/gone.wav\nqqqqqqqqqqq,audio/zzzzzzzzzzz.wav\n")
    src = AudioSetSource(csv_path, manifest=man)
    assert [c.id for c in src] == ["aaaaaaaaaaa"]
    reasons = {m.id: m.reason for m in src.missing}
    assert "does not exist" in reasons["ccccccccccc"] and reasons["bbbbbbbbbbb"] == "no audio file found for this segment"
    assert len(reasons) == 7 and src.unmatched_files == 1
    man.write_text("id,file\nx,y\n")
    with pytest.raises(ValueError, match="ytid,path"):
        AudioSetSource(csv_path, manifest=man)


def test_duplicate_segments_keep_the_first(tmp_path):
    p = write_segments_csv(tmp_path / "d.csv", [SEGMENTS[0], Segment("aaaaaaaaaaa", 50.0, 60.0, ("/m/015jpf",))])
    _tiny_wav(tmp_path / "a" / "Yaaaaaaaaaaa.wav")
    src = AudioSetSource(p, audio_dir=tmp_path / "a")
    assert len(src) == 1 and src[0].labels == (0,)
    assert src.missing[0].reason.startswith("duplicate segment")


def test_panns_hdf5_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal((3, 3200)) * 3000).astype(np.int16)
    tgt = np.zeros((3, 527), bool)
    tgt[0, [0, 5]] = tgt[2, 393] = True
    names = ["Y--PJHxphWEs.wav", "Yabcdefghijk.wav", "custom_name.wav"]
    write_panns_hdf5(tmp_path / "pack.h5", names, wav, tgt)
    src = PannsHdf5Source(tmp_path / "pack.h5")
    assert [c.id for c in src] == ["--PJHxphWEs", "abcdefghijk", "custom_name"]
    np.testing.assert_array_equal(_labels_matrix(src), tgt.astype(np.uint8))
    np.testing.assert_allclose(src[0].load(32000), wav[0] / 32768.0, atol=1e-7)
    assert len(src[2].load(16000)) == 1600  # resampled from the pack's 32 kHz
    # a second pack with a repeated clip: first occurrence kept, the repeat reported
    write_panns_hdf5(tmp_path / "pack2.h5", ["Yabcdefghijk.wav"], wav[:1], tgt[:1])
    both = PannsHdf5Source([tmp_path / "pack.h5", tmp_path / "pack2.h5"])
    assert len(both) == 3 and both.missing[0].id == "abcdefghijk"


class _Waveforms(torch.utils.data.Dataset):
    """Reads clips in DataLoader workers, and says which process's handles it used."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        clip = self.source[i]
        x = clip.load(32000)
        return torch.from_numpy(x), clip.h5._pid == os.getpid(), len(clip.h5._files)


def test_panns_handles_are_owned_per_process_and_closed(tmp_path):
    rng = np.random.default_rng(1)
    wav = (rng.standard_normal((4, 800)) * 3000).astype(np.int16)
    write_panns_hdf5(tmp_path / "pack.h5", [f"c{i}.wav" for i in range(4)], wav, np.zeros((4, 527), bool))
    with PannsHdf5Source(tmp_path / "pack.h5") as src:
        src[0].load(32000)  # the parent opens the pack before the workers fork
        (handle,) = src[0].h5._files.values()
        loader = torch.utils.data.DataLoader(_Waveforms(src), batch_size=None, num_workers=2, multiprocessing_context="fork")
        for i, (x, own, n_open) in enumerate(loader):
            np.testing.assert_allclose(x.numpy(), wav[i] / 32768.0, atol=1e-7)
            assert own and n_open == 1  # each worker opened its own handle, the parent's was not used
        assert handle.id.valid  # ... nor closed by the workers
        np.testing.assert_allclose(src[3].load(32000), wav[3] / 32768.0, atol=1e-7)
        copy = pickle.loads(pickle.dumps(src))  # a spawned worker's copy starts without handles
        assert copy[1].h5._files == {} and np.allclose(copy[1].load(32000), wav[1] / 32768.0, atol=1e-7)
        copy.close()
    assert not handle.id.valid and src[0].h5._files == {}  # closed by the source that opened it


def test_panns_hdf5_rejects_other_files(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["waveform"] = np.zeros((1, 10), np.int16)
    with pytest.raises(ValueError, match="not a PANNs pack"):
        PannsHdf5Source(tmp_path / "x.h5")
    write_panns_hdf5(tmp_path / "y.h5", ["a"], np.zeros((1, 10), np.int16), np.zeros((1, 10), bool))
    with pytest.raises(ValueError, match="10 classes but the vocabulary has 527"):
        PannsHdf5Source(tmp_path / "y.h5")
    (tmp_path / "z.h5").write_text("no")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        PannsHdf5Source(tmp_path / "z.h5")
    assert clip_id_from_audio_name("Y--PJHxphWEs.wav") == "--PJHxphWEs" and clip_id_from_audio_name("a/b.wav") == "b"


def test_custom_csv_vocabulary_given_or_derived_and_nothing_read_or_written_beside_it(tmp_path):
    for name in ("woof1.wav", "mew1.wav", "both.wav", "sub/quiet.wav"):
        _tiny_wav(tmp_path / name)
    (tmp_path / "train.csv").write_text("path,labels\nwoof1.wav,woof\nmew1.wav,mew\nboth.wav,woof; mew\nsub/quiet.wav,\nmissing.wav,woof\nwoof1.wav,mew\n")
    # a labels.csv the dataset ships beside its CSV, in its own format: never read implicitly
    (tmp_path / "labels.csv").write_text("path,labels\nsomething,else\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    src = CustomCsvSource(tmp_path / "train.csv")
    assert src.vocabulary.display_names == ("mew", "woof") and src.vocabulary.mids == ("", "")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written into the user's folder
    assert {c.id: c.labels for c in src} == {"woof1.wav": (1,), "mew1.wav": (0,), "both.wav": (0, 1), "sub/quiet.wav": ()}
    reasons = {m.id: m.reason for m in src.missing}
    assert reasons["missing.wav"].startswith("audio file not found") and reasons["woof1.wav"].startswith("listed twice")
    # an eval split given the training vocabulary (or a label file of it) indexes the same way
    (tmp_path / "eval.csv").write_text("path,labels\nboth.wav,mew\n")
    assert CustomCsvSource(tmp_path / "eval.csv").vocabulary == LabelVocabulary(["mew"])  # its own labels otherwise
    ev = CustomCsvSource(tmp_path / "eval.csv", vocabulary=src.vocabulary)
    assert ev.vocabulary == src.vocabulary and ev[0].labels == (0,)
    src.vocabulary.to_csv(tmp_path / "store" / "labels.csv")
    assert CustomCsvSource(tmp_path / "eval.csv", vocabulary=tmp_path / "store" / "labels.csv").vocabulary == src.vocabulary
    # a label outside a given vocabulary: counted and reported, the clip keeps its other labels -- or an error when strict
    (tmp_path / "bad.csv").write_text("path,labels\nboth.wav,cow;woof\nmew1.wav,cow\n")
    lax = CustomCsvSource(tmp_path / "bad.csv", vocabulary=src.vocabulary)
    assert lax.unknown_labels == {"cow": 2} and [c.labels for c in lax] == [(1,), ()]
    assert any("unknown label 'cow' in 2 clips" in n for n in lax.notes)
    with pytest.raises(ValueError, match="1 labels are not in the 2-class vocabulary: cow"):
        CustomCsvSource(tmp_path / "bad.csv", vocabulary=src.vocabulary, strict=True)
    # AudioSet display names (any case) and MIDs against the AudioSet vocabulary
    (tmp_path / "as.csv").write_text("path,labels\nboth.wav,speech;/m/015jpf\n")
    a = CustomCsvSource(tmp_path / "as.csv", vocabulary=audioset_vocabulary())
    assert a[0].labels == (0, 393)
    (tmp_path / "h.csv").write_text("file,tags\nx,y\n")
    with pytest.raises(ValueError, match="header must be path,labels"):
        CustomCsvSource(tmp_path / "h.csv")
