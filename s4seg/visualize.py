"""Pictures people look at: colourised label maps, overlays and side-by-side panels (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from s4seg import IGNORE_INDEX
from s4seg.classes import flat_palette


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A palette-indexed PNG-ready image whose pixel values are the class indices."""
    image = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
    colours = list(palette)
    if len(colours) <= IGNORE_INDEX:  # ignore pixels show white, as in VOC annotations
        colours = colours + [(0, 0, 0)] * (IGNORE_INDEX - len(colours)) + [(255, 255, 255)]
    image.putpalette(flat_palette(colours))
    return image


def overlay(image: Image.Image, labels: np.ndarray, palette, alpha: float = 0.5) -> Image.Image:
    """The image blended with the colour of each pixel's class."""
    colours = colorize(labels, palette).convert("RGB")
    return Image.blend(image.convert("RGB"), colours, alpha)


def panel(images: Sequence[Image.Image]) -> Image.Image:
    """Images side by side (all resized to the first one's height)."""
    height = images[0].height
    resized = [
        im.convert("RGB").resize(
            (max(1, im.width * height // im.height), height), Image.Resampling.NEAREST
        )
        for im in images
    ]
    out = Image.new("RGB", (sum(im.width for im in resized), height), (255, 255, 255))
    x = 0
    for im in resized:
        out.paste(im, (x, 0))
        x += im.width
    return out
