"""The run folder: every file name of a run (and of a cross-validation) and the reading and writing of its
configuration, split, history, checkpoints, model file and metrics, in one place.

>>> folder = RunFolder(Path("runs/20240101-120000-demo"))  # doctest: +SKIP
>>> folder.read_metrics().test_accuracy  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from urbansound.config import RunConfig
from urbansound.data.metadata import DatasetIndex, Problem, write_problems
from urbansound.data.splits import Split
from urbansound.errors import DataError
from urbansound.io_utils import atomic_write_json, atomic_write_text
from urbansound.training.checkpoint import TrainState, load_train_state

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMetrics:
        known = {f.name: data.get(f.name) for f in fields(cls)}
        if known["ensemble"] is not None:
            known["ensemble"] = EnsembleMetrics(**known["ensemble"])
        return cls(**known)


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
    HISTORY_PLOT = "train_test_loss.png"
    CONFUSION_PLOT = "confusion_matrix.png"
    REPORT = "report.md"
    # A cross-validation folder: its settings, the summary over folds and its rendering.
    CROSSVAL_SETTINGS = "crossval_config.json"
    CROSSVAL_SETTINGS_OLD = "config.json"  # what cross-validation folders were written with before
    CROSSVAL_SUMMARY = "crossval.json"
    CROSSVAL_REPORT = "crossval.md"

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
