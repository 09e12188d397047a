"""Feature cache: each (audio file, feature settings) is decoded and transformed once, then reused across
epochs, runs and folds.

Layout under the cache root::

    <settings-hash>/settings.json            the audio + feature settings the entries were made with
    <settings-hash>/entries/ab/<key>.npy      one clip's dB features (n_bands, frames), float32 or float16
    <settings-hash>/variants/<hash>/ab/<key>.npy   one clip's augmented variants (variants, n_bands, frames)
    <settings-hash>/packs/<list-hash>.npy     the entries of one clip list stacked, memory-mapped for training
    <settings-hash>/packs/variants-<list-hash>.npy   the same for variant entries

An entry's key hashes the file's resolved path, size and modification time, so an edited file gets a new
entry; a changed setting gets a new settings folder. Every file is written to a temporary name, fsynced and
renamed into place, so an interrupted build leaves no corrupt entry and keeps every finished one.

Every file is checked when it is opened: a readable .npy header, exactly the dtype and shape the settings
imply, and a size of header + data. A damaged one (a partial copy, a garbled header) is reported once,
deleted and computed again, and the run goes on.

Several processes may build one cache at once (runs side by side, torchrun nodes on a shared file system)
without a lock: see :meth:`FeatureCache._stack`.
"""

from __future__ import annotations

import hashlib
import contextlib
import json
import logging
import os
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from urbansound.config import AudioConfig, AugmentConfig, FeatureConfig
from urbansound.data.audio import load_audio_or_reason
from urbansound.data.metadata import Problem
from urbansound.errors import DataError
from urbansound.features.frontend import SpectrogramFrontend
from urbansound.io_utils import atomic_output, atomic_write_text

logger = logging.getLogger(__name__)

# Bump when the feature code changes its output for the same settings: old entries then stop matching.
FEATURE_CODE_VERSION = 1
# Bump when the variant code changes its output for the same settings.
VARIANT_ENGINE_VERSION = 2


class _Progress:
    """Progress of a build: a tqdm bar on a terminal, and a log line (clips, rate, ETA) every ``log_every``
    clips otherwise, so logs of CI, make or a nohup'd run also say how far a long build is."""

    def __init__(self, total: int, desc: str, progress: bool, log_every: int = 1000) -> None:
        self.total, self.desc, self.log_every = total, desc, log_every
        self.enabled = progress
        # disable=None: tqdm draws only on a terminal.
        self.bar = tqdm(total=total, desc=desc, unit="clip", disable=None if progress else True, leave=False)
        self.started, self.done, self.next_log = time.perf_counter(), 0, log_every

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        if self.enabled and self.bar.disable and (self.done >= self.next_log or self.done == self.total):
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            logger.info(
                "%s: %d/%d clips, %.1f clips/s, ETA %.0f s",
                self.desc,
                self.done,
                self.total,
                rate,
                (self.total - self.done) / rate,
            )
            while self.next_log <= self.done:
                self.next_log += self.log_every

    def close(self) -> float:
        """Close the bar and return the seconds since the start."""
        self.bar.close()
        return time.perf_counter() - self.started


