"""Silence and too-short input are reported as ``silence`` / ``too_short`` with their level, never as a
class, through every interface: the Python API, ``predict``, the server, and the ONNX / TorchScript exports
(which refuse a window of the wrong length). The model file records the floor."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _tiny_model import SAMPLE_RATE, scene, tiny_model

from urbansound.cli import main
from urbansound.inference import LEVEL_FLOOR_DBFS, Predictor, window_levels
from urbansound.modelfile import load_model_file, read_model_spec, save_model_file


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny_model")


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Predictor:
    return Predictor.from_file(model_path)


def level(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(x, dtype=np.float64))))


def test_levels_are_rms_dbfs() -> None:
    t = np.arange(16_000) / 16_000
    sine = np.sin(2 * np.pi * 1000 * t)[None].astype(np.float32)  # full-scale sine: -3.01 dBFS RMS
    assert window_levels(sine)[0] == pytest.approx(-3.01, abs=0.01)
    assert window_levels(np.zeros((1, 100), np.float32))[0] == LEVEL_FLOOR_DBFS


def test_digital_silence_is_silence_in_every_window(predictor: Predictor) -> None:
    prediction = predictor.predict(np.zeros(3 * SAMPLE_RATE, np.float32), sample_rate=SAMPLE_RATE)
    assert prediction.label == "silence" and prediction.status == "silence"
    assert prediction.level_dbfs == LEVEL_FLOOR_DBFS
    assert len(prediction.windows) > 1
    assert all(w.label == "silence" and w.status == "silence" for w in prediction.windows)
    assert all(w.label not in predictor.class_names for w in prediction.windows)


def test_floor_is_a_setting_and_quiet_sound_is_silence_below_it(predictor: Predictor) -> None:
    rng = np.random.default_rng(0)
    quiet = scene("siren", 2.0, SAMPLE_RATE, rng).astype(np.float32)
    quiet *= 10 ** ((-90.0 - level(quiet)) / 20)  # -90 dBFS: below the default -80 dBFS floor
    assert predictor.predict(quiet, sample_rate=SAMPLE_RATE).label == "silence"
    lenient = Predictor(predictor.model, predictor.spec)
    lenient.reject = replace(lenient.reject, silence_floor_dbfs=-100.0)
    assert lenient.predict(quiet, sample_rate=SAMPLE_RATE).label in predictor.class_names
    lenient.reject = replace(lenient.reject, silence_floor_dbfs=None)  # none: never silence
    assert lenient.predict(np.zeros(SAMPLE_RATE, np.float32), sample_rate=SAMPLE_RATE).status is None


def test_too_short_input_reports_its_own_level(predictor: Predictor) -> None:
    samples = np.random.default_rng(1).normal(0, 0.1, 10).astype(np.float32)
    prediction = predictor.predict(samples, sample_rate=SAMPLE_RATE)
    assert prediction.label == "too_short" and prediction.windows[0].status == "too_short"
    # The level of the ten real samples, not of the zero-padded window (which is 32 dB lower).
    assert prediction.level_dbfs == pytest.approx(level(samples), abs=0.01)


def test_silent_stretch_of_a_recording_is_left_out_of_the_clip(predictor: Predictor) -> None:
    rng = np.random.default_rng(2)
    siren = scene("siren", 2.0, SAMPLE_RATE, rng).astype(np.float32)
    recording = np.concatenate([siren, np.zeros(3 * SAMPLE_RATE, np.float32)])
    prediction = predictor.predict(recording, sample_rate=SAMPLE_RATE, hop=0.5)
    silent = [w for w in prediction.windows if w.start_s >= 2.0]
    assert silent and all(w.status == "silence" for w in silent)
    heard = [w for w in prediction.windows if w.status is None]
    np.testing.assert_allclose(prediction.probabilities, np.mean([w.probabilities for w in heard], axis=0))
    assert prediction.label == "siren"


def test_model_file_records_the_floor(model_path: Path, tmp_path: Path) -> None:
    model, spec = load_model_file(model_path)
    assert spec.reject.silence_floor_dbfs == -80.0  # the default, recorded when the file was written
    strict = replace(spec, reject=replace(spec.reject, silence_floor_dbfs=-20.0, min_input_s=0.5))
    path = save_model_file(tmp_path / "strict.safetensors", model, strict)
    assert read_model_spec(path)[0].reject == strict.reject
    loud_noise = np.random.default_rng(3).normal(0, 0.05, SAMPLE_RATE).astype(np.float32)  # ~ -26 dBFS
    assert Predictor.from_file(path).predict(loud_noise, sample_rate=SAMPLE_RATE).label == "silence"
    short = loud_noise[: SAMPLE_RATE // 4]  # 0.25 s < 0.5 s
    assert Predictor.from_file(path).predict(short, sample_rate=SAMPLE_RATE).label == "too_short"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"silent": tmp_path / "silent.wav", "short": tmp_path / "short.wav"}
    sf.write(paths["silent"], np.zeros(4 * 22_050), 22_050)  # another rate: resampled, still silence
    sf.write(paths["short"], np.random.default_rng(4).normal(0, 0.1, 10), SAMPLE_RATE)
    return paths


def test_predict_cli_reports_silence_and_too_short(
    model_path: Path, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    args = ["-q", "predict", str(model_path), str(files["silent"]), str(files["short"])]
    assert main([*args, "--format", "json", "--output", str(out), "--workers", "0"]) == 0
    silent, short = json.loads(out.read_text())
    assert silent["clip"]["label"] == "silence" and silent["clip"]["level_dbfs"] == LEVEL_FLOOR_DBFS
    assert all(w["label"] == "silence" for w in silent["timeline"])
    assert short["clip"]["label"] == "too_short" and short["clip"]["level_dbfs"] > -40
    assert main([*args, "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "silence" in text and "too_short" in text and "dBFS" in text
    # The flag overrides the model file: with no floor, digital silence gets a class again.
    assert main([*args[:3], str(files["silent"]), "--silence-floor-dbfs", "none", "--format", "json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["clip"]["label"] in json.loads(json.dumps(read_model_spec(model_path)[0].class_names))


def test_server_reports_silence_and_too_short(model_path: Path, files: dict[str, Path]) -> None:
    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    from fastapi.testclient import TestClient

    from urbansound.serve import create_app

    client = TestClient(create_app(model_path))
    for name, expected in (("silent", "silence"), ("short", "too_short")):
        data = files[name].read_bytes()
        response = client.post("/classify", files={"file": (f"{name}.wav", io.BytesIO(data), "audio/wav")})
        assert response.status_code == 200, response.text
        clip = response.json()["clip"]
        assert clip["label"] == expected and clip["status"] == expected and clip["level_dbfs"] is not None


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_flag_silence_and_refuse_other_lengths(model_path: Path, tmp_path: Path, fmt: str) -> None:
    from urbansound.export import export_model

    if fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime", reason="the 'export' extra is not installed")
    result = export_model(model_path, fmt, output=tmp_path / f"model.{fmt}")
    window = result.window_samples
    rng = np.random.default_rng(5)
    audio = np.stack([np.zeros(window), scene("dog_bark", 1.0, SAMPLE_RATE, rng)[:window]]).astype(np.float32)
    short = np.zeros((1, 10), np.float32)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        _, _, levels, silent = session.run(None, {"audio": audio})
        with pytest.raises(Exception, match=f"Expected: {window}"):
            session.run(None, {"audio": short})
    else:
        module = torch.jit.load(str(result.path))
        with torch.inference_mode():
            _, _, levels, silent = (t.numpy() for t in module(torch.from_numpy(audio)))
        with pytest.raises(Exception, match=rf"shape \(batch, {window}\)"):
            module(torch.from_numpy(short))
    assert silent.tolist() == [True, False]
    assert levels[0] == LEVEL_FLOOR_DBFS and levels[1] == pytest.approx(level(audio[1]), abs=0.01)


def test_silence_and_too_short_carry_no_class_answer(predictor: Predictor) -> None:
    silent = predictor.predict(np.zeros(3 * SAMPLE_RATE, np.float32), sample_rate=SAMPLE_RATE)
    short = predictor.predict(np.full(10, 0.1, np.float32), sample_rate=SAMPLE_RATE)
    for prediction, status in ((silent, "silence"), (short, "too_short")):
        assert prediction.status == status
        assert prediction.probability is None and prediction.top_k(3) == []
        assert all(w.probability is None for w in prediction.windows)
        as_dict = prediction.to_dict(top_k=3)
        assert as_dict["clip"]["probability"] is None and as_dict["clip"]["top_k"] == []
        assert all(w["probability"] is None for w in as_dict["timeline"])
        assert json.loads(json.dumps(as_dict))["clip"]["label"] == status  # still JSON-ready
        # The model's raw output stays available underneath.
        assert prediction.probabilities.shape == (len(predictor.class_names),)


def test_unknown_keeps_its_probabilities(predictor: Predictor) -> None:
    unsure = Predictor(predictor.model, predictor.spec)
    unsure.reject = replace(unsure.reject, min_confidence=1.0)  # no softmax reaches 1: always unknown
    rng = np.random.default_rng(6)
    prediction = unsure.predict(scene("siren", 2.0, SAMPLE_RATE, rng).astype(np.float32), SAMPLE_RATE)
    assert prediction.label == "unknown" and prediction.status == "unknown"
    assert prediction.probability == pytest.approx(float(prediction.probabilities.max()))
    top = prediction.top_k(3)
    assert len(top) == 3 and top[0]["label"] in predictor.class_names
    assert all(w.status == "unknown" and w.probability is not None for w in prediction.windows)
    assert prediction.to_dict()["clip"]["probability"] == prediction.probability


def test_predict_outputs_list_no_class_for_silence(
    model_path: Path, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = read_model_spec(model_path)[0].class_names
    args = ["-q", "predict", str(model_path), str(files["silent"]), str(files["short"]), "--workers", "0"]
    assert main([*args, "--format", "json"]) == 0
    for result in json.loads(capsys.readouterr().out):
        assert result["clip"]["probability"] is None and result["clip"]["top_k"] == []
        assert all(w["probability"] is None for w in result["timeline"])
    assert main([*args, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["status"] for row in rows} == {"silence", "too_short"}
    assert all(row["label_1"] == "" and row["probability_1"] == "" for row in rows)
    assert main([*args, "--timeline"]) == 0
    text = capsys.readouterr().out
    assert "silence" in text and not any(name in text for name in names)


def test_server_sends_no_class_answer_for_silence(model_path: Path, files: dict[str, Path]) -> None:
    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    from fastapi.testclient import TestClient

    from urbansound.serve import create_app
    from urbansound.serve.schemas import ClassifyResponse

    client = TestClient(create_app(model_path))
    data = files["silent"].read_bytes()
    response = client.post("/classify", files={"file": ("silent.wav", io.BytesIO(data), "audio/wav")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["clip"]["probability"] is None and body["clip"]["top_k"] == []
    assert all(w["probability"] is None for w in body["timeline"])
    ClassifyResponse.model_validate(body)  # the documented schema allows what is sent
    models = client.get("/openapi.json").json()["components"]["schemas"]
    for model in ("ClipResult", "WindowResult"):
        field = models[model]["properties"]["probability"]
        assert {"type": "null"} in field["anyOf"], f"{model}.probability is not documented as nullable"


def test_live_silence_carries_no_class_answer(predictor: Predictor) -> None:
    from urbansound.live import LiveClassifier

    (result,) = LiveClassifier(predictor).push(np.zeros(predictor.window, np.float32))
    assert result.status == "silence" and result.probability is None and result.top_k == []
    assert result.to_dict()["probability"] is None and "-" in result.text()
