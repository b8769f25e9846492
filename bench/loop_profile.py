"""Where a repair-loop run's minutes went: per iteration, M's retraining, CMA-ES in the dream, the real checks, the
rest of C's stage (start states, generation 0's check, carrying, saving), the fidelity panel, C's recorded
episodes and the repair replays.

Reads what the loop already logs (``dream_loop/dream_loop_metrics.jsonl``: each stage's seconds;
``dream_loop/iter_NN[/start]/controller_metrics.jsonl``: each generation's wall clock, the checks' results), so it
profiles any finished or interrupted run, on any machine, without rerunning it. A check's time is the gap before
the generation's log line that carries the check, less that generation's own time in the dream.

    python bench/loop_profile.py --runs runs/sizes/it5-s0
    python bench/loop_profile.py --runs checkpoints        # the default stage 4's loop
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
from dataclasses import dataclass

from car_racing.common.cli import UsageError, run_main
from car_racing.common.metrics import metrics_path, read_metrics

# c_other: the rest of C's stage (start states, generation 0's check of each start, carrying, saving)
PARTS = ("memory", "dream", "checks", "c_other", "panel", "record", "repair")


@dataclass
class Args:
    """Print where each iteration of repair-loop runs spent its seconds."""

    runs: tuple[str, ...] = ()
    """run folders (with checkpoints/dream_loop), stage-4 checkpoint folders or dream_loop folders"""
    out: str = ""
    """also write the profile as JSON here (empty = only print)"""


def controller_split(metrics: list[dict]) -> tuple[float, float, int]:
    """(seconds in the dream's generations, seconds in real checks, number of checks) of one CMA-ES run's log.

    A generation's log line is written after its checks, but its clock (``seconds``) is read before them: the gap
    between two lines, less the gap between their clocks, is the checks' time. Generation 0's check (of the start)
    comes before the first clock and is left in the stage's other seconds."""
    timed = [row for row in metrics if "seconds" in row]
    checks = sum(max(0.0, (b["time"] - a["time"]) - (b["seconds"] - a["seconds"]))
                 for a, b in zip(timed, timed[1:]) if any(key.startswith("real_") for key in b))
    span = timed[-1]["time"] - timed[0]["time"] if len(timed) > 1 else 0.0
    plain = sorted(b["seconds"] - a["seconds"] for a, b in zip(timed, timed[1:])
                   if not any(key.startswith("real_") for key in b))
    first = plain[len(plain) // 2] if plain else 0.0  # generation 1's time in the dream: a typical generation's
    count = sum(1 for row in metrics if any(key.startswith("real_") for key in row))
    return span - checks + first, checks, count


def profile(run: Path) -> list[dict]:
    """One row per iteration: seconds per part, and the number of real checks."""
    from car_racing.training.loop import LOOP_DIR, find_loop_dir

    folder = find_loop_dir(run)
    rows: dict[int, dict] = {}
    for entry in read_metrics(metrics_path(folder, LOOP_DIR)):
        row = rows.setdefault(entry["step"], {"iteration": entry["step"], **{p: 0.0 for p in PARTS}, "checks_n": 0})
        stage = entry["stage"]
        if stage == "controller":
            row["c_other"] += entry["seconds"]
        elif stage in ("memory", "record", "repair"):
            row[stage] += entry["seconds"]
        elif stage == "fidelity":
            row["panel"] += entry["seconds"]
    for row in rows.values():
        iteration = folder / f"iter_{row['iteration']:02d}"
        for metrics in sorted(iteration.rglob(metrics_path("", "controller").name)) if iteration.is_dir() else []:
            if "dream_choice" in metrics.parts:
                continue
            dream, checks, count = controller_split(read_metrics(metrics))
            row["dream"] += dream
            row["checks"] += checks
            row["checks_n"] += count
        stage = row["c_other"]  # the whole controller stage, logged by the loop
        row["checks"] = min(row["checks"], stage)
        row["dream"] = min(row["dream"], stage - row["checks"])  # generation 1's estimated time may overshoot
        row["c_other"] = stage - row["dream"] - row["checks"]
        row["total"] = sum(row[p] for p in PARTS)
    return [rows[k] for k in sorted(rows)]


def main(args: Args) -> dict:
    if not args.runs:
        raise UsageError("--runs: expected one or more run folders")
    report = {}
    for name in args.runs:
        rows = profile(Path(name))
        report[name] = rows
        print(f"{name}: seconds per iteration (checks: the number of real checks of a parameter set's pair)")
        print("  iter " + " ".join(f"{p:>8}" for p in PARTS) + "    total  checks")
        for row in rows + [{"iteration": "all", **{p: sum(r[p] for r in rows) for p in PARTS + ("total", "checks_n")}}]:
            print(f"  {row['iteration']!s:>4} " + " ".join(f"{row[p]:8.1f}" for p in PARTS)
                  + f" {row['total']:8.1f} {row['checks_n']:7d}")
        total = sum(r["total"] for r in rows) or 1.0
        print("  share " + " ".join(f"{100 * sum(r[p] for r in rows) / total:7.0f}%" for p in PARTS))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    run_main(main, Args)
