"""The dream loop's per-iteration table, from its state file, as the docs print it.

``dream_loop.py`` (stage 4's repair loop) keeps every finished stage's result in
``CHECKPOINT_DIR/dream_loop/dream_loop_state.json``; this prints one Markdown row per iteration: M's data and
validation losses, each start's real checks (best candidate / CMA's mean), the kept C, C's recorded episodes and the
repair replays (dream / real), the check replays, the fidelity panel and the iteration's wall clock. With several
``--runs`` it prints each run's table, then the kept checks side by side (an A/B of two loops in one glance).

    python bench/loop_table.py --runs checkpoints/dream_loop
    python bench/loop_table.py --runs runs/r24/checkpoints/dream_loop runs/r26/checkpoints/dream_loop
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
from dataclasses import dataclass
from typing import Optional

from bench.tables import markdown_table
from car_racing.common.cli import UsageError, run_main
from car_racing.training.loop_state import STATE_FILE

COLUMNS = ("it", "M (val MDN / reward MSE; frames)", "warm start: checks", "from zero: checks", "kept (check)",
           "C's episodes: C / dream's choice; repair: dream / real", "check replays: episodes (mean return; tracks)",
           "panel: ρ; 20-step MSE; recorded", "wall clock")


@dataclass
class Args:
    """Print the dream loop's per-iteration table (Markdown) from its state file."""

    runs: tuple[str, ...] = ("checkpoints/dream_loop",)
    """run folders (with checkpoints/dream_loop), stage-4 checkpoint folders, dream_loop folders (each holds
    dream_loop_state.json), or the state files themselves"""


def read_state(run: str) -> dict:
    """The loop state of one run (a folder :func:`find_loop_dir` takes, or the file), with a one-line error when it
    is missing or unreadable."""
    from car_racing.training.loop import find_loop_dir

    path = Path(run)
    if not path.is_file():
        path = find_loop_dir(path) / STATE_FILE
    try:
        state = json.loads(path.read_text())
        state["stages"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: not a dream loop state ({err})") from None
    return state


def iteration_of(key: str) -> int:
    """The iteration of a loop state key ``"<iteration>:<stage>"``."""
    return int(key.split(":", 1)[0])


def iterations(state: dict) -> list[int]:
    """The iterations with at least one finished stage, in order."""
    return sorted({iteration_of(key) for key in state["stages"]})


def _number(value: Optional[float], digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _checks(run: Optional[dict]) -> str:
    """``g5 b / m; g10 b / m; …``: a start's real checks (best candidate / CMA's mean)."""
    if not run:
        return "—"
    return "; ".join(f"g{g} {_number(best, 0)} / {mean:.0f}" for g, best, mean in run.get("real_checks", [])) or "—"


def iteration_row(state: dict, iteration: int) -> list[str]:
    """One iteration's cells, in ``COLUMNS`` order; a stage not yet finished reads "—"."""
    stages = state["stages"]

    def stage(name: str) -> dict:
        return stages.get(f"{iteration}:{name}", {})

    memory, controller = stage("memory"), stage("controller")
    frames = memory.get("frames", stage("data").get("frames"))
    m_cell = (f"{_number(memory.get('val_mdn'), 3)} / {_number(memory.get('val_reward'), 2)}; "
              f"{'—' if frames is None else f'{frames:,}'}") if memory else "—"
    starts = controller.get("starts") or ({controller["start"]: controller} if controller.get("start") else {})
    kept = "—"
    if controller:
        its_start = str(controller.get("model_source", "")).startswith("initial mean")  # CMA never beat its start
        kept = f"{_number(controller.get('best_real_score'))} ({controller.get('start', 'warm')}{': its start' * its_start})"
    record, repair = stage("record"), stage("repair")
    episodes = "—"
    if record:
        episodes = f"{_number(record.get('return_mean'))} / {_number(record.get('return_mean_dream_choice'))}"
        if repair.get("episodes"):
            episodes += f"; {_number(repair.get('dream_return_mean'))} / {_number(repair.get('real_return_mean'))}"
    checks = stage("checks")
    replays = "—"
    if checks.get("episodes"):
        tracks = sorted({row["seed"] for row in checks.get("rows", [])})
        replays = (f"{checks['episodes']} ({_number(checks.get('replay_return_mean'))}; "
                   f"{', '.join(str(seed) for seed in tracks)})")
    fidelity = stage("fidelity")
    panel = "—"
    if fidelity:
        panel = (f"{_number(fidelity.get('rank_correlation'), 2)}; "
                 f"{_number(fidelity.get('errors', {}).get('multi_step_mse'), 3)}; {fidelity.get('recorded_now', 0)}")
    seconds = sum(result["seconds"] for key, result in stages.items() if iteration_of(key) == iteration)
    return [str(iteration), m_cell, _checks(starts.get("warm")), _checks(starts.get("zero")), kept, episodes,
            replays, panel, f"{seconds / 60:.1f} min"]


def loop_table(state: dict) -> str:
    """The per-iteration table of one loop."""
    return markdown_table(COLUMNS, [iteration_row(state, i) for i in iterations(state)])


def kept_checks_table(runs: tuple[str, ...], states: list[dict]) -> str:
    """The kept C's check per iteration, one column per run."""
    longest = max((len(iterations(state)) for state in states), default=0)
    rows = []
    for i in range(longest):
        cells = [_number(state["stages"].get(f"{i}:controller", {}).get("best_real_score")) for state in states]
        rows.append([str(i)] + cells)
    return markdown_table(["it"] + [f"kept check: {run}" for run in runs], rows)


def main(args: Args) -> str:
    if not args.runs:
        raise UsageError("--runs: give at least one dream loop folder")
    states = [read_state(run) for run in args.runs]
    parts = []
    for run, state in zip(args.runs, states):
        parts.append(f"{run}\n\n{loop_table(state)}")
    if len(states) > 1:
        parts.append(kept_checks_table(args.runs, states))
    text = "\n\n".join(parts)
    print(text)
    return text


if __name__ == "__main__":
    run_main(main, Args)
