"""UniMatch (Yang et al., CVPR 2023): weak-to-strong consistency with feature perturbation, on this
project's training loop (resume exact, seeded streams, torchrun, TensorBoard). It trains an
ordinary segmenter: evaluation, export, the MLMT gate, calibration and serving take it as they
take the baseline's or s4GAN's.

One step (../shared/docs/modern-recipe-notes.md):
1. Streams: labeled (x, y), unlabeled u (its weak view: the usual scale, crop and flip), and a
   second unlabeled u' that only supplies CutMix boxes.
2. Pseudo-labels: the model in eval mode, without gradient, on u' (inside the boxes); the
   model's own detached prediction of u's weak view (outside). Argmax, softmax max as confidence.
3. Two strong views of u (colour jitter, grayscale, blur, each a CutMix box from a strong view of
   u'). Two forwards, as the public code: [x, u_w], whose features are also channel-dropped and
   decoded with the clean ones (feature perturbation), then [s1, s2]; so the labeled and weak
   batches are normalised by batch-norm statistics of their own (``unimatch.forward: one``:
   one forward over all four, s4seg's earlier order).
4. Loss = (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) * ``loss_scale`` (the public 0.5, i.e. the
   final /2; 1.0 gives UniMatch the baseline's labeled step at the same lr); each unlabeled term
   is the cross-entropy on pixels at confidence >= 0.95, summed over those and divided by every
   non-padded pixel (``unimatch.threshold_rule: flexmatch``: a threshold per class,
   ``class_thresholds``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from s4seg import IGNORE_INDEX
from s4seg.errors import ConfigError

from .checkpoint import Checkpoint
from .config import Config, UniMatchConfig
from .losses import ohem_cross_entropy
from .models import upsample_logits
from .run_support import Log, log_to_stderr, runtime_for
from .runtime import Runtime
from .segmenter_run import SegmenterRun
from .training_run import Scalars


class UniMatchRun(SegmenterRun):
    audits_pseudo_labels = True  # log pseudo-label accuracy where the unlabeled masks exist


def strong_colour(u: UniMatchConfig) -> v2.Compose:
    """The photometric part of a strong view, on [0, 1] pixels of one image."""
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(*u.jitter)], p=0.8),
            v2.RandomGrayscale(p=u.grayscale_p),
            v2.RandomApply([RandomBlur(u.blur_sigma)], p=u.blur_p),
        ]
    )


class RandomBlur(torch.nn.Module):
    """Gaussian blur with sigma drawn from ``sigma``, the kernel wide enough for it (3 sigma)."""

    def __init__(self, sigma: tuple[float, float]) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        low, high = self.sigma
        sigma = low + (high - low) * torch.rand(()).item()
        size = 2 * math.ceil(3 * sigma) + 1
        size = min(size, (min(image.shape[-2:]) // 2) * 2 - 1)
        return v2.functional.gaussian_blur(image, [size, size], [sigma, sigma])


def cutmix_box(height: int, width: int, u: UniMatchConfig, device) -> torch.Tensor:
    """A boolean (H, W) box of 2-40% of the area, aspect 0.3-3.3, with probability cutmix_p
    (else empty)."""
    box = torch.zeros(height, width, dtype=torch.bool, device=device)
    if torch.rand(()).item() >= u.cutmix_p:
        return box
    area = (
        height
        * width
        * (u.cutmix_area[0] + (u.cutmix_area[1] - u.cutmix_area[0]) * torch.rand(()).item())
    )
    low, high = math.log(u.cutmix_aspect[0]), math.log(u.cutmix_aspect[1])
    aspect = math.exp(low + (high - low) * torch.rand(()).item())
    h = min(height, max(1, round(math.sqrt(area / aspect))))
    w = min(width, max(1, round(math.sqrt(area * aspect))))
    top = int(torch.randint(0, height - h + 1, ()).item())
    left = int(torch.randint(0, width - w + 1, ()).item())
    box[top : top + h, left : left + w] = True
    return box


@dataclass
class StrongViews:
    images: torch.Tensor  # (N, 3, H, W) normalised, the boxes pasted from u'
    boxes: torch.Tensor  # (N, H, W) bool: where the pixels (and pseudo-labels) come from u'


def strong_views(
    weak_u: torch.Tensor,
    weak_mix: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    u: UniMatchConfig,
) -> StrongViews:
    """One strong view per image of u: its weak view recoloured, with a CutMix box from a
    recoloured copy of u'."""
    colour = strong_colour(u)
    images, boxes = [], []
    height, width = weak_u.shape[-2:]
    for image, mix in zip(weak_u, weak_mix, strict=True):
        own = colour((image * std + mean).clamp(0, 1))
        other = colour((mix * std + mean).clamp(0, 1))
        box = cutmix_box(height, width, u, image.device)
        images.append(((torch.where(box, other, own)) - mean) / std)
        boxes.append(box)
    return StrongViews(torch.stack(images), torch.stack(boxes))


