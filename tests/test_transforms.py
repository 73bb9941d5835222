"""Joint augmentation: image and mask move together; crops are padded with the ignore label."""

import torch
from torchvision import tv_tensors

from s4seg.training.data.sampler import ResumableSampler
from s4seg.training.data.transforms import train_transform

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _pair(height: int = 20, width: int = 30):
    # The mask is a function of the image (class = column band), so any misalignment shows.
    columns = torch.arange(width) * 3 // width
    mask = columns.expand(height, width).to(torch.uint8)
    image = (mask * 100).expand(3, height, width).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def test_image_and_mask_stay_aligned_through_scale_crop_flip() -> None:
    transform = train_transform((16, 16), (0.5, 1.5), True, MEAN, STD)
    for seed in range(20):
        torch.manual_seed(seed)
        image, mask = transform(*_pair())
        assert image.shape == (3, 16, 16) and mask.shape == (16, 16)
        labeled = mask != 255
        expected = (mask[labeled].float() * 100 / 255 - 0.5) / 0.5
        # Bilinear resizing blurs the image at band edges (the mask is resized nearest), so allow
        # a thin seam; a flip or crop applied to one of the two would mismatch most pixels.
        agree = (image[0][labeled] - expected).abs() < 0.25
        assert agree.float().mean() > 0.85


def test_crop_larger_than_image_pads_mask_with_ignore() -> None:
    transform = train_transform((64, 64), (1.0, 1.0), False, MEAN, STD)
    _, mask = transform(*_pair())
    assert (mask == 255).sum() == 64 * 64 - 20 * 30
    assert set(mask.unique().tolist()) == {0, 1, 2, 255}


def test_sampler_resumes_and_ranks_are_disjoint() -> None:
    full = ResumableSampler(10, seed=1)
    stream = iter(full)
    first = [next(stream) for _ in range(25)]
    resumed = iter(ResumableSampler(10, seed=1, start=13))
    assert [next(resumed) for _ in range(12)] == first[13:]
    rank0 = iter(ResumableSampler(10, seed=1, rank=0, world_size=2))
    rank1 = iter(ResumableSampler(10, seed=1, rank=1, world_size=2))
    both = [next(rank0) for _ in range(5)] + [next(rank1) for _ in range(5)]
    assert sorted(i for i, _ in both) == list(range(10))  # one epoch split across two ranks
    assert len({s for _, s in first}) == 25  # every position has its own augmentation seed
