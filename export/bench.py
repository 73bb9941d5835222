"""``s4seg bench export``: export time, and latency of each ONNX step with ONNX Runtime.

Without checkpoints it builds random-weight ones at the paper's scale (DeepLabv2 ResNet-101,
21 VOC classes, ResNet-101 MLMT classifier at 320x320): export time and latency do not depend on
the weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from s4seg.training.checkpoint import save_checkpoint
from s4seg.training.data.classification import IMAGENET_MEAN, IMAGENET_STD
from s4seg.training.models import segmenter_from_arch
from s4seg.training.models.classifier import multilabel_resnet

from s4seg import tensors as t
from s4seg.benchmarks import cpu_description, provenance, update_section
from s4seg.classes import VOC_CLASSES, voc_palette
from s4seg.letterbox import letterbox
from s4seg.onnx_pipeline import OnnxPipeline

from .exporter import export_models


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
    segmenter = save_checkpoint(
        {
            **common,
            "kind": "segmenter",
            "trainer": "bench",
            "arch": arch,
            "model": segmenter_from_arch(arch).state_dict(),
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "config": {"data": {"crop_size": [321, 321]}},
        },
        folder / "segmenter.pt",
    )
    cls_arch = {
        "name": "resnet-multilabel",
        "depth": cls_depth,
        "num_classes": len(classes),
        "input_size": cls_size,
    }
    classifier = save_checkpoint(
        {
            **common,
            "kind": "classifier",
            "trainer": "bench",
            "arch": cls_arch,
            "model": multilabel_resnet(len(classes), cls_depth).state_dict(),
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "config": {},
        },
        folder / "classifier.pt",
    )
    return str(segmenter), str(classifier)


def step_latencies(
    pipeline: OnnxPipeline, batch: int, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each step (and of the whole pipeline) on a letterboxed batch."""
    manifest = pipeline.manifest
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)  # a VOC-sized picture
    canvas, _ = letterbox(photo, tuple(manifest.input_size), tuple(manifest.pad_value))
    images = np.repeat(canvas[None], batch, axis=0)
    s = pipeline.sessions
    seg_input, cls_input = s["preprocess"].run(None, {t.IMAGE.name: images})
    (logits,) = s["segmenter"].run(None, {t.SEG_INPUT.name: seg_input})
    (probs,) = s["classifier"].run(None, {t.CLS_INPUT.name: cls_input})
    tau = np.full((batch, 1), manifest.tau, dtype=t.TAU.dtype)
    gate_inputs = {t.LOGITS.name: logits, t.CLASS_PROBS.name: probs, t.TAU.name: tau}
    calls = {
        "preprocess": lambda: s["preprocess"].run(None, {t.IMAGE.name: images}),
        "segmenter": lambda: s["segmenter"].run(None, {t.SEG_INPUT.name: seg_input}),
        "classifier": lambda: s["classifier"].run(None, {t.CLS_INPUT.name: cls_input}),
        "gate": lambda: s["gate"].run(None, gate_inputs),
        "pipeline": lambda: pipeline.run(images),
    }
    times: dict[str, list[float]] = {}
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        times[name] = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def bench_export(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        segmenter, classifier = args.segmenter, args.classifier
        if segmenter is None:
            segmenter, classifier = random_checkpoints(
                folder, args.depth, args.classifier_depth, args.classifier_size
            )
        print("bench export: exporting ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        manifest = export_models(
            segmenter,
            classifier,
            str(folder / "export"),
            input_size=tuple(args.input_size) if args.input_size else None,
            parity_images=args.parity_images,
            log=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
        )
        export_seconds = time.perf_counter() - start
        sizes = {
            s: (folder / "export" / g.file).stat().st_size / 2**20
            for s, g in manifest.graphs.items()
        }
        pipeline = OnnxPipeline.from_export(folder / "export", device=args.device)
        rows = []
        for batch in args.batch_sizes:
            print(f"bench export: latency at batch {batch} ...", file=sys.stderr, flush=True)
            times = step_latencies(pipeline, batch, args.repeats, args.warmup)
            rows += [(batch, name, values) for name, values in times.items()]
    seg = manifest.sources["segmenter"].arch
    h, w = manifest.input_size
    machine = f"{cpu_description()}, onnxruntime {ort.__version__}, torch {torch.__version__}"
    lines = [
        *provenance(machine),
        f"Models: DeepLabv2 ResNet-{seg['backbone_depth']} ({len(manifest.classes)} classes) + "
        f"MLMT ResNet-{manifest.sources['classifier'].arch['depth'] if classifier else '-'} "
        f"({manifest.classifier.size if manifest.classifier else '-'} px); served input "
        f"{h}x{w}; execution provider {pipeline.providers[0]}; {args.warmup} warm-up + "
        f"{args.repeats} timed calls per row.",
        "",
        f"Export (4 graphs, onnx.checker, parity on {manifest.parity['images']} images): "
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
    if args.write:
        update_section(Path(args.write), "export-cpu", table)
    return table
