"""The torch view of a data layout: decoded, validated, jointly transformed samples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from s4seg import IGNORE_INDEX
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
        audit: bool = False,
    ) -> None:
        """``with_mask`` False (an unlabeled stream): items carry ``pad``, the pixels the crop
        padded (ignored by the losses); with ``audit`` also ``audit_mask``, the true mask where
        the image has one (ignore elsewhere): for logging how good pseudo-labels are, never for
        training."""
        self.layout, self.samples = layout, samples
        self.transform, self.with_mask, self.audit = transform, with_mask, audit

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
        truth = mask
        if not self.with_mask and self.audit:
            truth = tv_tensors.Mask(
                torch.from_numpy(self.layout.read_mask(sample))
                if sample.mask is not None and sample.mask.is_file()
                else torch.full((height, width), IGNORE_INDEX, dtype=torch.uint8)
            )
        if self.transform is not None:
            # One call for every input: the same random draws (scale, crop, flip) for all.
            if seed is None:
                image, mask, truth = self.transform(image, mask, truth)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image, mask, truth = self.transform(image, mask, truth)
        item = {"image": image.as_subclass(torch.Tensor), "index": index}
        if self.with_mask:
            item["mask"] = mask.as_subclass(torch.Tensor)
        else:
            item["pad"] = mask.as_subclass(torch.Tensor) == IGNORE_INDEX
            if self.audit:
                item["audit_mask"] = truth.as_subclass(torch.Tensor)
        return item
