"""Filterbank matrices that map an STFT power spectrum to bands: mel (Slaney) and gammatone (ERB-spaced).

Written by hand because torchaudio (which has a mel filterbank) is not a dependency (it has no build for
the supported torch) and librosa would be a heavy runtime dependency (it brings numba and llvmlite) for
two small matrices; since the augmentation variants moved to torch, librosa is only the tests' reference.
No kept library provides the gammatone bank. Tests check the mel matrix against librosa and the gammatone
centre frequencies against the ERB formula.
"""

from __future__ import annotations

import numpy as np

# Slaney's Auditory Toolbox mel scale (librosa's default, htk=False): linear below 1 kHz, log above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0

# Glasberg & Moore (1990) equivalent rectangular bandwidth.
_EAR_Q = 9.26449
_MIN_BW = 24.7
# Glasberg & Moore (1990) ERB-rate scale, with their published constants: 21.4 log10(1 + 0.00437 f).
_ERB_RATE_SCALE = 21.4
_ERB_RATE_SLOPE = 0.00437  # 1/Hz
# A 4th-order gammatone's bandwidth is 1.019 ERB (Patterson et al. 1992).
_GAMMATONE_ORDER = 4
_BW_FACTOR = 1.019
# Gammatone banks conventionally start above the lowest audible band (Ellis's gammatonegram uses 50 Hz).
GAMMATONE_MIN_HZ = 50.0


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: Hz -> mel."""
    freq = np.asarray(freq, dtype=np.float64)
    linear = freq / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(freq, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(freq >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: mel -> Hz."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = _F_SP * mel
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


def fft_frequencies(sample_rate: int, n_fft: int) -> np.ndarray:
    """Centre frequency (Hz) of each of the ``n_fft // 2 + 1`` STFT bins."""
    return np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int = 64, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular Slaney-normalised mel filters, as ``librosa.filters.mel(htk=False, norm="slaney")``.

    Returns:
        float32 array ``(n_mels, n_fft // 2 + 1)``; multiply a power spectrum ``(bins, frames)`` by it.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    bins = fft_frequencies(sample_rate, n_fft)
    edges = mel_band_edges(n_mels, f_min, f_max)
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    # Slaney normalisation: each filter has unit area in Hz, so bands carry comparable energy.
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_band_edges(n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """The ``n_mels + 2`` corner frequencies (Hz) of the triangular mel filters, equally spaced in mel:
    filter ``i`` rises from edge ``i``, peaks at edge ``i + 1`` (its centre) and falls to edge ``i + 2``."""
    return mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))


def erb(freq: np.ndarray | float) -> np.ndarray:
    """Equivalent rectangular bandwidth (Hz) at ``freq`` Hz: 24.7 * (4.37 f / 1000 + 1)."""
    return np.asarray(freq, dtype=np.float64) / _EAR_Q + _MIN_BW


def hz_to_erb_rate(freq: np.ndarray | float) -> np.ndarray:
    """ERB-rate scale (Glasberg & Moore 1990): number of ERBs below ``freq`` Hz, 21.4 log10(1 + 0.00437 f)."""
    return _ERB_RATE_SCALE * np.log10(1.0 + _ERB_RATE_SLOPE * np.asarray(freq, dtype=np.float64))


def erb_rate_to_hz(rate: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_erb_rate`."""
    return (10.0 ** (np.asarray(rate, dtype=np.float64) / _ERB_RATE_SCALE) - 1.0) / _ERB_RATE_SLOPE


def gammatone_center_frequencies(n_bands: int, f_min: float, f_max: float) -> np.ndarray:
    """``n_bands`` centre frequencies (Hz), equally spaced on the ERB-rate scale, ascending."""
    return erb_rate_to_hz(np.linspace(hz_to_erb_rate(f_min), hz_to_erb_rate(f_max), n_bands))


def gammatone_bank_centers(n_bands: int, f_min: float, f_max: float) -> np.ndarray:
    """Centre frequencies (Hz) of :func:`gammatone_filterbank`'s bands: from ``GAMMATONE_MIN_HZ`` at the
    lowest."""
    return gammatone_center_frequencies(n_bands, max(f_min, GAMMATONE_MIN_HZ), f_max)


def gammatone_filterbank(
    sample_rate: int, n_fft: int, n_bands: int = 64, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Power responses of 4th-order gammatone filters on the STFT bins (an FFT-domain gammatonegram,
    as in Ellis's ``fft2gammatonemx``).

    The magnitude response of an order-n gammatone with bandwidth b at offset df from its centre is
    ``(1 + (df / b)^2)^(-n/2)``; the power weights are its square, each filter normalised to unit area
    over the bins so that bands carry comparable energy (as the Slaney mel filters do).

    Returns:
        float32 array ``(n_bands, n_fft // 2 + 1)``.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    centers = gammatone_bank_centers(n_bands, f_min, f_max)
    bins = fft_frequencies(sample_rate, n_fft)
    bandwidth = _BW_FACTOR * erb(centers)
    offset = (bins[None, :] - centers[:, None]) / bandwidth[:, None]
    weights = (1.0 + offset**2) ** (-_GAMMATONE_ORDER)  # squared magnitude: power domain
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)
