"""Batched torch time stretch, pitch shift and resampling against librosa 0.11 and analytic signals.

The test signal is a linear chirp, a harmonic tone, a decaying noise burst and a noise floor at -60 dB. The
floor matters for the float32 comparisons: in a bin whose content is below float32 rounding (~-140 dB),
the phase is rounding noise, and the phase vocoder carries that phase into every later frame, so two
float32 implementations (or librosa in float32 vs float64) disagree arbitrarily there; recordings always
have such a floor.
"""

from __future__ import annotations

import math
import warnings

import librosa
import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from urbansound.features.stretch import phase_vocoder, pitch_shift, resample, time_stretch

SR = 22050
RATES = [0.81, 1.23]
SEMITONES = [-3.5, 2.5]


def _signal(seconds: float = 4.0, seed: int = 0, f0: float = 220.0, f_end: float = 6000.0) -> np.ndarray:
    """float64 ``(samples,)`` at SR: chirp 100 Hz -> ``f_end``, harmonic tone on ``f0``, a noise burst from
    3/8 of the clip decaying with 0.3 s time constant, and a -60 dB noise floor."""
    n = round(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + (f_end - 100) / (2 * seconds) * t**2))
    tone = sum(0.15 / h * np.sin(2 * np.pi * f0 * h * t) for h in range(1, 6))
    onset = int(0.375 * n)
    burst = np.zeros(n)
    burst[onset:] = 0.5 * rng.standard_normal(n - onset) * np.exp(-(t[onset:] - t[onset]) / 0.3)
    return chirp + tone + burst + 1e-3 * rng.standard_normal(n)


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Energy of ``reference`` over energy of the difference, in dB."""
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2)))


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return _signal()


def _torch(y: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(y, dtype=dtype).unsqueeze(0)  # (1, samples)


def test_phase_vocoder_matches_librosa() -> None:
    rng = np.random.default_rng(1)
    spec = rng.standard_normal((1025, 40)) + 1j * rng.standard_normal((1025, 40))
    for rate in [*RATES, 1.0, 2.0]:
        expected = librosa.phase_vocoder(spec, rate=rate, hop_length=512)
        got = phase_vocoder(torch.from_numpy(spec).unsqueeze(0), rate, hop_length=512)[0].numpy()
        assert got.shape == expected.shape
        # Same algorithm in float64: measured max |diff| 1.0e-10 over these rates (|spec| up to ~5); the rest
        # is summation order (a cumulative sum instead of a loop). Bound 1e-8.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("rate", RATES)
def test_time_stretch_matches_librosa(clip: np.ndarray, rate: float) -> None:
    expected = librosa.effects.time_stretch(clip, rate=rate)
    peak = np.abs(clip).max()

    # float64 against librosa in float64: the same algorithm, so equal to rounding. Measured max |diff| /
    # peak 1.8e-11 (rate 0.81) and 5.6e-12 (1.23); bound 1e-9.
    got64 = time_stretch(_torch(clip, torch.float64), rate)[0].numpy()
    assert got64.shape == expected.shape == (round(len(clip) / rate),)
    assert np.abs(got64 - expected).max() / peak < 1e-9

    # float32 (how the cache calls it) against librosa in float64: measured max |diff| / peak 1.9e-4 and
    # 1.4e-4 (SNR 71-73 dB); bound 1e-3. Our phase sum is exact in float32 too (see phase_vocoder).
    got32 = time_stretch(_torch(clip), rate)[0].numpy()
    assert got32.shape == expected.shape
    assert np.abs(got32 - expected).max() / peak < 1e-3

    # Against librosa in float32 the gap is librosa's own float32 phase accumulator (it rounds a running
    # sum of ~1e5 rad every frame): librosa float32 vs float64 is 37.3 dB (0.81) and 43.8 dB (1.23), and
    # ours vs librosa float32 the same to 0.1 dB. Bound 30 dB.
    expected32 = librosa.effects.time_stretch(clip.astype(np.float32), rate=rate)
    assert got32.shape == expected32.shape
    assert _snr_db(expected32, got32) > 30.0


def test_time_stretch_matches_librosa_on_short_and_odd_lengths() -> None:
    # Clips shorter than n_fft, odd lengths and extreme rates exercise the padding, the frame count and the
    # inverse STFT's cut or zero tail; float64, so the bound is rounding (measured max 5e-12; bound 1e-9).
    rng = np.random.default_rng(2)
    for n in [700, 2047, 5001]:
        y = rng.standard_normal(n)
        for rate in [0.5, 1.0, 1.23, 3.7]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # librosa: "n_fft=2048 is too large for input"
                expected = librosa.effects.time_stretch(y, rate=rate)
            got = time_stretch(torch.from_numpy(y), rate).numpy()  # (samples,): any leading shape works
            assert got.shape == expected.shape, (n, rate)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9, err_msg=f"n={n} rate={rate}")


@pytest.mark.parametrize("n_steps", SEMITONES)
def test_pitch_shift_matches_librosa(clip: np.ndarray, n_steps: float) -> None:
    y = clip.astype(np.float32)
    expected = librosa.effects.pitch_shift(y, sr=SR, n_steps=n_steps)
    got = pitch_shift(_torch(y), SR, n_steps)[0].numpy()
    assert got.shape == expected.shape == y.shape
    # The stretch is the same; the resampler differs (soxr HQ vs our Kaiser sinc), almost only in the top
    # ~10 % below the lower Nyquist frequency, where the noise burst has energy. Measured SNR over the
    # whole clip (ends included) 37.3 dB (-3.5 semitones) and 35.8 dB (+2.5; 39.5 dB against librosa in
    # float64, see the time-stretch test for why). Bound 30 dB.
    assert _snr_db(expected, got) > 30.0


def test_resample_keeps_a_sine_and_has_librosas_length() -> None:
    target = SR * 2 ** (3 / 12)  # 26,222.0169... Hz: not a ratio of small integers
    n = 4 * SR
    x = np.sin(2 * np.pi * 1000 * np.arange(n) / SR)
    y = resample(_torch(x), SR, target)[0].double().numpy()
    # Length ceil(samples * target / orig), librosa.resample's (soxr's own output is cut or padded to it).
    assert len(y) == math.ceil(n * (target / SR)) == len(librosa.resample(x, orig_sr=SR, target_sr=target))
    # Output sample j is the input at time j / target: still sin(2 pi 1000 t). In the interior (10 ms away
    # from the ends, where the filter reaches past the clip) measured max error 1.4e-4 in float32; bound 1e-3.
    expected = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / target)
    margin = round(0.01 * target)
    assert np.abs(y - expected)[margin:-margin].max() < 1e-3


def test_resample_passband_and_antialiasing() -> None:
    # Downsampling to 16,000.5 Hz (Nyquist 8,000 Hz): a 7 kHz tone (0.875 Nyquist) passes at unit gain
    # (measured -0.005 dB), a 9 kHz tone, which would alias to 7 kHz, is removed (measured -77.6 dB).
    target, n = 16000.5, SR

    def gain_db(freq: float) -> float:
        x = np.sin(2 * np.pi * freq * np.arange(n) / SR)
        y = resample(_torch(x), SR, target)[0].double().numpy()[500:-500]
        return float(20 * np.log10(np.sqrt(np.mean(y**2) / 0.5)))

    assert abs(gain_db(7000.0)) < 0.05
    assert gain_db(9000.0) < -60.0


def test_batched_equals_per_clip() -> None:
    clips = [
        _signal(1.0, seed=s, f0=f0, f_end=f1) for s, f0, f1 in [(3, 110, 3000), (4, 330, 9000), (5, 97, 500)]
    ]
    batch = torch.tensor(np.stack(clips), dtype=torch.float32)  # (3, samples), 1 s each
    for transform in [
        lambda x: time_stretch(x, 1.23),
        lambda x: time_stretch(x, 0.81),
        lambda x: pitch_shift(x, SR, -3.5),
        lambda x: resample(x, SR, SR / 2 ** (2.5 / 12)),
    ]:
        together = transform(batch)
        for i in range(len(clips)):
            torch.testing.assert_close(together[i : i + 1], transform(batch[i : i + 1]), rtol=0, atol=1e-5)
        # Any leading shape: a single (samples,) clip gives the same.
        torch.testing.assert_close(together[0], transform(batch[0]), rtol=0, atol=1e-5)


def test_outputs_stay_on_the_input_device() -> None:
    # Fake tensors on "cuda" need no GPU (a CPU-only build allows them in FakeTensorMode): every tensor the
    # functions create must follow the input's device, or the fake-mode run fails or returns a CPU tensor.
    with FakeTensorMode():
        x = torch.zeros(2, 88200, device="cuda")
        outputs = {
            "time_stretch": (time_stretch(x, 1.23), (2, 71707)),
            "pitch_shift": (pitch_shift(x, SR, -3.5), (2, 88200)),
            "resample": (resample(x, SR, SR * 2 ** (3 / 12)), (2, 104889)),
        }
        for name, (y, shape) in outputs.items():
            assert y.device.type == "cuda", name
            assert tuple(y.shape) == shape, name
            assert y.dtype == torch.float32, name


def test_rejects_bad_rates() -> None:
    x = torch.zeros(1, 1000)
    with pytest.raises(ValueError):
        time_stretch(x, 0.0)
    with pytest.raises(ValueError):
        resample(x, -1.0, SR)
