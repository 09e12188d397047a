"""Augmentation: shapes kept, randomness reproducible, everything off at evaluation, resume stays exact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_training import tiny_config, train_interrupted

from urbansound.config import AudioConfig, AugmentConfig, FeatureConfig, ModelConfig, RunConfig
from urbansound.features.augment import (
    FilterAugment,
    SpecAugment,
    VariantDraw,
    draw_variant,
    make_variants,
    mix_db_in_power,
    mixup_batch,
    unit_noise,
    variant_rng,
)
from urbansound.features.frontend import AudioClassifier, BandNormalizer, SpectrogramFrontend
from urbansound.modelfile import ModelSpec
from urbansound.models import create_model
from urbansound.training import fit as fit_module
from urbansound.training.loop import FeatureDataset
from urbansound.training.run import train


def _classifier() -> AudioClassifier:
    features = FeatureConfig(n_fft=256, hop_length=128, n_mels=16)
    return AudioClassifier(
        SpectrogramFrontend(features, 8000),
        BandNormalizer(16),
        create_model("sbcnn", n_classes=3, n_bands=16),
    )


def test_spec_augment_masks_in_training_only_and_adds_no_state() -> None:
    torch.manual_seed(0)
    augment = SpecAugment(freq_masks=2, freq_width=4, time_masks=2, time_width=6)
    x = torch.randn(8, 16, 40) + 5.0  # no exact zeros before masking
    augment.train()
    y = augment(x)
    assert y.shape == x.shape
    masked = y == 0
    assert masked.any(), "training mode must mask something"
    # Masks are whole bands or whole frames: every masked cell lies in a fully masked row or column.
    rows, cols = masked.all(dim=2), masked.all(dim=1)
    assert bool((masked <= (rows[:, :, None] | cols[:, None, :])).all())
    assert torch.equal(y[~masked], x[~masked])
    augment.eval()
    assert torch.equal(augment(x), x)
    assert augment.state_dict() == {}


def test_filter_augment_adds_a_bounded_piecewise_linear_band_gain_in_training_only() -> None:
    torch.manual_seed(0)
    augment = FilterAugment(gain_db=6.0, points=(3, 5))
    features = torch.randn(8, 40, 30) * 10 - 40
    augment.eval()
    assert torch.equal(augment(features), features)
    augment.train()
    curve = augment(features) - features  # (batch, n_bands, frames)
    # One gain per band, the same in every frame, within +-6 dB, different between clips.
    torch.testing.assert_close(curve, curve[:, :, :1].expand_as(curve))
    gains = curve[:, :, 0]
    assert float(gains.abs().max()) <= 6.0 + 1e-5 and float(gains.abs().max()) > 1.0
    assert not torch.allclose(gains[0], gains[1])
    # Piecewise linear with at most 5 control points: at most 3 interior kinks per clip.
    second_difference = gains[:, 2:] - 2 * gains[:, 1:-1] + gains[:, :-2]
    assert int((second_difference.abs() > 1e-4).sum(dim=1).max()) <= 2 * 3
    assert sum(1 for _ in augment.parameters()) == 0 and not augment.state_dict()


def test_training_wrapper_augments_in_training_only_and_leaves_the_classifier_unchanged() -> None:
    from urbansound.training.distributed import DistributedContext
    from urbansound.training.hardware import prepare_model

    torch.manual_seed(1)
    model = _classifier()
    plain_state = {k: v.clone() for k, v in model.state_dict().items()}
    features = torch.randn(4, 16, 30)
    model.eval()
    before = model.classify_features(features)
    runner = prepare_model(
        model,
        DistributedContext(device=torch.device("cpu")),
        band_augment=FilterAugment(6.0),
        spec_augment=SpecAugment(2, 4, 2, 8),
    )
    assert model.state_dict().keys() == plain_state.keys()  # old model files still load
    assert not hasattr(model, "augment") and not hasattr(model, "band_augment")  # deployable stays plain
    runner.eval()
    torch.testing.assert_close(runner.classify_features(features), before, rtol=1e-4, atol=1e-5)
    runner.train()
    model.backbone.eval()  # isolate the augmentation from dropout
    assert not torch.allclose(runner.classify_features(features), before)


def test_mixup_is_a_convex_pair_mix() -> None:
    torch.manual_seed(2)
    x = torch.randn(6, 16, 10)
    labels = torch.arange(6)
    mixed, a, b, lam = mixup_batch(x, labels, alpha=0.4)
    assert mixed.shape == x.shape and 0.0 <= lam <= 1.0
    assert torch.equal(a, labels)
    partner = x[b]  # labels are positions here, so b is the permutation
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * partner)


def test_power_mixup_adds_band_energies() -> None:
    torch.manual_seed(3)
    x = -60 + 20 * torch.rand(6, 16, 10)  # dB
    x[3] -= 30  # a quieter recording
    labels = torch.arange(6)
    mixed, _, b, lam = mixup_batch(x, labels, alpha=0.4, domain="power")
    peak = x.amax(dim=(1, 2), keepdim=True)
    energy = lam * 10 ** ((x - peak) / 10) + (1 - lam) * 10 ** ((x[b] - peak[b]) / 10)
    level = lam * peak + (1 - lam) * peak[b]
    torch.testing.assert_close(mixed, 10 * torch.log10(energy) + level, rtol=0, atol=1e-4)
    # A sound mixed with itself is unchanged; mixed with near-silence it only drops by 10 log10(lam) dB.
    torch.testing.assert_close(mix_db_in_power(x, x, 0.3), x, rtol=0, atol=1e-4)
    quiet = torch.full_like(x, -200.0)
    torch.testing.assert_close(mix_db_in_power(x, quiet, 0.5), x + 10 * math.log10(0.5), rtol=0, atol=1e-4)
    assert torch.isfinite(mix_db_in_power(torch.full_like(x, -1e4), quiet, 1.0)).all()


def _variant_input(n_clips: int = 3, sample_rate: int = 8000) -> torch.Tensor:
    rng = np.random.default_rng(0)
    t = np.arange(sample_rate) / sample_rate
    clips = [0.3 * np.sin(2 * np.pi * (300 + 200 * k) * t) * np.exp(-2 * t) for k in range(n_clips)]
    clips = [c + 0.05 * rng.standard_normal(sample_rate) for c in clips]
    return torch.from_numpy(np.stack(clips).astype(np.float32))  # (clips, samples)


def test_audio_variants_keep_length_are_reproducible_and_independent_of_batch_mates() -> None:
    config = AugmentConfig(variants=3, noise_snr_db=[20.0, 30.0])
    waves = _variant_input()
    keys = ["a", "b", "c"]
    out = make_variants(waves, keys, config, 8000, seed=1)
    assert out.shape == (3, 3, 8000) and out.dtype == torch.float32
    torch.testing.assert_close(out, make_variants(waves, keys, config, 8000, seed=1), rtol=0, atol=0)
    # A clip's variants are a function of (key, variant, seed): alone or in any batch, the same.
    alone = make_variants(waves[1:2], ["b"], config, 8000, seed=1)
    torch.testing.assert_close(out[1:2], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(out[1, 0], out[1, 1])
    assert not torch.allclose(out, make_variants(waves, keys, config, 8000, seed=2))
    assert float(out.abs().max()) <= 1.0


def _librosa_variant(
    wave: np.ndarray, sample_rate: int, config: AugmentConfig, draw: VariantDraw
) -> np.ndarray:
    """Salamon & Bello's variant made per clip with librosa, from the same random draws."""
    import librosa

    n = wave.shape[-1]
    y = wave.astype(np.float32)
    if draw.rate is not None:
        y = librosa.util.fix_length(librosa.effects.time_stretch(y, rate=draw.rate), size=n)
    if draw.semitones is not None:
        y = librosa.effects.pitch_shift(y, sr=sample_rate, n_steps=draw.semitones)
    y = np.roll(y, draw.shift) * np.float32(draw.gain)
    if draw.noise_seed is not None and draw.snr_db is not None:
        noise = unit_noise([draw.noise_seed], len(y), torch.device("cpu"))[0].numpy()
        y = y + noise * np.float32(np.sqrt(np.mean(np.square(y)) / 10 ** (draw.snr_db / 10)))
    return np.clip(y, -1.0, 1.0)


