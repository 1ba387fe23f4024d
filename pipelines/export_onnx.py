"""Export a release folder to one self-describing ONNX file.

The graph is the prepared model (``audio_dcls.models.prepare_for_inference``:
DCLS kernels folded into plain 23×23 depthwise convolutions, FastViT branches
merged), with dynamic batch and length axes:

* default: ``logmel`` float32 (batch, 1, n_mels, frames), the normalised
  log-mel of ``audio_dcls.features.LogMel``, -> ``logits`` (batch, classes);
* ``--with-frontend``: ``waveform`` float32 (batch, samples), mono audio at
  the release's sample rate in [-1, 1], -> ``logits``; the STFT, mel
  filterbank, dB and normalisation run inside the graph
  (``audio_dcls.dft_logmel.DftLogMel``), so no Python front end is needed.

Outputs are logits; AudioSet tagging is multi-label, so apply a sigmoid per
class. The release's labels, architecture, front-end settings and an input and
output description travel in the file's ``metadata_props`` (``labels`` is a
JSON list of ``{index, mid, display_name}``). After exporting, onnxruntime runs
the file on a random batch and compares it with PyTorch (the release's own
LogMel and model); the maximum absolute difference of the logits is printed,
and a file that misses ``--tolerance`` is not written.

The exporter is ``torch.onnx.export(dynamo=True)``, the one PyTorch maintains
(the TorchScript exporter is deprecated); it takes a few seconds for the small
models and up to a minute for the larger ones.

CPU only: tracing and the parity check run on the CPU, and a GPU would not
speed them up, so there are no single-GPU or torchrun forms. The file itself
runs anywhere onnxruntime does (``CUDAExecutionProvider`` with
onnxruntime-gpu). Needs the ``onnx`` extra: ``pip install 'audio_dcls[onnx]'``.

    python -m pipelines.export_onnx runs/release/convnext_atto_dcls_audio-mini-seed0 --out model.onnx
    python -m pipelines.export_onnx RELEASE --out tagger.onnx --with-frontend
    python -m pipelines.export_onnx RELEASE --out tagger.onnx --with-frontend --opset 20

Using the file (numpy + onnxruntime only)::

    import json, numpy as np, onnxruntime as ort
    session = ort.InferenceSession("tagger.onnx", providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels = [row["display_name"] for row in json.loads(meta["labels"])]
    logits = session.run(["logits"], {"waveform": audio[None].astype(np.float32)})[0]
    scores = 1 / (1 + np.exp(-logits[0]))
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from audio_dcls.checkpoint import Release, load_release
from audio_dcls.dft_logmel import DftLogMel
from audio_dcls.features import LogMel
from audio_dcls.models import prepare_for_inference

log = logging.getLogger("pipelines.export_onnx")

DEFAULT_OPSET = 18  # fixed rather than the exporter's default, so files do not change with torch
MIN_OPSET = 18  # the exporter implements opset 18 and up; its converter cannot take our graphs lower (ReduceMean axes)
EXPORT_BATCH = 2  # batch of the example input the exporter traces
CHECK_BATCH = 3  # a different batch for the parity check, so it also tests the dynamic axis
STANDARD_DOMAINS = {"", "ai.onnx"}


class ExportError(ValueError):
    """The export cannot be done as asked (bad input, missing package, failed check)."""


@dataclass
class ExportReport:
    path: Path  # the written .onnx file
    release: str  # release folder name
    arch: str
    with_frontend: bool
    opset: int
    input_name: str
    input_shape: Tuple  # symbolic dims as names, e.g. ('batch', 'samples')
    num_classes: int
    max_abs_diff: float  # onnxruntime vs PyTorch logits on the check batch
    max_abs_logit: float  # largest PyTorch logit on that batch: the scale the difference is measured against
    check_shape: Tuple[int, ...]  # shape of the random check input
    tolerance: float
    seconds: float
    num_bytes: int

    def summary(self) -> str:
        shape = ", ".join(str(d) for d in self.input_shape)
        return (
            f"exported {self.arch} (release {self.release}) to {self.path}: {self.input_name} ({shape}) -> "
            f"logits (batch, {self.num_classes}), opset {self.opset}, {self.num_bytes / 1e6:.1f} MB, {self.seconds:.1f} s\n"
            f"onnxruntime vs PyTorch on a random {tuple(self.check_shape)} input: "
            f"max abs diff {self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e}, largest |logit| {self.max_abs_logit:.2f})"
        )


def _require_onnx():
    """onnx and onnxruntime modules; onnxscript is what the exporter needs on top."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name or e} is not installed): pip install 'audio_dcls[onnx]'"
        ) from None
    return onnx, onnxruntime


