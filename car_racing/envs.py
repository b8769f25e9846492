"""Creating the CarRacing-v3 env: the one place the project calls ``gym.make``."""

from __future__ import annotations

import os

import gymnasium as gym

ENV_ID = "CarRacing-v3"
MAX_EPISODE_STEPS = 1000  # gym.make's TimeLimit for CarRacing-v3


def make_env(render_mode: str | None = None, domain_randomize: bool = False,
             max_episode_steps: int | None = None) -> gym.Env:
    """A continuous-action CarRacing-v3 env.

    ``render_mode="human"`` opens the env's own pygame window; ``None`` still returns 96×96×3 pixel
    observations (the env always renders its ``state_pixels`` for the observation).
    """
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    return gym.make(ENV_ID, render_mode=render_mode, domain_randomize=domain_randomize, continuous=True,
                    **kwargs)
