"""The training steps ``s4seg bench train`` times, one builder per trainer: each makes its model,
optimiser and random batches on the runtime's device and returns the step (forward, losses,
backward, optimiser) as the trainer runs it."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from s4seg import IGNORE_INDEX
from s4seg.training.config import GanConfig
from s4seg.training.losses import discriminator_loss, minmax01, one_hot_with_ignore
from s4seg.training.models import DeepLabV2, upsample_logits
from s4seg.training.models.discriminator import Discriminator
from s4seg.training.runtime import Runtime


def segmenter_step(runtime: Runtime, depth: int | str, batch: int, crop: int) -> Callable[[], None]:
    """The baseline's step: forward, cross-entropy on upsampled logits, backward, SGD; on
    DeepLabv2 (a ResNet ``depth``) or on the DPT ViT (an encoder's name)."""
    from s4seg.training.models import DPTSegmenter

    model: DeepLabV2 | DPTSegmenter = runtime.place(
        DeepLabV2(21, depth) if isinstance(depth, int) else DPTSegmenter(21, depth)
    )
    optimizer = torch.optim.SGD(model.param_groups(2.5e-4, 10), lr=2.5e-4, momentum=0.9)
    images = torch.randn(batch, 3, crop, crop, device=runtime.device).contiguous(
        memory_format=runtime.memory_format()
    )
    masks = torch.randint(0, 21, (batch, crop, crop), device=runtime.device)
    masks[:, :8] = IGNORE_INDEX

    def step() -> None:
        with runtime.autocast():
            logits = model(images)
        loss = F.cross_entropy(
            upsample_logits(logits.float(), (crop, crop)), masks, ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def s4gan_step(runtime: Runtime, depth: int, batch: int, crop: int) -> Callable[[], None]:
    """The s4GAN trainer's step (training/s4gan.py): S on labeled + unlabeled in one forward,
    cross-entropy + feature matching + self-training, then the D step on detached maps."""
    from s4seg.training.s4gan import segmenter_gan_terms

    classes, gan = 21, GanConfig()
    model = runtime.place(DeepLabV2(classes, depth))
    discriminator = Discriminator(classes).to(runtime.device)
    optimizer = torch.optim.SGD(model.param_groups(2.5e-4, 10), lr=2.5e-4, momentum=0.9)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=gan.d_lr, betas=gan.d_betas)

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, crop, crop, device=runtime.device).contiguous(
            memory_format=runtime.memory_format()
        )

    x_l, x_u, x_r = images(), images(), images()
    y_l = torch.randint(0, classes, (batch, crop, crop), device=runtime.device)
    y_r = torch.randint(0, classes, (batch, crop, crop), device=runtime.device)

    def step() -> None:
        with runtime.autocast():
            logits = model(torch.cat([x_l, x_u]))
        logits = upsample_logits(logits.float(), (crop, crop))
        logits_l, logits_u = logits[:batch], logits[batch:]
        images_u, images_r = minmax01(x_u), minmax01(x_r)
        real_maps = one_hot_with_ignore(y_r, classes)
        terms = segmenter_gan_terms(discriminator, logits_u, images_u, real_maps, images_r, gan)
        loss = F.cross_entropy(logits_l, y_l, ignore_index=IGNORE_INDEX) + terms.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        d_logit, _ = discriminator(
            torch.cat([logits_u.detach().softmax(1), real_maps]), torch.cat([images_u, images_r])
        )
        loss_d = discriminator_loss(d_logit[batch:], d_logit[:batch])
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()

    return step


