"""The epoch loop: train, validate, keep the best epoch, checkpoint after every epoch, resume."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from urbansound.config import TrainingConfig
from urbansound.errors import ResourceError
from urbansound.features.frontend import AudioClassifier
from urbansound.io_utils import atomic_write_text
from urbansound.training.checkpoint import load_checkpoint, save_checkpoint
from urbansound.training.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    evaluate_sharded,
    reduce_epoch_stats,
)
from urbansound.training.hardware import TrainingModel, prepare_model
from urbansound.training.loop import (
    FeatureDataset,
    ResidentFeatures,
    epoch_batches,
    make_loader,
    train_one_epoch,
)

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "data_wait_fraction",
)


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


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def make_optimizer(
    model: nn.Module, config: TrainingConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and its per-batch learning-rate schedule.

    ``onecycle`` (the seed's): Adam with L2 ``weight_decay``, one-cycle peaking at ``max_lr`` with linear
    annealing. ``cosine``: AdamW (decoupled weight decay, which regularises adaptive optimisers as intended),
    a linear warm-up over the first 5% of steps, then cosine decay to ~0; no momentum cycling.
    """
    if config.scheduler == "cosine":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
        )
        # OneCycleLR with cosine annealing is exactly warm-up + cosine decay, and its state_dict resumes.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.max_lr,
            epochs=config.epochs,
            steps_per_epoch=max(steps_per_epoch, 1),
            pct_start=0.05,
            anneal_strategy="cos",
            cycle_momentum=False,
            div_factor=25.0,
            final_div_factor=1e3,
        )
        return optimizer, scheduler
    optimizer = torch.optim.Adam(model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.max_lr,
        epochs=config.epochs,
        steps_per_epoch=max(steps_per_epoch, 1),
        anneal_strategy="linear",
    )
    return optimizer, scheduler


