"""``s4seg bench export``: export time, and latency of each ONNX step with ONNX Runtime.

Without checkpoints it builds random-weight ones at the paper's scale (DeepLabv2 ResNet-101,
21 VOC classes, ResNet-101 MLMT classifier at 320x320): export time and latency do not depend on
the weights.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from s4seg import tensors as t
from s4seg.boundaries import boundary_counts, f_score
from s4seg.classes import VOC_CLASSES, voc_palette
from s4seg.defaults import IMAGENET_MEAN, IMAGENET_STD
from s4seg.export.exporter import export_models
from s4seg.letterbox import Framing, Placement
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.models import segmenter_from_arch
from s4seg.training.models.classifier import multilabel_resnet

from .report import cpu_description, percentile, provenance, report, time_calls, update_section


def random_checkpoints(folder: Path, depth: int, cls_depth: int, cls_size: int) -> tuple[str, str]:
    """A segmenter and a classifier checkpoint with random weights, in the real format."""
    classes = list(VOC_CLASSES)
    common = {
        "classes": classes,
        "palette": [list(c) for c in voc_palette(len(classes))],
        "background_index": 0,
        "split": {"dataset": {"kind": "voc", "root": str(folder / "no-data")}},
        "iteration": 0,
        "metrics": {},
    }
    arch = {
        "name": "deeplabv2",
        "num_classes": len(classes),
        "backbone_depth": depth,
        "aspp_rates": [6, 12, 18, 24],
        "freeze_bn_affine": True,
    }
    segmenter = Checkpoint(
        **common,
        kind="segmenter",
        trainer="bench",
        arch=arch,
        model=segmenter_from_arch(arch).state_dict(),
        normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        config={"data": {"crop_size": [321, 321]}},
    ).save(folder / "segmenter.pt")
    cls_arch = {
        "name": "resnet-multilabel",
        "depth": cls_depth,
        "num_classes": len(classes),
        "input_size": cls_size,
    }
    classifier = Checkpoint(
        **common,
        kind="classifier",
        trainer="bench",
        arch=cls_arch,
        model=multilabel_resnet(len(classes), cls_depth).state_dict(),
        normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        config={},
    ).save(folder / "classifier.pt")
    return str(segmenter), str(classifier)


def step_latencies(
    pipeline: OnnxPipeline, batch: int, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each step (and of the whole pipeline) on a letterboxed batch."""
    manifest = pipeline.manifest
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)  # a VOC-sized picture
    framed = Framing.of(manifest).frame(photo)
    images = np.repeat(framed.canvas[None], batch, axis=0)
    views = np.repeat(framed.view[None], batch, axis=0)
    s = pipeline.sessions
    (logits,) = s["segmenter"].run(None, {t.IMAGE.name: images})
    (probs,) = s["classifier"].run(None, {t.CLS_IMAGE.name: views})
    tau = np.full((batch, 1), manifest.tau, dtype=t.TAU.dtype)
    gate_inputs = {t.LOGITS.name: logits, t.CLASS_PROBS.name: probs, t.TAU.name: tau}
    calls = {
        "segmenter": lambda: s["segmenter"].run(None, {t.IMAGE.name: images}),
        "classifier": lambda: s["classifier"].run(None, {t.CLS_IMAGE.name: views}),
        "gate": lambda: s["gate"].run(None, gate_inputs),
        "pipeline": lambda: pipeline.run(images, views),
    }
    return {name: time_calls(call, repeats, warmup) for name, call in calls.items()}


@dataclass
class ExportBenchRequest:
    """``s4seg bench export``'s options."""

    segmenter: str | None
    classifier: str | None
    depth: int
    classifier_depth: int
    classifier_size: int
    input_size: list[int] | None
    parity_images: int
    device: str
    batch_sizes: list[int]
    repeats: int
    warmup: int
    write: str | None


@dataclass
class MapbackBenchRequest:
    """``s4seg bench mapback``'s options."""

    model: str
    size: int
    images: int
    seed: int
    write: str | None


@dataclass
class PrecisionBenchRequest:
    """``s4seg bench precision``'s options."""

    model: str
    batch_sizes: list[int]
    repeats: int
    warmup: int
    write: str | None


def bench_export(request: ExportBenchRequest) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        segmenter, classifier = request.segmenter, request.classifier
        if segmenter is None:
            segmenter, classifier = random_checkpoints(
                folder, request.depth, request.classifier_depth, request.classifier_size
            )
        print("bench export: exporting ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        manifest = export_models(
            segmenter,
            classifier,
            str(folder / "export"),
            input_size=tuple(request.input_size) if request.input_size else None,
            parity_images=request.parity_images,
            log=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
        )
        export_seconds = time.perf_counter() - start
        sizes = {
            s: (folder / "export" / g.file).stat().st_size / 2**20
            for s, g in manifest.graphs.items()
        }
        pipeline = OnnxPipeline.from_export(folder / "export", device=request.device)
        rows = []
        for batch in request.batch_sizes:
            print(f"bench export: latency at batch {batch} ...", file=sys.stderr, flush=True)
            times = step_latencies(pipeline, batch, request.repeats, request.warmup)
            rows += [(batch, name, values) for name, values in times.items()]
    seg = manifest.sources["segmenter"].arch
    h, w = manifest.input_size
    parity_images = manifest.parity.images if manifest.parity else 0
    machine = f"{cpu_description()}, onnxruntime {ort.__version__}, torch {torch.__version__}"
    lines = [
        *provenance(machine),
        f"Models: DeepLabv2 ResNet-{seg['backbone_depth']} ({len(manifest.classes)} classes) + "
        f"MLMT ResNet-{manifest.sources['classifier'].arch['depth'] if classifier else '-'} "
        f"({manifest.classifier.size if manifest.classifier else '-'} px); served input "
        f"{h}x{w}; execution provider {pipeline.providers[0]}; {request.warmup} warm-up + "
        f"{request.repeats} timed calls per row.",
        "",
        f"Export (4 graphs, onnx.checker, parity on {parity_images} images): "
        f"**{export_seconds:.1f} s**; files: "
        + ", ".join(f"{s} {mib:.1f} MiB" for s, mib in sizes.items()),
        "",
        "| batch | step | median ms | p90 ms | ms per image |",
        "|---|---|---|---|---|",
    ]
    for batch, name, values in rows:
        median = statistics.median(values) * 1000
        p90 = sorted(values)[max(0, int(0.9 * len(values)) - 1)] * 1000
        lines.append(f"| {batch} | {name} | {median:.1f} | {p90:.1f} | {median / batch:.1f} |")
    table = "\n".join(lines)
    print(table)
    if request.write:
        update_section(Path(request.write), "export-cpu", table)
    return table


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


