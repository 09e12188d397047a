"""Settings declared once: the dataclass fields in config.py drive the flags, their help, their allowed values
and validation; configuration files load and override; the CLI validates the feature settings once."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from urbansound.cli import build_parser, feature_configs, resolve_config, run_config_from_args
from urbansound.config import (
    CACHE_DTYPES,
    PRECISIONS,
    FeatureConfig,
    RunConfig,
    SplitConfig,
    TrainingConfig,
    apply_recipe,
    setting,
)
from urbansound.errors import ConfigError
from urbansound.settings import (
    add_setting_arguments,
    apply_setting_arguments,
    dump_config,
    load_config_file,
    setting_fields,
)

DATA = ["--annotations", "a.csv", "--data", "d"]


@dataclass
class _Inner:
    width: int = setting(8, "how wide")
    mode: str = setting("fast", "fast or slow", choices=("fast", "slow"), aliases={"quick": "fast"})


@dataclass
class _Toy:
    """A throwaway configuration: the generator works on any dataclass declared with ``setting``."""

    inner: _Inner = dataclasses.field(default_factory=_Inner)
    limit: float | None = setting(None, "upper limit (none: no limit)", flags=("--limit", "--max"))
    folds: list[int] | None = setting(None, "folds")
    options: dict[str, object] = setting(help="KEY=VALUE", default_factory=dict)
    verbose: bool = setting(False, "talk more")
    internal: int = 3  # no help: not a flag


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _Toy, _Toy(inner=_Inner(width=99)))
    return parser


def test_a_declared_field_becomes_a_flag_and_unset_flags_keep_the_base() -> None:
    parser = _toy_parser()
    flags = {s for action in parser._actions for s in action.option_strings}
    assert {"--width", "--mode", "--limit", "--max", "--folds", "--options", "--verbose"} <= flags
    assert "--internal" not in flags
    assert "(default: 99)" in parser.format_help()  # defaults shown are the given instance's

    base = _Toy(inner=_Inner(width=5), limit=2.0)
    args = parser.parse_args(
        ["--mode", "quick", "--max", "none", "--folds", "1,3", "--verbose", "--options", "a=1"]
    )
    given = apply_setting_arguments(base, args)
    assert given == {"inner.mode", "limit", "folds", "verbose", "options"}
    assert base == _Toy(
        inner=_Inner(width=5, mode="fast"), limit=None, folds=[1, 3], options={"a": 1}, verbose=True
    )
    assert [path for path, _, _ in setting_fields(_Toy)] == [
        "inner.width", "inner.mode", "limit", "folds", "options", "verbose"
    ]  # fmt: skip


def test_every_declared_setting_is_a_train_flag_and_old_spellings_still_parse() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    dests = {action.dest for action in train._actions}
    assert {path for path, _, _ in setting_fields(RunConfig)} <= dests
    config = run_config_from_args(
        parser.parse_args(
            [
                "train",
                *DATA,
                "--batch_size",
                "8",
                "--trans_type",
                "gamma",
                "--max-lr",
                "0.01",
                "--aug-variants",
                "2",
                "--data-on-device",
                "no",
                "--n-bands",
                "40",
                "--skip_bad",
                "--model-option",
                "widths=[8, 8, 8, 8]",
                "--workers",
                "1",
                "--mixup",
                "0.3",
                "--f-max",
                "8000",
            ]
        )  # fmt: skip
    )
    assert (config.training.batch_size, config.training.max_lr, config.training.num_workers) == (8, 0.01, 1)
    assert (config.features.kind, config.features.n_mels, config.features.f_max) == ("gammatone", 40, 8000)
    assert (config.augment.variants, config.augment.mixup_alpha) == (2, 0.3)
    assert config.training.data_on_device == "no" and config.skip_bad
    assert config.model.kwargs == {"widths": [8, 8, 8, 8]}
    assert run_config_from_args(parser.parse_args(["train", *DATA, "--lr", "0.02"])).training.max_lr == 0.02


def test_help_shows_the_default_recipes_values() -> None:
    default = apply_recipe(RunConfig(), "default")
    for command in ("train", "models"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        text = " ".join(sub.format_help().split())
        # The default recipe's value first; other recipes' values follow where they differ.
        assert f"(default: {default.audio.sample_rate};" in text and "(default: 128;" in text
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    assert "(default: resnet;" in " ".join(train.format_help().split())


def test_allowed_values_are_declared_once_and_rejected_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    assert fields["precision"].metadata["choices"] == PRECISIONS
    assert {f.name: f for f in dataclasses.fields(RunConfig)}["cache_dtype"].metadata[
        "choices"
    ] == CACHE_DTYPES
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", *DATA, "--precision", "fp8"])
    assert "unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", *DATA, "--cache-dtype", "int8"])
    assert "unknown cache dtype 'int8'; choose one of float32, float16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", *DATA, "--epochs", "many"])
    assert "expected int, got 'many'" in capsys.readouterr().err
    # Validation reads the same declaration (for configurations built in code or loaded from a file).
    with pytest.raises(ConfigError, match=r"unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16"):
        TrainingConfig(precision="fp8").validate()
    with pytest.raises(ConfigError, match="unknown cache dtype"):
        RunConfig(cache_dtype="int8").validate()
    with pytest.raises(ConfigError, match="unknown split method"):
        SplitConfig(method="shuffle").validate()


def test_val_fraction_is_declared_once_for_train_and_crossval() -> None:
    subs = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    helps = {
        command: next(a.help for a in subs[command]._actions if "--val-fraction" in a.option_strings)
        for command in ("train", "crossval")
    }
    assert helps["train"] == helps["crossval"]
    args = build_parser().parse_args(["crossval", *DATA, "--val-fraction", "0.25"])
    assert run_config_from_args(args).split.val_fraction == 0.25


def test_feature_settings_are_validated_once_on_the_way_from_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = FeatureConfig.validate

    def counting(self: FeatureConfig, sample_rate: int) -> None:
        calls.append(sample_rate)
        original(self, sample_rate)

    monkeypatch.setattr(FeatureConfig, "validate", counting)
    run_config_from_args(build_parser().parse_args(["train", *DATA]))
    assert len(calls) == 1
    calls.clear()
    feature_configs(build_parser().parse_args(["models"]))
    assert len(calls) == 1


def test_models_and_visualize_take_their_defaults_from_trains_recipe() -> None:
    for recipe in ([], ["--recipe", "baseline"], ["--recipe", "seed"]):
        train = run_config_from_args(build_parser().parse_args(["train", *DATA, *recipe]))
        for command in (["models"], ["visualize", *DATA]):
            audio, features = feature_configs(build_parser().parse_args([*command, *recipe]))
            assert (audio, features) == (train.audio, train.features), (command, recipe)
    audio, features = feature_configs(build_parser().parse_args(["models", "--n-mels", "40"]))
    assert features.n_mels == 40 and audio.sample_rate == 22_050


def test_config_file_is_the_base_and_flags_override_it(tmp_path: Path) -> None:
    saved = run_config_from_args(
        build_parser().parse_args(["train", *DATA, "--recipe", "baseline", "--epochs", "3"])
    )
    path = tmp_path / "config.json"
    dump_config(saved, str(path))
    again = run_config_from_args(build_parser().parse_args(["train", "--config", str(path)]))
    assert again == saved
    changed = run_config_from_args(
        build_parser().parse_args(["train", "--config", str(path), "--epochs", "5", "--batch-size", "64"])
    )
    assert changed.training.epochs == 5 and changed.recipe == "baseline"
    assert changed.training.max_lr == pytest.approx(1e-3 * 2)  # the file's rate, scaled to the larger batch
    # A cross-validation's crossval.json holds the configuration under "config".
    (tmp_path / "crossval.json").write_text(json.dumps({"config": saved.to_dict(), "folds": [1, 2]}))
    assert load_config_file(tmp_path / "crossval.json") == saved
    # A recipe given with --config replaces the file's recipe settings.
    both = resolve_config(build_parser().parse_args(["train", "--config", str(path), "--recipe", "default"]))
    assert both.model.name == "resnet" and both.annotations == "a.csv"


def test_bad_config_files_are_clear_errors(tmp_path: Path) -> None:
    data = RunConfig().to_dict()
    data["training"]["epoch"] = 3
    (tmp_path / "typo.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) training.epoch"):
        load_config_file(tmp_path / "typo.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(tmp_path / "broken.json")
    data = RunConfig().to_dict()
    data["training"]["precision"] = "fp8"
    (tmp_path / "fp8.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        run_config_from_args(
            build_parser().parse_args(["train", *DATA, "--config", str(tmp_path / "fp8.json")])
        )
    try:
        import yaml  # noqa: F401
    except ImportError:
        (tmp_path / "c.yaml").write_text("epochs: 1\n")
        with pytest.raises(ConfigError, match="PyYAML"):
            load_config_file(tmp_path / "c.yaml")
        with pytest.raises(ConfigError, match="PyYAML"):
            dump_config(RunConfig(), str(tmp_path / "out.yaml"))
    else:
        dump_config(RunConfig(), str(tmp_path / "out.yaml"))
        assert load_config_file(tmp_path / "out.yaml") == RunConfig()
