"""How each driver of a recording drives: one Markdown row per driver and data folder.

The recorder's data summary (``car_racing/recording/summary.py``) lumps every driver but the random one together;
this splits them, so a dream loop's folder (``DATA_DIR/dream_loop``) shows C's own episodes beside the driving it
learned from: return, laps, share of frames on the road, speed (units/s, read from the dashboard) and the mean pedals.
``--last 16`` keeps each driver's last 16 episodes (a loop's latest iteration of C's episodes).

    python bench/driver_figures.py --data-dirs data/dream_loop --last 16
    python bench/driver_figures.py --data-dirs runs/curve/keyboard-40/data/dream_loop runs/curve/autopilot-20/data
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass

from bench.tables import markdown_table
from car_racing.common.cli import UsageError, run_main

COLUMNS = ("data", "driver", "episodes", "mean return", "laps", "on the road", "speed: mean / p50 / p90",
           "gas / brake (mean pedal)")


@dataclass
class Args:
    """Print each driver's figures of one or more recordings (Markdown)."""

    data_dirs: tuple[str, ...] = ("data",)
    """recorded data folders (stage 1's, or a dream loop's ``data/dream_loop``)"""
    last: int = 0
    """keep only each driver's last this many episodes (0 = all)"""


def rows(data_dir: str, last: int) -> list[list[str]]:
    """One table row per driver of ``data_dir``."""
    from car_racing.recording.summary import by_driver

    if not (Path(data_dir) / "car_racing_recorded_meta.json").is_file():
        raise UsageError(f"--data-dirs {data_dir}: no recording there (expected car_racing_recorded_meta.json)")
    out = []
    for driver, g in by_driver(data_dir, last).items():
        speed = g["speed"]
        on_road = "—" if g["on_road"] is None else f"{100 * g['on_road']:.0f}%"
        out.append([data_dir, driver, str(g["episodes"]), f"{g['mean_return']:.1f}", str(g["laps_finished"]),
                    on_road, f"{speed['mean']:.1f} / {speed['p50']:.0f} / {speed['p90']:.0f}",
                    f"{g['gas_mean']:.2f} / {g['brake_mean']:.3f}"])
    return out


def main(args: Args) -> list[list[str]]:
    if not args.data_dirs:
        raise UsageError("--data-dirs: give at least one recorded data folder")
    if args.last < 0:
        raise UsageError(f"--last {args.last}: expected 0 (all) or a positive number of episodes")
    table = [row for data_dir in args.data_dirs for row in rows(data_dir, args.last)]
    print(markdown_table(COLUMNS, table))
    return table


if __name__ == "__main__":
    run_main(main, Args)
