"""Measure the dream: does M's dream rank controllers the way the real env does?

A panel of ``--panel`` controllers of widely varied quality — the zero C, bias-only drivers (straight
at several throttles, circling), random linear Cs, the C in ``--checkpoint-dir`` (and any ``--controllers``
checkpoints, e.g. earlier CMA-ES runs) and copies of those perturbed at growing scales — each

- drives the same ``--episodes`` real tracks (seeds ``--eval-seed-base`` …, away from every training,
  check and recording seed) → its real return;
- drives the same dreams, with *the very fitness training uses* (:func:`car_racing.training.dream.dream_rollout`:
  start states from the recorded data, ``--rollout-steps``, ``--dream-trials``, τ, dream dropout, M's value ending
  the dreams still alive (``--dream-value``); by default the settings saved in the controller checkpoint, else the
  defaults of the config's ``dream`` section) → its dream fitness.

It prints each controller's real return and dream fitness, M's errors on the panel's real episodes, writes a
scatter PNG (dream fitness against real return) and ends with

    dream-real rank correlation: R over N controllers

With ``--record-into DATA_DIR`` the panel's real episodes are also appended to that recording (driver ``panel``).
The measurement itself is :func:`car_racing.training.fidelity.measure_fidelity` (its docstring has the details);
this script only turns the flags into its arguments.

    python car_racing/evaluate_world_model.py --panel 12 --episodes 4
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import agent_dir
from car_racing.episodes.rollout import Backend, default_workers, uses_backend

# --rollout-steps … --dream-value → the config's Dream fields they set
DREAM_FLAGS = {"rollout_steps": "steps", "dream_trials": "trials", "temperature": "temperature",
               "dream_dropout": "dropout", "start_states": "start_states", "dream_start": "start",
               "dream_value": "value"}


@dataclass
class Args:
    """Rank a panel of controllers in the real env and in M's dream; print the rank correlation and M's errors."""

    checkpoint_dir: Optional[str] = None
    """V and M to measure (vision_model.pth, memory_model.pth); its control_model_cmaes.pth, if any, joins the
    panel with perturbed copies and gives the dream settings (default: checkpoints/ once you have trained V and M and C there, else the shipped agent in checkpoints/pretrained/default)"""
    data_dir: str = "data"
    """recorded data: the dream start states, as in training"""
    panel: int = 12
    """number of controllers in the panel (at least 3)"""
    episodes: int = 4
    """real tracks per controller (the same tracks for every controller)"""
    controllers: list[str] = field(default_factory=list)
    """more controller checkpoints for the panel (e.g. earlier runs)"""
    out: str = "checkpoints/world_model_fidelity.png"
    """scatter PNG of dream fitness against real return"""
    json_out: Optional[str] = None
    """also write every figure to this JSON file"""
    rollout_steps: Optional[int] = None
    """dream length (default: the controller checkpoint's training setting, else the config's dream.steps)"""
    dream_trials: Optional[int] = None
    """dreams per controller (default: as in training, at least 32)"""
    temperature: Optional[float] = None
    """τ of the dreams (default: as in training)"""
    dream_dropout: Optional[float] = None
    """dropout p of the dreams (default: as in training)"""
    start_states: Optional[int] = None
    """size of the start-state pool (default: as in training)"""
    dream_start: Optional[Literal["recorded", "episode-start"]] = None
    """recorded or episode-start (default: as in training; the config's dream.start)"""
    dream_value: Optional[bool] = None
    """end the dreams still alive on M's value of their last state (default: as in training, when M has a value head)"""
    horizon: int = 20
    """steps of the open-loop multi-step prediction"""
    max_steps: int = 1000
    """step limit of each real episode"""
    eval_seed_base: int = 4_000_000
    """real tracks use seeds BASE … BASE+episodes−1 (away from recording, training and check seeds)"""
    seed: int = 0
    """seeds the panel's random and perturbed controllers and the dreams' start states and noise"""
    workers: int = field(default_factory=default_workers)
    """workers for the real episodes: processes, or Ray actors with --backend ray"""
    backend: Literal["processes", "ray"] = "processes"
    """where the real episodes run: processes on this machine, or ray (actors on a local Ray or a cluster; same
    results; see docs/scaling-with-ray.md)"""
    ray_address: str = ""
    """--backend ray: auto or HOST:PORT = join a running cluster; empty = the cluster in RAY_ADDRESS when that is set,
    else a private local Ray with --workers CPUs for this run (never a cluster an earlier `ray start` left behind)"""
    device: str = "auto"
    """device of the dreams and of M's error measurement (real episodes run on the CPU)"""
    progress: bool = True
    """show tqdm progress bars"""
    record_into: str = ""
    """also append the panel's real episodes to this recorded data folder (driver ``panel``: data for M); empty =
    drive them only to measure"""
    record_run: int = 0
    """--record-into: the episodes' ``panel_run`` (the dream loop's iteration); trials of this run already in the
    data are not appended again"""


def check_args(args: Args) -> None:
    if args.panel < 3:
        raise UsageError(f"--panel {args.panel}: expected at least 3 controllers (a rank correlation needs them)")
    for flag, value in (("--episodes", args.episodes), ("--horizon", args.horizon), ("--max-steps", args.max_steps),
                        ("--workers", args.workers)):
        if value < 1:
            raise UsageError(f"{flag} {value}: expected a positive integer")
    for flag in ("rollout_steps", "dream_trials", "start_states"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value}: expected a positive integer")
    if args.temperature is not None and args.temperature < 0:
        raise UsageError(f"--temperature {args.temperature}: expected τ ≥ 0")
    if args.dream_start not in (None, "recorded", "episode-start"):
        raise UsageError(f"--dream-start {args.dream_start}: expected recorded or episode-start")
    if args.dream_dropout is not None and not 0 <= args.dream_dropout < 1:
        raise UsageError(f"--dream-dropout {args.dream_dropout}: expected 0 <= p < 1")
    for path in args.controllers:
        if not Path(path).is_file():
            raise UsageError(f"--controllers {path}: no such controller checkpoint")


@uses_backend
def main(args: Args) -> dict[str, Any]:
    """Run the measurement; returns every figure (also printed, and in --json-out)."""
    from car_racing.training.fidelity import dream_of, measure_fidelity, trained_controller_checkpoint

    checkpoint_dir = agent_dir(args.checkpoint_dir, ('vision', 'memory', 'controller'))  # yours, else the shipped agent
    check_args(args)
    explicit = {field: getattr(args, flag) for flag, field in DREAM_FLAGS.items()}
    dream = dream_of(trained_controller_checkpoint(checkpoint_dir, args.controllers), explicit)
    return measure_fidelity(
        checkpoint_dir, args.data_dir, dream, panel=args.panel, episodes=args.episodes, controllers=args.controllers,
        out=args.out, json_out=args.json_out, horizon=args.horizon, max_steps=args.max_steps,
        eval_seed_base=args.eval_seed_base, seed=args.seed, workers=args.workers,
        backend=Backend(args.backend, args.ray_address or ""), device=args.device, progress=args.progress,
        record_into=args.record_into, record_run=args.record_run, require_value=bool(args.dream_value))


if __name__ == "__main__":
    run_main(main, Args)