def _check_opset(opset: Optional[int], onnx) -> int:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    highest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= highest:
        raise ExportError(f"--opset {opset} is not supported: choose {MIN_OPSET}..{highest} (the installed onnx {onnx.__version__} knows up to {highest})")
    return opset


def _reserve_output(out: Path) -> Path:
    """Create (and so prove writable) the temporary sibling the file is written to."""
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
        tmp.open("xb").close()
    except OSError as e:
        raise ExportError(f"cannot write --out {out}: {e.strerror or e}") from None
    return tmp


def onnx_metadata(release: Release, with_frontend: bool) -> Dict[str, str]:
    """The ``metadata_props`` of an exported release: everything needed to use it without audio_dcls."""
    fe = release.frontend
    clip_samples = int(round(fe.clip_seconds * fe.sample_rate))
    if with_frontend:
        input_text = (
            f"waveform: float32 (batch, samples), mono audio at {fe.sample_rate} Hz scaled to [-1, 1]; "
            f"trained on {fe.clip_seconds:g} s clips ({clip_samples} samples), at least {fe.n_fft // 2 + 1} samples"
        )
    else:
        input_text = (
            f"logmel: float32 (batch, 1, {fe.n_mels}, frames), normalised log-mel as audio_dcls.features.LogMel computes it "
            f"(settings in 'frontend'); {fe.num_frames} frames for a {fe.clip_seconds:g} s clip"
        )
    return {
        "release": release.name,
        "arch": release.arch,
        "model_args": json.dumps(release.model_args, sort_keys=True),
        "num_classes": str(len(release.labels)),
        "labels": json.dumps([{"index": i, "mid": mid, "display_name": name} for i, (mid, name) in enumerate(release.labels)], ensure_ascii=False),
        "label_source": release.label_source,
        "with_frontend": json.dumps(with_frontend),
        "sample_rate": str(fe.sample_rate),
        "clip_samples": str(clip_samples),
        "frontend": json.dumps(fe.to_dict(), sort_keys=True),
        "input": input_text,
        "output": f"logits: float32 (batch, {len(release.labels)}), one per label in 'labels' order; multi-label, so sigmoid(logits) gives per-label scores",
        "training": json.dumps(release.training, sort_keys=True, default=str),
    }


def _graph_and_reference(release: Release, with_frontend: bool):
    """(module to export, PyTorch reference, input name, symbolic input shape, example input, check input)."""
    model = prepare_for_inference(release.model, channels_last=False)
    fe = release.frontend
    g = torch.Generator().manual_seed(0)
    if with_frontend:
        samples = int(round(fe.clip_seconds * fe.sample_rate))
        graph = nn.Sequential(DftLogMel(fe), model).eval()
        reference = nn.Sequential(LogMel(fe), model).eval()
        example = torch.randn(EXPORT_BATCH, samples, generator=g) * 0.1
        check = torch.randn(CHECK_BATCH, samples, generator=g) * 0.1  # white noise at -20 dBFS
        return graph, reference, "waveform", ("batch", "samples"), example, check
    example = torch.randn(EXPORT_BATCH, 1, fe.n_mels, fe.num_frames, generator=g)
    check = torch.randn(CHECK_BATCH, 1, fe.n_mels, fe.num_frames, generator=g)
    return model, model, "logmel", ("batch", 1, fe.n_mels, "frames"), example, check


