"""Turning a person's keys or gamepad into CarRacing actions, one env step at a time.

Both inputs are small classes with one pure method, ``update(events, advance=True) -> action``: they
read the pygame events of one step (KEYDOWN/KEYUP, JOYAXISMOTION, JOYBUTTONDOWN/UP; other events are
ignored) and return the float32 ``[steer, gas, brake]`` for that step. No clock and no
``pygame.key.get_pressed`` (which does not see injected events): held keys and stick positions are
tracked from the events, so tests drive them with plain event lists. ``advance=False`` (the game is
paused) tracks the events but leaves the action where it was.

**Keyboard** (arrows or WASD). A held key is not an action held: steering *ramps*. At 50 steps/s:

- ←/→ move steer towards full lock by :data:`STEER_RAMP` (0.07) per step: full lock after 15 steps
  (0.3 s), so a tap of 2–5 steps (40–100 ms) is a 0.14–0.35 correction;
- released (or both held), steer returns to centre by :data:`STEER_RETURN` (0.14) per step, 0.15 s from
  full lock; pressing the other side first returns at that rate, then ramps out;
- ↑ gas ramps up by :data:`GAS_RAMP` (0.08, full after 0.25 s) and down by :data:`GAS_RELEASE` (0.25,
  0.08 s) on release: a tap is a little throttle (the env itself lets gas rise at most 0.1 per step);
- ↓ brake is immediate, :data:`BRAKE` = 0.8 (the gymnasium default: 0.9 and above locks the wheels).

The rates were tuned by reasoning, not yet by driving (no keyboard where this was written): the
wheels' own joint reaches full lock in about 0.1 s, so a 0.3 s ramp still dominates, and centring twice
as fast as steering out keeps the car from wagging after a correction. Change them in one place here.

**Gamepad** (pygame's joystick API; any stick SDL knows): left stick x steers, proportional beyond a
dead zone (:data:`STICK_DEAD_ZONE`, rescaled so steer is continuous: ``sign(x)·(|x| − d)/(1 − d)``);
the right trigger (axis 5 on SDL's Xbox/PlayStation layouts) or button A/cross (0) is gas; the left
trigger (axis 2 on Linux, 4 on Windows and macOS) or button B/circle (1) or X/square (2) is brake,
proportional for triggers. Triggers rest at −1 and read (v + 1)/2; a trigger counts as released
until it first moves (SDL reports 0 for an untouched trigger on some systems).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

STEER_RAMP = 0.07  # per step towards full lock while ←/→ is held (full lock after 15 steps = 0.3 s)
STEER_RETURN = 0.14  # per step back to centre on release (0.15 s from full lock)
GAS_RAMP = 0.08  # per step up while ↑ is held (full gas after 0.25 s)
GAS_RELEASE = 0.25  # per step down on release
BRAKE = 0.8  # immediate while ↓ is held (0.9 and above locks the wheels)
STICK_DEAD_ZONE = 0.12  # |x| below this steers 0 (sticks rarely rest exactly at 0)
TRIGGER_DEAD_ZONE = 0.05  # trigger travel below this is 0


def _pygame() -> Any:
    import os

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    return pygame


def _towards(value: float, target: float, rate: float) -> float:
    """``value`` moved towards ``target`` by at most ``rate``."""
    if value < target:
        return min(target, value + rate)
    return max(target, value - rate)


class KeyboardInput:
    """Arrow keys (or WASD) with ramped steering and gas; see the module docstring for the rates."""

    name = "keyboard"

    def __init__(self, steer_ramp: float = STEER_RAMP, steer_return: float = STEER_RETURN,
                 gas_ramp: float = GAS_RAMP, gas_release: float = GAS_RELEASE, brake: float = BRAKE) -> None:
        pygame = _pygame()
        self.left_keys = {pygame.K_LEFT, pygame.K_a}
        self.right_keys = {pygame.K_RIGHT, pygame.K_d}
        self.gas_keys = {pygame.K_UP, pygame.K_w}
        self.brake_keys = {pygame.K_DOWN, pygame.K_s}
        self._keydown, self._keyup = pygame.KEYDOWN, pygame.KEYUP
        self.steer_ramp, self.steer_return = float(steer_ramp), float(steer_return)
        self.gas_ramp, self.gas_release, self.brake = float(gas_ramp), float(gas_release), float(brake)
        self.held: set[int] = set()
        self.steer = self.gas = 0.0

    def reset(self) -> None:
        """Centre the wheel and lift the gas (held keys stay held: they keep acting in the next episode)."""
        self.steer = self.gas = 0.0

    def _held(self, keys: set[int]) -> bool:
        return not self.held.isdisjoint(keys)

    def update(self, events: Iterable[Any], advance: bool = True) -> np.ndarray:
        for event in events:
            if event.type == self._keydown:
                self.held.add(event.key)
            elif event.type == self._keyup:
                self.held.discard(event.key)
        left, right = self._held(self.left_keys), self._held(self.right_keys)
        if advance:
            target = float(right) - float(left)  # both or neither: centre
            if target == 0.0 or self.steer * target < 0.0:  # centring, or first back to centre when reversing
                self.steer = _towards(self.steer, 0.0, self.steer_return)
            else:
                self.steer = _towards(self.steer, target, self.steer_ramp)
            if self._held(self.gas_keys):
                self.gas = _towards(self.gas, 1.0, self.gas_ramp)
            else:
                self.gas = _towards(self.gas, 0.0, self.gas_release)
        brake = self.brake if self._held(self.brake_keys) else 0.0
        return np.array([self.steer, self.gas, brake], dtype=np.float32)


def _default_brake_axes() -> tuple[int, ...]:
    # SDL's joystick axes for an Xbox/PlayStation pad: LT is axis 2 on Linux, 4 on Windows and macOS.
    return (2,) if sys.platform.startswith("linux") else (4,)


@dataclass
class GamepadLayout:
    """Which joystick axes and buttons drive (SDL joystick numbering)."""

    steer_axis: int = 0
    gas_axes: tuple[int, ...] = (5,)
    brake_axes: tuple[int, ...] = field(default_factory=_default_brake_axes)
    gas_buttons: tuple[int, ...] = (0,)
    brake_buttons: tuple[int, ...] = (1, 2)
    pause_buttons: tuple[int, ...] = (7,)  # Start / Options


def dead_zone(value: float, zone: float) -> float:
    """0 inside ``[-zone, zone]``, else rescaled so the output runs continuously from 0 to ±1."""
    magnitude = abs(value)
    if magnitude <= zone:
        return 0.0
    return float(np.sign(value) * min(1.0, (magnitude - zone) / (1.0 - zone)))


class GamepadInput:
    """A gamepad through pygame's joystick events: analog steer with a dead zone, triggers or buttons for
    gas and brake (see the module docstring). ``joystick`` is kept open (pygame only sends events of
    opened joysticks); events of other joysticks are ignored when ``instance_id`` is known."""

    name = "gamepad"

    def __init__(self, joystick: Any = None, layout: GamepadLayout | None = None,
                 stick_dead_zone: float = STICK_DEAD_ZONE, trigger_dead_zone: float = TRIGGER_DEAD_ZONE) -> None:
        pygame = _pygame()
        self.joystick = joystick
        self.instance_id = joystick.get_instance_id() if joystick is not None else None
        self.layout = layout or GamepadLayout()
        self.stick_dead_zone, self.trigger_dead_zone = float(stick_dead_zone), float(trigger_dead_zone)
        self._types = (pygame.JOYAXISMOTION, pygame.JOYBUTTONDOWN, pygame.JOYBUTTONUP)
        self.axes: dict[int, float] = {}
        self.buttons: set[int] = set()

    def reset(self) -> None:
        """Nothing to reset: the stick and triggers are where the person holds them."""

    def _trigger(self, axes: tuple[int, ...]) -> float:
        travel = max([(self.axes[a] + 1.0) / 2.0 for a in axes if a in self.axes] or [0.0])
        return 0.0 if travel < self.trigger_dead_zone else min(1.0, travel)

    def update(self, events: Iterable[Any], advance: bool = True) -> np.ndarray:
        axis_motion, button_down, button_up = self._types
        for event in events:
            if event.type not in self._types:
                continue
            if self.instance_id is not None and getattr(event, "instance_id", self.instance_id) != self.instance_id:
                continue
            if event.type == axis_motion:
                self.axes[event.axis] = float(event.value)
            elif event.type == button_down:
                self.buttons.add(event.button)
            else:
                self.buttons.discard(event.button)
        layout = self.layout
        steer = dead_zone(self.axes.get(layout.steer_axis, 0.0), self.stick_dead_zone)
        gas = max(self._trigger(layout.gas_axes), float(not self.buttons.isdisjoint(layout.gas_buttons)))
        brake = max(self._trigger(layout.brake_axes),
                    BRAKE if not self.buttons.isdisjoint(layout.brake_buttons) else 0.0)
        return np.array([steer, gas, brake], dtype=np.float32)

    def is_pause(self, event: Any) -> bool:
        """Is ``event`` a press of the gamepad's pause (Start) button?"""
        return event.type == self._types[1] and event.button in self.layout.pause_buttons


def open_input(kind: str) -> KeyboardInput | GamepadInput:
    """The input for ``--input`` (``auto``: the first connected gamepad, else the keyboard).

    Needs ``pygame.display`` initialised (joystick events come through the display's event queue).
    Raises ``ValueError`` for ``gamepad`` when none is connected.
    """
    pygame = _pygame()
    if kind not in ("auto", "keyboard", "gamepad"):
        raise ValueError(f"unknown input {kind!r}")
    if kind != "keyboard":
        pygame.joystick.init()
        if pygame.joystick.get_count() > 0:
            joystick = pygame.joystick.Joystick(0)
            joystick.init()
            return GamepadInput(joystick)
        if kind == "gamepad":
            raise ValueError("no gamepad or joystick connected")
    return KeyboardInput()
