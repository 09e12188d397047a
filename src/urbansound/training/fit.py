"""The epoch loop: train, validate, keep the best epoch, checkpoint after every epoch, resume."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from urbansound.config import AugmentConfig, TrainingConfig
from urbansound.errors import ResourceError
from urbansound.features.augment import filter_augment_from_config, spec_augment_from_config
from urbansound.features.views import with_training_crop
from urbansound.models.classifier import AudioClassifier
from urbansound.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from urbansound.training.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    evaluate_sharded,
    reduce_epoch_stats,
)
from urbansound.training.epoch_log import EpochLog
from urbansound.training.hardware import TrainingModel, prepare_model
from urbansound.training.loop import (
    FeatureDataset,
    ResidentFeatures,
    StepSettings,
    epoch_batches,
    make_loader,
    train_one_epoch,
)
from urbansound.training.run_folder import HISTORY_COLUMNS, write_history  # noqa: F401  (re-exported)
from urbansound.training.transfer import BackboneFreezer, parameter_groups

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    best_state: dict[str, torch.Tensor]
    stopped_early: bool = False


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def make_optimizer(
    model: nn.Module, config: TrainingConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and its per-batch learning-rate schedule.

    ``onecycle`` (the baseline recipe's): Adam with L2 ``weight_decay``, one-cycle peaking at ``max_lr`` with
    linear annealing. ``cosine``: AdamW (decoupled weight decay, which regularises adaptive optimisers as
    intended), a linear warm-up over the first 5% of steps, then cosine decay to ~0; no momentum cycling.
    """
    # Fine-tuning: the pretrained layers at a share of the head's rate, or left out when frozen.
    params, peaks = parameter_groups(model, config)
    if config.scheduler == "cosine":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=config.max_lr, weight_decay=config.weight_decay
        )
        # OneCycleLR with cosine annealing is exactly warm-up + cosine decay, and its state_dict resumes.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=peaks,
            epochs=config.epochs,
            steps_per_epoch=max(steps_per_epoch, 1),
            pct_start=0.05,
            anneal_strategy="cos",
            cycle_momentum=False,
            div_factor=25.0,
            final_div_factor=1e3,
        )
        return optimizer, scheduler
    optimizer = torch.optim.Adam(params, lr=config.max_lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=peaks,
        epochs=config.epochs,
        steps_per_epoch=max(steps_per_epoch, 1),
        anneal_strategy="linear",
    )
    return optimizer, scheduler


@dataclass
class _Optimisation:
    """What updates the weights during ``fit``: the wrapped model and the optimiser's companions."""

    runner: TrainingModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # float16 loss scaling
    ema: torch.optim.swa_utils.AveragedModel | None  # the weight average; validation scores it when set
    criterion: nn.Module

    def capture(self, model: AudioClassifier, state: TrainState) -> TrainState:
        """``state`` with the current weights, optimiser, schedule, scaler, average and RNG filled in."""
        state.model = model.state_dict()
        state.optimizer = self.optimizer.state_dict()
        state.scheduler = self.scheduler.state_dict()
        state.scaler = self.scaler.state_dict() if self.scaler is not None else {}
        state.ema = self.ema.state_dict() if self.ema is not None else {}
        state.rng = torch.get_rng_state()
        return state

    def restore(self, model: AudioClassifier, state: TrainState) -> None:
        """Put everything :meth:`capture` saved back in place."""
        model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)
        if self.ema is not None:
            self.ema.load_state_dict(state.ema)
        torch.set_rng_state(state.rng)


def _optimisation(
    model: AudioClassifier,
    training: TrainingConfig,
    augment: AugmentConfig,
    context: DistributedContext,
    steps_per_epoch: int,
) -> _Optimisation:
    runner = prepare_model(
        model,
        context,
        training.precision,
        training.compile,
        band_augment=filter_augment_from_config(augment),
        spec_augment=with_training_crop(spec_augment_from_config(augment), model),
    )
    optimizer, scheduler = make_optimizer(model, training, steps_per_epoch)
    # Loss scaling keeps float16 gradients from underflowing; bf16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(context.device.type) if runner.autocast_dtype == torch.float16 else None
    # The weight average (torch's AveragedModel, EMA form) follows the bare module, not the DDP wrapper;
    # every rank updates its own copy from identical weights, so the copies stay identical.
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(training.ema_decay),
            use_buffers=True,
        )
        if training.ema_decay > 0
        else None
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=training.label_smoothing)
    return _Optimisation(runner, optimizer, scheduler, scaler, ema, criterion)


