"""What ``urbansound embed`` writes: one embedding per recording, as .npy or .csv.

* ``.npy``: a float32 array ``(files, dim)``, rows in the order of the files (as listed; folders sorted);
* ``.csv``: a header ``file, e0, e1, ...`` then one row per file, so the file names travel with the numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from urbansound.errors import ConfigError
from urbansound.io_utils import atomic_output, atomic_write_text

EMBEDDING_SUFFIXES = (".npy", ".csv")


def check_embedding_path(path: str | Path) -> Path:
    """``path`` as a Path, once its suffix names a format (checked before any work is done)."""
    path = Path(path)
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise ConfigError(
            f"{path}: embeddings are written as {' or '.join(EMBEDDING_SUFFIXES)}, by the suffix"
        )
    return path


def write_embeddings(path: str | Path, files: Sequence[str | Path], embeddings: np.ndarray) -> Path:
    """Write ``embeddings`` ``(len(files), dim)`` to ``path`` (.npy or .csv, atomically); returns the path."""
    path = check_embedding_path(path)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(files):
        raise ValueError(f"expected ({len(files)}, dim) embeddings, got {embeddings.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        array = np.ascontiguousarray(embeddings, dtype=np.float32)
        # Into a handle: given a name, np.save would append .npy to the temporary file's.
        with (
            atomic_output(path, "the embeddings", expected_bytes=array.nbytes + 128) as tmp,
            open(tmp, "wb") as f,
        ):
            np.save(f, array)
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", *(f"e{i}" for i in range(embeddings.shape[1]))])
    for file, row in zip(files, embeddings, strict=True):
        writer.writerow([str(file), *(f"{value:.7g}" for value in row)])
    atomic_write_text(path, buffer.getvalue(), "the embeddings")
    return path
