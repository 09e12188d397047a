"""Fixtures shared by the foundation's unit tests: small audio/feature settings and tiny audio files.

Everything here is small on purpose (8 kHz, half-second clips, 16 bands) so the unit tests stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from urbansound.config import AudioConfig, FeatureConfig
from urbansound.data.synth import CLASS_NAMES, synthesize_dataset, synthesize_event


def _sine(freq: float, duration: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A float64 sine of ``freq`` Hz, ``duration`` s long at ``sample_rate`` Hz."""
    t = np.arange(round(duration * sample_rate)) / sample_rate
    return amplitude * np.sin(2.0 * np.pi * freq * t)


@pytest.fixture
def small_audio() -> AudioConfig:
    """8 kHz, 0.5 s: 4,000 samples per clip."""
    return AudioConfig(sample_rate=8000, duration=0.5)


@pytest.fixture
def small_features() -> FeatureConfig:
    """A 256-point STFT with 16 mel bands: 32 frames for a 0.5 s clip at 8 kHz."""
    return FeatureConfig(n_fft=256, hop_length=128, n_mels=16)


@pytest.fixture
def write_sine(tmp_path: Path) -> Callable[..., Path]:
    """``write_sine(name, freq=1000, duration=0.5, sample_rate=16000, channels=1, subtype=..., format=...)``
    writes a sine file under ``tmp_path`` and returns its path."""

    def write(
        name: str,
        freq: float = 1000.0,
        duration: float = 0.5,
        sample_rate: int = 16000,
        channels: int = 1,
        subtype: str | None = None,
        format: str | None = None,  # noqa: A002 - soundfile's keyword
        amplitude: float = 0.5,
    ) -> Path:
        mono = _sine(freq, duration, sample_rate, amplitude)
        data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
        path = tmp_path / name
        sf.write(path, data, sample_rate, subtype=subtype, format=format)
        return path

    return write


@pytest.fixture
def event_clips(tmp_path: Path) -> list[Path]:
    """Six short WAV clips of different classes, rates and subtypes (the first 0.3 s long, the rest 0.6 s)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "clips"
    folder.mkdir()
    formats = [(8000, "PCM_16"), (16000, "PCM_24"), (22050, "FLOAT"), (11025, "PCM_U8"), (8000, "PCM_32")]
    paths = []
    for k in range(6):
        sample_rate, subtype = formats[k % len(formats)]
        duration = 0.3 if k == 0 else 0.6
        signal = 0.8 * synthesize_event(CLASS_NAMES[k], duration, sample_rate, rng)
        path = folder / f"clip{k}.wav"
        sf.write(path, signal, sample_rate, subtype=subtype)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-clip synthetic UrbanSound8K (3 folds, 22.05 kHz mono 4 s), made once for the whole session."""
    dest = tmp_path_factory.mktemp("tiny")
    return synthesize_dataset(
        dest, recordings_per_class=3, clips_per_recording=2, seed=1, n_folds=3, vary_formats=False
    )
