"""Train/validation/test splits that keep every recording (fsID) on one side.

UrbanSound8K's slices of one recording overlap in time; a split that scatters them (the tutorial pipeline's
random 64/16/20) measures memory, not generalisation. The official folds, or recording-grouped splits
(scikit-learn's StratifiedGroupKFold), do not.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from urbansound.config import SplitConfig
from urbansound.data.metadata import ClipRecord
from urbansound.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """Indices into the record list for each side, and a human description naming the split."""

    train: list[int]
    val: list[int]
    test: list[int]
    description: str

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to_dict(self) -> dict[str, object]:
        return {"description": self.description, "sizes": self.sizes}


# Shuffles of StratifiedGroupKFold tried by grouped_holdout; each gives round(1 / fraction) candidate parts.
HOLDOUT_CANDIDATE_SHUFFLES = 10


def class_share_deviation(labels: np.ndarray, held: np.ndarray, fraction: float) -> float:
    """Largest gap, over classes, between the share of a class's clips in ``held`` and ``fraction``."""
    classes, totals = np.unique(labels, return_counts=True)
    held_counts = np.array([(labels[held] == c).sum() for c in classes])
    return float(np.max(np.abs(held_counts / totals - fraction)))


def grouped_holdout(
    indices: Sequence[int], records: Sequence[ClipRecord], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Hold out about ``fraction`` of ``indices`` by whole recordings, stratified by class.

    Returns ``(kept, held_out)``. The candidates are the folds of scikit-learn's StratifiedGroupKFold
    (``round(1 / fraction)`` folds) over a few shuffles derived from ``seed``; the held-out part is the
    candidate whose per-class share is closest to ``fraction`` for its worst class. One shuffle alone is not
    enough when a class has a few recordings of very unequal length: on UrbanSound8K's fold 1 (jackhammer:
    recordings of 79, 22, 11, 7 and 1 slices) the first fold of one shuffle held out 66% of jackhammer,
    which left training with 41 of its 120 clips and made 39% of the validation set one recording.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
    indices = np.asarray(indices)
    groups = np.array([records[i].fs_id for i in indices])
    labels = np.array([records[i].class_id for i in indices])
    n_splits = max(2, round(1 / fraction))
    if len(set(groups)) < n_splits:
        raise ConfigError(
            f"only {len(set(groups))} recordings: too few to hold out {fraction:.0%} by recording"
        )
    largest_class = int(np.unique(labels, return_counts=True)[1].max())
    if largest_class < n_splits:
        # StratifiedGroupKFold's own error here names n_splits, which the user never set.
        raise ConfigError(
            f"{len(indices)} training clips, at most {largest_class} per class: too few to hold out "
            f"{fraction:.0%} by recording with every class represented (at least {n_splits} clips of some "
            "class are needed); validate on a fold instead (--val-fold) or train on more clips"
        )
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for attempt in range(HOLDOUT_CANDIDATE_SHUFFLES):
        splitter = StratifiedGroupKFold(
            n_splits=n_splits, shuffle=True, random_state=seed * HOLDOUT_CANDIDATE_SHUFFLES + attempt
        )
        for kept, held in splitter.split(indices, labels, groups):
            score = class_share_deviation(labels, held, fraction)
            if best is None or score < best[0]:
                best = (score, kept, held)
    assert best is not None
    _, kept, held = best
    return sorted(indices[kept].tolist()), sorted(indices[held].tolist())


def resolve_folds(config: SplitConfig, present: Sequence[int]) -> SplitConfig:
    """``config`` with unset folds chosen from the ``present`` folds: the last tests, the one before it
    validates (the one after, when the test fold is the first). A fold given is kept as given."""
    present = sorted(present)
    if config.method != "folds" or not present:
        return config
    test_fold = config.test_fold if config.test_fold is not None else present[-1]
    val_fold = config.val_fold
    if val_fold is None and config.val_fraction is None:
        before = [f for f in present if f < test_fold]
        after = [f for f in present if f > test_fold]
        if not before and not after:
            raise ConfigError(
                f"fold {test_fold} is the only fold: nothing to validate on (use --val-fraction to validate "
                "on part of the training recordings)"
            )
        val_fold = before[-1] if before else after[0]
    return dataclasses.replace(config, test_fold=test_fold, val_fold=val_fold)


