"""Tests of the feature functions (filterbanks, spectrograms) and the front-end modules, with librosa as the
reference implementation."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from urbansound.config import FeatureConfig
from urbansound.data.synth import CLASS_NAMES, synthesize_event
from urbansound.errors import ConfigError
from urbansound.features.filterbanks import (
    GAMMATONE_MIN_HZ,
    erb,
    erb_rate_to_hz,
    fft_frequencies,
    gammatone_center_frequencies,
    gammatone_filterbank,
    hz_to_erb_rate,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
)
from urbansound.features.frontend import BandNormalizer, SpectrogramFrontend, relative_to_clip_max
from urbansound.features.spectrogram import gammatonegram, log_mel_spectrogram, power_spectrogram


def events(sample_rate: int, duration: float, seed: int = 0) -> np.ndarray:
    """One clip of each of the first four classes, ``(4, samples)`` float32."""
    rng = np.random.default_rng(seed)
    return np.stack([0.5 * synthesize_event(name, duration, sample_rate, rng) for name in CLASS_NAMES[:4]])


# --- filterbanks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_mels", "f_min", "f_max"),
    [
        (22050, 1024, 64, 0.0, None),
        (44100, 2048, 128, 20.0, 8000.0),
        (16000, 512, 40, 125.0, 7600.0),
        (8000, 256, 32, 0.0, 4000.0),
        (44100, 1024, 64, 0.0, None),
    ],
)
def test_mel_filterbank_matches_librosa(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None
) -> None:
    ours = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
    reference = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=False, norm="slaney"
    )
    assert ours.dtype == np.float32 and ours.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_mel_scale_matches_librosa_and_inverts() -> None:
    freqs = np.array([0.0, 100.0, 999.0, 1000.0, 1001.0, 4000.0, 11025.0, 22050.0])
    np.testing.assert_allclose(hz_to_mel(freqs), librosa.hz_to_mel(freqs, htk=False), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs)), freqs, rtol=1e-9, atol=1e-9)


def test_erb_rate_follows_glasberg_and_moore() -> None:
    freqs = np.geomspace(20.0, 22050.0, 50)
    np.testing.assert_allclose(hz_to_erb_rate(freqs), 21.4 * np.log10(1.0 + 0.00437 * freqs), rtol=1e-3)
    np.testing.assert_allclose(erb_rate_to_hz(hz_to_erb_rate(freqs)), freqs, rtol=1e-9)
    # ERB(f) = 24.7 (4.37 f / 1000 + 1)
    np.testing.assert_allclose(erb(freqs), 24.7 * (4.37 * freqs / 1000.0 + 1.0), rtol=1e-3)


@pytest.mark.parametrize(("n_bands", "f_min", "f_max"), [(64, 50.0, 22050.0), (32, 100.0, 8000.0)])
def test_gammatone_centres_are_erb_spaced(n_bands: int, f_min: float, f_max: float) -> None:
    centres = gammatone_center_frequencies(n_bands, f_min, f_max)
    assert centres.shape == (n_bands,)
    assert centres[0] == pytest.approx(f_min) and centres[-1] == pytest.approx(f_max)
    steps = np.diff(21.4 * np.log10(1.0 + 0.00437 * centres))  # the published ERB-rate formula
    assert np.all(steps > 0)
    np.testing.assert_allclose(steps, steps.mean(), rtol=1e-6)


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_bands", "f_min", "f_max"),
    [(44100, 1024, 64, 0.0, None), (22050, 2048, 64, 0.0, None), (16000, 512, 40, 100.0, 7000.0)],
)
def test_each_gammatone_filter_peaks_at_its_centre(
    sample_rate: int, n_fft: int, n_bands: int, f_min: float, f_max: float | None
) -> None:
    weights = gammatone_filterbank(sample_rate, n_fft, n_bands, f_min, f_max)
    assert weights.dtype == np.float32 and weights.shape == (n_bands, n_fft // 2 + 1)
    top = sample_rate / 2 if f_max is None else f_max
    centres = gammatone_center_frequencies(n_bands, max(f_min, GAMMATONE_MIN_HZ), top)
    bins = fft_frequencies(sample_rate, n_fft)
    nearest = np.abs(bins[None, :] - centres[:, None]).argmin(axis=1)
    np.testing.assert_array_equal(weights.argmax(axis=1), nearest)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)  # unit area
    assert np.all(np.diff(weights.argmax(axis=1)) >= 0)  # ascending


# --- spectrograms -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_fft", "hop_length"), [(1024, 512), (512, 128), (256, 100)])
def test_power_spectrogram_matches_librosa_stft(n_fft: int, hop_length: int) -> None:
    clips = events(22050, 0.5)
    ours = power_spectrogram(torch.from_numpy(clips), n_fft, hop_length).numpy()
    for clip, spec in zip(clips, ours, strict=True):
        reference = (
            np.abs(
                librosa.stft(
                    clip.astype(np.float64),
                    n_fft=n_fft,
                    hop_length=hop_length,
                    window="hann",
                    center=True,
                    pad_mode="constant",
                )
            )
            ** 2
        )
        assert spec.shape == reference.shape
        np.testing.assert_allclose(spec, reference, rtol=1e-3, atol=1e-6 * reference.max())


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "hop_length", "n_mels"), [(22050, 1024, 512, 64), (16000, 512, 160, 40)]
)
def test_log_mel_matches_librosa_per_clip(sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
    clips = events(sample_rate, 1.0)
    clips[1] *= 1e-3  # a quiet clip: its own 80 dB floor, far below the loud clips' floors
    ours = log_mel_spectrogram(
        torch.from_numpy(clips), sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, top_db=80.0
    ).numpy()
    for clip, features in zip(clips, ours, strict=True):
        mel = librosa.feature.melspectrogram(
            y=clip.astype(np.float64),
            sr=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            window="hann",
            center=True,
            pad_mode="constant",
            power=2.0,
            n_mels=n_mels,
            htk=False,
            norm="slaney",
        )
        reference = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)
        assert features.shape == reference.shape
        assert features.max() == pytest.approx(reference.max(), abs=1e-3)
        assert features.min() >= features.max() - 80.0 - 1e-4
        above_floor = reference > reference.max() - 80.0 + 1e-3
        assert above_floor.mean() > 0.2  # most of each clip is compared, not just the floor
        np.testing.assert_allclose(features[above_floor], reference[above_floor], rtol=0, atol=1e-3)
        # Floored cells sit on the clip's own floor in both.
        np.testing.assert_allclose(features[~above_floor], reference.max() - 80.0, rtol=0, atol=2e-3)


def test_log_mel_float64_matches_librosa_closely() -> None:
    clip = events(16000, 0.5)[2].astype(np.float64)
    ours = log_mel_spectrogram(torch.from_numpy(clip[None]), 16000, n_fft=512, hop_length=256, n_mels=32)[0]
    mel = librosa.feature.melspectrogram(
        y=clip, sr=16000, n_fft=512, hop_length=256, n_mels=32, pad_mode="constant", center=True
    )
    reference = librosa.power_to_db(mel, ref=1.0, top_db=80.0)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-6)


def test_top_db_floor_is_per_clip() -> None:
    clips = torch.from_numpy(events(16000, 0.5))
    quiet = clips[0:1] * 1e-4
    loud = clips[1:2] * 10.0
    alone = log_mel_spectrogram(quiet, 16000, n_fft=512, hop_length=256, n_mels=32)
    batched = log_mel_spectrogram(torch.cat([loud, quiet]), 16000, n_fft=512, hop_length=256, n_mels=32)
    # The quiet clip lies entirely below the loud clip's floor, so a batch-wide floor would flatten it.
    assert alone.max() < batched[0].max() - 80.0
    torch.testing.assert_close(batched[1:2], alone, rtol=0, atol=1e-4)


def test_top_db_none_keeps_everything_down_to_amin() -> None:
    wave = torch.zeros(1, 4000)
    wave[0, :100] = 0.5
    features = log_mel_spectrogram(wave, 8000, n_fft=256, hop_length=128, n_mels=16, top_db=None)
    assert features.min().item() == pytest.approx(-100.0)  # 10 log10(1e-10), the silence at the end
    assert features.max().item() > -30.0


@pytest.mark.parametrize("n_samples", [16000, 16001, 15999, 1000, 257])
def test_shape_is_batch_bands_frames(n_samples: int) -> None:
    wave = torch.randn(3, n_samples) * 0.1
    hop = 160
    expected = (3, 64, 1 + n_samples // hop)
    assert log_mel_spectrogram(wave, 16000, n_fft=512, hop_length=hop, n_mels=64).shape == expected
    assert gammatonegram(wave, 16000, n_fft=512, hop_length=hop, n_bands=64).shape == expected


def test_log_mel_docstring_example_shape() -> None:
    assert log_mel_spectrogram(torch.zeros(2, 44100), 44100).shape == (2, 64, 87)


# --- modules ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mel_spec", "gammatone"])
def test_frontend_matches_the_functions_and_finds_a_1khz_tone(kind: str) -> None:
    sample_rate, n_samples = 16000, 8000
    config = FeatureConfig(kind=kind, n_fft=512, hop_length=256, n_mels=40)
    frontend = SpectrogramFrontend(config, sample_rate)
    t = torch.arange(n_samples, dtype=torch.float32) / sample_rate
    tone = 0.5 * torch.sin(2 * torch.pi * 1000.0 * t)[None]
    noise = torch.from_numpy(events(sample_rate, 0.5)[:2])
    batch = torch.cat([tone, noise])
    out = frontend(batch)
    assert out.shape == (3, 40, frontend.n_frames(n_samples)) == (3, 40, 1 + n_samples // 256)
    function = log_mel_spectrogram if kind == "mel_spec" else gammatonegram
    expected = function(batch, sample_rate, 512, 256, 40, 0.0, None, 80.0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    # The loudest band of the tone is the one whose filter weighs 1 kHz most.
    weights = frontend.filterbank.numpy()
    bin_1k = round(1000.0 * 512 / sample_rate)
    assert out[0].mean(dim=1).argmax().item() == int(weights[:, bin_1k].argmax())


def test_frontend_kinds_differ_and_reject_unknown_kind() -> None:
    wave = torch.from_numpy(events(16000, 0.5)[:1])
    mel = SpectrogramFrontend(FeatureConfig(kind="mel_spec", n_fft=512, hop_length=256, n_mels=32), 16000)
    gamma = SpectrogramFrontend(FeatureConfig(kind="gammatone", n_fft=512, hop_length=256, n_mels=32), 16000)
    assert not torch.allclose(mel(wave), gamma(wave), atol=1.0)
    with pytest.raises(ConfigError):
        SpectrogramFrontend(FeatureConfig(kind="mfcc"), 16000)
    with pytest.raises(ConfigError):
        SpectrogramFrontend(FeatureConfig(f_max=9000.0), 16000)  # above Nyquist


def _features(seed: int) -> torch.Tensor:
    frontend = SpectrogramFrontend(FeatureConfig(n_fft=256, hop_length=128, n_mels=16), 8000)
    return frontend(torch.from_numpy(events(8000, 0.5, seed)))  # (4, 16, 32)


def test_band_normalizer_standardises_the_data_its_statistics_came_from() -> None:
    features = _features(0)
    mean = features.mean(dim=(0, 2))
    std = features.std(dim=(0, 2), unbiased=False)
    normalizer = BandNormalizer(16)
    normalizer.set_statistics(mean, std)
    out = normalizer(features)
    torch.testing.assert_close(out.mean(dim=(0, 2)), torch.zeros(16), rtol=0, atol=1e-4)
    torch.testing.assert_close(out.std(dim=(0, 2), unbiased=False), torch.ones(16), rtol=0, atol=1e-4)
    assert set(normalizer.state_dict()) == {"mean", "std"}  # stored with the model


def test_band_normalizer_output_does_not_depend_on_the_batch() -> None:
    features, others = _features(0), _features(1) + 30.0
    normalizer = BandNormalizer(16)
    normalizer.set_statistics(features.mean(dim=(0, 2)), features.std(dim=(0, 2)))
    for mode in (normalizer.train, normalizer.eval):
        mode()
        alone = normalizer(features[:1])
        torch.testing.assert_close(normalizer(torch.cat([features[:1], others]))[:1], alone)
        torch.testing.assert_close(normalizer(features)[:1], alone)


def test_band_normalizer_survives_a_silent_band() -> None:
    normalizer = BandNormalizer(2)
    normalizer.set_statistics(torch.tensor([-100.0, 0.0]), torch.tensor([0.0, 2.0]))
    out = normalizer(torch.full((1, 2, 3), -100.0))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 1], torch.full((3,), -50.0))


def test_clip_max_reference_removes_the_recording_level() -> None:
    features = _features(0)
    louder = features + 12.0  # the same clips recorded 12 dB hotter: every dB cell moves by 12
    relative = BandNormalizer(16, db_reference="clip_max")
    absolute = BandNormalizer(16)
    for normalizer in (relative, absolute):
        normalizer.set_statistics(features.mean(dim=(0, 2)), features.std(dim=(0, 2)))
    torch.testing.assert_close(relative(louder), relative(features))
    assert not torch.allclose(absolute(louder), absolute(features), atol=0.3)  # ~0.6 std apart
    # Each clip's loudest cell sits at 0 dB before standardisation.
    shifted = relative_to_clip_max(louder)
    torch.testing.assert_close(shifted.amax(dim=(1, 2)), torch.zeros(4))
    # Clips are referenced to their own maximum, not the batch's.
    torch.testing.assert_close(relative_to_clip_max(torch.cat([features[:1], louder[1:]]))[:1], shifted[:1])


def test_unknown_db_reference_is_refused() -> None:
    with pytest.raises(ConfigError, match="dB reference"):
        FeatureConfig(db_reference="peak").validate(16_000)
