"""Inference speed on CPU, PyTorch vs ONNX Runtime, and memory on long recordings, for one model file:

1. single-clip latency, file to label: decode + mix to mono + resample + windows + model + argmax, one file
   at a time (median and 95th percentile over ``--clips`` files, after a warm-up);
2. batch throughput (clips/s): many files decoded in ``--workers`` DataLoader processes, windows batched
   ``--batch-size`` at a time (PyTorch: ``Predictor.predict_files``; ONNX Runtime: the same decoding feeding
   ``InferenceSession.run``);
3. model-only throughput on pre-decoded windows, which isolates the network (and, for ONNX, the DFT-conv
   spectrogram that replaces ``torch.stft``);
4. long recordings: wall time and peak resident memory of ``urbansound predict --timeline`` on one synthetic
   recording of each of ``--long`` seconds (default 1 minute, 1 hour, 10 hours), each in its own process
   (peak RSS from ``os.wait4``). The files are mono 16-bit WAV at ``--long-rate`` Hz (default 22,050 Hz:
   10 hours is 1.6 GB on disk; the model's 44.1 kHz means resampling is included), written a minute at a
   time and deleted after their measurement. ``--baseline REV`` measures a git revision the same way.

    python benchmarks/inference.py [--model runs/.../model.safetensors] [--clips 30] [--files 200]
    python benchmarks/inference.py --only long [--long 60,3600,36000] [--baseline HEAD]

Without ``--model``, a model with ``--recipe``'s settings (default: the default recipe, 22,050 Hz, 4 s
windows, n_fft 1024, hop 1024, 128 mel bands, a 4-seed ensemble of quarter-width ResNets; ``--recipe
baseline``: 44.1 kHz, 64 bands, the baseline CNN) is trained for a few steps on synthetic sounds: speed
does not depend on how well it is trained. Test files for 1-3 are 4 s, 48 kHz stereo 16-bit WAVs
(resampling and down-mixing included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from urbansound.config import DEFAULT_RECIPE, RunConfig, apply_recipe
from urbansound.data.audio import load_audio
from urbansound.data.synth import CLASS_NAMES, synthesize_background, synthesize_event
from urbansound.export import export_model, parity_inputs, reference_outputs, run_onnx
from urbansound.inference import Predictor, StreamingWindows, block_loader
from urbansound.modelfile import ModelSpec, build_classifier, save_model_file

REPO = Path(__file__).resolve().parents[1]


def quick_model(path: Path, recipe: str = DEFAULT_RECIPE, steps: int = 30) -> Path:
    """A classifier with ``recipe``'s audio, features and model (an ensemble for the default recipe),
    trained ``steps`` Adam steps on synthetic 4 s windows."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = apply_recipe(RunConfig(), recipe)
    model_config = replace(config.model, n_classes=len(CLASS_NAMES))
    spec = ModelSpec(config.audio, config.features, model_config, list(CLASS_NAMES))
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
    """Decode in workers and cut windows as ``predict_files`` does, run them through ONNX Runtime ``batch``
    at a time; returns files done."""
    hop = predictor.hop_samples(None)
    cutters: dict[int, StreamingWindows] = {}
    pending: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        session.run(["probabilities"], {"audio": np.stack(pending)})
        pending.clear()

    for message in block_loader(paths, predictor.sample_rate, workers):
        assert message.error is None, message.error
        cutter = cutters.setdefault(message.index, StreamingWindows(predictor.window, hop))
        windows = cutter.push(message.samples)
        if message.last:
            windows += cutter.finish()
            del cutters[message.index]
            done += 1
        pending.extend(window.copy() for _, window in windows)  # views into the cutter's buffer
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return done


def write_long_recording(path: Path, seconds: float, sample_rate: int) -> Path:
    """A mono 16-bit WAV of ``seconds`` of street noise with events, written a minute at a time (one minute
    is synthesised and written over and over with varying gain: the content does not change the cost)."""
    rng = np.random.default_rng(0)
    minute = synthesize_background(60.0, sample_rate, rng) * 0.05
    for k, name in enumerate(CLASS_NAMES):
        at = k * 6 * sample_rate
        minute[at : at + 4 * sample_rate] += synthesize_event(name, 4.0, sample_rate, rng) * 0.4
    minute = np.clip(minute, -1.0, 1.0)
    remaining = round(seconds * sample_rate)
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as handle:
        while remaining > 0:
            n = min(remaining, minute.shape[0])
            handle.write(minute[:n] * rng.uniform(0.5, 1.0))
            remaining -= n
    return path


