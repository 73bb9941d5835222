"""Fitting any image into the served input size and mapping the label map back.

The served graphs take a fixed ``(height, width)`` so that Triton can batch requests. An image is
scaled (aspect ratio kept) to fit, padded with the normalisation mean (which the network sees as
zero), and the label map is cropped to the content and resized back with nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Placement:
    """Where the scaled image sits inside the served canvas."""

    original: tuple[int, int]  # (height, width) of the input
    content: tuple[int, int]  # (height, width) after scaling
    offset: tuple[int, int]  # (top, left) of the content in the canvas


def letterbox(
    image: np.ndarray, size: tuple[int, int], pad_value: tuple[int, int, int]
) -> tuple[np.ndarray, Placement]:
    """``image`` (H, W, 3) uint8 -> canvas (size[0], size[1], 3) uint8 and its placement."""
    height, width = image.shape[:2]
    target_h, target_w = size
    scale = min(target_h / height, target_w / width)
    content = (
        max(1, min(target_h, round(height * scale))),
        max(1, min(target_w, round(width * scale))),
    )
    if content != (height, width):
        resized = Image.fromarray(image).resize((content[1], content[0]), Image.Resampling.BILINEAR)
        image = np.asarray(resized)
    top, left = (target_h - content[0]) // 2, (target_w - content[1]) // 2
    canvas = np.empty((target_h, target_w, 3), dtype=np.uint8)
    canvas[...] = np.asarray(pad_value, dtype=np.uint8)
    canvas[top : top + content[0], left : left + content[1]] = image
    return canvas, Placement((height, width), content, (top, left))


def unletterbox(labels: np.ndarray, placement: Placement) -> np.ndarray:
    """A served-size uint8 label map -> the input's size, nearest neighbour (labels stay labels)."""
    top, left = placement.offset
    crop = labels[top : top + placement.content[0], left : left + placement.content[1]]
    if crop.shape == placement.original:
        return np.ascontiguousarray(crop)
    height, width = placement.original
    resized = Image.fromarray(crop.astype(np.uint8)).resize(
        (width, height), Image.Resampling.NEAREST
    )
    return np.asarray(resized)


def pad_colour(mean: list[float], pixel_scale: float = 1 / 255) -> tuple[int, int, int]:
    """The uint8 colour that normalises to (about) zero: the letterbox fill."""
    return tuple(round(min(255.0, max(0.0, m / pixel_scale))) for m in mean)  # type: ignore[return-value]
