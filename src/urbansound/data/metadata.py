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


@dataclass(frozen=True)
class _ParsedRow:
    """A metadata row's fields as read, before the whole-file checks (fold and classID -1 if unreadable)."""

    line: int  # line number in the CSV; line 1 is the header
    name: str
    fold: int
    class_id: int
    class_name: str
    fs_id: str


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
    _check_inputs_exist(annotations, data_dir)
    rows = read_metadata_rows(annotations, REQUIRED_COLUMNS)
    if not rows:
        raise DataError(f"{annotations}: no rows")

    parsed, problems, bad_rows = _check_rows(rows, annotations, data_dir, check_files)
    mapping_problems, disagreeing = _check_class_mapping(parsed, bad_rows, annotations.name)
    problems.extend(mapping_problems)
    bad_rows |= disagreeing
    if problems and not skip_bad:
        _raise_problems(annotations, problems)

    records = _build_records(parsed, rows, bad_rows, data_dir)
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


def _check_inputs_exist(annotations: Path, data_dir: Path) -> None:
    """Raise :class:`DataError` when the metadata file or the audio folder is missing."""
    if not annotations.is_file():
        raise DataError(f"{annotations}: metadata file not found")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: audio folder not found (expected the folder holding fold1..fold10)")


def _check_rows(
    rows: list[dict[str, str]], annotations: Path, data_dir: Path, check_files: bool
) -> tuple[list[_ParsedRow], list[Problem], set[int]]:
    """Parse and check every row on its own: the parsed rows, their problems and the lines that are bad.

    Every row is parsed, bad or not, so that the classID <-> class check sees the whole file.
    """
    parsed: list[_ParsedRow] = []
    problems: list[Problem] = []
    bad_rows: set[int] = set()
    seen: dict[tuple[int, str], int] = {}  # (fold, name) -> first line listing it
    root = data_dir.resolve()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        record, row_problems = _check_row(row, line, data_dir, root, seen, check_files)
        if row_problems:
            label = record.name or f"{annotations.name} line {line}"
            problems.extend(Problem(label, p) for p in row_problems)
            bad_rows.add(line)
        parsed.append(record)
    return parsed, problems, bad_rows


def _check_row(
    row: dict[str, str],
    line: int,
    data_dir: Path,
    root: Path,
    seen: dict[tuple[int, str], int],
    check_files: bool,
) -> tuple[_ParsedRow, list[str]]:
    """One row's fields and what is wrong with them; records the row's (fold, name) in ``seen``."""
    name = (row.get("slice_file_name") or "").strip()
    fold, problems = _parse_fold(row["fold"])
    class_id, class_id_problems = _parse_class_id(row["classID"])
    problems.extend(class_id_problems)
    class_name = (row.get("class") or "").strip()
    if not class_name:
        problems.append("empty class name")
    fs_id = (row.get("fsID") or "").strip()
    if not fs_id:
        problems.append("empty fsID")
    # The file system is only consulted for rows that are otherwise good.
    location_problem = _check_location(name, fold, data_dir, root, seen, check_files and not problems)
    if location_problem is not None:
        problems.append(location_problem)
    seen.setdefault((fold, name), line)
    return _ParsedRow(line, name, fold, class_id, class_name, fs_id), problems


def _parse_fold(value: str | None) -> tuple[int, list[str]]:
    """The fold number (-1 when it is not an integer) and what is wrong with it."""
    try:
        fold = int(value)  # a short row gives None: TypeError
    except (TypeError, ValueError):
        return -1, [f"fold {value!r} is not an integer"]
    return fold, [] if 1 <= fold <= N_FOLDS else [f"fold {fold} is not in 1..{N_FOLDS}"]


def _parse_class_id(value: str | None) -> tuple[int, list[str]]:
    """The class ID (-1 when it is not an integer) and what is wrong with it."""
    try:
        class_id = int(value)  # a short row gives None: TypeError
    except (TypeError, ValueError):
        return -1, [f"classID {value!r} is not an integer"]
    return class_id, [f"classID {class_id} is negative"] if class_id < 0 else []