def fold_split(records: Sequence[ClipRecord], config: SplitConfig, seed: int = 0) -> Split:
    """Split by the official folds: test on ``test_fold``; validate on ``val_fold`` or on a recording-grouped
    ``val_fraction`` of the training folds; train on ``train_folds`` (default: every other fold present).
    Unset test and validation folds come from the data (:func:`resolve_folds`)."""
    present = sorted({r.fold for r in records})
    config = resolve_folds(config, present)
    test_fold = config.test_fold
    if test_fold not in present:
        raise ConfigError(f"test fold {test_fold} has no clips; folds present: {present}")
    val_fold = None if config.val_fraction is not None else config.val_fold
    if val_fold is not None and val_fold not in present:
        raise ConfigError(
            f"validation fold {val_fold} has no clips; folds present: {present} "
            "(use --val-fraction to validate on part of the training folds)"
        )
    if val_fold == test_fold:
        raise ConfigError("the validation fold must differ from the test fold")
    train_folds = config.train_folds or [f for f in present if f not in (test_fold, val_fold)]
    overlap = set(train_folds) & {test_fold, val_fold}
    if overlap:
        raise ConfigError(f"training folds {sorted(overlap)} are also used for validation or test")
    missing = [f for f in train_folds if f not in present]
    if missing:
        raise ConfigError(f"training fold(s) {missing} have no clips; folds present: {present}")
    if not train_folds:
        raise ConfigError("no training folds left")
    train = [i for i, r in enumerate(records) if r.fold in train_folds]
    test = [i for i, r in enumerate(records) if r.fold == test_fold]
    if val_fold is not None:
        val = [i for i, r in enumerate(records) if r.fold == val_fold]
        val_text = f"validation fold {val_fold}"
    elif config.val_fraction is not None:
        train, val = grouped_holdout(train, records, config.val_fraction, seed)
        val_text = f"validation {config.val_fraction:.0%} of training recordings (by fsID)"
    else:
        raise ConfigError("choose a validation fold or a validation fraction")
    warn_small_folds(records, {"test": test_fold, "validation": val_fold})
    folds_text = ",".join(map(str, train_folds))
    description = f"train folds {folds_text}, {val_text}, test fold {test_fold}"
    return Split(train=train, val=val, test=test, description=description)


# A test or validation fold holding less than this share of the largest fold's clips says little; a partial
# copy of a dataset (a fold or two, plus a few stray clips) makes such a fold the default "last fold".
SMALL_FOLD_SHARE = 0.1


def warn_small_folds(records: Sequence[ClipRecord], roles: dict[str, int | None]) -> None:
    """Warn about each fold in ``roles`` (role -> fold; None: not used) that holds few clips."""
    sizes = Counter(r.fold for r in records)
    largest = max(sizes.values())
    for role, fold in roles.items():
        if fold is not None and sizes[fold] < SMALL_FOLD_SHARE * largest:
            per_fold = ", ".join(f"{f}: {n}" for f, n in sorted(sizes.items()))
            logger.warning(
                "%s fold %d holds %d clip(s), the largest fold %d: its accuracy says little "
                "(clips per fold: %s); choose another with --test-fold / --val-fold, or --val-fraction",
                role,
                fold,
                sizes[fold],
                largest,
                per_fold,
            )


def seed_random_split(n_clips: int, seed: int = 0) -> Split:
    """The tutorial pipeline's random 64/16/20 split (5,589/1,397/1,746 of 8,732 clips).

    It leaks: slices of one recording land on both sides, so its accuracy is inflated.
    """
    logger.warning(
        "--split random scatters slices of one recording over train, validation and test: "
        "its accuracy is inflated and not comparable to fold-based results"
    )
    order = np.random.default_rng(seed).permutation(n_clips).tolist()
    n_test = int(n_clips * 0.2)
    n_val = int((n_clips - n_test) * 0.2)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Split(
        train=sorted(train),
        val=sorted(val),
        test=sorted(test),
        description="random 64/16/20 split (leaky: recordings span train and test)",
    )


def make_split(records: Sequence[ClipRecord], config: SplitConfig, seed: int = 0) -> Split:
    """Dispatch on ``config.method``."""
    if config.method == "random":
        return seed_random_split(len(records), seed)
    return fold_split(records, config, seed)
