"""The reward-only issue: a dream-trained C fine-tuned by real-env CMA-ES, from reward alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_controller_training import write_tiny_checkpoints
from conftest import tiny_stage4_config

from car_racing.common.runtime import load_checkpoint
from car_racing.train_controller_cmaes import main as train_controller

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def test_real_env_fine_tune_of_a_dream_trained_c_resumes_and_is_reward_only(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path)
    dreamt = train_controller(tiny_stage4_config(tmp_path, tiny_data_dir, cmaes__init="zero", checks__every=0))
    assert dreamt["training"]["dream_trained"] and dreamt["training"]["reward_only"]
    start = tmp_path / "dream_trained.pth"
    (tmp_path / "control_model_cmaes.pth").rename(start)

    def fine_tune(generations: int, resume: bool) -> dict:
        return train_controller(tiny_stage4_config(
            tmp_path, tiny_data_dir, cmaes__mode="real", cmaes__init="checkpoint", cmaes__init_from=str(start),
            cmaes__population=3, cmaes__real_trials=1, cmaes__real_steps=6, cmaes__generations=generations,
            checks__every=1, checks__max_steps=6, run__resume=resume))

    first = fine_tune(1, resume=False)
    assert first["generation"] == 1
    resumed = fine_tune(2, resume=True)
    assert resumed["generation"] == 2
    assert resumed["history"]["generation"] == [1, 2]  # continued, not restarted
    assert resumed["history"]["eval_generation"] == [1, 2]
    first_seconds, resumed_seconds = resumed["history"]["seconds"]  # the run's wall clock carries over a resume
    assert 0 < first_seconds < resumed_seconds and first_seconds == first["history"]["seconds"][0]
    record = load_checkpoint(tmp_path / "control_model_cmaes.pth", "controller")["training"]
    assert record == resumed["training"]
    assert record["reward_only"] and not record["expert_labels"]
    assert record["fitness_source"] == "real" and record["real_returns_as_fitness"] and not record["dream_trained"]
    assert record["real_fitness_episodes"] == 2 * 3 * 1 and record["real"]["rollout_steps"] == 6
    assert record["total_generations"] == 3  # one in the dream, two in the real env
    assert record["warm_start_training"]["dream_trained"]  # the lineage: a C trained only in the dream


def test_an_expert_labelled_lineage_is_not_reward_only(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path)
    bc = train_controller(tiny_stage4_config(tmp_path, tiny_data_dir, cmaes__init="bc", checks__every=0))
    start = tmp_path / "bc.pth"
    (tmp_path / "control_model_cmaes.pth").rename(start)
    real = train_controller(tiny_stage4_config(tmp_path, tiny_data_dir, cmaes__mode="real", cmaes__init="checkpoint",
                                              cmaes__init_from=str(start), cmaes__population=2, cmaes__real_trials=1,
                                              cmaes__real_steps=4, checks__every=0))
    assert not bc["training"]["reward_only"] and not real["training"]["reward_only"]


def test_selection_re_drives_the_checked_controllers_and_keeps_the_best(tmp_path, tiny_data_dir, monkeypatch):
    from car_racing import select_controller
    from car_racing.common.cli import UsageError

    write_tiny_checkpoints(tmp_path)
    run = train_controller(tiny_stage4_config(tmp_path, tiny_data_dir, cmaes__init="zero", cmaes__generations=2,
                                             checks__every=1))
    assert len(run["checked"]) == 5  # the initial mean, then the best candidate and CMA's mean of each check
    args = select_controller.Args(checkpoint_dir=str(tmp_path), top=3, episodes=2, max_steps=6, workers=1)
    record = select_controller.main(args)
    saved = load_checkpoint(tmp_path / "control_model_cmaes.pth", "controller")
    assert len(record["table"]) == 3 and saved["selection"]["kept"] == record["kept"]
    assert saved["training"]["selection"]["keep_by"] == "mean-minus-std"
    best = max(record["table"], key=lambda row: row["mean"] - row["std"])
    assert record["kept"] == best["source"] and saved["model_source"].startswith(best["source"])
    kept = next(entry for entry in run["checked"] if entry["source"] == best["source"])
    torch.testing.assert_close(saved["best_params"], kept["params"].double())  # (plain data: tensors)

    # a rerun reuses the saved returns (an interrupted selection continues, it does not drive again)
    from car_racing.episodes import agent

    monkeypatch.setattr(agent, "RealFitness", lambda *a, **k: pytest.fail("drove again"))
    assert select_controller.main(args)["kept"] == record["kept"]

    saved.pop("checked")
    torch.save(saved, tmp_path / "control_model_cmaes.pth")
    with pytest.raises(UsageError, match="no real-checked controllers"):
        select_controller.main(args)


class _Standing:
    """A driver that brakes in place: it never reaches a new tile."""

    def reset(self, env, seed):
        pass

    def act(self, observation, env, step, episode_reward):
        return np.array([0.0, 0.0, 1.0], dtype=np.float32)


def test_a_stalled_training_episode_ends_early_and_says_so():
    from car_racing.episodes.rollout import run_episode
    from car_racing.world.envs import make_env

    env = make_env()
    try:
        stalled = run_episode(env, _Standing(), seed=3, max_steps=200, stall_steps=25)
        whole = run_episode(env, _Standing(), seed=3, max_steps=60)
    finally:
        env.close()
    assert stalled.info["stalled"] and stalled.steps < 30  # (the env's first step may still pay)
    assert np.all(stalled.rewards[-25:] <= 0)  # 25 steps in a row without a new tile ended it
    assert stalled.steps == 25 or stalled.rewards[-26] > 0  # and not one step later
    assert whole.steps == 60 and "stalled" not in whole.info
    np.testing.assert_allclose(stalled.rewards, whole.rewards[:stalled.steps])  # the same steps, just fewer
