"""Recordings read in blocks: streamed decoding and resampling, windows cut from a bounded buffer, decoding
workers sending blocks, and out-of-memory retries in the forward pass."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from _tiny_model import SAMPLE_RATE, scene, tiny_model

import urbansound.inference as inference
from urbansound.data.audio import STREAM_BLOCK_FRAMES, load_audio, resampled_length, stream_audio
from urbansound.errors import DataError, ResourceError
from urbansound.inference import Predictor, StreamingWindows, block_loader


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor.from_file(tiny_model(tmp_path_factory.getbasetemp() / "tiny_model"))


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30.3 s of street noise with a siren from 10 s to 14 s: 44.1 kHz stereo FLAC (resampled to 16 kHz)."""
    sr = 44_100
    rng = np.random.default_rng(7)
    recording = scene(None, 30.3, sr, rng)
    recording[10 * sr : 14 * sr] += scene("siren", 4.0, sr, rng)
    path = tmp_path_factory.mktemp("long") / "street.flac"
    sf.write(path, np.stack([recording, 0.8 * recording], axis=1), sr)
    return path


@pytest.mark.parametrize(
    ("rate", "channels", "frames", "target", "block"),
    [
        (44_100, 2, 100_000, 16_000, STREAM_BLOCK_FRAMES),  # downsampling, stereo
        (22_050, 1, 3 * 4096, 16_000, 4096),  # an exact number of blocks: the end is an empty read
        (8_000, 1, 12_345, 44_100, 1000),  # upsampling
        (44_100, 1, 3 * 44_100 + 1, 22_050, 5000),  # an exact half sample: rounding of the length
        (16_000, 2, 5000, 16_000, 1024),  # no resampling
        (48_000, 1, 7, 16_000, 4096),  # shorter than the resampler's filter
    ],
)
def test_streamed_decoding_equals_whole_file(
    tmp_path: Path, rate: int, channels: int, frames: int, target: int, block: int
) -> None:
    audio = np.random.default_rng(frames).uniform(-0.5, 0.5, (frames, channels)).astype(np.float32)
    path = tmp_path / "audio.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    whole = load_audio(path, target)
    blocks = list(stream_audio(path, target, block_frames=block))
    streamed = np.concatenate(blocks)
    assert streamed.dtype == np.float32
    assert streamed.shape == whole.shape == (resampled_length(frames, rate, target),)
    # soxr's streaming resampler runs the whole-signal filter; only float rounding could differ.
    assert np.abs(streamed - whole).max() <= 1e-6
    # About a block's worth each: soxr releases output in bursts of up to ~1.7x the nominal ratio.
    assert max(b.shape[0] for b in blocks) <= 2 * block * target / rate + 64 + 1


def test_resampled_length_is_soxr_length() -> None:
    rng = np.random.default_rng(0)
    for orig, target in [(44_100, 16_000), (44_100, 22_050), (8_000, 44_100), (48_000, 32_000)]:
        for frames in [1, 2, 3, 441, 882, 1001, *rng.integers(1, 50_000, 20).tolist()]:
            expected = soxr.resample(np.zeros(frames, np.float32), orig, target, quality="HQ").shape[0]
            assert resampled_length(frames, orig, target) == expected, (orig, target, frames)


def test_streamed_errors_name_the_file(tmp_path: Path) -> None:
    nan = np.zeros(50_000, np.float32)
    nan[40_000] = np.nan  # in the second block
    sf.write(tmp_path / "nan.wav", nan, 16_000, subtype="FLOAT")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    for name, reason in [("nan", "NaN"), ("empty", "no audio samples"), ("broken", "cannot decode")]:
        with pytest.raises(DataError, match=reason) as caught:
            list(stream_audio(tmp_path / f"{name}.wav", 16_000, block_frames=32_768))
        assert f"{name}.wav" in str(caught.value)


