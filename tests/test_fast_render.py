"""The fast renderer changes only speed: frames, rewards, terminations and info equal the stock env's.

Each test steps a stock env and a fast env in lockstep with the same actions (from a cheap scripted
driver reading the stock env) and compares every output exactly.
"""

from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest

from car_racing.world import envs, fast_render
from car_racing.world.envs import make_env
from car_racing.world.fast_render import UnverifiedVersion, is_fast_render_installed


class ScriptedDriver:
    """Follows the centre line (steering at a waypoint ahead), with optional scripted detours.

    ``detours``: (first_step, end_step, steer) spans of hard steering at low gas, to leave the road.
    ``exit_from``: from that step on, head due east (+x) until the car leaves the playfield (−100, terminated).
    """

    def __init__(self, speed: float = 45.0, detours: tuple = (), exit_from: int | None = None) -> None:
        self.speed, self.detours, self.exit_from = speed, detours, exit_from
        self.track_xy: np.ndarray | None = None

    def reset(self, env: gymnasium.Env) -> None:
        self.track_xy = np.array([(t[2], t[3]) for t in env.unwrapped.track])

    def act(self, env: gymnasium.Env, step: int) -> np.ndarray:
        hull = env.unwrapped.car.hull
        speed = math.hypot(*hull.linearVelocity)
        x, y = hull.position
        if self.exit_from is not None and step >= self.exit_from:
            target = (x + 1000.0, y)
            gas = 0.3 if speed < 60 else 0.0
        else:
            for first, end, steer in self.detours:
                if first <= step < end:
                    return np.array([steer, 0.3, 0.0], dtype=np.float32)
            nearest = int(np.argmin(((self.track_xy - (x, y)) ** 2).sum(axis=1)))
            ahead = self.track_xy[(nearest + 3 + int(speed / 15)) % len(self.track_xy)]
            target = (float(ahead[0]), float(ahead[1]))
            gas = None
        lx, ly = hull.GetLocalPoint(target)
        steer = float(np.clip(2.5 * math.atan2(lx, ly), -1.0, 1.0))
        if gas is not None:
            return np.array([steer, gas, 0.0], dtype=np.float32)
        target_speed = self.speed * (1.0 - 0.6 * abs(steer))
        return np.array([steer, 0.3 if speed < target_speed else 0.0, 0.5 if speed > target_speed + 15 else 0.0],
                        dtype=np.float32)


def _assert_same_episode(stock, fast, driver, seed, steps, options=None, render=False):
    """Reset both envs with ``seed``, drive ``steps`` steps in lockstep, assert identical outputs."""
    obs_s, info_s = stock.reset(seed=seed, options=options)
    obs_f, info_f = fast.reset(seed=seed, options=options)
    assert np.array_equal(obs_s, obs_f) and info_s == info_f
    driver.reset(stock)
    summary = {"steps": 0, "sharp_steer": 0, "grass": 0, "terminated": False, "truncated": False, "reward": 0.0}
    for step in range(steps):
        action = driver.act(stock, step)
        out_s = stock.step(action)
        out_f = fast.step(action.copy())
        assert np.array_equal(out_s[0], out_f[0]), f"seed {seed}: observation differs at step {step}"
        assert out_s[1:] == out_f[1:], f"seed {seed}: reward/terminated/truncated/info differ at step {step}"
        if render:
            assert np.array_equal(stock.render(), fast.render()), f"seed {seed}: render() differs at step {step}"
        summary["steps"] += 1
        summary["reward"] += out_s[1]
        summary["sharp_steer"] += abs(float(action[0])) >= 0.9
        summary["grass"] += all(not wheel.tiles for wheel in stock.unwrapped.car.wheels)
        if out_s[2] or out_s[3]:
            summary["terminated"], summary["truncated"], summary["last_reward"] = out_s[2], out_s[3], out_s[1]
            summary["info"] = out_s[4]
            break
    return summary


def _env_pair(**kwargs):
    stock = make_env(fast=False, **kwargs)
    fast = make_env(fast=True, **kwargs)
    assert not is_fast_render_installed(stock) and is_fast_render_installed(fast)
    return stock, fast


