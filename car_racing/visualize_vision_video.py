"""An MP4 of an episode as V sees it: original frames and V's reconstructions side by side, upscaled.

Reads ``<checkpoint-dir>/vision_model.pth`` and, with ``--source recorded`` (default), one episode of
``<data-dir>`` (``--episode``; default the first held-out episode of the checkpoint). With ``--source
autopilot`` it drives a fresh episode with the autopilot instead (seed ``--seed``). Writes ``--out``
(default ``runs/vision_episode.mp4``, H.264, 50 fps).

    python car_racing/visualize_vision_video.py
    python car_racing/visualize_vision_video.py --source autopilot --seed 7 --max-steps 500
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
from tqdm import tqdm

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import agent_dir, checkpoint_paths, load_model, resolve_device, seed_everything
from car_racing.common.video import VideoWriter, label, side_by_side, upscale


@dataclass
class Args:
    """Video of original frames and V's reconstructions side by side."""

    checkpoint_dir: Optional[str] = None
    """folder with vision_model.pth (car_racing/train_vision.py writes it) (default: checkpoints/ once you have trained V there, else the shipped agent in checkpoints/pretrained/default)"""
    data_dir: str = "data"
    """recording to take the episode from (--source recorded)"""
    out: str = "runs/vision_episode.mp4"
    """MP4 to write"""
    source: Literal["recorded", "autopilot"] = "recorded"
    """a recorded episode, or a fresh one driven by the autopilot"""
    episode: int | None = None
    """recorded episode index (default: the checkpoint's first validation episode, else 0)"""
    seed: int = 0
    """track seed of the autopilot episode"""
    progress: bool = True
    """show tqdm progress bars (--no-progress for logs and notebooks)"""
    max_steps: int = 1000
    """at most this many frames"""
    scale: int = 4
    """upscaling of the 64×64 frames"""
    fps: float = 50
    """frames per second (the env runs at 50)"""
    device: str = "auto"
    """auto, cpu or cuda[:N]"""


def autopilot_frames(seed: int, max_steps: int) -> np.ndarray:
    """uint8 (T, 64, 64, 3) frames of one fresh autopilot episode."""
    from car_racing.episodes.rollout import run_episode
    from car_racing.world.autopilot import AutopilotDriver  # lazy: only this mode needs the env
    from car_racing.world.envs import make_env

    env = make_env()
    try:
        result = run_episode(env, AutopilotDriver(), seed, max_steps, record_frames=True)
    finally:
        env.close()
    print(f"autopilot episode seed {seed}: {result.steps} steps, reward {result.total_reward:.1f}")
    return result.frames


def recorded_frames(args: Args, checkpoint: dict) -> tuple[np.ndarray, str]:
    from car_racing.recording.recorded_data import load_recorded

    data = load_recorded(args.data_dir, mmap=True)
    episode = args.episode
    if episode is None:
        val = list(checkpoint.get("split", {}).get("val", []))
        episode = val[0] if val and val[0] < len(data.episodes) else 0
    if not 0 <= episode < len(data.episodes):
        raise UsageError(f"--episode {episode}: {args.data_dir} holds episodes 0..{len(data.episodes) - 1}")
    held_out = episode in checkpoint.get("split", {}).get("val", [])
    frames = np.asarray(data.frames[data.episode_slice(episode)][:args.max_steps])
    return frames, f"episode {episode} ({'held out' if held_out else 'trained on'})"


def main(args: Args) -> Path:
    args.checkpoint_dir = agent_dir(args.checkpoint_dir, ('vision',))  # yours, else the shipped agent
    import torch

    from car_racing.models.vae import frames_to_tensor, to_images

    if args.scale < 1 or args.max_steps < 1 or args.fps <= 0:
        raise UsageError("--scale and --max-steps must be at least 1, --fps positive")
    device = resolve_device(args.device)
    seed_everything(args.seed)
    model, checkpoint = load_model(checkpoint_paths(args.checkpoint_dir)["vision"], "vision", device)
    if args.source == "autopilot":
        frames, title = autopilot_frames(args.seed, args.max_steps), f"autopilot seed {args.seed}"
    else:
        frames, title = recorded_frames(args, checkpoint)
    out = Path(args.out)
    errors = []
    with VideoWriter(out, fps=args.fps) as video, tqdm(total=len(frames), desc="video", unit="frame",
                                                                disable=not args.progress) as bar:
        for start in range(0, len(frames), 100):
            batch = frames[start:start + 100]
            with torch.no_grad():
                x = frames_to_tensor(batch, device)
                recon = model.decode(model.encode(x)[0])
                sse = (recon - x).pow(2).flatten(1).sum(1).cpu().numpy()
            for i, (original, reconstruction) in enumerate(zip(batch, to_images(recon))):
                errors.append(float(sse[i]))
                left = label(upscale(original, args.scale), f"original\n{title}\nstep {start + i}")
                right = label(upscale(reconstruction, args.scale), f"V reconstruction\nSSE {sse[i]:.0f}")
                video.write(side_by_side([left, right], gap=4))
            bar.update(len(batch))
    print(f"wrote {out}: {video.frames_written} frames of {title}, mean reconstruction SSE "
          f"{np.mean(errors):.1f}")
    return out


if __name__ == "__main__":
    run_main(main, Args)