def _check_location(
    name: str,
    fold: int,
    data_dir: Path,
    root: Path,
    seen: dict[tuple[int, str], int],
    check_file: bool,
) -> str | None:
    """What is wrong with where a slice's file lies (escaping name, duplicate, missing file), if anything.

    ``root`` is ``data_dir`` resolved once for all rows; ``check_file`` asks for the file system checks.
    """
    if _escapes(name):
        return "slice_file_name is not a plain file name (it would escape the data folder)"
    if fold > 0 and (fold, name) in seen:
        return f"listed twice (also on line {seen[(fold, name)]})"
    if check_file and fold > 0:
        path = data_dir / f"fold{fold}" / name
        if not path.is_file():
            return f"file not found: {path}"
        if root not in path.resolve().parents:
            return "resolves outside the data folder (symbolic link?)"
    return None


def _count_class_names(parsed: list[_ParsedRow]) -> dict[int, Counter[str]]:
    """For each readable class ID, how many rows give it each class name (bad rows included)."""
    names_by_id: dict[int, Counter[str]] = defaultdict(Counter)
    for row in parsed:
        if row.class_id >= 0 and row.class_name:
            names_by_id[row.class_id][row.class_name] += 1
    return names_by_id


def _check_class_mapping(
    parsed: list[_ParsedRow], bad_rows: set[int], file_label: str
) -> tuple[list[Problem], set[int]]:
    """Problems with the classID <-> class mapping, and the lines of rows that disagree with it.

    classID <-> class must be a one-to-one mapping over the whole file. Where most rows agree, only the
    dissenting rows are bad (a typo drops one clip, not a class); on a tie every row of the pair is bad.
    Rows already in ``bad_rows`` are not reported again.
    """
    names_by_id = _count_class_names(parsed)
    ids_by_name: dict[str, Counter[int]] = defaultdict(Counter)
    for class_id, names in names_by_id.items():
        for n, count in names.items():
            ids_by_name[n][class_id] += count
    canonical_name = {i: _majority(names) for i, names in names_by_id.items()}
    canonical_id = {n: _majority(ids) for n, ids in ids_by_name.items()}
    problems: list[Problem] = []
    for class_id in sorted(i for i, names in names_by_id.items() if len(names) > 1):
        names = ", ".join(sorted(names_by_id[class_id]))
        problems.append(Problem(file_label, f"classID {class_id} has several class names: {names}"))
    for n in sorted(n for n, ids in ids_by_name.items() if len(ids) > 1):
        ids = ", ".join(map(str, sorted(ids_by_name[n])))
        problems.append(Problem(file_label, f"class {n!r} has several classIDs: {ids}"))
    disagreeing: set[int] = set()
    for row in parsed:
        if row.class_id < 0 or not row.class_name or row.line in bad_rows:
            continue
        if canonical_name[row.class_id] != row.class_name or canonical_id[row.class_name] != row.class_id:
            problems.append(
                Problem(
                    row.name,
                    f"classID {row.class_id} / class {row.class_name!r} "
                    "disagrees with the rest of the metadata",
                )
            )
            disagreeing.add(row.line)
    return problems, disagreeing


def _raise_problems(annotations: Path, problems: list[Problem]) -> None:
    """Raise :class:`DataError` listing the problems (the first 200, then a count of the rest)."""
    shown = "\n  ".join(map(str, problems[:200]))
    more = f"\n  ... and {len(problems) - 200} more" if len(problems) > 200 else ""
    raise DataError(
        f"{annotations}: {len(problems)} problem(s) in the metadata "
        f"(use --skip-bad to skip these clips):\n  {shown}{more}"
    )


def _build_records(
    parsed: list[_ParsedRow], rows: list[dict[str, str]], bad_rows: set[int], data_dir: Path
) -> list[ClipRecord]:
    """Clip records of the good rows, in file order, with paths and optional start/end (seconds)."""
    records = []
    for row, raw in zip(parsed, rows, strict=True):
        if row.line in bad_rows:
            continue
        records.append(
            ClipRecord(
                slice_file_name=row.name,
                fs_id=row.fs_id,
                fold=row.fold,
                class_id=row.class_id,
                class_name=row.class_name,
                path=data_dir / f"fold{row.fold}" / row.name,
                start=_parse_optional_float(raw.get("start")),
                end=_parse_optional_float(raw.get("end")),
            )
        )
    return records


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
