"""Feature-extraction throughput, in one run on the same files:

1. urbansound: FeatureCache.build into an empty cache (decode, resample, mono, fix length in DataLoader
   workers; batched torch STFT + filterbank + dB in the main process; atomic .npy writes; packing).
2. the seed's way, naively per clip: librosa.load(sr=44100) + librosa.feature.melspectrogram + power_to_db.
3. the floor: decode + resample + mono + fix length alone, with the same worker processes as (1).

Targets (64-band log-mel at 44.1 kHz, 4 s clips, 2 cores): (1) >= 3x (2) and >= 85% of (3).

    python benchmarks/features.py --annotations PATH/UrbanSound8K.csv --data PATH/audio [--limit 600]

Without --annotations a synthetic set (22.05 kHz mono 16-bit 4 s, the shared real copy's format) is used.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from urbansound.config import AudioConfig, FeatureConfig
from urbansound.data.audio import load_audio
from urbansound.data.metadata import load_metadata
from urbansound.data.synth import synthesize_dataset
from urbansound.features.cache import FeatureCache


class _Decode(Dataset):
    def __init__(self, paths: list[Path], audio: AudioConfig) -> None:
        self.paths, self.audio = paths, audio

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        # Only the length goes back: the floor is the decoding itself, not moving waveforms between processes.
        return len(load_audio(self.paths[i], self.audio.sample_rate, self.audio.n_samples))


def floor(paths: list[Path], audio: AudioConfig, workers: int) -> float:
    loader = DataLoader(
        _Decode(paths, audio),
        batch_size=32,
        num_workers=workers,
        collate_fn=list,
        prefetch_factor=4 if workers else None,
    )
    start = time.perf_counter()
    n = sum(len(batch) for batch in loader)
    return n / (time.perf_counter() - start)


def project(paths: list[Path], audio: AudioConfig, features: FeatureConfig, workers: int) -> float:
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FeatureCache(cache_dir, audio, features)
        start = time.perf_counter()
        result = cache.build(paths, num_workers=workers, progress=False)
        elapsed = time.perf_counter() - start
        assert not result.failed, result.failed
    return len(paths) / elapsed


def librosa_naive(paths: list[Path], audio: AudioConfig, features: FeatureConfig) -> float:
    import librosa

    start = time.perf_counter()
    for path in paths:
        y, sr = librosa.load(path, sr=audio.sample_rate, mono=True)
        y = librosa.util.fix_length(y, size=audio.n_samples)
        mel = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=features.n_fft, hop_length=features.hop_length, n_mels=features.n_mels
        )
        librosa.power_to_db(mel, top_db=features.top_db)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotations")
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int, default=600, help="clips per pipeline")
    parser.add_argument(
        "--librosa-limit", type=int, default=150, help="clips for the (slow) librosa pipeline"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    audio, features = AudioConfig(), FeatureConfig()
    with tempfile.TemporaryDirectory() as tmp:
        if args.annotations:
            paths = [r.path for r in load_metadata(args.annotations, args.data).records][: args.limit]
            source = f"{args.annotations}"
        else:
            per_class = max(1, args.limit // 30)
            root = synthesize_dataset(
                Path(tmp), recordings_per_class=per_class, clips_per_recording=3, vary_formats=False
            )
            paths = sorted((root / "audio").glob("fold*/*.wav"))[: args.limit]
            source = "synthetic 22.05 kHz mono 16-bit 4 s clips"
        # Warm the page cache so every pipeline reads from memory, not disk.
        for p in paths:
            p.read_bytes()
        print(
            f"{len(paths)} clips from {source}; 64-band log-mel at {audio.sample_rate} Hz, "
            f"{audio.duration:g} s, {args.workers} worker process(es), {os.cpu_count()} cores"
        )
        floor_rate = floor(paths, audio, args.workers)
        project_rate = project(paths, audio, features, args.workers)
        librosa_rate = librosa_naive(paths[: args.librosa_limit], audio, features)
    print(f"{'pipeline':42s} {'clips/s':>9s}")
    print(f"{'decode+resample floor (same workers)':42s} {floor_rate:9.1f}")
    print(f"{'urbansound FeatureCache.build (cold cache)':42s} {project_rate:9.1f}")
    print(f"{'naive per-clip librosa (load+melspec+dB)':42s} {librosa_rate:9.1f}")
    print(f"urbansound / librosa: {project_rate / librosa_rate:.2f}x (target >= 3x)")
    print(f"urbansound / floor:   {project_rate / floor_rate:.1%} (target >= 85%)")


if __name__ == "__main__":
    main()
