"""Stage 4 as a library function: :func:`train_controller` evolves C with CMA-ES as the config says.

The default config runs the repair loop (:func:`car_racing.training.loop.run`); ``loop.iterations = 1``, real-env
fitness (``cmaes.mode = real``) and the imitation warm starts (``cmaes.init`` bc or dagger) run one CMA-ES pass
(:func:`car_racing.training.cmaes_run.one_pass`): a warm start (:mod:`car_racing.training.warm_starts`), a fitness source
(:mod:`car_racing.training.fitness`) and the run itself (:mod:`car_racing.training.cmaes_run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from car_racing.common.cli import UsageError
from car_racing.common.config import Config, validate



def uses_repair_loop(config: Config) -> bool:
    """The repair loop trains C in the dream, from zero or a controller checkpoint; real-env CMA-ES and the
    imitation warm starts (bc, dagger) always run one pass."""
    return config.loop.iterations > 1 and config.cmaes.mode == "dream" and config.cmaes.init in ("zero", "checkpoint")


def no_effect(config: Config) -> Mapping[str, str]:
    """The stage-4 keys that change nothing with this config (a flag given for one of them is an error)."""
    why: dict[str, str] = {}
    if config.cmaes.mode == "real":
        why.update({f"dream.{name}": "--cmaes.mode real scores C in the real env, not in the dream"
                    for name in ("steps", "trials", "temperature", "dropout", "value", "fitness", "fitness_q",
                                 "fitness_k", "start", "start_states", "start_drivers", "dtype")})
    else:
        why.update({f"cmaes.{name}": "only --cmaes.mode real uses it" for name in ("real_trials", "real_steps",
                                                                                  "stall_steps")})
    if not uses_repair_loop(config):
        reason = ("--loop.iterations 1 runs one CMA-ES pass" if config.loop.iterations == 1 else
                  "the repair loop runs only in dream mode from --cmaes.init zero or checkpoint")
        why.update({f"loop.{name}": reason for name in ("patience", "patience_delta", "controller_start", "sigma0_warm",
                                                        "warm_dreams", "warm_generations", "memory_epochs",
                                                        "memory_heads_only", "agent_episodes", "agent_noise",
                                                        "record_dream_choice", "repair_episodes", "check_episodes",
                                                        "fidelity_panel", "fidelity_episodes", "panel_as_data",
                                                        "select_top", "select_episodes")})
    if config.cmaes.init != "dagger":
        why.update({f"cmaes.{name}": "only --cmaes.init dagger uses it"
                    for name in ("dagger_rounds", "dagger_episodes", "dagger_noise")})
    if config.cmaes.init not in ("bc", "dagger"):
        why.update({f"cmaes.{name}": "only --cmaes.init bc or dagger uses it" for name in ("bc_ridge", "bc_eps")})
    if config.cmaes.init != "checkpoint":
        why["cmaes.init_from"] = "only --cmaes.init checkpoint uses it"
        why["cmaes.init_memory"] = "only --cmaes.init checkpoint uses it"
    if config.dream.fitness != "quantile":
        why["dream.fitness_q"] = "only --dream.fitness quantile uses it"
    if config.dream.fitness != "mean-minus-std":
        why["dream.fitness_k"] = "only --dream.fitness mean-minus-std uses it"
    if config.dream.start != "recorded":
        why["dream.start_drivers"] = "only --dream.start recorded uses it"
    if config.run.backend != "ray":
        why["run.ray_address"] = "only --backend ray uses it"
    if config.checks.every == 0:
        why["checks.best_candidate"] = "--checks.every 0 checks nothing"
    return why


def check(config: Config) -> None:
    """Combinations the ranges of :mod:`car_racing.common.config` cannot see: one line each."""
    if uses_repair_loop(config) and config.checks.every == 0:
        raise UsageError("--checks.every 0: the repair loop keeps the iteration whose C checks best; it needs checks")
    if config.cmaes.init == "checkpoint" and config.cmaes.init_from and not Path(config.cmaes.init_from).is_file():
        raise UsageError(f"--cmaes.init-from {config.cmaes.init_from}: no such controller checkpoint")


def train_controller(config: Config) -> dict:
    """Stage 4: the repair loop, or one CMA-ES pass; returns C's final checkpoint dict (also in CHECKPOINT_DIR)."""
    from car_racing.common.metrics import require_tensorboard
    from car_racing.common.runtime import refuse_shipped

    validate(config)  # (a config built in Python, not through the command line or config.preset)
    check(config)
    refuse_shipped(config.run.checkpoint_dir)
    if config.run.tensorboard:
        require_tensorboard()
    if uses_repair_loop(config):
        from car_racing.training.loop import run

        return run(config)
    from car_racing.training.cmaes_run import one_pass

    return one_pass(config)