def test_streaming_windows_match_window_starts(predictor: Predictor) -> None:
    """Every layout (short, exactly one window, a tail, hop larger than the window), any block sizes."""
    rng = np.random.default_rng(1)
    window = predictor.window
    for n in [1, window // 3, window, window + 1, 2 * window, round(2.3 * window), 5 * window + 17]:
        for hop in [None, 0.25, 0.7, 1.0, 1.6]:
            waveform = rng.standard_normal(n).astype(np.float32)
            starts = predictor.window_starts(n, hop)
            cutter = StreamingWindows(window, predictor.hop_samples(hop))
            got_starts, got_windows, biggest = [], [], 0
            position = 0
            while position < n:
                size = int(rng.integers(1, window // 2))
                biggest = max(biggest, size)
                for start, cut in cutter.push(waveform[position : position + size]):
                    got_starts.append(start)
                    got_windows.append(cut.copy())  # a view, valid until the next push
                position += size
            for start, cut in cutter.finish():
                got_starts.append(start)
                got_windows.append(cut.copy())
            assert got_starts == starts.tolist(), (n, hop)
            np.testing.assert_array_equal(np.stack(got_windows), predictor.windows(waveform, starts))
            assert cutter.peak_buffered <= window + biggest


def test_streamed_timeline_equals_whole_file(predictor: Predictor, street: Path) -> None:
    """The file read in blocks gives today's whole-file result: same windows, same probabilities."""
    whole = load_audio(street, SAMPLE_RATE)
    for hop in [None, 0.7]:  # 0.7 s leaves a tail: the last window is aligned to the end
        expected = predictor.predict_waveform(whole, hop=hop)
        streamed = predictor.predict(street, hop=hop, batch_size=16)
        assert [w.start_s for w in streamed.windows] == [w.start_s for w in expected.windows]
        assert [w.end_s for w in streamed.windows] == [w.end_s for w in expected.windows]
        assert streamed.duration_s == expected.duration_s
        np.testing.assert_allclose(
            np.stack([w.probabilities for w in streamed.windows]),
            np.stack([w.probabilities for w in expected.windows]),
            atol=1e-5,
        )
        np.testing.assert_allclose(streamed.probabilities, expected.probabilities, atol=1e-5)
    assert streamed.windows[-1].end_s == pytest.approx(30.3, abs=1e-4)
    inside = [w.label for w in streamed.windows if w.start_s >= 10.0 and w.end_s <= 14.0]
    assert inside == ["siren"] * 4  # starts 10.5, 11.2, 11.9, 12.6 s


def test_file_is_read_in_blocks_and_holds_a_few_windows(
    predictor: Predictor, street: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    original_read = sf.SoundFile.read

    def recording_read(self: sf.SoundFile, frames: int = -1, *args: object, **kwargs: object) -> np.ndarray:
        data = original_read(self, frames, *args, **kwargs)
        reads.append(data.shape[0])
        return data

    cutters: list[StreamingWindows] = []

    class RecordingWindows(StreamingWindows):
        def __init__(self, window: int, hop: int) -> None:
            super().__init__(window, hop)
            cutters.append(self)

    monkeypatch.setattr(sf.SoundFile, "read", recording_read)
    monkeypatch.setattr(inference, "StreamingWindows", RecordingWindows)
    prediction = predictor.predict(street)
    frames = sf.info(str(street)).frames
    assert max(reads) == STREAM_BLOCK_FRAMES and sum(reads) == frames
    assert len(reads) == frames // STREAM_BLOCK_FRAMES + 1
    # At most one window plus one resampled block at any time (a block: up to twice its nominal length in
    # soxr's output bursts, plus the held-back samples), whatever the file's length.
    (cutter,) = cutters
    block_out = 2 * STREAM_BLOCK_FRAMES * SAMPLE_RATE / 44_100 + 64 + 1
    assert cutter.peak_buffered <= predictor.window + block_out
    assert cutter.n_samples == round(prediction.duration_s * SAMPLE_RATE)


def test_decoding_workers_send_blocks_not_files(predictor: Predictor, street: Path, tmp_path: Path) -> None:
    short = tmp_path / "bark.wav"
    sf.write(short, scene("dog_bark", 0.4, 22_050, np.random.default_rng(3)), 22_050)
    missing = tmp_path / "missing.wav"
    messages = list(block_loader([street, short, missing], SAMPLE_RATE, num_workers=0))
    long_blocks = [m for m in messages if m.index == 0]
    assert len(long_blocks) > 10 and [m.last for m in long_blocks].count(True) == 1 and long_blocks[-1].last
    assert max(m.samples.shape[0] for m in long_blocks) < predictor.window  # a block, never the whole file
    assert [(m.index, m.last) for m in messages[len(long_blocks) :]] == [(1, True), (2, True)]
    assert "no such file" in (messages[-1].error or "")

    results = list(predictor.predict_files([street, missing, short, street], batch_size=8, num_workers=2))
    assert [r.ok for r in results] == [True, False, True, True]
    single = predictor.predict(street)
    for result in (results[0], results[3]):
        assert result.prediction is not None
        assert [w.start_s for w in result.prediction.windows] == [w.start_s for w in single.windows]
        np.testing.assert_allclose(result.prediction.probabilities, single.probabilities, atol=1e-5)
    assert results[2].prediction is not None and len(results[2].prediction.windows) == 1


class OutOfMemoryAbove(torch.nn.Module):
    """A classifier whose forward pass runs out of device memory on batches over ``limit`` windows."""

    def __init__(self, model: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = model
        self.frontend = model.frontend
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_retries_at_half_the_batch(
    predictor: Predictor, caplog: pytest.LogCaptureFixture
) -> None:
    windows = np.random.default_rng(4).uniform(-0.3, 0.3, (32, predictor.window)).astype(np.float32)
    expected = predictor.probabilities(windows)
    wrapper = OutOfMemoryAbove(predictor.model, limit=5)
    small = Predictor(wrapper, predictor.spec)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="urbansound.inference"):
        got = small.probabilities(windows)
        again = small.probabilities(windows[:10])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(again, expected[:10], atol=1e-6)
    # 32 fails, 16 fails, 8 fails, then batches of 4; the next call starts at 4 and does not warn again.
    assert wrapper.sizes == [32, 16, 8] + [4] * 8 + [4, 4, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "batch of 32 windows" in warnings[0] and "4 at a time" in warnings[0]


def test_out_of_memory_for_one_window_is_a_resource_error(predictor: Predictor) -> None:
    small = Predictor(OutOfMemoryAbove(predictor.model, limit=0), predictor.spec)  # type: ignore[arg-type]
    with pytest.raises(ResourceError, match="single window.*--device cpu"):
        small.probabilities(np.zeros((3, predictor.window), np.float32))
