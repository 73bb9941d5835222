"""Label maps at the photo's resolution: gated scores resized bilinearly, then the argmax; and
reduced-scale JPEG decoding for requests that only need the served size."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from s4seg.imaging import decode_image
from s4seg.letterbox import labels_from_scores, letterbox
from s4seg.tensors import SUPPRESSED_SCORE
from s4seg.training.gate import gated_scores
from s4seg.workflows.bench.mapback import nearest_map_back


def smooth_scores(classes: int, size: int, seed: int) -> np.ndarray:
    coarse = torch.randn(1, classes, 12, 12, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


@pytest.mark.parametrize(
    "original", [(300, 400), (1000, 750), (97, 211), (40, 40), (128, 128), (1, 500)]
)
def test_labels_equal_bilinear_scores_then_argmax(original: tuple[int, int]) -> None:
    scores = smooth_scores(5, 64, seed=sum(original))
    canvas = np.zeros((*original, 3), dtype=np.uint8)
    _, placement = letterbox(canvas, (64, 64), (0, 0, 0))
    labels = labels_from_scores(scores, placement)
    top, left = placement.offset
    crop = scores[:, top : top + placement.content[0], left : left + placement.content[1]]
    expected = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(crop))[None], size=original, mode="bilinear"
    )[0].argmax(0)
    assert labels.shape == original and labels.dtype == np.uint8
    # Exact up to float rounding at ties (numpy and torch sum in another order).
    assert (labels == expected.numpy()).mean() > 0.9999


def test_edges_follow_the_photo_not_the_served_grid() -> None:
    """A disc: nearest-neighbour labels step in blocks of the scale factor; these do not."""
    size, scale = 32, 16
    yy, xx = np.mgrid[:size, :size] + 0.5
    inside = 10.0 - np.hypot(yy - size / 2, xx - size / 2)  # > 0 inside a radius of 10
    scores = np.stack([np.zeros_like(inside), inside]).astype(np.float32)
    _, placement = letterbox(np.zeros((size * scale,) * 2 + (3,), np.uint8), (size, size), (0,) * 3)
    smooth = labels_from_scores(scores, placement)
    blocky = nearest_map_back(scores.argmax(0).astype(np.uint8), placement)
    big = size * scale
    yy, xx = np.mgrid[:big, :big] + 0.5
    truth = np.hypot(yy - big / 2, xx - big / 2) < 10 * scale
    assert (smooth != truth).mean() < 0.2 * (blocky != truth).mean()


def test_suppressed_classes_never_win_after_resizing() -> None:
    logits = torch.from_numpy(smooth_scores(4, 32, seed=3))[None] * 5
    probs = torch.tensor([[0.9, 0.9, 0.05, 0.9]])  # class 2 is absent from the image
    gated, suppressed = gated_scores(logits, probs, 0.2, background_index=0)
    assert suppressed[0].tolist() == [False, False, True, False]
    assert (gated[0, 2] == SUPPRESSED_SCORE).all()
    assert (logits[0].argmax(0) == 2).any()  # it would win somewhere without the gate
    _, placement = letterbox(np.zeros((333, 517, 3), np.uint8), (32, 32), (0, 0, 0))
    labels = labels_from_scores(gated[0].numpy(), placement)
    assert 2 not in np.unique(labels) and np.isfinite(labels).all()


def jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def photo(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) % 256)], axis=-1).astype(
        np.uint8
    )


def test_large_jpeg_decodes_at_reduced_scale_with_its_full_size() -> None:
    data = jpeg(photo(1200, 1600))
    full = decode_image(data)
    small = decode_image(data, fit=(128, 128))
    assert full.size == (1200, 1600) and not full.reduced
    assert small.size == (1200, 1600) and small.reduced
    assert small.pixels.shape == (150, 200, 3)  # 1/8 scale, still larger than the box
    # The letterboxed canvas is (nearly) the same picture either way.
    a, placed_a = letterbox(full.pixels, (128, 128), (0, 0, 0), full.size)
    b, placed_b = letterbox(small.pixels, (128, 128), (0, 0, 0), small.size)
    assert placed_a == placed_b and placed_b.original == (1200, 1600)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def test_reduced_decode_keeps_exif_orientation_and_never_goes_below_the_box() -> None:
    data = jpeg(photo(600, 1000), orientation=6)  # a quarter turn: shown 600 wide, 1000 high
    small = decode_image(data, fit=(321, 321))
    assert small.size == (1000, 600)
    assert min(small.pixels.shape[:2]) >= 321 and small.pixels.shape[0] > small.pixels.shape[1]
    png = io.BytesIO()
    Image.fromarray(photo(600, 1000)).save(png, "PNG")
    assert not decode_image(png.getvalue(), fit=(64, 64)).reduced  # PNG has no reduced decode
