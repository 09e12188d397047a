"""A whole training run: validate data, split, cache features, fit, test once, write the run folder."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from urbansound.config import RunConfig, default_cache_dir
from urbansound.data.datasets import load_dataset
from urbansound.data.metadata import DatasetIndex, Problem, write_problems
from urbansound.data.splits import Split, make_split
from urbansound.errors import ConfigError, DataError
from urbansound.evaluation.metrics import classification_metrics
from urbansound.evaluation.plots import plot_confusion_matrix, plot_history
from urbansound.evaluation.report import write_report
from urbansound.features.augment import filter_augment_from_config, spec_augment_from_config
from urbansound.features.cache import CachedFeatures, FeatureCache, band_statistics
from urbansound.features.frontend import AudioClassifier
from urbansound.io_utils import atomic_write_json, atomic_write_text
from urbansound.modelfile import ModelSpec, build_classifier, load_pretrained_weights, save_model_file
from urbansound.training.checkpoint import CHECKPOINT_NAME
from urbansound.training.distributed import (
    DistributedContext,
    broadcast_object,
    distributed_session,
    run_in_turns,
)
from urbansound.training.fit import FitResult, fit, format_duration
from urbansound.training.loop import FeatureDataset, evaluate, make_loader

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
MODEL_NAME = "model.safetensors"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; anything else is passed to torch."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}: {error}") from None


@dataclass
class PreparedData:
    """Metadata, split and cached features of a run; rows of ``features`` follow ``records``."""

    index: DatasetIndex
    split: Split
    features: np.ndarray
    labels: list[int]
    variants: np.ndarray | None = None  # (len(split.train), n_variants, n_bands, frames) or None


def prepare_data(
    config: RunConfig, progress: bool = True, device: str | torch.device | None = None
) -> PreparedData:
    """Validate the metadata, split it, and make sure every clip of the split has cached features and every
    training clip its augmentation variants (both computed on ``device``, default CPU).

    Clips whose audio cannot be decoded stop the run with a list of them (their features aside, every
    computed entry is kept in the cache), or are dropped with ``skip_bad``.
    """
    index = load_dataset(config.annotations, config.data_dir, layout=config.layout, skip_bad=config.skip_bad)
    split = make_split(index.records, config.split, config.training.seed)
    # Only the clips of this split are decoded; records are narrowed to them so feature rows follow records.
    used = sorted(set(split.train) | set(split.val) | set(split.test))
    position = {record_index: row for row, record_index in enumerate(used)}
    index.records = [index.records[i] for i in used]
    split = Split(
        train=[position[i] for i in split.train],
        val=[position[i] for i in split.val],
        test=[position[i] for i in split.test],
        description=split.description,
    )
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir(config.data_dir)
    cache = FeatureCache(cache_dir, config.audio, config.features, dtype=config.cache_dtype)
    cached: CachedFeatures = cache.build([r.path for r in index.records], progress=progress, device=device)
    if cached.failed:
        problems = list(cached.failed.values())
        if not config.skip_bad:
            listing = "\n  ".join(map(str, problems))
            raise DataError(
                f"{len(problems)} clip(s) could not be decoded (features of the others are cached; "
                f"use --skip-bad to skip these):\n  {listing}"
            )
        logger.warning("skipping %d clip(s) that could not be decoded", len(problems))
        index.skipped.extend(problems)
        bad = set(cached.failed)
        split = Split(
            train=[i for i in split.train if i not in bad],
            val=[i for i in split.val if i not in bad],
            test=[i for i in split.test if i not in bad],
            description=split.description,
        )
    for side, members in split.sizes.items():
        if members == 0:
            raise DataError(f"the {side} set is empty ({split.description})")
    labels = [r.class_id for r in index.records]
    variants = None
    if config.augment.variants > 0:
        # Only training clips are augmented; rows follow split.train.
        variants = cache.build_variants(
            [index.records[i].path for i in split.train],
            config.augment,
            seed=config.training.seed,
            progress=progress,
            device=device,
        )
    return PreparedData(index=index, split=split, features=cached.array, labels=labels, variants=variants)


def new_run_dir(config: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.runs_dir) / f"{stamp}-{config.name}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(config.runs_dir) / f"{stamp}-{config.name}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def load_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run folder (no {CONFIG_NAME})")
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise DataError(f"{path}: unreadable run configuration ({error})") from None


def _write_split(path: Path, index: DatasetIndex, split: Split) -> None:
    """Which clip went where, so anyone can check that no recording spans two sides."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["slice_file_name", "fold", "fsID", "class", "side"])
    for side, members in (("train", split.train), ("val", split.val), ("test", split.test)):
        for i in members:
            r = index.records[i]
            writer.writerow([r.slice_file_name, r.fold, r.fs_id, r.class_name, side])
    atomic_write_text(path, buffer.getvalue())


