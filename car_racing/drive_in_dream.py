"""Drive inside the dream: you at the wheel of M, the memory model, instead of the real env.

The same window, keys, ramping, gamepad and pause as the human recorder (``recorded_frames.py --record.driver
human``), but the world is M: each step M reads the current z and your action, predicts the reward and the
episode's end, and samples the next z at temperature τ; the picture is V's decoding of that z (enlarged
with crisp pixels). The dream starts from a real frame: a fresh track (``--seed``), or a recorded episode
(``--episode`` in ``--data-dir``), after ``--start-step`` real steps that M reads first (its state is where
the real drive left it; the first ~50 frames of an episode are the camera zooming in).

Keys (besides arrows/WASD or the gamepad to drive, P pause, Esc or closing the window to end):

- ``-`` / ``=`` (or ``[`` / ``]``): τ down / up by 0.1 (0 = M's most likely next z, no sampling);
- ``O``: dropout on/off (a new mask on M's h before its heads with p = ``--dropout`` while on);
- ``W``: wake up: beside the dream, the real frame the same actions give from the same start (the real env
  replays them; it is stepped only while awake), with the real return so far;
- ``R``: restart the dream from the start frame.

The side panel shows M's predicted reward this step and summed, the done probability, τ and dropout. Each step
is the step every dream takes (:meth:`car_racing.models.mdn_rnn.MDNRNN.dream_step`); where M first says done (the
done probability above 0.5) a training dream would have ended: the status line says so, and you may drive on.
``--record out.mp4`` writes the session (what the window shows, with its status line) as H.264.
The end prints the summed predicted reward (and the real return when you woke up).

    python car_racing/drive_in_dream.py                              # a fresh track, seed 0
    python car_racing/drive_in_dream.py --episode 3 --start-step 120 # from a recorded episode
    python car_racing/drive_in_dream.py --checkpoint-dir checkpoints/pretrained/dream --record runs/dream_drive.mp4
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import agent_dir, checkpoint_paths, load_model, resolve_device

DREAM_SCALE, REAL_SCALE = 6, 4  # 64×64 dream and 96×96 real frame both shown 384 pixels tall
PANEL = 64 * DREAM_SCALE
VIDEO_FPS = 50  # the recording plays the dream at the env's speed, whatever --fps was
TEMPERATURE_STEP, MAX_TEMPERATURE = 0.1, 3.0
SESSION_OPTIONS: dict[str, Any] = {}  # tests set fps=0 and an event_source here (as the recorder's tests do)


@dataclass
class Args:
    """Drive inside M's dream with the keyboard or a gamepad; wake up to see the real frame beside it."""

    checkpoint_dir: Optional[str] = None
    """folder with vision_model.pth and memory_model.pth (the shipped agents' too: checkpoints/pretrained/dream, …) (default: checkpoints/ once you have trained V and M there, else the shipped agent in checkpoints/pretrained/default)"""
    data_dir: str = "data"
    """the recording --episode is taken from"""
    episode: Optional[int] = None
    """start from this recorded episode (its track and actions up to --start-step); default: a fresh track"""
    seed: int = 0
    """the fresh track's seed (without --episode), and the seed of the dream's sampling"""
    start_step: int = 60
    """real steps before the dream starts (a fresh track: standing still while the camera zooms in)"""
    temperature: float = 1.0
    """τ at the start (keys - and = change it live)"""
    dropout: float = 0.1
    """p of the dropout key O (Dropout's Dream Land used 0.1)"""
    dropout_on: bool = False
    """start with dropout on"""
    input: Literal["auto", "keyboard", "gamepad"] = "auto"
    """auto (a connected gamepad, else the keyboard), keyboard (arrows or WASD, ramped) or gamepad"""
    steps: int = 1000
    """the dream ends after this many steps (CarRacing's episode limit)"""
    record: Optional[str] = None
    """write the session to this MP4 (H.264), e.g. runs/dream_drive.mp4"""
    fps: int = 50
    """steps per second (the env's 50)"""
    device: str = "cpu"
    """cpu (batch 1 runs fastest there), auto or cuda[:N]"""


def check_args(args: Args) -> None:
    if args.start_step < 0 or args.steps < 1 or args.fps < 0:
        raise UsageError("--start-step must be >= 0, --steps >= 1 and --fps >= 0")
    if not 0 <= args.temperature <= MAX_TEMPERATURE:
        raise UsageError(f"--temperature {args.temperature}: expected 0 <= τ <= {MAX_TEMPERATURE}")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout {args.dropout}: expected 0 <= p < 1")
    if args.record is not None and not args.record.lower().endswith(".mp4"):
        raise UsageError(f"--record {args.record}: expected an .mp4 path")


