"""Dataset layouts behind one interface: every loader returns a :class:`DatasetIndex` (records with fold and
recording ID, class names taken from the data, skipped rows), so splits, caching and training never know
which dataset they are on.

Layouts:
    ``urbansound8k``: ``UrbanSound8K.csv`` + ``fold1..fold10`` (see :mod:`urbansound.data.metadata`).
    ``esc50``: ``meta/esc50.csv`` (filename, fold, target, category, esc10, src_file, take) + ``audio/``;
        5 folds, 50 classes; the recording ID is ``src_file`` (the freesound clip several takes came from).
    ``folders``: ``<root>/<class name>/<file>``; classes are the sorted subfolder names, the recording ID is
        the file stem up to its first ``-`` (the whole stem if none), and folds are assigned by
        StratifiedGroupKFold so no recording spans two folds.

>>> index = load_dataset("ESC-50/meta/esc50.csv", "ESC-50/audio")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from urbansound.config import LAYOUTS
from urbansound.data.metadata import (
    ClipRecord,
    DatasetIndex,
    Problem,
    _escapes,
    load_metadata,
    read_metadata_rows,
)
from urbansound.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ESC50_COLUMNS = ("filename", "fold", "target", "category", "src_file")
# What libsndfile decodes; other files in a class folder (notes, images) are ignored.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".opus")
FOLDER_FOLDS = 5  # folds assigned to a folder-per-class dataset (ESC-50's convention)


def detect_layout(annotations: str | Path, data_dir: str | Path) -> str:
    """The layout from the annotations file's columns, or ``folders`` when there is no annotations file."""
    if not annotations or Path(annotations).is_dir():
        return "folders"
    path = Path(annotations)
    if not path.is_file():
        raise DataError(f"{path}: metadata file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    if "slice_file_name" in header:
        return "urbansound8k"
    if "filename" in header and "category" in header:
        return "esc50"
    raise DataError(
        f"{path}: cannot tell the dataset layout from its columns ({', '.join(header)}); "
        "expected UrbanSound8K's slice_file_name or ESC-50's filename/category (or pass --layout)"
    )


def load_dataset(
    annotations: str | Path,
    data_dir: str | Path,
    layout: str = "auto",
    skip_bad: bool = False,
    check_files: bool = True,
) -> DatasetIndex:
    """Load any supported layout as a :class:`DatasetIndex`; ``layout="auto"`` detects it.

    Raises:
        DataError: unreadable or inconsistent metadata (every problem listed), unless ``skip_bad``.
        ConfigError: an unknown layout name.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(annotations, data_dir)
    if layout == "urbansound8k":
        return load_metadata(annotations, data_dir, skip_bad=skip_bad, check_files=check_files)
    if layout == "esc50":
        return load_esc50(annotations, data_dir, skip_bad=skip_bad, check_files=check_files)
    return load_folders(data_dir)


def load_esc50(
    annotations: str | Path, data_dir: str | Path, skip_bad: bool = False, check_files: bool = True
) -> DatasetIndex:
    """ESC-50: ``esc50.csv`` + ``audio/``; ``target`` is named ``category``, ``src_file`` groups takes."""
    annotations, data_dir = Path(annotations), Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: audio folder not found")
    rows = read_metadata_rows(annotations, ESC50_COLUMNS)
    problems: list[Problem] = []
    parsed: list[tuple[str, str, int, int, str]] = []
    names_by_id: dict[int, Counter[str]] = defaultdict(Counter)
    for line, row in enumerate(rows, start=2):
        name = (row.get("filename") or "").strip()
        reasons = []
        try:
            fold, target = int(row["fold"]), int(row["target"])
        except (TypeError, ValueError):
            fold, target = -1, -1
            reasons.append(f"fold {row.get('fold')!r} or target {row.get('target')!r} is not an integer")
        category = (row.get("category") or "").strip()
        source = (row.get("src_file") or "").strip() or name
        if _escapes(name):
            reasons.append("filename is not a plain file name")
        elif check_files and not (data_dir / name).is_file():
            reasons.append(f"file not found in {data_dir}")
        if not category or target < 0 or fold < 1:
            reasons.append("empty category, negative target or fold < 1")
        if reasons:
            problems.append(Problem(name or f"{annotations.name} line {line}", "; ".join(reasons)))
            continue
        names_by_id[target][category] += 1
        parsed.append((name, source, fold, target, category))
    inconsistent = {t: c for t, c in names_by_id.items() if len(c) > 1}
    if inconsistent:
        detail = "; ".join(f"target {t}: {dict(c)}" for t, c in sorted(inconsistent.items()))
        raise DataError(f"{annotations}: a target has several category names ({detail})")
    if problems and not skip_bad:
        listing = "\n  ".join(map(str, problems[:20]))
        raise DataError(f"{annotations}: {len(problems)} bad row(s) (use --skip-bad):\n  {listing}")
    targets = sorted(names_by_id)
    if targets != list(range(len(targets))):
        # Class IDs are positions in class_names: renumber densely, keeping the dataset's order.
        logger.warning("%s: targets are not 0..%d; renumbered in order", annotations, len(targets) - 1)
    dense = {t: i for i, t in enumerate(targets)}
    class_names = [next(iter(names_by_id[t])) for t in targets]
    records = [
        ClipRecord(
            slice_file_name=name,
            fs_id=source,
            fold=fold,
            class_id=dense[target],
            class_name=category,
            path=data_dir / name,
        )
        for name, source, fold, target, category in parsed
    ]
    if not records:
        raise DataError(f"{annotations}: no usable rows")
    return DatasetIndex(records=records, class_names=class_names, skipped=problems)


def recording_id(stem: str) -> str:
    """A file's recording: the stem up to the first ``-`` (ESC-50 and UrbanSound8K name takes so)."""
    return stem.split("-", 1)[0] if "-" in stem else stem


def load_folders(root: str | Path, n_folds: int = FOLDER_FOLDS, seed: int = 0) -> DatasetIndex:
    """A folder per class: ``root/<class>/<audio files>`` (files in nested folders count too).

    Folds 1..``n_folds`` come from StratifiedGroupKFold over recording IDs (fewer when there are fewer
    recordings), so the same folder always gets the same folds.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(f"{root}: expected one subfolder per class, found {len(class_dirs)}")
    files: list[tuple[Path, int]] = []
    for class_id, folder in enumerate(class_dirs):
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"{folder}: class folder holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
        files += [(p, class_id) for p in found]
    labels = np.array([c for _, c in files])
    groups = np.array([recording_id(p.stem) for p, _ in files])
    n_splits = max(2, min(n_folds, len(set(groups)), int(np.bincount(labels).max())))
    folds = np.zeros(len(files), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(files)), labels, groups)):
        folds[test] = k + 1
    records = [
        ClipRecord(
            slice_file_name=str(path.relative_to(root)),
            fs_id=group,
            fold=int(fold),
            class_id=class_id,
            class_name=class_dirs[class_id].name,
            path=path,
        )
        for (path, class_id), group, fold in zip(files, groups, folds, strict=True)
    ]
    return DatasetIndex(records=records, class_names=[p.name for p in class_dirs], skipped=[])
