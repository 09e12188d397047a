"""Training runs end to end on a tiny synthetic dataset: run folder contents, resume, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from urbansound.config import AudioConfig, FeatureConfig, RunConfig, SplitConfig, TrainingConfig
from urbansound.errors import ConfigError, DataError
from urbansound.training import fit as fit_module
from urbansound.training.run import train
from urbansound.training.run_folder import RunFolder


def tiny_config(root: Path, runs: Path, cache: Path, epochs: int = 3, **training: object) -> RunConfig:
    """Small enough that a run takes a second or two: 16 kHz, 1 s clips, 32 bands."""
    return RunConfig(
        annotations=str(root / "metadata" / "UrbanSound8K.csv"),
        data_dir=str(root / "audio"),
        audio=AudioConfig(sample_rate=16_000, duration=1.0),
        features=FeatureConfig(n_fft=512, hop_length=256, n_mels=32),
        split=SplitConfig(test_fold=3, val_fold=2),
        # CPU unless asked otherwise, also where a GPU is present: tests check bit-exact resume, which CUDA
        # kernels do not promise.
        training=TrainingConfig(
            **{"epochs": epochs, "batch_size": 8, "seed": 3, "device": "cpu", **training}
        ),
        runs_dir=str(runs),
        cache_dir=str(cache),
        name="tiny",
    )


def train_interrupted(
    config: RunConfig, monkeypatch: pytest.MonkeyPatch, epoch: int = 1, checkpoint: str | None = None
) -> Path:
    """Train ``config`` until the checkpoint of ``epoch`` (of the file named ``checkpoint``; default any) is
    written, then stop as Ctrl-C would; returns the interrupted run folder (the only one in its runs_dir)."""
    real_save = fit_module.save_checkpoint

    def save_then_interrupt(path: Path, state: dict) -> None:
        real_save(path, state)
        if state["epoch"] == epoch and checkpoint in (None, path.name):
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(fit_module, "save_checkpoint", real_save)
    (interrupted,) = Path(config.runs_dir).iterdir()
    return interrupted


def test_run_folder_has_every_artefact(tiny_dataset: Path, tmp_path: Path) -> None:
    run_dir = train(tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache"), progress=False)
    for name in (
        "config.json",
        "history.csv",
        "metrics.json",
        "model.safetensors",
        RunFolder.HISTORY_PLOT,
        RunFolder.TEST_PREDICTIONS,
        "confusion_matrix.png",
        "report.md",
        "split.csv",
        "checkpoint.pt",
    ):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert 1 <= metrics["best_epoch"] <= 3
    assert metrics["split"]["sizes"] == {"train": 20, "val": 20, "test": 20}
    assert set(metrics["per_class"]) == set(metrics["class_names"])
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
    config = json.loads((run_dir / "config.json").read_text())
    assert config["features"]["n_mels"] == 32 and config["model"]["n_classes"] == 10
    # No recording is on two sides of the split.
    sides: dict[str, set[str]] = {}
    for line in (run_dir / "split.csv").read_text().splitlines()[1:]:
        _, _, fs_id, _, side = line.split(",")
        sides.setdefault(fs_id, set()).add(side)
    assert all(len(s) == 1 for s in sides.values())


def test_best_epoch_is_selected_on_validation_not_test(tiny_dataset: Path, tmp_path: Path) -> None:
    run_dir = train(
        tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=4), progress=False
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [line.split(",") for line in (run_dir / "history.csv").read_text().splitlines()[1:]]
    val_acc = [float(r[4]) for r in rows]
    assert metrics["best_epoch"] == 1 + int(np.argmax(val_acc))  # first epoch reaching the best validation
    assert metrics["val_accuracy"] == pytest.approx(max(val_acc))


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "model.safetensors"))


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_interrupted_run_resumes_to_identical_weights(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema_decay: float
) -> None:
    cache = tmp_path / "cache"
    straight = train(
        tiny_config(tiny_dataset, tmp_path / "a", cache, epochs=4, ema_decay=ema_decay), progress=False
    )

    # Ctrl-C right after epoch 2's checkpoint
    config = tiny_config(tiny_dataset, tmp_path / "b", cache, epochs=4, ema_decay=ema_decay)
    interrupted = train_interrupted(config, monkeypatch, epoch=2)
    assert not (interrupted / "model.safetensors").exists()
    resumed = train(RunConfig(), resume_dir=interrupted, progress=False)
    assert resumed == interrupted

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((resumed / "metrics.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "val_accuracy", "best_epoch"):
        assert ma[key] == mb[key], key
    assert (straight / "history.csv").read_text().count("\n") == (resumed / "history.csv").read_text().count(
        "\n"
    )


def test_killed_process_resumes_from_last_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    """A real SIGKILL mid-run: the resumed run finishes with the same weights as an uninterrupted one."""
    cache = tmp_path / "cache"
    straight = train(tiny_config(tiny_dataset, tmp_path / "a", cache, epochs=6), progress=False)
    config = tiny_config(tiny_dataset, tmp_path / "b", cache, epochs=6)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    code = (
        "import json; from urbansound.config import RunConfig; from urbansound.training.run import train;"
        f"train(RunConfig.from_dict(json.load(open({str(config_path)!r}))), progress=False)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    checkpoint = None
    while time.monotonic() < deadline and process.poll() is None:
        found = list((tmp_path / "b").glob("*/checkpoint.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.05)
    assert checkpoint is not None, "the run never wrote a checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = checkpoint.parent
    resumed = train(RunConfig(), resume_dir=run_dir, progress=False)
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_same_seed_same_result_different_seed_differs(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    one = train(tiny_config(tiny_dataset, tmp_path / "1", cache, epochs=2), progress=False)
    two = train(tiny_config(tiny_dataset, tmp_path / "2", cache, epochs=2), progress=False)
    config = tiny_config(tiny_dataset, tmp_path / "3", cache, epochs=2)
    config.training.seed = 99
    three = train(config, progress=False)
    key = "backbone.classifier.weight"
    np.testing.assert_array_equal(_weights(one)[key], _weights(two)[key])
    assert not np.array_equal(_weights(one)[key], _weights(three)[key])


def test_undecodable_clip_stops_run_naming_it_and_skip_bad_skips(tiny_dataset: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_dataset, root)
    victim = sorted((root / "audio" / "fold1").glob("*.wav"))[0]
    victim.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    config = tiny_config(root, tmp_path / "runs", tmp_path / "cache", epochs=1)
    with pytest.raises(DataError, match=victim.name):
        train(config, progress=False)
    config.skip_bad = True
    run_dir = train(config, progress=False)
    skipped = (run_dir / "skipped_clips.csv").read_text()
    assert victim.name in skipped
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_skipped"] == 1
    assert sum(metrics["split"]["sizes"].values()) == 59


def test_weight_average_is_what_gets_validated_and_saved(tiny_dataset: Path, tmp_path: Path) -> None:
    import torch

    run_dir = train(
        tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=1, ema_decay=0.9),
        progress=False,
    )
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    saved = _weights(run_dir)
    key = next(k for k in saved if k.endswith("classifier.weight") or k.endswith("fc.weight"))
    averaged = state["ema"][f"module.{key}"].numpy()
    raw = state["model"][key].numpy()
    np.testing.assert_array_equal(saved[key], averaged)  # one epoch: the best epoch is the last
    assert not np.allclose(averaged, raw)  # the average lags the raw weights
    assert int(state["ema"]["n_averaged"]) == 3  # 20 training clips, batch 8: one update per step


@pytest.mark.parametrize("criterion", ["val_loss", "last"])
def test_epoch_selection_criterion_picks_its_epoch(
    tiny_dataset: Path, tmp_path: Path, criterion: str
) -> None:
    run_dir = train(
        tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=4, select_epoch=criterion),
        progress=False,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [line.split(",") for line in (run_dir / "history.csv").read_text().splitlines()[1:]]
    val_loss = [float(r[3]) for r in rows]
    expected = 4 if criterion == "last" else 1 + int(np.argmin(val_loss))
    assert metrics["best_epoch"] == expected
    assert metrics["val_accuracy"] == pytest.approx(float(rows[expected - 1][4]))
    rule = {"last": "the last epoch", "val_loss": "lowest validation loss"}[criterion]
    assert f"Epoch kept ({rule}):** {expected}," in (run_dir / "report.md").read_text()


def test_unknown_selection_criterion_is_refused() -> None:
    with pytest.raises(ConfigError, match="select_epoch"):
        TrainingConfig(select_epoch="test_accuracy").validate()


def test_resident_batches_are_the_loaders_batches_with_each_epochs_variant() -> None:
    from urbansound.training.loop import FeatureDataset, ResidentFeatures, epoch_batches, make_loader

    rng = np.random.default_rng(0)
    features = rng.standard_normal((9, 4, 5)).astype(np.float16)  # the cache's float16 is served as float32
    variants = rng.standard_normal((6, 3, 4, 5)).astype(np.float16)
    data = FeatureDataset(features, list(range(9)), [0, 2, 3, 5, 7, 8], variants=variants, seed=2)
    resident = ResidentFeatures(data, torch.device("cpu"))
    for epoch in (1, 2):
        data.set_epoch(epoch)
        expected = list(make_loader(data, 4, shuffle=True, seed=2, epoch=epoch))
        got = list(resident.batches(epoch_batches(data, 4, shuffle=True, seed=2, epoch=epoch)))
        assert len(got) == len(expected) == 2
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert x.dtype == torch.float32
            torch.testing.assert_close(x, ex, rtol=0, atol=0)
            torch.testing.assert_close(y, ey, rtol=0, atol=0)
    assert (data.choice > 0).any() and (data.choice == 0).any()  # both originals and variants were served


def test_peak_learning_rate_grows_with_the_square_root_of_a_larger_batch(tiny_dataset: Path) -> None:
    from urbansound.cli import build_parser, run_config_from_args

    base = ["train", "--annotations", str(tiny_dataset / "metadata" / "UrbanSound8K.csv")]
    base += ["--data", str(tiny_dataset / "audio")]

    def lr_for(*flags: str) -> float:
        return run_config_from_args(build_parser().parse_args([*base, *flags])).training.max_lr

    recipe_lr = lr_for()  # the default recipe: batch 32, peak 2e-3
    assert lr_for("--batch-size", "128") == pytest.approx(recipe_lr * 2)
    assert lr_for("--batch-size", "1024") == pytest.approx(recipe_lr * 32**0.5)
    assert lr_for("--batch-size", "16") == recipe_lr  # smaller batches keep the recipe's rate
    assert lr_for("--batch-size", "128", "--lr", "1e-3") == 1e-3  # an explicit rate is never scaled
    assert lr_for("--recipe", "seed", "--batch-size", "64") == pytest.approx(1e-3 * 2)


def test_out_of_memory_names_the_batch_that_failed_and_one_that_fits_and_resume_continues(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device that runs out of memory above 4 clips per step from epoch 2 on (simulated: the error type
    is torch's own, raised by the training path's forward)."""
    from urbansound.errors import ResourceError
    from urbansound.training import hardware
    from urbansound.training.checkpoint import load_checkpoint

    real_forward = hardware.TrainingModel.classify_features
    real_save = fit_module.save_checkpoint
    saved: list[int] = []

    def save_and_count(path: Path, state: dict) -> None:
        real_save(path, state)
        saved.append(state["epoch"])

    def small_memory(self: hardware.TrainingModel, features: torch.Tensor) -> torch.Tensor:
        if saved and self.training and features.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, features)

    monkeypatch.setattr(fit_module, "save_checkpoint", save_and_count)
    monkeypatch.setattr(hardware.TrainingModel, "classify_features", small_memory)
    with pytest.raises(
        ResourceError, match=r"epoch 2 at batch size 8: a batch of 4 fits.*--batch-size 4"
    ) as caught:
        train(tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=3), progress=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"--resume {run_dir}" in str(caught.value)
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1  # the last good epoch, intact
    monkeypatch.undo()  # memory freed: the run continues where it stopped
    resumed = train(RunConfig(), resume_dir=run_dir, progress=False)
    assert load_checkpoint(resumed / "checkpoint.pt")["epoch"] == 3
    assert (resumed / "model.safetensors").is_file()
