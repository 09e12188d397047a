"""Issue 15's levers and distillation: ranked inside fold 1 (nested rule), then the DEV folds for the winner.

``--phase nested`` trains, on the inner groups of fold 1 that ``select_recipe.py`` builds (``--groups``; the
test fold is never read), today's default recipe (a 4-seed ensemble: its members 1-2 are the footing every
candidate is compared on, and the ensemble is the distillation teacher), each lever as a 2-seed candidate
(seeds 0 and 1), the default's members 1-2 again with test-time shifts (an evaluation-only lever), and a
distilled student per seed. ``--phase dev`` trains on one DEV fold (20% of its recordings held out) and
tests on the other, both directions: the default teacher, its distilled student and any ``--levers``.
Every result is one JSON line in ``--out``; ``--deploy`` adds parameters, MACs and CPU latency per 4 s clip.

Usage::

    python benchmarks/levers.py --phase nested --root /work/data/us8k/UrbanSound8K --groups 2
    python benchmarks/levers.py --phase dev --root /work/data/us8k/UrbanSound8K
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
from accuracy import dev_split_config
from select_recipe import apply_overrides, build_inner_folds
from select_recipe import make_config as inner_config

from urbansound.config import DistillConfig, RunConfig, apply_recipe, scaled_peak_lr
from urbansound.modelfile import ModelSpec, build_classifier, load_model_file
from urbansound.models.complexity import count_macs, count_parameters
from urbansound.models.ensemble import SeedEnsemble
from urbansound.training.distill import distill
from urbansound.training.loop import FeatureDataset, evaluate, make_loader
from urbansound.training.run import prepare_data, resume, train
from urbansound.training.run_folder import RunFolder

HERE = Path(__file__).resolve().parent
RECIPE_TRAINING = apply_recipe(RunConfig(), "default").training  # its batch and peak rate, for round 9
# The levers, each on top of today's default recipe, trained as a 2-member ensemble (seeds 0 and 1) so that
# each seed can be scored alone (the round-3b footing of select_recipe_notes.md).
LEVERS: dict[str, dict[str, dict[str, Any]]] = {
    "pcen": {"model": {"pcen": "fixed"}},
    "deltas": {"model": {"deltas": 2}},
    "crop3": {"model": {"crop_seconds": 3.0}},
    "freqpos": {"model": {"freq_channel": True}},
    "deltas+freqpos": {"model": {"deltas": 2, "freq_channel": True}},
    # round 6: a schedule twice as long, and bf16 autocast on a CPU with native bf16 (a speed setting whose
    # accuracy cost is measured by the same rule)
    "deltas+long": {"model": {"deltas": 2}, "training": {"epochs": 50}},
    "deltas+bf16": {"model": {"deltas": 2}, "training": {"precision": "bf16"}},
    # round 7: twice round 6's winning schedule
    "deltas+long100": {"model": {"deltas": 2}, "training": {"epochs": 100}},
    # round 8: the default (deltas, 100 epochs) with a new audio variant of each augmented clip every epoch
    "fresh": {"augment": {"fresh_variants": True}},
    # round 9: batch 256 with the peak rate the command line scales to (sqrt rule: 2e-3 x sqrt(8)), and
    # unscaled (the Python API keeps max_lr as given, so both rates are written out here)
    "batch256": {
        "training": {
            "batch_size": 256,
            "max_lr": scaled_peak_lr(RECIPE_TRAINING.max_lr, RECIPE_TRAINING.batch_size, 256),
        }
    },
    "batch256-unscaled": {"training": {"batch_size": 256, "max_lr": RECIPE_TRAINING.max_lr}},
}
# ``--levers default`` in the levers step: today's default itself as a 2-seed candidate (round 5's footing,
# without the teacher step's test-time shifts and students).
NESTED_EXTRA: dict[str, dict[str, dict[str, Any]]] = {"default": {}}
TTA_SHIFTS = 4  # test-time shifts of +-0.5 s and +-1 s


def record(out: Path, entry: dict[str, Any]) -> None:
    with open(out, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    logging.info("RESULT %s", json.dumps(entry))


def member_accuracies(run_dir: Path) -> list[float]:
    metrics = RunFolder(run_dir).read_metrics().to_dict()
    if metrics.get("ensemble"):
        return [round(a, 4) for a in metrics["ensemble"]["member_test_accuracy"]]
    return [round(metrics["test_accuracy"], 4)]


def tta_accuracies(run_dir: Path, shifts: int, members: int) -> list[float]:
    """Test accuracy of the first ``members`` members of ``run_dir``'s model, each alone, with ``shifts``
    test-time shifts (the run's own split; an evaluation of weights already trained)."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    model, spec = load_model_file(folder.model_path)
    spec.model.tta_shifts = shifts
    spec.model.ensemble = 1
    data = prepare_data(config, progress=False)
    loader = make_loader(FeatureDataset(data.features, data.labels, data.split.test), 64, shuffle=False)
    backbones = list(model.backbone.members) if isinstance(model.backbone, SeedEnsemble) else [model.backbone]
    scores = []
    for backbone in backbones[:members]:
        shifted = build_classifier(spec)
        shifted.normalizer.load_state_dict(model.normalizer.state_dict())
        shifted.backbone.load_state_dict(backbone.state_dict())
        scores.append(round(evaluate(shifted.eval(), loader, torch.device("cpu")).accuracy, 4))
    return scores


def deployment(model_path: Path, repeats: int = 50) -> dict[str, float]:
    """Parameters, MACs and CPU latency of a model file (see :func:`cost`)."""
    model, spec = load_model_file(model_path)
    return cost(model, spec.audio.n_samples, repeats)


def cost(model: torch.nn.Module, n_samples: int, repeats: int = 50) -> dict[str, float]:
    """Parameters, MACs (convolutions and linear layers, STFT excluded) and median CPU latency of one 4 s
    clip (batch 1, the threads torch is given) of ``model`` in eval mode."""
    model.eval()
    clip = torch.randn(1, n_samples) * 0.1
    macs = count_macs(model, tuple(clip.shape))
    times = []
    with torch.no_grad():
        model(clip)
        for _ in range(repeats):
            start = time.perf_counter()
            model(clip)
            times.append(time.perf_counter() - start)
    return {
        "parameters": count_parameters(model),
        "macs": macs,
        "latency_ms": round(1000 * statistics.median(times), 1),
        "threads": torch.get_num_threads(),
    }


def teacher_run(args: argparse.Namespace, config: RunConfig) -> Path:
    """Train ``config`` (a ``--teacher-members`` seed ensemble), or resume ``--teacher RUN`` with that many
    members (its unfinished member continues from its checkpoint)."""
    if args.teacher is None:
        config.model.ensemble = args.teacher_members
        return train(config, progress=False)
    folder = RunFolder(args.teacher)
    saved = folder.read_config()
    saved.model.ensemble = args.teacher_members
    folder.write_config(saved)
    return resume(args.teacher, progress=False)


def nested(args: argparse.Namespace) -> None:
    csv_path, audio = build_inner_folds(args.root, 1, args.work)
    for group in args.groups:
        if "teacher" in args.steps:
            config = inner_config({}, csv_path, audio, group, args.work, "default", base="default")
            config.name = f"lever-default-x{args.teacher_members}-g{group}"
            teacher = teacher_run(args, config)
            metrics = RunFolder(teacher).read_metrics().to_dict()
            members = member_accuracies(teacher)
            entry = {"phase": "nested", "group": group, "candidate": "default", "run": str(teacher)}
            record(args.out, {**entry, "members": members, "ensemble": round(metrics["test_accuracy"], 4)})
            tta = tta_accuracies(teacher, TTA_SHIFTS, 2)
            record(args.out, {**entry, "candidate": f"tta{TTA_SHIFTS}", "members": tta})
            for seed in (0, 1):
                student = distill(teacher, "resnet", DistillConfig(), progress=False, seed=seed)
                record(
                    args.out,
                    {
                        **entry,
                        "candidate": "student",
                        "seed": seed,
                        "run": str(student),
                        "members": member_accuracies(student),
                    },
                )
        if "levers" in args.steps:
            for name in args.levers:
                overrides = NESTED_EXTRA[name] if name in NESTED_EXTRA else LEVERS[name]
                config = inner_config(overrides, csv_path, audio, group, args.work, name, base="default")
                config.model.ensemble = args.members
                config.name = f"lever-{name}-x{args.members}-g{group}"
                run = train(config, progress=False)
                record(
                    args.out,
                    {
                        "phase": "nested",
                        "group": group,
                        "candidate": name,
                        "run": str(run),
                        "members": member_accuracies(run),
                    },
                )


def deploy(args: argparse.Namespace) -> None:
    """The cost of each candidate's deployed model (weights do not change it): default members 1, 2, 4."""
    configs: dict[str, dict[str, dict[str, Any]]] = {
        "default x1 (student, same-size model)": {},
        "default x2": {"model": {"ensemble": 2}},
        "default x4 (today's default)": {"model": {"ensemble": 4}},
        f"tta{TTA_SHIFTS}": {"model": {"tta_shifts": TTA_SHIFTS}},
        **LEVERS,
    }
    for name, overrides in configs.items():
        config = apply_recipe(RunConfig(), "default")
        config.model.ensemble = 1
        apply_overrides(config, overrides)
        spec = ModelSpec(config.audio, config.features, config.model, [str(i) for i in range(10)])
        record(
            args.out,
            {"phase": "deploy", "candidate": name, **cost(build_classifier(spec), config.audio.n_samples)},
        )


def render(args: argparse.Namespace) -> None:
    """Print the nested ranking (mean of seeds 0-1 per candidate, and its gap to the default) and the DEV rows
    of ``--out`` as Markdown."""
    entries = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    nested_rows = [e for e in entries if e["phase"] == "nested"]
    footing = {
        e["group"]: statistics.mean(e["members"][:2]) for e in nested_rows if e["candidate"] == "default"
    }
    print("| candidate | group | seed 0 / seed 1 | mean | vs default |\n|---|---:|---|---:|---:|")
    students: dict[int, list[float]] = {}
    for e in nested_rows:
        if e["candidate"] == "student":
            students.setdefault(e["group"], []).append(e["members"][0])
            continue
        mean = statistics.mean(e["members"][:2])
        seeds = " / ".join(f"{100 * a:.1f}" for a in e["members"][:2])
        gap = 100 * (mean - footing[e["group"]])
        print(f"| {e['candidate']} | {e['group']} | {seeds} | {100 * mean:.1f}% | {gap:+.1f} |")
    for group, scores in students.items():
        seeds = " / ".join(f"{100 * a:.1f}" for a in scores)
        gap = 100 * (statistics.mean(scores) - footing[group])
        print(f"| student | {group} | {seeds} | {100 * statistics.mean(scores):.1f}% | {gap:+.1f} |")
    for e in entries:
        if e["phase"] in ("dev", "deploy"):
            print(json.dumps(e))


def dev(args: argparse.Namespace) -> None:
    for train_fold, test_fold in ((1, 2), (2, 1)):
        split = f"fold {train_fold} -> fold {test_fold}"
        if (train_fold, test_fold) not in args.directions:
            continue
        teacher = teacher_run(
            args, dev_split_config(args.root, args.work, train_fold, test_fold, "lever-default")
        )
        args.teacher = None  # a resumed teacher is the first direction's
        metrics = RunFolder(teacher).read_metrics().to_dict()
        record(
            args.out,
            {
                "phase": "dev",
                "split": split,
                "candidate": "default",
                "run": str(teacher),
                "accuracy": round(metrics["test_accuracy"], 4),
                "members": member_accuracies(teacher),
                "deploy": deployment(RunFolder(teacher).model_path),
            },
        )
        student = distill(teacher, "resnet", DistillConfig(), progress=False)
        record(
            args.out,
            {
                "phase": "dev",
                "split": split,
                "candidate": "student",
                "run": str(student),
                "accuracy": member_accuracies(student)[0],
                "deploy": deployment(RunFolder(student).model_path),
            },
        )
        for name in args.levers:
            config = dev_split_config(args.root, args.work, train_fold, test_fold, f"lever-{name}")
            apply_overrides(config, LEVERS[name])
            config.model.ensemble = 2
            run = train(config, progress=False)
            record(
                args.out,
                {
                    "phase": "dev",
                    "split": split,
                    "candidate": name,
                    "run": str(run),
                    "members": member_accuracies(run),
                    "deploy": deployment(RunFolder(run).model_path),
                },
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=("nested", "dev", "deploy", "render"), required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="runs, inner folds and feature cache")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--groups", type=int, nargs="+", default=[2], help="inner groups of fold 1")
    parser.add_argument("--levers", nargs="*", default=list(LEVERS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", nargs="+", default=["teacher", "levers"], choices=("teacher", "levers"))
    parser.add_argument("--teacher", type=Path, default=None, help="resume this teacher run folder")
    parser.add_argument("--teacher-members", type=int, default=4, help="seed-ensemble size of the teacher")
    parser.add_argument(
        "--members", type=int, default=2, help="seeds 0..N-1 of each lever, each scored alone (levers step)"
    )
    parser.add_argument("--directions", nargs="+", default=["1to2", "2to1"], choices=("1to2", "2to1"))
    args = parser.parse_args()
    args.directions = [tuple(int(f) for f in d.split("to")) for d in args.directions]
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    {"nested": nested, "dev": dev, "deploy": deploy, "render": render}[args.phase](args)


if __name__ == "__main__":
    main()
