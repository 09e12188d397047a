"""Sound events from window probabilities: class, onset, offset and peak probability, as the DCASE
sound-event-detection tools write them (onset and offset in seconds from the recording's start).

The classifier scores overlapping windows. Each window speaks for the stretch of time nearest its centre:
from the midpoint with the previous window's centre to the midpoint with the next one's (the first from
0 s, the last to the recording's end). So a sound that fills most of a window, but not all of it, is placed
to about one hop, and a smaller ``--hop`` gives finer boundaries at more compute. A class is active where
its probability reaches ``EventConfig.threshold``; active stretches of one class closer than ``merge_gap``
are merged, and events shorter than ``min_duration`` dropped. Silent and too-short windows are never
active (they hold no sound to detect); ``unknown`` ones may be, when a class still reaches the threshold.

Evaluation (:func:`event_scores`) is DCASE's event-based F1 with a collar (Mesaros et al. 2016, "Metrics
for polyphonic sound event detection"): an estimate matches a reference of the same class whose onset is
within ``collar`` seconds and whose offset is within the larger of ``collar`` and ``offset_fraction`` of
the reference's length. It is implemented here rather than imported from ``sed_eval``: sed_eval installs,
but its dependency ``dcase_util`` imports ``pkg_resources``, which current setuptools no longer ships, so
it fails on import in a fresh environment.

Example::

    prediction = Predictor.from_file("model.safetensors").predict("street.flac", hop=0.5)
    for event in prediction_events(prediction):
        print(event.onset_s, event.offset_s, event.label, event.peak_probability)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from urbansound.config import EventConfig
from urbansound.inference import NOT_HEARD  # statuses of windows that hold no sound to detect

if TYPE_CHECKING:
    from urbansound.inference import Prediction


@dataclass(frozen=True)
class Event:
    """One detected (or reference) sound event; times in seconds from the recording's start."""

    label: str
    onset_s: float
    offset_s: float
    peak_probability: float = 1.0  # the class's highest probability inside the event (1 for references)

    def to_dict(self) -> dict[str, Any]:
        """DCASE's field names: ``event_label``, ``onset``, ``offset``; and ``peak_probability``."""
        return {
            "event_label": self.label,
            "onset": round(self.onset_s, 3),
            "offset": round(self.offset_s, 3),
            "peak_probability": round(self.peak_probability, 4),
        }


def segment_edges(starts_s: np.ndarray, ends_s: np.ndarray, duration_s: float) -> np.ndarray:
    """Edges ``(n + 1,)`` in seconds of the stretch each of ``n`` windows (in start order) speaks for."""
    centres = (np.asarray(starts_s, dtype=np.float64) + np.asarray(ends_s, dtype=np.float64)) / 2
    inner = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[0.0], inner, [max(duration_s, float(inner[-1]) if inner.size else 0.0)]])


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """``[first, last + 1)`` index ranges of the True runs of a boolean vector."""
    padded = np.concatenate([[False], active, [False]]).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[0::2].tolist(), changes[1::2].tolist(), strict=True))


def detect_events(
    edges: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    config: EventConfig | None = None,
    heard: np.ndarray | None = None,
) -> list[Event]:
    """Events from per-segment class probabilities ``(n, n_classes)`` over segments ``edges`` ``(n + 1,)``
    (seconds); ``heard`` ``(n,)`` marks the segments that may be active (default: all). Sorted by onset,
    then class."""
    config = config or EventConfig()
    config.validate()
    heard = np.ones(len(probabilities), dtype=bool) if heard is None else np.asarray(heard, dtype=bool)
    events = []
    for c, name in enumerate(class_names):
        merged: list[list[float]] = []  # [onset, offset, peak]
        for first, stop in _runs((probabilities[:, c] >= config.threshold) & heard):
            peak = float(probabilities[first:stop, c].max())
            onset, offset = float(edges[first]), float(edges[stop])
            if merged and onset - merged[-1][1] <= config.merge_gap:
                merged[-1][1], merged[-1][2] = offset, max(merged[-1][2], peak)
            else:
                merged.append([onset, offset, peak])
        events += [
            Event(name, onset, offset, peak)
            for onset, offset, peak in merged
            if offset - onset >= config.min_duration
        ]
    return sorted(events, key=lambda e: (e.onset_s, e.label))


def prediction_events(prediction: Prediction, config: EventConfig | None = None) -> list[Event]:
    """The sound events of a :class:`~urbansound.inference.Prediction` (its windows' probabilities)."""
    windows = sorted(prediction.windows, key=lambda w: w.start_s)
    if not windows:
        return []
    edges = segment_edges(
        np.array([w.start_s for w in windows]), np.array([w.end_s for w in windows]), prediction.duration_s
    )
    probabilities = np.stack([w.probabilities for w in windows])  # (windows, n_classes)
    heard = np.array([w.status not in NOT_HEARD for w in windows])
    return detect_events(edges, probabilities, prediction.class_names, config, heard)


def dcase_tsv(rows: Iterable[tuple[str, Event]]) -> str:
    """DCASE's estimated-event-list format, one ``file<TAB>onset<TAB>offset<TAB>event_label`` line per
    event (seconds, 3 decimals), as sed_eval and the DCASE challenge tools read it."""
    return "".join(
        f"{name}\t{event.onset_s:.3f}\t{event.offset_s:.3f}\t{event.label}\n" for name, event in rows
    )


@dataclass
class EventScores:
    """Event-based detection scores over all classes (micro-averaged, as DCASE reports them)."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 0.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 0.0

    @property
    def f1(self) -> float:
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / denominator if denominator else 1.0

    def __add__(self, other: EventScores) -> EventScores:
        return EventScores(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
        )


def event_scores(
    reference: Sequence[Event],
    estimated: Sequence[Event],
    collar_s: float = 0.2,
    offset_fraction: float = 0.2,
) -> EventScores:
    """Match estimates to references of one recording with a collar (see the module docstring).

    Each reference takes at most one estimate and each estimate at most one reference; references are
    served in onset order, each taking the matching estimate whose onset is nearest. ``collar_s`` 0.2 and
    ``offset_fraction`` 0.2 are sed_eval's and DCASE's defaults.
    """
    free = list(range(len(estimated)))
    hits = 0
    for ref in sorted(reference, key=lambda e: e.onset_s):
        offset_collar = max(collar_s, offset_fraction * (ref.offset_s - ref.onset_s))
        matching = [
            i
            for i in free
            if estimated[i].label == ref.label
            and abs(estimated[i].onset_s - ref.onset_s) <= collar_s
            and abs(estimated[i].offset_s - ref.offset_s) <= offset_collar
        ]
        if matching:
            free.remove(min(matching, key=lambda i: abs(estimated[i].onset_s - ref.onset_s)))
            hits += 1
    return EventScores(hits, len(estimated) - hits, len(reference) - hits)


def concatenate_clips(
    clips: Sequence[tuple[str | None, np.ndarray]], sample_rate: int
) -> tuple[np.ndarray, list[Event]]:
    """A long recording of labelled clips ``(label, mono samples)`` played one after another, and its
    reference events (clips labelled None are played but are no event, e.g. background between sounds).

    Returns the recording ``(samples,)`` and the events at the clips' exact boundaries, in seconds.
    """
    reference, position = [], 0
    for label, samples in clips:
        if label is not None:
            reference.append(Event(label, position / sample_rate, (position + len(samples)) / sample_rate))
        position += len(samples)
    recording = np.concatenate([np.asarray(s, dtype=np.float32) for _, s in clips]) if clips else np.zeros(0)
    return recording.astype(np.float32), reference
