"""A headless stand-in for a person at the keyboard: ``--record.driver keyboard``.

:class:`KeyboardDriver` decides, each step, which of the four arrow keys are held — never an analogue value —
and sends those key states through **the recorder's own keyboard path**: it builds the ``KEYDOWN``/``KEYUP``
events a person's key presses would produce and calls :meth:`car_racing.world.human_input.KeyboardInput.update`,
the function that turns the human driver's events into actions (its steering and gas ramps, its 0.8 brake).
What it returns, and what is recorded, is that function's output: only actions a keyboard can produce.

What it sees, and how late
--------------------------
Its eyes are the autopilot's reading of the track (:class:`car_racing.world.autopilot.AutopilotDriver`, clean:
no noise): each step it asks the autopilot what it would do from the current state (the steering that follows
the road, and gas or brake for the speed that the next bends allow). It acts on what it saw ``reaction_steps``
steps ago (default 10 = 0.2 s at 50 steps/s): the key decisions of step ``t`` use the reading of step
``t - reaction_steps`` (the first reading until then). Only its own hands are known at once: how far the
steering has ramped (the keyboard ramp's state), as a person feels how long a key has been held.

- **Steering** (←/→): with the wanted steering ``s*`` (from the delayed reading) and the ramp's steering ``s``,
  it holds the key towards ``s*`` while ``s`` lags it by more than :data:`STEER_BAND`, lets go while ``s``
  has passed it by more than the band (the ramp then returns towards centre), and otherwise keeps the keys as
  they are: taps and holds, as a person keeps a steady curve with on/off keys. ``|s*|`` below
  :data:`STEER_DEAD` is straight ahead: no key.
- **Gas** (↑): held while the autopilot's gas is at least :data:`GAS_ON` (it wants ≳ 3 units/s more speed),
  released below :data:`GAS_OFF` or while braking. **Brake** (↓): held while the autopilot brakes at least
  :data:`BRAKE_ON` (≳ 5 units/s too fast), released below :data:`BRAKE_OFF`.

Mistakes (seeded)
-----------------
A RNG seeded by the episode seed (and a salt) decides mistakes: at each braking point (the brake decision
switching on) and each corner entry (``|s*|`` rising past :data:`CORNER`), with probability ``mistakes``:

- **late braking**: the brake is pressed 8–25 steps (0.16–0.5 s) later, the gas kept as it was meanwhile;
- **late turn-in** (overshooting the corner): the steering key is not pressed for 5–15 steps;
- **held too long**: the steering key towards the corner stays held for 5–15 steps whatever the ramp says.

:attr:`episode_info` (recorded in the episode's meta) holds ``reaction_steps``, ``mistakes`` and the counts
``late_brakes``, ``late_turns``, ``long_turns``. :attr:`key_log` holds the episode's key states, one
``(left, right, up, down)`` row per step: running a fresh :class:`KeyboardInput` over them gives the episode's
actions again (the tests do). The same seed gives the same keys and actions, in any process.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from car_racing.world.autopilot import AutopilotDriver
from car_racing.world.drivers import ENV_FPS

REACTION_STEPS = 10  # 0.2 s at 50 steps/s
MISTAKES = 0.2  # chance of a mistake at each braking point and corner entry
STEER_DEAD = 0.05  # |wanted steer| below this: straight ahead, no key
STEER_BAND = 0.1  # the ramp may lag or pass the wanted steer by this much before a key changes
CORNER = 0.4  # |wanted steer| rising past this is a corner entry (a chance of a steering mistake)
GAS_OFF = 0.1  # the autopilot's gas below this: ↑ released
GAS_BAND = 0.15  # the gas ramp may lag or pass the wanted gas by this much before ↑ changes
BRAKE_ON, BRAKE_OFF = 0.25, 0.05  # the autopilot's brake: ↓ pressed at or above BRAKE_ON, released below BRAKE_OFF
LATE_BRAKE_STEPS = (8, 26)  # [low, high) steps a late brake comes late
TURN_MISTAKE_STEPS = (5, 16)  # [low, high) steps of a late or too long turn
EYES = {"lateral_accel": 120.0, "lookahead_gain": 0.3, "yaw_gain": 0.0, "cte_gain": 0.0}  # a person's pace and
# way of steering: the autopilot's reading with these settings (see the module docstring)
MISTAKE_SEED_SALT = 0x4B3B_0A2D  # decorrelates the mistakes from the env's track RNG

LEFT, RIGHT, UP, DOWN = range(4)  # columns of key_log


class KeyboardDriver:
    """Arrow keys held or not, from the autopilot's delayed reading, through the keyboard ramp (module docstring).

    Follows the :class:`car_racing.world.drivers.Driver` protocol. ``reaction_steps`` (≥ 0) is the reaction
    delay in env steps; ``mistakes`` in [0, 1] the chance of a mistake at each braking point and corner entry.
    """

    def __init__(self, reaction_steps: int = REACTION_STEPS, mistakes: float = MISTAKES) -> None:
        if reaction_steps < 0:
            raise ValueError(f"reaction_steps must be >= 0, got {reaction_steps}")
        if not 0.0 <= mistakes <= 1.0:
            raise ValueError(f"mistakes must be in [0, 1], got {mistakes}")
        from car_racing.world.human_input import KeyboardInput  # (pygame's key codes and events; no window)

        self._keyboard_input = KeyboardInput
        self.reaction_steps = int(reaction_steps)
        self.mistakes = float(mistakes)
        self.eyes = AutopilotDriver(noise=0.0, **EYES)
        self.episode_info: dict[str, float] = {}
        self.key_log: list[tuple[bool, bool, bool, bool]] = []
        self._reset_state(0)

    def _reset_state(self, seed: int) -> None:
        self.input = self._keyboard_input()  # a fresh ramp: no key held, wheel centred, no gas
        self._rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, MISTAKE_SEED_SALT])
        self._seen: deque[Seen] = deque(maxlen=self.reaction_steps + 1)
        self._held = [False, False, False, False]
        self._wanted_steer = 0.0  # |s*| of the previous decision (corner entries)
        self._braking = False  # the brake decision of the previous step, before mistakes (braking points)
        self._brake_late = 0  # steps left of a late brake
        self._turn_late = 0  # steps left of a late turn-in
        self._turn_long = 0  # steps left of a turn held too long
        self._turn_side = 0  # the corner's side (+1 right, -1 left) of a steering mistake
        self.key_log = []
        self.episode_info = {"reaction_steps": float(self.reaction_steps), "mistakes": self.mistakes,
                             "late_brakes": 0.0, "late_turns": 0.0, "long_turns": 0.0}

    def reset(self, env: Any, seed: int) -> None:
        self.eyes.reset(env, seed)
        self._reset_state(seed)

    def _mistake(self) -> bool:
        return self.mistakes > 0.0 and float(self._rng.uniform()) < self.mistakes

    def decide(self, seen: np.ndarray) -> list[bool]:
        """The keys held this step (left, right, up, down) from a reading ``[steer, gas, brake]`` of the
        autopilot's, the ramp's steering and the keys held the step before."""
        steer_wanted, gas_wanted, brake_wanted = (float(v) for v in seen)
        left, right, up, down = self._held
        ramp = self.input.steer

        # --- steering: on/off keys keep the ramp within a band around the wanted steering
        side = 1 if steer_wanted > 0 else -1
        if abs(steer_wanted) < STEER_DEAD:
            left = right = False
        else:
            towards = right if side > 0 else left
            if side * (steer_wanted - ramp) > STEER_BAND:
                towards = True
            elif side * (ramp - steer_wanted) > STEER_BAND:
                towards = False
            left, right = (False, towards) if side > 0 else (towards, False)
        if abs(steer_wanted) >= CORNER > abs(self._wanted_steer) and self._mistake():  # a corner entry
            self._turn_side = side
            steps = int(self._rng.integers(*TURN_MISTAKE_STEPS))
            if self._rng.uniform() < 0.5:
                self._turn_late, self.episode_info["late_turns"] = steps, self.episode_info["late_turns"] + 1
            else:
                self._turn_long, self.episode_info["long_turns"] = steps, self.episode_info["long_turns"] + 1
        self._wanted_steer = steer_wanted
        if self._turn_late > 0:  # not yet turning in: no key towards the corner
            self._turn_late -= 1
            left, right = (left, False) if self._turn_side > 0 else (False, right)
        elif self._turn_long > 0:  # still turning: the key towards the corner stays held
            self._turn_long -= 1
            left, right = (False, True) if self._turn_side > 0 else (True, False)

        # --- gas and brake, with hysteresis
        braking = brake_wanted >= BRAKE_ON or (self._braking and brake_wanted >= BRAKE_OFF)
        if braking and not self._braking and self._mistake():  # a braking point
            self._brake_late = int(self._rng.integers(*LATE_BRAKE_STEPS))
            self.episode_info["late_brakes"] += 1
        self._braking = braking
        if self._brake_late > 0:  # braking late: the feet stay as they were
            self._brake_late -= 1
            down = False
        else:
            down = braking
            if braking or gas_wanted < GAS_OFF:
                up = False
            elif gas_wanted - self.input.gas > GAS_BAND:
                up = True
            elif self.input.gas - gas_wanted > GAS_BAND:
                up = False
        return [left, right, up, down]

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        """Look now, decide the keys on what was seen ``reaction_steps`` ago, send them through the ramp."""
        self._seen.append(snapshot(env.unwrapped.car))
        old = self._seen[0]
        reading = self.eyes.act(observation, old.extrapolated(len(self._seen) - 1), step, episode_reward)
        held = self.decide(reading)
        events = key_events(held, self._held)
        self._held = held
        self.key_log.append((held[LEFT], held[RIGHT], held[UP], held[DOWN]))
        return self.input.update(events)


def key_events(held: Any, before: Any) -> list[Any]:
    """The pygame ``KEYDOWN``/``KEYUP`` events that take the arrow keys from ``before`` to ``held`` (each
    ``(left, right, up, down)`` held or not): what a keyboard sends when a person presses and lets go."""
    import pygame

    keys = (pygame.K_LEFT, pygame.K_RIGHT, pygame.K_UP, pygame.K_DOWN)
    return [pygame.event.Event(pygame.KEYDOWN if now else pygame.KEYUP, key=key)
            for key, now, was in zip(keys, held, before) if bool(now) != bool(was)]


def keys_to_events(key_log: Any) -> list[list[Any]]:
    """The events of each step of a key log ``(T, 4)`` (:attr:`KeyboardDriver.key_log`), from no key held."""
    before = (False,) * 4
    steps = []
    for row in np.asarray(key_log, dtype=bool).reshape(-1, 4):
        steps.append(key_events(row, before))
        before = tuple(row)
    return steps


# --- what it saw: the car's state at one step, and where that state puts the car a little later -----------------

class _SeenHull:
    """The parts of a Box2D hull the autopilot reads, frozen at one step (``angle`` counter-clockwise)."""

    def __init__(self, position: np.ndarray, angle: float, velocity: np.ndarray, angular_velocity: float) -> None:
        self.position = (float(position[0]), float(position[1]))
        self.angle = float(angle)
        self.linearVelocity = (float(velocity[0]), float(velocity[1]))
        self.angularVelocity = float(angular_velocity)

    def GetLocalPoint(self, point: Any) -> tuple[float, float]:  # noqa: N802 (Box2D's name)
        dx, dy = point[0] - self.position[0], point[1] - self.position[1]
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return cos * dx + sin * dy, -sin * dx + cos * dy

    def GetWorldVector(self, vector: Any) -> tuple[float, float]:  # noqa: N802 (Box2D's name)
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return cos * vector[0] - sin * vector[1], sin * vector[0] + cos * vector[1]


@dataclass
class Seen:
    """The car as seen at one step: hull pose and motion, and per wheel whether it is on the road and its spin."""

    position: np.ndarray
    angle: float
    velocity: np.ndarray
    angular_velocity: float
    wheels: list[SimpleNamespace]

    def extrapolated(self, steps: int) -> SimpleNamespace:
        """An env-like object whose car is this one moved ``steps`` env steps on at constant speed and yaw rate
        (where a person expects the car to be by the time their hands act); the wheels as seen."""
        position, velocity, angle = self.position.copy(), self.velocity.copy(), self.angle
        turn = self.angular_velocity / ENV_FPS
        cos, sin = math.cos(turn), math.sin(turn)
        for _ in range(steps):
            position = position + velocity / ENV_FPS
            velocity = np.array([cos * velocity[0] - sin * velocity[1], sin * velocity[0] + cos * velocity[1]])
            angle += turn
        car = SimpleNamespace(hull=_SeenHull(position, angle, velocity, self.angular_velocity), wheels=self.wheels)
        return SimpleNamespace(unwrapped=SimpleNamespace(car=car))


def snapshot(car: Any) -> Seen:
    """What the driver sees of ``car`` (``env.unwrapped.car``) now."""
    hull = car.hull
    wheels = [SimpleNamespace(tiles=[None] * len(w.tiles), omega=float(w.omega), wheel_rad=float(w.wheel_rad))
              for w in car.wheels]
    return Seen(np.array(hull.position, dtype=np.float64), float(hull.angle),
                np.array(hull.linearVelocity, dtype=np.float64), float(hull.angularVelocity), wheels)
