"""Benchmark the scripted autopilot: reward over full CarRacing-v3 episodes (the env's 1000-step limit).

Prints one line per episode (seed, reward, steps, lap finished, off-road fraction, noise levels) and a
final summary: mean ± std, min, laps finished, off-road fraction. The README's figure comes from

    python bench/bench_autopilot.py --episodes 20 --seed 0 --noise 0 --workers 2
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import functools
import time
from dataclasses import dataclass

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.episodes.rollout import run_episodes
from car_racing.world.autopilot import AutopilotDriver
from car_racing.world.envs import MAX_EPISODE_STEPS


@dataclass
class Args:
    """Benchmark the scripted autopilot over full episodes."""

    episodes: int = 20
    """number of episodes (seeds seed, seed+1, ...)"""
    seed: int = 0
    """first episode seed"""
    noise: float = 0.0
    """maximum noise level (0 = clean autopilot); per-episode levels are drawn from it"""
    workers: int = 2
    """parallel worker processes"""
    max_steps: int = MAX_EPISODE_STEPS
    """step limit per episode (the env's own limit is 1000)"""


class OffRoadCounter:
    """Wraps a driver and counts the steps where any wheel is off the road (on grass)."""

    def __init__(self, driver: AutopilotDriver) -> None:
        self.driver = driver
        self.episode_info: dict = {}
        self._off = 0
        self._steps = 0

    def reset(self, env, seed: int) -> None:
        self.driver.reset(env, seed)
        self._off = self._steps = 0
        self._update()

    def act(self, observation, env, step, episode_reward):
        self._steps += 1
        self._off += any(len(w.tiles) == 0 for w in env.unwrapped.car.wheels)
        self._update()
        return self.driver.act(observation, env, step, episode_reward)

    def _update(self) -> None:
        self.episode_info = dict(self.driver.episode_info, off_road_steps=self._off, steps=self._steps)


def make_counting_driver(noise: float) -> OffRoadCounter:
    return OffRoadCounter(AutopilotDriver(noise=noise))


def main(args: Args) -> None:
    if args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.noise < 0:
        raise UsageError(f"--noise must be >= 0, got {args.noise}")
    seeds = list(range(args.seed, args.seed + args.episodes))
    start = time.perf_counter()
    rewards, laps, off_steps, total_steps = [], 0, 0, 0
    for result in run_episodes(functools.partial(make_counting_driver, args.noise), seeds, args.max_steps,
                               workers=args.workers, ordered=True):
        info = result.info
        off = info.get("off_road_steps", 0)
        rewards.append(result.total_reward)
        laps += result.lap_finished
        off_steps += off
        total_steps += result.steps
        print(f"seed {result.seed:4d}  reward {result.total_reward:7.1f}  steps {result.steps:4d}  "
              f"lap_finished {result.lap_finished!s:5}  off_road {off / max(result.steps, 1):5.1%}  "
              f"steer_sigma {info.get('steer_sigma', 0.0):.3f}  burst_prob {info.get('burst_prob', 0.0):.4f}",
              flush=True)
    elapsed = time.perf_counter() - start
    values = np.asarray(rewards)
    print(f"autopilot noise {args.noise:g}, seeds {seeds[0]}-{seeds[-1]}: mean {values.mean():.1f} ± "
          f"{values.std():.1f}, min {values.min():.1f}, laps finished {laps}/{len(values)}, off-road "
          f"{off_steps / max(total_steps, 1):.1%} of steps ({total_steps / elapsed:.0f} steps/s, "
          f"{elapsed:.0f} s)")


if __name__ == "__main__":
    run_main(main, Args)
