"""The classifier gate (paper eq. 7): the one definition used by evaluation and by export.

(``s4seg.export.graphs.Gate`` wraps this function for ONNX; tests check the two agree.)

Classes whose image-level probability is at most ``tau`` can not be predicted: their scores are
pushed below every logit before the argmax (not set to 0, as the authors' code does with raw
logits, where a suppressed class can still win). The background class is never suppressed. A
pixel whose every class is suppressed (possible only without a background class) keeps its
ungated argmax, and then nothing counts as suppressed (``suppressed`` says what was applied).

``gated_scores`` is the gate itself; the label map is its argmax. The server resizes the gated
scores to the photo's size before that argmax (s4seg.letterbox), which is still exactly eq. 7.
"""

from __future__ import annotations

import torch

from s4seg.manifest import PAPER_TAU
from s4seg.tensors import SUPPRESSED_SCORE

DEFAULT_TAU = PAPER_TAU


def class_keep_mask(
    class_probs: torch.Tensor, tau: torch.Tensor | float, background_index: int | None
) -> torch.Tensor:
    """(N, C) booleans: which classes may be predicted in each image."""
    keep = class_probs > tau
    if background_index is not None:
        keep[:, background_index] = True
    return keep


def gated_scores(
    scores: torch.Tensor,
    class_probs: torch.Tensor,
    tau: torch.Tensor | float = DEFAULT_TAU,
    background_index: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores`` (N, C, H, W) with the classes eq. 7 suppresses at ``SUPPRESSED_SCORE`` (images
    where every class is suppressed keep their scores), and the classes suppressed (N, C):
    none in an image whose every class fell below tau, since there the gate was not applied."""
    keep = class_keep_mask(class_probs, tau, background_index)
    masked = scores.masked_fill(~keep[:, :, None, None], SUPPRESSED_SCORE)
    any_kept = keep.any(1, keepdim=True)
    return torch.where(any_kept[:, :, None, None], masked, scores), ~keep & any_kept


def gated_argmax(
    scores: torch.Tensor,
    class_probs: torch.Tensor,
    tau: torch.Tensor | float = DEFAULT_TAU,
    background_index: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores`` (N, C, H, W) logits or probabilities, ``class_probs`` (N, C).

    Returns the label map (N, H, W, int64) and the suppressed classes (N, C, bool).
    """
    gated, suppressed = gated_scores(scores, class_probs, tau, background_index)
    return gated.argmax(1), suppressed
