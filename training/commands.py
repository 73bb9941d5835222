"""The training stage's commands: ``data`` and ``train``, and the PyTorch path of ``evaluate``
(``--segmenter``; the ``evaluate`` command itself is the top layer's: one command, three
pipelines)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from s4seg.manifest import PAPER_TAU

from .config import load_config
from .trainers import TRAINERS


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
                style=args.style,
            )
        print(
            f"wrote synthetic data set to {root} ({args.num_train} train, {args.num_val} val, "
            f"{args.num_unlabeled} unlabeled images)"
        )
        return 0
    from s4seg.layouts import open_layout

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
    trainer = TRAINERS[args.trainer]
    cfg = load_config(args.config, args.overrides)
    if cfg.train.out_dir is None:
        cfg.train.out_dir = f"runs/{Path(args.config).stem}-{args.trainer}"
    # A continued run keeps the configuration it started with; --set still applies.
    last, trained = trainer.run(cfg, args.resume, args.overrides)
    if last.is_file():
        print(f"checkpoint: {last}" + ("" if trained else " (already complete)"))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import EvaluationRequest, evaluate_checkpoint

    request = EvaluationRequest(
        checkpoint=args.segmenter,
        data_root=args.data,
        kind=args.kind,
        split=args.split,
        out_dir=args.out,
        save_predictions=args.save_predictions,
        max_images=args.max_images,
        device=args.device,
        classifier=args.classifier,
        tau=PAPER_TAU if args.tau is None else args.tau,
        tau_sweep=args.tau_sweep,
        part=args.part,
    )
    report, table = evaluate_checkpoint(request)
    print(table)
    if args.out:
        print(f"report: {Path(args.out) / 'report.json'}")
    else:
        json.dump({k: v for k, v in report.items() if k != "per_class_iou"}, sys.stdout)
        print()
    return 0


# -- the command line: parsers only (no torch at parse time); each command names its handler ----


def add_parsers(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="make synthetic data, make labeled/unlabeled splits")
    sub = data.add_subparsers(dest="action", required=True)

    synth = sub.add_parser("synth", help="write the seeded synthetic data set (folder layout)")
    synth.add_argument("--out", required=True, help="folder to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--num-train", type=int, default=600)
    synth.add_argument("--num-val", type=int, default=150)
    synth.add_argument("--num-unlabeled", type=int, default=200)
    synth.add_argument("--size", type=int, default=128, help="image side in pixels")
    synth.add_argument(
        "--style",
        choices=["sparse", "dense"],
        default="sparse",
        help="sparse: 1-3 objects (~14%% foreground); dense: 3-5 larger ones (~a third)",
    )

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
    for name, registered in TRAINERS.items():
        trainer = sub.add_parser(name, help=registered.help, description=registered.help)
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
