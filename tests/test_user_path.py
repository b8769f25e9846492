"""The user's path (issue 21): the five stage scripts in order with their defaults, sizes aside, end in a
dream-trained driver; stage 4's defaults run the repair loop; ``--preset seed`` gives the seed's stage 4."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from car_racing import (
    car_racing_gameplay_simulator,
    recorded_frames,
    train_controller_cmaes,
    train_memory,
    train_vision,
)
from car_racing.common import config as cfg
from car_racing.common.cli import UsageError
from car_racing.common.runtime import checkpoint_paths, load_checkpoint
from car_racing.recording.recorded_data import load_recorded
from car_racing.training.controller import uses_repair_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The seed repo's stage 4, as it was before the repair loop became the default (dotted config keys).
SEED_STAGE4 = {"loop.iterations": 1, "cmaes.population": 32, "cmaes.sigma0": 0.1, "cmaes.generations": 200,
               "dream.steps": 50, "dream.trials": 16, "dream.dropout": 0.0, "dream.fitness": "mean",
               "dream.start": "recorded", "checks.every": 10, "checks.episodes": 4, "cmaes.mode": "dream",
               "cmaes.init": "zero", "dream.temperature": 1.0, "dream.value": False}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command_line(script, *flags: str) -> cfg.Config:
    """The config ``script``'s command line gives for ``flags`` (as the shell would run it)."""
    config, _ = cfg.parse(script.SECTIONS, list(flags), no_effect=getattr(script, "no_effect", None))
    return config


def test_stage4_preset_seed_sets_the_seed_values_and_flags_given_win():
    seed = command_line(train_controller_cmaes, "--preset", "seed")
    assert {key: cfg.get(seed, key) for key in SEED_STAGE4} == SEED_STAGE4
    assert cfg.preset("seed") == seed
    given = command_line(train_controller_cmaes, "--preset", "seed", "--cmaes.generations", "7")
    assert (given.cmaes.generations, given.dream.steps) == (7, 50)
    default = command_line(train_controller_cmaes)
    assert (default.loop.iterations, default.dream.start, default.dream.fitness, default.dream.trials) == (
        3, "recorded", "mean", 40)
    assert (default.dream.value, default.cmaes.generations, default.checks.every) == (True, 15, 5)
    # a training episode: 200-step dreams in dream mode, whole 1000-step episodes in real mode, unless given
    assert cfg.rollout_steps(default) == 200
    real = cfg.replace(default, cmaes__mode="real")
    assert cfg.rollout_steps(real) == 1000
    assert cfg.rollout_steps(cfg.replace(real, cmaes__real_steps=300)) == 300


