"""Round 5's DEV figures for a lever (select_recipe_notes.md).

Today's default recipe plus the lever, trained on one DEV fold (20% of its recordings held out) and tested
on the other, both directions; seeds 0 and 1 as the members of a 2-member run, each scored alone (single
models). No teacher or student (see ``levers.py --phase dev`` for those). One JSON line per direction
in ``--out``.

Usage::

    python benchmarks/levers_round5_dev.py --root /work/data/us8k/UrbanSound8K --work /tmp/lev5/dev \
        --out benchmarks/levers_round5.jsonl --lever deltas
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from accuracy import dev_split_config
from levers import LEVERS, deployment, member_accuracies, record
from select_recipe import apply_overrides

from urbansound.training.run import train
from urbansound.training.run_folder import RunFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lever", required=True, choices=[*LEVERS, "default"])
    parser.add_argument("--directions", nargs="+", default=["1to2", "2to1"], choices=("1to2", "2to1"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for direction in args.directions:
        train_fold, test_fold = (int(f) for f in direction.split("to"))
        config = dev_split_config(args.root, args.work, train_fold, test_fold, f"round5-{args.lever}")
        apply_overrides(config, LEVERS.get(args.lever, {}))
        config.model.ensemble = 2
        run = train(config, progress=False)
        record(
            args.out,
            {
                "phase": "dev",
                "round": 5,
                "split": f"fold {train_fold} -> fold {test_fold}",
                "candidate": args.lever,
                "run": str(run),
                "members": member_accuracies(run),
                "deploy": deployment(RunFolder(run).model_path),
            },
        )


if __name__ == "__main__":
    main()
