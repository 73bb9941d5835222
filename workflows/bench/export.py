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
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from s4seg import tensors as t
from s4seg.classes import VOC_CLASSES, voc_palette
from s4seg.defaults import IMAGENET_MEAN, IMAGENET_STD
from s4seg.export.exporter import export_models
from s4seg.export.requests import ExportRequest
from s4seg.letterbox import Framing
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.models import segmenter_from_arch
from s4seg.training.models.classifier import multilabel_resnet

from .report import cpu_description, provenance, segmenter_name, time_calls, update_section


def random_checkpoints(folder: Path, depth: int, cls_depth: int, cls_size: int) -> tuple[str, str]:
    """A segmenter and a classifier checkpoint with random weights, in the real format."""
    classes = list(VOC_CLASSES)
    common: dict[str, Any] = {
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
            ExportRequest(
                segmenter,
                classifier,
                str(folder / "export"),
                input_size=(request.input_size[0], request.input_size[1])
                if request.input_size
                else None,
                parity_images=request.parity_images,
            ),
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
        f"Models: {segmenter_name(seg)} ({len(manifest.classes)} classes) + "
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
