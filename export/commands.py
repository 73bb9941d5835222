"""The export stage's commands: ``export`` (torch, imported when it runs), ``publish`` and
``rollback`` (no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s4seg.confidence import DEFAULT_COVERAGE
from s4seg.defaults import REPOSITORY

from .requests import (
    DEFAULT_CALIBRATION_IMAGES,
    PRECISIONS,
    ExportRequest,
    PromotionGate,
    PublishRequest,
)


def run_export(args: argparse.Namespace) -> int:
    from .exporter import export_models

    variants = frozenset(v for v in PRECISIONS if getattr(args, v))
    request = ExportRequest(
        segmenter=args.segmenter,
        classifier=args.classifier,
        out=args.out,
        input_size=(args.input_size[0], args.input_size[1]) if args.input_size else None,
        tau=args.tau,
        data=args.parity_data,
        kind=args.parity_kind,
        parity_images=args.parity_images,
        overwrite=args.overwrite,
        variants=variants,
        calibrate_on=args.calibrate,
        calibrate_kind=args.calibrate_kind,
        calibrate_images=args.calibrate_images,
        coverage=args.coverage,
    )
    manifest = export_models(request, log=_log)
    out = Path(args.out)
    p = manifest.parity
    assert p is not None  # export measures it or fails
    graphs = list(manifest.graphs.values())
    for variant in manifest.variants.values():
        graphs += variant.graphs.values()
    for graph in graphs:
        size = (out / graph.file).stat().st_size / 2**20
        print(f"{out / graph.file}  {size:.1f} MiB")
    line = (
        f"parity on {p.images} images ({(p.data or {}).get('kind')}): label agreement "
        f"{100 * p.label_agreement:.3f}%, max prob diff {p.max_abs_prob_diff:.1e}"
    )
    if p.gated_miou_torch is not None and p.gated_miou_onnx is not None:
        line += (
            f", gated mIoU {100 * p.gated_miou_torch:.2f} (PyTorch) vs "
            f"{100 * p.gated_miou_onnx:.2f} (ONNX)"
        )
    print(line)
    print(f"served: {manifest.describe_tau()}")
    print(f"manifest: {out / 'manifest.json'}")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def run_publish(args: argparse.Namespace) -> int:
    from .repository import publish

    gate = (
        PromotionGate(args.eval_data, args.eval_kind, args.eval_images, args.max_drop)
        if args.eval_data
        else None
    )
    request = PublishRequest(
        args.export_dir, args.repository, args.runtime, args.precision, args.keep, args.force, gate
    )
    version = publish(request, log=_log)
    print(version)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from .repository import rollback

    print(rollback(args.repository, log=_log))
    return 0


# -- the command line: parsers only (no torch at parse time); each command names its handler ----


def add_parsers(commands: argparse._SubParsersAction) -> None:
    add_export_parser(commands)
    add_publish_parsers(commands)


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="checkpoints -> ONNX graphs + manifest.json, checked against PyTorch"
    )
    export.add_argument("--segmenter", required=True, help="segmenter checkpoint (s4GAN/baseline)")
    export.add_argument("--classifier", help="MLMT checkpoint (without one the gate keeps all)")
    export.add_argument("--out", required=True, help="folder to write (must not exist)")
    export.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="served input size (default: the validation images' resolution)",
    )
    export.add_argument(
        "--tau", type=float, help="serve this gate threshold (default: calibrated, see below)"
    )
    export.add_argument(
        "--calibrate",
        default="auto",
        metavar="DATA|auto|off",
        help="choose the served tau on the calibration part (seeded 30%%) of this data set's "
        "validation split (auto: the training data's); the gate is served off when no tau "
        "beats ungated, and when there is nothing to calibrate on (off)",
    )
    export.add_argument("--calibrate-kind", default=None, help="layout of --calibrate (auto)")
    export.add_argument(
        "--calibrate-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="at most N images for calibration",
    )
    export.add_argument(
        "--coverage",
        type=float,
        default=DEFAULT_COVERAGE,
        help="the prediction sets' target coverage, fitted with the temperature on the "
        "calibration part (default: %(default)s)",
    )
    export.add_argument(
        "--parity-data", help="images for the parity check (default: training data)"
    )
    export.add_argument("--parity-kind", default=None, help="layout of --parity-data (auto)")
    export.add_argument("--parity-images", type=int, default=8)
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    export.add_argument(
        "--fp16", action="store_true", help="also write FP16 segmenter/classifier (GPU serving)"
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="also write an INT8 segmenter (static QDQ, calibrated on training images; refused "
        "below 99%% label agreement or above 0.5 mIoU lost)",
    )
    export.add_argument(
        "--bf16",
        action="store_true",
        help="also judge the FP32 segmenter/classifier run by OpenVINO at bf16, on a CPU with "
        "BF16 instructions (the rule of --int8)",
    )
    export.set_defaults(handler=run_export)


def add_publish_parsers(commands: argparse._SubParsersAction) -> None:
    """``publish`` and ``rollback``."""
    publish = commands.add_parser(
        "publish", help="publish an export as the next version of a Triton model repository"
    )
    publish.add_argument("export_dir", metavar="DIR", help="folder written by s4seg export")
    publish.add_argument("--repository", default=str(REPOSITORY))
    publish.add_argument(
        "--runtime",
        choices=["python", "onnxruntime", "openvino"],
        default="python",
        help="python: the runner inside the python backend (the pip tritonserver; ONNX Runtime "
        "or OpenVINO as --precision chooses); onnxruntime: Triton's native ONNX Runtime backend; "
        "openvino: Triton's native OpenVINO backend for the networks (both: the NGC image)",
    )
    publish.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8", "bf16", "auto"],
        default="fp32",
        help="fp16/int8/bf16 need export --fp16/--int8/--bf16; auto: the fastest of those that "
        "passed parity, measured on this machine (ONNX Runtime or OpenVINO; see /v1/models)",
    )
    publish.add_argument("--keep", type=int, default=None, metavar="N", help="keep N versions")
    publish.add_argument("--force", action="store_true", help="publish even if classes differ")
    publish.add_argument("--eval-data", help="promotion gate: data set to compare versions on")
    publish.add_argument("--eval-kind", default=None, help="layout of --eval-data (auto)")
    publish.add_argument("--eval-images", type=int, default=None, help="at most N images")
    publish.add_argument(
        "--max-drop", type=float, default=1.0, help="refuse if gated mIoU drops more (points)"
    )

    rollback = commands.add_parser("rollback", help="remove the newest published version")
    rollback.add_argument("--repository", default=str(REPOSITORY))
    publish.set_defaults(handler=run_publish)
    rollback.set_defaults(handler=run_rollback)
