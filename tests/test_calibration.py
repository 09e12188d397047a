"""Temperature scaling lowers the expected calibration error on a synthetic miscalibrated case, is fitted
on the validation split only, is stored in the model file and applied by the Predictor; ``--min-confidence``
turns uncertain answers into ``unknown``; a run reports the test ECE before and after."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _tiny_model import SAMPLE_RATE, scene, tiny_model
from test_training import tiny_config

from urbansound.cli import main
from urbansound.evaluation.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    scale_probabilities,
)
from urbansound.inference import Predictor
from urbansound.modelfile import load_model_file, read_model_spec, save_model_file
from urbansound.training.run import (
    assemble,
    predict_rows,
    prepare_data,
    score,
    start_run_folder,
    train_members,
    write_results,
)
from urbansound.training.run_folder import RunFolder


def miscalibrated(n: int, sharpen: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from ``softmax(z)`` but reported probabilities ``softmax(sharpen * z)``: with
    ``sharpen`` > 1 an overconfident model whose ideal temperature is ``sharpen``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 5))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in true])
    reported = np.exp(sharpen * logits)
    return labels, reported / reported.sum(axis=1, keepdims=True)


def test_temperature_scaling_lowers_ece_of_an_overconfident_model() -> None:
    val_labels, val_probs = miscalibrated(3000, sharpen=3.0, seed=0)
    test_labels, test_probs = miscalibrated(3000, sharpen=3.0, seed=1)
    result = calibrate(val_labels, val_probs, test_labels, test_probs)
    assert result.temperature == pytest.approx(3.0, rel=0.15)
    assert result.test_ece_before > 0.1  # clearly miscalibrated
    assert result.test_ece_after < result.test_ece_before / 3
    assert result.val_nll_after < result.val_nll_before
    # Scaling never changes the predicted class.
    scaled = scale_probabilities(test_probs, result.temperature)
    assert (scaled.argmax(axis=1) == test_probs.argmax(axis=1)).all()


def test_temperature_is_fitted_on_validation_only() -> None:
    val_labels, val_probs = miscalibrated(2000, sharpen=2.0, seed=2)
    over_labels, over_probs = miscalibrated(2000, sharpen=4.0, seed=3)  # two unlike test splits
    under_labels, under_probs = miscalibrated(2000, sharpen=0.5, seed=4)
    a = calibrate(val_labels, val_probs, over_labels, over_probs)
    b = calibrate(val_labels, val_probs, under_labels, under_probs)
    assert a.temperature == b.temperature == round(fit_temperature(val_probs, val_labels), 4)
    assert a.temperature != pytest.approx(fit_temperature(over_probs, over_labels), rel=0.2)
    assert a.fitted_on == "validation split (2000 clips)"
    assert a.test_ece_before == pytest.approx(expected_calibration_error(over_probs, over_labels))


def test_run_fits_on_validation_stores_temperature_and_reports_ece(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=2)
    data = prepare_data(config, progress=False)
    config.model.n_classes = len(data.index.class_names)
    folder = start_run_folder(config, data, RunFolder(tmp_path / "run"), resuming=False)
    members = train_members(config, data, folder, progress=False)
    assembled = assemble(config, data, members)
    metrics = score(assembled.model, members, data, config)
    val = predict_rows(assembled.model, data, data.split.val, config)
    calibration = metrics.calibration
    assert calibration is not None
    assert calibration["temperature"] == round(fit_temperature(val.probabilities, val.labels), 4)
    assert calibration["fitted_on"] == f"validation split ({len(data.split.val)} clips)"
    write_results(folder, config, assembled, members, metrics)
    assert read_model_spec(folder.model_path)[0].temperature == calibration["temperature"]
    assert folder.file(RunFolder.RELIABILITY_PLOT).stat().st_size > 1000
    written = json.loads(folder.file(RunFolder.METRICS).read_text())["calibration"]
    assert written["test_ece_before"] == pytest.approx(calibration["test_ece_before"])
    report = folder.file(RunFolder.REPORT).read_text()
    assert "expected calibration error" in report and RunFolder.RELIABILITY_PLOT in report


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny_model")


def test_predictor_applies_the_stored_temperature_and_min_confidence(
    model_path: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    audio = np.concatenate([scene(name, 1.0, SAMPLE_RATE, rng) for name in ("siren", "dog_bark")])
    plain = Predictor.from_file(model_path).predict(audio.astype(np.float32), sample_rate=SAMPLE_RATE)
    model, spec = load_model_file(model_path)
    hot = save_model_file(tmp_path / "hot.safetensors", model, replace(spec, temperature=4.0))
    scaled = Predictor.from_file(hot).predict(audio.astype(np.float32), sample_rate=SAMPLE_RATE)
    for a, b in zip(plain.windows, scaled.windows, strict=True):
        np.testing.assert_allclose(
            b.probabilities, scale_probabilities(a.probabilities[None], 4.0)[0], atol=1e-5
        )
    assert scaled.probability < plain.probability  # softer, same answer
    assert scaled.label == plain.label

    unsure = Predictor.from_file(hot)
    unsure.reject = replace(unsure.reject, min_confidence=0.99)
    prediction = unsure.predict(audio.astype(np.float32), sample_rate=SAMPLE_RATE)
    assert prediction.label == "unknown" and all(w.label == "unknown" for w in prediction.windows)


def test_min_confidence_flag_gives_unknown(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import soundfile as sf

    path = tmp_path / "siren.wav"
    sf.write(path, scene("siren", 1.0, SAMPLE_RATE, np.random.default_rng(6)), SAMPLE_RATE)
    assert main(["-q", "predict", str(model_path), str(path), "--format", "json"]) == 0
    (sure,) = json.loads(capsys.readouterr().out)
    threshold = sure["clip"]["probability"] + 1e-3  # just above what the model gives this clip
    assert (
        main(
            [
                "-q",
                "predict",
                str(model_path),
                str(path),
                "--format",
                "json",
                "--min-confidence",
                str(threshold),
            ]
        )
        == 0
    )
    (unsure,) = json.loads(capsys.readouterr().out)
    assert sure["clip"]["label"] != "unknown" and unsure["clip"]["label"] == "unknown"
    assert unsure["clip"]["top_k"][0]["label"] == sure["clip"]["label"]  # the guess is still listed
    assert main(["-q", "predict", str(model_path), str(path), "--min-confidence", "1.5"]) == 2  # clear error
    assert "min_confidence must be in [0, 1]" in capsys.readouterr().err
