"""UniMatch V2 (Yang, Zhao & Zhao, arXiv 2410.10777) on this project's training loop: an EMA
teacher labels the weak view, the student learns from two strong views of it whose features get
complementary channel dropout (``../shared/docs/unimatch-v2-notes.md`` section 2).

One step:
1. Streams: labeled (x, y) and unlabeled u (its weak view). The CutMix partner is u itself,
   reversed (V1 drew a second unlabeled batch).
2. Pseudo-labels: the teacher (eval mode, no gradient) on u's weak view: argmax, softmax max as
   confidence; the partner's are the same, reversed.
3. Two strong views of u (colour jitter, grayscale, blur, each a CutMix box from the partner),
   through the student in one pass with complementary dropout on the encoder's taps; the
   labeled batch in a pass of its own.
4. Loss = (L_x + (L_s1 + L_s2) / 2) * ``unimatch.loss_scale`` (the recipe's 0.5: the final /2);
   each unlabeled term is the cross-entropy on pixels at confidence >= ``unimatch.threshold``
   (or a threshold per class, ``unimatch.threshold_rule: flexmatch``),
   summed and divided by every non-padded pixel.
5. After the optimiser step, teacher <- m * teacher + (1 - m) * student, parameters and buffers,
   m = min(1 - 1/(t + 1), ``unimatch.ema_max_decay``) at iteration t (0.996: the teacher equals
   the student at t = 0).

The checkpoint's ``model`` is the teacher (what validation scores, best.pt keeps and export
takes: the recipe reports the EMA teacher), ``student`` the student. The optimiser (AdamW with
the head at 40x in the presets) comes from ``optim``, as every segmenter trainer's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from s4seg.errors import CheckpointError, ConfigError

from .checkpoint import Checkpoint
from .config import Config
from .mean_teacher import ema_decay, update_teacher
from .models import upsample_logits
from .run_support import Log, log_to_stderr, runtime_for
from .runtime import Runtime
from .training_run import Scalars
from .unimatch import (
    Thresholds,
    UniMatchRun,
    confident_ce,
    labeled_loss,
    pseudo_label_scalars,
    strong_views,
)


class UniMatchV2Run(UniMatchRun):
    """``model`` is the EMA teacher; ``student`` the network the optimiser trains."""

    def __init__(
        self, cfg: Config, runtime: Runtime, trainer: str, resumed: Checkpoint | None, log: Log
    ) -> None:
        # The parent builds one network and its optimiser (and loads a resumed run's ``model``,
        # the teacher, into it): that network becomes the student, a copy of it the teacher.
        super().__init__(cfg, runtime, trainer, resumed, log)
        self.student = self.model
        self.model = copy.deepcopy(self.student).eval()
        self.model.requires_grad_(False)
        if resumed is not None:
            if resumed.student is None:
                raise CheckpointError(f"{resumed.source} holds no student to continue")
            self.student.load_state_dict(resumed.student)
        self.extra_state = lambda: {"student": self.student.state_dict()}

    def summary(self) -> str:
        return f"{super().summary()}, EMA teacher up to {self.cfg.unimatch.ema_max_decay}"


def teacher_pseudo_labels(
    teacher: torch.nn.Module, images: torch.Tensor, runtime: Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's confidence and argmax label per pixel of the weak views."""
    teacher.eval()
    with torch.no_grad(), runtime.autocast():
        logits = teacher(images)
    return upsample_logits(logits.float(), images.shape[-2:]).softmax(1).max(1)


def train_unimatch_v2(
    cfg: Config, resumed: Checkpoint | None = None, log: Log = log_to_stderr
) -> Path:
    """Train UniMatch V2 (continuing ``resumed`` if given); return the last checkpoint."""
    if cfg.unimatch.complementary_dropout and cfg.model.architecture != "dpt":
        raise ConfigError(
            "unimatch.complementary_dropout works on a ViT's taps (model.architecture dpt); "
            f"on {cfg.model.architecture} set unimatch.complementary_dropout=false"
        )
    with runtime_for(cfg) as runtime:
        run = UniMatchV2Run(cfg, runtime, "unimatch-v2", resumed, log)
        u = cfg.unimatch
        student = run.wrap(run.student)
        labeled = run.batches(run.data.labeled, stream=0, batch_size=cfg.train.batch_size)
        batch_u = u.unlabeled_batch_size or cfg.train.batch_size
        unlabeled = run.batches(run.data.unlabeled, stream=1, batch_size=batch_u)
        mean = torch.tensor(cfg.data.mean, device=runtime.device).view(3, 1, 1)
        std = torch.tensor(cfg.data.std, device=runtime.device).view(3, 1, 1)

        def step(iteration: int) -> Scalars:
            batch_l, batch_unl = next(labeled), next(unlabeled)
            x, u_w = run.to_device(batch_l["image"]), run.to_device(batch_unl["image"])
            y = batch_l["mask"].to(runtime.device, non_blocking=True)
            pad_u = batch_unl["pad"].to(runtime.device)
            size = x.shape[-2:]

            conf_w, label_w = teacher_pseudo_labels(run.model, u_w, runtime)
            # The CutMix partner: the same batch reversed, with its pseudo-labels.
            conf_m, label_m, pad_m = conf_w.flip(0), label_w.flip(0), pad_u.flip(0)
            views = (
                strong_views(u_w, u_w.flip(0), mean, std, u),
                strong_views(u_w, u_w.flip(0), mean, std, u),
            )
            with runtime.autocast():
                logits_x = student(x)
                logits_s = student(
                    torch.cat([v.images for v in views]), complementary=u.complementary_dropout
                )
            logits_x = upsample_logits(logits_x.float(), size)
            logits_strong = upsample_logits(logits_s.float(), size).chunk(2)

            loss_x = labeled_loss(logits_x, y, u)
            needed = Thresholds.of_step(u, label_w, conf_w, pad_u, logits_x.shape[1])
            terms = []
            for logits, view in zip(logits_strong, views, strict=True):
                labels = torch.where(view.boxes, label_m, label_w)
                confidence = torch.where(view.boxes, conf_m, conf_w)
                ignore = torch.where(view.boxes, pad_m, pad_u)
                terms.append(confident_ce(logits, labels, confidence, ignore, needed(labels)))
            loss = u.loss_scale * (loss_x + (terms[0] + terms[1]) / 2)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            decay = ema_decay(iteration, u.ema_max_decay)
            update_teacher(run.model, run.student, decay, buffers="ema")

            return {
                "loss_x": loss_x.detach(),
                "loss_s1": terms[0].detach(),
                "loss_s2": terms[1].detach(),
                "ema_decay": decay,
                **pseudo_label_scalars(
                    label_w,
                    conf_w,
                    pad_u,
                    batch_unl["audit_mask"].to(runtime.device),
                    needed(label_w),
                    run.layout.background_index,
                ),
                **needed.scalars(run.layout.background_index),
            }

        return run.loop(step, "UniMatch V2 (EMA teacher, complementary dropout)")
