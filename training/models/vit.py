"""ViT encoders for the DPT segmenter: timm's DINOv2 ViTs (the UniMatch V2 encoder), run as the
DINOv2 reference runs them for segmentation.

timm builds the network (its modules and key names, so timm and Meta weight files load into it);
this module owns only the forward that segmentation needs: the position embedding resampled to
the image's patch grid (bicubic, no antialias, by target size: the reference's interpolation
without its +0.1 offset, traceable at any size), the blocks (optionally with gradient
checkpointing), and four intermediate blocks' tokens through the final LayerNorm, without the
class token, as (B, D, H/14, W/14) maps (``../shared/docs/unimatch-v2-notes.md`` section 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

PATCH = 14


@dataclass(frozen=True)
class EncoderSpec:
    """One ViT the DPT segmenter can be built on: timm's model name (with any size overrides),
    the four blocks it taps, the DPT head's widths for it, and its DINOv2 weight files."""

    timm_name: str
    taps: tuple[int, int, int, int]
    features: int  # the DPT head's fusion width
    out_channels: tuple[int, int, int, int]  # per tap, before the fusion convs
    parameters: float  # the encoder's parameter count (millions), for the weight file's size
    meta_file: str | None  # Meta's release file (torch hub cache); None: random weights only
    overrides: dict = field(default_factory=dict)


ENCODERS: dict[str, EncoderSpec] = {
    "vit_small_patch14_dinov2": EncoderSpec(
        "vit_small_patch14_dinov2",
        (2, 5, 8, 11),
        64,
        (48, 96, 192, 384),
        22.1,
        "dinov2_vits14_pretrain.pth",
    ),
    "vit_base_patch14_dinov2": EncoderSpec(
        "vit_base_patch14_dinov2",
        (2, 5, 8, 11),
        128,
        (96, 192, 384, 768),
        86.6,
        "dinov2_vitb14_pretrain.pth",
    ),
    "vit_large_patch14_dinov2": EncoderSpec(
        "vit_large_patch14_dinov2",
        (4, 11, 17, 23),
        256,
        (256, 512, 1024, 1024),
        304.4,
        "dinov2_vitl14_pretrain.pth",
    ),
    # Four narrow blocks, random weights only: tests, the doctor and CPU demos (no DINOv2 file
    # exists for it; `weights=dinov2` is refused).
    "vit_tiny_patch14": EncoderSpec(
        "vit_small_patch14_dinov2",
        (0, 1, 2, 3),
        32,
        (24, 48, 96, 96),
        0.45,
        None,
        {"embed_dim": 96, "depth": 4, "num_heads": 3, "img_size": 224},
    ),
}


def encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise ValueError(f"unknown ViT encoder {name!r} (one of {', '.join(ENCODERS)})")
    return ENCODERS[name]


class ViTEncoder(nn.Module):
    """timm's ViT (module ``vit``: timm's key names) returning four tapped token maps."""

    def __init__(self, name: str, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.spec = encoder_spec(name)
        # dynamic_img_size: the patch embedding takes any size (its own resampling of the
        # position embedding, antialiased, is not used: see ``tokens``).
        self.vit = cast(
            VisionTransformer,
            timm.create_model(
                self.spec.timm_name,
                pretrained=False,
                num_classes=0,
                dynamic_img_size=True,
                **self.spec.overrides,
            ),
        )
        self.embed_dim: int = self.vit.embed_dim
        self.grad_checkpointing = grad_checkpointing

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, 1 + h*w, D): the class token's entry and the patch entries resampled to ``grid``."""
        pos = self.vit.pos_embed
        assert pos is not None  # DINOv2: absolute position embedding, class token included
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        side = int(patch_pos.shape[1] ** 0.5)
        patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(), size=grid, mode="bicubic", align_corners=False, antialias=False
        )
        patch_pos = patch_pos.to(pos.dtype).flatten(2).transpose(1, 2)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` with sides that are multiples of 14 -> four (B, D, H/14, W/14) maps."""
        patches = self.vit.patch_embed(x)  # (B, h, w, D)
        batch, h, w, dim = patches.shape
        assert self.vit.cls_token is not None
        tokens = torch.cat(
            [self.vit.cls_token.expand(batch, -1, -1), patches.reshape(batch, h * w, dim)], dim=1
        )
        tokens = self.vit.norm_pre(tokens + self.position_embedding((h, w)))
        taps = []
        for index, block in enumerate(self.vit.blocks):
            if self.grad_checkpointing and self.training:
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if index in self.spec.taps:
                tap = self.vit.norm(tokens)[:, 1:]
                taps.append(tap.transpose(1, 2).reshape(batch, dim, h, w))
            if index == self.spec.taps[-1]:
                break
        return taps
