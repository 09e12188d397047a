"""Every stage runs with the front end, the model and the data on another device than the CPU.

CI has no GPU, so these tests use PyTorch's "meta" device as the other device: its tensors have shapes and a
device but no data, and every operation checks its inputs' devices exactly as on CUDA (``torch.stft`` of a
CPU waveform with a meta window raises "stft input and window must be on the same device", the error the
default recipe raised on CUDA when the feature cache moved its shared front end in place). Where computed
features leave the device for the disk, the tests stand zeros of the right shape in for the data a meta
tensor does not have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from urbansound.config import AudioConfig, AugmentConfig, FeatureConfig
from urbansound.devices import variant_device
from urbansound.features import cache as cache_module
from urbansound.features.augment import FilterAugment, SpecAugment, make_variants, mixup_batch
from urbansound.features.cache import FeatureCache
from urbansound.features.fresh_variants import FreshVariants
from urbansound.features.frontend import AudioClassifier, BandNormalizer, SpectrogramFrontend
from urbansound.inference import Predictor
from urbansound.modelfile import ModelSpec
from urbansound.models import create_model
from urbansound.training.distributed import DistributedContext
from urbansound.training.fit import make_optimizer
from urbansound.training.hardware import prepare_model
from urbansound.training.loop import FeatureDataset, ResidentFeatures, epoch_batches, make_loader

META = torch.device("meta")
AUGMENT = AugmentConfig(
    variants=2, time_stretch=[0.9, 1.1], pitch_shift=[-1.0, 1.0], noise_snr_db=[10.0, 30.0]
)


def _host_or_zeros(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """``to_host`` for the meta device: zeros of the tensor's shape (a meta tensor holds no data)."""
    if tensor.device.type == "meta":
        return np.zeros(tuple(tensor.shape), dtype=dtype)
    return tensor.detach().cpu().numpy().astype(dtype, copy=False)


@pytest.fixture
def meta_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "to_host", _host_or_zeros)


def _clips(tmp_path: Path, n: int = 3) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        path = tmp_path / f"clip{k}.wav"
        sf.write(path, 0.3 * rng.standard_normal(4000).astype(np.float32), 8000)
        paths.append(path)
    return paths


def _cache(tmp_path: Path, small_audio: AudioConfig, small_features: FeatureConfig) -> FeatureCache:
    return FeatureCache(tmp_path / "cache", small_audio, small_features)


def test_feature_build_on_another_device_leaves_the_shared_front_end_on_the_cpu(
    tmp_path: Path, small_audio: AudioConfig, small_features: FeatureConfig, meta_host: None
) -> None:
    cache = _cache(tmp_path, small_audio, small_features)
    paths = _clips(tmp_path)
    built = cache.build(paths, num_workers=0, progress=False, device=META)
    assert built.array.shape == (3, 16, cache.n_frames) and not built.failed
    assert cache.frontend.window.device.type == "cpu"
    assert cache.frontend.filterbank.device.type == "cpu"
    # The next stage feeds the CPU front end CPU waveforms: with the front end moved in place, this raised
    # "stft input and window must be on the same device".
    variants = cache.build_variants(paths, AUGMENT, num_workers=0, progress=False)
    assert variants.shape == (3, 2, 16, cache.n_frames)
    assert np.abs(variants).sum() > 0  # computed on the CPU for real


def test_variants_are_computed_on_the_training_device(
    tmp_path: Path, small_audio: AudioConfig, small_features: FeatureConfig, meta_host: None
) -> None:
    cache = _cache(tmp_path, small_audio, small_features)
    variants = cache.build_variants(_clips(tmp_path), AUGMENT, num_workers=0, progress=False, device=META)
    assert variants.shape == (3, 2, 16, cache.n_frames)
    assert cache.frontend.window.device.type == "cpu"
    waves = make_variants(torch.zeros(3, 4000, device=META), ["a", "b", "c"], AUGMENT, 8000)
    assert waves.device == META and waves.shape == (3, 2, 4000)


def test_variants_for_mps_are_computed_on_the_cpu_which_has_float64(
    tmp_path: Path, small_audio: AudioConfig, small_features: FeatureConfig
) -> None:
    """MPS has no float64, which the phase vocoder sums phases in: a run on MPS computes its variants on the
    CPU. (This CPU-only torch has no MPS at all, so any work sent there would fail here.)"""
    assert variant_device(torch.device("mps")) == torch.device("cpu")
    assert variant_device(META) == META and variant_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    cache = _cache(tmp_path, small_audio, small_features)
    paths = _clips(tmp_path)
    for_mps = np.array(cache.build_variants(paths, AUGMENT, num_workers=0, progress=False, device="mps"))
    cache_cpu = FeatureCache(tmp_path / "cpu-cache", small_audio, small_features)
    on_cpu = cache_cpu.build_variants(paths, AUGMENT, num_workers=0, progress=False, device="cpu")
    np.testing.assert_array_equal(for_mps, on_cpu)
    assert np.abs(for_mps).sum() > 0


