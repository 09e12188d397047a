"""Issue 15's input levers: PCEN against its formula (and librosa), delta and band-position channels, random
crops in training with window-averaged prediction, and test-time shifts. Each is off by default and, when
on, changes what it should and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from urbansound.config import RunConfig, apply_recipe
from urbansound.errors import ConfigError
from urbansound.features.frontend import BandNormalizer
from urbansound.features.pcen import PCEN, PCENNormalizer, pcen, pcen_band_statistics, smoothing_coefficient
from urbansound.features.views import (
    InputChannels,
    RandomTimeCrop,
    deltas,
    normaliser_statistics,
    with_training_crop,
)
from urbansound.modelfile import ModelSpec, build_classifier

CLASSES = [f"c{i}" for i in range(4)]


def _spec(**model: object) -> ModelSpec:
    config = apply_recipe(RunConfig(), "default")
    config.features.n_mels = 16
    config.model.ensemble = 1
    config.model.kwargs = {"widths": [4, 4, 4, 4]}
    config.model.deltas = 0  # each lever alone on the spectrogram (the default recipe adds deltas)
    for key, value in model.items():
        setattr(config.model, key, value)
    config.validate()
    return ModelSpec(config.audio, config.features, config.model, CLASSES)


def _paper_pcen(e: np.ndarray, s: float, alpha: float, delta: float, r: float, eps: float) -> np.ndarray:
    """Wang et al. / Lostanlen et al.: M[t] = (1 - s) M[t-1] + s E[t] (M[0] = E[0]), then
    (E / (eps + M)^alpha + delta)^r - delta^r."""
    m = np.empty_like(e)
    m[..., 0] = e[..., 0]
    for t in range(1, e.shape[-1]):
        m[..., t] = (1 - s) * m[..., t - 1] + s * e[..., t]
    return (e / (eps + m) ** alpha + delta) ** r - delta**r


def test_pcen_is_the_papers_formula_and_librosas() -> None:
    rng = np.random.default_rng(0)
    energy = rng.uniform(0, 5, size=(2, 3, 40))
    s = smoothing_coefficient(0.4, 22_050 / 1024)
    ours = pcen(torch.from_numpy(energy), s).numpy()
    np.testing.assert_allclose(ours, _paper_pcen(energy, s, 0.98, 2.0, 0.5, 1e-6), rtol=1e-10)
    librosa = pytest.importorskip("librosa")
    # librosa starts its smoother as if the input had been 1 before; zi = (1 - s) E[0] starts it at E[0].
    reference = librosa.pcen(
        energy[0], sr=22_050, hop_length=1024, gain=0.98, bias=2.0, power=0.5, time_constant=0.4,
        eps=1e-6, zi=(1 - s) * energy[0][:, :1],
    )  # fmt: skip
    np.testing.assert_allclose(ours[0], reference, rtol=1e-8, atol=1e-12)
    # Per-band parameters broadcast over frames.
    per_band = pcen(torch.from_numpy(energy), s, torch.tensor([0.5, 0.98, 0.8], dtype=torch.float64))
    np.testing.assert_allclose(per_band[:, 0].numpy(), _paper_pcen(energy[:, 0], s, 0.5, 2.0, 0.5, 1e-6))


def test_pcen_removes_most_of_a_level_change_that_db_keeps() -> None:
    rng = np.random.default_rng(1)
    db = torch.from_numpy(rng.normal(-40, 6, size=(1, 16, 87)).astype(np.float32))
    normalizer = PCENNormalizer(16, 22_050 / 1024)
    quiet, loud = normalizer.compress(db), normalizer.compress(db + 20.0)  # +20 dB: 10x the magnitude
    # A stationary background is divided by its own smoothed level: the output moves by a few percent.
    assert float((loud - quiet).abs().mean() / quiet.abs().mean()) < 0.1
    assert float((db + 20.0 - db).abs().mean()) == pytest.approx(20.0)


def test_learnable_pcen_trains_its_parameters_and_fixed_stores_them() -> None:
    learnable, fixed = PCEN(8, 21.5, learnable=True), PCEN(8, 21.5)
    assert {n for n, _ in learnable.named_parameters()} == {"log_s", "log_alpha", "log_delta", "log_r"}
    assert list(fixed.parameters()) == [] and "log_alpha" in fixed.state_dict()
    learnable(torch.rand(2, 8, 30) * 100).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learnable.parameters())
    np.testing.assert_allclose(learnable.log_alpha.exp().detach().numpy(), 0.98, rtol=1e-6)


def test_pcen_statistics_standardise_the_pcen_output_of_the_training_clips() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(-50, 10, size=(10, 16, 40)).astype(np.float32)
    normalizer = PCENNormalizer(16, 22_050 / 1024, db_reference="clip_max")
    mean, std = pcen_band_statistics(normalizer, features, [0, 2, 4, 6], chunk=3)
    normalizer.set_statistics(torch.from_numpy(mean), torch.from_numpy(std))
    out = normalizer(torch.from_numpy(features[[0, 2, 4, 6]]))  # (clips, bands, frames)
    np.testing.assert_allclose(out.mean(dim=(0, 2)).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(dim=(0, 2), unbiased=False).numpy(), 1.0, atol=1e-3)
    # The run's statistics follow the model setting: PCEN's for pcen, dB's otherwise.
    config = apply_recipe(RunConfig(), "default")
    config.features.n_mels = 16
    config.model.pcen = "fixed"
    pcen_stats = normaliser_statistics(config, features, [0, 2, 4, 6])
    config.model.pcen = "off"
    db_stats = normaliser_statistics(config, features, [0, 2, 4, 6])
    assert abs(float(pcen_stats[0].mean()) - float(db_stats[0].mean())) > 1.0


def test_deltas_are_htks_regression_and_channels_stack_in_order() -> None:
    ramp = torch.arange(20.0).repeat(2, 3, 1) * 0.5  # (batch, bands, frames), slope 0.5 per frame
    d = deltas(ramp)
    np.testing.assert_allclose(d[..., 2:-2].numpy(), 0.5, rtol=1e-6)  # interior: the slope
    assert float(d[0, 0, 0]) == pytest.approx((1 * 0.5 + 2 * 1.0) / 10)  # edge frames repeated
    stacked = InputChannels(delta_orders=2, freq_channel=True)(ramp)
    assert stacked.shape == (2, 4, 3, 20)
    torch.testing.assert_close(stacked[:, 0], ramp)
    torch.testing.assert_close(stacked[:, 1], d)
    torch.testing.assert_close(stacked[:, 2], deltas(d))
    np.testing.assert_allclose(stacked[0, 3, :, 5].numpy(), [-1.0, 0.0, 1.0])
    assert InputChannels()(ramp).shape == (2, 1, 3, 20)


def test_extra_channels_reach_the_backbone_and_other_families_refuse_them() -> None:
    model = build_classifier(_spec(deltas=1, freq_channel=True))
    assert model.backbone.stem[0].in_channels == 3
    assert model(torch.randn(2, 88_200) * 0.1).shape == (2, 4)
    spec = _spec(deltas=1)
    spec.model.name, spec.model.kwargs = "cnn", {}
    with pytest.raises(ConfigError, match="in_channels"):
        build_classifier(spec)


def test_settings_are_checked() -> None:
    for field, value, message in [
        ("pcen", "sometimes", "PCEN mode"),
        ("deltas", 3, "deltas"),
        ("crop_seconds", 0.5, "crop_seconds"),
        ("tta_shifts", -1, "tta_shifts"),
    ]:
        config = RunConfig()
        setattr(config.model, field, value)
        with pytest.raises(ConfigError, match=message):
            config.validate()


def test_random_crop_takes_one_contiguous_slice_per_clip_in_training_only() -> None:
    torch.manual_seed(0)
    features = torch.arange(5 * 30, dtype=torch.float32).reshape(5, 1, 30).expand(5, 4, 30).contiguous()
    crop = RandomTimeCrop(6, 12)
    lengths = set()
    for _ in range(30):
        out = crop(features)
        lengths.add(out.shape[-1])
        assert 6 <= out.shape[-1] <= 12
        for clip in range(5):
            start = int(out[clip, 0, 0]) - clip * 30
            torch.testing.assert_close(out[clip], features[clip, :, start : start + out.shape[-1]])
    assert len(lengths) > 3
    assert crop.eval()(features) is features


def test_crop_setting_trains_on_crops_and_predicts_the_mean_over_windows() -> None:
    spec = _spec(crop_seconds=3.0)
    model = build_classifier(spec).eval()
    views = model.views
    assert (views.window_frames, views.hop_frames, views.min_crop_frames) == (65, 11, 22)
    assert views.window_starts(87) == [0, 11, 22]
    features = torch.randn(2, 16, 87)
    with torch.no_grad():
        got = model.classify_normalized(features).softmax(-1)
        windows = [model.backbone(features[..., s : s + 65].unsqueeze(1)).softmax(-1) for s in (0, 11, 22)]
    torch.testing.assert_close(got, torch.stack(windows).mean(0), atol=1e-5, rtol=0)
    # The training wrapper's SpecAugment is followed by the crop; whole clips without the setting.
    wrapped = with_training_crop(torch.nn.Identity(), model)
    assert isinstance(wrapped[1], RandomTimeCrop) and wrapped[1].max_frames == 65
    plain = torch.nn.Identity()
    assert with_training_crop(plain, build_classifier(_spec())) is plain


def test_test_time_shifts_average_the_shifted_clips_in_eval_mode_only() -> None:
    model = build_classifier(_spec(tta_shifts=3))
    assert model.views.shift_frames == (11, -11, 22)
    features = torch.randn(2, 16, 87)
    with torch.no_grad():
        model.eval()
        got = model.classify_normalized(features).softmax(-1)
        shifted = [torch.roll(features, k, dims=-1) for k in (0, 11, -11, 22)]
        expected = torch.stack([model.backbone(x.unsqueeze(1)).softmax(-1) for x in shifted]).mean(0)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        model.train()
        torch.manual_seed(0)
        trained = model.classify_normalized(features)
        torch.manual_seed(0)
        torch.testing.assert_close(trained, model.backbone(features.unsqueeze(1)))


def test_with_every_lever_off_the_classifier_is_unchanged() -> None:
    model = build_classifier(_spec()).eval()
    assert type(model.normalizer) is BandNormalizer
    assert sorted(k.split(".")[0] for k in model.state_dict()) == sorted(
        ["normalizer"] * 2 + ["backbone"] * (len(model.state_dict()) - 2)
    )
    features = torch.randn(3, 16, 87)
    with torch.no_grad():
        torch.testing.assert_close(model.classify_normalized(features), model.backbone(features.unsqueeze(1)))
