"""Sound events: window probabilities -> (class, onset, offset, peak) with threshold, minimum duration and
merging; collar-based event F1; planted boundaries in synthesised long recordings are recovered within the
collar through the API, ``predict --events`` (JSON and DCASE tab-separated) and the server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _tiny_model import SAMPLE_RATE, scene, tiny_model

from urbansound.cli import main
from urbansound.config import EventConfig
from urbansound.errors import ConfigError
from urbansound.events import (
    Event,
    concatenate_clips,
    dcase_tsv,
    detect_events,
    event_scores,
    prediction_events,
    segment_edges,
)
from urbansound.inference import Predictor

HOP_S = 0.25
# One hop: window centres are HOP_S apart, so a boundary is placed to about half a hop either way, plus the
# model's own hesitation where a window straddles it (DCASE's default collar is 0.2 s).
COLLAR_S = HOP_S
# Steady synthetic sounds: an intermittent one (a dog barking) has quiet gaps that are rightly not events.
STEADY = ("siren", "drilling", "engine_idling")


def test_segments_split_at_midpoints_between_window_centres() -> None:
    edges = segment_edges(np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 4.0]), 4.0)
    np.testing.assert_allclose(edges, [0.0, 1.5, 2.5, 4.0])


def test_threshold_merge_and_minimum_duration() -> None:
    edges = np.arange(11, dtype=float)  # ten 1 s segments
    p = np.zeros((10, 2))
    p[[1, 2, 4], 0] = [0.9, 0.7, 0.8]  # a, gap of 1 s, a again
    p[8, 1] = 0.95  # a 1 s b
    p[6, 1] = 0.4  # below the threshold
    events = detect_events(edges, p, ["a", "b"], EventConfig(threshold=0.5, merge_gap=1.0))
    assert events == [Event("a", 1.0, 5.0, 0.9), Event("b", 8.0, 9.0, 0.95)]
    events = detect_events(edges, p, ["a", "b"], EventConfig(threshold=0.5, merge_gap=0.5, min_duration=1.5))
    assert events == [Event("a", 1.0, 3.0, 0.9)]  # not merged; the 1 s events are dropped
    heard = np.ones(10, dtype=bool)
    heard[8] = False  # a silent segment is never an event
    assert [e.label for e in detect_events(edges, p, ["a", "b"], heard=heard)] == ["a", "a"]
    with pytest.raises(ConfigError, match="threshold"):
        detect_events(edges, p, ["a", "b"], EventConfig(threshold=0.0))


def test_collar_matching() -> None:
    reference = [Event("a", 1.0, 3.0), Event("b", 5.0, 9.0)]
    assert event_scores(reference, [Event("a", 1.15, 3.1), Event("b", 5.1, 8.3)]).f1 == 1.0  # 0.8 s <= 20%
    late = event_scores(reference, [Event("a", 1.3, 3.0), Event("b", 5.0, 9.0)], collar_s=0.2)
    assert (late.true_positives, late.false_positives, late.false_negatives) == (1, 1, 1)
    wrong_class = event_scores(reference, [Event("b", 1.0, 3.0)])
    assert wrong_class.true_positives == 0 and wrong_class.f1 == 0.0
    twice = event_scores([Event("a", 1.0, 3.0)], [Event("a", 1.0, 3.0), Event("a", 1.1, 3.0)])
    assert (twice.true_positives, twice.false_positives) == (1, 1)  # one reference takes one estimate


def test_dcase_tsv_format() -> None:
    text = dcase_tsv([("street.wav", Event("siren", 1.0, 2.5, 0.9))])
    assert text == "street.wav\t1.000\t2.500\tsiren\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp() / "steady_model", class_names=("background", *STEADY))


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Predictor:
    return Predictor.from_file(model_path)


def planted(seed: int) -> tuple[np.ndarray, list[Event]]:
    """~15 s of background with 4 sounds of 1.5-3 s at known places, separated by 1-2 s of background."""
    rng = np.random.default_rng(seed)
    clips: list[tuple[str | None, np.ndarray]] = []
    for name in rng.permutation([*STEADY, "siren"]):
        clips.append((None, scene("background", float(rng.uniform(1.0, 2.0)), SAMPLE_RATE, rng)))
        clips.append((str(name), scene(str(name), float(rng.uniform(1.5, 3.0)), SAMPLE_RATE, rng)))
    clips.append((None, scene("background", 1.5, SAMPLE_RATE, rng)))
    return concatenate_clips(clips, SAMPLE_RATE)


def sounds(events: list[Event]) -> list[Event]:
    return [e for e in events if e.label != "background"]  # the tiny model's class for "no event"


def test_concatenate_clips_places_reference_events_exactly() -> None:
    recording, reference = concatenate_clips(
        [(None, np.zeros(8000)), ("a", np.ones(16000)), ("b", np.ones(4000))], SAMPLE_RATE
    )
    assert recording.shape == (28000,)
    assert reference == [Event("a", 0.5, 1.5), Event("b", 1.5, 1.75)]


def test_events_recover_planted_boundaries_within_the_collar(predictor: Predictor) -> None:
    total = None
    for seed in range(4):
        recording, reference = planted(seed)
        prediction = predictor.predict(recording, sample_rate=SAMPLE_RATE, hop=HOP_S)
        estimated = sounds(prediction_events(prediction, EventConfig(min_duration=0.5)))
        scores = event_scores(reference, estimated, collar_s=COLLAR_S)
        total = scores if total is None else total + scores
    assert total is not None and total.f1 >= 0.9, total
    # The same recordings with boundaries judged 1.5 s off score nothing: the collar is what matches.
    shifted = [Event(e.label, e.onset_s + 1.5, e.offset_s + 1.5) for e in reference]
    assert event_scores(shifted, estimated, collar_s=COLLAR_S).true_positives == 0


def test_predict_events_cli_and_server(
    model_path: Path, predictor: Predictor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording, reference = planted(7)
    path = tmp_path / "street.wav"
    sf.write(path, recording, SAMPLE_RATE)
    model = str(model_path)
    base = ["-q", "predict", model, str(path), "--hop", str(HOP_S), "--event-min-duration", "0.5"]
    assert main([*base, "--events", "--format", "json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    estimated = sounds(
        [Event(e["event_label"], e["onset"], e["offset"], e["peak_probability"]) for e in result["events"]]
    )
    assert event_scores(reference, estimated, collar_s=COLLAR_S).f1 >= 0.75  # one recording: 3 of 4
    assert main([*base, "--format", "tsv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == 4 and row[0] == str(path) for row in rows)
    assert [(row[3], float(row[1])) for row in rows] == [
        (e["event_label"], e["onset"]) for e in result["events"]
    ]

    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    from fastapi.testclient import TestClient

    from urbansound.serve import create_app

    client = TestClient(create_app(model))
    response = client.post(
        f"/classify?events=true&hop={HOP_S}",
        files={"file": ("street.wav", io.BytesIO(path.read_bytes()), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    served = [e for e in response.json()["events"] if e["event_label"] != "background"]
    expected = EventConfig()  # the server's defaults: no minimum duration
    library = sounds(prediction_events(predictor.predict(str(path), hop=HOP_S), expected))
    assert [(e["event_label"], e["onset"], e["offset"]) for e in served] == [
        (e.label, round(e.onset_s, 3), round(e.offset_s, 3)) for e in library
    ]
