"""Batched spectrogram functions in torch: STFT power, filterbank, decibels.

Pure functions of their inputs; the nn.Module wrappers in :mod:`urbansound.features.frontend` hold the
window and filterbank as buffers.
"""

from __future__ import annotations

import numpy as np
import torch

from urbansound.config import FeatureConfig
from urbansound.features.filterbanks import (
    gammatone_bank_centers,
    gammatone_filterbank,
    mel_band_edges,
    mel_filterbank,
)

# Floor of the power before log10: 1e-10 is -100 dB, librosa's amin.
AMIN = 1e-10


def centred_stft(waveform: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """Complex STFT with librosa's defaults: centred frames, zero (``"constant"``) padding of ``n_fft // 2``
    on both sides. ``(batch, samples)`` -> ``(batch, n_fft // 2 + 1, 1 + samples // hop_length)``."""
    return torch.stft(
        waveform,
        n_fft=n_fft,
        hop_length=hop_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )


def power_spectrogram(
    waveform: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor | None = None
) -> torch.Tensor:
    """|STFT|^2 of ``(batch, samples)`` -> ``(batch, n_fft // 2 + 1, frames)``.

    Centred frames with zero padding (librosa's default), periodic Hann window;
    ``frames = 1 + samples // hop_length``.
    """
    if window is None:
        window = torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype)
    spec = centred_stft(waveform, n_fft, hop_length, window)
    power = spec.real.square()
    return power.addcmul_(spec.imag, spec.imag)  # re^2 + im^2 with one temporary, not three


def power_to_db(power: torch.Tensor, top_db: float | None = 80.0) -> torch.Tensor:
    """10 log10(power), floored at ``top_db`` below each clip's own maximum.

    The floor is per clip (over the last two axes), never per batch, so a clip's features do not depend
    on its batch mates.
    """
    db = 10.0 * torch.log10(power.clamp_min(AMIN))
    if top_db is not None:
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - top_db)
    return db


def filterbank_matrix(config: FeatureConfig, sample_rate: int) -> np.ndarray:
    """The ``(n_bands, n_fft // 2 + 1)`` matrix for ``config.kind``."""
    maker = mel_filterbank if config.kind == "mel_spec" else gammatone_filterbank
    return maker(sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max)


def band_frequencies(config: FeatureConfig, sample_rate: int) -> np.ndarray:
    """Centre frequency (Hz) of each of the ``config.n_mels`` bands of ``config.kind``, lowest first: what a
    plot's frequency axis puts beside band ``i``."""
    f_max = config.f_max if config.f_max is not None else sample_rate / 2
    if config.kind == "mel_spec":
        return mel_band_edges(config.n_mels, config.f_min, f_max)[1:-1]
    return gammatone_bank_centers(config.n_mels, config.f_min, f_max)


def log_filterbank_spectrogram(
    waveform: torch.Tensor,
    filterbank: torch.Tensor,
    n_fft: int,
    hop_length: int,
    top_db: float | None = 80.0,
    window: torch.Tensor | None = None,
) -> torch.Tensor:
    """Waveforms ``(batch, samples)`` -> dB band energies ``(batch, n_bands, frames)``."""
    power = power_spectrogram(waveform, n_fft, hop_length, window)  # (batch, bins, frames)
    bands = torch.matmul(filterbank, power)  # (batch, n_bands, frames)
    return power_to_db(bands, top_db)


def band_spectrogram(waveform: torch.Tensor, config: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """dB band energies of ``config.kind`` (log-mel or gammatone): ``(batch, samples)`` at ``sample_rate`` Hz
    -> ``(batch, n_bands, frames)``. The two named functions below are its librosa-style spellings."""
    filterbank = torch.from_numpy(filterbank_matrix(config, sample_rate)).to(waveform)
    return log_filterbank_spectrogram(waveform, filterbank, config.n_fft, config.hop_length, config.top_db)


def log_mel_spectrogram(
    waveform: torch.Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int = 512,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float | None = None,
    top_db: float | None = 80.0,
) -> torch.Tensor:
    """Log-mel spectrogram in dB: ``(batch, samples)`` -> ``(batch, n_mels, frames)``.

    >>> log_mel_spectrogram(torch.zeros(2, 44100), 44100).shape
    torch.Size([2, 64, 87])
    """
    config = FeatureConfig(
        kind="mel_spec",
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        f_min=f_min,
        f_max=f_max,
        top_db=top_db,
    )
    return band_spectrogram(waveform, config, sample_rate)


def gammatonegram(
    waveform: torch.Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int = 512,
    n_bands: int = 64,
    f_min: float = 0.0,
    f_max: float | None = None,
    top_db: float | None = 80.0,
) -> torch.Tensor:
    """FFT-based gammatonegram in dB: ``(batch, samples)`` -> ``(batch, n_bands, frames)``."""
    config = FeatureConfig(
        kind="gammatone",
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_bands,
        f_min=f_min,
        f_max=f_max,
        top_db=top_db,
    )
    return band_spectrogram(waveform, config, sample_rate)
