"""The keyboard driver (car_racing/world/keyboard_driver.py): a headless stand-in for a person at the arrow keys
whose key states go through the recorder's own keyboard ramp (car_racing/world/human_input.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pygame
import pytest

from car_racing.common import config as cfg
from car_racing.episodes import recording
from car_racing.episodes.rollout import run_episode
from car_racing.recording.recorded_data import load_recorded
from car_racing.world import human_input, keyboard_driver
from car_racing.world.envs import make_env, preprocess_frame
from car_racing.world.keyboard_driver import KeyboardDriver, keys_to_events

SEED = 3_000_000  # a training-side track (the held-out ones are 10000-10099)
STEPS = 250  # past the first corner: steering both ways, braking, a mistake or two with mistakes=1


@pytest.fixture(scope="module")
def env():
    env = make_env()
    yield env
    env.close()


@pytest.fixture(scope="module")
def episode(env):
    """One episode of the keyboard driver (mistakes at every chance) and the driver that drove it."""
    driver = KeyboardDriver(mistakes=1.0)
    result = run_episode(env, driver, SEED, STEPS, record_frames=True)
    return driver, result


def test_its_actions_are_what_the_key_ramp_makes_of_its_key_states(episode):
    driver, result = episode
    keys = np.asarray(driver.key_log, dtype=bool)
    assert keys.shape == (result.steps, 4) and result.steps == STEPS
    left, right, up, down = keys.T
    assert left.any() and right.any() and up.any() and down.any(), "every key is used in these steps"
    assert not (left & right).any()
    # the recorder's own ramp, fresh, over the same key states as pygame events: the very same actions
    ramp = human_input.KeyboardInput()
    replayed = np.array([ramp.update(events) for events in keys_to_events(keys)], dtype=np.float32)
    np.testing.assert_array_equal(replayed, result.actions)
    # so: the brake is off or the ramp's 0.8, gas and steering move by the ramp's steps only
    steer, gas, brake = result.actions.T
    assert set(np.unique(brake)) <= {np.float32(0.0), np.float32(human_input.BRAKE)}
    steps = np.abs(np.diff(np.concatenate([[0.0], steer])))
    assert np.all(steps <= human_input.STEER_RETURN + 1e-6)
    assert np.all(np.diff(np.concatenate([[0.0], gas])) <= human_input.GAS_RAMP + 1e-6)
    assert driver.episode_info["late_brakes"] + driver.episode_info["late_turns"] + \
        driver.episode_info["long_turns"] >= 1, "mistakes=1: a mistake at the first chance"


def test_its_keys_reach_the_ramp_as_key_events(env, monkeypatch):
    calls = []
    update = human_input.KeyboardInput.update

    def spy(self, events, advance=True):
        events = list(events)
        calls.append(events)
        return update(self, events, advance)

    monkeypatch.setattr(human_input.KeyboardInput, "update", spy)
    driver = KeyboardDriver()
    result = run_episode(env, driver, SEED, 60)
    assert len(calls) == result.steps == 60  # one update per step, as the human driver's
    arrows = {pygame.K_LEFT, pygame.K_RIGHT, pygame.K_UP, pygame.K_DOWN}
    events = [event for step in calls for event in step]
    assert events and all(e.type in (pygame.KEYDOWN, pygame.KEYUP) and e.key in arrows for e in events)
    assert calls[0] == [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP)]  # gas first, from a standstill


def test_the_same_seed_gives_the_same_keys_and_actions_and_replaying_them_the_same_episode(env, episode):
    driver, result = episode
    again = KeyboardDriver(mistakes=1.0)
    run_episode(env, again, SEED + 1, 30)  # an episode before must not change the next one
    second = run_episode(env, again, SEED, STEPS, record_frames=True)
    np.testing.assert_array_equal(second.actions, result.actions)
    assert again.key_log == driver.key_log and again.episode_info == driver.episode_info
    # the recorded actions, replayed from the seed, give the recorded frames and rewards again
    observation, _ = env.reset(seed=SEED)
    frames, rewards = [], []
    for action in result.actions:
        frames.append(preprocess_frame(observation))
        observation, reward, *_ = env.step(action)
        rewards.append(reward)
    np.testing.assert_array_equal(np.array(frames), result.frames)
    np.testing.assert_array_equal(np.array(rewards, dtype=np.float32), result.rewards)


def test_it_acts_on_what_it_saw_reaction_steps_ago(monkeypatch):
    """With eyes that want full right lock from step 20 on, the → key goes down at step 20 + reaction_steps."""
    seen_at = iter(range(1000))

    class Seen:
        def __init__(self):
            self.step = next(seen_at)

        def extrapolated(self, steps):
            return SimpleNamespace(seen_step=self.step, ahead=steps)

    monkeypatch.setattr(keyboard_driver, "snapshot", lambda car: Seen())
    for reaction in (0, 10, 25):
        seen_at = iter(range(1000))
        driver = KeyboardDriver(reaction_steps=reaction, mistakes=0.0)
        driver._reset_state(0)  # noqa: SLF001 (no env: the eyes are replaced below)
        looked = []

        def eyes(observation, seen, step, reward, looked=looked):
            looked.append((step, seen.seen_step, seen.ahead))
            return np.array([1.0 if seen.seen_step >= 20 else 0.0, 0.5, 0.0])

        driver.eyes = SimpleNamespace(act=eyes)
        fake_env = SimpleNamespace(unwrapped=SimpleNamespace(car=None))
        actions = np.array([driver.act(None, fake_env, step, 0.0) for step in range(60)])
        first_right = int(np.argmax(np.asarray(driver.key_log)[:, keyboard_driver.RIGHT]))
        assert first_right == 20 + reaction
        assert actions[first_right, 0] == pytest.approx(human_input.STEER_RAMP)
        # what it saw at step t is t - reaction (the first frame before that), extrapolated to now
        assert all(seen == max(0, step - reaction) and ahead == step - seen for step, seen, ahead in looked)


def test_mistakes_are_seeded_and_off_at_zero(env):
    none = KeyboardDriver(mistakes=0.0)
    run_episode(env, none, SEED, 150)
    assert none.episode_info["late_brakes"] == none.episode_info["late_turns"] == \
        none.episode_info["long_turns"] == 0
    with pytest.raises(ValueError, match="mistakes"):
        KeyboardDriver(mistakes=1.5)
    with pytest.raises(ValueError, match="reaction_steps"):
        KeyboardDriver(reaction_steps=-1)


def test_the_config_names_it_and_checks_its_settings(tmp_path):
    config = cfg.replace(cfg.Config(), record__driver="keyboard", record__mistakes=1.5, run__data_dir=str(tmp_path))
    with pytest.raises(cfg.ConfigError, match="record.mistakes"):
        recording.record(config)
    config = cfg.replace(config, record__mistakes=0.2, record__reaction_steps=-1)
    with pytest.raises(cfg.ConfigError, match="record.reaction_steps"):
        recording.record(config)
    assert not any(tmp_path.iterdir())
    factory = recording.make_headless_driver("keyboard", 1.0, reaction_steps=4, mistakes=0.5)
    driver = factory()
    assert isinstance(driver, KeyboardDriver) and (driver.reaction_steps, driver.mistakes) == (4, 0.5)


def test_a_tiny_pipeline_runs_on_its_data(tmp_path, one_torch_thread):
    from car_racing.training.memory import train_memory
    from car_racing.training.vision import train_vision

    config = cfg.preset(
        "demo", run__data_dir=str(tmp_path / "data"), run__checkpoint_dir=str(tmp_path / "checkpoints"),
        run__device="cpu", run__workers=1, run__progress=False, run__seed=SEED, record__driver="keyboard",
        record__episodes=2, record__steps=40, record__random_episodes=1, record__seq_len=10, vision__epochs=1,
        vision__kl_anneal_epochs=1.0, vision__batch_size=40, vision__latent_size=8, memory__epochs=1,
        memory__batch_size=4, memory__hidden_size=16, memory__num_mixtures=2)
    summary = recording.record(config)
    data = load_recorded(tmp_path / "data")
    assert [(e["seed"], e["driver"]) for e in data.episodes] == [(SEED, "keyboard"), (SEED + 1, "keyboard"),
                                                                 (SEED + 2, "random")]
    assert data.episodes[0]["noise"]["reaction_steps"] == 10 and summary["data_summary"]["driven"]["episodes"] == 2
    vision = train_vision(config)
    assert (tmp_path / "checkpoints" / "vision_model.pth").is_file() and vision is not None
    memory = train_memory(config)
    assert (tmp_path / "checkpoints" / "memory_model.pth").is_file() and memory is not None
