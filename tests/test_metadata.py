"""Tests of the metadata loader (urbansound.data.metadata.load_metadata)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from urbansound.data.metadata import REQUIRED_COLUMNS, load_metadata
from urbansound.errors import DataError

COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]


def row(
    name: str, fold: int | str = 1, class_id: int | str = 0, class_name: str = "dog", fs_id: str = "100"
) -> dict[str, str]:
    return {
        "slice_file_name": name,
        "fsID": fs_id,
        "start": "0.5",
        "end": "4.5",
        "salience": "1",
        "fold": str(fold),
        "classID": str(class_id),
        "class": class_name,
    }


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty audio folder with fold1..fold10."""
    audio = tmp_path / "audio"
    for fold in range(1, 11):
        (audio / f"fold{fold}").mkdir(parents=True)
    return audio


def touch(data_dir: Path, fold: int, name: str) -> Path:
    path = data_dir / f"fold{fold}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def problem_lines(error: pytest.ExceptionInfo[DataError]) -> list[str]:
    return [line.strip() for line in str(error.value).splitlines()[1:]]


def assert_reported(lines: list[str], file: str, reason: str) -> None:
    """Some line of the error reads ``<file>: ...<reason>...``."""
    assert any(line.startswith(f"{file}: ") and reason in line for line in lines), (file, reason, lines)


def test_good_metadata_gives_records_and_class_names_by_id(tmp_path: Path, data_dir: Path) -> None:
    rows = [
        row("1-2-0-0.wav", fold=3, class_id=2, class_name="siren", fs_id="1"),
        row("2-0-0-0.wav", fold=1, class_id=0, class_name="dog", fs_id="2"),
        {**row("3-1-0-0.wav", fold=10, class_id=1, class_name="horn", fs_id="3"), "start": "1.5", "end": ""},
        row("2-0-0-1.wav", fold=1, class_id=0, class_name="dog", fs_id="2"),
    ]
    for r in rows:
        touch(data_dir, int(r["fold"]), r["slice_file_name"])
    index = load_metadata(write_csv(tmp_path / "meta.csv", rows), data_dir)

    assert index.class_names == ["dog", "horn", "siren"]
    assert index.skipped == []
    assert index.folds == [1, 3, 10]
    assert [r.slice_file_name for r in index.records] == [r["slice_file_name"] for r in rows]
    for record, source in zip(index.records, rows, strict=True):
        assert record.fold == int(source["fold"])
        assert record.class_id == int(source["classID"])
        assert index.class_names[record.class_id] == source["class"]
        assert record.fs_id == source["fsID"]
        assert record.path == data_dir / f"fold{record.fold}" / record.slice_file_name
        assert record.path.is_file()
    assert index.records[0].start == 0.5 and index.records[0].end == 4.5
    assert index.records[2].start == 1.5 and index.records[2].end is None


def test_header_with_byte_order_mark_is_read(tmp_path: Path, data_dir: Path) -> None:
    touch(data_dir, 1, "a.wav")
    path = write_csv(tmp_path / "meta.csv", [row("a.wav")])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [r.slice_file_name for r in load_metadata(path, data_dir).records] == ["a.wav"]


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_missing_required_column_is_named(tmp_path: Path, data_dir: Path, column: str) -> None:
    touch(data_dir, 1, "a.wav")
    meta = write_csv(tmp_path / "meta.csv", [row("a.wav")], [c for c in COLUMNS if c != column])
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    message = str(error.value)
    assert str(meta) in message
    assert "missing required column" in message and column in message.split(";")[0]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"fold": "11"}, "fold 11 is not in 1..10"),
        ({"fold": "0"}, "fold 0 is not in 1..10"),
        ({"fold": "x"}, "fold 'x' is not an integer"),
        ({"fold": "2.5"}, "fold '2.5' is not an integer"),
        ({"classID": "one"}, "classID 'one' is not an integer"),
        ({"classID": "-1"}, "classID -1 is negative"),
        ({"class": ""}, "empty class name"),
        ({"fsID": ""}, "empty fsID"),
    ],
)
def test_bad_field_is_reported_with_file_and_reason(
    tmp_path: Path, data_dir: Path, bad: dict[str, str], reason: str
) -> None:
    touch(data_dir, 1, "good.wav")
    touch(data_dir, 1, "bad.wav")
    meta = write_csv(tmp_path / "meta.csv", [row("good.wav"), {**row("bad.wav"), **bad}])
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert str(meta) in str(error.value)
    assert_reported(problem_lines(error), "bad.wav", reason)
    assert not any(line.startswith("good.wav") for line in problem_lines(error))


