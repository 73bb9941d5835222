"""The export stage's commands: ``s4seg export`` (imports torch), ``publish`` and ``rollback``
(no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run_export(args: argparse.Namespace) -> int:
    from .exporter import export_models

    manifest = export_models(
        args.segmenter,
        args.classifier,
        args.out,
        input_size=tuple(args.input_size) if args.input_size else None,
        tau=args.tau,
        data=args.parity_data,
        kind=args.parity_kind,
        parity_images=args.parity_images,
        overwrite=args.overwrite,
        fp16=args.fp16,
        log=lambda message: print(message, file=sys.stderr),
        calibrate_on=args.calibrate,
        calibrate_kind=args.calibrate_kind,
        calibrate_images=args.calibrate_images,
    )
    out = Path(args.out)
    p = manifest.parity
    for graph in [*manifest.graphs.values(), *manifest.fp16_graphs.values()]:
        size = (out / graph.file).stat().st_size / 2**20
        print(f"{out / graph.file}  {size:.1f} MiB")
    line = (
        f"parity on {p['images']} images ({p['data']['kind']}): label agreement "
        f"{100 * p['label_agreement']:.3f}%, max prob diff {p['max_abs_prob_diff']:.1e}"
    )
    if "gated_miou_diff" in p:
        line += (
            f", gated mIoU {100 * p['gated_miou_torch']:.2f} (PyTorch) vs "
            f"{100 * p['gated_miou_onnx']:.2f} (ONNX)"
        )
    print(line)
    print(f"served: {manifest.describe_tau()}")
    print(f"manifest: {out / 'manifest.json'}")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def run_publish(args: argparse.Namespace) -> int:
    from .repository import publish

    version = publish(
        args.export_dir,
        args.repository,
        runtime=args.runtime,
        precision=args.precision,
        keep=args.keep,
        force=args.force,
        eval_data=args.eval_data,
        eval_kind=args.eval_kind,
        eval_images=args.eval_images,
        max_drop=args.max_drop,
        log=_log,
    )
    print(version)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from .repository import rollback

    print(rollback(args.repository, log=_log))
    return 0
