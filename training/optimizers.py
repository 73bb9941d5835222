"""The segmenter's optimiser from ``optim``: the paper's SGD or UniMatch V2's AdamW, over the
model's parameter groups (encoder at ``lr``, head at ``head_lr_mult * lr``)."""

from __future__ import annotations

import torch

from .config import OptimConfig


def segmenter_optimizer(groups: list[dict], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.optimizer == "adamw":
        # UniMatch V2: weight decay on every parameter (norms, biases, position embedding too).
        return torch.optim.AdamW(
            groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
        )
    return torch.optim.SGD(
        groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )
