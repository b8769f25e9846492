"""Issue 35's curve: how much of a person's driving makes a driver. One run folder per point, the table and PNG of
score against minutes of driving from all of them.

A point is the user's path, as a person types it, with N episodes of one driver (``keyboard``, the headless stand-in
for a person at the arrow keys, or ``autopilot``): stage 1 with ``--record.driver D --record.episodes N`` (plus the
default random-driver episodes), stages 2–4 with their defaults, then the simulator over the 100 held-out tracks
(seeds 10000–10099, never used to choose a setting), which writes ``evaluation.json``. Each stage is a subprocess
running the stage script; its wall clock goes into ``curve_point.json`` as it ends. Rerun the same command after an
interruption: finished stages are skipped, the interrupted one continues (``--resume``; a recording cut short is
recorded again: it is the shortest stage).

    python bench/person_curve.py --out runs/curve/keyboard-10 --driver keyboard --episodes 10 --seed 1
    python bench/person_curve.py --plot runs/curve/keyboard-5 runs/curve/keyboard-10 --png runs/curve/curve.png
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import shutil
import subprocess
import time
from dataclasses import dataclass

from bench.tables import markdown_table
from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import atomic_path

ROOT = Path(__file__).resolve().parent.parent
POINT_FILE = "curve_point.json"
EVALUATION_FILE = "evaluation.json"
STAGES = ("record", "vision", "memory", "controller", "simulator")


@dataclass
class Args:
    """Run one point of the curve (stages 1–5 of the user's path), or with ``--plot`` draw the curve."""

    out: str = "runs/curve/keyboard-10"
    """the point's run folder (``data/``, ``checkpoints/``, ``curve_point.json``, ``evaluation.json``)"""
    driver: str = "keyboard"
    """stage 1's driver: keyboard (a person at the arrow keys, headless) or autopilot"""
    episodes: int = 10
    """N: the driver's episodes (the default random-driver episodes are added, as for a person)"""
    seed: int = 1
    """--seed of every stage"""
    tracks: int = 100
    """held-out tracks the simulator scores (seeds 10000 on)"""
    config: str = ""
    """a TOML config file for stages 1–4 (``--config``: sizes other than the defaults, e.g. the tests' tiny ones);
    empty: the defaults, as the curve asks"""
    plot: tuple[str, ...] = ()
    """point folders: print their table and draw the curve instead of running a point"""
    png: str = "runs/curve/person_curve.png"
    """where --plot draws the curve"""


def stage_commands(args: Args, out: Path) -> dict[str, list[str]]:
    """What a person types for each stage, with this point's folders (every stage's other settings: defaults)."""
    data, checkpoints = str(out / "data"), str(out / "checkpoints")
    common = ["--seed", str(args.seed), "--data-dir", data, "--no-progress",
              *(["--config", str(Path(args.config).resolve())] if args.config else [])]
    trained = [*common, "--checkpoint-dir", checkpoints]
    return {
        "record": ["car_racing/recorded_frames.py", "--record.driver", args.driver,
                   "--record.episodes", str(args.episodes), *common],
        "vision": ["car_racing/train_vision.py", *trained],
        "memory": ["car_racing/train_memory.py", *trained],
        "controller": ["car_racing/train_controller_cmaes.py", *trained],
        "simulator": ["car_racing/car_racing_gameplay_simulator.py", "--checkpoint-dir", checkpoints,
                      "--episodes", str(args.tracks), "--no-progress", "--evaluation-out", str(out / EVALUATION_FILE)],
    }


def write_json(path: Path, record: dict) -> None:
    """Atomically (a temporary name, then a rename): an interrupted run keeps the last good file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def run_point(args: Args) -> dict:
    """Stages 1–5 into ``args.out``, skipping those already timed; returns the point's record."""
    if args.driver not in ("keyboard", "autopilot"):
        raise UsageError(f"--driver {args.driver!r}: expected keyboard or autopilot")
    if args.episodes < 1 or args.tracks < 1:
        raise UsageError("--episodes and --tracks: expected positive integers")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    point_path = out / POINT_FILE
    point = json.loads(point_path.read_text()) if point_path.is_file() else {}
    wanted = {"driver": args.driver, "episodes": args.episodes, "seed": args.seed, "tracks": args.tracks,
              "config": args.config}
    saved = {k: point.get(k) for k in wanted}
    if point and saved != wanted:
        raise UsageError(f"{point_path}: a point with {saved}, not {wanted}; choose another --out")
    point = {**wanted, "seconds": {}, "commands": {}, **point}
    for stage, command in stage_commands(args, out).items():
        if stage in point["seconds"]:
            continue
        if point.get("started") == stage:  # this stage was interrupted: it goes on where it stopped
            if stage == "record":
                shutil.rmtree(out / "data", ignore_errors=True)  # a recording cut short: recorded again
            elif stage != "simulator":
                command = [*command, "--resume"]
        point["started"] = stage
        write_json(point_path, point)
        print(f"{stage}: python {' '.join(command)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, *command], cwd=ROOT)
        if done.returncode != 0:
            raise UsageError(f"{stage} stopped (exit {done.returncode}); rerun the same command to go on")
        point["seconds"][stage] = round(time.perf_counter() - started, 1)
        point["commands"][stage] = "python " + " ".join(command)
        point.pop("started")
        write_json(point_path, point)
    return point


def point_row(folder: Path) -> dict:
    """One point's figures: minutes of the driver's driving, score over the held-out tracks, stage minutes."""
    from car_racing.episodes.evaluation import read_evaluation
    from car_racing.recording.recorded_data import load_recorded
    from car_racing.world.drivers import ENV_FPS

    point_path = folder / POINT_FILE
    if not point_path.is_file():
        raise UsageError(f"{point_path}: no curve point here; run python bench/person_curve.py --out {folder}")
    point = json.loads(point_path.read_text())
    evaluation = read_evaluation(folder / EVALUATION_FILE)
    recorded = load_recorded(folder / "data", mmap=True).episodes
    episodes = [e for e in recorded if e["driver"] == point["driver"]]
    frames = sum(int(e["length"]) for e in episodes)
    return {"folder": str(folder), "driver": point["driver"], "episodes": len(episodes), "seed": point["seed"],
            "minutes_driven": frames / ENV_FPS / 60, "recorded_frames": sum(int(e["length"]) for e in recorded),
            "seconds": point["seconds"], "mean": evaluation["mean"], "std": evaluation["std"], "min": evaluation["min"],
            "median": evaluation["median"], "laps": evaluation["laps_finished"], "tracks": evaluation["episodes"],
            "returns": [float(r) for r in evaluation["returns"]]}


TABLE_COLUMNS = ("driver", "N", "minutes driven", "score (mean ± std)", "min", "median", "laps",
                 "record / V / M / C / simulator (min)", "stages 1–4 (min)")


def table(rows: list[dict]) -> str:
    """The docs' table: one line per point, the stages' minutes beside the score."""
    cells = []
    for r in sorted(rows, key=lambda r: (r["driver"], r["episodes"])):
        minutes = [r["seconds"].get(stage, float("nan")) / 60 for stage in STAGES]
        cells.append([r["driver"], str(r["episodes"]), f"{r['minutes_driven']:.1f}",
                      f"{r['mean']:.1f} ± {r['std']:.1f}", f"{r['min']:.1f}", f"{r['median']:.1f}",
                      f"{r['laps']}/{r['tracks']}", " / ".join(f"{m:.1f}" for m in minutes), f"{sum(minutes[:4]):.1f}"])
    return markdown_table(TABLE_COLUMNS, cells)


def plot(rows: list[dict], png: Path) -> None:
    """Score (mean ± std over the held-out tracks) against minutes of driving, one line per driver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for driver in sorted({r["driver"] for r in rows}):
        mine = sorted((r for r in rows if r["driver"] == driver), key=lambda r: r["minutes_driven"])
        ax.errorbar([r["minutes_driven"] for r in mine], [r["mean"] for r in mine], yerr=[r["std"] for r in mine],
                    marker="o", capsize=3, label=driver)
        for r in mine:
            ax.annotate(f"N={r['episodes']}", (r["minutes_driven"], r["mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.set_xlabel("minutes of driving recorded (plus the default random-driver episodes)")
    ax.set_ylabel(f"score over {rows[0]['tracks']} held-out tracks")
    ax.set_title("How much driving makes a driver (stages 2–4 defaults)")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)


def main(args: Args) -> dict:
    if args.plot:
        rows = [point_row(Path(folder)) for folder in args.plot]
        print(table(rows))
        plot(rows, Path(args.png))
        print(f"curve: {args.png}")
        return {"rows": rows}
    point = run_point(args)
    row = point_row(Path(args.out))
    print(table([row]))
    return {"point": point, "row": row}


if __name__ == "__main__":
    run_main(main, Args)
