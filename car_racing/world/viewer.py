"""The window a person watches the car in: the env's own full-resolution view, not the 96×96 observation.

CarRacing draws every frame on a 1000×800 surface that rotates with the car and shrinks it to the 96×96
observation. :func:`full_resolution_frame` asks the env to draw that surface once more the way its
``render_mode="human"`` window does (with the skid marks, which the observation leaves out) and returns
it: a pure drawing call that reads the simulation and changes nothing in it, so observations, rewards
and recorded data are byte-for-byte the same with or without a window (tests/test_viewer.py checks it).
It costs one extra draw, about 4 ms per step with :mod:`car_racing.world.fast_render`.

:class:`DrivingView` shows that frame in a resizable window with

- a status line on top (seed, step, the step's reward, the episode's reward against a target),
- an inset of the 64×64 frame V sees (top right),
- bars (top left): the action's steer (centred), gas and brake, and for the agent M's predicted reward,
- an optional centred message box (paused, the episode summary).

:class:`SessionKeys` reads the keys every window shares (Esc and closing end the session, P pauses) and
:class:`WatchedDriver` shows any driver (the agent in ``car_racing_gameplay_simulator.py --render``) in the
view, paced at the env's 50 steps per second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np



class EndSession(Exception):
    """Raised by a driver (or the window: Esc, closing it) to stop the current episode and the session (steps so
    far are kept)."""

FULL_SIZE = (1000, 800)  # CarRacing's WINDOW_W × WINDOW_H
STATUS_HEIGHT = 34
INSET_SCALE = 2  # the 64×64 frame is shown at 128×128
INSET_MARGIN = 12
BAR_WIDTH, BAR_HEIGHT, BAR_GAP = 180, 14, 8
REWARD_TARGET = 800.0  # the seed project's aim per episode
ENV_FPS = 50  # CarRacing-v3's steps per second
PAUSED_MESSAGE = ("PAUSED", "P continues, Esc ends the session")


def full_resolution_frame(env: Any) -> Any:
    """The env's current full-resolution (1000×800) view as a pygame Surface, as its human window draws it,
    or None before the first reset. Draws with the env's own ``_render`` (the fast one when installed)."""
    base = env.unwrapped
    if getattr(base, "car", None) is None:
        return None
    base._render("rgb_array")  # draws base.surf at full size with skid marks (and returns a 600×400 copy)
    return base.surf


@dataclass
class Bar:
    """One labelled bar: ``value`` in ``[low, high]``; centred bars (low < 0 < high) grow from zero."""

    label: str
    value: float
    low: float = 0.0
    high: float = 1.0
    color: tuple[int, int, int] = (80, 200, 255)


def action_bars(action: np.ndarray, prefix: str = "") -> list[Bar]:
    """Steer (centred, −1 … 1), gas and brake (0 … 1) bars for a ``[steer, gas, brake]`` action."""
    steer, gas, brake = (float(v) for v in np.asarray(action, dtype=np.float64).reshape(3))
    return [Bar(f"{prefix}steer {steer:+.2f}", steer, -1.0, 1.0, (80, 200, 255)),
            Bar(f"{prefix}gas {gas:.2f}", gas, 0.0, 1.0, (90, 220, 90)),
            Bar(f"{prefix}brake {brake:.2f}", brake, 0.0, 1.0, (240, 80, 80))]


def status_text(seed: int, step: int, step_reward: float, episode_reward: float,
                target: float = REWARD_TARGET, extra: str = "") -> str:
    """``seed 3   step 412   reward +3.2   episode 612.4 / 800`` (and ``extra``)."""
    text = (f"seed {seed}   step {step}   reward {step_reward:+.1f}   "
            f"episode {episode_reward:.1f} / {target:.0f}")
    return f"{text}   {extra}" if extra else text


