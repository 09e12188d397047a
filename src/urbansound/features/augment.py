"""Data augmentation: audio-level variants (computed once into the cache), SpecAugment, mixup.

Audio level (Salamon & Bello, 2017): time stretch, pitch shift, a circular time shift, a gain change and
white noise at a random SNR. Stretch and pitch shift cost tens of milliseconds per clip, too much to redo
every epoch on a CPU, so :func:`make_variant` is run a fixed number of times per clip by the feature cache
and each epoch picks one stored version per clip (see :class:`urbansound.training.loop.FeatureDataset`).

Spectrogram level: :class:`SpecAugment` (Park et al., 2019) masks random bands and frames of the normalised
features, active only in training mode, as in EfficientAT; :func:`mixup_batch` (Zhang et al., 2018) mixes
pairs of clips and their labels. Both draw from torch's global generator, whose state the training
checkpoint stores, so a resumed run draws the same masks and mixes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import nn

from urbansound.config import AugmentConfig
from urbansound.errors import ConfigError


def _librosa():  # type: ignore[no-untyped-def]
    """librosa's phase-vocoder stretch and pitch shift; optional, needed only to precompute variants."""
    try:
        import librosa
    except ImportError:
        raise ConfigError(
            "audio augmentation variants (--aug-variants) need librosa: pip install 'urbansound[augment]' "
            "(or train without them: --aug-variants 0)"
        ) from None
    return librosa


def variant_rng(key: str, variant: int, seed: int = 0) -> np.random.Generator:
    """The generator of one clip's ``variant``: a function of (file key, variant, seed) only, so a variant
    is the same whichever run, fold or process computes it."""
    digest = hashlib.sha256(f"{key}|{variant}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def make_variant(
    waveform: np.ndarray, sample_rate: int, config: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """One randomly transformed copy of a clip, the same length as the input.

    Args:
        waveform: float32 mono samples ``(samples,)`` at ``sample_rate`` Hz, already fixed to clip length.
        config: factors to draw from (stretch rates, semitones, max shift share, max gain dB, SNR range).
        rng: source of every random choice (see :func:`variant_rng`).

    Returns:
        float32 ``(samples,)``.
    """
    n = waveform.shape[-1]
    y = waveform.astype(np.float32, copy=True)
    if config.time_stretch or config.pitch_shift:
        librosa = _librosa()
        if config.time_stretch:
            rate = float(rng.choice(config.time_stretch))
            y = librosa.effects.time_stretch(y, rate=rate)
            y = y[:n] if y.shape[-1] >= n else np.pad(y, (0, n - y.shape[-1]))
        if config.pitch_shift:
            steps = float(rng.choice(config.pitch_shift))
            y = librosa.effects.pitch_shift(y, sr=sample_rate, n_steps=steps)
    if config.time_shift > 0:
        # Circular: the padded tail of a short clip wraps to the front, so the event moves inside the window.
        y = np.roll(y, int(rng.integers(-int(config.time_shift * n), int(config.time_shift * n) + 1)))
    if config.gain_db > 0:
        y = y * np.float32(10 ** (rng.uniform(-config.gain_db, config.gain_db) / 20))
    if config.noise_snr_db is not None:
        power = float(np.mean(np.square(y)))
        if power > 0:
            snr = rng.uniform(*config.noise_snr_db)
            y = y + rng.standard_normal(n).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (snr / 10)))
    return np.clip(y, -1.0, 1.0).astype(np.float32, copy=False)


class SpecAugment(nn.Module):
    """Random frequency and time masks on features ``(batch, n_bands, frames)``, in training mode only.

    Masked cells are set to 0, which after the band normaliser is each band's training mean. The module has
    no parameters or buffers, so it adds nothing to a model's state and old model files still load.
    """

    def __init__(self, freq_masks: int, freq_width: int, time_masks: int, time_width: int) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    @staticmethod
    def _mask(size: int, count: int, width: int, batch: int, device: torch.device) -> torch.Tensor:
        """``(batch, size)`` booleans, True inside any of ``count`` random spans up to ``width`` long."""
        width = min(width, size)
        widths = torch.randint(0, width + 1, (batch, count, 1))
        starts = (torch.rand(batch, count, 1) * (size - widths + 1)).long()
        positions = torch.arange(size)[None, None, :]
        return ((positions >= starts) & (positions < starts + widths)).any(dim=1).to(device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: (batch, n_bands, frames)
        if not self.training:
            return features
        batch, n_bands, frames = features.shape
        # Drawn on the CPU generator even for GPU tensors: its state is what the checkpoint saves.
        mask = torch.zeros(batch, n_bands, frames, dtype=torch.bool, device=features.device)
        if self.freq_masks and self.freq_width:
            mask |= self._mask(n_bands, self.freq_masks, self.freq_width, batch, features.device)[:, :, None]
        if self.time_masks and self.time_width:
            mask |= self._mask(frames, self.time_masks, self.time_width, batch, features.device)[:, None, :]
        return features.masked_fill(mask, 0.0)  # (batch, n_bands, frames)

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
            f"time_masks={self.time_masks}, time_width={self.time_width}"
        )


