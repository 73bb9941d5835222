"""MLMT (paper section 3.2): a Mean-Teacher multi-label classifier trained on labeled images
(binary cross-entropy on multi-hot targets) and on every image (consistency between the student
on a strong view and the EMA teacher on a weak view, eq. 6). The teacher is what is exported."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from s4seg.errors import CheckpointError, S4segError

from .checkpoint import restore_rng_state, rng_state, save_checkpoint
from .config import Config
from .data.classification import IMAGENET_MEAN, IMAGENET_STD, MultiLabelDataset, read_weak_labels
from .data.sampler import ResumableSampler
from .data.setup import open_data, resolve_split
from .data.split import select
from .mean_teacher import consistency_weight, ema_decay, update_teacher
from .models.backbone_weights import load_backbone_weights
from .models.classifier import multilabel_resnet
from .multilabel_metrics import multilabel_report, plot_roc
from .progress import LoaderClock, Progress
from .schedules import cosine, resync
from .segmenter_run import Log, log_to_stderr, runtime_for, seed_everything


def classifier_arch(cfg: Config, num_classes: int) -> dict:
    return {
        "name": "resnet-multilabel",
        "depth": cfg.mlmt.depth,
        "num_classes": num_classes,
        "input_size": cfg.mlmt.input_size,
    }


def classifier_from_checkpoint(payload: dict, source: str = "checkpoint") -> torch.nn.Module:
    """The teacher of an MLMT checkpoint (what evaluation and export use)."""
    if payload.get("kind") != "classifier":
        raise CheckpointError(f"{source} is a {payload.get('kind')} checkpoint, not a classifier")
    arch = payload["arch"]
    model = multilabel_resnet(arch["num_classes"], arch["depth"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{source}: weights do not fit {arch}: {str(error).splitlines()[0]}"
        ) from None
    return model


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
def predict_classes(model, dataset: MultiLabelDataset, device, max_images=None) -> tuple:
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


def train_mlmt(cfg: Config, resumed: dict | None = None, log: Log = log_to_stderr) -> Path:
    """Train the MLMT classifier (continuing ``resumed`` if given); return the last checkpoint."""
    if resumed is not None and resumed.get("trainer") != "mlmt":
        raise CheckpointError(f"checkpoint was written by {resumed.get('trainer')}, not mlmt")
    with runtime_for(cfg) as runtime:
        if runtime.distributed:
            raise S4segError("the MLMT trainer runs in one process (it is small); drop torchrun")
        return _train(cfg, runtime, resumed, log)


def _train(cfg: Config, runtime, resumed: dict | None, log: Log) -> Path:
    m = cfg.mlmt
    out_dir = Path(cfg.train.out_dir or "runs/mlmt")
    seed_everything(cfg.train.seed)

    # Data: labeled images with multi-hot targets from their masks (plus weak labels, if given),
    # every training image as unlabeled, val with targets for mAP.
    layout = open_data(cfg.data)
    split = resolve_split(cfg.data, layout, resumed["split"] if resumed else None)
    train_samples = layout.samples(split.train_split)
    labeled = select(train_samples, split.labeled, "labeled")
    unlabeled = select(train_samples, split.unlabeled, "unlabeled") + select(
        layout.unlabeled_samples(), split.extra_unlabeled, "extra unlabeled"
    )
    weak = read_weak_labels(m.weak_labels, layout.classes) if m.weak_labels else {}
    if weak:
        by_id = {s.id: s for s in unlabeled}
        unknown = [i for i in weak if i not in by_id]
        if unknown:
            raise S4segError(f"weak labels name images outside the unlabeled set: {unknown[:3]}")
        labeled = labeled + [by_id[i] for i in weak]
    geometric = m.geometric_augmentation
    labeled_set = MultiLabelDataset(layout, labeled, m.input_size, weak, geometric=geometric)
    all_set = MultiLabelDataset(
        layout, labeled + unlabeled, m.input_size, labeled=False, geometric=geometric
    )
    val_split = cfg.data.val_split or layout.default_val_split
    val_set = MultiLabelDataset(layout, layout.samples(val_split), m.input_size, evaluation=True)
    num_classes = layout.num_classes

    student = multilabel_resnet(num_classes, m.depth)
    if m.pretrained_backbone and not resumed:
        log(load_backbone_weights(student, m.pretrained_backbone, m.depth).summary())
    student.to(runtime.device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=m.lr, momentum=m.momentum, nesterov=True,
        weight_decay=m.weight_decay,
    )  # fmt: skip
    scheduler = cosine(optimizer, cfg.train.iterations, m.lr, m.lr_min)
    start, metrics = 0, {}
    if resumed:
        if resumed["arch"] != classifier_arch(cfg, num_classes):
            raise CheckpointError(f"checkpoint architecture {resumed['arch']} differs from config")
        student.load_state_dict(resumed["student"])
        teacher.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        resync(scheduler)
        start, metrics = resumed["iteration"], resumed.get("metrics", {})

    # Burn-in and ramp-up are given in epochs of the labeled set, as in the paper.
    per_epoch = max(1, math.ceil(len(labeled_set) / m.labeled_batch_size))
    burn_in, rampup = round(m.burn_in_epochs * per_epoch), round(m.rampup_epochs * per_epoch)

    loader_clock = LoaderClock()

    def stream(dataset, index: int, batch: int):
        seed = cfg.train.seed + 1_000_003 * index
        sampler = ResumableSampler(len(dataset), seed=seed, start=start * batch)
        return loader_clock.timed(iter(DataLoader(
            dataset, batch_size=batch, sampler=sampler, num_workers=cfg.data.num_workers,
            drop_last=True, persistent_workers=cfg.data.num_workers > 0,
            pin_memory=runtime.on_cuda, generator=torch.Generator().manual_seed(seed),
        )))  # fmt: skip

    labeled_batches = stream(labeled_set, 0, m.labeled_batch_size)
    all_batches = stream(all_set, 1, m.unlabeled_batch_size)

    def payload(iteration: int) -> dict:
        return {
            "kind": "classifier",
            "trainer": "mlmt",
            "arch": classifier_arch(cfg, num_classes),
            "model": teacher.state_dict(),
            "student": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "iteration": iteration,
            "rng": rng_state(),
            "config": cfg.to_dict(),
            "split": split.as_dict(),
            "classes": list(layout.classes),
            "palette": [list(c) for c in layout.palette],
            "background_index": layout.background_index,
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                              "channel_order": "RGB", "pixel_scale": 1 / 255},
            "metrics": metrics,
        }  # fmt: skip

    def validate(done: int) -> None:
        nonlocal metrics
        curves = {}
        for name, model in (("student", student), ("teacher", teacher)):
            targets, probs = predict_classes(
                model, val_set, runtime.device, cfg.train.val_max_images
            )
            report = multilabel_report(targets, probs, list(layout.classes))
            metrics[f"{name}_map"] = report["map"]
            metrics[f"{name}_per_class_ap"] = {k: v["ap"] for k, v in report["per_class"].items()}
            writer.add_scalar(f"val/{name}_map", report["map"], done)
            curves[name] = (targets, probs)
        metrics["iteration"] = done
        plot_roc(curves, f"MLMT ROC on {val_split} (iteration {done})", out_dir / "roc.png")
        log(f"validation at {done}: mAP student {100 * metrics['student_map']:.2f}  "
            f"teacher {100 * metrics['teacher_map']:.2f}")  # fmt: skip

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    split.save(out_dir / "split.json")
    writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start or None)
    if resumed:
        restore_rng_state(resumed["rng"])
        log(f"resumed from iteration {start}")
    log(f"training MLMT: ResNet-{m.depth} classifier on {len(labeled_set)} labeled "
        f"({len(weak)} by weak labels) + {len(all_set)} images for consistency, "
        f"{num_classes} classes, {runtime.device}; consistency {m.consistency}, burn-in "
        f"{burn_in} iterations, ramp-up {rampup}")  # fmt: skip
    progress = Progress(cfg.train.iterations, start)
    completed = start
    try:
        for iteration in range(start, cfg.train.iterations):
            batch_l, batch_all = next(labeled_batches), next(all_batches)
            strong = torch.cat([batch_l["strong"], batch_all["strong"]]).to(
                runtime.device, non_blocking=True
            )
            weak_views = torch.cat([batch_l["weak"], batch_all["weak"]]).to(
                runtime.device, non_blocking=True
            )
            targets = batch_l["target"].to(runtime.device, non_blocking=True)
            with runtime.autocast():
                student_logits = student(strong).float()
                with torch.no_grad():
                    teacher_logits = teacher(weak_views).float()
            loss_cls = F.binary_cross_entropy_with_logits(student_logits[: len(targets)], targets)
            loss_cons = consistency_loss(student_logits, teacher_logits, m.consistency)
            weight = consistency_weight(iteration, burn_in, rampup, m.consistency_weight)
            loss = loss_cls + weight * loss_cons
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            update_teacher(teacher, student, ema_decay(iteration, m.ema_max_decay), m.teacher_bn)
            done = completed = iteration + 1

            if done % cfg.train.log_every == 0 or done == start + 1:
                scalars = {"loss_cls": loss_cls.item(), "loss_cons": loss_cons.item(),
                           "cons_weight": weight}  # fmt: skip
                for key, value in scalars.items():
                    writer.add_scalar(f"train/{key}", value, done)
                data_wait = loader_clock.share_since_last()
                writer.add_scalar("perf/data_wait_share", data_wait, done)
                progress.report(done, **scalars, lr=optimizer.param_groups[0]["lr"],
                                data_wait=f"{100 * data_wait:.0f}%")  # fmt: skip
            if done % cfg.train.val_every == 0 or done == cfg.train.iterations:
                validate(done)
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.iterations:
                save_checkpoint(payload(done), out_dir / "last.pt")
            if cfg.train.snapshot_every and done % cfg.train.snapshot_every == 0:
                save_checkpoint(payload(done), out_dir / "snapshots" / f"iter_{done:06d}.pt")
    except (S4segError, KeyboardInterrupt):
        if completed > start:
            save_checkpoint(payload(completed), out_dir / "last.pt")
            log(f"stopped at iteration {completed}; state saved to {out_dir / 'last.pt'}")
        raise
    finally:
        writer.close()
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return out_dir / "last.pt"
