"""The default recipe's whole run on the DEV split, cold cache, this checkout against an earlier commit, timed
in one run on the same machine:

    python benchmarks/end_to_end.py --annotations PATH/UrbanSound8K.csv --data PATH/audio [--baseline REV]

DEV split: train fold 1 with 20% of its recordings held out for validation (grouped by recording), test
fold 2. Each side runs ``urbansound train`` in its own process with a fresh, empty feature cache, so the
time includes decoding, features, augmentation variants, every ensemble member, testing and the report.
The baseline runs from a ``git worktree`` of ``--baseline`` (default: the parent of the commit that made
variants batched torch) with this virtual environment (it needs librosa, which the dev extra installs).
Prints the wall time, the test accuracy on fold 2 and the speed-up.

The default recipe has trained 100 epochs since 2026-12-01 (the baseline's recipe: 25), so a comparison of
the code at equal settings passes ``-- --epochs 25`` to both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_SPLIT = ["--train-folds", "1", "--val-fraction", "0.2", "--test-fold", "2"]


def run(source: Path, annotations: str, data: str, workdir: Path, name: str, extra: list[str]) -> dict:
    """One cold-cache default-recipe run with the package at ``source``/src; its wall time and metrics."""
    command = [sys.executable, "-m", "urbansound", "train", "--annotations", annotations, "--data", data]
    command += [*DEV_SPLIT, "--cache-dir", str(workdir / f"cache-{name}"), "--runs-dir", str(workdir / name)]
    command += ["--device", "cpu", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=workdir)
    wall = time.perf_counter() - started
    (run_dir,) = (workdir / name).iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall": wall, "test_accuracy": metrics["test_accuracy"], "ensemble": metrics.get("ensemble")}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--baseline", default="34918d7", help="git revision to compare with")
    parser.add_argument("--skip-baseline", action="store_true", help="time this checkout only")
    parser.add_argument(
        "--keep", type=Path, default=None, help="an empty folder that keeps both runs (default: removed)"
    )
    parser.add_argument("extra", nargs="*", help="more flags for both runs (after --)")
    args = parser.parse_args()
    annotations, data = str(Path(args.annotations).resolve()), str(Path(args.data).resolve())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        results["this checkout"] = run(REPO, annotations, data, workdir, "current", args.extra)
        print(f"this checkout: {results['this checkout']}", flush=True)
        if not args.skip_baseline:
            baseline = workdir / "baseline-src"
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline]
            )
            try:
                results[args.baseline] = run(baseline, annotations, data, workdir, "baseline", args.extra)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)])
            print(f"{args.baseline}: {results[args.baseline]}", flush=True)
    print("| code | wall | test accuracy (fold 2) |\n| --- | ---: | ---: |")
    for name, result in results.items():
        print(f"| {name} | {result['wall']:.0f} s | {100 * result['test_accuracy']:.1f}% |")
    if len(results) == 2:
        current, base = results.values()
        print(f"speed-up: {base['wall'] / current['wall']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
