"""Every iteration's C of a repair-loop run on selection tracks, beside the check that chose among them.

The loop keeps the iteration whose C checked best on a few short check tracks. This scores each iteration's C
(``CHECKPOINT_DIR/dream_loop/iter_NN``, with that iteration's own V and M) on selection tracks (seeds
7,000,000 + j: never recorded, trained on or checked; never the held-out tracks), so one run answers what
another iteration count or another choice rule would have kept, and whether the checks choose well. Writes
``loop_iterations.json`` into each run folder and prints one table per run.

    python bench/loop_iterations.py --runs runs/sizes/it5-s0 runs/sizes/it5-s1
    python bench/loop_iterations.py --runs runs/sizes/it5-s0 --tracks-base 7000100   # away from a loop's final choice
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
from dataclasses import dataclass

from car_racing.common.cli import UsageError, run_main


@dataclass
class Args:
    """Score each repair-loop iteration's C of the given runs on selection tracks."""

    runs: tuple[str, ...] = ()
    """run folders (each holds checkpoints/dream_loop/iter_NN), stage-4 checkpoint folders or dream_loop folders"""
    tracks: int = 10
    """selection tracks per iteration's C"""
    tracks_base: int = 7_000_000
    """first selection track's seed (a loop whose final choice drove 7,000,000 + j needs another range)"""
    max_steps: int = 1000
    """step limit of a selection episode"""
    workers: int = 2
    """worker processes for real episodes"""


def score_run(run: Path, args: Args) -> list[dict]:
    """Each iteration's check (as the loop saw it) and its mean, std and min over the selection tracks."""
    from car_racing.common.runtime import checkpoint_paths, load_checkpoint
    from car_racing.episodes.agent import evaluate_agent
    from car_racing.episodes.backends import Backend
    from car_racing.training.loop import find_loop_dir

    seeds = [args.tracks_base + j for j in range(args.tracks)]
    rows = []
    for folder in sorted(find_loop_dir(run).glob("iter_*")):
        controller = checkpoint_paths(folder)["controller"]
        if not controller.exists():
            continue  # an iteration interrupted before its C was saved
        checked = load_checkpoint(controller, "controller")
        results = evaluate_agent(folder, seeds, max_steps=args.max_steps, workers=args.workers, backend=Backend())
        returns = [float(r.total_reward) for r in results]
        mean = sum(returns) / len(returns)
        rows.append({"iteration": int(folder.name.split("_")[1]), "check": float(checked["best_real_score"]),
                     "kept": checked["model_source"], "selection_mean": mean,
                     "selection_std": (sum((r - mean) ** 2 for r in returns) / len(returns)) ** 0.5,
                     "selection_min": min(returns), "selection_returns": returns})
    return rows


def main(args: Args) -> dict:
    if not args.runs:
        raise UsageError("--runs: expected one or more run folders")
    report = {}
    for name in args.runs:
        run = Path(name)
        rows = score_run(run, args)
        (run / "loop_iterations.json").write_text(json.dumps({"tracks_base": args.tracks_base, "rows": rows},
                                                             indent=1))
        best_check = max(rows, key=lambda row: row["check"])["iteration"] if rows else None
        print(f"{run.name}: iteration, check, selection mean ± std (min) over {args.tracks} tracks")
        for row in rows:
            mark = "  <- best check" if row["iteration"] == best_check else ""
            print(f"  {row['iteration']}  {row['check']:7.1f}  {row['selection_mean']:6.1f} ± "
                  f"{row['selection_std']:5.1f} ({row['selection_min']:.1f}){mark}")
        report[str(run)] = rows
    return report


if __name__ == "__main__":
    run_main(main, Args)
