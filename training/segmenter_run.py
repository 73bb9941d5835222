"""What every segmenter trainer (baseline, s4GAN) shares: data, the segmenter and its optimiser,
resume, loaders, logging, validation and checkpoints. The trainers keep only their step."""

from __future__ import annotations

import contextlib
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter

from s4seg.errors import CheckpointError, S4segError
from s4seg.metrics import scores

from .checkpoint import restore_rng_state, rng_state, save_checkpoint
from .config import Config
from .data.sampler import ResumableSampler
from .data.setup import build_training_data
from .evaluation import evaluate_segmenter
from .models import segmenter_arch, segmenter_from_arch
from .models.backbone_weights import load_backbone_weights
from .progress import LoaderClock, Progress
from .runtime import Runtime, setup_runtime, teardown_runtime
from .schedules import poly, resync

Log = Callable[[str], None]
# What a step returns: tensors stay on the device until a log line needs them (no per-step sync).
Scalars = dict[str, torch.Tensor | float]


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SegmenterRun:
    """One training run of a segmenter; ``extra_state`` adds a trainer's own checkpoint entries."""

    def __init__(
        self, cfg: Config, runtime: Runtime, trainer: str, resumed: dict | None, log: Log
    ) -> None:
        if resumed is not None and resumed.get("trainer") != trainer:
            raise CheckpointError(
                f"checkpoint was written by the {resumed.get('trainer')} trainer, not {trainer}"
            )
        self.cfg, self.runtime, self.trainer, self.resumed, self.log = (
            cfg, runtime, trainer, resumed, log
        )  # fmt: skip
        self.out_dir = Path(cfg.train.out_dir or f"runs/{trainer}")
        self.extra_state: Callable[[], dict[str, Any]] = dict
        seed_everything(cfg.train.seed + runtime.rank)

        # The split is recorded in the checkpoint, so a resumed run uses the very same one.
        self.data = build_training_data(cfg.data, resumed["split"] if resumed else None)
        self.num_classes = self.data.layout.num_classes
        self.arch = segmenter_arch(cfg.model, self.num_classes)
        if resumed and resumed["arch"] != self.arch:
            raise CheckpointError(
                f"checkpoint architecture {resumed['arch']} differs from the config's {self.arch}"
            )
        self.model = segmenter_from_arch(self.arch)
        if cfg.model.pretrained_backbone and not resumed:
            report = load_backbone_weights(
                self.model.backbone, cfg.model.pretrained_backbone, cfg.model.backbone_depth
            )
            self.log_main(report.summary())
        self.model.to(runtime.device, memory_format=runtime.memory_format())
        # The paper's optimiser: SGD, head at 10x, poly(0.9) per iteration.
        self.optimizer = torch.optim.SGD(
            self.model.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = poly(self.optimizer, cfg.train.iterations, cfg.optim.poly_power)
        self.start, self.metrics = 0, {}
        if resumed:
            self.model.load_state_dict(resumed["model"])
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.scheduler.load_state_dict(resumed["scheduler"])
            resync(self.scheduler)
            self.start, self.metrics = resumed["iteration"], resumed.get("metrics", {})
        self.best_miou = self.metrics.get("best_miou", -1.0)
        self.writer: SummaryWriter | None = None
        self.loader_clock = LoaderClock()

    # -- helpers for the trainers ---------------------------------------------------------------
    def log_main(self, message: str) -> None:
        if self.runtime.is_main:
            self.log(message)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel under torchrun, the module itself otherwise."""
        if not self.runtime.distributed:
            return module
        device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def batches(self, dataset: Dataset, stream: int, batch_size: int) -> Iterator[dict]:
        """Endless batches of one data stream, continuing where the run stopped.

        Each stream (labeled, unlabeled, the second labeled stream of s4GAN) has its own
        seeded order, so the streams are independent and each resumes exactly.
        """
        seed = self.cfg.train.seed + 1_000_003 * stream
        runtime = self.runtime
        sampler = ResumableSampler(
            len(dataset),
            seed=seed,
            rank=runtime.rank,
            world_size=runtime.world_size,
            start=self.start * batch_size * runtime.world_size,
        )
        workers = self.cfg.data.num_workers
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=runtime.device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            # Our own generator: making the loader must not consume the global RNG we checkpoint.
            generator=torch.Generator().manual_seed(seed),
        )
        return self.loader_clock.timed(iter(loader))

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(
            self.runtime.device, non_blocking=True, memory_format=self.runtime.memory_format()
        )

    # -- checkpoints ----------------------------------------------------------------------------
    def payload(self, iteration: int) -> dict:
        cfg, layout = self.cfg, self.data.layout
        return {
            "kind": "segmenter",
            "trainer": self.trainer,
            "arch": self.arch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": iteration,
            "rng": rng_state(),
            "config": cfg.to_dict(),
            "split": self.data.split.as_dict(),
            "classes": list(layout.classes),
            "palette": [list(c) for c in layout.palette],
            "background_index": layout.background_index,
            "normalization": {
                "mean": list(cfg.data.mean),
                "std": list(cfg.data.std),
                "channel_order": "RGB",
                "pixel_scale": 1 / 255,
            },
            "metrics": self.metrics,
            **self.extra_state(),
        }

    def save(self, name: str, iteration: int) -> Path:
        return save_checkpoint(self.payload(iteration), self.out_dir / name)

    # -- the loop -------------------------------------------------------------------------------
    def _validate(self, done: int) -> None:
        confusion = evaluate_segmenter(
            self.model,
            self.data.val,
            self.num_classes,
            self.runtime,
            self.cfg.train.val_max_images,
            progress=sys.stderr.isatty(),
        )
        result = scores(confusion)
        self.best_miou = max(self.best_miou, result.miou)
        self.metrics = {
            "iteration": done,
            "val_miou": result.miou,
            "val_pixel_accuracy": result.pixel_accuracy,
            "best_miou": self.best_miou,
        }
        assert self.writer is not None
        self.writer.add_scalar("val/miou", result.miou, done)
        self.writer.add_scalar("val/pixel_accuracy", result.pixel_accuracy, done)
        self.log(
            f"validation at {done}: mIoU {100 * result.miou:.2f}  "
            f"pixel acc {100 * result.pixel_accuracy:.2f}"
        )
        if result.miou >= self.best_miou:
            self.save("best.pt", done)

    def _after_step(self, done: int, step_scalars: Scalars) -> None:
        cfg = self.cfg.train
        if not self.runtime.is_main:
            return
        if done % cfg.log_every == 0 or done == self.start + 1:
            scalars = {name: float(value) for name, value in step_scalars.items()}  # syncs here
            lr = self.optimizer.param_groups[0]["lr"]
            data_wait = self.loader_clock.share_since_last()
            for name, value in {**scalars, "lr": lr}.items():
                self.writer.add_scalar(f"train/{name}", value, done)
            self.writer.add_scalar("perf/data_wait_share", data_wait, done)
            self.progress.report(done, **scalars, lr=lr, data_wait=f"{100 * data_wait:.0f}%")
            self.on_log(done, scalars)
        if done % cfg.val_every == 0 or done == cfg.iterations:
            self._validate(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            self.save("last.pt", done)
        if cfg.snapshot_every and done % cfg.snapshot_every == 0:
            self.save(f"snapshots/iter_{done:06d}.pt", done)

    def on_log(self, done: int, scalars: dict[str, float]) -> None:
        """Hook for trainers that keep their own history (s4GAN's D-score curves)."""

    def loop(self, step: Callable[[int], Scalars], description: str) -> Path:
        """Run ``step(iteration)`` from the start (or resume point) to the end; return last.pt."""
        cfg = self.cfg
        if self.resumed:
            # Last, after every module is built: the RNG continues exactly where it was saved.
            restore_rng_state(self.resumed["rng"])
            self.log_main(f"resumed from iteration {self.start}")
        if self.runtime.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(
                yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            )
            self.data.split.save(self.out_dir / "split.json")
            self.writer = SummaryWriter(
                str(self.out_dir / "tensorboard"), purge_step=self.start or None
            )
            runtime = self.runtime
            self.log(
                f"training {description}: {cfg.model.backbone_depth}-layer DeepLabv2 on "
                f"{len(self.data.labeled)} labeled images ({self.data.split.ratio}, split seed "
                f"{self.data.split.seed}), {self.num_classes} classes, {runtime.device}, world "
                f"size {runtime.world_size}, amp {runtime.amp_dtype or 'off'}, channels_last "
                f"{runtime.channels_last}"
            )
        self.progress = Progress(cfg.train.iterations, self.start, enabled=self.runtime.is_main)
        completed = self.start
        try:
            for iteration in range(self.start, cfg.train.iterations):
                scalars = step(iteration)
                completed = iteration + 1
                self._after_step(completed, scalars)
        except (S4segError, KeyboardInterrupt):
            # Lose nothing: keep the progress made so far, then report the problem.
            if self.runtime.is_main and completed > self.start:
                path = self.save("last.pt", completed)
                self.log(f"stopped at iteration {completed}; state saved to {path} (--resume it)")
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.runtime.is_main:
            (self.out_dir / "metrics.json").write_text(json.dumps(self.metrics, indent=1) + "\n")
        return self.out_dir / "last.pt"


@contextlib.contextmanager
def runtime_for(cfg: Config) -> Iterator[Runtime]:
    runtime = setup_runtime(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    try:
        yield runtime
    finally:
        teardown_runtime(runtime)