def _start_state(
    model: AudioClassifier, parts: _Optimisation, config: TrainingConfig, checkpoint_path: Path, resume: bool
) -> TrainState:
    """A fresh state, or (``resume``) the checkpoint's, restored into ``model`` and ``parts``."""
    if not resume:
        return TrainState(best_model=copy.deepcopy(model.state_dict()))
    state = TrainState.from_dict(load_checkpoint(checkpoint_path))
    parts.restore(model, state)
    logger.info("resuming after epoch %d of %d", state.epoch, config.epochs)
    return state


def fit(
    model: AudioClassifier,
    train_set: FeatureDataset,
    val_set: FeatureDataset,
    training: TrainingConfig,
    augment: AugmentConfig,
    context: DistributedContext,
    checkpoint_path: Path,
    history: EpochLog | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train for ``training.epochs`` epochs, keeping the epoch ``training.select_epoch`` picks (by default
    the best validation accuracy). ``augment`` gives the batch augmentation: FilterAugment and SpecAugment
    (applied by the training wrapper, :class:`~urbansound.training.hardware.TrainingModel`) and mixup.

    A checkpoint (a :class:`~urbansound.training.checkpoint.TrainState`: model, optimiser, scheduler, RNG
    state, history, best weights) is written after every epoch; with ``resume`` the loop continues from the
    last completed epoch. Data order depends only on (seed, epoch) and the RNG state is restored, so a resumed
    run ends with the same weights as an uninterrupted one on the CPU, and on CUDA when the caller has entered
    :func:`~urbansound.training.hardware.kernel_choice` with ``deterministic=True`` (runs with
    ``--deterministic`` do).

    Under torchrun (``context`` distributed) every rank calls this: ``training.batch_size`` is the global
    batch, each rank trains on its share through DDP, metrics are summed over ranks, and only rank 0 writes
    the checkpoint and history. Every rank resumes from the same checkpoint.

    ``history`` records each epoch as it ends: a ``history.csv`` path, or an
    :class:`~urbansound.training.epoch_log.EpochLog` that also feeds TensorBoard.

    ``training.data_on_device`` (see :func:`wants_resident_data`) may hold the training features in device
    memory and draw batches by index there
    (:class:`~urbansound.training.loop.ResidentFeatures`) instead of through a DataLoader; the batches are
    the same, so results and resumes do not depend on the choice.

    A ``train_set`` with fresh variants (``train_set.fresh``) gets new audio variants of the epoch's
    augmented clips, computed on the training device at the start of every epoch.
    """
    device = context.device  # a single process: DistributedContext(device=...)
    log = history if isinstance(history, EpochLog) else EpochLog(history)
    run = _Fit(model, train_set, val_set, training, augment, context, checkpoint_path, progress)
    parts = run.parts
    state = _start_state(model, parts, training, checkpoint_path, resume)
    start_epoch = state.epoch + 1
    if resume and _should_stop(state.history, state.best_epoch, training):
        start_epoch = training.epochs + 1
    resident = None
    if wants_resident_data(training.data_on_device, train_set, device) and start_epoch <= training.epochs:
        resident = ResidentFeatures(train_set, device)
    stopped_early = False
    started = time.perf_counter()
    for epoch in range(start_epoch, training.epochs + 1):
        row = run.epoch(epoch, resident)
        _record_epoch(state, row, training.select_epoch, parts.ema.module if parts.ema is not None else model)
        if context.is_main:
            save_checkpoint(checkpoint_path, parts.capture(model, state).to_dict())
            log.record(state.history)
        eta = (time.perf_counter() - started) / (epoch - start_epoch + 1) * (training.epochs - epoch)
        _log_epoch(row, state.best_epoch, training.epochs, eta)
        if _should_stop(state.history, state.best_epoch, training):
            logger.info("early stopping: no validation gain for %d epochs", training.patience)
            stopped_early = True
            break
    log.close()
    return FitResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_val_accuracy=state.best_val_accuracy,
        best_state=state.best_model,
        stopped_early=stopped_early,
    )


@dataclass
class _Fit:
    """What stays fixed over the epochs of one ``fit``; :meth:`epoch` trains and validates one epoch."""

    model: AudioClassifier
    train_set: FeatureDataset
    val_set: FeatureDataset
    training: TrainingConfig
    augment: AugmentConfig
    context: DistributedContext
    checkpoint_path: Path
    progress: bool

    def __post_init__(self) -> None:
        first = self.sampler(1)
        steps = len(first) if first is not None else -(-len(self.train_set) // self.training.batch_size)
        # Linear probe / head-only warm-up epochs. A probe is frozen before DDP wraps the model, so DDP never
        # waits for the frozen layers' gradients.
        self.freezer = BackboneFreezer(self.model)
        self.freezer.set(self.training.freeze_backbone)
        self.parts = _optimisation(self.model, self.training, self.augment, self.context, steps)
        # A training set with a loss of its own (distillation's soft targets) replaces cross-entropy.
        own_loss = getattr(self.train_set, "criterion", None)
        if own_loss is not None:
            self.parts.criterion = own_loss

    def sampler(self, epoch: int) -> GlobalBatchSampler | None:
        """Each rank's share of every global batch of ``epoch`` under torchrun; None for one process."""
        if not self.context.distributed:
            return None
        training, context = self.training, self.context
        return GlobalBatchSampler(
            len(self.train_set),
            training.batch_size,
            context.rank,
            context.world_size,
            seed=training.seed,
            epoch=epoch,
        )

    def batches(
        self, epoch: int, sampler: GlobalBatchSampler | None, resident: ResidentFeatures | None
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches of ``epoch``, from device memory or through a DataLoader (the same ones)."""
        training = self.training
        if resident is not None:
            return resident.batches(
                sampler or epoch_batches(self.train_set, training.batch_size, True, training.seed, epoch)
            )
        return make_loader(
            self.train_set,
            training.batch_size,
            shuffle=True,
            seed=training.seed,
            epoch=epoch,
            num_workers=training.num_workers,
            batch_sampler=sampler,
            device=self.context.device,
        )

    def refresh_variants(
        self, epoch: int, sampler: GlobalBatchSampler | None, resident: ResidentFeatures | None
    ) -> None:
        """With fresh variants: compute ``epoch``'s variant of every clip this process trains on with one
        (under torchrun, only the clips of this rank's batches) and put the table where batches read it."""
        fresh = self.train_set.fresh
        if fresh is None:
            return
        wanted = fresh_positions(self.train_set.choice, sampler)
        table = fresh.compute(epoch, self.train_set.seed, wanted, self.context.device)
        if resident is not None:
            resident.variants = table
        else:
            self.train_set.variants = table.cpu().numpy()

    def epoch(self, epoch: int, resident: ResidentFeatures | None) -> dict[str, float]:
        """Train one epoch (stats summed over ranks), validate what the run would keep; the history row."""
        parts, training, context, model = self.parts, self.training, self.context, self.model
        self.freezer.update(training, epoch)
        sampler = self.sampler(epoch)
        loader = self.batches(epoch, sampler, resident)
        self.train_set.set_epoch(epoch)  # which precomputed audio variant each clip uses this epoch
        self.refresh_variants(epoch, sampler, resident)
        lr = parts.scheduler.get_last_lr()[0]
        ema = parts.ema
        checkpoint = self.checkpoint_path
        with out_of_memory_guard(parts.runner, self.train_set, training, context, epoch, checkpoint):
            stats = train_one_epoch(
                parts.runner,
                loader,
                parts.optimizer,
                parts.scheduler,
                context.device,
                StepSettings(
                    criterion=parts.criterion,
                    scaler=parts.scaler,
                    loss_weights=sampler.loss_weights() if sampler is not None else None,
                    mixup_alpha=self.augment.mixup_alpha,
                    mixup_domain=self.augment.mixup_domain,
                    after_step=(lambda: ema.update_parameters(model)) if ema is not None else None,
                ),
                progress=self.progress and context.is_main,
                desc=f"epoch {epoch}/{training.epochs}",
            )
        stats = reduce_epoch_stats(stats, context)
        scored = ema.module if ema is not None else parts.runner  # what validation scores and the run keeps
        val = evaluate_sharded(scored, self.val_set, max(training.batch_size, 64), context.device, context)
        return {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "lr": lr,
            "seconds": stats.seconds,
            "data_wait_fraction": stats.data_wait_fraction,
        }


def fresh_positions(choice: np.ndarray, sampler: Iterable[list[int]] | None) -> list[int]:
    """The training-set positions that need a fresh variant this epoch: those ``choice`` augments, among
    the positions of this rank's batches (``sampler``) or, in one process, all of them."""
    mine = range(len(choice)) if sampler is None else {p for batch in sampler for p in batch}
    return sorted(p for p in mine if choice[p] > 0)


def _record_epoch(state: TrainState, row: dict[str, float], criterion: str, scored: nn.Module) -> None:
    """Append ``row`` to the history and keep the epoch's weights when its score beats the best so far."""
    state.epoch = int(row["epoch"])
    state.history.append(row)
    score = selection_score(criterion, state.epoch, row["val_accuracy"], row["val_loss"])
    if score > state.best_score:
        state.best_epoch, state.best_val_accuracy, state.best_score = state.epoch, row["val_accuracy"], score
        state.best_model = copy.deepcopy(scored.state_dict())


def _log_epoch(row: dict[str, float], best_epoch: int, epochs: int, eta: float) -> None:
    logger.info(
        "epoch %d/%d  train loss %.4f acc %.1f%%  val loss %.4f acc %.1f%%%s  %.1fs  ETA %s",
        row["epoch"],
        epochs,
        row["train_loss"],
        100 * row["train_accuracy"],
        row["val_loss"],
        100 * row["val_accuracy"],
        " *" if best_epoch == row["epoch"] else "",
        row["seconds"],
        format_duration(eta),
    )


def wants_resident_data(setting: str, train_set: FeatureDataset, device: torch.device) -> bool:
    """Whether the training data goes to device memory: always for "yes", never for "no"; for "auto" on an
    accelerator when the features and variants take at most half its free memory (the rest is the model's
    and the batches'), never on the CPU, where the memory-mapped cache already is host memory."""
    if setting != "auto":
        return setting == "yes"
    if device.type == "cpu":
        return False
    variants = train_set.variants
    clip_bytes = train_set.features[0].nbytes
    needed = len(train_set) * clip_bytes * (2 if train_set.fresh_count else 1)  # a fresh variant per clip
    needed += variants.nbytes if variants is not None else 0
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    if free is not None and needed > free / 2:
        logger.info(
            "training data (%.1f GB) exceeds half the free memory of %s (%.1f GB): drawing batches through "
            "the data loader",
            needed / 1e9,
            device,
            free / 1e9,
        )
        return False
    return True


@contextlib.contextmanager
def out_of_memory_guard(
    runner: TrainingModel,
    train_set: FeatureDataset,
    config: TrainingConfig,
    context: DistributedContext,
    epoch: int,
    checkpoint_path: Path,
) -> Iterator[None]:
    """Turn a device out-of-memory error inside an epoch into a :class:`ResourceError` that names the batch
    size that failed, one that fits (found by trying training steps at halved sizes; not under torchrun,
    where one rank's probe would leave the others waiting in a collective) and how to go on. The
    checkpoint of the previous epoch is untouched: it was written atomically before this epoch began."""
    failed = False
    try:
        yield
    except torch.OutOfMemoryError:
        failed = True  # probe outside the handler, so the failed step's tensors can be freed first
    if not failed:
        return
    per_process = config.batch_size // context.world_size
    fits = None
    if not context.distributed:
        fits = fitting_batch_size(runner, train_set[[0]][0].shape[1:], per_process)
    if context.distributed:
        advice, suggested = "no smaller batch was tried", max(per_process // 2, 1) * context.world_size
    else:
        advice = f"a batch of {fits} fits" if fits else "not even a batch of 1 fits"
        suggested = fits or 1
    sharing = f" ({per_process} per process)" if context.distributed else ""
    raise ResourceError(
        f"{context.device} ran out of memory in training epoch {epoch} at batch size {config.batch_size}"
        f"{sharing}: {advice}. Start a new run with --batch-size {suggested} (the peak learning rate "
        "follows the batch size's square-root rule), or free device memory and continue this run with "
        f"`urbansound train --resume {checkpoint_path.parent}` (the checkpoint of epoch {epoch - 1} is "
        "intact)"
    ) from None


def fitting_batch_size(runner: TrainingModel, feature_shape: torch.Size, failed: int) -> int | None:
    """The largest of ``failed // 2, failed // 4, ..., 1`` clips whose training step (forward and backward
    on zeros) fits in device memory, or None. Leaves gradients cleared; the run is ending anyway."""
    device = next(runner.parameters()).device
    size = failed // 2
    while size >= 1:
        try:
            runner.train()
            runner.classify_features(
                torch.zeros((size, *feature_shape), device=device)
            ).float().sum().backward()
            return size
        except torch.OutOfMemoryError:
            size //= 2
        finally:
            runner.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return None


def selection_score(criterion: str, epoch: int, val_accuracy: float, val_loss: float) -> float:
    """Higher is better: the epoch with the highest score so far is the one a run keeps."""
    if criterion == "val_loss":
        return -val_loss
    if criterion == "last":
        return float(epoch)
    return val_accuracy


def _should_stop(history: list[dict[str, Any]], best_epoch: int, config: TrainingConfig) -> bool:
    return bool(config.patience and history and history[-1]["epoch"] - best_epoch >= config.patience)