def test_identical_on_track_grass_and_time_limit():
    stock, fast = _env_pair()
    try:
        driver = ScriptedDriver(speed=45.0, detours=((250, 280, 1.0), (620, 640, -1.0)))
        summary = _assert_same_episode(stock, fast, driver, seed=0, steps=1000)
        assert summary["steps"] == 1000 and summary["truncated"]  # the full 1000-step episode
        assert summary["sharp_steer"] >= 50 and summary["grass"] >= 30  # sharp turns and grass were covered
        stats = fast.unwrapped._fast_render_stats
        assert stats["background_polygon"] >= 10 and stats["background_fill"] >= 900  # zoom-in and normal view
    finally:
        stock.close(), fast.close()


def test_identical_domain_randomize_lap_finish_and_playfield_exit():
    stock, fast = _env_pair(domain_randomize=True)
    try:
        # a lap at speed: ends by finishing the lap (terminated, lap_finished=True) within 1000 steps
        lap = _assert_same_episode(stock, fast, ScriptedDriver(speed=60.0), seed=4, steps=1000)
        assert lap["terminated"] and lap["info"]["lap_finished"] and lap["steps"] > 900
        # same env objects, new track and colours: drive east off the road to the playfield edge
        exit_ = _assert_same_episode(stock, fast, ScriptedDriver(exit_from=60), seed=2, steps=1000)
        assert exit_["terminated"] and exit_["last_reward"] == -100 and not exit_["info"]["lap_finished"]
        # reset without re-randomising the colours
        _assert_same_episode(stock, fast, ScriptedDriver(), seed=3, steps=60, options={"randomize": False})
        assert fast.unwrapped._fast_render_stats["background_polygon"] >= 60  # zoom-ins and the playfield edge
    finally:
        stock.close(), fast.close()


def test_identical_rgb_array_render():
    stock, fast = _env_pair(render_mode="rgb_array")
    try:
        driver = ScriptedDriver(detours=((40, 55, 1.0),))  # particles (skid marks) show in rgb_array
        _assert_same_episode(stock, fast, driver, seed=4, steps=70, render=True)
        assert stock.unwrapped.car.particles  # the skid-mark particles were drawn (rgb_array only)
    finally:
        stock.close(), fast.close()


def test_human_mode_runs_and_matches(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    stock, fast = _env_pair(render_mode="human")
    try:
        _assert_same_episode(stock, fast, ScriptedDriver(), seed=5, steps=8)
        assert fast.unwrapped.screen is not None
    finally:
        stock.close(), fast.close()
    # pygame.quit() (the human env's close) drops pygame's fonts: the fast renderer must recover
    stock, fast = _env_pair()
    try:
        _assert_same_episode(stock, fast, ScriptedDriver(), seed=6, steps=5)
    finally:
        stock.close(), fast.close()


def test_unverified_gymnasium_version_falls_back_with_warning(monkeypatch):
    monkeypatch.setattr(gymnasium, "__version__", "0.0.0-unverified")
    with pytest.warns(UnverifiedVersion, match="0.0.0-unverified"):
        env = make_env()
    try:
        assert not is_fast_render_installed(env)
        obs, _ = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5, 0.0], dtype=np.float32))
        assert obs.shape == (96, 96, 3) and obs.dtype == np.uint8 and not terminated
    finally:
        env.close()


def test_switches_and_uninstall(monkeypatch):
    monkeypatch.setenv(envs.FAST_RENDER_ENV_VAR, "0")
    env = make_env()
    assert not is_fast_render_installed(env)
    env.close()
    monkeypatch.delenv(envs.FAST_RENDER_ENV_VAR)
    env = make_env()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert fast_render.install_fast_render(env)  # idempotent, no warning on the verified version
        fast_render.uninstall_fast_render(env)
        assert not is_fast_render_installed(env)
        assert "_render" not in env.unwrapped.__dict__  # the class's stock methods are back
        env.reset(seed=0)
    finally:
        env.close()


def test_score_font_survives_repeated_pygame_sessions():
    """pygame forgets registered quit functions after each pygame.quit(): the cached score font must still
    be dropped each time, or the third session renders with a dead font (issue 22's repro)."""
    import pygame

    for session in range(3):
        env = make_env(render_mode="rgb_array")
        try:
            env.reset(seed=session)
            frame = env.render()  # the third session raised "Invalid font (font module quit since font created)"
            assert frame.shape == (400, 600, 3)
        finally:
            env.close()
            pygame.quit()
