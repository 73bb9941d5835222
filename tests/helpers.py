"""Helpers shared by the tests: tiny training settings and writers for small data trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_TRAINING = [
    "model.backbone_depth=18",
    "data.crop_size=[48, 48]",
    "data.num_workers=0",
    "train.batch_size=2",
    "train.log_every=1",
    "train.val_max_images=2",
    "optim.lr=0.005",
    "mlmt.depth=18",
    "mlmt.input_size=32",
    "mlmt.labeled_batch_size=2",
    "mlmt.unlabeled_batch_size=4",
    "mlmt.burn_in_epochs=0.5",
    "mlmt.rampup_epochs=1",
    "gan.gamma=0.4",
    "gan.log_history_every=1",
]


def write_rgb(path: Path, size: tuple[int, int], seed: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def striped_mask(size: tuple[int, int], values: list[int]) -> np.ndarray:
    """A mask of vertical stripes with the given values (W x H = size)."""
    width, height = size
    columns = np.array(values)[np.arange(width) * len(values) // width]
    return np.tile(columns, (height, 1))


def segment_like_the_server(
    pipeline, image: np.ndarray, tau: float | None = None, size: tuple[int, int] | None = None
):
    """One (H, W, 3) image through an OnnxPipeline as the gateway runs it: letterboxed into the
    served size; the label map (1, H, W) at the image's size from the gated scores, mapped back
    by the server's own function (bilinear, then the argmax). ``size``: the photo's full
    (height, width) when ``image`` was decoded at a reduced scale."""
    from s4seg.letterbox import Framing, labels_from_scores

    framed = Framing.of(pipeline.manifest).frame(image, size)
    out = pipeline.run(framed.canvas[None], framed.view[None], tau)
    out.labels = labels_from_scores(out.scores[0], framed.placement)[None]
    return out


def framed_batch(pipeline, images):
    """Canvases and classifier views of ``images`` (a list, or an (N, H, W, 3) array), as the
    server frames them for ``pipeline``'s manifest."""
    from s4seg.letterbox import Framing

    canvases, views, _ = Framing.of(pipeline.manifest).batch(list(images))
    return canvases, views
