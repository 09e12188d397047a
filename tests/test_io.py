"""Writes on real disks (urbansound.io_utils and its users): a full disk or a file-size limit gives a clear
ResourceError and leaves nothing half-written, a re-run continues, and every file is fsynced before it is
renamed into place."""

from __future__ import annotations

import errno
import multiprocessing
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from urbansound.config import AudioConfig, FeatureConfig, ModelConfig
from urbansound.errors import ResourceError
from urbansound.features.cache import FeatureCache
from urbansound.io_utils import atomic_output, atomic_write_json
from urbansound.modelfile import ModelSpec, build_classifier, load_model_file, save_model_file
from urbansound.training.checkpoint import load_checkpoint, save_checkpoint

AUDIO = AudioConfig(sample_rate=8000, duration=0.5)  # as conftest's small_audio: 4,000 samples
FEATURES = FeatureConfig(n_fft=256, hop_length=128, n_mels=16)  # as small_features: (16, 32) per clip
SIZE_LIMIT = 16_000  # bytes: entries (2 kB) fit, the pack of 24 clips (49 kB) and the other files do not


def write_clips(folder: Path, n: int = 24) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        paths.append(folder / f"clip{k}.wav")
        sf.write(paths[-1], 0.3 * rng.standard_normal(4000).astype(np.float32), 8000)
    return paths


def tiny_model() -> tuple[torch.nn.Module, ModelSpec]:
    """A 100 kB classifier and its spec."""
    spec = ModelSpec(AUDIO, FEATURES, ModelConfig(name="cnn", n_classes=3), ["a", "b", "c"])
    return build_classifier(spec), spec


