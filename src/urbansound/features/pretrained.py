"""The front ends of pretrained audio networks, reproduced exactly, so their weights see the input they were
trained on. Feature kinds (``FeatureConfig.kind``):

- ``panns_log_mel``: PANNs (Kong et al., 2020, through torchlibrosa): periodic Hann window of ``n_fft``,
  centred frames with reflect padding, power spectrum, librosa's Slaney mel bank over [f_min, f_max],
  ``power_to_db`` with ``ref=1.0, amin=1e-10, top_db=None``. (The network's ``bn0`` over the mel bins is
  part of the backbone.)
- ``efficientat_mel``: EfficientAT's ``AugmentMelSTFT`` at evaluation: pre-emphasis ``x[n] - 0.97 x[n-1]``,
  a symmetric Hann window of 25 ms centred in ``n_fft``, reflect-padded centred frames, power spectrum,
  Kaldi's mel bank (``torchaudio.compliance.kaldi.get_mel_banks``) over [f_min, f_max], ``ln(x + 1e-5)`` and
  its fixed normalisation ``(x + 4.5) / 5``.
- ``kaldi_fbank``: ``torchaudio.compliance.kaldi.fbank`` with the Audio Spectrogram Transformer's settings
  (frames of 25 ms every ``hop_length`` samples with snip_edges, no dither, DC offset removed per frame,
  pre-emphasis 0.97 within the frame, symmetric Hann window, zero padding to ``n_fft``, power spectrum, Kaldi
  mel bank, ``ln(max(x, float32 eps))``). torchaudio is not needed: every step up to the power spectrum is
  linear in the frame.

Each is computed as a ``conv1d`` whose fixed kernels are the frame operator (window, and for Kaldi the DC
removal and pre-emphasis) followed by the DFT, as torchlibrosa computes PANNs' STFT; one module therefore
serves training, inference and ONNX export (Pad, Conv, MatMul and Log only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from urbansound.config import FeatureConfig
from urbansound.errors import ConfigError
from urbansound.features.filterbanks import mel_filterbank

PANNS_KIND = "panns_log_mel"
EFFICIENTAT_KIND = "efficientat_mel"
KALDI_KIND = "kaldi_fbank"
PRETRAINED_KINDS = (PANNS_KIND, EFFICIENTAT_KIND, KALDI_KIND)

PANNS_AMIN = 1e-10  # power_to_db's floor in PANNs (ref 1.0, so no offset)
EFFICIENTAT_OFFSET = 1e-5  # added before the natural log in AugmentMelSTFT
EFFICIENTAT_SHIFT, EFFICIENTAT_SCALE = 4.5, 5.0  # its "fast normalization": (x + 4.5) / 5
PREEMPHASIS = 0.97  # EfficientAT's and Kaldi's pre-emphasis coefficient
KALDI_FLOOR = float(torch.finfo(torch.float32).eps)  # Kaldi's log floor (torchaudio's _get_epsilon)
FRAME_SECONDS = 0.025  # EfficientAT's window (800 samples at 32 kHz) and Kaldi's frame_length (25 ms)


def kaldi_mel(freq: np.ndarray | float) -> np.ndarray:
    """Kaldi's (HTK's) mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """``torchaudio.compliance.kaldi.get_mel_banks`` without VTLN warping, with the zero column for the
    Nyquist bin that both EfficientAT and ``kaldi.fbank`` append: ``(n_mels, n_fft // 2 + 1)`` float64.

    Triangles are linear in Kaldi's mel scale between evenly spaced mel edges; ``f_max <= 0`` counts down
    from Nyquist, as in Kaldi.
    """
    if f_max <= 0:
        f_max += sample_rate / 2
    mel_low, mel_high = kaldi_mel(f_min), kaldi_mel(f_max)
    delta = (mel_high - mel_low) / (n_mels + 1)
    band = np.arange(n_mels, dtype=np.float64)[:, None]
    left, centre, right = mel_low + band * delta, mel_low + (band + 1) * delta, mel_low + (band + 2) * delta
    mel = kaldi_mel(sample_rate / n_fft * np.arange(n_fft // 2, dtype=np.float64))[None, :]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))  # (n_mels, n_fft // 2)
    return np.pad(banks, ((0, 0), (0, 1)))


def dft_kernels(n_fft: int, frame_operator: torch.Tensor) -> torch.Tensor:
    """``(2 (n_fft // 2 + 1), frame_length)`` float64: the real then imaginary DFT rows of ``n_fft`` points
    applied after ``frame_operator`` ``(n_fft, frame_length)`` (window, zero padding, any linear step)."""
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    n = torch.arange(n_fft, dtype=torch.float64)
    angle = 2.0 * math.pi * bins[:, None] * n[None, :] / n_fft  # radians, (bins, n_fft)
    return torch.cat([torch.cos(angle) @ frame_operator, -torch.sin(angle) @ frame_operator])


def centred_window(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """A window shorter than ``n_fft`` zero-padded on both sides, as ``torch.stft`` places it."""
    left = (n_fft - window.numel()) // 2
    return F.pad(window, (left, n_fft - window.numel() - left))


def kaldi_frame_operator(frame_length: int, n_fft: int) -> torch.Tensor:
    """``(n_fft, frame_length)`` float64: DC removal, pre-emphasis (the first sample against itself, as
    Kaldi's replicate padding does), symmetric Hann window, zero padding to ``n_fft``; Kaldi's order."""
    eye = torch.eye(frame_length, dtype=torch.float64)
    dc = eye - 1.0 / frame_length
    emphasis = eye - PREEMPHASIS * torch.diag(torch.ones(frame_length - 1, dtype=torch.float64), -1)
    emphasis[0, 0] = 1.0 - PREEMPHASIS
    window = torch.hann_window(frame_length, periodic=False, dtype=torch.float64)
    operator = torch.diag(window) @ emphasis @ dc
    return F.pad(operator, (0, 0, 0, n_fft - frame_length))


@dataclass(frozen=True)
class _Design:
    """How one kind frames the waveform: kernels ``(2 bins, frame_length)``, filterbank ``(bands, bins)``."""

    kernels: torch.Tensor
    filterbank: np.ndarray
    padding: int  # samples of reflect padding on each side (centred frames); 0: Kaldi's snip_edges
    preemphasis: bool  # whole-signal pre-emphasis before framing (EfficientAT)


def _design(config: FeatureConfig, sample_rate: int) -> _Design:
    n_fft = config.n_fft
    f_max = config.f_max if config.f_max is not None else sample_rate / 2
    if config.kind == PANNS_KIND:
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)  # librosa's fftbins=True
        bank = mel_filterbank(sample_rate, n_fft, config.n_mels, config.f_min, f_max)
        return _Design(dft_kernels(n_fft, torch.diag(window)), bank, n_fft // 2, False)
    frame_length = round(FRAME_SECONDS * sample_rate)
    if frame_length > n_fft:
        raise ConfigError(f"{config.kind}: the 25 ms frame ({frame_length} samples) exceeds n_fft {n_fft}")
    bank = kaldi_mel_banks(config.n_mels, n_fft, sample_rate, config.f_min, f_max)
    if config.kind == EFFICIENTAT_KIND:
        window = centred_window(torch.hann_window(frame_length, periodic=False, dtype=torch.float64), n_fft)
        return _Design(dft_kernels(n_fft, torch.diag(window)), bank, n_fft // 2, True)
    if config.kind == KALDI_KIND:
        return _Design(dft_kernels(n_fft, kaldi_frame_operator(frame_length, n_fft)), bank, 0, False)
    raise ConfigError(f"{config.kind!r} is not a pretrained front end; choose one of {PRETRAINED_KINDS}")


class PretrainedFrontend(nn.Module):
    """Waveforms ``(batch, samples)`` at ``sample_rate`` -> features ``(batch, n_bands, frames)`` of a
    pretrained network's kind (see the module docstring). Kernels and filterbank are non-persistent
    buffers, rebuilt from the config, so they follow ``.to(device)`` and are not stored in model files.

    >>> PretrainedFrontend(FeatureConfig("panns_log_mel", 1024, 320, 64, 50.0, 14000.0, None), 32000)(
    ...     torch.zeros(1, 32000)).shape
    torch.Size([1, 64, 101])
    """

    def __init__(self, config: FeatureConfig, sample_rate: int) -> None:
        super().__init__()
        config.validate(sample_rate)
        self.config = config
        self.sample_rate = sample_rate
        design = _design(config, sample_rate)
        self.padding = design.padding
        self.preemphasis = design.preemphasis
        self.n_bins = design.kernels.shape[0] // 2
        self.frame_length = design.kernels.shape[1]
        # Built in float64 and rounded once, so the kernels are as exact as float32 allows.
        self.register_buffer("kernels", design.kernels[:, None, :].float(), persistent=False)
        self.register_buffer("filterbank", torch.from_numpy(design.filterbank).float(), persistent=False)
        emphasis = torch.tensor([[[-PREEMPHASIS, 1.0]]])  # conv1d weight: y[n] = x[n+1] - 0.97 x[n]
        self.register_buffer("emphasis", emphasis, persistent=False)

    def n_frames(self, n_samples: int) -> int:
        """Frames of a waveform of ``n_samples`` samples."""
        n = n_samples - 1 if self.preemphasis else n_samples
        if self.padding:
            return 1 + n // self.config.hop_length
        return 1 + (n - self.frame_length) // self.config.hop_length

    def power(self, waveform: torch.Tensor) -> torch.Tensor:
        """Power spectrum ``(batch, n_fft // 2 + 1, frames)`` of waveforms ``(batch, samples)``."""
        x = waveform.to(self.kernels.dtype).unsqueeze(1)  # (batch, 1, samples)
        if self.preemphasis:
            x = F.conv1d(x, self.emphasis)  # (batch, 1, samples - 1)
        if self.padding:
            x = F.pad(x, (self.padding, self.padding), mode="reflect")
        spectrum = F.conv1d(x, self.kernels, stride=self.config.hop_length)  # (batch, 2 bins, frames)
        real, imag = spectrum[:, : self.n_bins], spectrum[:, self.n_bins :]
        return real * real + imag * imag

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        bands = torch.matmul(self.filterbank, self.power(waveform))  # (batch, n_bands, frames)
        kind = self.config.kind
        if kind == PANNS_KIND:
            return 10.0 * torch.log10(bands.clamp_min(PANNS_AMIN))
        if kind == EFFICIENTAT_KIND:
            return (torch.log(bands + EFFICIENTAT_OFFSET) + EFFICIENTAT_SHIFT) / EFFICIENTAT_SCALE
        return torch.log(bands.clamp_min(KALDI_FLOOR))

    def extra_repr(self) -> str:
        return f"kind={self.config.kind!r}, sample_rate={self.sample_rate}"
