"""Watch M dream: a recorded episode beside what M imagines from the same actions.

For a recorded episode (``--episode``) every ``--dream-steps`` steps the dream re-syncs: z is set to V's
encoding μ of the real frame and M's state to the one it reached reading the real episode so far.
Then M dreams on its own for ``--dream-steps`` steps: it is fed the real actions and its own sampled
z_{t+1} (``--temperature`` τ), and each dreamed z is decoded by V. The MP4 shows, upscaled, the real
frame, V's reconstruction of it, and the dream; a red frame and "RE-SYNC" mark the re-sync steps.
A PNG plots the real reward against M's predicted reward in the dream (and with real z fed in).
``--strip PATH`` also writes a PNG film strip of the first dream segment (steps 0 … --dream-steps − 1):
``--strip-frames`` steps evenly spaced over it, the real frames in the top row and V's decoding of
what M dreamed at the same steps in the bottom row (step 0 is the re-sync: V's reconstruction).

    python car_racing/visualize_memory_prediction.py --episode 0 --temperature 1.0
    python car_racing/visualize_memory_prediction.py --episode 0 --strip runs/dream_strip.png  # README film strip
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass
from typing import Optional

from car_racing.common.cli import run_main
from car_racing.common.runtime import agent_dir
from car_racing.training.memory_film import memory_prediction_film


@dataclass
class Args:
    """Real episode vs M's dream (re-synced every --dream-steps steps), as an MP4 and a reward plot."""

    checkpoint_dir: Optional[str] = None
    """folder with memory_model.pth and vision_model.pth (default: checkpoints/ once you have trained V and M there, else the shipped agent in checkpoints/pretrained/default)"""
    vision_checkpoint: Optional[str] = None
    """V checkpoint (default: CHECKPOINT_DIR/vision_model.pth)"""
    data_dir: str = "data"
    """recorded data to take the episode from"""
    out: str = "runs/memory_prediction.mp4"
    """output video"""
    reward_plot: Optional[str] = None
    """output PNG of real vs predicted reward (default: OUT with _reward.png instead of .mp4)"""
    strip: Optional[str] = None
    """also write a PNG film strip here: real frames over M's dream, for the first dream segment"""
    strip_frames: int = 8
    """frames per row of the film strip, evenly spaced over the first dream segment"""
    strip_scale: int = 2
    """upscaling of the 64×64 frames in the film strip"""
    episode: int = 0
    """index of the recorded episode to replay"""
    temperature: float = 1.0
    """τ for sampling the dreamed z (mixture logits / τ, σ · √τ); 0 = most likely mean"""
    dream_steps: int = 50
    """steps M dreams alone before re-syncing to the real frame"""
    max_steps: int = 300
    """steps of the episode to show (0 = the whole episode)"""
    scale: int = 4
    """upscaling of the 64×64 frames in the video"""
    fps: int = 25
    """video frame rate"""
    seed: int = 0
    """seeds the sampling of the dreamed z"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda[:N]"""


def main(args: Args) -> dict:
    """Write the MP4 and the reward PNG; returns {"video", "reward_plot", "steps", "reward_mse_dream", ...}
    (:func:`car_racing.training.memory_film.memory_prediction_film`)."""
    checkpoint_dir = agent_dir(args.checkpoint_dir, ("vision", "memory"))  # yours, else the shipped agent
    return memory_prediction_film(
        checkpoint_dir, data_dir=args.data_dir, out=args.out, vision_checkpoint=args.vision_checkpoint,
        reward_plot=args.reward_plot, strip=args.strip, strip_frames=args.strip_frames, strip_scale=args.strip_scale,
        episode=args.episode, temperature=args.temperature, dream_steps=args.dream_steps, max_steps=args.max_steps,
        scale=args.scale, fps=args.fps, seed=args.seed, device=args.device)


if __name__ == "__main__":
    run_main(main, Args)