def cpu_int8_support() -> str:
    """What the CPU offers for int8 dot products (ONNX Runtime picks its kernels by these)."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "CPU flags unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in wanted)


def bench_precision(request: PrecisionBenchRequest) -> str:
    """The networks of an export in every runtime and precision it can run in here (ONNX
    Runtime and OpenVINO; FP32, and INT8 / FP16 / BF16 where the export has them accepted; the
    candidates of ``publish --precision auto``), the segmenter alone and the whole pipeline, on
    the same letterboxed images: median ms per image over timed calls after a warm-up, the
    p10-p90 spread, and the ratio to ONNX Runtime FP32 measured in the same run."""
    from s4seg.export.engine_choice import Candidate, candidates
    from s4seg.manifest import Manifest

    folder = Path(request.model)
    manifest = Manifest.load(folder)
    found, left_out = candidates(manifest)
    if "fp16" in manifest.variants and manifest.variants["fp16"].graphs:
        found.append(Candidate("onnxruntime", "fp16"))
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    framed = Framing.of(manifest).frame(photo)
    rows = []
    for batch in request.batch_sizes:
        images = np.repeat(framed.canvas[None], batch, axis=0)
        views = np.repeat(framed.view[None], batch, axis=0)
        for candidate in found:
            pipeline = OnnxPipeline.from_export(
                folder, device="cpu", precision=candidate.precision, runtime=candidate.runtime
            )
            session = pipeline.sessions["segmenter"]
            calls = {
                "segmenter": lambda s=session, x=images: s.run(None, {t.IMAGE.name: x}),
                "pipeline": lambda p=pipeline, x=images, v=views: p.run(x, v),
            }
            for what, call in calls.items():
                times = time_calls(call, request.repeats, request.warmup, per=batch)
                rows.append((batch, what, candidate, times))
                median = 1000 * statistics.median(times)
                print(f"bench precision: batch {batch} {what} {candidate.name}: {median:.1f} "
                      "ms/image", file=sys.stderr)  # fmt: skip
    reference = {
        (b, w): statistics.median(ts)
        for b, w, c, ts in rows
        if c == Candidate("onnxruntime", "fp32")
    }
    h, w = manifest.input_size
    import openvino

    lines = [
        *provenance(
            f"{cpu_description()}; {cpu_int8_support()}; onnxruntime {ort.__version__}, "
            f"openvino {openvino.__version__}"
        ),
        f"Model: {folder} (DeepLabv2 ResNet-"
        f"{manifest.sources['segmenter'].arch['backbone_depth']}, served {h}x{w}); "
        f"{request.warmup} warm-up + {request.repeats} timed calls per row, one session per "
        "network "
        "with the runtime's default threads. Parity: each variant's figures from the manifest "
        "(label agreement with PyTorch and gated mIoU lost, on the calibration images at the "
        "served tau).",
    ]
    for precision in ("int8", "bf16", "fp16"):
        variant = manifest.variants.get(precision)  # type: ignore[call-overload]
        if variant is None:
            continue
        judged = {"onnxruntime" if precision != "bf16" else "openvino": variant.parity}
        judged.update(variant.runtime_parity)  # INT8 in OpenVINO: its own kernels, own figures
        for runtime, parity in judged.items():
            verdict = "accepted" if variant.graphs and parity.passed else "refused"
            lines.append(
                f"- {precision.upper()} in {runtime}: label agreement "
                f"{100 * parity.label_agreement:.2f}%, gated mIoU drop "
                f"{100 * (parity.gated_miou_drop or 0):.2f} points on {parity.images} images; "
                f"{verdict}" + (f" ({parity.rule})" if parity.rule else "")
            )
    lines += [f"- left out: {reason}" for reason in left_out]
    lines += [
        "",
        "| batch | what | runtime | precision | median ms/image | p10-p90 | vs ONNX Runtime FP32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, what, candidate, times in rows:
        p10, p90 = percentile(times, 0.1), percentile(times, 0.9)
        median = statistics.median(times)
        lines.append(
            f"| {batch} | {what} | {candidate.runtime} | {candidate.precision} | "
            f"{1000 * median:.1f} | {1000 * p10:.1f}-{1000 * p90:.1f} | "
            f"{reference[(batch, what)] / median:.2f}x |"
        )
    return report("\n".join(lines), request.write, "precision-cpu")
