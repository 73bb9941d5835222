"""The command line of the commands that drive several stages (``workflows/commands.py``
handles them): parsers only, no torch at parse time; each command names its handler."""

from __future__ import annotations

import argparse

from s4seg.defaults import REPOSITORY
from s4seg.holdout import PARTS
from s4seg.manifest import PAPER_TAU
from s4seg.serving.commands import add_serve_arguments

from .commands import (
    bench_handler,
    run_bench_serve,
    run_doctor,
    run_evaluate,
    run_quickstart,
    run_serve,
    run_study,
    step_times,
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """The workflows' commands (the stages add theirs), in the order ``--help`` lists them."""
    add_quickstart_parser(commands)
    add_doctor_parser(commands)
    add_serve_parser(commands)
    add_evaluate_parser(commands)
    add_study_parser(commands)
    add_bench_parsers(commands)


def add_quickstart_parser(commands: argparse._SubParsersAction) -> None:
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
    quick.add_argument("--runtime", choices=["python", "onnxruntime", "openvino"], default="python")
    quick.set_defaults(handler=run_quickstart)


def add_doctor_parser(commands: argparse._SubParsersAction) -> None:
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


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="serve segmentation: tritonserver + version manager + HTTP gateway"
    )
    add_serve_arguments(serve)
    serve.add_argument(
        "--no-quickstart", action="store_true", help="fail instead of building the demo model"
    )
    serve.set_defaults(handler=run_serve)


def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("evaluate", help="mIoU, per-class IoU, pixel accuracy, confusion")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--segmenter", help="segmenter checkpoint (.pt): PyTorch evaluation")
    what.add_argument("--onnx", metavar="DIR", help="an export folder: ONNX Runtime in-process")
    what.add_argument(
        "--triton", metavar="URL", help="a running Triton (host:port of its HTTP API)"
    )
    ev.add_argument(
        "--repository",
        default=str(REPOSITORY),
        help="with --triton: the repository it serves (for the manifest)",
    )
    ev.add_argument("--classifier", help="MLMT checkpoint: report gated and ungated mIoU")
    ev.add_argument(
        "--tau",
        type=float,
        default=None,
        help=f"gate threshold (default: the manifest's; with --segmenter, {PAPER_TAU})",
    )
    ev.add_argument("--tau-sweep", action="store_true", help="also report several tau values")
    ev.add_argument(
        "--data", help="data set folder (default: the one the checkpoint was trained on)"
    )
    ev.add_argument("--kind", default=None, help="layout of --data (default: auto)")
    ev.add_argument("--split", default=None, help="split to evaluate (default: val)")
    ev.add_argument(
        "--part",
        choices=PARTS,
        default="report",
        help="of the validation split: report (default: the images outside the seeded "
        "calibration part export chooses tau on), calibration, or all",
    )
    ev.add_argument("--out", help="folder for report.json, confusion.csv and predictions")
    ev.add_argument(
        "--save-predictions",
        type=int,
        default=0,
        metavar="N",
        help="write colourised predictions of the first N images (PNG)",
    )
    ev.add_argument("--max-images", type=int, default=None)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(handler=run_evaluate)


def add_study_parser(commands: argparse._SubParsersAction) -> None:
    study = commands.add_parser(
        "study",
        help="label efficiency: methods x label budgets x split seeds, table and pictures",
        description="Each cell is a training run (a segmenter or the MLMT classifier) in "
        "OUT/runs/, evaluated on the report part of the validation split; gated methods choose "
        "tau on the calibration part. A killed study resumes: finished cells are skipped, the "
        "others continue from their checkpoints. Writes OUT/study.json, study.md, study.png, "
        "curves.png.",
    )
    study.add_argument("--out", required=True, help="the study's folder (resumes what is there)")
    study.add_argument(
        "--preset",
        help="a study preset (voc-paper, cityscapes-paper, "
        "synthetic-cpu, synthetic-dense, ...) or a YAML file; flags override "
        "it",
    )
    study.add_argument("--config", help="training preset or YAML file of every cell")
    study.add_argument(
        "--methods",
        help="comma-separated: baseline, s4gan, unimatch, baseline+mlmt, s4gan+mlmt, unimatch+mlmt",
    )
    study.add_argument(
        "--labels", help="comma-separated budgets: ratios (1/8, full), counts (183) or id files"
    )
    study.add_argument("--seeds", help="comma-separated split seeds, e.g. 0,1,2")
    study.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key of every cell",
    )
    study.add_argument("--jobs", type=int, default=1, help="cells side by side (processes)")
    study.add_argument("--cell", metavar="i/N", help="run only cell i of the study's N")
    study.add_argument("--device", help="auto|cpu|cuda|cuda:N (default: the config's)")
    study.add_argument(
        "--dry-run", action="store_true", help="print the cells, their commands and a time estimate"
    )
    study.add_argument(
        "--step-seconds",
        type=step_times,
        metavar="TRAINER=S,...",
        help="the dry run's seconds per iteration (e.g. bench train's figures for the GPU the "
        "study will run on) instead of timing the steps here",
    )
    study.add_argument(
        "--report",
        action="store_true",
        help="write study.json/md/png and curves.png from the finished cells; train nothing",
    )
    study.set_defaults(handler=run_study)


