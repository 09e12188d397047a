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

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from urbansound.config import AudioConfig, AugmentConfig, FeatureConfig
from urbansound.data.audio import load_audio_or_reason
from urbansound.data.metadata import Problem
from urbansound.devices import variant_device
from urbansound.errors import DataError
from urbansound.features.frontend import make_frontend
from urbansound.io_utils import atomic_output, atomic_write_text, format_bytes

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Bump when the feature code changes its output for the same settings: old entries then stop matching.
FEATURE_CODE_VERSION = 1
# Bump when the variant code changes its output for the same settings.
VARIANT_ENGINE_VERSION = 3  # 3: white noise drawn on the computing device
# In each settings folder: the settings its entries were made with (what marks a folder as the cache's).
SETTINGS_FILE = "settings.json"


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


def to_host(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
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
        raise _Damaged(
            f"{size} bytes, expected {expected} ({offset} of header and {expected - offset} of data)"
        )
    return offset


def _read_data(handle: BinaryIO, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The checked array in an open .npy file, read into memory (a read-only view of the bytes)."""
    _check_npy(handle, shape, dtype)
    n_bytes = math.prod(shape) * dtype.itemsize
    data = handle.read(n_bytes)
    if len(data) != n_bytes:  # cut short since it was checked
        raise _Damaged(f"only {len(data)} of {n_bytes} bytes of data could be read")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _map_data(handle: BinaryIO, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The checked array in an open .npy file, memory-mapped read-only.

    Checked and mapped through one handle, so a file another process deletes or replaces in between cannot
    be mapped unchecked: the map keeps the inode that was checked.
    """
    offset = _check_npy(handle, shape, dtype)
    if math.prod(shape) == 0:  # mmap cannot map zero bytes
        empty = np.zeros(shape, dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape)


def _checked(path: Path, what: str, use: Callable[[BinaryIO], T]) -> T | None:
    """``use(handle)`` with ``path`` open for reading; None if the file is missing, or damaged (``use``
    raised _Damaged), in which case it is reported once and deleted so that it is computed again."""
    try:
        with open(path, "rb") as handle:
            return use(handle)
    except FileNotFoundError:
        return None
    except _Damaged as damage:
        logger.warning("damaged %s %s: %s; deleting it and computing it again", what, path, damage)
        # Another process that found the same damage may have deleted it first.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
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


def variant_batch_size(device: torch.device) -> int:
    """Clips per batch of variant computation: 8 on the CPU, where small batches stay in cache, 64 on an
    accelerator, where large ones fill it."""
    return 8 if device.type == "cpu" else 64


def _waveform_batches(
    paths: list[Path], audio: AudioConfig, batch_size: int, num_workers: int | None
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``(positions, waveforms (clips, samples))`` batches of ``paths``, decoded in DataLoader workers (by
    default one per ``4 * batch_size`` clips, at most one per core).

    Raises:
        DataError: a clip cannot be decoded (naming the file and the reason).
    """
    if num_workers is None:
        num_workers = min(len(paths) // (4 * batch_size), os.cpu_count() or 1)
    loader = DataLoader(
        _ClipDataset(paths, audio, None),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_identity,
        prefetch_factor=4 if num_workers else None,
    )
    for batch in loader:
        if batch.errors:
            raise DataError(next(iter(batch.errors.values())))
        assert batch.tensor is not None
        yield batch.positions, batch.tensor


def decode_clips(
    paths: Sequence[Path], audio: AudioConfig, num_workers: int | None = None, progress: bool = True
) -> np.ndarray:
    """The waveforms of ``paths`` (decoded, resampled, cut or padded to the clip length) as one float32
    array ``(clips, samples)``, decoded in DataLoader workers.

    Raises:
        DataError: a clip cannot be decoded (naming the file and the reason).
    """
    paths = [Path(p) for p in paths]
    out = np.empty((len(paths), audio.n_samples), dtype=np.float32)
    bar = _Progress(len(paths), "decode", progress)
    for positions, waveforms in _waveform_batches(paths, audio, 32, num_workers):
        out[positions] = waveforms.numpy()
        bar.update(len(positions))
    logger.info("decoded %d clip(s) (%s) in %.0f s", len(paths), format_bytes(out.nbytes), bar.close())
    return out


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


# What each kind of cache file is called in warnings and errors.
_ENTRY = "feature cache entry"
_VARIANT_ENTRY = "feature cache entry of augmented variants"
_PACK = "feature cache pack"


@dataclass(frozen=True)
class _EntryKind:
    """One kind of per-clip cache file: its name in messages, where a key's file lives, the exact shape of
    one clip's array, and how to compute the files of some clips (returning the positions that failed)."""

    what: str
    path: Callable[[str], Path]
    shape: tuple[int, ...]  # (n_bands, frames) for features, (variants, n_bands, frames) for variants
    compute: Callable[[list[Path], list[str]], dict[int, Problem]]


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
        self.np_dtype = np.dtype(dtype)
        self.directory = Path(root) / settings_hash(audio, features, dtype)
        self.frontend = make_frontend(features, audio.sample_rate)
        self.n_bands = features.n_mels
        self.n_frames = self.frontend.n_frames(audio.n_samples)

    def entry_path(self, key: str) -> Path:
        return self.directory / "entries" / key[:2] / f"{key}.npy"

    def _write_settings(self) -> None:
        path = self.directory / SETTINGS_FILE
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
        A damaged entry or pack is reported, deleted and computed again.

        Raises:
            ResourceError: the disk filled up (entries written before are kept; a re-run continues).
        """
        self._write_settings()
        paths = [Path(p) for p in paths]
        keys = [file_key(p) for p in paths]
        on = torch.device(device or "cpu")

        def compute(todo_paths: list[Path], todo_keys: list[str]) -> dict[int, Problem]:
            return self._compute(todo_paths, todo_keys, num_workers, batch_size, progress, on)

        kind = _EntryKind(_ENTRY, self.entry_path, (self.n_bands, self.n_frames), compute)
        failed = self._ensure_entries(kind, paths, keys)
        digest = hashlib.sha256(
            "\n".join(k if i not in failed else "-" for i, k in enumerate(keys)).encode()
        ).hexdigest()[:24]
        array = self._stack(kind, self.directory / "packs" / f"{digest}.npy", paths, keys, set(failed))
        return CachedFeatures(array=array, failed=failed)

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
        bar = _Progress(len(paths), "features", progress)
        with torch.inference_mode():
            for batch in loader:
                for i, message in batch.errors.items():
                    failed[i] = Problem(paths[i].name, message)
                    logger.error("%s", message)
                if batch.tensor is not None:
                    features = batch.tensor if on_cpu else frontend(batch.tensor.to(device))
                    for i, feature in zip(batch.positions, to_host(features, self.np_dtype), strict=True):
                        _atomic_save_npy(self.entry_path(keys[i]), feature, f"the {_ENTRY}")
                bar.update(len(batch.positions) + len(batch.errors))
        bar.close()
        logger.info("computed features of %d clip(s) into %s", len(paths) - len(failed), self.directory)
        return failed

    def frontend_on(self, device: torch.device) -> torch.nn.Module:
        """The cache's front end on ``device``: the CPU one itself, a new copy for any other device.

        Never ``self.frontend.to(device)``: that moves the shared module in place, and the next caller that
        feeds it CPU waveforms fails (stft input and window on different devices).
        """
        if device.type == "cpu":
            return self.frontend
        return make_frontend(self.features, self.audio.sample_rate).to(device)

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
        features are computed on ``device`` (default CPU; the CPU for MPS, see
        :func:`~urbansound.devices.variant_device`), ``batch_size`` clips at a time (default:
        :func:`variant_batch_size`).

        Returns:
            a read-only memory map ``(len(paths), variants, n_bands, frames)`` in the order of ``paths``.
            Clips that cannot be decoded raise DataError (their originals already failed the main build).
            A damaged entry or pack is reported, deleted and computed again.
        """
        self._write_settings()
        paths = [Path(p) for p in paths]
        keys = [file_key(p) for p in paths]
        on = variant_device(torch.device(device or "cpu"))
        batch = batch_size or variant_batch_size(on)

        def compute(todo_paths: list[Path], todo_keys: list[str]) -> dict[int, Problem]:
            self._compute_variants(todo_paths, todo_keys, augment, seed, num_workers, progress, on, batch)
            return {}  # a clip that cannot be decoded raises DataError instead

        shape = (augment.variants, self.n_bands, self.n_frames)
        kind = _EntryKind(_VARIANT_ENTRY, lambda key: self.variant_path(key, augment, seed), shape, compute)
        self._ensure_entries(kind, paths, keys)
        digest = hashlib.sha256("\n".join([variants_hash(augment, seed), *keys]).encode()).hexdigest()[:24]
        return self._stack(kind, self.directory / "packs" / f"variants-{digest}.npy", paths, keys, set())

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

        frontend = self.frontend_on(device)
        logger.info(
            "computing %d augmented variant(s) of %d training clip(s) on %s",
            augment.variants,
            len(paths),
            device,
        )
        bar = _Progress(len(paths), "augment", progress, log_every=200)
        with torch.inference_mode():
            for positions, waveforms in _waveform_batches(paths, self.audio, batch_size, num_workers):
                batch_keys = [keys[i] for i in positions]
                waves = make_variants(waveforms.to(device), batch_keys, augment, self.audio.sample_rate, seed)
                features = frontend(waves.flatten(0, 1)).unflatten(
                    0, waves.shape[:2]
                )  # (clips, V, bands, frames)
                for key, feature in zip(batch_keys, to_host(features, self.np_dtype), strict=True):
                    _atomic_save_npy(self.variant_path(key, augment, seed), feature, f"the {_VARIANT_ENTRY}")
                bar.update(len(positions))
        logger.info(
            "computed %d augmented variant(s) of %d clip(s) in %.0f s",
            augment.variants,
            len(paths),
            bar.close(),
        )

    def _entry_present(self, kind: _EntryKind, key: str) -> bool:
        """Whether ``key``'s entry exists intact (its header and size are checked, its data not read); a
        damaged one is reported and deleted, so it counts as missing."""
        check = functools.partial(_check_npy, shape=kind.shape, dtype=self.np_dtype)
        return _checked(kind.path(key), kind.what, check) is not None

    def _ensure_entries(self, kind: _EntryKind, paths: list[Path], keys: list[str]) -> dict[int, Problem]:
        """Compute the entries of ``keys`` that are missing or damaged; return the positions that failed."""
        todo = [i for i, key in enumerate(keys) if not self._entry_present(kind, key)]
        if not todo:
            return {}
        # Said before the work, so whoever watches a long first build knows which disk fills and by how much.
        row_bytes = math.prod(kind.shape) * self.np_dtype.itemsize
        logger.info(
            "writing a %s for each of %d clip(s) into %s: about %s, and %s for the pack of all %d clips "
            "(`urbansound cache info` lists the cache; `urbansound cache clear` empties it)",
            kind.what,
            len(todo),
            self.directory,
            format_bytes(len(todo) * row_bytes),
            format_bytes(len(keys) * row_bytes),
            len(keys),
        )
        failed = kind.compute([paths[i] for i in todo], [keys[i] for i in todo])
        return {todo[i]: problem for i, problem in failed.items()}

    def _stack(
        self, kind: _EntryKind, pack: Path, paths: list[Path], keys: list[str], failed: set[int]
    ) -> np.ndarray:
        """The entries of ``keys`` stacked ``(clips, *kind.shape)`` in one .npy at ``pack``, written once and
        memory-mapped read-only, so data-loader workers and distributed ranks share one copy through the page
        cache. Rows in ``failed`` are zeros. A damaged pack is reported, deleted and written again.

        Several processes may build one cache at once without a lock, because renames are enough: every
        file appears complete (temp file, fsync, rename), so two writers of one entry or pack each rename a
        whole file with the same content and the later rename wins; nothing reads a temporary file; a reader
        checks and maps a file through one handle, so it never maps one it did not check; and a file that
        vanishes between the check and the read (another process deleted it as damaged) is computed again
        here. The cost of a race is duplicated work, never a failed run or a half-read file. (A lock would
        save that work, but flock is not honoured by every network file system, so it could not be relied on
        for correctness anyway.)
        """
        shape = (len(keys), *kind.shape)
        open_pack = functools.partial(_map_data, shape=shape, dtype=self.np_dtype)
        packed = _checked(pack, _PACK, open_pack)
        writes = 0
        while packed is None:  # written again only when another process deleted it meanwhile
            if writes == 3:
                raise DataError(f"{pack}: the {_PACK} vanished or was damaged after each of {writes} writes")
            self._write_pack(kind, pack, paths, keys, failed)
            writes += 1
            packed = _checked(pack, _PACK, open_pack)
        return packed

    def _write_pack(
        self, kind: _EntryKind, pack: Path, paths: list[Path], keys: list[str], failed: set[int]
    ) -> None:
        """Write the entries of ``keys`` stacked into ``pack`` (zeros for ``failed`` rows), row by row."""
        shape = (len(keys), *kind.shape)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.np_dtype),
            "fortran_order": False,
            "shape": shape,
        }
        size = 128 + math.prod(shape) * self.np_dtype.itemsize
        zeros = np.zeros(kind.shape, self.np_dtype)
        # Plain writes, not stores into an open_memmap: on a full disk a write raises ENOSPC (and becomes a
        # ResourceError), while a store into a mapped page of a sparse file kills the process with SIGBUS.
        with atomic_output(pack, f"the {_PACK}", expected_bytes=size) as tmp, open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            for i, key in enumerate(keys):
                row = zeros if i in failed else self._entry_row(kind, paths[i], key)
                handle.write(row.tobytes())

    def _entry_row(self, kind: _EntryKind, path: Path, key: str) -> np.ndarray:
        """The array of ``path``'s entry ``key``; computed again if it went missing or was found damaged
        since :meth:`_ensure_entries` checked it (another process deleted it, the disk damaged it)."""
        read = functools.partial(_read_data, shape=kind.shape, dtype=self.np_dtype)
        row = _checked(kind.path(key), kind.what, read)
        if row is None:
            problems = kind.compute([path], [key])
            row = _checked(kind.path(key), kind.what, read)
            if row is None:
                reason = problems[0].reason if problems else "it vanished again"
                raise DataError(f"{path}: its {kind.what} could not be computed again: {reason}")
        return row


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
