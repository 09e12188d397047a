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

Example::

    predictor = Predictor.from_file("runs/20250101-120000-run/model.safetensors")
    prediction = predictor.predict("street.flac")
    prediction.top_k(3)       # [("siren", 0.81), ("car_horn", 0.07), ("street_music", 0.05)]
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
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from urbansound.data.audio import load_audio, load_audio_or_reason, resample, to_mono
from urbansound.errors import ConfigError, DataError
from urbansound.features.frontend import AudioClassifier
from urbansound.modelfile import ModelSpec, load_model_file

logger = logging.getLogger(__name__)

# Default hop as a fraction of the window: half-overlapping windows (see the module docstring).
DEFAULT_HOP_FRACTION = 0.5


@dataclass
class Window:
    """One window of a recording and the model's output for it (times in seconds from the file's start)."""

    start_s: float
    end_s: float
    label: str  # the most probable class
    probability: float  # its probability
    probabilities: np.ndarray  # (n_classes,), in the model's class order

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "start_s": round(self.start_s, 4),
            "end_s": round(self.end_s, 4),
            "label": self.label,
            "probability": float(self.probability),
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

    @property
    def label(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def probability(self) -> float:
        return float(np.max(self.probabilities))

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes, most probable first, as ``(class name, probability)``."""
        order = np.argsort(-self.probabilities, kind="stable")[: max(1, k)]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]

    def to_dict(self, top_k: int = 3, timeline: bool = True) -> dict[str, Any]:
        """JSON-ready: ``duration_s``, ``clip`` {label, probability, top_k, probabilities}, ``timeline``."""
        result: dict[str, Any] = {
            "duration_s": round(self.duration_s, 4),
            "clip": {
                "label": self.label,
                "probability": self.probability,
                "top_k": [{"label": name, "probability": p} for name, p in self.top_k(top_k)],
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
    """A file waiting for its windows' outputs, or a failed one waiting for its turn to be yielded."""

    path: Path
    error: str | None = None
    starts: np.ndarray | None = None  # (n_windows,) window starts in samples; None when decoding failed
    n_samples: int = 0
    probabilities: list[np.ndarray] = field(default_factory=list)  # one (n_classes,) per finished window


class DecodeDataset(Dataset):
    """Decodes one file per item in a DataLoader worker; an unreadable file becomes its error message."""

    def __init__(self, paths: Sequence[Path], sample_rate: int) -> None:
        self.paths = list(paths)
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        waveform, reason = load_audio_or_reason(self.paths[i], self.sample_rate)
        return i, waveform, reason or None


def _first(batch: list[Any]) -> Any:
    """Collate for ``batch_size=1`` loaders: the item itself (module level, so workers can pickle it)."""
    return batch[0]


def decode_loader(paths: Sequence[Path], sample_rate: int, num_workers: int) -> DataLoader:
    """Yields ``(index, waveform or None, error or None)`` per path, in order, decoded in ``num_workers``
    worker processes (0: in this process) to mono float32 at ``sample_rate`` Hz."""
    return DataLoader(
        DecodeDataset(paths, sample_rate),
        batch_size=1,
        num_workers=num_workers,
        collate_fn=_first,
        prefetch_factor=4 if num_workers else None,
    )


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
        self.class_names = list(spec.class_names)
        self.sample_rate = spec.audio.sample_rate  # Hz
        self.window = spec.audio.n_samples  # samples per window (the training clip length)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, model_path: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """Load a model file (DataError if it is missing, damaged or from another format version)."""
        model, spec = load_model_file(model_path, device=device)
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
        """Class probabilities ``(batch, n_classes)`` of waveforms ``(batch, window)`` at the model's rate."""
        batch = torch.as_tensor(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
        with self._lock, torch.inference_mode():
            logits = self.model(batch)  # (batch, n_classes)
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def features(self, waveform: np.ndarray) -> np.ndarray:
        """The model's dB band energies ``(n_bands, frames)`` of a whole mono waveform (for display)."""
        x = torch.as_tensor(np.ascontiguousarray(waveform, dtype=np.float32)).to(self.device)[None]
        with self._lock, torch.inference_mode():
            return self.model.frontend(x)[0].cpu().numpy()

    def prepare(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float32 at the model's rate from ``(samples,)`` or ``(samples, channels)`` audio."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim not in (1, 2) or audio.shape[0] == 0:
            raise DataError(f"expected audio of shape (samples,) or (samples, channels), got {audio.shape}")
        return resample(to_mono(audio), sample_rate, self.sample_rate)

    def _assemble(
        self, starts: np.ndarray, probabilities: np.ndarray, n_samples: int, source: str | None
    ) -> Prediction:
        if not np.isfinite(probabilities).all():
            # Finite but absurd samples (1e20 in a float WAV) overflow the power spectrum to inf.
            raise DataError(f"{source or 'audio'}: samples far outside [-1, 1] give no finite prediction")
        windows = []
        for start, probs in zip(starts, probabilities, strict=True):
            best = int(np.argmax(probs))
            windows.append(
                Window(
                    start_s=float(start) / self.sample_rate,
                    end_s=float(min(start + self.window, max(n_samples, 1))) / self.sample_rate,
                    label=self.class_names[best],
                    probability=float(probs[best]),
                    probabilities=probs,
                )
            )
        return Prediction(
            class_names=self.class_names,
            probabilities=probabilities.mean(axis=0),
            windows=windows,
            duration_s=n_samples / self.sample_rate,
            source=source,
        )

    def predict(
        self,
        source: str | Path | np.ndarray,
        sample_rate: int | None = None,
        hop: float | None = None,
        batch_size: int = 64,
    ) -> Prediction:
        """Classify one recording: a file path, or an array ``(samples,)``/``(samples, channels)``.

        Args:
            source: audio file (any format soundfile reads), or samples in [-1, 1].
            sample_rate: Hz of an array ``source`` (required then); ignored for files.
            hop: seconds between window starts (default: half the model's window).
            batch_size: windows per forward pass, which bounds memory on long recordings.

        Raises:
            DataError: the file cannot be decoded, or the array is not audio.
        """
        if isinstance(source, (str, Path)):
            waveform = load_audio(source, self.sample_rate)
            name: str | None = str(source)
        else:
            if sample_rate is None:
                raise ConfigError("sample_rate (Hz) is required when predicting from an array")
            waveform = self.prepare(source, sample_rate)
            name = None
        return self.predict_waveform(waveform, hop=hop, batch_size=batch_size, source=name)

    def predict_waveform(
        self, waveform: np.ndarray, hop: float | None = None, batch_size: int = 64, source: str | None = None
    ) -> Prediction:
        """Classify a mono float32 waveform ``(samples,)`` already at the model's sample rate."""
        starts = self.window_starts(waveform.shape[0], hop)
        # One batch of windows at a time: a long recording's windows overlap, copying all would multiply it.
        probabilities = np.concatenate(
            [
                self.probabilities(self.windows(waveform, starts[i : i + batch_size]))
                for i in range(0, len(starts), batch_size)
            ]
        )
        return self._assemble(starts, probabilities, waveform.shape[0], source)

    def predict_files(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 32,
        num_workers: int = 2,
        progress: bool = False,
        hop: float | None = None,
    ) -> Iterator[FileResult]:
        """Classify many files, yielding one :class:`FileResult` per path, in input order.

        Files are decoded (and resampled) in ``num_workers`` DataLoader worker processes while the main
        process runs the model; windows of consecutive files are packed into batches of ``batch_size``
        windows, one forward pass per batch. A file that cannot be read yields a result with ``error`` set
        (its reason) and does not stop the others.
        """
        paths = [Path(p) for p in paths]
        self.hop_samples(hop)  # a bad hop fails here, before any worker starts
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        workers = num_workers if len(paths) > 1 else 0  # a worker's start-up costs more than one file
        loader = decode_loader(paths, self.sample_rate, workers)
        pending: deque[_Pending] = deque()  # every file not yet yielded, in input order
        # Files with windows not yet through the model: (file, waveform, index of its next window).
        queue: deque[tuple[_Pending, np.ndarray, int]] = deque()
        queued = 0  # windows in ``queue``

        def run_batch() -> None:
            """One forward pass over the next (up to) ``batch_size`` queued windows, across files."""
            nonlocal queued
            pieces: list[np.ndarray] = []
            owners: list[_Pending] = []
            while queue and len(owners) < batch_size:
                item, waveform, first = queue.popleft()
                assert item.starts is not None
                take = min(batch_size - len(owners), len(item.starts) - first)
                pieces.append(self.windows(waveform, item.starts[first : first + take]))
                owners.extend([item] * take)
                if first + take < len(item.starts):
                    queue.appendleft((item, waveform, first + take))
            queued -= len(owners)
            for owner, probs in zip(owners, self.probabilities(np.concatenate(pieces)), strict=True):
                owner.probabilities.append(probs)

        def completed() -> Iterator[FileResult]:
            """Yield finished files from the front of ``pending``, keeping input order."""
            while pending and (
                pending[0].starts is None or len(pending[0].probabilities) == len(pending[0].starts)
            ):
                item = pending.popleft()
                bar.update(1)
                if item.starts is None:
                    yield FileResult(item.path, error=item.error)
                else:
                    probabilities = np.stack(item.probabilities)  # (n_windows, n_classes)
                    try:
                        prediction = self._assemble(
                            item.starts, probabilities, item.n_samples, str(item.path)
                        )
                    except DataError as error:
                        yield FileResult(item.path, error=str(error))
                    else:
                        yield FileResult(item.path, prediction=prediction)

        bar = tqdm(total=len(paths), unit="file", disable=not progress, desc="predict")
        try:
            for index, waveform, error in loader:
                item = _Pending(paths[index], error=error)
                pending.append(item)
                if waveform is not None:
                    item.starts = self.window_starts(waveform.shape[0], hop)
                    item.n_samples = waveform.shape[0]
                    queue.append((item, waveform, 0))
                    queued += len(item.starts)
                while queued >= batch_size:
                    run_batch()
                yield from completed()
            while queued:
                run_batch()
            yield from completed()
        finally:
            bar.close()
