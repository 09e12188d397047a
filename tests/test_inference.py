"""Predicting with a trained model: windowing, long recordings, formats, batching, errors, the CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _tiny_model import SAMPLE_RATE, scene, tiny_model
from safetensors.torch import load_file, save_file

from urbansound.cli import main
from urbansound.data.audio import load_audio
from urbansound.errors import ConfigError, DataError
from urbansound.inference import Predictor


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny_model")


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Predictor:
    return Predictor.from_file(model_path)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Recordings in several formats, rates and channel counts, plus broken ones."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(11)
    (folder / "nested" / "deeper").mkdir(parents=True)
    files = {
        "siren_wav": folder / "siren.wav",  # 44.1 kHz stereo 16-bit, 3 s
        "bark_flac": folder / "nested" / "bark.flac",  # 22.05 kHz mono, 0.4 s: shorter than the window
        "horn_ogg": folder / "nested" / "deeper" / "horn.ogg",  # 16 kHz mono Vorbis, 2.5 s
        "broken": folder / "broken.wav",
        "empty": folder / "empty.wav",
    }
    siren = scene("siren", 3.0, 44_100, rng)
    sf.write(files["siren_wav"], np.stack([siren, 0.8 * siren], axis=1), 44_100, subtype="PCM_16")
    sf.write(files["bark_flac"], scene("dog_bark", 0.4, 22_050, rng), 22_050)
    sf.write(files["horn_ogg"], scene("car_horn", 2.5, 16_000, rng), 16_000, format="OGG", subtype="VORBIS")
    files["broken"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    sf.write(files["empty"], np.zeros((0,), dtype=np.float32), 16_000)
    (folder / "notes.txt").write_text("not audio, and not picked up from folders")
    return files


def test_long_recording_timeline_finds_planted_siren(predictor: Predictor, tmp_path: Path) -> None:
    """20 s of street noise with a siren from 10 s to 14 s, as a stereo 22.05 kHz FLAC file."""
    sr = 22_050
    rng = np.random.default_rng(2024)
    recording = scene(None, 20.0, sr, rng)
    recording[10 * sr : 14 * sr] += scene("siren", 4.0, sr, rng)
    path = tmp_path / "street.flac"
    sf.write(path, np.stack([recording, recording], axis=1), sr)

    prediction = predictor.predict(path)
    assert prediction.duration_s == pytest.approx(20.0, abs=1e-3)
    assert len(prediction.windows) == 39  # 1 s windows every 0.5 s over 20 s
    inside = [w for w in prediction.windows if w.start_s >= 10.0 and w.end_s <= 14.0]
    far = [w for w in prediction.windows if w.end_s <= 9.0 or w.start_s >= 15.0]
    assert len(inside) == 7 and len(far) == 17 + 9
    assert [w.label for w in inside] == ["siren"] * len(inside)
    assert all(w.label != "siren" for w in far), [(w.start_s, w.label) for w in far if w.label == "siren"]
    # The clip level is the mean of the windows: mostly street, with the siren clearly second.
    assert prediction.top_k(2)[1]["label"] == "siren" or prediction.label == "siren"
    np.testing.assert_allclose(
        prediction.probabilities, np.mean([w.probabilities for w in prediction.windows], axis=0), atol=1e-7
    )


def test_window_layout(predictor: Predictor) -> None:
    n = predictor.window  # 16 000 samples = 1 s
    assert predictor.window_starts(n // 3).tolist() == [0]
    assert predictor.window_starts(n).tolist() == [0]
    # 2.3 windows, default hop (half a window): regular starts, then one aligned to the end.
    assert predictor.window_starts(round(2.3 * n)).tolist() == [0, n // 2, n, round(1.3 * n)]
    assert predictor.window_starts(3 * n, hop=1.0).tolist() == [0, n, 2 * n]
    with pytest.raises(ConfigError, match="hop"):
        predictor.window_starts(3 * n, hop=0.0)


def test_short_clip_is_padded_as_in_training(predictor: Predictor, audio_files: dict[str, Path]) -> None:
    path = audio_files["bark_flac"]
    prediction = predictor.predict(path)
    assert len(prediction.windows) == 1
    assert prediction.duration_s == pytest.approx(0.4, abs=1e-3)
    assert prediction.windows[0].end_s == pytest.approx(0.4, abs=1e-3)
    # Training's path: load_audio with the model's length, i.e. right-padded with zeros.
    padded = load_audio(path, SAMPLE_RATE, predictor.window)
    with torch.inference_mode():
        expected = torch.softmax(predictor.model(torch.from_numpy(padded)[None]), dim=-1)[0].numpy()
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-6)


def test_array_input_matches_file_input(predictor: Predictor, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    audio = scene("car_horn", 2.2, 32_000, rng)
    path = tmp_path / "horn.wav"
    sf.write(path, audio, 32_000, subtype="FLOAT")
    from_file = predictor.predict(path)
    from_array = predictor.predict(audio, sample_rate=32_000)
    stereo = predictor.predict(np.stack([audio, audio], axis=1), sample_rate=32_000)
    np.testing.assert_allclose(from_file.probabilities, from_array.probabilities, atol=1e-6)
    np.testing.assert_allclose(stereo.probabilities, from_array.probabilities, atol=1e-6)
    assert [w.start_s for w in from_file.windows] == [0.0, 0.5, 1.0, 1.2]
    with pytest.raises(ConfigError, match="sample_rate"):
        predictor.predict(audio)
    # Finite but absurd samples (a broken float WAV) overflow the spectrogram: an error, not NaN results.
    with pytest.raises(DataError, match="far outside"):
        predictor.predict(np.full(8000, 1e30, np.float32), sample_rate=16_000)


def test_predict_files_batches_keep_order_and_report_errors(
    predictor: Predictor, audio_files: dict[str, Path], tmp_path: Path
) -> None:
    order = ["siren_wav", "broken", "bark_flac", "empty", "horn_ogg"]
    paths = [audio_files[key] for key in order] + [tmp_path / "missing.wav"]
    results = list(predictor.predict_files(paths, batch_size=4, num_workers=2))
    assert [r.path for r in results] == paths
    assert [r.ok for r in results] == [True, False, True, False, True, False]
    assert "cannot decode" in (results[1].error or "") and str(paths[1]) in (results[1].error or "")
    assert "no audio samples" in (results[3].error or "")
    assert "no such file" in (results[5].error or "")
    for result in results:
        if result.prediction is not None:
            single = predictor.predict(result.path)
            assert len(single.windows) == len(result.prediction.windows)
            # Windows of different files shared batches: a window's output must not depend on its batch.
            np.testing.assert_allclose(result.prediction.probabilities, single.probabilities, atol=1e-5)
    assert results[0].prediction is not None and results[0].prediction.label == "siren"


def test_damaged_and_foreign_model_files_are_clear_errors(model_path: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(model_path.read_bytes()[:500])
    with pytest.raises(DataError, match="truncated.safetensors"):
        Predictor.from_file(truncated)
    newer = tmp_path / "newer.safetensors"
    with open(model_path, "rb") as handle:
        from safetensors import safe_open

        with safe_open(str(model_path), framework="pt") as opened:
            metadata = dict(opened.metadata())
        del handle
    save_file(load_file(str(model_path)), str(newer), metadata={**metadata, "format_version": "99"})
    with pytest.raises(DataError, match="version 99"):
        Predictor.from_file(newer)


# ----------------------------------------------------------------------------------------------------------
# The command line, in process (a subprocess would spend seconds importing torch per call)
# ----------------------------------------------------------------------------------------------------------


def test_cli_text_output_searches_folders_and_exits_1_on_failures(
    model_path: Path, audio_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = audio_files["siren_wav"].parent
    code = main(["-q", "predict", str(model_path), str(folder), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    for key in ("siren_wav", "bark_flac", "horn_ogg"):
        assert str(audio_files[key]) in out
    assert "notes.txt" not in out  # folders yield audio files only
    assert f"{audio_files['siren_wav']}  (3.00 s, 5 windows)\n  siren" in out
    # Each reason shows once: in the output, in place of the file's prediction, and not again on stderr.
    assert "broken.wav  ERROR: cannot decode audio" in out
    assert "empty.wav  ERROR: the file holds no audio" in out
    assert "cannot decode audio" not in err and "holds no audio" not in err
    assert "2 of 5 file(s) could not be classified" in err


def test_cli_json_output(
    model_path: Path, audio_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [audio_files["bark_flac"], audio_files["broken"], audio_files["siren_wav"]]
    out_path = tmp_path / "predictions.json"
    code = main(
        [
            "-q",
            "predict",
            str(model_path),
            *map(str, files),
            "--format",
            "json",
            "--top-k",
            "3",
            "--hop",
            "1.0",
            "--output",
            str(out_path),
        ]
    )
    assert code == 1
    assert capsys.readouterr().out == ""  # --output: nothing on stdout
    records = json.loads(out_path.read_text())
    assert [r["file"] for r in records] == [str(f) for f in files]
    bark, broken, siren = records
    assert broken["clip"] is None and "cannot decode" in broken["error"]
    assert bark["error"] is None and len(bark["timeline"]) == 1 and len(bark["clip"]["top_k"]) == 3
    assert siren["clip"]["label"] == "siren"
    assert [w["start_s"] for w in siren["timeline"]] == [0.0, 1.0, 2.0]  # --hop 1.0
    assert set(siren["timeline"][0]["probabilities"]) == {"background", "car_horn", "dog_bark", "siren"}
    assert sum(siren["clip"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_cli_csv_output(
    model_path: Path, audio_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "-q",
            "predict",
            str(model_path),
            str(audio_files["siren_wav"]),
            str(audio_files["broken"]),
            "--format",
            "csv",
            "--top-k",
            "2",
        ]
    )
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["scope"] for r in rows] == ["clip"] + ["window"] * 5 + ["error"]
    assert rows[0]["label_1"] == "siren" and rows[0]["end_s"] == "3.0000"
    assert float(rows[1]["probability_1"]) >= float(rows[1]["probability_2"])
    assert "cannot decode" in rows[-1]["error"]


def test_cli_exit_codes(
    model_path: Path, audio_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-q", "predict", str(model_path), str(audio_files["siren_wav"])]) == 0
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00" * 64)
    assert main(["-q", "predict", str(damaged), str(audio_files["siren_wav"])]) == 2
    assert "damaged.safetensors" in capsys.readouterr().err
    (tmp_path / "empty_folder").mkdir()
    assert main(["-q", "predict", str(model_path), str(tmp_path / "empty_folder")]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_cli_entry_point_as_installed(model_path: Path, audio_files: dict[str, Path]) -> None:
    """The real `python -m urbansound predict` process: output on stdout, exit code 0."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "urbansound",
            "-q",
            "predict",
            str(model_path),
            str(audio_files["horn_ogg"]),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["file"] == str(audio_files["horn_ogg"]) and len(record["timeline"]) == 4