def fit(
    model: AudioClassifier,
    train_set: FeatureDataset,
    val_set: FeatureDataset,
    config: TrainingConfig,
    device: torch.device,
    checkpoint_path: Path,
    history_path: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    context: DistributedContext | None = None,
    mixup_alpha: float = 0.0,
    mixup_domain: str = "db",
    resident_data: bool | None = None,
) -> FitResult:
    """Train for ``config.epochs`` epochs, keeping the epoch ``config.select_epoch`` picks (by default the
    best validation accuracy).

    A checkpoint (model, optimiser, scheduler, RNG state, history, best weights) is written after every
    epoch; with ``resume`` the loop continues from the last completed epoch. Data order depends only on
    (seed, epoch) and the RNG state is restored, so on CPU a resumed run ends with the same weights as an
    uninterrupted one.

    Under torchrun (``context`` distributed) every rank calls this: ``config.batch_size`` is the global
    batch, each rank trains on its share through DDP, metrics are summed over ranks, and only rank 0 writes
    the checkpoint and history. Every rank resumes from the same checkpoint.

    ``resident_data`` (default: ``config.data_on_device``, see :func:`wants_resident_data`) holds the training
    features in device memory and draws batches by index there
    (:class:`~urbansound.training.loop.ResidentFeatures`) instead of through a DataLoader; the batches are the
    same, so results and resumes do not depend on the choice.
    """
    context = context or DistributedContext(device=device)
    runner = prepare_model(model, context, config.precision, config.compile)

    def sampler_for(epoch: int) -> GlobalBatchSampler | None:
        if not context.distributed:
            return None
        return GlobalBatchSampler(
            len(train_set), config.batch_size, context.rank, context.world_size, seed=config.seed, epoch=epoch
        )

    first = sampler_for(1)
    steps_per_epoch = len(first) if first is not None else -(-len(train_set) // config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch)
    # Loss scaling keeps float16 gradients from underflowing; bf16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(device.type) if runner.autocast_dtype == torch.float16 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    # The weight average (torch's AveragedModel, EMA form) follows the bare module, not the DDP wrapper;
    # every rank updates its own copy from identical weights, so the copies stay identical.
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True
        )
        if config.ema_decay > 0
        else None
    )
    scored = ema.module if ema is not None else runner  # what validation scores and the best epoch keeps
    history: list[dict[str, float]] = []
    best_epoch, best_accuracy, best_state = 0, -1.0, copy.deepcopy(model.state_dict())
    best_score = -float("inf")
    start_epoch = 1
    if resume:
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        history = list(state["history"])
        best_epoch, best_accuracy, best_state = (
            state["best_epoch"],
            state["best_val_accuracy"],
            state["best_model"],
        )
        best_score = state.get("best_score", best_accuracy)
        start_epoch = state["epoch"] + 1
        logger.info("resuming after epoch %d of %d", state["epoch"], config.epochs)
        if _should_stop(history, best_epoch, config):
            start_epoch = config.epochs + 1

    if resident_data is None:
        resident_data = wants_resident_data(config.data_on_device, train_set, device)
    resident = ResidentFeatures(train_set, device) if resident_data and start_epoch <= config.epochs else None
    stopped_early = False
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        batch_sampler = sampler_for(epoch)
        if resident is not None:
            loader = resident.batches(
                batch_sampler or epoch_batches(train_set, config.batch_size, True, config.seed, epoch)
            )
        else:
            loader = make_loader(
                train_set,
                config.batch_size,
                shuffle=True,
                seed=config.seed,
                epoch=epoch,
                num_workers=config.num_workers,
                batch_sampler=batch_sampler,
            )
        train_set.set_epoch(epoch)  # which precomputed audio variant each clip uses this epoch
        lr = scheduler.get_last_lr()[0]
        with out_of_memory_guard(runner, train_set, config, context, epoch, checkpoint_path):
            stats = train_one_epoch(
                runner,
                loader,
                optimizer,
                scheduler,
                device,
                criterion,
                progress=progress and context.is_main,
                desc=f"epoch {epoch}/{config.epochs}",
                scaler=scaler,
                loss_weights=batch_sampler.loss_weights() if batch_sampler is not None else None,
                mixup_alpha=mixup_alpha,
                mixup_domain=mixup_domain,
                after_step=(lambda: ema.update_parameters(model)) if ema is not None else None,
            )
        stats = reduce_epoch_stats(stats, context)
        val = evaluate_sharded(scored, val_set, max(config.batch_size, 64), device, context)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "lr": lr,
            "seconds": stats.seconds,
            "data_wait_fraction": stats.data_wait_fraction,
        }
        history.append(row)
        score = selection_score(config.select_epoch, epoch, val.accuracy, val.loss)
        if score > best_score:
            best_epoch, best_accuracy, best_score = epoch, val.accuracy, score
            best_state = copy.deepcopy((ema.module if ema is not None else model).state_dict())
        if context.is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "ema": ema.state_dict() if ema is not None else {},
                    "rng": torch.get_rng_state(),
                    "history": history,
                    "best_epoch": best_epoch,
                    "best_val_accuracy": best_accuracy,
                    "best_score": best_score,
                    "best_model": best_state,
                },
            )
            if history_path is not None:
                write_history(history_path, history)
        elapsed = time.perf_counter() - started
        eta = elapsed / (epoch - start_epoch + 1) * (config.epochs - epoch)
        logger.info(
            "epoch %d/%d  train loss %.4f acc %.1f%%  val loss %.4f acc %.1f%%%s  %.1fs  ETA %s",
            epoch,
            config.epochs,
            stats.loss,
            100 * stats.accuracy,
            val.loss,
            100 * val.accuracy,
            " *" if best_epoch == epoch else "",
            stats.seconds,
            format_duration(eta),
        )
        if on_epoch_end is not None:
            on_epoch_end(row)
        if _should_stop(history, best_epoch, config):
            logger.info("early stopping: no validation gain for %d epochs", config.patience)
            stopped_early = True
            break
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_val_accuracy=best_accuracy,
        best_state=best_state,
        stopped_early=stopped_early,
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
    needed = len(train_set) * train_set.features[0].nbytes + (variants.nbytes if variants is not None else 0)
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
