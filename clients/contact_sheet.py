"""The top of a labeling queue as one picture: each image with its predicted mask over it, its
rank and its score (``s4seg queue``'s ``contact_sheet.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from s4seg.errors import S4segError
from s4seg.imaging import DEFAULT_MAX_PIXELS, read_image_file
from s4seg.manifest import Manifest
from s4seg.outputs import labels_from_json, overlay_image

CELL = 192  # pixels on a thumbnail's long side
CAPTION = 30  # pixels of text under each thumbnail
COLUMNS = 6


def thumbnail(source: Path, answer: dict, manifest: Manifest) -> Image.Image:
    """The image with its mask over it, ``CELL`` pixels on its long side."""
    pixels = read_image_file(source, DEFAULT_MAX_PIXELS, (2 * CELL, 2 * CELL)).pixels
    labels = Image.fromarray(labels_from_json(answer))
    size = (pixels.shape[1], pixels.shape[0])
    if labels.size != size:
        labels = labels.resize(size, Image.Resampling.NEAREST)
    image = overlay_image(pixels, np.asarray(labels), manifest)
    scale = CELL / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = scale >= 1  # small images grow by whole pixels, photos shrink smoothly
    return image.resize(size, Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)


def contact_sheet(cells: list[tuple[dict, dict]], manifest: Manifest) -> Image.Image:
    """``cells``: (queue row, its JSON answer), in queue order."""
    if not cells:
        raise S4segError("nothing to show: the queue is empty")
    columns = min(COLUMNS, len(cells))
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * CELL, rows * (CELL + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for place, (row, answer) in enumerate(cells):
        left, top = (place % columns) * CELL, (place // columns) * (CELL + CAPTION)
        try:
            image = thumbnail(Path(row["source"]), answer, manifest)
            sheet.paste(image, (left + (CELL - image.width) // 2, top + (CELL - image.height) // 2))
        except (OSError, S4segError):
            draw.rectangle((left + 4, top + 4, left + CELL - 4, top + CELL - 4), fill="lightgray")
            draw.text((left + 8, top + CELL // 2), "no longer readable", fill="black")
        draw.text((left + 4, top + CELL + 2), f"#{row['rank']}  {row['score']:.3f}", fill="black")
        draw.text((left + 4, top + CELL + 15), str(row["image"])[-30:], fill="dimgray")
    return sheet