def leftovers(folder: Path) -> list[Path]:
    """Temporary files left behind under ``folder``."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


class CountingFrontend:
    """Counts the clips a cache's front end transforms (as tests/test_cache.py's ``spy``)."""

    def __init__(self, cache: FeatureCache) -> None:
        self.frontend, self.clips = cache.frontend, 0
        cache.frontend = self  # type: ignore[assignment]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.clips += batch.shape[0]
        return self.frontend(batch)


def build(cache: FeatureCache, paths: list[Path]) -> np.ndarray:
    return np.array(cache.build(paths, num_workers=0, batch_size=4, progress=False).array)


# ---------------------------------------------------------------- a real limit: RLIMIT_FSIZE in a child


def _write_past_a_size_limit(folder: str, clips: list[str], results) -> None:  # noqa: ANN001 - a Queue
    """In a spawned process: every writer under a file-size limit; reports (writer, error type, message)."""
    import resource
    import signal

    out = Path(folder)
    model, spec = tiny_model()
    writers: dict[str, Callable[[], object]] = {
        "cache": lambda: FeatureCache(out / "cache", AUDIO, FEATURES).build(
            [Path(c) for c in clips], num_workers=0, batch_size=4, progress=False
        ),
        "checkpoint": lambda: save_checkpoint(out / "checkpoint.pt", {"weights": torch.zeros(10_000)}),
        "model": lambda: save_model_file(out / "model.safetensors", model, spec),
        "json": lambda: atomic_write_json(out / "metrics.json", {"values": list(range(10_000))}),
    }
    # Past the limit the kernel sends SIGXFSZ, which kills the process unless ignored; ignored, the write
    # fails with EFBIG, as a write to a full disk fails with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (SIZE_LIMIT, hard))
    for name, write in writers.items():
        try:
            write()
            results.put((name, "no error", ""))
        except Exception as error:  # noqa: BLE001 - reported to the test
            results.put((name, type(error).__name__, str(error)))


def test_writes_past_a_real_file_size_limit_fail_clearly_and_a_rerun_continues(tmp_path: Path) -> None:
    clips = write_clips(tmp_path / "clips")
    out = tmp_path / "out"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(
        target=_write_past_a_size_limit, args=(str(out), [str(c) for c in clips], results)
    )
    child.start()
    reports = {name: (kind, message) for name, kind, message in (results.get(timeout=60) for _ in range(4))}
    child.join(timeout=60)
    assert child.exitcode == 0

    cache = FeatureCache(out / "cache", AUDIO, FEATURES)
    expected = {
        "cache": ("the feature cache pack", str(cache.directory / "packs")),
        "checkpoint": ("the training checkpoint", str(out / "checkpoint.pt")),
        "model": ("the model file", str(out / "model.safetensors")),
        "json": ("the JSON file", str(out / "metrics.json")),
    }
    for name, (what, where) in expected.items():
        kind, message = reports[name]
        assert kind == "ResourceError", (name, kind, message)
        assert f"could not write {what} {where}" in message
        assert "File too large" in message and "ulimit" in message
        assert "free" in message and "needs about" in message
    assert leftovers(out) == []
    assert not (out / "checkpoint.pt").exists() and not (out / "model.safetensors").exists()
    assert list((cache.directory / "packs").glob("*")) == []
    assert len(list(cache.directory.rglob("entries/*/*.npy"))) == len(clips)  # written before the pack

    # With the limit gone, the run continues: every entry is reused, only the pack is written.
    counter = CountingFrontend(cache)
    resumed = build(cache, clips)
    assert counter.clips == 0
    np.testing.assert_array_equal(resumed, build(FeatureCache(tmp_path / "clean", AUDIO, FEATURES), clips))


# ---------------------------------------------------------------- simulated: each writer on a full disk


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    "error",
    [enospc(), OSError("2048 requested and 1000 written")],  # the second: numpy's short write, no errno
    ids=["ENOSPC", "short-write"],
)
def test_cache_entry_on_a_full_disk_and_the_rerun_after_space_is_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    clips = write_clips(tmp_path / "clips", n=6)
    real_save = np.save
    saves = []

    def fills_the_disk(handle, array) -> None:  # noqa: ANN001 - np.save's signature
        saves.append(1)
        if len(saves) == 3:
            handle.write(b"\x93NUMPY part of an entry")
            raise error
        real_save(handle, array)

    monkeypatch.setattr(np, "save", fills_the_disk)
    cache = FeatureCache(tmp_path / "cache", AUDIO, FEATURES)
    with pytest.raises(ResourceError) as raised:
        build(cache, clips)
    monkeypatch.undo()
    message = str(raised.value)
    assert f"could not write the feature cache entry {cache.directory / 'entries'}" in message
    assert str(error.strerror or error) in message
    assert "free" in message and "needs about 2.2 kB" in message  # 16 x 32 float32 + header
    assert leftovers(tmp_path) == []
    assert len(list(cache.directory.rglob("entries/*/*.npy"))) == 2

    counter = CountingFrontend(cache)
    resumed = build(cache, clips)
    assert counter.clips == len(clips) - 2  # the two entries written before the disk filled are reused
    np.testing.assert_array_equal(resumed, build(FeatureCache(tmp_path / "clean", AUDIO, FEATURES), clips))


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.ones(10_000)})

    def fills_the_disk(state, handle) -> None:  # noqa: ANN001 - torch.save's signature
        handle.write(b"PK part of a checkpoint")
        raise enospc()

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(ResourceError) as raised:
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(10_000)})
    monkeypatch.undo()
    message = str(raised.value)
    assert f"could not write the training checkpoint {path}" in message
    assert "No space left on device (errno ENOSPC)" in message
    assert "needs about 40.0 kB" in message  # 10,000 float32
    assert load_checkpoint(path)["epoch"] == 1
    assert leftovers(tmp_path) == []


def test_model_file_on_a_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, spec = tiny_model()
    path = tmp_path / "model.safetensors"

    def fills_the_disk(tensors, filename, metadata=None) -> None:  # noqa: ANN001 - save_file's signature
        Path(filename).write_bytes(b"part of a model file")
        # How safetensors (Rust) reports it: no errno attribute, only the message.
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("urbansound.modelfile.save_file", fills_the_disk)
    with pytest.raises(
        ResourceError, match=f"could not write the model file {path}: No space left"
    ) as raised:
        save_model_file(path, model, spec)
    assert "needs about 10" in str(raised.value)  # ~100 kB of weights
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    save_model_file(path, model, spec)  # with space again
    load_model_file(path)


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.ENOSPC, "No space left on device"),
        (errno.EDQUOT, "the disk quota is used up"),
        (errno.EFBIG, "ulimit -f"),
    ],
)
def test_json_report_failing_at_fsync_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, hint: str
) -> None:
    """Some file systems (NFS, delayed allocation) report a full disk only when the data is flushed."""
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"accuracy": 0.5})

    def flush_fails(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", flush_fails)
    with pytest.raises(ResourceError) as raised:
        atomic_write_json(path, {"accuracy": 0.7}, what="the run's metrics")
    monkeypatch.undo()
    message = str(raised.value)
    assert f"could not write the run's metrics {path}: {os.strerror(code)}" in message
    assert hint in message and f"{tmp_path} has " in message and "needs about 22 bytes" in message
    assert path.read_text() == '{\n  "accuracy": 0.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_errors_that_are_not_failed_writes_pass_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.pt"
    with pytest.raises(TypeError), atomic_output(path, "the state") as tmp:
        tmp.write_bytes(b"half")
        raise TypeError("a bug in the writer")
    assert list(tmp_path.iterdir()) == []

    # A failed rename is no lack of space (tests/test_evaluation.py relies on the OSError).
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"), atomic_output(path, "the state") as tmp:
        tmp.write_bytes(b"all")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- fsync


@dataclass
class FsyncLog:
    """Every ``os.fsync``: the inode, size and kind of what was synced, and its name at that moment."""

    calls: list[tuple[int, int, bool, str]] = field(default_factory=list)

    def __call__(self, fd: int) -> None:
        info = os.fstat(fd)
        name = os.readlink(f"/proc/self/fd/{fd}")
        self.calls.append((info.st_ino, info.st_size, stat.S_ISDIR(info.st_mode), name))

    def assert_synced_then_renamed(self, path: Path) -> None:
        """``path``'s data was fsynced under a temporary name (before the rename), then its folder."""
        final = path.stat()
        files = [i for i, c in enumerate(self.calls) if c[:3] == (final.st_ino, final.st_size, False)]
        assert files, f"{path} was not fsynced: {self.calls}"
        synced_as = Path(self.calls[files[-1]][3])
        assert synced_as.parent == path.parent and synced_as.name.startswith(f".{path.name}.")
        assert synced_as.name.endswith(".tmp"), f"fsynced as {synced_as}, not under its temporary name"
        folder = path.parent.stat().st_ino
        assert any(c[0] == folder and c[2] for c in self.calls[files[-1] :]), "folder not fsynced"


