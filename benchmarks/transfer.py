"""Fine-tuning pretrained backbones on the official UrbanSound8K folds, written to transfer.md.

Given the user's checkpoint files (nothing is downloaded), each backbone is fine-tuned with
``--recipe finetune`` once per chosen test fold (validation on the fold before it, training on the others),
and tested once. Results are appended to ``transfer.jsonl`` as each run finishes, so the (slow) matrix can be
built over several sessions; ``transfer.md`` is re-rendered from every result so far: accuracy per fold and
mean +- std over folds, beside the published figures (EVAR's frozen-embedding linear evaluation), which are
literature, not measured here.

``--time-epoch`` measures instead what one fine-tuning epoch costs on this machine (``--device``: the CPU or a
GPU) with randomly initialised weights (no checkpoint needed): feature computation per clip and training steps
per batch on real clips (white noise without ``--root``), extrapolated to the clips of nine folds.

Usage::

    python benchmarks/transfer.py --root UrbanSound8K --checkpoint panns_cnn14=Cnn14_mAP=0.431.pth \\
        --checkpoint efficientat_mn10=mn10_as_mAP_471.pt --folds 1,2,3
    python benchmarks/transfer.py --root UrbanSound8K \\
        --checkpoint hf_ast=hf:MIT/ast-finetuned-audioset-10-10-0.4593
    python benchmarks/transfer.py --render-only
    python benchmarks/transfer.py --root UrbanSound8K --time-epoch panns_cnn14 panns_cnn10 --clips 64
    python benchmarks/transfer.py --time-epoch panns_cnn14 --device cuda --clips 512 --batch 64 --steps 6
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from urbansound.config import ModelConfig, RunConfig, SplitConfig, apply_recipe, use_backbone_front_end
from urbansound.host_memory import keep_freed_host_memory
from urbansound.modelfile import ModelSpec, build_classifier
from urbansound.training.run import train
from urbansound.training.run_folder import RunFolder

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "transfer.jsonl"
REPORT = HERE / "transfer.md"
# Published UrbanSound8K accuracy (official 10 folds): EVAR's table (nttcslab/eval-audio-repr, linear
# evaluation of frozen embeddings) and AudioCLIP fine-tuned (Guzhov et al. 2022): literature, not measured.
LITERATURE = {
    "PANNs CNN14 (frozen, linear)": 81.9,
    "AST (frozen, linear)": 85.4,
    "BEATs (frozen, linear)": 87.6,
    "AudioCLIP (fine-tuned)": 90.1,
}
N_CLIPS = 8732  # UrbanSound8K; one fold is tested, so an epoch trains on ~8/10 and validates on ~1/10


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    """``MODEL=PATH`` pairs -> {model: path}."""
    pairs = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--checkpoint wants MODEL=PATH, got {item!r}")
        pairs[model] = path
    return pairs


def run_config(
    root: Path, model: str, checkpoint: str, test_fold: int, args: argparse.Namespace
) -> RunConfig:
    """The fine-tuning recipe for ``model`` from ``checkpoint``, testing on ``test_fold``."""
    config = apply_recipe(RunConfig(), "finetune")
    config.annotations = str(root / "metadata" / "UrbanSound8K.csv")
    config.data_dir = str(root / "audio")
    config.model.name, config.model.kwargs = model, {}
    config.training.init_from = checkpoint
    if args.epochs is not None:
        config.training.epochs = args.epochs
    config.training.device = args.device
    config.split = SplitConfig(test_fold=test_fold, val_fold=test_fold - 1 if test_fold > 1 else 10)
    config.runs_dir = str(args.runs)
    config.name = f"transfer-{model}-fold{test_fold}"
    return use_backbone_front_end(config)


def done(model: str, fold: int) -> bool:
    if not RESULTS.is_file():
        return False
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return any(r["model"] == model and r["test_fold"] == fold for r in rows)


def run_all(args: argparse.Namespace) -> None:
    for model, checkpoint in parse_checkpoints(args.checkpoint).items():
        for fold in args.folds:
            if done(model, fold):
                logging.info("%s fold %d: already in %s", model, fold, RESULTS.name)
                continue
            started = time.perf_counter()
            run_dir = train(run_config(args.root, model, checkpoint, fold, args))
            metrics = RunFolder(run_dir).read_metrics()
            row = {
                "model": model,
                "checkpoint": Path(checkpoint).name,
                "test_fold": fold,
                "test_accuracy": metrics.test_accuracy,
                "val_accuracy": metrics.val_accuracy,
                "minutes": round((time.perf_counter() - started) / 60, 1),
                "run": str(run_dir),
            }
            with open(RESULTS, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            render()


def render() -> None:
    """transfer.md from transfer.jsonl."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.is_file() else []
    lines = [
        "# Fine-tuning pretrained backbones on UrbanSound8K",
        "",
        "Measured with `benchmarks/transfer.py` (`--recipe finetune`, official folds, validation on the fold",
        "before the test fold). Accuracy on the test fold, %.",
        "",
        "| model | checkpoint | folds | per fold | mean +- std | minutes per fold |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in sorted({r["model"] for r in rows}):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["test_fold"])
        accuracies = [100 * r["test_accuracy"] for r in mine]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        per_fold = ", ".join(f"{r['test_fold']}: {100 * r['test_accuracy']:.1f}" for r in mine)
        minutes = statistics.mean(r["minutes"] for r in mine)
        lines.append(
            f"| {model} | {mine[0]['checkpoint']} | {len(mine)} | {per_fold} | "
            f"{statistics.mean(accuracies):.1f} +- {spread:.1f} | {minutes:.0f} |"
        )
    if not rows:
        lines.append("| (no runs yet) | | | | | |")
    lines += ["", "Published (literature, not measured here; all 10 folds):", ""]
    lines += [f"- {name}: {value}%" for name, value in LITERATURE.items()]
    REPORT.write_text("\n".join(lines) + "\n")


def timing_clips(args: argparse.Namespace, sample_rate: int, n_samples: int) -> torch.Tensor:
    """``--clips`` real fold-1 clips, or (no ``--root``) as many of white noise: the cost of a step does not
    depend on what the clip holds."""
    from urbansound.data.audio import load_audio

    if args.root is None:
        return torch.randn(args.clips, n_samples, generator=torch.Generator().manual_seed(0)) * 0.1
    clips = sorted((args.root / "audio" / "fold1").glob("*.wav"))[: args.clips]
    return torch.stack([torch.from_numpy(load_audio(p, sample_rate, n_samples)) for p in clips])


def time_epoch(args: argparse.Namespace) -> None:
    """What one fine-tuning epoch costs here: randomly initialised backbones (module doc), on ``--device``
    (bf16 autocast on CUDA, as training there runs; float32 on the CPU)."""
    from urbansound.features.frontend import make_frontend
    from urbansound.training.run import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"clips": args.clips, "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    for model in args.time_epoch:
        config = use_backbone_front_end(RunConfig(model=ModelConfig(name=model)))
        frontend = make_frontend(config.features, config.audio.sample_rate).to(device)
        started = clock()
        waves = timing_clips(args, config.audio.sample_rate, config.audio.n_samples).to(device)
        with torch.inference_mode():
            features = frontend(waves)
        per_clip_features = (clock() - started) / len(waves)
        spec = ModelSpec(config.audio, config.features, config.model, [str(i) for i in range(10)])
        torch.manual_seed(0)
        net = build_classifier(spec).to(device).train()  # random initialisation: no checkpoint needed
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        labels = (torch.arange(args.batch) % 10).to(device)
        steps = []
        for i in range(args.steps):
            x = features[(i * args.batch) % len(features) :][: args.batch].clone()
            started = clock()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(net.classify_features(x), labels[: len(x)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps.append((clock() - started) / len(x))
        per_clip_step = statistics.median(steps[1:] if len(steps) > 1 else steps)
        train_clips, val_clips = round(0.8 * N_CLIPS), round(0.1 * N_CLIPS)
        report[model] = {
            "feature_seconds_per_clip": round(per_clip_features, 5),
            "train_seconds_per_clip": round(per_clip_step, 5),
            "epoch_minutes": round((train_clips * per_clip_step + val_clips * per_clip_step / 3) / 60, 2),
            "one_off_feature_minutes": round(N_CLIPS * per_clip_features / 60, 2),
        }
        logging.info("%s: %s", model, report[model])
    print(json.dumps(report, indent=2))


def main() -> None:
    keep_freed_host_memory()  # as `urbansound train` does: what it costs there is what this measures
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, help="UrbanSound8K folder (metadata/, audio/fold1..10)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH")
    parser.add_argument("--folds", type=lambda s: [int(f) for f in s.split(",")], default=list(range(1, 11)))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--time-epoch", nargs="*", default=None, metavar="MODEL")
    parser.add_argument("--clips", type=int, default=64, help="clips timed with --time-epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.render_only:
        render()
    elif args.time_epoch is not None:
        time_epoch(args)
    else:
        if args.root is None or not args.checkpoint:
            parser.error("--root and at least one --checkpoint MODEL=PATH are needed (or --render-only)")
        run_all(args)


if __name__ == "__main__":
    main()
