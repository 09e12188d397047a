"""Audio loading: decode (soundfile), mix to mono, resample (soxr), cut or right-pad to a fixed length.

Each step is a pure function on numpy arrays so the same code serves training, caching and inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from urbansound.errors import DataError


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode any format libsndfile reads (WAV incl. WAVE_FORMAT_EXTENSIBLE, FLAC, OGG, ...).

    Returns:
        ``(samples, sample_rate)`` with samples float32 of shape ``(frames, channels)``, in [-1, 1].

    Raises:
        DataError: naming the file and the reason when it cannot be decoded or holds no samples.
    """
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: cannot decode audio ({error})") from None
    if samples.shape[0] == 0:
        raise DataError(f"{path}: the file holds no audio samples")
    if not np.isfinite(samples).all():
        raise DataError(f"{path}: the audio holds NaN or infinite samples")
    return samples, int(sample_rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: ``(frames, channels)`` -> ``(frames,)``; 1-D input is returned unchanged."""
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:  # most clips are mono: a view, not a mean over one channel
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono float32 waveform with soxr (high quality, fast); no-op when rates match."""
    if orig_sr == target_sr:
        return waveform.astype(np.float32, copy=False)
    return soxr.resample(waveform, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def fix_length(waveform: np.ndarray, n_samples: int) -> np.ndarray:
    """Cut to ``n_samples`` or right-pad with zeros, as the seed did."""
    if waveform.shape[-1] >= n_samples:
        return waveform[..., :n_samples]
    pad = [(0, 0)] * (waveform.ndim - 1) + [(0, n_samples - waveform.shape[-1])]
    return np.pad(waveform, pad)


def load_audio(path: str | Path, sample_rate: int, n_samples: int | None = None) -> np.ndarray:
    """Decode, mix to mono, resample to ``sample_rate`` Hz and (if given) fix to ``n_samples``.

    Returns:
        float32 array of shape ``(n_samples,)`` (or the resampled length when ``n_samples`` is None).
    """
    samples, orig_sr = decode(path)
    waveform = resample(to_mono(samples), orig_sr, sample_rate)
    return fix_length(waveform, n_samples) if n_samples is not None else waveform


def load_audio_or_reason(
    path: str | Path, sample_rate: int, n_samples: int | None = None
) -> tuple[np.ndarray | None, str]:
    """:func:`load_audio`, with a failure returned as its reason (naming the file) instead of raised.

    For DataLoader workers decoding many files, where one unreadable file must not stop the others.

    Returns:
        ``(waveform, "")`` or ``(None, reason)``.
    """
    path = Path(path)
    if not path.is_file():
        return None, f"{path}: no such file"
    try:
        return load_audio(path, sample_rate, n_samples), ""
    except DataError as error:
        return None, str(error)
    except Exception as error:  # noqa: BLE001 - any decoder or resampler failure is reported per file
        return None, f"{path}: cannot load audio ({type(error).__name__}: {error})"
