"""The README's two animations: the shipped agent driving (the full-resolution view) and M's dream beside
reality (a recorded autopilot episode, V's reconstruction and what M dreams from the same actions).

    python car_racing/readme_animations.py              # docs/agent_driving.gif, docs/dream_vs_real.gif

The agent drives track ``--seed`` with the checkpoints in ``--checkpoint-dir``; every ``--stride``-th
frame of the env's 1000×800 view is shrunk to ``--width`` pixels and labelled with step and reward. The
dream uses :func:`car_racing.training.memory_film.memory_prediction_film` (what
``visualize_memory_prediction.py`` runs) on one autopilot episode recorded
(:func:`car_racing.episodes.recording.record`) into a temporary folder (seed ``--seed``, noise 0.3); its MP4 is decoded, every ``--stride``-th frame kept and
the GIF drawn with one 64-colour palette (V's blurry decodings would take 256 colours per frame). GIFs, not
MP4s, because GitHub shows a GIF inline in a README; they are kept short to stay small (~1–2 MB).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import agent_dir
from car_racing.world.drivers import ENV_FPS


@dataclass
class Args:
    """Write docs/agent_driving.gif and docs/dream_vs_real.gif (the README's animations)."""

    checkpoint_dir: Optional[str] = None
    """the agent (V, M, C) that drives and dreams (default: checkpoints/ once you have trained V and M and C there, else the shipped agent in checkpoints/pretrained/default)"""
    out_dir: str = "docs"
    """folder the two GIFs are written to"""
    seed: int = 10000
    """track seed of the agent's drive and of the recorded episode the dream follows"""
    agent_steps: int = 400
    """steps of the agent's drive shown"""
    dream_steps: int = 240
    """steps of the recorded episode shown beside the dream"""
    stride: int = 2
    """keep every STRIDE-th frame (2: 25 frames per second of a 50-step/s drive)"""
    width: int = 360
    """width of the agent GIF in pixels (the 1000×800 view is shrunk to it)"""


class FrameGrabber:
    """The agent as a rollout driver that also keeps every ``stride``-th full-resolution frame (shrunk)."""

    def __init__(self, agent: Any, stride: int, width: int) -> None:
        self.agent, self.stride, self.width = agent, stride, width
        self.frames: list[np.ndarray] = []
        self.episode_info: dict[str, Any] = {}

    def reset(self, env: Any, seed: int) -> None:
        self.agent.reset(env, seed)

    def applied(self, action: np.ndarray) -> None:
        self.agent.applied(action)

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        import pygame

        from car_racing.common.video import label
        from car_racing.world.viewer import full_resolution_frame

        if step % self.stride == 0:
            frame = pygame.surfarray.array3d(full_resolution_frame(env)).swapaxes(0, 1)
            height = int(round(frame.shape[0] * self.width / frame.shape[1]))
            small = cv2.resize(frame, (self.width, height), interpolation=cv2.INTER_AREA)
            self.frames.append(label(small, f"step {step}  reward {episode_reward:.0f}", scale=0.45))
        return self.agent.act(observation, env, step, episode_reward)


def main(args: Args) -> dict[str, Path]:
    args.checkpoint_dir = agent_dir(args.checkpoint_dir, ('vision', 'memory', 'controller'))  # yours, else the shipped agent
    for flag, value in (("--agent-steps", args.agent_steps), ("--dream-steps", args.dream_steps),
                        ("--stride", args.stride), ("--width", args.width)):
        if value < 1:
            raise UsageError(f"{flag} {value}: expected a positive number")
    from car_racing.common.config import preset
    from car_racing.common.video import read_video, write_gif
    from car_racing.episodes.agent import iter_agent_episodes
    from car_racing.episodes.recording import record
    from car_racing.training.memory_film import memory_prediction_film

    out_dir = Path(args.out_dir)
    grabbers: list[FrameGrabber] = []

    def wrap(agent: Any) -> FrameGrabber:
        grabbers.append(FrameGrabber(agent, args.stride, args.width))
        return grabbers[-1]

    for result in iter_agent_episodes(args.checkpoint_dir, [args.seed], max_steps=args.agent_steps, wrap=wrap):
        print(f"agent: seed {result.seed}, {result.steps} steps, reward {result.total_reward:.1f}")
    agent_gif = out_dir / "agent_driving.gif"
    write_gif(agent_gif, grabbers[0].frames, fps=ENV_FPS / args.stride)

    with tempfile.TemporaryDirectory() as tmp:
        record(preset("default", record__driver="autopilot", record__episodes=1, record__steps=args.dream_steps,
                      record__random_episodes=0, record__noise=0.3, record__seq_len=min(100, args.dream_steps),
                      run__seed=args.seed, run__data_dir=f"{tmp}/data", run__workers=1))
        dream = memory_prediction_film(args.checkpoint_dir, data_dir=f"{tmp}/data", out=f"{tmp}/dream.mp4",
                                       max_steps=args.dream_steps, scale=2, device="cpu")
        frames = [frame for t, frame in enumerate(read_video(dream["video"])) if t % args.stride == 0]
    dream_gif = out_dir / "dream_vs_real.gif"
    write_gif(dream_gif, frames, fps=ENV_FPS / args.stride, colors=64)  # V's blur needs one shared palette
    for path in (agent_gif, dream_gif):
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")
    return {"agent": agent_gif, "dream": dream_gif}


if __name__ == "__main__":
    run_main(main, Args)
