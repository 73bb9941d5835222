"""``dinov2``: the DINOv2 weights of a ViT encoder, from the user's caches or a file; never
downloaded (an offline machine gets one line naming the file, its size and where to put it).

Looked for, in order: the Hugging Face cache timm reads (``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``: ``models--timm--<name>.lvd142m/snapshots/*/``
``model.safetensors`` or ``pytorch_model.bin``), then torch's hub cache (``$TORCH_HOME/hub/``
``checkpoints/dinov2_vit?14_pretrain.pth``, Meta's release file). Either format loads: timm's
own filter renames Meta's keys, drops ``mask_token`` and resamples the position embedding to the
model's grid; then the load is strict.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict
from timm.models.vision_transformer import checkpoint_filter_fn

from s4seg.errors import CheckpointError, first_line

from .backbone_weights import LoadReport
from .vit import EncoderSpec, ViTEncoder

DINOV2 = "dinov2"  # the value of model.pretrained_backbone
DINOV2_TAG = "lvd142m"
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def hf_repo_folder(spec: EncoderSpec) -> Path:
    return hf_hub_cache() / f"models--timm--{spec.timm_name}.{DINOV2_TAG}"


def torch_hub_file(spec: EncoderSpec) -> Path:
    assert spec.meta_file is not None
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.meta_file


def find_dinov2_file(name: str, spec: EncoderSpec) -> Path:
    """The cached weight file, or a CheckpointError that says how to get it."""
    if spec.meta_file is None:
        raise CheckpointError(
            f"{name} has no DINOv2 weights (random weights only: tests and demos); "
            "use vit_small_patch14_dinov2 or vit_base_patch14_dinov2"
        )
    for snapshot in sorted(hf_repo_folder(spec).glob("snapshots/*")):
        for file_name in HF_FILES:
            if (snapshot / file_name).is_file():
                return snapshot / file_name
    meta = torch_hub_file(spec)
    if meta.is_file():
        return meta
    pretrained = timm.models.get_pretrained_cfg(f"{spec.timm_name}.{DINOV2_TAG}")
    url = pretrained.url if pretrained else "Meta's dinov2 release"
    raise CheckpointError(
        f"DINOv2 weights for {name} are in neither cache: put {spec.meta_file} (about "
        f"{spec.parameters * 4:.0f} MB: {spec.parameters}M float32 parameters, from {url}) at "
        f"{meta}, or timm/{spec.timm_name}.{DINOV2_TAG} from the Hugging Face hub under "
        f"{hf_repo_folder(spec)} (huggingface-cli download on a connected machine), or set "
        "model.pretrained_backbone to the file's path"
    )


def load_vit_weights(encoder: ViTEncoder, source: str | Path, name: str) -> LoadReport:
    """``source``: ``dinov2`` (the caches) or a path to a Meta ``.pth`` or a timm file."""
    path = find_dinov2_file(name, encoder.spec) if str(source) == DINOV2 else Path(source)
    path = path.expanduser()
    if not path.is_file():
        raise CheckpointError(f"ViT weights file not found: {path}")
    try:
        state = load_state_dict(str(path), weights_only=True)
        state = checkpoint_filter_fn(state, encoder.vit)
        encoder.vit.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, KeyError, ValueError) as error:
        raise CheckpointError(f"{path} does not fit {name}: {first_line(error)}") from None
    total = len(encoder.vit.state_dict())
    return LoadReport(path=str(path), matched=total, total=total)
