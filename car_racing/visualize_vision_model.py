"""What V sees: a PNG grid of held-out frames, their reconstructions, and decoded samples z ~ N(0, I).

Reads ``<checkpoint-dir>/vision_model.pth`` and the frames in ``<data-dir>``; the frames come from the
checkpoint's validation episodes (never trained on). Writes ``--out`` (default
``runs/vision_reconstructions.png``): row 1 originals, row 2 reconstructions decode(μ), row 3 samples.

    python car_racing/visualize_vision_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass
from typing import Optional

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import agent_dir, checkpoint_paths, load_model, resolve_device, seed_everything
from car_racing.common.video import titled_rows, write_image
from car_racing.recording.recorded_data import episode_frame_indices, load_recorded


@dataclass
class Args:
    """Grid of held-out frames, V's reconstructions and samples from the prior."""

    checkpoint_dir: Optional[str] = None
    """folder with vision_model.pth (car_racing/train_vision.py writes it) (default: checkpoints/ once you have trained V there, else the shipped agent in checkpoints/pretrained/default)"""
    data_dir: str = "data"
    """the recording V was trained on (its validation episodes supply the frames)"""
    out: str = "runs/vision_reconstructions.png"
    """PNG to write"""
    columns: int = 8
    """frames (and samples) per row"""
    scale: int = 3
    """upscaling of each 64×64 image"""
    seed: int = 0
    """picks the frames and the samples"""
    device: str = "auto"
    """auto, cpu or cuda[:N]"""


def held_out_indices(checkpoint: dict, data) -> tuple[np.ndarray, str]:
    """Frame indices of the checkpoint's validation episodes (all frames if it has none or they no
    longer exist in this recording), and a description for the caption."""
    val = list(checkpoint.get("split", {}).get("val", []))
    if val and max(val) < len(data.episodes):
        return episode_frame_indices(data.episodes, val), f"held-out episodes {val}"
    return np.arange(len(data)), "all episodes (the checkpoint has no usable validation split)"


def main(args: Args) -> Path:
    args.checkpoint_dir = agent_dir(args.checkpoint_dir, ('vision',))  # yours, else the shipped agent
    import torch

    from car_racing.models.vae import frames_to_tensor, to_images

    if args.columns < 1 or args.scale < 1:
        raise UsageError("--columns and --scale must be at least 1")
    device = resolve_device(args.device)
    seed_everything(args.seed)
    model, checkpoint = load_model(checkpoint_paths(args.checkpoint_dir)["vision"], "vision", device)
    data = load_recorded(args.data_dir)
    if len(data) == 0:
        raise UsageError(f"--data-dir {args.data_dir}: the recording holds no frames")
    indices, source = held_out_indices(checkpoint, data)
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(indices, size=min(args.columns, len(indices)), replace=False))
    frames = np.asarray(data.frames[chosen])
    with torch.no_grad():
        x = frames_to_tensor(frames, device)
        mu, _ = model.encode(x)
        recon = model.decode(mu)
        generator = torch.Generator(device=device).manual_seed(args.seed)
        samples = model.decode(torch.randn(args.columns, model.latent_size, generator=generator, device=device))
        sse = (recon - x).pow(2).flatten(1).sum(1)
    grid = titled_rows([(f"original ({source}; steps {chosen.tolist()})", frames),
                      (f"reconstruction decode(mu); SSE per image mean {float(sse.mean()):.1f}", to_images(recon)),
                      ("samples decode(z), z ~ N(0, I)", to_images(samples))], args.scale)
    out = Path(args.out)
    write_image(out, grid)
    print(f"wrote {out} ({grid.shape[1]}×{grid.shape[0]}): {len(chosen)} frames from {source}, "
          f"epoch {checkpoint.get('epoch')} checkpoint, mean reconstruction SSE {float(sse.mean()):.1f}")
    return out


if __name__ == "__main__":
    run_main(main, Args)
