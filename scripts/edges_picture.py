"""The README's before/after picture: overlays of a 4000x3000 photo, labels mapped back with
nearest neighbour (before) and from the gated scores resized bilinearly (now), a crop of each at
full resolution beside the whole picture.

    .venv/bin/python scripts/edges_picture.py PHOTO EXPORT_DIR OUT.jpg

PHOTO is scaled (aspect kept) and centre-cropped to 4000x3000 first, as a phone photo would be.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw

from s4seg.imaging import read_image_file
from s4seg.letterbox import Framing, labels_from_scores
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.outputs import overlay_image
from s4seg.workflows.bench.mapback import nearest_map_back

WIDTH, HEIGHT = 4000, 3000
CROP = 700  # pixels of the full-resolution crop


def main(photo: str, export: str, out: str) -> None:
    image = Image.fromarray(read_image_file(photo).pixels)
    scale = max(WIDTH / image.width, HEIGHT / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - WIDTH) // 2, (image.height - HEIGHT) // 2
    pixels = np.asarray(image.crop((left, top, left + WIDTH, top + HEIGHT)))

    pipeline = OnnxPipeline.from_export(export, device="cpu")
    manifest = pipeline.manifest
    framed = Framing.of(manifest).frame(pixels)
    placement = framed.placement
    out_ = pipeline.run(framed.canvas[None], framed.view[None])
    before = nearest_map_back(out_.labels[0], placement)
    after = labels_from_scores(out_.scores[0], placement)

    # The crop: the window with the most label edges, so that the difference shows.
    edges = (np.diff(after.astype(np.int16), axis=1) != 0)[:-1] | (
        np.diff(after.astype(np.int16), axis=0) != 0
    )[:, :-1]
    step = CROP // 2
    best, where = -1, (0, 0)
    for y in range(0, HEIGHT - CROP, step):
        for x in range(0, WIDTH - CROP, step):
            count = int(edges[y : y + CROP, x : x + CROP].sum())
            if count > best:
                best, where = count, (y, x)
    y, x = where

    panels = []
    for name, labels in (("before: nearest neighbour", before), ("now: scores bilinear", after)):
        shown = overlay_image(pixels, labels, manifest)
        whole = shown.resize((CROP * WIDTH // HEIGHT, CROP), Image.BILINEAR)
        ImageDraw.Draw(whole).rectangle(
            [
                x * CROP // HEIGHT,
                y * CROP // HEIGHT,
                (x + CROP) * CROP // HEIGHT,
                (y + CROP) * CROP // HEIGHT,
            ],
            outline=(255, 255, 0),
            width=3,
        )
        crop = shown.crop((x, y, x + CROP, y + CROP))
        row = Image.new("RGB", (whole.width + CROP + 10, CROP + 30), (255, 255, 255))
        row.paste(whole, (0, 30))
        row.paste(crop, (whole.width + 10, 30))
        ImageDraw.Draw(row).text(
            (4, 8), f"{name} (left: 4000x3000 overlay; right: 700x700 crop at 100%)", (0, 0, 0)
        )
        panels.append(row)
    picture = Image.new("RGB", (panels[0].width, sum(p.height for p in panels)), (255, 255, 255))
    for i, panel in enumerate(panels):
        picture.paste(panel, (0, i * panels[0].height))
    picture.save(out, quality=88) if out.lower().endswith((".jpg", ".jpeg")) else picture.save(out)
    changed = (before != after).mean()
    print(f"{out}: {100 * changed:.2f}% of the pixels change label; crop at x={x}, y={y}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