def test_audio_variants_match_librosa_made_from_the_same_draws() -> None:
    """The batched torch variants against librosa's time_stretch + pitch_shift per clip. Stretch is the
    same phase vocoder; pitch shift resamples with a windowed sinc instead of soxr, which differs in the
    last few hundred Hz below Nyquist and in rounding: the difference stays 30 dB below the signal."""
    config = AugmentConfig(variants=4, noise_snr_db=None, gain_db=3.0)
    waves = _variant_input(n_clips=2, sample_rate=16000)
    out = make_variants(waves, ["x", "y"], config, 16000, seed=0).numpy()
    for c, key in enumerate(["x", "y"]):
        for v in range(4):
            draw = draw_variant(config, variant_rng(key, v, 0), waves.shape[1])
            expected = _librosa_variant(waves[c].numpy(), 16000, config, draw)
            error = out[c, v] - expected
            snr = 10 * np.log10(np.sum(expected**2) / np.sum(error**2))
            assert snr > 30.0, (key, v, draw.rate, draw.semitones, snr)


def test_variant_choice_depends_on_seed_and_epoch_only() -> None:
    features = np.zeros((10, 2, 3), dtype=np.float32)
    # (2 clips, 2 variants, 2 bands, 3 frames)
    variants = np.stack([np.full((2, 2, 3), k + 1, dtype=np.float32) for k in range(2)], axis=1)
    variants = np.repeat(variants, 5, axis=0)  # (10, 2, 2, 3): variant k of every clip holds k + 1
    data = FeatureDataset(features, list(range(10)), list(range(10)), variants=variants, seed=4)
    seen = []
    for epoch in (1, 2, 1):
        data.set_epoch(epoch)
        x, _ = data[list(range(10))]
        seen.append(x[:, 0, 0].numpy())
    np.testing.assert_array_equal(seen[0], seen[2])  # same (seed, epoch) -> same versions
    assert not np.array_equal(seen[0], seen[1])
    assert set(np.concatenate(seen).tolist()) <= {0.0, 1.0, 2.0}
    # Evaluation sets have no variants: always the original.
    plain = FeatureDataset(features, list(range(10)), list(range(10)))
    plain.set_epoch(3)
    assert float(plain[list(range(10))][0].abs().sum()) == 0.0


