"""Audio loading: decode (soundfile), mix to mono, resample (soxr), cut or right-pad to a fixed length.

Each step is a pure function on numpy arrays so the same code serves training, caching and inference.
:func:`stream_audio` does the same decode, mix and resample block by block, for recordings of any length in
bounded memory; its blocks concatenate to what :func:`load_audio` returns for the whole file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from urbansound.errors import DataError

# Frames read per block when streaming: 32 Ki frames is 0.74 s at 44.1 kHz (256 KiB as float32 stereo), a
# fraction of a model window, while per-block costs (a libsndfile read, a resampler call) stay negligible.
STREAM_BLOCK_FRAMES = 2**15
# Resampled samples held back until the next block. soxr does not promise that its streaming flush ends at
# exactly the whole-signal length (here it always has); holding back a few samples keeps the end trimmable.
_HOLD_BACK = 64
# What libsndfile and soundfile raise on unreadable or damaged audio.
_DECODE_ERRORS = (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError, EOFError)


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
    """Cut to ``n_samples`` or right-pad with zeros, as the baseline recipe always has."""
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


def resampled_length(frames: int, orig_sr: int, target_sr: int) -> int:
    """Samples soxr returns for ``frames`` samples resampled from ``orig_sr`` to ``target_sr`` Hz.

    ``frames * target_sr / orig_sr`` rounded half up (soxr's ``+ 0.5`` then truncation), in exact integer
    arithmetic: no float rounding at any length.
    """
    if orig_sr == target_sr:
        return frames
    return (2 * frames * target_sr + orig_sr) // (2 * orig_sr)


def stream_audio(
    source: str | Path | BinaryIO,
    sample_rate: int,
    name: str | None = None,
    block_frames: int = STREAM_BLOCK_FRAMES,
) -> Iterator[np.ndarray]:
    """Decode, mix to mono and resample to ``sample_rate`` Hz block by block, in bounded memory.

    Args:
        source: an audio file, or a seekable binary file object holding one (read from its start).
        sample_rate: Hz of the yielded samples.
        name: what error messages call the source (default: the path).
        block_frames: frames read per block (samples per channel at the file's own rate).

    Yields:
        float32 blocks ``(samples,)`` whose concatenation has :func:`load_audio`'s length exactly
        (``resampled_length`` of the frames decoded) and its samples up to float rounding: soxr's streaming
        resampler runs the same filter as its whole-signal call. A block holds about ``block_frames`` times
        ``sample_rate / rate`` samples (soxr releases its output in bursts of up to about twice that).

    Raises:
        DataError: the file cannot be decoded, holds no samples, or holds NaN or infinite samples (raised
            when the block holding them is reached).
    """
    label = name or str(source)
    try:
        if isinstance(source, (str, Path)):
            handle = soundfile.SoundFile(str(source))
        else:
            source.seek(0)
            handle = soundfile.SoundFile(source)
    except _DECODE_ERRORS as error:
        reason = getattr(error, "error_string", None) or str(error)
        raise DataError(f"{label}: cannot decode audio ({reason})") from None
    with handle:
        yield from _resampled_blocks(handle, sample_rate, label, block_frames)


def _resampled_blocks(
    handle: soundfile.SoundFile, sample_rate: int, label: str, block_frames: int
) -> Iterator[np.ndarray]:
    """:func:`stream_audio`'s loop over an open file: read, check, mix, resample, hold back, yield."""
    orig_sr = int(handle.samplerate)
    resampler = None
    if orig_sr != sample_rate:
        resampler = soxr.ResampleStream(orig_sr, sample_rate, 1, dtype="float32", quality="HQ")
    frames_read = 0
    yielded = 0
    held = np.zeros(0, dtype=np.float32)
    while True:
        try:
            block = handle.read(block_frames, dtype="float32", always_2d=True)
        except _DECODE_ERRORS as error:
            raise DataError(f"{label}: cannot decode audio ({error})") from None
        if not np.isfinite(block).all():
            raise DataError(f"{label}: the audio holds NaN or infinite samples")
        frames_read += block.shape[0]
        last = block.shape[0] < block_frames
        mono = np.ascontiguousarray(to_mono(block))
        if resampler is not None:
            # (samples, 1): a C-contiguous 2-D array, the layout soxr's chunk call takes without a copy.
            mono = resampler.resample_chunk(mono.reshape(-1, 1), last=last)[:, 0]
        held = np.concatenate([held, mono])
        if held.shape[0] > _HOLD_BACK and not last:
            yield held[:-_HOLD_BACK]
            yielded += held.shape[0] - _HOLD_BACK
            held = held[-_HOLD_BACK:].copy()
        if last:
            break
    if frames_read == 0:
        raise DataError(f"{label}: the file holds no audio samples")
    # Exactly the whole-file length: trim a flush that overshot, pad one that fell short (a few samples).
    remaining = resampled_length(frames_read, orig_sr, sample_rate) - yielded
    if remaining > 0:
        yield fix_length(held, remaining)


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
