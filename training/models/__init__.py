"""Model definitions and building them from configs and checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from s4seg.errors import CheckpointError, first_line

from .backbone_weights import LoadReport, load_backbone_weights
from .deeplabv2 import DeepLabV2, upsample_logits
from .deeplabv3plus import DeepLabV3Plus
from .dpt import DPTSegmenter
from .vit_weights import load_vit_weights

Segmenter = DeepLabV2 | DeepLabV3Plus | DPTSegmenter

__all__ = [
    "DPTSegmenter",
    "DeepLabV2",
    "DeepLabV3Plus",
    "load_pretrained",
    "segmenter_arch",
    "segmenter_from_arch",
    "segmenter_from_checkpoint",
    "upsample_logits",
]


if TYPE_CHECKING:
    from ..checkpoint import Checkpoint


def segmenter_arch(model_cfg: Any, num_classes: int) -> dict:
    """What it takes to rebuild the segmenter (stored in checkpoints, checked on load)."""
    if model_cfg.architecture == "dpt":
        return {"name": "dpt", "num_classes": num_classes, "encoder": model_cfg.backbone}
    arch = {
        "name": model_cfg.architecture,
        "num_classes": num_classes,
        "backbone_depth": model_cfg.backbone_depth,
        "freeze_bn_affine": model_cfg.freeze_bn_affine,
    }
    if model_cfg.architecture == "deeplabv2":
        arch["aspp_rates"] = list(model_cfg.aspp_rates)
    else:
        arch["output_stride"] = model_cfg.output_stride
    return arch


def segmenter_from_arch(arch: dict) -> Segmenter:
    if arch.get("name") == "deeplabv2":
        return DeepLabV2(
            num_classes=arch["num_classes"],
            backbone_depth=arch["backbone_depth"],
            aspp_rates=arch["aspp_rates"],
            freeze_bn_affine=arch.get("freeze_bn_affine", True),
        )
    if arch.get("name") == "deeplabv3plus":
        return DeepLabV3Plus(
            num_classes=arch["num_classes"],
            backbone_depth=arch["backbone_depth"],
            output_stride=arch["output_stride"],
            freeze_bn_affine=arch.get("freeze_bn_affine", False),
        )
    if arch.get("name") == "dpt":
        return DPTSegmenter(num_classes=arch["num_classes"], encoder=arch["encoder"])
    raise CheckpointError(f"unknown segmenter architecture {arch.get('name')!r}")


def load_pretrained(model: Segmenter, model_cfg: Any) -> LoadReport:
    """``model.pretrained_backbone`` into the segmenter's encoder: a ResNet's ImageNet weights
    (``imagenet`` or a file) or a ViT's DINOv2 weights (``dinov2`` or a file)."""
    source = model_cfg.pretrained_backbone
    if isinstance(model, DPTSegmenter):
        return load_vit_weights(model.backbone, source, model_cfg.backbone)
    return load_backbone_weights(model.backbone, source, model_cfg.backbone_depth)


def segmenter_from_checkpoint(checkpoint: Checkpoint) -> Segmenter:
    """Rebuild the segmenter a checkpoint describes and load its weights (strictly)."""
    source = checkpoint.source
    if checkpoint.kind != "segmenter":
        raise CheckpointError(f"{source} is a {checkpoint.kind} checkpoint, not a segmenter")
    model = segmenter_from_arch(checkpoint.arch)
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as error:
        detail = first_line(error)
        raise CheckpointError(f"{source}: weights do not fit {checkpoint.arch}: {detail}") from None
    return model