def settings_hash(audio: AudioConfig, features: FeatureConfig, dtype: str = "float32") -> str:
    settings = asdict(features)
    settings.pop("db_reference")  # applied by the model's normaliser, after the cache
    payload = {
        "audio": asdict(audio),
        "features": settings,
        "dtype": dtype,
        "code_version": FEATURE_CODE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def file_key(path: Path) -> str:
    """Identity of an audio file's content as far as the file system tells: path, size, mtime."""
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def to_host(tensor: torch.Tensor, dtype: type[np.floating]) -> np.ndarray:
    """A device tensor as a host array of ``dtype``: the one place where computed features leave the device
    (tests stand a shape-only device in here)."""
    return tensor.detach().cpu().numpy().astype(dtype, copy=False)


def _atomic_save_npy(path: Path, array: np.ndarray, what: str) -> None:
    """Write ``array`` as a .npy at ``path`` atomically; ResourceError naming ``what`` when space runs out."""
    with atomic_output(path, what, expected_bytes=array.nbytes + 128) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


class _Damaged(Exception):
    """A cache file whose header, dtype, shape or size is not what the settings imply."""


# No checksum: the damage seen in practice (a partial copy, a truncated or garbled file) changes the header
# or the size, which these checks catch without reading the data. A right-sized file with wrong data would
# need the media to flip bits, which the disk's and file system's own checksums report as read errors; the
# crash case (a new name over blocks never written) is ruled out by the fsync before each rename. And a
# checksum would read every byte of every entry on every run: the work the cache exists to avoid.
def _check_npy(handle: BinaryIO, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Check an open .npy file against the exact ``shape`` and ``dtype`` it must hold; return the byte
    offset of its data. Reads only the header (~128 bytes) and the file's size.

    Raises:
        _Damaged: saying what is wrong.
    """
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(handle)
        if version not in readers:
            raise _Damaged(f"unsupported .npy version {version}")
        found_shape, fortran_order, found_dtype = readers[version](handle)
    except (ValueError, SyntaxError, TypeError, EOFError) as error:  # numpy's messages for bad headers
        raise _Damaged(f"unreadable header ({error})") from None
    if found_dtype != dtype or fortran_order:
        raise _Damaged(f"dtype {found_dtype}{' (Fortran order)' if fortran_order else ''}, expected {dtype}")
    if tuple(found_shape) != shape:
        raise _Damaged(f"shape {tuple(found_shape)}, expected {shape}")
    offset = handle.tell()
    size, expected = os.fstat(handle.fileno()).st_size, offset + math.prod(shape) * dtype.itemsize
    if size != expected:
        raise _Damaged(f"{size} bytes, expected {expected} ({offset} of header and {expected - offset} of data)")
    return offset


def _discard(path: Path, what: str, reason: str) -> None:
    """Report a damaged cache file once and delete it, so that it is computed again."""
    logger.warning("damaged %s %s: %s; deleting it and computing it again", what, path, reason)
    # Another process that found the same damage may have deleted it first.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read_checked(path: Path, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray | None:
    """The array in ``path`` if it is exactly ``shape`` and ``dtype``; None if it is missing, or damaged
    (then reported and deleted)."""
    try:
        with open(path, "rb") as handle:
            _check_npy(handle, shape, dtype)
            data = handle.read(math.prod(shape) * dtype.itemsize)
    except FileNotFoundError:
        return None
    except _Damaged as damage:
        _discard(path, what, str(damage))
        return None
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _map_checked(path: Path, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray | None:
    """``path`` memory-mapped read-only if it is exactly ``shape`` and ``dtype``; None if it is missing, or
    damaged (then reported and deleted).

    Checked and mapped through one open handle, so a file another process deletes or replaces in between
    cannot be mapped unchecked: the map keeps the inode that was checked.
    """
    try:
        with open(path, "rb") as handle:
            offset = _check_npy(handle, shape, dtype)
            if math.prod(shape) == 0:  # mmap cannot map zero bytes
                empty = np.zeros(shape, dtype)
                empty.flags.writeable = False
                return empty
            return np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape)
    except FileNotFoundError:
        return None
    except _Damaged as damage:
        _discard(path, what, str(damage))
        return None


@dataclass
class _ClipBatch:
    """What a loader worker hands back: positions that loaded, their stacked waveforms or (when the worker
    ran the front end) features, and a message for each position that failed."""

    positions: list[int]
    tensor: torch.Tensor | None  # (clips, samples) waveforms or (clips, n_bands, frames) features
    errors: dict[int, str]


class _ClipDataset(Dataset):
    """Decodes a batch of clips in a DataLoader worker and, when given a front end, transforms them there too.

    On CPU the transform runs in the workers: every core decodes *and* transforms, and only the 11x smaller
    features cross the process boundary. For an accelerator the workers return waveforms and the caller runs
    the front end on the device. Failures come back as messages, so one bad file does not stop the build.
    """

    def __init__(self, paths: Sequence[Path], audio: AudioConfig, frontend: torch.nn.Module | None) -> None:
        self.paths = list(paths)
        self.audio = audio
        self.frontend = frontend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _ClipBatch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> _ClipBatch:
        waveforms, positions, errors = [], [], {}
        rate, n_samples = self.audio.sample_rate, self.audio.n_samples
        for i in indices:
            waveform, reason = load_audio_or_reason(self.paths[i], rate, n_samples)
            if waveform is None:
                errors[i] = reason
            else:
                waveforms.append(waveform)
                positions.append(i)
        tensor = torch.from_numpy(np.stack(waveforms)) if waveforms else None
        if tensor is not None and self.frontend is not None:
            with torch.inference_mode():
                tensor = self.frontend(tensor)
        return _ClipBatch(positions, tensor, errors)


def _identity(batch: _ClipBatch) -> _ClipBatch:
    return batch


def variants_hash(augment: AugmentConfig, seed: int) -> str:
    """Identity of the audio-level augmentation settings (SpecAugment and mixup do not change variants)."""
    payload = {
        "variants": augment.variants,
        "time_stretch": augment.time_stretch,
        "pitch_shift": augment.pitch_shift,
        "time_shift": augment.time_shift,
        "gain_db": augment.gain_db,
        "noise_snr_db": augment.noise_snr_db,
        "seed": seed,
        # Which stretch and pitch-shift code made them: batched torch replaced librosa's in version 2.
        "engine": VARIANT_ENGINE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CachedFeatures:
    """Features of a clip list: a read-only memory map ``(clips, n_bands, frames)`` and the clips that
    failed (their rows are zero; callers drop them)."""

    array: np.ndarray
    failed: dict[int, Problem]


class FeatureCache:
    """Computes dB features for clip files once, in parallel, and serves them memory-mapped."""

    def __init__(
        self, root: str | Path, audio: AudioConfig, features: FeatureConfig, dtype: str = "float32"
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"cache dtype must be float32 or float16, got {dtype}")
        self.audio = audio
        self.features = features
        self.dtype = dtype
        self.directory = Path(root) / settings_hash(audio, features, dtype)
        self.frontend = SpectrogramFrontend(features, audio.sample_rate)
        self.n_bands = features.n_mels
        self.n_frames = self.frontend.n_frames(audio.n_samples)

    def entry_path(self, key: str) -> Path:
        return self.directory / "entries" / key[:2] / f"{key}.npy"

    def _write_settings(self) -> None:
        path = self.directory / "settings.json"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            text = json.dumps(
                {
                    "audio": asdict(self.audio),
                    "features": asdict(self.features),
                    "dtype": self.dtype,
                    "code_version": FEATURE_CODE_VERSION,
                },
                indent=2,
            )
            atomic_write_text(path, text)

    def build(
        self,
        paths: Sequence[Path],
        num_workers: int | None = None,
        batch_size: int = 32,
        progress: bool = True,
        device: str | torch.device | None = None,
    ) -> CachedFeatures:
        """Make sure every file has an entry, then return the stacked features of ``paths`` in order.

        Files that cannot be decoded are reported in ``failed`` (with the reason); every other entry is
        computed and kept, so a re-run after fixing the bad files only computes those. Decoding runs in
        DataLoader workers; the front end runs on ``device`` (default CPU), ``batch_size`` clips at a time.
        """
        self._write_settings()
        paths = [Path(p) for p in paths]
        keys = [file_key(p) for p in paths]
        todo = [i for i, k in enumerate(keys) if not self.entry_path(k).exists()]
        failed: dict[int, Problem] = {}
        if todo:
            failed = self._compute(
                [paths[i] for i in todo],
                [keys[i] for i in todo],
                num_workers,
                batch_size,
                progress,
                torch.device(device or "cpu"),
            )
            failed = {todo[i]: problem for i, problem in failed.items()}
        return CachedFeatures(array=self._pack(keys, set(failed)), failed=failed)

    def _compute(
        self,
        paths: list[Path],
        keys: list[str],
        num_workers: int | None,
        batch_size: int,
        progress: bool,
        device: torch.device,
    ) -> dict[int, Problem]:
        if num_workers is None:
            num_workers = min(len(paths) // batch_size, os.cpu_count() or 1)
        on_cpu = device.type == "cpu"
        frontend = self.frontend_on(device)
        loader = DataLoader(
            _ClipDataset(paths, self.audio, frontend if on_cpu else None),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_identity,
            prefetch_factor=4 if num_workers else None,
        )
        failed: dict[int, Problem] = {}
        out_dtype = np.float16 if self.dtype == "float16" else np.float32
        bar = _Progress(len(paths), "features", progress)
        with torch.inference_mode():
            for batch in loader:
                for i, message in batch.errors.items():
                    failed[i] = Problem(paths[i].name, message)
                    logger.error("%s", message)
                if batch.tensor is not None:
                    features = batch.tensor if on_cpu else frontend(batch.tensor.to(device))
                    for i, feature in zip(batch.positions, to_host(features, out_dtype), strict=True):
                        _atomic_save_npy(self.entry_path(keys[i]), feature)
                bar.update(len(batch.positions) + len(batch.errors))
        bar.close()
        logger.info("computed features of %d clip(s) into %s", len(paths) - len(failed), self.directory)
        return failed

    def frontend_on(self, device: torch.device) -> SpectrogramFrontend:
        """The cache's front end on ``device``: the CPU one itself, a new copy for any other device.

        Never ``self.frontend.to(device)``: that moves the shared module in place, and the next caller that
        feeds it CPU waveforms fails (stft input and window on different devices).
        """
        if device.type == "cpu":
            return self.frontend
        return SpectrogramFrontend(self.features, self.audio.sample_rate).to(device)

    def variant_path(self, key: str, augment: AugmentConfig, seed: int) -> Path:
        return self.directory / "variants" / variants_hash(augment, seed) / key[:2] / f"{key}.npy"

    def build_variants(
        self,
        paths: Sequence[Path],
        augment: AugmentConfig,
        seed: int = 0,
        num_workers: int | None = None,
        progress: bool = True,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Features of ``augment.variants`` augmented copies of each clip, computed once and cached.

        Each clip's variants are stored as one entry ``(variants, n_bands, frames)`` keyed by (file, feature
        settings, augmentation settings, seed); a variant's random draws depend on (file, variant number,
        seed) only, so every fold and run that trains on a clip sees the same variants. Clips are decoded in
        DataLoader workers; the variants (:func:`~urbansound.features.augment.make_variants`) and their
        features are computed on ``device`` (default CPU), ``batch_size`` clips at a time (default: 8 on the
        CPU, where small batches stay in cache, and 64 on an accelerator, where large ones fill it).

        Returns:
            a read-only memory map ``(len(paths), variants, n_bands, frames)`` in the order of ``paths``.
            Clips that cannot be decoded raise DataError (their originals already failed the main build).
        """
        self._write_settings()
        paths = [Path(p) for p in paths]
        keys = [file_key(p) for p in paths]
        todo = [i for i, k in enumerate(keys) if not self.variant_path(k, augment, seed).exists()]
        if todo:
            device = torch.device(device or "cpu")
            self._compute_variants(
                [paths[i] for i in todo],
                [keys[i] for i in todo],
                augment,
                seed,
                num_workers,
                progress,
                device,
                batch_size or (8 if device.type == "cpu" else 64),
            )
        digest = hashlib.sha256("\n".join([variants_hash(augment, seed), *keys]).encode()).hexdigest()[:24]
        path = self.directory / "packs" / f"variants-{digest}.npy"
        if not path.exists():
            with atomic_output(path) as tmp:
                shape = (len(keys), augment.variants, self.n_bands, self.n_frames)
                packed = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(self.dtype), shape=shape)
                for i, key in enumerate(keys):
                    packed[i] = np.load(self.variant_path(key, augment, seed))
                packed.flush()
                del packed
        return np.load(path, mmap_mode="r")

    def _compute_variants(
        self,
        paths: list[Path],
        keys: list[str],
        augment: AugmentConfig,
        seed: int,
        num_workers: int | None,
        progress: bool,
        device: torch.device,
        batch_size: int,
    ) -> None:
        from urbansound.features.augment import make_variants

        if num_workers is None:
            num_workers = min(len(paths) // (4 * batch_size), os.cpu_count() or 1)
        loader = DataLoader(
            _ClipDataset(paths, self.audio, None),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_identity,
            prefetch_factor=4 if num_workers else None,
        )
        frontend = self.frontend_on(device)
        out_dtype = np.float16 if self.dtype == "float16" else np.float32
        logger.info(
            "computing %d augmented variant(s) of %d training clip(s) on %s",
            augment.variants,
            len(paths),
            device,
        )
        bar = _Progress(len(paths), "augment", progress, log_every=200)
        with torch.inference_mode():
            for batch in loader:
                if batch.errors:
                    raise DataError(next(iter(batch.errors.values())))
                assert batch.tensor is not None
                batch_keys = [keys[i] for i in batch.positions]
                waves = make_variants(
                    batch.tensor.to(device), batch_keys, augment, self.audio.sample_rate, seed
                )
                features = frontend(waves.flatten(0, 1)).unflatten(
                    0, waves.shape[:2]
                )  # (clips, V, bands, frames)
                for key, feature in zip(batch_keys, to_host(features, out_dtype), strict=True):
                    _atomic_save_npy(self.variant_path(key, augment, seed), feature)
                bar.update(len(batch.positions))
        logger.info(
            "computed %d augmented variant(s) of %d clip(s) in %.0f s",
            augment.variants,
            len(paths),
            bar.close(),
        )

    def _pack(self, keys: list[str], failed: set[int]) -> np.ndarray:
        """Stack the entries of ``keys`` into one .npy, written once and memory-mapped read-only, so
        data-loader workers and distributed ranks share one copy through the page cache."""
        digest = hashlib.sha256(
            "\n".join(k if i not in failed else "-" for i, k in enumerate(keys)).encode()
        ).hexdigest()[:24]
        path = self.directory / "packs" / f"{digest}.npy"
        if not path.exists():
            with atomic_output(path) as tmp:
                packed = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.dtype(self.dtype), shape=(len(keys), self.n_bands, self.n_frames)
                )
                for i, key in enumerate(keys):
                    packed[i] = 0 if i in failed else np.load(self.entry_path(key))
                packed.flush()
                del packed
        return np.load(path, mmap_mode="r")


def band_statistics(
    features: np.ndarray, indices: Sequence[int], chunk: int = 256, db_reference: str = "absolute"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation (dB) over the clips ``indices`` and all their frames.

    With ``db_reference="clip_max"`` each clip is first taken relative to its loudest cell, as the model's
    normaliser will see it.

    Accumulates in float64 chunk by chunk so a memory-mapped array is never loaded whole.
    Returns two float32 arrays of shape ``(n_bands,)``.
    """
    indices = np.sort(np.asarray(indices))
    n_bands = features.shape[1]
    total = np.zeros(n_bands)
    total_sq = np.zeros(n_bands)
    count = 0
    for start in range(0, len(indices), chunk):
        block = np.asarray(
            features[indices[start : start + chunk]], dtype=np.float64
        )  # (clips, bands, frames)
        if db_reference == "clip_max":
            block = block - block.max(axis=(1, 2), keepdims=True)
        total += block.sum(axis=(0, 2))
        total_sq += np.square(block).sum(axis=(0, 2))
        count += block.shape[0] * block.shape[2]
    if count == 0:
        raise DataError("no training clips to compute normalisation statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)
