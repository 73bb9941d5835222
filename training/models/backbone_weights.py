"""Optional ImageNet initialisation of the backbone: ``imagenet`` (torchvision's weights of the
chosen ResNet depth, from torch's cache or downloaded into it) or a torchvision-format file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from s4seg.errors import CheckpointError

IMAGENET = "imagenet"  # the value of model.pretrained_backbone / mlmt.pretrained_backbone


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


def imagenet_weights(depth: int) -> models.WeightsEnum:
    """torchvision's ImageNet weights for a ResNet of ``depth`` (V1: the classic ones, as in the
    paper's time; e.g. ``resnet101-63fe2227.pth``)."""
    enum = getattr(models, f"ResNet{depth}_Weights", None)
    if enum is None:
        raise CheckpointError(f"torchvision has no ImageNet weights for a ResNet-{depth}")
    return enum.IMAGENET1K_V1


def imagenet_file(depth: int) -> Path:
    """Where torch's cache keeps them (``$TORCH_HOME/hub/checkpoints/``, as torchvision does)."""
    name = Path(imagenet_weights(depth).url).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch_imagenet(depth: int) -> Path:
    """The cached file, or download it into the cache; offline without it: one line that says
    which file, from where, and where to put it."""
    target = imagenet_file(depth)
    if target.is_file():
        return target
    url = imagenet_weights(depth).url
    hashed = torch.hub.HASH_REGEX.search(target.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written to a temporary name and moved into place: no half file in the cache.
        torch.hub.download_url_to_file(url, str(target), hashed.group(1) if hashed else None)
    except Exception as error:
        raise CheckpointError(
            f"ImageNet weights for ResNet-{depth} are not in torch's cache and could not be "
            f"downloaded ({type(error).__name__}: {error}): download {url} and put it at "
            f"{target} (or set the option to a local .pth file)"
        ) from None
    return target


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, depth: int | None = None
) -> LoadReport:
    """Copy every tensor whose name and shape match (e.g. ``resnet101-63fe2227.pth``).

    ``path`` may be ``imagenet``: torchvision's weights for a ResNet of ``depth``. Names are
    matched after removing ``module.``/``backbone.`` prefixes; the ImageNet ``fc`` layer has no
    counterpart and is reported as unused.
    """
    if str(path) == IMAGENET:
        if depth is None:
            raise CheckpointError("imagenet weights need the backbone depth")
        path = fetch_imagenet(depth)
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
