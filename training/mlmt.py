"""MLMT (paper section 3.2): a Mean-Teacher multi-label classifier trained on labeled images
(binary cross-entropy on multi-hot targets) and on every image (consistency between the student
on a strong view and the EMA teacher on a weak view, eq. 6). The teacher is what is exported.

The step reads top to bottom; resume, logging, validation cadence and checkpoints are the shared
``TrainingRun``'s.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s4seg.defaults import IMAGENET_MEAN, IMAGENET_STD
from s4seg.errors import CheckpointError, S4segError

from .checkpoint import Checkpoint
from .config import Config
from .data.classification import MultiLabelDataset, read_weak_labels
from .data.setup import open_data, resolve_split
from .data.split import select
from .mean_teacher import consistency_weight, ema_decay, update_teacher
from .models.backbone_weights import load_backbone_weights
from .models.classifier import classifier_arch, multilabel_resnet
from .multilabel_metrics import multilabel_report, plot_roc
from .run_support import Log, log_to_stderr, runtime_for
from .runtime import Runtime
from .schedules import cosine
from .training_run import Scalars, TrainingRun, normalization


def consistency_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str
) -> torch.Tensor:
    """Eq. 6's squared L2 distance between the sigmoid outputs (summed over classes, averaged
    over images), or the authors' cosine on logits.

    ``mse_mean`` averages over classes too, as this project first did: it divides the term by
    the number of classes (7 on the synthetic set, 21 on VOC), which makes ``lambda_cons`` that
    much weaker than the paper's.
    """
    if kind in ("mse", "mse_mean"):
        squared = (torch.sigmoid(student_logits) - torch.sigmoid(teacher_logits)).pow(2)
        return squared.sum(1).mean() if kind == "mse" else squared.mean()
    return (1 - F.cosine_similarity(student_logits, teacher_logits, dim=1)).mean()


@torch.no_grad()
def predict_classes(
    model: nn.Module,
    dataset: MultiLabelDataset,
    device: torch.device,
    max_images: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(targets, probabilities) over a data set, both (N, C) numpy arrays."""
    was_training = model.training
    model.eval()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    targets, probs = [], []
    for start in range(0, count, 16):
        items = [dataset[i] for i in range(start, min(start + 16, count))]
        images = torch.stack([it["weak"] for it in items]).to(device)
        probs.append(torch.sigmoid(model(images)).float().cpu().numpy())
        targets.append(torch.stack([it["target"] for it in items]).numpy())
    model.train(was_training)
    return np.concatenate(targets), np.concatenate(probs)