@pytest.mark.parametrize("name", ["../x.wav", "/abs.wav", "a/b.wav", "..\\x.wav", "C:\\x.wav", "..", "."])
def test_slice_name_escaping_the_data_folder_is_rejected(tmp_path: Path, data_dir: Path, name: str) -> None:
    # Make the target exist wherever it would point, so only the escape check can reject it.
    (data_dir / "x.wav").write_bytes(b"RIFF")
    (data_dir / "fold1" / "a").mkdir()
    touch(data_dir, 1, "a/b.wav")
    touch(data_dir, 1, "good.wav")
    meta = write_csv(tmp_path / "meta.csv", [row("good.wav"), row(name)])
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert str(meta) in str(error.value)
    assert_reported(problem_lines(error), name, "escape the data folder")


def test_symlink_pointing_outside_the_data_folder_is_rejected(tmp_path: Path, data_dir: Path) -> None:
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"RIFF")
    (data_dir / "fold1" / "link.wav").symlink_to(outside)
    touch(data_dir, 1, "good.wav")
    meta = write_csv(tmp_path / "meta.csv", [row("good.wav"), row("link.wav")])
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert_reported(problem_lines(error), "link.wav", "outside the data folder")


def test_symlinks_inside_the_data_folder_are_accepted(tmp_path: Path, data_dir: Path) -> None:
    target = touch(data_dir, 2, "real.wav")
    (data_dir / "fold1" / "link.wav").symlink_to(target)
    linked_root = tmp_path / "linked-audio"
    linked_root.symlink_to(data_dir, target_is_directory=True)
    meta = write_csv(tmp_path / "meta.csv", [row("link.wav"), row("real.wav", fold=2)])
    index = load_metadata(meta, linked_root)
    assert [r.slice_file_name for r in index.records] == ["link.wav", "real.wav"]


def test_missing_audio_file_is_reported(tmp_path: Path, data_dir: Path) -> None:
    touch(data_dir, 1, "here.wav")
    touch(data_dir, 3, "elsewhere.wav")  # exists, but in another fold than listed
    meta = write_csv(tmp_path / "meta.csv", [row("here.wav"), row("elsewhere.wav", fold=2)])
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert_reported(problem_lines(error), "elsewhere.wav", "file not found")
    assert str(data_dir / "fold2" / "elsewhere.wav") in str(error.value)


def test_duplicate_row_is_reported_once(tmp_path: Path, data_dir: Path) -> None:
    touch(data_dir, 1, "a.wav")
    touch(data_dir, 1, "b.wav")
    meta = write_csv(tmp_path / "meta.csv", [row("a.wav"), row("b.wav"), row("a.wav")])
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    lines = problem_lines(error)
    assert_reported(lines, "a.wav", "listed twice (also on line 2)")
    assert len(lines) == 1


def test_same_name_in_two_folds_is_not_a_duplicate(tmp_path: Path, data_dir: Path) -> None:
    touch(data_dir, 1, "a.wav")
    touch(data_dir, 2, "a.wav")
    index = load_metadata(write_csv(tmp_path / "meta.csv", [row("a.wav"), row("a.wav", fold=2)]), data_dir)
    assert [r.path for r in index.records] == [data_dir / "fold1" / "a.wav", data_dir / "fold2" / "a.wav"]


def test_class_id_with_two_names_is_reported(tmp_path: Path, data_dir: Path) -> None:
    rows = [row("a.wav", class_id=0, class_name="dog"), row("b.wav", class_id=0, class_name="dog_bark")]
    for r in rows:
        touch(data_dir, 1, r["slice_file_name"])
    meta = write_csv(tmp_path / "meta.csv", rows)
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert str(meta) in str(error.value)
    assert_reported(problem_lines(error), "meta.csv", "classID 0 has several class names: dog, dog_bark")


