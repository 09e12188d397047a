"""EfficientAT's MobileNetV3 (Schmid et al., 2023, "Efficient large-scale audio tagging via
Transformer-to-CNN knowledge distillation"; github.com/fschmid56/EfficientAT, models/mn/), with the
release's layer names, so its ``.pt`` state dicts (``mn04_as_mAP_432.pt``, ``mn10_as_mAP_471.pt``) load
strictly: ``features.0`` (stem), ``features.1..15`` (inverted residual blocks, channel squeeze-excitation
``conc_se_layers.0``), ``features.16`` (last 1x1 conv), ``classifier.2`` and ``classifier.5`` (the "mlp"
head). torchvision's ``ConvNormActivation`` is written out as the ``nn.Sequential`` it is (conv, norm,
activation), which gives the same keys.

Defaults are ``get_model``'s: se_dims "c", se_agg "max", se_r 4, strides (2, 2, 2, 2), head "mlp",
BatchNorm eps 0.001 momentum 0.01. The front end is ``efficientat_mel``.
"""

from __future__ import annotations

import torch
from torch import nn

from urbansound.config import FeatureConfig
from urbansound.features.pretrained import EFFICIENTAT_KIND
from urbansound.models.backbones import Backbone, register_backbone
from urbansound.models.registry import register_model

# (input, kernel, expanded, output, squeeze-excitation, hard-swish, stride) of MobileNetV3-Large, as
# EfficientAT's _mobilenet_v3_conf with strides (2, 2, 2, 2), no reduced tail, no dilation.
BLOCKS = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)
LAST_CHANNEL = 1280  # width of the head's hidden layer before width scaling
SE_REDUCTION = 4
BN_EPS, BN_MOMENTUM = 0.001, 0.01


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never below 90% of it (TF MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm_act(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = "hs"
) -> nn.Sequential:
    """torchvision's ConvNormActivation: conv (no bias), BatchNorm, activation (keys 0.*, 1.*)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if act is not None:
        layers.append(nn.Hardswish() if act == "hs" else nn.ReLU())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel squeeze-excitation: mean over (frequency, time), fc1, ReLU, fc2, sigmoid, scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = make_divisible(channels // SE_REDUCTION, 8)
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3))  # (batch, channels)
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(scale))))
        return x * scale[:, :, None, None]


class ConcurrentSE(nn.Module):
    """EfficientAT's ConcurrentSEBlock with se_dims "c": one channel SE (key ``conc_se_layers.0``); the
    max over one layer's output is that output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (k x k), optional SE, project (1x1); a residual when shapes allow."""

    def __init__(self, spec: tuple[int, int, int, int, bool, bool, int], width: float) -> None:
        super().__init__()
        in_c, kernel, expanded, out_c, use_se, hard_swish, stride = spec
        in_c, expanded, out_c = (make_divisible(c * width) for c in (in_c, expanded, out_c))
        act = "hs" if hard_swish else "re"
        layers: list[nn.Module] = []
        if expanded != in_c:
            layers.append(conv_norm_act(in_c, expanded, 1, act=act))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if use_se:
            layers.append(ConcurrentSE(expanded))
        layers.append(conv_norm_act(expanded, out_c, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_c == out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """EfficientAT's MN at ``width`` (mn04: 0.4, mn10: 1.0): features ``(batch, 1, n_mels, frames)`` ->
    logits ``(batch, n_classes)``."""

    def __init__(self, n_classes: int, width: float, dropout: float = 0.2) -> None:
        super().__init__()
        first = make_divisible(BLOCKS[0][0] * width)
        layers: list[nn.Module] = [conv_norm_act(1, first, 3, stride=2)]
        layers += [InvertedResidual(spec, width) for spec in BLOCKS]
        last_in = make_divisible(BLOCKS[-1][3] * width)
        layers.append(conv_norm_act(last_in, 6 * last_in, 1))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(LAST_CHANNEL * width)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
            nn.Linear(6 * last_in, hidden),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, n_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """EfficientAT's initialisation: Kaiming (fan out) convs, unit norms, N(0, 0.01) linears."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, n_mels, frames), EfficientAT's layout
        return self.classifier(self.features(x))  # (batch, n_classes)


# EfficientAT's AugmentMelSTFT defaults at evaluation: 32 kHz, n_fft 1024, hop 320, 128 mel bands from 0 Hz
# to 15 kHz (fmax None becomes sr / 2 - fmax_aug_range / 2).
FRONT_END = FeatureConfig(
    kind=EFFICIENTAT_KIND, n_fft=1024, hop_length=320, n_mels=128, f_min=0.0, f_max=15_000.0, top_db=None
)
_VARIANTS = {"efficientat_mn04": (0.4, "mn04_as_mAP_432.pt"), "efficientat_mn10": (1.0, "mn10_as_mAP_471.pt")}


def _register(name: str) -> None:
    default_width, release = _VARIANTS[name]
    register_backbone(
        Backbone(
            name=name,
            architecture=f"EfficientAT MobileNetV3 {name.rpartition('_')[2]} ({release})",
            sample_rate=32_000,
            features=FRONT_END,
            checkpoint_format="efficientat",
            head="classifier.5",
        )
    )

    @register_model(name)
    def factory(n_classes: int, n_bands: int, width: float = default_width) -> nn.Module:
        del n_bands  # global pooling: any band count works (the release uses 128)
        return MobileNetV3(n_classes=n_classes, width=width)


for _name in _VARIANTS:
    _register(_name)