def start_point(args: Args) -> tuple[int, np.ndarray, str]:
    """(track seed, the real actions before the dream, a description)."""
    if args.episode is None:
        return args.seed, np.zeros((args.start_step, 3), dtype=np.float32), f"fresh track {args.seed}"
    from car_racing.recording.recorded_data import load_recorded

    data = load_recorded(args.data_dir, mmap=True)
    if not 0 <= args.episode < len(data.episodes):
        raise UsageError(f"--episode {args.episode}: {args.data_dir} holds {len(data.episodes)} episodes")
    meta = data.episodes[args.episode]
    if args.start_step >= meta["length"]:
        raise UsageError(f"--start-step {args.start_step}: episode {args.episode} has {meta['length']} steps")
    start = int(meta["start"])
    actions = np.asarray(data.actions[start:start + args.start_step], dtype=np.float32)
    return int(meta["seed"]), actions, f"episode {args.episode} (track {meta['seed']})"


def compose(dream: np.ndarray, real: np.ndarray | None, status: str, awake_text: str) -> np.ndarray:
    """The picture shown and recorded: the dream (left) and the real frame or a placeholder (right), with
    their captions and the status line above."""
    from car_racing.common.video import label, side_by_side, upscale

    left = label(upscale(dream, DREAM_SCALE), "dream: V(z) of M's sample", (6, 6), scale=0.5)
    if real is None:
        right = label(np.zeros((PANEL, PANEL, 3), dtype=np.uint8), "W: wake up (the real frame)", (6, 6), scale=0.5)
    else:
        right = label(upscale(real, REAL_SCALE), awake_text, (6, 6), scale=0.5)
    picture = side_by_side([left, right], gap=4, gap_value=40)
    strip = label(np.zeros((44, picture.shape[1], 3), dtype=np.uint8), status, (6, 4), scale=0.42)
    return np.concatenate([strip, picture], axis=0)


class DreamSession:
    """The window and the loop: keys and input as the human recorder's, M stepping instead of the env."""

    def __init__(self, world: Any, replay: Any, input_kind: str, description: str, fps: int = 50,
                 event_source: Any = None, record: Optional[str] = None) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        from car_racing.common.video import VideoWriter
        from car_racing.world.viewer import open_driving_session

        self.pygame, self.world, self.replay, self.description = pygame, world, replay, description
        self.fps, self.awake, self.woke = int(fps), False, False
        self.event_source = event_source if event_source is not None else pygame.event.get
        self.view, self.input, self.keys = open_driving_session(
            "Driving in M's dream: arrows/WASD or a gamepad, -/= τ, O dropout, W wake up, R restart, P pause, "
            "Esc ends", input_kind, "drive_in_dream.py")
        self.clock = pygame.time.Clock()
        self.writer = VideoWriter(record, fps=VIDEO_FPS) if record else None  # one frame per dream step
        if self.writer is not None:
            self.writer.__enter__()

    def _dream_keys(self, events: list) -> None:
        pygame, world = self.pygame, self.world
        for event in events:
            if event.type != pygame.KEYDOWN:
                continue
            if event.key in (pygame.K_MINUS, pygame.K_LEFTBRACKET, pygame.K_KP_MINUS):
                world.temperature = max(0.0, round(world.temperature - TEMPERATURE_STEP, 2))
            elif event.key in (pygame.K_EQUALS, pygame.K_RIGHTBRACKET, pygame.K_KP_PLUS):
                world.temperature = min(MAX_TEMPERATURE, round(world.temperature + TEMPERATURE_STEP, 2))
            elif event.key == pygame.K_o:
                world.set_dropout(not world.dropout_on)
            elif event.key == pygame.K_w:
                self.awake = not self.awake
                self.woke = self.woke or self.awake
            elif event.key == pygame.K_r:
                self.frame = world.restart()
                self.replay.restart()
                self.input.reset()

    def _show(self, action: np.ndarray, message: tuple = ()) -> None:
        from car_racing.world.viewer import Bar, action_bars

        world = self.world
        reward = world.rewards[-1] if world.rewards else 0.0
        done = world.done_probabilities[-1] if world.done_probabilities else 0.0
        real = None
        awake_text = ""
        if self.awake:
            real = self.replay.catch_up(world.actions)
            awake_text = f"real env, same actions: return {self.replay.dream_return:.1f}" + \
                (" (episode ended)" if self.replay.ended else "")
        dropout = f"on (p {world.dropout:g})" if world.dropout_on else "off"
        status = (f"{self.description}   dream step {len(world.actions)}   M reward {reward:+.2f}   "
                  f"summed {world.summed_reward:.1f}   done {done:.2f}"
                  + (f" (M said done at step {world.ended_at}: a training dream ends there)"
                     if world.ended_at is not None else "") + "\n"
                  f"τ {world.temperature:.1f} (-/=)   dropout {dropout} (O)   W wake up   R restart   P pause   Esc end")
        picture = compose(self.frame, real, status, awake_text)
        bars = action_bars(action) + [Bar(f"M reward {reward:+.2f}", reward, -1.0, 4.0, (250, 200, 60)),
                                      Bar(f"done p {done:.2f}", done, 0.0, 1.0, (200, 120, 255)),
                                      Bar(f"τ {world.temperature:.1f}", world.temperature, 0.0, MAX_TEMPERATURE,
                                          (200, 200, 200))]
        self.view.show(None, picture, status.replace("\n", "   "), bars, message=message, smooth=False)
        if self.writer is not None and not message:
            self.writer.write(picture)
        if self.fps > 0:
            self.clock.tick(self.fps)

    def run(self, steps: int) -> None:
        """Drive until ``steps`` dream steps, Esc or a closed window."""
        from car_racing.world.drivers import EndSession

        self.frame = self.world.restart()
        action = np.zeros(3, dtype=np.float32)
        try:
            while len(self.world.actions) < steps:
                events = self.keys.read(self.event_source())
                self._dream_keys(events)
                action = self.input.update(events, advance=not self.keys.paused)
                if self.keys.paused:
                    self._show(action, ("PAUSED", "P (gamepad: Start) continues, Esc ends the session"))
                    continue
                self.frame = self.world.step(action).frame
                self._show(action)
        except EndSession:
            pass

    def close(self) -> None:
        if self.writer is not None:
            if self.writer.frames_written:
                self.writer.__exit__(None, None, None)
            else:  # ended before the first step: no video (the temporary file is dropped)
                self.writer.__exit__(RuntimeError, RuntimeError("no frames"), None)
        self.view.close()


