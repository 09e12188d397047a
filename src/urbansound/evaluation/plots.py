"""Figures of a run: learning curves, confusion matrix, and one example clip per class.

Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas, so importing this module
neither selects a backend nor touches pyplot's global figure registry, and nothing needs closing.
Every PNG is rendered in memory and written atomically.

Example::

    plot_history(history, run_dir / "train_val_loss_accuracy.png", test_accuracy=0.72, kept_epoch=12)
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, run_dir / "confusion_matrix.png")
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from urbansound.config import SELECT_EPOCH_TEXT
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
    # kind label -> (n_bands,) centre frequency of each band in Hz, lowest first (features.spectrogram's
    # band_frequencies), to put Hz on the frequency axis; a kind without it is labelled by band number
    band_hz: dict[str, np.ndarray] = field(default_factory=dict)


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
    history: Sequence[Mapping[str, float]],
    path: Path,
    test_accuracy: float | None = None,
    kept_epoch: int | None = None,
    kept_by: str = "",
) -> Path:
    """Write :func:`history_figure` to the PNG ``path`` and return ``path``."""
    return save_figure(history_figure(history, test_accuracy, kept_epoch, kept_by), Path(path))


def history_figure(
    history: Sequence[Mapping[str, float]],
    test_accuracy: float | None = None,
    kept_epoch: int | None = None,
    kept_by: str = "",
) -> Figure:
    """Loss and accuracy of training and validation against epoch, side by side, with the epoch whose
    weights the run kept marked on both.

    Args:
        history: one row per epoch with keys ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
            ``val_accuracy`` (accuracies in 0..1; a missing value is left out of its curve).
        test_accuracy: final test accuracy in 0..1 (of the kept epoch's weights), shown in the title.
        kept_epoch: the epoch the run kept (``select_epoch``'s choice); not marked when None.
        kept_by: the ``select_epoch`` rule that chose it (``val_accuracy``, ``val_loss``, ``last``).
    """
    if not history:
        raise ConfigError("history is empty: nothing to plot")

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
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    if kept_epoch is not None:
        _mark_kept_epoch((ax_loss, ax_acc), epochs, val_acc, kept_epoch, kept_by)

    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)

    title = "Training and validation loss and accuracy"
    if test_accuracy is not None:
        title += f" (test accuracy {test_accuracy:.1%})"
    fig.suptitle(title)
    return fig


def _mark_kept_epoch(
    axes: Sequence[Axes], epochs: np.ndarray, val_acc: np.ndarray, kept_epoch: int, kept_by: str
) -> None:
    """A dotted line at ``kept_epoch`` on each of ``axes``, labelled with why it was kept."""
    match = np.flatnonzero(epochs == kept_epoch)
    accuracy = val_acc[match[0]] if match.size and np.isfinite(val_acc[match[0]]) else None
    reason = SELECT_EPOCH_TEXT.get(kept_by, kept_by)
    label = f"kept: epoch {kept_epoch}" + (f" ({reason})" if reason else "")
    if accuracy is not None:
        label += f", validation {accuracy:.1%}"
    for ax in axes:
        ax.axvline(kept_epoch, color="grey", linestyle=":", linewidth=1.5, label=label)


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Write :func:`confusion_matrix_figure` to the PNG ``path`` and return ``path``."""
    return save_figure(confusion_matrix_figure(confusion, class_names, title), Path(path))


def confusion_matrix_figure(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str = ""
) -> Figure:
    """Row-normalised confusion matrix with every cell annotated.

    Args:
        confusion: ``(n_classes, n_classes)`` counts, rows = true class, columns = predicted.
        class_names: one name per row/column, printed in full (x labels rotated).
        title: shown above the matrix; a default naming the normalisation is used when empty.
    """
    shares = row_normalise(confusion)
    n_classes = shares.shape[0]
    if len(class_names) != n_classes:
        raise ConfigError(f"{len(class_names)} class names for a {n_classes}x{n_classes} confusion matrix")
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
    return fig


def plot_class_examples(examples: Sequence[ClassExample], path: Path) -> Path:
    """Write :func:`class_examples_figure` to the PNG ``path`` and return ``path``."""
    return save_figure(class_examples_figure(examples), Path(path))


def class_examples_figure(examples: Sequence[ClassExample]) -> Figure:
    """One row per example: its waveform, then each spectrogram kind, with a dB colorbar.

    Columns are the spectrogram kinds in order of first appearance across ``examples``; an example
    without some kind leaves that cell empty.

    Args:
        examples: one clip per class, typically in class-index order.
    """
    if not examples:
        raise ConfigError("no examples to plot")
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
            fig.colorbar(image, ax=ax, format="%+.0f dB", pad=0.02)  # as librosa.display.specshow's
            ax.set(title=f"{label}\n{kind}", xlabel="time (s)", ylabel="band")
            if kind in example.band_hz:
                _frequency_axis(ax, np.asarray(example.band_hz[kind], dtype=np.float64))
            ax.title.set_fontsize(9)

    return fig


# Frequencies (Hz) labelled on a spectrogram's frequency axis, where they fall inside its bands: round
# numbers about an octave apart (1-2-5), easier to read than librosa's powers of two.
_FREQUENCY_TICKS_HZ = (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


def _frequency_axis(ax: Axes, band_hz: np.ndarray) -> None:
    """Label the y axis of an ``imshow`` of bands (band ``i`` spans ``i .. i + 1``) in Hz, as
    ``specshow(y_axis="mel")`` does: ticks placed by interpolating the bands' centre frequencies, so the
    (mel or ERB) spacing of the bands shows."""
    if band_hz.size < 2:
        return
    candidates = [hz for hz in _FREQUENCY_TICKS_HZ if band_hz[0] <= hz <= band_hz[-1]]
    ticks: list[tuple[float, int]] = []
    positions = np.interp(candidates, band_hz, np.arange(band_hz.size) + 0.5)
    for hz, position in zip(candidates, positions, strict=True):
        # Mel bands are linear below 1 kHz, so 50, 100 and 200 Hz can crowd one corner: keep labels apart.
        if not ticks or position - ticks[-1][0] >= 0.07 * band_hz.size:
            ticks.append((float(position), hz))
    ax.set_yticks(
        [position for position, _ in ticks],
        labels=[f"{hz / 1000:g}k" if hz >= 1000 else str(hz) for _, hz in ticks],
    )
    ax.set_ylabel("frequency (Hz)")


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically to ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("wrote %s", path)
    return path
