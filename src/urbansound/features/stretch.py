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
input, and nothing is moved between devices. Tensors are sliced with methods (``narrow``, ``select``,
``index_select``, ``unsqueeze``), not Python indexing: on a CPU-only torch build, Python indexing of a fake
CUDA tensor fails ("not linked with support for cuda devices"), and the tests check device placement with
fake CUDA tensors; the methods are the same operations.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from urbansound.features.spectrogram import centred_stft

# Kaiser-windowed sinc defaults of :func:`resample`: 32 zero crossings on each side (64-75 taps per output
# sample at the pitch-shift ratios), cutoff at 95.5 % of the lower Nyquist frequency, beta = 6 (side lobes
# ~-63 dB). The transition band is then about 0.90-1.01 of the lower Nyquist frequency, the closest this
# filter length gets to soxr's HQ filter that librosa uses (flat to ~0.94, -110 dB at 1.0): white noise
# resampled by both differs by about -29 dB, all of it above 0.85 of the lower Nyquist frequency (below, the
# two agree to ~-70 dB). Chosen by measuring rolloffs 0.945-0.97 and betas 5-10 against soxr; a higher beta
# lowers the side lobes but widens the transition.
RESAMPLE_ZERO_CROSSINGS = 32
RESAMPLE_ROLLOFF = 0.955
RESAMPLE_KAISER_BETA = 6.0
# Largest gathered input tensor (batch x blocks x segment values) held at once by :func:`resample`: 2**24
# float32 values is 64 MiB.
RESAMPLE_MAX_ELEMENTS = 2**24
# Outputs per block of :func:`resample` (one matrix product row block) and the number of quantised phases of
# its weight tables. Small blocks waste fewer multiplications (a block's segment is block * ratio + taps
# long); 64 phases with linear interpolation leave an error of ~-81 dB on white noise against the exact
# windowed sinc (less for audio, whose energy sits lower: the error grows with frequency squared).
_BLOCK = 32
_PHASES = 64
# STFT bins (input or stretched, whichever is more) per chunk of rows in :func:`time_stretch` on a CPU: 2**19
# complex64 values is 4 MiB, two 4 s clips at 22,050 Hz. Measured on one CPU thread, 4 s clips, rate 1.23:
# 1-4 clips per chunk 4.1-4.3 ms per clip, 16 clips 7.9 ms, all 64 at once 13.7 ms.
_CPU_CHUNK_BINS = 2**19


