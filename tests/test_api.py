"""The Python API (``urbansound.Classifier``) on a real run folder, run-folder resolution everywhere a model
file is taken, embeddings, and ``urbansound embed``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import urbansound
from urbansound.cli import main
from urbansound.config import AudioConfig, FeatureConfig, ModelConfig, RunConfig, TrainingConfig
from urbansound.errors import ConfigError, DataError
from urbansound.inference import Predictor
from urbansound.modelfile import ModelSpec, build_classifier
from urbansound.models import list_models
from urbansound.training.run_folder import RunFolder, resolve_model_file

ENSEMBLE = 2  # members: embeddings of an ensemble are its members' side by side


@pytest.fixture(scope="module")
def run_dir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run trained here on the 3-fold synthetic dataset (16 kHz, 1 s windows, 32 bands, one
    epoch, a 2-member ensemble of the baseline CNN). No fold is named: the data's last fold tests."""
    from urbansound.training.run import train

    base = tmp_path_factory.mktemp("api")
    config = RunConfig(
        annotations=str(tiny_dataset / "metadata" / "UrbanSound8K.csv"),
        data_dir=str(tiny_dataset / "audio"),
        audio=AudioConfig(sample_rate=16_000, duration=1.0),
        features=FeatureConfig(n_fft=512, hop_length=256, n_mels=32),
        model=ModelConfig(ensemble=ENSEMBLE),
        training=TrainingConfig(epochs=1, batch_size=8, device="cpu"),
        runs_dir=str(base / "runs"),
        cache_dir=str(base / "cache"),
        name="api",
    )
    return train(config, progress=False)


@pytest.fixture(scope="module")
def clips(tiny_dataset: Path) -> list[Path]:
    return sorted((tiny_dataset / "audio" / "fold1").glob("*.wav"))[:3]


def test_split_defaults_come_from_the_data(run_dir: Path) -> None:
    saved = RunFolder(run_dir).read_config()
    assert (saved.split.test_fold, saved.split.val_fold) == (
        3,
        2,
    )  # the last fold tests, the one before validates


def test_classifier_from_a_run_folder_predicts_as_the_predictor(run_dir: Path, clips: list[Path]) -> None:
    clf = urbansound.Classifier.from_file(run_dir)
    assert clf.model_file == run_dir / RunFolder.MODEL
    prediction = clf.predict(clips[0])
    expected = Predictor.from_file(run_dir / RunFolder.MODEL).predict(clips[0])
    np.testing.assert_allclose(prediction.probabilities, expected.probabilities, atol=1e-6)
    assert isinstance(prediction, urbansound.Prediction)
    assert prediction.label == clf.class_names[int(np.argmax(prediction.probabilities))]
    top = prediction.top_k(3)
    assert [set(c) for c in top] == [{"label", "score"}] * 3
    assert top[0] == {"label": prediction.label, "score": pytest.approx(prediction.probability)}
    assert [c["score"] for c in top] == sorted((c["score"] for c in top), reverse=True)
    # A 4 s clip through a 1 s window at half-window hops: windows start every 0.5 s.
    assert [w.start_s for w in prediction.windows] == [0.5 * i for i in range(7)]
    as_dict = prediction.to_dict(top_k=2)
    assert as_dict["clip"]["label"] == prediction.label and len(as_dict["clip"]["top_k"]) == 2
    json.dumps(as_dict)  # JSON-ready

    samples, rate = sf.read(clips[0], dtype="float32")
    from_array = clf.predict(samples, sample_rate=rate)
    np.testing.assert_allclose(from_array.probabilities, prediction.probabilities, atol=1e-5)
    with pytest.raises(ConfigError, match="sample_rate"):
        clf.predict(samples)


def test_predict_batch_keeps_order_and_names_every_bad_file(
    run_dir: Path, clips: list[Path], tmp_path: Path
) -> None:
    clf = urbansound.Classifier.from_file(run_dir / RunFolder.MODEL)
    batch = clf.predict_batch(clips)
    for path, prediction in zip(clips, batch, strict=True):
        np.testing.assert_allclose(prediction.probabilities, clf.predict(path).probabilities, atol=1e-5)
        assert prediction.source == str(path)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    with pytest.raises(DataError, match=r"2 of 3 file\(s\)") as error:
        clf.predict_batch([clips[0], broken, tmp_path / "missing.wav"])
    assert str(broken) in str(error.value) and "missing.wav" in str(error.value)