def test_fresh_variants_for_mps_are_computed_on_the_cpu_and_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waves = (0.3 * np.random.default_rng(0).standard_normal((3, 4000))).astype(np.float32)
    fresh = FreshVariants(
        waves, ["a", "b", "c"], AUGMENT, AudioConfig(sample_rate=8000, duration=0.5),
        FeatureConfig(n_fft=256, hop_length=128, n_mels=16), np.dtype("float32"),
    )  # fmt: skip
    expected = fresh.compute(epoch=1, seed=0, positions=[0, 2], device="cpu")
    handed: list[torch.device] = []
    real_to = torch.Tensor.to

    def to(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "mps":
            handed.append(tensor.device)  # this torch cannot hold MPS tensors: record the hand-over only
            return tensor
        return real_to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    table = fresh.compute(epoch=1, seed=0, positions=[0, 2], device="mps")
    assert handed == [torch.device("cpu")]
    torch.testing.assert_close(table, expected, rtol=0, atol=0)


def _classifier(n_bands: int = 16) -> AudioClassifier:
    return AudioClassifier(
        SpectrogramFrontend(FeatureConfig(n_fft=256, hop_length=128, n_mels=n_bands), 8000),
        BandNormalizer(n_bands, "clip_max"),
        create_model("resnet", n_classes=3, n_bands=n_bands, widths=[4, 8, 8, 8]),
    )


def test_a_training_step_runs_wholly_on_the_device() -> None:
    """Resident batches, FilterAugment, normaliser, SpecAugment, mixup, forward, backward and the
    optimiser step, all on the device: any tensor left on the CPU among them raises."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((6, 16, 20)).astype(np.float32)
    variants = rng.standard_normal((4, 2, 16, 20)).astype(np.float32)
    train = FeatureDataset(features, [0, 1, 2, 0, 1, 2], [0, 2, 4, 5], variants=variants, seed=1)
    train.set_epoch(1)
    resident = ResidentFeatures(train, META)
    batches = list(resident.batches(epoch_batches(train, 3, shuffle=True, seed=1, epoch=1)))
    assert [x.shape[0] for x, _ in batches] == [3, 1]
    x, labels = batches[0]
    assert x.device == META and labels.device == META and x.dtype == torch.float32

    model = _classifier()
    runner = prepare_model(
        model,
        DistributedContext(device=META),
        band_augment=FilterAugment(6.0),
        spec_augment=SpecAugment(2, 4, 2, 4),
    )
    assert all(p.device == META for p in model.parameters())
    optimizer, scheduler = make_optimizer(model, _training_config(), steps_per_epoch=2)
    runner.train()
    for domain in ("db", "power"):
        mixed, labels_a, labels_b, lam = mixup_batch(x, labels, 0.2, domain)
        logits = runner.classify_features(mixed)
        loss = lam * nn.functional.cross_entropy(logits, labels_a) + (1 - lam) * nn.functional.cross_entropy(
            logits, labels_b
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        assert logits.device == META and logits.shape == (3, 3)
    assert all(p.grad is not None and p.grad.device == META for p in model.parameters())


def _training_config():  # type: ignore[no-untyped-def]
    from urbansound.config import TrainingConfig

    return TrainingConfig(epochs=1, batch_size=3, scheduler="cosine", weight_decay=1e-2)


def test_the_deployable_model_classifies_waveforms_on_the_device() -> None:
    model = _classifier().to(META).eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 4000, device=META))
    assert logits.device == META and logits.shape == (2, 3)
    with pytest.raises(RuntimeError, match="same device|device"):
        model(torch.zeros(2, 4000))  # a CPU waveform for a model on another device is an error, not a copy


def test_predictor_copies_a_model_to_its_device_instead_of_moving_the_callers() -> None:
    model = _classifier()
    spec = ModelSpec(
        audio=AudioConfig(sample_rate=8000, duration=0.5),
        features=FeatureConfig(n_fft=256, hop_length=128, n_mels=16),
        model=__import__("urbansound.config", fromlist=["ModelConfig"]).ModelConfig(name="resnet"),
        class_names=["a", "b", "c"],
    )
    predictor = Predictor(model, spec, device=META)
    assert all(p.device == META for p in predictor.model.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())  # the caller's model stays where it was
    assert model.frontend.window.device.type == "cpu"
    same = Predictor(model, spec, device="cpu")
    assert same.model is model  # no copy when it is already there


def test_data_goes_to_the_device_when_asked_or_on_an_accelerator() -> None:
    from urbansound.training.fit import wants_resident_data

    data = FeatureDataset(np.zeros((4, 2, 3), np.float32), [0, 1, 0, 1], [0, 1, 2, 3])
    cpu = torch.device("cpu")
    assert not wants_resident_data("auto", data, cpu)  # the memory map already is host memory
    assert wants_resident_data("yes", data, cpu)
    assert wants_resident_data("auto", data, META)
    assert not wants_resident_data("no", data, META)


def test_loader_pins_batches_for_a_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU run on a machine with a GPU must not pin (which starts CUDA and copies every batch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    dataset = FeatureDataset(np.zeros((4, 2, 3), dtype=np.float32), [0, 1, 0, 1], range(4))
    assert not make_loader(dataset, 2, shuffle=False, device=torch.device("cpu")).pin_memory
    assert not make_loader(dataset, 2, shuffle=False).pin_memory
    assert make_loader(dataset, 2, shuffle=False, device=torch.device("cuda", 0)).pin_memory