def confident_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    ignore: torch.Tensor,
    threshold: float | torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy on pixels at ``confidence >= threshold`` (a number, or one per pixel) and
    not ``ignore``, summed and divided by every non-ignored pixel (not by the confident ones:
    few confident pixels make a small loss, as in the public recipe)."""
    per_pixel = F.cross_entropy(logits, labels, reduction="none")
    keep = (confidence >= threshold) & ~ignore
    return (per_pixel * keep).sum() / (~ignore).sum().clamp_min(1)


def class_thresholds(
    labels: torch.Tensor,
    confidence: torch.Tensor,
    ignore: torch.Tensor,
    threshold: float,
    num_classes: int,
) -> torch.Tensor:
    """FlexMatch's class-wise thresholds (Zhang et al., NeurIPS 2021), one per class, from the
    weak pseudo-labels of a step. sigma_c: the pixels labeled c at ``confidence >= threshold``;
    beta_c = sigma_c / max(max_c sigma, the pixels below it) (the warm-up: while most pixels
    are unsure, every class's threshold is low); T_c = beta_c / (2 - beta_c) * threshold (the
    convex map). The class the model is surest of most often keeps ``threshold``; a class it is
    rarely sure of gets a lower one, so its pixels reach the unlabeled losses. Counted on the
    step's batch rather than FlexMatch's memory of every unlabeled sample's last prediction
    (here one per pixel): no state, so resume stays exact."""
    keep = ~ignore
    sure = keep & (confidence >= threshold)
    sigma = torch.bincount(labels[sure], minlength=num_classes).float()
    unsure = (keep & ~sure).sum().float()
    beta = sigma / torch.maximum(sigma.max(), unsure).clamp_min(1)
    return beta / (2 - beta) * threshold


@dataclass
class Thresholds:
    """The confidence a pseudo-labeled pixel needs (``unimatch.threshold_rule``): ``fixed`` for
    every class, or one per class (``class_thresholds``) counted on the step's weak labels."""

    fixed: float
    per_class: torch.Tensor | None = None

    @classmethod
    def of_step(
        cls,
        u: UniMatchConfig,
        labels: torch.Tensor,
        confidence: torch.Tensor,
        pad: torch.Tensor,
        num_classes: int,
    ) -> Thresholds:
        if u.threshold_rule == "fixed":
            return cls(u.threshold)
        return cls(u.threshold, class_thresholds(labels, confidence, pad, u.threshold, num_classes))

    def __call__(self, labels: torch.Tensor) -> float | torch.Tensor:
        """The threshold of each pixel of ``labels`` (a number where it is the same for all)."""
        return self.fixed if self.per_class is None else self.per_class[labels]

    def scalars(self, background: int | None) -> Scalars:
        """``threshold_fg``: the mean of the foreground classes' thresholds (class-wise only)."""
        if self.per_class is None or background is None:
            return {}
        foreground = [c for c in range(len(self.per_class)) if c != background]
        return {"threshold_fg": self.per_class[foreground].mean()}


