"""The MLMT multi-label classifier: a torchvision ResNet with one sigmoid output per class, and
building it from configs and checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from torchvision.models import resnet

from s4seg.errors import CheckpointError, first_line

if TYPE_CHECKING:  # only for the hint: models stay free of the config (export imports them)
    from ..checkpoint import Checkpoint
    from ..config import MlmtConfig

DEPTHS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}


def multilabel_resnet(num_classes: int, depth: int = 101) -> nn.Module:
    """ResNet-``depth`` whose ``fc`` gives one logit per class (apply a sigmoid for probabilities).

    State-dict names are torchvision's, so ImageNet weights load with ``load_backbone_weights``
    (the ``fc`` of another size is skipped and reported).
    """
    if depth not in DEPTHS:
        raise ValueError(f"classifier depth must be one of {sorted(DEPTHS)}, not {depth}")
    return DEPTHS[depth](weights=None, num_classes=num_classes)


def classifier_arch(mlmt_cfg: MlmtConfig, num_classes: int) -> dict:
    """What it takes to rebuild the classifier (stored in checkpoints, checked on resume)."""
    return {
        "name": "resnet-multilabel",
        "depth": mlmt_cfg.depth,
        "num_classes": num_classes,
        "input_size": mlmt_cfg.input_size,
    }


def classifier_from_checkpoint(checkpoint: Checkpoint) -> nn.Module:
    """The teacher of an MLMT checkpoint (what evaluation and export use)."""
    source = checkpoint.source
    if checkpoint.kind != "classifier":
        raise CheckpointError(f"{source} is a {checkpoint.kind} checkpoint, not a classifier")
    arch = checkpoint.arch
    model = multilabel_resnet(arch["num_classes"], arch["depth"])
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: weights do not fit {arch}: {first_line(error)}") from None
    return model
