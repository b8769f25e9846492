"""Every iteration's C of a repair-loop run on selection tracks, beside the check that chose among them.

The loop keeps the iteration whose C checked best on a few short check tracks. This scores each iteration's C
(``CHECKPOINT_DIR/dream_loop/iter_NN``, with that iteration's own V and M) on selection tracks (seeds
7,000,000 + j: never recorded, trained on or checked; never the held-out tracks), so one run answers what
another iteration count or another choice rule would have kept, and whether the checks choose well. Writes
``loop_iterations.json`` into each run folder and prints one table per run.

    python bench/loop_iterations.py --runs runs/sizes/it5-s0 runs/sizes/it5-s1
    python bench/loop_iterations.py --runs runs/sizes/it5-s0 --tracks-base 7000100   # away from a loop's final choice

A loop with a final choice (``loop.select_top``) saved its candidates' returns on its own selection tracks; each
table then also gives them, and a last line says which iteration each choice rule would have kept and what it
scores here: the best check, or the final choice among the top k checks (k = 2 … the candidates it drove) — for
the whole run and for its first N iterations (what the same run with ``--loop.iterations N`` would have had: a
later iteration does not change an earlier one's C).
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


def final_choice(run: Path) -> dict[int, float]:
    """The loop's own final choice: each candidate iteration's mean over the selection tracks it drove (empty
    when the loop kept the best check)."""
    from bench.loop_table import read_state  # (a one-line error when the state is missing or unreadable)

    state = read_state(str(run))
    returns = (state.get("selection") or {}).get("returns") or {}
    return {int(i): sum(r) / len(r) for i, r in returns.items()}


def choice_rules(rows: list[dict], chosen: dict[int, float]) -> dict[str, int]:
    """Which iteration each rule keeps: ``check`` (the best check) and ``top-k`` (of the k best checks, the best
    mean on the loop's own selection tracks; only for k where all k drove them). Ties go to the later iteration,
    as in the loop (training.loop_state.choose_best)."""
    ranked = sorted(rows, key=lambda row: (row["check"], row["iteration"]), reverse=True)
    rules = {"check": ranked[0]["iteration"]} if ranked else {}
    for k in range(2, len(ranked) + 1):
        top = [row["iteration"] for row in ranked[:k]]
        if not all(i in chosen for i in top):
            break
        rules[f"top-{k}"] = max(top, key=lambda i: (chosen[i], i))
    return rules


def main(args: Args) -> dict:
    if not args.runs:
        raise UsageError("--runs: expected one or more run folders")
    report = {}
    for name in args.runs:
        run = Path(name)
        rows = score_run(run, args)
        (run / "loop_iterations.json").write_text(json.dumps({"tracks_base": args.tracks_base, "rows": rows},
                                                             indent=1))
        chosen = final_choice(run)
        rules = {n: choice_rules(rows[:n], chosen) for n in range(1, len(rows) + 1)}
        print(f"{run.name}: iteration, check, {'its final choice, ' if chosen else ''}selection mean ± std (min) over "
              f"{args.tracks} tracks from {args.tracks_base}")
        for row in rows:
            mark = "  <- best check" if row["iteration"] == rules[len(rows)].get("check") else ""
            own = (f"{chosen[row['iteration']]:7.1f}" if row["iteration"] in chosen else " " * 7) if chosen else ""
            print(f"  {row['iteration']}  {row['check']:7.1f}{own}  {row['selection_mean']:6.1f} ± "
                  f"{row['selection_std']:5.1f} ({row['selection_min']:.1f}){mark}")
        score = {row["iteration"]: row["selection_mean"] for row in rows}
        for n, kept in rules.items():
            if len(kept) > 1:
                print(f"  of iterations 0-{n - 1}, kept by " + ", ".join(f"{rule}: {i} ({score[i]:.1f})"
                                                                     for rule, i in kept.items()))
        report[str(run)] = {"rows": rows, "rules": rules[len(rows)] if rows else {}, "rules_by_iterations": rules}
    return report


if __name__ == "__main__":
    run_main(main, Args)
