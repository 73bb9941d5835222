"""A seeded procedural segmentation data set, written to disk in the generic folder layout.

Objects are saturated and backgrounds muted, and each class has a hue family, so a small network
finds objects quickly; but disc/ring and square/diamond share their family and differ by shape
only, shape-less clutter of any hue lies on the background, objects occlude each other and pixel
noise is added. Telling shapes apart is what needs labels, so label count matters.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

from s4seg.classes import flat_palette, voc_palette

SYNTH_CLASSES = ("background", "disc", "ring", "square", "diamond", "triangle", "cross")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled bicubically."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


# Hue families: colour tells the family, only shape tells disc from ring and square from diamond.
CLASS_HUES = {
    "disc": 0.0,
    "ring": 0.0,
    "square": 0.33,
    "diamond": 0.33,
    "triangle": 0.6,
    "cross": 0.8,
}


def _colour(rng: np.random.Generator, hue: float | None) -> np.ndarray:
    """Saturated colour of a hue family (objects), any hue (clutter), or muted (background)."""
    if hue is None:
        return np.array(
            colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.3, 0.9))
        )
    return np.array(
        colorsys.hsv_to_rgb(
            (hue + rng.normal(0, 0.04)) % 1.0, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0)
        )
    )


def _texture(rng: np.random.Generator, size: int, hue: float | None, saturated: bool) -> np.ndarray:
    """An HxWx3 float texture: two colours mixed by noise, stripes, a checkerboard or a ramp."""
    if saturated:
        hue = rng.random() if hue is None else hue
    a, b = _colour(rng, hue if saturated else None), _colour(rng, hue if saturated else None)
    kind = rng.integers(2) if saturated else rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:
        weight = _smooth_noise(rng, size, int(rng.integers(2, 8)))
    elif kind == 1:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(4, 16)
        phase = xx * math.cos(angle) + yy * math.sin(angle)
        weight = 0.5 + 0.5 * np.sin(2 * math.pi * phase / period)
    elif kind == 2:
        cell = int(rng.integers(4, 14))
        weight = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:
        weight = np.clip(xx / size * rng.uniform(0.5, 1.5), 0, 1)
    weight = weight[..., None]
    return a * (1 - weight) + b * weight


def _polygon(cx: float, cy: float, radius: float, sides: int, rotation: float) -> list[tuple]:
    return [
        (
            cx + radius * math.cos(rotation + 2 * math.pi * k / sides),
            cy + radius * math.sin(rotation + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, rng: np.random.Generator
) -> None:
    """Draw one object's silhouette in white (255) on an L image."""
    jitter = rng.uniform(-0.17, 0.17)  # +-10 degrees keeps squares and diamonds apart
    if name in ("disc", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if name == "ring":
            inner = r * rng.uniform(0.45, 0.65)
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, math.pi / 4 + jitter), fill=255)
    elif name == "diamond":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, jitter), fill=255)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.2, 3, -math.pi / 2 + 3 * jitter), fill=255)
    elif name == "cross":
        w = r * rng.uniform(0.3, 0.45)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
    else:  # pragma: no cover - guarded by SYNTH_CLASSES
        raise ValueError(name)


def _blob(
    draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, rng: np.random.Generator
) -> None:
    """A shape-less clutter region (background class)."""
    points = 9
    radii = r * rng.uniform(0.4, 1.0, points)
    draw.polygon(
        [
            (
                cx + radii[k] * math.cos(2 * math.pi * k / points),
                cy + radii[k] * math.sin(2 * math.pi * k / points),
            )
            for k in range(points)
        ],
        fill=255,
    )


@dataclass(frozen=True)
class Scene:
    """How many objects an image holds (inclusive range) and their radius (fraction of the side)."""

    objects: tuple[int, int]
    radius: tuple[float, float]


STYLES = {
    # The original set: 1-3 objects, about 14% foreground pixels at 128 px.
    "sparse": Scene((1, 3), (0.10, 0.22)),
    # 3-5 larger objects, about a third of the pixels foreground (fidelity review, section 3:
    # "synthetic-dense-64"); large enough that a ring's hole survives stride 8 at 64 px.
    "dense": Scene((3, 5), (0.14, 0.26)),
}


def render_sample(
    rng: np.random.Generator, size: int = 128, scene: Scene = STYLES["sparse"]
) -> tuple[np.ndarray, np.ndarray]:
    """One image (HxWx3 uint8) and its mask (HxW uint8 class indices)."""
    image = _texture(rng, size, hue=None, saturated=False)
    mask = np.zeros((size, size), dtype=np.uint8)

    def paste(draw_fn: Callable[[ImageDraw.ImageDraw], None], label: int) -> None:
        silhouette = Image.new("L", (size, size), 0)
        draw_fn(ImageDraw.Draw(silhouette))
        region = np.asarray(silhouette) > 127
        hue = CLASS_HUES.get(SYNTH_CLASSES[label])  # clutter (label 0): a random hue
        image[region] = _texture(rng, size, hue, saturated=True)[region]
        mask[region] = label

    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, size, 2).tolist()
        r = float(rng.uniform(size * 0.1, size * 0.25))
        paste(partial(_blob, cx=cx, cy=cy, r=r, rng=rng), label=0)
    for _ in range(int(rng.integers(scene.objects[0], scene.objects[1] + 1))):
        label = int(rng.integers(1, len(SYNTH_CLASSES)))
        cx, cy = rng.uniform(size * 0.15, size * 0.85, 2).tolist()
        r = float(rng.uniform(size * scene.radius[0], size * scene.radius[1]))
        shape = partial(_draw_shape, name=SYNTH_CLASSES[label], cx=cx, cy=cy, r=r, rng=rng)
        paste(shape, label)

    noisy = image * 255 + rng.normal(0, rng.uniform(4, 14), image.shape)
    pixels = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        pixels = pixels.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.2)))
    return np.asarray(pixels), mask


def write_synthetic(
    out: str | Path,
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 150,
    num_unlabeled: int = 200,
    size: int = 128,
    progress: Callable[[int, int], None] | None = None,
    style: str = "sparse",
) -> Path:
    """Write ``images/{train,val,unlabeled}``, ``masks/{train,val}`` and ``classes.yaml``;
    ``style``: the scenes (``STYLES``)."""
    scene = STYLES[style]
    root = Path(out)
    palette = voc_palette(len(SYNTH_CLASSES))
    plan = [("train", num_train, True), ("val", num_val, True), ("unlabeled", num_unlabeled, False)]
    total = num_train + num_val + num_unlabeled
    done = 0
    for offset, (split, count, with_mask) in enumerate(plan):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        if with_mask:
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        # One generator per split: adding val images never changes the train images.
        rng = np.random.default_rng([seed, offset])
        for index in range(count):
            image, mask = render_sample(rng, size, scene)
            name = f"{split}_{index:05d}"
            Image.fromarray(image).save(root / "images" / split / f"{name}.png")
            if with_mask:
                indexed = Image.fromarray(mask, mode="L").convert("P")
                indexed.putpalette(flat_palette(palette))
                indexed.save(root / "masks" / split / f"{name}.png")
            done += 1
            if progress:
                progress(done, total)
    meta = {
        "classes": list(SYNTH_CLASSES),
        "background": "background",
        "palette": [list(c) for c in palette],
    }
    (root / "classes.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    (root / "synth.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "num_train": num_train,
                "num_val": num_val,
                "num_unlabeled": num_unlabeled,
                "size": size,
                "style": style,
                "scene": asdict(scene),
            },
            indent=1,
        )
        + "\n"
    )
    return root
