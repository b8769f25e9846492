"""Driving by hand: ramped keyboard, gamepad, pause, summaries, the full-resolution view (all headless,
with injected pygame events), and that the recorder starts without torch."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pygame
import pytest
from test_recording import ScriptedEvents, stage1_config

from car_racing.common.cli import UsageError
from car_racing.episodes.recording import record
from car_racing.episodes.rollout import run_episode
from car_racing.recording.recorded_data import load_recorded, preprocess_frame
from car_racing.world import drivers, human_input
from car_racing.world.drivers import RandomDriver
from car_racing.world.envs import make_env
from car_racing.world.human_input import (
    GAS_RAMP,
    STEER_RAMP,
    STEER_RETURN,
    STICK_DEAD_ZONE,
    GamepadInput,
    KeyboardInput,
)
from car_racing.world.viewer import DrivingView, action_bars

REPO = Path(__file__).resolve().parent.parent
DOWN, UP = pygame.KEYDOWN, pygame.KEYUP


def key(kind: int, code: int) -> pygame.event.Event:
    return pygame.event.Event(kind, key=code)


def axis(number: int, value: float) -> pygame.event.Event:
    return pygame.event.Event(pygame.JOYAXISMOTION, joy=0, instance_id=0, axis=number, value=value)


def steers(keyboard: KeyboardInput, script: dict[int, list], steps: int) -> np.ndarray:
    return np.array([keyboard.update(script.get(t, [])) for t in range(steps)])


# --- the input classes, pure ----------------------------------------------------------------------------

def test_keyboard_tap_is_a_small_correction_hold_reaches_full_lock_release_centres():
    tap = steers(KeyboardInput(), {0: [key(DOWN, pygame.K_LEFT)], 3: [key(UP, pygame.K_LEFT)]}, 10)
    assert tap[2, 0] == pytest.approx(-3 * STEER_RAMP) and 0 < -tap[:, 0].min() < 1  # a tap: |steer| < 1
    assert tap[5, 0] == 0.0  # back to centre two steps after release (0.21 at 0.14 per step)
    hold = steers(KeyboardInput(), {0: [key(DOWN, pygame.K_LEFT)], 30: [key(UP, pygame.K_LEFT)]}, 40)
    assert hold[13, 0] > -1.0 and hold[14, 0] == pytest.approx(-1.0)  # full lock after 15 steps (0.3 s)
    assert np.all(hold[14:30, 0] == np.float32(-1.0))
    assert hold[30, 0] == pytest.approx(-1.0 + STEER_RETURN) and np.all(hold[37:, 0] == 0.0)  # centred in 0.15 s
    assert np.all(np.diff(hold[:30, 0]) <= 0)  # moves monotonically while held


def test_keyboard_reversing_centres_first_then_ramps_and_gas_ramps_brake_is_immediate():
    keyboard = KeyboardInput()
    actions = steers(keyboard, {0: [key(DOWN, pygame.K_d), key(DOWN, pygame.K_w)],  # WASD too
                                20: [key(UP, pygame.K_d), key(DOWN, pygame.K_a), key(UP, pygame.K_w),
                                     key(DOWN, pygame.K_s)]}, 30)
    assert actions[19, 0] == pytest.approx(1.0) and actions[19, 1] == pytest.approx(1.0)
    assert actions[0, 1] == pytest.approx(GAS_RAMP) and actions[11, 1] < 1.0 <= actions[12, 1] + 1e-6
    assert actions[20, 0] == pytest.approx(1.0 - STEER_RETURN)  # reversing: the fast centring rate first
    assert actions[20, 2] == pytest.approx(human_input.BRAKE) and actions[19, 2] == 0.0
    assert actions[24, 1] == 0.0  # gas off within 4 steps of release
    both = KeyboardInput()
    held = steers(both, {0: [key(DOWN, pygame.K_LEFT), key(DOWN, pygame.K_RIGHT)]}, 5)
    assert np.all(held[:, 0] == 0.0)  # both sides held: centre


def test_keyboard_does_not_advance_while_paused_but_sees_releases():
    keyboard = KeyboardInput()
    keyboard.update([key(DOWN, pygame.K_LEFT)])
    frozen = keyboard.update([], advance=False)
    assert frozen[0] == pytest.approx(-STEER_RAMP)
    keyboard.update([key(UP, pygame.K_LEFT)], advance=False)
    assert keyboard.update([])[0] == 0.0  # the release during the pause counts


def test_gamepad_steers_proportionally_beyond_the_dead_zone_triggers_and_buttons_for_gas_and_brake():
    pad = GamepadInput()
    assert pad.update([axis(0, STICK_DEAD_ZONE / 2)])[0] == 0.0
    for value in (0.3, 0.5, -0.75, 1.0, -1.0):
        expected = np.sign(value) * (abs(value) - STICK_DEAD_ZONE) / (1 - STICK_DEAD_ZONE)
        assert pad.update([axis(0, value)])[0] == pytest.approx(expected, abs=1e-6)
    steer_half, steer_full = pad.update([axis(0, 0.5)])[0], pad.update([axis(0, 1.0)])[0]
    assert 0 < steer_half < steer_full == pytest.approx(1.0)
    gas_axis, brake_axis = pad.layout.gas_axes[0], pad.layout.brake_axes[0]
    assert list(pad.update([axis(gas_axis, -1.0)])[1:]) == [0.0, 0.0]  # a trigger at rest
    assert pad.update([axis(gas_axis, 0.0)])[1] == pytest.approx(0.5)  # half pressed
    action = pad.update([axis(gas_axis, 1.0), axis(brake_axis, 1.0)])
    assert action[1] == pytest.approx(1.0) and action[2] == pytest.approx(1.0)
    pad.update([axis(gas_axis, -1.0), axis(brake_axis, -1.0)])
    button = pygame.event.Event(pygame.JOYBUTTONDOWN, joy=0, instance_id=0, button=0)
    assert pad.update([button])[1] == 1.0
    assert pad.update([pygame.event.Event(pygame.JOYBUTTONUP, joy=0, instance_id=0, button=0)])[1] == 0.0


# --- the human driver in the recorder ---------------------------------------------------------------------


def record_human(data_dir, script, monkeypatch, **overrides):
    monkeypatch.setattr(drivers, "HumanDriver", functools.partial(drivers.HumanDriver, event_source=script, fps=0))
    options = dict(driver="human", episodes=1, random_episodes=0, steps=40, seq_len=10, workers=0)
    options.update(overrides)
    record(stage1_config(data_dir, **options))
    return load_recorded(data_dir)


def test_recorded_tap_hold_and_release_and_the_data_replay_from_seed_and_actions(tmp_path, monkeypatch):
    script = ScriptedEvents({0: [key(DOWN, pygame.K_UP)], 5: [key(DOWN, pygame.K_LEFT)], 8: [key(UP, pygame.K_LEFT)],
                             15: [key(DOWN, pygame.K_LEFT)], 30: [key(UP, pygame.K_LEFT)],
                             40: [key(DOWN, pygame.K_RETURN)]})  # call 40: the summary after 40 steps
    data = record_human(tmp_path / "data", script, monkeypatch, input="keyboard")
    steer = data.actions[:, 0]
    assert len(steer) == 40 and 0 < -steer[5:15].min() < 1  # a short tap: a partial correction
    assert steer[29] == pytest.approx(-1.0)  # a long hold reaches full lock
    assert np.all(steer[37:] == 0.0) and steer[14] == 0.0  # release returns to centre
    assert data.actions[-1, 1] == pytest.approx(1.0)
    # what was recorded re-simulates exactly from the seed and the actions (the view changed nothing)
    env = make_env()
    observation, _ = env.reset(seed=int(data.episodes[0]["seed"]))
    for t, action in enumerate(data.actions):
        assert np.array_equal(preprocess_frame(observation), data.frames[t]), t
        observation, reward, *_ = env.step(action)
        assert np.float32(reward) == data.rewards[t]
    env.close()


def test_pause_stops_time_and_records_nothing(tmp_path, monkeypatch):
    script = ScriptedEvents({0: [key(DOWN, pygame.K_LEFT)], 4: [key(DOWN, pygame.K_p)],  # paused at step 4
                             14: [key(DOWN, pygame.K_p)],  # 10 calls later: resumed
                             24: [pygame.event.Event(pygame.QUIT)]})
    data = record_human(tmp_path / "data", script, monkeypatch, input="keyboard")
    assert data.episodes[0]["length"] == 24 - 10  # the 10 paused calls recorded nothing
    np.testing.assert_allclose(data.actions[:6, 0], -STEER_RAMP * np.arange(1, 7), rtol=1e-5)  # no jump


def test_gamepad_driver_steers_with_posted_joystick_events(monkeypatch):
    monkeypatch.setattr(human_input, "open_input", lambda kind: GamepadInput())  # no pad on this machine
    driver = drivers.HumanDriver(input_kind="gamepad", fps=0)  # default event source: pygame.event.get
    try:
        driver.reset(None, seed=3)
        observation = np.zeros((96, 96, 3), dtype=np.uint8)
        pygame.event.post(axis(0, -0.56))
        pygame.event.post(pygame.event.Event(pygame.JOYBUTTONDOWN, joy=0, instance_id=0, button=0))
        action = driver.act(observation, None, 0, 0.0)
        assert action[0] == pytest.approx(-0.5, abs=1e-6) and action[1] == 1.0
        pygame.event.post(axis(0, 0.0))
        assert driver.act(observation, None, 1, 0.0)[0] == 0.0
    finally:
        driver.close()


def test_summary_after_each_episode_and_esc_at_the_summary_keeps_the_steps(tmp_path, monkeypatch):
    summaries = []
    original = drivers.HumanDriver.show_summary
    monkeypatch.setattr(drivers.HumanDriver, "show_summary",
                        lambda self, lines: summaries.append(lines) or original(self, lines))
    script = ScriptedEvents({0: [key(DOWN, pygame.K_UP)], 10: [key(DOWN, pygame.K_SPACE)],
                             21: [key(DOWN, pygame.K_ESCAPE)]})
    data = record_human(tmp_path / "data", script, monkeypatch, input="keyboard", episodes=3, steps=10)
    assert [e["length"] for e in data.episodes] == [10, 10]
    assert [lines[0].split(":")[0] for lines in summaries] == ["Episode 1/3 (seed 0)", "Episode 2/3 (seed 1)"]
    assert "lap not finished in 10 steps" in summaries[0][1] and "below the 800 target" in summaries[0][1]


def test_input_gamepad_without_one_connected_is_a_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="--input gamepad: no gamepad"):
        record(stage1_config(tmp_path / "d", driver="human", input="gamepad"))
    assert not (tmp_path / "d" / "record.config.toml").exists()  # the window never opened: nothing ran
    with pytest.raises(UsageError, match="record.input = 'wheel'"):
        record(stage1_config(tmp_path / "d", driver="human", input="wheel"))


# --- the view -------------------------------------------------------------------------------------------

class WatchedDriver:
    """A driver shown in a DrivingView at every step (what the recorder and the simulator do)."""

    def __init__(self, driver, view):
        self.driver, self.view, self.episode_info = driver, view, {}

    def reset(self, env, seed):
        self.driver.reset(env, seed)

    def act(self, observation, env, step, episode_reward):
        action = self.driver.act(observation, env, step, episode_reward)
        self.view.show(env, observation, f"step {step}", action_bars(action), inset=preprocess_frame(observation))
        return action


def test_the_full_resolution_view_changes_no_observation_or_reward():
    env = make_env()
    plain = run_episode(env, RandomDriver(), seed=5, max_steps=80, record_frames=True, capture_raw=True)
    view = DrivingView("test")
    try:
        watched = run_episode(env, WatchedDriver(RandomDriver(), view), seed=5, max_steps=80, record_frames=True,
                              capture_raw=True)
        assert view.screen.get_width() > 96 * 5  # a full-resolution view, not the observation
    finally:
        view.close()
        env.close()
    assert np.array_equal(plain.raw_frames, watched.raw_frames) and np.array_equal(plain.frames, watched.frames)
    assert np.array_equal(plain.rewards, watched.rewards) and np.array_equal(plain.actions, watched.actions)


def test_the_recorder_starts_without_torch():
    code = "import sys, car_racing.recorded_frames, car_racing.episodes.recording, car_racing.world.viewer, " \
           "car_racing.world.human_input, car_racing.common.video; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
