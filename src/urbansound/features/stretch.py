"""Batched time stretch and pitch shift in torch, reproducing ``librosa.effects.time_stretch`` and
``librosa.effects.pitch_shift`` (librosa 0.11).

The feature cache computes augmentation variants of many clips at once, on the GPU when training on one.
librosa's phase vocoder loops over frames in Python and handles one clip at a time; here every step is a
tensor operation over ``(batch, freq, frames)`` or ``(batch, samples)``:

- :func:`phase_vocoder`: librosa's algorithm with the per-frame loop replaced by a cumulative sum of the
  phase advances.
- :func:`time_stretch`: STFT -> phase vocoder -> inverse STFT, with librosa's defaults (periodic Hann
  window, centred frames, zero padding) and output length ``round(samples / rate)``.
- :func:`resample`: band-limited windowed-sinc resampling for an arbitrary ratio.
- :func:`pitch_shift`: time stretch by ``2 ** (-n_steps / 12)``, resample back, cut or pad to the input
  length.

All functions are pure: every tensor they create (windows, indices, filter taps) lives on the device of the
input, and nothing is moved between devices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Kaiser-windowed sinc defaults of :func:`resample`. 32 zero crossings each side with the cutoff at 94.5 %
# of the lower Nyquist frequency and beta = 10 (~100 dB side lobes) put the transition band at about
# 0.9-1.0 of the lower Nyquist, close to soxr's "HQ" filter that librosa uses (pass band to 91 %, stop band
# from 100 %), at 64-80 taps per output sample.
RESAMPLE_ZERO_CROSSINGS = 32
RESAMPLE_ROLLOFF = 0.945
RESAMPLE_KAISER_BETA = 10.0
# Largest gathered tap tensor (batch x outputs x taps elements) held at once by :func:`resample`: 2**24
# float32 values is 64 MiB, so a batch of 64 four-second clips runs in ~25 chunks, not one 1.6 GB tensor.
RESAMPLE_MAX_ELEMENTS = 2**24


def phase_vocoder(spec: torch.Tensor, rate: float, hop_length: int) -> torch.Tensor:
    """Stretch a complex STFT in time by ``rate`` (librosa's ``phase_vocoder``), vectorised over frames.

    For output frame ``t`` at fractional input position ``step = t * rate`` the magnitude is the linear
    interpolation of the input magnitudes at frames ``floor(step)`` and ``floor(step) + 1`` (two zero frames
    are appended past the end), and the phase is the first frame's phase plus the accumulated phase
    advances of the earlier output frames: for each, the expected advance ``phi_advance`` of its bin plus the
    deviation of the measured advance between its two input frames, wrapped to ``[-pi, pi]``.

    Args:
        spec: complex ``(..., freq, frames)``, ``freq = n_fft // 2 + 1`` (e.g. ``(batch, freq, frames)``).
        rate: stretch factor > 0; ``rate > 1`` speeds up (fewer frames), ``rate < 1`` slows down.
        hop_length: hop of the STFT in samples (sets the expected phase advance per frame).

    Returns:
        complex ``(..., freq, ceil(frames / rate))``, same dtype and device as ``spec``.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    device = spec.device
    n_freq, n_frames = spec.shape[-2], spec.shape[-1]
    n_fft = 2 * (n_freq - 1)
    # librosa: time_steps = np.arange(0, n_frames, rate); its length is ceil(n_frames / rate) and its values
    # are i * rate, kept in float64 like numpy's so floor() picks the same input frames.
    n_out = math.ceil(n_frames / rate)
    steps = torch.arange(n_out, device=device, dtype=torch.float64) * rate
    index = steps.floor().long()  # (n_out,) first of the two input frames
    alpha = (steps - index).to(spec.real.dtype)  # weight of the second frame, np.mod(step, 1.0)

    # Two zero frames at the end, as librosa, so index + 1 <= n_frames + 1 is always valid. np.angle(0) = 0
    # and torch.angle(0) = 0, so the padded frames contribute zero phase as in librosa.
    mag = F.pad(spec.abs(), (0, 2))
    phase = F.pad(spec.angle(), (0, 2))
    # index_select (not advanced indexing): same result, and it also has a fake-tensor kernel on CPU-only
    # builds, which the device test relies on.
    mag0, mag1 = mag.index_select(-1, index), mag.index_select(-1, index + 1)
    out_mag = mag0 * (1.0 - alpha) + mag1 * alpha

    # Expected phase advance per hop of bin k: hop * 2 pi k / n_fft. Only its value modulo 2 pi matters
    # (the wrap below and the final phasor are 2 pi periodic), so reduce it exactly with integer arithmetic:
    # librosa's unreduced advance reaches hop * pi ~ 1600 rad per frame, and its float32 accumulator grows to
    # ~1e5 rad, where float32 keeps only ~0.01 rad of phase. Accumulating reduced advances in float64 keeps
    # the phase exact to ~1e-12 rad for any number of frames, at negligible cost (one cumsum).
    k = torch.arange(n_freq, device=device, dtype=torch.int64)
    phi_advance = (k * hop_length % n_fft).to(torch.float64) * (2.0 * math.pi / n_fft)  # (freq,)
    phi_advance = phi_advance[:, None]  # broadcast over frames

    two_pi = 2.0 * math.pi
    dphase = (phase.index_select(-1, index + 1) - phase.index_select(-1, index)).to(torch.float64)
    dphase = dphase - phi_advance
    dphase = dphase - two_pi * torch.round(dphase / two_pi)  # wrap to [-pi, pi]
    increment = phi_advance + dphase  # (..., freq, n_out) advance applied after output frame t

    # phase_acc[t] = angle(spec[..., 0]) + sum_{s < t} increment[s]: an exclusive cumulative sum replaces
    # librosa's sequential loop over output frames.
    acc = torch.cumsum(increment, dim=-1)
    acc = torch.cat([torch.zeros_like(acc[..., :1]), acc[..., :-1]], dim=-1)
    acc = torch.remainder(acc + phase[..., :1].to(torch.float64), two_pi)  # small values for float32 cast
    out = torch.polar(out_mag, acc.to(out_mag.dtype))
    return out.to(spec.dtype)


def _stft(waveforms: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """librosa 0.11's ``stft`` defaults: centred frames, zero (``"constant"``) padding of ``n_fft // 2`` on
    both sides. ``(batch, samples)`` -> complex ``(batch, n_fft // 2 + 1, 1 + samples // hop_length)``."""
    return torch.stft(
        waveforms,
        n_fft=n_fft,
        hop_length=hop_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )


def _istft(spec: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor, length: int) -> torch.Tensor:
    """librosa's ``istft`` (centred, given ``length``): complex ``(batch, freq, frames)`` -> ``(batch,
    length)``.

    Written out instead of ``torch.istft`` because librosa and torch differ where the frames do not cover
    the requested length (a stretched STFT often ends short of ``round(samples / rate)``): librosa leaves
    zeros there and divides by the window envelope only where it exceeds ``tiny``, while ``torch.istft``
    checks that the envelope is nonzero everywhere with a data-dependent test (which also has no
    fake-tensor kernel).
    """
    batch, _, n_frames = spec.shape
    # Frames starting past the requested end contribute nothing (librosa trims them too).
    n_frames = min(n_frames, math.ceil((length + 2 * (n_fft // 2)) / hop_length))
    spec = spec[..., :n_frames]
    frames = torch.fft.irfft(spec, n=n_fft, dim=-2) * window[:, None]  # (batch, n_fft, frames)
    total = n_fft + hop_length * (n_frames - 1)
    # Overlap-add with fold (col2im): frame t lands at samples [t * hop, t * hop + n_fft).
    y = F.fold(frames, output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop_length))
    y = y.reshape(batch, total)
    win_sq = window.square()[None, :, None].expand(1, n_fft, n_frames)
    envelope = F.fold(win_sq, output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop_length))
    envelope = envelope.reshape(total)
    # Divide only where the envelope is nonzero (librosa: > np.finfo(dtype).tiny); elsewhere y is 0 anyway.
    envelope = torch.where(envelope > torch.finfo(envelope.dtype).tiny, envelope, torch.ones_like(envelope))
    y = y / envelope
    start = n_fft // 2  # centred frames: drop the analysis padding
    return _fix_length(y[:, start : start + length], length)


def _fix_length(waveforms: torch.Tensor, n_samples: int) -> torch.Tensor:
    """librosa's ``util.fix_length`` on the last axis: cut to ``n_samples`` or zero-pad on the right."""
    if waveforms.shape[-1] >= n_samples:
        return waveforms[..., :n_samples]
    return F.pad(waveforms, (0, n_samples - waveforms.shape[-1]))


def time_stretch(waveforms: torch.Tensor, rate: float, n_fft: int = 2048, hop_length: int = 512) -> torch.Tensor:
    """Time-stretch audio by ``rate`` with a phase vocoder, as ``librosa.effects.time_stretch``.

    STFT (periodic Hann window of ``n_fft``, centred frames, zero padding: librosa 0.11's defaults), then
    :func:`phase_vocoder`, then the inverse STFT cut or padded to ``round(samples / rate)``.

    Args:
        waveforms: real ``(batch, samples)`` (or ``(samples,)``, or any ``(..., samples)``), float32 or
            float64, any sample rate (the stretch is in samples).
        rate: stretch factor > 0; ``rate > 1`` speeds up (shorter output), ``rate < 1`` slows down.
        n_fft: FFT size and window length in samples.
        hop_length: STFT hop in samples.

    Returns:
        ``(..., round(samples / rate))``, same dtype and device as ``waveforms``. Python's ``round``
        (half to even), as librosa.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    *lead, n_samples = waveforms.shape
    x = waveforms.reshape(-1, n_samples)
    # Created on the input's device: the caller's tensors stay where they are.
    window = torch.hann_window(n_fft, periodic=True, device=x.device, dtype=x.dtype)
    spec = phase_vocoder(_stft(x, n_fft, hop_length, window), rate, hop_length)
    length = int(round(n_samples / rate))
    y = _istft(spec, n_fft, hop_length, window, length)
    return y.reshape(*lead, length)


def _kaiser_sinc(distance: torch.Tensor, cutoff: float, half_width: float, beta: float) -> torch.Tensor:
    """Low-pass interpolation kernel at ``distance`` input samples: ``2 fc sinc(2 fc d)`` (unit DC gain,
    ``fc = cutoff`` cycles per input sample) times a Kaiser window reaching zero at ``|d| = half_width``."""
    ratio = (distance / half_width).clamp(-1.0, 1.0)
    window = torch.special.i0(beta * torch.sqrt(1.0 - ratio.square())) / torch.special.i0(
        torch.tensor(beta, dtype=distance.dtype, device=distance.device)
    )
    window = torch.where(distance.abs() <= half_width, window, torch.zeros_like(window))
    return 2.0 * cutoff * torch.sinc(2.0 * cutoff * distance) * window


def resample(
    waveforms: torch.Tensor,
    orig_sr: float,
    target_sr: float,
    zero_crossings: int = RESAMPLE_ZERO_CROSSINGS,
    rolloff: float = RESAMPLE_ROLLOFF,
    beta: float = RESAMPLE_KAISER_BETA,
    max_elements: int = RESAMPLE_MAX_ELEMENTS,
) -> torch.Tensor:
    """Band-limited resampling from ``orig_sr`` to ``target_sr`` Hz for any ratio (not only rational ones).

    Windowed-sinc interpolation: output sample ``j`` sits at input position ``t = j * orig_sr / target_sr``
    (sample 0 stays aligned with sample 0, as soxr and librosa) and is the sum over the input samples
    within ``zero_crossings`` zero crossings of a Kaiser-windowed sinc low-pass centred on ``t``, cut off at
    ``rolloff`` times the lower of the two Nyquist frequencies (so downsampling does not alias). Samples
    outside the clip count as zero. The taps of each output are gathered with index arithmetic, in chunks of
    outputs so the gathered tensor stays below ``max_elements`` values.

    Written by hand because the resampler used elsewhere in the project (soxr, librosa's default) runs only
    on CPU numpy arrays, one clip at a time, and torchaudio is not a dependency.

    Args:
        waveforms: real ``(batch, samples)`` (or any ``(..., samples)``) at ``orig_sr`` Hz.
        orig_sr: input sample rate in Hz (any positive float).
        target_sr: output sample rate in Hz (any positive float).
        zero_crossings: sinc zero crossings kept on each side of the centre (filter length).
        rolloff: cutoff as a fraction of the lower Nyquist frequency, below 1 to leave a transition band.
        beta: Kaiser window shape (higher: lower side lobes, wider transition).
        max_elements: largest ``batch * outputs * taps`` gathered at once.

    Returns:
        ``(..., ceil(samples * target_sr / orig_sr))`` at ``target_sr`` Hz (the length
        ``librosa.resample`` returns), same dtype and device as ``waveforms``. The input itself when the
        rates are equal.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} and {target_sr}")
    if orig_sr == target_sr:
        return waveforms
    *lead, n_in = waveforms.shape
    x = waveforms.reshape(-1, n_in)
    batch, device, dtype = x.shape[0], x.device, x.dtype
    step = float(orig_sr) / float(target_sr)  # input samples per output sample
    n_out = math.ceil(n_in * (float(target_sr) / orig_sr))  # librosa.resample's length formula

    # Cutoff in cycles per input sample: rolloff * half the lower rate, expressed at the input rate.
    cutoff = 0.5 * rolloff * min(1.0, 1.0 / step)
    half_width = zero_crossings / (2.0 * cutoff)  # input samples from the centre to the last zero crossing
    reach = math.ceil(half_width)
    # Taps floor(t) + k for k in [1 - reach, reach]: every input sample within half_width of t.
    offsets = torch.arange(1 - reach, reach + 1, device=device, dtype=torch.int64)  # (taps,)
    n_taps = offsets.numel()
    # Zeros outside the clip; padded index = input index + reach. One extra zero on the right: t = j * step
    # can round up to exactly n_in for the last output.
    x_pad = F.pad(x, (reach, reach + 1))

    chunk = max(1, max_elements // (batch * n_taps))
    pieces = []
    for start in range(0, n_out, chunk):
        j = torch.arange(start, min(start + chunk, n_out), device=device, dtype=torch.float64)
        # Positions in float64: at 1e5 samples float32 would leave ~0.01 sample of timing error.
        t = j * step
        base = t.floor()
        frac = (t - base).to(dtype)  # in [0, 1)
        index = base.long()[:, None] + offsets[None, :] + reach  # (chunk, taps) into x_pad
        weights = _kaiser_sinc(offsets.to(dtype)[None, :] - frac[:, None], cutoff, half_width, beta)
        # index_select on a flat index (advanced indexing has no fake-tensor kernel on CPU-only builds).
        taps = x_pad.index_select(1, index.reshape(-1)).reshape(batch, -1, n_taps)  # (batch, chunk, taps)
        pieces.append(torch.einsum("bct,ct->bc", taps, weights))
    y = torch.cat(pieces, dim=1)
    return y.reshape(*lead, n_out)


def pitch_shift(
    waveforms: torch.Tensor, sample_rate: int, n_steps: float, n_fft: int = 2048, hop_length: int = 512
) -> torch.Tensor:
    """Shift the pitch by ``n_steps`` semitones keeping the duration, as ``librosa.effects.pitch_shift``.

    ``rate = 2 ** (-n_steps / 12)``; :func:`time_stretch` by ``rate``, then :func:`resample` from
    ``sample_rate / rate`` to ``sample_rate`` Hz, then cut or zero-pad on the right to the input length
    (librosa's ``fix_length``). librosa resamples with soxr's HQ filter, this with a Kaiser-windowed sinc
    (:func:`resample`), so the two differ slightly near the Nyquist frequency.

    Args:
        waveforms: real ``(batch, samples)`` (or any ``(..., samples)``) at ``sample_rate`` Hz.
        sample_rate: sample rate in Hz.
        n_steps: semitones, fractional allowed; positive raises the pitch.
        n_fft: FFT size of the time stretch in samples.
        hop_length: STFT hop of the time stretch in samples.

    Returns:
        ``(..., samples)``, same dtype and device as ``waveforms``.
    """
    rate = 2.0 ** (-float(n_steps) / 12.0)
    stretched = time_stretch(waveforms, rate, n_fft=n_fft, hop_length=hop_length)
    shifted = resample(stretched, float(sample_rate) / rate, float(sample_rate))
    return _fix_length(shifted, waveforms.shape[-1])
