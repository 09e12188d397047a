"""Atomic file writes: a reader sees the old file or the complete new one, never half of either.

Each writer fills a temporary file in the target's own folder (so the final rename stays on one file
system), flushes and fsyncs it, then ``os.replace``-s it over the target. On any error the temporary
file is removed and the previous target, if any, is left untouched.

Example::

    atomic_write_json(run_dir / "metrics.json", {"test_accuracy": 0.71})
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, it replaces ``path`` in one rename.

    For writers that want a file name: ``torch.save``, ``safetensors.save_file``, ``open_memmap``.
    On any error, including KeyboardInterrupt, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp_name)
        # mkstemp creates files as 0600; give the result the usual permissions instead
        # (those of the file it replaces, else rw-r--r--).
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys in insertion order) to ``path`` atomically.

    Serialisation happens before any file is touched, so an unserialisable object raises ``TypeError``
    and leaves the previous file as it was.
    """
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write_text(path, text)
