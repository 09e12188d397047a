"""A short markdown report that ties a run folder together: what was trained, on which split, how well.

Example::

    write_report(run_dir, config.to_dict(), metrics, history)  # -> run_dir / "report.md"
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from urbansound.config import SELECT_EPOCH_TEXT
from urbansound.io_utils import atomic_write_bytes, atomic_write_text
from urbansound.training.run_folder import RunFolder

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_report"]

logger = logging.getLogger(__name__)

# Files a run folder holds, linked from the report (relative links, so the folder can be moved).
RUN_FILES = (
    (RunFolder.HISTORY_PLOT, "training and validation loss and accuracy per epoch, the kept epoch marked"),
    (RunFolder.CONFUSION_PLOT, "row-normalised test confusion matrix"),
    (RunFolder.RELIABILITY_PLOT, "test reliability diagram before and after temperature scaling"),
    (RunFolder.TEST_PREDICTIONS, "each test clip's true and predicted class and class probabilities"),
    (RunFolder.METRICS, "all metrics, including the raw confusion matrix"),
    (RunFolder.HISTORY, "per-epoch losses and accuracies"),
    (RunFolder.CONFIG, "the resolved configuration of this run"),
    (RunFolder.LOG, "the run's log, every progress line as printed"),
)
# Listed only for runs with ``--tensorboard`` (config ``tensorboard``), the only ones that write it.
TENSORBOARD_FILES = (
    f"{RunFolder.TENSORBOARD}/",
    "TensorBoard event files: per-epoch curves and the test confusion matrix (`tensorboard --logdir` it)",
)


def write_report(
    run_dir: Path,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
) -> Path:
    """Write ``run_dir / "report.md"`` atomically and return its path.

    Args:
        run_dir: the run folder (must exist).
        config: resolved run configuration as a nested dict (``model``, ``features``, ``training``,
            ``audio``, ``split``, data paths either top-level or under ``data``); missing keys are skipped.
        metrics: ``test_accuracy``, ``test_macro_f1``, ``val_accuracy``, ``best_epoch``, ``split``
            (``{"description": str, "sizes": {"train", "val", "test"}}``) and ``test`` (the output of
            ``classification_metrics``); missing keys are reported as "n/a".
        history: one row per epoch (``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
            ``val_accuracy``).

    Returns:
        Path of the written report.
    """
    run_dir = Path(run_dir)
    path = run_dir / RunFolder.REPORT
    atomic_write_text(path, render_report(run_dir.name, config, metrics, history))
    logger.info("wrote %s", path)
    return path


def render_report(
    run_name: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
) -> str:
    """The markdown text of :func:`write_report` (pure, for testing and previews)."""
    model = _section(config, "model")
    features = _section(config, "features")
    training = _section(config, "training")
    audio = _section(config, "audio")
    data = _section(config, "data")
    split = metrics.get("split") or {}
    split_description = str(split.get("description") or "test split")
    sizes = split.get("sizes") or {}

    lines = [f"# Run report: {run_name}", "", "## What was trained", ""]
    recipe = config.get("recipe")
    lines.append(
        f"- **Recipe:** `{recipe}` (flags given explicitly override it; {RunFolder.CONFIG} has every setting)"
        if recipe
        else f"- **Recipe:** none (settings from a configuration file or flags; see {RunFolder.CONFIG})"
    )

    model_name = model.get("name", "n/a")
    model_kwargs = model.get("kwargs") or {}
    options = ", ".join(f"{k}={v}" for k, v in model_kwargs.items())
    lines.append(f"- **Model:** `{model_name}`" + (f" ({options})" if options else ""))
    ensemble = metrics.get("ensemble") or {}
    if ensemble:
        seeds = ensemble.get("seeds") or []
        member_test = ensemble.get("member_test_accuracy") or []
        lines.append(
            f"- **Seed ensemble:** {ensemble.get('members', len(seeds))} members (seeds "
            f"{', '.join(map(str, seeds))}), class probabilities averaged; each member alone scores "
            f"{' / '.join(_percent(a) for a in member_test)} on the test set"
        )

    feature_bits = [
        f"{features['n_mels']} bands" if "n_mels" in features else None,
        f"n_fft {features['n_fft']}" if "n_fft" in features else None,
        f"hop {features['hop_length']} samples" if "hop_length" in features else None,
    ]
    sample_rate = audio.get("sample_rate", data.get("sample_rate"))
    if sample_rate is not None:
        feature_bits.append(f"at {sample_rate} Hz")
    described = ", ".join(bit for bit in feature_bits if bit)
    lines.append(
        f"- **Features:** `{features.get('kind', 'n/a')}`" + (f" ({described})" if described else "")
    )

    configured = training.get("epochs")
    epochs_line = f"- **Epochs:** {len(history)} run"
    if configured is not None and configured != len(history):
        epochs_line += f" (of {configured} configured)"
    training_bits = [
        f"batch size {training['batch_size']}" if "batch_size" in training else None,
        f"peak learning rate {training['max_lr']}" if "max_lr" in training else None,
        f"seed {training['seed']}" if "seed" in training else None,
    ]
    extra = ", ".join(bit for bit in training_bits if bit)
    lines.append(epochs_line + (f"; {extra}" if extra else ""))
    lines.append(f"- **Augmentation:** {augmentation_text(_section(config, 'augment'))}")

    size_text = ", ".join(f"{part} {sizes[part]}" for part in ("train", "val", "test") if part in sizes)
    lines.append(f"- **Split:** {split_description}" + (f" (clips: {size_text})" if size_text else ""))
    data_dir = data.get("data_dir") or config.get("data_dir")
    if data_dir:
        lines.append(f"- **Data:** `{data_dir}`")

    lines += _results_lines(metrics, training, history)
    lines += _files_lines(tensorboard=bool(config.get("tensorboard")))
    return "\n".join(lines)


def _results_lines(
    metrics: Mapping[str, Any],
    training: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
) -> list[str]:
    """The report's results: test scores, the kept epoch, per-class scores (the split is named above)."""
    test = metrics.get("test") or {}
    best_epoch = metrics.get("best_epoch")
    val_accuracy = metrics.get("val_accuracy")
    if val_accuracy is None and best_epoch is not None:
        val_accuracy = next(
            (row.get("val_accuracy") for row in history if row.get("epoch") == best_epoch), None
        )
    n_clips = test.get("n_clips")
    lines = [
        "",
        "## Results",
        "",
        f"- **Test accuracy:** {_percent(metrics.get('test_accuracy'))}"
        + (f" on {n_clips} clips" if n_clips is not None else ""),
        f"- **Test macro-F1:** {_fixed(metrics.get('test_macro_f1'))}",
        f"- **Epoch kept ({SELECT_EPOCH_TEXT.get(training.get('select_epoch', 'val_accuracy'), 'n/a')}):** "
        f"{best_epoch if best_epoch is not None else 'n/a'}, validation accuracy {_percent(val_accuracy)}",
    ]
    calibration = metrics.get("calibration")
    if calibration:
        lines.append(
            f"- **Calibration:** temperature {calibration['temperature']:.2f} fitted on the "
            f"{calibration['fitted_on']}; test expected calibration error "
            f"{_percent(calibration['test_ece_before'])} before, "
            f"{_percent(calibration['test_ece_after'])} after "
            f"([{RunFolder.RELIABILITY_PLOT}]({RunFolder.RELIABILITY_PLOT}))"
        )

    per_class = test.get("per_class") or {}
    if per_class:
        lines += [
            "",
            "### Per class (test set)",
            "",
            "| class | precision | recall | F1 | clips |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, scores in per_class.items():
            lines.append(
                f"| {_cell(name)} | {_fixed(scores.get('precision'))} | {_fixed(scores.get('recall'))} "
                f"| {_fixed(scores.get('f1'))} | {scores.get('support', 'n/a')} |"
            )

    return lines


def _files_lines(tensorboard: bool = False) -> list[str]:
    """Links to the run folder's files (``tensorboard/`` when the run wrote it) and the two plots."""
    lines = ["", "## Files", ""]
    files = (*RUN_FILES, TENSORBOARD_FILES) if tensorboard else RUN_FILES
    lines += [f"- [{name}]({name}): {what}" for name, what in files]
    lines += [
        "",
        f"![Training history]({RunFolder.HISTORY_PLOT})",
        "",
        f"![Confusion matrix]({RunFolder.CONFUSION_PLOT})",
        "",
    ]
    return lines


def augmentation_text(augment: Mapping[str, Any]) -> str:
    """What augmentation a run used, in words (``config["augment"]``), or "none"."""
    parts = []
    if augment.get("variants"):
        kinds = [
            name
            for key, name in (
                ("time_stretch", "time stretch"),
                ("pitch_shift", "pitch shift"),
                ("time_shift", "time shift"),
                ("gain_db", "gain"),
                ("noise_snr_db", "white noise"),
            )
            if augment.get(key)
        ]
        parts.append(
            f"{augment['variants']} precomputed variants per training clip ({', '.join(kinds)}), "
            "one version drawn per clip and epoch"
        )
    if augment.get("freq_masks") or augment.get("time_masks"):
        masks = f"{augment.get('freq_masks', 0)} frequency, {augment.get('time_masks', 0)} time masks"
        parts.append(f"SpecAugment ({masks})")
    if augment.get("mixup_alpha"):
        parts.append(f"mixup (alpha {augment['mixup_alpha']}, {augment.get('mixup_domain', 'n/a')} domain)")
    if augment.get("filter_gain_db"):
        parts.append(f"FilterAugment (up to +-{augment['filter_gain_db']} dB)")
    return "; ".join(parts) if parts else "none"


def _section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``config[key]`` if it is a mapping, else an empty one."""
    value = config.get(key)
    return value if isinstance(value, Mapping) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _percent(value: Any) -> str:
    """A share in 0..1 as a percentage with one decimal, or "n/a"."""
    return f"{value:.1%}" if _is_number(value) else "n/a"


def _fixed(value: Any) -> str:
    return f"{value:.3f}" if _is_number(value) else "n/a"


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
