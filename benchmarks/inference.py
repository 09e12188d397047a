"""Inference speed on CPU, PyTorch vs ONNX Runtime, for one model file:

1. single-clip latency, file to label: decode + mix to mono + resample + windows + model + argmax, one file
   at a time (median and 95th percentile over ``--clips`` files, after a warm-up);
2. batch throughput (clips/s): many files decoded in ``--workers`` DataLoader processes, windows batched
   ``--batch-size`` at a time (PyTorch: ``Predictor.predict_files``; ONNX Runtime: the same decoding feeding
   ``InferenceSession.run``);
3. model-only throughput on pre-decoded windows, which isolates the network (and, for ONNX, the DFT-conv
   spectrogram that replaces ``torch.stft``).

    python benchmarks/inference.py [--model runs/.../model.safetensors] [--clips 30] [--files 200]

Without ``--model``, a model with the default UrbanSound8K settings (44.1 kHz, 4 s windows, n_fft 1024,
64 mel bands, the seed CNN) is trained for a few steps on synthetic sounds: speed does not depend on how
well it is trained. Test files are 4 s, 48 kHz stereo 16-bit WAVs (resampling and down-mixing included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from urbansound.config import AudioConfig, FeatureConfig, ModelConfig
from urbansound.data.audio import load_audio
from urbansound.data.synth import CLASS_NAMES, synthesize_background, synthesize_event
from urbansound.export import export_model, parity_inputs, reference_outputs, run_onnx
from urbansound.inference import Predictor, decode_loader
from urbansound.modelfile import ModelSpec, build_classifier, save_model_file


def quick_model(path: Path, steps: int = 30) -> Path:
    """Default-settings classifier trained ``steps`` Adam steps on synthetic 4 s windows."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = ModelSpec(AudioConfig(), FeatureConfig(), ModelConfig(n_classes=10), list(CLASS_NAMES))
    model = build_classifier(spec)
    sr, duration = spec.audio.sample_rate, spec.audio.duration
    waves = np.stack(
        [
            synthesize_background(duration, sr, rng) * 0.05 + synthesize_event(name, duration, sr, rng) * 0.5
            for name in CLASS_NAMES
            for _ in range(3)
        ]
    )
    labels = torch.arange(len(CLASS_NAMES)).repeat_interleave(3)
    with torch.no_grad():
        features = model.frontend(torch.from_numpy(waves.astype(np.float32)))
    model.normalizer.set_statistics(features.mean(dim=(0, 2)), features.std(dim=(0, 2)))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(labels), (8,))
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model.classify_features(features[batch]), labels[batch]).backward()
        optimiser.step()
    return save_model_file(path, model.eval(), spec)


def write_clips(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 4 s, 48 kHz stereo 16-bit WAVs of random classes over background noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        mono = synthesize_background(4.0, 48_000, rng) * 0.05
        mono += synthesize_event(CLASS_NAMES[i % len(CLASS_NAMES)], 4.0, 48_000, rng) * 0.5
        path = folder / f"clip{i:04d}.wav"
        sf.write(path, np.stack([mono, 0.9 * mono], axis=1), 48_000, subtype="PCM_16")
        paths.append(path)
    return paths


def percentiles(seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms"


def onnx_label(session: object, predictor: Predictor, path: Path) -> str:
    """File to label with ONNX Runtime, windowed exactly like the Predictor."""
    waveform = load_audio(path, predictor.sample_rate)
    windows = predictor.windows(waveform, predictor.window_starts(waveform.shape[0]))
    probabilities = session.run(["probabilities"], {"audio": windows.astype(np.float32)})[0]
    return predictor.class_names[int(probabilities.mean(axis=0).argmax())]


def onnx_files(session: object, predictor: Predictor, paths: list[Path], batch: int, workers: int) -> int:
    """Decode in workers, run windows through ONNX Runtime ``batch`` at a time; returns files done."""
    loader = decode_loader(paths, predictor.sample_rate, workers)
    pending: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        session.run(["probabilities"], {"audio": np.concatenate(pending).astype(np.float32)})
        pending.clear()

    for _, waveform, error in loader:
        assert error is None, error
        pending.append(predictor.windows(waveform, predictor.window_starts(waveform.shape[0])))
        done += 1
        if sum(len(p) for p in pending) >= batch:
            flush()
    if pending:
        flush()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="model file (default: train a quick one)")
    parser.add_argument("--clips", type=int, default=30, help="files for the latency measurement")
    parser.add_argument("--files", type=int, default=200, help="files for the throughput measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_path = args.model or quick_model(folder / "model.safetensors")
        onnx_path = export_model(model_path, "onnx", output=folder / "model.audio.onnx").path
        predictor = Predictor.from_file(model_path)
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        spec = predictor.spec
        print(
            f"model: {model_path.name if args.model else 'quick synthetic model'} "
            f"({spec.audio.sample_rate} Hz, {spec.audio.duration} s windows, {spec.features.kind} "
            f"n_fft {spec.features.n_fft} hop {spec.features.hop_length} bands {spec.features.n_mels}); "
            f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {onnxruntime.__version__}, load average {os.getloadavg()[0]:.1f}"
        )
        audio = parity_inputs(spec, n=16, seed=5)
        _, reference = reference_outputs(predictor.model, audio)
        print(
            f"ONNX vs PyTorch, 16 synthetic windows: max |probability difference| "
            f"{np.abs(run_onnx(onnx_path, audio)[1] - reference).max():.1e}"
        )

        paths = write_clips(folder, max(args.clips, args.files))
        print(f"\n1. single-clip latency, file to label (4 s 48 kHz stereo WAV, {args.clips} files)")
        for name, label_of in (
            ("PyTorch", lambda p: predictor.predict(p).label),
            ("ONNX Runtime", lambda p: onnx_label(session, predictor, p)),
        ):
            label_of(paths[0])  # warm-up: first-call allocations and kernel selection
            times = []
            for path in paths[: args.clips]:
                start = time.perf_counter()
                label_of(path)
                times.append(time.perf_counter() - start)
            print(f"   {name:13s} {percentiles(times)}")

        files = paths[: args.files]
        print(
            f"\n2. batch throughput, files to labels ({len(files)} files, batch {args.batch_size}, "
            f"{args.workers} decoding workers)"
        )
        start = time.perf_counter()
        n = sum(r.ok for r in predictor.predict_files(files, args.batch_size, args.workers))
        print(f"   {'PyTorch':13s} {n / (time.perf_counter() - start):7.1f} clips/s")
        start = time.perf_counter()
        n = onnx_files(session, predictor, files, args.batch_size, args.workers)
        print(f"   {'ONNX Runtime':13s} {n / (time.perf_counter() - start):7.1f} clips/s")

        windows = np.stack([load_audio(p, predictor.sample_rate, predictor.window) for p in files[:64]])
        print(f"\n3. model only, pre-decoded windows (batch {args.batch_size})")
        for name, run in (
            ("PyTorch", lambda x: predictor.probabilities(x)),
            ("ONNX Runtime", lambda x: session.run(["probabilities"], {"audio": x})),
        ):
            run(windows[: args.batch_size])
            start = time.perf_counter()
            for i in range(0, len(windows), args.batch_size):
                run(windows[i : i + args.batch_size])
            print(f"   {name:13s} {len(windows) / (time.perf_counter() - start):7.1f} clips/s")


if __name__ == "__main__":
    main()
