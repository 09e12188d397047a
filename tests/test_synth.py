"""Tests of the synthetic UrbanSound8K generator (urbansound.data.synth)."""

from __future__ import annotations

import csv
import re
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from urbansound.data.synth import CLASS_NAMES, SAMPLE_RATES, synthesize_dataset, synthesize_event
from urbansound.errors import ConfigError

COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
NAME_PATTERN = re.compile(r"^(\d+)-(\d)-(\d+)-(\d+)\.wav$")


def _read_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata" / "UrbanSound8K.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _clip_path(root: Path, row: dict[str, str]) -> Path:
    return root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]


def _wav_format_tag(path: Path) -> int:
    """The format tag of a RIFF/WAVE file's 'fmt ' chunk (1 = PCM, 3 = float, 0xFFFE = extensible)."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk_id == b"fmt ":
            return struct.unpack("<H", data[offset + 8 : offset + 10])[0]
        offset += 8 + size + (size & 1)
    raise AssertionError(f"no fmt chunk in {path}")


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default-sized dataset (10 classes x 10 recordings x 3 clips), built once for the module."""
    return synthesize_dataset(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def default_rows(default_root: Path) -> list[dict[str, str]]:
    return _read_rows(default_root)


def test_layout_and_columns(default_root: Path, default_rows: list[dict[str, str]]) -> None:
    assert default_root.name == "UrbanSound8K"
    header = (default_root / "metadata" / "UrbanSound8K.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",") == COLUMNS
    assert len(default_rows) == 10 * 10 * 3
    assert sorted(p.name for p in (default_root / "audio").iterdir()) == sorted(
        f"fold{k}" for k in range(1, 11)
    )
    written = {p.relative_to(default_root / "audio") for p in (default_root / "audio").rglob("*.wav")}
    listed = {Path(f"fold{row['fold']}") / row["slice_file_name"] for row in default_rows}
    assert written == listed  # every listed clip exists and no clip is unlisted
    for row in default_rows:
        match = NAME_PATTERN.match(row["slice_file_name"])
        assert match, row["slice_file_name"]
        assert match.group(1) == row["fsID"] and match.group(2) == row["classID"]
        assert row["class"] == CLASS_NAMES[int(row["classID"])]
        assert row["salience"] in {"1", "2"}
        assert 1 <= int(row["fold"]) <= 10
        assert 0.0 <= float(row["start"]) < float(row["end"])


def test_fsids_never_span_two_folds(default_rows: list[dict[str, str]]) -> None:
    folds, classes, counts = defaultdict(set), defaultdict(set), defaultdict(int)
    for row in default_rows:
        folds[row["fsID"]].add(row["fold"])
        classes[row["fsID"]].add(row["classID"])
        counts[row["fsID"]] += 1
    assert len(folds) == 100  # one fsID per recording, unique across the dataset
    assert all(len(f) == 1 for f in folds.values())
    assert all(len(c) == 1 for c in classes.values())
    assert set(counts.values()) == {3}


def test_every_class_in_every_fold(default_rows: list[dict[str, str]]) -> None:
    present = {(row["fold"], row["class"]) for row in default_rows}
    assert present == {(str(fold), name) for fold in range(1, 11) for name in CLASS_NAMES}


def test_slices_of_a_recording_overlap(default_root: Path, default_rows: list[dict[str, str]]) -> None:
    by_recording = defaultdict(list)
    for row in default_rows:
        by_recording[row["fsID"]].append(row)
    for rows in by_recording.values():
        rows.sort(key=lambda row: float(row["start"]))
        for previous, following in zip(rows[:-1], rows[1:], strict=True):
            assert float(previous["start"]) < float(following["start"]) < float(previous["end"])
    for row in default_rows[::7]:  # the metadata's duration is the file's duration
        info = sf.info(str(_clip_path(default_root, row)))
        assert info.duration == pytest.approx(float(row["end"]) - float(row["start"]), abs=2e-6)


def test_overlapping_slices_share_audio(tmp_path: Path) -> None:
    root = synthesize_dataset(
        tmp_path, recordings_per_class=1, clips_per_recording=2, n_folds=1, vary_formats=False
    )
    rows = [row for row in _read_rows(root) if row["class"] == "siren"]
    rows.sort(key=lambda row: float(row["start"]))
    first, _ = sf.read(str(_clip_path(root, rows[0])), dtype="int16")
    second, _ = sf.read(str(_clip_path(root, rows[1])), dtype="int16")
    hop = round((float(rows[1]["start"]) - float(rows[0]["start"])) * 22050)
    np.testing.assert_array_equal(first[hop:], second[: len(first) - hop])


def test_fixed_format_fast_path(tmp_path: Path) -> None:
    root = synthesize_dataset(
        tmp_path, recordings_per_class=2, clips_per_recording=1, n_folds=2, vary_formats=False
    )
    rows = _read_rows(root)
    assert len(rows) == 20
    # Two recordings per class over two folds: the round-robin puts each class in both folds.
    assert {(row["fold"], row["class"]) for row in rows} == {(f, c) for f in "12" for c in CLASS_NAMES}
    for row in rows:
        path = _clip_path(root, row)
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (22050, 1, "PCM_16", 88200)
        assert _wav_format_tag(path) == 1
        audio, _ = sf.read(str(path), dtype="float32")
        # Background noise everywhere: even the quietest 100 ms of a gun-shot clip is not digital silence.
        windows = audio[: len(audio) // 2205 * 2205].reshape(-1, 2205)
        assert np.sqrt((windows**2).mean(axis=1)).min() > 1e-4


def test_determinism(tmp_path: Path) -> None:
    kwargs = {"recordings_per_class": 1, "clips_per_recording": 2, "n_folds": 2, "seed": 3}
    first = synthesize_dataset(tmp_path / "a", **kwargs)
    second = synthesize_dataset(tmp_path / "b", **kwargs)
    csv_bytes = (first / "metadata" / "UrbanSound8K.csv").read_bytes()
    assert csv_bytes == (second / "metadata" / "UrbanSound8K.csv").read_bytes()
    rows = _read_rows(first)
    subtypes = set()
    for row in rows:
        assert _clip_path(first, row).read_bytes() == _clip_path(second, row).read_bytes()
        subtypes.add(sf.info(str(_clip_path(first, row))).subtype)
    # Float WAVs carry a PEAK chunk that libsndfile timestamps: make sure that case was compared too.
    assert "FLOAT" in subtypes
    other = synthesize_dataset(tmp_path / "c", **{**kwargs, "seed": 4})
    assert (other / "metadata" / "UrbanSound8K.csv").read_bytes() != csv_bytes


def test_format_variety(default_root: Path, default_rows: list[dict[str, str]]) -> None:
    rates, channels, subtypes, durations, extensible = set(), set(), set(), [], 0
    for row in default_rows:
        path = _clip_path(default_root, row)
        info = sf.info(str(path))
        rates.add(info.samplerate)
        channels.add(info.channels)
        subtypes.add(info.subtype)
        durations.append(info.duration)
        if info.format == "WAVEX":
            assert _wav_format_tag(path) == 0xFFFE
            assert info.subtype == "PCM_24"
            extensible += 1
    assert rates == set(SAMPLE_RATES)
    assert channels == {1, 2}
    assert {"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"} <= subtypes
    assert extensible > 0
    assert min(durations) < 0.1
    assert min(durations) >= 0.05
    assert 0.03 < np.mean(np.array(durations) < 3.99) < 0.4  # some, not most, clips are short
    assert max(durations) == pytest.approx(4.0, abs=1e-3)


def _spectral_centroid(signal: np.ndarray, sample_rate: int) -> float:
    power = np.abs(np.fft.rfft(signal)) ** 2
    return float((power * np.fft.rfftfreq(len(signal), 1.0 / sample_rate)).sum() / power.sum())


def _dominant_frequencies(signal: np.ndarray, sample_rate: int, frame: int = 512) -> np.ndarray:
    frames = signal[: len(signal) // frame * frame].reshape(-1, frame) * np.hanning(frame)
    return np.abs(np.fft.rfft(frames, axis=1)).argmax(axis=1) * sample_rate / frame


@pytest.mark.parametrize("seed", range(4))
def test_class_signals_differ_as_expected(seed: int) -> None:
    sr = 22050

    def event(name: str, duration: float = 2.0) -> np.ndarray:
        signal = synthesize_event(name, duration, sr, np.random.default_rng(seed))
        assert signal.dtype == np.float32 and signal.shape == (round(duration * sr),)
        assert np.abs(signal).max() <= 1.0 and np.isfinite(signal).all()
        return signal

    # A low rumble sits far below a high whine.
    engine, drill = event("engine_idling"), event("drilling")
    assert _spectral_centroid(engine, sr) < 300.0 < 700.0 < _spectral_centroid(drill, sr)
    assert np.median(_dominant_frequencies(engine, sr)) < 120.0
    # A gun shot is an impulse: nearly all of its energy is in the first tenth of the clip.
    shot = event("gun_shot").astype(np.float64)
    assert (shot[: len(shot) // 10] ** 2).sum() > 0.8 * (shot**2).sum()
    # A steady sound spreads its energy evenly instead.
    hum = event("air_conditioner").astype(np.float64)
    assert (hum[: len(hum) // 10] ** 2).sum() < 0.2 * (hum**2).sum()
    # A siren's pitch moves; its dominant frequency spans hundreds of Hz within 4 s.
    dominant = _dominant_frequencies(event("siren", 4.0), sr)
    assert dominant.max() - dominant.min() > 150.0


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        synthesize_event("lawn_mower", 1.0, 16000, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        synthesize_event("siren", 0.0, 16000, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        synthesize_dataset(tmp_path, recordings_per_class=0)
    (tmp_path / "UrbanSound8K").mkdir()
    (tmp_path / "UrbanSound8K" / "stale.txt").write_text("left over")
    with pytest.raises(ConfigError):  # never mixes old clips with new metadata
        synthesize_dataset(tmp_path, recordings_per_class=1)
