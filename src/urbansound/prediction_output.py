"""What ``urbansound predict`` reads and writes: input discovery and the text, JSON and CSV outputs.

Formats (``top_k`` classes per result, most probable first):

* ``text``: per file, its duration, window count and top classes with percentages; with ``timeline``,
  one line per window. Failed files print ``ERROR: reason``.
* ``json``: a list with one object per file, in input order:
  ``{"file", "duration_s", "clip": {"label", "probability", "top_k": [{"label", "probability"}],
  "probabilities": {class: p}}, "timeline": [{"start_s", "end_s", "label", "probability",
  "probabilities"}], "error"}``; a failed file has ``"error": reason``, ``clip`` null, ``timeline`` [].
* ``csv``: per file one ``clip`` row (the whole recording) then one ``window`` row per window, columns
  ``file, scope, start_s, end_s, label_1, probability_1, ..., label_k, probability_k, status,
  level_dbfs, error``; a failed file is one row with scope ``error`` and its reason.
* ``tsv``: sound events in DCASE's format, ``file<TAB>onset<TAB>offset<TAB>event_label`` (implies events).

A window or clip with no class says why in place of its label: ``silence`` (below the level floor, with its
level in dBFS), ``too_short`` or ``unknown`` (below ``--min-confidence``). ``silence`` and ``too_short`` carry
no class answer: JSON ``probability`` null and ``top_k`` [], no classes in text, empty ``label_i`` /
``probability_i`` cells in CSV (``probabilities`` keeps the model's raw output). ``unknown`` keeps its
probability and top classes: the classes it was unsure between. With events (``predict --events``)
JSON adds ``"events": [{"event_label", "onset", "offset", "peak_probability"}]``, text one line per event
and CSV one ``event`` row per event (label_1 its class, probability_1 its peak probability).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

import soundfile

from urbansound.config import EventConfig
from urbansound.events import dcase_tsv, prediction_events
from urbansound.inference import NOT_HEARD, FileResult, Prediction
from urbansound.io_utils import atomic_write_text

FORMATS = ("text", "json", "csv", "tsv")


# File extensions searched for in folders, per libsndfile format. Formats that need out-of-band parameters
# (RAW) or are rare outside labs (MAT, HTK, ...) are left out: a folder search should not pick up files that
# merely share an extension. Files named explicitly are always tried, whatever their extension.
_EXTENSIONS = {
    "WAV": ("wav", "wave"),
    "FLAC": ("flac",),
    "OGG": ("ogg", "oga", "opus"),
    "AIFF": ("aiff", "aif", "aifc"),
    "AU": ("au", "snd"),
    "CAF": ("caf",),
    "W64": ("w64",),
    "RF64": ("rf64",),
    "MP3": ("mp3",),  # libsndfile >= 1.1
}


def audio_extensions() -> frozenset[str]:
    """Lower-case extensions (no dot) of the audio formats this libsndfile reads, for folder searches."""
    available = soundfile.available_formats()
    return frozenset(ext for name, exts in _EXTENSIONS.items() if name in available for ext in exts)


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, and folders searched recursively for audio files (sorted), in argument order.

    A path that does not exist is kept, so that it is reported as a failed file with its reason.
    """
    extensions = audio_extensions()
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(
                sorted(p for p in item.rglob("*") if p.is_file() and p.suffix[1:].lower() in extensions)
            )
        else:
            paths.append(item)
    return paths


def result_to_dict(result: FileResult, top_k: int, events: EventConfig | None = None) -> dict:
    """The JSON object of one file (see the module docstring); with ``events``, its sound events too."""
    if result.prediction is None:
        return {
            "file": str(result.path),
            "duration_s": None,
            "clip": None,
            "timeline": [],
            "error": result.error,
        }
    data = {"file": str(result.path), **result.prediction.to_dict(top_k=top_k), "error": None}
    if events is not None:
        data["events"] = [event.to_dict() for event in prediction_events(result.prediction, events)]
    return data


