"""The training stage's commands: ``data``, ``train``, ``bench train``, and the PyTorch path of
``evaluate`` (``--segmenter``; its parser is the clients': one command, three pipelines)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from s4seg.manifest import PAPER_TAU

from .config import apply_overrides, build_config, load_config


def run_data(args: argparse.Namespace) -> int:
    if args.action == "synth":
        from tqdm import tqdm

        from .data.synth import write_synthetic

        with tqdm(
            total=args.num_train + args.num_val + args.num_unlabeled,
            desc="synth",
            unit="img",
            disable=None,
        ) as bar:
            root = write_synthetic(
                args.out,
                seed=args.seed,
                num_train=args.num_train,
                num_val=args.num_val,
                num_unlabeled=args.num_unlabeled,
                size=args.size,
                progress=lambda done, total: bar.update(done - bar.n),
            )
        print(
            f"wrote synthetic data set to {root} ({args.num_train} train, {args.num_val} val, "
            f"{args.num_unlabeled} unlabeled images)"
        )
        return 0
    from .data.layouts import open_layout
    from .data.split import make_split

    layout = open_layout(args.data, args.kind)
    split = make_split(
        layout, args.train_split or layout.default_train_split, args.ratio, args.seed
    )
    split.save(args.out)
    print(
        f"wrote {args.out}: {len(split.labeled)} labeled, {len(split.unlabeled)} unlabeled "
        f"(+{len(split.extra_unlabeled)} without masks), ratio {split.ratio}, seed {split.seed}"
    )
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    if args.trainer == "s4gan":
        from .s4gan import train_s4gan as train
    elif args.trainer == "mlmt":
        from .mlmt import train_mlmt as train
    else:
        from .baseline import train_baseline as train
    kind = "classifier" if args.trainer == "mlmt" else "segmenter"
    cfg = load_config(args.config, args.overrides)
    if cfg.train.out_dir is None:
        cfg.train.out_dir = f"runs/{Path(args.config).stem}-{args.trainer}"
    resumed = None
    if args.resume:
        path = Path(cfg.train.out_dir) / "last.pt" if args.resume == "auto" else Path(args.resume)
        if args.resume != "auto" or path.is_file():
            resumed = load_checkpoint(path, kind=kind)
            # The run continues with the configuration it started with; --set still applies
            # (e.g. more iterations).
            cfg = build_config(apply_overrides(resumed["config"], args.overrides))
    last = train(cfg, resumed)
    if last.is_file():
        print(f"checkpoint: {last}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_checkpoint

    report, table = evaluate_checkpoint(
        args.segmenter,
        args.data,
        args.kind,
        args.split,
        args.out,
        args.save_predictions,
        args.max_images,
        args.device,
        args.classifier,
        PAPER_TAU if args.tau is None else args.tau,
        args.tau_sweep,
        args.part,
    )
    print(table)
    if args.out:
        print(f"report: {Path(args.out) / 'report.json'}")
    else:
        json.dump({k: v for k, v in report.items() if k != "per_class_iou"}, sys.stdout)
        print()
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from .bench import bench_train

    bench_train(args)
    return 0


# -- the command line: parsers only (no torch at parse time); each command names its handler ----

TRAINERS = {
    "baseline": "supervised DeepLabv2 on the labeled part only (the paper's DeepLabv2 rows)",
    "s4gan": "s4GAN: DeepLabv2 as the generator of a GAN (CE + feature matching + self-training)",
    "mlmt": "MLMT: the Mean-Teacher multi-label classifier that gates the segmenter's classes",
}


def add_parsers(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
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
    data.set_defaults(handler=run_data)

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
        trainer.set_defaults(handler=run_train)

    train = bench.add_parser(
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
    train.set_defaults(handler=run_bench)
