"""K-fold cross-validation over the dataset's official folds (10 for UrbanSound8K, 5 for ESC-50).

Each fold is the test fold once. Model selection (best epoch, early stopping) uses the next fold
(``f % n + 1``, the usual convention) or, with ``val_fraction``, a recording-grouped share of the training
folds; never the test fold. Every fold is an ordinary run folder inside the cross-validation folder, so a
fold can be inspected, resumed or compared like any run::

    <out_dir>/crossval_config.json (settings and folds), crossval.json (summary), crossval.md,
        confusion_matrix.png
    <out_dir>/fold01/ config.json, checkpoint.pt, metrics.json, model.safetensors, ...

(File names: :class:`~urbansound.training.run_folder.RunFolder`. Folders written before the settings had
their own file kept them in ``config.json``; those still resume.)

Resuming skips folds that have ``metrics.json``, continues a fold that has a checkpoint from its last
completed epoch, and starts the rest. Features are cached per clip, and every fold uses the same clip list,
so they are computed (and packed) once for all folds.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from urbansound.config import RunConfig
from urbansound.errors import ConfigError, DataError
from urbansound.evaluation.metrics import classification_metrics
from urbansound.evaluation.plots import plot_confusion_matrix
from urbansound.io_utils import atomic_write_text
from urbansound.training.run import resume as resume_run
from urbansound.training.run import train
from urbansound.training.run_folder import RunFolder

logger = logging.getLogger(__name__)


def fold_dir(out_dir: Path, fold: int) -> Path:
    return RunFolder(out_dir).fold_folder(fold).path


def validation_fold(test_fold: int, present: list[int]) -> int:
    """The fold after ``test_fold`` among ``present`` folds, wrapping around (10 -> 1)."""
    later = [f for f in present if f > test_fold]
    candidates = later or [f for f in present if f < test_fold]
    if not candidates:
        raise ConfigError(f"fold {test_fold} is the only fold: nothing to validate on (use --val-fraction)")
    return candidates[0]


def fold_config(config: RunConfig, test_fold: int, present: list[int]) -> RunConfig:
    """``config`` with the split set for ``test_fold``: train on every other present fold."""
    config = copy.deepcopy(config)
    config.split.method = "folds"
    config.split.test_fold = test_fold
    config.split.train_folds = None
    config.split.val_fold = (
        None if config.split.val_fraction is not None else validation_fold(test_fold, present)
    )
    config.name = f"fold{test_fold:02d}"
    return config


def crossval(
    config: RunConfig,
    folds: list[int] | None = None,
    out_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Run (or resume) cross-validation and return its folder.

    Args:
        config: the settings of every fold; its split's test/validation/training folds are replaced.
        folds: the test folds to run (default: every fold present in the data).
        out_dir: the cross-validation folder (default: a new folder under ``config.runs_dir``).
        resume: continue the cross-validation in ``out_dir`` with the configuration saved there.

    Raises:
        ConfigError: a requested fold is absent from the data, or ``resume`` without a saved configuration.
    """
    from urbansound.data.datasets import load_dataset

    if resume:
        saved = RunFolder(out_dir).read_crossval_settings() if out_dir is not None else None
        if saved is None:
            raise ConfigError(
                f"{out_dir}: not a cross-validation folder (no {RunFolder.CROSSVAL_SETTINGS}) to resume"
            )
        config = RunConfig.from_dict(saved[0])
        folds = folds or saved[1]
    config.validate()
    index = load_dataset(config.annotations, config.data_dir, layout=config.layout, skip_bad=config.skip_bad)
    present = index.folds
    folds = folds or present
    missing = [f for f in folds if f not in present]
    if missing:
        raise ConfigError(f"fold(s) {missing} have no clips; folds present: {present}")
    if out_dir is None:
        base = copy.deepcopy(config)
        base.name = f"crossval-{config.name}"
        out_dir = RunFolder.create(base.runs_dir, base.name).path
    out_dir.mkdir(parents=True, exist_ok=True)
    if RunFolder(out_dir).read_crossval_settings() is None:
        RunFolder(out_dir).write_crossval_settings(config, folds)

    for fold in folds:
        run_dir = fold_dir(out_dir, fold)
        if RunFolder(run_dir).is_finished():
            logger.info("fold %d: done already, skipped", fold)
            continue
        if RunFolder(run_dir).can_resume():
            logger.info("fold %d: resuming from its checkpoint", fold)
            resume_run(run_dir, progress=progress)
            continue
        logger.info("fold %d of %s: test fold %d", folds.index(fold) + 1, folds, fold)
        train(fold_config(config, fold, present), progress=progress, run_dir=run_dir)
    summarise(out_dir, folds)
    return out_dir


