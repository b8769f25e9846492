"""drive_in_dream.py: a person drives M's dream with the recorder's keys (scripted events, headless)."""

from __future__ import annotations

import numpy as np
import pygame
import pytest
import torch
from test_controller_training import write_tiny_checkpoints
from test_recording import ScriptedEvents, key

from car_racing import drive_in_dream
from car_racing.common.cli import UsageError
from car_racing.common.runtime import load_model
from car_racing.common.video import video_info
from car_racing.models.mdn_rnn import DONE_THRESHOLD, MDNRNN
from car_racing.world.envs import make_env, preprocess_frame

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DOWN, UP = pygame.KEYDOWN, pygame.KEYUP


def test_dream_driven_by_keys_sums_m_own_rollout_and_wakes_up_to_the_real_env(tmp_path, monkeypatch):
    paths = write_tiny_checkpoints(tmp_path / "ck")
    script = ScriptedEvents({0: [key(DOWN, pygame.K_UP)], 5: [key(DOWN, pygame.K_LEFT)],
                             10: [key(UP, pygame.K_LEFT), key(DOWN, pygame.K_EQUALS)],  # τ 1.0 → 1.1 from step 10
                             15: [key(DOWN, pygame.K_w)],  # wake up: the real env replays the same actions
                             20: [key(DOWN, pygame.K_ESCAPE)]})
    monkeypatch.setattr(drive_in_dream, "SESSION_OPTIONS", {"fps": 0, "event_source": script})
    out = tmp_path / "runs" / "dream.mp4"
    summary = drive_in_dream.main(drive_in_dream.Args(checkpoint_dir=str(tmp_path / "ck"), seed=3, start_step=5,
                                                      input="keyboard", device="cpu", record=str(out)))
    actions = summary["actions"]
    assert summary["steps"] == 20 and actions.shape == (20, 3)
    assert np.all(actions[:5, 0] == 0) and np.all(actions[5:10, 0] < 0) and actions[4, 1] > actions[0, 1] > 0
    assert summary["temperature"] == pytest.approx(1.1)

    # M's own rollout on the same actions from the same start, same seed and τ: the same summed reward
    memory, _ = load_model(paths["memory"], "memory")
    z, state = torch.as_tensor(summary["start_z"]), tuple(torch.as_tensor(s) for s in summary["start_state"])
    generator, total = torch.Generator().manual_seed(3), 0.0
    with torch.no_grad():
        for t, action in enumerate(actions):
            output, state = memory.step(z, torch.as_tensor(action)[None], state)
            total += float(output.reward[0])
            z = MDNRNN.sample_next_z(output, 1.0 if t < 10 else 1.1, generator)
    assert summary["summed_reward"] == pytest.approx(total, rel=1e-5, abs=1e-5)
    assert summary["summed_reward"] == pytest.approx(float(summary["rewards"].sum()), rel=1e-6)
    done = np.flatnonzero(summary["done_probabilities"] > DONE_THRESHOLD)  # where a training dream would have ended
    assert summary["ended_at"] == (int(done[0]) if len(done) else None)

    # the dream started from V's μ of the real frame after 5 standing steps on track 3, with M's state after them
    env = make_env()
    observation, _ = env.reset(seed=3)
    for _ in range(5):
        observation, *_ = env.step(np.zeros(3, dtype=np.float32))
    vae, _ = load_model(paths["vision"], "vision")
    from car_racing.models.vae import frames_to_tensor
    with torch.no_grad():
        mu = vae.encode(frames_to_tensor(preprocess_frame(observation)[None]))[0]
    np.testing.assert_allclose(summary["start_z"], mu.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(summary["start_state"][0]).sum() > 0  # M read the 5 real steps first
    real_return = 0.0
    for action in actions:  # the wake-up view: the real env on the same actions
        observation, reward, *_ = env.step(action)
        real_return += float(reward)
    env.close()
    assert summary["real_return"] == pytest.approx(real_return)

    frames, width, _, fps = video_info(out)
    assert frames == 20 and fps == 50 and width >= 2 * drive_in_dream.PANEL


def test_without_a_display_one_line(tmp_path, monkeypatch):
    write_tiny_checkpoints(tmp_path / "ck")
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(UsageError, match="drive_in_dream.py needs a display") as err:
        drive_in_dream.main(drive_in_dream.Args(checkpoint_dir=str(tmp_path / "ck")))
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="--record"):
        drive_in_dream.main(drive_in_dream.Args(checkpoint_dir=str(tmp_path / "ck"), record="x.avi"))


def test_the_dream_world_says_where_a_training_dream_ends():
    """DreamWorld steps with MDNRNN.dream_step: M's done signal (the one DONE_THRESHOLD) marks where a training dream
    would have ended; a person drives on."""
    from test_controller_training import TINY_VAE, tiny_memory

    from car_racing.models.vae import VAE
    from car_racing.world.dream_world import DreamWorld

    torch.manual_seed(0)
    memory = tiny_memory()
    world = DreamWorld(VAE(**TINY_VAE), memory, seed=1)
    world.start(np.zeros((1, 64, 64, 3), dtype=np.uint8), [])
    with torch.no_grad():
        memory.done_head.weight.zero_()
        memory.done_head.bias.fill_(-5.0)
    steps = [world.step(np.array([0.0, 0.5, 0.0])) for _ in range(3)]
    assert world.ended_at is None and not any(step.done for step in steps)
    with torch.no_grad():
        memory.done_head.bias.fill_(5.0)
    steps = [world.step(np.array([0.0, 0.5, 0.0])) for _ in range(2)]
    assert world.ended_at == 3 and all(step.done for step in steps) and len(world.actions) == 5
    assert world.restart() is not None and world.ended_at is None
