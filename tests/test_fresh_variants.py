"""Fresh audio variants: a new variant of each augmented clip every epoch, computed on the training device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_augment import _augmented
from test_training import tiny_config, train_interrupted

from urbansound.config import AudioConfig, AugmentConfig, FeatureConfig, RunConfig
from urbansound.errors import ConfigError
from urbansound.features.augment import make_variants
from urbansound.features.fresh_variants import FRESH_VARIANT_BASE, FreshVariants
from urbansound.features.frontend import make_frontend
from urbansound.training.distill import student_config
from urbansound.training.distributed import GlobalBatchSampler
from urbansound.training.fit import fresh_positions
from urbansound.training.loop import FeatureDataset
from urbansound.training.run import train

AUDIO = AudioConfig(sample_rate=8000, duration=0.5)
FEATURES = FeatureConfig(n_fft=256, hop_length=128, n_mels=16)
AUGMENT = AugmentConfig(variants=3, time_stretch=[0.9, 1.1], pitch_shift=[-1.0, 1.0])


def _fresh(n: int = 6, dtype: str = "float32") -> FreshVariants:
    rng = np.random.default_rng(0)
    waves = (0.3 * rng.standard_normal((n, AUDIO.n_samples))).astype(np.float32)
    return FreshVariants(waves, [f"clip{k}" for k in range(n)], AUGMENT, AUDIO, FEATURES, np.dtype(dtype))


def test_chosen_variant_numbers_are_the_same_variants_as_the_full_set() -> None:
    waves = 0.3 * torch.randn(2, AUDIO.n_samples, generator=torch.Generator().manual_seed(1))
    every = make_variants(waves, ["a", "b"], AUGMENT, AUDIO.sample_rate, seed=2)  # variants 0, 1, 2
    second = make_variants(waves, ["a", "b"], AUGMENT, AUDIO.sample_rate, seed=2, numbers=[1])
    assert second.shape == (2, 1, AUDIO.n_samples)
    torch.testing.assert_close(second[:, 0], every[:, 1])


def test_an_epochs_fresh_variant_is_a_function_of_clip_epoch_and_seed() -> None:
    fresh = _fresh()
    table = fresh.compute(epoch=3, seed=1, positions=[4, 1, 2], device="cpu")
    assert table.shape == (6, 1, 16, AUDIO.n_samples // 128 + 1) and table.dtype == torch.float32
    assert bool((table[[0, 3, 5]] == 0).all())  # rows nobody asked for stay empty
    assert bool((table[[1, 2, 4], 0].abs().sum(dim=(1, 2)) > 0).all())
    # The same clip in another batch, alone: the same variant (its draws depend on the clip, not its mates).
    alone = fresh.compute(epoch=3, seed=1, positions=[2], device="cpu")
    torch.testing.assert_close(alone[2], table[2])
    # Exactly the front end of the make_variants variant numbered for the epoch.
    wave = make_variants(
        torch.from_numpy(fresh.waveforms[[4]]), ["clip4"], AUGMENT, 8000, 1, [FRESH_VARIANT_BASE + 3]
    )
    torch.testing.assert_close(table[4, 0], make_frontend(FEATURES, 8000)(wave[:, 0])[0])
    # Another epoch or seed: another variant.
    assert not torch.equal(fresh.compute(epoch=4, seed=1, positions=[4], device="cpu")[4], table[4])
    assert not torch.equal(fresh.compute(epoch=3, seed=2, positions=[4], device="cpu")[4], table[4])


def test_fresh_variants_keep_the_cache_dtype_and_the_training_device() -> None:
    fresh = _fresh(dtype="float16")
    assert fresh.compute(1, 0, [0], "cpu").dtype == torch.float16
    meta = torch.device("meta")  # checks devices as CUDA does: a CPU tensor in the mix would raise
    table = fresh.compute(1, 0, [0, 5], meta)
    assert table.device == meta and table.shape[:2] == (6, 1)
    assert fresh.frontend(torch.device("cpu")).window.device.type == "cpu"  # one front end per device


def test_fresh_variants_augment_the_clips_cached_variants_would() -> None:
    features = np.zeros((40, 2, 3), dtype=np.float32)
    cached = FeatureDataset(
        features, [0] * 40, list(range(40)), variants=np.zeros((40, 3, 2, 3), np.float32), seed=5
    )
    fresh = FeatureDataset(features, [0] * 40, list(range(40)), seed=5, fresh=_fresh(40))
    assert fresh.fresh_count == AUGMENT.variants
    for epoch in (1, 2):
        cached.set_epoch(epoch)
        fresh.set_epoch(epoch)
        np.testing.assert_array_equal(fresh.choice, np.minimum(cached.choice, 1))
    assert 0 < fresh.choice.sum() < 40
    # Loader workers get the dataset without the clips' audio.
    assert fresh.__getstate__()["fresh"] is None


def test_each_rank_computes_only_the_clips_of_its_own_batches() -> None:
    choice = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    assert fresh_positions(choice, None) == [0, 2, 3, 5, 6, 7, 9]
    ranks = [GlobalBatchSampler(10, 4, rank, 2, seed=0, epoch=1) for rank in (0, 1)]
    shares = [fresh_positions(choice, sampler) for sampler in ranks]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == fresh_positions(choice, None)


def test_fresh_variants_need_a_share_of_augmented_clips() -> None:
    with pytest.raises(ConfigError, match="--aug-variants > 0"):
        AugmentConfig(variants=0, fresh_variants=True).validate()


def _fresh_config(root: Path, runs: Path, cache: Path, **training: object) -> RunConfig:
    config = _augmented(tiny_config(root, runs, cache, epochs=3, **training))
    config.augment.fresh_variants = True
    return config


def test_fresh_run_resumes_to_identical_weights_and_caches_no_variants(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    computed: list[int] = []
    real_compute = FreshVariants.compute

    def counted(self: FreshVariants, epoch: int, *args: object) -> torch.Tensor:
        computed.append(epoch)
        return real_compute(self, epoch, *args)

    monkeypatch.setattr(FreshVariants, "compute", counted)
    straight = train(_fresh_config(tiny_dataset, tmp_path / "a", cache), progress=False)
    assert computed == [1, 2, 3]
    assert not list(cache.glob("*/variants/*/*/*.npy"))
    assert json.loads((straight / "config.json").read_text())["augment"]["fresh_variants"] is True

    interrupted = train_interrupted(_fresh_config(tiny_dataset, tmp_path / "b", cache), monkeypatch)
    resumed = train(RunConfig(), resume_dir=interrupted, progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_fresh_variants_differ_from_cached_ones_and_both_data_paths_agree(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    loader = train(_fresh_config(tiny_dataset, tmp_path / "a", cache), progress=False)
    resident = train(_fresh_config(tiny_dataset, tmp_path / "b", cache, data_on_device="yes"), progress=False)
    cached = train(_augmented(tiny_config(tiny_dataset, tmp_path / "c", cache, epochs=3)), progress=False)
    a, b, c = (load_file(str(run / "model.safetensors")) for run in (loader, resident, cached))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert any(not np.array_equal(a[key], c[key]) for key in a if a[key].dtype.kind == "f")


def test_a_student_trains_on_cached_variants_whatever_its_teacher_drew(tmp_path: Path) -> None:
    teacher = RunConfig(augment=AugmentConfig(variants=8, fresh_variants=True))
    assert student_config(teacher, "resnet", tmp_path).augment.fresh_variants is False
    assert teacher.augment.fresh_variants is True  # the teacher's configuration is left as it was
