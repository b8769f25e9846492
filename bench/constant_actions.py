"""What holding one action is worth, in M's dream and on the road: does the dream know that a car driving straight
on misses the next bend?

Stage 4's dreams start from recorded states (the car moving, mostly on the road) and last ``dream.steps``. The
first thing CMA-ES tries from a zero start is a C that barely steers. For each action of a small set (hard brake,
the zero C's half gas and half brake, coasting, full gas straight on, full lock with full gas) this prints what it
pays over the first and the second half of ``--steps`` steps:

- **real**: the autopilot (noise ``--noise``) drives ``--switch-steps`` steps on ``--episodes`` tracks (seeds
  ``--tracks-base`` + j, never recorded), then holds the action;
- **each run's M**: ``--trials`` dreams from recorded states of the autopilot's episodes (``--start-drivers``: like
  the real rows, not the random driver's standing starts) at its run's temperature, holding the same action (no
  value bootstrap, no dropout), one row per distinct M among the ``--runs``.

A dream that pays the second half of driving straight on like the first has never seen the car leave the road.

    python bench/constant_actions.py --runs runs/lineage/default-s3000/checkpoints/dream_loop/iter_00 \\
        runs/lineage/default-s3000/checkpoints/dream_loop/iter_02/warm
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass

import numpy as np

from bench.check_actions import controller_files, run_settings
from bench.tables import markdown_table
from car_racing.common.cli import UsageError, run_main

ACTIONS = {"brake 1": (0.0, 0.0, 1.0), "zero C": (0.0, 0.5, 0.5), "coast": (0.0, 0.0, 0.0),
           "gas 1 straight": (0.0, 1.0, 0.0), "left lock + gas 1": (-1.0, 1.0, 0.0)}


@dataclass
class Args:
    """Pay of constant actions over the two halves of a short drive, in each run's dream and on the road."""

    runs: tuple[str, ...] = ()
    """controller checkpoints or folders holding CMA-ES runs (as bench/check_actions.py finds them): each distinct
    M among them dreams, with its run's start pool and temperature (none: the real rows alone)"""
    checkpoint_dir: str = ""
    """also a stage-3 M before any stage 4: the V and M in this folder, dreaming from DATA_DIR's recording at the
    default dream temperature"""
    data_dir: str = "data"
    """the recording of --checkpoint-dir's M"""
    steps: int = 100
    """steps each action is held; the table splits them into two halves"""
    trials: int = 256
    """dreams per action and M (the same start states and noise for every action)"""
    episodes: int = 6
    """real tracks per switch point"""
    switch_steps: tuple[int, ...] = (100, 200, 300)
    """the autopilot drives this many steps before the action is held (one set of episodes per value)"""
    noise: float = 1.0
    """the autopilot's noise level before the switch (the recording's)"""
    tracks_base: int = 5_100_000
    """first real track's seed"""
    start_drivers: tuple[str, ...] = ("autopilot",)
    """the recorded episodes whose states the dreams start from (the recording's driver names)"""
    seed: int = 123
    """seed of the dreams' start states and noise"""
    workers: int = 1
    """worker processes for the real episodes"""
    device: str = "cpu"
    """where the dreams run (auto, cpu, cuda)"""


class HoldAfter:
    """The autopilot for ``switch`` steps, then ``action`` held (a headless driver; picklable)."""

    def __init__(self, switch: int, action: tuple[float, float, float], noise: float):
        from car_racing.world.autopilot import AutopilotDriver

        self.autopilot, self.switch = AutopilotDriver(noise=noise), switch
        self.action = np.asarray(action, dtype=np.float32)

    def reset(self, env, seed: int) -> None:
        self.autopilot.reset(env, seed)

    def act(self, observation, env=None, step: int = 0, episode_reward: float = 0.0) -> np.ndarray:
        return self.autopilot.act(observation, env, step, episode_reward) if step < self.switch else self.action


