"""The model's input stages after the normaliser, and the views it averages at evaluation.

- :class:`InputChannels`: normalised features ``(batch, n_bands, frames)`` -> the backbone's input
  ``(batch, channels, n_bands, frames)``: the features, optionally their deltas (HTK's regression formula)
  and a CoordConv-style channel holding each band's position (Liu et al. 2018), so a convolution knows where
  in frequency it is.
- :class:`ViewAverage`: at evaluation, classify several views of a clip (windows of the length the model was
  trained on, circular time shifts) and average their class probabilities.
- :class:`RandomTimeCrop`: training only (the training wrapper applies it, see
  :func:`urbansound.training.fit`): a random crop of 1 s up to the window length per batch.

``build_stages`` makes all of them from the model's settings; none changes the feature cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from urbansound.config import FeatureConfig, ModelConfig, RunConfig
from urbansound.features.cache import band_statistics
from urbansound.features.frontend import BandNormalizer
from urbansound.features.pcen import PCENNormalizer, pcen_band_statistics

DELTA_WIDTH = 2  # frames on each side of HTK's delta regression (a 5-frame window, ~0.23 s at hop 1024)
MIN_CROP_S = 1.0  # seconds: the shortest random crop in training
WINDOW_HOP_S = 0.5  # seconds between the windows averaged at evaluation
SHIFT_STEP_S = 0.5  # seconds: test-time shifts are +step, -step, +2 step, -2 step, ...


def deltas(features: torch.Tensor, width: int = DELTA_WIDTH) -> torch.Tensor:
    """HTK's delta of ``(batch, n_bands, frames)`` along frames: ``sum_n n (x[t+n] - x[t-n]) / (2 sum_n n^2)``
    for n = 1..width, with the edge frames repeated."""
    padded = torch.cat(
        [
            features[..., :1].expand(*features.shape[:-1], width),
            features,
            features[..., -1:].expand(*features.shape[:-1], width),
        ],
        dim=-1,
    )
    frames = features.shape[-1]
    total = torch.zeros_like(features)
    for n in range(1, width + 1):
        total = total + n * (
            padded[..., width + n : width + n + frames] - padded[..., width - n : width - n + frames]
        )
    return total / (2 * sum(n * n for n in range(1, width + 1)))


class InputChannels(nn.Module):
    """``(batch, n_bands, frames)`` -> ``(batch, channels, n_bands, frames)``: the features, then
    ``delta_orders`` orders of deltas, then (``freq_channel``) the band position from -1 (lowest) to 1
    (highest)."""

    def __init__(self, delta_orders: int = 0, freq_channel: bool = False) -> None:
        super().__init__()
        self.delta_orders = delta_orders
        self.freq_channel = freq_channel

    @property
    def channels(self) -> int:
        return 1 + self.delta_orders + int(self.freq_channel)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: (batch, n_bands, frames)
        stack = [features]
        for _ in range(self.delta_orders):
            stack.append(deltas(stack[-1]))
        if self.freq_channel:
            n_bands = features.shape[1]
            position = torch.linspace(-1.0, 1.0, n_bands, device=features.device, dtype=features.dtype)
            stack.append(position[None, :, None].expand_as(features))
        return torch.stack(stack, dim=1)  # (batch, channels, n_bands, frames)

    def extra_repr(self) -> str:
        return f"delta_orders={self.delta_orders}, freq_channel={self.freq_channel}"


class ViewAverage(nn.Module):
    """The views a clip is classified from at evaluation, and their average.

    ``window_frames`` > 0: windows of that many frames every ``hop_frames`` (the last one ending at the
    clip's end); ``shift_frames``: circular shifts of the clip besides the clip itself. With neither there is
    one view and the logits pass through unchanged. ``min_crop_frames`` is the shortest random crop the
    model trains on (see :func:`training_crop`).
    """

    def __init__(
        self,
        window_frames: int = 0,
        hop_frames: int = 1,
        shift_frames: tuple[int, ...] = (),
        min_crop_frames: int = 1,
    ) -> None:
        super().__init__()
        self.window_frames = window_frames
        self.min_crop_frames = min_crop_frames
        self.hop_frames = max(hop_frames, 1)
        self.shift_frames = tuple(shift_frames)

    @property
    def active(self) -> bool:
        """Whether there is more than the clip itself to classify (windows or shifts)."""
        return self.window_frames > 0 or bool(self.shift_frames)

    def window_starts(self, frames: int) -> list[int]:
        if self.window_frames <= 0 or frames <= self.window_frames:
            return [0]
        starts = list(range(0, frames - self.window_frames + 1, self.hop_frames))
        if starts[-1] != frames - self.window_frames:
            starts.append(frames - self.window_frames)
        return starts

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, n_bands, frames)`` -> ``(views * batch, n_bands, window)``, view-major."""
        frames = features.shape[-1]
        width = frames if self.window_frames <= 0 else min(self.window_frames, frames)
        views = []
        for shift in (0, *self.shift_frames):
            shifted = torch.roll(features, shifts=shift, dims=-1) if shift else features
            views += [shifted[..., start : start + width] for start in self.window_starts(frames)]
        return torch.cat(views, dim=0)

    def combine(self, logits: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-view logits ``(views * batch, n_classes)`` -> log of the mean probability
        ``(batch, n_classes)`` (one view: the logits themselves)."""
        n_views = logits.shape[0] // batch
        if n_views == 1:
            return logits
        log_p = torch.log_softmax(logits.float(), dim=-1).reshape(n_views, batch, -1)
        return torch.logsumexp(log_p, dim=0) - math.log(n_views)  # (batch, n_classes)

    def extra_repr(self) -> str:
        return f"window_frames={self.window_frames}, hop_frames={self.hop_frames}, shifts={self.shift_frames}"


class RandomTimeCrop(nn.Module):
    """Training only: one random length from ``min_frames`` to ``max_frames`` per batch, a random start per
    clip. ``(batch, n_bands, frames)`` -> ``(batch, n_bands, length)``; identity in eval mode."""

    def __init__(self, min_frames: int, max_frames: int) -> None:
        super().__init__()
        self.min_frames = max(min_frames, 1)
        self.max_frames = max(max_frames, self.min_frames)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        frames = features.shape[-1]
        if not self.training or frames <= self.min_frames:
            return features
        high = min(self.max_frames, frames)
        length = int(torch.randint(self.min_frames, high + 1, ()))
        starts = torch.randint(0, frames - length + 1, (features.shape[0],)).to(features.device)
        index = starts[:, None] + torch.arange(length, device=features.device)  # (batch, length)
        return features.gather(-1, index[:, None, :].expand(-1, features.shape[1], -1))

    def extra_repr(self) -> str:
        return f"min_frames={self.min_frames}, max_frames={self.max_frames}"


@dataclass
class Stages:
    """The model's stages between front end and backbone, as its settings ask."""

    normalizer: BandNormalizer
    inputs: InputChannels
    views: ViewAverage


def build_stages(model: ModelConfig, features: FeatureConfig, sample_rate: int) -> Stages:
    """Normaliser (dB or PCEN), input channels and evaluation views for ``model``'s settings."""
    rate = sample_rate / features.hop_length  # frames per second
    if model.pcen == "off":
        normalizer: BandNormalizer = BandNormalizer(features.n_mels, features.db_reference)
    else:
        normalizer = PCENNormalizer(features.n_mels, rate, features.db_reference, model.pcen == "learnable")
    window = round(model.crop_seconds * rate)
    step = round(SHIFT_STEP_S * rate)
    shifts = tuple(step * (k // 2 + 1) * (1 if k % 2 == 0 else -1) for k in range(model.tta_shifts))
    return Stages(
        normalizer=normalizer,
        inputs=InputChannels(model.deltas, model.freq_channel),
        views=ViewAverage(window, round(WINDOW_HOP_S * rate), shifts, round(MIN_CROP_S * rate)),
    )


def training_crop(views: nn.Module) -> RandomTimeCrop | None:
    """The random crop a model with these evaluation ``views`` trains on (None: whole clips)."""
    if not isinstance(views, ViewAverage) or views.window_frames <= 0:
        return None
    return RandomTimeCrop(views.min_crop_frames, views.window_frames)


def with_training_crop(spec_augment: nn.Module, classifier: nn.Module) -> nn.Module:
    """``spec_augment`` followed by the random crop ``classifier``'s views ask for (or unchanged)."""
    crop = training_crop(getattr(classifier, "views", None))
    return spec_augment if crop is None else nn.Sequential(spec_augment, crop)


def normaliser_statistics(
    config: RunConfig, features: np.ndarray, indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of what ``config``'s normaliser standardises (dB, or PCEN output) over the
    clips ``indices`` of ``features`` ``(clips, n_bands, frames)``: float32 arrays ``(n_bands,)``."""
    normalizer = build_stages(config.model, config.features, config.audio.sample_rate).normalizer
    if isinstance(normalizer, PCENNormalizer):
        return pcen_band_statistics(normalizer, features, indices)
    return band_statistics(features, indices, db_reference=config.features.db_reference)
