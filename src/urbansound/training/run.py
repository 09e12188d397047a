"""A whole training run: validate data, split, cache features, fit, test once, write the run folder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from urbansound.config import RunConfig, TrainingConfig, default_cache_dir
from urbansound.data.datasets import load_dataset
from urbansound.data.metadata import DatasetIndex, Problem
from urbansound.data.splits import Split, make_split, resolve_folds
from urbansound.errors import ConfigError, DataError
from urbansound.evaluation.calibration import calibrate, plot_reliability
from urbansound.evaluation.metrics import classification_metrics
from urbansound.evaluation.plots import confusion_matrix_figure, plot_history, save_figure
from urbansound.evaluation.report import write_report
from urbansound.features.cache import CachedFeatures, FeatureCache, decode_clips, file_key
from urbansound.features.fresh_variants import FreshVariants
from urbansound.features.views import normaliser_statistics
from urbansound.modelfile import ModelSpec, build_classifier, save_model_file
from urbansound.models.backbones import find_backbone
from urbansound.models.classifier import AudioClassifier
from urbansound.training.distributed import (
    DistributedContext,
    broadcast_object,
    distributed_session,
    run_in_turns,
)
from urbansound.training.epoch_log import CONFUSION_TAG, EpochLog, log_figure
from urbansound.training.fit import FitResult, fit, format_duration
from urbansound.training.hardware import kernel_choice
from urbansound.training.loop import FeatureDataset, Predictions, evaluate, make_loader
from urbansound.training.probe import fit_probe
from urbansound.training.run_folder import ClipPredictions, EnsembleMetrics, RunFolder, RunMetrics
from urbansound.transfer import init_from

logger = logging.getLogger(__name__)


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
    fresh: FreshVariants | None = None  # with fresh variants: the training clips' audio (rows: split.train)


def prepare_data(
    config: RunConfig, progress: bool = True, device: str | torch.device | None = None
) -> PreparedData:
    """Validate the metadata, split it, and make sure every clip of the split has cached features and every
    training clip its augmentation variants (both computed on ``device``, default CPU).

    Clips whose audio cannot be decoded stop the run with a list of them (their features aside, every
    computed entry is kept in the cache), or are dropped with ``skip_bad``.
    """
    index = load_dataset(config.annotations, config.data_dir, layout=config.layout, skip_bad=config.skip_bad)
    # Folds left unset are chosen from the data and written back, so config.json names the folds used.
    config.split = resolve_folds(config.split, index.folds)
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
    data = PreparedData(index=index, split=split, features=cached.array, labels=labels)
    _add_variants(data, config, cache, progress, device)
    return data


def _add_variants(
    data: PreparedData,
    config: RunConfig,
    cache: FeatureCache,
    progress: bool,
    device: str | torch.device | None,
) -> None:
    """The training clips' cached audio variants, or (fresh variants) their audio for computing new ones
    every epoch. Only training clips are augmented; rows follow ``split.train``."""
    augment = config.augment
    if augment.variants == 0:
        return
    paths = [data.index.records[i].path for i in data.split.train]
    if augment.fresh_variants:
        logger.info("decoding %d training clip(s) for fresh variants every epoch", len(paths))
        if torch.device(device or "cpu").type == "cpu":
            logger.warning(
                "fresh variants on the CPU: each epoch computes about %d of them (~50 per second per core), "
                "often several times the training epoch; cached variants cost nothing per epoch",
                len(paths) * augment.variants // (augment.variants + 1),
            )
        waveforms = decode_clips(paths, config.audio, progress=progress)
        keys = [file_key(p) for p in paths]
        data.fresh = FreshVariants(waveforms, keys, augment, config.audio, config.features, cache.np_dtype)
        return
    data.variants = cache.build_variants(
        paths, augment, seed=config.training.seed, progress=progress, device=device
    )


def new_run_dir(config: RunConfig) -> Path:
    """A new, empty run folder ``<runs_dir>/<timestamp>-<name>``."""
    return RunFolder.create(config.runs_dir, config.name).path


def load_run_config(run_dir: Path) -> RunConfig:
    """The configuration saved in a run folder."""
    return RunFolder(Path(run_dir)).read_config()


@dataclass
class Member:
    """One trained ensemble member: its kept weights (eval mode) and how it got them."""

    model: AudioClassifier
    result: FitResult
    seed: int


@dataclass
class Assembled:
    """What a run keeps: the deployable classifier (an ensemble for several members) and its spec."""

    model: AudioClassifier
    spec: ModelSpec


def train(
    config: RunConfig, resume_dir: Path | None = None, progress: bool = True, run_dir: Path | None = None
) -> Path:
    """Run a training run and return its folder (``resume_dir``: same as :func:`resume`, ``config`` unused).

    The folder gets the files :class:`~urbansound.training.run_folder.RunFolder` names: ``config.json``,
    ``split.csv``, ``history.csv``, ``checkpoint.pt`` (for resuming), ``model.safetensors`` (the epoch
    ``select_epoch`` keeps), ``metrics.json``, ``train_val_loss_accuracy.png``, ``confusion_matrix.png``,
    ``test_predictions.csv``, ``report.md``, with ``--tensorboard`` a ``tensorboard/`` folder and, if clips
    were skipped, ``skipped_clips.csv``.

    Under torchrun every process calls this and trains with DDP (see ``training/distributed.py``); rank 0
    computes the feature cache (the others then open the same memory map), creates the run folder and
    writes every file in it. All ranks return the same folder.
    """
    if resume_dir is not None:
        return resume(resume_dir, progress=progress)
    return _run(config, RunFolder(run_dir) if run_dir is not None else None, False, progress)


def resume(run_dir: Path, progress: bool = True, reevaluate: bool = False) -> Path:
    """Continue the run in ``run_dir`` with the configuration saved there, from each member's last
    completed epoch (members without a checkpoint start afresh); returns ``run_dir``.

    A finished run (its ``metrics.json`` written) is left as it is, unless ``reevaluate``: then its kept
    weights are scored again and its results rewritten (after a change to the evaluation code, say)."""
    folder = RunFolder(Path(run_dir))
    config = folder.read_config()
    if folder.is_finished() and not reevaluate:
        logger.warning(
            "%s has finished (its %s is written): nothing to resume, nothing changed "
            "(--reevaluate scores its kept weights again and rewrites its results)",
            folder.path,
            RunFolder.METRICS,
        )
        return folder.path
    return _run(config, folder, True, progress)


def _run(config: RunConfig, folder: RunFolder | None, resuming: bool, progress: bool) -> Path:
    """Open the run folder and its log at once (rank 0), then run the stages in it."""
    config.validate()
    device = resolve_device(config.training.device)
    # Entered before the session: a fixed cuBLAS workspace must be chosen before the first CUDA matrix product
    # (the feature cache computes on the GPU before training starts).
    with kernel_choice(device, config.training.deterministic), distributed_session(device) as context:
        if not context.is_main:
            return _stages(config, folder, resuming, progress, context)
        if not resuming:
            # The folder exists from the first second: config.json now (rewritten once the data give the
            # class count) and train.log with every progress line, the feature cache's included.
            folder = folder or RunFolder.create(config.runs_dir, config.name)
            folder.path.mkdir(parents=True, exist_ok=True)
            folder.write_config(config)
        assert folder is not None
        with folder.logging_to_file():
            logger.info("run folder: %s (log: %s)", folder.path, RunFolder.LOG)
            return _stages(config, folder, resuming, progress, context)


def _stages(
    config: RunConfig,
    folder: RunFolder | None,
    resuming: bool,
    progress: bool,
    context: DistributedContext,
) -> Path:
    """The stages of a run, in order: prepare data, train members, assemble, score, write results."""
    progress = progress and context.is_main
    started = time.perf_counter()
    device = context.device
    data = run_in_turns(context, lambda: prepare_data(config, progress=progress, device=device))
    config.model.n_classes = len(data.index.class_names)
    folder = start_run_folder(config, data, folder, resuming, context)
    members = train_members(config, data, folder, context, resuming, progress)
    if not context.is_main:
        return folder.path  # rank 0 alone tests the model and writes the results
    assembled = assemble(config, data, members, device)
    test = predict_rows(assembled.model, data, data.split.test, config, device)
    metrics = score(assembled.model, members, data, config, device, test=test)
    write_results(folder, config, assembled, members, metrics, started, clip_predictions(data, test))
    return folder.path


def start_run_folder(
    config: RunConfig,
    data: PreparedData,
    folder: RunFolder | None,
    resuming: bool,
    context: DistributedContext | None = None,
) -> RunFolder:
    """Create (unless resuming) the run folder and write the configuration, split and skipped clips into it
    (rank 0); every rank returns the same folder."""
    context = context or DistributedContext(device=torch.device("cpu"))
    if context.is_main:
        if not resuming:
            folder = folder or RunFolder.create(config.runs_dir, config.name)
            folder.path.mkdir(parents=True, exist_ok=True)
            folder.write_config(config)
        assert folder is not None
        logger.info(
            "split: %s (train %d, val %d, test %d clips)", data.split.description, *data.split.sizes.values()
        )
        folder.write_split(data.index, data.split)
        if data.index.skipped:
            path = folder.write_skipped(data.index.skipped)
            logger.warning("%d clip(s) skipped; listed in %s", len(data.index.skipped), path)
    # Rank 0 named the folder (a timestamp); the others learn it here instead of creating their own.
    folder = broadcast_object(folder)
    assert folder is not None
    return folder


def model_spec(config: RunConfig, data: PreparedData) -> ModelSpec:
    """The spec of the run's model file (the ensemble's, when ``config.model.ensemble`` > 1)."""
    return ModelSpec(
        audio=config.audio,
        features=config.features,
        model=config.model,
        class_names=data.index.class_names,
        reject=config.reject,
    )


def train_members(
    config: RunConfig,
    data: PreparedData,
    folder: RunFolder,
    context: DistributedContext | None = None,
    resuming: bool = False,
    progress: bool = True,
) -> list[Member]:
    """Train the ``config.model.ensemble`` members (one for a single model), each with its kept weights.

    Member k trains exactly as a single run with seed + k - 1 would (initialisation, batch order, which
    cached variant each epoch draws) on the same split; its files carry a -memberK suffix. One set of band
    statistics serves every member: they see the same training clips.
    """
    context = context or DistributedContext(device=resolve_device(config.training.device))
    mean, std = normaliser_statistics(config, data.features, data.split.train)  # dB or PCEN output
    spec = replace(model_spec(config, data), model=replace(config.model, ensemble=1))
    val_set = FeatureDataset(data.features, data.labels, data.split.val)
    n_members = config.model.ensemble
    members = []
    for member in range(1, n_members + 1):
        training = replace(config.training, seed=config.training.seed + member - 1)
        if n_members > 1:
            logger.info("ensemble member %d of %d (seed %d)", member, n_members, training.seed)
        checkpoint = folder.checkpoint_path(member)
        resume_member = resuming and checkpoint.is_file()  # else this member starts afresh
        model = _initial_member(spec, training, mean, std, resume_member)
        train_set = FeatureDataset(
            data.features,
            data.labels,
            data.split.train,
            variants=data.variants,
            seed=training.seed,
            fresh=data.fresh,
        )
        history = EpochLog(
            folder.history_path(member), folder.tensorboard_dir(member) if config.tensorboard else None
        )
        if training.freeze_backbone and find_backbone(spec.model.name) is not None:
            # A frozen pretrained backbone: each clip is embedded once and the head trains on the embeddings
            # (one process does it all: there is too little work to share, and rank 0 alone keeps files).
            rows = (data.split.train, data.split.val)
            model.to(context.device)
            log = history if context.is_main else None
            result = fit_probe(model, data.features, data.labels, rows, training, config.augment, log)
        else:
            result = fit(
                model,
                train_set,
                val_set,
                training,
                config.augment,
                context,
                checkpoint,
                history=history,
                resume=resume_member,
                progress=progress,
            )
        # Model selection is over for this member: the kept epoch's weights.
        model.load_state_dict(result.best_state)
        members.append(Member(model=model.eval(), result=result, seed=training.seed))
    return members


def _initial_member(
    spec: ModelSpec, training: TrainingConfig, mean: np.ndarray, std: np.ndarray, resuming: bool
) -> AudioClassifier:
    """A member's classifier before training: seeded initialisation (or ``init_from``'s weights) and the
    run's band statistics."""
    torch.manual_seed(training.seed)
    model = build_classifier(spec)
    if training.init_from and not resuming:
        reset = init_from(model, training.init_from, spec.model.name)  # any checkpoint format (transfer.py)
        logger.info("initialised from %s%s", training.init_from, f" (new: {reset})" if reset else "")
    # EfficientAT and AST normalise their input with fixed constants: the band normaliser stays the identity
    # so their weights see the input they were trained on. PANNs takes standardised bands into its bn0.
    absorbs = getattr(model.backbone, "absorb_input_statistics", None)
    if find_backbone(spec.model.name) is None or absorbs is not None:
        model.normalizer.set_statistics(torch.from_numpy(mean), torch.from_numpy(std))
    if absorbs is not None:
        absorbs(model.normalizer.mean, model.normalizer.std)
    return model


