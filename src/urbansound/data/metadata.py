"""UrbanSound8K metadata: CSV rows -> validated clip records, class names and folds."""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from urbansound.errors import DataError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("slice_file_name", "fsID", "fold", "classID", "class")
N_FOLDS = 10


@dataclass(frozen=True)
class ClipRecord:
    """One row of the metadata, with its audio path resolved."""

    slice_file_name: str
    fs_id: str  # the source recording; slices of one recording must stay on one side of a split
    fold: int
    class_id: int
    class_name: str
    path: Path
    start: float | None = None  # seconds within the source recording
    end: float | None = None


@dataclass(frozen=True)
class Problem:
    """Why a metadata row (or file) cannot be used."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class DatasetIndex:
    """The usable clips of a dataset, its class names (index = class ID) and any skipped rows."""

    records: list[ClipRecord]
    class_names: list[str]
    skipped: list[Problem]

    @property
    def folds(self) -> list[int]:
        return sorted({r.fold for r in self.records})


def _escapes(name: str) -> bool:
    """True when a slice name is not a plain file name inside its fold folder."""
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or len(pure.parts) != 1 or ".." in pure.parts:
            return True
    return name in ("", ".", "..")


def _parse_optional_float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def read_metadata_rows(annotations: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a metadata CSV (a BOM is tolerated), after checking that every ``required`` column is there."""
    try:
        with open(annotations, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{annotations}: cannot read metadata ({error})") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"{annotations}: missing required column(s) {', '.join(missing)}; found {', '.join(columns)}"
        )
    return rows


