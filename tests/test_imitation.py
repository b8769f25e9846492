"""DAgger warm start: the clean autopilot labels the states, C is refitted on the aggregate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from car_racing.common import config
from car_racing.common.cli import UsageError
from car_racing.common.runtime import load_checkpoint
from car_racing.episodes.rollout import run_episode
from car_racing.models.ffn import num_controller_params
from car_racing.train_controller_cmaes import main
from car_racing.training.imitation import make_dagger_driver, run_dagger
from car_racing.world.autopilot import AutopilotDriver
from car_racing.world.envs import make_env
from tests.test_agent_simulator import HIDDEN, LATENT, write_tiny_checkpoints

NUM_PARAMS = num_controller_params(LATENT, HIDDEN)


def test_labels_are_the_clean_autopilot_and_features_what_c_saw(tmp_path):
    write_tiny_checkpoints(tmp_path, controller=False)
    env = make_env()
    # the clean expert drives: every executed action is its own label
    driver = make_dagger_driver(tmp_path, np.zeros(NUM_PARAMS), expert_noise=0.0)
    result = run_episode(env, driver, seed=3, max_steps=40)
    info = result.info
    assert info["features"].shape == (40, LATENT + HIDDEN) and info["labels"].shape == (40, 3)
    np.testing.assert_allclose(info["labels"], result.actions, atol=1e-6)
    expert_alone = run_episode(env, AutopilotDriver(noise=0.0), seed=3, max_steps=40)
    np.testing.assert_allclose(info["labels"], expert_alone.actions, atol=1e-6)
    # C drives (all-zero C: steer 0, gas = brake = 0.5): actions differ from the labels, which are still
    # what the clean expert would do in the states C reached
    driver = make_dagger_driver(tmp_path, np.zeros(NUM_PARAMS), expert_noise=None)
    result = run_episode(env, driver, seed=3, max_steps=40)
    np.testing.assert_allclose(result.actions, np.tile([0.0, 0.5, 0.5], (40, 1)), atol=1e-6)
    assert not np.allclose(result.info["labels"], result.actions, atol=1e-2)
    # features: z of the first frame and h_0 = 0
    assert np.all(result.info["features"][0, LATENT:] == 0) and np.any(result.info["features"][1, LATENT:] != 0)
    env.close()


def test_run_dagger_aggregates_every_round(tmp_path):
    write_tiny_checkpoints(tmp_path, controller=False)
    seen = []
    history = run_dagger(tmp_path, NUM_PARAMS, rounds=2, episodes=2, seeds=lambda r: [100 * r, 100 * r + 1],
                         ridge=1.0, max_steps=15, workers=1, on_round=lambda record, state: seen.append(record))
    assert [r.driver for r in history] == ["expert", "controller", "controller"]
    assert [r.samples for r in history] == [30, 60, 90]
    assert [r.seeds for r in history] == [[0, 1], [100, 101], [200, 201]]
    assert seen == history
    assert history[-1].params.shape == (NUM_PARAMS,) and np.all(np.isfinite(history[-1].params))
    assert not np.allclose(history[0].params, history[-1].params)


def test_train_controller_dagger_warm_start_only(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path, controller=False)
    args = config.preset("seed", cmaes__init="dagger", cmaes__dagger_rounds=1, cmaes__dagger_episodes=1,
                         cmaes__generations=0, checks__episodes=1, checks__max_steps=12, run__workers=1,
                         run__checkpoint_dir=str(tmp_path), run__data_dir=str(tiny_data_dir), run__progress=False)
    final = main(args)
    assert final["generation"] == 0 and final["bc"]["method"] == "dagger"
    assert [r["samples"] for r in final["bc"]["rounds"]] == [12, 24]
    assert (tmp_path / "control_model_dagger.png").stat().st_size > 0
    saved = load_checkpoint(tmp_path / "control_model_cmaes.pth", "controller")
    assert saved["best_params"] is not None and "initial mean (dagger)" in saved["model_source"]
    # the warm start is saved before any generation: a resumed run evolves on from it
    resumed = main(config.replace(args, cmaes__generations=1, run__resume=True, dream__steps=3, dream__trials=2,
                                  dream__start_states=16))
    assert resumed["generation"] == 1 and resumed["bc"]["method"] == "dagger"
    np.testing.assert_allclose(resumed["best_params"], saved["best_params"])  # no check since: still the best


def test_init_from_a_controller_checkpoint(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path)  # with a controller: CMA starts from its C
    start = load_checkpoint(tmp_path / "control_model_cmaes.pth", "controller")
    args = config.preset("seed", cmaes__init="checkpoint", cmaes__generations=0, checks__episodes=1,
                         checks__max_steps=8, run__workers=1, run__checkpoint_dir=str(tmp_path),
                         run__data_dir=str(tiny_data_dir), run__progress=False)
    final = main(args)
    expected = torch.cat([start["model_state"]["fc.weight"].reshape(-1), start["model_state"]["fc.bias"]])
    np.testing.assert_allclose(final["best_params"], expected.double().numpy(), rtol=1e-6)
    assert final["bc"]["method"] == "checkpoint" and "initial mean (checkpoint)" in final["model_source"]


def test_dagger_continues_from_its_saved_state_exactly(tmp_path):
    write_tiny_checkpoints(tmp_path, controller=False)
    kwargs = dict(seeds=lambda r: [50 + r], ridge=1.0, max_steps=12, workers=1)
    states = []
    straight = run_dagger(tmp_path, NUM_PARAMS, rounds=2, episodes=1, **kwargs)
    run_dagger(tmp_path, NUM_PARAMS, rounds=1, episodes=1, on_round=lambda record, state: states.append(state), **kwargs)
    continued = run_dagger(tmp_path, NUM_PARAMS, rounds=2, episodes=1, resume=states[-1], **kwargs)
    assert [r.round for r in continued] == [0, 1, 2] and continued[-1].samples == straight[-1].samples == 36
    np.testing.assert_allclose(continued[-1].params, straight[-1].params, rtol=1e-9, atol=1e-12)


def test_train_controller_resume_extends_a_dagger_run(tmp_path, tiny_data_dir):
    write_tiny_checkpoints(tmp_path, controller=False)
    args = config.preset("seed", cmaes__init="dagger", cmaes__dagger_rounds=1, cmaes__dagger_episodes=1,
                         cmaes__generations=0, checks__episodes=1, checks__max_steps=10, run__workers=1,
                         run__checkpoint_dir=str(tmp_path), run__data_dir=str(tiny_data_dir), run__progress=False)
    main(args)
    assert (tmp_path / "control_model_dagger.pth").is_file()
    args = config.replace(args, run__resume=True, cmaes__dagger_rounds=2)
    final = main(args)
    assert [r["round"] for r in final["bc"]["rounds"]] == [0, 1, 2]
    assert [r["samples"] for r in final["bc"]["rounds"]] == [10, 20, 30]
    args = config.replace(args, cmaes__bc_ridge=5.0, cmaes__dagger_rounds=3)  # a different fit cannot continue it
    with pytest.raises(UsageError, match="--cmaes.bc-ridge 5.0: the saved DAgger run used 10.0"):
        main(args)
