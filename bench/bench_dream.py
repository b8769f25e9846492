"""Benchmark the dream rollout: the batched path (population × trials as one batch per step) against
per-candidate loops, in the same run and on the same random-weight M, and CMA-ES generations/minute.

Prints dream steps/s (one dream step = one candidate-trial advancing one time step) of

- batched:        :func:`car_racing.dream.dream_rollout`, P·N rows per M step;
- per-candidate:  :func:`car_racing.dream.dream_rollout_per_candidate`, a Python loop over the P
                  candidates, each stepping its N trials as one batch;
- per-rollout:    the same loop with one rollout (batch 1) at a time, as a naive implementation does;

checks the three give the same fitness, prints the speed-up ratios, then times full generations with
the default settings (ask, the dream of P candidates + CMA's mean, tell, saving the checkpoint with the
CMA-ES state) and prints generations/minute.

    python bench/bench_dream.py
    python bench/bench_dream.py --threads 1 --device cpu
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from car_racing.cli import UsageError, run_main
from car_racing.dream import StartStates, dream_rollout, dream_rollout_per_candidate
from car_racing.models.ffn import flat_to_population, num_controller_params
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.runtime import resolve_device
from car_racing.train_controller_cmaes import Args as TrainArgs
from car_racing.train_controller_cmaes import generation_generator, make_es, save_run_checkpoint


@dataclass
class Args:
    """Dream steps/s of the batched rollout vs per-candidate loops, and CMA-ES generations/minute."""
    population: int = 32
    """CMA-ES population (the training default)"""
    dream_trials: int = 16
    """dreams per candidate (the training default)"""
    hidden_size: int = 512
    """M's LSTM width"""
    latent_size: int = 32
    """size of z"""
    steps: int = 10
    """dream steps timed per path (the per-rollout loop is slow: keep this small)"""
    rollout_steps: int = 50
    """dream length of the timed generations (the training default)"""
    generations: int = 3
    """full generations timed for generations/minute"""
    cma_diagonal: bool = False
    """time the generations with separable CMA-ES (--cma-diagonal in training)"""
    threads: int = 0
    """torch CPU threads (0 = torch's default)"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda[:N]"""
    seed: int = 0
    """seeds M's random weights, the population and the dreams"""


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def main(args: Args) -> None:
    for flag, value in (("--population", args.population), ("--dream-trials", args.dream_trials),
                        ("--steps", args.steps), ("--rollout-steps", args.rollout_steps),
                        ("--generations", args.generations)):
        if value < 1:
            raise UsageError(f"{flag} {value}: expected a positive integer")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    mdnrnn = MDNRNN(args.latent_size, 3, args.hidden_size, 5).to(device).eval()
    with torch.no_grad():
        mdnrnn.done_head.bias.fill_(-10.0)  # random weights: keep every dream running the full length
    sizes = (args.latent_size, args.hidden_size, 3)
    num_params = num_controller_params(*sizes)
    pool = StartStates(torch.randn(1024, args.latent_size), torch.rand(1024, args.hidden_size) * 2 - 1,
                       torch.randn(1024, args.hidden_size)).to(device)
    flat = torch.randn(args.population, num_params, generator=torch.Generator().manual_seed(args.seed)) * 0.1
    weights, biases = flat_to_population(flat.to(device), *sizes)
    start_z, start_state = pool.pick(args.dream_trials, torch.Generator().manual_seed(args.seed))
    rows = args.population * args.dream_trials
    print(f"device {device}, torch threads {torch.get_num_threads()}; M hidden {args.hidden_size}, latent "
          f"{args.latent_size}; population {args.population} × {args.dream_trials} trials = {rows} dreams, "
          f"{args.steps} steps each")

    def run(path, **kwargs):
        return path(mdnrnn, weights, biases, start_z, start_state, args.steps, 1.0,
                    torch.Generator().manual_seed(args.seed + 1), **kwargs)

    run(dream_rollout)  # warm-up (allocations, CUDA kernels)
    results = {}
    for name, path, kwargs in (("batched", dream_rollout, {}),
                               ("per-candidate loop", dream_rollout_per_candidate, {}),
                               ("per-rollout loop", dream_rollout_per_candidate, {"batch_trials": False})):
        fitness, seconds = timed(lambda: run(path, **kwargs), device)
        results[name] = (fitness, rows * args.steps / seconds)
        print(f"{name:>20}: {results[name][1]:10.0f} dream steps/s  ({seconds:.2f}s)")
    for name in ("per-candidate loop", "per-rollout loop"):
        if not torch.allclose(results[name][0], results["batched"][0], rtol=1e-3, atol=1e-3):
            raise SystemExit(f"fitness of the {name} differs from the batched path")
        print(f"batched / {name}: {results['batched'][1] / results[name][1]:.1f}×")

    # Full generations with the default settings (what train_controller_cmaes.py does per generation).
    train_args = TrainArgs(population=args.population, cma_diagonal=args.cma_diagonal, seed=args.seed)
    es = make_es(np.zeros(num_params), train_args)
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
            fitness, _ = timed(lambda: dream_rollout(mdnrnn, w, b, z, state, args.rollout_steps, 1.0, generator)
                               .mean(1).double().cpu().numpy(), device)
            t2 = time.perf_counter()
            es.tell(candidates, (-fitness[:-1]).tolist())
            t3 = time.perf_counter()
            save_run_checkpoint({"kind": "controller", "es_state": es.pickle_dumps()}, Path(tmp) / "c.pth")
            t4 = time.perf_counter()
            times["ask/tell"] += (t1 - t0) + (t3 - t2)
            times["dream"] += t2 - t1
            times["checkpoint"] += t4 - t3
        total = time.perf_counter() - started
    per_gen = {name: value / args.generations for name, value in times.items()}
    print(f"generation (population {args.population}, {args.dream_trials} trials, {args.rollout_steps} steps, "
          f"{num_params} parameters, {'diagonal' if args.cma_diagonal else 'full'} CMA): "
          + ", ".join(f"{name} {value:.2f}s" for name, value in per_gen.items()))
    print(f"generations/minute: {60 * args.generations / total:.1f}")


if __name__ == "__main__":
    run_main(main, Args)
