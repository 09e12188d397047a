"""Synthetic stand-in for UrbanSound8K, written in the dataset's exact on-disk layout.

The demo and the test suite never touch real audio; they run on what this module writes::

    dest/UrbanSound8K/audio/fold1/ ... fold{n_folds}/{fsID}-{classID}-{occurrenceID}-{sliceID}.wav
    dest/UrbanSound8K/metadata/UrbanSound8K.csv

The dataset mimics the properties of the real one that a loader, a fold split and a classifier must cope with:

* ten classes whose sounds differ the way the real ones do (a low harmonic rumble for an idling engine, a
  high whine for a drill, an impulsive burst for a gun shot, a sweeping tone for a siren, ...), with every
  recording's pitch, rates, levels and background noise randomised, so the task is learnable but not trivial;
* several recordings (one ``fsID`` each) per class, each cut into overlapping slices that share the fsID and
  the fold, so that only a fold-respecting split measures generalisation;
* the real files' format variety: sample rates from 8 kHz to 96 kHz, mono and stereo, 8-bit unsigned, 16-,
  24- and 32-bit integer and 32-bit float samples, 24-bit WAVE_FORMAT_EXTENSIBLE headers, and clips far
  shorter than 4 s (down to 0.05 s).

Units throughout: durations and times in seconds, frequencies in Hz, sample rates in samples per second,
levels as linear amplitude (full scale = 1.0) unless a name ends in ``_db``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from urbansound.errors import ConfigError

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)  # classID = index, as in the official metadata

METADATA_COLUMNS: tuple[str, ...] = (
    "slice_file_name",
    "fsID",
    "start",
    "end",
    "salience",
    "fold",
    "classID",
    "class",
)

# Official slice length and the hop between consecutive slices of one recording (seconds). A hop shorter than
# the slice makes consecutive slices overlap, as in the real dataset.
CLIP_SECONDS = 4.0
DEFAULT_HOP_SECONDS = 2.0

# Format variety of the real dataset. Each recording gets one entry of each list (all slices of a recording
# share its format, as slices of one real source file do); the lists are dealt out over the recordings by a
# seeded permutation, so every value occurs once there are at least as many recordings as list entries.
SAMPLE_RATES: tuple[int, ...] = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000)
# (soundfile container format, subtype). "WAVEX" makes libsndfile write a WAVE_FORMAT_EXTENSIBLE (0xFFFE)
# header, which many real 24-bit clips have and Python's `wave` module rejects. PCM_16 is listed twice
# because it is by far the most common subtype in the real dataset.
FILE_FORMATS: tuple[tuple[str, str], ...] = (
    ("WAV", "PCM_U8"),
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAVEX", "PCM_24"),
    ("WAV", "PCM_32"),
    ("WAV", "FLOAT"),
    ("WAV", "PCM_16"),
)
CHANNEL_COUNTS: tuple[int, ...] = (1, 2)

# Classes whose events are intermittent: their recordings are rendered as one event per slice start, so every
# overlapping slice (not only the first) actually contains the sound it is labelled with. Their recordings
# may also be short, giving clips shorter than 4 s, as real gun shots, barks and honks often are.
_INTERMITTENT = frozenset({"car_horn", "dog_bark", "gun_shot"})
# Probability that a recording of an intermittent class is short (slices < 4 s) when vary_formats=True;
# overall about 13 % of the clips, close to the real dataset's 16 %.
_SHORT_PROBABILITY = {"gun_shot": 0.6, "dog_bark": 0.4, "car_horn": 0.3}
MIN_CLIP_SECONDS = 0.05

# Highest partial kept, as a fraction of the sample rate: partials above Nyquist would alias into
# audible garbage at the low sample rates (8 kHz).
_MAX_PARTIAL_FRACTION = 0.45


# --------------------------------------------------------------------------------------------------------
# Signal building blocks (all vectorised over samples; loops only run over partials, voices or events)
# --------------------------------------------------------------------------------------------------------


def _times(n: int, sample_rate: int) -> np.ndarray:
    """Sample times in seconds, float64 to keep phases exact over long recordings."""
    return np.arange(n, dtype=np.float64) / sample_rate


def _harmonic_tone(
    f0: float | np.ndarray,
    amplitudes: np.ndarray,
    n: int,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sum of partials k * f0 (k = 1..len(amplitudes)) with the given amplitudes.

    ``f0`` (Hz) is a scalar or a per-sample track; the phase integrates it, so glides and vibrato stay
    continuous. Partials are muted wherever they would exceed 0.45 * sample_rate (anti-aliasing).
    """
    f0_track = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    limit = _MAX_PARTIAL_FRACTION * sample_rate
    f_min, f_max = float(f0_track.min()), float(f0_track.max())
    # Phase in cycles, integrated in float64 (exact over long recordings), from a random start; the partials'
    # phases follow from it (k * phase), which the ear cannot tell from independent ones in a steady tone.
    cycles = np.cumsum(f0_track)
    cycles *= 1.0 / sample_rate
    cycles += rng.random()
    # Wrapped to whole cycles, the phase fits float32 to ~1e-6 rad. float32 from here on: half the memory
    # traffic, SIMD sin/cos, and an error (~1e-5 after 20 partials) far below audibility.
    cycles -= np.floor(cycles)
    phase = cycles.astype(np.float32)
    phase *= np.float32(2.0 * np.pi)
    # sin(k x) by the Chebyshev recurrence sin(k x) = 2 cos(x) sin((k-1) x) - sin((k-2) x): a few in-place
    # multiply-adds per partial instead of one np.sin each, which made synthesis several times faster.
    two_cos = np.cos(phase)
    two_cos *= 2.0
    current = np.sin(phase)
    previous, scratch, out, term = (np.zeros(n, dtype=np.float32) for _ in range(4))
    for k, amplitude in enumerate(amplitudes, start=1):
        if k * f_min >= limit:
            break
        if k > 1:
            np.multiply(two_cos, current, out=scratch)
            scratch -= previous
            previous, current, scratch = current, scratch, previous
        if amplitude == 0.0:
            continue
        if k * f_max >= limit:  # only part of a sweep is above the limit: mute just that part
            out += amplitude * current * (k * f0_track < limit)
        else:
            np.multiply(current, np.float32(amplitude), out=term)
            out += term
    return out


