"""Training checkpoints for resuming: written atomically after every epoch, read with
``torch.load(weights_only=True)`` so a checkpoint can hold only tensors and plain containers, never code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from urbansound.errors import DataError
from urbansound.io_utils import atomic_output

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename: a kill mid-write keeps the old one."""
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing code from it."""
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint to resume from (did the first epoch finish?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for damaged files
        raise DataError(f"{path}: damaged or foreign checkpoint ({type(error).__name__}: {error})") from None
