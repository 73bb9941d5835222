"""Image-level views of a segmentation data set for the MLMT classifier.

Targets are multi-hot vectors of the classes present in a mask (background counts where the data
set has one). Each item carries a weak view (resize, flip: the teacher's) and a strong view
(resize, flip, colour jitter, blur: the student's), both seeded like the segmentation samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from s4seg.defaults import IMAGENET_MEAN, IMAGENET_STD
from s4seg.errors import DatasetError
from s4seg.layouts import DataLayout, Sample


def multi_hot(mask: np.ndarray, num_classes: int) -> torch.Tensor:
    present = np.unique(mask)
    target = torch.zeros(num_classes)
    target[present[present < num_classes].astype(np.int64)] = 1.0
    return target


class RandomRot90:
    """A rotation by 0, 90, 180 or 270 degrees: exact (a permutation of pixels), and the classes
    present stay the same. Only for data whose classes do not depend on orientation."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, int(torch.randint(4, ())), dims=(-2, -1))


def _geometry(geometric: bool) -> list:
    """Horizontal flip (the paper); with ``geometric``, vertical flips and quarter turns too."""
    if not geometric:
        return [v2.RandomHorizontalFlip()]
    return [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]


def weak_view(size: int, geometric: bool = False) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            *_geometry(geometric),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def strong_view(size: int, geometric: bool = False) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            *_geometry(geometric),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
            v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_view(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def read_weak_labels(path: str | Path, classes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``{image id: [class names]}`` -> multi-hot targets (Table 7's image-level labels)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"weak-label file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"weak-label file {path} is not valid JSON: {error}") from None
    targets = {}
    for image_id, names in data.items():
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DatasetError(f"{path}: image {image_id} names unknown classes {unknown}")
        target = torch.zeros(len(classes))
        target[[classes.index(n) for n in names]] = 1.0
        targets[image_id] = target
    return targets


class MultiLabelDataset(Dataset):
    """``dataset[(index, seed)]`` -> weak and strong views, and the target where there is one."""

    def __init__(
        self,
        layout: DataLayout,
        samples: list[Sample],
        size: int,
        targets: dict[str, torch.Tensor] | None = None,
        labeled: bool = True,
        evaluation: bool = False,
        geometric: bool = False,
    ) -> None:
        self.layout, self.samples, self.labeled = layout, samples, labeled
        self.targets = targets or {}
        self.weak = eval_view(size) if evaluation else weak_view(size, geometric)
        self.strong = None if evaluation else strong_view(size, geometric)

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, sample: Sample) -> torch.Tensor:
        if sample.id in self.targets:
            return self.targets[sample.id]
        return multi_hot(self.layout.read_mask(sample), self.layout.num_classes)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        pixels = torch.from_numpy(np.array(self.layout.read_image(sample))).permute(2, 0, 1)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            item = {"weak": self.weak(pixels), "index": index}
            if self.strong is not None:
                item["strong"] = self.strong(pixels)
        if self.labeled:
            item["target"] = self.target(sample)
        return item
