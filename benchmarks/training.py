"""Training throughput, in one run on the same clips:

1. one epoch with cached, memory-mapped features (urbansound's way) against decoding, resampling and
   computing features every epoch in DataLoader workers (the seed's way; workers = cores), each with the
   fraction of the epoch spent waiting for data;
2. 1 process against 2 processes on CPU (``torchrun -m urbansound train``, gloo, global batch 16);
3. the peak resident memory of each (every measurement runs in its own process, so the peak is its own;
   memory-mapped feature pages count in RSS but are one shared copy in the page cache);
4. on a CUDA machine: epoch time with mixed precision, GPU utilisation and peak GPU memory, and the
   feature front end on the GPU (skipped, with a line saying so, without CUDA).

    python benchmarks/training.py [--annotations PATH/UrbanSound8K.csv --data PATH/audio] [--limit 400]

With real data, ``--limit`` clips of the first fold train and a quarter as many of the second validate.
Without ``--annotations`` a synthetic set (22.05 kHz mono 4 s) is used. Features: the defaults (44.1 kHz,
4 s, 64-band log-mel), batch 16, the seed's CNN.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from urbansound.config import AudioConfig, FeatureConfig, ModelConfig, TrainingConfig
from urbansound.data.audio import load_audio
from urbansound.data.metadata import load_metadata
from urbansound.data.synth import synthesize_dataset
from urbansound.features.cache import FeatureCache, band_statistics
from urbansound.features.frontend import SpectrogramFrontend
from urbansound.modelfile import ModelSpec, build_classifier
from urbansound.training.distributed import DistributedContext
from urbansound.training.fit import make_optimizer
from urbansound.training.hardware import kernel_choice, prepare_model
from urbansound.training.loop import FeatureDataset, make_loader, train_one_epoch
from urbansound.training.run_folder import RunFolder, read_history

BATCH = 16


# ---- data -------------------------------------------------------------------------------------------


def subset(annotations: str, data: str, limit: int, dest: Path) -> tuple[Path, Path]:
    """A metadata CSV with ``limit`` clips of the first fold and ``limit // 4`` of the second."""
    index = load_metadata(annotations, data)
    folds = index.folds[:2]
    with open(annotations, newline="") as handle:
        rows = list(csv.DictReader(handle))
    keep = _every_class([r for r in rows if int(r["fold"]) == folds[0]], limit)
    keep += _every_class([r for r in rows if int(r["fold"]) == folds[1]], max(limit // 4, 20))
    out = dest / "subset.csv"
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    return out, Path(data)


def _every_class(rows: list[dict[str, str]], limit: int) -> list[dict[str, str]]:
    """``limit`` rows taken from each class in turn, so a small subset still has every class."""
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_class.setdefault(row["classID"], []).append(row)
    queues = [iter(group) for _, group in sorted(by_class.items())]
    keep: list[dict[str, str]] = []
    while queues and len(keep) < limit:
        for queue in list(queues):
            row = next(queue, None)
            if row is None:
                queues.remove(queue)
            elif len(keep) < limit:
                keep.append(row)
    return keep


def synthetic(limit: int, dest: Path) -> tuple[Path, Path]:
    per_class = max(1, (limit + limit // 4) // 30)
    root = synthesize_dataset(
        dest, recordings_per_class=per_class, clips_per_recording=3, n_folds=2, vary_formats=False
    )
    return root / "metadata" / "UrbanSound8K.csv", root / "audio"


def train_clips(annotations: Path, data: Path) -> tuple[list[Path], list[int], list[str]]:
    index = load_metadata(annotations, data)
    first = index.folds[0]
    records = [r for r in index.records if r.fold == first]
    return [r.path for r in records], [r.class_id for r in records], index.class_names


# ---- measurements, each run in its own process --------------------------------------------------------


class _DecodeEveryEpoch(Dataset):
    """The seed's way: decode, resample, fix length and compute the spectrogram in ``__getitem__``."""

    def __init__(self, paths: list[Path], labels: list[int], audio: AudioConfig, features: FeatureConfig):
        self.paths, self.labels, self.audio = paths, labels, audio
        self.frontend = SpectrogramFrontend(features, audio.sample_rate)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        wav = load_audio(self.paths[i], self.audio.sample_rate, self.audio.n_samples)
        with torch.no_grad():
            return self.frontend(torch.from_numpy(wav)[None])[0], self.labels[i]  # (bands, frames)


def _one_thread_per_worker(_: int) -> None:
    torch.set_num_threads(1)  # workers = cores already; more threads per worker would oversubscribe


def _train_epochs(
    loader_for_epoch, n_classes: int, mean, std, device: torch.device, epochs: int, precision: str = "fp32"
) -> dict[str, float]:
    spec = ModelSpec(
        AudioConfig(), FeatureConfig(), ModelConfig(n_classes=n_classes), [str(i) for i in range(n_classes)]
    )
    torch.manual_seed(0)
    model = build_classifier(spec)
    model.normalizer.set_statistics(torch.from_numpy(mean), torch.from_numpy(std))
    runner = prepare_model(model, DistributedContext(device=device), precision)
    first = loader_for_epoch(1)
    optimizer, scheduler = make_optimizer(model, TrainingConfig(epochs=epochs), len(first))
    stats = []
    with kernel_choice(device, deterministic=False):  # as training runs: cuDNN autotuning on CUDA
        for epoch in range(1, epochs + 1):
            loader = first if epoch == 1 else loader_for_epoch(epoch)
            stats.append(train_one_epoch(runner, loader, optimizer, scheduler, device))
            if device.type == "cuda":
                torch.cuda.synchronize()
    timed = stats[1:] or stats  # the first epoch pays one-off costs (allocator, cuDNN autotuning)
    seconds = float(np.mean([s.seconds for s in timed]))
    return {
        "epoch_s": seconds,
        "clips_per_s": timed[0].n_clips / seconds,
        "data_wait": float(np.mean([s.data_wait_fraction for s in timed])),
        "first_epoch_s": stats[0].seconds,
    }


def section_cached(args: argparse.Namespace) -> dict[str, float]:
    paths, labels, names = train_clips(Path(args.annotations), Path(args.data))
    cache = FeatureCache(args.cache_dir, AudioConfig(), FeatureConfig())
    start = time.perf_counter()
    cached = cache.build(paths, progress=False)
    build_s = time.perf_counter() - start
    mean, std = band_statistics(cached.array, range(len(paths)))
    dataset = FeatureDataset(cached.array, labels, range(len(paths)))
    result = _train_epochs(
        lambda e: make_loader(dataset, BATCH, shuffle=True, epoch=e),
        len(names),
        mean,
        std,
        torch.device("cpu"),
        args.epochs,
    )
    result["cache_build_s"] = build_s
    result["cache_mib"] = cached.array.nbytes / 2**20
    return result


def section_seed(args: argparse.Namespace) -> dict[str, float]:
    paths, labels, names = train_clips(Path(args.annotations), Path(args.data))
    cached = FeatureCache(args.cache_dir, AudioConfig(), FeatureConfig()).build(paths, progress=False)
    mean, std = band_statistics(cached.array, range(len(paths)))
    dataset = _DecodeEveryEpoch(paths, labels, AudioConfig(), FeatureConfig())
    workers = os.cpu_count() or 1

    def loader(epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(epoch)
        return DataLoader(
            dataset,
            batch_size=BATCH,
            shuffle=True,
            generator=generator,
            num_workers=workers,
            worker_init_fn=_one_thread_per_worker,
            persistent_workers=False,
        )

    return _train_epochs(loader, len(names), mean, std, torch.device("cpu"), args.seed_epochs)


def section_gpu(args: argparse.Namespace) -> dict[str, float]:
    paths, labels, names = train_clips(Path(args.annotations), Path(args.data))
    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        FeatureCache(tmp, AudioConfig(), FeatureConfig()).build(paths, progress=False, device=device)
        gpu_build_s = time.perf_counter() - start
    cached = FeatureCache(args.cache_dir, AudioConfig(), FeatureConfig()).build(paths, progress=False)
    mean, std = band_statistics(cached.array, range(len(paths)))
    dataset = FeatureDataset(cached.array, labels, range(len(paths)))
    samples: list[float] = []
    stop = threading.Event()

    def sample_utilisation() -> None:
        while not stop.is_set():
            try:
                samples.append(float(torch.cuda.utilization(device)))
            except Exception:  # noqa: BLE001 - needs NVML (nvidia-ml-py); report what we have
                return
            time.sleep(0.05)

    torch.cuda.reset_peak_memory_stats(device)
    sampler = threading.Thread(target=sample_utilisation, daemon=True)
    sampler.start()
    result = _train_epochs(
        lambda e: make_loader(dataset, BATCH, shuffle=True, epoch=e, device=device),
        len(names),
        mean,
        std,
        device,
        args.epochs,
        precision="auto",
    )
    stop.set()
    sampler.join()
    result["gpu_utilisation_pct"] = float(np.mean(samples)) if samples else float("nan")
    result["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["gpu_feature_build_s"] = gpu_build_s
    result["gpu_name"] = torch.cuda.get_device_name(device)  # type: ignore[assignment]
    return result


def section_ddp(args: argparse.Namespace) -> dict[str, float]:
    """``torchrun -m urbansound train`` with ``--nproc`` processes; throughput from history.csv."""
    with tempfile.TemporaryDirectory() as runs:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(args.nproc), "-m", "urbansound", "-q", "train",
            "--annotations", args.annotations, "--data", args.data, "--val-fraction", "0.2",
            "--train-folds", str(args.train_fold), "--test-fold", str(args.test_fold),
            "--epochs", str(args.epochs), "--batch-size", str(BATCH), "--device", "cpu",
            "--cache-dir", args.cache_dir, "--runs-dir", runs,
        ]  # fmt: skip
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
        (run_dir,) = Path(runs).iterdir()
        folder = RunFolder(run_dir)
        history = read_history(folder.history_path())
        n_train = folder.read_metrics().split["sizes"]["train"]
    timed = history[1:] or history
    seconds = float(np.mean([float(r["seconds"]) for r in timed]))
    return {
        "epoch_s": seconds,
        "clips_per_s": n_train / seconds,
        "data_wait": float(np.mean([float(r["data_wait_fraction"]) for r in timed])),
    }


SECTIONS = {"cached": section_cached, "seed": section_seed, "gpu": section_gpu, "ddp": section_ddp}


def run_section(name: str, args: argparse.Namespace, **extra: object) -> dict[str, float]:
    """Run one measurement in a fresh interpreter and return its figures plus its peak memory."""
    command = [
        sys.executable,
        __file__,
        "--section",
        name,
        "--annotations",
        str(args.annotations),
        "--data",
        str(args.data),
        "--cache-dir",
        args.cache_dir,
        "--epochs",
        str(args.epochs),
        "--seed-epochs",
        str(args.seed_epochs),
    ]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"benchmark section {name} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotations")
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int, default=400, help="training clips")
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per cached measurement (first not timed)"
    )
    parser.add_argument(
        "--seed-epochs", type=int, default=2, help="epochs of the seed's way (first not timed)"
    )
    parser.add_argument("--section", choices=sorted(SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--nproc", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--train-fold", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--test-fold", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.section:
        result = SECTIONS[args.section](args)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_child_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        if args.annotations:
            annotations, data = subset(args.annotations, args.data, args.limit, Path(tmp))
            source = "real UrbanSound8K clips"
        else:
            annotations, data = synthetic(args.limit, Path(tmp))
            source = "synthetic clips"
        args.annotations, args.data, args.cache_dir = str(annotations), str(data), str(Path(tmp) / "cache")
        index = load_metadata(annotations, data)
        n_train = sum(r.fold == index.folds[0] for r in index.records)
        print(
            f"{n_train} training clips ({source}), 44.1 kHz 4 s 64-band log-mel, batch {BATCH}, seed CNN; "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}"
        )
        folds = {"train_fold": index.folds[0], "test_fold": index.folds[1]}
        cached = run_section("cached", args)
        print(
            f"feature cache: built once in {cached['cache_build_s']:.1f} s, {cached['cache_mib']:.0f} MiB "
            "memory-mapped"
        )
        rows = [
            ("cached features, 1 process", cached),
            (f"decode + features every epoch ({os.cpu_count()} workers)", run_section("seed", args)),
            (
                f"torchrun, 1 process x {os.cpu_count()} threads (CPU)",
                run_section("ddp", args, nproc=1, **folds),
            ),
            ("torchrun, 1 process x 1 thread (CPU)", run_section("ddp", args, nproc=1, threads=1, **folds)),
            ("torchrun, 2 processes x 1 thread (CPU, gloo)", run_section("ddp", args, nproc=2, **folds)),
        ]
        gpu = run_section("gpu", args) if torch.cuda.is_available() else None
        if gpu is not None:
            rows.append((f"GPU {gpu['gpu_name']}, cached, AMP", gpu))

    print(f"\n{'measurement':52s} {'epoch s':>8s} {'clips/s':>8s} {'data wait':>9s} {'peak RSS MiB':>16s}")
    for name, r in rows:
        rss = f"{r['peak_rss_mib']:.0f}/{r['peak_child_rss_mib']:.0f}"
        wait = f"{100 * r['data_wait']:.1f}%"
        print(f"{name:52s} {r['epoch_s']:8.2f} {r['clips_per_s']:8.1f} {wait:>9s} {rss:>16s}")
    print("(peak RSS: the measuring process / its largest child: loader worker, or torchrun worker)")
    speedup = rows[1][1]["epoch_s"] / cached["epoch_s"]
    print(f"cached features vs decoding every epoch: {speedup:.1f}x faster per epoch")
    one, one_thread, two = (rows[i][1]["clips_per_s"] for i in (2, 3, 4))
    print(f"2 vs 1 CPU processes: {two / one:.2f}x the throughput ({two / one_thread:.2f}x that of 1 thread)")
    if gpu is None:
        print("GPU: skipped (no CUDA device on this machine)")
    else:
        print(
            f"GPU: utilisation {gpu['gpu_utilisation_pct']:.0f}% during training, peak "
            f"{gpu['gpu_peak_mib']:.0f} MiB allocated; features on the GPU in "
            f"{gpu['gpu_feature_build_s']:.1f} s (CPU: {cached['cache_build_s']:.1f} s)"
        )


if __name__ == "__main__":
    main()