def format_text(
    result: FileResult, top_k: int, timeline: bool = False, events: EventConfig | None = None
) -> str:
    """Human-readable lines for one file."""
    if result.prediction is None:
        reason = (result.error or "").removeprefix(f"{result.path}: ")  # the path starts the line already
        return f"{result.path}  ERROR: {reason}\n"
    prediction: Prediction = result.prediction
    n = len(prediction.windows)
    lines = [f"{result.path}  ({prediction.duration_s:.2f} s, {n} window{'s' if n != 1 else ''})"]
    if prediction.status in NOT_HEARD:  # no class to list
        lines.append(f"  {prediction.status:<20s} level {prediction.level_dbfs:.1f} dBFS")
    else:
        if prediction.status is not None:  # unknown: the classes it was unsure between follow
            lines.append(f"  {prediction.status:<20s} (below the confidence floor)")
        lines += [f"  {c['label']:<20s} {100 * c['score']:5.1f} %" for c in prediction.top_k(top_k)]
    if timeline:
        lines += [
            f"    {w.start_s:8.2f}-{w.end_s:<8.2f} {w.label:<20s} "
            # a silent or too-short window has no class probability: its level is what counts
            + ("     - " if w.probability is None else f"{100 * w.probability:5.1f} %")
            + ("" if w.level_dbfs is None else f"  {w.level_dbfs:6.1f} dBFS")
            for w in prediction.windows
        ]
    if events is not None:
        lines += [
            f"  event {e.onset_s:8.2f}-{e.offset_s:<8.2f} {e.label:<20s} "
            f"peak {100 * e.peak_probability:5.1f} %"
            for e in prediction_events(prediction, events)
        ]
    return "\n".join(lines) + "\n"


def csv_header(top_k: int) -> list[str]:
    ranked = [column for i in range(1, top_k + 1) for column in (f"label_{i}", f"probability_{i}")]
    return ["file", "scope", "start_s", "end_s", *ranked, "status", "level_dbfs", "error"]


def csv_rows(result: FileResult, top_k: int, events: EventConfig | None = None) -> list[list[str]]:
    """One ``clip`` row, one ``window`` row per window (and one ``event`` row per event), or one
    ``error`` row."""
    empty = [""] * (2 * top_k)
    if result.prediction is None:
        return [[str(result.path), "error", "", "", *empty, "", "", result.error or ""]]
    prediction = result.prediction

    def ranked(probabilities: Sequence[float], status: str | None) -> list[str]:
        """The top classes' cells; none for silence and too-short input (no class answer)."""
        shown = 0 if status in NOT_HEARD else top_k
        order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:shown]
        cells = [cell for i in order for cell in (prediction.class_names[i], f"{probabilities[i]:.6f}")]
        return cells + [""] * (2 * top_k - len(cells))

    rows = [
        [
            str(result.path),
            "clip",
            "0.0000",
            f"{prediction.duration_s:.4f}",
            *ranked(list(prediction.probabilities), prediction.status),
            *_status_cells(prediction.status, prediction.level_dbfs),
            "",
        ]
    ]
    rows += [
        [
            str(result.path),
            "window",
            f"{w.start_s:.4f}",
            f"{w.end_s:.4f}",
            *ranked(list(w.probabilities), w.status),
            *_status_cells(w.status, w.level_dbfs),
            "",
        ]
        for w in prediction.windows
    ]
    if events is not None:
        rows += [
            [str(result.path), "event", f"{e.onset_s:.4f}", f"{e.offset_s:.4f}", e.label]
            + [f"{e.peak_probability:.6f}", *empty[2:], "", "", ""]
            for e in prediction_events(prediction, events)
        ]
    return rows


def _status_cells(status: str | None, level_dbfs: float | None) -> list[str]:
    return [status or "", "" if level_dbfs is None else f"{level_dbfs:.2f}"]


def write_predictions(
    results: Iterable[FileResult],
    fmt: str = "text",
    top_k: int = 3,
    output: str | Path | None = None,
    timeline: bool = False,
    stream: TextIO | None = None,
    events: EventConfig | None = None,
) -> list[FileResult]:
    """Write every result in ``fmt`` to ``output`` (atomically) or ``stream`` (default stdout); with
    ``events`` (always for ``tsv``), each recording's sound events too.

    Text and CSV to a stream are written as results arrive; JSON and files are written once complete.
    Returns the failed results, in order.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    stream = stream if stream is not None else sys.stdout
    target: TextIO = io.StringIO() if output is not None or fmt == "json" else stream
    failed: list[FileResult] = []
    objects: list[dict] = []
    writer = csv.writer(target, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(csv_header(top_k))
    for result in results:
        if not result.ok:
            failed.append(result)
        if fmt == "json":
            objects.append(result_to_dict(result, top_k, events))
        elif writer is not None:
            writer.writerows(csv_rows(result, top_k, events))
        elif fmt == "tsv":
            if result.prediction is not None:
                found = prediction_events(result.prediction, events or EventConfig())
                target.write(dcase_tsv((str(result.path), event) for event in found))
        else:
            target.write(format_text(result, top_k, timeline, events))
        target.flush()
    if fmt == "json":
        target.write(json.dumps(objects, indent=2) + "\n")
    if output is not None:
        assert isinstance(target, io.StringIO)
        atomic_write_text(Path(output), target.getvalue())
    elif target is not stream:
        assert isinstance(target, io.StringIO)
        stream.write(target.getvalue())
        stream.flush()
    return failed
