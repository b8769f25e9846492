"""The scripted autopilot drives on the track; its noise is per-episode and reproducible; it pickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from car_racing.episodes.rollout import run_episode
from car_racing.world.autopilot import AutopilotDriver
from car_racing.world.envs import make_env


class DoNothing:
    def reset(self, env, seed):
        pass

    def act(self, observation, env, step, episode_reward):
        return np.zeros(3, dtype=np.float32)


@pytest.fixture(scope="module")
def env():
    env = make_env()
    yield env
    env.close()


def test_clean_autopilot_makes_progress_on_the_road(env):
    steps = 150
    idle = run_episode(env, DoNothing(), seed=0, max_steps=steps)
    driver = AutopilotDriver(noise=0.0)
    result = run_episode(env, driver, seed=0, max_steps=steps)
    car = env.unwrapped.car
    assert result.steps == steps
    assert result.actions.dtype == np.float32 and result.actions.shape == (steps, 3)
    assert idle.total_reward < 0 < result.total_reward
    # 150 steps at racing speed cover well over 20 tiles (each worth ~3.4 points)
    assert env.unwrapped.tile_visited_count > 20
    assert all(len(wheel.tiles) > 0 for wheel in car.wheels)  # still on the road
    assert result.info == {"steer_sigma": 0.0, "burst_prob": 0.0}
    # noise 0 is deterministic
    again = run_episode(env, AutopilotDriver(noise=0.0), seed=0, max_steps=steps)
    np.testing.assert_array_equal(again.actions, result.actions)


def test_noise_levels_are_drawn_per_episode_and_reproducible(env):
    def noisy_run(seed):
        driver = AutopilotDriver(noise=1.0)
        result = run_episode(env, driver, seed=seed, max_steps=40)
        return result, driver.episode_info

    first, info = noisy_run(3)
    second, info_again = noisy_run(3)
    _, other_info = noisy_run(4)
    assert set(info) == {"steer_sigma", "burst_prob"}
    assert all(type(value) is float for value in info.values())
    assert 0.0 <= info["steer_sigma"] <= 0.3 and 0.0 <= info["burst_prob"] <= 0.01
    assert info == info_again and info != other_info
    np.testing.assert_array_equal(first.actions, second.actions)
    assert first.info == info


def test_driver_pickles():
    driver = AutopilotDriver(noise=0.5)
    clone = pickle.loads(pickle.dumps(driver))
    assert isinstance(clone, AutopilotDriver) and clone.noise == 0.5


def test_holds_let_go_for_40_to_100_steps_and_leave_the_noise_as_it_was(env):
    steps = 400
    plain = run_episode(env, AutopilotDriver(noise=1.0), seed=5, max_steps=steps)
    held = run_episode(env, AutopilotDriver(noise=1.0, holds=20.0), seed=5, max_steps=steps)
    again = run_episode(env, AutopilotDriver(noise=1.0, holds=20.0), seed=5, max_steps=steps)
    np.testing.assert_array_equal(held.actions, again.actions)  # seeded: a recording replays exactly
    # runs of one repeated action: where a hold keeps the same [steer, gas, brake] step after step
    same = np.all(held.actions[1:] == held.actions[:-1], axis=1)
    runs, length = [], 0
    for flag in same:
        length = length + 1 if flag else 0
        runs.append(length)
    longest = max(runs) + 1
    assert 40 <= longest <= 100
    first_hold = int(np.argmax(np.array(runs) >= 39)) - 38  # the step the longest hold's first action was taken
    assert first_hold > 50  # never while the car starts
    # before the first hold the driver is the plain noisy autopilot: the holds' RNG is their own
    np.testing.assert_array_equal(held.actions[:first_hold], plain.actions[:first_hold])
    assert held.total_reward != plain.total_reward
    with pytest.raises(ValueError, match="holds"):
        AutopilotDriver(holds=-1.0)
