"""Decoding images that users send: safely, with errors that name the problem.

Used by the gateway, the CLI clients and batch inference (no torch, no FastAPI). The pixel cap
is checked from the header, before any pixel is decoded (decompression bombs); EXIF orientation
is applied; grayscale, palette, RGBA/LA, CMYK and 16-bit inputs become 8-bit RGB. When only a
small view is needed (``fit``), JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
scaling, Pillow's draft mode): a 12 MP photo served at 321 px costs a fraction of a full decode.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from s4seg.errors import S4segError

DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000


class ImageError(S4segError):
    """An input is not a usable image. ``status`` is the HTTP status the gateway answers with."""

    def __init__(self, message: str, status: int = 422, code: str = "bad_image") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (h, w, 3) uint8 RGB, EXIF orientation applied; reduced with ``fit``
    format: str | None
    mode: str  # the mode it arrived in (before conversion)
    size: tuple[int, int] = (0, 0)  # (height, width) of the full image, EXIF orientation applied

    @property
    def reduced(self) -> bool:
        return self.pixels.shape[:2] != self.size


# EXIF orientations that turn the picture a quarter (width and height swap).
QUARTER_TURNS = (5, 6, 7, 8)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: scale the full range to 8 bits rather than clipping at 255.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(values.max()), 1.0)
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("F",):
        raise ImageError("floating-point images are not supported", 415, "unsupported_mode")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, like most viewers show them on a dark canvas.
        return image.convert("RGBA").convert("RGB")
    try:
        return image.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV, 1
    except (ValueError, OSError) as error:
        raise ImageError(f"image mode {mode} can not be converted to RGB: {error}", 415,
                         "unsupported_mode") from None  # fmt: skip


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, fit: tuple[int, int] | None = None
) -> DecodedImage:
    """Bytes of an image file -> RGB pixels, or an ImageError naming what is wrong.

    ``fit`` (height, width): the pixels will only be scaled down into this box, so a JPEG may be
    decoded at a reduced scale, never smaller than the box; ``size`` keeps the full size."""
    if not data:
        raise ImageError("empty body: no image was sent", 422, "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (unknown or unsupported file format)", 415,
                         "not_an_image") from None  # fmt: skip
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image too large: {error}", 413, "too_many_pixels") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Header damage: OSError, or ValueError ("Truncated IHDR chunk", found by the fuzz test).
        raise ImageError(f"unreadable image: {error}", 422, "corrupt") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image has {width}x{height} = {width * height} pixels, more than the limit of "
            f"{max_pixels}",
            413,
            "too_many_pixels",
        )
    if width == 0 or height == 0:
        raise ImageError("image has no pixels", 422, "empty")
    kind, mode = image.format, image.mode
    try:
        turned = image.getexif().get(0x0112) in QUARTER_TURNS
        full = (width, height) if turned else (height, width)
        if fit is not None and kind == "JPEG":
            side = max(fit)  # both sides: the orientation may still swap them
            image.draft(None, (side, side))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        rgb = _to_rgb(image)
        pixels = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated and corrupt data as OSError ("image file is truncated").
        what = kind or "image"
        raise ImageError(f"corrupt or truncated {what}: {error}", 422, "corrupt") from None
    return DecodedImage(np.ascontiguousarray(pixels), kind, mode, full)


def read_image_file(
    path, max_pixels: int = DEFAULT_MAX_PIXELS, fit: tuple[int, int] | None = None
) -> DecodedImage:
    with open(path, "rb") as handle:
        return decode_image(handle.read(), max_pixels, fit)