def phase_vocoder(spec: torch.Tensor, rate: float, hop_length: int) -> torch.Tensor:
    """Stretch a complex STFT in time by ``rate`` (librosa's ``phase_vocoder``), vectorised over frames.

    For output frame ``t`` at fractional input position ``step = t * rate`` the magnitude is the linear
    interpolation of the input magnitudes at frames ``floor(step)`` and ``floor(step) + 1`` (zero frames
    past the end), and the phase is the first frame's phase plus the accumulated phase advances of the
    earlier output frames: for each, the expected advance ``phi_advance`` of its bin plus the deviation of
    the measured advance between its two input frames, wrapped to ``[-pi, pi]``.

    The phase is accumulated exactly (see below), so on float32 input this reproduces librosa run in float64
    (~-70 dB difference after the inverse STFT), while librosa run in float32 is itself ~-40 dB off its
    float64 result: its float32 phase accumulator grows to ~1e5 rad and rounds at every frame.

    Args:
        spec: complex ``(..., freq, frames)``, ``freq = n_fft // 2 + 1`` (e.g. ``(batch, freq, frames)``).
            Fastest when frames-major in memory, as ``torch.stft`` returns it.
        rate: stretch factor > 0; ``rate > 1`` speeds up (fewer frames), ``rate < 1`` slows down.
        hop_length: hop of the STFT in samples (sets the expected phase advance per frame).

    Returns:
        complex ``(..., freq, ceil(frames / rate))``, same dtype and device as ``spec``; frames-major in
        memory (a transposed view), like ``torch.stft``'s output.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    device = spec.device
    n_freq, n_frames = spec.shape[-2], spec.shape[-1]
    n_fft = 2 * (n_freq - 1)
    # Work frames-major, (..., frames, freq): torch.stft's memory layout, so the transpose is free and the
    # frame gathers below copy contiguous rows of `freq` values.
    spec = spec.transpose(-1, -2)
    # librosa: time_steps = np.arange(0, n_frames, rate); its length is ceil(n_frames / rate) and its values
    # are i * rate, kept in float64 like numpy's so floor() picks the same input frames.
    n_out = math.ceil(n_frames / rate)
    steps = torch.arange(n_out, device=device, dtype=torch.float64) * rate
    index = steps.floor().long()  # (n_out,) first of the two input frames, <= n_frames - 1
    alpha = (steps - index).to(spec.real.dtype).unsqueeze(-1)  # weight of the second, np.mod(step, 1.0)

    # librosa appends two zero frames; since index <= n_frames - 1, only the first is ever read. Its
    # magnitude is 0 and its phase 0 (np.angle(0) = torch.angle(0) = 0), as in librosa.
    # abs() and angle() as hypot and atan2 of the real and imaginary parts made contiguous: the same
    # magnitudes and phases within an ulp, ~2x faster on a CPU (complex angle() was the costliest step here).
    # (clone rather than contiguous(): the latter fails on the fake CUDA tensors of the device tests)
    parts = torch.view_as_real(spec).movedim(-1, 0).clone(memory_format=torch.contiguous_format)
    real, imag = parts.select(0, 0), parts.select(0, 1)  # (..., n_frames, freq) each
    mag = F.pad(torch.hypot(real, imag), (0, 0, 0, 1))  # (..., n_frames + 1, freq)
    phase = F.pad(torch.atan2(imag, real), (0, 0, 0, 1))
    out_mag = torch.lerp(mag.index_select(-2, index), mag.index_select(-2, index + 1), alpha)

    # Expected phase advance per hop of bin k: hop * 2 pi k / n_fft. Only its value modulo 2 pi matters
    # (the wrap below and the final phasor are 2 pi periodic), so reduce it exactly with integer arithmetic:
    # librosa's unreduced advance reaches hop * pi ~ 1600 rad per frame, and its float32 accumulator grows to
    # ~1e5 rad, where float32 keeps only ~0.01 rad. With reduced advances every increment lies in
    # [-pi, 3 pi) and is exact to ~1e-6 rad in float32; only the running sum needs float64.
    k = torch.arange(n_freq, device=device, dtype=torch.int64)
    phi_advance = (k * hop_length % n_fft).to(torch.float64) * (2.0 * math.pi / n_fft)
    phi_advance = phi_advance.to(phase.dtype)  # (freq,): broadcasts over frames

    # The advance applied after an output frame depends only on its first input frame f = index[t] (the
    # second is f + 1), so compute it once per input frame and gather it, rather than gathering two phases.
    two_pi = 2.0 * math.pi
    dphase = phase.narrow(-2, 1, n_frames) - phase.narrow(-2, 0, n_frames) - phi_advance
    dphase = dphase - two_pi * torch.round(dphase / two_pi)  # wrap to [-pi, pi]
    increment = (phi_advance + dphase).index_select(-2, index)  # (..., n_out, freq)

    # phase_acc[t] = angle(spec[0]) + sum_{s < t} increment[s]: a cumulative sum over [angle(spec[0]),
    # increment[0], ..., increment[n_out - 2]] replaces librosa's sequential loop over output frames. float64
    # keeps the sum (up to ~3 pi * frames) exact to ~1e-12 rad, and its cosine and sine are taken in float64.
    acc = torch.cat([phase.narrow(-2, 0, 1), increment.narrow(-2, 0, n_out - 1)], dim=-2)
    acc = torch.cumsum(acc, dim=-2, dtype=torch.float64)
    # torch.polar's value, computed as two real products: on a CPU torch.polar runs ~4x slower than
    # vectorised cos, sin and torch.complex (it was the phase vocoder's largest single cost). cos and sin
    # of the float64 sum itself: as exact as reducing it mod 2 pi first, and faster than that reduction.
    dtype = out_mag.dtype
    out = torch.complex(out_mag * torch.cos(acc).to(dtype), out_mag * torch.sin(acc).to(dtype))
    return out.to(spec.dtype).transpose(-1, -2)


def _overlap_add(frames: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Sum ``(batch, frames, n_fft)`` frames placed every ``hop_length`` samples -> ``(batch, n_fft +
    hop_length * (frames - 1))``."""
    batch, n_frames, n_fft = frames.shape
    if n_fft % hop_length == 0:
        # Each frame is n_fft / hop whole hops: add the r-th hop of every frame into hop slot t + r. A few
        # contiguous adds, several times faster on a CPU than fold (col2im).
        hops = n_fft // hop_length
        frames = frames.reshape(batch, n_frames, hops, hop_length)
        out = frames.new_zeros(batch, n_frames + hops - 1, hop_length)
        for r in range(hops):
            out.narrow(1, r, n_frames).add_(frames.select(2, r))
        return out.reshape(batch, -1)
    total = n_fft + hop_length * (n_frames - 1)
    out = F.fold(
        frames.transpose(1, 2), output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop_length)
    )
    return out.reshape(batch, total)


