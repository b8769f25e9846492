"""The user's path (issue 21): the five stage scripts in order with their defaults, sizes aside, end in a
dream-trained driver; stage 4's defaults run the repair loop; ``--preset seed`` gives the seed's stage 4."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from car_racing import (
    car_racing_gameplay_simulator,
    recorded_frames,
    train_controller_cmaes,
    train_memory,
    train_vision,
)
from car_racing.common.cli import UsageError, parse_args, preset_args
from car_racing.common.runtime import checkpoint_paths, load_checkpoint
from car_racing.recording.recorded_data import load_recorded

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The seed repo's stage 4, as it was before the repair loop became the default.
SEED_STAGE4 = {"loop_iterations": 1, "population": 32, "sigma0": 0.1, "generations": 200, "rollout_steps": 50,
               "dream_trials": 16, "dream_dropout": 0.0, "dream_fitness": "mean", "dream_start": "recorded",
               "eval_every": 10, "eval_episodes": 4, "mode": "dream", "init": "zero", "temperature": 1.0,
               "dream_value": False}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stage4_preset_seed_sets_the_seed_values_and_flags_given_win():
    seed = parse_args(train_controller_cmaes.Args, ["--preset", "seed"])
    assert {k: getattr(seed, k) for k in SEED_STAGE4} == SEED_STAGE4
    assert preset_args(train_controller_cmaes.Args, "seed") == seed
    given = parse_args(train_controller_cmaes.Args, ["--preset", "seed", "--generations", "7"])
    assert (given.generations, given.rollout_steps) == (7, 50)
    default = train_controller_cmaes.Args()
    assert (default.loop_iterations, default.dream_start, default.dream_fitness, default.dream_trials) == (
        3, "recorded", "mean", 40)
    assert (default.dream_value, default.generations, default.eval_every) == (True, 15, 5)
    # --rollout-steps: 200-step dreams in dream mode, whole 1000-step episodes in real mode, unless given
    assert train_controller_cmaes.with_rollout_steps(default).rollout_steps == 200
    real = train_controller_cmaes.Args(mode="real")
    assert train_controller_cmaes.with_rollout_steps(real).rollout_steps == 1000
    assert train_controller_cmaes.with_rollout_steps(dataclasses.replace(real, rollout_steps=300)).rollout_steps == 300


def test_five_stages_with_their_defaults_end_in_a_dream_trained_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the repo's data/ or checkpoints/
    data, checkpoints = tmp_path / "data", tmp_path / "checkpoints"
    recorded_frames.main(recorded_frames.Args(driver="autopilot", episodes=2, steps=40, random_episodes=1, seq_len=10,
                                              data_dir=str(data), workers=1, progress=False))
    train_vision.main(train_vision.Args(data_dir=str(data), checkpoint_dir=str(checkpoints), epochs=1,
                                        kl_anneal_epochs=1, batch_size=40, latent_size=8, threads=1, progress=False))
    train_memory.main(train_memory.Args(data_dir=str(data), checkpoint_dir=str(checkpoints), epochs=1, batch_size=4,
                                        hidden_size=16, num_mixtures=2, threads=1, progress=False))
    paths = checkpoint_paths(checkpoints)
    stage3 = sha256(paths["memory"])
    stage4 = train_controller_cmaes.Args(data_dir=str(data), checkpoint_dir=str(checkpoints), loop_iterations=2,
                                         population=4, generations=2, dream_trials=2, rollout_steps=5, start_states=16,
                                         eval_every=2, eval_episodes=1, eval_max_steps=10, loop_memory_epochs=1,
                                         loop_agent_episodes=2, loop_repair_episodes=1, loop_select_episodes=2,
                                         workers=1, progress=False)
    final = train_controller_cmaes.main(stage4)

    # stage 4 ran the repair loop and wrote the best-checked iteration's M and C beside V
    loop = checkpoints / "dream_loop"
    assert sha256(loop / "memory_from_stage3.pth") == stage3  # stage 3's M kept as it was
    best = checkpoint_paths(loop / "best")
    assert sha256(paths["memory"]) == sha256(best["memory"])
    assert sha256(paths["controller"]) == sha256(best["controller"])
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
    again = train_controller_cmaes.main(train_controller_cmaes.Args(**{**vars(stage4), "resume": True}))
    assert again["model_source"] == final["model_source"] and sha256(paths["controller"]) == sha256(best["controller"])

    # stage 5 drives V, M and C of this run (a float score)
    score = car_racing_gameplay_simulator.main(car_racing_gameplay_simulator.Args(
        checkpoint_dir=str(checkpoints), episodes=1, max_steps=10, workers=1, progress=False))
    assert isinstance(score, float)
    assert load_checkpoint(paths["memory"], "memory")["vision"]["path"].endswith("vision_model.pth")


def test_repair_loop_needs_stage_2_and_3_first(tmp_path):
    with pytest.raises(UsageError, match="vision_model.pth: missing; run train_vision.py"):
        train_controller_cmaes.main(train_controller_cmaes.Args(checkpoint_dir=str(tmp_path), workers=1,
                                                                data_dir=str(tmp_path)))
    uses = train_controller_cmaes.uses_repair_loop
    assert uses(train_controller_cmaes.Args()) and uses(train_controller_cmaes.Args(init="checkpoint"))
    assert not any(uses(train_controller_cmaes.Args(**flags)) for flags in (
        {"mode": "real"}, {"init": "bc"}, {"init": "dagger"}, {"loop_iterations": 1}))  # one pass
    with pytest.raises(UsageError, match="--eval-every 0: the repair loop"):
        train_controller_cmaes.main(train_controller_cmaes.Args(eval_every=0, checkpoint_dir=str(tmp_path)))
