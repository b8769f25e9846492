"""car_racing_gameplay_simulator.py --render: the agent in the full-resolution view (headless, injected keys)."""

from __future__ import annotations

import functools

import numpy as np
import pygame
import pytest

from car_racing.car_racing_gameplay_simulator import Args, main
from car_racing.episodes.agent import evaluate_agent, make_agent_driver
from car_racing.world import viewer
from tests.test_agent_simulator import tiny_checkpoints  # noqa: F401  (fixture)
from tests.test_recording import ScriptedEvents


def test_render_shows_c_and_m_and_changes_nothing_esc_stops(tiny_checkpoints, monkeypatch, capsys):  # noqa: F811
    shown = []
    original_show = viewer.DrivingView.show

    def show(self, env, observation, status, bars=(), inset=None, message=()):
        shown.append(([bar.label for bar in bars], status, tuple(message)))
        return original_show(self, env, observation, status, bars, inset, message)

    escape = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE)
    p_key = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_p)
    # episode 1: 15 steps with a pause of 3 calls at step 5; episode 2: Esc at its step 4
    script = ScriptedEvents({5: [p_key], 8: [p_key], 22: [escape]})
    monkeypatch.setattr(viewer.DrivingView, "show", show)
    monkeypatch.setattr(viewer, "WatchedDriver", functools.partial(viewer.WatchedDriver, fps=0, event_source=script))
    score = main(Args(checkpoint_dir=str(tiny_checkpoints), episodes=3, max_steps=15, render=True))
    out = capsys.readouterr().out
    assert "stopped in the window" in out and "over 2 episodes" in out.splitlines()[-1]

    plain = evaluate_agent(tiny_checkpoints, [10000, 10001], max_steps=15)
    assert plain[0].steps == 15 and plain[1].steps >= 4
    assert score == pytest.approx(np.mean([plain[0].total_reward, plain[1].rewards[:4].sum()]), abs=1e-3)
    labels, status, _ = shown[0]
    assert [label.split()[:2] for label in labels] == [["C", "steer"], ["C", "gas"], ["C", "brake"], ["M", "reward"]]
    assert status.startswith("seed 10000   step 0   reward +0.0   episode 0.0 / 800")
    assert sum(1 for *_, message in shown if message and message[0] == "PAUSED") == 3


def test_agent_exposes_ms_predicted_reward(tiny_checkpoints):  # noqa: F811
    agent = make_agent_driver(tiny_checkpoints)
    agent.reset(None, 0)
    assert agent.predicted_reward is None
    action = agent.act(np.zeros((96, 96, 3), np.uint8))
    agent.applied(action)
    assert isinstance(agent.predicted_reward, float) and np.isfinite(agent.predicted_reward)
    agent.reset(None, 1)
    assert agent.predicted_reward is None


def test_readme_animations_on_tiny_checkpoints(tiny_checkpoints, tmp_path):  # noqa: F811
    from PIL import Image

    from car_racing import readme_animations

    out = readme_animations.main(readme_animations.Args(checkpoint_dir=str(tiny_checkpoints), out_dir=str(tmp_path),
                                                        agent_steps=6, dream_steps=8, stride=2, width=100))
    with Image.open(out["agent"]) as agent, Image.open(out["dream"]) as dream:
        assert agent.size == (100, 80) and agent.n_frames == 3
        assert dream.n_frames == 4
