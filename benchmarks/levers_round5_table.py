"""Rounds 5-8's table (select_recipe_notes.md): held-out accuracy per inner group of fold 1, per seed.

Round 5's default and levers, from ``levers_round5.jsonl`` plus group 3 of ``levers_supplementary.jsonl``
(reused; see the notes), and the candidates of rounds 6 and 7 from ``levers_round6.jsonl`` and
``levers_round7.jsonl`` (round 6's rerun of `deltas` on group 1 gave round 5's figures exactly), and round
8's `fresh` from ``levers_round8.jsonl``. Prints Markdown: per group seed 0 / seed 1 (mean), the mean over
groups and its gap to round 5's default (log-mel alone), to `deltas` (round 6's reference), to `deltas+long`
(round 7's) and to `deltas+long100` (round 8's).

Usage::

    python benchmarks/levers_round5_table.py [--groups 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = (
    "default",
    "deltas",
    "freqpos",
    "deltas+freqpos",
    "deltas+long",
    "deltas+bf16",
    "deltas+long100",
    "fresh",
)
REFERENCES = ("default", "deltas", "deltas+long", "deltas+long100")


def load() -> dict[str, dict[int, list[float]]]:
    table: dict[str, dict[int, list[float]]] = {}
    rows = [json.loads(x) for x in (HERE / "levers_round5.jsonl").read_text().splitlines() if x.strip()]
    extra = [json.loads(x) for x in (HERE / "levers_supplementary.jsonl").read_text().splitlines() if x]
    rows += [r for r in extra if r["group"] == 3 and r["candidate"] in ("default", "deltas", "freqpos")]
    for later in ("levers_round6.jsonl", "levers_round7.jsonl", "levers_round8.jsonl"):
        if (HERE / later).is_file():
            rows += [json.loads(x) for x in (HERE / later).read_text().splitlines() if x.strip()]
    for r in rows:
        if r.get("phase") == "nested" and r["candidate"] in ORDER and len(r["members"]) >= 2:
            table.setdefault(r["candidate"], {})[r["group"]] = r["members"][:2]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    table = load()
    head = " | ".join(f"group {g}" for g in args.groups)
    print(f"| candidate | {head} | mean | {' | '.join(f'vs {ref}' for ref in REFERENCES)} |")
    print(f"|---|{'---|' * len(args.groups)}---:|{'---:|' * len(REFERENCES)}")
    means = {
        name: statistics.mean(statistics.mean(runs[g]) for g in args.groups)
        for name, runs in table.items()
        if all(g in runs for g in args.groups)
    }
    for name in ORDER:
        runs = table.get(name, {})
        cells = []
        for g in args.groups:
            s = runs.get(g)
            cells.append(f"{100 * s[0]:.1f} / {100 * s[1]:.1f} ({50 * (s[0] + s[1]):.1f})" if s else "-")
        if name not in means:
            print(f"| {name} | {' | '.join(cells)} | not finished |{' |' * len(REFERENCES)}")
            continue
        gaps = [
            f"{100 * (means[name] - means[ref]):+.1f}" if ref in means and ref != name else ""
            for ref in REFERENCES
        ]
        print(f"| {name} | {' | '.join(cells)} | {100 * means[name]:.2f}% | {' | '.join(gaps)} |")


if __name__ == "__main__":
    main()
