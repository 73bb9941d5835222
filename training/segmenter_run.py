"""What the segmenter trainers (baseline, s4GAN) share on top of ``TrainingRun``: the data, the
segmenter and its optimiser, validation by mIoU (keeping best.pt). The trainers keep only their
step."""

from __future__ import annotations

import sys

import torch

from s4seg.metrics import scores

from .checkpoint import Checkpoint
from .config import Config
from .data.setup import build_training_data
from .evaluation import evaluate_segmenter
from .models import DPTSegmenter, load_pretrained, segmenter_arch, segmenter_from_arch
from .optimizers import segmenter_optimizer
from .run_support import Log
from .runtime import Runtime
from .schedules import poly
from .training_run import TrainingRun, normalization

ARCHITECTURE_NAMES = {"deeplabv2": "DeepLabv2", "deeplabv3plus": "DeepLabv3+", "dpt": "DPT"}


class SegmenterRun(TrainingRun):
    """One training run of a segmenter; ``extra_state`` adds a trainer's own checkpoint entries."""

    kind = "segmenter"
    audits_pseudo_labels = False  # a trainer that logs its pseudo-labels' accuracy sets it

    def __init__(
        self, cfg: Config, runtime: Runtime, trainer: str, resumed: Checkpoint | None, log: Log
    ) -> None:
        super().__init__(cfg, runtime, trainer, resumed, log)
        # The split is recorded in the checkpoint, so a resumed run uses the very same one.
        self.data = build_training_data(
            cfg.data,
            resumed.split if resumed else None,
            audit_unlabeled=self.audits_pseudo_labels,
        )
        self.layout, self.split = self.data.layout, self.data.split
        self.normalization = normalization(cfg.data.mean, cfg.data.std)
        self.num_classes = self.layout.num_classes
        self.arch = segmenter_arch(cfg.model, self.num_classes)
        self.check_resumed_arch()
        self.model = segmenter_from_arch(self.arch)
        if cfg.model.pretrained_backbone and not resumed:
            self.log_main(load_pretrained(self.model, cfg.model).summary())
        if isinstance(self.model, DPTSegmenter):
            self.model.backbone.grad_checkpointing = cfg.model.grad_checkpointing
        runtime.place(self.model)
        # The paper's SGD (or UniMatch V2's AdamW), head at head_lr_mult, poly(0.9) per iteration.
        self.optimizer = segmenter_optimizer(
            self.model.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult), cfg.optim
        )
        self.scheduler = poly(self.optimizer, cfg.train.iterations, cfg.optim.poly_power)
        if resumed:
            self.model.load_state_dict(resumed.model)
            self.restore_progress()
        self.best_miou = self.metrics.get("best_miou", -1.0)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(
            self.runtime.device, non_blocking=True, memory_format=self.runtime.memory_format()
        )

    def summary(self) -> str:
        cfg, runtime, data = self.cfg, self.runtime, self.data
        network = f"{cfg.model.backbone_depth}-layer {ARCHITECTURE_NAMES[cfg.model.architecture]}"
        if cfg.model.architecture == "dpt":
            network = f"DPT on {cfg.model.backbone}"
        return (
            f"{network} on "
            f"{len(data.labeled)} labeled images ({data.split.ratio}, split seed "
            f"{data.split.seed}), {self.num_classes} classes, {runtime.device}, world "
            f"size {runtime.world_size}, amp {runtime.amp_dtype or 'off'}, channels_last "
            f"{runtime.channels_last}"
        )

    def validate(self, done: int) -> None:
        confusion = evaluate_segmenter(
            self.model,
            self.data.val,
            self.num_classes,
            self.runtime,
            self.cfg.train.val_max_images,
            progress=sys.stderr.isatty(),
            window=self.cfg.data.eval_window,
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