def main(args: Args) -> dict:
    """Drive; returns the session's actions, M's rewards and done probabilities, and the sums."""
    args.checkpoint_dir = agent_dir(args.checkpoint_dir, ('vision', 'memory'))  # yours, else the shipped agent
    check_args(args)
    from car_racing.world.drivers import check_display

    check_display("drive_in_dream.py", "watch M dream in an MP4 instead: car_racing/visualize_memory_prediction.py")
    import torch

    from car_racing.world.dream_world import DreamWorld, RealReplay

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # batch 1: one thread is fastest and leaves the other cores alone
    paths = checkpoint_paths(args.checkpoint_dir)
    vae, _ = load_model(paths["vision"], "vision", device)
    memory, _ = load_model(paths["memory"], "memory", device)
    vae, memory = vae.float(), memory.float()  # the shipped checkpoints are float16
    if memory.latent_size != vae.latent_size:
        raise UsageError(f"--checkpoint-dir {args.checkpoint_dir}: M reads z of size {memory.latent_size}, "
                         f"V makes {vae.latent_size}")
    seed, context_actions, description = start_point(args)
    replay = RealReplay(seed, context_actions)
    world = DreamWorld(vae, memory, device, args.temperature, args.dropout, args.seed)
    world.start(np.stack(replay.context_frames), context_actions)
    world.dropout_on = args.dropout_on and args.dropout > 0
    session = DreamSession(world, replay, args.input, description, record=args.record,
                           **{"fps": args.fps, **SESSION_OPTIONS})
    try:
        session.run(args.steps)
    finally:
        session.close()
        replay.close()
    summary = {"steps": len(world.actions), "actions": np.array(world.actions).reshape(-1, 3),
               "rewards": np.array(world.rewards), "done_probabilities": np.array(world.done_probabilities),
               "summed_reward": world.summed_reward, "ended_at": world.ended_at, "start_z": world.start_z.cpu().numpy(),
               "start_state": tuple(s.cpu().numpy() for s in world.start_state), "seed": seed,
               "context_actions": context_actions, "temperature": world.temperature,
               "real_return": replay.dream_return if session.woke else None, "record": args.record}
    real = f"; the real env gave {replay.dream_return:.1f} for the steps it replayed" if session.woke else ""
    print(f"dreamed {summary['steps']} steps from {description}: M's summed reward {world.summed_reward:.1f}{real}"
          + (f"; video {args.record}" if args.record else ""))
    return summary


if __name__ == "__main__":
    run_main(main, Args)
