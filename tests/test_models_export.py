"""ONNX export of the prepared (folded, reparameterised) DCLS models.

The exported graph must hold only standard ONNX operators, carry each DCLS
layer as a 23×23 depthwise Conv, accept any batch size and clip length, and
give onnxruntime outputs equal to PyTorch's.
"""
import warnings

import numpy as np
import onnx  # onnx and onnxruntime: test extra
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn

import audio_dcls  # noqa: F401  (registers the models)
from audio_dcls.layers import Dcls2d
from audio_dcls.models import dcls_stage_layers, prepare_for_inference


LAYER_SCALE_ONE = {
    "convnext": dict(ls_init_value=1.0),
    "convformer": {},
    "fastvit": dict(layer_scale_init_value=0.1),  # 1.0 lets activations grow to ~1e2 over 24 blocks
}

# The default (torch.export-based) exporter on one model, the TorchScript
# exporter on the rest: the first is what users get, the second is ~10× quicker.
CASES = [
    ("convnext_atto_dcls_audio", True),
    ("convformer_atto_dcls_audio", False),
    ("fastvit_t8_dcls_audio", False),
    ("fastvit_sa24_dcls_audio", False),  # RepCPE on a folded 23×23 kernel
]


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def _trained_like(name):
    """A model whose BatchNorm statistics and tap positions are not at their init."""
    torch.manual_seed(0)
    model = timm.create_model(name, **LAYER_SCALE_ONE[name.split("_")[0]])
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    for layers in dcls_stage_layers(model):
        layers[0].P.copy_((torch.rand(layers[0].P.shape, generator=g) * 2 - 1) * 11)
        layers[0].SIG.copy_(torch.rand(layers[0].SIG.shape, generator=g))
    # Logits of unit spread, so that absolute tolerances mean the same for all.
    model.eval()
    spread = model(torch.randn(1, 1, 128, 256, generator=g)).std()
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    last_linear.weight.div_(spread)
    last_linear.bias.div_(spread)
    return model


def _export(model, path, dynamo):
    x = torch.randn(2, 1, 128, 256)
    names = dict(input_names=["logmel"], output_names=["logits"])
    if dynamo:
        auto = torch.export.Dim.AUTO
        torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=({0: auto, 3: auto},), **names)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                              dynamic_axes={"logmel": {0: "batch", 3: "frames"}, "logits": {0: "batch"}}, **names)


@pytest.mark.parametrize("name,dynamo", CASES)
def test_prepared_dcls_model_exports_to_onnx(name, dynamo, tmp_path):
    model = _trained_like(name)
    n_dcls = sum(isinstance(m, Dcls2d) for m in model.modules())
    prepare_for_inference(model)
    path = tmp_path / f"{name}.onnx"
    _export(model, str(path), dynamo)

    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # standard operators only
    dense_23 = [t for t in graph.initializer if list(t.dims[1:]) == [1, 23, 23]]
    assert len(dense_23) == n_dcls  # every folded DCLS layer (and the merged RepCPE)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 128, 256), (3, 1, 128, 1001)]:  # other batch and length than exported
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(["logits"], {"logmel": x.numpy()})[0]
        assert out.shape == (shape[0], 527)
        assert np.abs(ref).max() > 0.1
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