def real_halves(args: Args) -> dict[str, tuple[float, float]]:
    """Each action's mean real pay over the first and second half of its hold."""
    import functools

    from car_racing.episodes.rollout import run_episodes

    half = args.steps // 2
    seeds = [args.tracks_base + j for j in range(args.episodes)]
    out = {}
    for name, action in ACTIONS.items():
        first, second = [], []
        for switch in args.switch_steps:
            make = functools.partial(HoldAfter, switch, action, args.noise)
            for result in run_episodes(make, seeds, switch + args.steps, workers=args.workers):
                first.append(float(result.rewards[switch:switch + half].sum()))
                second.append(float(result.rewards[switch + half:].sum()))
        out[name] = (float(np.mean(first)), float(np.mean(second)))
    return out


def run_config(file: Path | None, args: Args):
    """The settings of the CMA-ES run in ``file`` (its M, recording and dream), or with ``None`` the defaults on
    --checkpoint-dir and --data-dir; dreams start from --start-drivers' recorded states."""
    from car_racing.common import config as cfg

    # no value bootstrap: the halves are M's rewards alone (and a stage-3 M may have no value head)
    values = dict(run__progress=False, run__device=args.device, dream__start="recorded",
                  dream__start_drivers=args.start_drivers, dream__value=False)
    if file is None:
        return cfg.replace(cfg.Config(), run__checkpoint_dir=args.checkpoint_dir, run__data_dir=args.data_dir,
                           **values)
    return run_settings(file, **values)


def dream_halves(config, args: Args) -> dict[str, tuple[float, float]]:
    """Each action's mean pay over the two halves in the dream of ``config``'s M."""
    import torch

    from car_racing.training.dream import DreamNoise, imagine
    from car_racing.training.setup import load_setup

    setup = load_setup(config)
    setup.load_start_pool()
    generator = torch.Generator().manual_seed(args.seed)
    start_z, start_state = setup.pool.pick(args.trials, generator)
    noise = DreamNoise.draw(args.steps, args.trials, start_z.shape[1], generator)
    half, out = args.steps // 2, {}
    for name, action in ACTIONS.items():
        held = torch.tensor([action] * args.steps, dtype=torch.float32)
        trace = imagine(setup.mdnrnn, held, start_z, start_state, args.steps, config.dream.temperature, noise,
                        reward_scale=1.0 / setup.reward_scale)
        rewards = trace.rewards[0].float().cpu()
        out[name] = (float(rewards[:, :half].sum(1).mean()), float(rewards[:, half:].sum(1).mean()))
    return out


def main(args: Args) -> dict:
    from car_racing.common.runtime import checkpoint_paths

    if args.steps < 2 or args.trials < 1 or args.episodes < 1:
        raise UsageError(f"--steps {args.steps} --trials {args.trials} --episodes {args.episodes}: expected at "
                         "least 2 steps, 1 dream and 1 episode")
    if not args.switch_steps or min(args.switch_steps) < 0:
        raise UsageError(f"--switch-steps {args.switch_steps}: expected one or more step counts ≥ 0")
    files = [file for run in args.runs for file in controller_files(run)] + ([None] if args.checkpoint_dir else [])
    rows, seen, result = [], set(), {"dream": {}}
    for file in files:
        config = run_config(file, args)
        memory = str(checkpoint_paths(config.run.checkpoint_dir)["memory"])
        if memory in seen:  # the runs of one loop iteration share its M: dream in it once
            continue
        seen.add(memory)
        halves = dream_halves(config, args)
        result["dream"][memory] = halves
        rows.append([f"M {memory}"] + [f"{a:.1f} / {b:.1f}" for a, b in halves.values()])
    result["real"] = real_halves(args)
    rows.insert(0, [f"real (autopilot {', '.join(map(str, args.switch_steps))} steps, {args.episodes} tracks each)"]
                + [f"{a:.1f} / {b:.1f}" for a, b in result["real"].values()])
    half = args.steps // 2
    print(markdown_table(["pay over steps 1–%d / %d–%d" % (half, half + 1, args.steps), *ACTIONS], rows))
    return result


if __name__ == "__main__":
    run_main(main, Args)