# Runs a command and prints its peak RSS. A small process of its own in between matters: a child's maxrss
# starts from the RSS of the process that forked it (Linux carries the pre-exec high-water mark over), so
# measuring straight from this benchmark, torch loaded and clips decoded, would report this process's size.
_PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure_predict(model_path: Path, audio: Path, output: Path, src: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of ``urbansound predict --timeline`` in a process of its own,
    with the package from ``src``."""
    command = [sys.executable, "-m", "urbansound", "-q", "predict", str(model_path), str(audio)]
    command += ["--timeline", "--output", str(output)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *command], env=env, check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return wall, int(result.stdout.split()[-1]) * scale


def long_recordings(
    folder: Path, model_path: Path, durations: list[float], rate: int, baseline: str | None
) -> None:
    """Section 4: time and peak memory of ``predict --timeline`` per recording length."""
    sources = {"this checkout": REPO / "src"}
    if baseline:
        extracted = folder / "baseline"
        extracted.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", baseline, "src"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(extracted)], input=archive.stdout, check=True)
        sources[f"baseline {baseline}"] = extracted / "src"
    needed = round(max(durations) * rate) * 2 + 2**20  # 16-bit mono, plus headroom
    if shutil.disk_usage(folder).free < 1.2 * needed:
        raise SystemExit(f"{folder} has too little free space for a {max(durations):g} s recording")
    print(
        f"\n4. long recordings: `urbansound predict --timeline`, one file per process "
        f"({rate} Hz mono 16-bit WAV)"
    )
    print(f"   {'code':22s} {'length':>8s} {'wall':>9s} {'s per hour':>10s} {'peak RSS':>10s}")
    for seconds in durations:
        audio = write_long_recording(folder / f"long-{seconds:g}.wav", seconds, rate)
        for name, src in sources.items():
            wall, peak = measure_predict(model_path, audio, folder / "timeline.txt", src)
            print(
                f"   {name:22s} {format_length(seconds):>8s} {wall:8.1f}s {wall * 3600 / seconds:10.1f} "
                f"{peak / 2**20:7.0f} MiB",
                flush=True,
            )
        audio.unlink()


def format_length(seconds: float) -> str:
    """``36000`` -> ``10 h``, ``60`` -> ``1 min``."""
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def describe(predictor: Predictor, model_path: Path, quick: bool) -> str:
    spec = predictor.spec
    return (
        f"model: {'quick synthetic model' if quick else model_path.name} "
        f"({spec.model.name} x{spec.model.ensemble} {spec.model.kwargs or ''}; "
        f"{spec.audio.sample_rate} Hz, {spec.audio.duration} s windows, {spec.features.kind} "
        f"n_fft {spec.features.n_fft} hop {spec.features.hop_length} bands {spec.features.n_mels}); "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def speed(folder: Path, model_path: Path, predictor: Predictor, args: argparse.Namespace) -> None:
    """Sections 1-3: latency, batch throughput and model-only throughput, PyTorch vs ONNX Runtime."""
    import onnxruntime

    onnx_path = export_model(model_path, "onnx", output=folder / "model.audio.onnx").path
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    audio = parity_inputs(predictor.spec, n=16, seed=5)
    _, reference = reference_outputs(predictor.model, audio)
    print(
        f"onnxruntime {onnxruntime.__version__}; ONNX vs PyTorch, 16 synthetic windows: max |probability "
        f"difference| {np.abs(run_onnx(onnx_path, audio)[1] - reference).max():.1e}"
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


def live_latency(predictor: Predictor, hop_s: float, hops: int) -> None:
    """Section 5: ``urbansound listen`` / ``/stream``'s latency from the end of a hop (its last sample
    arriving) to its result, feeding a synthetic street recording one hop at a time, after a warm-up."""
    from urbansound.live import LiveClassifier

    rng = np.random.default_rng(7)
    sr = predictor.sample_rate
    seconds = predictor.window_s + hop_s * (hops + 3)
    audio = (synthesize_background(seconds, sr, rng) * 0.05).astype(np.float32)
    live = LiveClassifier(predictor, hop=hop_s)
    hop = predictor.hop_samples(hop_s)
    latencies = []
    for start in range(0, len(audio) - hop + 1, hop):
        latencies += [r.latency_ms / 1000 for r in live.push(audio[start : start + hop])]
    print(
        f"\n5. live stream: latency from the end of a hop to its result ({hop_s:g} s hops, "
        f"{torch.get_num_threads()} threads, {len(latencies) - 3} hops after 3 warm-up)"
    )
    print(f"   {'PyTorch':13s} {percentiles(latencies[3:])}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="model file (default: train a quick one)")
    parser.add_argument(
        "--recipe", default=DEFAULT_RECIPE, help="the quick model's settings (default: the default recipe)"
    )
    parser.add_argument(
        "--only", choices=("speed", "long", "live"), default=None, help="sections 1-3, 4 or 5 only"
    )
    parser.add_argument("--hop", type=float, default=0.5, help="seconds per hop in section 5")
    parser.add_argument("--hops", type=int, default=40, help="hops timed in section 5")
    parser.add_argument("--clips", type=int, default=30, help="files for the latency measurement")
    parser.add_argument("--files", type=int, default=200, help="files for the throughput measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--long", default="60,3600,36000", help="comma-separated recording lengths (s) for section 4"
    )
    parser.add_argument("--long-rate", type=int, default=22_050, help="sample rate (Hz) of those recordings")
    parser.add_argument("--baseline", default=None, help="git revision to measure in section 4 as well")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_path = args.model or quick_model(folder / "model.safetensors", args.recipe)
        predictor = Predictor.from_file(model_path)
        print(describe(predictor, model_path, quick=args.model is None), flush=True)
        if args.only in (None, "speed"):
            speed(folder, model_path, predictor, args)
        if args.only in (None, "live"):
            live_latency(predictor, args.hop, args.hops)
        if args.only in (None, "long"):
            durations = [float(x) for x in args.long.split(",")]
            long_recordings(folder, model_path, durations, args.long_rate, args.baseline)


if __name__ == "__main__":
    main()
