"""Training checkpoints for resuming: written atomically after every epoch, read with
``torch.load(weights_only=True)`` so a checkpoint can hold only tensors and plain containers, never code."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from urbansound.errors import DataError
from urbansound.io_utils import atomic_output


@dataclass
class TrainState:
    """Everything a resumed run needs to continue as if never stopped, after epoch ``epoch``.

    Stored as a plain dict (tensors, numbers, lists, dicts) so ``torch.load(weights_only=True)`` reads it;
    :meth:`from_dict` also reads checkpoints written before ``best_score`` and ``scaler`` existed.
    """

    epoch: int = 0  # the last completed epoch (0: none yet)
    model: dict[str, Any] = field(default_factory=dict)  # the classifier's state_dict
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)  # empty without float16 loss scaling
    ema: dict[str, Any] = field(default_factory=dict)  # the weight average's state_dict; empty without EMA
    rng: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))  # CPU generator
    history: list[dict[str, float]] = field(default_factory=list)  # one row per completed epoch
    best_epoch: int = 0  # the epoch kept so far (0: none)
    best_val_accuracy: float = -1.0  # its validation accuracy
    best_score: float = -math.inf  # its selection score (higher is better)
    best_model: dict[str, Any] = field(default_factory=dict)  # its weights

    def to_dict(self) -> dict[str, Any]:
        """Plain containers for ``torch.save``; the keys are the checkpoint format."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        """Read a checkpoint's dict; ``best_score`` defaults to the best accuracy (the old sole criterion)."""
        known = {k: v for k, v in state.items() if k in cls.__dataclass_fields__}
        known.setdefault("best_score", state.get("best_val_accuracy", -1.0))
        known["scaler"] = known.get("scaler") or {}
        known["ema"] = known.get("ema") or {}
        train_state = cls(**known)
        train_state.history = list(train_state.history)
        return train_state


def load_train_state(path: Path) -> TrainState:
    """The typed state of a checkpoint file (see :func:`load_checkpoint`)."""
    return TrainState.from_dict(load_checkpoint(path))


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nest of dicts, lists and tuples: about the size of its checkpoint."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: Path, state: dict[str, Any] | TrainState) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename: a kill mid-write keeps the old one.

    Raises:
        ResourceError: the disk is full (or another OS error while writing); the previous checkpoint is kept.
    """
    if isinstance(state, TrainState):
        state = state.to_dict()
    with (
        atomic_output(path, "the training checkpoint", expected_bytes=_tensor_bytes(state)) as tmp,
        open(tmp, "wb") as handle,
    ):
        # Into a Python file, not by name: by name, torch's C++ writer reports a full disk as a bare
        # RuntimeError ("unexpected pos ..."); through a file object the OSError (ENOSPC, EFBIG) is raised
        # by the file's write and chained to it, so atomic_output recognises it as a failed write.
        torch.save(state, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing code from it."""
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint to resume from (did the first epoch finish?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for damaged files
        raise DataError(f"{path}: damaged or foreign checkpoint ({type(error).__name__}: {error})") from None
