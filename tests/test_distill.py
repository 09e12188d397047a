"""Distillation: the loss is Hinton et al.'s, the student learns the teacher's probabilities of its own
training clips (never a test or validation clip), and the student is an ordinary model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import tiny_config

from urbansound.config import DistillConfig
from urbansound.errors import ConfigError, DataError
from urbansound.inference import Predictor
from urbansound.modelfile import read_model_spec
from urbansound.training import distill as distill_module
from urbansound.training.distill import DistillationLoss, SoftTargetDataset, distill
from urbansound.training.run import prepare_data, train


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_loss_is_the_weighted_sum_of_tempered_kl_and_cross_entropy() -> None:
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]])
    teacher = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    labels = np.array([0, 2])
    t, weight = 2.0, 0.7
    # By hand: KL(teacher || softmax(logits / T)) per clip, mean over clips, times T^2; CE on the labels.
    student_t = _log_softmax(logits / t)
    kl = float(np.mean(np.sum(teacher * (np.log(teacher) - student_t), axis=1)))
    ce = float(np.mean(-_log_softmax(logits)[np.arange(2), labels]))
    expected = weight * t * t * kl + (1 - weight) * ce

    targets = torch.from_numpy(np.concatenate([labels[:, None], teacher], axis=1)).float()
    loss = DistillationLoss(t, weight)(torch.from_numpy(logits).float(), targets)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # Integer targets (validation) are plain cross-entropy.
    plain = DistillationLoss(t, weight)(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    assert float(plain) == pytest.approx(ce, rel=1e-5)


def test_soft_targets_follow_the_version_drawn_each_epoch() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 4, 5)).astype(np.float32)
    variants = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)  # 3 training clips, 2 variants each
    soft = rng.dirichlet(np.ones(4), size=(3, 3)).astype(np.float32)  # (clips, 1 + variants, classes)
    dataset = SoftTargetDataset(
        features, [0, 1, 2, 3, 0, 1], [1, 3, 5], soft, DistillationLoss(2.0, 0.5), variants=variants, seed=4
    )
    dataset.set_epoch(2)
    x, targets = dataset[[0, 1, 2]]
    assert targets.shape == (3, 5)
    np.testing.assert_array_equal(targets[:, 0].numpy(), [1, 3, 1])
    for position in range(3):
        choice = dataset.choice[position]
        np.testing.assert_allclose(targets[position, 1:].numpy(), soft[position, choice])
        expected = features[[1, 3, 5][position]] if choice == 0 else variants[position, choice - 1]
        np.testing.assert_array_equal(x[position].numpy(), expected)


def test_bad_settings_and_a_missing_teacher_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0).validate()
    with pytest.raises(ConfigError, match="weight"):
        DistillConfig(weight=1.5).validate()
    with pytest.raises(DataError, match="no model file"):
        distill(tmp_path, "cnn", DistillConfig(), progress=False)


def test_student_learns_the_teachers_training_clips_only_and_loads_as_a_model(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=1)
    config.model.ensemble = 2
    config.augment.variants = 1
    teacher_dir = train(config, progress=False)

    seen: list[torch.Tensor] = []  # every input the teacher classifies
    real_load = distill_module.load_model_file

    def spying_load(path: Path, device: torch.device) -> tuple:
        teacher, spec = real_load(path, device)
        classify = teacher.classify_features

        def recording(features: torch.Tensor) -> torch.Tensor:
            seen.append(features.clone())
            return classify(features)

        teacher.classify_features = recording  # type: ignore[method-assign]
        return teacher, spec

    fitted: list[SoftTargetDataset] = []
    real_fit = distill_module.fit

    def spying_fit(model, train_set, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        fitted.append(train_set)
        return real_fit(model, train_set, *args, **kwargs)

    monkeypatch.setattr(distill_module, "load_model_file", spying_load)
    monkeypatch.setattr(distill_module, "fit", spying_fit)
    student_dir = distill(teacher_dir, "cnn", DistillConfig(temperature=3.0, weight=0.8), progress=False)

    data = prepare_data(config, progress=False)
    inputs = torch.cat(seen)  # (clips x versions, n_bands, frames)
    assert inputs.shape[0] == len(data.split.train) * 2  # each training clip and its one variant
    for row in [*data.split.test, *data.split.val]:
        clip = torch.from_numpy(np.array(data.features[row], dtype=np.float32))
        assert not any(torch.equal(clip, x) for x in inputs), f"held-out clip {row} reached the teacher"
    originals = {tuple(np.asarray(data.features[row]).ravel()[:8]) for row in data.split.train}
    assert sum(tuple(x.numpy().ravel()[:8]) in originals for x in inputs) == len(data.split.train)

    # The student trained on the teacher's probabilities at T, through the distillation loss.
    (train_set,) = fitted
    assert isinstance(train_set, SoftTargetDataset)
    assert isinstance(train_set.criterion, DistillationLoss) and train_set.criterion.temperature == 3.0
    np.testing.assert_array_equal(train_set.indices, data.split.train)
    np.testing.assert_allclose(train_set.soft.sum(-1), 1.0, atol=1e-5)
    assert train_set.soft.std(axis=-1).max() > 0  # soft labels, not uniform

    spec, _ = read_model_spec(student_dir / "model.safetensors")
    assert (spec.model.name, spec.model.ensemble) == ("cnn", 1)
    settings = json.loads((student_dir / "distillation.json").read_text())
    assert settings["temperature"] == 3.0 and settings["weight"] == 0.8
    log = (student_dir / "train.log").read_text()  # progress on disk, as in every training run folder
    assert "distilling" in log and "epoch 1/" in log and "test accuracy" in log
    predictor = Predictor.from_file(student_dir / "model.safetensors")
    waveform = np.random.default_rng(0).normal(0, 0.1, config.audio.n_samples).astype(np.float32)
    prediction = predictor.predict_waveform(waveform)
    assert prediction.probabilities.shape[-1] == len(spec.class_names)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
