"""Turning a label map into what users asked for: palette PNG, overlay PNG or JSON + COCO RLE
(shared by the gateway, `s4seg segment` and `s4seg predict`)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from s4seg.manifest import Manifest
from s4seg.visualize import colorize, overlay


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def label_png(labels: np.ndarray, manifest: Manifest) -> bytes:
    """Palette-indexed PNG: pixel values are class indices, the palette makes it viewable."""
    return png_bytes(colorize(labels, manifest.palette))


def overlay_png(pixels: np.ndarray, labels: np.ndarray, manifest: Manifest) -> bytes:
    """The image blended with the class colours; background pixels stay as they were."""
    blended = np.asarray(overlay(Image.fromarray(pixels), labels, manifest.palette)).copy()
    if manifest.background_index is not None:
        keep = labels == manifest.background_index
        blended[keep] = pixels[keep]
    return png_bytes(Image.fromarray(blended))


def rle(binary: np.ndarray) -> dict:
    """COCO run-length encoding (pycocotools), counts as a string."""
    encoded = coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def segmentation_json(
    labels: np.ndarray,
    class_probs: np.ndarray,
    suppressed: np.ndarray,
    manifest: Manifest,
    version: str,
    tau: float | None,
) -> dict:
    counts = np.bincount(labels.ravel(), minlength=manifest.num_classes)
    present = [
        {
            "index": int(i),
            "name": manifest.classes[i],
            "pixels": int(counts[i]),
            "rle": rle(labels == i),
        }
        for i in np.flatnonzero(counts)
    ]
    return {
        "width": int(labels.shape[1]),
        "height": int(labels.shape[0]),
        "model_version": version,
        "gated": tau is not None,
        "tau": tau,
        "classes": present,
        "class_probabilities": (
            {n: round(float(p), 6) for n, p in zip(manifest.classes, class_probs, strict=True)}
            if manifest.classifier is not None
            else None
        ),
        "suppressed": [manifest.classes[i] for i in np.flatnonzero(suppressed)],
        "mask_encoding": "COCO RLE (pycocotools), one binary mask per class present",
    }
