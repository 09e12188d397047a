"""What the feature cache holds and how to empty it safely (``urbansound cache info|clear``).

The cache (:mod:`urbansound.features.cache`) has one folder per (audio, feature, dtype) settings, marked by
its settings file. Clearing removes those folders and nothing else, so a cache directory pointed at a
folder that holds other files loses only what the cache wrote. A run that is reading the cache keeps its
open memory maps; its next start computes the features again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from urbansound.config import default_cache_dir
from urbansound.errors import ConfigError, DataError
from urbansound.features.cache import SETTINGS_FILE
from urbansound.io_utils import format_bytes

logger = logging.getLogger(__name__)


@dataclass
class SettingsUsage:
    """One settings folder of the cache and the disk space its parts take (bytes)."""

    directory: Path
    settings: dict[str, Any] = field(default_factory=dict)  # the settings file as stored ({}: unreadable)
    entries: int = 0  # clips with cached features
    entry_bytes: int = 0
    variant_bytes: int = 0  # augmented variants of training clips
    pack_bytes: int = 0  # stacked copies of clip lists, memory-mapped by training

    @property
    def total_bytes(self) -> int:
        return self.entry_bytes + self.variant_bytes + self.pack_bytes

    def describe(self) -> str:
        """The settings in a few words, e.g. ``22050 Hz, 4 s, mel_spec, 128 bands, n_fft 1024, hop 1024``."""
        audio, features = self.settings.get("audio"), self.settings.get("features")
        if not isinstance(audio, dict) or not isinstance(features, dict):
            return "settings unreadable"
        a, f = audio.get, features.get
        return (
            f"{a('sample_rate')} Hz, {a('duration')} s, {f('kind')}, {f('n_mels')} bands, "
            f"n_fft {f('n_fft')}, hop {f('hop_length')}, {self.settings.get('dtype')}"
        )


def cache_root(data_dir: str | None = None, cache_dir: str | None = None) -> Path:
    """The cache directory a run on ``data_dir`` uses (``cache_dir`` when given; ``$URBANSOUND_CACHE``
    when set; else beside the data folder)."""
    if cache_dir:
        return Path(cache_dir)
    if data_dir:
        return default_cache_dir(data_dir)
    if os.environ.get("URBANSOUND_CACHE"):
        return Path(os.environ["URBANSOUND_CACHE"])
    raise ConfigError("name the audio folder (--data) or the cache (--cache-dir) whose cache to look at")


def _folder_bytes(folder: Path) -> tuple[int, int]:
    """``(files, bytes)`` under ``folder`` (0, 0 when absent)."""
    files = size = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        if path.is_file():
            files += 1
            size += path.stat().st_size
    return files, size


def settings_folders(root: Path) -> list[Path]:
    """The cache's settings folders under ``root`` (each holds a settings file), by name."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / SETTINGS_FILE).is_file())


def cache_usage(root: Path) -> list[SettingsUsage]:
    """Disk use of each settings folder of the cache at ``root``, largest first."""
    usages = []
    for folder in settings_folders(root):
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            settings = {}
        entries, entry_bytes = _folder_bytes(folder / "entries")
        usages.append(
            SettingsUsage(
                directory=folder,
                settings=settings if isinstance(settings, dict) else {},
                entries=entries,
                entry_bytes=entry_bytes,
                variant_bytes=_folder_bytes(folder / "variants")[1],
                pack_bytes=_folder_bytes(folder / "packs")[1],
            )
        )
    return sorted(usages, key=lambda u: -u.total_bytes)


def render_cache_info(root: Path, usages: list[SettingsUsage]) -> str:
    """Plain text: where the cache is, and per settings folder its clips and sizes."""
    if not usages:
        return f"feature cache: {root} (empty: nothing cached yet)\n"
    total = sum(u.total_bytes for u in usages)
    lines = [f"feature cache: {root} ({format_bytes(total)} in {len(usages)} settings folder(s))"]
    for usage in usages:
        lines += [
            f"  {usage.directory.name}: {usage.describe()}",
            f"    {usage.entries} clip(s) {format_bytes(usage.entry_bytes)}, augmented variants "
            f"{format_bytes(usage.variant_bytes)}, packs {format_bytes(usage.pack_bytes)}; "
            f"total {format_bytes(usage.total_bytes)}",
        ]
    return "\n".join(lines) + "\n"


def clear_cache(root: Path, settings: str | None = None) -> tuple[int, int]:
    """Remove the cache's settings folders under ``root`` (only the one named ``settings``, if given);
    returns ``(folders removed, bytes freed)``. Files the cache did not write are left alone; ``root`` is
    removed only if that leaves it empty.

    Raises:
        DataError: ``settings`` names no settings folder of this cache.
    """
    folders = settings_folders(root)
    if settings is not None:
        folders = [f for f in folders if f.name == settings]
        if not folders:
            known = ", ".join(f.name for f in settings_folders(root)) or "none"
            raise DataError(
                f"{root}: no settings folder {settings!r} in the feature cache (present: {known})"
            )
    freed = 0
    for folder in folders:
        freed += _folder_bytes(folder)[1]
        # The settings file last: a clear interrupted halfway leaves a folder the next clear still finds
        # (and a run still uses: missing entries are computed again).
        for child in folder.iterdir():
            if child.name != SETTINGS_FILE:
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        (folder / SETTINGS_FILE).unlink()
        folder.rmdir()
        logger.info("removed %s", folder)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return len(folders), freed
