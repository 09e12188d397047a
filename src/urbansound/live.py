"""Live classification of a stream (a microphone, a FIFO, a WebSocket): every hop, the latest window.

Samples arrive in chunks of any size at the model's rate. As soon as a window of the model's length has
arrived it is classified, then again every ``hop`` seconds, on the window that ends there: one result per
hop, in order (the first after one window of audio). Each result carries its latency: the seconds from the
arrival of the hop's last sample to its result, which is what a listener waits.

Example::

    live = LiveClassifier(Predictor.from_file("model.safetensors"), hop=0.5)
    for chunk in chunks:                     # float32 mono at live.sample_rate
        for result in live.push(chunk):
            print(result.start_s, result.label, result.latency_ms)
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from urbansound.data.audio import stream_audio
from urbansound.errors import ConfigError
from urbansound.inference import NOT_HEARD, Predictor, StreamingWindows, window_levels

logger = logging.getLogger(__name__)

# Frames read from a file or FIFO at a time: ~46 ms at 22.05 kHz, well under any sensible hop, so a hop's
# result does not wait for a large block to fill.
INPUT_BLOCK_FRAMES = 1024


@dataclass
class HopResult:
    """The result of one hop: the window ending at ``end_s`` (seconds since the stream's start)."""

    index: int  # 0, 1, 2, ... in stream order
    start_s: float
    end_s: float
    label: str  # the most probable class, or "silence" / "unknown"
    probability: float | None  # the top class's probability; None for silence (no class answer)
    status: str | None  # "silence" or "unknown" when the label is not a class
    level_dbfs: float
    latency_ms: float  # from the arrival of the window's last sample to this result
    top_k: list[tuple[str, float]]  # empty for silence

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start_s": round(self.start_s, 4),
            "end_s": round(self.end_s, 4),
            "label": self.label,
            "probability": None if self.probability is None else round(self.probability, 6),
            "status": self.status,
            "level_dbfs": round(self.level_dbfs, 2),
            "latency_ms": round(self.latency_ms, 2),
            "top_k": [{"label": name, "probability": round(p, 6)} for name, p in self.top_k],
        }

    def text(self) -> str:
        """One line: window, label, probability, level, latency."""
        # A silent window has no class probability: its level is what counts.
        shown = "     - " if self.probability is None else f"{100 * self.probability:5.1f} %"
        return (
            f"{self.start_s:9.2f}-{self.end_s:<9.2f} {self.label:<20s} {shown}  "
            f"{self.level_dbfs:6.1f} dBFS  latency {self.latency_ms:6.1f} ms"
        )


class LiveClassifier:
    """Classifies the latest window every ``hop`` seconds of a stream fed in chunks (see the module
    docstring). Holds about one window plus one chunk of audio, whatever the stream's length."""

    def __init__(self, predictor: Predictor, hop: float | None = None, top_k: int = 3) -> None:
        self.predictor = predictor
        self.sample_rate = predictor.sample_rate
        self.top_k = top_k
        self._cutter = StreamingWindows(predictor.window, predictor.hop_samples(hop))
        self._index = 0

    @property
    def hop_s(self) -> float:
        return self._cutter.hop / self.sample_rate

    def push(self, samples: np.ndarray) -> list[HopResult]:
        """Take mono float32 samples ``(n,)`` at the model's rate; the results of the hops they complete."""
        arrived = time.perf_counter()
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ConfigError(f"expected mono samples (n,), got shape {samples.shape}")
        if not np.isfinite(samples).all():
            raise ConfigError("the stream holds NaN or infinite samples")
        cut = self._cutter.push(samples)
        if not cut:
            return []
        windows = np.stack([window for _, window in cut])  # (hops, window)
        probabilities = self.predictor.probabilities(windows)
        levels = window_levels(windows)
        latency_ms = 1000 * (time.perf_counter() - arrived)
        results = []
        for (start, _), probs, level in zip(cut, probabilities, levels, strict=True):
            status = self.predictor.window_status(probs, float(level), self._cutter.n_samples)
            order = np.argsort(-probs, kind="stable")[: self.top_k]
            names = self.predictor.class_names
            heard = status not in NOT_HEARD  # silence carries no class answer
            results.append(
                HopResult(
                    index=self._index,
                    start_s=start / self.sample_rate,
                    end_s=(start + self.predictor.window) / self.sample_rate,
                    label=status or names[int(order[0])],
                    probability=float(probs[order[0]]) if heard else None,
                    status=status,
                    level_dbfs=float(level),
                    latency_ms=latency_ms,
                    top_k=[(names[i], float(probs[i])) for i in order] if heard else [],
                )
            )
            self._index += 1
        return results


def file_chunks(path: str | Path, sample_rate: int, realtime: bool = False) -> Iterator[np.ndarray]:
    """Mono chunks of an audio file or a FIFO carrying one (any format libsndfile reads from a pipe, e.g.
    WAV), resampled to ``sample_rate``; with ``realtime``, paced to the audio's own duration."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or FIFO")
    started = time.perf_counter()
    sent = 0
    for block in stream_audio(path, sample_rate, block_frames=INPUT_BLOCK_FRAMES):
        sent += block.shape[0]
        if realtime:
            time.sleep(max(0.0, sent / sample_rate - (time.perf_counter() - started)))
        yield block


def microphone_chunks(sample_rate: int, block_s: float = 0.05) -> Iterator[np.ndarray]:
    """Mono float32 chunks of the default microphone at ``sample_rate`` until interrupted (needs the
    ``listen`` extra: sounddevice, which needs the PortAudio library)."""
    try:
        import sounddevice
    except (ImportError, OSError) as error:  # OSError: sounddevice installed, PortAudio library missing
        raise ConfigError(
            f"listening to the microphone needs the sounddevice package and PortAudio "
            f"(pip install 'urbansound[listen]'): {error}; or classify a file or FIFO with --input"
        ) from None
    chunks: queue.Queue[np.ndarray] = queue.Queue()

    def callback(data: np.ndarray, frames: int, when: Any, status: Any) -> None:
        if status:
            logger.warning("microphone: %s", status)  # an overflow: samples were lost
        chunks.put(data[:, 0].copy())

    blocksize = max(1, round(block_s * sample_rate))
    with sounddevice.InputStream(
        samplerate=sample_rate, channels=1, dtype="float32", blocksize=blocksize, callback=callback
    ):
        while True:
            yield chunks.get()