def unimatch_step(runtime: Runtime, depth: int, batch: int, crop: int) -> Callable[[], None]:
    """The UniMatch trainer's step (training/unimatch.py) on DeepLabv3+ (its recipe's model):
    the eval-mode pass on u', two strong views with CutMix, one forward of u's weak view (and
    its perturbed features), x and both strong views, the four losses, SGD."""
    from s4seg.training.config import UniMatchConfig
    from s4seg.training.models import DeepLabV3Plus
    from s4seg.training.unimatch import confident_ce, strong_views

    classes, u = 21, UniMatchConfig()
    model = runtime.place(DeepLabV3Plus(classes, depth))
    optimizer = torch.optim.SGD(model.param_groups(1e-3, 10), lr=1e-3, momentum=0.9)
    mean = torch.tensor([0.485, 0.456, 0.406], device=runtime.device).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=runtime.device).view(3, 1, 1)

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, crop, crop, device=runtime.device).contiguous(
            memory_format=runtime.memory_format()
        )

    x, u_w, m_w = images(), images(), images()
    y = torch.randint(0, classes, (batch, crop, crop), device=runtime.device)
    pad = torch.zeros(batch, crop, crop, dtype=torch.bool, device=runtime.device)

    def step() -> None:
        model.eval()
        with torch.no_grad(), runtime.autocast():
            conf_m, label_m = upsample_logits(model(m_w).float(), (crop, crop)).softmax(1).max(1)
        model.train()
        s1, s2 = (strong_views(u_w, m_w, mean, std, u) for _ in range(2))
        with runtime.autocast():
            logits, fp = model(torch.cat([u_w, x, s1.images, s2.images]), perturbed=batch)
        logits = upsample_logits(logits.float(), (crop, crop))
        fp = upsample_logits(fp.float(), (crop, crop))
        conf_w, label_w = logits[:batch].detach().softmax(1).max(1)
        loss = F.cross_entropy(logits[batch : 2 * batch], y, ignore_index=IGNORE_INDEX)
        for i, view in enumerate((s1, s2)):
            part = logits[(2 + i) * batch : (3 + i) * batch]
            labels = torch.where(view.boxes, label_m, label_w)
            confidence = torch.where(view.boxes, conf_m, conf_w)
            loss = loss + 0.25 * confident_ce(part, labels, confidence, pad, u.threshold)
        loss = (loss + 0.5 * confident_ce(fp, label_w, conf_w, pad, u.threshold)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def unimatch_v2_step(runtime: Runtime, encoder: str, batch: int, crop: int) -> Callable[[], None]:
    """The UniMatch V2 trainer's step (training/unimatch_v2.py) on the DPT ViT: the teacher's
    pass on u's weak view, two strong views (CutMix from the reversed batch), the labeled pass,
    the strong views' pass with complementary dropout, the losses, AdamW, the EMA update."""
    from s4seg.training.config import UniMatchConfig
    from s4seg.training.mean_teacher import update_teacher
    from s4seg.training.models import DPTSegmenter
    from s4seg.training.unimatch import confident_ce, strong_views
    from s4seg.training.unimatch_v2 import teacher_pseudo_labels

    classes, u = 21, UniMatchConfig()
    model = runtime.place(DPTSegmenter(classes, encoder))
    teacher = runtime.place(DPTSegmenter(classes, encoder)).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.param_groups(5e-6, 40), lr=5e-6, weight_decay=0.01)
    mean = torch.tensor([0.485, 0.456, 0.406], device=runtime.device).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=runtime.device).view(3, 1, 1)
    x, u_w = (torch.randn(batch, 3, crop, crop, device=runtime.device) for _ in range(2))
    y = torch.randint(0, classes, (batch, crop, crop), device=runtime.device)
    pad = torch.zeros(batch, crop, crop, dtype=torch.bool, device=runtime.device)

    def step() -> None:
        conf_w, label_w = teacher_pseudo_labels(teacher, u_w, runtime)
        views = [strong_views(u_w, u_w.flip(0), mean, std, u) for _ in range(2)]
        with runtime.autocast():
            logits_x = model(x)
            logits_s = model(torch.cat([v.images for v in views]), complementary=True)
        loss_x = F.cross_entropy(logits_x.float(), y, ignore_index=IGNORE_INDEX)
        loss_u = sum(
            confident_ce(logits, label_w, conf_w, pad, u.threshold)
            for logits in logits_s.float().chunk(2)
        )
        loss = (loss_x + loss_u / 2) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_teacher(teacher, model, 0.996)

    return step


STEPS: dict[str, Callable[..., Callable[[], None]]] = {
    "segmenter": segmenter_step,
    "s4gan": s4gan_step,
    "unimatch": unimatch_step,
    "unimatch-v2": unimatch_v2_step,
}
# The trainers whose step takes a ViT encoder (by name) where the others take a ResNet depth.
VIT_TRAINERS = ("unimatch-v2",)
VIT_DEFAULTS = {
    "cpu": ["vit_small_patch14_dinov2"],
    "cuda": ["vit_small_patch14_dinov2", "vit_base_patch14_dinov2"],
}


def backbone_name(backbone: int | str) -> str:
    return f"ResNet-{backbone}" if isinstance(backbone, int) else str(backbone)
