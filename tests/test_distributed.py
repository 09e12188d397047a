"""Distributed data-parallel training on CPU (gloo): N processes reproduce one process's trajectory.

The end-to-end tests launch ``torchrun --standalone --nproc_per_node 2 -m urbansound train`` on the tiny
synthetic set of ``test_training.py`` and compare with an in-process single-process run.
"""

from __future__ import annotations

import csv
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
import torch.distributed as dist
from safetensors.numpy import load_file
from test_training import tiny_config
from torch import nn

from urbansound.errors import ConfigError
from urbansound.training.distributed import GlobalBatchNorm2d, GlobalBatchSampler, convert_batchnorm
from urbansound.training.loop import FeatureDataset, make_loader
from urbansound.training.run import train

# Relative tolerance on per-epoch losses, 2 processes x 8 clips against 1 process x 16 clips. Measured over
# these 4 epochs: at most 8e-8 with NCHW convolutions (a few float32 ulps: the same global batches and
# synchronised BatchNorm leave only the order of float sums) and 1.3e-5 with the channels-last convolutions
# CPU training now uses (oneDNN picks its blocking by batch size, so 8 and 16 clips round differently), while
# per-rank BatchNorm statistics, the one thing left to differ without synchronisation, give 3e-2 (train) and
# 3e-3 (validation). 1e-4 is 8x the second measurement, 1/30 of the smallest real mismatch.
LOSS_RTOL = 1e-4
EPOCHS = 4
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


# ---- the sampler: same global batches as the single-process loader ----------------------------------


@pytest.mark.parametrize(("n_items", "batch_size", "world_size"), [(20, 16, 2), (21, 16, 2), (37, 8, 4)])
def test_rank_slices_make_up_the_single_process_batches(
    n_items: int, batch_size: int, world_size: int
) -> None:
    dataset = FeatureDataset(np.zeros((n_items, 1, 1), np.float32), [0] * n_items, list(range(n_items)))
    single = list(make_loader(dataset, batch_size, shuffle=True, seed=5, epoch=3).sampler)
    samplers = [
        GlobalBatchSampler(n_items, batch_size, r, world_size, seed=5, epoch=3) for r in range(world_size)
    ]
    per_rank = [list(s) for s in samplers]
    # A last batch smaller than the number of ranks is dropped.
    kept = single if len(single[-1]) >= world_size else single[:-1]
    assert all(len(batches) == len(kept) for batches in per_rank)
    for step, batch in enumerate(kept):
        assert [i for r in range(world_size) for i in per_rank[r][step]] == batch
        assert all(per_rank[r][step] for r in range(world_size))  # no rank is left without clips

    # Weighted per-rank mean losses, averaged over ranks as DDP averages gradients, give the global mean.
    losses = np.random.default_rng(0).normal(size=n_items)
    weights = [s.loss_weights() for s in samplers]
    for step, batch in enumerate(kept):
        ddp_mean = sum(weights[r][step] * losses[per_rank[r][step]].mean() for r in range(world_size))
        assert ddp_mean / world_size == pytest.approx(losses[batch].mean())


def test_global_batch_must_split_evenly_over_ranks() -> None:
    with pytest.raises(ConfigError, match="global batch"):
        GlobalBatchSampler(20, 15, 0, 2)


# ---- GlobalBatchNorm2d: BatchNorm2d's arithmetic, statistics summed over ranks ----------------------


def test_global_batchnorm_matches_batchnorm_in_a_one_process_group() -> None:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    converted = convert_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), torch.device("cpu"))
    converted.load_state_dict(reference.state_dict())
    assert isinstance(converted[1], GlobalBatchNorm2d)
    x = torch.randn(6, 1, 9, 11)
    upstream = torch.randn(6, 4, 7, 9)  # a loss's gradient with respect to the BatchNorm output
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for _ in range(2):  # twice, so running statistics are updated from non-initial values
            out_ref, out = reference(x), converted(x)
            torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
            (out_ref * upstream).sum().backward()
            (out * upstream).sum().backward()
    finally:
        dist.destroy_process_group()
    for (name, a), b in zip(reference.named_parameters(), converted.parameters(), strict=True):
        # Gradients are O(10); the conv bias's is 0 up to rounding (BatchNorm removes the mean): atol 1e-4.
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-4, msg=name)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


# ---- end to end: torchrun with 2 processes ---------------------------------------------------------