class DrivingView:
    """A resizable pygame window: full-resolution env frame, 64×64 inset, status line, bars, messages.

    Opens the window at 1000×(800 + status line), scaled down to fit the desktop when it is smaller.
    ``pygame.display`` must be usable (see ``check_display`` in :mod:`car_racing.world.drivers`).
    """

    def __init__(self, title: str) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        self._pygame = pygame
        pygame.display.init()
        pygame.font.init()
        width, height = FULL_SIZE[0], FULL_SIZE[1] + STATUS_HEIGHT
        desktops = [size for size in pygame.display.get_desktop_sizes() if min(size) > 0]
        if desktops:  # leave room for the title bar and the task bar
            fit = min(1.0, 0.9 * desktops[0][1] / height, 0.95 * desktops[0][0] / width)
            width, height = int(width * fit), int(height * fit)
        self.screen = pygame.display.set_mode((width, height), pygame.RESIZABLE)
        pygame.display.set_caption(title)
        self._font = pygame.font.Font(None, 26)
        self._small = pygame.font.Font(None, 21)
        self._big = pygame.font.Font(None, 44)
        self._last_frame: Any = None  # the last composed frame, under a message box while waiting

    def _fit(self, surface: Any, size: tuple[int, int], smooth: bool = True) -> Any:
        """``surface`` scaled to fit ``size``, keeping its aspect ratio (unchanged when it fits exactly);
        ``smooth=False``: nearest neighbour (crisp pixels, for enlarged 64×64 images)."""
        if surface.get_size() == size:
            return surface
        w, h = surface.get_size()
        ratio = min(size[0] / w, size[1] / h)
        scale = self._pygame.transform.smoothscale if smooth else self._pygame.transform.scale
        return scale(surface, (max(1, int(w * ratio)), max(1, int(h * ratio))))

    def show(self, env: Any, observation: np.ndarray, status: str, bars: Sequence[Bar] = (),
             inset: np.ndarray | None = None, message: Sequence[str] = (), smooth: bool = True) -> None:
        """Draw one step: the env's full-resolution frame (the observation enlarged when ``env`` is None),
        the ``inset`` (an RGB uint8 image, e.g. the 64×64 frame V sees), ``bars``, ``status`` and an
        optional centred ``message`` box; then flip the window. ``smooth=False`` enlarges the observation
        with nearest neighbour (crisp pixels)."""
        pygame = self._pygame
        frame = full_resolution_frame(env) if env is not None else None
        if frame is None:
            frame = pygame.surfarray.make_surface(np.ascontiguousarray(np.asarray(observation).swapaxes(0, 1)))
        area = pygame.Rect(0, STATUS_HEIGHT, self.screen.get_width(), max(1, self.screen.get_height() - STATUS_HEIGHT))
        fitted = self._fit(frame, area.size, smooth)
        frame_rect = fitted.get_rect(center=area.center)
        composed = pygame.Surface(self.screen.get_size())
        composed.blit(fitted, frame_rect)
        if inset is not None:
            self._draw_inset(composed, np.asarray(inset), frame_rect)
        if bars:
            self._draw_bars(composed, bars, frame_rect)
        composed.fill((0, 0, 0), pygame.Rect(0, 0, composed.get_width(), STATUS_HEIGHT))
        composed.blit(self._font.render(status, True, (255, 255, 255)), (10, 8))
        self._last_frame = composed
        self._present(message)

    def message(self, lines: Sequence[str]) -> None:
        """Redraw the last frame with a centred message box (e.g. while waiting for a key)."""
        self._present(lines)

    def _present(self, lines: Sequence[str]) -> None:
        pygame = self._pygame
        if self._last_frame is not None and self._last_frame.get_size() == self.screen.get_size():
            self.screen.blit(self._last_frame, (0, 0))
        else:
            self.screen.fill((0, 0, 0))
        if lines:
            rendered = [(self._big if i == 0 else self._font).render(line, True, (255, 255, 255))
                        for i, line in enumerate(lines)]
            width = max(r.get_width() for r in rendered) + 40
            height = sum(r.get_height() + 8 for r in rendered) + 32
            box = pygame.Surface((width, height), pygame.SRCALPHA)
            box.fill((0, 0, 0, 200))
            y = 16
            for r in rendered:
                box.blit(r, ((width - r.get_width()) // 2, y))
                y += r.get_height() + 8
            self.screen.blit(box, box.get_rect(center=self.screen.get_rect().center))
        pygame.display.flip()

    def _draw_inset(self, target: Any, image: np.ndarray, frame_rect: Any) -> None:
        pygame = self._pygame
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(image.swapaxes(0, 1)))
        size = (image.shape[1] * INSET_SCALE, image.shape[0] * INSET_SCALE)
        surface = pygame.transform.scale(surface, size)  # nearest neighbour: V's pixels as they are
        x = frame_rect.right - size[0] - INSET_MARGIN
        y = frame_rect.top + INSET_MARGIN
        target.fill((255, 255, 255), pygame.Rect(x - 2, y - 2, size[0] + 4, size[1] + 4))
        target.blit(surface, (x, y))
        caption = self._small.render(f"V sees {image.shape[1]}×{image.shape[0]}", True, (255, 255, 255), (0, 0, 0))
        target.blit(caption, (x, y + size[1] + 4))

    def _draw_bars(self, target: Any, bars: Sequence[Bar], frame_rect: Any) -> None:
        pygame = self._pygame
        x0, y0 = frame_rect.left + INSET_MARGIN, frame_rect.top + INSET_MARGIN
        label_width = max(self._small.size(bar.label)[0] for bar in bars) + 8
        panel = pygame.Surface((label_width + BAR_WIDTH + 16, len(bars) * (BAR_HEIGHT + BAR_GAP) + 8),
                               pygame.SRCALPHA)
        panel.fill((0, 0, 0, 160))
        target.blit(panel, (x0 - 6, y0 - 6))
        for i, bar in enumerate(bars):
            y = y0 + i * (BAR_HEIGHT + BAR_GAP)
            target.blit(self._small.render(bar.label, True, (255, 255, 255)), (x0, y))
            bx = x0 + label_width
            pygame.draw.rect(target, (70, 70, 70), pygame.Rect(bx, y, BAR_WIDTH, BAR_HEIGHT))
            span = bar.high - bar.low
            value = min(bar.high, max(bar.low, float(bar.value)))
            start = 0.0 if bar.low < 0.0 < bar.high else bar.low  # centred bars grow from zero
            a = int(round((min(start, value) - bar.low) / span * BAR_WIDTH))
            b = int(round((max(start, value) - bar.low) / span * BAR_WIDTH))
            if b > a:
                pygame.draw.rect(target, bar.color, pygame.Rect(bx + a, y, b - a, BAR_HEIGHT))
            if bar.low < 0.0 < bar.high:
                zero = bx + int(round(-bar.low / span * BAR_WIDTH))
                pygame.draw.line(target, (255, 255, 255), (zero, y - 2), (zero, y + BAR_HEIGHT + 1))

    def close(self) -> None:
        self._pygame.display.quit()


class SessionKeys:
    """The window's own keys: Esc or closing the window raise :class:`EndSession`; P (or ``is_pause(event)``,
    e.g. a gamepad's Start) toggles :attr:`paused`. Other events pass through for the driving input."""

    def __init__(self, is_pause: Callable[[Any], bool] | None = None) -> None:
        import pygame

        self._pygame = pygame
        self._is_pause = is_pause
        self.paused = False

    def read(self, events: Iterable[Any]) -> list[Any]:
        pygame = self._pygame
        events = list(events)
        for event in events:
            if event.type == pygame.QUIT:
                raise EndSession("window closed")
            if event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
                raise EndSession("Esc pressed")
            if (event.type == pygame.KEYDOWN and event.key == pygame.K_p) or \
                    (self._is_pause is not None and self._is_pause(event)):
                self.paused = not self.paused
        return events


def open_driving_session(title: str, input_kind: str, flag: str, instead: str = "") -> tuple[DrivingView, Any, SessionKeys]:
    """The window, the person's input (``auto``, ``keyboard`` or ``gamepad``) and the session keys, as every
    session a person drives opens them. One-line UsageErrors: ``"{flag}: cannot open a window (...)"`` (then
    ``instead``), or the asked input missing (the window is closed again)."""
    import pygame

    from car_racing.common.cli import UsageError
    from car_racing.world.human_input import GamepadInput, open_input

    try:
        view = DrivingView(title)
    except pygame.error as err:
        raise UsageError(f"{flag}: cannot open a window ({err})" + (f"; {instead}" if instead else "")) from None
    try:
        device = open_input(input_kind)
    except ValueError as err:
        view.close()
        raise UsageError(f"--input {input_kind}: {err}; connect one or use --input keyboard") from None
    gamepad = device if isinstance(device, GamepadInput) else None
    return view, device, SessionKeys(gamepad.is_pause if gamepad is not None else None)  # Esc, closing, P / Start


class WatchedDriver:
    """Any driver shown in a :class:`DrivingView` as it drives: the full-resolution frame, the 64×64 inset,
    bars of its action and, when the driver has a ``predicted_reward`` (the agent: M's prediction of the
    last step's reward), a bar of that beside the real reward in the status line. Paced at ``fps``
    (0 = as fast as possible); P pauses, Esc or closing the window end the run (:class:`EndSession`).
    A rollout driver itself (``applied`` and ``episode_info`` pass through)."""

    def __init__(self, driver: Any, view: DrivingView, fps: int = ENV_FPS,
                 event_source: Callable[[], Iterable[Any]] | None = None, label: str = "C ") -> None:
        import pygame

        self.driver, self.view, self.fps, self.label = driver, view, int(fps), label
        self.event_source = event_source if event_source is not None else pygame.event.get
        self.keys = SessionKeys()
        self._clock = pygame.time.Clock()
        self._seed = 0
        self._previous_reward = 0.0

    @property
    def episode_info(self) -> dict[str, Any]:
        return getattr(self.driver, "episode_info", {})

    def reset(self, env: Any, seed: int) -> None:
        self._seed, self._previous_reward = int(seed), 0.0
        self.driver.reset(env, seed)

    def applied(self, action: np.ndarray) -> None:
        if hasattr(self.driver, "applied"):
            self.driver.applied(action)

    def _show(self, env: Any, observation: np.ndarray, inset: np.ndarray, step: int, episode_reward: float,
              action: np.ndarray, message: Sequence[str] = ()) -> None:
        step_reward = episode_reward - self._previous_reward if step > 0 else 0.0
        bars = action_bars(action, self.label)
        predicted = getattr(self.driver, "predicted_reward", None)
        if hasattr(self.driver, "predicted_reward"):
            value = 0.0 if predicted is None else float(predicted)
            bars.append(Bar(f"M reward {value:+.2f}", value, -1.0, 4.0, (250, 200, 60)))
        status = status_text(self._seed, step, step_reward, episode_reward, extra="P pause   Esc end")
        self.view.show(env, observation, status, bars, inset=inset, message=message)
        if self.fps > 0:
            self._clock.tick(self.fps)

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        from car_racing.world.envs import preprocess_frame

        inset = preprocess_frame(observation)
        self.keys.read(self.event_source())
        while self.keys.paused:  # time stops: the driver is not asked, the env not stepped
            self._show(env, observation, inset, step, episode_reward, np.zeros(3), PAUSED_MESSAGE)
            self.keys.read(self.event_source())
        action = np.asarray(self.driver.act(observation, env, step, episode_reward), dtype=np.float32)
        self._show(env, observation, inset, step, episode_reward, action)
        self._previous_reward = episode_reward
        return action
