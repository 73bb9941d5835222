"""Fitting any image into the served input size and mapping the result back.

The served graphs take a fixed ``(height, width)`` so that Triton can batch requests. An image is
scaled (aspect ratio kept) to fit, padded with the normalisation mean (which the network sees as
zero). Back: the gated class scores of the content are resized bilinearly to the image's own
size and the argmax taken there (``labels_from_scores``), so edges follow the photo's pixels and
not the served grid (a label map alone could only be resized with nearest neighbour, which
draws blocks as large as the scale factor: ``s4seg bench mapback`` measures the difference).

The classifier is sent a view of its own (``classifier_view``): the whole image, never the pad
bars, resized to its square input as in training. ``Framing`` makes both from a manifest: the
one place that says what the pipeline is sent for an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from s4seg.manifest import Manifest


@dataclass(frozen=True)
class Placement:
    """Where the scaled image sits inside the served canvas."""

    original: tuple[int, int]  # (height, width) of the input
    content: tuple[int, int]  # (height, width) after scaling
    offset: tuple[int, int]  # (top, left) of the content in the canvas


def letterbox(
    image: np.ndarray,
    size: tuple[int, int],
    pad_value: tuple[int, int, int],
    original: tuple[int, int] | None = None,
) -> tuple[np.ndarray, Placement]:
    """``image`` (H, W, 3) uint8 -> canvas (size[0], size[1], 3) uint8 and its placement.

    ``original``: the (height, width) the image stands for when it is a reduced decode of a
    larger photo (``DecodedImage.size``); results are mapped back to that size."""
    height, width = original or image.shape[:2]
    target_h, target_w = size
    scale = min(target_h / height, target_w / width)
    content = (
        max(1, min(target_h, round(height * scale))),
        max(1, min(target_w, round(width * scale))),
    )
    if content != image.shape[:2]:
        resized = Image.fromarray(image).resize((content[1], content[0]), Image.Resampling.BILINEAR)
        image = np.asarray(resized)
    top, left = (target_h - content[0]) // 2, (target_w - content[1]) // 2
    canvas = np.empty((target_h, target_w, 3), dtype=np.uint8)
    canvas[...] = np.asarray(pad_value, dtype=np.uint8)
    canvas[top : top + content[0], left : left + content[1]] = image
    return canvas, Placement((height, width), content, (top, left))


def classifier_view(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 -> (size, size, 3) uint8: the whole image squeezed into the
    classifier's square input, aspect ratio not kept, as training and ``s4seg evaluate`` show it
    (torchvision ``Resize((size, size), antialias=True)``; Pillow's bilinear resize is the same
    antialiased filter, within 1 of 255 per channel)."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.array(resized)  # writable: torch.from_numpy takes it without a warning


@dataclass(frozen=True)
class Framed:
    """One image as the pipeline takes it."""

    canvas: np.ndarray  # (h, w, 3) uint8: the letterboxed image (segmenter)
    view: np.ndarray  # (s, s, 3) uint8: the whole image resized (classifier)
    placement: Placement


@dataclass(frozen=True)
class Framing:
    """What the served pipeline is sent for an image: the segmenter's letterboxed canvas and
    the classifier's view, at the sizes a manifest names."""

    size: tuple[int, int]  # served (height, width)
    pad: tuple[int, int, int]
    classifier_size: int

    @classmethod
    def of(cls, manifest: Manifest) -> Framing:
        return cls(
            tuple(manifest.input_size),  # type: ignore[arg-type]
            tuple(manifest.pad_value),  # type: ignore[arg-type]
            manifest.classifier_view_size,
        )

    @property
    def fit(self) -> tuple[int, int]:
        """The smallest decode that serves both inputs (``decode_image``'s ``fit``)."""
        return max(self.size[0], self.classifier_size), max(self.size[1], self.classifier_size)

    def frame(self, image: np.ndarray, original: tuple[int, int] | None = None) -> Framed:
        """``original``: as for ``letterbox`` (the size a reduced decode stands for)."""
        canvas, placement = letterbox(image, self.size, self.pad, original)
        return Framed(canvas, classifier_view(image, self.classifier_size), placement)

    def batch(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[Placement]]:
        """Canvases (N, h, w, 3), views (N, s, s, 3) and the placements of ``images``."""
        framed = [self.frame(image) for image in images]
        return (
            np.stack([f.canvas for f in framed]),
            np.stack([f.view for f in framed]),
            [f.placement for f in framed],
        )


def pad_colour(mean: list[float], pixel_scale: float = 1 / 255) -> tuple[int, int, int]:
    """The uint8 colour that normalises to (about) zero: the letterbox fill."""
    return tuple(round(min(255.0, max(0.0, m / pixel_scale))) for m in mean)  # type: ignore[return-value]


def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps with half-pixel centres (PyTorch ``align_corners=False``, Pillow's resize):
    for each output index, the two input indices and the weight of the second."""
    centres = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    centres = np.clip(centres, 0, size_in - 1)
    first = np.floor(centres).astype(np.intp)
    second = np.minimum(first + 1, size_in - 1)
    return first, second, (centres - first).astype(np.float32)


def labels_from_scores(scores: np.ndarray, placement: Placement) -> np.ndarray:
    """Gated class scores at the served size (C, h, w) -> uint8 labels at the input's size.

    The same labels as resizing the content's scores bilinearly to the input's size and taking
    the argmax per pixel, without the (C, H, W) array: where an output pixel's four source
    pixels share their argmax, so does any bilinear mix of them (a convex combination keeps the
    maximum), so only pixels between source pixels of different labels are computed, one source
    row at a time. Extra memory: the label map and C x (H / h + 1) x W floats.
    """
    top, left = placement.offset
    height_c, width_c = placement.content
    crop = scores[:, top : top + height_c, left : left + width_c]
    low = crop.argmax(0).astype(np.uint8)
    height, width = placement.original
    if (height_c, width_c) == (height, width):
        return low
    y0, y1, wy = _taps(height_c, height)
    x0, x1, wx = _taps(width_c, width)
    labels = low[y0][:, x0]  # right wherever the four taps agree
    below = np.minimum(np.arange(height_c) + 1, height_c - 1)
    right = np.minimum(np.arange(width_c) + 1, width_c - 1)
    mixed = (low != low[below]) | (low != low[:, right]) | (low != low[below][:, right])
    bands = np.searchsorted(y0, np.arange(height_c + 1))  # output rows of each source row
    for row in np.flatnonzero(mixed.any(1)):
        rows = np.arange(bands[row], bands[row + 1])
        cols = np.flatnonzero(mixed[row][x0])
        if not rows.size or not cols.size:
            continue
        a, b, w = x0[cols], x1[cols], wx[cols]
        upper = crop[:, row, a] * (1 - w) + crop[:, row, b] * w  # (C, n)
        lower = crop[:, y1[rows[0]], a] * (1 - w) + crop[:, y1[rows[0]], b] * w
        v = wy[rows][None, :, None]
        mixed_scores = upper[:, None, :] * (1 - v) + lower[:, None, :] * v  # (C, rows, n)
        labels[rows[:, None], cols[None, :]] = mixed_scores.argmax(0)
    return labels
