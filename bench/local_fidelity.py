"""Can CMA-ES improve a C in M's dream? Dream fitness vs real return for Cs *near* a given C.

The fidelity panel (``car_racing/evaluate_world_model.py``) ranks very different controllers (zero, circling,
random, trained), and its ρ is carried by the easy pairs. What a warm-started CMA-ES run needs is narrower:
among small perturbations of the current C — the candidates it samples, at its σ — does the dream's ranking
agree with the real env's? This script draws ``--neighbours`` perturbations of the checkpoint's C (Gaussian,
σ absolute, as CMA's ``--cmaes.sigma0``), drives each (and C itself) on ``--episodes`` real tracks, and scores them
in the dream under each ``--dreams`` setting (``START:STEPS``), exactly as stage 4's fitness does
(``--dream-generations`` draws of dreams, dropout 0.1, the 0.25-quantile and the mean of the dreams):

- ``episode-start:1000`` — whole episodes from the start line (stage 4's dreams before the repair loop), 8 per draw;
- ``recorded:N`` — N-step dreams from recorded states anywhere in the data;
- ``agent:N`` — N-step dreams branched from the states of C's own recorded episodes (driver ``agent``: the
  loop's record stage), the on-policy short rollouts of MBPO.

Short dreams get more of them per draw, so every setting dreams about the same number of steps
(``--dream-step-budget``). For each setting it prints Spearman's ρ between real return and dream fitness, and
what the dream's favourite neighbour is really worth beside C; the split-half ρ of the real returns
(even vs odd tracks) says how well any dream could rank these controllers on this many tracks.
``--gas-shifts`` adds copies of C whose gas bias (the logit before the sigmoid) is moved by each shift: do the dream
and the real env agree on what driving faster or slower is worth? ``--dream-value`` ends every dream on M's value
of its last state, as stage 4's ``--dream.value``.
``--save`` keeps the real returns (and the scores) in a JSON file that ``--real-from`` reads back, so more
dream settings can be scored on the same controllers without driving them again.

    python bench/local_fidelity.py --checkpoint-dir checkpoints/c21/dream_loop/iter_01 \\
        --data-dir data/c21/dream_loop --neighbours 12 --sigma 0.05 --episodes 8
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
from dataclasses import dataclass, field

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import atomic_path, checkpoint_paths, load_model
from car_racing.episodes.rollout import default_workers
from car_racing.training.fidelity import spearman
from car_racing.common import config
from car_racing.training.cmaes_run import load_setup
from car_racing.training.dream import dream_start_settings, parse_dream_setting
from car_racing.episodes.agent import RealFitness
from car_racing.training.fitness import DreamFitness, aggregate_dream_fitness


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
    dreams: tuple[str, ...] = ("episode-start:1000",)
    """dream settings to score, each START:STEPS with START episode-start, recorded or agent (module docstring)"""
    gas_shifts: tuple[float, ...] = ()
    """copies of C with the gas bias (logit) moved by each of these, after the random neighbours (e.g. -1 1 2)"""
    dream_value: bool = False
    """dreams end on M's value of their last state (stage 4's --dream.value; M trained with --memory.value-discount)"""
    dream_generations: int = 4
    """independent draws of dreams (stage 4's fitness of one generation each), averaged"""
    dream_step_budget: int = 8000
    """dreamt steps per candidate and draw: STEPS-step dreams get budget/STEPS trials (8 whole episodes)"""
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
    working_above: float = 150.0
    """controllers whose mean real return is above this count as still driving: ρ is also given among them (telling
    a broken neighbour from a working one is easy; CMA's mean moves by the ranking among the working ones)"""
    save: str = ""
    """JSON file to write the controllers' real returns and every setting's scores to (empty = none)"""
    real_from: str = ""
    """JSON file of an earlier --save with the same checkpoint, neighbours, σ, seed and tracks: its real returns
    are used instead of driving the controllers again"""


def dream_scores(setup, candidates: list[np.ndarray], start: str, steps: int, args: Args
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each candidate's dream q25 (averaged over the draws), the mean of all its dreams, and its mean per draw
    (draws, candidates), under one setting."""
    settings = dream_start_settings(start)  # dream_start, dream_start_drivers
    setup.config = config.replace(setup.config, dream__start=settings["dream_start"],
                                  dream__start_drivers=tuple(settings["dream_start_drivers"]), dream__steps=steps,
                                  dream__trials=max(8, args.dream_step_budget // steps))
    setup.pool = None
    dream = DreamFitness(setup)
    # each draw's dreams as stage 4 scores one generation (its last row is CMA's mean: dropped)
    per_draw = [dream.trials(candidates, candidates[0], draw)[:-1].cpu() for draw in range(args.dream_generations)]
    quantile = np.mean([aggregate_dream_fitness(trials, "quantile", 0.25) for trials in per_draw], axis=0)
    per_draw_mean = np.stack([aggregate_dream_fitness(trials, "mean") for trials in per_draw])
    return quantile, per_draw_mean.mean(axis=0), per_draw_mean


def real_returns(candidates: list[np.ndarray], seeds: list[int], args: Args) -> np.ndarray:
    """(controllers, tracks) real returns on ``seeds``: driven now, or read from --real-from (checked to be the
    same run)."""
    if args.real_from:
        saved = json.loads(Path(args.real_from).read_text())
        same = {"checkpoint_dir": args.checkpoint_dir, "sigma": args.sigma, "seed": args.seed, "seeds": seeds,
                "neighbours": args.neighbours, "gas_shifts": list(args.gas_shifts)}
        if any(saved.get(key) != value for key, value in same.items()):
            raise UsageError(f"--real-from {args.real_from}: saved for other controllers or tracks "
                             f"(expected {same})")
        return np.asarray(saved["real"])
    real = RealFitness(args.checkpoint_dir, len(candidates[0]), args.workers)
    try:
        return real.returns(candidates, seeds, args.max_steps)
    finally:
        real.close()


def split_half_rho(returns: np.ndarray) -> float:
    """Spearman ρ between the controllers' mean return on even and on odd tracks: how reproducible the real
    ranking itself is on half the tracks (a ceiling for any dream's ρ, before the Spearman–Brown step up)."""
    if len(returns) < 3 or returns.shape[1] < 2:
        return float("nan")
    return spearman(returns[:, 0::2].mean(axis=1), returns[:, 1::2].mean(axis=1))


def rho_among(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    """Spearman ρ over the given rows (NaN with fewer than 3)."""
    return spearman(x[rows], y[rows]) if int(np.sum(rows)) >= 3 else float("nan")


def main(args: Args) -> dict:
    settings = [parse_dream_setting(text, "--dreams") for text in args.dreams]
    controller, _ = load_model(checkpoint_paths(args.checkpoint_dir)["controller"], "controller")
    centre = controller.get_flat_params()
    rng = np.random.default_rng([args.seed, 23])
    candidates = [centre] + [centre + args.sigma * rng.standard_normal(len(centre)) for _ in range(args.neighbours)]
    names = ["C"] + [f"C + σ·ε #{i + 1}" for i in range(args.neighbours)]
    gas_bias = len(centre) - 2  # the flat layout ends with the biases of (steer, gas, brake)
    for shift in args.gas_shifts:
        candidates.append(centre.copy())
        candidates[-1][gas_bias] += shift
        names.append(f"C, gas {shift:+g}")
    setup = load_setup(config.preset("default", run__checkpoint_dir=args.checkpoint_dir, run__data_dir=args.data_dir,
                                     run__device="cpu", run__seed=args.seed, run__progress=False,
                                     dream__value=args.dream_value))  # stage 4's dreams
    scores = {text: dream_scores(setup, candidates, start, steps, args)
              for text, (start, steps) in zip(args.dreams, settings)}
    seeds = [args.seed_base + j for j in range(args.episodes)]
    returns = real_returns(candidates, seeds, args)
    real_mean = returns.mean(axis=1)
    header = "".join(f" {text + ' q25':>22} {'mean':>7}" for text in args.dreams)
    print(f"{'controller':<14} {'real':>14}{header}")
    for k, (name, r, s) in enumerate(zip(names, real_mean, returns.std(axis=1))):
        cells = "".join(f" {q[k]:22.1f} {m[k]:7.1f}" for q, m, _ in scores.values())
        print(f"{name:<14} {r:8.1f} ± {s:5.1f}{cells}")
    working = real_mean > args.working_above
    print(f"{len(candidates)} controllers (C and {args.neighbours} neighbours at σ {args.sigma:g}), {args.episodes} real "
          f"tracks each; split-half ρ of the real returns (even vs odd tracks) = {split_half_rho(returns):.2f}, "
          f"{split_half_rho(returns[working]):.2f} among the {int(working.sum())} that drive (real > "
          f"{args.working_above:g})")
    summary = {}
    for text, (quantile, mean, per_draw) in scores.items():
        favourite = 1 + int(np.argmax(mean[1:]))
        rho_q, rho_m = spearman(real_mean, quantile), spearman(real_mean, mean)
        rho_working = rho_among(real_mean, mean, working)
        # the dream's own reproducibility: its ranking by the even draws against the odd ones
        dream_split = (rho_among(per_draw[0::2].mean(axis=0), per_draw[1::2].mean(axis=0), working)
                       if len(per_draw) > 1 else float("nan"))
        summary[text] = {"rho_q25": rho_q, "rho_mean": rho_m, "rho_mean_working": rho_working,
                         "dream_split_half_working": dream_split, "favourite": names[favourite],
                         "favourite_real": float(real_mean[favourite]), "dream_q25": quantile.tolist(),
                         "dream_mean": mean.tolist(), "dream_mean_per_draw": per_draw.tolist()}
        print(f"{text:>20}: ρ(real, dream q25) = {rho_q:5.2f}, ρ(real, dream mean) = {rho_m:5.2f}, "
              f"{rho_working:5.2f} among those that drive (the dream's own split-half ρ there {dream_split:5.2f}); "
              f"its favourite neighbour by the mean ({names[favourite]}) drives {real_mean[favourite]:.1f} real "
              f"(C {real_mean[0]:.1f}, best neighbour {real_mean[1:].max():.1f})")
    result = {"checkpoint_dir": args.checkpoint_dir, "sigma": args.sigma, "seed": args.seed,
              "seeds": seeds, "neighbours": args.neighbours, "gas_shifts": list(args.gas_shifts),
              "dream_value": args.dream_value,
              "names": names, "real": returns.tolist(), "split_half_rho": split_half_rho(returns), "dreams": summary}
    if args.save:
        with atomic_path(args.save) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    run_main(main, Args)
