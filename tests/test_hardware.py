"""Device, precision and compile options, and the memory-mapped feature cache, on CPU.

The CUDA paths (nccl, bf16/fp16 autocast on GPU, channels-last, SyncBatchNorm) need a GPU and are not run
here; what can be checked on CPU is that the options reach the training loop and that bf16 autocast trains.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import tiny_config

from urbansound.cli import build_parser, run_config_from_args
from urbansound.config import AudioConfig, FeatureConfig
from urbansound.errors import ConfigError
from urbansound.features.cache import FeatureCache
from urbansound.training import fit as fit_module
from urbansound.training import hardware
from urbansound.training.loop import FeatureDataset
from urbansound.training.run import resolve_device, train


def test_precision_resolution() -> None:
    cpu = torch.device("cpu")
    assert hardware.resolve_precision("auto", cpu) is None  # float32 off CUDA
    assert hardware.resolve_precision("fp32", cpu) is None
    assert hardware.resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="CUDA"):
        hardware.resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="precision"):
        hardware.resolve_precision("fp8", cpu)
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        assert hardware.resolve_precision("auto", torch.device("cuda")) is expected


def test_auto_device_is_cuda_then_mps_then_cpu() -> None:
    device = resolve_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device.type == "cpu"
    assert resolve_device("cpu").type == "cpu"


def test_cli_options_reach_the_configuration(tiny_dataset: Path) -> None:
    args = build_parser().parse_args(
        ["train", "--annotations", "a.csv", "--data", "audio", "--device", "cpu", "--precision", "bf16",
         "--compile", "--cache-dtype", "float16"]
    )  # fmt: skip
    config = run_config_from_args(args)
    assert (config.training.device, config.training.precision, config.training.compile) == (
        "cpu",
        "bf16",
        True,
    )
    assert config.cache_dtype == "float16"
    defaults = run_config_from_args(build_parser().parse_args(["train", "--annotations", "a", "--data", "b"]))
    assert (defaults.training.device, defaults.training.precision, defaults.training.compile) == (
        "auto",
        "auto",
        False,
    )


def test_compile_flag_wraps_the_model_with_torch_compile(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiling on CPU takes minutes, so torch.compile is replaced by a recorder that returns the module."""
    compiled: list[torch.nn.Module] = []

    def fake_compile(module: torch.nn.Module) -> torch.nn.Module:
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=1, compile=True)
    run_dir = train(config, progress=False)
    assert compiled and all(isinstance(m, hardware._TrainingPath) for m in compiled)
    assert json.loads((run_dir / "config.json").read_text())["training"]["compile"] is True


def test_kernel_choice_on_cuda_autotunes_by_default_and_is_deterministic_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flags are process-wide: set for the training, and put back as they were afterwards."""
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", False)
    monkeypatch.setattr(cudnn, "deterministic", False)
    monkeypatch.delenv(hardware.CUBLAS_WORKSPACE_VARIABLE, raising=False)
    cuda = torch.device("cuda")  # a device object only: nothing here launches a CUDA kernel
    with hardware.kernel_choice(cuda, deterministic=False):
        assert cudnn.benchmark and not cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
    with hardware.kernel_choice(cuda, deterministic=True):
        assert not cudnn.benchmark and cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ[hardware.CUBLAS_WORKSPACE_VARIABLE] == hardware.CUBLAS_DETERMINISTIC_WORKSPACE
    assert (cudnn.benchmark, cudnn.deterministic) == (False, False)
    assert not torch.are_deterministic_algorithms_enabled()
    with hardware.kernel_choice(torch.device("cpu"), deterministic=False):
        assert not cudnn.benchmark  # the CPU leaves cuDNN alone


def test_deterministic_flag_holds_during_training_only(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    real_epoch = fit_module.train_one_epoch

    def recording_epoch(*args: object, **kwargs: object) -> object:
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", recording_epoch)
    args = build_parser().parse_args(["train", "--annotations", "a", "--data", "b", "--deterministic"])
    assert run_config_from_args(args).training.deterministic
    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=2, deterministic=True)
    run_dir = train(config, progress=False)
    assert seen == [True, True]
    assert not torch.are_deterministic_algorithms_enabled()
    assert json.loads((run_dir / "config.json").read_text())["training"]["deterministic"] is True


def test_bf16_autocast_trains_on_cpu(tiny_dataset: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=2, precision="bf16")
    run_dir = train(config, progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    rows = (run_dir / "history.csv").read_text().splitlines()[1:]
    assert all(math.isfinite(float(row.split(",")[1])) for row in rows)


def test_float16_cache_stores_half_and_serves_float32(tiny_dataset: Path, tmp_path: Path) -> None:
    audio, features = AudioConfig(sample_rate=16_000, duration=1.0), FeatureConfig(n_fft=512, hop_length=256)
    paths = sorted((tiny_dataset / "audio").glob("fold1/*.wav"))[:6]
    full = FeatureCache(tmp_path, audio, features).build(paths, num_workers=0, progress=False, device="cpu")
    half = FeatureCache(tmp_path, audio, features, dtype="float16").build(
        paths, num_workers=0, progress=False
    )
    assert full.array.dtype == np.float32 and half.array.dtype == np.float16
    assert isinstance(half.array, np.memmap)
    # dB values up to ~100 in float16 (11-bit mantissa): within 0.05 dB.
    np.testing.assert_allclose(half.array.astype(np.float32), full.array, atol=0.05)
    batch, _ = FeatureDataset(half.array, [0] * len(paths), range(len(paths)))[[0, 1]]
    assert batch.dtype == torch.float32


def test_dataset_pickles_the_memory_map_by_name(tiny_dataset: Path, tmp_path: Path) -> None:
    """Spawned data-loader workers (macOS, Windows) receive the file name, not a copy of every feature."""
    audio, features = AudioConfig(sample_rate=16_000, duration=1.0), FeatureConfig(n_fft=512, hop_length=256)
    paths = sorted((tiny_dataset / "audio").glob("fold1/*.wav"))[:6]
    cached = FeatureCache(tmp_path, audio, features).build(paths, num_workers=0, progress=False)
    dataset = FeatureDataset(cached.array, list(range(6)), [1, 3, 5])
    payload = pickle.dumps(dataset)
    assert len(payload) < cached.array.nbytes / 4
    copy = pickle.loads(payload)
    assert isinstance(copy.features, np.memmap)
    for a, b in zip(copy[[0, 2]], dataset[[0, 2]], strict=True):
        torch.testing.assert_close(a, b)


def test_cpu_training_runs_convolutions_channels_last_with_the_same_outputs() -> None:
    from urbansound.features.frontend import AudioClassifier, BandNormalizer, SpectrogramFrontend
    from urbansound.models import create_model
    from urbansound.training.distributed import DistributedContext

    torch.manual_seed(0)
    model = AudioClassifier(
        SpectrogramFrontend(FeatureConfig(n_fft=256, hop_length=128, n_mels=16), 8000),
        BandNormalizer(16),
        create_model("resnet", n_classes=3, n_bands=16, widths=[4, 8, 8, 8]),
    ).eval()
    features = torch.randn(4, 16, 32)
    with torch.no_grad():
        expected = model.classify_features(features)
    runner = hardware.prepare_model(model, DistributedContext(device=torch.device("cpu")))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    runner.eval()
    with torch.no_grad():
        torch.testing.assert_close(runner.classify_features(features), expected, rtol=1e-4, atol=1e-5)