def _slow_random(n: int, sample_rate: int, rng: np.random.Generator, knot_seconds: float) -> np.ndarray:
    """Smooth random control signal in [-1, 1] (drift, jitter): linear between knots ``knot_seconds`` apart.

    Far cheaper than low-pass filtering full-rate noise, and just as good for sub-audio modulation.
    """
    knots = np.arange(0.0, n / sample_rate + 2.0 * knot_seconds, knot_seconds)
    return _envelope(n, sample_rate, knots, rng.uniform(-1.0, 1.0, knots.size))


def _fast_length(n: int) -> int:
    """Smallest 2**a * 3**b * 5**c >= n: FFTs of such lengths are fast, those of large primes are not."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < n:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _shaped_noise(
    n: int,
    sample_rate: int,
    rng: np.random.Generator,
    exponent: float = 0.0,
    low: float = 0.0,
    high: float | None = None,
    hiss: float = 0.0,
) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1 / f**exponent, band-limited to [low, high] Hz, unit RMS.

    exponent 0 is white, 1 pink, 2 brown. ``hiss`` adds a white floor over the whole band at that RMS
    relative to the shaped part. Shaping is done in the frequency domain: one inverse FFT is far faster
    than any recursive filter in pure numpy.
    """
    if n < 2:
        return np.zeros(n)
    length = _fast_length(n)
    n_bins = length // 2 + 1
    # Random-phase noise: a spectrum of unit magnitudes and uniform random phases, drawn directly (no forward
    # FFT). Its samples are near-Gaussian anyway (each is a sum of many bins), and uniform draws cost a fifth
    # of Gaussian ones. float32 / complex64 halves the FFT's work and is plenty for noise.
    angle = rng.random(n_bins, dtype=np.float32)
    angle *= np.float32(2.0 * np.pi)
    freqs = np.arange(n_bins, dtype=np.float32) * np.float32(sample_rate / length)
    # Floor at 20 Hz so that the 1/f shape does not blow up the DC bin.
    if exponent != 0.0:
        gain = np.maximum(freqs, np.float32(20.0)) ** np.float32(-exponent / 2.0)
    else:
        gain = np.ones(n_bins, dtype=np.float32)
    gain[freqs < low] = 0.0
    if high is not None:
        gain[freqs > high] = 0.0
    if hiss > 0.0:
        gain = gain / np.float32(max(float(np.sqrt(np.mean(gain**2))), 1e-12)) + np.float32(hiss)
    spectrum = np.empty(n_bins, dtype=np.complex64)
    spectrum.real = np.cos(angle) * gain
    spectrum.imag = np.sin(angle) * gain
    shaped = np.fft.irfft(spectrum, n=length)[:n]
    rms = float(np.sqrt(np.mean(shaped**2)))
    return shaped / rms if rms > 0.0 else shaped


def _envelope(n: int, sample_rate: int, knot_times: np.ndarray, knot_values: np.ndarray) -> np.ndarray:
    """Piecewise-linear control signal through (time in s, value) knots: gates with ramps, pitch contours."""
    return np.interp(_times(n, sample_rate), knot_times, knot_values)


def _gate(n: int, sample_rate: int, segments: list[tuple[float, float]], ramp: float) -> np.ndarray:
    """0/1 gate that is on during each (start, end) segment (s), with linear ramps of ``ramp`` s.

    The ramps avoid clicks, whose broadband energy would blur the classes' spectra.
    """
    gate = np.zeros(n)
    t = _times(n, sample_rate)
    for start, end in segments:
        rise = np.clip((t - start) / ramp, 0.0, 1.0)
        fall = np.clip((end - t) / ramp, 0.0, 1.0)
        gate = np.maximum(gate, np.minimum(rise, fall))
    return gate


def _power_law(n_partials: int, slope: float) -> np.ndarray:
    """Partial amplitudes k**-slope: a larger slope is a duller (less bright) timbre."""
    return np.arange(1, n_partials + 1, dtype=np.float64) ** -slope


def _midi_to_hz(note: np.ndarray | float) -> np.ndarray:
    """Equal-tempered frequency (Hz) of a MIDI note number (69 = A4 = 440 Hz)."""
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69.0) / 12.0)


# --------------------------------------------------------------------------------------------------------
# The ten classes. Each has a parameter draw (what stays fixed for one recording: the dog's pitch, the
# engine's idle speed) and a renderer (n samples of the sound, with fresh per-render randomness).
# --------------------------------------------------------------------------------------------------------

