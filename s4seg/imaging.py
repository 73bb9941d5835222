"""Decoding images that users send: safely, with errors that name the problem.

Used by the gateway, the CLI clients and batch inference (no torch, no FastAPI). The pixel cap
is checked from the header, before any pixel is decoded (decompression bombs); only the formats
in ``FORMATS`` are opened (no other Pillow plugin ever sees the bytes); EXIF orientation is
applied, and a photo whose EXIF is damaged is served as it is stored; grayscale, palette,
RGBA/LA, CMYK and 16-bit inputs become 8-bit RGB. When only a small view is needed (``fit``),
JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's draft mode): a
12 MP photo served at 321 px costs a fraction of a full decode.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from s4seg.errors import S4segError

DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000
# Scans of a progressive JPEG: libjpeg decodes each one over the whole image, so their number,
# not the file's size, sets the cost (about 12 ms a scan at 16 MP; 1,000 repeated scans in a
# 94 KB file decoded for 13 s, 100,000 for 20 minutes: security review C1). Encoders write
# 1 (baseline) to about 10-20 (progressive, an EXIF thumbnail or an MPO's second picture add a
# few more); NVIDIA DALI refuses more than 500.
MAX_JPEG_SCANS = 100
# Pixels an image may declare per byte of its file. Real images stay far below: a flat-colour
# JPEG about 250, a one-colour palette PNG about 1,000, a blank 1-bit PNG about 8,000; a
# 333-byte JPEG declaring 39 MP (its data cut short, filled in by the decoder) has 117,000 and
# would hold 39 MP of the pixel budget for nothing (security review H2).
MAX_PIXELS_PER_BYTE = 20_000
# The longest side and the most elongated shape accepted: a 1 x 40,000,000 strip passes a pixel
# cap, yet letterboxing and mapping it back cost 20-165 bytes a pixel (security review M8).
MAX_SIDE = 16384
MAX_ASPECT = 64
# What decoding costs a pixel, relative to 8-bit RGB (what the gateway's pixel budget counts):
# 16- and 32-bit images go through a wider array first (review M8: 26 against 6 bytes a pixel).
WIDE_MODES = {"I;16": 3, "I;16B": 3, "I;16L": 3, "I;16N": 3, "I": 4, "F": 4}


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


# The formats users send and we test; anything else (EPS, PSD, ICNS, ...) is 415 unread.
# (Phones' MPO files, a JPEG with extra pictures, open through the JPEG plugin.)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
SUPPORTED = "JPEG, PNG, WebP, BMP, GIF or TIFF"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
Image.init()  # registers the plugins, so that ``formats=FORMATS`` finds WebP and TIFF
# A PNG's text chunks are inflated when it is opened, before any pixel: Pillow allows 64 MB of
# them (63 zTXt chunks of 1 MB each fit in a 66 KB file: 0.21 s of CPU; security review H3).
# 4 MB is far more text than photos carry; past it the image is refused as unreadable (422).
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024

# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# EXIF orientations that turn the picture a quarter (width and height swap).
QUARTER_TURNS = (5, 6, 7, 8)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 when absent or unreadable). Read only, never re-serialised:
    ``ImageOps.exif_transpose`` writes the EXIF back and raises ``struct.error`` on a tag whose
    value does not fit its type, which cameras and editors do write."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # any damage in the EXIF block: the picture itself is still good
        return 1
    return value if isinstance(value, int) and value in UPRIGHT else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: scale the full range to 8 bits rather than clipping at 255, in
        # integers (a float64 copy cost 8 more bytes a pixel).
        values = np.asarray(image)
        if mode.startswith("I;16"):
            grey = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        else:
            wide = np.clip(values, 0, None).astype(np.int64)
            top = max(int(wide.max()), 1)
            grey = ((wide * 255 + top // 2) // top).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("F",):
        raise ImageError("floating-point images are not supported", 415, "unsupported_mode")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, like most viewers show them on a dark canvas.
        return image.convert("RGBA").convert("RGB")
    try:
        return image.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV, 1
    except (ValueError, OSError) as error:
        raise ImageError(
            f"image mode {mode} can not be converted to RGB: {error}", 415, "unsupported_mode"
        ) from None


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, fit: tuple[int, int] | None = None
) -> DecodedImage:
    """Bytes of an image file -> RGB pixels, or an ImageError naming what is wrong.

    ``fit`` (height, width): the pixels will only be scaled down into this box, so a JPEG may be
    decoded at a reduced scale, never smaller than the box; ``size`` keeps the full size."""
    image = open_image(data, max_pixels)
    width, height = image.size
    kind, mode = image.format, image.mode
    try:
        orientation = exif_orientation(image)
        full = (width, height) if orientation in QUARTER_TURNS else (height, width)
        if fit is not None and kind in ("JPEG", "MPO"):
            side = max(fit)  # both sides: the orientation may still swap them
            image.draft(None, (side, side))
        image.load()
        if orientation in UPRIGHT:
            image = image.transpose(UPRIGHT[orientation])
        rgb = _to_rgb(image)
        pixels = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated and corrupt data as OSError ("image file is truncated").
        what = kind or "image"
        raise ImageError(f"corrupt or truncated {what}: {error}", 422, "corrupt") from None
    return DecodedImage(np.ascontiguousarray(pixels), kind, mode, full)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The header only: format allowed, size within ``max_pixels``; no pixel decoded yet."""
    if not data:
        raise ImageError("empty body: no image was sent", 422, "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            f"not an image in a supported format (send {SUPPORTED})", 415, "not_an_image"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image too large: {error}", 413, "too_many_pixels") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Header damage: OSError, or ValueError ("Truncated IHDR chunk", found by the fuzz test).
        raise ImageError(f"unreadable image: {error}", 422, "corrupt") from None
    if image.format in ("JPEG", "MPO"):
        # SOS markers: 0xFF 0xDA never occurs inside entropy-coded data (0xFF is stuffed
        # there), so counting the pair counts the scans (thumbnails' and MPO pictures' too).
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageError(
                f"JPEG with {scans} scans, more than the limit of {MAX_JPEG_SCANS} (no camera "
                "or encoder writes that many; each one costs a pass over the whole image)",
                422,
                "too_many_scans",
            )
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
    if max(width, height) > MAX_SIDE or max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            f"image is {width}x{height}: sides up to {MAX_SIDE} pixels and at most {MAX_ASPECT} "
            "times longer than wide are accepted",
            413 if max(width, height) > MAX_SIDE else 422,
            "bad_shape",
        )
    if width * height > max(1_000_000, MAX_PIXELS_PER_BYTE * len(data)):
        raise ImageError(
            f"image declares {width}x{height} pixels in {len(data)} bytes: most of its data is "
            f"missing (more than {MAX_PIXELS_PER_BYTE} pixels a byte)",
            422,
            "too_little_data",
        )
    return image


def image_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Pixels the image declares in its header, checked, weighted by what decoding one costs
    (``WIDE_MODES``: a 16-bit pixel counts 3): what the gateway's pixel budget holds."""
    image = open_image(data, max_pixels)
    width, height = image.size
    return width * height * WIDE_MODES.get(image.mode, 1)


def read_image_file(
    path, max_pixels: int = DEFAULT_MAX_PIXELS, fit: tuple[int, int] | None = None
) -> DecodedImage:
    with open(path, "rb") as handle:
        return decode_image(handle.read(), max_pixels, fit)
