"""DeepLabv3+: a ResNet at output stride 16 (or 8), ASPP with image pooling, and a decoder that
fuses the stride-4 features; logits at 1/4 of the input (upsampled by the caller, as DeepLabv2's).

The encoder/decoder split is public (``encode``, ``decode``) because UniMatch perturbs the
encoder's features before decoding them a second time (training/unimatch.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from .deeplabv2 import ResNetBackbone

# ASPP rates for output stride 16 (doubled at 8), as in DeepLabv3+ and UniMatch's configs.
ASPP_RATES_OS16 = (6, 12, 18)
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48


class ResNetEncoder(ResNetBackbone):
    """DeepLabv2's trunk (torchvision names: ImageNet weights load the same way), returning the
    stride-4 features (layer1) beside the final ones."""

    def __init__(self, depth: int, output_stride: int) -> None:
        super().__init__(depth, output_stride)
        block = self.layer1[0]
        self.low_channels = block.conv3.out_channels if isinstance(block, resnet.Bottleneck) else 64

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """A 1x1 branch, three dilated 3x3 branches and image pooling, concatenated and projected."""

    def __init__(self, cin: int, rates: Sequence[int], cout: int = ASPP_CHANNELS) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
        )
        self.pool = _conv_bn_relu(cin, cout)  # on the image-pooled features
        self.project = _conv_bn_relu(cout * (len(rates) + 2), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    def __init__(
        self,
        num_classes: int,
        backbone_depth: int = 101,
        output_stride: int = 16,
        freeze_bn_affine: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = ResNetEncoder(backbone_depth, output_stride)
        rates = [r * 16 // output_stride for r in ASPP_RATES_OS16]
        self.aspp = ASPP(self.backbone.out_channels, rates)
        self.reduce = _conv_bn_relu(self.backbone.low_channels, LOW_LEVEL_CHANNELS)
        self.fuse = nn.Sequential(
            _conv_bn_relu(ASPP_CHANNELS + LOW_LEVEL_CHANNELS, ASPP_CHANNELS, 3),
            _conv_bn_relu(ASPP_CHANNELS, ASPP_CHANNELS, 3),
        )
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)
        if freeze_bn_affine:
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.requires_grad_(False)
                    module.bias.requires_grad_(False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(x)

    def decode(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        high = self.aspp(high)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse(torch.cat([self.reduce(low), high], dim=1)))

    def forward(self, x: torch.Tensor, perturbed: int = 0, p: float = 0.5):
        """Logits at 1/4 of the input. With ``perturbed`` = n, also the logits of the first n
        images from channel-dropped features (Dropout2d, ``p``: UniMatch's feature
        perturbation), decoded in one pass with the clean ones, as the public code does: the
        decoder's batch norm normalises clean and dropped features together (decoded apart,
        it standardised the dropped batch on its own statistics, partly undoing the drop)."""
        low, high = self.encode(x)
        if not perturbed:
            return self.decode(low, high)
        drop = F.dropout2d
        logits = self.decode(
            torch.cat([low, drop(low[:perturbed], p, True)]),
            torch.cat([high, drop(high[:perturbed], p, True)]),
        )
        return logits[: len(x)], logits[len(x) :]

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """Backbone at ``lr``, ASPP and decoder at ``head_lr_mult * lr`` (UniMatch's 10x)."""
        trainable = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return [
            {"params": trainable, "lr": lr, "name": "backbone"},
            {"params": head, "lr": lr * head_lr_mult, "name": "head"},
        ]
