"""Tests of the evaluation stage: metrics, plots, report, and the atomic writers they rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from urbansound.config import FeatureConfig, RunConfig, apply_recipe
from urbansound.data.synth import CLASS_NAMES
from urbansound.errors import ConfigError
from urbansound.evaluation.metrics import classification_metrics
from urbansound.evaluation.plots import (
    ClassExample,
    class_examples_figure,
    history_figure,
    plot_class_examples,
    plot_confusion_matrix,
    plot_history,
    row_normalise,
)
from urbansound.evaluation.report import RUN_FILES, render_report, write_report
from urbansound.features.spectrogram import band_frequencies
from urbansound.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from urbansound.training.run_folder import RunFolder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
URBANSOUND_CLASSES = list(CLASS_NAMES)

# A small example worked by hand. Class 3 ("drill") never occurs.
#   air:   2 of 3 right, never wrongly predicted   -> P 1,   R 2/3, F1 0.8
#   bark:  1 of 2 right, predicted twice           -> P 1/2, R 1/2, F1 0.5
#   siren: 1 of 1 right, predicted twice           -> P 1/2, R 1,   F1 2/3
#   drill: absent                                  -> 0, 0, 0
SMALL_NAMES = ["air", "bark", "siren", "drill"]
SMALL_TRUE = [0, 0, 0, 1, 1, 2]
SMALL_PRED = [0, 0, 1, 1, 2, 2]


def _assert_png(path: Path, min_width: int = 400, min_height: int = 300) -> np.ndarray:
    """Check ``path`` is a PNG of at least the given pixel size and return its pixels."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    assert pixels.std() > 0.01  # something was drawn, not a blank canvas
    return pixels


def _history(n_epochs: int = 6) -> list[dict[str, float]]:
    return [
        {
            "epoch": epoch,
            "train_loss": 2.0 / epoch,
            "train_accuracy": min(0.3 + 0.1 * epoch, 0.95),
            "val_loss": 2.2 / epoch + 0.02 * epoch,
            "val_accuracy": [0.30, 0.45, 0.52, 0.61, 0.58, 0.60][(epoch - 1) % 6],
        }
        for epoch in range(1, n_epochs + 1)
    ]


