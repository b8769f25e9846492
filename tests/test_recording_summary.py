"""Where a person stands (issue 35 item 4): car_racing/recording/summary.py (the data summary and its warnings),
the recorder's running count against what the defaults record, and a session continued later or cut by Ctrl-C."""

from __future__ import annotations

import functools

import numpy as np
import pygame
import pytest

from car_racing.common import config as cfg
from car_racing.episodes import recording
from car_racing.recording.recorded_data import EpisodeStore, RecordedEpisode, load_recorded
from car_racing.recording.summary import (
    SPEED_GAIN,
    SPEED_OFFSET,
    ZOOM_FRAMES,
    by_driver,
    format_summary,
    frame_signals,
    grass_spells,
    summarize,
)
from car_racing.world import drivers
from car_racing.world.autopilot import AutopilotDriver
from car_racing.world.envs import make_env, preprocess_frame
from conftest import write_synthetic_recording

ROAD, GRASS = (102, 102, 102), (102, 204, 102)


def frames_like_the_env(off_road, bar_cells):
    """64×64 frames drawn as the env's are where the summary looks: road or grass beside the car, and a speed
    bar of ``bar_cells`` full white cells on the dashboard."""
    frames = np.zeros((len(off_road), 64, 64, 3), dtype=np.uint8)
    frames[:, :56] = ROAD
    frames[:, 44:52, 30:34] = (200, 0, 0)  # the red car
    for t, (off, cells) in enumerate(zip(off_road, bar_cells)):
        if off:
            frames[t, 43:53, 27:30] = GRASS
            frames[t, 43:53, 34:37] = GRASS
        frames[t, 56:64] = 0
        for k in range(cells):  # from the bottom up, two columns wide
            frames[t, 62 - k // 2, 8 + k % 2] = 255
    return frames


def write_recording(data_dir, episodes, driver="keyboard", seq_len=10, drivers=None):
    """``episodes``: a list of ``(off_road flags, bar cells, actions)``; ``drivers``: one per episode (else all
    ``driver``)."""
    store = EpisodeStore(data_dir, append=False, seq_len=seq_len)
    for i, (off_road, cells, actions) in enumerate(episodes):
        length = len(off_road)
        store.add(RecordedEpisode(seed=i, driver=drivers[i] if drivers else driver,
                                  frames=frames_like_the_env(off_road, cells),
                                  actions=np.asarray(actions, dtype=np.float32),
                                  rewards=np.full(length, -0.1, dtype=np.float32), lap_finished=False))
    return store.commit()


def test_summarize_a_synthetic_recording(tmp_path):
    write_synthetic_recording(tmp_path / "data")
    result = summarize(tmp_path / "data")
    assert (result["episodes"], result["frames"], result["drivers"]) == (3, 95, {"synthetic": 3})
    assert result["random"] is None and result["driven"]["episodes"] == 3
    assert result["needed"] == {"episodes": 64, "steps": 1000, "frames": 64000, "minutes": pytest.approx(21.333, 1e-3)}
    assert result["share_of_needed"] == pytest.approx(95 / 64000)
    driven = result["driven"]
    assert driven["on_road"] is None and driven["road_frames"] == 0  # every episode is inside the zoom-in
    assert sum(driven["steering"]["shares"]) == pytest.approx(1.0) and sum(driven["speed"]["shares"]) == 1.0
    lines = format_summary(result)
    assert lines[0].startswith(f"data summary of {tmp_path / 'data'}: 3 episodes (3 synthetic), 95 frames")
    assert "recorded: 3 episodes, 95 frames" in lines[1] and "64 × 1000 = 64,000 frames (21.3 min)" in lines[1]
    assert any("steering hard left" in line for line in lines) and lines[-1].startswith("warning: ")


def test_a_narrow_recording_gets_a_warning_for_each_thing_it_lacks(tmp_path):
    length = 200
    straight_slow = ([False] * length, [1] * length, [[0.0, 1.0, 0.0]] * length)  # road only, 15 units/s
    write_recording(tmp_path / "data", [straight_slow, straight_slow])
    result = summarize(tmp_path / "data")
    warnings = result["warnings"]
    assert len(warnings) == 5, warnings
    assert warnings[0].startswith("never off the road") and "--record.random-episodes" in warnings[0]
    assert warnings[1] == "never braked: brake (↓) into a few corners"
    assert warnings[2].startswith("almost no steering")
    assert warnings[3].startswith("never fast (90% of frames under 15 units/s)")
    assert warnings[4].startswith("1% of the frames the defaults record")
    lines = format_summary(result)
    assert [line for line in lines if line.startswith("warning: ")] == [f"warning: {w}" for w in warnings]
    assert result["driven"]["on_road"] == 1.0 and result["driven"]["braking"] == 0.0


def test_a_varied_recording_counts_spells_and_recoveries_and_has_no_narrowness_warning(tmp_path):
    length = 200
    rng = np.random.default_rng(0)
    actions = np.stack([rng.uniform(-1, 1, length), rng.uniform(0, 1, length),
                        (rng.uniform(0, 1, length) < 0.1) * 0.8], axis=1)
    back = np.zeros(length, dtype=bool)
    back[100:120] = True  # 20 frames on the grass, then 80 on the road: a recovery
    back[150:152] = True  # a 2-frame blip: not a spell
    stuck = np.zeros(length, dtype=bool)
    stuck[150:] = True  # on the grass until the end: a spell, no recovery
    fast = [6] * length  # 6 full cells: 18.96 · 6 − 3.78 ≈ 110 units/s
    write_recording(tmp_path / "data", [(back, fast, actions), (stuck, fast, actions)])
    result = summarize(tmp_path / "data")
    driven = result["driven"]
    assert (driven["grass_spells"], driven["recoveries"]) == (2, 1)
    past_zoom = 2 * (length - ZOOM_FRAMES)
    assert driven["on_road"] == pytest.approx(1 - (20 + 2 + 50) / past_zoom)
    assert driven["speed"]["p50"] == pytest.approx(SPEED_GAIN * 6 + SPEED_OFFSET, abs=0.01)
    assert driven["braking"] == pytest.approx(np.mean(actions[:, 2] > 0))
    assert [w for w in result["warnings"] if not w.startswith("1% of the frames")] == []


def test_grass_spells_ignore_blips():
    flags = np.zeros(300, dtype=bool)
    flags[10:13] = True  # blip
    flags[50:60] = True  # spell, then road: recovered
    flags[100:110] = True  # spell, then only 10 frames of road: not yet recovered
    flags[120:] = True
    assert grass_spells(flags) == (3, 1)
    assert grass_spells(np.zeros(0, dtype=bool)) == (0, 0)


def test_speed_and_road_from_the_frames_match_the_env():
    """The summary's two pixel readings against the env's own state, on a clean autopilot drive (never off the
    road) past the camera's zoom-in."""
    env = make_env()
    try:
        observation, _ = env.reset(seed=3_000_000)
        driver = AutopilotDriver()
        driver.reset(env, 3_000_000)
        frames, speeds = [], []
        for step in range(150):
            frames.append(preprocess_frame(observation))
            speeds.append(float(np.hypot(*env.unwrapped.car.hull.linearVelocity)))
            observation, *_ = env.step(driver.act(observation, env, step, 0.0))
    finally:
        env.close()
    off_road, speed = frame_signals(np.array(frames))
    assert not off_road[ZOOM_FRAMES:].any()
    assert max(speeds) > 50 and np.sqrt(np.mean((speed - np.array(speeds)) ** 2)) < 3.0


# --- the recorder: the running count, the summary at the end, continuing later ---------------------------------

def stage1(data_dir, **overrides):
    options = dict(record__driver="autopilot", record__episodes=2, record__random_episodes=1, record__steps=30,
                   record__seq_len=10, run__workers=1, run__progress=False, run__data_dir=str(data_dir))
    options.update(overrides)
    return cfg.replace(cfg.Config(), **options)


def test_the_recorder_counts_the_driving_and_prints_the_summary_and_continues_later(tmp_path, capsys):
    data_dir = tmp_path / "data"
    result = recording.record(stage1(data_dir))
    out = capsys.readouterr().out
    assert "recorded: 1 episode, 30 frames = 0.0 min of driving; the defaults record 64 × 1000" in out
    assert "recorded: 2 episodes, 60 frames" in out and "recorded: 3 episodes" not in out  # random ones aside
    assert f"data summary of {data_dir}: 3 episodes (2 autopilot, 1 random), 90 frames" in out
    assert result["data_summary"]["driven"]["frames"] == 60 and result["data_summary"]["random"]["frames"] == 30

    recording.record(stage1(data_dir, record__append=True, record__random_episodes=0, record__episodes=1))
    captured = capsys.readouterr()
    assert f"continuing {data_dir}: it holds 3 episodes" in captured.err
    assert "recorded: 3 episodes, 90 frames" in captured.out  # the 2 kept and this run's one
    assert [e["seed"] for e in load_recorded(data_dir).episodes] == [0, 1, 2, 3]

    recording.record(stage1(data_dir, record__random_episodes=0, record__episodes=1))
    captured = capsys.readouterr()
    assert f"note: {data_dir} holds 4 episodes" in captured.err and "--record.append keeps them" in captured.err
    assert "recorded: 1 episode, 30 frames" in captured.out
    assert len(load_recorded(data_dir).episodes) == 1  # replaced, as asked


class InterruptedDriver(drivers.RandomDriver):
    """The random driver, until Ctrl-C arrives in episode ``at_episode``, step 10."""

    def __init__(self, at_episode):
        super().__init__()
        self.at_episode, self.episode = at_episode, -1

    def reset(self, env, seed):
        super().reset(env, seed)
        self.episode += 1

    def act(self, observation, env, step, episode_reward):
        if self.episode == self.at_episode and step == 10:
            raise KeyboardInterrupt
        return super().act(observation, env, step, episode_reward)


def test_ctrl_c_mid_episode_keeps_every_finished_episode_and_appending_goes_on(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "data"
    recording.record(stage1(data_dir, record__random_episodes=0))  # seeds 0, 1
    before = {name: np.asarray(array).copy() for name, array in vars(load_recorded(data_dir)).items()
              if name != "meta"}
    monkeypatch.setattr(recording, "make_headless_driver",
                        lambda name, noise, checkpoint_dir: functools.partial(InterruptedDriver, at_episode=2))
    with pytest.raises(KeyboardInterrupt):
        recording.record(stage1(data_dir, record__driver="random", record__episodes=5, record__random_episodes=0,
                                record__append=True))
    data = load_recorded(data_dir)
    assert [(e["seed"], e["driver"], e["length"]) for e in data.episodes] == \
        [(0, "autopilot", 30), (1, "autopilot", 30), (2, "random", 30), (3, "random", 30)]
    for name, array in before.items():  # the earlier episodes byte for byte
        np.testing.assert_array_equal(np.asarray(getattr(data, name))[:len(array)], array)
    assert "data summary of" in capsys.readouterr().out  # the summary also when Ctrl-C ends it
    monkeypatch.undo()
    recording.record(stage1(data_dir, record__episodes=1, record__random_episodes=0, record__append=True))
    assert [e["seed"] for e in load_recorded(data_dir).episodes] == [0, 1, 2, 3, 4]  # on from where it stopped


def test_the_person_sees_the_count_on_the_window_and_after_each_episode(tmp_path, monkeypatch):
    shown = []

    class Person(drivers.HumanDriver):
        def show_summary(self, lines):
            shown.append((list(lines), self.recorded_note))
            return True

    script = iter([[pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP)]])
    monkeypatch.setattr(drivers, "HumanDriver",
                        functools.partial(Person, event_source=lambda: next(script, []), fps=0))
    recording.record(stage1(tmp_path / "data", record__driver="human", record__input="keyboard",
                            record__random_episodes=0, record__steps=20))
    assert len(shown) == 2
    (first, note), (second, _) = shown
    assert "recorded: 1 episode, 20 frames" in " ".join(first) and "recorded: 2 episodes, 40 frames" in " ".join(second)
    assert note == "recorded 1 ep, 0.0 of 21.3 min (0%)"  # on the window's status line during the next episode


def test_by_driver_splits_the_drivers_and_keeps_each_ones_last_episodes(tmp_path, capsys):
    """bench/driver_figures.py's figures: C's episodes beside the driving they learned from."""
    from bench import driver_figures
    from car_racing.common.cli import UsageError

    n = ZOOM_FRAMES + 30
    slow = ([False] * n, [2] * n, [[0.0, 0.2, 0.0]] * n)
    fast = ([False] * n, [8] * n, [[0.0, 1.0, 0.0]] * n)
    light_brake = ([True] * n, [4] * n, [[0.0, 0.5, 0.01]] * n)
    write_recording(tmp_path / "data", [slow, fast, light_brake, slow],
                    drivers=["keyboard", "keyboard", "agent", "agent"])
    figures = by_driver(tmp_path / "data")
    assert list(figures) == ["keyboard", "agent"] and figures["keyboard"]["episodes"] == 2
    assert figures["keyboard"]["gas_mean"] == pytest.approx(0.6) and figures["agent"]["on_road"] == pytest.approx(0.5)
    # a light brake on every frame: "on" on all of them, though the mean pedal says how light
    assert figures["agent"]["braking"] == 1.0 / 2 and figures["agent"]["brake_mean"] == pytest.approx(0.005)
    last = by_driver(tmp_path / "data", last=1)
    assert last["keyboard"]["episodes"] == 1 and last["keyboard"]["gas_mean"] == pytest.approx(1.0)
    assert last["keyboard"]["speed"]["mean"] > figures["keyboard"]["speed"]["mean"]  # the fast one is the last

    table = driver_figures.main(driver_figures.Args(data_dirs=(str(tmp_path / "data"),), last=1))
    assert [row[1:3] for row in table] == [["keyboard", "1"], ["agent", "1"]]
    assert "| agent | 1 |" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no recording there"):
        driver_figures.main(driver_figures.Args(data_dirs=(str(tmp_path),)))
