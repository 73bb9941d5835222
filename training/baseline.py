"""Supervised DeepLabv2 baseline: the labeled part of a split only (the paper's "DeepLabv2" rows).

The step reads top to bottom; set-up and validation are shared with the s4GAN trainer in
``segmenter_run.py``, resume, logging and checkpoints with every trainer in ``training_run.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from s4seg import IGNORE_INDEX

from .checkpoint import Checkpoint
from .config import Config
from .models import upsample_logits
from .run_support import Log, log_to_stderr, runtime_for
from .segmenter_run import SegmenterRun
from .training_run import Scalars


def train_baseline(
    cfg: Config, resumed: Checkpoint | None = None, log: Log = log_to_stderr
) -> Path:
    """Train (continuing ``resumed``, a loaded checkpoint, if given); return the last checkpoint."""
    with runtime_for(cfg) as runtime:
        run = SegmenterRun(cfg, runtime, "baseline", resumed, log)
        segmenter = run.wrap(run.model)
        labeled = run.batches(run.data.labeled, stream=0, batch_size=cfg.train.batch_size)

        def step(iteration: int) -> Scalars:
            batch = next(labeled)
            images = run.to_device(batch["image"])
            masks = batch["mask"].to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = segmenter(images)
            # Upsample to the label resolution before the loss (bilinear, align_corners=True).
            logits = upsample_logits(logits.float(), masks.shape[-2:])
            loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            return {"loss_ce": loss.detach()}

        return run.loop(step, "supervised baseline")
