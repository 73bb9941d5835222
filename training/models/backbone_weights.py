"""Optional ImageNet initialisation of the backbone from a local torchvision-format file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from s4seg.errors import CheckpointError


@dataclass
class LoadReport:
    path: str
    matched: int = 0
    total: int = 0
    shape_mismatch: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"backbone weights {self.path}: {self.matched}/{self.total} tensors loaded"]
        if self.unused:
            parts.append(f"{len(self.unused)} unused ({', '.join(self.unused[:4])})")
        if self.shape_mismatch:
            parts.append(
                f"{len(self.shape_mismatch)} of another shape "
                f"({', '.join(self.shape_mismatch[:4])})"
            )
        if self.missing:
            parts.append(f"{len(self.missing)} left at random init ({', '.join(self.missing[:4])})")
        return "; ".join(parts)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> LoadReport:
    """Copy every tensor whose name and shape match (e.g. ``resnet101-63fe2227.pth``).

    Names are matched after removing ``module.``/``backbone.`` prefixes; the ImageNet ``fc``
    layer has no counterpart and is reported as unused.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read backbone weights {path}: {error}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state_dict")
    cleaned = {}
    for name, tensor in state.items():
        for prefix in ("module.", "backbone."):
            name = name.removeprefix(prefix)
        cleaned[name] = tensor
    own = backbone.state_dict()
    report = LoadReport(path=str(path), total=len(own))
    merged = dict(own)
    for name, tensor in cleaned.items():
        if name not in own:
            report.unused.append(name)
        elif own[name].shape != tensor.shape:
            report.shape_mismatch.append(name)
        else:
            merged[name] = tensor
            report.matched += 1
    report.missing = [n for n in own if n not in cleaned or n in report.shape_mismatch]
    if report.matched == 0:
        raise CheckpointError(
            f"no tensor of {path} matches the backbone (is it a torchvision ResNet of this depth?)"
        )
    backbone.load_state_dict(merged)
    return report
