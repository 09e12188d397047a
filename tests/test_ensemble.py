"""Seed ensembles: members are exactly the single runs of their seeds, the model file averages their
probabilities, and an interrupted ensemble resumes to the same weights (ONNX parity: test_export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_training import tiny_config, train_interrupted

from urbansound.config import RunConfig
from urbansound.errors import ConfigError
from urbansound.modelfile import load_model_file
from urbansound.models import create_model
from urbansound.models.ensemble import SeedEnsemble
from urbansound.training.loop import FeatureDataset, evaluate, make_loader
from urbansound.training.run import prepare_data, train


def test_ensemble_output_is_the_log_of_the_mean_member_probability() -> None:
    torch.manual_seed(0)
    members = [create_model("cnn", n_classes=5, n_bands=16) for _ in range(3)]
    ensemble = SeedEnsemble(members).eval()
    x = torch.randn(4, 1, 16, 20)
    with torch.no_grad():
        expected = torch.stack([m.eval()(x).softmax(-1) for m in members]).mean(0)
        got = ensemble(x)
    torch.testing.assert_close(got.softmax(-1), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(4), atol=1e-5, rtol=0)


def test_a_bad_member_count_is_refused() -> None:
    config = RunConfig()
    config.model.ensemble = 0
    with pytest.raises(ConfigError, match="at least 1 member"):
        config.validate()


def _probabilities(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Test-set labels and class probabilities of a run's model file, on its own split."""
    from urbansound.training.run import load_run_config

    config = load_run_config(run_dir)
    model, _ = load_model_file(run_dir / "model.safetensors")
    data = prepare_data(config, progress=False)
    result = evaluate(
        model,
        make_loader(FeatureDataset(data.features, data.labels, data.split.test), 64, shuffle=False),
        torch.device("cpu"),
    )
    return result.labels, result.probabilities


def test_ensemble_members_are_the_single_runs_of_their_seeds(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    singles = []
    for seed in (3, 4):
        config = tiny_config(tiny_dataset, tmp_path / f"single{seed}", cache, epochs=2)
        config.training.seed = seed
        singles.append(config)
    # A split by folds does not depend on the seed, so both singles train on the ensemble's split.
    single_dirs = [train(c, progress=False) for c in singles]
    config = tiny_config(tiny_dataset, tmp_path / "ensemble", cache, epochs=2)
    config.model.ensemble = 2
    ensemble_dir = train(config, progress=False)

    weights = load_file(str(ensemble_dir / "model.safetensors"))
    for member, single_dir in enumerate(single_dirs):
        single = load_file(str(single_dir / "model.safetensors"))
        for key, value in single.items():
            if key.startswith("backbone."):
                name = key.replace("backbone.", f"backbone.members.{member}.", 1)
                np.testing.assert_array_equal(weights[name], value, err_msg=name)
    assert (ensemble_dir / "checkpoint-member2.pt").is_file()
    assert (ensemble_dir / "history-member2.csv").is_file()

    labels, probabilities = _probabilities(ensemble_dir)
    member_probabilities = [_probabilities(d)[1] for d in single_dirs]
    np.testing.assert_allclose(probabilities, np.mean(member_probabilities, axis=0), atol=1e-5, rtol=0)

    metrics = json.loads((ensemble_dir / "metrics.json").read_text())
    assert metrics["ensemble"]["seeds"] == [3, 4]
    singles_accuracy = [json.loads((d / "metrics.json").read_text())["test_accuracy"] for d in single_dirs]
    assert metrics["ensemble"]["member_test_accuracy"] == pytest.approx(singles_accuracy)
    assert metrics["test_accuracy"] == pytest.approx(float((probabilities.argmax(1) == labels).mean()))
    assert "Seed ensemble:** 2 members" in (ensemble_dir / "report.md").read_text()


def test_interrupted_ensemble_resumes_to_identical_weights(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"

    def config_in(runs: Path) -> RunConfig:
        config = tiny_config(tiny_dataset, runs, cache, epochs=3)
        config.model.ensemble = 2
        return config

    straight = train(config_in(tmp_path / "a"), progress=False)
    second = "checkpoint-member2.pt"  # Ctrl-C during the second member
    interrupted = train_interrupted(config_in(tmp_path / "b"), monkeypatch, checkpoint=second)
    assert not (interrupted / "model.safetensors").exists()
    resumed = train(RunConfig(), resume_dir=interrupted, progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and any(".members.1." in key for key in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
