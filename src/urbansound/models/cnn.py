"""The baseline recipe's 4-block CNN (the tutorial pipeline's model, kept unchanged)."""

from __future__ import annotations

import torch
from torch import nn

from urbansound.models.registry import register_model


class BaselineCNN(nn.Module):
    """Four conv blocks (3x3 conv, ReLU, then BatchNorm), global average pool, linear classifier.

    Channels 8-16-32-64 with strides 1-2-2-2, Kaiming-initialised, as in the tutorial pipeline.
    """

    def __init__(
        self,
        n_classes: int,
        channels: tuple[int, ...] = (8, 16, 32, 64),
        strides: tuple[int, ...] = (1, 2, 2, 2),
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_channels = 1
        for out_channels, stride in zip(channels, strides, strict=True):
            conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
            # The tutorial pipeline used kaiming_normal_ with a=0.1 (leaky-ReLU gain) and zero bias.
            nn.init.kaiming_normal_(conv.weight, a=0.1)
            nn.init.zeros_(conv.bias)
            blocks += [conv, nn.ReLU(), nn.BatchNorm2d(out_channels)]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, n_bands, frames)
        x = self.features(x)  # (batch, 64, n_bands / 8, frames / 8)
        x = self.pool(x).flatten(1)  # (batch, 64)
        return self.classifier(x)  # (batch, n_classes)


@register_model("cnn")
def cnn(n_classes: int, n_bands: int, **kwargs: object) -> nn.Module:
    """The baseline CNN; ``n_bands`` is taken for a uniform factory signature (global pooling ignores it)."""
    del n_bands
    return BaselineCNN(n_classes=n_classes, **kwargs)  # type: ignore[arg-type]


SeedCNN = BaselineCNN  # the class's former name, kept for code that imports it
