"""ONNX and TorchScript exports take raw audio and agree with PyTorch to 1e-4 on real-looking inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_model import tiny_model

from urbansound.cli import main
from urbansound.config import AudioConfig, FeatureConfig, ModelConfig, RunConfig, apply_recipe
from urbansound.errors import DataError
from urbansound.export import (
    ConvSpectrogramFrontend,
    export_model,
    parity_inputs,
    reference_outputs,
    run_onnx,
    run_torchscript,
)
from urbansound.modelfile import ModelSpec, build_classifier, load_model_file, save_model_file
from urbansound.models.ensemble import SeedEnsemble

onnxruntime = pytest.importorskip("onnxruntime", reason="the 'export' extra (onnxruntime) is not installed")
onnx = pytest.importorskip("onnx", reason="the 'export' extra (onnx) is not installed")

ATOL = 1e-4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny_model")


@pytest.fixture(scope="module")
def full_size_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default UrbanSound8K settings (44.1 kHz, 4 s, n_fft 1024, 64 gammatone bands), random weights
    and non-trivial normalisation statistics: exports must hold beyond the tiny test model."""
    torch.manual_seed(1)
    spec = ModelSpec(
        audio=AudioConfig(),
        features=FeatureConfig(kind="gammatone"),
        model=ModelConfig(n_classes=10),
        class_names=[f"class_{i}" for i in range(10)],
    )
    model = build_classifier(spec)
    model.normalizer.set_statistics(torch.linspace(-60, -20, 64), torch.linspace(8, 15, 64))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # trained-looking running statistics
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("full") / "model.safetensors"
    return save_model_file(path, model, spec)


def test_conv_frontend_matches_torch_stft(model_path: Path) -> None:
    model, spec = load_model_file(model_path)
    audio = torch.from_numpy(parity_inputs(spec, n=6, seed=3))
    with torch.inference_mode():
        expected = model.frontend(audio)
        got = ConvSpectrogramFrontend(model.frontend)(audio)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # dB


def test_onnx_export_takes_audio_and_matches_pytorch(model_path: Path, tmp_path: Path) -> None:
    result = export_model(model_path, "onnx", output=tmp_path / "model.audio.onnx")
    assert result.path.is_file() and result.input == "audio"
    assert result.max_abs_diff_probabilities is not None and result.max_abs_diff_probabilities < ATOL

    model, spec = load_model_file(model_path)
    audio = parity_inputs(spec, n=5, seed=42)  # inputs the export itself never saw
    logits, probabilities = reference_outputs(model, audio)
    got_logits, got_probabilities = run_onnx(result.path, audio)
    np.testing.assert_allclose(got_probabilities, probabilities, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got_logits, logits, atol=10 * ATOL, rtol=1e-4)
    assert got_probabilities.argmax(axis=1).tolist() == probabilities.argmax(axis=1).tolist()

    # Dynamic batch, fixed window length: 1.5 windows would silently change the answer, so it is refused.
    longer = np.concatenate([audio[0], audio[1][: spec.audio.n_samples // 2]])[None]
    with pytest.raises(Exception, match=f"Expected: {spec.audio.n_samples}"):
        run_onnx(result.path, longer)

    metadata = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(metadata["class_names"]) == spec.class_names
    assert metadata["sample_rate"] == "16000" and metadata["window_samples"] == "16000"
    assert metadata["input"] == "audio"
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["audio"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities", "level_dbfs", "silent"]


def test_onnx_parity_at_full_size_with_gammatone(full_size_model: Path) -> None:
    result = export_model(full_size_model, "onnx")
    assert result.path == full_size_model.with_name("model.audio.onnx")  # named after its input
    model, spec = load_model_file(full_size_model)
    audio = parity_inputs(spec, n=4, seed=9)
    _, probabilities = reference_outputs(model, audio)
    np.testing.assert_allclose(run_onnx(result.path, audio)[1], probabilities, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "model_config",
    [
        ModelConfig(name="resnet", n_classes=10),
        ModelConfig(name="crnn", n_classes=10),
        ModelConfig(name="resnet", n_classes=10, kwargs={"widths": [8, 8, 16, 16]}, ensemble=3),
    ],
    ids=["resnet", "crnn", "resnet-ensemble3"],
)
def test_onnx_parity_for_the_default_recipe_families_with_a_clip_max_reference(
    model_config: ModelConfig, tmp_path: Path
) -> None:
    """The default recipe's front end (22.05 kHz, hop 1024, 128 mel, dB re each clip's maximum) with the
    families it has used: residual convs, a BiGRU with attention pooling, and a seed ensemble."""
    config = apply_recipe(RunConfig(), "default")
    torch.manual_seed(2)
    spec = ModelSpec(
        audio=config.audio,
        features=dataclasses.replace(config.features, db_reference="clip_max"),
        model=model_config,
        class_names=[f"class_{i}" for i in range(10)],
    )
    model = build_classifier(spec)
    model.normalizer.set_statistics(torch.linspace(-60, -20, 128), torch.linspace(8, 15, 128))
    path = save_model_file(tmp_path / "model.safetensors", model, spec)
    result = export_model(path, "onnx")
    loaded, spec = load_model_file(path)
    if model_config.ensemble > 1:
        assert isinstance(loaded.backbone, SeedEnsemble) and len(loaded.backbone.members) == 3
    audio = parity_inputs(spec, n=3, seed=5)
    loud = reference_outputs(loaded, audio[1:2])[1]
    audio[1] *= 0.05  # the same recording 26 dB quieter: with the clip_max reference it scores the same
    _, probabilities = reference_outputs(loaded, audio)
    np.testing.assert_allclose(probabilities[1:2], loud, atol=1e-4, rtol=0)
    np.testing.assert_allclose(run_onnx(result.path, audio)[1], probabilities, atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_matches_pytorch(model_path: Path, tmp_path: Path) -> None:
    result = export_model(model_path, "torchscript", output=tmp_path / "model.audio.torchscript.pt")
    model, spec = load_model_file(model_path)
    audio = parity_inputs(spec, n=3, seed=7)
    logits, probabilities = reference_outputs(model, audio)
    got_logits, got_probabilities = run_torchscript(result.path, audio)
    np.testing.assert_allclose(got_probabilities, probabilities, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got_logits, logits, atol=10 * ATOL, rtol=1e-4)
    files = {"spec.json": ""}
    torch.jit.load(str(result.path), _extra_files=files)
    assert json.loads(json.loads(files["spec.json"])["class_names"]) == spec.class_names


def test_export_refuses_an_export_that_disagrees(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urbansound.export as export_module

    def off_by_a_little(path: Path, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probabilities = run_onnx(path, audio)
        return logits, probabilities + 1e-3

    monkeypatch.setattr(export_module, "run_onnx", off_by_a_little)
    target = tmp_path / "bad.audio.onnx"
    with pytest.raises(DataError, match="differs from PyTorch"):
        export_model(model_path, "onnx", output=target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_cli_export(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "exported.audio.onnx"
    assert main(["-q", "export", str(model_path), "--format", "onnx", "--output", str(target)]) == 0
    out = capsys.readouterr().out
    assert str(target) in out and "input: audio" in out and "16000 Hz" in out and "parity" in out
    assert target.is_file()
    # The outputs named are the graph's own, silence flag included.
    names = [output.name for output in onnx.load(str(target)).graph.output]
    assert names == ["logits", "probabilities", "level_dbfs", "silent"]
    assert f"outputs: {', '.join(names)}\n" in out
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a model")
    assert main(["-q", "export", str(damaged)]) == 2
    assert "damaged.safetensors" in capsys.readouterr().err
