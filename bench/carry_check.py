"""Does a loop iteration's C survive the next iteration's M? Real scores of one C on three agents.

The repair loop retrains M every iteration; C reads M's h, so iteration i's C warm-starts iteration i+1 on a
moved h. This script drives, on the same fresh tracks:

1. C_i with M_i (the agent as it was checked),
2. C_i with M_{i+1} as it is (the old warm start),
3. C_i carried onto M_{i+1} (:mod:`car_racing.training.carry`, the warm start since the carry was added),

and prints mean ± std of each and the carry's fit.

    python bench/carry_check.py --loop-dir checkpoints/u21/dream_loop --data-dir data/u21/dream_loop --iteration 0
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tempfile
from dataclasses import dataclass, field

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import checkpoint_paths, link_or_copy, load_model
from car_racing.episodes.agent import evaluate_agent
from car_racing.episodes.rollout import default_workers
from car_racing.recording.latent_cache import load_or_build_latents
from car_racing.recording.recorded_data import load_recorded
from car_racing.training.carry import carry_controller
from car_racing.training.loop_state import iteration_dir


@dataclass
class Args:
    """Drive iteration i's C with its own M, with iteration i+1's M as it is, and carried onto it."""

    loop_dir: str = "checkpoints/dream_loop"
    """a dream loop's folder (iter_NN/ with V, M, C; a train_controller_cmaes.py loop lives in CHECKPOINT_DIR/dream_loop)"""
    data_dir: str = "data/dream_loop"
    """the loop's recording (the carry's least squares run over it)"""
    iteration: int = 0
    """i: C and M of iter_i, the new M of iter_{i+1}"""
    old_memory: str = ""
    """M_i's file when iter_i/memory_model.pth is not it (a stage-4 loop's iteration 0: memory_from_stage3.pth)"""
    episodes: int = 16
    """real tracks per agent"""
    seed_base: int = 3_000_000
    """tracks are seeds SEED_BASE … SEED_BASE+episodes−1 (away from the loop's recording, checks and selection)"""
    max_steps: int = 1000
    """step limit of each episode"""
    workers: int = field(default_factory=default_workers)
    """worker processes for the real episodes"""


def main(args: Args) -> dict:
    old_dir, new_dir = (iteration_dir(args.loop_dir, i) for i in (args.iteration, args.iteration + 1))
    for folder in (old_dir, new_dir):
        if not checkpoint_paths(folder)["memory"].is_file():
            raise UsageError(f"{folder}: no memory_model.pth (--loop-dir and --iteration must name two finished iterations)")
    paths = checkpoint_paths(old_dir)
    old_memory = Path(args.old_memory) if args.old_memory else paths["memory"]
    controller, _ = load_model(paths["controller"], "controller")
    params = controller.get_flat_params()
    mu, _ = load_or_build_latents(args.data_dir, paths["vision"], "cpu", progress=False)
    data = load_recorded(args.data_dir, mmap=True)
    carried, fit = carry_controller(params, load_model(old_memory, "memory")[0],
                                    load_model(checkpoint_paths(new_dir)["memory"], "memory")[0], mu, data.actions,
                                    [(e["start"], e["length"]) for e in data.episodes])
    print(f"carry: {fit['samples']} recorded steps, R² steer/gas/brake "
          f"{' / '.join(f'{r:.4f}' for r in fit['target_r2'])}")
    seeds = [args.seed_base + j for j in range(args.episodes)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        agents = {"C_i with M_i": (old_memory, params), "C_i with M_i+1 as it is": (None, params),
                  "C_i carried onto M_i+1": (None, carried)}
        for name, (memory, agent_params) in agents.items():
            folder = Path(tmp) / str(len(results))
            link_or_copy(paths["vision"], checkpoint_paths(folder)["vision"])
            link_or_copy(memory or checkpoint_paths(new_dir)["memory"], checkpoint_paths(folder)["memory"])
            returns = [r.total_reward for r in evaluate_agent(folder, seeds, controller_params=agent_params,
                                                              max_steps=args.max_steps, workers=args.workers)]
            results[name] = returns
            print(f"{name}: {np.mean(returns):.1f} ± {np.std(returns):.1f} (min {np.min(returns):.1f}) over "
                  f"{len(seeds)} tracks (seeds {seeds[0]}..{seeds[-1]})", flush=True)
    return {"fit": fit, "returns": results}


if __name__ == "__main__":
    run_main(main, Args)