def summarise(out_dir: Path, folds: list[int]) -> dict[str, Any]:
    """Collect the folds' metrics into ``crossval.json``, ``crossval.md`` and ``confusion_matrix.png``."""
    rows, confusion, names = [], None, None
    for fold in folds:
        folder = RunFolder(fold_dir(out_dir, fold))
        if not folder.is_finished():
            raise DataError(f"{folder.metrics_path}: fold {fold} has not finished")
        metrics = folder.read_metrics()
        names = metrics.class_names
        matrix = np.asarray(metrics.test["confusion_matrix"], dtype=np.int64)
        confusion = matrix if confusion is None else confusion + matrix
        rows.append(
            {
                "fold": fold,
                "test_accuracy": metrics.test_accuracy,
                "test_macro_f1": metrics.test_macro_f1,
                "val_accuracy": metrics.val_accuracy,
                "best_epoch": metrics.best_epoch,
                "epochs_run": metrics.epochs_run,
                "n_test": metrics.test["n_clips"],
                "wall_seconds": metrics.wall_seconds,
            }
        )
    assert confusion is not None and names is not None
    accuracies = [r["test_accuracy"] for r in rows]
    f1s = [r["test_macro_f1"] for r in rows]
    # Pooled per-class scores from the summed confusion matrix: every clip counted once, as tested.
    true = np.repeat(np.arange(len(names)), confusion.sum(axis=1))
    pred = np.concatenate([np.repeat(np.arange(len(names)), row) for row in confusion])
    pooled = classification_metrics(true.tolist(), pred.tolist(), names)
    summary = {
        "folds": rows,
        "accuracy_mean": statistics.fmean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(rows) > 1 else 0.0,
        "macro_f1_mean": statistics.fmean(f1s),
        "macro_f1_std": statistics.stdev(f1s) if len(rows) > 1 else 0.0,
        "pooled_accuracy": pooled["accuracy"],
        "pooled_macro_f1": pooled["macro_f1"],
        "per_class_f1": {name: pooled["per_class"][name]["f1"] for name in names},
        "confusion_matrix": confusion.tolist(),
        "class_names": names,
    }
    RunFolder(out_dir).write_crossval_summary(summary)
    plot_confusion_matrix(
        summary["confusion_matrix"],
        names,
        out_dir / RunFolder.CONFUSION_PLOT,
        title=f"summed over test folds {','.join(map(str, folds))}",
    )
    text = render_summary(summary)
    atomic_write_text(out_dir / RunFolder.CROSSVAL_REPORT, text)
    logger.info("cross-validation summary:\n%s", text)
    return summary


