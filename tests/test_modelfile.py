"""Tests of the model file (urbansound.modelfile): a safetensors file that alone rebuilds the classifier."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from urbansound import MODEL_FORMAT_VERSION
from urbansound.config import AudioConfig, FeatureConfig, ModelConfig
from urbansound.errors import DataError
from urbansound.features.frontend import AudioClassifier
from urbansound.modelfile import (
    ModelSpec,
    build_classifier,
    load_model_file,
    read_model_spec,
    save_model_file,
)

CLASS_NAMES = ["air_conditioner", "car_horn", "siren"]


@pytest.fixture
def spec(small_audio: AudioConfig) -> ModelSpec:
    features = FeatureConfig(kind="gammatone", n_fft=256, hop_length=128, n_mels=16, f_min=20.0, top_db=70.0)
    return ModelSpec(
        audio=small_audio,
        features=features,
        model=ModelConfig(name="cnn", n_classes=3),
        class_names=CLASS_NAMES,
    )


def trained_like(spec: ModelSpec) -> AudioClassifier:
    """A classifier whose every saved tensor differs from a fresh one's (weights, statistics, BN buffers)."""
    torch.manual_seed(0)
    model = build_classifier(spec)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn_like(tensor))
                if name.endswith(("running_var", "normalizer.std")):
                    tensor.abs_().add_(0.5)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
        model.normalizer.set_statistics(torch.linspace(-60, -20, 16), torch.linspace(5, 15, 16))
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path, spec: ModelSpec) -> tuple[Path, AudioClassifier]:
    model = trained_like(spec)
    path = save_model_file(
        tmp_path / "models" / "model.safetensors", model, spec, extra={"val_accuracy": 0.75}
    )
    return path, model


def waveform(n_samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return 0.3 * torch.randn(2, n_samples, generator=generator)


def test_round_trip_gives_identical_outputs(saved: tuple[Path, AudioClassifier], spec: ModelSpec) -> None:
    path, model = saved
    loaded, loaded_spec = load_model_file(path)
    assert not loaded.training
    assert loaded_spec == spec
    wave = waveform(spec.audio.n_samples)
    with torch.no_grad():
        expected = model(wave)
        actual = loaded(wave)
    assert actual.shape == (2, 3)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    # Every saved tensor came back, bit for bit; a fresh model differs.
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    torch.manual_seed(123)
    with torch.no_grad():
        assert not torch.allclose(build_classifier(spec).eval()(wave), expected)


def test_loading_never_unpickles(
    saved: tuple[Path, AudioClassifier], spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling while loading a model file")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, forbidden)
    path, model = saved
    loaded, _ = load_model_file(path)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(waveform(spec.audio.n_samples)), model(waveform(spec.audio.n_samples))
        )


def test_file_is_safetensors_with_the_urbansound_header(
    saved: tuple[Path, AudioClassifier], spec: ModelSpec
) -> None:
    path, model = saved
    data = path.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    metadata = header["__metadata__"]
    assert metadata["format"] == "urbansound-model"
    assert metadata["format_version"] == str(MODEL_FORMAT_VERSION)
    assert json.loads(metadata["spec"])["class_names"] == CLASS_NAMES
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == set(model.state_dict())
    assert list(path.parent.glob("*.tmp")) == []


def test_read_model_spec_returns_classes_settings_and_extra(
    saved: tuple[Path, AudioClassifier], spec: ModelSpec
) -> None:
    path, _ = saved
    read, extra = read_model_spec(path)
    assert read.class_names == CLASS_NAMES
    assert read.features == spec.features and read.features.kind == "gammatone" and read.features.n_mels == 16
    assert read.audio == spec.audio
    assert read.model.name == "cnn"
    assert extra == {"val_accuracy": 0.75}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:20])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign_safetensors(path: Path) -> None:
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})


def _no_metadata(path: Path) -> None:
    save_file({"weight": torch.zeros(3)}, str(path))


def _rewrite_metadata(path: Path, **changes: str) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    save_file(tensors, str(path), metadata={**metadata, **changes})


def _future_version(path: Path) -> None:
    _rewrite_metadata(path, format_version=str(MODEL_FORMAT_VERSION + 1))


