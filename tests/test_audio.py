"""Tests of audio loading (urbansound.data.audio): every format of the real dataset, resampling, mixing,
fixing the length, and the errors for files that cannot be used."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from urbansound.data.audio import fix_length, load_audio, to_mono
from urbansound.errors import DataError

SineWriter = Callable[..., Path]  # the ``write_sine`` fixture of conftest.py


def sine(freq: float, duration: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(duration * sample_rate)) / sample_rate
    return amplitude * np.sin(2.0 * np.pi * freq * t)


def peak_frequency(waveform: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the largest FFT magnitude, Hann-windowed."""
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.argmax(spectrum) * sample_rate / len(waveform))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def wav_format_tag(path: Path) -> int:
    data = path.read_bytes()
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk == b"fmt ":
            return struct.unpack("<H", data[offset + 8 : offset + 10])[0]
        offset += 8 + size + (size & 1)
    raise AssertionError("no fmt chunk")


def assert_is_sine(
    waveform: np.ndarray, sample_rate: int, freq: float = 1000.0, amplitude: float = 0.5
) -> None:
    resolution = sample_rate / len(waveform)
    assert abs(peak_frequency(waveform, sample_rate) - freq) <= resolution
    # Level preserved (edges of a resampled file may ring a little: measure the middle).
    middle = waveform[len(waveform) // 8 : -len(waveform) // 8]
    assert rms(middle) == pytest.approx(amplitude / np.sqrt(2), rel=0.03)


@pytest.mark.parametrize(
    ("container", "subtype", "tag"),
    [
        ("WAV", "PCM_U8", 1),
        ("WAV", "PCM_16", 1),
        ("WAV", "PCM_24", 1),
        ("WAV", "PCM_32", 1),
        ("WAV", "FLOAT", 3),
        ("WAVEX", "PCM_24", 0xFFFE),
        ("WAVEX", "PCM_16", 0xFFFE),
    ],
)
def test_every_wav_subtype_loads_as_float32_with_content(
    write_sine: SineWriter, container: str, subtype: str, tag: int
) -> None:
    path = write_sine("tone.wav", sample_rate=44100, subtype=subtype, format=container)
    assert wav_format_tag(path) == tag  # the file really has the header under test
    waveform = load_audio(path, 22050, 11025)
    assert waveform.dtype == np.float32 and waveform.shape == (11025,)
    assert_is_sine(waveform, 22050)


@pytest.mark.parametrize("orig_sr", [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 192000])
@pytest.mark.parametrize("target_sr", [16000, 44100])
def test_resampling_keeps_the_tone_at_1khz(write_sine: SineWriter, orig_sr: int, target_sr: int) -> None:
    path = write_sine("tone.wav", sample_rate=orig_sr, subtype="PCM_16")
    waveform = load_audio(path, target_sr, target_sr // 2)
    assert waveform.dtype == np.float32 and waveform.shape == (target_sr // 2,)
    assert_is_sine(waveform, target_sr)


def test_resampled_length_without_fixing(write_sine: SineWriter) -> None:
    path = write_sine("tone.wav", duration=0.5, sample_rate=48000)
    waveform = load_audio(path, 16000)
    assert waveform.dtype == np.float32 and waveform.shape == (8000,)


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    tone = sine(1000.0, 0.5, 16000)
    opposite, same = tmp_path / "opposite.wav", tmp_path / "same.wav"
    sf.write(opposite, np.stack([tone, -tone], axis=1), 16000, subtype="FLOAT")
    sf.write(same, np.stack([tone, 0.5 * tone], axis=1), 16000, subtype="FLOAT")
    assert np.abs(load_audio(opposite, 16000)).max() < 1e-6
    np.testing.assert_allclose(load_audio(same, 16000), 0.75 * tone, atol=1e-6)
    # Opposite-phase channels cancel after resampling and 16-bit quantisation too.
    sf.write(opposite, np.stack([tone, -tone], axis=1), 48000, subtype="PCM_16")
    assert np.abs(load_audio(opposite, 22050)).max() < 1e-3


def test_stereo_wavex_24_bit_at_96khz(write_sine: SineWriter) -> None:
    path = write_sine("tone.wav", sample_rate=96000, channels=2, subtype="PCM_24", format="WAVEX")
    assert sf.info(str(path)).channels == 2
    waveform = load_audio(path, 44100, 22050)
    assert waveform.shape == (22050,)
    assert_is_sine(waveform, 44100)


def test_short_clip_is_right_padded_with_zeros(write_sine: SineWriter) -> None:
    path = write_sine("short.wav", duration=0.055, sample_rate=44100, subtype="PCM_16")
    assert sf.info(str(path)).frames == round(0.055 * 44100)
    waveform = load_audio(path, 22050, 4 * 22050)
    assert waveform.dtype == np.float32 and waveform.shape == (4 * 22050,)
    content = round(0.055 * 22050)  # 1,213 samples of tone
    assert np.all(waveform[content:] == 0.0)
    assert rms(waveform[100 : content - 100]) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_cutting_keeps_the_start(tmp_path: Path) -> None:
    # 0.3 s at 1 kHz, then 0.7 s at 3 kHz: the first 0.25 s must hold only the 1 kHz part.
    audio = np.concatenate([sine(1000.0, 0.3, 48000), sine(3000.0, 0.7, 48000)])
    path = tmp_path / "two-tones.wav"
    sf.write(path, audio, 48000, subtype="PCM_16")
    waveform = load_audio(path, 16000, 4000)
    assert waveform.shape == (4000,)
    assert peak_frequency(waveform, 16000) == pytest.approx(1000.0, abs=4.0)
    # Without resampling, the cut is exactly the first samples.
    noise = np.random.default_rng(0).uniform(-0.9, 0.9, 1000).astype(np.float32)
    sf.write(tmp_path / "noise.wav", noise, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "noise.wav", 8000, 600), noise[:600])


def test_fix_length_and_to_mono_helpers() -> None:
    x = np.arange(1.0, 6.0, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(x, 3), [1, 2, 3])
    np.testing.assert_array_equal(fix_length(x, 7), [1, 2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(to_mono(np.array([[1.0, 3.0], [2.0, -2.0]], dtype=np.float32)), [2.0, 0.0])
    assert to_mono(x) is x


@pytest.mark.parametrize(
    ("suffix", "container", "tolerance"), [(".flac", "FLAC", 0.03), (".ogg", "OGG", 0.1)]
)
def test_flac_and_ogg_load(write_sine: SineWriter, suffix: str, container: str, tolerance: float) -> None:
    path = write_sine(f"tone{suffix}", sample_rate=32000, format=container)
    waveform = load_audio(path, 16000, 8000)
    assert waveform.dtype == np.float32 and waveform.shape == (8000,)
    assert abs(peak_frequency(waveform, 16000) - 1000.0) <= 2.0
    assert rms(waveform[1000:-1000]) == pytest.approx(0.5 / np.sqrt(2), rel=tolerance)


def _corrupt_fmt_chunk(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:12] + b"\x00" * 40 + data[52:])


def _truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:30])


def _empty(path: Path) -> None:
    sf.write(path, np.zeros((0, 1)), 16000, subtype="PCM_16")


def _text(path: Path) -> None:
    path.write_text("slice_file_name,fsID\nthis is not audio\n")


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _not_finite(path: Path) -> None:
    sf.write(path, np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt_fmt_chunk, "cannot decode"),
        (_truncate_header, "cannot decode"),
        (_empty, "no audio samples"),
        (_text, "cannot decode"),
        (_zero_bytes, "cannot decode"),
        (_not_finite, "NaN"),
    ],
)
def test_unusable_file_raises_data_error_naming_it(write_sine: SineWriter, damage, reason: str) -> None:
    path = write_sine("bad.wav", subtype="PCM_16")
    damage(path)
    with pytest.raises(DataError) as error:
        load_audio(path, 16000, 8000)
    assert str(error.value).startswith(f"{path}: ")
    assert reason in str(error.value)


def test_missing_file_raises_data_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "fold1" / "absent.wav"
    with pytest.raises(DataError) as error:
        load_audio(path, 16000)
    assert str(path) in str(error.value)
