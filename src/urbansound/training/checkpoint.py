"""Training checkpoints for resuming: written atomically after every epoch, read with
``torch.load(weights_only=True)`` so a checkpoint can hold only tensors and plain containers, never code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from urbansound.errors import DataError
from urbansound.io_utils import atomic_output

CHECKPOINT_NAME = "checkpoint.pt"


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nest of dicts, lists and tuples: about the size of its checkpoint."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename: a kill mid-write keeps the old one.

    Raises:
        ResourceError: the disk is full (or another OS error while writing); the previous checkpoint is kept.
    """
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