# /proc/self/fd tells the name under which a file was synced.
needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> FsyncLog:
    log = FsyncLog()
    monkeypatch.setattr(os, "fsync", log)
    return log


BY_NAME: dict[str, Callable[[Path], None]] = {
    "np.save": lambda tmp: np.save(str(tmp), np.arange(1000.0)),
    "torch.save": lambda tmp: torch.save({"w": torch.arange(1000.0)}, tmp),
    "safetensors": lambda tmp: save_file({"w": torch.arange(1000.0)}, str(tmp)),
    "open_memmap": lambda tmp: np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.float32, shape=(1000,)
    ).flush(),
}


@needs_proc
@pytest.mark.parametrize("writer", list(BY_NAME))
def test_writers_by_name_are_fsynced_before_the_rename(tmp_path: Path, fsyncs: FsyncLog, writer: str) -> None:
    path = tmp_path / "out" / "file.bin"
    with atomic_output(path, "the test file") as tmp:
        BY_NAME[writer](tmp)
    fsyncs.assert_synced_then_renamed(path)


@needs_proc
def test_every_project_writer_fsyncs(tmp_path: Path, fsyncs: FsyncLog) -> None:
    model, spec = tiny_model()
    writes = {
        tmp_path / "checkpoint.pt": lambda p: save_checkpoint(p, {"w": torch.ones(100)}),
        tmp_path / "model.safetensors": lambda p: save_model_file(p, model, spec),
        tmp_path / "metrics.json": lambda p: atomic_write_json(p, {"accuracy": 0.5}),
    }
    for path, write in writes.items():
        write(path)
        fsyncs.assert_synced_then_renamed(path)

    clips = write_clips(tmp_path / "clips", n=2)
    cache = FeatureCache(tmp_path / "cache", AUDIO, FEATURES)
    build(cache, clips)
    for written in [*cache.directory.rglob("entries/*/*.npy"), *cache.directory.rglob("packs/*.npy")]:
        fsyncs.assert_synced_then_renamed(written)
