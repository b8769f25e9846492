"""Drivers for recording: random actions and a human at the keyboard.

Both follow the :class:`car_racing.rollout.Driver` protocol (``reset(env, seed)``,
``act(observation, env, step, episode_reward)`` → float32 ``[steer, gas, brake]``, attribute
``episode_info``). The scripted expert lives in :mod:`car_racing.autopilot`.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Iterable

import numpy as np

from car_racing.cli import UsageError
from car_racing.rollout import EndSession

ACTION_LOW = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0], dtype=np.float32)
ENV_FPS = 50  # CarRacing-v3 runs at 50 steps per second (its metadata["render_fps"])


class RandomDriver:
    """Smoothly varying random actions: the random policy of the World Models reproductions
    (ctallec/world-models' ``sample_continuous_policy``), a clipped Brownian motion in action space.

    ``a_0 ~ U(low, high)``, ``a_{t+1} = clip(a_t + sqrt(dt)·ε_t, low, high)`` with ``ε_t ~ N(0, I)`` and
    ``dt = 1/50`` (one env step). The RNG is seeded by the episode seed, so an episode is reproducible.
    """

    def __init__(self, dt: float = 1.0 / ENV_FPS) -> None:
        self.dt = float(dt)
        self.episode_info: dict[str, float] = {}
        self._rng = np.random.default_rng(0)
        self._action = np.zeros(3, dtype=np.float32)

    def reset(self, env: Any, seed: int) -> None:
        self._rng = np.random.default_rng(int(seed))
        self._action = self._rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32)

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        action = self._action
        step_noise = math.sqrt(self.dt) * self._rng.standard_normal(3)
        self._action = np.clip(action + step_noise, ACTION_LOW, ACTION_HIGH).astype(np.float32)
        return action.copy()


def check_display() -> None:
    """Raise a one-line :class:`UsageError` when no window can be opened (a headless Linux machine)."""
    if not sys.platform.startswith("linux"):
        return  # macOS and Windows always have a window system
    if os.environ.get("SDL_VIDEODRIVER", "").lower() in ("dummy", "offscreen"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UsageError("--driver human needs a display (DISPLAY/WAYLAND_DISPLAY unset); "
                         "on a headless machine use --driver autopilot")


class HumanDriver:
    """A person drives with the arrow keys in a pygame window showing the observation the driver sees.

    ←/→ steer (full lock), ↑ gas (1.0), ↓ brake (0.8, the gymnasium default: 0.9 and above locks the
    wheels); a key held is an action held. Esc or closing the window raises :class:`EndSession`, which
    ends the session keeping every step so far. Held keys are tracked from KEYDOWN/KEYUP events (so
    injected events work: ``pygame.key.get_pressed`` does not see them); ``event_source`` returns the
    pending events (default ``pygame.event.get``). ``fps`` paces the session (the env's 50; 0 = as fast
    as possible, for tests). The window is the 96×96 observation scaled ×``scale`` plus a status line.
    """

    STATUS_HEIGHT = 36

    def __init__(self, scale: int = 6, fps: int = ENV_FPS,
                 event_source: Callable[[], Iterable[Any]] | None = None) -> None:
        check_display()
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        self._pygame = pygame
        self.scale = int(scale)
        self.fps = int(fps)
        self.event_source = event_source if event_source is not None else pygame.event.get
        self.episode_info: dict[str, float] = {}
        self.held: set[int] = set()
        self._seed = 0
        try:
            pygame.display.init()
            pygame.font.init()
            size = 96 * self.scale
            self._screen = pygame.display.set_mode((size, size + self.STATUS_HEIGHT))
        except pygame.error as err:
            raise UsageError(f"--driver human: cannot open a window ({err}); use --driver autopilot") from None
        pygame.display.set_caption("CarRacing-v3 recording: arrows drive, Esc ends the session")
        self._font = pygame.font.Font(None, 26)
        self._clock = pygame.time.Clock()

    def reset(self, env: Any, seed: int) -> None:
        self._seed = int(seed)  # held keys carry over: a key still held keeps acting in the next episode

    def _read_events(self) -> None:
        pygame = self._pygame
        for event in self.event_source():
            if event.type == pygame.QUIT:
                raise EndSession("window closed")
            if event.type == pygame.KEYDOWN:
                if event.key == pygame.K_ESCAPE:
                    raise EndSession("Esc pressed")
                self.held.add(event.key)
            elif event.type == pygame.KEYUP:
                self.held.discard(event.key)

    def action(self) -> np.ndarray:
        """The action for the keys held now."""
        pygame = self._pygame
        steer = float(pygame.K_RIGHT in self.held) - float(pygame.K_LEFT in self.held)
        gas = 1.0 if pygame.K_UP in self.held else 0.0
        brake = 0.8 if pygame.K_DOWN in self.held else 0.0
        return np.array([steer, gas, brake], dtype=np.float32)

    def _draw(self, observation: np.ndarray, step: int, episode_reward: float) -> None:
        pygame = self._pygame
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(observation.swapaxes(0, 1)))
        size = 96 * self.scale
        self._screen.blit(pygame.transform.scale(surface, (size, size)), (0, 0))
        self._screen.fill((0, 0, 0), pygame.Rect(0, size, size, self.STATUS_HEIGHT))
        text = f"seed {self._seed}   step {step}   reward {episode_reward:7.1f}   Esc: end session"
        self._screen.blit(self._font.render(text, True, (255, 255, 255)), (8, size + 9))
        pygame.display.flip()

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        self._read_events()
        self._draw(observation, step, episode_reward)
        if self.fps > 0:
            self._clock.tick(self.fps)
        return self.action()

    def close(self) -> None:
        self._pygame.display.quit()
