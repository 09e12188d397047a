"""The run folder: every file name of a run (and of a cross-validation) and the reading and writing of its
configuration, split, history, checkpoints, model file and metrics, in one place.

>>> folder = RunFolder(Path("runs/20240101-120000-demo"))  # doctest: +SKIP
>>> folder.read_metrics().test_accuracy  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from urbansound.config import RunConfig
from urbansound.data.metadata import ClipRecord, DatasetIndex, Problem, write_problems
from urbansound.data.splits import Split
from urbansound.errors import DataError
from urbansound.io_utils import atomic_write_json, atomic_write_text
from urbansound.training.checkpoint import TrainState, load_train_state

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "data_wait_fraction",
)


@dataclass
class EnsembleMetrics:
    """How a seed ensemble's members did alone (reported, never used for a choice)."""

    members: int
    seeds: list[int]
    kept_epochs: list[int]
    member_val_accuracy: list[float]
    member_test_accuracy: list[float]


@dataclass
class RunMetrics:
    """``metrics.json``: the test set scored once on the kept weights, and how the run got there.

    ``test`` and ``val`` are :func:`~urbansound.evaluation.metrics.classification_metrics` results
    (accuracy, macro-F1, per-class scores, confusion matrix); the field order is the file's key order.
    """

    test_accuracy: float
    test_macro_f1: float
    val_accuracy: float
    val_macro_f1: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    split: dict[str, Any]  # Split.to_dict(): description, sizes, folds
    n_skipped: int
    ensemble: EnsembleMetrics | None
    per_class: dict[str, Any]  # the test set's per-class scores
    test: dict[str, Any]
    val: dict[str, Any]
    class_names: list[str]
    wall_seconds: float | None = None  # of the whole run, data preparation included
    # Calibration.to_dict(): the temperature fitted on validation, the test split's ECE before and after
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMetrics:
        known = {f.name: data.get(f.name) for f in fields(cls)}
        if known["ensemble"] is not None:
            known["ensemble"] = EnsembleMetrics(**known["ensemble"])
        return cls(**known)


@dataclass
class ClipPredictions:
    """The kept model's output for each test clip (``test_predictions.csv``), rows in ``records``' order."""

    records: list[ClipRecord]
    probabilities: np.ndarray  # (clips, n_classes), columns in class_names' order
    class_names: list[str]

    def __post_init__(self) -> None:
        expected = (len(self.records), len(self.class_names))
        if self.probabilities.shape != expected:
            raise DataError(
                f"test predictions: probabilities of shape {self.probabilities.shape} for "
                f"{expected[0]} clips and {expected[1]} classes"
            )