Params = dict[str, Any]


def _air_conditioner_params(rng: np.random.Generator) -> Params:
    return {
        "hum_f0": rng.uniform(45.0, 125.0),  # motor / mains hum
        "hum_partials": int(rng.integers(3, 9)),
        "hum_level": rng.uniform(0.15, 0.6),
        "noise_exponent": rng.uniform(0.3, 1.5),  # airflow: between white and brownish
        "noise_low": rng.uniform(40.0, 200.0),
        "noise_high": rng.uniform(1500.0, 6000.0),
        "flutter_rate": rng.uniform(0.2, 2.0),  # slow fan-blade level flutter
        "flutter_depth": rng.uniform(0.0, 0.06),
    }


def _air_conditioner(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    # Steady: no onsets, energy spread over a broad band, a weak hum underneath.
    noise = _shaped_noise(n, sr, rng, p["noise_exponent"], p["noise_low"], min(p["noise_high"], 0.45 * sr))
    hum = _harmonic_tone(p["hum_f0"], _power_law(p["hum_partials"], 1.0), n, sr, rng)
    hum /= max(float(np.sqrt(np.mean(hum**2))), 1e-12)
    flutter = 1.0 + p["flutter_depth"] * np.sin(
        2.0 * np.pi * p["flutter_rate"] * _times(n, sr) + rng.uniform(0, 2 * np.pi)
    )
    return (noise + p["hum_level"] * hum) * flutter


def _car_horn_params(rng: np.random.Generator) -> Params:
    return {
        "f0": rng.uniform(380.0, 520.0),
        # Many cars have two horns a major third apart; the beat between them is part of the timbre.
        "second_ratio": rng.uniform(1.2, 1.3) if rng.random() < 0.5 else None,
        "slope": rng.uniform(0.6, 1.3),  # horns are bright, nearly square-wave
        "drive": rng.uniform(1.0, 4.0),  # soft clipping of the diaphragm
        "honk_seconds": rng.uniform(0.3, 2.5),
    }


def _car_horn(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    duration = n / sr
    # First honk near the start (so a short slice still holds it), then maybe more after gaps.
    segments = []
    start = rng.uniform(0.0, 0.05) * min(1.0, duration)
    while start < duration:
        length = p["honk_seconds"] * rng.uniform(0.7, 1.3)
        segments.append((start, start + length))
        if rng.random() < 0.5:
            break
        start += length + rng.uniform(0.1, 0.8)
    f0 = p["f0"] * (1.0 + 0.004 * np.sin(2 * np.pi * rng.uniform(3, 7) * _times(n, sr)))
    tone = _harmonic_tone(f0, _power_law(12, p["slope"]), n, sr, rng)
    if p["second_ratio"] is not None:
        tone += _harmonic_tone(f0 * p["second_ratio"], _power_law(12, p["slope"]), n, sr, rng)
    tone = np.tanh(p["drive"] * tone / max(float(np.abs(tone).max()), 1e-12))
    return tone * _gate(n, sr, segments, ramp=0.01)


def _children_playing_params(rng: np.random.Generator) -> Params:
    return {
        "voices": int(rng.integers(3, 7)),
        "pitch_low": rng.uniform(220.0, 300.0),  # children's voices: roughly 250-450 Hz, higher when shouting
        "pitch_high": rng.uniform(380.0, 600.0),
        "syllable_rate": rng.uniform(3.0, 7.0),  # syllables per second
        "activity": rng.uniform(0.4, 0.8),  # probability a voice is sounding at a given syllable
        "breath_level": rng.uniform(0.05, 0.3),
    }


def _children_playing(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    duration = n / sr
    t = _times(n, sr)
    out = np.zeros(n)
    active_total = np.zeros(n)
    for _ in range(p["voices"]):
        # Knots one syllable apart: pitch jumps/glides between them, the gate switches voices on and off.
        step = 1.0 / (p["syllable_rate"] * rng.uniform(0.7, 1.3))
        knots = np.arange(-step * rng.random(), duration + 2 * step, step)
        pitch = np.interp(t, knots, rng.uniform(p["pitch_low"], p["pitch_high"], knots.size))
        pitch *= 1.0 + 0.02 * np.sin(2 * np.pi * rng.uniform(4.0, 7.0) * t)  # vibrato
        gate = np.interp(t, knots, (rng.random(knots.size) < p["activity"]).astype(np.float64))
        # Random emphasis of partials 2-4 stands in for vowel formants.
        amplitudes = _power_law(6, 1.0) * (1.0 + rng.uniform(0.0, 1.5, 6) * (np.arange(6) % 3 == 1))
        out += rng.uniform(0.4, 1.0) * gate * _harmonic_tone(pitch, amplitudes, n, sr, rng)
        active_total += gate
    breath = _shaped_noise(n, sr, rng, 0.5, 800.0, min(5000.0, 0.45 * sr))
    return out + p["breath_level"] * breath * np.minimum(active_total, 1.0)


def _dog_bark_params(rng: np.random.Generator) -> Params:
    return {
        "f0": rng.uniform(250.0, 750.0),  # small dogs bark higher
        "glide": rng.uniform(-0.35, -0.05),  # barks fall in pitch
        "bark_seconds": rng.uniform(0.08, 0.25),
        "decay_tau": rng.uniform(0.03, 0.09),
        "noise_mix": rng.uniform(0.2, 0.7),  # barks are rough, partly noisy
        "slope": rng.uniform(0.7, 1.4),
        "interval": rng.uniform(0.25, 0.8),  # time between barks of a series
    }


def _dog_bark(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    duration = n / sr
    out = np.zeros(n)
    onset = rng.uniform(0.0, 0.03) * min(1.0, duration)
    while onset < duration:
        start = int(onset * sr)
        length = min(n - start, max(1, int(p["bark_seconds"] * rng.uniform(0.8, 1.2) * sr)))
        t = _times(length, sr)
        f0 = p["f0"] * rng.uniform(0.9, 1.1) * (1.0 + p["glide"] * t / max(t[-1], 1e-9))
        tone = _harmonic_tone(f0, _power_law(10, p["slope"]), length, sr, rng)
        tone /= max(float(np.abs(tone).max()), 1e-12)
        noise = _shaped_noise(length, sr, rng, 0.5, 300.0, min(4000.0, 0.45 * sr)) / 3.0
        # 5 ms attack, then exponential decay: the bark's percussive shape.
        env = np.minimum(t / 0.005, 1.0) * np.exp(-t / p["decay_tau"])
        out[start : start + length] += ((1.0 - p["noise_mix"]) * tone + p["noise_mix"] * noise) * env
        if rng.random() < 0.3:  # a series of barks ends at random
            break
        onset += p["interval"] * rng.uniform(0.7, 1.3)
    return out


def _drilling_params(rng: np.random.Generator) -> Params:
    return {
        "f0": rng.uniform(400.0, 1200.0),  # motor whine
        "slope": rng.uniform(0.4, 1.0),  # strong upper partials: a shrill sound
        "vibrato_rate": rng.uniform(4.0, 12.0),
        "vibrato_depth": rng.uniform(0.004, 0.03),  # slight modulation of the whine
        "am_rate": rng.uniform(5.0, 30.0),  # chatter of the bit
        "am_depth": rng.uniform(0.05, 0.3),
        "load_drift": rng.uniform(0.0, 0.08),  # speed sags under load
        "noise_level": rng.uniform(0.1, 0.5),
    }


def _drilling(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    drift = 1.0 - p["load_drift"] * 0.5 * (1.0 - np.cos(2 * np.pi * t / rng.uniform(2.0, 6.0)))
    vibrato = 1.0 + p["vibrato_depth"] * np.sin(2 * np.pi * p["vibrato_rate"] * t)
    whine = _harmonic_tone(p["f0"] * drift * vibrato, _power_law(8, p["slope"]), n, sr, rng)
    whine /= max(float(np.sqrt(np.mean(whine**2))), 1e-12)
    hiss = _shaped_noise(n, sr, rng, 0.0, min(2000.0, 0.3 * sr), 0.45 * sr)
    am = 1.0 + p["am_depth"] * np.sin(2 * np.pi * p["am_rate"] * t)
    return (whine + p["noise_level"] * hiss) * am


def _engine_idling_params(rng: np.random.Generator) -> Params:
    return {
        "f0": rng.uniform(30.0, 80.0),  # firing frequency at idle
        "slope": rng.uniform(0.8, 1.4),
        "am_rate": rng.uniform(2.0, 12.0),  # the periodic "putt-putt" of an idling engine
        "am_depth": rng.uniform(0.2, 0.6),
        "rumble_level": rng.uniform(0.2, 0.7),
        "jitter": rng.uniform(0.003, 0.015),  # idle speed is never quite steady
    }


def _engine_idling(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    jitter = 1.0 + p["jitter"] * _slow_random(n, sr, rng, 0.2)
    n_partials = max(1, min(20, int(1500.0 / p["f0"])))  # energy stays below ~1.5 kHz: a low rumble
    tone = _harmonic_tone(p["f0"] * jitter, _power_law(n_partials, p["slope"]), n, sr, rng)
    tone /= max(float(np.sqrt(np.mean(tone**2))), 1e-12)
    rumble = _shaped_noise(n, sr, rng, 2.0, 20.0, min(800.0, 0.45 * sr))
    am = 1.0 + p["am_depth"] * np.sin(2 * np.pi * p["am_rate"] * t + rng.uniform(0, 2 * np.pi))
    return (tone + p["rumble_level"] * rumble) * am


def _gun_shot_params(rng: np.random.Generator) -> Params:
    return {
        "decay_tau": rng.uniform(0.01, 0.05),  # the blast itself: a few tens of ms
        "tail_tau": rng.uniform(0.08, 0.35),  # reverberation / echo tail
        "tail_level": rng.uniform(0.03, 0.2),
        "brightness": rng.uniform(0.0, 1.0),  # noise spectrum exponent: 0 = white crack
        "thump_hz": rng.uniform(50.0, 150.0),
        "thump_level": rng.uniform(0.1, 0.5),
        "tail_high": rng.uniform(1000.0, 3000.0),
    }


def _gun_shot(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    # One impulse at (almost) the very start: a clip of a gun shot is cut around the shot.
    onset = rng.uniform(0.0, 0.005) * min(1.0, n / sr)
    local = np.maximum(t - onset, 0.0)
    started = t >= onset
    attack = np.minimum(local / 0.0005, 1.0)  # 0.5 ms rise: essentially a step
    blast = _shaped_noise(n, sr, rng, p["brightness"]) * attack * np.exp(-local / p["decay_tau"])
    tail = _shaped_noise(n, sr, rng, 1.0, 50.0, min(p["tail_high"], 0.45 * sr))
    tail *= p["tail_level"] * np.exp(-local / p["tail_tau"])
    thump = p["thump_level"] * np.sin(2 * np.pi * p["thump_hz"] * local) * np.exp(-local / 0.04) * attack
    return (blast + tail + thump) * started


def _jackhammer_params(rng: np.random.Generator) -> Params:
    return {
        "rate": rng.uniform(10.0, 20.0),  # blows per second
        "pulse_tau": rng.uniform(0.004, 0.015),
        "resonance_hz": rng.uniform(100.0, 400.0),  # ringing of the steel / pavement
        "resonance_level": rng.uniform(0.2, 0.8),
        "brightness": rng.uniform(0.0, 1.0),
        "compressor_level": rng.uniform(0.05, 0.3),  # the air compressor running behind
        "rate_jitter": rng.uniform(0.0, 0.05),
    }


def _jackhammer(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    rate = p["rate"] * (1.0 + p["rate_jitter"] * _slow_random(n, sr, rng, 0.5))
    # Integrating the blow rate gives a pulse counter; its fractional part / rate = time since last blow.
    cycles = np.cumsum(rate) / sr + rng.random()
    since = (cycles - np.floor(cycles)) / rate
    pulses = _shaped_noise(n, sr, rng, p["brightness"]) * np.exp(-since / p["pulse_tau"])
    ring = p["resonance_level"] * np.sin(2 * np.pi * p["resonance_hz"] * since)
    ring *= np.exp(-since / (3.0 * p["pulse_tau"]))
    compressor = p["compressor_level"] * _shaped_noise(n, sr, rng, 1.5, 30.0, min(2000.0, 0.45 * sr))
    return pulses + ring + compressor


def _siren_params(rng: np.random.Generator) -> Params:
    wail = bool(rng.random() < 0.6)
    return {
        "wail": wail,
        # Wail: a slow sweep up and down every few seconds; yelp: a fast one, several per second.
        "period": rng.uniform(2.0, 6.0) if wail else rng.uniform(0.12, 0.35),
        "f_low": rng.uniform(450.0, 800.0),
        "f_high": rng.uniform(1100.0, 1700.0),
        "slope": rng.uniform(1.0, 2.0),
        "doppler": rng.uniform(-0.03, 0.03),  # a passing vehicle shifts the pitch over the recording
    }


def _siren(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    phase = t / p["period"] + rng.random()
    if p["wail"]:
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * phase)  # smooth rise and fall
    else:
        sweep = 1.0 - np.abs(2.0 * (phase - np.floor(phase)) - 1.0)  # triangle: fast, sharp-cornered
    f = p["f_low"] + (p["f_high"] - p["f_low"]) * sweep
    f *= 1.0 + p["doppler"] * t / max(t[-1], 1e-9)
    return _harmonic_tone(f, _power_law(5, p["slope"]), n, sr, rng)


def _street_music_params(rng: np.random.Generator) -> Params:
    minor = bool(rng.random() < 0.5)
    scale = np.array([0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11])
    # A four-chord progression built on random scale degrees; triads stacked in thirds within the scale.
    degrees = rng.choice(7, size=4)
    chords = [[int(scale[(d + 2 * i) % 7] + 12 * ((d + 2 * i) // 7)) for i in range(3)] for d in degrees]
    return {
        "root": int(rng.integers(45, 60)),  # MIDI note of the key's tonic (A2..B3)
        "scale": scale,
        "chords": np.array(chords),  # (4 chords, 3 notes) in semitones above the root
        "step": 60.0 / rng.uniform(80.0, 140.0) / 2.0,  # eighth-note duration at 80-140 bpm
        "steps_per_chord": int(rng.choice([4, 8])),
        "pattern": rng.random(8) < 0.6,  # which eighths of a bar the chords are struck on
        "pluck_tau": rng.uniform(0.08, 0.5),  # short: guitar-like pluck; long: organ-like
        "slope": rng.uniform(1.0, 2.0),
        "melody": bool(rng.random() < 0.7),
        "drums": rng.uniform(0.0, 0.6),
    }


def _street_music(p: Params, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = _times(n, sr)
    step = p["step"]
    n_steps = int(np.ceil(n / sr / step)) + 1
    step_of_sample = np.minimum((t / step).astype(np.int64), n_steps - 1)
    chord_of_step = (np.arange(n_steps) // p["steps_per_chord"]) % len(p["chords"])
    hits = p["pattern"][np.arange(n_steps) % 8]
    hits[0] = True  # the music is playing from the first sample
    # Time since the most recent strike, per sample: the decay envelope of plucked notes.
    last_hit = np.maximum.accumulate(np.where(hits, np.arange(n_steps), 0))
    since = t - last_hit[step_of_sample] * step
    pluck = np.exp(-since / p["pluck_tau"]) * np.minimum(since / 0.005, 1.0)
    amplitudes = _power_law(6, p["slope"])
    out = np.zeros(n)
    # Frequencies are computed per step and gathered per sample: far cheaper than per-sample powers.
    chord_hz = _midi_to_hz(p["chords"][chord_of_step] + p["root"])  # (n_steps, 3)
    for voice in range(3):
        out += _harmonic_tone(chord_hz[step_of_sample, voice], amplitudes, n, sr, rng) * pluck
    bass = chord_hz[step_of_sample, 0] / 2.0  # an octave below the chord's lowest note
    out += 1.2 * _harmonic_tone(bass, _power_law(4, 1.5), n, sr, rng) * pluck
    if p["melody"]:
        # A melody note per eighth (sometimes a rest), one octave above the chords, from the scale.
        notes = p["root"] + 12 + p["scale"][rng.integers(0, 7, n_steps)] + 12 * rng.integers(0, 2, n_steps)
        on = (rng.random(n_steps) < 0.75)[step_of_sample]
        since_step = t - step_of_sample * step
        env = np.exp(-since_step / (0.6 * step)) * np.minimum(since_step / 0.005, 1.0) * on
        out += 1.5 * _harmonic_tone(_midi_to_hz(notes)[step_of_sample], amplitudes, n, sr, rng) * env
    if p["drums"] > 0.0:
        since_step = t - step_of_sample * step
        on_beat = (step_of_sample % 2 == 0).astype(np.float64)
        kick = np.sin(2 * np.pi * 60.0 * since_step) * np.exp(-since_step / 0.05) * on_beat
        hat = (
            _shaped_noise(n, sr, rng, 0.0, min(5000.0, 0.3 * sr)) * np.exp(-since_step / 0.02) * (1 - on_beat)
        )
        out += p["drums"] * 3.0 * (kick + 0.3 * hat)
    return out


@dataclass(frozen=True)
class _ClassSynth:
    params: Callable[[np.random.Generator], Params]
    render: Callable[[Params, int, int, np.random.Generator], np.ndarray]


_SYNTHS: dict[str, _ClassSynth] = {
    "air_conditioner": _ClassSynth(_air_conditioner_params, _air_conditioner),
    "car_horn": _ClassSynth(_car_horn_params, _car_horn),
    "children_playing": _ClassSynth(_children_playing_params, _children_playing),
    "dog_bark": _ClassSynth(_dog_bark_params, _dog_bark),
    "drilling": _ClassSynth(_drilling_params, _drilling),
    "engine_idling": _ClassSynth(_engine_idling_params, _engine_idling),
    "gun_shot": _ClassSynth(_gun_shot_params, _gun_shot),
    "jackhammer": _ClassSynth(_jackhammer_params, _jackhammer),
    "siren": _ClassSynth(_siren_params, _siren),
    "street_music": _ClassSynth(_street_music_params, _street_music),
}
assert tuple(_SYNTHS) == CLASS_NAMES


def _normalise_peak(x: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """Scale so max |x| == peak (silence stays silence)."""
    top = float(np.abs(x).max()) if x.size else 0.0
    return x * (peak / top) if top > 0.0 else x


def synthesize_event(
    class_name: str, duration: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One mono float32 signal of a class's sound, peak-normalised into [-1, 1], without background noise.

    ``duration`` is in seconds (the result has ``round(duration * sample_rate)`` samples, at least 1),
    ``sample_rate`` in Hz. The sound's parameters (pitch, rates, timbre) are drawn from ``rng``, so a fixed
    seed gives a fixed signal. Intermittent sounds (car horn, dog bark, gun shot) start within the first
    50 ms; the others are steady over the whole duration.
    """
    if class_name not in _SYNTHS:
        raise ConfigError(f"unknown class {class_name!r}; expected one of {', '.join(CLASS_NAMES)}")
    if not duration > 0.0:
        raise ConfigError(f"duration must be positive seconds, got {duration}")
    if sample_rate < 1000:
        raise ConfigError(f"sample_rate must be at least 1000 Hz, got {sample_rate}")
    synth = _SYNTHS[class_name]
    n = max(1, round(duration * sample_rate))
    signal = synth.render(synth.params(rng), n, sample_rate, rng)
    return _normalise_peak(signal).astype(np.float32)


def synthesize_background(duration: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Urban background noise (float32, unit RMS, mono), ``duration`` seconds at ``sample_rate`` Hz.

    Colored noise between pink and brown (traffic and city hum are low-heavy), with a slowly wandering level,
    so that no two recordings share a noise floor.
    """
    n = max(1, round(duration * sample_rate))
    exponent, low, hiss = rng.uniform(0.5, 2.0), rng.uniform(20.0, 100.0), rng.uniform(0.0, 0.3)
    noise = _shaped_noise(n, sample_rate, rng, exponent, low, hiss=hiss)  # hiss: a little broadband floor
    wander = 1.0 + 0.3 * _slow_random(n, sample_rate, rng, 1.0)
    noise *= wander
    rms = float(np.sqrt(np.mean(noise**2)))
    return (noise / rms if rms > 0.0 else noise).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------------


def _clear_peak_timestamp(path: Path) -> None:
    """Zero the timestamp libsndfile stamps into the PEAK chunk of float WAVs, for byte-identical reruns.

    The PEAK chunk (version, timestamp, then per-channel peaks) is legitimate and common in real float WAVs,
    so it is kept; only its wall-clock time, which would make every run's files differ, is cleared.
    """
    with open(path, "r+b") as handle:
        header = handle.read(4096)  # libsndfile writes every chunk before 'data' within the first few hundred
        offset = 12  # past "RIFF", the RIFF size and "WAVE"
        while offset + 8 <= len(header):
            chunk_id = header[offset : offset + 4]
            size = int.from_bytes(header[offset + 4 : offset + 8], "little")
            if chunk_id == b"data":
                return
            if chunk_id == b"PEAK" and size >= 8:
                handle.seek(offset + 12)  # chunk header (8 bytes) + version (4 bytes)
                handle.write(b"\0\0\0\0")
                return
            offset += 8 + size + (size & 1)  # chunks are padded to even sizes


@dataclass(frozen=True)
class _Recording:
    """One synthetic source recording (one fsID) and how it is sliced, stored and split."""

    fs_id: int
    class_id: int
    index: int  # recording number within its class (0-based), part of its rng seed
    fold: int  # 1-based
    sample_rate: int
    channels: int
    container: str  # soundfile format: "WAV" or "WAVEX"
    subtype: str
    clip_seconds: float  # length of each slice
    hop_seconds: float  # distance between consecutive slice starts (< clip_seconds: overlapping)
    offset_seconds: float  # where the first slice starts within the (notional) source recording


def _plan_recordings(
    recordings_per_class: int, clips_per_recording: int, seed: int, n_folds: int, vary_formats: bool
) -> list[_Recording]:
    """Decide every recording's fsID, fold, format and slicing, before any audio is made."""
    rng = np.random.default_rng((seed, 1))
    n_recordings = len(CLASS_NAMES) * recordings_per_class
    # Unique, realistic-looking freesound IDs.
    fs_ids = rng.choice(np.arange(1000, 200_000), size=n_recordings, replace=False)
    # Dealing each format list out over a permutation of the recordings: every value is used once there
    # are as many recordings as values, and the combinations (rate x subtype x channels) are mixed.
    rate_perm, format_perm, channel_perm = (rng.permutation(n_recordings) for _ in range(3))
    plan = []
    for class_id, class_name in enumerate(CLASS_NAMES):
        # Round-robin over the folds in a seeded order, starting at a seeded fold: with at least n_folds
        # recordings every fold gets the class, with fewer the classes still spread over different folds.
        order = rng.permutation(recordings_per_class)
        first_fold = int(rng.integers(n_folds))
        for position, index in enumerate(order):
            g = class_id * recordings_per_class + int(index)
            fold = (position + first_fold) % n_folds + 1
            if vary_formats:
                rate = SAMPLE_RATES[rate_perm[g] % len(SAMPLE_RATES)]
                container, subtype = FILE_FORMATS[format_perm[g] % len(FILE_FORMATS)]
                channels = CHANNEL_COUNTS[channel_perm[g] % len(CHANNEL_COUNTS)]
                hop = float(rng.choice([1.5, 2.0, 2.5, 3.0]))
                clip = CLIP_SECONDS
                short = rng.random() < _SHORT_PROBABILITY.get(class_name, 0.0)
                if class_name == "gun_shot" and index == 0:
                    # Guarantee the real dataset's extreme: a clip well under 0.1 s.
                    clip = float(rng.uniform(MIN_CLIP_SECONDS, 0.09))
                elif short:
                    # Log-uniform between 0.05 s and 3.9 s: many very short clips, as in the real data.
                    clip = float(np.exp(rng.uniform(np.log(MIN_CLIP_SECONDS), np.log(3.9))))
                if clip < CLIP_SECONDS:
                    hop = clip / 2.0
            else:
                rate, container, subtype, channels = 22050, "WAV", "PCM_16", 1
                clip, hop = CLIP_SECONDS, DEFAULT_HOP_SECONDS
            offset = float(rng.integers(0, 120)) * 0.5 if clip >= CLIP_SECONDS else float(rng.uniform(0, 60))
            plan.append(
                _Recording(
                    fs_id=int(fs_ids[g]),
                    class_id=class_id,
                    index=int(index),
                    fold=fold,
                    sample_rate=rate,
                    channels=channels,
                    container=container,
                    subtype=subtype,
                    clip_seconds=clip,
                    hop_seconds=hop,
                    offset_seconds=offset,
                )
            )
    return plan


def _render_recording(
    rec: _Recording, clips_per_recording: int, seed: int
) -> tuple[np.ndarray, int, int, int]:
    """Audio of a whole recording, shape (samples, channels); slice length and hop in samples; salience."""
    # A recording's rng depends only on (seed, class, index): its audio does not change when other
    # recordings are added, which keeps datasets of different sizes comparable.
    rng = np.random.default_rng((seed, 2, rec.class_id, rec.index))
    sr = rec.sample_rate
    clip_n = max(1, round(rec.clip_seconds * sr))
    hop_n = max(1, round(rec.hop_seconds * sr))
    total_n = clip_n + hop_n * (clips_per_recording - 1)
    class_name = CLASS_NAMES[rec.class_id]
    synth = _SYNTHS[class_name]
    params = synth.params(rng)
    if class_name in _INTERMITTENT:
        # One event per slice start, all with the recording's parameters (same dog, same horn): every
        # overlapping slice then starts with the labelled sound instead of with the previous one's tail.
        bounds = [k * hop_n for k in range(clips_per_recording)] + [total_n]
        event = np.concatenate(
            [
                synth.render(params, end - start, sr, rng)
                for start, end in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        )
    else:
        event = synth.render(params, total_n, sr, rng)
    event = _normalise_peak(event)
    # Salience as in the official metadata: 1 = foreground, 2 = background (the sound is far / quiet).
    # Signal-to-noise is measured as event peak over noise RMS, which is fair to impulsive and steady
    # sounds alike (an RMS ratio would drown a lone gun shot's recording in noise).
    salience = 1 if rng.random() < 0.7 else 2
    peak_snr_db = rng.uniform(15.0, 40.0) if salience == 1 else rng.uniform(6.0, 15.0)
    noise = synthesize_background(total_n / sr, sr, rng)[:total_n]
    mix = event + noise * 10.0 ** (-peak_snr_db / 20.0)
    mix = _normalise_peak(mix, rng.uniform(0.25, 0.95))  # recording level varies; never clips
    if rec.channels == 2:
        # A cheap stereo image: the right channel is delayed by up to 1 ms, at a slightly different gain.
        delay = int(rng.integers(0, max(1, sr // 1000) + 1))
        right = np.roll(mix, delay) * rng.uniform(0.7, 1.0)
        audio = np.stack([mix, right], axis=1)
    else:
        audio = mix[:, None]
    return audio.astype(np.float32), clip_n, hop_n, salience


# One metadata CSV row, in METADATA_COLUMNS order:
# slice_file_name, fsID, start (s), end (s), salience, fold, classID, class.
_MetadataRow = tuple[str, int, float, float, int, int, int, str]


def synthesize_dataset(
    dest: Path,
    recordings_per_class: int = 10,
    clips_per_recording: int = 3,
    seed: int = 0,
    n_folds: int = 10,
    vary_formats: bool = True,
) -> Path:
    """Write a synthetic dataset in the UrbanSound8K layout and return its root, ``dest/UrbanSound8K``.

    Writes ``audio/fold{1..n_folds}/{fsID}-{classID}-{occurrenceID}-{sliceID}.wav`` and
    ``metadata/UrbanSound8K.csv`` (the official columns; start/end in seconds within the source recording).
    Each class gets ``recordings_per_class`` recordings (unique fsIDs) spread round-robin over the folds, and
    each recording is cut into ``clips_per_recording`` overlapping slices in the same fold.

    With ``vary_formats`` the files mix sample rates (8-96 kHz), mono/stereo, 8/16/24/32-bit PCM and float
    (some 24-bit as WAVE_FORMAT_EXTENSIBLE) and include short clips (down to 0.05 s); without it every clip
    is 4 s of 22,050 Hz mono 16-bit PCM, which is faster to write and read.

    Deterministic: the same arguments give byte-identical files. Refuses to write into an existing
    ``dest/UrbanSound8K`` so that stale clips of another run can never mix with the new metadata.
    """
    _check_dataset_args(recordings_per_class, clips_per_recording, n_folds, seed)
    root = Path(dest) / "UrbanSound8K"
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} already exists and is not empty; synthesize into a fresh directory")

    started = time.perf_counter()
    audio_dir = root / "audio"
    for fold in range(1, n_folds + 1):
        (audio_dir / f"fold{fold}").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)

    rows: list[_MetadataRow] = []
    plan = _plan_recordings(recordings_per_class, clips_per_recording, seed, n_folds, vary_formats)
    for rec in plan:
        rows.extend(_write_recording_clips(rec, audio_dir, clips_per_recording, seed))
    _write_metadata(root / "metadata" / "UrbanSound8K.csv", rows)

    logger.info(
        "synthesized %d clips (%d recordings, %d folds) in %s in %.1f s",
        len(rows),
        len(plan),
        n_folds,
        root,
        time.perf_counter() - started,
    )
    return root


def _check_dataset_args(recordings_per_class: int, clips_per_recording: int, n_folds: int, seed: int) -> None:
    """Raise :class:`ConfigError` unless every size is an integer >= 1 and the seed an integer >= 0."""
    for name, value, minimum in (
        ("recordings_per_class", recordings_per_class, 1),
        ("clips_per_recording", clips_per_recording, 1),
        ("n_folds", n_folds, 1),
        ("seed", seed, 0),
    ):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _write_recording_clips(
    rec: _Recording, audio_dir: Path, clips_per_recording: int, seed: int
) -> list[_MetadataRow]:
    """Render one recording, write its slices into its fold folder and return their metadata rows."""
    audio, clip_n, hop_n, salience = _render_recording(rec, clips_per_recording, seed)
    class_name = CLASS_NAMES[rec.class_id]
    rows: list[_MetadataRow] = []
    for k in range(clips_per_recording):
        name = f"{rec.fs_id}-{rec.class_id}-0-{k}.wav"  # occurrenceID 0: one occurrence per recording
        path = audio_dir / f"fold{rec.fold}" / name
        sf.write(
            path,
            audio[k * hop_n : k * hop_n + clip_n],
            rec.sample_rate,
            subtype=rec.subtype,
            format=rec.container,
        )
        _clear_peak_timestamp(path)
        # Times from sample counts, so end - start is exactly the file's duration.
        start = rec.offset_seconds + k * hop_n / rec.sample_rate
        end = start + clip_n / rec.sample_rate
        rows.append(
            (
                name,
                rec.fs_id,
                round(start, 6),
                round(end, 6),
                salience,
                rec.fold,
                rec.class_id,
                class_name,
            )
        )
    return rows


def _write_metadata(path: Path, rows: list[_MetadataRow]) -> None:
    """Write the metadata CSV, its rows sorted by file name as in the official one."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(sorted(rows, key=lambda row: row[0]))
