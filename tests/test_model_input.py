"""pipelines.model_input: raw batches (int16 waveforms, fp16 log-mels) to model input on the
batch's device -- the plain front end in eval mode, the paper's augmentation in training --,
then the step's smoothing and mixup, and scoring a waveform store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audio_dcls.augment import DclsAudioAugment, DclsAudioAugmentConfig, mixup
from audio_dcls.features import AugmentConfig, LogMel, LogMelAugment
from pipelines.model_input import ModelInput, scoring_input
from pipelines.train_config import ConfigError
from pipelines.train_state import StepRecipe
from pipelines.train_step import prepare_micro_batch
from tiny_store import make_tiny_waveform_store, tiny_frontend

FE = tiny_frontend()
L = int(FE.clip_seconds * FE.sample_rate)


def _waves(batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, L, generator=g) * 4000).clamp(-32768, 32767).to(torch.int16)


def test_eval_mode_is_the_front_end(one_thread):
    wave = _waves()
    got = scoring_input(FE, "waveform")(wave)
    assert torch.equal(got, LogMel(FE)(wave.float() / 32768))  # int16 / 2**15, then the service's front end
    logmels = torch.randn(3, 1, 128, 128).half()
    assert torch.equal(scoring_input(FE, "logmel")(logmels), logmels.float())
    trained = ModelInput(FE, "waveform", "dcls_audio").eval()  # evaluation never augments
    assert torch.equal(trained(wave, generator=torch.Generator().manual_seed(1)), got)


def test_training_mode_is_the_paper_augmentation_around_the_front_end(one_thread):
    wave = _waves(4)
    inputs = ModelInput(FE, "waveform", "dcls_audio", {"speed_p": 1.0, "erase_p": 1.0}).train()
    assert inputs.waveform_augment.config == DclsAudioAugmentConfig(speed_p=1.0, erase_p=1.0)
    got = inputs(wave, generator=torch.Generator().manual_seed(7))
    ref = DclsAudioAugment(LogMel(FE), DclsAudioAugmentConfig(speed_p=1.0, erase_p=1.0)).train()
    assert torch.equal(got, ref(wave.float() / 32768, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(got, LogMel(FE)(wave.float() / 32768))
    # SpecAugment on waveform items: the front end, then the log-mel masks
    spec = ModelInput(FE, "waveform", "specaugment", {"gain_db": 0.0}).train()
    want = LogMelAugment(AugmentConfig(gain_db=0.0), db_per_unit=FE.std).train()(LogMel(FE)(wave.float() / 32768), generator=torch.Generator().manual_seed(2))
    assert torch.equal(spec(wave, generator=torch.Generator().manual_seed(2)), want)
    with pytest.raises(ConfigError, match="needs waveforms, but the data holds log-mels"):
        ModelInput(FE, "logmel", "dcls_audio")
    with pytest.raises(ConfigError, match=r"augment_args: augmentation settings: need 0 < speed_min <= speed_max"):
        ModelInput(FE, "waveform", "dcls_audio", {"speed_min": 2.0})


def test_micro_batch_is_augmented_then_smoothed_and_mixed(one_thread):
    wave, y = _waves(4), (torch.rand(4, 5, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    recipe = StepRecipe(seed=0, accum=1, label_smoothing=0.1, mixup_alpha=0.8, clip_grad=0.0, clamp_positions=False,
                        channels_last=False, use_amp=False, amp_dtype=torch.bfloat16)
    inputs = ModelInput(FE, "waveform", "dcls_audio").train()
    x, yy = prepare_micro_batch(wave, y, recipe, inputs, torch.Generator().manual_seed(11), np.random.default_rng(5), torch.device("cpu"))
    lam = float(np.random.default_rng(5).beta(0.8, 0.8))
    want_x, want_y = mixup(inputs(wave, generator=torch.Generator().manual_seed(11)), y, lam, label_smoothing=0.1)
    assert torch.equal(x, want_x) and torch.allclose(yy, want_y, atol=0, rtol=1e-6)
    assert torch.allclose(yy, lam * (0.9 * y + 0.02) + (1 - lam) * (0.9 * y + 0.02).flip(0))  # the paper's formulas by hand


def test_scoring_a_waveform_store_runs_the_front_end(tmp_path, one_thread):
    from audio_dcls.model_factory import build_model
    from pipelines.data import open_data
    from pipelines.feature_store import FeatureStore
    from pipelines.scoring import ScoringOptions, score

    folder = make_tiny_waveform_store(tmp_path / "w", n=12, seed=4)
    data = open_data(str(folder))
    torch.manual_seed(0)
    model = build_model("convnext_atto_dcls_audio", {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}, 4).eval()
    result = score(model, data.vocabulary, FE, data, ScoringOptions(batch_size=5))
    store = FeatureStore(folder)
    wave = torch.from_numpy(np.stack([store.read(i) for i in range(12)]))
    with torch.no_grad():
        probs = torch.sigmoid(model(LogMel(FE)(wave.float() / 32768))).numpy()
    from audio_dcls.metrics import tagging_metrics

    assert result.clips_scored == 12
    assert result.metrics.mAP == pytest.approx(tagging_metrics(store.labels, probs).mAP, abs=1e-6)