class MlmtRun(TrainingRun):
    """The data, the student, its EMA teacher (``model``: what is checkpointed as the model and
    exported), the optimiser and validation by mAP with ROC curves."""

    kind = "classifier"

    def __init__(self, cfg: Config, runtime: Runtime, resumed: Checkpoint | None, log: Log) -> None:
        super().__init__(cfg, runtime, "mlmt", resumed, log)
        m = cfg.mlmt

        # Data: labeled images with multi-hot targets from their masks (plus weak labels, if
        # given), every training image as unlabeled, val with targets for mAP.
        layout = self.layout = open_data(cfg.data)
        split = self.split = resolve_split(cfg.data, layout, resumed.split if resumed else None)
        train_samples = layout.samples(split.train_split)
        labeled = select(train_samples, split.labeled, "labeled")
        unlabeled = select(train_samples, split.unlabeled, "unlabeled") + select(
            layout.unlabeled_samples(), split.extra_unlabeled, "extra unlabeled"
        )
        self.weak = read_weak_labels(m.weak_labels, layout.classes) if m.weak_labels else {}
        if self.weak:
            by_id = {s.id: s for s in unlabeled}
            unknown = [i for i in self.weak if i not in by_id]
            if unknown:
                raise S4segError(
                    f"weak labels name images outside the unlabeled set: {unknown[:3]}"
                )
            labeled = labeled + [by_id[i] for i in self.weak]
        geometric = m.geometric_augmentation
        self.labeled_set = MultiLabelDataset(
            layout, labeled, m.input_size, self.weak, geometric=geometric
        )
        self.all_set = MultiLabelDataset(
            layout, labeled + unlabeled, m.input_size, labeled=False, geometric=geometric
        )
        self.val_split = cfg.data.val_split or layout.default_val_split
        self.val_set = MultiLabelDataset(
            layout, layout.samples(self.val_split), m.input_size, evaluation=True
        )
        self.normalization = normalization(IMAGENET_MEAN, IMAGENET_STD)
        self.num_classes = layout.num_classes
        self.arch = classifier_arch(m, self.num_classes)
        self.check_resumed_arch()

        # Networks: the student learns, the teacher follows it by EMA and is the model we keep.
        self.student = multilabel_resnet(self.num_classes, m.depth)
        if m.pretrained_backbone and not resumed:
            self.log_main(
                load_backbone_weights(self.student, m.pretrained_backbone, m.depth).summary()
            )
        self.student.to(runtime.device)
        self.model = copy.deepcopy(self.student).requires_grad_(False)
        # "ema": the teacher's targets use its running statistics (averaged with its weights);
        # otherwise batch statistics of the weak views (validation switches modes and back).
        self.model.train(m.teacher_bn != "ema")
        self.optimizer = torch.optim.SGD(
            self.student.parameters(),
            lr=m.lr,
            momentum=m.momentum,
            nesterov=True,
            weight_decay=m.weight_decay,
        )
        self.scheduler = cosine(self.optimizer, cfg.train.iterations, m.lr, m.lr_min)
        if resumed:
            if resumed.student is None:
                raise CheckpointError(f"{resumed.source} holds no student to continue with")
            self.student.load_state_dict(resumed.student)
            self.model.load_state_dict(resumed.model)
            self.restore_progress()
        self.extra_state = lambda: {"student": self.student.state_dict()}

        # Burn-in and ramp-up are given in epochs of the labeled set, as in the paper.
        per_epoch = max(1, math.ceil(len(self.labeled_set) / m.labeled_batch_size))
        self.burn_in = round(m.burn_in_epochs * per_epoch)
        self.rampup = round(m.rampup_epochs * per_epoch)

    def summary(self) -> str:
        m = self.cfg.mlmt
        return (
            f"ResNet-{m.depth} classifier on {len(self.labeled_set)} labeled "
            f"({len(self.weak)} by weak labels) + {len(self.all_set)} images for consistency, "
            f"{self.num_classes} classes, {self.runtime.device}, world size "
            f"{self.runtime.world_size}; consistency {m.consistency}, "
            f"burn-in {self.burn_in} iterations, ramp-up {self.rampup}"
        )

    def validate(self, done: int) -> None:
        assert self.writer is not None
        metrics, curves = self.metrics, {}
        for name, model in (("student", self.student), ("teacher", self.model)):
            targets, probs = predict_classes(
                model, self.val_set, self.runtime.device, self.cfg.train.val_max_images
            )
            report = multilabel_report(targets, probs, list(self.layout.classes))
            metrics[f"{name}_map"] = report["map"]
            metrics[f"{name}_per_class_ap"] = {k: v["ap"] for k, v in report["per_class"].items()}
            self.writer.add_scalar(f"val/{name}_map", report["map"], done)
            curves[name] = (targets, probs)
        metrics["iteration"] = done
        plot_roc(
            curves, f"MLMT ROC on {self.val_split} (iteration {done})", self.out_dir / "roc.png"
        )
        self.log(
            f"validation at {done}: mAP student {100 * metrics['student_map']:.2f}  "
            f"teacher {100 * metrics['teacher_map']:.2f}"
        )


def train_mlmt(cfg: Config, resumed: Checkpoint | None = None, log: Log = log_to_stderr) -> Path:
    """Train the MLMT classifier (continuing ``resumed`` if given); return the last checkpoint."""
    with runtime_for(cfg) as runtime:
        run = MlmtRun(cfg, runtime, resumed, log)
        m, device = cfg.mlmt, runtime.device
        # Under torchrun the student is DistributedDataParallel (gradients averaged, weights equal
        # on every rank); the teacher is each rank's own copy, kept equal by the update below.
        student, teacher = run.wrap(run.student), run.model
        labeled = run.batches(run.labeled_set, stream=0, batch_size=m.labeled_batch_size)
        every = run.batches(run.all_set, stream=1, batch_size=m.unlabeled_batch_size)

        def step(iteration: int) -> Scalars:
            batch_l, batch_all = next(labeled), next(every)
            strong = torch.cat([batch_l["strong"], batch_all["strong"]]).to(
                device, non_blocking=True
            )
            weak_views = torch.cat([batch_l["weak"], batch_all["weak"]]).to(
                device, non_blocking=True
            )
            targets = batch_l["target"].to(device, non_blocking=True)
            with runtime.autocast():
                student_logits = student(strong).float()
                with torch.no_grad():
                    teacher_logits = teacher(weak_views).float()
            # The labeled images come first in the batch: only they have targets.
            loss_cls = F.binary_cross_entropy_with_logits(student_logits[: len(targets)], targets)
            loss_cons = consistency_loss(student_logits, teacher_logits, m.consistency)
            weight = consistency_weight(iteration, run.burn_in, run.rampup, m.consistency_weight)
            loss = loss_cls + weight * loss_cons
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            # Batch-norm statistics are each rank's own (its shard's batches): averaged over the
            # ranks first, so that every rank's teacher takes the same update.
            run.average_buffers(run.student, teacher)
            update_teacher(
                teacher, run.student, ema_decay(iteration, m.ema_max_decay), m.teacher_bn
            )
            return {
                "loss_cls": loss_cls.detach(),
                "loss_cons": loss_cons.detach(),
                "cons_weight": weight,
            }

        return run.loop(step, "MLMT")