def _augmented(config: RunConfig) -> RunConfig:
    config.model = ModelConfig(name="sbcnn", kwargs={"batch_norm": True})
    config.augment = AugmentConfig(
        variants=2,
        time_stretch=[0.9, 1.1],
        pitch_shift=[-1.0, 1.0],
        freq_masks=1,
        freq_mask_width=4,
        time_masks=1,
        time_mask_width=4,
        mixup_alpha=0.3,
        filter_gain_db=6.0,
    )
    config.training.scheduler = "cosine"
    config.training.label_smoothing = 0.1
    config.training.weight_decay = 1e-2
    return config


def test_augmented_run_resumes_to_identical_weights(
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    straight = train(_augmented(tiny_config(tiny_dataset, tmp_path / "a", cache, epochs=3)), progress=False)
    variants = list((cache).glob("*/variants/*/*/*.npy"))
    assert len(variants) == 20  # one entry per training clip, holding its 2 variants
    assert np.load(variants[0]).shape[0] == 2

    config = _augmented(tiny_config(tiny_dataset, tmp_path / "b", cache, epochs=3))
    interrupted = train_interrupted(config, monkeypatch)
    resumed = train(RunConfig(), resume_dir=interrupted, progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    saved = json.loads((resumed / "config.json").read_text())
    assert saved["augment"]["mixup_alpha"] == 0.3 and saved["training"]["scheduler"] == "cosine"


def test_model_file_of_augmented_run_predicts_without_augmentation(
    tiny_dataset: Path,
    tmp_path: Path,
) -> None:
    from urbansound.modelfile import load_model_file

    config = _augmented(tiny_config(tiny_dataset, tmp_path / "runs", tmp_path / "cache", epochs=1))
    config.augment.variants = 0
    run_dir = train(config, progress=False)
    model, spec = load_model_file(run_dir / "model.safetensors")
    assert not hasattr(model, "augment") and not hasattr(model, "band_augment")  # augmentation is training's
    wave = torch.randn(2, AudioConfig(sample_rate=16_000, duration=1.0).n_samples) * 0.1
    torch.testing.assert_close(model(wave), model(wave))
    assert spec.model.kwargs == {"batch_norm": True}


def test_long_clips_average_predictions_over_windows() -> None:
    """The predictor's windowing: half-overlapping windows, the last flush with the end, probabilities
    averaged; a short clip is right-padded to one window."""
    from urbansound.inference import Predictor

    torch.manual_seed(3)
    model = _classifier().eval()
    window = 4000  # 0.5 s at 8 kHz
    spec = ModelSpec(
        audio=AudioConfig(sample_rate=8000, duration=0.5),
        features=FeatureConfig(n_fft=256, hop_length=128, n_mels=16),
        model=ModelConfig(name="sbcnn"),
        class_names=["a", "b", "c"],
    )
    predictor = Predictor(model, spec)
    assert predictor.window == window
    assert predictor.window_starts(window).tolist() == [0]
    assert predictor.window_starts(9000).tolist() == [0, 2000, 4000, 5000]  # the last is flush with the end
    long = torch.randn(9000) * 0.1
    with torch.no_grad():
        expected = torch.stack(
            [torch.softmax(model(long[s : s + window][None]), dim=1)[0] for s in (0, 2000, 4000, 5000)]
        ).mean(dim=0)
    averaged = predictor.predict_waveform(long.numpy()).probabilities
    np.testing.assert_allclose(averaged, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert averaged.sum() == pytest.approx(1.0, abs=1e-5)
    short = torch.randn(1000) * 0.1
    padded = torch.nn.functional.pad(short, (0, window - 1000))
    with torch.no_grad():
        single = torch.softmax(model(padded[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(
        predictor.predict_waveform(short.numpy()).probabilities, single, rtol=1e-5, atol=1e-6
    )


def test_device_resident_batches_train_to_the_same_weights_as_the_loader(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path (features and variants held on the device, batches gathered by index there) serves the
    loader's batches in the loader's order, so an augmented run ends with bit-identical weights."""
    made: list[object] = []

    class Counted(fit_module.ResidentFeatures):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(fit_module, "ResidentFeatures", Counted)
    cache = tmp_path / "cache"
    through_loader = train(
        _augmented(tiny_config(tiny_dataset, tmp_path / "a", cache, epochs=2)), progress=False
    )
    on_device = _augmented(tiny_config(tiny_dataset, tmp_path / "b", cache, epochs=2, data_on_device="yes"))
    assert not made  # on the CPU "auto" keeps the loader
    resident = train(on_device, progress=False)
    assert len(made) == 1
    a, b = (
        load_file(str(through_loader / "model.safetensors")),
        load_file(str(resident / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
