"""The Python API: a trained classifier from a model file or a run folder, applied to recordings.

Example::

    import urbansound

    clf = urbansound.Classifier.from_file("runs/20250101-120000-run")  # or its model.safetensors
    prediction = clf.predict("street.flac")
    print(prediction.label, prediction.probability, prediction.top_k(3))
    vectors = clf.embed(["a.wav", "b.wav"])  # (2, dim): penultimate-layer embeddings

Everything the model needs (sample rate, window, features, normalisation, class names) comes from the model
file; a recording of any length, format, rate and channel count is windowed as
:mod:`urbansound.inference` describes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from urbansound.config import EventConfig
from urbansound.data.audio import stream_audio
from urbansound.errors import ConfigError, DataError
from urbansound.events import Event, prediction_events
from urbansound.inference import Prediction, Predictor, StreamingWindows

AudioSource = str | Path | np.ndarray  # a file path, or samples (samples,) / (samples, channels) in [-1, 1]


class Classifier:
    """A trained sound classifier.

    Attributes:
        predictor: the :class:`~urbansound.inference.Predictor` underneath (windowing, batching, devices).
        model_file: the model file it was loaded from.
    """

    def __init__(self, predictor: Predictor, model_file: Path | None = None) -> None:
        self.predictor = predictor
        self.model_file = model_file

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> Classifier:
        """Load a model file, a run folder (its ``model.safetensors``) or a cross-validation folder (the
        fold with the highest validation accuracy; the choice is logged).

        Raises:
            DataError: no model there, an unfinished run, or a damaged or foreign model file.
        """
        from urbansound.training.run_folder import resolve_model_file

        model_file = resolve_model_file(path)
        return cls(Predictor.from_file(model_file, device=device), model_file)

    @property
    def class_names(self) -> list[str]:
        return self.predictor.class_names

    @property
    def sample_rate(self) -> int:
        """Hz the model works at (inputs at other rates are resampled)."""
        return self.predictor.sample_rate

    @property
    def window_s(self) -> float:
        """Seconds per window: the model's training clip length."""
        return self.predictor.window_s

    def predict(
        self, source: AudioSource, sample_rate: int | None = None, hop: float | None = None
    ) -> Prediction:
        """Classify one recording: a file, or an array with its ``sample_rate`` in Hz.

        Returns a :class:`~urbansound.inference.Prediction`: ``.label``, ``.probability``, ``.top_k(k)``
        (``[{"label", "score"}]``), ``.windows`` (one per window: start and end in seconds, label,
        probabilities) and ``.to_dict()``.

        Raises:
            DataError: the file cannot be decoded, or the array is not audio.
            ConfigError: an array without ``sample_rate``.
        """
        return self.predictor.predict(source, sample_rate=sample_rate, hop=hop)

    def events(
        self,
        source: AudioSource,
        sample_rate: int | None = None,
        hop: float | None = None,
        threshold: float = EventConfig.threshold,
        min_duration: float = EventConfig.min_duration,
        merge_gap: float = EventConfig.merge_gap,
    ) -> list[Event]:
        """Sound events of one recording, as ``predict --events`` finds them: each an
        :class:`~urbansound.events.Event` (``label``, ``onset_s``, ``offset_s``, ``peak_probability``;
        ``to_dict()`` in DCASE's field names), sorted by onset. A class is active where its probability
        reaches ``threshold``; events of one class closer than ``merge_gap`` seconds merge, and events shorter
        than ``min_duration`` seconds are dropped. A smaller ``hop`` (seconds) places onsets more finely.

        Raises:
            ConfigError: a threshold outside (0, 1] or a negative duration; DataError as :meth:`predict`.
        """
        config = EventConfig(threshold=threshold, min_duration=min_duration, merge_gap=merge_gap)
        config.validate()  # before the recording is classified
        return prediction_events(self.predict(source, sample_rate=sample_rate, hop=hop), config)

    def predict_batch(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 32,
        num_workers: int = 0,
        hop: float | None = None,
    ) -> list[Prediction]:
        """Classify many files, windows of consecutive files sharing forward passes; results in input order.

        ``num_workers`` decoding processes (0: decode here). Every file is attempted; if any cannot be read,
        DataError lists each such file with its reason once all are done.
        """
        predictions, failures = [], []
        for result in self.predictor.predict_files(
            paths, batch_size=batch_size, num_workers=num_workers, hop=hop
        ):
            if result.prediction is None:
                failures.append(result.error or f"{result.path}: not classified")
            else:
                predictions.append(result.prediction)
        if failures:
            raise DataError(
                f"{len(failures)} of {len(paths)} file(s) could not be classified:\n  "
                + "\n  ".join(failures)
            )
        return predictions

    def embed(
        self,
        sources: AudioSource | Sequence[str | Path],
        sample_rate: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Penultimate-layer embeddings: ``(dim,)`` for one recording, ``(n, dim)`` for a list of files.

        A clip's embedding is the mean over its windows (as its probabilities are), each window's being
        what the model's output layer receives; a seed ensemble's members' are concatenated. Files are read
        in blocks, so a long recording takes the memory of one window plus one block.

        Raises:
            DataError: a file cannot be decoded, or an array is not audio.
        """
        if isinstance(sources, (str, Path, np.ndarray)):
            return self._embed_one(sources, sample_rate, batch_size)
        if not sources:
            raise ConfigError("embed needs at least one recording")
        return np.stack([self._embed_one(source, sample_rate, batch_size) for source in sources])

    def _embed_one(self, source: AudioSource, sample_rate: int | None, batch_size: int) -> np.ndarray:
        predictor = self.predictor
        if isinstance(source, (str, Path)):
            blocks: Iterator[np.ndarray] | list[np.ndarray] = stream_audio(source, predictor.sample_rate)
        elif sample_rate is None:
            raise ConfigError("sample_rate (Hz) is required when embedding an array")
        else:
            blocks = [predictor.prepare(source, sample_rate)]
        cutter = StreamingWindows(predictor.window, predictor.hop_samples(None))
        total, count, pending = None, 0, []

        def flush() -> None:
            nonlocal total, count
            if pending:
                vectors = predictor.embeddings(np.stack(pending))  # (windows, dim)
                total = vectors.sum(axis=0) + (0.0 if total is None else total)
                count += len(pending)
                pending.clear()

        for block in blocks:
            for _, window in cutter.push(block):
                pending.append(window.copy())  # the cutter's view is only valid until its next push
                if len(pending) == batch_size:
                    flush()
        pending.extend(window.copy() for _, window in cutter.finish())
        flush()
        assert total is not None
        embedding = total / count
        if not np.isfinite(embedding).all():
            name = source if isinstance(source, (str, Path)) else "audio"
            raise DataError(f"{name}: samples far outside [-1, 1] give no finite embedding")
        return embedding.astype(np.float32)


__all__ = ["Classifier", "Prediction", "Event", "AudioSource"]
