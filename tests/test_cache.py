"""Tests of the feature cache (urbansound.features.cache)."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from urbansound.config import AudioConfig, AugmentConfig, FeatureConfig
from urbansound.data.audio import load_audio
from urbansound.features.cache import FeatureCache, band_statistics, file_key
from urbansound.features.frontend import SpectrogramFrontend


class CountingFrontend:
    """Wraps a cache's front end, counting the clips it is asked to transform; optionally fails on a call."""

    def __init__(self, frontend: SpectrogramFrontend, fail_on_call: int | None = None) -> None:
        self.frontend = frontend
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.clips = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("interrupted while computing features")
        self.clips += batch.shape[0]
        return self.frontend(batch)


def spy(cache: FeatureCache, fail_on_call: int | None = None) -> CountingFrontend:
    counter = CountingFrontend(cache.frontend, fail_on_call)
    cache.frontend = counter  # type: ignore[assignment]
    return counter


def reference_features(path: Path, audio: AudioConfig, features: FeatureConfig) -> np.ndarray:
    """Features of one file computed directly, without the cache."""
    wave = torch.from_numpy(load_audio(path, audio.sample_rate, audio.n_samples))[None]
    with torch.inference_mode():
        return SpectrogramFrontend(features, audio.sample_rate)(wave)[0].numpy()


def entry_files(root: Path) -> list[Path]:
    return sorted(root.rglob("entries/*/*.npy"))


def build(cache: FeatureCache, paths: list[Path], batch_size: int = 32):
    return cache.build(paths, num_workers=0, batch_size=batch_size, progress=False)


