"""Real UrbanSound8K clips from ../shared (skipped cleanly where that folder is absent)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from urbansound.config import SplitConfig
from urbansound.data.audio import load_audio
from urbansound.data.metadata import load_metadata
from urbansound.data.splits import fold_split, seed_random_split
from urbansound.data.synth import CLASS_NAMES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "urbansound8k"
pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(
        not (SHARED / "materialize.py").is_file(), reason=f"real data not present at {SHARED}"
    ),
]


@pytest.fixture(scope="module")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("us8k")
    subprocess.run(
        [sys.executable, str(SHARED / "materialize.py"), str(dest)], check=True, capture_output=True
    )
    return dest / "UrbanSound8K"


def test_full_official_metadata_parses_and_random_split_matches_the_seed() -> None:
    index = load_metadata(SHARED / "metadata" / "UrbanSound8K.csv", SHARED, check_files=False)
    assert len(index.records) == 8732
    assert index.class_names == list(CLASS_NAMES)  # the synthetic set mirrors the real classes
    assert index.folds == list(range(1, 11))
    split = seed_random_split(len(index.records), seed=0)
    assert split.sizes == {"train": 5589, "val": 1397, "test": 1746}
    # The official folds keep a recording in one fold, with 5 known exceptions: recordings whose slices of
    # *different* classes went to different folds (so no clip of one class leaks across folds).
    folds_of: dict[str, set[int]] = {}
    classes_of: dict[tuple[str, int], set[str]] = {}
    for r in index.records:
        folds_of.setdefault(r.fs_id, set()).add(r.fold)
        classes_of.setdefault((r.fs_id, r.fold), set()).add(r.class_name)
    assert len(folds_of) == 1297
    spanning = {fs_id: folds for fs_id, folds in folds_of.items() if len(folds) > 1}
    assert len(spanning) == 5
    for fs_id, folds in spanning.items():
        per_fold = [classes_of[(fs_id, f)] for f in folds]
        assert not set.intersection(*per_fold), fs_id


def test_every_real_clip_validates_and_loads(real_root: Path) -> None:
    index = load_metadata(real_root / "metadata" / "UrbanSound8K.csv", real_root / "audio")
    assert len(index.records) == 1772 and not index.skipped
    n_samples = 44_100 * 4
    for record in index.records:
        waveform = load_audio(record.path, 44_100, n_samples)
        assert waveform.shape == (n_samples,), record.slice_file_name
        assert waveform.dtype == np.float32
        assert np.isfinite(waveform).all()
        assert np.abs(waveform).max() > 0, f"{record.slice_file_name} decoded to silence"


def test_original_format_clips_load_at_any_rate_and_channel_count(real_root: Path) -> None:
    originals = sorted((SHARED / "original").glob("fold*/*.wav"))
    assert len(originals) == 13
    formats = {(soundfile.info(str(p)).samplerate, soundfile.info(str(p)).channels) for p in originals}
    assert len(formats) >= 2  # the copy holds 44.1 kHz stereo and mono and 22.05 kHz stereo
    for path in originals:
        info = soundfile.info(str(path))
        waveform = load_audio(path, 16_000)
        assert abs(len(waveform) - round(info.duration * 16_000)) <= 2, path.name


def test_real_folds_split_without_shared_recordings(real_root: Path) -> None:
    index = load_metadata(real_root / "metadata" / "UrbanSound8K.csv", real_root / "audio")
    split = fold_split(index.records, SplitConfig(test_fold=2, val_fraction=0.2, train_folds=[1]), seed=0)
    assert len(split.test) == 888
    assert len(split.train) + len(split.val) == 873
    sides = {"train": split.train, "val": split.val, "test": split.test}
    recordings = {side: {index.records[i].fs_id for i in members} for side, members in sides.items()}
    assert not recordings["train"] & recordings["val"]
    assert not recordings["train"] & recordings["test"]
    assert not recordings["val"] & recordings["test"]
