"""audio_dcls.model_factory.build_model and audio_dcls.device.resolve_device: the one way in."""
from __future__ import annotations

import pytest
import torch

from audio_dcls.device import DeviceError, resolve_device
from audio_dcls.model_factory import ModelBuildError, build_model

TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}


def test_build_model_by_name_and_clear_errors():
    model = build_model("convnext_atto_dcls_audio", {**TINY, "num_classes": 999}, 5)
    assert model.num_classes == 5  # the explicit count wins over a stale num_classes in the args
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 128, 128)).shape == (2, 5)
    with pytest.raises(ModelBuildError, match=r"unknown architecture 'convnext_nope' \(e\.g\. "):
        build_model("convnext_nope", {}, 5)
    with pytest.raises(ModelBuildError, match="convnext_atto_dcls_audio does not accept these arguments"):
        build_model("convnext_atto_dcls_audio", {"wings": 2}, 5)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu9")
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda", 0) and resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    else:
        with pytest.raises(DeviceError, match="CUDA is not available on this machine"):
            resolve_device("cuda:1")