def assemble(
    config: RunConfig, data: PreparedData, members: list[Member], device: torch.device | None = None
) -> Assembled:
    """The deployable classifier: the single member, or one whose backbone is a :class:`SeedEnsemble` of
    the members' backbones, on ``device`` (default: where the first member is)."""
    spec = model_spec(config, data)
    models = [m.model for m in members]
    model = models[0] if len(models) == 1 else assemble_ensemble(spec, models)
    device = device or next(members[0].model.parameters()).device
    return Assembled(model=model.to(device).eval(), spec=spec)


def predict_rows(
    model: AudioClassifier,
    data: PreparedData,
    rows: list[int],
    config: RunConfig,
    device: torch.device | None = None,
) -> Predictions:
    """``model``'s loss, accuracy and class probabilities on the clips ``rows`` of ``data`` (in order)."""
    device = device or next(model.parameters()).device
    batch = max(config.training.batch_size, 64)
    loader = make_loader(
        FeatureDataset(data.features, data.labels, rows), batch, shuffle=False, device=device
    )
    return evaluate(model, loader, device)


def clip_predictions(data: PreparedData, test: Predictions) -> ClipPredictions:
    """The rows of ``test_predictions.csv``: ``test`` (from :func:`predict_rows` on ``data.split.test``)
    beside each test clip's record."""
    records = [data.index.records[i] for i in data.split.test]
    return ClipPredictions(records, test.probabilities, list(data.index.class_names))


