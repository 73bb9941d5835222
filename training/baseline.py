"""Supervised DeepLabv2 baseline: train on the labeled part of a split only (the paper's
"DeepLabv2" rows). Read top to bottom: set-up, resume, the loop, checkpoints."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from s4seg import IGNORE_INDEX
from s4seg.errors import CheckpointError, S4segError
from s4seg.metrics import scores

from .checkpoint import restore_rng_state, rng_state, save_checkpoint
from .config import Config
from .data.sampler import ResumableSampler
from .data.setup import TrainingData, build_training_data
from .evaluation import evaluate_segmenter
from .models import segmenter_arch, segmenter_from_arch, upsample_logits
from .models.backbone_weights import load_backbone_weights
from .progress import Progress
from .runtime import Runtime, setup_runtime, teardown_runtime


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def labeled_loader(
    data: TrainingData, cfg: Config, runtime: Runtime, start_iteration: int
) -> DataLoader:
    """Endless labeled batches, continuing at ``start_iteration`` on resume."""
    sampler = ResumableSampler(
        len(data.labeled),
        seed=cfg.train.seed,
        rank=runtime.rank,
        world_size=runtime.world_size,
        start=start_iteration * cfg.train.batch_size * runtime.world_size,
    )
    return DataLoader(
        data.labeled,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=runtime.device.type == "cuda",
        drop_last=True,
        persistent_workers=cfg.data.num_workers > 0,
        # Our own generator: creating the loader must not consume the global RNG we checkpoint.
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def checkpoint_payload(cfg, data, model, optimizer, scheduler, iteration, metrics) -> dict:
    return {
        "kind": "segmenter",
        "trainer": "baseline",
        "arch": segmenter_arch(cfg.model, data.layout.num_classes),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "iteration": iteration,
        "rng": rng_state(),
        "config": cfg.to_dict(),
        "split": data.split.as_dict(),
        "classes": list(data.layout.classes),
        "palette": [list(c) for c in data.layout.palette],
        "background_index": data.layout.background_index,
        "normalization": {
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
            "channel_order": "RGB",
            "pixel_scale": 1 / 255,
        },
        "metrics": metrics,
    }


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_baseline(cfg: Config, resumed: dict | None = None, log=log_to_stderr) -> Path:
    """Train (continuing ``resumed``, a loaded checkpoint, if given); return the last checkpoint."""
    if resumed is not None and resumed.get("trainer") != "baseline":
        raise CheckpointError(
            f"checkpoint was written by the {resumed.get('trainer')} trainer, "
            "not the baseline trainer"
        )
    runtime = setup_runtime(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        return _train(cfg, runtime, resumed, log)
    finally:
        teardown_runtime(runtime)


def _train(cfg: Config, runtime: Runtime, resumed: dict | None, log) -> Path:
    out_dir = Path(cfg.train.out_dir)
    seed_everything(cfg.train.seed + runtime.rank)

    # Data: the split is recorded in the checkpoint, so a resumed run uses the very same one.
    data = build_training_data(cfg.data, resumed["split"] if resumed else None)
    num_classes = data.layout.num_classes

    # Model and optimisation, as the paper: SGD, head at 10x, poly(0.9) per iteration.
    model = segmenter_from_arch(segmenter_arch(cfg.model, num_classes))
    if resumed and resumed["arch"] != segmenter_arch(cfg.model, num_classes):
        raise CheckpointError(
            f"checkpoint architecture {resumed['arch']} differs from the config's "
            f"{segmenter_arch(cfg.model, num_classes)}"
        )
    if cfg.model.pretrained_backbone and not resumed:
        report = load_backbone_weights(model.backbone, cfg.model.pretrained_backbone)
        if runtime.is_main:
            log(report.summary())
    model.to(runtime.device, memory_format=runtime.memory_format())
    optimizer = torch.optim.SGD(
        model.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=cfg.train.iterations, power=cfg.optim.poly_power
    )
    start, best_miou, metrics = 0, -1.0, {}
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        start, metrics = resumed["iteration"], resumed.get("metrics", {})
        best_miou = metrics.get("best_miou", -1.0)
        restore_rng_state(resumed["rng"])
        if runtime.is_main:
            log(f"resumed from iteration {start}")
    train_model = (
        DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
        if runtime.distributed
        else model
    )

    writer = None
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        data.split.save(out_dir / "split.json")
        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start or None)
        log(
            f"training {cfg.model.backbone_depth}-layer DeepLabv2 on {len(data.labeled)} labeled "
            f"images ({data.split.ratio}, split seed {data.split.seed}), {num_classes} classes, "
            f"{runtime.device}, world size {runtime.world_size}, "
            f"amp {runtime.amp_dtype or 'off'}, channels_last {runtime.channels_last}"
        )

    def save(name: str, iteration: int) -> Path:
        payload = checkpoint_payload(cfg, data, model, optimizer, scheduler, iteration, metrics)
        return save_checkpoint(payload, out_dir / name)

    batches = iter(labeled_loader(data, cfg, runtime, start))
    progress = Progress(cfg.train.iterations, start, enabled=runtime.is_main)
    completed = start
    try:
        for iteration in range(start, cfg.train.iterations):
            batch = next(batches)
            images = batch["image"].to(
                runtime.device, non_blocking=True, memory_format=runtime.memory_format()
            )
            masks = batch["mask"].to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = train_model(images)
            logits = upsample_logits(logits.float(), masks.shape[-2:])
            loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            done = completed = iteration + 1

            if writer is not None and (done % cfg.train.log_every == 0 or done == start + 1):
                lr = optimizer.param_groups[0]["lr"]
                writer.add_scalar("train/loss_ce", loss.item(), done)
                writer.add_scalar("train/lr", lr, done)
                progress.report(done, loss=loss.item(), lr=lr)
            if runtime.is_main and (
                done % cfg.train.val_every == 0 or done == cfg.train.iterations
            ):
                confusion = evaluate_segmenter(
                    model,
                    data.val,
                    num_classes,
                    runtime,
                    cfg.train.val_max_images,
                    progress=sys.stderr.isatty(),
                )
                result = scores(confusion)
                best_miou = max(best_miou, result.miou)
                metrics = {
                    "iteration": done,
                    "val_miou": result.miou,
                    "val_pixel_accuracy": result.pixel_accuracy,
                    "best_miou": best_miou,
                }
                writer.add_scalar("val/miou", result.miou, done)
                writer.add_scalar("val/pixel_accuracy", result.pixel_accuracy, done)
                log(
                    f"validation at {done}: mIoU {100 * result.miou:.2f}  "
                    f"pixel acc {100 * result.pixel_accuracy:.2f}"
                )
                if result.miou >= best_miou:
                    save("best.pt", done)
            if runtime.is_main and (
                done % cfg.train.checkpoint_every == 0 or done == cfg.train.iterations
            ):
                save("last.pt", done)
            if (
                runtime.is_main
                and cfg.train.snapshot_every
                and done % cfg.train.snapshot_every == 0
            ):
                save(f"snapshots/iter_{done:06d}.pt", done)
    except (S4segError, KeyboardInterrupt):
        # Lose nothing: keep the progress made so far, then report the problem.
        if runtime.is_main and completed > start:
            path = save("last.pt", completed)
            log(f"stopped at iteration {completed}; state saved to {path} (resume with --resume)")
        raise
    finally:
        if writer is not None:
            writer.close()
    if runtime.is_main:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return out_dir / "last.pt"
