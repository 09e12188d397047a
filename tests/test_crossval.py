"""Cross-validation: split invariants over all folds, the summary files, resume, and run comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_training import tiny_config

from urbansound.config import RunConfig, SplitConfig
from urbansound.data.datasets import load_dataset
from urbansound.data.splits import make_split
from urbansound.data.synth import synthesize_dataset
from urbansound.errors import ConfigError
from urbansound.training import fit as fit_module
from urbansound.training.crossval import compare_runs, crossval, fold_config, validation_fold


@pytest.fixture(scope="module")
def ten_folds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-fold dataset (3 recordings per class, 2 slices each); only its metadata is read."""
    dest = tmp_path_factory.mktemp("ten")
    return synthesize_dataset(dest, recordings_per_class=3, clips_per_recording=2, seed=5, vary_formats=False)


def test_every_clip_is_tested_once_and_no_recording_spans_two_sides(ten_folds: Path) -> None:
    config = RunConfig(
        annotations=str(ten_folds / "metadata" / "UrbanSound8K.csv"), data_dir=str(ten_folds / "audio")
    )
    index = load_dataset(config.annotations, config.data_dir)
    present = index.folds
    assert present == list(range(1, 11))
    tested = np.zeros(len(index.records), dtype=int)
    for fold in present:
        fold_cfg = fold_config(config, fold, present)
        assert fold_cfg.split.val_fold == fold % 10 + 1  # the next fold validates
        split = make_split(index.records, fold_cfg.split)
        tested[split.test] += 1
        sides: dict[str, set[str]] = {}
        for side, members in (("train", split.train), ("val", split.val), ("test", split.test)):
            for i in members:
                sides.setdefault(index.records[i].fs_id, set()).add(side)
        assert all(len(s) == 1 for s in sides.values())
        assert set(split.train) | set(split.val) | set(split.test) == set(range(len(index.records)))
    assert (tested == 1).all()


def test_val_fraction_holds_out_whole_recordings_of_training_folds(ten_folds: Path) -> None:
    config = RunConfig(
        annotations=str(ten_folds / "metadata" / "UrbanSound8K.csv"),
        data_dir=str(ten_folds / "audio"),
        split=SplitConfig(val_fraction=0.25),
    )
    index = load_dataset(config.annotations, config.data_dir)
    split = make_split(index.records, fold_config(config, 4, index.folds).split)
    test_ids = {index.records[i].fs_id for i in split.test}
    val_ids = {index.records[i].fs_id for i in split.val}
    train_ids = {index.records[i].fs_id for i in split.train}
    assert not (val_ids & train_ids) and not (test_ids & (val_ids | train_ids))
    assert {index.records[i].fold for i in split.test} == {4}
    assert 4 not in {index.records[i].fold for i in split.val}


def test_validation_fold_wraps_and_needs_two_folds() -> None:
    assert validation_fold(10, list(range(1, 11))) == 1
    assert validation_fold(3, [1, 3, 5]) == 5
    with pytest.raises(ConfigError):
        validation_fold(2, [2])


def test_crossval_summary_and_resume_at_first_unfinished_fold(
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=2)
    out = tmp_path / "cv"
    real_save = fit_module.save_checkpoint
    calls: list[int] = []

    def interrupt_in_fold_two(path: Path, state: dict) -> None:
        real_save(path, state)
        calls.append(state["epoch"])
        if "fold02" in str(path) and state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_checkpoint", interrupt_in_fold_two)
    with pytest.raises(KeyboardInterrupt):
        crossval(config, folds=[1, 2, 3], out_dir=out, progress=False)
    monkeypatch.undo()
    assert (out / "fold01" / "metrics.json").is_file()
    assert not (out / "fold02" / "metrics.json").exists() and (out / "fold02" / "checkpoint.pt").is_file()
    fold_one = (out / "fold01" / "metrics.json").stat().st_mtime_ns

    crossval(RunConfig(), out_dir=out, resume=True, progress=False)
    assert (out / "fold01" / "metrics.json").stat().st_mtime_ns == fold_one  # finished fold not redone
    history = (out / "fold02" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # epoch 1 from before the interruption, epoch 2 after

    summary = json.loads((out / "crossval.json").read_text())
    assert [r["fold"] for r in summary["folds"]] == [1, 2, 3]
    accuracies = [r["test_accuracy"] for r in summary["folds"]]
    assert summary["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert summary["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    # The summed confusion matrix counts every clip once: the three test folds cover the dataset.
    assert np.asarray(summary["confusion_matrix"]).sum() == 60
    assert set(summary["per_class_f1"]) == set(summary["class_names"])
    for fold in (1, 2, 3):
        saved = json.loads((out / f"fold{fold:02d}" / "config.json").read_text())
        assert saved["split"]["test_fold"] == fold and saved["split"]["val_fold"] == fold % 3 + 1
    assert (out / "confusion_matrix.png").is_file()
    # Features computed once: every fold reads the same packed array of all clips.
    assert len(list((tmp_path / "cache").glob("*/packs/*.npy"))) == 1
    text = (out / "crossval.md").read_text()
    assert "± " in text and "| 3 |" in text

    comparison = compare_runs([out, out / "fold01"])
    assert "| 2 |" in comparison and "split.test_fold" not in comparison.split("differ")[0]
    assert "Settings that differ" in comparison


def test_compare_lists_settings_that_differ(tiny_dataset: Path, tmp_path: Path) -> None:
    from urbansound.training.run import train

    a = train(tiny_config(tiny_dataset, tmp_path / "a", tmp_path / "cache", epochs=1), progress=False)
    config = tiny_config(tiny_dataset, tmp_path / "b", tmp_path / "cache", epochs=1)
    config.training.label_smoothing = 0.1
    b = train(config, progress=False)
    text = compare_runs([a, b])
    assert "training.label_smoothing" in text and "0.1" in text
    assert "training.epochs" not in text  # equal settings are not listed
    assert "| 3 |" in text  # test fold 3's accuracy row