class FilterAugment(nn.Module):
    """A random smooth gain curve over the bands, added to dB features ``(batch, n_bands, frames)`` before
    the normaliser, in training mode only (Nam et al., 2022, "linear" type).

    Each clip draws between ``points[0]`` and ``points[1]`` control points spread over the band axis (the
    first and last band always among them), a gain uniform in +-``gain_db`` at each, and the curve between
    them is linear: the colouring a different microphone, wall or distance gives a recording. UrbanSound8K's
    recordings each come from one device and place, so a model trained on few of them otherwise learns
    their colouring. No parameters or buffers: model files are unchanged.
    """

    def __init__(self, gain_db: float, points: tuple[int, int] = (3, 6)) -> None:
        super().__init__()
        self.gain_db = gain_db
        self.points = (int(points[0]), int(points[1]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: (batch, n_bands, frames), dB
        if not self.training or self.gain_db <= 0:
            return features
        batch, n_bands, _ = features.shape
        # Drawn on the CPU generator (saved in the checkpoint), as SpecAugment's masks.
        n_points = int(torch.randint(self.points[0], self.points[1] + 1, (1,)))
        inner = torch.rand(batch, n_points - 2).sort(dim=1).values * (n_bands - 1)
        positions = torch.cat([torch.zeros(batch, 1), inner, torch.full((batch, 1), float(n_bands - 1))], 1)
        gains = (torch.rand(batch, n_points) * 2 - 1) * self.gain_db  # (batch, n_points) dB
        bands = torch.arange(n_bands, dtype=torch.float32).expand(batch, n_bands).contiguous()
        right = torch.searchsorted(positions, bands, right=True).clamp(1, n_points - 1)  # (batch, n_bands)
        x0, x1 = positions.gather(1, right - 1), positions.gather(1, right)
        g0, g1 = gains.gather(1, right - 1), gains.gather(1, right)
        weight = ((bands - x0) / (x1 - x0).clamp_min(1e-6)).clamp(0, 1)
        curve = g0 + weight * (g1 - g0)  # (batch, n_bands) dB
        return features + curve.to(features.device, features.dtype)[:, :, None]

    def extra_repr(self) -> str:
        return f"gain_db={self.gain_db}, points={self.points}"


def filter_augment_from_config(config: AugmentConfig) -> nn.Module:
    """The FilterAugment module ``config`` asks for, or an identity when it is off."""
    if config.filter_gain_db <= 0:
        return nn.Identity()
    return FilterAugment(config.filter_gain_db, (config.filter_points[0], config.filter_points[1]))


def spec_augment_from_config(config: AugmentConfig) -> nn.Module:
    """The SpecAugment module ``config`` asks for, or an identity when masking is off."""
    if not config.spec_augment:
        return nn.Identity()
    return SpecAugment(config.freq_masks, config.freq_mask_width, config.time_masks, config.time_mask_width)


def mix_db_in_power(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """dB of ``lam * power(a) + (1 - lam) * power(b)``: what playing two sounds together does to band
    energies (phase aside), as in Tokozume et al.'s between-class learning. Computed with ``logaddexp``, so
    -100 dB cells neither underflow nor overflow."""
    scale = math.log(10.0) / 10.0  # dB -> natural log of power
    lam = min(max(lam, 1e-12), 1.0 - 1e-12)
    return torch.logaddexp(a * scale + math.log(lam), b * scale + math.log(1.0 - lam)) / scale


def mixup_batch(
    features: torch.Tensor, labels: torch.Tensor, alpha: float, domain: str = "db"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix each clip with a random partner: ``lam * x + (1 - lam) * x[perm]``.

    ``domain="db"`` mixes the dB features (Zhang et al.'s mixup applied to spectrograms; without a per-clip
    dB reference it equals mixing the normalised features, the band normaliser being affine).
    ``domain="power"`` mixes band energies instead (:func:`mix_db_in_power`), of the two clips brought to the
    same peak level first so that ``lam`` is the share of each sound whatever their recording levels; the
    mix then gets the ``lam``-weighted peak level.

    Returns:
        ``(mixed features, labels, partner labels, lam)``; the loss is
        ``lam * loss(labels) + (1 - lam) * loss(partner labels)``.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(features.shape[0]).to(features.device)
    if domain == "power":
        peak = features.amax(dim=tuple(range(1, features.dim())), keepdim=True)  # (batch, 1, 1)
        mixed = mix_db_in_power(features - peak, features[perm] - peak[perm], lam)
        return mixed + lam * peak + (1 - lam) * peak[perm], labels, labels[perm], lam
    return lam * features + (1 - lam) * features[perm], labels, labels[perm], lam
