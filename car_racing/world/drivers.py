"""Drivers for recording: random actions and a person at the keyboard or a gamepad.

Both follow the :class:`Driver` protocol (defined here; the rollout loop drives it) (``reset(env, seed)``,
``act(observation, env, step, episode_reward)`` → float32 ``[steer, gas, brake]``, attribute
``episode_info``). The scripted expert lives in :mod:`car_racing.world.autopilot`.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from car_racing.common.cli import UsageError
from car_racing.world.viewer import EndSession  # noqa: F401 (a driver raises it; the window's keys too)

ACTION_LOW = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0], dtype=np.float32)
ENV_FPS = 50  # CarRacing-v3 runs at 50 steps per second (its metadata["render_fps"])


class Driver(Protocol):
    """What the rollout loop (:mod:`car_racing.episodes.rollout`) drives: a new episode, then one action per
    step from the raw 96×96×3 observation."""

    def reset(self, env: Any, seed: int) -> None: ...

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray: ...


class RandomDriver:
    """Random actions, in one of two styles (``style``):

    - ``brownian`` — the random policy of the World Models reproductions (ctallec/world-models'
      ``sample_continuous_policy``), a clipped Brownian motion in action space: ``a_0 ~ U(low, high)``,
      ``a_{t+1} = clip(a_t + sqrt(dt)·ε_t, low, high)`` with ``ε_t ~ N(0, I)`` and ``dt = 1/50`` (one env step). Gas
      and brake wander together, so the car mostly stands or crawls near the start line.
    - ``driving`` — what CMA-ES's first candidates do: the gas on (an Ornstein–Uhlenbeck process around 0.7, std
      0.15, clipped to [0.3, 1]), no brake, and a steering that wanders slowly around a small per-episode bias (OU
      around U(−0.2, 0.2), std 0.3, correlation time 1 s): the car drives off at speed and misses the first bends
      it meets, and M sees what that costs.

    The RNG is seeded by the episode seed, so an episode is reproducible.
    """

    STYLES = ("brownian", "driving")

    def __init__(self, dt: float = 1.0 / ENV_FPS, style: str = "brownian") -> None:
        if style not in self.STYLES:
            raise ValueError(f"style {style!r}: expected one of {', '.join(self.STYLES)}")
        self.dt = float(dt)
        self.style = style
        self.episode_info: dict[str, float] = {}
        self._rng = np.random.default_rng(0)
        self._action = np.zeros(3, dtype=np.float32)
        self._bias = 0.0

    def reset(self, env: Any, seed: int) -> None:
        self._rng = np.random.default_rng(int(seed))
        if self.style == "brownian":
            self._action = self._rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32)
        else:
            self._bias = float(self._rng.uniform(-0.2, 0.2))
            self._action = np.array([self._bias, 0.7, 0.0], dtype=np.float32)

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        action = self._action
        step_noise = self._rng.standard_normal(3)
        if self.style == "brownian":
            walked = action + math.sqrt(self.dt) * step_noise
            self._action = np.clip(walked, ACTION_LOW, ACTION_HIGH).astype(np.float32)
        else:  # OU steps of correlation time 1 s: x ← m + ρ·(x − m) + std·sqrt(1 − ρ²)·ε
            rho = math.exp(-self.dt)
            keep = math.sqrt(1.0 - rho * rho)
            steer = self._bias + rho * (float(action[0]) - self._bias) + 0.3 * keep * step_noise[0]
            gas = 0.7 + rho * (float(action[1]) - 0.7) + 0.15 * keep * step_noise[1]
            self._action = np.array([np.clip(steer, -1.0, 1.0), np.clip(gas, 0.3, 1.0), 0.0], dtype=np.float32)
        return action.copy()


def check_display(flag: str = "--record.driver human", instead: str = "use --record.driver autopilot") -> None:
    """Raise a one-line :class:`UsageError` naming ``flag`` when no window can be opened (a headless Linux
    machine); ``instead`` says what to do there."""
    if not sys.platform.startswith("linux"):
        return  # macOS and Windows always have a window system
    if os.environ.get("SDL_VIDEODRIVER", "").lower() in ("dummy", "offscreen"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UsageError(f"{flag} needs a display (DISPLAY/WAYLAND_DISPLAY unset); on a headless machine {instead}")


class HumanDriver:
    """A person drives, with the keyboard or a gamepad, watching the env's full-resolution view.

    Input (:mod:`car_racing.world.human_input`): ``input_kind`` is ``auto`` (a connected gamepad, else the
    keyboard), ``keyboard`` (arrows or WASD, steering and gas ramp while held) or ``gamepad``. The window
    (:class:`car_racing.world.viewer.DrivingView`) shows the env's own 1000×800 view rotating with the car, the
    64×64 frame V will see, the action's bars and a status line (seed, step, reward, the episode's reward
    against the 800 target, and :attr:`recorded_note`: how much the recorder has recorded).

    ``P`` (or the gamepad's Start) pauses: time stops and nothing is recorded until it is pressed again.
    Esc or closing the window raises :class:`car_racing.episodes.rollout.EndSession`, which ends the session keeping every step so
    far. :meth:`show_summary` shows an episode's result and waits for Enter/Space (gamepad: A or Start).
    ``event_source`` returns the pending events (default ``pygame.event.get``; tests inject lists).
    ``fps`` paces the session (the env's 50; 0 = as fast as possible, for tests).
    """

    CONTINUE_KEYS = ("K_RETURN", "K_KP_ENTER", "K_SPACE")

    def __init__(self, input_kind: str = "auto", fps: int = ENV_FPS,
                 event_source: Callable[[], Iterable[Any]] | None = None) -> None:
        check_display()
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        from car_racing.world.viewer import open_driving_session

        self._pygame = pygame
        self.fps = int(fps)
        self.event_source = event_source if event_source is not None else pygame.event.get
        self.episode_info: dict[str, float] = {}
        self._seed = 0
        self._previous_reward = 0.0
        self.recorded_note = ""  # how much is recorded (the recorder sets it), shown on the status line
        self.view, self.input, self.keys = open_driving_session(
            "CarRacing-v3 recording: arrows/WASD or a gamepad drive, P pauses, Esc ends the session", input_kind,
            "--record.driver human", "use --record.driver autopilot")
        self._continue_keys = {getattr(pygame, name) for name in self.CONTINUE_KEYS}
        self._clock = pygame.time.Clock()

    def reset(self, env: Any, seed: int) -> None:
        self._seed = int(seed)
        self._previous_reward = 0.0
        self.input.reset()  # wheel centred, no gas; keys still held keep acting

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        """Read the input until the game is not paused; the action for this step."""
        from car_racing.world.envs import preprocess_frame
        from car_racing.world.viewer import action_bars, status_text

        inset = preprocess_frame(observation)
        step_reward = episode_reward - self._previous_reward if step > 0 else 0.0
        while True:
            events = self.keys.read(self.event_source())
            action = self.input.update(events, advance=not self.keys.paused)
            extra = f"{self.input.name}   P pause   Esc end"
            if self.recorded_note:
                extra += f"   {self.recorded_note}"
            status = status_text(self._seed, step, step_reward, episode_reward, extra=extra)
            message = ("PAUSED", "P (gamepad: Start) continues, Esc ends the session") if self.keys.paused else ()
            self.view.show(env, observation, status, action_bars(action), inset=inset, message=message)
            if self.fps > 0:
                self._clock.tick(self.fps)
            if not self.keys.paused:
                self._previous_reward = episode_reward
                return action

    def show_summary(self, lines: Sequence[str]) -> bool:
        """Show an episode's summary over the last frame until Enter/Space (gamepad: A or Start): True, or
        Esc / a closed window: False (the session ends)."""
        pygame = self._pygame
        prompt = "Enter or Space (gamepad: A or Start) continues, Esc ends the session"
        while True:
            self.view.message([*lines, prompt])
            for event in self.event_source():
                if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                    return False
                if event.type == pygame.KEYDOWN and event.key in self._continue_keys:
                    return True
                if event.type == pygame.JOYBUTTONDOWN and event.button in (0, 7):
                    return True
            if self.fps > 0:
                self._clock.tick(self.fps)

    def close(self) -> None:
        self.view.close()