def test_class_name_with_two_ids_is_reported(tmp_path: Path, data_dir: Path) -> None:
    rows = [row("a.wav", class_id=0, class_name="dog"), row("b.wav", class_id=1, class_name="dog")]
    for r in rows:
        touch(data_dir, 1, r["slice_file_name"])
    meta = write_csv(tmp_path / "meta.csv", rows)
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert_reported(problem_lines(error), "meta.csv", "class 'dog' has several classIDs: 0, 1")


def test_every_problem_is_reported_at_once(tmp_path: Path, data_dir: Path) -> None:
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"RIFF")
    (data_dir / "fold1" / "link.wav").symlink_to(outside)
    (data_dir / "fold1" / "a").mkdir()
    for name in ("good.wav", "a/b.wav", "h1.wav", "h2.wav", "s1.wav", "s2.wav"):
        touch(data_dir, 1, name)
    rows = [
        row("good.wav"),
        row("f11.wav", fold=11),
        row("fx.wav", fold="x"),
        row("missing.wav", fold=2),
        row("../x.wav"),
        row("/abs.wav"),
        row("a/b.wav"),
        row("link.wav"),
        row("good.wav"),
        row("h1.wav", class_id=1, class_name="horn"),
        row("h2.wav", class_id=1, class_name="car_horn"),
        row("s1.wav", class_id=2, class_name="siren"),
        row("s2.wav", class_id=3, class_name="siren"),
    ]
    meta = write_csv(tmp_path / "meta.csv", rows)
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    message = str(error.value)
    assert message.startswith(f"{meta}: 14 problem(s)")
    lines = problem_lines(error)
    expected = [
        ("f11.wav", "fold 11 is not in 1..10"),
        ("fx.wav", "fold 'x' is not an integer"),
        ("missing.wav", "file not found"),
        ("../x.wav", "escape the data folder"),
        ("/abs.wav", "escape the data folder"),
        ("a/b.wav", "escape the data folder"),
        ("link.wav", "outside the data folder"),
        ("good.wav", "listed twice (also on line 2)"),
        ("meta.csv", "classID 1 has several class names: car_horn, horn"),
        ("meta.csv", "class 'siren' has several classIDs: 2, 3"),
        # Each tied row is named too, so skipped_clips.csv lists every clip that is dropped.
        ("h1.wav", "disagrees with the rest of the metadata"),
        ("h2.wav", "disagrees with the rest of the metadata"),
        ("s1.wav", "disagrees with the rest of the metadata"),
        ("s2.wav", "disagrees with the rest of the metadata"),
    ]
    for file, reason in expected:
        assert_reported(lines, file, reason)
    assert len(lines) == len(expected)


def test_skip_bad_skips_exactly_the_bad_rows(tmp_path: Path, data_dir: Path, caplog) -> None:
    good = [
        row("g1.wav", class_id=0, class_name="dog", fs_id="1"),
        row("g2.wav", fold=2, class_id=1, class_name="horn", fs_id="2"),
        row("g3.wav", fold=3, class_id=0, class_name="dog", fs_id="3"),
    ]
    for r in good:
        touch(data_dir, int(r["fold"]), r["slice_file_name"])
    bad = [row("f11.wav", fold=11), row("missing.wav"), row("../x.wav"), row("g1.wav", fs_id="1")]
    meta = write_csv(tmp_path / "meta.csv", [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3]])
    with caplog.at_level("WARNING"):
        index = load_metadata(meta, data_dir, skip_bad=True)

    assert [(r.slice_file_name, r.fold) for r in index.records] == [
        ("g1.wav", 1),
        ("g2.wav", 2),
        ("g3.wav", 3),
    ]
    assert index.class_names == ["dog", "horn"]
    skipped = {(p.file, p.reason.split(" (")[0].split(":")[0]) for p in index.skipped}
    assert skipped == {
        ("f11.wav", "fold 11 is not in 1..10"),
        ("missing.wav", "file not found"),
        ("../x.wav", "slice_file_name is not a plain file name"),
        ("g1.wav", "listed twice"),
    }
    assert "skipping 4 bad clip(s) of 7" in caplog.text


