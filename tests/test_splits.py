"""Tests of the train/validation/test splits (urbansound.data.splits)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from urbansound.config import SplitConfig
from urbansound.data.metadata import ClipRecord
from urbansound.data.splits import (
    class_share_deviation,
    fold_split,
    grouped_holdout,
    make_split,
    seed_random_split,
)
from urbansound.errors import ConfigError


def make_records(
    folds: range | list[int] = range(1, 11), classes: int = 4, recordings: int = 3, slices: int = 4
) -> list[ClipRecord]:
    """``recordings`` recordings per class and fold, each cut into ``slices`` clips that share its fsID."""
    records = []
    fs_id = 1000
    for fold in folds:
        for class_id in range(classes):
            for _ in range(recordings):
                fs_id += 1
                for k in range(slices):
                    name = f"{fs_id}-{class_id}-0-{k}.wav"
                    records.append(
                        ClipRecord(
                            name, str(fs_id), fold, class_id, f"c{class_id}", Path(f"fold{fold}") / name
                        )
                    )
    return records


def folds_of(records: list[ClipRecord], indices: list[int]) -> set[int]:
    return {records[i].fold for i in indices}


def assert_partition(split, n: int) -> None:
    """train, val and test are disjoint and, together, every clip once."""
    sides = [split.train, split.val, split.test]
    assert sum(len(side) for side in sides) == n
    assert sorted(i for side in sides for i in side) == list(range(n))


def test_default_fold_split_tests_on_10_validates_on_9_trains_on_the_rest() -> None:
    records = make_records()
    split = fold_split(records, SplitConfig())
    assert folds_of(records, split.test) == {10}
    assert folds_of(records, split.val) == {9}
    assert folds_of(records, split.train) == set(range(1, 9))
    assert_partition(split, len(records))
    assert split.test == [i for i, r in enumerate(records) if r.fold == 10]
    assert "test fold 10" in split.description and "validation fold 9" in split.description
    assert split.sizes == {"train": 8 * 48, "val": 48, "test": 48}


def test_fold_split_with_other_folds() -> None:
    records = make_records()
    split = fold_split(records, SplitConfig(test_fold=3, val_fold=4))
    assert folds_of(records, split.test) == {3}
    assert folds_of(records, split.val) == {4}
    assert folds_of(records, split.train) == {1, 2, 5, 6, 7, 8, 9, 10}
    assert_partition(split, len(records))


def test_explicit_train_folds() -> None:
    records = make_records()
    split = fold_split(records, SplitConfig(train_folds=[1, 2, 3]))
    assert folds_of(records, split.train) == {1, 2, 3}
    assert folds_of(records, split.val) == {9}
    assert folds_of(records, split.test) == {10}
    assert len(split.train) == 3 * 48
    assert "train folds 1,2,3" in split.description


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25])
def test_val_fraction_holds_out_whole_recordings(fraction: float) -> None:
    records = make_records(recordings=5)
    split = fold_split(records, SplitConfig(val_fraction=fraction), seed=3)
    assert folds_of(records, split.test) == {10}
    # Validation now comes out of the training folds, fold 9 included.
    assert folds_of(records, split.train) | folds_of(records, split.val) <= set(range(1, 10))
    assert_partition(split, len(records))
    train_ids = {records[i].fs_id for i in split.train}
    val_ids = {records[i].fs_id for i in split.val}
    assert train_ids.isdisjoint(val_ids)
    share = len(split.val) / (len(split.train) + len(split.val))
    assert share == pytest.approx(fraction, abs=0.05)
    # Stratified: every class is validated on.
    assert {records[i].class_id for i in split.val} == {0, 1, 2, 3}


def test_val_fraction_is_deterministic_given_the_seed() -> None:
    records = make_records(recordings=5)
    config = SplitConfig(val_fraction=0.2)
    first = fold_split(records, config, seed=7)
    assert fold_split(records, config, seed=7) == first
    assert any(fold_split(records, config, seed=s).val != first.val for s in (8, 9, 10))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (SplitConfig(test_fold=5), "test fold 5 has no clips"),
        (SplitConfig(val_fold=5), "validation fold 5 has no clips"),
        (SplitConfig(test_fold=9, val_fold=9), "must differ from the test fold"),
        (SplitConfig(train_folds=[1, 2, 10]), "training folds [10] are also used"),
        (SplitConfig(train_folds=[1, 9]), "training folds [9] are also used"),
        (SplitConfig(train_folds=[1, 5]), "training fold(s) [5] have no clips"),
    ],
)
def test_bad_fold_choices_raise_config_error(config: SplitConfig, message: str) -> None:
    records = make_records(folds=[1, 2, 3, 4, 6, 7, 8, 9, 10])  # no fold 5
    with pytest.raises(ConfigError) as error:
        fold_split(records, config)
    assert message in str(error.value)


def test_no_training_fold_left_raises() -> None:
    with pytest.raises(ConfigError, match="no training folds"):
        fold_split(make_records(folds=[9, 10]), SplitConfig())


def test_too_few_recordings_for_the_fraction_raises() -> None:
    records = make_records(folds=[1], classes=1, recordings=2)
    with pytest.raises(ConfigError, match="too few"):
        grouped_holdout(list(range(len(records))), records, 0.2, seed=0)
    with pytest.raises(ConfigError):
        grouped_holdout(list(range(len(records))), records, 1.5, seed=0)


def test_seed_random_split_sizes_and_coverage(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="urbansound.data.splits"):
        split = seed_random_split(8732, seed=0)
    assert split.sizes == {"train": 5589, "val": 1397, "test": 1746}
    assert_partition(split, 8732)
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "urbansound.data.splits"
    ]
    assert len(warnings) == 1 and "inflated" in warnings[0].getMessage()
    assert "leaky" in split.description


def test_seed_random_split_is_deterministic_given_the_seed() -> None:
    first = seed_random_split(8732, seed=1)
    assert seed_random_split(8732, seed=1) == first
    other = seed_random_split(8732, seed=2)
    assert other.sizes == first.sizes and other.test != first.test


def test_make_split_dispatches_on_method() -> None:
    records = make_records()
    assert make_split(records, SplitConfig(method="random"), seed=0) == seed_random_split(len(records), 0)
    assert make_split(records, SplitConfig(), seed=0) == fold_split(records, SplitConfig())


def _uneven_records() -> list[ClipRecord]:
    """Fold 1 of UrbanSound8K in miniature: one class has a few recordings of very unequal length."""
    records = make_records(folds=[1], classes=3, recordings=10, slices=4)
    for fs_id, n_slices in zip(range(9000, 9005), (79, 22, 11, 7, 1), strict=True):
        for k in range(n_slices):
            name = f"{fs_id}-3-0-{k}.wav"
            records.append(ClipRecord(name, str(fs_id), 1, 3, "c3", Path("fold1") / name))
    return records


def test_holdout_keeps_every_class_near_the_fraction_despite_uneven_recordings() -> None:
    records = _uneven_records()
    everything = list(range(len(records)))
    labels = np.array([r.class_id for r in records])

    def worst_class_gap(seed: int) -> float:
        kept, held = grouped_holdout(everything, records, 0.2, seed=seed)
        assert not {records[i].fs_id for i in kept} & {records[i].fs_id for i in held}
        return class_share_deviation(labels, np.array(held), 0.2)

    assert all(worst_class_gap(seed) <= 0.1 for seed in range(5))
    # The first fold of StratifiedGroupKFold alone holds out the 79-slice recording (that is why every
    # fold of several shuffles is a candidate).
    groups = np.array([r.fs_id for r in records])
    _, first = next(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(labels, labels, groups))
    assert class_share_deviation(labels, first, 0.2) > 0.4


def test_a_holdout_from_too_few_clips_per_class_is_a_clear_error() -> None:
    """10 recordings of 2 clips each over 4 classes: enough recordings for 5 parts, but no class has 5 clips;
    scikit-learn's own error named an n_splits the user never set."""
    records = make_records(folds=[1], classes=4, recordings=1, slices=2)
    records += make_records(folds=[1], classes=1, recordings=2, slices=1)
    records = [dataclasses.replace(r, fs_id=f"{r.fs_id}-{k}") for k, r in enumerate(records)]
    with pytest.raises(ConfigError, match=r"at most 4 per class: too few to hold out 20%.*--val-fold"):
        grouped_holdout(list(range(len(records))), records, 0.2, seed=0)


def test_a_tiny_default_test_fold_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """A partial copy (folds 1-2 plus a stray clip in fold 7) defaults to testing on that one clip: say so."""
    records = make_records(folds=[1, 2, 3])
    records.append(dataclasses.replace(records[0], fold=7, fs_id="stray"))
    with caplog.at_level(logging.WARNING, logger="urbansound.data.splits"):
        split = fold_split(records, SplitConfig())
    assert len(split.test) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("test fold 7 holds 1 clip(s), the largest fold 48")
    assert "1: 48, 2: 48, 3: 48, 7: 1" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="urbansound.data.splits"):
        fold_split(records, SplitConfig(test_fold=3, val_fold=2))
    assert not caplog.records  # the even folds chosen: nothing to say
