"""Long clips (stores built with --max-seconds): the first window, random crops per epoch,
or every window as an item -- by hand, on a real variable-length store, and in training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audio_dcls.io import atomic_write_json
from pipelines.data import open_data, open_training_data
from pipelines.feature_store import SHARD_DIR, WAVEFORM, ClipLayout, FeatureStore, Plan, finalize_store, write_shard
from pipelines.long_clips import ClipWindows, window_starts
from pipelines.train import train
from pipelines.train_config import load_config
from tiny_store import TINY_FRAMES, tiny_frontend, tiny_vocabulary

CLIP = (TINY_FRAMES - 1) * 320  # samples of one tiny clip (1.27 s)


def test_window_starts_by_hand():
    assert window_starts(10, 10, 10) == [0]
    assert window_starts(7, 10, 10) == [0]  # shorter: stores pad to one window, never less
    assert window_starts(24, 10, 10) == [0, 10]  # a rest of 4 < half a window is dropped
    assert window_starts(25, 10, 10) == [0, 10, 15]  # a rest of 5 becomes a window ending at the end
    assert window_starts(30, 10, 10) == [0, 10, 20]
    # log-mel frames: 10 s windows (1001 frames) every 1000 frames; a rest of 500 < 1001 / 2 is dropped, 501 is not
    assert window_starts(2501, 1001, 1000) == [0, 1000] and window_starts(2502, 1001, 1000) == [0, 1000, 1501]


def test_clip_windows_modes():
    lengths = np.array([10, 25, 14, 40])
    first = ClipWindows(lengths, 10, 10, "first")
    assert len(first) == 4 and [first[i] for i in range(4)] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    windows = ClipWindows(lengths, 10, 10, "windows")
    assert [windows[i] for i in range(len(windows))] == [(0, 0), (1, 0), (1, 10), (1, 15), (2, 0), (3, 0), (3, 10), (3, 20), (3, 30)]
    assert windows.item_ids(["a", "b", "c", "d"]) == ["a#0", "b#0", "b#1", "b#2", "c#0", "d#0", "d#1", "d#2", "d#3"]
    crops = ClipWindows(lengths, 10, 10, "random_crop", seed=3)
    e0 = [crops[i] for i in range(4)]
    again = ClipWindows(lengths, 10, 10, "random_crop", seed=3)
    assert [again[i] for i in range(4)] == e0  # a function of (seed, epoch, salt, clip)
    assert e0[0] == (0, 0) and all(0 <= s <= n - 10 for (_, s), n in zip(e0, lengths))
    # over epochs every start of the 40-long clip is drawn, uniformly
    starts = []
    for epoch in range(3000):
        crops.set_epoch(epoch)
        starts.append(crops[3][1])
    counts = np.bincount(starts, minlength=31)
    assert len(counts) == 31 and counts.min() > 0.6 * 3000 / 31 and counts.max() < 1.4 * 3000 / 31
    crops.set_epoch(0)
    assert [crops[i] for i in range(4)] == e0
    other_part = ClipWindows(lengths, 10, 10, "random_crop", seed=3, salt=1)
    assert [other_part[i] for i in range(4)] != e0
    assert "3 of 4 clips are longer than 1 s (up to 4.0 s); long_clips=windows: every 1 s window is an item: 9 items from 4 clips" == windows.describe(0.1)
    with pytest.raises(ValueError, match="long_clips must be one of first, random_crop, windows"):
        ClipWindows(lengths, 10, 10, "all")


def make_long_waveform_store(folder, seconds_extra=(0.0, 1.5, 0.2, 3.0, 0.0, 2.0, 0.7, 1.0), seed=0):
    """A variable-length waveform store: tiny clips plus some extra seconds of noise."""
    fe = tiny_frontend()
    layout = ClipLayout(WAVEFORM, fe, max_seconds=fe.clip_seconds + 4)
    n = len(seconds_extra)
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 4), np.uint8)
    labels[np.arange(n), rng.integers(0, 4, n)] = 1
    clips = [rng.integers(-20000, 20000, CLIP + int(e * 32000)).astype(np.int16) for e in seconds_extra]
    plan = Plan(fe, tiny_vocabulary(4), {"kind": "tiny-long"}, f"tiny-long-{seed}-{n}", n, 4, kind=WAVEFORM, max_seconds=layout.max_seconds)
    (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "plan.json", plan.to_dict())
    for k in range(plan.num_shards):
        sl = slice(4 * k, 4 * k + 4)
        write_shard(folder, k, [f"long{i}" for i in range(n)][sl], clips[sl], labels[sl], [], layout=layout)
    finalize_store(folder)
    return folder, clips


def test_store_items_cut_long_clips_as_asked(tmp_path):
    folder, clips = make_long_waveform_store(tmp_path / "long")
    assert FeatureStore(folder).lengths.tolist() == [len(c) for c in clips]
    first = open_data(str(folder))
    assert len(first.dataset) == 8 and first.ids[1] == "long1"
    for i in range(8):
        np.testing.assert_array_equal(first.dataset[i][0].numpy(), clips[i][:CLIP])
    win = open_data(str(folder), long_clips="windows")
    expected = [(c, s) for c, clip in enumerate(clips) for s in window_starts(len(clip), CLIP, CLIP)]  # 1+2+1+3+1+3+2+2 windows
    assert len(win.dataset) == len(expected) == 15 and win.ids[:3] == ["long0#0", "long1#0", "long1#1"]
    for i, (c, s) in enumerate(expected):
        x, y, idx, skip, warned = win.dataset[i]
        np.testing.assert_array_equal(x.numpy(), clips[c][s : s + CLIP])
        assert idx == i and not skip and not warned and torch.equal(y, win.dataset.store[c][1])
    assert "long_clips=windows: every 1.27 s window is an item: 15 items from 8 clips" in win.notes[0]
    labels = FeatureStore(folder).labels.astype(np.int64)
    assert win.dataset.positives().tolist() == sum(labels[c] for c, _ in expected).tolist()  # a class counts once per window
    assert np.allclose(win.label_rate(), sum(labels[c] for c, _ in expected) / 15)
    crop = open_data(str(folder), long_clips="random_crop", seed=5)
    starts = []
    for epoch in (0, 1):
        crop.set_epoch(epoch)
        for i in range(8):
            x = crop.dataset[i][0].numpy()
            found = [s for s in np.flatnonzero(clips[i] == x[0]) if s + CLIP <= len(clips[i]) and np.array_equal(clips[i][s : s + CLIP], x)]
            assert found, f"clip {i}: the item is no window of the clip"
            starts.append(found[0])
    assert starts[0] == starts[8] == 0 and starts[:8] != starts[8:]  # a clip of one window has one start; the rest move per epoch
    (tmp_path / "x.csv").write_text("path,labels\n")
    with pytest.raises(ValueError, match="long_clips=windows reads whole clips from a store; build one with"):
        open_data(str(tmp_path / "x.csv"), long_clips="windows")


def test_training_on_windows_of_long_clips(tmp_path, one_thread):
    folder, clips = make_long_waveform_store(tmp_path / "long")
    data = open_training_data([str(folder), str(folder)], long_clips="random_crop", seed=0)
    assert len(data.dataset) == 16 and data.item_kind == "waveform"
    run = tmp_path / "run"
    args = [
        "model=convnext_atto_dcls_audio", "model_args={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "layer_scale_init=1.0", "workers=0",
        "batch_size=4", "effective_batch=4", "epochs=1", "warmup_epochs=0", "channels_last=false", "threads=1", "release=false",
        f"train=[{folder}]", "long_clips=windows", "augment=dcls_audio", f"output_dir={run}",
    ]
    summary = train(load_config(None, args), progress=False)
    assert summary["train_clips"] == 15 and summary["global_steps"] == 3  # 15 windows, batches of 4
    assert "every 1.27 s window is an item: 15 items from 8 clips" in summary["data_path"]["long_clips"][0]
    assert json.loads((run / "summary.json").read_text())["data_path"]["augment"] == "dcls_audio"
