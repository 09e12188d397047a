"""SB-CNN: the CNN of Salamon & Bello (2017), "Deep convolutional neural networks and data augmentation for
environmental sound classification", IEEE Signal Processing Letters 24(3).

Three 5x5 conv layers with 24-48-48 filters, (4, 2) max-pooling (time, frequency) after the first two, ReLU,
then a dense layer of 64 units and the output layer, each of the last two with dropout 0.5 on its input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from urbansound.errors import ConfigError
from urbansound.models.registry import register_model

TIME_POOLINGS = ("mean", "max")


class SBCNN(nn.Module):
    """Salamon & Bello's SB-CNN, adapted to clips of any length.

    The paper fed fixed 128x128 patches (128 bands, 128 frames) with unpadded convolutions and flattened the
    last feature map into the dense layer. Here the convolutions are zero-padded and the pooling rounds up,
    so any number of frames (even one) gets through, and the last feature map is pooled over all of time
    before the dense layer; the frequency axis is kept (flattened), so the dense layer's size depends on
    ``n_bands``.

    Args:
        n_classes: number of output logits.
        n_bands: frequency bands of the input (64 or 128 in practice).
        channels: filters of the three conv layers.
        hidden: units of the dense layer.
        dropout: dropout probability on the inputs of the dense and the output layer.
        batch_norm: BatchNorm after each conv; off by default, as in the paper.
        time_pooling: ``"mean"`` or ``"max"`` over time before the dense layer.

    Shapes: ``(batch, 1, n_bands, frames)`` -> ``(batch, n_classes)``.
    """

    def __init__(
        self,
        n_classes: int,
        n_bands: int,
        channels: tuple[int, int, int] = (24, 48, 48),
        hidden: int = 64,
        dropout: float = 0.5,
        batch_norm: bool = False,
        time_pooling: str = "mean",
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ConfigError(f"sbcnn needs 3 conv widths, got {list(channels)}")
        if time_pooling not in TIME_POOLINGS:
            raise ConfigError(
                f"unknown time_pooling {time_pooling!r}; choose one of {', '.join(TIME_POOLINGS)}"
            )
        self.time_pooling = time_pooling
        layers: list[nn.Module] = []
        in_channels = 1
        for index, out_channels in enumerate(channels):
            # padding=2 keeps the size ('same'); the paper's unpadded convs need >= 100 frames to survive.
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2, bias=not batch_norm))
            if batch_norm:
                # Optional, not in the paper: it makes training far less sensitive to the learning rate and
                # initialisation, which matters when this model shares one training recipe with the others.
                layers.append(nn.BatchNorm2d(out_channels))
            if index < 2:
                # The paper pools (4, 2) over (time, frequency); tensors here are (..., frequency, time).
                # ceil_mode keeps the last, partial window, so short clips do not vanish.
                layers.append(nn.MaxPool2d(kernel_size=(2, 4), ceil_mode=True))
            layers.append(nn.ReLU())
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        # Frequency bins left after two ceil-mode halvings.
        freq_out = math.ceil(math.ceil(n_bands / 2) / 2)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_channels * freq_out, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
        for module in self.modules():
            # He initialisation for ReLU layers (zero bias), as the baseline CNN; torch's default is ~1/3 the
            # variance, and without BatchNorm that shrinks the signal layer by layer and slows early training.
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, n_bands, frames)
        x = self.features(x)  # (batch, C3, n_bands / 4, frames / 16), C3 = channels[-1]
        # Adaptive (global) pooling over time replaces the paper's fixed 128-frame patches, so any clip length
        # maps to one vector. Mean is the nearest analogue of the paper's clip decision, which averaged the
        # predictions of all patches; max keeps a short event from being diluted by a long quiet clip.
        x = x.amax(dim=-1) if self.time_pooling == "max" else x.mean(dim=-1)  # (batch, C3, n_bands / 4)
        return self.classifier(x.flatten(1))  # (batch, n_classes)


@register_model("sbcnn")
def sbcnn(n_classes: int, n_bands: int, **kwargs: object) -> nn.Module:
    """Salamon & Bello's SB-CNN (24-48-48 filters, 5x5 kernels, dense 64, dropout 0.5).

    The paper also put an L2 penalty of 0.001 on the last two layers' weights; that belongs to the optimiser
    settings (weight decay), not to the model.
    """
    return SBCNN(n_classes=n_classes, n_bands=n_bands, **kwargs)  # type: ignore[arg-type]