def test_five_stages_with_their_defaults_end_in_a_dream_trained_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the repo's data/ or checkpoints/
    data, checkpoints = tmp_path / "data", tmp_path / "checkpoints"
    where = ["--data-dir", str(data), "--checkpoint-dir", str(checkpoints), "--no-progress"]
    recorded_frames.main(command_line(recorded_frames, "--record.driver", "autopilot", "--record.episodes", "2",
                                      "--record.steps", "40", "--record.random-episodes", "1", "--record.seq-len", "10",
                                      "--workers", "1", "--data-dir", str(data), "--no-progress"))
    train_vision.main(command_line(train_vision, *where, "--vision.epochs", "1", "--vision.kl-anneal-epochs", "1",
                                   "--vision.batch-size", "40", "--vision.latent-size", "8", "--threads", "1"))
    train_memory.main(command_line(train_memory, *where, "--memory.epochs", "1", "--memory.batch-size", "4",
                                   "--memory.hidden-size", "16", "--memory.num-mixtures", "2", "--threads", "1"))
    paths = checkpoint_paths(checkpoints)
    stage3 = sha256(paths["memory"])
    stage4 = command_line(train_controller_cmaes, *where, "--loop.iterations", "2", "--cmaes.population", "4",
                          "--cmaes.generations", "2", "--dream.trials", "2", "--dream.steps", "5",
                          "--dream.start-states", "16", "--checks.every", "2", "--checks.episodes", "1",
                          "--checks.max-steps", "10", "--loop.memory-epochs", "1", "--loop.agent-episodes", "2",
                          "--loop.repair-episodes", "1", "--loop.select-episodes", "2", "--workers", "1")
    final = train_controller_cmaes.main(stage4)
    # every stage wrote the config it ran beside its outputs
    assert cfg.resolved_path(data, "record").is_file()
    assert cfg.resolved_path(checkpoints, "vision").is_file() and cfg.resolved_path(checkpoints, "memory").is_file()

    # stage 4 ran the repair loop and wrote the best-checked iteration's M and C beside V
    loop = checkpoints / "dream_loop"
    assert sha256(loop / "memory_from_stage3.pth") == stage3  # stage 3's M kept as it was
    best = checkpoint_paths(loop / "best")
    assert sha256(paths["memory"]) == sha256(best["memory"])
    kept, chosen = load_checkpoint(paths["controller"], "controller"), load_checkpoint(best["controller"], "controller")
    assert all(torch.equal(kept["model_state"][k], v) for k, v in chosen["model_state"].items())
    assert kept["training"]["loop"]["best_iteration"] is not None  # plus what the loop used to choose it
    first = sha256(paths["controller"])
    assert final["training"]["dream_trained"] and final["training"]["fitness_source"] == "dream"
    # stage 3's default value head is what stage 4's default dreams end on, in every iteration
    assert load_checkpoint(paths["memory"], "memory")["value"]["discount"] == 0.98
    assert final["training"]["dream"]["value_bootstrap"] and final["training"]["dream"]["start"] == "recorded"
    assert not final["training"]["expert_labels"] and not final["training"]["real_returns_as_fitness"]
    assert (checkpoints / "control_model_cmaes.png").is_file() and (loop / "dream_loop.png").is_file()
    state = json.loads((loop / "dream_loop_state.json").read_text())  # the final choice drove both iterations' Cs
    assert len(state["selection"]["returns"]) == 2 and state["best_by"] == "mean over 2 selection tracks"
    drivers = {e["driver"] for e in load_recorded(data / "dream_loop", mmap=True).episodes}
    assert drivers == {"autopilot", "random", "agent", "repair"}  # C's episodes and the replays joined M's data
    assert {e["driver"] for e in load_recorded(data, mmap=True).episodes} == {"autopilot", "random"}  # stage 1's data untouched

    # a rerun without --resume refuses (the loop's recordings are not thrown away); --resume runs nothing again
    with pytest.raises(UsageError, match="--resume"):
        train_controller_cmaes.main(stage4)
    again = train_controller_cmaes.main(cfg.replace(stage4, run__resume=True))
    assert again["model_source"] == final["model_source"] and sha256(paths["controller"]) == first

    # stage 5 drives V, M and C of this run (a float score)
    score = car_racing_gameplay_simulator.main(car_racing_gameplay_simulator.Args(
        checkpoint_dir=str(checkpoints), episodes=1, max_steps=10, workers=1, progress=False))
    assert isinstance(score, float)
    assert load_checkpoint(paths["memory"], "memory")["vision"]["path"].endswith("vision_model.pth")


def test_repair_loop_needs_stage_2_and_3_first(tmp_path):
    with pytest.raises(UsageError, match="vision_model.pth: missing; run train_vision.py"):
        train_controller_cmaes.main(cfg.replace(cfg.Config(), run__checkpoint_dir=str(tmp_path), run__workers=1,
                                                run__data_dir=str(tmp_path)))
    default = cfg.Config()
    assert uses_repair_loop(default) and uses_repair_loop(cfg.replace(default, cmaes__init="checkpoint"))
    assert not any(uses_repair_loop(cfg.replace(default, **values)) for values in (
        {"cmaes__mode": "real"}, {"cmaes__init": "bc"}, {"cmaes__init": "dagger"}, {"loop__iterations": 1}))  # one pass
    with pytest.raises(UsageError, match="--checks.every 0: the repair loop"):
        train_controller_cmaes.main(cfg.replace(default, checks__every=0, run__checkpoint_dir=str(tmp_path)))
