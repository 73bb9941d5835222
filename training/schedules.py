"""Learning-rate schedules as closed forms of the iteration (LambdaLR).

Closed forms, unlike torch's recursive PolynomialLR/CosineAnnealingLR, let a resumed run change
``train.iterations``: the learning rate is that of the new schedule at the current iteration
(a finished recursive schedule would stay at 0 forever).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def poly(optimizer: torch.optim.Optimizer, total: int, power: float = 0.9) -> LambdaLR:
    """lr * (1 - iteration / total) ** power (the paper's poly policy)."""
    return LambdaLR(optimizer, lambda it: max(0.0, 1.0 - it / total) ** power)


def cosine(optimizer: torch.optim.Optimizer, total: int, lr: float, lr_min: float) -> LambdaLR:
    """Cosine from ``lr`` down to ``lr_min`` over ``total`` iterations (MLMT)."""
    floor = lr_min / lr

    def factor(it: int) -> float:
        return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * min(it, total) / total)) / 2

    return LambdaLR(optimizer, factor)


def resync(scheduler: LambdaLR) -> None:
    """After loading a checkpoint: set each group's lr from the (possibly longer) schedule.

    The optimiser state holds the lr of the old schedule, which the next step would still use.
    With an unchanged schedule this writes the very same value, so exact resume is kept.
    """
    epoch = scheduler.last_epoch
    for group, base, factor in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(epoch)