def labeled_loss(logits: torch.Tensor, y: torch.Tensor, u: UniMatchConfig) -> torch.Tensor:
    """``unimatch.labeled_loss``: cross-entropy, or OHEM (the Cityscapes recipe)."""
    if u.labeled_loss == "ohem":
        return ohem_cross_entropy(logits, y, u.ohem_threshold, u.ohem_min_kept)
    return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)


def pseudo_label_scalars(
    labels: torch.Tensor,
    confidence: torch.Tensor,
    pad: torch.Tensor,
    truth: torch.Tensor,
    threshold: float | torch.Tensor,
    background: int | None,
) -> Scalars:
    """What the weak pseudo-labels teach, logged each step: ``confident``, the share of the
    unlabeled pixels above the threshold (those that enter the unlabeled losses);
    ``confident_fg``, the share of those that are foreground (not ``background``). Where the
    true masks are known (``truth``: the audit masks, never trained on): ``pl_accuracy`` (every
    pixel), ``pl_accuracy_confident``, and the foreground recall: ``pl_fg_recall``, the share of
    true foreground pixels labeled their class, ``pl_fg_recall_confident``, and confident too.
    On a background-dominated set, a high confident share with a low foreground recall says the
    unlabeled terms mostly teach background (review U3)."""
    sure = (confidence >= threshold) & ~pad
    scalars: Scalars = {"confident": (sure.sum() / (~pad).sum().clamp_min(1)).detach()}
    if background is not None:
        foreground = sure & (labels != background)
        scalars["confident_fg"] = (foreground.sum() / sure.sum().clamp_min(1)).detach()
    known = truth != IGNORE_INDEX
    if known.any():
        right = (labels == truth) & known
        scalars["pl_accuracy"] = right.sum() / known.sum()
        sure_known = known & (confidence >= threshold)
        right_sure = (right & sure_known).sum()
        scalars["pl_accuracy_confident"] = right_sure / sure_known.sum().clamp_min(1)
        if background is not None:
            true_fg = known & (truth != background)
            count = true_fg.sum().clamp_min(1)
            scalars["pl_fg_recall"] = (right & true_fg).sum() / count
            scalars["pl_fg_recall_confident"] = (right & true_fg & sure_known).sum() / count
    return scalars


def unimatch_logits(
    segmenter: nn.Module,
    x: torch.Tensor,
    u_w: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    u: UniMatchConfig,
    runtime: Runtime,
) -> tuple[torch.Tensor, ...]:
    """The forwards of one step (``unimatch.forward``): two, as the public code ([x, u_w] with
    the perturbed decode, then [s1, s2]), or one over all four. Returns the logits of x, u_w,
    u_w's perturbed decode, s1 and s2, at the input's size, float32."""
    size = x.shape[-2:]
    n_u, n_x = len(u_w), len(x)
    with runtime.autocast():
        if u.forward == "two":
            logits, logits_fp = segmenter(torch.cat([x, u_w]), perturbed=n_x + n_u, p=u.fp_dropout)
            logits_s = segmenter(torch.cat([s1, s2]))
        else:
            logits, logits_fp = segmenter(
                torch.cat([u_w, x, s1, s2]), perturbed=n_u, p=u.fp_dropout
            )
    logits = upsample_logits(logits.float(), size)
    if u.forward == "two":
        logits_x, logits_w = logits[:n_x], logits[n_x:]
        logits_fp = logits_fp[n_x:]  # the public code perturbs x too, keeps u_w's
        logits_s1, logits_s2 = upsample_logits(logits_s.float(), size).split(n_u)
    else:
        logits_w, logits_x = logits[:n_u], logits[n_u : n_u + n_x]
        logits_s1, logits_s2 = logits[n_u + n_x : 2 * n_u + n_x], logits[2 * n_u + n_x :]
    return logits_x, logits_w, upsample_logits(logits_fp.float(), size), logits_s1, logits_s2


