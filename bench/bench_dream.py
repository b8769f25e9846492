"""Benchmark the dream rollout: the batched path (population × trials as one batch per step) against
per-candidate loops, in the same run and on the same random-weight M, and CMA-ES generations/minute.

Prints dream steps/s (one dream step = one candidate-trial advancing one time step) of

- batched float32:   :func:`car_racing.training.dream.dream_rollout`, P·N rows per M step (fused weights);
- batched bfloat16:  the same with ``dtype=torch.bfloat16`` (LSTM and MDN-head products in bf16);
- batched M.step:    the whole batch through the reference dream (``fused=False``: :func:`imagine`, whose step is
                     ``population_actions`` and ``MDNRNN.dream_step``; it also keeps the trace), to show what
                     the fusion adds;
- per-candidate:     :func:`car_racing.training.dream.dream_rollout_per_candidate`, a Python loop over the P
                     candidates, each stepping its N trials as one batch (reference step);
- per-rollout:       the same loop with one rollout (batch 1) at a time, as the seed's naive
                     implementation does;

checks that the float32 paths give the same fitness (float rounding apart), compares the bfloat16
fitness with float32's (same noise; mean, per-candidate means, rank correlation, and the float32
seed-to-seed spread as the yardstick), prints the speed-up ratios, then times full generations with
the default settings (ask, the dream of P candidates + CMA's mean, tell, saving the checkpoint with the
CMA-ES state) and prints generations/minute.

By default M has random weights and the dreams start from random states; ``--trained`` uses
CHECKPOINT_DIR/memory_model.pth and start states from the recorded data in DATA_DIR (as training does).

    python bench/bench_dream.py
    python bench/bench_dream.py --threads 1 --device cpu
    python bench/bench_dream.py --trained --dream-dtype bfloat16
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tempfile
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bench.common import timed
from car_racing.common import config
from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import build_model, load_checkpoint, resolve_device, save_resume_state
from car_racing.episodes.agent import checkpoint_paths
from car_racing.models.ffn import flat_to_population, num_controller_params
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.recording.latent_cache import load_or_build_latents
from car_racing.recording.recorded_data import load_memory_sequences
from car_racing.training.cmaes_run import make_es
from car_racing.training.dream import (
    FusedDreamWeights,
    StartStates,
    collect_start_states,
    dream_rollout,
    dream_rollout_per_candidate,
)
from car_racing.training.fitness import generation_generator


@dataclass
class Args:
    """Dream steps/s of the batched rollout vs per-candidate loops, and CMA-ES generations/minute."""
    population: int = 32
    """CMA-ES population (the training default, and the seed preset's)"""
    dream_trials: int = 16
    """dreams per candidate (the seed preset's --dream.trials)"""
    hidden_size: int = 512
    """M's LSTM width"""
    latent_size: int = 32
    """size of z"""
    steps: int = 10
    """dream steps timed per path (the per-rollout loop is slow: keep this small)"""
    rollout_steps: int = 50
    """dream length of the timed generations (the seed preset's --dream.steps)"""
    generations: int = 3
    """full generations timed for generations/minute"""
    dream_dtype: Literal["float32", "bfloat16"] = "float32"
    """precision of the dreams of the timed generations (--dream.dtype in training)"""
    fitness_seeds: int = 4
    """noise seeds of the bfloat16-vs-float32 fitness comparison (dreams of --rollout-steps steps)"""
    trained: bool = False
    """use the trained M and recorded start states instead of a random-weight M and random states"""
    checkpoint_dir: str = "checkpoints"
    """--trained: reads memory_model.pth (and vision_model.pth for the latent cache)"""
    data_dir: str = "data"
    """--trained: recorded data for the dream start states"""
    cma_diagonal: bool = False
    """time the generations with separable CMA-ES (--cmaes.diagonal in training)"""
    threads: int = 0
    """torch CPU threads (0 = torch's default)"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda[:N]"""
    seed: int = 0
    """seeds M's random weights, the population and the dreams"""
    paths_only: bool = False
    """only the dream steps/s of the paths (skip the bfloat16 fitness comparison and the timed generations)"""


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two vectors (no ties expected)."""
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def measure(args: Args) -> dict:
    """Run the benchmark, printing as it goes; returns ``{"dream_steps_per_s": {path: dream steps/s}, "rows":
    dreams per step, "steps": steps timed}`` and, unless --paths-only, ``"generations_per_minute"``."""
    for flag, value in (("--population", args.population), ("--dream-trials", args.dream_trials),
                        ("--steps", args.steps), ("--rollout-steps", args.rollout_steps),
                        ("--generations", args.generations), ("--fitness-seeds", args.fitness_seeds)):
        if value < 1:
            raise UsageError(f"{flag} {value}: expected a positive integer")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    if args.trained:
        paths = checkpoint_paths(Path(args.checkpoint_dir))
        memory = load_checkpoint(paths["memory"], "memory")
        mdnrnn = build_model(MDNRNN, memory, paths["memory"]).to(device).eval()
        reward_scale = 1.0 / float(memory.get("reward", {}).get("scale", 1.0))
        mu, _ = load_or_build_latents(args.data_dir, paths["vision"], device, progress=False)
        sequences = load_memory_sequences(args.data_dir)
        pool = collect_start_states(mdnrnn, mu, sequences.indices, sequences.actions, 1024,
                                    np.random.default_rng(args.seed), device=device).to(device)
        label = f"trained M ({paths['memory']}), recorded start states"
    else:
        mdnrnn = MDNRNN(args.latent_size, 3, args.hidden_size, 5).to(device).eval()
        with torch.no_grad():
            mdnrnn.done_head.bias.fill_(-10.0)  # random weights: keep every dream running the full length
        reward_scale = 1.0
        pool = StartStates(torch.randn(1024, args.latent_size), torch.rand(1024, args.hidden_size) * 2 - 1,
                           torch.randn(1024, args.hidden_size)).to(device)
        label = "random-weight M, random start states"
    sizes = (mdnrnn.latent_size, mdnrnn.hidden_size, mdnrnn.action_size)
    num_params = num_controller_params(*sizes)
    flat = torch.randn(args.population, num_params, generator=torch.Generator().manual_seed(args.seed)) * 0.1
    weights, biases = flat_to_population(flat.to(device), *sizes)
    start_z, start_state = pool.pick(args.dream_trials, torch.Generator().manual_seed(args.seed))
    rows = args.population * args.dream_trials
    print(f"device {device}, torch threads {torch.get_num_threads()}; {label}; M hidden {mdnrnn.hidden_size}, "
          f"latent {mdnrnn.latent_size}; population {args.population} × {args.dream_trials} trials = {rows} "
          f"dreams, {args.steps} steps each")

    def run(path, steps=args.steps, seed=args.seed + 1, **kwargs):
        return path(mdnrnn, weights, biases, start_z, start_state, steps, 1.0, torch.Generator().manual_seed(seed),
                    reward_scale=reward_scale, **kwargs)

    for dtype in ("float32", "bfloat16"):  # once per M in a training run (then cached): shown, not in the timings
        (_, seconds) = timed(lambda: FusedDreamWeights(mdnrnn, dtype), device)
        print(f"fused {dtype} weights built in {1e3 * seconds:.1f} ms (once per M)")
        run(dream_rollout, dtype=dtype)  # warm-up (allocations, CUDA kernels, the fused-weight cache)
    run(dream_rollout, fused=False)
    paths = (("batched float32", dream_rollout, {}),
             ("batched bfloat16", dream_rollout, {"dtype": "bfloat16"}),
             ("batched M.step", dream_rollout, {"fused": False}),
             ("per-candidate loop", dream_rollout_per_candidate, {}),
             ("per-rollout loop", dream_rollout_per_candidate, {"batch_trials": False}))
    results = {}
    for name, path, kwargs in paths:
        fitness, seconds = timed(lambda: run(path, **kwargs), device)
        results[name] = (fitness, rows * args.steps / seconds)
        print(f"{name:>20}: {results[name][1]:10.0f} dream steps/s  ({seconds:.2f}s)")
    for name in ("batched M.step", "per-candidate loop", "per-rollout loop"):
        if not torch.allclose(results[name][0], results["batched float32"][0], rtol=1e-3, atol=1e-3):
            raise SystemExit(f"fitness of the {name} differs from the batched float32 path")
    print("float32 paths agree (allclose 1e-3)")
    for fast in ("batched float32", "batched bfloat16", "batched M.step"):
        print(f"{fast:>20} / per-candidate loop: {results[fast][1] / results['per-candidate loop'][1]:5.1f}×,"
              f"  / per-rollout loop: {results[fast][1] / results['per-rollout loop'][1]:5.1f}×")
    measured = {"dream_steps_per_s": {name: rate for name, (_, rate) in results.items()}, "rows": rows,
                "steps": args.steps}
    if args.paths_only:
        return measured

    # bfloat16 vs float32 fitness: same start states and noise; the float32 difference between noise seeds
    # (what CMA-ES sees from one generation to the next anyway) is the yardstick.
    candidate_means = {}
    for dtype in ("float32", "bfloat16"):
        candidate_means[dtype] = torch.stack([run(dream_rollout, steps=args.rollout_steps, seed=1000 + k, dtype=dtype)
                                              .mean(1).double().cpu() for k in range(args.fitness_seeds)])
    f32, bf16 = candidate_means["float32"], candidate_means["bfloat16"]  # (seeds, P)
    seed_spread = (f32[1:] - f32[:-1]).abs().mean().item() if args.fitness_seeds > 1 else float("nan")
    print(f"fitness over {args.fitness_seeds} noise seeds × {args.rollout_steps} steps: mean float32 "
          f"{f32.mean():.4f}, bfloat16 {bf16.mean():.4f} (difference {bf16.mean() - f32.mean():+.4f}); per-candidate "
          f"mean |bf16 − f32| {(bf16 - f32).abs().mean():.4f} vs float32 seed-to-seed {seed_spread:.4f}; "
          f"candidates' rank correlation (one seed) bf16~f32 {rank_correlation(bf16[0], f32[0]):.3f}"
          + (f", f32~f32 of another seed {rank_correlation(f32[0], f32[1]):.3f}" if args.fitness_seeds > 1 else ""))

    # Full generations with the default settings (what train_controller_cmaes.py does per generation).
    train_config = config.preset("default", cmaes__population=args.population, cmaes__diagonal=args.cma_diagonal,
                                 run__seed=args.seed)
    es = make_es(np.zeros(num_params), train_config)
    times = {"ask/tell": 0.0, "dream": 0.0, "checkpoint": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for generation in range(args.generations):
            t0 = time.perf_counter()
            candidates = [np.asarray(x) for x in es.ask()]
            t1 = time.perf_counter()
            generator = generation_generator(args.seed, generation)
            z, state = pool.pick(args.dream_trials, generator)
            population = torch.as_tensor(np.stack(candidates + [es.mean]), dtype=torch.float32, device=device)
            w, b = flat_to_population(population, *sizes)
            fitness, _ = timed(lambda: dream_rollout(mdnrnn, w, b, z, state, args.rollout_steps, 1.0, generator,
                                                     reward_scale=reward_scale, dtype=args.dream_dtype)
                               .mean(1).double().cpu().numpy(), device)
            t2 = time.perf_counter()
            es.tell(candidates, (-fitness[:-1]).tolist())
            t3 = time.perf_counter()
            save_resume_state({"es_state": es.pickle_dumps()}, Path(tmp) / "c.resume.pkl")  # what a run saves per generation
            t4 = time.perf_counter()
            times["ask/tell"] += (t1 - t0) + (t3 - t2)
            times["dream"] += t2 - t1
            times["checkpoint"] += t4 - t3
        total = time.perf_counter() - started
    per_gen = {name: value / args.generations for name, value in times.items()}
    print(f"generation (population {args.population}, {args.dream_trials} trials, {args.rollout_steps} steps, "
          f"{num_params} parameters, {'diagonal' if args.cma_diagonal else 'full'} CMA, {args.dream_dtype} dreams): "
          + ", ".join(f"{name} {value:.2f}s" for name, value in per_gen.items()))
    print(f"generations/minute: {60 * args.generations / total:.1f}")
    return {**measured, "generations_per_minute": 60 * args.generations / total}


def main(args: Args) -> None:
    measure(args)


if __name__ == "__main__":
    run_main(main, Args)
