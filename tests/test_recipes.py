"""Recipes and flags (explicit flags override the recipe), fine-tuning from a local model file, and the
cross-validation / compare / models commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import SMALL
from test_training import tiny_config

from urbansound.cli import build_parser, main, run_config_from_args
from urbansound.config import AudioConfig, FeatureConfig, ModelConfig, RunConfig, TrainingConfig, apply_recipe
from urbansound.errors import ConfigError
from urbansound.modelfile import ModelSpec, build_classifier, load_pretrained_weights
from urbansound.training.run import train


def _config(*flags: str):  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["train", "--annotations", "a.csv", "--data", "d", *flags])
    return run_config_from_args(args)


def test_baseline_recipe_reproduces_the_student_project_settings() -> None:
    config = _config("--recipe", "baseline")
    assert config.audio == AudioConfig() and config.features == FeatureConfig()
    assert config.model == ModelConfig(name="cnn")
    training = config.training
    assert (training.epochs, training.batch_size, training.max_lr, training.scheduler) == (
        25,
        16,
        1e-3,
        "onecycle",
    )
    assert (
        config.augment.variants == 0 and config.augment.mixup_alpha == 0 and not config.augment.spec_augment
    )
    assert config.recipe == "baseline"


def test_recipe_seed_is_an_alias_of_baseline() -> None:
    """The baseline recipe's first name still works and records the new name."""
    assert _config("--recipe", "seed") == _config("--recipe", "baseline")
    assert _config("--recipe", "seed").recipe == "baseline"
    assert apply_recipe(RunConfig(), "seed") == apply_recipe(RunConfig(), "baseline")
    with pytest.raises(SystemExit):
        _config("--recipe", "nonsense")


def test_default_recipe_and_explicit_flags_override_it() -> None:
    default = _config()
    assert default.recipe == "default" and default.model.name == "resnet"
    assert default.model.kwargs == {"widths": [16, 32, 64, 128]} and default.model.ensemble == 4
    assert default.training.scheduler == "cosine" and default.augment.spec_augment
    assert default.audio.sample_rate == 22_050 and default.features.n_mels == 128
    assert default.features.db_reference == "clip_max" and default.training.select_epoch == "last"
    # An explicit flag wins, even when it equals the baseline recipe's value.
    config = _config("--n-mels", "64", "--mixup", "0", "--scheduler", "onecycle")
    assert config.features.n_mels == 64 and config.augment.mixup_alpha == 0
    assert config.training.scheduler == "onecycle"
    assert config.model.name == "resnet" and config.model.kwargs == {"widths": [16, 32, 64, 128]}
    config = _config("--model", "sbcnn")
    assert config.model.kwargs == {}  # the recipe's options belong to the recipe's model
    config = _config(
        "--recipe", "baseline", "--model-option", "channels=[4, 8, 16, 32]", "--label-smoothing", "0.1"
    )
    assert config.model.kwargs == {"channels": [4, 8, 16, 32]} and config.training.label_smoothing == 0.1
    assert _config("--recipe", "baseline").model.ensemble == 1
    assert _config("--ensemble", "3").model.ensemble == 3
    assert _config("--ensemble", "3", "--model", "crnn").model.ensemble == 3
    with pytest.raises(ConfigError, match="scheduler"):
        TrainingConfig(scheduler="step").validate()


def _spec(name: str, n_classes: int, n_mels: int = 32, **kwargs: object) -> ModelSpec:
    return ModelSpec(
        audio=AudioConfig(sample_rate=16_000, duration=1.0),
        features=FeatureConfig(n_fft=512, hop_length=256, n_mels=n_mels),
        model=ModelConfig(name=name, kwargs=dict(kwargs)),
        class_names=[f"c{i}" for i in range(n_classes)],
    )


def test_init_from_loads_matching_weights_and_refuses_other_architectures(
    tiny_dataset: Path,
    tmp_path: Path,
) -> None:
    source_run = train(
        tiny_config(tiny_dataset, tmp_path / "a", tmp_path / "cache", epochs=1), progress=False
    )
    model_file = source_run / "model.safetensors"
    from safetensors.torch import load_file

    saved = load_file(str(model_file))
    same = build_classifier(_spec("cnn", 10))
    assert load_pretrained_weights(same, model_file) == []
    for key, value in same.state_dict().items():
        if key.startswith("backbone."):
            torch.testing.assert_close(value, saved[key])
    # Another class count: everything but the output layer is copied, the output layer starts fresh.
    fewer = build_classifier(_spec("cnn", 4))
    reset = load_pretrained_weights(fewer, model_file)
    assert sorted(reset) == ["backbone.classifier.bias", "backbone.classifier.weight"]
    torch.testing.assert_close(
        fewer.state_dict()["backbone.features.0.weight"], saved["backbone.features.0.weight"]
    )
    with pytest.raises(ConfigError, match="do not fit this model.*'cnn'"):
        load_pretrained_weights(build_classifier(_spec("sbcnn", 10)), model_file)
    with pytest.raises(ConfigError, match="do not fit"):
        load_pretrained_weights(build_classifier(_spec("cnn", 10, channels=(4, 8, 16, 32))), model_file)

    # Through a training run: the file's weights are the starting point, recorded in the configuration.
    config = tiny_config(tiny_dataset, tmp_path / "b", tmp_path / "cache", epochs=1)
    config.training.init_from = str(model_file)
    run_dir = train(config, progress=False)
    assert json.loads((run_dir / "config.json").read_text())["training"]["init_from"] == str(model_file)
    config.model = ModelConfig(name="crnn")
    with pytest.raises(ConfigError, match="do not fit"):
        train(config, progress=False)


def test_crossval_compare_and_models_commands(
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = [
        "--annotations",
        str(tiny_dataset / "metadata" / "UrbanSound8K.csv"),
        "--data",
        str(tiny_dataset / "audio"),
        "--recipe",
        "baseline",
        *SMALL,
        "--epochs",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    out = tmp_path / "cv"
    assert main(["crossval", *common, "--folds", "1,3", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "| 3 |" in printed and "Accuracy" in printed
    assert sorted(p.name for p in out.glob("fold*")) == ["fold01", "fold03"]
    assert main(["compare", str(out), str(out / "fold01"), "--out", str(tmp_path / "cmp.md")]) == 0
    assert "Settings that differ" in (tmp_path / "cmp.md").read_text()
    assert main(["models", "--n-mels", "64"]) == 0
    listing = capsys.readouterr().out
    for name in ("cnn", "sbcnn", "resnet", "crnn"):
        assert name in listing
    assert "M" in listing and "parameters" in listing
