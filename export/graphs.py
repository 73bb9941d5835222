"""The four graphs of the served pipeline as torch modules, exactly as they are exported.

preprocess: UINT8 NHWC image + classifier view -> normalised FP32 NCHW of each (segmenter,
            classifier); the view is made by the caller (s4seg.letterbox.classifier_view)
segmenter:  seg_input -> logits at the input's resolution (bilinear, align_corners as in training)
classifier: cls_input -> per-class probabilities (sigmoid); without MLMT every class gets 1.0
gate:       logits, class_probs, tau -> labels (UINT8), suppressed (BOOL), gated scores (FP32):
            training's gate function
"""

from __future__ import annotations

import torch
from torch import nn

from s4seg import tensors
from s4seg.training.gate import gated_scores
from s4seg.training.models import upsample_logits

# The graphs' input and output names (their dtypes and shapes: s4seg.tensors).
IMAGE, CLS_IMAGE, TAU = tensors.IMAGE.name, tensors.CLS_IMAGE.name, tensors.TAU.name
SEG_INPUT, CLS_INPUT = tensors.SEG_INPUT.name, tensors.CLS_INPUT.name
LOGITS, CLASS_PROBS = tensors.LOGITS.name, tensors.CLASS_PROBS.name
LABELS, SUPPRESSED, SCORES = tensors.LABELS.name, tensors.SUPPRESSED.name, tensors.SCORES.name


class Preprocess(nn.Module):
    """Normalisation only. The classifier's view comes in already resized: made from the whole
    image, as training's ``Resize((size, size))`` makes it, and not from the letterboxed canvas,
    whose pad bars the classifier never saw in training."""

    mean: torch.Tensor
    std: torch.Tensor
    cls_mean: torch.Tensor
    cls_std: torch.Tensor

    def __init__(
        self,
        mean: list[float],
        std: list[float],
        classifier_mean: list[float],
        classifier_std: list[float],
        pixel_scale: float = 1 / 255,
    ) -> None:
        super().__init__()
        self.pixel_scale = pixel_scale
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("cls_mean", torch.tensor(classifier_mean).view(1, 3, 1, 1))
        self.register_buffer("cls_std", torch.tensor(classifier_std).view(1, 3, 1, 1))

    def forward(
        self, image: torch.Tensor, classifier_image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = image.permute(0, 3, 1, 2).float() * self.pixel_scale
        view = classifier_image.permute(0, 3, 1, 2).float() * self.pixel_scale
        return (pixels - self.mean) / self.std, (view - self.cls_mean) / self.cls_std


class Segmenter(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, seg_input: torch.Tensor) -> torch.Tensor:
        return upsample_logits(self.model(seg_input), seg_input.shape[-2:])


class Classifier(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, cls_input: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(cls_input))


class NoClassifier(nn.Module):
    """Stands in for MLMT when none was trained: every class is present, the gate keeps all."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, cls_input: torch.Tensor) -> torch.Tensor:
        return cls_input.new_ones(cls_input.shape[0], self.num_classes)


class Gate(nn.Module):
    """Eq. 7 + argmax. The same ``gated_scores`` that evaluation uses, not a second copy; the
    gated scores are an output too, for label maps at the photo's resolution."""

    def __init__(self, background_index: int | None) -> None:
        super().__init__()
        self.background_index = background_index

    def forward(
        self, logits: torch.Tensor, class_probs: torch.Tensor, tau: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, suppressed = gated_scores(logits, class_probs, tau, self.background_index)
        return scores.argmax(1).to(torch.uint8), suppressed, scores
