"""ResNet-18 (He et al., 2016) adapted to 1-channel spectrograms.

Changes from the ImageNet network: one input channel; a 3x3 stride-1 stem instead of the 7x7 stride-2 conv,
because a 64-band spectrogram is already small and its fine frequency structure matters; a 2x2 max-pool
after the stem instead of the 3x3 stride-2 one; dropout before the classifier, because UrbanSound8K is small.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from urbansound.errors import ConfigError
from urbansound.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 projection) shortcut.

    Shapes: ``(batch, in_channels, F, T)`` -> ``(batch, out_channels, ceil(F / stride), ceil(T / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        # No conv bias: the BatchNorm right after supplies it.
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, in_channels, F, T)
        out = self.relu(self.bn1(self.conv1(x)))  # (batch, out_channels, F / stride, T / stride)
        out = self.bn2(self.conv2(out))  # (batch, out_channels, F / stride, T / stride)
        return self.relu(out + self.shortcut(x))  # (batch, out_channels, F / stride, T / stride)


class ResNet(nn.Module):
    """ResNet with BasicBlocks for ``(batch, 1, n_bands, frames)`` spectrograms.

    Args:
        n_classes: number of output logits.
        widths: channels of the four stages (the stem has ``widths[0]``).
        layers: BasicBlocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
        dropout: dropout probability before the classifier.
        in_channels: input channels (1: the spectrogram; more with deltas or a band-position channel).

    Stages 2-4 halve both axes, so with the stem's pool the last map is 1/16 of the input per axis; global
    average pooling then makes the output independent of the number of frames.

    Shapes: ``(batch, 1, n_bands, frames)`` -> ``(batch, n_classes)``.
    """

    def __init__(
        self,
        n_classes: int,
        widths: Sequence[int] = (32, 64, 128, 256),
        layers: Sequence[int] = (2, 2, 2, 2),
        dropout: float = 0.2,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(widths) != len(layers) or not widths or min(layers) < 1:
            raise ConfigError(
                f"resnet needs one width and at least one block per stage, "
                f"got widths={list(widths)}, layers={list(layers)}"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            # Light pool: quarters the cost of every later layer; ceil_mode so a 1-frame clip survives.
            nn.MaxPool2d(kernel_size=2, ceil_mode=True),
            # After the pool: ReLU is monotone, so relu(max(x)) = max(relu(x)) in value and gradient, and a
            # quarter of the elements pass it (the full-resolution ReLU's backward was ~5% of a CPU step).
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for index, (width, n_blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = [BasicBlock(in_channels, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, n_classes)
        for module in self.modules():
            # torchvision's initialisation for ResNets.
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, n_bands, frames)
        x = self.stem(x)  # (batch, widths[0], n_bands / 2, frames / 2)
        x = self.stages(x)  # (batch, widths[-1], n_bands / 16, frames / 16)
        x = self.pool(x).flatten(1)  # (batch, widths[-1])
        return self.classifier(self.dropout(x))  # (batch, n_classes)


@register_model("resnet")
def resnet(n_classes: int, n_bands: int, **kwargs: object) -> nn.Module:
    """ResNet-18 depth at half width (32-64-128-256).

    Half width has a quarter of the parameters and MACs of the standard widths (2.8 M parameters and
    0.76 GMACs for a 4 s clip of 64 bands, against 11.2 M and 3.0 G), so 10-fold cross-validation stays
    feasible on a laptop CPU; UrbanSound8K's ~8k clips hardly need more capacity. ``n_bands`` is accepted
    for a uniform factory signature (global pooling ignores it).
    """
    del n_bands
    return ResNet(n_classes=n_classes, **kwargs)  # type: ignore[arg-type]


@register_model("resnet18")
def resnet18(n_classes: int, n_bands: int, **kwargs: object) -> nn.Module:
    """ResNet-18 with the standard 64-128-256-512 widths."""
    del n_bands
    kwargs.setdefault("widths", (64, 128, 256, 512))
    return ResNet(n_classes=n_classes, **kwargs)  # type: ignore[arg-type]
