"""Joint image/mask transforms (torchvision.transforms.v2): random scale, padded crop, flip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from s4seg import IGNORE_INDEX


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range`` (masks: nearest neighbour).

    v2 offers size-based random resizes; DeepLab's augmentation scales relative to the image.
    """

    def __init__(self, scale_range: Sequence[float]) -> None:
        super().__init__()
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.resize(inpt, params["size"], antialias=True)


def train_transform(
    crop_size: Sequence[int],
    scale_range: Sequence[float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """Random scale, crop padded with the mean colour (image) and the ignore label (mask), flip."""
    fill = {tv_tensors.Image: tuple(round(255 * m) for m in mean), tv_tensors.Mask: IGNORE_INDEX}
    steps: list[v2.Transform] = [
        RandomScale(scale_range),
        v2.RandomCrop(tuple(crop_size), pad_if_needed=True, fill=fill),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += _to_model_input(mean, std)
    return v2.Compose(steps)


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Whole image, single scale (the paper's evaluation)."""
    return v2.Compose(_to_model_input(mean, std))


def _to_model_input(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
