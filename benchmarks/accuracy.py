"""Honest accuracy of each model and recipe on the real UrbanSound8K folds, written to accuracy.md.

Every row trains on one fold (20% of its recordings, grouped by fsID, held out for model selection) and
tests once on another fold: fold 1 -> fold 2 and fold 2 -> fold 1. Results are appended to
``accuracy.jsonl`` as each run finishes, so the (slow, CPU-bound) matrix can be built over several sessions;
``accuracy.md`` is re-rendered from all results so far, listing the rows still missing.

Usage::

    python benchmarks/accuracy.py --root /tmp/us8k/UrbanSound8K --only default-1to2 seed-1to2
    python benchmarks/accuracy.py --render-only
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from select_recipe import apply_overrides, ensemble_scores

from urbansound.config import RunConfig, SplitConfig, apply_recipe
from urbansound.training.run import train
from urbansound.training.run_folder import RunFolder

HERE = Path(__file__).resolve().parent
# The validation hold-out the current rows use (urbansound.data.splits.grouped_holdout). Entries recorded
# before it existed used the first fold of one StratifiedGroupKFold shuffle, which on fold 1 held out 66% of
# jackhammer; they are shown apart, as an archive.
HOLDOUT = "best-stratified"
RESULTS = HERE / "accuracy.jsonl"
REPORT = HERE / "accuracy.md"


@dataclass
class Row:
    """One benchmark configuration: a recipe plus overrides (section -> field -> value)."""

    name: str
    recipe: str
    description: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Seed-ensemble members; None keeps the recipe's. Rows other than `default` compare single models.
    members: int | None = 1


SBCNN = {"name": "sbcnn", "kwargs": {"batch_norm": True}}
CRNN = {"name": "crnn", "kwargs": {}}
RESNET = {"name": "resnet", "kwargs": {}}
NO_AUG = {"variants": 0, "freq_masks": 0, "time_masks": 0, "mixup_alpha": 0.0}
# Rows run in this order (the most informative first). All but `seed` start from the default recipe, so they
# share its training (dB re each clip's maximum, last epoch kept, AdamW cosine, 25 epochs) unless overridden.
FIRST_DEFAULT = {"features": {"db_reference": "absolute"}, "training": {"select_epoch": "val_accuracy"}}
ROWS = [
    Row("seed", "seed", "cnn, 64 mel @ 44.1 kHz, Adam one-cycle, best val epoch (the seed's settings)"),
    Row(
        "default",
        "default",
        "the default recipe, as `urbansound train` runs it (see the notes for its settings)",
        members=None,
    ),
    Row(
        "default-25ep",
        "default",
        "the default recipe with 25 epochs (its schedule before round 6 of select_recipe_notes.md)",
        {"training": {"epochs": 25}},
        members=None,
    ),
    Row(
        "default-50ep",
        "default",
        "the default recipe with 50 epochs (its schedule between rounds 6 and 7 of select_recipe_notes.md)",
        {"training": {"epochs": 50}},
        members=None,
    ),
    Row(
        "default-x3",
        "default",
        "the default recipe, seeds 0, 1 and 2 (`--ensemble 3`): their average; each seed alone below",
        members=3,
    ),
    Row(
        "single",
        "default",
        "one resnet 16-32-64-128, 128 mel @ 22.05 kHz re clip max, augmentation, last epoch",
    ),
    Row(
        "first-default",
        "default",
        "default, but absolute dB and the best validation epoch (as the first session's default, which had 4 "
        "variants)",
        FIRST_DEFAULT,
    ),
    Row("default-noaug", "default", "default without augmentation", {"augment": NO_AUG}),
    Row("crnn-aug", "default", "crnn (conv + BiGRU + attention), default otherwise", {"model": CRNN}),
    Row("sbcnn-aug", "default", "sbcnn+BN, default otherwise", {"model": SBCNN}),
    Row(
        "default-gammatone",
        "default",
        "default with 128 gammatone bands",
        {"features": {"kind": "gammatone"}},
    ),
    Row("cnn-aug", "default", "the seed's cnn, default otherwise", {"model": {"name": "cnn", "kwargs": {}}}),
    Row("crnn-noaug", "default", "crnn without augmentation", {"model": CRNN, "augment": NO_AUG}),
    Row("sbcnn-noaug", "default", "sbcnn+BN without augmentation", {"model": SBCNN, "augment": NO_AUG}),
    Row(
        "resnet-aug", "default", "half-width ResNet-18 (32-64-128-256), default otherwise", {"model": RESNET}
    ),
    Row(
        "resnet-noaug",
        "default",
        "half-width ResNet-18 without augmentation",
        {"model": RESNET, "augment": NO_AUG},
    ),
]
SPLITS = {"1to2": (1, 2), "2to1": (2, 1)}


def dev_split_config(
    root: Path, work: Path, train_fold: int, test_fold: int, name: str, recipe: str = "default"
) -> RunConfig:
    """``recipe`` on the DEV split: train on ``train_fold`` with 20% of its recordings held out for
    validation, test on ``test_fold``; runs and feature cache under ``work``."""
    config = RunConfig(
        annotations=str(root / "metadata" / "UrbanSound8K.csv"),
        data_dir=str(root / "audio"),
        split=SplitConfig(train_folds=[train_fold], test_fold=test_fold, val_fraction=0.2),
        runs_dir=str(work / "runs"),
        cache_dir=str(work / "cache"),
        name=f"{name}-{train_fold}to{test_fold}",
    )
    return apply_recipe(config, recipe)


def make_config(row: Row, train_fold: int, test_fold: int, root: Path, work: Path) -> RunConfig:
    config = dev_split_config(root, work, train_fold, test_fold, row.name, row.recipe)
    if row.members is not None:
        config.model.ensemble = row.members
    apply_overrides(config, row.overrides)
    return config


def load_results(holdout: str = HOLDOUT) -> dict[str, dict[str, Any]]:
    """Entries measured with ``holdout`` (``"first-fold"``: the earlier ones), by key; the last one wins."""
    results: dict[str, dict[str, Any]] = {}
    if RESULTS.is_file():
        for line in RESULTS.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if entry.get("holdout", "first-fold") == holdout:
                    results[entry["key"]] = entry
    return results


def record(
    key: str,
    metrics: dict[str, Any],
    seconds: float,
    config: dict[str, Any],
    by_members: list[float] | None = None,
) -> dict[str, Any]:
    """Append one finished run to accuracy.jsonl (with a seed ensemble's test accuracy for its first k
    members, k = 1..members, when given)."""
    entry = {
        "key": key,
        "holdout": HOLDOUT,
        **{k: metrics[k] for k in ("test_accuracy", "test_macro_f1", "val_accuracy", "best_epoch")},
        "epochs_run": metrics["epochs_run"],
        "wall_seconds": round(seconds, 1),
        "config": config,
    }
    if by_members and len(by_members) > 1:
        entry["ensemble_accuracy_by_members"] = by_members
    if metrics.get("ensemble"):
        entry["member_test_accuracy"] = metrics["ensemble"]["member_test_accuracy"]
        entry["member_seeds"] = metrics["ensemble"]["seeds"]
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return entry


def describe(config: dict[str, Any]) -> str:
    """A short description of an archived entry's settings, from its stored configuration."""
    model, features, augment = config["model"], config["features"], config["augment"]
    widths = model["kwargs"].get("widths")
    name = model["name"] + (f" {'-'.join(map(str, widths))}" if widths else "")
    aug = "augmentation" if augment["variants"] or augment["mixup_alpha"] else "no augmentation"
    return f"{name}, {features['n_mels']} {features['kind']}, {aug}"


