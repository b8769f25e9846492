"""Stage 1: car_racing/episodes/recording.py (recording; car_racing/recorded_frames.py is its command line),
car_racing/world/drivers.py (random and human drivers)."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pygame
import pytest

from car_racing.common import config as cfg
from car_racing.common.cli import UsageError
from car_racing.episodes import recording
from car_racing.episodes.rollout import EndSession
from car_racing.recording.recorded_data import (
    ACTIONS_FILE,
    ARRAY_FILES,
    DONES_FILE,
    FRAMES_FILE,
    META_FILE,
    PENDING_DIR,
    REWARDS_FILE,
    SEQ_ACTIONS_FILE,
    SEQ_DONES_FILE,
    SEQ_INDICES_FILE,
    SEQ_REWARDS_FILE,
    EpisodeStore,
    RecordedEpisode,
    load_memory_sequences,
    load_recorded,
    preprocess_frame,
)
from car_racing.world import drivers
from car_racing.world.envs import make_env

REPO = Path(__file__).resolve().parent.parent
STEPS = 60
SEQ_LEN = 20


RUN_KEYS = {"seed", "data_dir", "checkpoint_dir", "workers", "backend", "ray_address", "progress"}


def stage1_config(data_dir, **overrides) -> cfg.Config:
    """A tiny stage-1 config: ``overrides`` by field name (run's or record's); ranges are left to the stage."""
    options = dict(driver="autopilot", episodes=2, random_episodes=0, steps=STEPS, workers=1, seq_len=SEQ_LEN,
                   data_dir=str(data_dir), progress=False)
    options.update(overrides)
    return cfg.replace(cfg.Config(), **{("run__" if k in RUN_KEYS else "record__") + k: v for k, v in options.items()})


def record(data_dir, **overrides) -> dict:
    return recording.record(stage1_config(data_dir, **overrides))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (recursively) → its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def recording_files(folder: Path) -> dict[str, bytes]:
    """The recording's files, without the resolved config (which names the run's own settings, e.g. workers)."""
    return {name: data for name, data in snapshot(folder).items() if not name.endswith(cfg.CONFIG_SUFFIX)}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """2 autopilot episodes of 60 steps (seeds 0, 1), memory windows of 20 steps. Do not modify: copy it."""
    data_dir = tmp_path_factory.mktemp("recorded") / "data"
    record(data_dir)
    return data_dir


@pytest.fixture
def recorded_copy(recorded, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(recorded, copy)
    return copy


# --- what a recording writes ----------------------------------------------------------------------------

def test_autopilot_recording_writes_every_file_and_meta_agrees(recorded):
    expected = {FRAMES_FILE: (np.uint8, (2 * STEPS, 64, 64, 3)), ACTIONS_FILE: (np.float32, (2 * STEPS, 3)),
                REWARDS_FILE: (np.float32, (2 * STEPS,)), DONES_FILE: (np.bool_, (2 * STEPS,)),
                SEQ_INDICES_FILE: (np.int64, (6, SEQ_LEN)), SEQ_ACTIONS_FILE: (np.float32, (6, SEQ_LEN, 3)),
                SEQ_REWARDS_FILE: (np.float32, (6, SEQ_LEN)), SEQ_DONES_FILE: (np.bool_, (6, SEQ_LEN))}
    for file, (dtype, shape) in expected.items():
        array = np.load(recorded / file)
        assert array.dtype == dtype and array.shape == shape, file
    assert not list((recorded / PENDING_DIR).glob("*.npz")), "pending episodes are merged and removed"
    # the resolved config beside the data: --config of it records exactly this again
    resolved = cfg.resolved_path(recorded, "record")
    assert cfg.parse(("run", "record"), ["--config", str(resolved)])[0] == stage1_config(recorded)

    data = load_recorded(recorded)
    meta = json.loads((recorded / META_FILE).read_text())
    assert meta["env_id"] == "CarRacing-v3" and meta["frame_shape"] == [64, 64, 3] and meta["seq_len"] == SEQ_LEN
    assert [e["seed"] for e in data.episodes] == [0, 1]
    assert [e["start"] for e in data.episodes] == [0, STEPS]
    assert [e["length"] for e in data.episodes] == [STEPS, STEPS]
    assert np.flatnonzero(data.dones).tolist() == [STEPS - 1, 2 * STEPS - 1]
    for i, episode in enumerate(data.episodes):
        assert episode["driver"] == "autopilot" and episode["lap_finished"] is False
        assert episode["total_reward"] == pytest.approx(float(data.rewards[data.episode_slice(i)].sum()), abs=1e-3)
        assert set(episode["noise"]) == {"steer_sigma", "burst_prob"}
        assert 0.0 <= episode["noise"]["steer_sigma"] <= 0.3 and 0.0 <= episode["noise"]["burst_prob"] <= 0.01
    assert data.episodes[0]["noise"] != data.episodes[1]["noise"], "noise levels are drawn per episode"
    assert data.actions[:, 0].min() >= -1 and data.actions[:, 1:].min() >= 0 and data.actions.max() <= 1
    assert data.frames.std() > 10, "frames show the track, not a blank screen"


def test_the_same_seed_gives_the_same_files_with_one_worker_or_two(recorded, tmp_path):
    """Episodes are stored in seed order whatever finishes first: the files do not depend on --workers (and an
    interrupted recording holds consecutive seeds, so --append continues exactly where it stopped)."""
    summary = record(tmp_path / "two", workers=2)
    assert recording_files(tmp_path / "two") == recording_files(recorded)
    assert summary == dict(summary, data_dir=str(tmp_path / "two"), seeds=[0, 1], episodes=2, steps=2 * STEPS,
                           total_episodes=2, total_steps=2 * STEPS, sequences=6)


def test_replaying_seed_and_actions_reproduces_frames_exactly(recorded):
    data = load_recorded(recorded)
    env = make_env(fast=False)  # gymnasium's stock renderer: the ground truth the data must match
    try:
        for i, episode in enumerate(data.episodes):
            frames, rewards = data.frames[data.episode_slice(i)], data.rewards[data.episode_slice(i)]
            observation, _ = env.reset(seed=episode["seed"])
            for t, action in enumerate(data.actions[data.episode_slice(i)]):
                np.testing.assert_array_equal(preprocess_frame(observation), frames[t], err_msg=f"ep {i} step {t}")
                observation, reward, *_ = env.step(action)
                assert np.float32(reward) == rewards[t]
    finally:
        env.close()


def test_memory_sequences_never_cross_an_episode_boundary(recorded):
    data = load_recorded(recorded)
    sequences = load_memory_sequences(recorded)
    episode_of_step = np.repeat(np.arange(len(data.episodes)), [e["length"] for e in data.episodes])
    assert len(sequences.indices) == 2 * (STEPS // SEQ_LEN)
    for row in sequences.indices:
        assert np.all(np.diff(row) == 1)
        assert len(set(episode_of_step[row])) == 1
    np.testing.assert_array_equal(sequences.actions, data.actions[sequences.indices])
    np.testing.assert_array_equal(sequences.rewards, data.rewards[sequences.indices])
    np.testing.assert_array_equal(sequences.dones, data.dones[sequences.indices])
    assert sequences.dones[:, :-1].sum() == 0, "a done flag only ever ends a window"


def test_append_keeps_old_episodes_byte_equal_and_continues_the_seeds(recorded_copy):
    old = load_recorded(recorded_copy)
    old_arrays = {name: np.asarray(getattr(old, name)).tobytes() for name in ARRAY_FILES}
    record(recorded_copy, workers=2, steps=45, append=True)  # the one multi-process case

    new = load_recorded(recorded_copy)
    n_old = len(old)
    for name in ARRAY_FILES:
        assert np.asarray(getattr(new, name))[:n_old].tobytes() == old_arrays[name], name
    assert new.episodes[:2] == old.episodes
    assert sorted(e["seed"] for e in new.episodes[2:]) == [2, 3], "appended episodes continue after seed 1"
    assert [e["start"] for e in new.episodes] == [0, STEPS, 2 * STEPS, 2 * STEPS + 45]
    assert len(new) == 2 * STEPS + 2 * 45
    sequences = load_memory_sequences(recorded_copy)
    assert len(sequences.indices) == 2 * 3 + 2 * 3  # 45 steps → windows at 0, 20 and the one ending at 44
    assert sequences.indices.max() == len(new) - 1


def test_random_driver_varies_smoothly_and_reproducibly(tmp_path):
    record(tmp_path / "a", driver="random", episodes=1, steps=30)
    record(tmp_path / "b", driver="random", episodes=1, steps=30)
    a, b = load_recorded(tmp_path / "a"), load_recorded(tmp_path / "b")
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.episodes[0]["driver"] == "random" and a.episodes[0]["noise"] == {}
    assert a.actions.min() >= -1 and a.actions[:, 1:].min() >= 0 and a.actions.max() <= 1
    steps = np.abs(np.diff(a.actions, axis=0))
    assert steps.max() < 0.8 and 0 < steps.mean() < 0.3, "a random walk: small steps, never constant"


def test_driving_random_driver_keeps_the_gas_on_and_drives_off(tmp_path):
    from car_racing.episodes.rollout import run_episode

    env = make_env()
    try:
        run_episode(env, drivers.RandomDriver(), seed=3, max_steps=150)
        crawl = float(np.hypot(*env.unwrapped.car.hull.linearVelocity))
        again = run_episode(env, drivers.RandomDriver(style="driving"), seed=3, max_steps=150)
        driving = run_episode(env, drivers.RandomDriver(style="driving"), seed=3, max_steps=150)
        speed = float(np.hypot(*env.unwrapped.car.hull.linearVelocity))
    finally:
        env.close()
    np.testing.assert_array_equal(driving.actions, again.actions)  # seeded
    steer, gas, brake = driving.actions.T
    assert brake.max() == 0 and gas.min() >= 0.3 and gas.max() <= 1 and np.abs(steer).max() <= 1
    assert np.abs(np.diff(steer)).mean() < 0.1, "the steering wanders slowly, as a barely trained C's does"
    assert speed > 20 > crawl  # it drives off at speed, where the brownian driver crawls
    with pytest.raises(ValueError, match="style"):
        drivers.RandomDriver(style="fast")
    record(tmp_path / "c", driver="autopilot", episodes=1, random_episodes=1, steps=20, random_style="driving")
    recorded = load_recorded(tmp_path / "c")
    assert [e["driver"] for e in recorded.episodes] == ["autopilot", "random"]
    assert recorded.actions[-20:, 2].max() == 0 and recorded.actions[-20:, 1].min() >= 0.3


# --- an episode interrupted by an error -----------------------------------------------------------------

class FailingDriver(drivers.RandomDriver):
    """Random actions that raise at step ``fail_at`` of episode ``fail_episode`` (0-based)."""

    def __init__(self, fail_episode: int, fail_at: int = 5):
        super().__init__()
        self.fail_episode, self.fail_at, self.episode = fail_episode, fail_at, -1

    def reset(self, env, seed):
        super().reset(env, seed)
        self.episode += 1

    def act(self, observation, env, step, episode_reward):
        if self.episode == self.fail_episode and step == self.fail_at:
            raise RuntimeError("driver crashed")
        return super().act(observation, env, step, episode_reward)


def test_an_error_commits_the_finished_episodes(tmp_path, monkeypatch):
    monkeypatch.setattr(recording, "make_headless_driver",
                        lambda name, noise, checkpoint_dir: functools.partial(FailingDriver, fail_episode=1))
    with pytest.raises(RuntimeError, match="driver crashed"):
        record(tmp_path / "data", driver="random", episodes=3, steps=20)
    data = load_recorded(tmp_path / "data")
    assert [e["seed"] for e in data.episodes] == [0] and len(data) == 20


def test_an_error_before_any_episode_finishes_leaves_old_data_intact(recorded_copy, monkeypatch):
    before = recording_files(recorded_copy)
    monkeypatch.setattr(recording, "make_headless_driver",
                        lambda name, noise, checkpoint_dir: functools.partial(FailingDriver, fail_episode=0))
    with pytest.raises(RuntimeError, match="driver crashed"):
        record(recorded_copy, driver="random", episodes=1, steps=20)  # replace mode: must not wipe the data
    after = recording_files(recorded_copy)  # (the resolved config is the crashed run's: it had started)
    assert {k: v for k, v in after.items() if not k.startswith(PENDING_DIR)} == before


# --- the human driver, headless with injected key events ------------------------------------------------

def key(kind: int, code: int) -> pygame.event.Event:
    return pygame.event.Event(kind, key=code)


class ScriptedEvents:
    """An event source: ``script[call_number]`` is the list of events returned by that call."""

    def __init__(self, script: dict[int, list]):
        self.script, self.calls = script, 0

    def __call__(self):
        events = self.script.get(self.calls, [])
        self.calls += 1
        return events


def test_human_driver_records_the_keys_held_and_esc_keeps_what_was_recorded(tmp_path, monkeypatch):
    down, up = pygame.KEYDOWN, pygame.KEYUP
    script = ScriptedEvents({0: [key(down, pygame.K_UP)],
                             10: [key(down, pygame.K_LEFT)],
                             20: [key(up, pygame.K_LEFT), key(down, pygame.K_RIGHT)],
                             30: [key(up, pygame.K_UP), key(down, pygame.K_DOWN)],
                             40: [key(down, pygame.K_RETURN)],  # the summary of episode 1: continue
                             46: [key(down, pygame.K_ESCAPE)]})  # step 5 of the second episode
    monkeypatch.setattr(drivers, "HumanDriver", functools.partial(drivers.HumanDriver, event_source=script, fps=0))
    record(tmp_path / "data", driver="human", episodes=3, steps=40, input="keyboard")

    data = load_recorded(tmp_path / "data")
    assert [(e["seed"], e["length"], e["driver"]) for e in data.episodes] == [(0, 40, "human"), (1, 5, "human")]
    steer, gas, brake = data.actions.T
    assert np.all(steer[:10] == 0) and np.all(steer[10:20] < 0) and steer[29] > 0  # ramped, see test_human_input
    assert gas[9] > gas[0] > 0 and np.all(brake[:30] == 0) and np.all(brake[30:] == np.float32(0.8))
    assert np.all(gas[40:] == 0) and steer[40] == pytest.approx(0.07)  # a new episode starts centred; → still held
    assert data.frames.shape == (45, 64, 64, 3)


def test_closing_the_human_window_ends_the_session_keeping_the_steps(tmp_path, monkeypatch):
    script = ScriptedEvents({0: [key(pygame.KEYDOWN, pygame.K_UP)], 3: [pygame.event.Event(pygame.QUIT)]})
    monkeypatch.setattr(drivers, "HumanDriver", functools.partial(drivers.HumanDriver, event_source=script, fps=0))
    record(tmp_path / "data", driver="human", episodes=2, steps=40, input="keyboard")
    data = load_recorded(tmp_path / "data")
    assert [e["length"] for e in data.episodes] == [3]
    np.testing.assert_allclose(data.actions, [[0, 0.08, 0], [0, 0.16, 0], [0, 0.24, 0]], rtol=1e-6)  # gas ramps


def test_random_driver_episodes_follow_a_session_the_person_ended_early(tmp_path, monkeypatch):
    script = ScriptedEvents({0: [key(pygame.KEYDOWN, pygame.K_UP)], 3: [key(pygame.KEYDOWN, pygame.K_ESCAPE)]})
    monkeypatch.setattr(drivers, "HumanDriver", functools.partial(drivers.HumanDriver, event_source=script, fps=0))
    record(tmp_path / "data", driver="human", episodes=3, steps=20, input="keyboard", random_episodes=1)
    data = load_recorded(tmp_path / "data")  # Esc in the first episode: its 3 steps kept, then seed 3 random
    assert [(e["seed"], e["driver"], e["length"]) for e in data.episodes] == [(0, "human", 3), (3, "random", 20)]


def test_human_driver_reads_events_posted_to_pygames_queue():
    driver = drivers.HumanDriver(input_kind="keyboard", fps=0)  # default event source: pygame.event.get
    try:
        driver.reset(None, seed=7)
        observation = np.zeros((96, 96, 3), dtype=np.uint8)
        pygame.event.post(key(pygame.KEYDOWN, pygame.K_RIGHT))
        pygame.event.post(key(pygame.KEYDOWN, pygame.K_UP))
        np.testing.assert_allclose(driver.act(observation, None, 0, 0.0), [0.07, 0.08, 0], rtol=1e-6)
        pygame.event.post(key(pygame.KEYUP, pygame.K_RIGHT))
        np.testing.assert_allclose(driver.act(observation, None, 1, 0.0), [0, 0.16, 0], rtol=1e-6)
        pygame.event.post(key(pygame.KEYDOWN, pygame.K_ESCAPE))
        with pytest.raises(EndSession):
            driver.act(observation, None, 2, 0.0)
    finally:
        driver.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is for headless Linux")
def test_human_driver_without_a_display_points_to_the_autopilot(tmp_path, monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError, match="--record.driver human needs a display.*use --record.driver autopilot"):
        record(tmp_path / "data", driver="human")
    assert not (tmp_path / "data").exists()


# --- bad input: one line, exit code 2, nothing overwritten ----------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    ({"driver": "bogus"}, "record.driver = 'bogus'"),
    ({"input": "wheel"}, "record.input = 'wheel'"),
    ({"episodes": 0}, "record.episodes = 0"),
    ({"random_episodes": -1}, "record.random_episodes = -1"),
    ({"steps": 0}, "record.steps = 0"),
    ({"workers": -1}, "run.workers = -1"),
    ({"seq_len": 0}, "record.seq_len = 0"),
    ({"noise": -0.5}, "record.noise = -0.5"),
    ({"seed": -1}, "run.seed = -1"),
])
def test_bad_values_raise_a_usage_error_and_touch_nothing(recorded_copy, overrides, message):
    before = snapshot(recorded_copy)
    with pytest.raises(UsageError, match=message):
        record(recorded_copy, **overrides)
    assert snapshot(recorded_copy) == before


def test_unwritable_data_dir_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="--data-dir .*not writable"):
        record(blocker / "data")


def _other_frame_size(data_dir: Path) -> None:
    meta = json.loads((data_dir / META_FILE).read_text())
    meta["frame_shape"] = [96, 96, 3]
    (data_dir / META_FILE).write_text(json.dumps(meta))


def _truncated_frames(data_dir: Path) -> None:
    path = data_dir / FRAMES_FILE
    path.write_bytes(path.read_bytes()[:1000])


def _short_actions(data_dir: Path) -> None:
    np.save(data_dir / ACTIONS_FILE, np.load(data_dir / ACTIONS_FILE)[:10])


def _wrong_dtype_rewards(data_dir: Path) -> None:
    np.save(data_dir / REWARDS_FILE, np.load(data_dir / REWARDS_FILE).astype(np.float64))


@pytest.mark.parametrize("damage, message", [
    (_other_frame_size, "frames are \\[96, 96, 3\\]"),
    (_truncated_frames, "corrupt .npy"),
    (_short_actions, "holds 10 steps"),
    (_wrong_dtype_rewards, "found float64"),
])
def test_append_to_bad_existing_data_is_a_usage_error_and_touches_nothing(recorded_copy, damage, message):
    damage(recorded_copy)
    before = snapshot(recorded_copy)
    with pytest.raises(UsageError, match=message):
        record(recorded_copy, append=True)
    assert snapshot(recorded_copy) == before


def run_script(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "car_racing/recorded_frames.py", *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("flags, message", [
    (["--record.driver", "bogus"], "--record.driver"),
    (["--record.driver", "autopilot", "--record.episodes", "0"], "--record.episodes 0: expected"),
    (["--record.driver", "autopilot", "--record.input", "keyboard"], "--record.input: has no effect here"),
    (["--record.driver", "autopilot", "--threads", "1"], "--threads: has no effect here"),
])
def test_bad_input_on_the_command_line_is_one_line_and_exit_code_2(recorded_copy, flags, message):
    before = snapshot(recorded_copy)
    result = run_script(*flags, "--data-dir", str(recorded_copy))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert snapshot(recorded_copy) == before


def test_append_merges_episodes_left_by_a_crash_and_seeds_continue_after_them(recorded_copy):
    store = EpisodeStore(recorded_copy, append=True, seq_len=SEQ_LEN)  # a run that crashed before committing
    store.add(RecordedEpisode(seed=5, driver="random", frames=np.zeros((7, 64, 64, 3), np.uint8),
                              actions=np.zeros((7, 3), np.float32), rewards=np.zeros(7, np.float32),
                              lap_finished=False))
    record(recorded_copy, driver="random", episodes=1, steps=10, append=True)
    data = load_recorded(recorded_copy)
    assert [(e["seed"], e["length"]) for e in data.episodes] == [(0, STEPS), (1, STEPS), (5, 7), (6, 10)]


def test_append_with_a_corrupt_pending_episode_is_a_usage_error(recorded_copy):
    (recorded_copy / PENDING_DIR / "episode_000000.npz").write_bytes(b"not a zip file")
    before = snapshot(recorded_copy)
    with pytest.raises(UsageError, match="unreadable pending episode"):
        record(recorded_copy, append=True)
    assert snapshot(recorded_copy) == before


def test_the_agent_records_its_own_episodes_with_exploration_noise(tmp_path):
    from test_agent_simulator import write_tiny_checkpoints

    from car_racing.episodes.agent import ExploringAgent, make_agent_driver
    from car_racing.episodes.rollout import run_episode
    from car_racing.world.envs import make_env

    checkpoints = tmp_path / "ck"
    write_tiny_checkpoints(checkpoints)
    record(tmp_path / "data", driver="agent", episodes=2, steps=15, noise=0.5, checkpoint_dir=str(checkpoints))
    data = load_recorded(tmp_path / "data")
    assert [e["driver"] for e in data.episodes] == ["agent", "agent"] and len(data) == 30
    assert all(0 <= e["noise"]["agent_noise_sigma"] <= 0.5 for e in data.episodes)
    # the noise really changes the actions, and M is stepped with the action the env received
    env = make_env()
    plain = run_episode(env, ExploringAgent(make_agent_driver(checkpoints), 0.0), 7, 15)
    noisy_agent = ExploringAgent(make_agent_driver(checkpoints), 1.0)
    noisy = run_episode(env, noisy_agent, 7, 15)
    assert not np.allclose(plain.actions, noisy.actions)
    assert np.all(noisy.actions[:, 0] >= -1) and np.all(noisy.actions[:, 1:] >= 0) and np.all(noisy.actions <= 1)
    again = run_episode(env, ExploringAgent(make_agent_driver(checkpoints), 1.0), 7, 15)
    np.testing.assert_array_equal(again.actions, noisy.actions)  # the noise is seeded by the episode seed
    with pytest.raises(UsageError, match="none/vision_model.pth: no vision checkpoint"):
        record(tmp_path / "other", driver="agent", episodes=1, steps=5, checkpoint_dir=str(tmp_path / "none"))


class _LeavesTheRoad:
    """A stand-in for C that always steers hard left at full gas: it leaves the road within a second."""

    ACTION = np.array([-1.0, 1.0, 0.0], dtype=np.float32)

    def reset(self, env, seed):
        self.applied_actions = []

    def act(self, observation, env=None, step=0, episode_reward=0.0):
        return self.ACTION.copy()

    def applied(self, action):
        self.applied_actions.append(np.asarray(action).copy())


def test_the_rescue_brings_c_back_to_the_road_and_hands_back_the_wheel(tmp_path):
    from car_racing.episodes.agent import ExploringAgent
    from car_racing.episodes.rollout import run_episode
    from car_racing.world.autopilot import AutopilotDriver

    env = make_env()
    alone = run_episode(env, ExploringAgent(_LeavesTheRoad(), 0.0), 3, 400)
    assert "rescues" not in alone.info and np.all(alone.actions == _LeavesTheRoad.ACTION)
    c = _LeavesTheRoad()
    rescued_agent = ExploringAgent(c, 0.0, rescue=10)
    rescued = run_episode(env, rescued_agent, 3, 400)
    by_c = np.all(rescued.actions == _LeavesTheRoad.ACTION, axis=1)
    # the autopilot drove back to the road, C had the wheel again, left again, and was brought back again
    assert rescued.info["rescues"] >= 2 and rescued.info["rescue_steps"] == int((~by_c).sum()) > 0
    assert by_c[:10].all() and np.flatnonzero(~by_c)[0] < np.flatnonzero(~by_c)[-1]
    handed_back = np.flatnonzero(by_c[1:] & ~by_c[:-1])
    assert len(handed_back) >= 1
    assert rescued.total_reward > alone.total_reward  # back on the road, it visits tiles C alone never reaches
    # M is stepped with the autopilot's actions while it drives (what the env received)
    np.testing.assert_array_equal(np.stack(c.applied_actions), rescued.actions[:len(c.applied_actions)])
    # the autopilot's actions are its own, noise-free ones; the same seed gives the same episode
    again = run_episode(env, ExploringAgent(_LeavesTheRoad(), 0.0, rescue=10), 3, 400)
    np.testing.assert_array_equal(again.actions, rescued.actions)
    assert isinstance(rescued_agent._rescuer, AutopilotDriver) and rescued_agent._rescuer.noise == 0.0


def test_a_lost_ray_cluster_says_the_episodes_are_saved_and_how_to_go_on(tmp_path, monkeypatch):
    from car_racing.episodes.backends import RayClusterLost

    def lost(config):
        raise RayClusterLost("the Ray cluster at 10.0.0.1:6379 stopped answering")

    monkeypatch.setattr(recording, "_record", lost)
    with pytest.raises(RayClusterLost) as raised:
        record(tmp_path / "data")
    assert str(raised.value) == ("the Ray cluster at 10.0.0.1:6379 stopped answering; every finished episode is "
                                 "saved: rerun with --record.append to record more after them, on a new cluster or "
                                 "with --backend processes (no Ray)")
