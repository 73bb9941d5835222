"""``s4seg bench mapback``: labels at the photo's resolution. Scenes rendered large with their
masks, served at the export's size, mapped back the served way (gated scores resized, then
argmax) and the nearest-neighbour way every plain server uses; mIoU and boundary F-score
against the full-resolution truth, for the model and for a perfect served-size model (what the
map-back alone costs)."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from s4seg.boundaries import boundary_counts, f_score
from s4seg.letterbox import Framing, Placement
from s4seg.onnx_pipeline import OnnxPipeline

from .report import cpu_description, provenance, report


@dataclass
class MapbackBenchRequest:
    """``s4seg bench mapback``'s options."""

    model: str
    size: int
    images: int
    seed: int
    write: str | None


def nearest_map_back(labels: np.ndarray, placement: Placement) -> np.ndarray:
    """A served-size uint8 label map -> the input's size, nearest neighbour: the map back the
    product no longer uses (``labels_from_scores`` is the one), kept as what it is measured
    against."""
    top, left = placement.offset
    crop = labels[top : top + placement.content[0], left : left + placement.content[1]]
    if crop.shape == placement.original:
        return np.ascontiguousarray(crop)
    height, width = placement.original
    resized = Image.fromarray(crop.astype(np.uint8)).resize(
        (width, height), Image.Resampling.NEAREST
    )
    return np.asarray(resized)


def served_size_truth(truth: np.ndarray, placement, size: tuple[int, int], n: int) -> np.ndarray:
    """Scores of a perfect model at the served size: each class's share of every served pixel
    (the full-resolution mask averaged down, in the letterbox's place). Mapping these back
    measures what each way of mapping back loses by itself."""
    scores = np.zeros((n, *size), dtype=np.float32)
    top, left = placement.offset
    height, width = placement.content
    for c in range(n):
        share = Image.fromarray((truth == c).astype(np.float32)).resize(
            (width, height), Image.Resampling.BOX
        )
        scores[c, top : top + height, left : left + width] = np.asarray(share)
    return scores


def bench_mapback(request: MapbackBenchRequest) -> str:
    """Label maps at the photo's resolution against the served-size labels blown up with
    nearest neighbour: mIoU against masks drawn at full resolution, and the cost of each.

    The synthetic scenes of the training data, rendered at ``--size`` (the same scene at any
    size): the model sees them at its served size either way; only the map back differs."""
    from s4seg.letterbox import labels_from_scores
    from s4seg.metrics import confusion_matrix, scores
    from s4seg.training.data.synth import render_sample

    pipeline = OnnxPipeline.from_export(request.model, device="cpu")
    manifest = pipeline.manifest
    framing = Framing.of(manifest)
    size = framing.size
    n = manifest.num_classes
    names = ("nearest", "bilinear", "truth nearest", "truth bilinear")
    confusion = {name: np.zeros((n, n), np.int64) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    tolerances = (2, round(0.0075 * request.size * 2**0.5))  # 2 px; 0.75% of the diagonal
    edges = {name: {tol: np.zeros(4, np.int64) for tol in tolerances} for name in confusion}
    rng = np.random.default_rng(request.seed)
    for i in range(request.images):
        image, truth = render_sample(rng, request.size)
        framed = framing.frame(image)
        placement = framed.placement
        out = pipeline.run(framed.canvas[None], framed.view[None])
        perfect = served_size_truth(truth, placement, size, n)
        for name, back, result in (
            ("nearest", nearest_map_back, out.labels[0]),
            ("bilinear", labels_from_scores, out.scores[0]),
            ("truth nearest", nearest_map_back, perfect.argmax(0).astype(np.uint8)),
            ("truth bilinear", labels_from_scores, perfect),
        ):
            start = time.perf_counter()
            labels = back(result, placement)
            times[name].append(time.perf_counter() - start)
            confusion[name] += confusion_matrix(truth, labels, n)
            for tol in tolerances:
                edges[name][tol] += boundary_counts(truth, labels, tol)
        print(f"bench mapback: {i + 1}/{request.images}", file=sys.stderr, end="\r")
    h, w = size
    lines = [
        *provenance(cpu_description()),
        f"Model: {request.model} (served {h}x{w}); {request.images} synthetic scenes rendered at "
        f"{request.size}x{request.size} with their masks (seed {request.seed}); gated at the "
        "served tau. "
        "Boundary F: label edges of prediction and truth matched within a tolerance (any class "
        "change; precision and recall summed over the images).",
        "",
        "| map back to the image's size | mIoU | pixel accuracy | "
        + " | ".join(f"boundary F ({tol} px)" for tol in tolerances)
        + " | median ms per image |",
        "|---|---|---|" + "---|" * len(tolerances) + "---|",
    ]
    for name, label in (
        ("nearest", "the model: served-size labels, nearest neighbour (before)"),
        ("bilinear", "the model: gated scores bilinear, then argmax (now)"),
        ("truth nearest", "a perfect served-size model: nearest neighbour"),
        ("truth bilinear", "a perfect served-size model: scores bilinear, then argmax"),
    ):
        result = scores(confusion[name])
        boundaries = " | ".join(f"{100 * f_score(edges[name][tol]):.2f}" for tol in tolerances)
        lines.append(
            f"| {label} | {100 * result.miou:.2f} | {100 * result.pixel_accuracy:.2f} | "
            f"{boundaries} | {1000 * statistics.median(times[name]):.1f} |"
        )
    return report("\n".join(lines), request.write, "mapback-cpu")
