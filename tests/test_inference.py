"""audio_dcls.inference: the embedding is the vector the classifier reads, from the same forward as the scores.

The oracle for each family is written here from the models' structure: global average
pooling of the last feature map, then the head's LayerNorm for ConvNeXt and ConvFormer
(FastViT's final 1x1 conv is part of forward_features); the classifier applied to it
must give model(x).
"""
from __future__ import annotations

import pytest
import timm
import torch

import audio_dcls.models  # noqa: F401  (registers the models)
from audio_dcls.features import LogMel, LogMelConfig
from audio_dcls.inference import WaveformModel, clip_embedding, clip_scores, embedding_dim, logits_and_embeddings
from audio_dcls.models import prepare_for_inference

TINY = {
    "convnext_atto_dcls_audio": dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
    "convformer_atto_dcls_audio": dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
    "fastvit_t8_dcls_audio": dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 64, 128]),
}


def _pooled_oracle(model, x):
    features = model.forward_features(x)  # (B, C, F, T)
    pooled = features.mean(dim=(2, 3))
    if model.__class__.__name__ == "FastVitAudio":
        return pooled
    norm = model.head.norm  # LayerNorm2d over channels; on a (B, C, 1, 1) map it is a LayerNorm of the pooled vector
    return torch.nn.functional.layer_norm(pooled, (pooled.shape[1],), norm.weight, norm.bias, norm.eps)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_embedding_is_the_classifier_input_and_scores_come_from_the_same_pass(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, **TINY[arch]).eval()
    x = torch.randn(3, 1, 128, 201)
    with torch.no_grad():
        logits, embeddings = logits_and_embeddings(model, x)
        assert embeddings.shape == (3, embedding_dim(model))
        torch.testing.assert_close(embeddings, _pooled_oracle(model, x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, model(x), atol=1e-6, rtol=1e-6)
        # the prepared (folded) model the service runs gives the same vectors
        prepared = prepare_for_inference(model, inplace=False)
        logits2, embeddings2 = logits_and_embeddings(prepared, x)
        torch.testing.assert_close(embeddings2, embeddings, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(logits2, logits, atol=2e-5, rtol=1e-4)
        # deterministic, and a window's vector does not depend on the others in its batch
        again = logits_and_embeddings(prepared, x)[1]
        assert torch.equal(again, embeddings2)
        alone = logits_and_embeddings(prepared, x[1:2])[1]
        torch.testing.assert_close(alone[0], embeddings2[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "arch, size",
    [
        ("convnext_tiny_dcls_audio", 768),
        ("convnext_tiny_audio", 768),
        ("convformer_s18_audio", 512),
        ("convformer_s18_dcls_audio", 512),
        ("fastvit_sa24_audio", 1024),
        ("fastvit_sa24_dcls_audio", 1024),
    ],
)
def test_embedding_size_of_the_paper_models(arch, size):
    with torch.device("meta"):  # structure only, no weights computed
        model = timm.create_model(arch)
    assert embedding_dim(model) == size
    head = model.get_classifier()  # Linear, or ConvFormer's MlpHead: the embedding is what it reads
    assert (head.fc1 if hasattr(head, "fc1") else head).in_features == size


def test_waveform_model_and_pooling():
    torch.manual_seed(1)
    model = prepare_for_inference(timm.create_model("convnext_atto_dcls_audio", **TINY["convnext_atto_dcls_audio"]))
    frontend = LogMel(LogMelConfig()).eval()
    wm = WaveformModel(frontend, model).eval()
    waves = 0.1 * torch.randn(2, 64000)
    with torch.no_grad():
        out = wm(waves)
        logits, emb = logits_and_embeddings(model, frontend(waves))
    torch.testing.assert_close(out.scores, torch.sigmoid(logits))
    torch.testing.assert_close(out.embeddings, emb)
    scores, embeddings = out.scores.numpy(), out.embeddings.numpy()
    assert (clip_scores(scores) == scores.max(0)).all()
    torch.testing.assert_close(torch.from_numpy(clip_embedding(embeddings)), torch.from_numpy(embeddings).mean(0))
