"""The classifier gate (paper eq. 7): the one definition used by evaluation and by export.

(``s4seg.export.graphs.Gate`` wraps this function for ONNX; tests check the two agree.)

Classes whose image-level probability is at most ``tau`` can not be predicted: their scores are
set to -inf before the argmax (not to 0, as the authors' code does with raw logits, where a
suppressed class can still win). The background class is never suppressed. A pixel whose every
class is suppressed (possible only without a background class) keeps its ungated argmax.
"""

from __future__ import annotations

import torch

from s4seg.manifest import PAPER_TAU

DEFAULT_TAU = PAPER_TAU


def class_keep_mask(
    class_probs: torch.Tensor, tau: torch.Tensor | float, background_index: int | None
) -> torch.Tensor:
    """(N, C) booleans: which classes may be predicted in each image."""
    keep = class_probs > tau
    if background_index is not None:
        keep[:, background_index] = True
    return keep


def gated_argmax(
    scores: torch.Tensor,
    class_probs: torch.Tensor,
    tau: torch.Tensor | float = DEFAULT_TAU,
    background_index: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores`` (N, C, H, W) logits or probabilities, ``class_probs`` (N, C).

    Returns the label map (N, H, W, int64) and the suppressed classes (N, C, bool).
    """
    keep = class_keep_mask(class_probs, tau, background_index)
    masked = scores.masked_fill(~keep[:, :, None, None], float("-inf"))
    gated = masked.argmax(1)
    ungated = scores.argmax(1)
    any_kept = keep.any(1)[:, None, None]
    return torch.where(any_kept, gated, ungated), ~keep
