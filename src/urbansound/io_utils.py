"""Atomic file writes: a reader sees the old file or the complete new one, never half of either.

Each writer fills a temporary file in the target's own folder (so the final rename stays on one file
system), fsyncs it, ``os.replace``-s it over the target and fsyncs the folder, so that after a crash the
name points to complete data rather than to a file whose blocks were never written. On any error the
temporary file is removed and the previous target, if any, is left untouched.

A write that fails for lack of space (or any other OS error while writing) raises
:class:`~urbansound.errors.ResourceError` naming the file, what it is, the space free on its file system and
about how much was needed: a full disk is something the user fixes, not a bug to read a traceback for.

Example::

    atomic_write_json(run_dir / "metrics.json", {"test_accuracy": 0.71}, what="the run's metrics")
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from urbansound.errors import ResourceError

# Writers implemented in Rust (safetensors) report an OS error only in their message: "... (os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# What the OS's words for an errno leave unsaid (ENOSPC's "No space left on device" says it all).
_HINTS = {
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the file system allows",
}


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size, e.g. ``"1.5 GB"`` (decimal units, as ``df -H``)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OS error that made a writer fail, or None when the failure is something else (a bug, bad data).

    Besides a plain ``OSError`` (numpy's short write, ``OSError: 10 requested and 4 written``, has no errno),
    this finds one chained to another exception (``torch.save`` into a Python file raises ``RuntimeError``
    from the file's ``OSError``) or named in a Rust writer's message (safetensors' ``SafetensorError``).
    """
    for candidate in (error, error.__cause__, error.__context__):
        if isinstance(candidate, OSError):
            return candidate
    match = _RUST_OS_ERROR.search(str(error))
    if match:
        code = int(match[1])
        return OSError(code, os.strerror(code))
    return None


def _write_error(
    path: Path, what: str, error: OSError, expected_bytes: int | None, written: int
) -> ResourceError:
    """The ResourceError for a failed write of ``what`` at ``path``: the OS's reason, the free space on the
    file system that holds ``path`` and roughly what the file needs (``expected_bytes``, else the
    ``written`` bytes that got there before it failed, as a lower bound)."""
    reason = (
        f"{error.strerror} (errno {errno.errorcode.get(error.errno, error.errno)})"
        if error.errno
        else str(error)
    )
    parts = [f"could not write {what} {path}: {reason}"]
    if error.errno in _HINTS:
        parts.append(_HINTS[error.errno])
    try:
        free = format_bytes(shutil.disk_usage(path.parent).free)
    except OSError:
        free = "an unknown amount of space"
    if expected_bytes is not None:
        needed = f"about {format_bytes(expected_bytes)}"
    else:
        needed = f"more than the {format_bytes(written)} written before the error"
    parts.append(f"{path.parent} has {free} free and {what} needs {needed}")
    parts.append(
        "nothing half-written was left and files written before are kept: free some space "
        "(or raise the limit) and run again"
    )
    return ResourceError("; ".join(parts))


def _fsync_path(path: str | Path) -> None:
    """Flush a file's data to the disk, opening it by name (for writers that take a name, not a handle)."""
    # Windows' fsync (_commit) needs a handle open for writing; POSIX accepts a read-only one.
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable, best effort: Windows cannot open folders, and some file systems
    refuse fsync on one (EINVAL); the file's data is already on the disk either way."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        _fsync_path(folder)


def _temporary_beside(path: Path, what: str) -> str:
    """Create an empty temporary file in ``path``'s folder (created if needed) and return its name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _write_error(path, what, error, None, 0) from error
    os.close(fd)
    return tmp_name


@contextlib.contextmanager
def atomic_output(path: Path, what: str = "the file", expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, it replaces ``path`` in one rename.

    For writers that want a file name (``torch.save``, ``safetensors.save_file``) or open it themselves
    (``np.save`` into a handle). After the block the temporary file is fsynced, renamed over ``path``, and
    the folder fsynced.

    Args:
        path: the file to write.
        what: what the file is, for error messages, e.g. ``"the training checkpoint"``.
        expected_bytes: roughly how large the file will be, for the message when space runs out.

    Raises:
        ResourceError: an OS error while creating or writing the file (full disk, quota, file size limit):
            the message names ``what``, ``path``, the free space and the space needed. The temporary file is
            removed and ``path`` is untouched, as on any other error (KeyboardInterrupt included).
    """
    path = Path(path)
    tmp_name = _temporary_beside(path, what)
    try:
        try:
            yield Path(tmp_name)
            # Flushed before the rename: otherwise a crash can leave the new name over blocks that were
            # never written (zeros or nothing), which is worse than the old file.
            _fsync_path(tmp_name)
        except Exception as error:
            cause = _os_error_behind(error)
            if cause is None:
                raise
            written = os.stat(tmp_name).st_size if os.path.exists(tmp_name) else 0
            raise _write_error(path, what, cause, expected_bytes, written) from error
        # mkstemp creates files as 0600; give the result the usual permissions instead
        # (those of the file it replaces, else rw-r--r--).
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes, what: str = "the file") -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    ``what`` names the file in a ResourceError (see :func:`atomic_output`).
    """
    with atomic_output(path, what, expected_bytes=len(data)) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str, what: str = "the file") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), what)


def atomic_write_json(path: Path, obj: Any, what: str = "the JSON file") -> None:
    """Write ``obj`` as indented JSON (keys in insertion order) to ``path`` atomically.

    Serialisation happens before any file is touched, so an unserialisable object raises ``TypeError``
    and leaves the previous file as it was.
    """
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write_text(path, text, what)
