"""The exported pipeline run in-process (no server, no torch): ONNX Runtime, or OpenVINO for the
segmenter and the classifier (``s4seg.engines``).

It runs the same three ONNX files, in the same order, as the Triton ensemble: export uses it for
its parity check, ``s4seg evaluate --onnx`` and ``s4seg predict --via local`` use it to serve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s4seg.engines import check_engine, open_onnxruntime, open_session
from s4seg.features import with_pooled_features
from s4seg.manifest import GATE_OFF_TAU, Manifest, ManifestError
from s4seg.tensors import CLASS_PROBS, CLS_IMAGE, IMAGE, LOGITS, TAU

UNGATED_TAU = GATE_OFF_TAU
"""A tau below every probability: the gate keeps all classes (``gate=false``)."""


@dataclass
class PipelineOutput:
    labels: np.ndarray  # (N, H, W) uint8
    class_probs: np.ndarray  # (N, C) float32
    suppressed: np.ndarray  # (N, C) bool
    scores: np.ndarray  # (N, C, H, W) float32: gated scores, labels = their argmax
    logits: np.ndarray | None = None  # (N, C, H, W) float32, only when asked for
    features: np.ndarray | None = None  # (N, D) float32: the classifier's pooled features
    d_score: np.ndarray | None = None  # (N,) float32: s4GAN's discriminator, when asked for


def gpu_present() -> bool:
    """A CUDA device node exists (checked without torch or a CUDA call)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def choose_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers: CUDA where a GPU is (``auto``) or asked for, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device == "cuda" or (device == "auto" and gpu_present())
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ManifestError("--device cuda: this onnxruntime has no CUDA execution provider")
    if want_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def graph_files(manifest: Manifest, folder: Path, precision: str = "fp32") -> dict[str, Path]:
    """Step -> ONNX file of an export in ``precision`` (fp32, fp16, int8; bf16: the FP32 files
    its variant names)."""
    graphs = manifest.variant_graphs(precision)
    return {step: folder / graph.file for step, graph in graphs.items()}


def check_batch(images: np.ndarray, views: np.ndarray, view_size: int) -> None:
    """What every pipeline (in-process or Triton) is given: a bad batch is named here, not
    deep inside a graph."""
    for name, batch in (("images", images), ("views", views)):
        if (
            not isinstance(batch, np.ndarray)
            or batch.dtype != np.uint8
            or batch.ndim != 4
            or (batch.shape[-1] != 3)
        ):
            shape = getattr(batch, "shape", type(batch).__name__)
            raise ValueError(
                f"{name} must be (N, H, W, 3) uint8, not {shape} {getattr(batch, 'dtype', '')}"
            )
    if views.shape[1:3] != (view_size, view_size) or len(views) != len(images):
        raise ValueError(
            f"views must be {len(images)} x {view_size} x {view_size} x 3 (the classifier's "
            f"input), not {views.shape}"
        )


# The steps that hold the networks (each with its normalisation folded in): the ones a runtime
# and precision are chosen for. The gate is a few element-wise ops and an argmax, in FP32 ONNX
# Runtime everywhere.
MODEL_STEPS = ("segmenter", "classifier")


class OnnxPipeline:
    """segmenter + classifier -> gate, as three sessions: the two networks (uint8 images in) in
    ``runtime`` at ``precision`` (the files must be that precision's graphs), the gate in ONNX
    Runtime."""

    def __init__(
        self,
        manifest: Manifest,
        files: dict[str, Path],
        device: str = "auto",
        spin: bool = False,
        runtime: str = "onnxruntime",
        precision: str = "fp32",
        threads: int | None = None,
        features: bool = False,
    ) -> None:
        """``features``: the classifier answers its pooled features too (``s4seg.features``;
        ONNX Runtime only), for ranking images rather than serving them."""
        check_engine(runtime, precision)
        if features and runtime != "onnxruntime":
            raise ManifestError("the classifier's features are read in ONNX Runtime only")
        self.manifest, self.runtime, self.precision = manifest, runtime, precision
        self.providers = choose_providers(device)
        self.sessions = {}
        for step, path in files.items():
            if not path.is_file():
                raise ManifestError(f"{path} (the {step} graph named by the manifest) is missing")
            if step in MODEL_STEPS and runtime != "onnxruntime":
                self.sessions[step] = open_session(path, runtime, precision, threads=threads)
            elif step == "classifier" and features:
                graph = with_pooled_features(path)
                self.sessions[step] = open_onnxruntime(graph, self.providers, spin, threads)
            else:
                self.sessions[step] = open_onnxruntime(path, self.providers, spin, threads)
        self.spin, self.threads = spin, threads

    def open_extra(self, path: Path):
        """A graph beside the pipeline (the discriminator), in ONNX Runtime like the gate."""
        return open_onnxruntime(path, self.providers, self.spin, self.threads)

    @classmethod
    def from_export(
        cls,
        folder: str | Path,
        device: str = "auto",
        precision: str = "fp32",
        spin: bool = False,
        runtime: str = "onnxruntime",
        threads: int | None = None,
        features: bool = False,
        discriminator: bool = False,
    ) -> OnnxPipeline:
        """The pipeline in a folder written by ``s4seg export`` (``fp16``/``int8``: its variant;
        ``bf16``: the FP32 graphs in OpenVINO at bf16)."""
        folder = Path(folder)
        manifest = Manifest.load(folder)
        files = graph_files(manifest, folder, precision)
        extra = manifest.discriminator
        if discriminator and extra is None:
            raise ManifestError(f"{folder} carries no discriminator (export an s4GAN checkpoint)")
        pipeline = cls(manifest, files, device, spin, runtime, precision, threads, features)
        if discriminator and extra is not None:  # then run() scores each answer with it
            pipeline.sessions["discriminator"] = pipeline.open_extra(folder / extra.graph.file)
        return pipeline

    def run(
        self,
        images: np.ndarray,
        views: np.ndarray,
        tau: float | None = None,
        keep_logits: bool = False,
    ) -> PipelineOutput:
        """``images`` (N, H, W, 3) uint8, all the same size (letterboxed canvases, or images at
        their own size); ``views`` (N, s, s, 3) uint8, the classifier's views of the same images
        (``s4seg.letterbox.Framing``). ``tau`` None: the manifest's."""
        check_batch(images, views, self.manifest.classifier_view_size)
        tau = self.manifest.request_tau(tau)
        (logits,) = self.sessions["segmenter"].run(None, {IMAGE.name: images})
        class_probs, *features = self.sessions["classifier"].run(None, {CLS_IMAGE.name: views})
        taus = np.full((len(images), 1), tau, dtype=TAU.dtype)
        labels, suppressed, scores = self.sessions["gate"].run(
            None,
            {
                LOGITS.name: logits.astype(LOGITS.dtype, copy=False),  # FP16 graphs: back to FP32
                CLASS_PROBS.name: class_probs.astype(CLASS_PROBS.dtype, copy=False),
                TAU.name: taus,
            },
        )
        d_score = None
        if "discriminator" in self.sessions:
            (d_score,) = self.sessions["discriminator"].run(
                None, {IMAGE.name: images, LOGITS.name: logits.astype(np.float32, copy=False)}
            )
        return PipelineOutput(
            labels,
            class_probs.astype(np.float32, copy=False),
            suppressed,
            scores,
            logits if keep_logits else None,
            features[0] if features else None,
            d_score,
        )
