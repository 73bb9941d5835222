"""The s4GAN discriminator as an optional graph of an export (issue 34, items 2-3): D's
probability that a segmentation is a labeled one, given the image, for ``s4seg queue --strategy
discriminator`` (label first what D finds least like a label). Not a step of the served
ensemble: publish copies the three steps only, so serving is unchanged.

discriminator: image (N, h, w, 3) uint8 (the letterboxed canvas), logits (N, C, h, w) float32
(the segmenter's) -> d_score (N,) float32 in [0, 1]; D's own input as in training: softmax of
the logits and the normalised image scaled to [0, 1]. (Training's ``gan.d_ignore=zero`` blanks
the maps where a crop was padded; the letterbox's bars are not blanked here.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from s4seg.letterbox import Framing
from s4seg.manifest import DiscriminatorGraph
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.tensors import D_SCORE, IMAGE, LOGITS
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.losses import minmax01
from s4seg.training.models.discriminator import Discriminator

from .fold import graph_file
from .onnx_export import ExportError, export_onnx

FILE = "discriminator.onnx"
TOLERANCE = 1e-4  # the most |ONNX - PyTorch| of a score may differ


class DiscriminatorScore(nn.Module):
    """D on what training showed it: the softmax of the logits, and the image normalised as the
    segmenter's input, then scaled to [0, 1] per image (``minmax01``, the training code's)."""

    def __init__(self, discriminator: Discriminator, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        normalised = (image.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        logit, _ = self.discriminator(logits.softmax(1), minmax01(normalised))
        return torch.sigmoid(logit)


def discriminator_of(seg: Checkpoint) -> DiscriminatorScore | None:
    """The trained discriminator of an s4GAN checkpoint (None for other trainers')."""
    if seg.discriminator is None:
        return None
    width = int(seg.discriminator["features.0.weight"].shape[0])
    model = Discriminator(len(seg.classes), width=width)
    model.load_state_dict(seg.discriminator)
    norm = seg.normalization
    return DiscriminatorScore(model, list(norm["mean"]), list(norm["std"])).eval()


def export_discriminator(
    seg: Checkpoint, work: Path, pipeline: OnnxPipeline, images: list[np.ndarray], log
) -> DiscriminatorGraph | None:
    """``discriminator.onnx`` in ``work`` with its parity on the parity images (their canvases
    and the exported segmenter's logits), or None when the checkpoint has no discriminator."""
    module = discriminator_of(seg)
    if module is None:
        return None
    log("export: discriminator (optional: s4seg queue --strategy discriminator)")
    h, w = pipeline.manifest.input_size
    classes = len(seg.classes)
    example = {
        IMAGE.name: torch.zeros(2, h, w, 3, dtype=torch.uint8),
        LOGITS.name: torch.zeros(2, classes, h, w),
    }
    dynamic = {
        IMAGE.name: {0: "batch", 1: "height", 2: "width"},
        LOGITS.name: {0: "batch", 2: "height", 3: "width"},
    }
    export_onnx(module, example, [D_SCORE.name], work / FILE, dynamic)
    canvases, views, _ = Framing.of(pipeline.manifest).batch(images)
    logits = pipeline.run(canvases, views, keep_logits=True).logits
    assert logits is not None  # asked for
    session = pipeline.open_extra(work / FILE)
    (onnx_scores,) = session.run(None, {IMAGE.name: canvases, LOGITS.name: logits})
    with torch.no_grad():
        torch_scores = module(torch.from_numpy(canvases), torch.from_numpy(logits)).numpy()
    difference = float(np.abs(onnx_scores - torch_scores).max())
    if difference > TOLERANCE:
        raise ExportError(f"the discriminator's ONNX scores differ from PyTorch's by {difference}")
    return DiscriminatorGraph(
        graph=graph_file(work / FILE), parity_images=len(images), max_abs_difference=difference
    )
