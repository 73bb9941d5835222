"""The torch view of a data layout: decoded, validated, jointly transformed samples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from s4seg.errors import DatasetError
from s4seg.layouts import DataLayout, Sample


class SegmentationDataset(Dataset):
    """Samples of one layout; ``dataset[(index, seed)]`` applies the transform under that seed.

    Seeding each sample (instead of relying on worker RNG) is what makes resumed runs and runs
    with any number of loader workers see exactly the same augmentations.
    """

    def __init__(
        self,
        layout: DataLayout,
        samples: list[Sample],
        transform: Callable | None = None,
        with_mask: bool = True,
    ) -> None:
        self.layout, self.samples = layout, samples
        self.transform, self.with_mask = transform, with_mask

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        pixels = np.array(self.layout.read_image(sample))
        image = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1))
        height, width = image.shape[-2:]
        if self.with_mask:
            mask = tv_tensors.Mask(torch.from_numpy(self.layout.read_mask(sample)))
            if mask.shape != (height, width):
                raise DatasetError(
                    f"mask {sample.mask} is {tuple(mask.shape)} but image {sample.image} is "
                    f"{(height, width)}"
                )
        else:
            mask = tv_tensors.Mask(torch.zeros((height, width), dtype=torch.uint8))
        if self.transform is not None:
            if seed is None:
                image, mask = self.transform(image, mask)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image, mask = self.transform(image, mask)
        item = {"image": image.as_subclass(torch.Tensor), "index": index}
        if self.with_mask:
            item["mask"] = mask.as_subclass(torch.Tensor)
        return item