def add_bench_parsers(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks (results go into BENCHMARKS.md)")
    targets = bench.add_subparsers(dest="target", required=True)
    add_bench_train_parser(targets)
    add_bench_export_parser(targets)
    add_bench_mapback_parser(targets)
    add_bench_precision_parser(targets)
    add_bench_serve_parser(targets)


def add_bench_train_parser(targets: argparse._SubParsersAction) -> None:
    train = targets.add_parser(
        "train", help="time the training step per backbone and precision (median, spread, MFU)"
    )
    train.add_argument(
        "--trainer",
        choices=["segmenter", "s4gan", "unimatch", "unimatch-v2"],
        default="segmenter",
        help="which step (unimatch: on DeepLabv3+, its recipe's model; unimatch-v2: on the DPT "
        "ViT, --backbones)",
    )
    train.add_argument(
        "--backbones",
        nargs="+",
        help="unimatch-v2's ViT encoders (default: vit_small_patch14_dinov2, and "
        "vit_base_patch14_dinov2 on a GPU)",
    )
    train.add_argument(
        "--depths", type=int, nargs="+", help="backbones (default: 101 on a GPU, 18 50 101 on CPU)"
    )
    train.add_argument(
        "--precisions",
        nargs="+",
        metavar="P",
        help="fp32 fp32+cl bf16 bf16+cl (default: all four on a GPU, fp32 on the CPU)",
    )
    train.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--crop", type=int, help="square crop (default: 321; unimatch-v2: 518)")
    train.add_argument(
        "--iterations", type=int, help="timed iterations per row (default: 50 GPU, 3 CPU)"
    )
    train.add_argument(
        "--warmup", type=int, help="untimed iterations first (default: 10 GPU, 1 CPU)"
    )
    train.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    train.add_argument("--write", metavar="MD", help="update this markdown file (BENCHMARKS.md)")
    train.set_defaults(handler=bench_handler("train", "TrainBenchRequest", "bench_train"))


def add_bench_export_parser(targets: argparse._SubParsersAction) -> None:
    export = targets.add_parser("export", help="export time and latency of each ONNX step")
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
    export.set_defaults(handler=bench_handler("export", "ExportBenchRequest", "bench_export"))


def add_bench_mapback_parser(targets: argparse._SubParsersAction) -> None:
    mapback = targets.add_parser(
        "mapback", help="full-resolution mIoU: scores resized then argmax vs nearest labels"
    )
    mapback.add_argument("--model", required=True, help="an export folder")
    mapback.add_argument("--size", type=int, default=1024, help="side of the rendered scenes")
    mapback.add_argument("--images", type=int, default=50)
    mapback.add_argument("--seed", type=int, default=7)
    mapback.add_argument("--write", metavar="MD", help="update this markdown file")
    mapback.set_defaults(handler=bench_handler("mapback", "MapbackBenchRequest", "bench_mapback"))


def add_bench_precision_parser(targets: argparse._SubParsersAction) -> None:
    precision = targets.add_parser(
        "precision",
        help="an export's networks in every runtime (ONNX Runtime, OpenVINO) and precision "
        "(FP32, INT8, BF16, FP16) it can run in here",
    )
    precision.add_argument("--model", required=True, help="an export folder (export --int8 --bf16)")
    precision.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    precision.add_argument("--repeats", type=int, default=30)
    precision.add_argument("--warmup", type=int, default=5)
    precision.add_argument("--write", metavar="MD", help="update this markdown file")
    precision.set_defaults(
        handler=bench_handler("precision", "PrecisionBenchRequest", "bench_precision")
    )


def add_bench_serve_parser(targets: argparse._SubParsersAction) -> None:
    serve = targets.add_parser("serve", help="gateway vs in-process ONNX Runtime vs naive PyTorch")
    serve.add_argument("--repository", default=str(REPOSITORY))
    serve.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    serve.add_argument("--requests", type=int, default=100, help="per target and concurrency")
    serve.add_argument("--images", type=int, default=16, help="distinct images, cycled")
    serve.add_argument("--log-dir", default="runs/bench-serve")
    serve.add_argument("--window", type=float, default=4.0, help="model alone: seconds/window")
    serve.add_argument("--windows", type=int, default=3, help="model alone: timed windows")
    serve.add_argument("--hop-concurrency", type=int, default=8)
    serve.add_argument(
        "--variants", type=int, default=3, help="gateway variants to run (the default first)"
    )
    serve.add_argument("--size-repeats", type=int, default=8, help="requests per size/format")
    serve.add_argument("--write", metavar="MD", help="update this markdown file (BENCHMARKS.md)")
    serve.set_defaults(handler=run_bench_serve)
