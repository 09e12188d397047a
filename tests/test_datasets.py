"""ESC-50 and folder-per-class layouts through the same data interface, on small synthetic layouts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from urbansound.config import AudioConfig, FeatureConfig, RunConfig, SplitConfig, TrainingConfig
from urbansound.data.datasets import detect_layout, load_dataset, recording_id
from urbansound.data.synth import CLASS_NAMES, synthesize_event
from urbansound.errors import DataError
from urbansound.training.run import train

SAMPLE_RATE = 16_000


def _write_clip(path: Path, class_index: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.8 * synthesize_event(CLASS_NAMES[class_index], 1.0, SAMPLE_RATE, rng), SAMPLE_RATE)


@pytest.fixture(scope="module")
def esc50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ESC-50's layout: 3 classes (targets 0, 4, 7 as in a subset), 5 folds, 2 takes per source file."""
    root = tmp_path_factory.mktemp("esc") / "ESC-50"
    rng = np.random.default_rng(0)
    rows = []
    for target, (category, synth_class) in {0: ("dog", 3), 4: ("siren", 8), 7: ("drilling", 4)}.items():
        for fold in range(1, 6):
            source = 1000 * target + fold
            for take in "AB":
                name = f"{fold}-{source}-{take}-{target}.wav"
                _write_clip(root / "audio" / name, synth_class, rng)
                rows.append([name, fold, target, category, False, source, take])
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder per class, 6 recordings x 2 takes per class (recording ID before the '-')."""
    root = tmp_path_factory.mktemp("folders") / "sounds"
    rng = np.random.default_rng(1)
    for name, synth_class in (("bird", 0), ("car", 1), ("wind", 5)):
        for recording in range(6):
            for take in range(2):
                _write_clip(root / name / f"{name}{recording}-{take}.wav", synth_class, rng)
    (root / "README.txt").write_text("not a class folder")
    (root / "car" / "notes.txt").write_text("not audio")
    return root


def test_esc50_is_detected_and_classes_come_from_the_data(esc50: Path) -> None:
    annotations = esc50 / "meta" / "esc50.csv"
    assert detect_layout(annotations, esc50 / "audio") == "esc50"
    index = load_dataset(annotations, esc50 / "audio")
    assert index.class_names == ["dog", "siren", "drilling"]  # in target order, renumbered densely
    assert index.folds == [1, 2, 3, 4, 5]
    assert len(index.records) == 30
    record = index.records[0]
    assert record.fs_id == "1" and record.class_id == 0 and record.path.is_file()
    for r in index.records:
        assert index.class_names[r.class_id] == r.class_name


def test_esc50_missing_file_is_reported_or_skipped(esc50: Path, tmp_path: Path) -> None:
    bad = tmp_path / "esc50.csv"
    text = (esc50 / "meta" / "esc50.csv").read_text()
    bad.write_text(text + "9-9-A-0.wav,1,0,dog,False,9,A\n")
    with pytest.raises(DataError, match="9-9-A-0.wav"):
        load_dataset(bad, esc50 / "audio")
    index = load_dataset(bad, esc50 / "audio", skip_bad=True)
    assert len(index.records) == 30 and index.skipped[0].file == "9-9-A-0.wav"


def test_folders_group_recordings_into_stratified_folds(folders: Path) -> None:
    assert detect_layout("", folders) == "folders"
    index = load_dataset("", folders)
    assert index.class_names == ["bird", "car", "wind"]
    assert len(index.records) == 36
    folds_of: dict[str, set[int]] = {}
    for r in index.records:
        folds_of.setdefault(r.fs_id, set()).add(r.fold)
    assert all(len(f) == 1 for f in folds_of.values())  # both takes of a recording share a fold
    assert index.folds == [1, 2, 3, 4, 5]
    for fold in index.folds:  # stratified: every fold holds every class
        assert {r.class_id for r in index.records if r.fold == fold} == {0, 1, 2}
    again = load_dataset("", folders)
    assert [r.fold for r in again.records] == [r.fold for r in index.records]
    assert recording_id("dog7-3") == "dog7" and recording_id("solo") == "solo"


def test_unknown_columns_give_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("file,label\na.wav,x\n")
    with pytest.raises(DataError, match="--layout"):
        load_dataset(path, tmp_path)


def _small(config: RunConfig) -> RunConfig:
    config.audio = AudioConfig(sample_rate=SAMPLE_RATE, duration=1.0)
    config.features = FeatureConfig(n_fft=512, hop_length=256, n_mels=32)
    config.training = TrainingConfig(epochs=1, batch_size=8)
    return config


def test_train_on_esc50_and_on_folders(esc50: Path, folders: Path, tmp_path: Path) -> None:
    esc = _small(
        RunConfig(
            annotations=str(esc50 / "meta" / "esc50.csv"),
            data_dir=str(esc50 / "audio"),
            split=SplitConfig(test_fold=5, val_fold=4),
            runs_dir=str(tmp_path / "runs"),
            cache_dir=str(tmp_path / "cache"),
        )
    )
    run_dir = train(esc, progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["class_names"] == ["dog", "siren", "drilling"]
    assert metrics["split"]["sizes"] == {"train": 18, "val": 6, "test": 6}

    plain = _small(
        RunConfig(
            data_dir=str(folders),
            layout="folders",
            split=SplitConfig(test_fold=1, val_fraction=0.25),
            runs_dir=str(tmp_path / "runs2"),
            cache_dir=str(tmp_path / "cache"),
        )
    )
    run_dir = train(plain, progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["class_names"] == ["bird", "car", "wind"]
    assert sum(metrics["split"]["sizes"].values()) == 36
