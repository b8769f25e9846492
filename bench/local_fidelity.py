"""Can CMA-ES improve a C in M's dream? Dream fitness vs real return for Cs *near* a given C.

The fidelity panel (``car_racing/evaluate_world_model.py``) ranks very different controllers (zero, circling,
random, trained), and its ρ is carried by the easy pairs. What a warm-started CMA-ES run needs is narrower:
among small perturbations of the current C — the candidates it samples, at its σ — does the dream's ranking
agree with the real env's? This script draws ``--neighbours`` perturbations of the checkpoint's C (Gaussian,
σ absolute, as CMA's ``--sigma0``), scores each (and C itself) in the dream exactly as stage 4's fitness does
(``--dream-generations`` × 8 whole-episode dreams from the start line, dropout 0.1, 0.25-quantile), and drives
each on ``--episodes`` real tracks. It prints the table, Spearman's ρ between real return and dream fitness,
and what the dream's favourite neighbour is really worth beside C.

    python bench/local_fidelity.py --checkpoint-dir checkpoints/c21/dream_loop/iter_01 \\
        --data-dir data/c21/dream_loop --neighbours 12 --sigma 0.05 --episodes 8
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass, field

import numpy as np
import torch

from car_racing.common.cli import run_main
from car_racing.common.runtime import checkpoint_paths, load_model
from car_racing.episodes.rollout import default_workers
from car_racing.evaluate_world_model import spearman
from car_racing.train_controller_cmaes import Args as ControllerArgs
from car_racing.training.cmaes_run import load_setup
from car_racing.training.fitness import DreamFitness, RealFitness, aggregate_dream_fitness


@dataclass
class Args:
    """Dream fitness vs real return of small perturbations of one C (the neighbourhood CMA-ES searches)."""

    checkpoint_dir: str = "checkpoints"
    """V, M and the C whose neighbourhood is measured"""
    data_dir: str = "data"
    """recorded data: the dreams' start frames"""
    neighbours: int = 12
    """perturbed copies of C"""
    sigma: float = 0.05
    """std of the perturbation per parameter (stage 4's warm starts use CMA σ0 0.05)"""
    dream_generations: int = 4
    """independent draws of 8 dreams each (stage 4's fitness of one generation), averaged"""
    dream_steps: int = 1000
    """steps per dream (stage 4: 1000, whole episodes)"""
    episodes: int = 8
    """real tracks per controller"""
    max_steps: int = 1000
    """step limit of each real episode"""
    seed_base: int = 3_100_000
    """real tracks are seeds SEED_BASE … (away from recording, checks, selection and held-out tracks)"""
    seed: int = 0
    """seeds the perturbations and the dreams"""
    workers: int = field(default_factory=default_workers)
    """worker processes for the real episodes"""


def main(args: Args) -> dict:
    controller, _ = load_model(checkpoint_paths(args.checkpoint_dir)["controller"], "controller")
    centre = controller.get_flat_params()
    rng = np.random.default_rng([args.seed, 23])
    candidates = [centre] + [centre + args.sigma * rng.standard_normal(len(centre)) for _ in range(args.neighbours)]
    names = ["C"] + [f"C + σ·ε #{i + 1}" for i in range(args.neighbours)]
    setup = load_setup(ControllerArgs(checkpoint_dir=args.checkpoint_dir, data_dir=args.data_dir, device="cpu",
                                      rollout_steps=args.dream_steps, seed=args.seed, progress=False))  # stage 4's dream settings (its defaults)
    dream = DreamFitness(setup)
    # each generation's dreams as stage 4 scores one generation (its last row is CMA's mean: dropped)
    per_generation = [dream.trials(candidates, centre, generation)[:-1].cpu()
                      for generation in range(args.dream_generations)]
    quantile = np.mean([aggregate_dream_fitness(trials, "quantile", 0.25) for trials in per_generation], axis=0)
    mean = torch.cat(per_generation, dim=1).mean(dim=1).numpy()
    seeds = [args.seed_base + j for j in range(args.episodes)]
    real = RealFitness(args.checkpoint_dir, len(centre), args.workers)
    try:
        returns = real.returns(candidates, seeds, args.max_steps)
    finally:
        real.close()
    real_mean = returns.mean(axis=1)
    print(f"{'controller':<14} {'real':>14} {'dream q25':>10} {'dream mean':>11}")
    for name, r, s, q, m in zip(names, real_mean, returns.std(axis=1), quantile, mean):
        print(f"{name:<14} {r:8.1f} ± {s:5.1f} {q:10.1f} {m:11.1f}")
    favourite = 1 + int(np.argmax(quantile[1:]))
    rho_q, rho_m = spearman(real_mean, quantile), spearman(real_mean, mean)
    print(f"Spearman ρ(real, dream q25) = {rho_q:.2f}, ρ(real, dream mean) = {rho_m:.2f} over {len(candidates)} "
          f"controllers (C and {args.neighbours} neighbours at σ {args.sigma:g}; {args.episodes} real tracks each)")
    print(f"the dream's favourite neighbour ({names[favourite]}: q25 {quantile[favourite]:.1f}) drives "
          f"{real_mean[favourite]:.1f} real; C drives {real_mean[0]:.1f}; the best neighbour really drives "
          f"{real_mean[1:].max():.1f}")
    return {"names": names, "real": returns.tolist(), "dream_q25": quantile.tolist(), "dream_mean": mean.tolist(),
            "rho_q25": rho_q, "rho_mean": rho_m}


if __name__ == "__main__":
    run_main(main, Args)
