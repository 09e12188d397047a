"""CRNN: a conv front end, a bidirectional recurrent layer over time, and attention pooling.

In the spirit of Cakir et al. (2017), "Convolutional recurrent neural networks for polyphonic sound event
detection": the convs pool frequency much more than time, so the recurrent layer still sees a fine time
axis; feature-level attention pooling over time (Raffel & Ellis, 2016) turns the sequence into one vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from urbansound.errors import ConfigError
from urbansound.models.registry import register_model

RNN_TYPES = ("gru", "lstm")
POOLINGS = ("attention", "mean")


class AttentionPool(nn.Module):
    """Softmax-weighted average over time, with weights from a small tanh network scoring each frame.

    Shapes: ``(batch, frames, dim)`` -> ``(batch, dim)``.
    """

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, frames, dim)
        weights = torch.softmax(self.score(x), dim=1)  # (batch, frames, 1), sums to 1 over frames
        return (weights * x).sum(dim=1)  # (batch, dim)


class MeanPool(nn.Module):
    """Plain average over time. Shapes: ``(batch, frames, dim)`` -> ``(batch, dim)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)  # (batch, dim)


class CRNN(nn.Module):
    """Conv blocks, a bidirectional GRU or LSTM over frames, attention (or mean) pooling over time, linear.

    Args:
        n_classes: number of output logits.
        n_bands: frequency bands of the input (64 or 128 in practice).
        channels: channels of the conv blocks (3x3 conv, BatchNorm, ReLU, max-pool).
        pools: (frequency, time) max-pool of each block.
        rnn: ``"gru"`` or ``"lstm"``.
        hidden: units per direction of the recurrent layer.
        rnn_layers: stacked recurrent layers.
        pooling: ``"attention"`` or ``"mean"`` over time.
        dropout: dropout probability on the recurrent layer's input and on the classifier's input.

    Shapes: ``(batch, 1, n_bands, frames)`` -> ``(batch, n_classes)``.
    """

    def __init__(
        self,
        n_classes: int,
        n_bands: int,
        channels: Sequence[int] = (32, 64, 128, 128),
        pools: Sequence[Sequence[int]] = ((2, 2), (2, 2), (2, 1), (2, 1)),
        rnn: str = "gru",
        hidden: int = 128,
        rnn_layers: int = 1,
        pooling: str = "attention",
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if rnn not in RNN_TYPES:
            raise ConfigError(f"unknown rnn {rnn!r}; choose one of {', '.join(RNN_TYPES)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if len(channels) != len(pools) or not channels:
            raise ConfigError(
                f"crnn needs one pool per conv block, got channels={list(channels)}, "
                f"pools={[list(p) for p in pools]}"
            )
        blocks: list[nn.Module] = []
        in_channels = 1
        freq = n_bands
        for out_channels, (pool_f, pool_t) in zip(channels, pools, strict=True):
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                # ceil_mode keeps the last, partial window, so even a 1-frame clip gets through.
                nn.MaxPool2d(kernel_size=(pool_f, pool_t), ceil_mode=True),
            ]
            in_channels = out_channels
            freq = math.ceil(freq / pool_f)
        self.features = nn.Sequential(*blocks)
        # Channels and the remaining frequency bins together describe a frame; they are flattened, not
        # pooled, so the recurrent layer still knows where in frequency the energy is.
        rnn_input = in_channels * freq
        self.rnn_dropout = nn.Dropout(dropout)
        rnn_class = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = rnn_class(
            rnn_input,
            hidden,
            num_layers=rnn_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if rnn_layers > 1 else 0.0,
        )
        self.pool = AttentionPool(2 * hidden) if pooling == "attention" else MeanPool()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, n_bands, frames)
        x = self.features(x)  # (batch, C, F', T'), F' = n_bands / 16, T' = frames / 4 with the default pools
        x = x.permute(0, 3, 1, 2).flatten(2)  # (batch, T', C * F')
        x, _ = self.rnn(self.rnn_dropout(x))  # (batch, T', 2 * hidden)
        x = self.pool(x)  # (batch, 2 * hidden)
        return self.classifier(self.dropout(x))  # (batch, n_classes)


@register_model("crnn")
def crnn(n_classes: int, n_bands: int, **kwargs: object) -> nn.Module:
    """Four conv blocks (32-64-128-128, frequency pooled 16x, time 4x), a bidirectional GRU of 128 units per
    direction, attention pooling over time, linear; ``rnn="lstm"`` and ``pooling="mean"`` are options."""
    return CRNN(n_classes=n_classes, n_bands=n_bands, **kwargs)  # type: ignore[arg-type]
