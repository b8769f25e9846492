"""Creating the CarRacing-v3 env: the one place the project calls ``gym.make``."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

ENV_ID = "CarRacing-v3"
MAX_EPISODE_STEPS = 1000  # gym.make's TimeLimit for CarRacing-v3
FRAME_SIZE = 64  # every stage sees 64×64×3 uint8 frames
FAST_RENDER_ENV_VAR = "CAR_RACING_FAST_RENDER"  # set to 0 to use the stock renderer everywhere


def make_env(render_mode: str | None = None, domain_randomize: bool = False,
             max_episode_steps: int | None = None, fast: bool = True) -> Any:
    """A continuous-action CarRacing-v3 env.

    ``render_mode="human"`` opens the env's own pygame window; ``None`` still returns 96×96×3 pixel
    observations (the env always renders its ``state_pixels`` for the observation).
    ``fast`` installs :mod:`car_racing.world.fast_render` (same frames, ~2-3× the steps/s); ``fast=False`` or
    the environment variable ``CAR_RACING_FAST_RENDER=0`` keeps gymnasium's stock renderer.
    """
    import gymnasium as gym  # (here, not at the top: scripts answer --help without loading it)

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    env = gym.make(ENV_ID, render_mode=render_mode, domain_randomize=domain_randomize, continuous=True,
                   **kwargs)
    if fast and os.environ.get(FAST_RENDER_ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off"):
        from car_racing.world.fast_render import install_fast_render

        install_fast_render(env)
    return env


def preprocess_frame(observation: np.ndarray) -> np.ndarray:
    """A 96×96×3 uint8 env observation → the 64×64×3 uint8 frame every stage sees."""
    return cv2.resize(observation, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)
