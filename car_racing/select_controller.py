"""Stage 4b: choose which of a CMA-ES run's real-checked controllers to keep, on more tracks.

    python car_racing/select_controller.py --checkpoint-dir checkpoints/my-reward-only --top 4 --episodes 32

A run's real-env checks (``train_controller_cmaes.py --eval-every``) drive a few fixed tracks — enough
to follow progress, not to tell a C that crashes on one track in twenty from one that never does: with 8
check tracks the DAgger run kept a C whose crash showed only on 100 tracks. This script takes the run's
``--top`` checked parameter sets (best check score first; the checkpoint lists every one it checked),
drives each on ``--episodes`` *selection* tracks (seeds ``--seed-base``, ``+1``, …: never used for
training, checks, recording or the held-out score of the simulator) and keeps the best by ``--keep-by``:

- ``mean``: the mean return, as the checks do;
- ``mean-minus-std`` (default): mean − std, so one crash (a return hundreds below the rest) costs a
  candidate far more than its effect on the mean — the failures the issue's "min ≥ 800" is about;
- ``worst``: the minimum return.

The winner is written into the run's controller checkpoint (``model_state``, ``best_params``,
``model_source``) with the selection's table in ``selection`` and in ``training["selection"]``, so
the file says which tracks chose it. Each candidate's returns are saved after every candidate
(``select_controller.json`` beside the checkpoint), so an interrupted selection continues where it
stopped. The worst episodes of the winner are printed with the simulator command that films them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import atomic_path, checkpoint_paths, load_checkpoint, refuse_shipped, save_checkpoint
from car_racing.episodes.rollout import Backend, default_workers, uses_backend
from car_racing.training.loop_state import SELECT_SEED_BASE

RESULTS_FILE = "select_controller.json"
CRITERIA = {
    "mean": lambda returns: float(np.mean(returns)),
    "mean-minus-std": lambda returns: float(np.mean(returns) - np.std(returns)),
    "worst": lambda returns: float(np.min(returns)),
}


@dataclass
class Args:
    """Re-drive a CMA-ES run's best checked controllers on more tracks and keep the best by --keep-by."""
    checkpoint_dir: str = "checkpoints"
    """the run's folder: vision_model.pth, memory_model.pth and the run's control_model_cmaes.pth (updated in place)"""
    top: int = 4
    """how many checked parameter sets to re-drive, best check score first (the kept one is always among them)"""
    episodes: int = 32
    """selection tracks per candidate"""
    seed_base: int = SELECT_SEED_BASE
    """selection tracks are seeds SEED_BASE .. SEED_BASE+episodes-1: by default the dream loop's final-choice
    tracks (7,000,000+), away from recording (the loop's C episodes: 5,000,000+), training (1,010,000+),
    check (1,000,000+), DAgger (3,000,000+) and held-out (10,000+) seeds"""
    keep_by: Literal["mean", "mean-minus-std", "worst"] = "mean-minus-std"
    """how the selection returns rank candidates"""
    max_steps: int = 1000
    """episode step limit"""
    workers: int = field(default_factory=default_workers)
    """workers running the episodes: processes, or Ray actors with --backend ray"""
    progress: bool = True
    """show tqdm progress bars (--no-progress for logs and notebooks)"""
    backend: Literal["processes", "ray"] = "processes"
    """where the episodes run: local worker processes or Ray actors (car_racing/episodes/backends.py)"""
    ray_address: str = ""
    """--backend ray: auto or HOST:PORT = join a running cluster; empty = the cluster in RAY_ADDRESS when that is set,
    else a private local Ray with --workers CPUs for this run (never a cluster an earlier `ray start` left behind)"""
    dry_run: bool = False
    """print the ranking without changing the checkpoint"""


def candidates_of(run: dict, top: int) -> list[dict]:
    """The run's ``top`` checked parameter sets by check score (ties: later check first), duplicates dropped."""
    checked = run.get("checked") or []
    ranked = sorted(enumerate(checked), key=lambda item: (item[1]["score"], item[0]), reverse=True)
    chosen, seen = [], set()
    for _, entry in ranked:
        key = np.asarray(entry["params"], dtype=np.float32).tobytes()
        if key not in seen:
            seen.add(key)
            chosen.append(entry)
        if len(chosen) == top:
            break
    return chosen


def load_results(path: Path, settings: dict) -> dict[str, list[float]]:
    """Returns saved by an interrupted selection with the same settings (source → returns), else nothing."""
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    return saved.get("returns", {}) if saved.get("settings") == settings else {}


