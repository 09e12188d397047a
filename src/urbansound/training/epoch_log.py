"""Where a run records each epoch as it ends: ``history.csv`` and, with ``--tensorboard``, TensorBoard event
files (``torch.utils.tensorboard``, the format TensorBoard, Weights & Biases and VS Code read).

Example::

    log = EpochLog(folder.history_path(), tensorboard_dir=folder.tensorboard_dir())
    log.record(history)  # after each epoch: the CSV rewritten, the last row added to TensorBoard
    log.close()
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from urbansound.training.run_folder import write_history

logger = logging.getLogger(__name__)

# history.csv column -> TensorBoard tag: grouped by quantity, so train and validation share a section.
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "lr": "learning_rate",
}
CONFUSION_TAG = "test/confusion_matrix"


def summary_writer(log_dir: Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir`` (imported here: it needs the optional
    ``tensorboard`` package, which ``RunConfig.validate`` checks for before a run starts)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


class EpochLog:
    """Records a member's history after every epoch; the writer opens on the first record, so ranks other
    than 0 (which never record) leave no event files."""

    def __init__(self, history_path: Path | None, tensorboard_dir: Path | None = None) -> None:
        self.history_path = history_path
        self.tensorboard_dir = tensorboard_dir
        self._writer: Any = None

    def record(self, history: Sequence[Mapping[str, float]]) -> None:
        """Rewrite ``history.csv`` with every row and add the last row's scalars to TensorBoard."""
        if self.history_path is not None:
            write_history(self.history_path, list(history))
        if self.tensorboard_dir is None or not history:
            return
        if self._writer is None:
            self._writer = summary_writer(self.tensorboard_dir)
            logger.info(
                "TensorBoard log: %s (tensorboard --logdir %s)", self.tensorboard_dir, self.tensorboard_dir
            )
        row = history[-1]
        for column, tag in SCALAR_TAGS.items():
            if column in row:
                self._writer.add_scalar(tag, float(row[column]), global_step=int(row["epoch"]))
        self._writer.flush()  # a watching TensorBoard sees each epoch as it ends

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def log_figure(log_dir: Path, tag: str, figure: Figure, step: int) -> None:
    """Add ``figure`` (e.g. the test confusion matrix) as an image at ``step`` to the event files in
    ``log_dir``."""
    writer = summary_writer(log_dir)
    try:
        # close=False: the figure is not pyplot's (plots.py draws on a bare Figure), nothing to close.
        writer.add_figure(tag, figure, global_step=step, close=False)
    finally:
        writer.close()