def unlabeled_batch_size(cfg: Config) -> int:
    batch_u = cfg.unimatch.unlabeled_batch_size or cfg.train.batch_size
    if batch_u < 2 and cfg.model.architecture == "deeplabv3plus":
        raise ConfigError(
            "unimatch on deeplabv3plus needs at least 2 unlabeled images a step (its image "
            "pooling's batch norm): set unimatch.unlabeled_batch_size >= 2"
        )
    return batch_u


def train_unimatch(
    cfg: Config, resumed: Checkpoint | None = None, log: Log = log_to_stderr
) -> Path:
    """Train UniMatch (continuing ``resumed`` if given); return the last checkpoint."""
    with runtime_for(cfg) as runtime:
        run = UniMatchRun(cfg, runtime, "unimatch", resumed, log)
        u = cfg.unimatch
        segmenter = run.wrap(run.model)
        batch_u = unlabeled_batch_size(cfg)
        labeled = run.batches(run.data.labeled, stream=0, batch_size=cfg.train.batch_size)
        unlabeled = run.batches(run.data.unlabeled, stream=1, batch_size=batch_u)
        mixing = run.batches(run.data.unlabeled, stream=2, batch_size=batch_u)
        mean = torch.tensor(cfg.data.mean, device=runtime.device).view(3, 1, 1)
        std = torch.tensor(cfg.data.std, device=runtime.device).view(3, 1, 1)

        def step(iteration: int) -> Scalars:
            batch_l, batch_u, batch_m = next(labeled), next(unlabeled), next(mixing)
            x, u_w, m_w = (run.to_device(b["image"]) for b in (batch_l, batch_u, batch_m))
            y = batch_l["mask"].to(runtime.device, non_blocking=True)
            pad_u = batch_u["pad"].to(runtime.device)
            pad_m = batch_m["pad"].to(runtime.device)
            size = x.shape[-2:]

            # --- pseudo-labels of u' (inside the CutMix boxes): eval mode, no gradient.
            run.model.eval()
            with torch.no_grad(), runtime.autocast():
                probs_m = upsample_logits(run.model(m_w).float(), size).softmax(1)
            run.model.train()
            conf_m, label_m = probs_m.max(1)

            # --- strong views, then the forwards (``unimatch.forward``).
            s1 = strong_views(u_w, m_w, mean, std, u)
            s2 = strong_views(u_w, m_w, mean, std, u)
            logits_x, logits_w, logits_fp, logits_s1, logits_s2 = unimatch_logits(
                segmenter, x, u_w, s1.images, s2.images, u, runtime
            )
            conf_w, label_w = logits_w.detach().softmax(1).max(1)
            needed = Thresholds.of_step(u, label_w, conf_w, pad_u, logits_w.shape[1])
            loss_x = labeled_loss(logits_x, y, u)
            unlabeled_terms = {}
            for name, logits_s, view in (("loss_s1", logits_s1, s1), ("loss_s2", logits_s2, s2)):
                labels = torch.where(view.boxes, label_m, label_w)
                confidence = torch.where(view.boxes, conf_m, conf_w)
                ignore = torch.where(view.boxes, pad_m, pad_u)
                unlabeled_terms[name] = confident_ce(
                    logits_s, labels, confidence, ignore, needed(labels)
                )
            loss_fp = confident_ce(logits_fp, label_w, conf_w, pad_u, needed(label_w))
            loss = u.loss_scale * (
                loss_x
                + u.weight_strong / 2 * (unlabeled_terms["loss_s1"] + unlabeled_terms["loss_s2"])
                + u.weight_fp * loss_fp
            )
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()

            scalars: Scalars = {
                "loss_x": loss_x.detach(),
                **{k: v.detach() for k, v in unlabeled_terms.items()},
                "loss_fp": loss_fp.detach(),
                **pseudo_label_scalars(
                    label_w,
                    conf_w,
                    pad_u,
                    batch_u["audit_mask"].to(runtime.device),
                    needed(label_w),
                    run.layout.background_index,
                ),
                **needed.scalars(run.layout.background_index),
            }
            return scalars

        return run.loop(step, "UniMatch (weak-to-strong consistency)")
