"""A linear probe on cached embeddings: ``--freeze-backbone`` with a pretrained backbone.

A frozen backbone maps each clip to the same embedding in every epoch, so it runs once per clip (one forward
pass, the cost of a single epoch) and the class head then trains on the stored embeddings in seconds: what
makes a CNN14 probe practical on a CPU. This is EVAR's protocol (frozen embeddings, a linear head, no
augmentation): SpecAugment, mixup and audio variants change the input, so they do not apply here.

The schedule, label smoothing, epoch selection and history are the run's (:func:`make_optimizer`,
``select_epoch``, ``history.csv``); the model returned is the whole classifier with the kept head.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from urbansound.config import AugmentConfig, TrainingConfig
from urbansound.models.classifier import AudioClassifier
from urbansound.training.epoch_log import EpochLog
from urbansound.training.fit import FitResult, make_optimizer, selection_score
from urbansound.training.loop import epoch_generator

logger = logging.getLogger(__name__)


def head_inputs(
    model: AudioClassifier, features: np.ndarray, rows: list[int], device: torch.device, batch: int = 64
) -> torch.Tensor:
    """What the class head receives for cached dB features ``features[rows]``: ``(len(rows), dim)``, in
    evaluation mode (the frozen backbone's running statistics), computed on ``device``, kept on the CPU."""
    (head,) = model.output_layers()
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].float().cpu()))
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(features[rows[start : start + batch]]))
                model.classify_features(chunk.to(device, torch.float32))
    finally:
        hook.remove()
    return torch.cat(captured) if captured else torch.empty(0)


def _scores(head: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module) -> tuple[float, float]:
    """Loss and accuracy of ``head`` on embeddings ``x`` with labels ``y``."""
    with torch.no_grad():
        logits = head(x)
        return float(criterion(logits, y)), float((logits.argmax(dim=1) == y).float().mean())


def fit_probe(
    model: AudioClassifier,
    features: np.ndarray,
    labels: list[int],
    rows: tuple[list[int], list[int]],
    training: TrainingConfig,
    augment: AugmentConfig,
    history_log: EpochLog | Path | None = None,
) -> FitResult:
    """Train ``model``'s class head on the embeddings of the training rows, keeping the epoch
    ``training.select_epoch`` picks on the validation rows (``rows``: train, validation)."""
    if augment.spec_augment or augment.mixup_alpha > 0 or augment.variants > 0 or augment.filter_gain_db > 0:
        logger.info("linear probe on fixed embeddings: the augmentation settings do not apply to it")
    device = next(model.parameters()).device
    started = time.perf_counter()
    targets = torch.as_tensor(labels)
    train_x, val_x = (head_inputs(model, features, r, device) for r in rows)
    train_y, val_y = targets[rows[0]], targets[rows[1]]
    logger.info(
        "embedded %d clips once in %.0f s", len(rows[0]) + len(rows[1]), time.perf_counter() - started
    )
    (head,) = model.output_layers()
    head.cpu()  # the embeddings live on the CPU; the head goes back beside the backbone at the end
    steps = -(-len(train_x) // training.batch_size)
    optimizer, scheduler = make_optimizer(model, training, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=training.label_smoothing)
    log = history_log if isinstance(history_log, EpochLog) else EpochLog(history_log)
    history: list[dict[str, float]] = []
    best = (-float("inf"), 0, 0.0, copy.deepcopy(head.state_dict()))  # score, epoch, val accuracy, head
    for epoch in range(1, training.epochs + 1):
        tick = time.perf_counter()
        lr = scheduler.get_last_lr()[-1]
        head.train()
        order = torch.randperm(len(train_x), generator=epoch_generator(training.seed, epoch))
        for batch in order.split(training.batch_size):
            loss = criterion(head(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        head.eval()
        train_loss, train_accuracy = _scores(head, train_x, train_y, criterion)
        val_loss, val_accuracy = _scores(head, val_x, val_y, criterion)
        seconds = time.perf_counter() - tick
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": lr,
                "seconds": seconds,
                "data_wait_fraction": 0.0,
            }
        )
        score = selection_score(training.select_epoch, epoch, val_accuracy, val_loss)
        if score > best[0]:
            best = (score, epoch, val_accuracy, copy.deepcopy(head.state_dict()))
        log.record(history)
    log.close()
    head.load_state_dict(best[3])
    head.to(device)
    return FitResult(
        history=history, best_epoch=best[1], best_val_accuracy=best[2], best_state=model.state_dict()
    )
