"""DeepLabv2: a dilated ResNet at output stride 8 and a four-rate ASPP head, outputs summed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

BACKBONES = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
PAPER_ASPP_RATES = (6, 12, 18, 24)


def _dilate(layer: nn.Sequential, dilation: int) -> None:
    """Turn a stride-2 ResNet stage into a stride-1 stage with dilated 3x3 convolutions.

    Done on the built modules (not via ``replace_stride_with_dilation``) because torchvision's
    BasicBlock refuses dilation, and the small depths are what a CPU can train. Every block of the
    stage gets the dilation, as in the authors' Caffe-derived network.
    """
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            if module.kernel_size == (3, 3):
                module.stride, module.dilation, module.padding = (
                    (1, 1),
                    (dilation,) * 2,
                    (dilation,) * 2,
                )
            elif module.stride == (2, 2):  # the 1x1 projection of the downsample branch
                module.stride = (1, 1)


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk at output stride 8, or 16 (DeepLabv3+'s default: only the last
    stage dilated); state_dict names match torchvision's, so its ImageNet weights load."""

    def __init__(self, depth: int, output_stride: int = 8) -> None:
        super().__init__()
        if depth not in BACKBONES:
            raise ValueError(f"backbone depth must be one of {sorted(BACKBONES)}, not {depth}")
        if output_stride not in (8, 16):
            raise ValueError(f"output stride must be 8 or 16, not {output_stride}")
        net = BACKBONES[depth](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        if output_stride == 8:
            _dilate(self.layer3, 2)
            _dilate(self.layer4, 4)
        else:
            _dilate(self.layer4, 2)
        self.out_channels = net.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPPSum(nn.Module):
    """Parallel 3x3 convolutions at several dilation rates, outputs summed (DeepLabv2 head).

    The public code returns inside its loop and so sums only the first two rates; all of
    ``rates`` contribute here (pass ``rates=(6, 12)`` to reproduce that variant).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        branches = [
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in rates
        ]
        for branch in branches:
            nn.init.normal_(branch.weight, 0.0, 0.01)
            if branch.bias is not None:
                nn.init.zeros_(branch.bias)
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """Logits at 1/8 of the input resolution (321x321 -> 41x41)."""

    def __init__(
        self,
        num_classes: int,
        backbone_depth: int = 101,
        aspp_rates: Sequence[int] = PAPER_ASPP_RATES,
        freeze_bn_affine: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(backbone_depth)
        self.classifier = ASPPSum(self.backbone.out_channels, num_classes, aspp_rates)
        if freeze_bn_affine:
            # BN statistics still update (train mode); only gamma/beta stay fixed, as in DeepLabv2.
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.requires_grad_(False)
                    module.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor, perturbed: int = 0, p: float = 0.5):
        """Logits at 1/8. With ``perturbed`` = n, also the first n images' logits from
        channel-dropped backbone features (UniMatch's feature perturbation), the clean and the
        dropped features through the head together (as the public code's one decode)."""
        features = self.backbone(x)
        if not perturbed:
            return self.classifier(features)
        dropped = F.dropout2d(features[:perturbed], p, True)
        logits = self.classifier(torch.cat([features, dropped]))
        return logits[: len(x)], logits[len(x) :]

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """Backbone at ``lr``, the new head at ``head_lr_mult * lr`` (the paper's 10x)."""
        trainable = [p for p in self.backbone.parameters() if p.requires_grad]
        return [
            {"params": trainable, "lr": lr, "name": "backbone"},
            {"params": list(self.classifier.parameters()), "lr": lr * head_lr_mult, "name": "head"},
        ]


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=True, as the authors) to the label resolution."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