def row_and_split(key: str) -> tuple[str, str]:
    """``"default-1to2"`` -> ``("default", "fold 1 → fold 2")``."""
    name, _, split = key.rpartition("-")
    train_fold, test_fold = SPLITS[split]
    return name, f"fold {train_fold} → fold {test_fold}"


def render(results: dict[str, dict[str, Any]], notes: str, archive: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Accuracy on the real UrbanSound8K folds",
        "",
        "Generated by `benchmarks/accuracy.py` from `accuracy.jsonl`. Each row trains on one fold (20% of",
        "its recordings held out by fsID for model selection, with the best-stratified hold-out of",
        "`urbansound.data.splits.grouped_holdout`) and tests once on the other fold; the test fold is never",
        "used for any choice. 25 epochs unless said. The epoch kept is the row's `select_epoch` (best",
        "validation accuracy unless said). Machine: 2 CPU cores; wall times include feature extraction",
        "when the cache was cold (the fifth session's rows ran on one thread beside another run).",
        "",
        "**Rows measured before the fifth session** (all but `default`, `default-25ep` and `default-50ep`)",
        'describe the default recipe as it was then: log-mel alone (no deltas) and 25 epochs; "default',
        "otherwise\" in them means that recipe. The `default` rows are today's (deltas, 100 epochs).",
        "",
        "| row | configuration | split | test acc. | test macro-F1 | val acc. | epoch kept | wall time |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    missing = []
    for row in ROWS:
        for split, (a, b) in SPLITS.items():
            entry = results.get(f"{row.name}-{split}")
            where = f"fold {a} → fold {b}"
            if entry is None:
                missing.append(f"{row.name} ({where})")
                continue
            lines.append(
                f"| {row.name} | {row.description} | {where} | {100 * entry['test_accuracy']:.1f}% | "
                f"{entry['test_macro_f1']:.3f} | {100 * entry['val_accuracy']:.1f}% | "
                f"{entry['best_epoch']} | {entry['wall_seconds'] / 60:.1f} min |"
            )
    curves = {
        key: e["ensemble_accuracy_by_members"]
        for key, e in results.items()
        if "ensemble_accuracy_by_members" in e
    }
    if curves:
        lines += [
            "",
            "Seed ensembles, test accuracy of the average of the first k members (members 1..k are exactly",
            "the `--ensemble k` model: member j trains with seed j - 1 on the same split and variants):",
            "",
            "| row | split | "
            + " | ".join(f"k = {k}" for k in range(1, max(map(len, curves.values())) + 1))
            + " |",
            "|---|---|" + "---:|" * max(map(len, curves.values())),
        ]
        for key, curve in curves.items():
            name, where = row_and_split(key)
            lines.append(f"| {name} | {where} | " + " | ".join(f"{100 * x:.1f}%" for x in curve) + " |")
    seeds = {key: e for key, e in results.items() if "member_test_accuracy" in e}
    if seeds:
        lines += [
            "",
            "Seed variance: each member of an ensemble row alone (a single model trained with that seed;",
            "seed 0 is exactly the single-model row of the same recipe):",
            "",
            "| row | split | seeds | test accuracy of each seed | mean ± std |",
            "|---|---|---|---|---:|",
        ]
        for key, entry in seeds.items():
            name, where = row_and_split(key)
            scores = [100 * x for x in entry["member_test_accuracy"]]
            mean = sum(scores) / len(scores)
            std = (sum((x - mean) ** 2 for x in scores) / max(len(scores) - 1, 1)) ** 0.5
            lines.append(
                f"| {name} | {where} | {', '.join(map(str, entry['member_seeds']))} | "
                + " / ".join(f"{x:.1f}%" for x in scores)
                + f" | {mean:.1f} ± {std:.1f}% |"
            )
    if missing:
        lines += ["", "**Not run** (CPU time ran out in this session; run the script with `--only`):", ""]
        lines += [f"- {m}" for m in missing]
    lines += ["", notes.strip(), ""]
    if archive:
        lines += [
            "## Archive: the earlier hold-out",
            "",
            "Measured in the first session with the first fold of one StratifiedGroupKFold shuffle as",
            "the validation hold-out (on fold 1 it held out 66% of jackhammer: 79 of the 201 validation",
            "clips were one recording). Row names are those of that session (its `default` was the",
            "quarter-width ResNet).",
            "",
            "| row | settings | split | test acc. | test macro-F1 | val acc. | best epoch |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for key, entry in archive.items():
            name, where = row_and_split(key)
            lines.append(
                f"| {name} | {describe(entry['config'])} | {where} | "
                f"{100 * entry['test_accuracy']:.1f}% | {entry['test_macro_f1']:.3f} | "
                f"{100 * entry['val_accuracy']:.1f}% | {entry['best_epoch']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("/tmp/us8k_cv/UrbanSound8K"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/us8k_bench"), help="runs and feature cache")
    parser.add_argument("--only", nargs="*", default=None, help="keys such as default-1to2 (default: all)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--rerun", action="store_true", help="measure the --only keys again even if recorded (last one wins)"
    )
    parser.add_argument(
        "--import-run",
        nargs=2,
        metavar=("KEY", "RUN_FOLDER"),
        help="record a finished run made with exactly this row's settings (e.g. by `urbansound train`)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = load_results()
    if args.import_run:
        key, run_dir = args.import_run[0], Path(args.import_run[1])
        metrics = RunFolder(run_dir).read_metrics().to_dict()
        config = RunFolder(run_dir).read_config().to_dict()
        by_members = ensemble_scores(run_dir) if config["model"].get("ensemble", 1) > 1 else None
        record(key, metrics, metrics["wall_seconds"], config, by_members)
        results = load_results()
    if not args.render_only and not args.import_run:
        for row in ROWS:
            for split, (train_fold, test_fold) in SPLITS.items():
                key = f"{row.name}-{split}"
                if (args.only is not None and key not in args.only) or (key in results and not args.rerun):
                    continue
                config = make_config(row, train_fold, test_fold, args.root, args.work)
                started = time.perf_counter()
                run_dir = train(config, progress=False)
                seconds = time.perf_counter() - started
                metrics = RunFolder(run_dir).read_metrics().to_dict()
                by_members = ensemble_scores(run_dir) if config.model.ensemble > 1 else None
                results[key] = record(key, metrics, seconds, config.to_dict(), by_members)
    notes_path = HERE / "accuracy_notes.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    REPORT.write_text(render(results, notes, load_results("first-fold")))


if __name__ == "__main__":
    main()
