"""Benchmark CarRacing-v3 steps/s: the stock renderer vs car_racing.world.fast_render, in one run.

Four measurements with the same scripted driver and seeds: stock and fast in this process, then stock
and fast with ``--workers`` worker processes stepping at the same time (each worker builds its env and
warms it up first; the clock runs from a shared start barrier to the last worker's end, so process
start-up is not counted). Prints steps/s and the fast/stock ratio for both (for one process also the
ratio of CPU time per step, which a machine loaded by other work distorts less). Also checks that the
observations of the single-process runs are identical. The README's figure comes from

    python bench/bench_env.py
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hashlib
import math
import multiprocessing as mp
import time
from dataclasses import dataclass

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.episodes.rollout import default_workers, run_episode
from car_racing.world.envs import make_env
from car_racing.world.fast_render import is_fast_render_installed


@dataclass
class Args:
    """Stock vs fast CarRacing-v3 rendering: steps/s in one process and in parallel worker processes."""

    episodes: int = 2
    """episodes per measurement (per worker in the multi-process runs), seeds seed, seed+1, ..."""
    max_steps: int = 500
    """steps per episode"""
    workers: int = default_workers()
    """worker processes for the parallel measurement (default: the number of CPU cores; 1 skips it)"""
    seed: int = 0
    """first episode seed"""


class CentreLineDriver:
    """A cheap scripted driver: steers at a centre-line waypoint ahead and holds a moderate speed."""

    def __init__(self, speed: float = 45.0) -> None:
        self.speed = speed
        self.track_xy = np.zeros((1, 2))

    def reset(self, env, seed: int) -> None:
        self.track_xy = np.array([(t[2], t[3]) for t in env.unwrapped.track])

    def act(self, observation, env, step: int, episode_reward: float) -> np.ndarray:
        hull = env.unwrapped.car.hull
        speed = math.hypot(*hull.linearVelocity)
        x, y = hull.position
        nearest = int(np.argmin(((self.track_xy - (x, y)) ** 2).sum(axis=1)))
        ahead = self.track_xy[(nearest + 3 + int(speed / 15)) % len(self.track_xy)]
        lx, ly = hull.GetLocalPoint((float(ahead[0]), float(ahead[1])))
        steer = float(np.clip(2.5 * math.atan2(lx, ly), -1.0, 1.0))
        target = self.speed * (1.0 - 0.6 * abs(steer))
        return np.array([steer, 0.3 if speed < target else 0.0, 0.5 if speed > target + 15 else 0.0],
                        dtype=np.float32)


def _warm_env(fast: bool):
    env = make_env(fast=fast)
    if fast and not is_fast_render_installed(env):
        raise UsageError("the fast renderer is not available here (see the warning above); nothing to compare")
    env.reset(seed=10_000)
    for _ in range(5):
        env.step(np.array([0.0, 0.2, 0.0], dtype=np.float32))
    return env


def _drive(env, seeds: list[int], max_steps: int, digest: bool = False) -> tuple[int, float, float, str]:
    """(steps, wall seconds, CPU seconds, sha1 of all observations if digest) for one episode per seed."""
    driver = CentreLineDriver()
    sha = hashlib.sha1()
    steps = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    for seed in seeds:
        result = run_episode(env, driver, seed, max_steps, capture_raw=digest)
        steps += result.steps
        if digest:
            sha.update(result.raw_frames.tobytes())
    return steps, time.perf_counter() - start, time.process_time() - start_cpu, sha.hexdigest()


def _worker(fast: bool, seeds: list[int], max_steps: int, barrier, queue) -> None:
    env = _warm_env(fast)
    barrier.wait()
    start = time.monotonic()  # system-wide clock: comparable across processes
    steps, _, _, _ = _drive(env, seeds, max_steps)
    queue.put((steps, start, time.monotonic()))
    env.close()


def _parallel(fast: bool, workers: int, seeds: list[int], max_steps: int) -> float:
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(workers), context.Queue()
    procs = [context.Process(target=_worker, args=(fast, seeds, max_steps, barrier, queue)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    steps = sum(r[0] for r in results)
    return steps / (max(r[2] for r in results) - min(r[1] for r in results))


def measure(args: Args) -> dict:
    """Run the measurements, printing each as it ends; returns steps/s ``{"stock", "fast"}`` (1 process),
    ``{"stock_cpu", "fast_cpu"}`` (steps per CPU second), ``"identical"`` (bool) and, with ``--workers``
    above 1, ``{"parallel_stock", "parallel_fast"}`` (steps/s of all workers together)."""
    if args.episodes < 1 or args.max_steps < 1:
        raise UsageError("--episodes and --max-steps must be at least 1")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    seeds = list(range(args.seed, args.seed + args.episodes))
    rates, cpu_rates, digests = {}, {}, {}
    for fast in (False, True):
        env = _warm_env(fast)
        steps, seconds, cpu_seconds, digests[fast] = _drive(env, seeds, args.max_steps, digest=True)
        env.close()
        rates[fast], cpu_rates[fast] = steps / seconds, steps / cpu_seconds
        print(f"1 process,  {'fast ' if fast else 'stock'}: {rates[fast]:7.1f} steps/s "
              f"({steps} steps; {1e3 / cpu_rates[fast]:.2f} ms CPU per step)", flush=True)
    identical = digests[False] == digests[True]
    print(f"1 process:  fast/stock = {rates[True] / rates[False]:.2f}x wall clock, "
          f"{cpu_rates[True] / cpu_rates[False]:.2f}x CPU time "
          f"(observations identical: {'yes' if identical else 'NO'})", flush=True)
    result = {"stock": rates[False], "fast": rates[True], "stock_cpu": cpu_rates[False], "fast_cpu": cpu_rates[True],
              "identical": identical}
    if args.workers > 1:
        parallel = {}
        for fast in (False, True):
            parallel[fast] = _parallel(fast, args.workers, seeds, args.max_steps)
            print(f"{args.workers} workers, {'fast ' if fast else 'stock'}: {parallel[fast]:7.1f} steps/s in total",
                  flush=True)
        print(f"{args.workers} workers:  fast/stock = {parallel[True] / parallel[False]:.2f}x", flush=True)
        result.update(parallel_stock=parallel[False], parallel_fast=parallel[True])
    return result


def main(args: Args) -> None:
    if not measure(args)["identical"]:
        raise SystemExit("fast and stock observations differ")


if __name__ == "__main__":
    run_main(main, Args)