@dataclass(frozen=True)
class RunFolder:
    """A run folder (or cross-validation folder) at ``path``; the class attributes are its file names."""

    path: Path

    CONFIG = "config.json"  # the resolved RunConfig
    SPLIT = "split.csv"  # which clip went to which side
    SKIPPED = "skipped_clips.csv"  # clips that could not be decoded (only if any)
    HISTORY = "history.csv"  # one row per epoch; members 2.. of an ensemble: history-member2.csv, ...
    CHECKPOINT = "checkpoint.pt"  # for resuming; members 2..: checkpoint-member2.pt, ...
    MODEL = "model.safetensors"  # the deployable model file
    METRICS = "metrics.json"  # RunMetrics; present once the run has finished
    DISTILLATION = "distillation.json"  # a distilled student's teacher, temperature and weight
    # Loss and accuracy of training and validation per epoch, the kept epoch marked (was train_test_loss.png).
    HISTORY_PLOT = "train_val_loss_accuracy.png"
    CONFUSION_PLOT = "confusion_matrix.png"
    RELIABILITY_PLOT = "reliability.png"  # test-split calibration before and after temperature scaling
    # One row per test clip: file, fold, true and predicted class, each class's probability.
    TEST_PREDICTIONS = "test_predictions.csv"
    TENSORBOARD = "tensorboard"  # event files of `--tensorboard`; ensemble members 2..: tensorboard/member2
    REPORT = "report.md"
    LOG = "train.log"  # the run's log lines (INFO and above), as a terminal shows them
    # A cross-validation folder: its settings, the summary over folds and its rendering.
    CROSSVAL_SETTINGS = "crossval_config.json"
    CROSSVAL_SETTINGS_OLD = "config.json"  # what cross-validation folders were written with before
    CROSSVAL_SUMMARY = "crossval.json"
    CROSSVAL_REPORT = "crossval.md"
    FOLD_FOLDER = "fold{:02d}"  # a cross-validation's run folder of one test fold: fold01, fold02, ...

    @classmethod
    def create(cls, runs_dir: str | Path, name: str) -> RunFolder:
        """A new, empty folder ``<runs_dir>/<timestamp>-<name>`` (with a numeric suffix if taken)."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(runs_dir) / f"{stamp}-{name}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(runs_dir) / f"{stamp}-{name}-{suffix}"
        path.mkdir(parents=True)
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def model_path(self) -> Path:
        return self.path / self.MODEL

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @staticmethod
    def member_suffix(member: int) -> str:
        """``""`` for the first (or only) member, ``-memberK`` for member K > 1."""
        return "" if member == 1 else f"-member{member}"

    def checkpoint_path(self, member: int = 1) -> Path:
        return self.path / self.CHECKPOINT.replace(".pt", f"{self.member_suffix(member)}.pt")

    def history_path(self, member: int = 1) -> Path:
        return self.path / self.HISTORY.replace(".csv", f"{self.member_suffix(member)}.csv")

    def tensorboard_dir(self, member: int = 1) -> Path:
        """TensorBoard's log folder of ``member``: each member is a run of its own there, beside member 1."""
        folder = self.path / self.TENSORBOARD
        return folder if member == 1 else folder / f"member{member}"

    @contextmanager
    def logging_to_file(self) -> Iterator[Path]:
        """Append the package's log lines to :attr:`LOG` while the block runs, so progress (feature cache,
        variants, epochs) is on disk as well as on the terminal, from the first second of a run."""
        path = self.file(self.LOG)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        package_logger = logging.getLogger("urbansound")
        level = package_logger.level
        if package_logger.getEffectiveLevel() > logging.INFO:
            package_logger.setLevel(logging.INFO)  # a library caller without logging set up still gets a log
        package_logger.addHandler(handler)
        try:
            yield path
        finally:
            package_logger.removeHandler(handler)
            package_logger.setLevel(level)
            handler.close()

    def is_finished(self) -> bool:
        return self.metrics_path.is_file()

    def can_resume(self) -> bool:
        return self.checkpoint_path().is_file() and self.config_path.is_file()

    def write_config(self, config: RunConfig) -> None:
        atomic_write_json(self.config_path, config.to_dict())

    def read_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise DataError(f"{self.path}: not a run folder (no {self.CONFIG})")
        try:
            return RunConfig.from_dict(json.loads(self.config_path.read_text()))
        except (ValueError, TypeError) as error:
            raise DataError(f"{self.config_path}: unreadable run configuration ({error})") from None

    def read_config_dict(self) -> dict[str, Any]:
        """The saved configuration as stored (for comparing runs setting by setting)."""
        return self.read_config().to_dict()

    def write_split(self, index: DatasetIndex, split: Split) -> None:
        """Which clip went where, so anyone can check that no recording spans two sides."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["slice_file_name", "fold", "fsID", "class", "side"])
        for side, members in (("train", split.train), ("val", split.val), ("test", split.test)):
            for i in members:
                r = index.records[i]
                writer.writerow([r.slice_file_name, r.fold, r.fs_id, r.class_name, side])
        atomic_write_text(self.path / self.SPLIT, buffer.getvalue())

    def write_test_predictions(self, predictions: ClipPredictions) -> Path:
        """``test_predictions.csv``: file, fold, true class, predicted class and each class's probability
        (columns ``probability_<class>``), one row per test clip, for error analysis."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        names = predictions.class_names
        writer.writerow(
            ["slice_file_name", "fold", "true_class", "predicted_class", *(f"probability_{n}" for n in names)]
        )
        predicted = predictions.probabilities.argmax(axis=1)
        for record, row, guess in zip(predictions.records, predictions.probabilities, predicted, strict=True):
            probabilities = (f"{p:.6f}" for p in row)
            writer.writerow(
                [record.slice_file_name, record.fold, record.class_name, names[guess], *probabilities]
            )
        path = self.path / self.TEST_PREDICTIONS
        atomic_write_text(path, buffer.getvalue(), what="the test predictions")
        return path

    def write_skipped(self, problems: Sequence[Problem]) -> Path:
        path = self.path / self.SKIPPED
        write_problems(list(problems), path)
        return path

    def read_checkpoint(self, member: int = 1) -> TrainState:
        return load_train_state(self.checkpoint_path(member))

    def write_metrics(self, metrics: RunMetrics) -> None:
        atomic_write_json(self.metrics_path, metrics.to_dict())

    def read_metrics(self) -> RunMetrics:
        if not self.metrics_path.is_file():
            raise DataError(f"{self.metrics_path}: the run has not finished")
        return RunMetrics.from_dict(json.loads(self.metrics_path.read_text()))

    def write_crossval_settings(self, config: RunConfig, folds: list[int]) -> None:
        atomic_write_json(self.path / self.CROSSVAL_SETTINGS, {"config": config.to_dict(), "folds": folds})

    def read_crossval_settings(self) -> tuple[dict[str, Any], list[int]] | None:
        """The saved configuration (as stored) and test folds of a cross-validation folder, or None.

        Folders written before the settings had their own file kept them in ``config.json`` (as
        ``{"config": ..., "folds": ...}``); those are read too, so they can still be resumed."""
        for name in (self.CROSSVAL_SETTINGS, self.CROSSVAL_SETTINGS_OLD):
            path = self.path / name
            if path.is_file():
                saved = json.loads(path.read_text())
                if isinstance(saved, dict) and "config" in saved and "folds" in saved:
                    return saved["config"], list(saved["folds"])
        return None

    def is_crossval(self) -> bool:
        return (self.path / self.CROSSVAL_SUMMARY).is_file()

    def fold_folder(self, fold: int) -> RunFolder:
        """The run folder of test fold ``fold`` inside this cross-validation folder."""
        return RunFolder(self.path / self.FOLD_FOLDER.format(fold))

    def fold_folders(self) -> list[RunFolder]:
        """The fold run folders present inside this cross-validation folder, by fold number."""
        pattern = re.compile("^" + self.FOLD_FOLDER.replace("{:02d}", r"(\d+)") + "$")
        if not self.path.is_dir():
            return []
        found = {}
        for child in self.path.iterdir():
            match = pattern.match(child.name)
            if match and child.is_dir():
                found[int(match.group(1))] = RunFolder(child)
        return [found[fold] for fold in sorted(found)]

    def write_crossval_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / self.CROSSVAL_SUMMARY, summary)

    def read_crossval_summary(self) -> dict[str, Any]:
        return json.loads((self.path / self.CROSSVAL_SUMMARY).read_text())


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """``history.csv``: one row per epoch, the columns of :data:`HISTORY_COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a ``history.csv``, numbers as floats (``epoch`` as int)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""} for row in rows]


def resolve_model_file(path: str | Path) -> Path:
    """The model file that ``path`` names: a model file itself, a run folder's model file, or, for a
    cross-validation folder, the model file of the fold with the highest validation accuracy (ties: the
    lowest fold; test accuracy is never looked at, so choosing does not peek at test data).

    predict, serve, export and :class:`urbansound.Classifier` all take their model through this.

    Raises:
        DataError: ``path`` does not exist, is an unfinished run, or a folder without a model file (the
            message lists a cross-validation's fold folders so one can be named instead).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise DataError(f"{path}: no such model file or run folder")
    folder = RunFolder(path)
    if folder.model_path.is_file():
        return folder.model_path
    folds = folder.fold_folders()
    if folds:
        return _best_fold_model(folder, folds)
    if folder.config_path.is_file():
        raise DataError(
            f"{path}: the run has no {RunFolder.MODEL} yet (unfinished: continue it with "
            f"`urbansound train --resume {path}`)"
        )
    raise DataError(f"{path}: neither a model file, a run folder nor a cross-validation folder")


def _best_fold_model(folder: RunFolder, folds: list[RunFolder]) -> Path:
    """The model file of the finished fold with the highest validation accuracy (see resolve_model_file)."""
    scored = [(f.read_metrics().val_accuracy, f) for f in folds if f.is_finished() and f.model_path.is_file()]
    scored = [(accuracy, f) for accuracy, f in scored if accuracy is not None]
    if not scored:
        listing = ", ".join(f.path.name for f in folds)
        raise DataError(
            f"{folder.path}: a cross-validation folder with no finished fold to choose from; name a fold's "
            f"model file or run folder instead (folds: {listing})"
        )
    best_accuracy = max(accuracy for accuracy, _ in scored)
    best = next(f for accuracy, f in scored if accuracy == best_accuracy)  # folds are sorted: lowest first
    logger.info(
        "%s: using %s, the highest validation accuracy (%.1f%%) of %d finished fold(s): %s",
        folder.path,
        best.path.name,
        100 * best_accuracy,
        len(scored),
        ", ".join(f"{f.path.name} {100 * accuracy:.1f}%" for accuracy, f in scored),
    )
    return best.model_path
