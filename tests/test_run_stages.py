"""Each stage of a training run called alone (prepare data -> train members -> assemble -> score -> write
results), the RunFolder's files and the typed checkpoint state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import tiny_config, train_interrupted

from urbansound.config import RunConfig
from urbansound.models.classifier import AudioClassifier
from urbansound.training.checkpoint import TrainState, save_checkpoint
from urbansound.training.run import (
    Assembled,
    Member,
    PreparedData,
    assemble,
    prepare_data,
    resume,
    score,
    start_run_folder,
    train,
    train_members,
    write_results,
)
from urbansound.training.run_folder import RunFolder, RunMetrics


@pytest.fixture(scope="module")
def staged(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, PreparedData]:
    base = tmp_path_factory.mktemp("stages")
    config = tiny_config(tiny_dataset, base / "runs", base / "cache", epochs=1)
    data = prepare_data(config, progress=False)
    config.model.n_classes = len(data.index.class_names)
    return config, data


@pytest.fixture(scope="module")
def trained(
    staged: tuple[RunConfig, PreparedData], tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunFolder, list[Member]]:
    config, data = staged
    folder = start_run_folder(config, data, RunFolder(tmp_path_factory.mktemp("trained")), resuming=False)
    return folder, train_members(config, data, folder, progress=False)


def test_prepare_data_splits_and_caches_every_clip(staged: tuple[RunConfig, PreparedData]) -> None:
    _, data = staged
    assert data.split.sizes == {"train": 20, "val": 20, "test": 20}
    assert data.features.shape[0] == len(data.index.records) == len(data.labels)
    assert data.variants is None  # tiny_config augments nothing offline


def test_start_run_folder_writes_config_and_split(
    staged: tuple[RunConfig, PreparedData], tmp_path: Path
) -> None:
    config, data = staged
    folder = start_run_folder(config, data, None, resuming=False)
    assert folder.path.parent == Path(config.runs_dir)
    assert folder.read_config().to_dict() == config.to_dict()
    assert len(folder.file(RunFolder.SPLIT).read_text().splitlines()) == 1 + 60
    resumed = start_run_folder(config, data, RunFolder(tmp_path), resuming=True)
    assert resumed.path == tmp_path and not resumed.config_path.exists()  # resuming keeps the saved config


def test_train_members_keeps_each_members_selected_weights(trained: tuple[RunFolder, list[Member]]) -> None:
    folder, members = trained
    (member,) = members
    assert isinstance(member.model, AudioClassifier) and not member.model.training
    assert member.result.best_epoch == 1 and len(member.result.history) == 1
    state = folder.read_checkpoint()
    assert state.epoch == 1 and state.best_epoch == 1
    for key, value in member.model.state_dict().items():
        torch.testing.assert_close(value, state.best_model[key])
    assert folder.history_path().is_file()


def test_assemble_a_single_member_is_that_member_and_several_make_an_ensemble(
    staged: tuple[RunConfig, PreparedData], trained: tuple[RunFolder, list[Member]]
) -> None:
    config, data = staged
    _, members = trained
    single = assemble(config, data, members)
    assert single.model is members[0].model and single.spec.model.ensemble == 1
    config2 = RunConfig.from_dict(config.to_dict())
    config2.model.ensemble = 2
    pair = assemble(config2, data, [members[0], members[0]])
    features = torch.from_numpy(np.array(data.features[:4], dtype=np.float32))
    with torch.no_grad():  # two copies of one member average to that member's probabilities
        torch.testing.assert_close(
            pair.model.classify_features(features).softmax(-1),
            members[0].model.classify_features(features).softmax(-1),
        )


def test_score_returns_typed_metrics_in_the_files_shape(
    staged: tuple[RunConfig, PreparedData], trained: tuple[RunFolder, list[Member]]
) -> None:
    config, data = staged
    _, members = trained
    metrics = score(members[0].model, members, data, config)
    assert isinstance(metrics, RunMetrics) and metrics.ensemble is None
    assert metrics.test["n_clips"] == 20 and 0.0 <= metrics.test_accuracy <= 1.0
    assert list(metrics.to_dict()) == [
        "test_accuracy", "test_macro_f1", "val_accuracy", "val_macro_f1", "best_epoch", "epochs_run",
        "stopped_early", "split", "n_skipped", "ensemble", "per_class", "test", "val", "class_names",
        "wall_seconds", "calibration",
    ]  # fmt: skip
    assert RunMetrics.from_dict(json.loads(json.dumps(metrics.to_dict()))) == metrics


def test_write_results_fills_the_run_folder(
    staged: tuple[RunConfig, PreparedData], trained: tuple[RunFolder, list[Member]]
) -> None:
    config, data = staged
    folder, members = trained
    assembled: Assembled = assemble(config, data, members)
    metrics = score(assembled.model, members, data, config)
    write_results(folder, config, assembled, members, metrics, started=0.0)
    for name in (RunFolder.MODEL, RunFolder.METRICS, RunFolder.REPORT, RunFolder.HISTORY_PLOT):
        assert folder.file(name).is_file(), name
    assert folder.read_metrics().test_accuracy == metrics.test_accuracy
    assert folder.read_metrics().wall_seconds is not None


def test_resume_entry_point_uses_the_saved_configuration(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=2)
    run_dir = train_interrupted(config, monkeypatch)
    assert resume(run_dir, progress=False) == run_dir
    assert RunFolder(run_dir).read_metrics().epochs_run == 2


def test_old_checkpoint_dicts_load_as_train_state(tmp_path: Path) -> None:
    """Checkpoints written before best_score (and with an empty scaler) still resume."""
    old = {
        "epoch": 3,
        "model": {"w": torch.ones(2)},
        "optimizer": {},
        "scheduler": {},
        "ema": {},
        "rng": torch.get_rng_state(),
        "history": [{"epoch": 1.0}],
        "best_epoch": 2,
        "best_val_accuracy": 0.5,
        "best_model": {"w": torch.zeros(2)},
    }
    save_checkpoint(tmp_path / "checkpoint.pt", old)
    state = RunFolder(tmp_path).read_checkpoint()
    assert isinstance(state, TrainState)
    assert (state.epoch, state.best_epoch, state.best_score, state.scaler) == (3, 2, 0.5, {})
    save_checkpoint(tmp_path / "again.pt", state)
    assert torch.load(tmp_path / "again.pt", weights_only=True).keys() == state.to_dict().keys()


def test_crossval_settings_have_their_own_file_and_old_folders_still_read(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    assert folder.read_crossval_settings() is None
    (tmp_path / "config.json").write_text(json.dumps({"config": RunConfig().to_dict(), "folds": [1, 2]}))
    assert folder.read_crossval_settings() == (RunConfig().to_dict(), [1, 2])  # an old folder
    folder.write_crossval_settings(RunConfig(), [3])
    assert (
        tmp_path / RunFolder.CROSSVAL_SETTINGS
    ).is_file() and RunFolder.CROSSVAL_SETTINGS != RunFolder.CONFIG
    assert folder.read_crossval_settings() == (RunConfig().to_dict(), [3])
    assert folder.checkpoint_path(2).name == "checkpoint-member2.pt"
    assert folder.history_path(3).name == "history-member3.csv"


def test_run_folder_and_log_exist_before_the_data_are_prepared(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slowest stages (feature cache, variants) run with the folder, config.json and train.log in place,
    and their progress lines land in train.log."""
    import urbansound.training.run as run_module

    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=1)
    seen: dict[str, bool] = {}
    real_prepare = run_module.prepare_data

    def watching_prepare(*args: object, **kwargs: object) -> PreparedData:
        (folder,) = (tmp_path / "runs").iterdir()
        seen["config"] = (folder / RunFolder.CONFIG).is_file()
        seen["log"] = (folder / RunFolder.LOG).is_file()
        run_module.logger.info("marker line from the data stage")
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(run_module, "prepare_data", watching_prepare)
    run_dir = train(config, progress=False)
    assert seen == {"config": True, "log": True}
    log = (run_dir / RunFolder.LOG).read_text()
    assert "marker line from the data stage" in log
    assert "split:" in log and "test accuracy" in log.lower()
