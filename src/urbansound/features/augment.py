"""Data augmentation: audio-level variants (computed once into the cache), SpecAugment, mixup.

Audio level (Salamon & Bello, 2017): time stretch, pitch shift, a circular time shift, a gain change and
white noise at a random SNR. :func:`make_variants` computes them in batched torch (phase vocoder and
resampling in :mod:`urbansound.features.stretch`), on the GPU when training on one. Stretch and pitch shift
still cost milliseconds per clip on a CPU, too much to redo every epoch there, so the feature cache stores a
fixed number of variants per clip and each epoch picks one stored version per clip (see
:class:`urbansound.training.loop.FeatureDataset`).

Spectrogram level: :class:`SpecAugment` (Park et al., 2019) masks random bands and frames of the normalised
features, active only in training mode, as in EfficientAT; :func:`mixup_batch` (Zhang et al., 2018) mixes
pairs of clips and their labels. Both draw from torch's global generator, whose state the training
checkpoint stores, so a resumed run draws the same masks and mixes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from urbansound.config import AugmentConfig
from urbansound.devices import to_device
from urbansound.features.stretch import fix_length, pitch_shift, time_stretch


def variant_rng(key: str, variant: int, seed: int = 0) -> np.random.Generator:
    """The generator of one clip's ``variant``: a function of (file key, variant, seed) only, so a variant
    is the same whichever run, fold or process computes it."""
    digest = hashlib.sha256(f"{key}|{variant}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass
class VariantDraw:
    """The random choices of one variant of one clip, drawn from :func:`variant_rng` in a fixed order."""

    rate: float | None  # time-stretch factor, None when stretching is off
    semitones: float | None  # pitch shift, None when off
    shift: int  # circular shift in samples
    gain: float  # linear gain factor
    snr_db: float | None  # white-noise SNR, None when noise is off
    noise_seed: int | None  # seed of the unit white noise (see unit_noise), None when noise is off


def draw_variant(config: AugmentConfig, rng: np.random.Generator, n_samples: int) -> VariantDraw:
    """Every random choice of one variant, in the order stretch, pitch, shift, gain, noise."""
    rate = float(rng.choice(config.time_stretch)) if config.time_stretch else None
    semitones = float(rng.choice(config.pitch_shift)) if config.pitch_shift else None
    limit = int(config.time_shift * n_samples)
    shift = int(rng.integers(-limit, limit + 1)) if config.time_shift > 0 else 0
    gain = float(10 ** (rng.uniform(-config.gain_db, config.gain_db) / 20)) if config.gain_db > 0 else 1.0
    snr_db, noise_seed = None, None
    if config.noise_snr_db is not None:
        snr_db = float(rng.uniform(*config.noise_snr_db))
        noise_seed = int(rng.integers(0, 2**63))
    return VariantDraw(rate, semitones, shift, gain, snr_db, noise_seed)


def unit_noise(seeds: Sequence[int], n_samples: int, device: torch.device) -> torch.Tensor:
    """``(len(seeds), n_samples)`` float32 unit white noise drawn on ``device`` itself, row ``r`` from a
    generator of that device seeded with ``seeds[r]``.

    Drawn where it is used: noise drawn on the host (numpy) and copied to a GPU was the slowest part of a
    variant there, 350 kB per 4 s clip. One kind of device always draws the same rows for the same seeds;
    the CPU's generator (Mersenne Twister) and CUDA's (Philox) draw different ones.
    """
    on_accelerator = device.type in ("cuda", "mps", "xpu")
    rows = []
    for seed in seeds:
        generator = torch.Generator(device=device if on_accelerator else "cpu").manual_seed(seed)
        rows.append(torch.randn(n_samples, generator=generator, device=device))
    return torch.stack(rows)


def _stretch_rows(clips: torch.Tensor, rates: list[float | None], variants: int) -> torch.Tensor:
    """Row ``r`` of the ``(clips * variants, samples)`` result is clip ``r // variants`` time-stretched by
    ``rates[r]`` (unchanged for None) and cut or padded back to the clip length. Each distinct (clip, rate)
    is stretched once and shared: a clip's 8 variants draw from 4 rates, so about half of them repeat one.
    """
    n = clips.shape[-1]
    device = clips.device
    out = clips.repeat_interleave(variants, dim=0)
    for rate in sorted({r for r in rates if r is not None}):
        rows = [i for i, r in enumerate(rates) if r == rate]
        sources = sorted({i // variants for i in rows})
        stretched = fix_length(time_stretch(clips[torch.tensor(sources, device=device)], rate), n)
        where = {clip: k for k, clip in enumerate(sources)}
        picks = torch.tensor([where[i // variants] for i in rows], device=device)
        out[torch.tensor(rows, device=device)] = stretched[picks]
    return out


def _apply_by_value(
    waveforms: torch.Tensor,
    values: list[float | None],
    transform: Callable[[torch.Tensor, float], torch.Tensor],
) -> torch.Tensor:
    """Apply ``transform(rows, value)`` to the rows sharing each value: one batched call per distinct
    factor (4 stretch rates, 8 semitone steps in the default recipe) instead of one call per row."""
    out = waveforms.clone()
    for value in sorted({v for v in values if v is not None}):
        rows = torch.tensor([i for i, v in enumerate(values) if v == value], device=waveforms.device)
        out[rows] = transform(waveforms[rows], value)
    return out


def make_variants(
    waveforms: torch.Tensor,
    keys: Sequence[str],
    config: AugmentConfig,
    sample_rate: int,
    seed: int = 0,
    numbers: Sequence[int] | None = None,
) -> torch.Tensor:
    """Randomly transformed copies of each clip (variants ``numbers``, default ``0 .. config.variants - 1``),
    computed in batches on the device of ``waveforms`` (a GPU when training on one).

    Salamon & Bello's (2017) audio augmentation: time stretch (phase vocoder, cut or padded back to the clip
    length), pitch shift, a circular time shift, a gain change and white noise at a random SNR, in that
    order. Variant ``v`` of clip ``keys[i]`` draws every choice from ``variant_rng(keys[i], v, seed)``, so it
    is the same whichever batch, run or process computes it on one kind of device (its white noise comes
    from that device's generator: :func:`unit_noise`).

    Args:
        waveforms: float32 ``(clips, samples)`` at ``sample_rate`` Hz, already fixed to clip length.
        keys: one cache key per clip (:func:`urbansound.features.cache.file_key`).

    Returns:
        float32 ``(clips, len(numbers), samples)`` on the device of ``waveforms``, clipped to [-1, 1].
    """
    n_clips, n = waveforms.shape
    numbers = list(range(config.variants)) if numbers is None else list(numbers)
    per_clip = len(numbers)
    draws = [draw_variant(config, variant_rng(k, v, seed), n) for k in keys for v in numbers]
    y = _stretch_rows(waveforms.float(), [d.rate for d in draws], per_clip)  # (clips * per_clip, n)
    y = _apply_by_value(y, [d.semitones for d in draws], lambda x, s: pitch_shift(x, sample_rate, s))
    device = waveforms.device
    if config.time_shift > 0:
        # Circular (np.roll): the padded tail of a short clip wraps to the front, so the event moves inside
        # the window. out[j] = y[(j - shift) % n].
        shifts = torch.tensor([d.shift for d in draws], device=device)
        y = y.gather(1, (torch.arange(n, device=device)[None, :] - shifts[:, None]) % n)
    y = y * torch.tensor([d.gain for d in draws], device=device, dtype=torch.float32)[:, None]
    if config.noise_snr_db is not None:
        power = y.square().mean(dim=1, keepdim=True)  # (rows, 1); silent rows get no noise
        snr = torch.tensor([d.snr_db for d in draws], device=device, dtype=torch.float32)[:, None]
        noise = unit_noise([d.noise_seed for d in draws], n, device)  # type: ignore[misc]
        y = y + noise * torch.sqrt(power / 10 ** (snr / 10))
    return y.clamp(-1.0, 1.0).reshape(n_clips, per_clip, n)


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
        return to_device(((positions >= starts) & (positions < starts + widths)).any(dim=1), device)

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
        return features + to_device(curve, features.device).to(features.dtype)[:, :, None]

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
    perm = to_device(torch.randperm(features.shape[0]), features.device)
    if domain == "power":
        peak = features.amax(dim=tuple(range(1, features.dim())), keepdim=True)  # (batch, 1, 1)
        mixed = mix_db_in_power(features - peak, features[perm] - peak[perm], lam)
        return mixed + lam * peak + (1 - lam) * peak[perm], labels, labels[perm], lam
    return lam * features + (1 - lam) * features[perm], labels, labels[perm], lam
