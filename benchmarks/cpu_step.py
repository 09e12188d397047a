"""Where a CPU training step of the default recipe's model goes, and whether training the ensemble's members
together would be cheaper than one after another:

    python benchmarks/cpu_step.py [--batch 32] [--steps 20]

1. The step time of one member (built and wrapped as training builds it: channels-last, FilterAugment and
   SpecAugment, AdamW), float32 and bf16 autocast, on random dB features of the recipe's shape.
2. The profiler's self time of that step by kind of operation (convolutions, BatchNorm, pooling, the rest),
   and the share spent at the stem's full resolution (before its 2x2 pool).
3. The convolutions of one stage for four members: one after another, as one grouped convolution
   (``groups=4``), and as one batch four times as large (forward and backward each).

Random weights and features: the arithmetic, not the values, sets the time. The machine's speed drifts, so
compare figures of one run. Nothing is written.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from urbansound.config import RunConfig, apply_recipe
from urbansound.features.augment import filter_augment_from_config, spec_augment_from_config
from urbansound.host_memory import keep_freed_host_memory
from urbansound.modelfile import ModelSpec, build_classifier
from urbansound.training.distributed import DistributedContext
from urbansound.training.fit import make_optimizer
from urbansound.training.hardware import prepare_model

# Profiler operation names -> the kind reported (anything else is "other").
KINDS = {
    "aten::mkldnn_convolution": "convolution",
    "aten::convolution_backward": "convolution",
    "aten::native_batch_norm": "BatchNorm",
    "aten::native_batch_norm_backward": "BatchNorm",
    "aten::max_pool2d_with_indices": "pooling",
    "aten::max_pool2d_with_indices_backward": "pooling",
}


def timed(step: Callable[[], None], repeats: int) -> float:
    """Milliseconds per call of ``step`` after three warm-up calls."""
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return 1000 * (time.perf_counter() - started) / repeats


def training_step(precision: str, batch: int) -> tuple[Callable[[], None], tuple[int, int]]:
    """One optimiser step of the default recipe's single member; also the (bands, frames) of its input."""
    config = apply_recipe(RunConfig(), "default")
    model = replace(config.model, ensemble=1)  # members train one after another, each a single model
    spec = ModelSpec(config.audio, config.features, model, [str(k) for k in range(config.model.n_classes)])
    classifier = build_classifier(spec)
    shape = (config.features.n_mels, classifier.frontend.n_frames(config.audio.n_samples))
    runner = prepare_model(
        classifier,
        DistributedContext(device=torch.device("cpu")),
        precision,
        band_augment=filter_augment_from_config(config.augment),
        spec_augment=spec_augment_from_config(config.augment),
    )
    runner.train()
    optimizer, _ = make_optimizer(classifier, config.training, 1000)
    features = torch.randn(batch, *shape) * 20 - 40  # dB-like values
    labels = torch.randint(0, config.model.n_classes, (batch,))
    loss_function = nn.CrossEntropyLoss(label_smoothing=config.training.label_smoothing)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_function(runner.classify_features(features), labels).backward()
        optimizer.step()

    return step, shape


def breakdown(step: Callable[[], None], steps: int, full_resolution: tuple[int, int]) -> None:
    """Self CPU time by kind of operation, and the share at the stem's full resolution."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    by_kind: dict[str, float] = defaultdict(float)
    at_full_resolution = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6
        by_kind[KINDS.get(event.key, "other")] += seconds
        first_shape = event.input_shapes[0] if event.input_shapes else []
        if len(first_shape) == 4 and tuple(first_shape[2:]) == full_resolution and first_shape[1] > 3:
            at_full_resolution += seconds  # the stem's output: its BatchNorm, pool and their gradients
    total = sum(by_kind.values())
    for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"  {kind}: {100 * seconds / total:.0f}%")
    share = 100 * at_full_resolution / total
    print(f"  at the stem's full resolution {full_resolution}, after its convolution: {share:.0f}%")


def conv_step(n: int, channels: int, bands: int, frames: int, groups: int) -> Callable[[], None]:
    """Forward and backward of a 3x3 convolution, ``channels`` in and out, channels-last."""
    cl = torch.channels_last
    x = torch.randn(n, channels, bands, frames).contiguous(memory_format=cl).requires_grad_()
    w = torch.randn(channels, channels // groups, 3, 3).contiguous(memory_format=cl).requires_grad_()
    gradient = torch.randn(n, channels, bands, frames).contiguous(memory_format=cl)
    return lambda: F.conv2d(x, w, padding=1, groups=groups).backward(gradient)


def stage_shapes(input_shape: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(channels, bands, frames) of each ResNet stage of the default recipe's model: the stem's pool halves
    the input (ceil), stages 2-4 halve again (a stride-2 3x3 conv with padding 1 also rounds up)."""
    widths = apply_recipe(RunConfig(), "default").model.kwargs["widths"]
    bands, frames = input_shape
    shapes = []
    for width in widths:
        bands, frames = -(-bands // 2), -(-frames // 2)
        shapes.append((width, bands, frames))
    return shapes


def members_together(batch: int, repeats: int, input_shape: tuple[int, int]) -> None:
    """Four members' 3x3 convolutions at each stage's shape: separately, grouped, and as one large batch."""
    for channels, bands, frames in stage_shapes(input_shape):
        separate = 4 * timed(conv_step(batch, channels, bands, frames, 1), repeats)
        grouped = timed(conv_step(batch, 4 * channels, bands, frames, 4), repeats)
        large = timed(conv_step(4 * batch, channels, bands, frames, 1), repeats)
        print(
            f"  {channels} ch, {bands} x {frames}: 4 separate {separate:.1f} ms, grouped {grouped:.1f} ms, "
            f"batch x4 {large:.1f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32, help="clips per step (the recipe's batch: 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    args = parser.parse_args()
    keep_freed_host_memory()  # as the command line trains
    torch.manual_seed(0)
    print(f"CPU threads: {torch.get_num_threads()}, batch {args.batch}")
    steps = {}
    for precision in ("fp32", "bf16"):
        steps[precision], shape = training_step(precision, args.batch)
        milliseconds = timed(steps[precision], args.steps)
        print(f"default model, one member, {precision}: {milliseconds:.0f} ms per step")
    print("fp32 step by kind of operation (profiler self time):")
    # The stem convolves at the input's resolution and pools after its BatchNorm.
    breakdown(steps["fp32"], max(args.steps // 2, 1), shape)
    print("four members' convolutions (forward and backward):")
    members_together(args.batch, args.steps, shape)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
