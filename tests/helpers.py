"""Helpers shared by the tests: tiny training settings and writers for small data trees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


def many_scan_jpeg(extra_scans: int = 1000, side: int = 4000) -> bytes:
    """A flat grey progressive JPEG plus copies of its 31-byte AC refinement scan: each extra scan
    costs ~12 ms of decoding at 16 MP (security review C1; its generator)."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True)
    data, segments, i = buffer.getvalue(), [], 2
    while data[i + 1] != 0xD9:
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] == 0xDA:  # a scan: header, then entropy-coded data up to the next marker
            while not (data[end] == 0xFF and data[end + 1] not in (0, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[i:end])
        i = end

    def refines_ac(segment: bytes) -> bool:
        n = segment[4]
        return segment[1] == 0xDA and segment[5 + 2 * n] > 0 and segment[7 + 2 * n] >> 4 > 0

    refine = min(filter(refines_ac, segments), key=len)
    return b"\xff\xd8" + b"".join(segments) + refine * extra_scans + b"\xff\xd9"


@dataclass(frozen=True)
class ScriptedSegmenter:
    """``s4seg predict``'s segmenter factory for its worker tests: the output is the input's bytes,
    except for names that say otherwise: ``stall`` (sleeps for good with SIGTERM blocked, so only
    SIGKILL stops it, as a thread deadlocked in C would), ``spin`` (a Python loop that never ends),
    ``die`` (the worker exits), ``bad`` (raises)."""

    def build(self) -> Callable[[Path], bytes]:
        return scripted_segment


def scripted_segment(path: Path) -> bytes:
    import os
    import signal
    import time

    if "stall" in path.name:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        while True:
            time.sleep(60)
    if "spin" in path.name:
        while True:
            pass
    if "die" in path.name:
        os._exit(3)
    if "bad" in path.name:
        raise ValueError(f"{path.name}: scripted failure")
    return path.read_bytes()


def ztxt_png(chunks: int = 63) -> bytes:
    """A 1x1 PNG whose zTXt chunks inflate to 1 MB each when it is opened (66 KB for 63 MB of
    text: security review H3; its generator)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    text = zlib.compress(b"\0" * (1 << 20), 9)
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    texts = b"".join(chunk(b"zTXt", b"k%d\0\0" % k + text) for k in range(chunks))
    pixels = chunk(b"IDAT", zlib.compress(b"\0\0"))
    return b"\x89PNG\r\n\x1a\n" + header + texts + pixels + chunk(b"IEND", b"")
