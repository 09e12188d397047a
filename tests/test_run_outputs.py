"""What a finished run leaves for error analysis and monitoring: ``test_predictions.csv``, TensorBoard event
files (``--tensorboard``), the training/validation curves under their name, and the report."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_training import tiny_config

from urbansound.config import RunConfig
from urbansound.data.metadata import ClipRecord
from urbansound.errors import ConfigError, DataError
from urbansound.training.epoch_log import CONFUSION_TAG, SCALAR_TAGS, EpochLog
from urbansound.training.run import train
from urbansound.training.run_folder import ClipPredictions, RunFolder


@pytest.fixture(scope="module")
def finished_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> RunFolder:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    base = tmp_path_factory.mktemp("outputs")
    config = tiny_config(tiny_dataset, base / "runs", base / "cache", epochs=2, select_epoch="last")
    config.tensorboard = True
    return RunFolder(train(config, progress=False))


def test_test_predictions_list_every_test_clip_with_its_probabilities(finished_run: RunFolder) -> None:
    with open(finished_run.file(RunFolder.TEST_PREDICTIONS), newline="") as handle:
        rows = list(csv.DictReader(handle))
    metrics = finished_run.read_metrics()
    names = metrics.class_names
    assert list(rows[0]) == [
        "slice_file_name", "fold", "true_class", "predicted_class", *(f"probability_{n}" for n in names)
    ]  # fmt: skip
    with open(finished_run.file(RunFolder.SPLIT), newline="") as handle:
        test_side = {r["slice_file_name"]: r for r in csv.DictReader(handle) if r["side"] == "test"}
    assert sorted(r["slice_file_name"] for r in rows) == sorted(test_side)
    for row in rows:
        assert row["fold"] == test_side[row["slice_file_name"]]["fold"] == "3"
        assert row["true_class"] == test_side[row["slice_file_name"]]["class"]
        probabilities = np.array([float(row[f"probability_{n}"]) for n in names])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
        assert row["predicted_class"] == names[int(probabilities.argmax())]
    # The file is the test set metrics.json scored: the same accuracy, clip for clip.
    right = sum(r["true_class"] == r["predicted_class"] for r in rows)
    assert right / len(rows) == pytest.approx(metrics.test_accuracy)


def test_tensorboard_gets_each_epoch_and_the_confusion_matrix(finished_run: RunFolder) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_run.tensorboard_dir()), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert set(SCALAR_TAGS.values()) <= set(tags["scalars"])
    train_loss = events.Scalars("loss/train")
    assert [e.step for e in train_loss] == [1, 2]
    with open(finished_run.file(RunFolder.HISTORY), newline="") as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose(
        [e.value for e in train_loss], [float(r["train_loss"]) for r in rows], rtol=1e-6
    )
    np.testing.assert_allclose(
        [e.value for e in events.Scalars("learning_rate")], [float(r["lr"]) for r in rows], rtol=1e-6
    )
    assert CONFUSION_TAG in tags["images"]
    image = events.Images(CONFUSION_TAG)[-1]
    assert image.step == 2 and image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_carry_their_new_name_and_the_report_links_every_output(finished_run: RunFolder) -> None:
    assert finished_run.file("train_val_loss_accuracy.png").is_file()
    assert not finished_run.file("train_test_loss.png").exists()
    report = finished_run.file(RunFolder.REPORT).read_text()
    for name in (RunFolder.HISTORY_PLOT, RunFolder.TEST_PREDICTIONS, f"{RunFolder.TENSORBOARD}/"):
        assert f"[{name}]({name})" in report
    assert finished_run.tensorboard_dir().is_dir()  # --tensorboard: the linked folder is there
    assert "- **Augmentation:** none" in report
    assert "kept (the last epoch):** 2" in report


def test_epoch_log_opens_tensorboard_only_when_it_records(tmp_path: Path) -> None:
    # Ranks other than 0 build the same EpochLog but never record: they must leave no event files.
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    log = EpochLog(tmp_path / "history.csv", tensorboard_dir=tmp_path / "tensorboard")
    log.close()
    assert list(tmp_path.iterdir()) == []
    row = {
        "epoch": 1,
        "train_loss": 1.0,
        "val_loss": 1.5,
        "train_accuracy": 0.5,
        "val_accuracy": 0.4,
        "lr": 0.1,
    }
    log.record([row])
    log.close()
    assert (tmp_path / "history.csv").is_file() and any((tmp_path / "tensorboard").glob("events.out.*"))
    assert RunConfig().tensorboard is False  # off unless asked: history.csv holds the same curves


def test_tensorboard_without_the_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    config = RunConfig(tensorboard=True)
    with pytest.raises(ConfigError, match=r"pip install 'urbansound\[tensorboard\]'"):
        config.validate()


def test_clip_predictions_must_match_records_and_classes() -> None:
    record = ClipRecord("a.wav", "1", 1, 0, "dog", Path("a.wav"))
    with pytest.raises(DataError, match="2 clips and 3 classes"):
        ClipPredictions([record, record], np.full((2, 2), 0.5), ["dog", "cat", "car"])