def _train_args(root: Path, runs: Path, cache: Path) -> list[str]:
    config = tiny_config(root, runs, cache, epochs=EPOCHS)
    # The seed recipe: no random augmentation, whose per-process draws (SpecAugment masks, mixup weights)
    # could not match a single process's; the equivalence checked here is that of the optimisation.
    return [
        "-q", "train", "--recipe", "seed", "--annotations", config.annotations, "--data", config.data_dir,
        "--sample-rate", "16000", "--duration", "1", "--n-fft", "512", "--hop-length", "256",
        "--n-mels", "32", "--test-fold", "3", "--val-fold", "2", "--epochs", str(EPOCHS),
        "--batch-size", "16", "--seed", str(config.training.seed), "--device", "cpu",
        "--runs-dir", str(runs), "--cache-dir", str(cache),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*TORCHRUN, "-m", "urbansound", *args], env=_env(), capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def two_process_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ddp")
    result = _torchrun(*_train_args(tiny_dataset, base / "runs", base / "cache"))
    assert result.stdout.count("run folder:") == 1  # only rank 0 reports
    (run_dir,) = (base / "runs").iterdir()
    return run_dir


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_trajectory(
    tiny_dataset: Path, two_process_run: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=EPOCHS, batch_size=16)
    single = train(config, progress=False)
    one, two = _history(single), _history(two_process_run)
    assert len(one) == len(two) == EPOCHS
    for a, b in zip(one, two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=LOSS_RTOL), a["epoch"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=LOSS_RTOL), a["epoch"]
        assert b["train_accuracy"] == a["train_accuracy"] and b["val_accuracy"] == a["val_accuracy"]
    # One run folder, written by rank 0 alone, with one model file.
    runs = two_process_run.parent
    assert [p.name for p in runs.iterdir()] == [two_process_run.name]
    assert len(list(runs.rglob("*.safetensors"))) == 1
    assert not list(runs.rglob("*.tmp"))
    metrics = json.loads((two_process_run / "metrics.json").read_text())
    assert metrics["split"]["sizes"] == {"train": 20, "val": 20, "test": 20}


@pytest.mark.slow
def test_killed_distributed_run_resumes_to_the_same_weights(
    tiny_dataset: Path, two_process_run: Path, tmp_path: Path
) -> None:
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    process = subprocess.Popen(
        [*TORCHRUN, "-m", "urbansound", *_train_args(tiny_dataset, runs, cache)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches torchrun and both workers
    )
    checkpoint = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        found = list(runs.glob("*/checkpoint.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.02)
    assert checkpoint is not None, "the distributed run never wrote a checkpoint"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    run_dir = checkpoint.parent
    assert not (run_dir / "model.safetensors").exists(), "the run finished before it could be killed"
    assert torch.load(checkpoint, weights_only=True)["epoch"] < EPOCHS

    _torchrun("-q", "train", "--resume", str(run_dir))
    assert [p.name for p in runs.iterdir()] == [run_dir.name]
    straight, resumed = (
        load_file(str(two_process_run / "model.safetensors")),
        load_file(str(run_dir / "model.safetensors")),
    )
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    losses = [r["train_loss"] for r in _history(run_dir)]
    assert losses == [r["train_loss"] for r in _history(two_process_run)]


@pytest.mark.slow
def test_two_processes_with_data_on_device_train_to_the_loaders_weights(
    tiny_dataset: Path, two_process_run: Path, tmp_path: Path
) -> None:
    """Each rank gathers its share of every global batch from device-resident features (the GPU path, here
    on the CPU): the same batches as the loader path, so the same weights."""
    _torchrun(*_train_args(tiny_dataset, tmp_path / "runs", tmp_path / "cache"), "--data-on-device", "yes")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["training"]["data_on_device"] == "yes"
    loader, resident = (
        load_file(str(two_process_run / "model.safetensors")),
        load_file(str(run_dir / "model.safetensors")),
    )
    for key in loader:
        np.testing.assert_array_equal(resident[key], loader[key], err_msg=key)


@pytest.mark.slow
def test_two_processes_with_fresh_variants_follow_the_one_process_trajectory(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """Each rank computes fresh audio variants for the clips of its own batches only; together they are the
    clips one process computes (a clip left out would train on zeros), so both follow the same losses."""
    fresh = ("--aug-variants", "2", "--fresh-variants")
    _torchrun(*_train_args(tiny_dataset, tmp_path / "two", tmp_path / "cache"), *fresh)
    single = subprocess.run(
        [sys.executable, "-m", "urbansound", *_train_args(tiny_dataset, tmp_path / "one", tmp_path / "cache")]
        + list(fresh),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert single.returncode == 0, single.stdout + single.stderr
    (one,) = (tmp_path / "one").iterdir()
    (two,) = (tmp_path / "two").iterdir()
    assert json.loads((two / "config.json").read_text())["augment"]["fresh_variants"] is True
    for a, b in zip(_history(one), _history(two), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=LOSS_RTOL), a["epoch"]
        assert b["train_accuracy"] == a["train_accuracy"] and b["val_accuracy"] == a["val_accuracy"]