def test_embedding_is_the_mean_penultimate_layer_over_windows(run_dir: Path, clips: list[Path]) -> None:
    clf = urbansound.Classifier.from_file(run_dir)
    predictor = clf.predictor
    vectors = clf.embed(clips)
    member_width = predictor.model.output_layers()[0].in_features
    assert vectors.shape == (len(clips), ENSEMBLE * member_width) and vectors.dtype == np.float32
    one = clf.embed(clips[1])
    np.testing.assert_allclose(one, vectors[1], atol=1e-5)
    # By hand: the clip's windows, each member's output-layer input, averaged over windows.
    samples, rate = sf.read(clips[1], dtype="float32")
    waveform = predictor.prepare(samples, rate)
    windows = predictor.windows(waveform, predictor.window_starts(waveform.shape[0]))
    np.testing.assert_allclose(predictor.embeddings(windows).mean(axis=0), one, atol=1e-5)
    np.testing.assert_allclose(clf.embed(samples, sample_rate=rate), one, atol=1e-4)
    # Each member's output layer turns its part of a window's embedding into that member's logits.
    batch = torch.from_numpy(windows)
    with torch.no_grad():
        per_window = predictor.model.embed(batch)
        features = predictor.model.normalizer(predictor.model.frontend(batch)).unsqueeze(1)
        for k, (layer, member) in enumerate(
            zip(predictor.model.output_layers(), predictor.model.backbone.members, strict=True)
        ):
            part = per_window[:, k * member_width : (k + 1) * member_width]
            torch.testing.assert_close(layer(part), member(features), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_every_model_embeds_what_its_output_layer_reads(name: str) -> None:
    spec = ModelSpec(
        # 64 bands x 101 frames: the least the deepest families (PANNs' CNN14: six 2x2 pools) accept
        audio=AudioConfig(sample_rate=16_000, duration=1.0),
        features=FeatureConfig(n_fft=512, hop_length=160, n_mels=64),
        model=ModelConfig(name=name, n_classes=3),
        class_names=["a", "b", "c"],
    )
    try:
        classifier = build_classifier(spec).eval()
    except ConfigError as error:  # a family whose configuration comes from a checkpoint (--init-from)
        pytest.skip(f"{name} cannot be built without options: {error}")
    waves = torch.randn(2, spec.audio.n_samples) * 0.1
    with torch.no_grad():
        (layer,) = classifier.output_layers()
        assert layer.out_features == 3
        torch.testing.assert_close(layer(classifier.embed(waves)), classifier(waves))


def test_crossval_folder_resolves_to_the_best_validation_fold(run_dir: Path, tmp_path: Path) -> None:
    cv = tmp_path / "cv"
    # Fold 2 has the best validation accuracy, fold 3 the best test accuracy: validation decides.
    for fold, val, test in ((1, 0.4, 0.5), (2, 0.6, 0.1), (3, 0.5, 0.9)):
        folder = RunFolder(cv).fold_folder(fold)
        shutil.copytree(run_dir, folder.path)
        metrics = json.loads(folder.metrics_path.read_text())
        folder.metrics_path.write_text(json.dumps({**metrics, "val_accuracy": val, "test_accuracy": test}))
    (cv / RunFolder.CROSSVAL_SUMMARY).write_text("{}")
    assert resolve_model_file(cv) == cv / "fold02" / RunFolder.MODEL
    assert urbansound.Classifier.from_file(cv).model_file == cv / "fold02" / RunFolder.MODEL

    for fold in (1, 2, 3):  # nothing finished: the error lists the fold folders to name instead
        RunFolder(cv).fold_folder(fold).metrics_path.unlink()
    with pytest.raises(DataError, match="fold01, fold02, fold03"):
        resolve_model_file(cv)


def test_unfinished_and_missing_runs_are_clear_errors(run_dir: Path, tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / RunFolder.CONFIG, unfinished / RunFolder.CONFIG)
    with pytest.raises(DataError, match="--resume"):
        urbansound.Classifier.from_file(unfinished)
    with pytest.raises(DataError, match="no such model file or run folder"):
        urbansound.Classifier.from_file(tmp_path / "nowhere")
    with pytest.raises(DataError, match="neither a model file"):
        resolve_model_file(tmp_path)


def test_predict_export_and_serve_take_a_run_folder(
    run_dir: Path, clips: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-q", "predict", str(run_dir), str(clips[0]), "--format", "json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert main(["-q", "predict", str(run_dir / RunFolder.MODEL), str(clips[0]), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_folder

    from urbansound.export import export_model

    result = export_model(run_dir, "torchscript", check=False)
    assert result.path.parent == run_dir  # beside the run's model file
    result.path.unlink()

    serve_app = pytest.importorskip("urbansound.serve.app")
    pytest.importorskip("fastapi.testclient")
    from fastapi.testclient import TestClient

    with TestClient(serve_app.create_app(run_dir)) as client:
        response = client.post("/classify", files={"file": ("clip.wav", clips[0].read_bytes(), "audio/wav")})
    assert response.status_code == 200, response.text
    assert response.json()["clip"]["label"] == from_folder[0]["clip"]["label"]


def test_embed_command_writes_npy_and_csv(
    run_dir: Path, clips: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = urbansound.Classifier.from_file(run_dir).embed(clips)
    npy, table = tmp_path / "out" / "embeddings.npy", tmp_path / "embeddings.csv"
    assert main(["-q", "embed", str(run_dir), *map(str, clips), "--out", str(npy)]) == 0
    assert f"{len(clips)} file(s) x {expected.shape[1]} dimensions" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(npy), expected, atol=1e-6)
    assert main(["-q", "embed", str(run_dir), str(clips[0].parent), "--out", str(table)]) == 0
    with open(table, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:2] == ["file", "e0"] and len(rows[0]) == 1 + expected.shape[1]
    by_file = {row[0]: np.asarray(row[1:], dtype=np.float32) for row in rows[1:]}
    assert len(by_file) == len(list(clips[0].parent.glob("*.wav")))
    np.testing.assert_allclose(by_file[str(clips[2])], expected[2], rtol=1e-5, atol=1e-6)

    capsys.readouterr()
    assert main(["-q", "embed", str(run_dir), str(clips[0]), "--out", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("x.txt") == 1 and ".npy or .csv" in err
    assert not (tmp_path / "x.txt").exists()


def test_embedding_of_several_views_is_their_mean() -> None:
    from urbansound.features.views import ViewAverage
    from urbansound.models.classifier import AudioClassifier

    spec = ModelSpec(
        audio=AudioConfig(sample_rate=8000, duration=0.5),
        features=FeatureConfig(n_fft=256, hop_length=128, n_mels=16),
        model=ModelConfig(name="cnn", n_classes=3),
        class_names=["a", "b", "c"],
    )
    single = build_classifier(spec).eval()
    views = ViewAverage(window_frames=16, hop_frames=8)  # 33 frames: windows at 0, 8, 16, 17
    several = AudioClassifier(single.frontend, single.normalizer, single.backbone, views=views).eval()
    waves = torch.randn(2, spec.audio.n_samples) * 0.1
    (layer,) = single.output_layers()
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _layer, inputs: captured.append(inputs[0]))
    with torch.no_grad():
        features = single.normalizer(single.frontend(waves))  # (2, 16, 33)
        starts = views.window_starts(features.shape[-1])
        assert len(starts) > 1
        for start in starts:  # each view by itself, through the one-view classifier
            single.classify_normalized(features[..., start : start + 16])
        handle.remove()
        torch.testing.assert_close(several.embed(waves), torch.stack(captured).mean(dim=0))


def test_events_are_those_of_the_prediction(tmp_path: Path) -> None:
    """``clf.events`` gives what ``predict --events`` gives: the prediction's events at the same settings."""
    from _tiny_model import SAMPLE_RATE, scene, tiny_model

    from urbansound.config import EventConfig
    from urbansound.events import prediction_events

    clf = urbansound.Classifier.from_file(tiny_model(tmp_path / "tiny"))
    rng = np.random.default_rng(3)
    parts = [scene("background", 2.0, SAMPLE_RATE, rng), scene("siren", 3.0, SAMPLE_RATE, rng)]
    recording = np.concatenate([*parts, scene("background", 2.0, SAMPLE_RATE, rng)])
    events = clf.events(recording, sample_rate=SAMPLE_RATE, hop=0.25, merge_gap=0.25)
    expected = prediction_events(
        clf.predict(recording, sample_rate=SAMPLE_RATE, hop=0.25), EventConfig(merge_gap=0.25)
    )
    assert events == expected
    sirens = [e for e in events if e.label == "siren"]
    assert len(sirens) == 1 and abs(sirens[0].onset_s - 2.0) <= 0.5 and abs(sirens[0].offset_s - 5.0) <= 0.5
    assert sirens[0].to_dict()["event_label"] == "siren"
    with pytest.raises(ConfigError, match="threshold"):
        clf.events(recording, sample_rate=SAMPLE_RATE, threshold=1.5)
