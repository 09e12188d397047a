"""Figures of a run: learning curves, confusion matrix, and one example clip per class.

Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas, so importing this module
neither selects a backend nor touches pyplot's global figure registry, and nothing needs closing.
Every PNG is rendered in memory and written atomically.

Example::

    plot_history(history, run_dir / "train_test_loss.png", test_accuracy=0.72)
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, run_dir / "confusion_matrix.png")
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from urbansound.errors import ConfigError
from urbansound.io_utils import atomic_write_bytes

logger = logging.getLogger(__name__)

_DPI = 120  # sharp enough to read cell annotations, small enough to keep PNGs around 100 kB


@dataclass
class ClassExample:
    """One clip shown in the per-class figure."""

    class_name: str
    file_name: str
    waveform: np.ndarray  # (samples,) mono float
    sample_rate: int  # Hz
    spectrograms: dict[str, np.ndarray]  # kind label -> (n_bands, frames) in dB
    hop_length: int  # samples between spectrogram frames, to put seconds on the time axis


def row_normalise(confusion: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Divide each row of a confusion matrix by its sum, so row ``i`` gives the share of class ``i``'s clips
    predicted as each class (row ``i``'s diagonal is class ``i``'s recall).

    Args:
        confusion: ``(n_classes, n_classes)`` counts, rows = true class.

    Returns:
        ``(n_classes, n_classes)`` float array; each row sums to 1, except rows with no clips, which stay 0.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ConfigError(f"confusion matrix must be square, got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_history(
    history: Sequence[Mapping[str, float]], path: Path, test_accuracy: float | None = None
) -> Path:
    """Loss and accuracy of training and validation against epoch, side by side.

    Args:
        history: one row per epoch with keys ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
            ``val_accuracy`` (accuracies in 0..1; a missing value is left out of its curve).
        path: PNG to write.
        test_accuracy: final test accuracy in 0..1, shown in the title when given.

    Returns:
        ``path``.
    """
    if not history:
        raise ConfigError("history is empty: nothing to plot")
    path = Path(path)

    def column(key: str) -> np.ndarray:
        return np.array([float(row.get(key, math.nan)) for row in history])

    epochs = column("epoch")
    fig = Figure(figsize=(11, 4.2), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)

    ax_loss.plot(epochs, column("train_loss"), marker="o", markersize=3, label="train")
    ax_loss.plot(epochs, column("val_loss"), marker="o", markersize=3, label="validation")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy loss")

    val_acc = column("val_accuracy")
    ax_acc.plot(epochs, 100 * column("train_accuracy"), marker="o", markersize=3, label="train")
    ax_acc.plot(epochs, 100 * val_acc, marker="o", markersize=3, label="validation")
    if np.isfinite(val_acc).any():
        best = int(np.nanargmax(val_acc))
        ax_acc.axvline(
            epochs[best],
            color="grey",
            linestyle=":",
            linewidth=1,
            label=f"best validation {val_acc[best]:.1%} (epoch {epochs[best]:g})",
        )
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")

    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)

    title = "Training history"
    if test_accuracy is not None:
        title += f" (test accuracy {test_accuracy:.1%})"
    fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix with every cell annotated.

    Args:
        confusion: ``(n_classes, n_classes)`` counts, rows = true class, columns = predicted.
        class_names: one name per row/column, printed in full (x labels rotated).
        path: PNG to write.
        title: shown above the matrix; a default naming the normalisation is used when empty.

    Returns:
        ``path``.
    """
    shares = row_normalise(confusion)
    n_classes = shares.shape[0]
    if len(class_names) != n_classes:
        raise ConfigError(f"{len(class_names)} class names for a {n_classes}x{n_classes} confusion matrix")
    path = Path(path)
    support = np.asarray(confusion, dtype=np.int64).sum(axis=1)

    side = max(5.0, 0.75 * n_classes + 3.0)  # inches; ~0.75 in per cell keeps "0.00" annotations legible
    fig = Figure(figsize=(side + 1.0, side), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colorbar.set_label("share of the true class's clips")

    font_size = 9 if n_classes <= 12 else 7
    for i in range(n_classes):
        for j in range(n_classes):
            value = shares[i, j]
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=font_size,
                color="white" if value > 0.5 else "black",
            )

    ax.set_xticks(range(n_classes), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(
        range(n_classes), labels=[f"{name} ({n})" for name, n in zip(class_names, support, strict=True)]
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (clips)")
    ax.set_title(title or "Confusion matrix (rows normalised to 1)")
    return _save(fig, path)


def plot_class_examples(examples: Sequence[ClassExample], path: Path) -> Path:
    """One row per example: its waveform, then each spectrogram kind, with a dB colorbar.

    Columns are the spectrogram kinds in order of first appearance across ``examples``; an example
    without some kind leaves that cell empty.

    Args:
        examples: one clip per class, typically in class-index order.
        path: PNG to write.

    Returns:
        ``path``.
    """
    if not examples:
        raise ConfigError("no examples to plot")
    path = Path(path)
    kinds: list[str] = []
    for example in examples:
        kinds += [kind for kind in example.spectrograms if kind not in kinds]

    n_rows, n_cols = len(examples), 1 + len(kinds)
    fig = Figure(figsize=(5.0 * n_cols, 2.4 * n_rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))

    for row, example in enumerate(examples):
        label = f"{example.class_name} ({example.file_name})"
        waveform = np.asarray(example.waveform, dtype=np.float64).reshape(-1)
        seconds = np.arange(waveform.size) / example.sample_rate
        ax = axes[row, 0]
        ax.plot(seconds, waveform, linewidth=0.5)
        ax.set_xlim(0.0, max(waveform.size / example.sample_rate, 1e-3))
        ax.set(title=f"{label}\nwaveform", xlabel="time (s)", ylabel="amplitude")
        ax.title.set_fontsize(9)

        for col, kind in enumerate(kinds, start=1):
            ax = axes[row, col]
            if kind not in example.spectrograms:
                ax.set_axis_off()
                continue
            spec = np.asarray(example.spectrograms[kind], dtype=np.float64)
            if spec.ndim != 2:
                raise ConfigError(
                    f"spectrogram {kind!r} of {example.file_name} must be 2-D, got {spec.shape}"
                )
            n_bands, frames = spec.shape
            duration = frames * example.hop_length / example.sample_rate
            image = ax.imshow(
                spec, origin="lower", aspect="auto", cmap="magma", extent=(0.0, duration, 0.0, n_bands)
            )
            fig.colorbar(image, ax=ax, format="%+.0f dB", pad=0.02)
            ax.set(title=f"{label}\n{kind}", xlabel="time (s)", ylabel="band")
            ax.title.set_fontsize(9)

    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically to ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("wrote %s", path)
    return path