def render_summary(summary: dict[str, Any]) -> str:
    """Markdown: per-fold table, mean +- std, per-class F1 of the pooled predictions."""
    lines = [
        "# Cross-validation",
        "",
        "| test fold | accuracy | macro-F1 | val accuracy | best epoch | epochs | test clips |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["folds"]:
        lines.append(
            f"| {r['fold']} | {100 * r['test_accuracy']:.1f}% | {r['test_macro_f1']:.3f} | "
            f"{100 * r['val_accuracy']:.1f}% | {r['best_epoch']} | {r['epochs_run']} | {r['n_test']} |"
        )
    accuracies = [r["test_accuracy"] for r in summary["folds"]]
    f1s = [r["test_macro_f1"] for r in summary["folds"]]
    spread = "mean ± sample std" if len(accuracies) > 1 else "one fold: no spread to show"
    lines += [
        "",
        f"**Accuracy {_mean_std(accuracies, 100, '.1f', '%')}**, macro-F1 {_mean_std(f1s, 1, '.3f', '')} "
        f"({spread} over {len(accuracies)} fold(s)).",
        "",
        "## Per-class F1 (all test folds pooled)",
        "",
        "| class | F1 |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {f1:.3f} |" for name, f1 in summary["per_class_f1"].items()]
    lines += ["", "![summed confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "kwargs":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Settings that name where a run lives rather than how it was trained.
# Where runs and caches were written says nothing about the model; the data paths (annotations, data_dir)
# are kept: runs on other data are not comparable, and the table shows it.
_IGNORED_KEYS = {"name", "runs_dir", "cache_dir", "recipe"}


def _mean_std(values: list[float], scale: float, number: str, unit: str) -> str:
    """``mean ± sample std`` of ``values`` (times ``scale``); a single value alone, as it has no spread."""
    mean = f"{scale * statistics.fmean(values):{number}}{unit}"
    if len(values) < 2:
        return mean
    return f"{mean} ± {scale * statistics.stdev(values):{number}}"


def compare_runs(paths: list[Path]) -> str:
    """Markdown putting runs or cross-validations side by side: test accuracy per fold, mean ± std, and
    the settings that differ between them."""
    if len(paths) < 1:
        raise ConfigError("name at least one run or cross-validation folder")
    columns: list[tuple[str, dict[int, float], dict[int, float], dict[str, Any]]] = []
    for path in paths:
        folder = RunFolder(path)
        settings = folder.read_crossval_settings() if folder.is_crossval() else None
        if settings is not None:
            summary = folder.read_crossval_summary()
            config = settings[0]
            acc = {r["fold"]: r["test_accuracy"] for r in summary["folds"]}
            f1 = {r["fold"]: r["test_macro_f1"] for r in summary["folds"]}
        elif folder.is_finished():
            metrics = folder.read_metrics()
            config = folder.read_config().to_dict()
            fold = config["split"]["test_fold"] if config["split"]["method"] == "folds" else 0
            acc, f1 = {fold: metrics.test_accuracy}, {fold: metrics.test_macro_f1}
        else:
            raise DataError(f"{path}: neither a finished run ({RunFolder.METRICS}) nor a cross-validation")
        columns.append((path.name, acc, f1, _flatten(config)))
    folds = sorted({f for _, acc, _, _ in columns for f in acc})
    header = "| test fold | " + " | ".join(name for name, *_ in columns) + " |"
    lines = ["# Comparison", "", header, "|---:|" + "---:|" * len(columns)]
    for fold in folds:
        cells = [f"{100 * acc[fold]:.1f}%" if fold in acc else "–" for _, acc, _, _ in columns]
        lines.append(f"| {fold or 'random'} | " + " | ".join(cells) + " |")

    lines.append(
        "| **accuracy** | "
        + " | ".join(_mean_std(list(a.values()), 100, ".1f", "%") for _, a, _, _ in columns)
        + " |"
    )
    lines.append(
        "| **macro-F1** | "
        + " | ".join(_mean_std(list(f.values()), 1, ".3f", "") for _, _, f, _ in columns)
        + " |"
    )
    tested = {name: sorted(acc) for name, acc, _, _ in columns}
    if len({tuple(folds) for folds in tested.values()}) > 1:
        listing = "; ".join(
            f"{name}: {', '.join(str(f) if f else 'random split' for f in folds)}"
            for name, folds in tested.items()
        )
        logger.warning(
            "the runs were tested on different folds (%s): their accuracies are not comparable", listing
        )
        lines += [
            "",
            f"**Warning:** the runs were tested on different folds ({listing}); compare them fold by fold.",
        ]
    keys = sorted({k for *_, flat in columns for k in flat} - _IGNORED_KEYS)
    differing = [
        k for k in keys if len({json.dumps(flat.get(k), sort_keys=True) for *_, flat in columns}) > 1
    ]
    lines += ["", "## Settings that differ", ""]
    if not differing:
        lines.append("None: the runs share every setting.")
    else:
        lines += ["| setting | " + " | ".join(name for name, *_ in columns) + " |"]
        lines += ["|---|" + "---|" * len(columns)]
        for key in differing:
            cells = [json.dumps(flat.get(key)) for *_, flat in columns]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
