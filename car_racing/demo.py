"""The main job behind ``make demo``: the whole pipeline on quick settings, in a fresh run folder.

    python car_racing/demo.py            # → runs/demo-YYYYmmdd-HHMMSS/{data,...}

Every stage reads and writes only inside the run folder (``data/`` and ``checkpoints/`` of the repo are
never touched), so a demo never disturbs a real recording or trained models. The quick settings are
all in :data:`PRESET`; the stages run in the order of :data:`STAGES`, each a function of the run folder
and the preset.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from car_racing.cli import UsageError, run_main

# Quick settings for every stage, in one place (minutes on a laptop CPU, not a good driver).
PRESET: dict[str, Any] = {
    "seed": 0,
    "record": {"driver": "autopilot", "episodes": 8, "steps": 400, "noise": 1.0, "seq_len": 100,
               "workers": None},  # None = number of CPUs
}


@dataclass
class Args:
    """Run every stage of the pipeline on quick settings (PRESET in car_racing/demo.py) in a new run folder."""

    runs_dir: str = "runs"
    """folder in which the run folder demo-YYYYmmdd-HHMMSS is created"""


@dataclass
class Stage:
    """One step of the pipeline: ``run(run_dir, preset)`` reads and writes only under ``run_dir``."""

    name: str
    run: Callable[[Path, dict[str, Any]], None]


def record(run_dir: Path, preset: dict[str, Any]) -> None:
    """Stage 1: autopilot episodes → run_dir/data."""
    from car_racing import recorded_frames

    settings = preset["record"]
    recorded_frames.main(recorded_frames.Args(
        driver=settings["driver"], episodes=settings["episodes"], steps=settings["steps"], seed=preset["seed"],
        data_dir=str(run_dir / "data"), workers=settings["workers"], noise=settings["noise"],
        seq_len=settings["seq_len"]))


# Later stages (vision, memory, controller, simulator) are appended here, reading run_dir/data and
# writing run_dir/checkpoints, run_dir/videos, ...
STAGES: list[Stage] = [
    Stage("record driving data (stage 1)", record),
]


def new_run_dir(runs_dir: Path) -> Path:
    """A fresh ``runs_dir/demo-YYYYmmdd-HHMMSS`` (a suffix is added if that second is taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{i}" for i in range(1, 100)]:
        run_dir = runs_dir / f"demo-{stamp}{suffix}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
        except OSError as err:
            raise UsageError(f"--runs-dir {runs_dir}: cannot create a run folder ({err.strerror})") from None
    raise UsageError(f"--runs-dir {runs_dir}: too many run folders for {stamp}")


def main(args: Args) -> Path:
    run_dir = new_run_dir(Path(args.runs_dir))
    (run_dir / "preset.json").write_text(json.dumps(PRESET, indent=1))
    print(f"demo run folder: {run_dir}")
    for number, stage in enumerate(STAGES, start=1):
        print(f"\n=== [{number}/{len(STAGES)}] {stage.name} ===")
        started = time.perf_counter()
        stage.run(run_dir, PRESET)
        print(f"=== {stage.name}: done in {time.perf_counter() - started:.0f} s ===")
    print(f"\ndemo finished; everything it wrote is in {run_dir}")
    return run_dir


if __name__ == "__main__":
    run_main(main, Args)