def test_first_build_computes_the_right_features(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    result = build(cache, event_clips)
    assert result.failed == {}
    assert result.array.shape == (len(event_clips), 16, 1 + small_audio.n_samples // 128)
    assert result.array.dtype == np.float32
    for row, path in zip(result.array, event_clips, strict=True):
        np.testing.assert_allclose(row, reference_features(path, small_audio, small_features), atol=1e-4)
    assert len(entry_files(tmp_path / "cache")) == len(event_clips)
    assert (cache.directory / "settings.json").is_file()


def test_second_build_computes_nothing_and_returns_identical_arrays(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    first_cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    counter = spy(first_cache)
    first = np.array(build(first_cache, event_clips).array)
    assert counter.clips == len(event_clips)
    mtimes = {p: p.stat().st_mtime_ns for p in entry_files(tmp_path / "cache")}

    # A new cache object (a new run) over the same settings and files.
    second_cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    counter = spy(second_cache)
    second = build(second_cache, event_clips)
    assert counter.calls == 0
    assert second.failed == {}
    np.testing.assert_array_equal(second.array, first)
    assert {p: p.stat().st_mtime_ns for p in entry_files(tmp_path / "cache")} == mtimes
    # A different selection and order of the same files is served from the entries too.
    subset = build(second_cache, event_clips[::-2])
    assert counter.calls == 0
    np.testing.assert_array_equal(subset.array, first[::-2])


@pytest.mark.parametrize(
    "change",
    [
        lambda audio, features: (audio, dataclasses.replace(features, n_mels=8)),
        lambda audio, features: (dataclasses.replace(audio, sample_rate=16000), features),
        lambda audio, features: (audio, dataclasses.replace(features, kind="gammatone")),
        lambda audio, features: (audio, dataclasses.replace(features, top_db=60.0)),
    ],
    ids=["n_mels", "sample_rate", "kind", "top_db"],
)
def test_changed_setting_uses_another_folder(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig, change
) -> None:
    original = FeatureCache(tmp_path / "cache", small_audio, small_features)
    build(original, event_clips[:2])
    audio, features = change(small_audio, small_features)
    changed = FeatureCache(tmp_path / "cache", audio, features)
    assert changed.directory != original.directory
    counter = spy(changed)
    result = build(changed, event_clips[:2])
    assert counter.clips == 2  # nothing reused from the other settings
    expected = np.stack([reference_features(p, audio, features) for p in event_clips[:2]])
    np.testing.assert_allclose(result.array, expected, atol=1e-4)


def test_modified_file_gets_a_new_entry_and_the_others_are_reused(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    before = np.array(build(cache, event_clips).array)

    edited = event_clips[2]
    stat = edited.stat()
    t = np.arange(int(0.6 * 8000)) / 8000
    sf.write(edited, 0.5 * np.sin(2 * np.pi * 440.0 * t), 8000, subtype="PCM_16")  # new content
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))

    counter = spy(cache)
    after = build(cache, event_clips)
    assert counter.clips == 1
    assert len(entry_files(tmp_path / "cache")) == len(event_clips) + 1
    np.testing.assert_allclose(
        after.array[2], reference_features(edited, small_audio, small_features), atol=1e-4
    )
    assert not np.allclose(after.array[2], before[2], atol=1.0)
    others = [i for i in range(len(event_clips)) if i != 2]
    np.testing.assert_array_equal(after.array[others], before[others])


def test_undecodable_file_is_reported_and_the_others_kept(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    bad = event_clips[0].parent / "broken.wav"
    bad.write_text("not audio at all")
    paths = [*event_clips[:3], bad, *event_clips[3:]]
    cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    result = build(cache, paths, batch_size=4)  # the bad file shares a batch with good ones

    assert list(result.failed) == [3]
    assert result.failed[3].file == "broken.wav"
    assert str(bad) in result.failed[3].reason
    assert len(entry_files(tmp_path / "cache")) == len(event_clips)
    assert np.all(result.array[3] == 0)
    for i, path in enumerate(paths):
        if i != 3:
            np.testing.assert_allclose(
                result.array[i], reference_features(path, small_audio, small_features), atol=1e-4
            )

    # Next build: the good entries are kept, the bad file is reported again.
    counter = spy(cache)
    again = build(cache, paths)
    assert counter.clips == 0
    assert list(again.failed) == [3]
    np.testing.assert_array_equal(again.array, result.array)


def test_interrupted_build_leaves_no_partial_entry_and_resumes(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    root = tmp_path / "cache"
    cache = FeatureCache(root, small_audio, small_features)
    counter = spy(cache, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        build(cache, event_clips, batch_size=2)
    assert counter.clips == 2
    assert list(root.rglob("*.tmp")) == []
    assert list(root.rglob("packs/*.npy")) == []
    entries = entry_files(root)
    assert len(entries) == 2  # the first batch is kept
    for entry in entries:
        assert np.load(entry).shape == (16, 1 + small_audio.n_samples // 128)

    resumed = FeatureCache(root, small_audio, small_features)
    counter = spy(resumed)
    result = build(resumed, event_clips, batch_size=2)
    assert counter.clips == len(event_clips) - 2
    assert result.failed == {}
    for row, path in zip(result.array, event_clips, strict=True):
        np.testing.assert_allclose(row, reference_features(path, small_audio, small_features), atol=1e-4)


def test_interruption_while_writing_an_entry_leaves_no_trace(
    tmp_path: Path,
    event_clips: list[Path],
    small_audio: AudioConfig,
    small_features: FeatureConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save = np.save
    saves = []

    def save_then_die(handle, array) -> None:
        saves.append(1)
        if len(saves) == 3:
            handle.write(b"\x93NUMPY half an entry")
            raise KeyboardInterrupt
        real_save(handle, array)

    monkeypatch.setattr(np, "save", save_then_die)
    cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    with pytest.raises(KeyboardInterrupt):
        build(cache, event_clips)
    monkeypatch.undo()
    assert list((tmp_path / "cache").rglob("*.tmp")) == []
    entries = entry_files(tmp_path / "cache")
    assert len(entries) == 2
    for entry in entries:
        np.load(entry)  # complete, readable files only
    result = build(FeatureCache(tmp_path / "cache", small_audio, small_features), event_clips)
    assert result.failed == {} and result.array.shape[0] == len(event_clips)


def test_returned_array_is_a_read_only_memmap(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    result = build(FeatureCache(tmp_path / "cache", small_audio, small_features), event_clips[:3])
    assert isinstance(result.array, np.memmap)
    assert not result.array.flags.writeable
    with pytest.raises(ValueError):
        result.array[0, 0, 0] = 1.0


def test_band_statistics_match_numpy(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    array = build(FeatureCache(tmp_path / "cache", small_audio, small_features), event_clips).array
    chosen = [4, 1, 3]
    mean, std = band_statistics(array, chosen, chunk=2)  # chunks smaller than the selection
    subset = np.asarray(array[sorted(chosen)], dtype=np.float64)
    assert mean.shape == std.shape == (16,) and mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, subset.mean(axis=(0, 2)), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std, subset.std(axis=(0, 2)), rtol=1e-4, atol=1e-4)
    # Other clips do not leak into the statistics.
    everything = np.asarray(array, dtype=np.float64).mean(axis=(0, 2))
    assert not np.allclose(mean, everything, atol=1e-2)


def test_float16_cache_is_close_to_float32(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    single = FeatureCache(tmp_path / "cache", small_audio, small_features)
    half = FeatureCache(tmp_path / "cache", small_audio, small_features, dtype="float16")
    assert half.directory != single.directory
    full = build(single, event_clips).array
    reduced = build(half, event_clips).array
    assert reduced.dtype == np.float16
    assert reduced.nbytes * 2 == full.nbytes
    # float16 keeps ~3 significant digits: 0.06 dB at 100 dB.
    np.testing.assert_allclose(reduced.astype(np.float32), full, rtol=0, atol=0.07)
    with pytest.raises(ValueError):
        FeatureCache(tmp_path / "cache", small_audio, small_features, dtype="int8")


def test_clip_max_statistics_are_those_of_max_referenced_clips_and_share_the_cache(
    tmp_path: Path, event_clips: list[Path], small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    array = build(FeatureCache(tmp_path / "cache", small_audio, small_features), event_clips).array
    chosen = [0, 2, 3]
    mean, std = band_statistics(array, chosen, chunk=2, db_reference="clip_max")
    subset = np.asarray(array[chosen], dtype=np.float64)
    subset -= subset.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(mean, subset.mean(axis=(0, 2)), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std, subset.std(axis=(0, 2)), rtol=1e-4, atol=1e-4)
    assert float(array[0].max()) != 0.0  # the cache keeps absolute dB; the statistics moved, not the array
    # The reference is applied after the cache, so both settings read the same entries.
    relative = dataclasses.replace(small_features, db_reference="clip_max")
    assert (
        FeatureCache(tmp_path / "cache", small_audio, relative).directory
        == FeatureCache(tmp_path / "cache", small_audio, small_features).directory
    )


# ---------------------------------------------------------------- damaged files and concurrent builders

AUGMENT = AugmentConfig(
    variants=2, time_stretch=[0.9, 1.1], pitch_shift=[-1.0, 1.0], noise_snr_db=[10.0, 30.0]
)


def truncate(path: Path) -> None:
    """A partial copy: the file cut to half its size."""
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def garble_header(path: Path) -> None:
    """A garbled header: the bytes of the header dictionary overwritten, the size unchanged."""
    with open(path, "r+b") as handle:
        handle.seek(12)
        handle.write(b"\x00garbage{[(" * 4)


def wrong_shape(path: Path) -> None:
    """A valid .npy of the wrong shape (e.g. written by other settings)."""
    np.save(path, np.zeros((3, 5), np.float32))


def wrong_dtype(path: Path) -> None:
    """A valid .npy of the right shape in float64."""
    np.save(path, np.load(path).astype(np.float64))


def emptied(path: Path) -> None:
    path.write_bytes(b"")


DAMAGES = [truncate, garble_header, wrong_shape, wrong_dtype, emptied]


def damaged_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "damaged" in r.getMessage()
    ]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.__name__)
def test_damaged_entry_is_reported_recomputed_once_and_the_run_goes_on(
    tmp_path: Path,
    event_clips: list[Path],
    small_audio: AudioConfig,
    small_features: FeatureConfig,
    caplog: pytest.LogCaptureFixture,
    damage,
) -> None:
    clean = np.array(build(FeatureCache(tmp_path / "clean", small_audio, small_features), event_clips).array)
    cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    build(cache, event_clips)
    entry = cache.entry_path(file_key(event_clips[2]))
    damage(entry)

    counter = spy(cache)
    with caplog.at_level(logging.WARNING, logger="urbansound"):
        # Another order needs another pack, made from the recomputed entry.
        result = build(cache, event_clips[::-1])
    assert counter.clips == 1
    (warning,) = damaged_warnings(caplog)
    assert str(entry) in warning and "feature cache entry" in warning
    np.testing.assert_array_equal(result.array, clean[::-1])
    assert np.load(entry).shape == (16, cache.n_frames)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="urbansound"):
        again = build(cache, event_clips)
    assert counter.clips == 1 and damaged_warnings(caplog) == []  # healed for good: computed only once
    np.testing.assert_array_equal(again.array, clean)


@pytest.mark.parametrize("damage", [truncate, garble_header, emptied], ids=lambda d: d.__name__)
def test_damaged_pack_is_rebuilt_from_the_entries(
    tmp_path: Path,
    event_clips: list[Path],
    small_audio: AudioConfig,
    small_features: FeatureConfig,
    caplog: pytest.LogCaptureFixture,
    damage,
) -> None:
    cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    clean = np.array(build(cache, event_clips).array)
    (pack,) = (cache.directory / "packs").glob("*.npy")
    damage(pack)

    counter = spy(cache)
    with caplog.at_level(logging.WARNING, logger="urbansound"):
        result = build(cache, event_clips)  # before: "mmap length is greater than file size"
    assert counter.clips == 0  # the entries are intact: only the pack is written again
    (warning,) = damaged_warnings(caplog)
    assert str(pack) in warning and "feature cache pack" in warning
    np.testing.assert_array_equal(result.array, clean)
    assert isinstance(result.array, np.memmap) and not result.array.flags.writeable

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="urbansound"):
        np.testing.assert_array_equal(build(cache, event_clips).array, clean)
    assert damaged_warnings(caplog) == []


@pytest.mark.parametrize("mishap", ["deleted", "truncated"])
def test_entry_lost_while_the_pack_is_written_is_computed_again(
    tmp_path: Path,
    event_clips: list[Path],
    small_audio: AudioConfig,
    small_features: FeatureConfig,
    monkeypatch: pytest.MonkeyPatch,
    mishap: str,
) -> None:
    """Another process deletes an entry (it found it damaged) between this one's check and its read."""
    clean = np.array(build(FeatureCache(tmp_path / "clean", small_audio, small_features), event_clips).array)
    cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    build(cache, event_clips[:4])
    entry = cache.entry_path(file_key(event_clips[1]))
    checked = cache._ensure_entries

    def check_then_lose(*args, **kwargs):
        failed = checked(*args, **kwargs)
        entry.unlink() if mishap == "deleted" else truncate(entry)
        return failed

    monkeypatch.setattr(cache, "_ensure_entries", check_then_lose)
    counter = spy(cache)
    result = build(cache, event_clips)
    assert counter.clips == 2 + 1  # the two new clips, and the lost one again
    np.testing.assert_array_equal(result.array, clean)


def test_truncated_variant_entry_and_pack_are_healed(
    tmp_path: Path,
    event_clips: list[Path],
    small_audio: AudioConfig,
    small_features: FeatureConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def variants(cache: FeatureCache, paths: list[Path]) -> np.ndarray:
        # One clip per batch: batched stretching differs from unbatched in the last float bits.
        return cache.build_variants(paths, AUGMENT, num_workers=0, progress=False, batch_size=1)

    clips = event_clips[:4]
    clean = np.array(variants(FeatureCache(tmp_path / "clean", small_audio, small_features), clips))
    cache = FeatureCache(tmp_path / "cache", small_audio, small_features)
    variants(cache, clips)
    entry = cache.variant_path(file_key(clips[1]), AUGMENT, 0)
    truncate(entry)
    (pack,) = (cache.directory / "packs").glob("variants-*.npy")
    truncate(pack)

    counter = spy(cache)
    with caplog.at_level(logging.WARNING, logger="urbansound"):
        result = variants(cache, clips)
    assert counter.clips == AUGMENT.variants  # one clip's variants, computed again
    warnings = damaged_warnings(caplog)
    assert len(warnings) == 2
    assert any(str(entry) in w and "augmented variants" in w for w in warnings)
    assert any(str(pack) in w and "pack" in w for w in warnings)
    np.testing.assert_array_equal(result, clean)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="urbansound"):
        np.testing.assert_array_equal(variants(cache, clips), clean)
    assert counter.clips == AUGMENT.variants and damaged_warnings(caplog) == []


def _build_in_turn(root: str, paths: list[str], out: str, barrier) -> None:  # noqa: ANN001 - a Barrier
    """One of several processes building one cache at once (run in a spawned process)."""
    audio, features = (
        AudioConfig(sample_rate=8000, duration=0.5),
        FeatureConfig(n_fft=256, hop_length=128, n_mels=16),
    )
    torch.set_num_threads(1)  # two builders on a small machine: threads would only contend
    cache = FeatureCache(root, audio, features)
    clips = [Path(p) for p in paths]
    barrier.wait(timeout=60)
    result = cache.build(clips, num_workers=0, batch_size=2, progress=False)
    variants = cache.build_variants(clips[:6], AUGMENT, num_workers=0, progress=False, batch_size=1)
    np.savez(out, features=result.array, variants=variants, failed=len(result.failed))


def test_two_processes_building_one_cache_at_once_both_finish_with_identical_features(
    tmp_path: Path, small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    rng = np.random.default_rng(0)
    clips = []
    for k in range(24):
        clips.append(tmp_path / f"clip{k}.wav")
        sf.write(clips[-1], 0.3 * rng.standard_normal(4000).astype(np.float32), 8000)
    root = tmp_path / "cache"
    # A damaged entry from an earlier run: both processes find it, one deletes it, both compute it.
    cache = FeatureCache(root, small_audio, small_features)
    build(cache, clips[:2])
    truncate(cache.entry_path(file_key(clips[0])))

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    outs = [tmp_path / f"out{n}.npz" for n in range(2)]
    workers = [
        context.Process(target=_build_in_turn, args=(str(root), [str(c) for c in clips], str(out), barrier))
        for out in outs
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]

    clean = FeatureCache(tmp_path / "clean", small_audio, small_features)
    expected = np.array(build(clean, clips).array)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the builders: the thread count moves the variants' last float bits
    try:
        expected_variants = clean.build_variants(
            clips[:6], AUGMENT, num_workers=0, progress=False, batch_size=1
        )
    finally:
        torch.set_num_threads(threads)
    for out in outs:
        with np.load(out) as result:
            assert int(result["failed"]) == 0
            np.testing.assert_array_equal(result["features"], expected)
            np.testing.assert_array_equal(result["variants"], expected_variants)
    assert list(root.rglob("*.tmp")) == []
    assert len(entry_files(root)) == len(clips)