# ---------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values() -> None:
    m = classification_metrics(SMALL_TRUE, SMALL_PRED, SMALL_NAMES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3 + 0.0) / 4)
    assert m["n_clips"] == 6
    assert m["per_class"]["air"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["air"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["siren"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["bark"]["support"] == 2


def test_confusion_matrix_keeps_absent_classes() -> None:
    m = classification_metrics(SMALL_TRUE, SMALL_PRED, SMALL_NAMES)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["per_class"]["drill"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_metrics_are_plain_json() -> None:
    m = classification_metrics(np.array(SMALL_TRUE), np.array(SMALL_PRED), SMALL_NAMES)
    assert json.loads(json.dumps(m)) == m
    assert type(m["accuracy"]) is float and type(m["per_class"]["air"]["support"]) is int


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ConfigError):
        classification_metrics([0, 1], [0], SMALL_NAMES)
    with pytest.raises(ConfigError):
        classification_metrics([0, 4], [0, 1], SMALL_NAMES)


# ---------------------------------------------------------------- plots


def test_row_normalise_rows_sum_to_one_and_empty_rows_stay_zero() -> None:
    shares = row_normalise([[2, 1, 1], [0, 0, 0], [0, 3, 1]])
    np.testing.assert_allclose(shares[0], [0.5, 0.25, 0.25])
    np.testing.assert_array_equal(shares[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(shares.sum(axis=1), [1.0, 0.0, 1.0])


def test_row_normalise_rejects_non_square() -> None:
    with pytest.raises(ConfigError):
        row_normalise([[1, 2, 3], [4, 5, 6]])


def test_plot_history_writes_png(tmp_path: Path) -> None:
    path = plot_history(_history(), tmp_path / RunFolder.HISTORY_PLOT, test_accuracy=0.712, kept_epoch=6)
    assert path == tmp_path / RunFolder.HISTORY_PLOT
    _assert_png(path, min_width=800, min_height=400)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RunFolder.HISTORY_PLOT]


def _kept_markers(figure: object) -> list[tuple[float, str]]:
    """(x, label) of every vertical line labelled "kept..." on the figure's axes."""
    return [
        (line.get_xdata()[0], line.get_label())
        for ax in figure.axes
        for line in ax.get_lines()
        if line.get_label().startswith("kept")
    ]


@pytest.mark.parametrize(
    ("kept_epoch", "kept_by", "reason"),
    [(6, "last", "the last epoch"), (4, "val_accuracy", "best validation accuracy")],
)
def test_history_figure_marks_the_kept_epoch_not_the_best(kept_epoch: int, kept_by: str, reason: str) -> None:
    # Validation accuracy peaks at epoch 4 (61 %); a run that keeps the last epoch must show epoch 6.
    figure = history_figure(_history(), test_accuracy=0.6, kept_epoch=kept_epoch, kept_by=kept_by)
    markers = _kept_markers(figure)
    assert [x for x, _ in markers] == [kept_epoch, kept_epoch]  # on the loss and the accuracy panel
    accuracy = _history()[kept_epoch - 1]["val_accuracy"]
    assert markers[0][1] == f"kept: epoch {kept_epoch} ({reason}), validation {accuracy:.1%}"
    assert "validation" in figure.get_suptitle() and "Training" in figure.get_suptitle()


def test_class_examples_have_a_frequency_axis_in_hz_and_a_db_colour_bar() -> None:
    sample_rate = 22_050
    features = FeatureConfig(n_mels=64)
    band_hz = band_frequencies(features, sample_rate)
    example = ClassExample(
        class_name="siren",
        file_name="1-0-0-0.wav",
        waveform=np.zeros(sample_rate, dtype=np.float32),
        sample_rate=sample_rate,
        spectrograms={"log-mel": np.linspace(-80, 0, 64 * 20).reshape(64, 20)},
        hop_length=1024,
        band_hz={"log-mel": band_hz},
    )
    figure = class_examples_figure([example])
    spectrogram_ax, colour_bar = figure.axes[1], figure.axes[2]
    assert spectrogram_ax.get_ylabel() == "frequency (Hz)"
    labels = [t.get_text() for t in spectrogram_ax.get_yticklabels()]
    assert "1k" in labels and "10k" in labels and "20k" not in labels  # Nyquist is 11,025 Hz
    # 1 kHz sits where the mel bands reach 1 kHz (band centres are not evenly spaced in Hz).
    position = spectrogram_ax.get_yticks()[labels.index("1k")]
    assert band_hz[int(position - 0.5)] <= 1000 <= band_hz[int(position + 0.5)]
    assert colour_bar.yaxis.get_major_formatter()(-40.0) == "-40 dB"


def test_plot_confusion_matrix_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 30, size=(10, 10)) + np.diag(np.full(10, 80))
    confusion[4] = 0  # a class with no test clips
    path = plot_confusion_matrix(confusion.tolist(), URBANSOUND_CLASSES, tmp_path / "cm.png", title="fold 10")
    _assert_png(path, min_width=800, min_height=800)


def test_plot_confusion_matrix_needs_one_name_per_class(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "cm.png")
    assert not any(tmp_path.iterdir())


def test_plot_class_examples_writes_png(tmp_path: Path) -> None:
    sample_rate, hop_length = 8000, 256
    rng = np.random.default_rng(0)
    examples = [
        ClassExample(
            class_name=name,
            file_name=f"{100 + i}-0-0-0.wav",
            waveform=rng.standard_normal(sample_rate * 2).astype(np.float32) * 0.1,
            sample_rate=sample_rate,
            spectrograms={
                "log-mel": rng.uniform(-80, 0, size=(64, 63)),
                "gammatonegram": rng.uniform(-80, 0, size=(64, 63)),
            },
            hop_length=hop_length,
        )
        for i, name in enumerate(URBANSOUND_CLASSES[:3])
    ]
    path = plot_class_examples(examples, tmp_path / "examples.png")
    _assert_png(path, min_width=1200, min_height=600)


def test_plots_module_leaves_pyplot_alone() -> None:
    code = (
        "import sys, urbansound.evaluation.plots as p, numpy as np, tempfile, pathlib\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "p.plot_confusion_matrix([[1, 0], [0, 1]], ['a', 'b'], d / 'cm.png')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---------------------------------------------------------------- atomic writes


def test_atomic_writes_replace_content_and_leave_no_temp_files(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "old")
    atomic_write_text(tmp_path / "a.txt", "new ü")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"z": 1, "a": [1, 2]})
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "new ü"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    text = (tmp_path / "c.json").read_text()
    assert json.loads(text) == {"z": 1, "a": [1, 2]}
    assert text.index('"z"') < text.index('"a"')  # insertion order, not sorted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json"]


def test_atomic_write_json_keeps_old_file_when_serialisation_fails(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"accuracy": 0.5})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"accuracy": object()})
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_cleans_up_when_replace_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.md"
    path.write_text("old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    atomic_write_text(path, "x")
    assert path.stat().st_mode & 0o044  # readable by others, not NamedTemporaryFile's 0600


# ---------------------------------------------------------------- report


def test_report_ties_the_run_together(tmp_path: Path) -> None:
    y_true = [i % 10 for i in range(40)]
    y_pred = [t if i % 4 else (t + 1) % 10 for i, t in enumerate(y_true)]
    test = classification_metrics(y_true, y_pred, URBANSOUND_CLASSES)
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "val_accuracy": 0.61,
        "best_epoch": 4,
        "split": {"description": "test fold 10", "sizes": {"train": 7079, "val": 816, "test": 837}},
        "test": test,
    }
    config = RunConfig(data_dir="/data/UrbanSound8K/audio").to_dict()

    path = write_report(tmp_path, config, metrics, _history())
    assert path == tmp_path / "report.md"
    text = path.read_text(encoding="utf-8")

    assert f"{test['accuracy']:.1%}" == "75.0%"
    assert "75.0%" in text
    assert "test fold 10" in text
    assert "61.0%" in text and "4" in text
    assert "7079" in text and "816" in text and "837" in text
    assert "`cnn`" in text and "`mel_spec`" in text
    for name in URBANSOUND_CLASSES:
        assert f"| {name} |" in text
    linked = {name for name, _ in RUN_FILES}
    assert linked == {
        "train_val_loss_accuracy.png",
        "confusion_matrix.png",
        "reliability.png",
        "test_predictions.csv",
        "metrics.json",
        "history.csv",
        "config.json",
        "train.log",
    }
    for name in linked:
        assert f"[{name}]({name})" in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_report_names_recipe_and_augmentation_and_the_split_once(tmp_path: Path) -> None:
    test = classification_metrics([0, 1, 2], [0, 1, 1], URBANSOUND_CLASSES)
    metrics = {
        "test_accuracy": test["accuracy"],
        "best_epoch": 3,
        "split": {
            "description": "test fold 10, validation fold 9",
            "sizes": {"train": 9, "val": 3, "test": 3},
        },
        "test": test,
    }
    config = apply_recipe(RunConfig(), "default")
    text = write_report(tmp_path, config.to_dict(), metrics, _history(3)).read_text()
    assert "- **Recipe:** `default`" in text
    variants = config.augment.variants
    assert f"- **Augmentation:** {variants} precomputed variants per training clip" in text
    assert text.count("test fold 10, validation fold 9") == 1

    plain = write_report(tmp_path, RunConfig().to_dict(), metrics, _history(3)).read_text()
    assert "- **Recipe:** none" in plain and "- **Augmentation:** none" in plain


def test_report_survives_sparse_inputs(tmp_path: Path) -> None:
    text = write_report(tmp_path, {}, {"test_accuracy": 0.5}, []).read_text()
    assert "50.0%" in text and "n/a" in text


def test_report_lists_tensorboard_only_when_the_run_wrote_it() -> None:
    link = f"- [{RunFolder.TENSORBOARD}/]({RunFolder.TENSORBOARD}/): "
    metrics = {"test_accuracy": 0.5}
    plain = render_report("run", RunConfig().to_dict(), metrics, [])
    assert RunFolder.TENSORBOARD not in plain
    logged = render_report("run", RunConfig(tensorboard=True).to_dict(), metrics, [])
    assert link in logged
    files = logged.split("## Files", 1)[1]
    assert files.index(f"[{RunFolder.LOG}]") < files.index(link)  # after the files every run has
