"""The training-side CLI commands (data, train, evaluate, bench)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
        0.2 if args.tau is None else args.tau,  # the paper's tau
        args.tau_sweep,
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