def score(
    model: AudioClassifier,
    members: list[Member],
    data: PreparedData,
    config: RunConfig,
    device: torch.device | None = None,
    test: Predictions | None = None,
) -> RunMetrics:
    """Every choice is made: score the kept model on the validation set and, once, the test set (``test``:
    the model's test-set predictions when already computed by :func:`predict_rows`).

    For an ensemble each member is also scored alone on the same sets, to show what averaging adds;
    reported, never used for a choice. ``wall_seconds`` is left for :func:`write_results` to fill in."""
    device = device or next(model.parameters()).device
    names = data.index.class_names

    def predictions(classifier: AudioClassifier, rows: list[int]) -> Predictions:
        return predict_rows(classifier, data, rows, config, device)

    ensemble = None
    if len(members) > 1:
        ensemble = EnsembleMetrics(
            members=len(members),
            seeds=[m.seed for m in members],
            kept_epochs=[m.result.best_epoch for m in members],
            member_val_accuracy=[predictions(m.model, data.split.val).accuracy for m in members],
            member_test_accuracy=[predictions(m.model, data.split.test).accuracy for m in members],
        )
    val = predictions(model, data.split.val)
    test = test if test is not None else predictions(model, data.split.test)
    test_metrics = classification_metrics(test.labels.tolist(), test.predicted.tolist(), names)
    val_metrics = classification_metrics(val.labels.tolist(), val.predicted.tolist(), names)
    # Temperature fitted on the validation split only; the test split is scored before and after.
    calibration = calibrate(val.labels, val.probabilities, test.labels, test.probabilities)
    result = members[0].result
    return RunMetrics(
        test_accuracy=test_metrics["accuracy"],
        test_macro_f1=test_metrics["macro_f1"],
        val_accuracy=val_metrics["accuracy"],
        val_macro_f1=val_metrics["macro_f1"],
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        split=data.split.to_dict(),
        n_skipped=len(data.index.skipped),
        ensemble=ensemble,
        per_class=test_metrics["per_class"],
        test=test_metrics,
        val=val_metrics,
        class_names=names,
        calibration=calibration.to_dict(),
    )