def test_skip_bad_drops_rows_of_an_inconsistent_class(tmp_path: Path, data_dir: Path) -> None:
    rows = [
        row("d.wav", class_id=0, class_name="dog"),
        row("h.wav", class_id=1, class_name="horn"),
        row("s1.wav", class_id=2, class_name="siren"),
        row("s2.wav", class_id=2, class_name="sirens"),
    ]
    for r in rows:
        touch(data_dir, 1, r["slice_file_name"])
    index = load_metadata(write_csv(tmp_path / "meta.csv", rows), data_dir, skip_bad=True)
    assert [r.slice_file_name for r in index.records] == ["d.wav", "h.wav"]
    assert index.class_names == ["dog", "horn"]
    assert any("classID 2 has several class names" in p.reason for p in index.skipped)
    assert {p.file for p in index.skipped} >= {"s1.wav", "s2.wav"}


def test_skip_bad_drops_only_the_dissenting_row_when_most_rows_agree(tmp_path: Path, data_dir: Path) -> None:
    """A typo in one row's class name drops that clip, not the whole class (classID 1 sits mid-range)."""
    rows = [
        row("d.wav", class_id=0, class_name="dog"),
        row("h1.wav", class_id=1, class_name="horn"),
        row("h2.wav", class_id=1, class_name="horn"),
        row("h3.wav", class_id=1, class_name="hron"),
        row("s.wav", class_id=2, class_name="siren"),
    ]
    for r in rows:
        touch(data_dir, 1, r["slice_file_name"])
    index = load_metadata(write_csv(tmp_path / "meta.csv", rows), data_dir, skip_bad=True)
    assert [r.slice_file_name for r in index.records] == ["d.wav", "h1.wav", "h2.wav", "s.wav"]
    assert index.class_names == ["dog", "horn", "siren"]
    assert "h3.wav" in {p.file for p in index.skipped}


def test_skip_bad_with_nothing_usable_still_fails(tmp_path: Path, data_dir: Path) -> None:
    meta = write_csv(tmp_path / "meta.csv", [row("missing.wav"), row("f11.wav", fold=11)])
    with pytest.raises(DataError, match="no usable clips"):
        load_metadata(meta, data_dir, skip_bad=True)


def test_class_ids_with_a_gap_are_rejected(tmp_path: Path, data_dir: Path) -> None:
    rows = [row("a.wav", class_id=0, class_name="dog"), row("b.wav", class_id=2, class_name="siren")]
    for r in rows:
        touch(data_dir, 1, r["slice_file_name"])
    meta = write_csv(tmp_path / "meta.csv", rows)
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert str(error.value).startswith(f"{meta}: ") and "0..K-1 without gaps, got [0, 2]" in str(error.value)


def test_missing_metadata_file_is_named(tmp_path: Path, data_dir: Path) -> None:
    meta = tmp_path / "nope.csv"
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert str(meta) in str(error.value) and "not found" in str(error.value)


def test_missing_data_folder_is_named(tmp_path: Path, data_dir: Path) -> None:
    touch(data_dir, 1, "a.wav")
    meta = write_csv(tmp_path / "meta.csv", [row("a.wav")])
    missing = tmp_path / "no-audio"
    with pytest.raises(DataError) as error:
        load_metadata(meta, missing)
    assert str(missing) in str(error.value) and "not found" in str(error.value)
    # A file where the folder should be is not a data folder either.
    with pytest.raises(DataError, match="audio folder not found"):
        load_metadata(meta, meta)


def test_header_only_metadata_is_rejected(tmp_path: Path, data_dir: Path) -> None:
    meta = write_csv(tmp_path / "meta.csv", [])
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir)
    assert str(meta) in str(error.value) and "no rows" in str(error.value)


def test_check_files_false_skips_only_the_existence_check(tmp_path: Path, data_dir: Path) -> None:
    meta = write_csv(tmp_path / "meta.csv", [row("absent.wav"), row("../x.wav")])
    with pytest.raises(DataError) as error:
        load_metadata(meta, data_dir, check_files=False)
    lines = problem_lines(error)
    assert_reported(lines, "../x.wav", "escape the data folder")
    assert not any(line.startswith("absent.wav") for line in lines)
    os.remove(meta)
    meta = write_csv(tmp_path / "meta.csv", [row("absent.wav")])
    assert load_metadata(meta, data_dir, check_files=False).records[0].slice_file_name == "absent.wav"