def train(
    config: RunConfig, resume_dir: Path | None = None, progress: bool = True, run_dir: Path | None = None
) -> Path:
    """Run (or resume) a training run and return its folder.

    The folder gets ``config.json``, ``split.csv``, ``history.csv``, ``checkpoint.pt`` (for resuming),
    ``model.safetensors`` (the epoch ``select_epoch`` keeps), ``metrics.json``, ``train_test_loss.png``,
    ``confusion_matrix.png``, ``report.md`` and, if clips were skipped, ``skipped_clips.csv``.

    Under torchrun every process calls this and trains with DDP (see ``training/distributed.py``); rank 0
    computes the feature cache (the others then open the same memory map), creates the run folder and
    writes every file in it. All ranks return the same folder.
    """
    if resume_dir is not None:
        config = load_run_config(resume_dir)
        run_dir = resume_dir
    config.validate()
    with distributed_session(resolve_device(config.training.device)) as context:
        return _train(config, context, resume_dir, progress and context.is_main, run_dir)


def _train(
    config: RunConfig,
    context: DistributedContext,
    resume_dir: Path | None,
    progress: bool,
    run_dir: Path | None,
) -> Path:
    started = time.perf_counter()
    device = context.device
    data = run_in_turns(context, lambda: prepare_data(config, progress=progress, device=device))
    config.model.n_classes = len(data.index.class_names)
    if context.is_main:
        if resume_dir is None:
            run_dir = run_dir or new_run_dir(config)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / CONFIG_NAME, config.to_dict())
        assert run_dir is not None
        logger.info("run folder: %s", run_dir)
        logger.info(
            "split: %s (train %d, val %d, test %d clips)", data.split.description, *data.split.sizes.values()
        )
        _write_split(run_dir / "split.csv", data.index, data.split)
        if data.index.skipped:
            write_problems(data.index.skipped, run_dir / "skipped_clips.csv")
            logger.warning(
                "%d clip(s) skipped; listed in %s", len(data.index.skipped), run_dir / "skipped_clips.csv"
            )
    # Rank 0 named the folder (a timestamp); the others learn it here instead of creating their own.
    run_dir = broadcast_object(run_dir)
    assert run_dir is not None

    spec = ModelSpec(
        audio=config.audio, features=config.features, model=config.model, class_names=data.index.class_names
    )
    # One set of band statistics for every ensemble member: they see the same training clips.
    mean, std = band_statistics(data.features, data.split.train, db_reference=config.features.db_reference)
    val_set = FeatureDataset(data.features, data.labels, data.split.val)
    test_set = FeatureDataset(data.features, data.labels, data.split.test)
    n_members = config.model.ensemble
    member_spec = replace(spec, model=replace(config.model, ensemble=1))
    members: list[tuple[AudioClassifier, FitResult]] = []
    for member in range(1, n_members + 1):
        # Member k trains exactly as a single run with seed + k - 1 would (initialisation, batch order,
        # which cached variant each epoch draws) on the same split; its files carry a -memberK suffix.
        training = replace(config.training, seed=config.training.seed + member - 1)
        suffix = "" if member == 1 else f"-member{member}"
        checkpoint = run_dir / CHECKPOINT_NAME.replace(".pt", f"{suffix}.pt")
        if n_members > 1:
            logger.info("ensemble member %d of %d (seed %d)", member, n_members, training.seed)
        resume = resume_dir is not None and checkpoint.is_file()  # else this member starts afresh
        torch.manual_seed(training.seed)
        model = build_classifier(member_spec)
        if config.training.init_from and not resume:
            reset = load_pretrained_weights(model, config.training.init_from)
            logger.info(
                "initialised from %s%s", config.training.init_from, f" (new: {reset})" if reset else ""
            )
        model.normalizer.set_statistics(torch.from_numpy(mean), torch.from_numpy(std))
        model.band_augment = filter_augment_from_config(config.augment)
        model.augment = spec_augment_from_config(config.augment)
        train_set = FeatureDataset(
            data.features, data.labels, data.split.train, variants=data.variants, seed=training.seed
        )
        result = fit(
            model,
            train_set,
            val_set,
            training,
            device,
            checkpoint,
            history_path=run_dir / f"history{suffix}.csv",
            resume=resume,
            progress=progress,
            context=context,
            mixup_alpha=config.augment.mixup_alpha,
            mixup_domain=config.augment.mixup_domain,
        )
        # Model selection is over for this member: the kept epoch's weights.
        model.load_state_dict(result.best_state)
        model.band_augment, model.augment = nn.Identity(), nn.Identity()
        members.append((model, result))
    if not context.is_main:
        return run_dir  # rank 0 alone tests the model and writes the results

    model, result = members[0]
    batch = max(config.training.batch_size, 64)
    ensemble_metrics = None
    if n_members > 1:
        model = assemble_ensemble(spec, [m for m, _ in members]).to(device)
        ensemble_metrics = {
            "members": n_members,
            "seeds": [config.training.seed + k for k in range(n_members)],
            "kept_epochs": [r.best_epoch for _, r in members],
            # Each member alone, on the same sets, to show what averaging adds; reported, never used for a
            # choice (every choice was made before this point).
            "member_val_accuracy": [
                evaluate(m, make_loader(val_set, batch, shuffle=False), device).accuracy for m, _ in members
            ],
            "member_test_accuracy": [
                evaluate(m, make_loader(test_set, batch, shuffle=False), device).accuracy for m, _ in members
            ],
        }
    # Every choice is made: the test set is scored once, on the kept weights.
    val = evaluate(model, make_loader(val_set, batch, shuffle=False), device)
    test = evaluate(model, make_loader(test_set, batch, shuffle=False), device)
    names = data.index.class_names
    test_metrics = classification_metrics(test.labels.tolist(), test.predicted.tolist(), names)
    val_metrics = classification_metrics(val.labels.tolist(), val.predicted.tolist(), names)
    metrics = {
        "test_accuracy": test_metrics["accuracy"],
        "test_macro_f1": test_metrics["macro_f1"],
        "val_accuracy": val_metrics["accuracy"],
        "val_macro_f1": val_metrics["macro_f1"],
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "split": data.split.to_dict(),
        "n_skipped": len(data.index.skipped),
        "ensemble": ensemble_metrics,
        "per_class": test_metrics["per_class"],
        "test": test_metrics,
        "val": val_metrics,
        "class_names": names,
        "wall_seconds": None,
    }
    save_model_file(
        run_dir / MODEL_NAME,
        model,
        spec,
        extra={
            "val_accuracy": val_metrics["accuracy"],
            "best_epoch": result.best_epoch,
            "split": data.split.description,
        },
    )
    plot_history(result.history, run_dir / "train_test_loss.png", test_accuracy=test_metrics["accuracy"])
    plot_confusion_matrix(
        test_metrics["confusion_matrix"],
        names,
        run_dir / "confusion_matrix.png",
        title=f"{config.model.name} / {config.features.kind}: {data.split.description}",
    )
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir, config.to_dict(), metrics, result.history)
    logger.info(
        "test accuracy %.1f%%, macro-F1 %.3f on %s (epoch kept %d by %s, val accuracy %.1f%%) in %s",
        100 * test_metrics["accuracy"],
        test_metrics["macro_f1"],
        f"test fold {config.split.test_fold}" if config.split.method == "folds" else "the random test split",
        result.best_epoch,
        config.training.select_epoch,
        100 * val_metrics["accuracy"],
        format_duration(metrics["wall_seconds"]),
    )
    return run_dir


def assemble_ensemble(spec: ModelSpec, members: list[AudioClassifier]) -> AudioClassifier:
    """One classifier whose backbone is a :class:`SeedEnsemble` of the trained ``members``' backbones
    (front end and normaliser are shared: the members were trained on the same features and statistics)."""
    ensemble = build_classifier(spec)
    ensemble.normalizer.load_state_dict(members[0].normalizer.state_dict())
    for target, member in zip(ensemble.backbone.members, members, strict=True):
        target.load_state_dict(member.backbone.state_dict())
    return ensemble.eval()


def dry_run(config: RunConfig) -> tuple[DatasetIndex, Split]:
    """Validate data and compute the split without decoding any audio."""
    config.validate()
    index = load_dataset(config.annotations, config.data_dir, layout=config.layout, skip_bad=config.skip_bad)
    return index, make_split(index.records, config.split, config.training.seed)


__all__ = ["train", "dry_run", "prepare_data", "resolve_device", "load_run_config", "Problem"]
