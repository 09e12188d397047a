"""GPU figures of the default recipe, in one command (about 5 minutes on one H100/H200-class GPU):

1. training clips/s of the default model (quarter-width ResNet) and the baseline recipe's 4-block CNN at batch
   32, 256 and 1024, on the default recipe's features (128 bands x 87 frames) held on the GPU, with the
   recipe's SpecAugment and mixup, mixed precision and channels-last; the share of each step waiting for
   data; peak GPU memory;
2. feature-cache build time on the GPU against the CPU (cold cache, every core decoding);
3. augmentation variants (time stretch + pitch shift + shift + gain, batched torch) per second on the GPU,
   and on the CPU for comparison; the cost of fresh variants (``--fresh-variants``) per training epoch;
4. the wall time of ``urbansound crossval`` over 10 folds with the default recipe and one member (features and
   variants included, cold cache), and the time projected for the recipe's 4-member ensemble.

    python benchmarks/gpu.py [--annotations PATH/UrbanSound8K.csv --data PATH/audio] [--compile]

Without ``--annotations`` a synthetic set of the full dataset's size is written first (8,730 clips: 10
classes x 97 recordings x 9 slices, 22.05 kHz mono 4 s). Without CUDA it says so and exits 0;
``--device cpu --clips 180 --batches 32 --steps 3 --variant-clips 16 --crossval-folds 2 --crossval-epochs 1``
runs the same steps small on a CPU, to check
the script itself.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from urbansound.config import RunConfig, apply_recipe
from urbansound.data.metadata import load_metadata
from urbansound.data.synth import synthesize_dataset
from urbansound.features.augment import spec_augment_from_config
from urbansound.features.cache import FeatureCache, band_statistics, decode_clips, file_key
from urbansound.features.fresh_variants import FreshVariants
from urbansound.modelfile import ModelSpec, build_classifier
from urbansound.models.complexity import count_macs
from urbansound.training.distributed import DistributedContext
from urbansound.training.fit import make_optimizer
from urbansound.training.hardware import kernel_choice, prepare_model
from urbansound.training.loop import (
    FeatureDataset,
    ResidentFeatures,
    StepSettings,
    epoch_batches,
    train_one_epoch,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_recipe() -> RunConfig:
    return apply_recipe(RunConfig(), "default")


def dataset(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    """The metadata CSV and audio folder: the user's, or a synthetic set written now."""
    if args.annotations:
        return Path(args.annotations), Path(args.data)
    per_class = max(1, args.clips // 90)
    started = time.perf_counter()
    root = synthesize_dataset(
        workdir, recordings_per_class=per_class, clips_per_recording=9, vary_formats=False
    )
    n = len(load_metadata(root / "metadata" / "UrbanSound8K.csv", root / "audio").records)
    print(f"synthetic set: {n} clips written in {time.perf_counter() - started:.0f} s")
    return root / "metadata" / "UrbanSound8K.csv", root / "audio"


def cache_build(paths: list[Path], workdir: Path, device: torch.device) -> tuple[FeatureCache, np.ndarray]:
    """Feature-cache build time on ``device`` against the CPU, both cold; returns the device's cache."""
    config = default_recipe()
    times = {}
    built = None
    for where in dict.fromkeys([device, torch.device("cpu")]):
        cache = FeatureCache(workdir / f"cache-{where.type}", config.audio, config.features)
        _sync(where)
        started = time.perf_counter()
        result = cache.build(paths, progress=False, device=where)
        _sync(where)
        times[where.type] = time.perf_counter() - started
        if built is None:
            built = (cache, result.array)
    for name, seconds in times.items():
        print(
            f"feature cache, cold, {len(paths)} clips on {name}: {seconds:.1f} s "
            f"({len(paths) / seconds:,.0f} clips/s)"
        )
    assert built is not None
    return built


def variants_rate(cache: FeatureCache, paths: list[Path], device: torch.device, n_clips: int) -> None:
    """Augmentation variants per second on ``device`` and on the CPU (a smaller share), cold."""
    augment = default_recipe().augment
    for where, count in dict.fromkeys([(device, n_clips), (torch.device("cpu"), max(n_clips // 16, 16))]):
        subset = paths[:count]
        seed = int(time.time())  # a fresh variant set: nothing cached yet
        _sync(where)
        started = time.perf_counter()
        cache.build_variants(subset, augment, seed=seed, progress=False, device=where, batch_size=128)
        _sync(where)
        seconds = time.perf_counter() - started
        rate = len(subset) * augment.variants / seconds
        # 709 clips x 8 variants in 175 s with librosa on the 2-core machine (benchmarks/RESULTS.md).
        print(
            f"variants on {where.type}: {len(subset)} clips x {augment.variants} in {seconds:.1f} s = "
            f"{rate:,.0f} variants/s ({rate / (709 * 8 / 175):.0f}x the 2-core librosa rate)"
        )


def fresh_variants_cost(paths: list[Path], device: torch.device, n_clips: int) -> None:
    """Seconds of one epoch's fresh variants (``--fresh-variants``) on ``device``, scaled to a training
    fold of the full dataset (9 folds, 8/9 of its clips augmented)."""
    config = default_recipe()
    subset = paths[:n_clips]
    waveforms = decode_clips(subset, config.audio, progress=False)
    fresh = FreshVariants(
        waveforms, [file_key(p) for p in subset], config.augment, config.audio, config.features, np.float16
    )
    fresh.compute(0, 0, range(min(len(subset), 64)), device)  # warm-up: kernels, front end, allocator
    _sync(device)
    started = time.perf_counter()
    fresh.compute(1, 0, range(len(subset)), device)
    _sync(device)
    seconds = time.perf_counter() - started
    per_epoch = seconds / len(subset) * 8732 * 0.9 * config.augment.variants / (config.augment.variants + 1)
    print(
        f"fresh variants on {device.type}: {len(subset)} clips in {seconds:.1f} s "
        f"({len(subset) / seconds:,.0f} clips/s), ~{per_epoch:.0f} s per epoch of a 9-fold training set"
    )


def throughput(
    features: np.ndarray,
    labels: list[int],
    device: torch.device,
    batches: list[int],
    steps: int,
    compile_: bool,
) -> None:
    """Training clips/s, data wait and peak memory per model and batch size (after one warm-up epoch), with
    the kernel choice of training (cuDNN autotuning on CUDA)."""
    config = default_recipe()
    train_set = FeatureDataset(features, labels, list(range(len(labels))))
    mean, std = band_statistics(features, list(range(min(len(labels), 2048))), db_reference="clip_max")
    resident = ResidentFeatures(train_set, device)
    # One member: the recipe trains its ensemble's members one after another, each a single model (timing
    # config.model itself, as this script did before 2026-12-01, trained all four backbones in every step).
    models = {
        "default (resnet, quarter width, one member)": replace(config.model, ensemble=1),
        "baseline cnn": RunConfig().model,
    }
    print("model | batch | clips/s | data wait | peak GPU memory | GMAC/clip")
    for title, model_config in models.items():
        for batch in batches:
            spec = ModelSpec(config.audio, config.features, model_config, [str(k) for k in range(10)])
            classifier = build_classifier(spec)
            classifier.normalizer.set_statistics(torch.from_numpy(mean), torch.from_numpy(std))
            macs = count_macs(classifier.backbone, (1, classifier.inputs.channels, *features.shape[1:])) / 1e9
            runner = prepare_model(
                classifier,
                DistributedContext(device=device),
                "auto",
                compile_,
                spec_augment=spec_augment_from_config(config.augment),
            )
            training = config.training
            optimizer, scheduler = make_optimizer(classifier, training, steps)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rates, waits = [], []
            for epoch in (1, 2):  # the first warms up (cuDNN autotuning, compilation)
                sampler = epoch_batches(train_set, batch, shuffle=True, seed=0, epoch=epoch)
                chosen = [b for _, b in zip(range(steps), sampler, strict=False)]
                _sync(device)
                settings = StepSettings(
                    nn.CrossEntropyLoss(label_smoothing=0.1), mixup_alpha=config.augment.mixup_alpha
                )
                with kernel_choice(device, deterministic=False):
                    stats = train_one_epoch(
                        runner, resident.batches(chosen), optimizer, scheduler, device, settings
                    )
                _sync(device)
                rates.append(stats.n_clips / stats.seconds)
                waits.append(stats.data_wait_fraction)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            print(
                f"{title} | {batch} | {rates[-1]:,.0f} | {100 * waits[-1]:.1f}% | {peak:.2f} GiB | {macs:.3f}"
            )


def crossval_time(
    annotations: Path, data: Path, workdir: Path, device: torch.device, folds: int, epochs: int | None
) -> None:
    """Wall time of a cold-cache ``urbansound crossval`` with one member, and the 4-member projection."""
    command = [sys.executable, "-m", "urbansound", "crossval", "--annotations", str(annotations)]
    command += ["--data", str(data), "--ensemble", "1", "--device", str(device), "--quiet"]
    command += ["--cache-dir", str(workdir / "cache-crossval"), "--runs-dir", str(workdir / "runs")]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    if folds < 10:
        command += ["--folds", ",".join(str(k) for k in range(1, folds + 1))]
    prepare = _prepare_seconds(annotations, data, workdir, device)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started  # its own cold-cache build included
    train_part = max(wall - prepare, 0.0)
    print(
        f"crossval, {folds} folds, default recipe with 1 member, cold cache: {wall:.0f} s; "
        f"projected with the recipe's 4 members: {prepare + 4 * train_part:.0f} s "
        f"(features + variants {prepare:.0f} s once, training x 4)"
    )
    if folds < 10:  # every fold trains on about as many clips: the training part scales with the folds
        ten = prepare + train_part * 10 / folds
        print(
            f"projected for 10 folds: {ten:.0f} s with 1 member, {prepare + 4 * (ten - prepare):.0f} s with 4"
        )


def _prepare_seconds(annotations: Path, data: Path, workdir: Path, device: torch.device) -> float:
    """Time of the default recipe's feature and variant build for every clip, cold (what crossval pays
    once whatever the member count): measured on a separate cache so the crossval's own stays cold."""
    config = default_recipe()
    paths = [r.path for r in load_metadata(annotations, data).records]
    cache = FeatureCache(workdir / "cache-prepare", config.audio, config.features)
    started = time.perf_counter()
    cache.build(paths, progress=False, device=device)
    cache.build_variants(paths, config.augment, progress=False, device=device, batch_size=32)
    _sync(device)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotations")
    parser.add_argument("--data")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--clips", type=int, default=8732, help="synthetic set size (rounded to 90 per class)"
    )
    parser.add_argument("--batches", default="32,256,1024", help="batch sizes to time")
    parser.add_argument("--steps", type=int, default=40, help="training steps timed per model and batch")
    parser.add_argument("--variant-clips", type=int, default=1000)
    parser.add_argument("--crossval-folds", type=int, default=10)
    parser.add_argument("--crossval-epochs", type=int, help="default: the recipe's")
    parser.add_argument(
        "--throughput-only", action="store_true", help="only the training speed, on random features"
    )
    parser.add_argument("--compile", action="store_true", help="also torch.compile the model")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: benchmarks/gpu.py measures a GPU, nothing was measured")
        return 0
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    batches = [int(b) for b in args.batches.split(",")]
    if args.throughput_only:
        # Training speed does not depend on what the features hold: random ones of the recipe's shape.
        config = default_recipe()
        shape = (
            config.features.n_mels,
            FeatureCache(tempfile.gettempdir(), config.audio, config.features).n_frames,
        )
        features = np.random.default_rng(0).normal(-40, 15, (args.clips, *shape)).astype(np.float32)
        throughput(features, [k % 10 for k in range(args.clips)], device, batches, args.steps, args.compile)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        annotations, data = dataset(args, workdir)
        index = load_metadata(annotations, data)
        paths = [r.path for r in index.records]
        cache, features = cache_build(paths, workdir, device)
        variants_rate(cache, paths, device, args.variant_clips)
        fresh_variants_cost(paths, device, args.variant_clips)
        labels = [r.class_id for r in index.records]
        throughput(features, labels, device, batches, args.steps, args.compile)
        crossval_time(annotations, data, workdir, device, args.crossval_folds, args.crossval_epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