def _trace(graph: nn.Module, example: torch.Tensor, input_name: str, input_shape: Tuple, opset: int):
    """torch.onnx (dynamo) export with the named axes of ``input_shape`` dynamic; returns the ModelProto."""
    dynamic = {axis: torch.export.Dim(name) for axis, name in enumerate(input_shape) if isinstance(name, str)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals are not the user's business
        try:
            program = torch.onnx.export(
                graph, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                input_names=[input_name], output_names=["logits"], dynamic_shapes=(dynamic,),
            )
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ExportError(f"torch.onnx.export failed at opset {opset} ({type(e).__name__}: {first}); try the default --opset {DEFAULT_OPSET}") from None
    return program.model_proto


def _check_graph(proto, opset: int) -> None:
    got = {o.domain: o.version for o in proto.opset_import}
    if got.get("", got.get("ai.onnx")) != opset:
        raise ExportError(f"the exporter could not convert the graph to opset {opset} (it has {got}); try the default --opset {DEFAULT_OPSET}")
    odd = {n.domain for n in proto.graph.node} - STANDARD_DOMAINS
    if odd:
        raise ExportError(f"the exported graph uses non-standard operator domains {sorted(odd)}")


@torch.no_grad()
def _compare(ort, path: Path, reference: nn.Module, input_name: str, check: torch.Tensor) -> Tuple[float, float]:
    """(max |onnxruntime - PyTorch|, max |PyTorch|) of the logits for ``check``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {input_name: check.numpy()})[0]
    except Exception as e:  # e.g. an opset newer than this onnxruntime implements
        message = " ".join(str(e).split())[:300]
        raise ExportError(f"onnxruntime {ort.__version__} cannot run the exported file: {message}") from None
    want = reference(check).numpy()
    if got.shape != want.shape:
        raise ExportError(f"onnxruntime returned logits of shape {got.shape}, PyTorch {want.shape}")
    return float(abs(got - want).max()), float(abs(want).max())


def export_onnx(
    release_dir: Union[str, Path],
    out: Union[str, Path],
    with_frontend: bool = False,
    opset: Optional[int] = None,
    tolerance: float = 1e-3,
) -> ExportReport:
    """Export the release in ``release_dir`` to ``out`` and check it in onnxruntime.

    ``opset`` defaults to :data:`DEFAULT_OPSET`. The file is written to a
    temporary sibling and renamed into place only once onnxruntime's logits
    are within ``tolerance`` of PyTorch's; otherwise :class:`ExportError`.
    """
    start = time.perf_counter()
    onnx, ort = _require_onnx()
    opset = _check_opset(opset, onnx)
    if not tolerance > 0:
        raise ExportError(f"--tolerance must be positive, got {tolerance}")
    release = load_release(release_dir)  # ReleaseError (a ValueError) names what is wrong
    out = Path(out)
    tmp = _reserve_output(out)
    try:
        graph, reference, input_name, input_shape, example, check = _graph_and_reference(release, with_frontend)
        log.info("exporting %s (%s) at opset %d", release.name, "waveform in" if with_frontend else "log-mel in", opset)
        proto = _trace(graph, example, input_name, input_shape, opset)
        _check_graph(proto, opset)
        onnx.helper.set_model_props(proto, onnx_metadata(release, with_frontend))
        proto.doc_string = f"audio_dcls {release.arch} audio tagger (release {release.name}); see metadata 'input' and 'output'"
        onnx.save(proto, str(tmp))
        log.info("checking the file in onnxruntime %s against PyTorch", ort.__version__)
        diff, scale = _compare(ort, tmp, reference, input_name, check)
        if not diff <= tolerance:
            raise ExportError(f"onnxruntime and PyTorch logits differ by up to {diff:.2e}, more than --tolerance {tolerance:.0e}; nothing written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        path=out, release=release.name, arch=release.arch, with_frontend=with_frontend, opset=opset,
        input_name=input_name, input_shape=input_shape, num_classes=len(release.labels), max_abs_diff=diff, max_abs_logit=scale,
        check_shape=tuple(check.shape), tolerance=tolerance, seconds=time.perf_counter() - start, num_bytes=out.stat().st_size,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.export_onnx", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", help="release folder (model.safetensors, config.yaml, labels.csv)")
    p.add_argument("--out", required=True, help="the .onnx file to write (its folder is created)")
    p.add_argument("--with-frontend", action="store_true", help="waveform in: STFT, mel, dB and normalisation inside the graph")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset, {MIN_OPSET} or later (default {DEFAULT_OPSET})")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |onnxruntime - PyTorch| on the logits (default %(default)s)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    # Our progress at INFO; the exporter's optimiser passes log hundreds of INFO lines of their own.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    # A failed opset conversion is logged there with a traceback; export_onnx reports it in one line.
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    try:
        report = export_onnx(args.release, args.out, with_frontend=args.with_frontend, opset=args.opset, tolerance=args.tolerance)
    except KeyboardInterrupt:
        print("export_onnx: interrupted", file=sys.stderr)
        return 130
    except (ExportError, ValueError, OSError) as e:
        print(f"export_onnx: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
