"""pipelines.make_mini_audioset: official layout, balance, determinism, same ingest as AudioSet."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from audio_dcls.labels import audioset_vocabulary
from pipelines.make_mini_audioset import CLASSES, build_mini_audioset, main, render_clip, plan_split
from pipelines.sources import AudioSetSource, read_segments_csv

K = len(CLASSES)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "mini_audioset"
    assert main([str(out), "--seed", "7", "--n-train", str(K), "--n-eval", str(K), "--clip-seconds", "3", "--workers", "2"]) == 0
    return out


def test_official_layout_with_real_mids(mini):
    vocab = audioset_vocabulary()
    assert K >= 12 and all(c.display_name in vocab for c in CLASSES)
    for split in ("balanced_train_segments", "eval_segments"):
        lines = (mini / f"{split}.csv").read_text().splitlines()
        assert [l[:2] for l in lines[:3]] == ["# "] * 3 and lines[2] == "# YTID, start_seconds, end_seconds, positive_labels"
        parsed = read_segments_csv(mini / f"{split}.csv")
        assert len(parsed.segments) == parsed.header["num_segs"] == K
        assert parsed.num_positive_labels == parsed.header["num_positive_labels"]
        for s in parsed.segments:
            assert 1 <= len(s.mids) <= 3 and len(set(s.mids)) == len(s.mids)
            assert all(m in vocab.mids for m in s.mids)
            assert s.end - s.start == 10.0
            info = sf.info(mini / "audio" / split / f"Y{s.ytid}.flac")
            assert (info.samplerate, info.channels, info.format, info.subtype) == (32000, 1, "FLAC", "PCM_16")
            assert info.frames == 3 * 32000
    train = {s.ytid for s in read_segments_csv(mini / "balanced_train_segments.csv").segments}
    evals = {s.ytid for s in read_segments_csv(mini / "eval_segments.csv").segments}
    assert not train & evals


def test_balanced_every_class_leads_and_is_populated(mini):
    for split in ("balanced_train_segments", "eval_segments"):
        segs = read_segments_csv(mini / f"{split}.csv").segments
        vocab = audioset_vocabulary()
        leads = [vocab.display_name(vocab.index(s.mids[0])) for s in segs]
        assert sorted(leads) == sorted(c.display_name for c in CLASSES)  # each class leads exactly one clip here


def test_same_ingest_as_audioset(mini):
    src = AudioSetSource(mini / "eval_segments.csv", audio_dir=mini / "audio" / "eval_segments")
    assert len(src) == K and not src.missing and src.vocabulary.num_classes == 527
    populated = {i for c in src for i in c.labels}
    assert len(populated) == K


def test_deterministic_and_seeded(mini, tmp_path):
    again = tmp_path / "again"
    build_mini_audioset(again, seed=7, n_train=K, n_eval=K, workers=1, clip_seconds=3)
    for name in ("balanced_train_segments.csv", "eval_segments.csv"):
        assert (again / name).read_bytes() == (mini / name).read_bytes()
    ytid = read_segments_csv(mini / "eval_segments.csv").segments[5].ytid
    a, _ = sf.read(mini / "audio" / "eval_segments" / f"Y{ytid}.flac")
    b, _ = sf.read(again / "audio" / "eval_segments" / f"Y{ytid}.flac")
    np.testing.assert_array_equal(a, b)
    other = plan_split("eval", K, seed=8, taken=set(), seconds=3)
    assert [s.ytid for s in other] != [s.ytid for s in read_segments_csv(mini / "eval_segments.csv").segments]
    # a folder already holding this build is left alone
    stamp_time = (again / "mini_audioset.json").stat().st_mtime_ns
    build_mini_audioset(again, seed=7, n_train=K, n_eval=K, workers=1, clip_seconds=3)
    assert (again / "mini_audioset.json").stat().st_mtime_ns == stamp_time


def test_mixtures_have_a_noise_floor_and_headroom():
    spec = plan_split("train", 3 * K, seed=0, taken=set(), seconds=2)
    counts = [len(s.classes) for s in spec]
    assert set(counts) == {1, 2, 3}
    for s in spec[:4]:
        x = render_clip(s)
        assert x.dtype == np.float32 and len(x) == 64000
        assert np.abs(x).max() <= 0.98
        assert np.sqrt(np.mean(x**2)) > 10 ** (-62 / 20)  # never digital silence


def test_each_class_has_its_own_spectrum():
    """Per-class average log-spectra differ clearly: a cheap proxy for 'easy to learn'."""
    from audio_dcls.features import LogMel

    lm = LogMel()
    rng = np.random.default_rng(0)
    profiles = []
    for c in CLASSES:
        x = c.synth(rng, 64000, 32000).astype(np.float32)
        x = 0.1 * x / (np.sqrt(np.mean(x**2)) + 1e-9)
        profiles.append(lm.compute(x).mean(axis=1))  # (128,) band profile
    p = np.array(profiles)
    dist = np.abs(p[:, None, :] - p[None, :, :]).mean(-1)  # mean |difference| in normalised log-mel units
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 0.05, dist.min()


def test_bad_arguments(tmp_path, capsys):
    assert main([str(tmp_path / "x"), "--n-train", "0"]) == 1
    assert "must be at least 1" in capsys.readouterr().err
