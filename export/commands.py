"""The export stage's commands: ``export``, ``quickstart``, ``doctor``, ``bench export`` (torch,
imported when they run), ``publish`` and ``rollback`` (no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s4seg.defaults import REPOSITORY


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
        int8=args.int8,
        log=lambda message: print(message, file=sys.stderr),
        calibrate_on=args.calibrate,
        calibrate_kind=args.calibrate_kind,
        calibrate_images=args.calibrate_images,
    )
    out = Path(args.out)
    p = manifest.parity
    graphs = [*manifest.graphs.values(), *manifest.fp16_graphs.values()]
    for graph in [*graphs, *manifest.int8_graphs.values()]:
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


def run_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart as quickstart

    return quickstart(args)


def run_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor as doctor

    return doctor(args)


def run_bench_export(args: argparse.Namespace) -> int:
    from .bench import bench_export

    bench_export(args)
    return 0


def run_bench_precision(args: argparse.Namespace) -> int:
    from .bench import bench_precision

    bench_precision(args)
    return 0


def run_bench_mapback(args: argparse.Namespace) -> int:
    from .bench import bench_mapback

    bench_mapback(args)
    return 0


# -- the command line: parsers only (no torch at parse time); each command names its handler ----


def add_parsers(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
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
        help="served input size (default: the training crop size)",
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
        "--calibrate-images", type=int, default=300, help="at most N images for calibration"
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
        "--int8", action="store_true",
        help="also write an INT8 segmenter (static QDQ, calibrated on training images; refused "
        "below 99%% label agreement or above 0.5 mIoU lost)",
    )  # fmt: skip

    publish = commands.add_parser(
        "publish", help="publish an export as the next version of a Triton model repository"
    )
    publish.add_argument("export_dir", metavar="DIR", help="folder written by s4seg export")
    publish.add_argument("--repository", default=str(REPOSITORY))
    publish.add_argument(
        "--runtime",
        choices=["python", "onnxruntime"],
        default="python",
        help="python: ONNX Runtime inside the python backend (the pip tritonserver); "
        "onnxruntime: Triton's native backend (NGC image)",
    )
    publish.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="fp16/int8 need export --fp16/--int8",
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
    export.set_defaults(handler=run_export)
    publish.set_defaults(handler=run_publish)
    rollback.set_defaults(handler=run_rollback)

    quick = commands.add_parser(
        "quickstart", help="synthetic data -> s4GAN + MLMT -> export -> publish (first run)"
    )
    quick.add_argument("--data", default="data/synth", help="synthetic data set (made if missing)")
    quick.add_argument("--runs", default="runs/quickstart", help="training runs and the export")
    quick.add_argument("--repository", default=str(REPOSITORY))
    quick.add_argument(
        "--iterations", type=int, help="iterations of both trainers (default: 120 s4GAN, 80 MLMT)"
    )
    quick.add_argument("--force", action="store_true", help="publish again even if one is served")
    quick.add_argument("--runtime", choices=["python", "onnxruntime"], default="python")
    quick.set_defaults(handler=run_quickstart)

    doctor = commands.add_parser(
        "doctor",
        help="check a machine: environment, then every stage once, small, on the device",
        description="Run this first on a new machine. Reports torch/CUDA/cuDNN/GPU/numpy/ONNX "
        "Runtime/tritonserver, then trains each trainer a few iterations (with a validation), "
        "resumes, evaluates, exports with parity and runs the ONNX pipeline. Exit code 1 if a "
        "stage fails.",
    )
    doctor.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    doctor.add_argument("--out", help="keep the work folder, stage logs and doctor.json here")
    doctor.add_argument("--env-only", action="store_true", help="report the environment only")
    doctor.set_defaults(handler=run_doctor)

    export = bench.add_parser("export", help="export time and latency of each ONNX step")
    export.add_argument("--segmenter", help="checkpoint (default: random weights, paper scale)")
    export.add_argument("--classifier", help="MLMT checkpoint (with --segmenter)")
    export.add_argument("--depth", type=int, default=101, help="backbone of the random segmenter")
    export.add_argument("--classifier-depth", type=int, default=101)
    export.add_argument("--classifier-size", type=int, default=320)
    export.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    export.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    export.add_argument("--repeats", type=int, default=10)
    export.add_argument("--warmup", type=int, default=2)
    export.add_argument("--parity-images", type=int, default=4)
    export.add_argument("--device", default="auto", help="auto|cpu|cuda")
    export.add_argument("--write", metavar="MD", help="update this markdown file (BENCHMARKS.md)")
    export.set_defaults(handler=run_bench_export)

    mapback = bench.add_parser(
        "mapback", help="full-resolution mIoU: scores resized then argmax vs nearest labels"
    )
    mapback.add_argument("--model", required=True, help="an export folder")
    mapback.add_argument("--size", type=int, default=1024, help="side of the rendered scenes")
    mapback.add_argument("--images", type=int, default=50)
    mapback.add_argument("--seed", type=int, default=7)
    mapback.add_argument("--write", metavar="MD", help="update this markdown file")
    mapback.set_defaults(handler=run_bench_mapback)

    precision = bench.add_parser(
        "precision", help="an export's segmenter in FP32 against its INT8 / FP16 variants"
    )
    precision.add_argument("--model", required=True, help="an export folder (export --int8)")
    precision.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    precision.add_argument("--repeats", type=int, default=30)
    precision.add_argument("--warmup", type=int, default=5)
    precision.add_argument("--write", metavar="MD", help="update this markdown file")
    precision.set_defaults(handler=run_bench_precision)
