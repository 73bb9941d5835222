"""The DPT segmenter of UniMatch V2: a DINOv2 ViT (``vit.py``) and a DPT head without batch norm
(``../shared/docs/unimatch-v2-notes.md`` section 1).

Head: per tap a 1x1 projection, then resampled to strides 3.5/7/14/28 (transposed convs x4 and
x2, identity, a strided conv), a 3x3 conv to the fusion width, four fusion blocks top-down
(residual conv units, bilinear upsampling with align_corners=True) and a conv3x3-ReLU-conv1x1
classifier at stride 1.75, resized to the padded input. Inputs of any size: padded (bottom,
right) to a multiple of 14, the logits cropped back, so they come at the input's resolution.

Feature perturbation works on the taps (between encoder and head, so gradients reach the
encoder): ``perturbed`` (UniMatch V1: channel dropout, one mask per tap) and ``complementary``
(UniMatch V2: two views, each channel kept in exactly one of them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .vit import PATCH, ViTEncoder


class ResidualConvUnit(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """path (+ skip through a residual unit) -> residual unit -> upsampled -> 1x1 conv. The
    deepest block has no skip (the reference builds its unit and never calls it)."""

    def __init__(self, width: int, has_skip: bool) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(width) if has_skip else None
        self.unit = ResidualConvUnit(width)
        self.project = nn.Conv2d(width, width, 1)

    def forward(
        self, path: torch.Tensor, skip: torch.Tensor | None, size: Sequence[int]
    ) -> torch.Tensor:
        if skip is not None and self.skip_unit is not None:
            path = path + self.skip_unit(skip)
        path = self.unit(path)
        path = F.interpolate(path, size=tuple(size), mode="bilinear", align_corners=True)
        return self.project(path)


def _resample(channels: int, level: int) -> nn.Module:
    """Level 0..3 of the taps (all at stride 14) to strides 3.5, 7, 14, 28."""
    if level == 0:
        return nn.ConvTranspose2d(channels, channels, 4, stride=4)
    if level == 1:
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    if level == 2:
        return nn.Identity()
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)


class DPTHead(nn.Module):
    def __init__(
        self, dim: int, features: int, out_channels: Sequence[int], num_classes: int
    ) -> None:
        super().__init__()
        self.projects = nn.ModuleList([nn.Conv2d(dim, c, 1) for c in out_channels])
        self.resamples = nn.ModuleList([_resample(c, i) for i, c in enumerate(out_channels)])
        self.reduce = nn.ModuleList(
            [nn.Conv2d(c, features, 3, padding=1, bias=False) for c in out_channels]
        )
        self.fusion = nn.ModuleList([FusionBlock(features, has_skip=i < 3) for i in range(4)])
        self.classifier = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(features, num_classes, 1),
        )

    def forward(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [
            reduce(resample(project(tap)))
            for tap, project, resample, reduce in zip(
                taps, self.projects, self.resamples, self.reduce, strict=True
            )
        ]
        finest = levels[0].shape[-2:]
        path = self.fusion[3](levels[3], None, levels[2].shape[-2:])
        path = self.fusion[2](path, levels[2], levels[1].shape[-2:])
        path = self.fusion[1](path, levels[1], finest)
        path = self.fusion[0](path, levels[0], (2 * finest[0], 2 * finest[1]))
        return self.classifier(path)


def complementary_masks(batch: int, dim: int, device: torch.device) -> torch.Tensor:
    """(2*batch, dim) channel masks for two views of ``batch`` images: view 1 keeps a Bernoulli(0.5)
    half of the channels (x2), view 2 the other half (x2); int(0.5*batch) random images keep all
    channels in both views (UniMatch V2's complementary dropout)."""
    first = torch.bernoulli(torch.full((batch, dim), 0.5, device=device)) * 2.0
    second = 2.0 - first
    keep = torch.randperm(batch, device=device)[: int(0.5 * batch)]
    first[keep] = 1.0
    second[keep] = 1.0
    return torch.cat([first, second])


class DPTSegmenter(nn.Module):
    def __init__(self, num_classes: int, encoder: str, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.backbone = ViTEncoder(encoder, grad_checkpointing)
        spec = self.backbone.spec
        self.head = DPTHead(self.backbone.embed_dim, spec.features, spec.out_channels, num_classes)

    def decode(self, taps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        logits = self.head(taps)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)

    def forward(
        self,
        x: torch.Tensor,
        perturbed: int = 0,
        p: float = 0.5,
        complementary: bool = False,
    ):
        """Logits at the input's resolution. ``perturbed`` = n: also the logits of the first n
        images from channel-dropped taps (UniMatch V1's feature perturbation, decoded in the same
        pass). ``complementary``: ``x`` is two views of one batch, concatenated; their taps get
        complementary channel masks (UniMatch V2)."""
        height, width = x.shape[-2:]
        # Pad to the patch grid (0 after normalisation: the mean colour); crop the logits back.
        x = F.pad(x, (0, (PATCH - width % PATCH) % PATCH, 0, (PATCH - height % PATCH) % PATCH))
        padded = x.shape[-2:]
        taps = self.backbone(x)
        if complementary:
            masks = complementary_masks(len(x) // 2, self.backbone.embed_dim, x.device)
            taps = [tap * masks[:, :, None, None].to(tap.dtype) for tap in taps]
        if not perturbed:
            return self.decode(taps, padded)[..., :height, :width]
        dropped = [F.dropout2d(tap[:perturbed], p, True) for tap in taps]
        logits = self.decode([torch.cat(pair) for pair in zip(taps, dropped, strict=True)], padded)
        logits = logits[..., :height, :width]
        return logits[: len(x)], logits[len(x) :]

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """Encoder at ``lr``, head at ``head_lr_mult * lr`` (UniMatch V2: 5e-6 and x40)."""
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return [
            {"params": list(self.backbone.parameters()), "lr": lr, "name": "backbone"},
            {"params": head, "lr": lr * head_lr_mult, "name": "head"},
        ]