def load_metadata(
    annotations: str | Path, data_dir: str | Path, skip_bad: bool = False, check_files: bool = True
) -> DatasetIndex:
    """Read and validate UrbanSound8K-style metadata.

    Every problem is collected before anything is reported: required columns, classID <-> class
    consistency, fold in 1..10, slice names that would escape the data folder, files that are missing.
    Without ``skip_bad`` any problem raises :class:`DataError` listing them all; with it the bad rows are
    skipped and returned in ``DatasetIndex.skipped``.

    Args:
        annotations: path to ``UrbanSound8K.csv``.
        data_dir: folder holding ``fold1`` .. ``fold10``.
        skip_bad: skip bad rows instead of failing.
        check_files: check that every listed file exists (off only for tests of the parser).
    """
    annotations = Path(annotations)
    data_dir = Path(data_dir)
    if not annotations.is_file():
        raise DataError(f"{annotations}: metadata file not found")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: audio folder not found (expected the folder holding fold1..fold10)")
    rows = read_metadata_rows(annotations, REQUIRED_COLUMNS)
    if not rows:
        raise DataError(f"{annotations}: no rows")

    problems: list[Problem] = []
    bad_rows: set[int] = set()
    names_by_id: dict[int, Counter[str]] = defaultdict(Counter)
    parsed: list[tuple[int, str, int, int, str, str]] = []
    seen: dict[tuple[int, str], int] = {}
    root = data_dir.resolve()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name = (row.get("slice_file_name") or "").strip()
        label = name or f"{annotations.name} line {line}"
        row_problems = []
        try:
            fold = int(row["fold"])
            if not 1 <= fold <= N_FOLDS:
                row_problems.append(f"fold {fold} is not in 1..{N_FOLDS}")
        except (TypeError, ValueError):
            fold = -1
            row_problems.append(f"fold {row.get('fold')!r} is not an integer")
        try:
            class_id = int(row["classID"])
            if class_id < 0:
                row_problems.append(f"classID {class_id} is negative")
        except (TypeError, ValueError):
            class_id = -1
            row_problems.append(f"classID {row.get('classID')!r} is not an integer")
        class_name = (row.get("class") or "").strip()
        if not class_name:
            row_problems.append("empty class name")
        fs_id = (row.get("fsID") or "").strip()
        if not fs_id:
            row_problems.append("empty fsID")
        if _escapes(name):
            row_problems.append("slice_file_name is not a plain file name (it would escape the data folder)")
        elif fold > 0 and (fold, name) in seen:
            row_problems.append(f"listed twice (also on line {seen[(fold, name)]})")
        elif check_files and fold > 0 and not row_problems:
            path = data_dir / f"fold{fold}" / name
            if not path.is_file():
                row_problems.append(f"file not found: {path}")
            elif root not in path.resolve().parents:
                row_problems.append("resolves outside the data folder (symbolic link?)")
        seen.setdefault((fold, name), line)
        if row_problems:
            problems.extend(Problem(label, p) for p in row_problems)
            bad_rows.add(line)
        if class_id >= 0 and class_name:
            names_by_id[class_id][class_name] += 1
        parsed.append((line, name, fold, class_id, class_name, fs_id))

    # classID <-> class must be a one-to-one mapping over the whole file. Where most rows agree, only the
    # dissenting rows are bad (a typo drops one clip, not a class); on a tie every row of the pair is bad.
    ids_by_name: dict[str, Counter[int]] = defaultdict(Counter)
    for class_id, names in names_by_id.items():
        for n, count in names.items():
            ids_by_name[n][class_id] += count
    canonical_name = {i: _majority(names) for i, names in names_by_id.items()}
    canonical_id = {n: _majority(ids) for n, ids in ids_by_name.items()}
    for class_id in sorted(i for i, names in names_by_id.items() if len(names) > 1):
        names = ", ".join(sorted(names_by_id[class_id]))
        problems.append(Problem(annotations.name, f"classID {class_id} has several class names: {names}"))
    for n in sorted(n for n, ids in ids_by_name.items() if len(ids) > 1):
        ids = ", ".join(map(str, sorted(ids_by_name[n])))
        problems.append(Problem(annotations.name, f"class {n!r} has several classIDs: {ids}"))
    for line, name, _fold, class_id, class_name, _ in parsed:
        if class_id < 0 or not class_name or line in bad_rows:
            continue
        if canonical_name[class_id] != class_name or canonical_id[class_name] != class_id:
            problems.append(
                Problem(
                    name, f"classID {class_id} / class {class_name!r} disagrees with the rest of the metadata"
                )
            )
            bad_rows.add(line)

    if problems and not skip_bad:
        shown = "\n  ".join(map(str, problems[:200]))
        more = f"\n  ... and {len(problems) - 200} more" if len(problems) > 200 else ""
        raise DataError(
            f"{annotations}: {len(problems)} problem(s) in the metadata "
            f"(use --skip-bad to skip these clips):\n  {shown}{more}"
        )

    records = []
    for (line, name, fold, class_id, class_name, fs_id), row in zip(parsed, rows, strict=True):
        if line in bad_rows:
            continue
        records.append(
            ClipRecord(
                slice_file_name=name,
                fs_id=fs_id,
                fold=fold,
                class_id=class_id,
                class_name=class_name,
                path=data_dir / f"fold{fold}" / name,
                start=_parse_optional_float(row.get("start")),
                end=_parse_optional_float(row.get("end")),
            )
        )
    if not records:
        raise DataError(f"{annotations}: no usable clips ({len(problems)} problem(s))")
    class_names = _class_names(records, annotations)
    if problems:
        logger.warning(
            "skipping %d bad clip(s) of %d (see skipped_clips.csv in the run folder)",
            len(bad_rows),
            len(rows),
        )
    return DatasetIndex(records=records, class_names=class_names, skipped=problems)


def _majority(counter: Counter) -> object | None:
    """The value most rows agree on, or None when the top two are tied."""
    (top, count), *rest = counter.most_common()
    return top if not rest or rest[0][1] < count else None


def _class_names(records: list[ClipRecord], annotations: Path) -> list[str]:
    """Class names indexed by class ID; IDs must be 0..K-1 (gaps would shift every label)."""
    names = {r.class_id: r.class_name for r in records}
    ids = sorted(names)
    if ids != list(range(len(ids))):
        raise DataError(f"{annotations}: class IDs must be 0..K-1 without gaps, got {ids}")
    return [names[i] for i in ids]


def write_problems(problems: list[Problem], path: Path) -> None:
    """List skipped clips (file, reason) as CSV in the run folder."""
    import io

    from urbansound.io_utils import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "reason"])
    writer.writerows([p.file, p.reason] for p in problems)
    atomic_write_text(path, buffer.getvalue())
