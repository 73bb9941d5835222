"""Mean Teacher pieces: the EMA teacher update and the consistency-weight schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def ema_decay(step: int, max_decay: float = 0.999) -> float:
    """min(1 - 1/(step + 1), max_decay): the teacher follows closely at first, then averages."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


@torch.no_grad()
def update_teacher(
    teacher: nn.Module, student: nn.Module, decay: float, buffers: str = "ema"
) -> None:
    """teacher <- decay * teacher + (1 - decay) * student for the parameters and, with
    ``buffers="ema"``, for the batch-norm statistics too; ``buffers="own"`` leaves the teacher's
    statistics as its own forward passes made them.

    ``buffers="copy"`` takes the student's statistics as they are (this project's first
    version): they were gathered on the student's strong views (colour jitter, blur), so the
    teacher normalised its weak views with statistics of another distribution and with weights
    they do not belong to. Averaging them like the weights keeps statistics and weights of one
    ensemble together. Counters (``num_batches_tracked``) are copied either way.
    """
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    if buffers == "own":
        return
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        if buffers == "ema" and tb.is_floating_point():
            tb.mul_(decay).add_(sb, alpha=1.0 - decay)
        else:
            tb.copy_(sb)


def sigmoid_rampup(progress: float) -> float:
    """exp(-5 (1 - t)^2) for t in [0, 1] (Laine & Aila, used by Mean Teacher)."""
    t = min(max(progress, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_weight(step: int, burn_in: int, rampup: int, weight: float) -> float:
    """0 during burn-in, then ramped up to ``weight`` over ``rampup`` steps."""
    if step < burn_in:
        return 0.0
    if rampup <= 0:
        return weight
    return weight * sigmoid_rampup((step - burn_in) / rampup)
