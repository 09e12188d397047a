"""The command line end to end, as a user runs it: synth, dry run, train, visualize, train.py, bad input."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--sample-rate",
    "16000",
    "--duration",
    "1",
    "--n-fft",
    "512",
    "--hop-length",
    "256",
    "--n-mels",
    "32",
]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "urbansound", "-q", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("cli")
    result = run("synth", str(dest), "--recordings-per-class", "3", "--clips-per-recording", "2")
    assert result.returncode == 0, result.stderr
    return dest / "UrbanSound8K"


def data_args(root: Path) -> list[str]:
    return ["--annotations", str(root / "metadata" / "UrbanSound8K.csv"), "--data", str(root / "audio")]


def test_synth_writes_official_layout(dataset: Path) -> None:
    header = (dataset / "metadata" / "UrbanSound8K.csv").read_text().splitlines()[0]
    assert header == "slice_file_name,fsID,start,end,salience,fold,classID,class"
    assert sorted(p.name for p in (dataset / "audio").iterdir()) == sorted(f"fold{i}" for i in range(1, 11))


def test_dry_run_prints_split_sizes_without_decoding(dataset: Path, tmp_path: Path) -> None:
    result = run(
        "train",
        *data_args(dataset),
        "--dry-run",
        "--test-fold",
        "1",
        "--val-fold",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert "60 clips, 10 classes" in result.stdout
    assert "test fold 1" in result.stdout
    assert not (tmp_path / "cache").exists()  # nothing decoded, nothing cached


def test_random_split_reproduces_seed_proportions_and_warns(dataset: Path) -> None:
    result = run("train", *data_args(dataset), "--dry-run", "--split", "random")
    assert result.returncode == 0, result.stderr
    assert "train 39, val 9, test 12" in result.stdout  # int(60*0.2)=12, int(48*0.2)=9
    assert "recording" in result.stderr  # the leak warning


def test_train_then_train_py_compat(dataset: Path, tmp_path: Path) -> None:
    common = [
        *data_args(dataset),
        "--epochs",
        "2",
        *SMALL,
        "--test-fold",
        "1",
        "--val-fold",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = run(
        "train", *common, "--runs-dir", str(tmp_path / "runs"), "--name", "cli", "--trans_type", "gamma"
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("-cli")
    assert f"run folder: {run_dir}" in result.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["features"]["kind"] == "gammatone"
    assert "test fold 1" in (run_dir / "report.md").read_text()
    # The default recipe is a 4-seed ensemble: four members trained, one model file averaging them.
    assert config["model"]["ensemble"] == 4 and (run_dir / "checkpoint-member4.pt").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["ensemble"]["seeds"] == [0, 1, 2, 3]

    seed_style = subprocess.run(
        [
            sys.executable,
            "train.py",
            *common,
            "--runs-dir",
            str(tmp_path / "seed"),
            "--trans_type",
            "mel_spec",
            "-q",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert seed_style.returncode == 0, seed_style.stderr
    (seed_run,) = (tmp_path / "seed").iterdir()
    assert json.loads((seed_run / "config.json").read_text())["features"]["kind"] == "mel_spec"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "1", "--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--trans_type", "wavelet"], "unknown feature kind 'wavelet'"),
        (["--test-fold", "11", "--dry-run"], "test fold 11 has no clips"),
        (["--val-fold", "1", "--test-fold", "1", "--dry-run"], "must differ"),
    ],
)
def test_bad_parameters_give_clear_errors(dataset: Path, args: list[str], message: str) -> None:
    result = run("train", *data_args(dataset), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_metadata_reports_every_problem_without_traceback(dataset: Path, tmp_path: Path) -> None:
    lines = (dataset / "metadata" / "UrbanSound8K.csv").read_text().splitlines()
    first = lines[1].split(",")
    missing = ",".join(["nope-1-0-0.wav", *first[1:]])
    escaping = ",".join(["../../etc/passwd", *first[1:]])
    bad_fold = first.copy()
    bad_fold[5] = "12"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], *lines[1:], missing, escaping, ",".join(bad_fold)]) + "\n")
    result = run("train", "--annotations", str(bad), "--data", str(dataset / "audio"), "--dry-run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for expected in ("nope-1-0-0.wav", "escape", "fold 12", "3 problem(s)"):
        assert expected in result.stderr, expected
    skipped = run(
        "train", "--annotations", str(bad), "--data", str(dataset / "audio"), "--dry-run", "--skip-bad"
    )
    assert skipped.returncode == 0, skipped.stderr
    assert "60 clips" in skipped.stdout and "3 skipped" in skipped.stdout


def test_missing_paths_are_named(tmp_path: Path) -> None:
    result = run("train", "--annotations", str(tmp_path / "none.csv"), "--data", str(tmp_path))
    assert result.returncode == 2 and "none.csv" in result.stderr and "Traceback" not in result.stderr
    result = run("train", "--resume", str(tmp_path))
    assert result.returncode == 2 and "not a run folder" in result.stderr


def test_visualize_draws_class_examples(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "examples.png"
    result = run("visualize", *data_args(dataset), *SMALL, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000  # ten rows of waveform + two spectrograms, not an empty canvas


def test_print_config_then_config_reproduces_the_resolved_configuration(
    dataset: Path, tmp_path: Path
) -> None:
    flags = [
        *data_args(dataset),
        "--recipe",
        "baseline",
        *SMALL,
        "--epochs",
        "1",
        "--batch-size",
        "32",  # above the baseline's 16: the resolved (scaled) peak rate is what the file records
        "--test-fold",
        "1",
        "--val-fold",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    printed = run("train", *flags, "--print-config")
    assert printed.returncode == 0, printed.stderr
    resolved = json.loads(printed.stdout)
    assert resolved["recipe"] == "baseline" and resolved["training"]["max_lr"] == pytest.approx(1e-3 * 2**0.5)
    assert not (tmp_path / "runs").exists()  # printing trains nothing
    saved = tmp_path / "edited.json"
    saved.write_text(printed.stdout)
    result = run("train", "--config", str(saved))
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text()) == resolved
    # The same file through --print-config FILE, with a flag overriding it.
    again = tmp_path / "again.json"
    assert run("train", "--config", str(saved), "--epochs", "2", "--print-config", str(again)).returncode == 0
    assert json.loads(again.read_text()) == {**resolved, "training": {**resolved["training"], "epochs": 2}}


def test_bad_choices_and_config_files_are_usage_errors(dataset: Path, tmp_path: Path) -> None:
    result = run("train", *data_args(dataset), "--precision", "fp8", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16" in result.stderr
    result = run("train", "--config", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "missing.json" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------
# Everyday use (issue 13): help, version, resume of a finished run, the cache, predict's stderr, compare,
# split defaults from the data, model prices. In process where a subprocess would only add torch's import.
# ----------------------------------------------------------------------------------------------------------


def _subcommand(name: str) -> argparse.ArgumentParser:
    from urbansound.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]


def test_version_and_top_level_help_say_what_the_tool_is(capsys: pytest.CaptureFixture[str]) -> None:
    import urbansound
    from urbansound.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"urbansound {urbansound.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "classifiers of environmental sound" in text and "embed" in text and "cache" in text
    assert "parses arguments" not in text  # about the tool, not about how cli.py is written


def test_help_shows_each_default_and_the_other_recipes_value() -> None:
    from urbansound.config import DEFAULT_RECIPE, RECIPES, RunConfig, apply_recipe

    default = apply_recipe(RunConfig(), DEFAULT_RECIPE)
    others = {name: apply_recipe(RunConfig(), name) for name in RECIPES if name != DEFAULT_RECIPE}
    rates = "".join(
        f"; {name} recipe: {other.audio.sample_rate}"
        for name, other in others.items()
        if other.audio.sample_rate != default.audio.sample_rate
    )
    assert rates  # the baseline recipe's 44.1 kHz at least
    for command in ("train", "crossval", "models"):
        text = " ".join(_subcommand(command).format_help().split())
        assert f"(default: {default.audio.sample_rate}{rates})" in text
        assert f"(default: {default.audio.duration})" in text  # the same in every recipe: said once
    # Plain options show theirs too; every option with a value to show shows one.
    for command in ("predict", "embed", "serve", "export", "synth", "demo", "cache"):
        parser = _subcommand(command)
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in text or "default" in (action.help or ""), action.dest


def test_resume_of_a_finished_run_changes_nothing_unless_reevaluate(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_training import tiny_config

    from urbansound.cli import main
    from urbansound.training.run import train

    run_dir = train(
        tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=1), progress=False
    )

    def snapshot() -> dict[str, tuple[int, bytes]]:
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}

    before = snapshot()
    with caplog.at_level(logging.WARNING):
        assert main(["-q", "train", "--resume", str(run_dir)]) == 0
    assert "has finished" in caplog.text and "--reevaluate" in caplog.text
    assert snapshot() == before  # not a byte, not a timestamp
    assert main(["-q", "train", "--reevaluate", *data_args(tiny_dataset)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["-q", "train", "--resume", str(run_dir), "--reevaluate"]) == 0
    after = snapshot()
    assert after["metrics.json"][0] != before["metrics.json"][0]  # scored and written again
    old, new = (json.loads(after_or_before["metrics.json"][1]) for after_or_before in (before, after))
    assert new["test_accuracy"] == old["test_accuracy"]  # the same kept weights
    # Same weights, metrics and temperature: the model file is written again byte for byte.
    assert after["model.safetensors"][1] == before["model.safetensors"][1]


def test_cache_info_clear_and_first_build_announcement(
    event_clips: list[Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from urbansound.cli import main
    from urbansound.config import AudioConfig, FeatureConfig, default_cache_dir
    from urbansound.features.cache import FeatureCache
    from urbansound.features.cache_info import cache_root
    from urbansound.io_utils import format_bytes

    root = tmp_path / "cache"
    cache = FeatureCache(
        root, AudioConfig(sample_rate=8000, duration=0.5), FeatureConfig(n_fft=256, n_mels=16)
    )
    with caplog.at_level(logging.INFO):
        cache.build(event_clips, progress=False, num_workers=0)
    size = format_bytes(len(event_clips) * cache.n_bands * cache.n_frames * 4)
    assert f"into {cache.directory}: about {size}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cache.build(event_clips, progress=False, num_workers=0)
    assert "writing" not in caplog.text  # said only when something is written
    stray = root / "notes.txt"
    stray.write_text("not the cache's")

    assert main(["cache", "info", "--cache-dir", str(root)]) == 0
    info = capsys.readouterr().out
    assert str(root) in info and cache.directory.name in info
    assert f"{len(event_clips)} clip(s)" in info and "8000 Hz" in info and "16 bands" in info
    assert main(["cache", "clear", "--cache-dir", str(root), "--settings", "0123"]) == 2
    assert capsys.readouterr().err.count(cache.directory.name) == 1  # the error lists what is there, once
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert "removed 1 settings folder(s)" in capsys.readouterr().out
    assert not cache.directory.exists() and stray.read_text() == "not the cache's"  # only what it wrote
    assert main(["cache", "info", "--cache-dir", str(root)]) == 0
    assert "empty" in capsys.readouterr().out
    data = tmp_path / "data" / "audio"
    assert cache_root(data_dir=str(data)) == default_cache_dir(data)  # where train puts it


def test_predict_draws_no_bar_off_a_terminal_and_says_each_error_once(tmp_path: Path) -> None:
    from _tiny_model import tiny_model

    model = tiny_model(tmp_path / "model")
    good, broken = tmp_path / "good.wav", tmp_path / "broken.wav"
    import numpy as np
    import soundfile as sf

    sf.write(good, np.zeros(16_000, np.float32), 16_000)
    broken.write_bytes(b"RIFF not audio at all")
    for extra in ([], ["--output", str(tmp_path / "out.json"), "--format", "json"]):
        # No -q: the bar would be drawn if it were not for stderr being a pipe.
        result = subprocess.run(
            [sys.executable, "-m", "urbansound", "predict", str(model), str(good), str(broken), *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 1
        assert "\r" not in result.stderr and "file/s" not in result.stderr and "predict:" not in result.stderr
        assert (result.stdout + result.stderr).count("cannot decode") == 1, (result.stdout, result.stderr)
        assert "1 of 2 file(s) could not be classified" in result.stderr


def _fake_run(folder: Path, test_fold: int, accuracy: float) -> Path:
    from urbansound.config import RunConfig, SplitConfig
    from urbansound.training.run_folder import RunFolder

    folder.mkdir(parents=True)
    RunFolder(folder).write_config(RunConfig(split=SplitConfig(test_fold=test_fold, val_fold=1)))
    metrics = {"test_accuracy": accuracy, "test_macro_f1": accuracy / 2, "val_accuracy": 0.5}
    (folder / RunFolder.METRICS).write_text(json.dumps(metrics))
    return folder


def test_compare_warns_about_different_test_folds_and_shows_no_spread_of_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from urbansound.training.crossval import compare_runs

    a, b = _fake_run(tmp_path / "a", 3, 0.6), _fake_run(tmp_path / "b", 2, 0.7)
    with caplog.at_level(logging.WARNING):
        text = compare_runs([a, b])
    assert "different folds" in caplog.text and "**Warning:**" in text and "a: 3; b: 2" in text
    assert "±" not in text  # one fold each: no spread to show, and no "± 0.0" pretending there is
    assert "| **accuracy** | 60.0% | 70.0% |" in text
    caplog.clear()
    from urbansound.training.run_folder import RunFolder

    same = compare_runs([a, _fake_run(tmp_path / "c", 3, 0.5)])
    assert "Warning" not in same and "different folds" not in caplog.text
    assert "None: the runs share every setting." in same
    other_data = _fake_run(tmp_path / "d", 3, 0.5)
    config = RunFolder(other_data).read_config()
    config.data_dir = "/elsewhere/audio"
    RunFolder(other_data).write_config(config)
    assert '| data_dir | "" | "/elsewhere/audio" |' in compare_runs([a, other_data])

    from urbansound.training.crossval import render_summary

    row = {"test_accuracy": 0.5, "test_macro_f1": 0.25, "val_accuracy": 0.5, "best_epoch": 1, "epochs_run": 1}
    one_fold = render_summary({"folds": [{**row, "fold": 1, "n_test": 3}], "per_class_f1": {"a": 0.25}})
    assert "**Accuracy 50.0%**, macro-F1 0.250" in one_fold and "±" not in one_fold


def test_split_defaults_come_from_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from urbansound.cli import main
    from urbansound.config import SplitConfig
    from urbansound.data.splits import resolve_folds
    from urbansound.data.synth import synthesize_dataset
    from urbansound.errors import ConfigError

    root = synthesize_dataset(
        tmp_path, recordings_per_class=2, clips_per_recording=1, seed=0, n_folds=5, vary_formats=False
    )
    assert main(["-q", "train", *data_args(root), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "validation fold 4, test fold 5" in out and "error" not in err
    assert resolve_folds(SplitConfig(test_fold=1), [1, 2, 3]).val_fold == 2  # nothing before the first
    assert resolve_folds(SplitConfig(val_fraction=0.2), [1, 2, 3]).val_fold is None
    assert resolve_folds(SplitConfig(test_fold=2, val_fold=3), [1, 2, 3]) == SplitConfig(
        test_fold=2, val_fold=3
    )
    with pytest.raises(ConfigError, match="only fold"):
        resolve_folds(SplitConfig(), [4])


def test_models_prices_the_recipes_model_with_its_widths(capsys: pytest.CaptureFixture[str]) -> None:
    from urbansound.cli import main
    from urbansound.config import RunConfig, apply_recipe
    from urbansound.modelfile import ModelSpec, build_classifier
    from urbansound.models import create_model
    from urbansound.models.complexity import count_macs, count_parameters

    default = apply_recipe(RunConfig(), "default")
    # priced as trained: with the recipe's input channels (its deltas), the deployed model's parameters
    spec = ModelSpec(default.audio, default.features, default.model, [str(k) for k in range(10)])
    deployed = build_classifier(spec)
    channels = deployed.inputs.channels
    model = create_model(
        default.model.name,
        n_classes=10,
        n_bands=default.features.n_mels,
        in_channels=channels,
        **default.model.kwargs,
    )
    parameters = count_parameters(model)
    assert default.model.ensemble * parameters == count_parameters(deployed.backbone)
    frames = 1 + default.audio.n_samples // default.features.hop_length
    macs = count_macs(model, (1, channels, default.features.n_mels, frames))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.split() and line.split()[0] == default.model.name]
    assert f"{parameters:,d}" in row and f"{macs / 1e6:,.0f}M" in row and "*" in row
    assert f"ensemble of {default.model.ensemble}: {default.model.ensemble * parameters:,d} parameters" in out
    assert main(["models", "--recipe", "baseline"]) == 0
    out = capsys.readouterr().out
    baseline = apply_recipe(RunConfig(), "baseline")
    assert f"{baseline.audio.sample_rate} Hz" in out and "(baseline recipe)" in out
    (row,) = [line for line in out.splitlines() if line.split() and line.split()[0] == baseline.model.name]
    assert row.rstrip().endswith("*")
