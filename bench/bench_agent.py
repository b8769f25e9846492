"""Benchmark the agent's cost in the real-env loop: steps/s of ``rollout.run_episode`` driven by the
World Models agent (V + M + C, paper sizes, untrained weights: speed does not depend on them) against a
trivial constant-action driver, in one process with 1 torch thread (as in a rollout worker).

    python bench/bench_agent.py --episodes 2 --max-steps 500
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import time
from dataclasses import dataclass

import numpy as np
import torch

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import seed_everything
from car_racing.episodes.agent import Agent
from car_racing.episodes.rollout import run_episode
from car_racing.models.ffn import Controller
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.models.vae import VAE
from car_racing.world.envs import make_env


@dataclass
class Args:
    """Real-env steps/s with the agent vs a trivial driver, measured in the same run."""

    episodes: int = 2
    """episodes per driver (seeds seed, seed+1, ...)"""
    seed: int = 10000
    """first episode seed"""
    max_steps: int = 500
    """steps per episode"""
    hidden_size: int = 512
    """M's LSTM width (the project default)"""


class ConstantDriver:
    """Half gas, no steering: the cheapest possible driver."""

    def reset(self, env, seed: int) -> None:
        pass

    def act(self, observation, env, step, episode_reward) -> np.ndarray:
        return np.array([0.0, 0.5, 0.0], dtype=np.float32)


def main(args: Args) -> None:
    if args.episodes < 1 or args.max_steps < 1:
        raise UsageError("--episodes and --max-steps must be at least 1")
    seed_everything(args.seed)
    torch.set_num_threads(1)
    drivers = {"trivial driver": ConstantDriver(),
               "agent (V+M+C)": Agent(VAE(), MDNRNN(hidden_size=args.hidden_size),
                                      Controller(hidden_size=args.hidden_size))}
    env = make_env()
    steps = dict.fromkeys(drivers, 0)
    seconds = dict.fromkeys(drivers, 0.0)
    try:
        for driver in drivers.values():
            run_episode(env, driver, args.seed, 5)  # warm-up (first track, lazy initialisation)
        # Episodes alternate between the drivers (same seeds) so load changes on the machine hit both alike.
        for i in range(args.episodes):
            for name, driver in drivers.items():
                start = time.perf_counter()
                steps[name] += run_episode(env, driver, args.seed + i, args.max_steps).steps
                seconds[name] += time.perf_counter() - start
    finally:
        env.close()
    rate = {name: steps[name] / seconds[name] for name in drivers}
    for name in drivers:
        print(f"{name + ':':16s} {rate[name]:.0f} steps/s ({steps[name]} steps)")
    trivial, agent = rate.values()
    added_ms = 1e3 * (1 / agent - 1 / trivial)
    print(f"agent / trivial: {agent / trivial:.2f}x  (the agent adds {added_ms:.2f} ms per step)")


if __name__ == "__main__":
    run_main(main, Args)
