"""PANNs CNN14 and CNN10 (Kong et al., 2020, "PANNs: Large-scale pretrained audio neural networks for audio
pattern recognition"; github.com/qiuqiangkong/audioset_tagging_cnn, pytorch/models.py), with the
release's layer names, so ``{"model": backbone.state_dict()}`` is a file in the release's format.

The front end (spectrogram_extractor, logmel_extractor) is :mod:`urbansound.features.pretrained`'s
``panns_log_mel``; ``bn0`` over the mel bins, the conv blocks, the pooling and ``fc1`` are here, the class
layer ``fc_audioset`` returns logits (the release applies a sigmoid for AudioSet's multi-label task).
SpecAugment and mixup are the training wrapper's, as for every model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from urbansound.config import FeatureConfig
from urbansound.features.pretrained import PANNS_KIND
from urbansound.models.backbones import Backbone, register_backbone
from urbansound.models.registry import register_model

CNN14_WIDTHS = (64, 128, 256, 512, 1024, 2048)
CNN10_WIDTHS = (64, 128, 256, 512)
AUDIOSET_CLASSES = 527
# The release's fixed front-end tensors (torchlibrosa's Spectrogram and LogmelFilterBank).
FRONT_END_KEYS = (
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
    "logmel_extractor.melW",
)


def _init_layer(layer: nn.Module) -> None:
    """PANNs' init_layer: Xavier-uniform weights, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def _init_bn(bn: nn.BatchNorm2d) -> None:
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)


class ConvBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU, then average pooling (PANNs' ConvBlock, pool_type 'avg')."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for layer in (self.conv1, self.conv2):
            _init_layer(layer)
        for bn in (self.bn1, self.bn2):
            _init_bn(bn)

    def forward(self, x: torch.Tensor, pool_size: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool_size)


class PannsCnn(nn.Module):
    """CNN14 (6 blocks) or CNN10 (4 blocks): log-mel ``(batch, 1, n_mels, frames)`` -> logits.

    State-dict keys: ``bn0.*``, ``conv_block1..N.{conv1,conv2,bn1,bn2}.*``, ``fc1.*``, ``fc_audioset.*``,
    the release's. ``widths`` other than the release's give a small network with the same names (tests).
    """

    def __init__(self, n_classes: int, n_bands: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(n_bands)
        in_channels = 1
        for i, width in enumerate(widths, start=1):
            self.add_module(f"conv_block{i}", ConvBlock(in_channels, width))
            in_channels = width
        self.n_blocks = len(widths)
        self.min_frames = 2 ** min(self.n_blocks, len(CNN14_WIDTHS) - 1)  # frames its poolings need
        self.fc1 = nn.Linear(in_channels, in_channels)
        self.fc_audioset = nn.Linear(in_channels, n_classes)
        _init_bn(self.bn0)
        _init_layer(self.fc1)
        _init_layer(self.fc_audioset)

    @torch.no_grad()
    def absorb_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Take inputs standardised per band (``(x - mean) / std``, the band normaliser's) instead of dB:
        ``bn0``'s running statistics move into the standardised scale, so in evaluation the network computes
        what it did on dB, to BatchNorm's eps (in training ``bn0`` uses batch statistics, which standardising
        does not change). SpecAugment's masks then hold each band's training mean, as after PANNs' ``bn0``.
        """
        mean, std = mean.to(self.bn0.running_mean), std.to(self.bn0.running_var)
        self.bn0.running_mean.sub_(mean).div_(std)
        self.bn0.running_var.div_(std * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, n_mels, frames); PANNs' layout is (batch, 1, frames, n_mels)
        x = x.transpose(2, 3)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BatchNorm over the mel bins, as bn0 in PANNs
        # The release cannot pool fewer frames than its poolings halve (32 for CNN14): shorter inputs are
        # padded with zeros (the mean level after bn0); longer ones, everything PANNs accepts, are untouched.
        x = F.pad(x, (0, 0, 0, max(0, self.min_frames - x.shape[2])))
        for i in range(1, self.n_blocks + 1):
            last = i == self.n_blocks and self.n_blocks == len(CNN14_WIDTHS)
            block = getattr(self, f"conv_block{i}")
            x = block(x, pool_size=(1, 1) if last else (2, 2))  # CNN14's sixth block does not pool
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # (batch, channels, frames'): mean over mel
        x = x.amax(dim=2) + x.mean(dim=2)  # (batch, channels): max + mean over time
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu(self.fc1(x))  # the release's "embedding"
        x = F.dropout(x, p=0.5, training=self.training)
        return self.fc_audioset(x)  # (batch, n_classes)


def _front_end(sample_rate: int, n_fft: int, hop_length: int, f_max: float) -> FeatureConfig:
    """PANNs' log-mel: 64 bands from 50 Hz, dB re 1.0 with no top_db (the release's settings)."""
    return FeatureConfig(
        kind=PANNS_KIND, n_fft=n_fft, hop_length=hop_length, n_mels=64, f_min=50.0, f_max=f_max, top_db=None
    )


_VARIANTS = {
    # name: (architecture, widths, sample rate, window, hop, f_max) as in the release's inference commands
    "panns_cnn14": ("PANNs Cnn14 (Cnn14_mAP=0.431.pth)", CNN14_WIDTHS, 32_000, 1024, 320, 14_000.0),
    "panns_cnn10": ("PANNs Cnn10 (Cnn10_mAP=0.380.pth)", CNN10_WIDTHS, 32_000, 1024, 320, 14_000.0),
    "panns_cnn14_16k": ("PANNs Cnn14_16k (Cnn14_16k_mAP=0.438.pth)", CNN14_WIDTHS, 16_000, 512, 160, 8_000.0),
}


def _register(name: str) -> None:
    architecture, default_widths, sample_rate, n_fft, hop, f_max = _VARIANTS[name]
    register_backbone(
        Backbone(
            name=name,
            architecture=architecture,
            sample_rate=sample_rate,
            features=_front_end(sample_rate, n_fft, hop, f_max),
            checkpoint_format="panns",
            head="fc_audioset",
            front_end_keys=FRONT_END_KEYS,
        )
    )

    @register_model(name)
    def factory(n_classes: int, n_bands: int, widths: Sequence[int] = default_widths) -> nn.Module:
        if len(widths) != len(default_widths):
            raise TypeError(f"{name} has {len(default_widths)} conv blocks, got widths {list(widths)}")
        return PannsCnn(n_classes=n_classes, n_bands=n_bands, widths=widths)


for _name in _VARIANTS:
    _register(_name)
