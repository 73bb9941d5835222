"""``s4seg evaluate --onnx DIR`` / ``--triton URL``: the PyTorch evaluation's report, computed
through the exported pipeline (in-process ONNX Runtime, or the Triton ensemble). No torch; the
evaluation itself is ``s4seg.pipeline_evaluation``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from s4seg.errors import DatasetError
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.pipeline_evaluation import Pipeline, evaluate_pipeline
from s4seg.repository import served_manifest


def open_pipeline(args: argparse.Namespace) -> Pipeline:
    if args.onnx:
        return OnnxPipeline.from_export(args.onnx, device=args.device)
    from .triton_pipeline import TritonPipeline

    manifest = served_manifest(Path(args.repository))
    if manifest is None:
        raise DatasetError(f"{args.repository} has no published version to read the manifest from")
    return TritonPipeline(args.triton, manifest)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.classifier or args.tau_sweep:
        raise DatasetError("--classifier and --tau-sweep go with --segmenter (the export has both)")
    pipeline = open_pipeline(args)
    data = args.data or pipeline.manifest.dataset.get("root")
    if not data:
        raise DatasetError("--data is required: the manifest does not name the training data")
    report, table = evaluate_pipeline(
        pipeline,
        data,
        kind=args.kind,
        split=args.split,
        tau=args.tau,
        max_images=args.max_images,
        part=args.part,
        out_dir=args.out,
        save_predictions=args.save_predictions,
    )
    print(table)
    if args.out:
        print(f"report: {Path(args.out) / 'report.json'}")
    else:
        summary = {k: v for k, v in report.items() if k not in ("per_class_iou", "ungated")}
        json.dump({**summary, "confusion_matrix": "..."}, sys.stdout)
        print()
    return 0
