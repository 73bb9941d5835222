"""The s4GAN discriminator: an image-wise classifier of (segmentation map, image) pairs."""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """Four 4x4 stride-2 convolutions (64/128/256/512), LeakyReLU(0.2) and Dropout2d(0.5),
    global average pooling, a linear layer (paper section 4.1.2).

    The paper puts dropout after every layer; the authors' code after the first three
    (``dropout_after_last=False`` reproduces that). Returns the logit of "real" per sample and the
    pooled 512-d vector that the feature-matching loss compares.
    """

    def __init__(
        self,
        num_classes: int,
        image_channels: int = 3,
        width: int = 64,
        dropout: float = 0.5,
        dropout_after_last: bool = True,
    ) -> None:
        super().__init__()
        channels = [num_classes + image_channels, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for index in range(4):
            layers += [
                nn.Conv2d(channels[index], channels[index + 1], 4, stride=2, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            if index < 3 or dropout_after_last:
                layers.append(nn.Dropout2d(dropout))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], 1)

    def forward(
        self, maps: torch.Tensor, images01: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``maps``: class probabilities or one-hot labels (N, C, H, W); ``images01``: images
        scaled to [0, 1]. Returns (logit (N,), pooled features (N, 512))."""
        pooled = self.pool(self.features(torch.cat([maps, images01], dim=1))).flatten(1)
        return self.fc(pooled).squeeze(1), pooled
