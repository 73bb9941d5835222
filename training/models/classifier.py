"""The MLMT multi-label classifier: a torchvision ResNet with one sigmoid output per class."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet

DEPTHS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}


def multilabel_resnet(num_classes: int, depth: int = 101) -> nn.Module:
    """ResNet-``depth`` whose ``fc`` gives one logit per class (apply a sigmoid for probabilities).

    State-dict names are torchvision's, so ImageNet weights load with ``load_backbone_weights``
    (the ``fc`` of another size is skipped and reported).
    """
    if depth not in DEPTHS:
        raise ValueError(f"classifier depth must be one of {sorted(DEPTHS)}, not {depth}")
    return DEPTHS[depth](weights=None, num_classes=num_classes)