def write_results(
    folder: RunFolder,
    config: RunConfig,
    assembled: Assembled,
    members: list[Member],
    metrics: RunMetrics,
    started: float | None = None,
    test: ClipPredictions | None = None,
) -> None:
    """Write the model file, plots, ``metrics.json`` (with the run's wall time since ``started``, a
    ``time.perf_counter()`` reading), the report, ``test_predictions.csv`` (from ``test``) and, with
    ``config.tensorboard``, the confusion matrix to TensorBoard into ``folder``."""
    result = members[0].result
    spec = assembled.spec
    if metrics.calibration is not None:  # the model file applies the temperature fitted on validation
        spec = replace(spec, temperature=metrics.calibration["temperature"])
    save_model_file(
        folder.model_path,
        assembled.model,
        spec,
        extra={
            "val_accuracy": metrics.val_accuracy,
            "best_epoch": result.best_epoch,
            "split": metrics.split["description"],
        },
    )
    plot_history(
        result.history,
        folder.file(RunFolder.HISTORY_PLOT),
        test_accuracy=metrics.test_accuracy,
        kept_epoch=result.best_epoch,
        kept_by=config.training.select_epoch,
    )
    confusion = confusion_matrix_figure(
        metrics.test["confusion_matrix"],
        metrics.class_names,
        title=f"{config.model.name} / {config.features.kind}: {metrics.split['description']}",
    )
    save_figure(confusion, folder.file(RunFolder.CONFUSION_PLOT))
    if metrics.calibration is not None:
        plot_reliability(metrics.calibration, folder.file(RunFolder.RELIABILITY_PLOT))
    if config.tensorboard:
        log_figure(folder.tensorboard_dir(), CONFUSION_TAG, confusion, step=len(result.history))
    if test is not None:
        folder.write_test_predictions(test)
    if started is not None:
        metrics.wall_seconds = round(time.perf_counter() - started, 1)
    folder.write_metrics(metrics)
    write_report(folder.path, config.to_dict(), metrics.to_dict(), result.history)
    logger.info(
        "test accuracy %.1f%%, macro-F1 %.3f on %s (epoch kept %d by %s, val accuracy %.1f%%) in %s",
        100 * metrics.test_accuracy,
        metrics.test_macro_f1,
        f"test fold {config.split.test_fold}" if config.split.method == "folds" else "the random test split",
        result.best_epoch,
        config.training.select_epoch,
        100 * metrics.val_accuracy,
        format_duration(metrics.wall_seconds or 0.0),
    )


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


__all__ = [
    "train",
    "resume",
    "dry_run",
    "prepare_data",
    "start_run_folder",
    "train_members",
    "assemble",
    "score",
    "predict_rows",
    "clip_predictions",
    "write_results",
    "resolve_device",
    "load_run_config",
    "Problem",
]