def _istft(
    spec: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor, length: int
) -> torch.Tensor:
    """librosa's ``istft`` (centred, given ``length``): complex ``(batch, freq, frames)`` -> ``(batch,
    length)``.

    Written out instead of ``torch.istft`` (which gives the same samples here) because ``torch.istft``
    checks that the window envelope is nonzero with a data-dependent test: a device-to-host sync on a GPU,
    and no fake-tensor kernel for the device test. Like librosa, this divides by the envelope only where
    it exceeds ``tiny`` and leaves zeros where no frame reaches.
    """
    # Frames starting past the requested end contribute nothing (librosa trims them too).
    n_frames = min(spec.shape[-1], math.ceil((length + 2 * (n_fft // 2)) / hop_length))
    spec = spec.narrow(-1, 0, n_frames).transpose(-1, -2)  # (batch, frames, freq): frames-major
    frames = torch.fft.irfft(spec, n=n_fft, dim=-1) * window  # (batch, frames, n_fft)
    y = _overlap_add(frames, hop_length)
    envelope = _overlap_add(window.square().expand(1, n_frames, n_fft), hop_length).reshape(-1)
    # Divide only where the envelope is nonzero (librosa: > np.finfo(dtype).tiny); elsewhere y is 0 anyway.
    envelope = torch.where(envelope > torch.finfo(envelope.dtype).tiny, envelope, torch.ones_like(envelope))
    y = y / envelope
    start = n_fft // 2  # centred frames: drop the analysis padding
    return fix_length(y.narrow(-1, start, min(length, y.shape[-1] - start)), length)


def fix_length(waveforms: torch.Tensor, n_samples: int) -> torch.Tensor:
    """librosa's ``util.fix_length`` on the last axis: cut to ``n_samples`` or zero-pad on the right."""
    if waveforms.shape[-1] >= n_samples:
        return waveforms.narrow(-1, 0, n_samples)
    return F.pad(waveforms, (0, n_samples - waveforms.shape[-1]))


def time_stretch(
    waveforms: torch.Tensor, rate: float, n_fft: int = 2048, hop_length: int = 512
) -> torch.Tensor:
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
    rows = x.shape[0]
    length = int(round(n_samples / rate))
    if rows == 0:
        return x.new_zeros(*lead, length)
    # Created on the input's device: the caller's tensors stay where they are.
    window = torch.hann_window(n_fft, periodic=True, device=x.device, dtype=x.dtype)
    # On a CPU the phase vocoder is memory-bound (a dozen passes over the spectrogram), so a few clips at a
    # time, whose spectrograms stay in cache, run ~3x faster than the whole batch. A GPU takes the batch.
    chunk = rows
    if x.device.type == "cpu":
        bins = (n_fft // 2 + 1) * math.ceil((1 + n_samples // hop_length) / min(rate, 1.0))
        chunk = max(1, _CPU_CHUNK_BINS // bins)
    pieces = []
    for lo in range(0, rows, chunk):
        rows_x = x.narrow(0, lo, min(chunk, rows - lo))
        spec = phase_vocoder(centred_stft(rows_x, n_fft, hop_length, window), rate, hop_length)
        pieces.append(_istft(spec, n_fft, hop_length, window, length))
    return torch.cat(pieces).reshape(*lead, length)


def _kaiser_sinc(distance: torch.Tensor, cutoff: float, half_width: float, beta: float) -> torch.Tensor:
    """Low-pass interpolation kernel at ``distance`` input samples: ``2 fc sinc(2 fc d)`` (unit DC gain,
    ``fc = cutoff`` cycles per input sample) times a Kaiser window, zero beyond ``|d| = half_width``."""
    ratio = (distance / half_width).clamp(-1.0, 1.0)
    window = torch.special.i0(beta * torch.sqrt(1.0 - ratio.square())) / float(np.i0(beta))
    window = torch.where(distance.abs() < half_width, window, torch.zeros_like(window))
    return 2.0 * cutoff * torch.sinc(2.0 * cutoff * distance) * window


def _phase_table_pairs(
    n_seg: int,
    reach: int,
    step: float,
    cutoff: float,
    half_width: float,
    beta: float,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Weight tables of :func:`resample`, side by side for each phase and the next:
    ``(_PHASES, n_seg, 2 * _BLOCK)``.

    For phi = p / _PHASES, p = 0 .. _PHASES: w[p, q, i] = kernel(distance from input first + q to output i of
    a block whose first position is base + phi). Distances stay below ~200 samples, so the input's dtype
    (float32: ~1e-5 sample) is precise enough, and twice as fast as float64 for the Bessel function, the bulk
    of the fixed cost of a call on a CPU.
    """
    q = torch.arange(n_seg, device=device, dtype=dtype)
    i = torch.arange(_BLOCK, device=device, dtype=dtype)
    p = torch.arange(_PHASES + 1, device=device, dtype=dtype) / _PHASES
    distance = q.reshape(1, -1, 1) - (reach - 1) - p.reshape(-1, 1, 1) - i.reshape(1, 1, -1) * step
    tables = _kaiser_sinc(distance, cutoff, half_width, beta)  # (_PHASES + 1, n_seg, _BLOCK)
    return torch.cat([tables.narrow(0, 0, _PHASES), tables.narrow(0, 1, _PHASES)], dim=2)


@functools.lru_cache(maxsize=32)
def _cpu_phase_table_pairs(
    n_seg: int, reach: int, step: float, cutoff: float, half_width: float, beta: float, dtype: torch.dtype
) -> torch.Tensor:
    """:func:`_phase_table_pairs` on the CPU, kept for the next call with the same arguments: the variants
    resample at a handful of ratios (8 pitch steps in the default recipe) hundreds of times, and the Bessel
    function made the tables ~10 ms of every call on a CPU. Read only by :func:`_apply_blocks`. (GPUs compute
    them in microseconds, and a cache there would hold device memory.)"""
    return _phase_table_pairs(n_seg, reach, step, cutoff, half_width, beta, torch.device("cpu"), dtype)


def _apply_blocks(
    x_pad: torch.Tensor,
    seg_start: torch.Tensor,
    block_alpha: torch.Tensor,
    block_index: torch.Tensor,
    pairs: torch.Tensor,
    counts: list[int],
    n_blocks: int,
    max_elements: int,
) -> torch.Tensor:
    """The output blocks ``(batch, n_blocks, _BLOCK)`` of :func:`resample`: blocks sorted by phase, one
    matrix product per phase group (split to hold at most ``max_elements`` gathered inputs).

    How (for speed): gathering every output's taps separately is ~100x slower than a matrix product, so the
    outputs are cut into blocks of ``_BLOCK`` consecutive samples. A block reads one contiguous segment of
    the input, gathered with index arithmetic, and its weights ``(segment, block)`` depend only on the
    fractional part ``phi`` of the block's first input position. Blocks are grouped by ``phi`` quantised
    to ``1 / _PHASES``; each group is one matrix product with the weight tables of its two neighbouring
    phases, linearly interpolated in ``phi`` (~-81 dB error on white noise against evaluating the kernel at
    every tap, less for audio). Groups larger than ``max_elements`` gathered values are split.
    """
    batch, n_seg = x_pad.shape[0], pairs.shape[1]
    offsets = torch.arange(n_seg, device=x_pad.device)
    out = x_pad.new_zeros(batch, n_blocks, _BLOCK)
    chunk = max(1, max_elements // (batch * n_seg))
    start = 0
    for ph, count in enumerate(counts):
        for lo in range(start, start + count, chunk):
            hi = min(lo + chunk, start + count)
            index = seg_start.narrow(0, lo, hi - lo).unsqueeze(1) + offsets  # (blocks, n_seg) into x_pad
            segments = x_pad.index_select(1, index.reshape(-1)).reshape(batch, hi - lo, n_seg)
            both = segments @ pairs.select(0, ph)  # (batch, blocks, 2 * _BLOCK): phases ph and ph + 1
            this, following = both.split(_BLOCK, dim=-1)
            y = torch.lerp(this, following, block_alpha.narrow(0, lo, hi - lo))
            out.index_copy_(1, block_index.narrow(0, lo, hi - lo), y)
        start += count
    return out


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

    Windowed-sinc interpolation: output sample ``j`` sits at input position ``t_j = j * orig_sr / target_sr``
    (sample 0 stays aligned with sample 0, as soxr and librosa) and is the sum of the input samples within
    ``zero_crossings`` zero crossings of ``t_j`` weighted by a Kaiser-windowed sinc low-pass centred on
    ``t_j``, cut off at ``rolloff`` times the lower of the two Nyquist frequencies (so downsampling does not
    alias). Samples outside the clip count as zero.

    Written by hand because the resampler used elsewhere in the project (soxr, librosa's default) runs only
    on CPU numpy arrays, one clip at a time, and torchaudio is not a dependency.

    How it is fast: see :func:`_apply_blocks`.

    Args:
        waveforms: real ``(batch, samples)`` (or any ``(..., samples)``) at ``orig_sr`` Hz.
        orig_sr: input sample rate in Hz (any positive float).
        target_sr: output sample rate in Hz (any positive float).
        zero_crossings: sinc zero crossings kept on each side of the centre (filter length).
        rolloff: cutoff as a fraction of the lower Nyquist frequency, below 1 to leave a transition band.
        beta: Kaiser window shape (higher: lower side lobes, wider transition band).
        max_elements: largest ``batch * blocks * segment`` input values gathered at once (memory bound).

    Returns:
        ``(..., ceil(samples * target_sr / orig_sr))`` at ``target_sr`` Hz (the length
        ``librosa.resample`` returns), same dtype and device as ``waveforms``; the input itself when the
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
    if n_out == 0 or batch == 0:
        return x.new_zeros(*lead, n_out)

    # Cutoff in cycles per input sample: rolloff * half the lower rate, expressed at the input rate.
    cutoff = 0.5 * rolloff * min(1.0, 1.0 / step)
    half_width = zero_crossings / (2.0 * cutoff)  # input samples from the centre to the last zero crossing
    reach = math.ceil(half_width)  # output j uses inputs floor(t_j) + k, k in [1 - reach, reach]
    n_blocks = math.ceil(n_out / _BLOCK)
    # A block's outputs have floor(t_j) - floor(t_first) in [0, span - 1], so its taps span n_seg inputs.
    span = math.floor((_BLOCK - 1) * step) + 1
    n_seg = span + 2 * reach

    # Block geometry, computed on the host in float64 (it depends only on the rates and the length, not on
    # the data; group sizes must be Python ints to slice). Positions in float64: at 1e5 samples float32
    # would leave ~0.01 sample of timing error.
    t_first = np.arange(n_blocks, dtype=np.float64) * (_BLOCK * step)
    base = np.floor(t_first)
    phi = (t_first - base) * _PHASES
    phase = np.minimum(np.floor(phi), _PHASES - 1).astype(np.int64)
    alpha = phi - phase  # interpolation weight of the next phase table
    first = base.astype(np.int64) - (reach - 1)  # first input sample of each block's segment
    left, right = reach - 1, max(0, int(first[-1]) + n_seg - n_in)
    x_pad = F.pad(x, (left, right))  # zeros outside the clip; padded index = input index + left
    order = np.argsort(phase, kind="stable")
    counts = np.bincount(phase, minlength=_PHASES).tolist()
    # torch.tensor from Python lists (not numpy arrays): the one host-to-device path that also works for
    # fake tensors on CPU-only builds.
    seg_start = torch.tensor((first[order] + left).tolist(), device=device)
    block_alpha = torch.tensor(alpha[order].tolist(), device=device, dtype=dtype).unsqueeze(1)
    block_index = torch.tensor(order.tolist(), device=device)

    if device.type == "cpu":
        pairs = _cpu_phase_table_pairs(n_seg, reach, step, cutoff, half_width, beta, dtype)
    else:
        pairs = _phase_table_pairs(n_seg, reach, step, cutoff, half_width, beta, device, dtype)
    out = _apply_blocks(x_pad, seg_start, block_alpha, block_index, pairs, counts, n_blocks, max_elements)
    return out.reshape(batch, n_blocks * _BLOCK).narrow(1, 0, n_out).reshape(*lead, n_out)


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
    return fix_length(shifted, waveforms.shape[-1])