@uses_backend
def main(args: Args) -> dict:
    """Rank the candidates on the selection tracks, write the winner; returns the selection record."""
    from car_racing.episodes.agent import make_agent_driver
    from car_racing.models.ffn import Controller, num_controller_params
    from car_racing.episodes.agent import RealFitness

    if args.top < 1 or args.episodes < 1 or args.workers < 1 or args.max_steps < 1:
        raise UsageError(f"--top {args.top} / --episodes {args.episodes} / --workers {args.workers} / "
                         f"--max-steps {args.max_steps}: expected positive integers")
    refuse_shipped(args.checkpoint_dir)  # the selection is written into the controller checkpoint
    folder = Path(args.checkpoint_dir)
    path = checkpoint_paths(folder)["controller"]
    run = load_checkpoint(path, "controller")
    candidates = candidates_of(run, args.top)
    if not candidates:
        raise UsageError(f"{path}: lists no real-checked controllers (train with --eval-every > 0 first)")
    seeds = [args.seed_base + i for i in range(args.episodes)]
    smoothing = float(run.get("config", {}).get("smoothing", 0.0))
    settings = {"seeds": [seeds[0], seeds[-1]], "max_steps": args.max_steps, "smoothing": smoothing,
                "run_generation": int(run.get("generation", 0))}
    results_path = folder / RESULTS_FILE
    returns = load_results(results_path, settings)
    print(f"selection: {len(candidates)} checked controllers of {path} × {len(seeds)} tracks "
          f"(seeds {seeds[0]}..{seeds[-1]}), kept by {args.keep_by}")
    pending = [entry for entry in candidates if entry["source"] not in returns]
    if pending:  # one set of workers (V and M loaded once each) swaps in every candidate, as a CMA-ES run does
        make_agent_driver(folder)  # V, M and C checked here: a missing or unfit file is one line, not a worker's crash
        episodes = RealFitness(str(folder), num_controller_params(**run["model_args"]), args.workers,
                               Backend(args.backend, args.ray_address))
        try:
            for entry in tqdm(pending, desc="candidates", unit="C", disable=not args.progress):
                row = episodes.returns([np.asarray(entry["params"], dtype=np.float64)], seeds, args.max_steps, smoothing)
                returns[entry["source"]] = row[0].tolist()
                with atomic_path(results_path) as tmp:
                    Path(tmp).write_text(json.dumps({"settings": settings, "returns": returns}, indent=1))
        finally:
            episodes.close()
    table = []
    for entry in candidates:
        values = np.asarray(returns[entry["source"]])
        table.append({"source": entry["source"], "check_score": entry["score"], "mean": float(values.mean()),
                      "std": float(values.std()), "min": float(values.min()),
                      "criterion": CRITERIA[args.keep_by](values)})
        print(f"  {entry['source']}: selection {values.mean():.1f} ± {values.std():.1f}, min {values.min():.1f} "
              f"→ {args.keep_by} {table[-1]['criterion']:.1f}")
    best = max(range(len(table)), key=lambda i: table[i]["criterion"])
    winner, winner_returns = candidates[best], np.asarray(returns[candidates[best]["source"]])
    worst = np.argsort(winner_returns)[:3]
    print(f"kept: {winner['source']} ({args.keep_by} {table[best]['criterion']:.1f}); its worst tracks: "
          + ", ".join(f"seed {seeds[i]} ({winner_returns[i]:.1f})" for i in worst))
    print(f"  film one: python car_racing/car_racing_gameplay_simulator.py --checkpoint-dir {folder} "
          f"--seed {seeds[worst[0]]} --episodes 1 --video runs/worst.mp4")
    record = {"keep_by": args.keep_by, "seeds": settings["seeds"], "episodes": len(seeds), "table": table,
              "kept": winner["source"], "config": asdict(args)}
    if not args.dry_run:
        controller = Controller(**run["model_args"])
        controller.set_flat_params(np.asarray(winner["params"], dtype=np.float64))
        run.update(model_state=controller.state_dict(), best_params=np.asarray(winner["params"], dtype=np.float64),
                   model_source=f"{winner['source']}, selected by {args.keep_by} on {len(seeds)} selection tracks",
                   selection=record)
        if isinstance(run.get("training"), dict):
            run["training"]["selection"] = {k: v for k, v in record.items() if k != "config"}
        save_checkpoint(run, path)
        print(f"wrote {path}")
    return record


if __name__ == "__main__":
    run_main(main, Args)
