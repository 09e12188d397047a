"""Unknown sounds and sound events on the real UrbanSound8K folds 1-2 (issue 17), written to RESULTS.md.

One cheap model (the default recipe's features and network, one member, no cached variants, ``--epochs``
epochs) is trained on fold 1 **without one class** (``--held-out``, default siren; 20% of fold 1's
recordings validate and fit the temperature), then on fold 2:

1. open set: the held-out class's clips, which the model has never heard of, are classified with
   ``--min-confidence`` P for several P: how often they come back ``unknown`` (right) and how often as a
   known class (wrong); and for the known classes' clips, how often a right answer is lost to ``unknown``
   (the cost of the floor) and the accuracy of what is still answered;
2. events: ``--recordings`` long recordings, each ``--clips`` fold-2 clips of the known classes played one
   after another (their slice boundaries are the reference events; the recording's "sound" is whatever the
   annotators' slice holds, quiet stretches included), classified with a 1 s hop and turned into events;
   event-based F1 with collars of 0.5, 1 and 2 s (offsets: the larger of the collar and 20% of the event).

    python benchmarks/open_set_events.py --root /work/data/us8k/UrbanSound8K [--epochs 8] [--held-out siren]

The calibration figures (test ECE before and after temperature scaling) are the run's own metrics.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from urbansound.config import EventConfig, RunConfig, SplitConfig, apply_recipe
from urbansound.data.audio import load_audio
from urbansound.events import concatenate_clips, event_scores, prediction_events
from urbansound.inference import Predictor
from urbansound.training.run import train
from urbansound.training.run_folder import RunFolder

HERE = Path(__file__).resolve().parent
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
COLLARS_S = (0.5, 1.0, 2.0)
EVENT_HOP_S = 1.0


def without_class(annotations: Path, held_out: str, dest: Path) -> list[dict[str, str]]:
    """Write ``dest``: the metadata without ``held_out``'s rows, class IDs renumbered 0..K-2 (the loader
    wants them without gaps). Returns every original row."""
    rows = list(csv.DictReader(annotations.open()))
    if held_out not in {r["class"] for r in rows}:
        raise SystemExit(f"{annotations}: no class {held_out!r}")
    kept = sorted({int(r["classID"]) for r in rows if r["class"] != held_out})
    renumber = {old: new for new, old in enumerate(kept)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            if row["class"] != held_out:
                writer.writerow({**row, "classID": str(renumber[int(row["classID"])])})
    return rows


def train_model(root: Path, annotations: Path, runs: Path, epochs: int) -> Path:
    config = apply_recipe(RunConfig(), "default")
    config.annotations, config.data_dir = str(annotations), str(root / "audio")
    config.runs_dir, config.name = str(runs), "open-set"
    config.model.ensemble = 1
    config.augment.variants = 0  # cheap: no time-stretch / pitch-shift variants to compute
    config.training.epochs = epochs
    config.training.device = "cpu"
    config.split = SplitConfig(test_fold=2, val_fold=None, val_fraction=0.2, train_folds=[1])
    return train(config, progress=False)


def open_set(predictor: Predictor, root: Path, rows: list[dict[str, str]], held_out: str) -> list[dict]:
    """Per threshold: unknown / wrong-known shares of the held-out class; lost and accuracy of known ones."""
    fold2 = [r for r in rows if r["fold"] == "2"]
    paths = [root / "audio" / "fold2" / r["slice_file_name"] for r in fold2]
    results = {str(r.path): r.prediction for r in predictor.predict_files(paths, num_workers=2)}
    probs = [results[str(p)].probabilities for p in paths]
    figures = []
    for threshold in THRESHOLDS:
        novel = [p for p, r in zip(probs, fold2, strict=True) if r["class"] == held_out]
        known = [(p, r["class"]) for p, r in zip(probs, fold2, strict=True) if r["class"] != held_out]
        answered = [(p, c) for p, c in known if p.max() >= threshold]
        figures.append(
            {
                "threshold": threshold,
                "novel_clips": len(novel),
                "novel_unknown": float(np.mean([p.max() < threshold for p in novel])),
                "known_clips": len(known),
                "known_unknown": float(np.mean([p.max() < threshold for p, _ in known])),
                "known_accuracy_answered": float(
                    np.mean([predictor.class_names[int(p.argmax())] == c for p, c in answered])
                )
                if answered
                else None,
            }
        )
    return figures


def events(
    predictor: Predictor,
    root: Path,
    rows: list[dict[str, str]],
    held_out: str,
    n_recordings: int,
    n_clips: int,
) -> dict:
    """Event F1 per collar over concatenations of fold-2 clips of the known classes."""
    rng = np.random.default_rng(0)
    fold2 = [r for r in rows if r["fold"] == "2" and r["class"] != held_out]
    totals = {collar: None for collar in COLLARS_S}
    n_reference = n_estimated = 0
    seconds = 0.0
    for _ in range(n_recordings):
        chosen = rng.choice(len(fold2), size=n_clips, replace=False)
        clips = [
            (
                fold2[i]["class"],
                load_audio(root / "audio" / "fold2" / fold2[i]["slice_file_name"], predictor.sample_rate),
            )
            for i in chosen
        ]
        recording, reference = concatenate_clips(clips, predictor.sample_rate)
        seconds += len(recording) / predictor.sample_rate
        prediction = predictor.predict_waveform(recording, hop=EVENT_HOP_S)
        estimated = prediction_events(prediction, EventConfig(threshold=0.5, merge_gap=0.5))
        n_reference += len(reference)
        n_estimated += len(estimated)
        for collar in COLLARS_S:
            scores = event_scores(reference, estimated, collar_s=collar)
            totals[collar] = scores if totals[collar] is None else totals[collar] + scores
    return {
        "recordings": n_recordings,
        "seconds": round(seconds, 1),
        "reference_events": n_reference,
        "estimated_events": n_estimated,
        "f1": {str(c): round(s.f1, 3) for c, s in totals.items()},
        "precision": {str(c): round(s.precision, 3) for c, s in totals.items()},
        "recall": {str(c): round(s.recall, 3) for c, s in totals.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="UrbanSound8K folder (metadata/, audio/)")
    parser.add_argument("--held-out", default="siren")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--recordings", type=int, default=20)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--work", type=Path, default=Path("/tmp/urbansound-open-set"))
    parser.add_argument("--run", type=Path, default=None, help="reuse this trained run folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    annotations = args.work / "metadata" / "UrbanSound8K.csv"
    rows = without_class(args.root / "metadata" / "UrbanSound8K.csv", args.held_out, annotations)
    started = time.perf_counter()
    run = args.run or train_model(args.root, annotations, args.work / "runs", args.epochs)
    trained_s = time.perf_counter() - started
    metrics = json.loads((run / RunFolder.METRICS).read_text())
    predictor = Predictor.from_file(run / RunFolder.MODEL)
    result = {
        "run": str(run),
        "held_out": args.held_out,
        "epochs": args.epochs,
        "train_seconds": round(trained_s, 1),
        "test_accuracy_known": metrics["test_accuracy"],
        "calibration": {
            k: metrics["calibration"][k]
            for k in ("temperature", "fitted_on", "test_ece_before", "test_ece_after")
        },
        "open_set": open_set(predictor, args.root, rows, args.held_out),
        "events": events(predictor, args.root, rows, args.held_out, args.recordings, args.clips),
    }
    print(json.dumps(result, indent=2))
    (args.work / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