def _damaged_spec(path: Path) -> None:
    _rewrite_metadata(path, spec='{"audio": {}')


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "not a readable urbansound model file"),
        (_truncate_header, "not a readable urbansound model file"),
        (_random_bytes, "not a readable urbansound model file"),
        (_empty, "not a readable urbansound model file"),
        (_foreign_safetensors, "not an urbansound model file"),
        (_no_metadata, "not an urbansound model file"),
        (_future_version, f"format version {MODEL_FORMAT_VERSION + 1}"),
        (_damaged_spec, "damaged model metadata"),
    ],
)
def test_unusable_file_raises_data_error_with_its_path(
    saved: tuple[Path, AudioClassifier], damage, reason: str
) -> None:
    path, _ = saved
    damage(path)
    for reader in (read_model_spec, load_model_file):
        with pytest.raises(DataError) as error:
            reader(path)
        assert str(error.value).startswith(f"{path}: ")
        assert reason in str(error.value)


def test_weights_that_do_not_fit_the_architecture_raise(
    tmp_path: Path, spec: ModelSpec, saved: tuple[Path, AudioClassifier]
) -> None:
    # Weights of a 5-class model under a 3-class spec.
    other = ModelSpec(
        spec.audio, spec.features, ModelConfig(name="cnn", n_classes=5), [f"c{i}" for i in range(5)]
    )
    path = save_model_file(tmp_path / "mismatch.safetensors", build_classifier(other), spec)
    with pytest.raises(DataError) as error:
        load_model_file(path)
    assert str(error.value).startswith(f"{path}: ") and "weights do not match" in str(error.value)

    # A tensor missing from the file.
    source, model = saved
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    state = {k: v for k, v in model.state_dict().items() if k != "normalizer.mean"}
    missing = tmp_path / "missing.safetensors"
    save_file(state, str(missing), metadata=metadata)
    with pytest.raises(DataError) as error:
        load_model_file(missing)
    assert str(missing) in str(error.value) and "normalizer.mean" in str(error.value)


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    for reader in (read_model_spec, load_model_file):
        with pytest.raises(DataError) as error:
            reader(path)
        assert str(path) in str(error.value) and "not found" in str(error.value)


def header(path: Path) -> tuple[int, bytes]:
    """The header length a safetensors file declares and the header's bytes."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return length, raw[8 : 8 + length]


def test_the_same_model_saved_again_gives_the_same_bytes(tmp_path: Path, spec: ModelSpec) -> None:
    """safetensors orders the metadata at random (a Rust HashMap): the file sorts it, so that rewriting an
    unchanged model (``train --resume RUN --reevaluate``) reproduces the file byte for byte."""
    model = trained_like(spec)
    extra = {"val_accuracy": 0.5, "best_epoch": 2}
    paths = [save_model_file(tmp_path / f"m{i}.safetensors", model, spec, extra=extra) for i in range(8)]
    assert len({path.read_bytes() for path in paths}) == 1
    length, text = header(paths[0])
    assert length % 8 == 0  # the tensor data stays 8-byte aligned
    metadata = json.loads(text)["__metadata__"]
    assert list(metadata) == sorted(metadata)
    assert read_model_spec(paths[0]) == (spec, extra)


def test_sorting_a_header_of_another_length_moves_the_tensors(tmp_path: Path) -> None:
    from urbansound.modelfile import sort_header_metadata

    tensors = {"a": torch.arange(5, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}
    path = tmp_path / "spaced.safetensors"
    save_file(tensors, str(path), metadata={"z": "1", "a": "2"})
    length, text = header(path)
    spaced = json.dumps(json.loads(text), indent=1).encode()  # valid, but longer than safetensors writes
    spaced += b" " * (-len(spaced) % 8)
    path.write_bytes(struct.pack("<Q", len(spaced)) + spaced + path.read_bytes()[8 + length :])
    sort_header_metadata(path)
    new_length, new_text = header(path)
    assert new_length < len(spaced) and new_length % 8 == 0
    assert list(json.loads(new_text)["__metadata__"]) == ["a", "z"]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"a": "2", "z": "1"}
        for name, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(name), tensor)
