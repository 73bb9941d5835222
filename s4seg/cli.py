"""The ``s4seg`` command. Parsers only: each stage's code is imported when its command runs, so
``s4seg --help`` and the serving commands never import torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from s4seg import __version__
from s4seg.errors import S4segError


def _data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="make synthetic data, make labeled/unlabeled splits")
    sub = data.add_subparsers(dest="action", required=True)

    synth = sub.add_parser("synth", help="write the seeded synthetic data set (folder layout)")
    synth.add_argument("--out", required=True, help="folder to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--num-train", type=int, default=600)
    synth.add_argument("--num-val", type=int, default=150)
    synth.add_argument("--num-unlabeled", type=int, default=200)
    synth.add_argument("--size", type=int, default=128, help="image side in pixels")

    split = sub.add_parser("split", help="seeded labeled/unlabeled split of a training set")
    split.add_argument("--data", required=True, help="data set folder")
    split.add_argument("--kind", default="auto", help="voc|cityscapes|context|folder|auto")
    split.add_argument("--train-split", help="name of the training split (layout default)")
    split.add_argument("--ratio", default="1/8", help="1/50, 1/20, 1/8, 1/4, full, 0.3, ...")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", required=True, help="split file to write (JSON)")


TRAINERS = {
    "baseline": "supervised DeepLabv2 on the labeled part only (the paper's DeepLabv2 rows)",
    "s4gan": "s4GAN: DeepLabv2 as the generator of a GAN (CE + feature matching + self-training)",
    "mlmt": "MLMT: the Mean-Teacher multi-label classifier that gates the segmenter's classes",
}


def _train_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model")
    sub = train.add_subparsers(dest="trainer", required=True)
    for name, text in TRAINERS.items():
        trainer = sub.add_parser(name, help=text, description=text)
        trainer.add_argument(
            "--config",
            default="voc",
            help="preset (voc, cityscapes, context, synthetic-quick, quickstart) or YAML file",
        )
        trainer.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. train.iterations=100",
        )
        trainer.add_argument(
            "--resume",
            metavar="CKPT|auto",
            help="continue from a checkpoint; 'auto' = <out_dir>/last.pt if present",
        )


def _evaluate_command(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("evaluate", help="mIoU, per-class IoU, pixel accuracy, confusion")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--segmenter", help="segmenter checkpoint (.pt): PyTorch evaluation")
    what.add_argument("--onnx", metavar="DIR", help="an export folder: ONNX Runtime in-process")
    what.add_argument(
        "--triton", metavar="URL", help="a running Triton (host:port of its HTTP API)"
    )
    ev.add_argument(
        "--repository",
        default="model_repository",
        help="with --triton: the repository it serves (for the manifest)",
    )
    ev.add_argument("--classifier", help="MLMT checkpoint: report gated and ungated mIoU")
    ev.add_argument(
        "--tau", type=float, default=None, help="gate threshold (default: 0.2, or the manifest's)"
    )
    ev.add_argument("--tau-sweep", action="store_true", help="also report several tau values")
    ev.add_argument(
        "--data", help="data set folder (default: the one the checkpoint was trained on)"
    )
    ev.add_argument("--kind", default=None, help="layout of --data (default: auto)")
    ev.add_argument("--split", default=None, help="split to evaluate (default: val)")
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


def _bench_commands(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks (results go into BENCHMARKS.md)")
    sub = bench.add_subparsers(dest="target", required=True)
    train = sub.add_parser(
        "train", help="time the training step per backbone and precision (median, spread, MFU)"
    )
    train.add_argument(
        "--trainer", choices=["segmenter", "s4gan"], default="segmenter", help="which step"
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
    train.add_argument("--crop", type=int, default=321)
    train.add_argument(
        "--iterations", type=int, help="timed iterations per row (default: 50 GPU, 3 CPU)"
    )
    train.add_argument(
        "--warmup", type=int, help="untimed iterations first (default: 10 GPU, 1 CPU)"
    )
    train.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    train.add_argument("--write", metavar="MD", help="update this markdown file (BENCHMARKS.md)")

    export = sub.add_parser("export", help="export time and latency of each ONNX step")
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

    serve = sub.add_parser("serve", help="gateway vs in-process ONNX Runtime vs naive PyTorch")
    serve.add_argument("--repository", default="model_repository")
    serve.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    serve.add_argument("--requests", type=int, default=100, help="per target and concurrency")
    serve.add_argument("--images", type=int, default=16, help="distinct images, cycled")
    serve.add_argument("--log-dir", default="runs/bench-serve")
    serve.add_argument("--write", metavar="MD", help="update this markdown file (BENCHMARKS.md)")


def _export_commands(commands: argparse._SubParsersAction) -> None:
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
        help="choose the served tau on these labeled held-out images (auto: the validation split "
        "of the training data); the gate is served off when no tau beats ungated",
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

    publish = commands.add_parser(
        "publish", help="publish an export as the next version of a Triton model repository"
    )
    publish.add_argument("export_dir", metavar="DIR", help="folder written by s4seg export")
    publish.add_argument("--repository", default="model_repository")
    publish.add_argument(
        "--runtime",
        choices=["python", "onnxruntime"],
        default="python",
        help="python: ONNX Runtime inside the python backend (the pip tritonserver); "
        "onnxruntime: Triton's native backend (NGC image)",
    )
    publish.add_argument(
        "--precision", choices=["fp32", "fp16"], default="fp32", help="fp16 needs export --fp16"
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
    rollback.add_argument("--repository", default="model_repository")


def _serving_commands(commands: argparse._SubParsersAction) -> None:
    quick = commands.add_parser(
        "quickstart", help="synthetic data -> s4GAN + MLMT -> export -> publish (first run)"
    )
    quick.add_argument("--data", default="data/synth", help="synthetic data set (made if missing)")
    quick.add_argument("--runs", default="runs/quickstart", help="training runs and the export")
    quick.add_argument("--repository", default="model_repository")
    quick.add_argument("--iterations", type=int, help="override the preset's 300 iterations")
    quick.add_argument("--force", action="store_true", help="publish again even if one is served")
    quick.add_argument("--runtime", choices=["python", "onnxruntime"], default="python")

    serve = commands.add_parser(
        "serve", help="serve segmentation: tritonserver + version manager + HTTP gateway"
    )
    serve.add_argument("--repository", help="model repository (env S4SEG_REPOSITORY)")
    serve.add_argument("--host", help="gateway address (env S4SEG_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gateway port (env S4SEG_PORT, default 8080)")
    serve.add_argument("--triton-url", help="use this running Triton instead of starting one")
    serve.add_argument("--runtime", choices=["python", "onnxruntime"], help="step runtime")
    serve.add_argument(
        "--no-quickstart", action="store_true", help="fail instead of building the demo model"
    )


def _client_commands(commands: argparse._SubParsersAction) -> None:
    segment = commands.add_parser("segment", help="segment images through the gateway")
    segment.add_argument("images", nargs="+", metavar="IMG")
    segment.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    segment.add_argument("--format", choices=["png", "overlay", "json"], default="png")
    segment.add_argument("--out", default=".", help="folder for the outputs")
    segment.add_argument("--tau", type=float, help="gate threshold (default: the model's)")
    segment.add_argument("--no-gate", action="store_true", help="do not gate classes")
    segment.add_argument("--api-key", help="X-API-Key (default: env S4SEG_API_KEY)")

    predict = commands.add_parser(
        "predict", help="batch offline inference over a folder or list (resumable, sharded)"
    )
    predict.add_argument("--input", required=True, help="folder (recursive) or a list file")
    predict.add_argument("--output", required=True, help="folder for the outputs")
    predict.add_argument("--via", choices=["gateway", "triton", "local"], default="local")
    predict.add_argument("--format", choices=["png", "overlay", "json"], default="png")
    predict.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    predict.add_argument("--shard", help="i/n: this worker's share of the sorted inputs")
    predict.add_argument("--tau", type=float, help="gate threshold (default: the model's)")
    predict.add_argument("--no-gate", action="store_true")
    predict.add_argument("--url", default="http://127.0.0.1:8080", help="--via gateway")
    predict.add_argument("--api-key", help="--via gateway: X-API-Key (env S4SEG_API_KEY)")
    predict.add_argument("--triton-url", default="127.0.0.1:8000", help="--via triton")
    predict.add_argument("--repository", default="model_repository", help="--via triton/local")
    predict.add_argument("--model", help="--via local: an export folder (default: served)")
    predict.add_argument("--device", default="auto", help="--via local: auto|cpu|cuda")


def _doctor_command(commands: argparse._SubParsersAction) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s4seg", description="Semi-supervised semantic segmentation: train, export, serve."
    )
    parser.add_argument("--version", action="version", version=f"s4seg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _data_commands(commands)
    _train_commands(commands)
    _evaluate_command(commands)
    _export_commands(commands)
    _serving_commands(commands)
    _client_commands(commands)
    _bench_commands(commands)
    _doctor_command(commands)
    return parser


def _first_line(error: BaseException) -> str:
    """Errors raised in data loader workers arrive wrapped with a traceback: keep the message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("segment", "predict"):
            from s4seg.clients import commands as client_commands

            return getattr(client_commands, f"run_{args.command}")(args)
        if args.command == "serve":
            from s4seg.serving.commands import run_serve

            return run_serve(args)
        if args.command == "quickstart":
            from s4seg.export.quickstart import run_quickstart

            return run_quickstart(args)
        if args.command == "doctor":
            from s4seg.export.doctor import run_doctor

            return run_doctor(args)
        if args.command == "export":
            from s4seg.export.commands import run_export

            return run_export(args)
        if args.command in ("publish", "rollback"):
            from s4seg.export import commands as export_commands

            return getattr(export_commands, f"run_{args.command}")(args)
        if args.command == "evaluate" and not args.segmenter:
            from s4seg.clients.evaluate import run_evaluate

            return run_evaluate(args)
        if args.command == "bench" and args.target == "serve":
            from s4seg.clients.bench import bench_serve

            bench_serve(args)
            return 0
        if args.command == "bench" and args.target == "export":
            from s4seg.export.bench import bench_export

            bench_export(args)
            return 0
        if args.command in ("data", "train", "evaluate", "bench"):
            from s4seg.training import commands

            return getattr(commands, f"run_{args.command}")(args) or 0
    except S4segError as error:
        print(f"s4seg: error: {_first_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s4seg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
