"""Apply a trained model to new recordings of any length, format, rate and channel count.

A recording is decoded, mixed to mono and resampled to the model's rate, then cut into windows of the
model's training duration (``spec.audio.duration`` seconds). Each window is classified on its own; the
clip-level result is the mean of the windows' class probabilities. Every setting (sample rate, window,
features, normalisation) comes from the model file, never from the caller.

Windowing, in seconds (``W`` = window, ``H`` = hop, ``L`` = recording length):

* ``L <= W``: one window, the recording right-padded with zeros to ``W`` as training padded short clips;
* ``L > W``: windows start at ``0, H, 2H, ...`` while they fit, and a last window is aligned to the end of
  the recording (``start = L - W``) when the regular ones leave a tail, so every window holds real audio.

The default hop is half a window: events that straddle a window boundary still fill most of some window,
and the timeline resolves them to ``W / 2``; it costs twice the compute of non-overlapping windows.

Files are read in blocks (:func:`~urbansound.data.audio.stream_audio`): windows are cut from a buffer of
about one window plus one block as they become complete and classified in batches, so a recording of any
length takes the same memory; the result equals classifying the whole decoded waveform. Only the per-window
results (a start time and the class probabilities) grow with the length.

Example::

    predictor = Predictor.from_file("runs/20250101-120000-run/model.safetensors")
    prediction = predictor.predict("street.flac")
    prediction.top_k(2)       # [{"label": "siren", "score": 0.81}, {"label": "car_horn", "score": 0.07}]
    prediction.windows[0]     # Window(start_s=0.0, end_s=4.0, label="siren", probability=0.9, ...)
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from urbansound.data.audio import resample, stream_audio, to_mono
from urbansound.errors import ConfigError, DataError, ResourceError
from urbansound.features.spectrogram import log_filterbank_spectrogram
from urbansound.modelfile import ModelSpec, load_model_file
from urbansound.models.classifier import AudioClassifier

logger = logging.getLogger(__name__)

# Default hop as a fraction of the window: half-overlapping windows (see the module docstring).
DEFAULT_HOP_FRACTION = 0.5

# Level reported for digital silence, in dBFS (JSON has no -inf); far below any real recording's noise floor.
LEVEL_FLOOR_DBFS = -200.0
# What a window or clip is reported as instead of a class (never one of the model's classes).
SILENCE, TOO_SHORT, UNKNOWN = "silence", "too_short", "unknown"
# Statuses of windows and clips with no sound to classify: they carry no class answer (no probability, no
# top-k). ``unknown`` is not one: its best guess, below the confidence floor, is still reported.
NOT_HEARD = (SILENCE, TOO_SHORT)

# Blocks each decoding worker may have in flight: a few short files' worth of read-ahead, so the model does
# not wait on decoding, while a long file's blocks stay a few MB in all.
BLOCK_PREFETCH = 8


@dataclass
class Window:
    """One window of a recording and the model's output for it (times in seconds from the file's start)."""

    start_s: float
    end_s: float
    label: str  # the most probable class (or the status, when one is set)
    probability: float | None  # its probability; None when the status is silence or too_short
    probabilities: np.ndarray  # (n_classes,), in the model's class order (the model's raw output)
    level_dbfs: float | None = None  # RMS level of the window's samples (padding excluded)
    status: str | None = None  # "silence", "too_short" or "unknown" (then also the label); None: a class

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "start_s": round(self.start_s, 4),
            "end_s": round(self.end_s, 4),
            "label": self.label,
            "probability": None if self.probability is None else float(self.probability),
            "status": self.status,
            "level_dbfs": None if self.level_dbfs is None else round(self.level_dbfs, 2),
            "probabilities": {
                name: float(p) for name, p in zip(class_names, self.probabilities, strict=True)
            },
        }


@dataclass
class Prediction:
    """A recording's clip-level class probabilities and its per-window timeline."""

    class_names: list[str]
    probabilities: np.ndarray  # (n_classes,): mean of the windows' probabilities
    windows: list[Window]
    duration_s: float  # of the decoded recording (before any padding)
    source: str | None = None  # the file, when predicted from one
    status: str | None = None  # "silence", "too_short" or "unknown" (then also the label); None: a class
    level_dbfs: float | None = None  # of the loudest window

    @property
    def label(self) -> str:
        if self.status is not None:
            return self.status
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def probability(self) -> float | None:
        """The most probable class's probability; None for silence and too-short input (no class)."""
        if self.status in NOT_HEARD:
            return None
        return float(np.max(self.probabilities))

    def top_k(self, k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` most probable classes, most probable first, as ``{"label", "score"}`` (the score is the
        clip-level probability; the shape Hugging Face's audio-classification pipeline returns). Empty for
        silence and too-short input; ``unknown`` lists the classes it was unsure between."""
        if self.status in NOT_HEARD:
            return []
        order = np.argsort(-self.probabilities, kind="stable")[: max(1, k)]
        return [{"label": self.class_names[i], "score": float(self.probabilities[i])} for i in order]

    def to_dict(self, top_k: int = 3, timeline: bool = True) -> dict[str, Any]:
        """JSON-ready: ``duration_s``, ``clip`` {label, probability, top_k, probabilities}, ``timeline``."""
        result: dict[str, Any] = {
            "duration_s": round(self.duration_s, 4),
            "clip": {
                "label": self.label,
                "probability": self.probability,
                "status": self.status,
                "level_dbfs": None if self.level_dbfs is None else round(self.level_dbfs, 2),
                # "probability", not "score": the key every other probability in this output has
                "top_k": [{"label": c["label"], "probability": c["score"]} for c in self.top_k(top_k)],
                "probabilities": {
                    name: float(p) for name, p in zip(self.class_names, self.probabilities, strict=True)
                },
            },
        }
        if timeline:
            result["timeline"] = [window.to_dict(self.class_names) for window in self.windows]
        return result


@dataclass
class FileResult:
    """What :meth:`Predictor.predict_files` yields per input: a prediction, or the reason there is none."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None


@dataclass
class _Pending:
    """A recording's windows on their way through the model; in ``predict_files`` also a file waiting for
    its turn to be yielded, or a failed one with its reason."""

    path: Path | None = None
    error: str | None = None
    starts: list[int] = field(default_factory=list)  # window starts in samples, in cutting order
    probabilities: list[np.ndarray] = field(default_factory=list)  # one (n_classes,) per finished window
    levels: list[float] = field(default_factory=list)  # dBFS, one per finished window
    n_samples: int = 0  # the recording's length at the model's rate, once it has ended
    cut: bool = False  # the recording has ended and every window has been cut

    @property
    def ready(self) -> bool:
        """Failed, or every window cut and through the model."""
        return self.error is not None or (self.cut and len(self.probabilities) == len(self.starts))


class StreamingWindows:
    """Cuts consecutive mono blocks into the windows :meth:`Predictor.window_starts` lays over their whole.

    Regular windows (starts ``0, hop, 2 hop, ...``) are cut as soon as their last sample arrives; at the end,
    :meth:`finish` adds the end-aligned last window, or the zero-padded only window of a recording shorter
    than a window, so the total length need not be known in advance. The buffer keeps only the last
    ``window`` samples between blocks (all a window still to come can use), so it never holds more than one
    window plus the newest block (``peak_buffered`` records the most it held).

    Example::

        cutter = StreamingWindows(window=16_000, hop=8_000)
        for block in blocks:
            for start, window in cutter.push(block):
                ...  # start in samples; window (16_000,), a view valid until the next push
        for start, window in cutter.finish():
            ...
    """

    def __init__(self, window: int, hop: int) -> None:
        if window < 1 or hop < 1:
            raise ConfigError(f"window and hop must be at least one sample, got {window} and {hop}")
        self.window = window
        self.hop = hop
        self.n_samples = 0  # received so far
        self.peak_buffered = 0  # samples
        self._buffer = np.zeros(0, dtype=np.float32)  # samples [self._offset, self.n_samples)
        self._offset = 0
        self._next_start = 0  # of the next regular window

    def push(self, block: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Append mono samples ``(samples,)``; returns ``(start, window)`` for each window they complete."""
        # Samples before both the next regular window and the last ``window`` are of no use any more.
        keep_from = max(0, min(self._next_start, self.n_samples - self.window))
        self._buffer = np.concatenate(
            [self._buffer[keep_from - self._offset :], np.asarray(block, dtype=np.float32)]
        )
        self._offset = keep_from
        self.n_samples += block.shape[0]
        self.peak_buffered = max(self.peak_buffered, self._buffer.shape[0])
        windows = []
        while self._next_start + self.window <= self.n_samples:
            windows.append((self._next_start, self._view(self._next_start)))
            self._next_start += self.hop
        return windows

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The windows only the end can place: the end-aligned last one when the regular ones leave a tail,
        or the only one, right-padded with zeros, of a recording shorter than a window."""
        n = self.n_samples
        if n < self.window:
            return [(0, np.pad(self._buffer, (0, self.window - n)))]
        if self._next_start - self.hop + self.window >= n:  # the last regular window ends at the end
            return []
        return [(n - self.window, self._view(n - self.window))]

    def _view(self, start: int) -> np.ndarray:
        first = start - self._offset
        return self._buffer[first : first + self.window]


class _WindowBatch:
    """Windows waiting for one forward pass, of one recording or several, copied into one array."""

    def __init__(self, predictor: Predictor, size: int) -> None:
        self.predictor = predictor
        # np.empty maps pages lazily: a short recording's few windows do not make the whole batch resident.
        self.windows = np.empty((size, predictor.window), dtype=np.float32)  # (batch, window)
        self.owners: list[_Pending] = []

    def add(self, owner: _Pending, start: int, window: np.ndarray) -> None:
        """Queue ``owner``'s window starting at sample ``start``; a full batch runs at once."""
        owner.starts.append(start)
        self.windows[len(self.owners)] = window
        self.owners.append(owner)
        if len(self.owners) == self.windows.shape[0]:
            self.run()

    def run(self) -> None:
        """Classify the queued windows (if any), handing each owner its windows' probabilities in order."""
        if not self.owners:
            return
        probabilities = self.predictor.probabilities(self.windows[: len(self.owners)])
        levels = window_levels(self.windows[: len(self.owners)])
        for owner, probs, level in zip(self.owners, probabilities, levels, strict=True):
            owner.probabilities.append(probs)
            owner.levels.append(float(level))
        self.owners.clear()


class FileBlock(NamedTuple):
    """One message from a decoding worker: a block of one file's samples, or the reason the file failed."""

    index: int  # of the file in the input list
    samples: np.ndarray | None  # (samples,) mono float32 at the model's rate; None on failure
    error: str | None = None
    last: bool = False  # the file's final message


def file_blocks(index: int, path: Path, sample_rate: int) -> Iterator[FileBlock]:
    """A file as :class:`FileBlock` messages: its blocks, the last one marked, or a message with the reason
    it cannot be read (possibly after some blocks, when the damage is midway)."""
    if not path.is_file():
        yield FileBlock(index, None, f"{path}: no such file", True)
        return
    previous = None  # one block of look-ahead, to mark the last
    try:
        for block in stream_audio(path, sample_rate):
            if previous is not None:
                yield FileBlock(index, previous)
            previous = block
    except DataError as error:
        yield FileBlock(index, None, str(error), True)
        return
    except Exception as error:  # noqa: BLE001 - any decoder or resampler failure is reported per file
        yield FileBlock(index, None, f"{path}: cannot load audio ({type(error).__name__}: {error})", True)
        return
    yield FileBlock(index, previous if previous is not None else np.zeros(0, np.float32), None, True)


class BlockDataset(IterableDataset):
    """Streams files as :class:`FileBlock` messages. With ``k`` DataLoader workers, worker ``w`` reads
    files ``w, w + k, w + 2k, ...`` one after another, so each file's blocks arrive in order."""

    def __init__(self, paths: Sequence[Path], sample_rate: int) -> None:
        self.paths = list(paths)
        self.sample_rate = sample_rate

    def __iter__(self) -> Iterator[FileBlock]:
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for index in range(first, len(self.paths), step):
            yield from file_blocks(index, self.paths[index], self.sample_rate)


def _first(batch: list[Any]) -> Any:
    """Collate for ``batch_size=1`` loaders: the item itself (module level, so workers can pickle it)."""
    return batch[0]


def block_loader(paths: Sequence[Path], sample_rate: int, num_workers: int) -> DataLoader:
    """Yields :class:`FileBlock` messages of ``paths``, decoded in ``num_workers`` worker processes (0: in
    this process) to mono float32 at ``sample_rate`` Hz.

    The loader takes one message from each worker in turn, so a long file on one worker does not hold up
    the files of another, and at most ``BLOCK_PREFETCH`` blocks per worker are in flight whatever the files'
    lengths (a whole file never travels through the worker queue).
    """
    return DataLoader(
        BlockDataset(paths, sample_rate),
        batch_size=1,
        num_workers=num_workers,
        collate_fn=_first,
        prefetch_factor=BLOCK_PREFETCH if num_workers else None,
    )


def window_levels(windows: np.ndarray) -> np.ndarray:
    """RMS level in dBFS (full scale 1.0) of each window ``(batch, samples)`` -> ``(batch,)``; digital
    silence is ``LEVEL_FLOOR_DBFS``. Accumulated in float64: float32 squares of quiet audio underflow."""
    power = np.mean(np.square(windows, dtype=np.float64), axis=-1)
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(power), LEVEL_FLOOR_DBFS)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name one device when the current device is 0; an unindexed name matches any."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class Predictor:
    """A loaded model plus the windowing that applies it to recordings of any length.

    Thread-safe: the model is only read (eval mode, no gradients), and forward passes are serialised by a
    lock, so one predictor may serve concurrent requests without oversubscribing the CPU.
    """

    def __init__(self, model: AudioClassifier, spec: ModelSpec, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        # A model elsewhere is copied to ``device``: ``nn.Module.to`` moves in place, which would move the
        # caller's model under them (and their next CPU input would meet CUDA weights).
        on_device = all(_same_device(t.device, self.device) for t in (*model.parameters(), *model.buffers()))
        self.model = (model if on_device else copy.deepcopy(model).to(self.device)).eval()
        self.spec = spec
        # When a window gets no class (a copy: callers may override it per predictor, as the CLI flags do).
        self.reject = copy.copy(spec.reject)
        self.temperature = spec.temperature  # calibration fitted on the validation split
        self.class_names = list(spec.class_names)
        self.sample_rate = spec.audio.sample_rate  # Hz
        self.window = spec.audio.n_samples  # samples per window (the training clip length)
        self._lock = threading.Lock()
        # Windows per forward pass known to fit in device memory, once a larger batch ran out (None: any).
        self._fitting_batch: int | None = None

    @classmethod
    def from_file(cls, model_path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """Load a model file, or a run or cross-validation folder's (see
        :func:`~urbansound.training.run_folder.resolve_model_file`); DataError if it is missing, damaged or
        from another format version."""
        from urbansound.training.run_folder import resolve_model_file  # training modules load on demand

        model, spec = load_model_file(resolve_model_file(model_path), device=device)
        return cls(model, spec, device)

    @property
    def window_s(self) -> float:
        return self.window / self.sample_rate

    def hop_samples(self, hop: float | None) -> int:
        """Hop in samples for ``hop`` seconds (None: half a window)."""
        if hop is None:
            return max(1, round(self.window * DEFAULT_HOP_FRACTION))
        if not (math.isfinite(hop) and hop > 0):
            raise ConfigError(f"hop must be a positive number of seconds, got {hop}")
        return max(1, round(hop * self.sample_rate))

    def window_starts(self, n_samples: int, hop: float | None = None) -> np.ndarray:
        """Start (in samples) of each window over a recording of ``n_samples`` (see the module docstring)."""
        if n_samples <= self.window:
            return np.zeros(1, dtype=np.int64)
        hop_n = self.hop_samples(hop)
        starts = np.arange(0, n_samples - self.window + 1, hop_n, dtype=np.int64)
        if starts[-1] + self.window < n_samples:
            starts = np.append(starts, n_samples - self.window)  # end-aligned last window: no padding
        return starts

    def windows(self, waveform: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The ``(len(starts), window)`` windows of a mono waveform (a copy; short waveforms are padded)."""
        if waveform.shape[0] < self.window:
            waveform = np.pad(waveform, (0, self.window - waveform.shape[0]))
        view = np.lib.stride_tricks.sliding_window_view(waveform, self.window)
        return view[starts]  # fancy indexing copies only the selected windows

    def probabilities(self, windows: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities ``(batch, n_classes)`` of waveforms ``(batch, window)`` at the model's rate.

        When the device runs out of memory, the windows are retried in halves (down to one at a time); the
        size that fits is kept for later calls, and a warning names the failed and the used size.

        Raises:
            ResourceError: not even a single window fits in device memory.
        """
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        outputs: list[np.ndarray] = []
        with self._lock:
            size = min(windows.shape[0], self._fitting_batch or windows.shape[0])
            done, failed = 0, None
            while done < windows.shape[0]:
                try:
                    outputs.append(self._forward(windows[done : done + size]))
                    done += size
                    continue
                except torch.OutOfMemoryError:
                    pass  # retried below, outside the handler: its traceback holds the failed pass's tensors
                if size == 1:
                    raise ResourceError(
                        f"{self.device} ran out of memory classifying a single window "
                        f"({self.window_s:g} s at {self.sample_rate} Hz): free memory on the device (another "
                        "process may hold it) or predict on the CPU (--device cpu)"
                    )
                failed = failed or size
                size //= 2
                self._fitting_batch = size
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # return the failed pass's blocks before the smaller retry
            if failed is not None:
                logger.warning(
                    "%s ran out of memory on a batch of %d windows; classifying %d at a time from now on "
                    "(a smaller --batch-size avoids the failed attempt)",
                    self.device,
                    failed,
                    size,
                )
        if not outputs:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.concatenate(outputs)

    def embeddings(self, windows: np.ndarray) -> np.ndarray:
        """Penultimate-layer embeddings ``(batch, dim)`` of waveforms ``(batch, window)`` at the model's rate
        (:meth:`~urbansound.models.classifier.AudioClassifier.embed`)."""
        batch = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
        with self._lock, torch.inference_mode():  # the lock also keeps embed's hooks to this pass
            return self.model.embed(batch).float().cpu().numpy()

    def _forward(self, windows: np.ndarray) -> np.ndarray:
        """Model softmax ``(batch, n_classes)`` of float32 ``(batch, window)``; the caller holds the lock."""
        batch = torch.from_numpy(windows).to(self.device)
        with torch.inference_mode():
            logits = self.model(batch)  # (batch, n_classes)
            return torch.softmax(logits.float() / self.temperature, dim=-1).cpu().numpy()

    def features(self, waveform: np.ndarray, floor: bool = True) -> np.ndarray:
        """The model's dB band energies ``(n_bands, frames)`` of a whole mono waveform (for display).

        With ``floor=False`` the front end's ``top_db`` floor (below the waveform's own maximum) is left out:
        for a long recording computed piece by piece, the floor is applied once over all the pieces.
        """
        x = torch.as_tensor(np.ascontiguousarray(waveform, dtype=np.float32)).to(self.device)[None]
        frontend = self.model.frontend
        with self._lock, torch.inference_mode():
            if floor or frontend.config.top_db is None:  # no floor to leave out (pretrained front ends)
                return frontend(x)[0].cpu().numpy()
            config = frontend.config
            raw = log_filterbank_spectrogram(
                x, frontend.filterbank, config.n_fft, config.hop_length, None, frontend.window
            )  # (1, n_bands, frames)
            return raw[0].cpu().numpy()

    def prepare(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float32 at the model's rate from ``(samples,)`` or ``(samples, channels)`` audio."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim not in (1, 2) or audio.shape[0] == 0:
            raise DataError(f"expected audio of shape (samples,) or (samples, channels), got {audio.shape}")
        return resample(to_mono(audio), sample_rate, self.sample_rate)

    def window_status(
        self, probabilities: np.ndarray, level_dbfs: float | None, n_samples: int
    ) -> str | None:
        """What a window is reported as instead of its class (``self.reject``'s rules), or None.

        ``n_samples``: the recording's length at the model's rate; ``level_dbfs``: the window's RMS level
        over its real samples."""
        if n_samples < self.reject.min_input_s * self.sample_rate:
            return TOO_SHORT
        floor = self.reject.silence_floor_dbfs
        if level_dbfs is not None and floor is not None and level_dbfs < floor:
            return SILENCE
        if float(np.max(probabilities)) < self.reject.min_confidence:
            return UNKNOWN
        return None

    def _assemble(
        self,
        starts: np.ndarray,
        probabilities: np.ndarray,
        n_samples: int,
        source: str | None,
        levels: Sequence[float] | None = None,
    ) -> Prediction:
        if not np.isfinite(probabilities).all():
            # Finite but absurd samples (1e20 in a float WAV) overflow the power spectrum to inf.
            raise DataError(f"{source or 'audio'}: samples far outside [-1, 1] give no finite prediction")
        levels = [None] * len(starts) if levels is None else list(levels)
        if 0 < n_samples < self.window and levels[0] is not None and levels[0] > LEVEL_FLOOR_DBFS:
            # The only window is zero-padded: its level over the real samples only (zeros add no energy).
            levels[0] += 10.0 * math.log10(self.window / n_samples)
        windows = []
        for start, probs, level in zip(starts, probabilities, levels, strict=True):
            best = int(np.argmax(probs))
            status = self.window_status(probs, level, n_samples)
            windows.append(
                Window(
                    start_s=float(start) / self.sample_rate,
                    end_s=float(min(start + self.window, max(n_samples, 1))) / self.sample_rate,
                    label=status or self.class_names[best],
                    probability=None if status in NOT_HEARD else float(probs[best]),
                    probabilities=probs,
                    level_dbfs=level,
                    status=status,
                )
            )
        # Silent and too-short windows say nothing about the class: the clip averages the others.
        heard = [i for i, w in enumerate(windows) if w.status not in NOT_HEARD]
        clip = probabilities[heard].mean(axis=0) if heard else probabilities.mean(axis=0)
        if not heard:
            status = windows[0].status
        else:
            status = UNKNOWN if float(clip.max()) < self.reject.min_confidence else None
        known = [level for level in levels if level is not None]
        return Prediction(
            class_names=self.class_names,
            probabilities=clip,
            windows=windows,
            duration_s=n_samples / self.sample_rate,
            source=source,
            status=status,
            level_dbfs=max(known) if known else None,
        )

    def predict(
        self,
        source: str | Path | np.ndarray,
        sample_rate: int | None = None,
        hop: float | None = None,
        batch_size: int = 64,
    ) -> Prediction:
        """Classify one recording: a file path, or an array ``(samples,)``/``(samples, channels)``.

        A file is read in blocks (:meth:`predict_stream`), so its length does not change the memory needed;
        an array is classified as given (:meth:`predict_waveform`).

        Args:
            source: audio file (any format soundfile reads), or samples in [-1, 1].
            sample_rate: Hz of an array ``source`` (required then); ignored for files.
            hop: seconds between window starts (default: half the model's window).
            batch_size: windows per forward pass, which bounds memory on long recordings.

        Raises:
            DataError: the file cannot be decoded, or the array is not audio.
        """
        if isinstance(source, (str, Path)):
            blocks = stream_audio(source, self.sample_rate)
            return self.predict_stream(blocks, hop=hop, batch_size=batch_size, source=str(source))
        if sample_rate is None:
            raise ConfigError("sample_rate (Hz) is required when predicting from an array")
        waveform = self.prepare(source, sample_rate)
        return self.predict_waveform(waveform, hop=hop, batch_size=batch_size)

    def predict_waveform(
        self, waveform: np.ndarray, hop: float | None = None, batch_size: int = 64, source: str | None = None
    ) -> Prediction:
        """Classify a mono float32 waveform ``(samples,)`` already at the model's sample rate."""
        starts = self.window_starts(waveform.shape[0], hop)
        # One batch of windows at a time: a long recording's windows overlap, copying all would multiply it.
        probabilities, levels = [], []
        for i in range(0, len(starts), batch_size):
            windows = self.windows(waveform, starts[i : i + batch_size])
            probabilities.append(self.probabilities(windows))
            levels.append(window_levels(windows))
        return self._assemble(
            starts, np.concatenate(probabilities), waveform.shape[0], source, np.concatenate(levels)
        )

    def predict_stream(
        self,
        blocks: Iterable[np.ndarray],
        hop: float | None = None,
        batch_size: int = 64,
        source: str | None = None,
    ) -> Prediction:
        """Classify a recording given as consecutive mono float32 blocks ``(samples,)`` at the model's rate.

        Holds one window plus one block of audio and one batch of windows at a time, whatever the length;
        the result equals :meth:`predict_waveform` on the blocks' concatenation (same windows, same
        probabilities up to float rounding).

        Example::

            blocks = stream_audio("night.flac", predictor.sample_rate)
            prediction = predictor.predict_stream(blocks, source="night.flac")

        Raises:
            ConfigError: a bad ``hop`` or ``batch_size``.
            DataError: from the blocks' source, or when the samples give no finite prediction.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        cutter = StreamingWindows(self.window, self.hop_samples(hop))
        item = _Pending()
        batch = _WindowBatch(self, batch_size)
        for block in blocks:
            for start, window in cutter.push(block):
                batch.add(item, start, window)
        for start, window in cutter.finish():
            batch.add(item, start, window)
        batch.run()
        starts = np.asarray(item.starts, dtype=np.int64)
        return self._assemble(starts, np.stack(item.probabilities), cutter.n_samples, source, item.levels)

    def predict_files(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 32,
        num_workers: int = 2,
        progress: bool = False,
        hop: float | None = None,
    ) -> Iterator[FileResult]:
        """Classify many files, yielding one :class:`FileResult` per path, in input order.

        Files are decoded (and resampled) block by block in ``num_workers`` DataLoader worker processes
        while the main process cuts windows and runs the model; windows of consecutive files are packed
        into batches of ``batch_size`` windows, one forward pass per batch. Memory does not grow with the
        files' lengths: each file in progress holds about one window plus one block of audio. A file that
        cannot be read yields a result with ``error`` set (its reason) and does not stop the others.
        """
        paths = [Path(p) for p in paths]
        hop_n = self.hop_samples(hop)  # a bad hop fails here, before any worker starts
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        workers = num_workers if len(paths) > 1 else 0  # a worker's start-up costs more than one file
        items = [_Pending(path) for path in paths]
        pending = deque(items)  # every file not yet yielded, in input order
        cutters: dict[int, StreamingWindows] = {}  # files partly received, by index
        batch = _WindowBatch(self, batch_size)

        def completed() -> Iterator[FileResult]:
            """Yield finished files from the front of ``pending``, keeping input order."""
            while pending and pending[0].ready:
                item = pending.popleft()
                result = self._file_result(item)
                item.starts, item.probabilities, item.levels = [], [], []  # the result has them
                bar.update(1)
                yield result

        # disable=None: tqdm draws only when stderr is a terminal, so logs and pipes get no bar.
        bar = tqdm(total=len(paths), unit="file", disable=None if progress else True, desc="predict")
        try:
            for message in block_loader(paths, self.sample_rate, workers):
                item = items[message.index]
                if message.error is not None:
                    item.error = message.error
                    cutters.pop(message.index, None)
                else:
                    cutter = cutters.get(message.index) or StreamingWindows(self.window, hop_n)
                    cutters[message.index] = cutter
                    self._cut_block(cutter, item, message, batch)
                    if message.last:
                        del cutters[message.index]
                yield from completed()
            batch.run()
            yield from completed()
        finally:
            bar.close()

    @staticmethod
    def _cut_block(cutter: StreamingWindows, item: _Pending, message: FileBlock, batch: _WindowBatch) -> None:
        """Queue the windows a file's block completes, and at its last block the ones only the end places."""
        assert message.samples is not None
        windows = cutter.push(message.samples)
        if message.last:
            windows += cutter.finish()
            item.n_samples, item.cut = cutter.n_samples, True
        for start, window in windows:
            batch.add(item, start, window)

    def _file_result(self, item: _Pending) -> FileResult:
        """A finished file's result: its prediction, or its reason for having none."""
        assert item.path is not None
        if item.error is not None:
            return FileResult(item.path, error=item.error)
        starts = np.asarray(item.starts, dtype=np.int64)
        try:
            prediction = self._assemble(
                starts, np.stack(item.probabilities), item.n_samples, str(item.path), item.levels
            )
        except DataError as error:
            return FileResult(item.path, error=str(error))
        return FileResult(item.path, prediction=prediction)
