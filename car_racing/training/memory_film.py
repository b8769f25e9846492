"""M's dream beside reality, as a film: a recorded episode, V's reconstruction of it and what M dreams from the
same actions, re-synced to the real frame every ``dream_steps`` steps (:func:`memory_prediction_film`, the work of
``visualize_memory_prediction.py`` and of the README's dream animation).

For a recorded episode every ``dream_steps`` steps the dream re-syncs: z is set to V's encoding μ of the real
frame and M's state to the one it reached reading the real episode so far. Then M dreams on its own for
``dream_steps`` steps: it is fed the real actions and its own sampled z_{t+1} (temperature τ), and each dreamed z
is decoded by V. The MP4 shows, upscaled, the real frame, V's reconstruction of it, and the dream; a red frame and
"RE-SYNC" mark the re-sync steps. A PNG plots the real reward against M's predicted reward in the dream (and with
real z fed in); ``strip`` also writes a PNG film strip of the first dream segment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from car_racing.common.cli import UsageError
from car_racing.common.runtime import (
    atomic_path,
    checkpoint_paths,
    load_model,
    no_grad,
    resolve_device,
    seed_everything,
)
from car_racing.common.video import check_strip_args, label, side_by_side, upscale, write_image, write_video
from car_racing.recording.recorded_data import load_recorded

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

    from car_racing.models.mdn_rnn import MDNRNN

RESYNC_MARK_FRAMES = 6  # how many frames the re-sync marker stays visible
STRIP_GAP = 4  # white pixels between the film strip's frames and rows


@no_grad
def dream_episode(memory: MDNRNN, real_mu: torch.Tensor, actions: torch.Tensor, dream_steps: int,
                  temperature: float, generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """Dream along a real episode, re-syncing every ``dream_steps`` steps.

    Args:
        real_mu: (T, L) V's μ of the real frames; actions: (T, A) the real actions.

    Returns dict of numpy arrays: ``dream_z`` (T, L) the z shown at each step (real μ on re-sync
    steps), ``resync`` bool (T,), ``dream_reward`` (T,) M's r_t in the dream, ``real_reward_pred`` (T,)
    M's r_t reading the real z, ``dream_done`` / ``real_done_prob`` (T,) the done probabilities.
    """
    import torch

    from car_racing.models.mdn_rnn import MDNRNN

    steps = len(real_mu)
    device = real_mu.device
    real_state = memory.initial_state(1, device)
    dream_state = real_state
    dream_z = real_mu[:1]
    shown = torch.empty_like(real_mu)
    resync = np.zeros(steps, dtype=bool)
    dream_reward, real_reward, dream_done, real_done = (np.zeros(steps, dtype=np.float32) for _ in range(4))
    for t in range(steps):
        if t % dream_steps == 0:
            resync[t] = True
            dream_z = real_mu[t:t + 1]
            dream_state = (real_state[0].clone(), real_state[1].clone())
        shown[t] = dream_z[0]
        action = actions[t:t + 1]
        out, dream_state = memory.step(dream_z, action, dream_state)
        dream_reward[t] = float(out.reward[0])
        dream_done[t] = float(torch.sigmoid(out.done_logit[0]))
        dream_z = MDNRNN.sample_next_z(out, temperature, generator)
        real_out, real_state = memory.step(real_mu[t:t + 1], action, real_state)
        real_reward[t] = float(real_out.reward[0])
        real_done[t] = float(torch.sigmoid(real_out.done_logit[0]))
    return {"dream_z": shown.cpu().numpy(), "resync": resync, "dream_reward": dream_reward,
            "real_reward_pred": real_reward, "dream_done": dream_done, "real_done_prob": real_done}


def _label(image: np.ndarray, text: str, origin: tuple[int, int], color=(255, 255, 255), size: float = 0.5) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, size, color, 1, cv2.LINE_AA)


def compose_frame(real: np.ndarray, recon: np.ndarray, dream: np.ndarray, scale: int, step: int,
                  since_resync: int, dream_steps: int, temperature: float) -> np.ndarray:
    """Three 64×64 RGB uint8 panels → one upscaled RGB frame with labels and the re-sync marker."""
    size = 64 * scale
    pad, header = 4, 22
    canvas = np.full((header + size + 2 * pad, 3 * size + 4 * pad, 3), 30, dtype=np.uint8)
    panels = [(real, "real"), (recon, "V(real)"), (dream, f"M dream tau={temperature:g}")]
    for i, (panel, name) in enumerate(panels):
        x = pad + i * (size + pad)
        canvas[header + pad:header + pad + size, x:x + size] = upscale(panel, scale)
        _label(canvas, name, (x + 2, 16))
    x = pad + 2 * (size + pad)
    if since_resync < RESYNC_MARK_FRAMES:
        cv2.rectangle(canvas, (x - 2, header + pad - 2), (x + size + 1, header + pad + size + 1), (255, 40, 40), 3)
        _label(canvas, "RE-SYNC", (x + 8, header + pad + 24), (255, 60, 60), 0.7)
    _label(canvas, f"t={step}", (pad + 2, header + pad + size - 6), (255, 255, 0))
    _label(canvas, f"dream {since_resync}/{dream_steps}", (x + 2, header + pad + size - 6), (255, 255, 0))
    return canvas


def dream_strip(real: np.ndarray, dreamed: np.ndarray, segment: int, frames: int, scale: int) -> np.ndarray:
    """Two rows of ``frames`` steps evenly spaced over steps 0 … ``segment`` − 1 (all of them when fewer):
    ``real`` frames on top, ``dreamed`` ones below, upscaled ×``scale``, labelled "real"/"dream" and the
    step, with white gaps: RGB uint8 (2·64·scale + gap, width, 3)."""
    steps = np.unique(np.linspace(0, segment - 1, frames).round().astype(int))
    rows = [side_by_side([label(upscale(images[t], scale), f"{name}\nt={t}") for t in steps], gap=STRIP_GAP)
            for images, name in ((real, "real"), (dreamed, "dream"))]
    gap = np.full((STRIP_GAP, rows[0].shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([rows[0], gap, rows[1]], axis=0)


def plot_rewards(actual: np.ndarray, dreamed: np.ndarray, teacher: np.ndarray, resync: np.ndarray, path: Path,
                 title: str) -> None:
    """PNG: real r_t vs M's predicted r_t (in the dream and with real z), re-sync steps dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    steps = np.arange(len(actual))
    ax.plot(steps, actual, label="actual reward", color="black", linewidth=1.2)
    ax.plot(steps, dreamed, label="M predicted (dream)", color="tab:red", linewidth=1.0)
    ax.plot(steps, teacher, label="M predicted (real z)", color="tab:blue", linewidth=0.8, alpha=0.7)
    for t in np.flatnonzero(resync):
        ax.axvline(t, color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel("step (dotted: re-sync)")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def memory_prediction_film(checkpoint_dir: str | Path, *, data_dir: str | Path = "data",
                           out: str | Path = "runs/memory_prediction.mp4", vision_checkpoint: str | Path | None = None,
                           reward_plot: str | Path | None = None, strip: str | Path | None = None,
                           strip_frames: int = 8, strip_scale: int = 2, episode: int = 0, temperature: float = 1.0,
                           dream_steps: int = 50, max_steps: int = 300, scale: int = 4, fps: int = 25, seed: int = 0,
                           device: str = "auto") -> dict:
    """Film recorded episode ``episode`` of ``data_dir`` beside M's dream (M and V from ``checkpoint_dir``, V from
    ``vision_checkpoint`` when given): the MP4 ``out``, the reward PNG ``reward_plot`` (default: ``out`` with
    ``_reward.png``) and, with ``strip``, a PNG film strip of ``strip_frames`` steps of the first dream segment.
    Shows the first ``max_steps`` steps (0 = all), ``scale``× upscaled at ``fps``; the dreamed z are sampled at
    ``temperature`` with ``seed``. Returns {"video", "reward_plot", "steps", "reward_mse_dream", ...}."""
    import torch

    from car_racing.models.vae import frames_to_tensor
    from car_racing.recording.latent_cache import file_sha256

    if dream_steps < 1:
        raise UsageError(f"--dream-steps {dream_steps}: expected a positive integer")
    if temperature < 0:
        raise UsageError(f"--temperature {temperature}: expected a number >= 0")
    if scale < 1 or fps < 1 or max_steps < 0:
        raise UsageError("--scale and --fps must be positive and --max-steps >= 0")
    check_strip_args(strip, strip_frames, strip_scale)
    device = resolve_device(device)
    seed_everything(seed)
    checkpoint_dir = Path(checkpoint_dir)
    memory_path = checkpoint_paths(checkpoint_dir)["memory"]
    vision_path = Path(vision_checkpoint) if vision_checkpoint else checkpoint_paths(checkpoint_dir)["vision"]
    memory, memory_ckpt = load_model(memory_path, "memory", device)
    vae, _ = load_model(vision_path, "vision", device)
    trained_with = memory_ckpt.get("vision", {}).get("sha256")
    if trained_with and trained_with != file_sha256(vision_path):
        print(f"warning: {memory_path} was trained on latents of another V than {vision_path}", file=sys.stderr)
    if vae.latent_size != memory.latent_size:
        raise UsageError(f"{vision_path}: V has latent size {vae.latent_size} but M expects {memory.latent_size}")

    data = load_recorded(data_dir, mmap=True)
    if not 0 <= episode < len(data.episodes):
        raise UsageError(f"--episode {episode}: {data_dir} has episodes 0..{len(data.episodes) - 1}")
    span = data.episode_slice(episode)
    stop = span.stop if max_steps == 0 else min(span.stop, span.start + max_steps)
    frames = np.array(data.frames[span.start:stop])
    actions = torch.from_numpy(np.array(data.actions[span.start:stop])).to(device)
    rewards = np.array(data.rewards[span.start:stop])

    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        real_mu = torch.cat([vae.encode(frames_to_tensor(frames[i:i + 256], device))[0]
                             for i in range(0, len(frames), 256)])
        result = dream_episode(memory, real_mu, actions, dream_steps, temperature, generator)
        decode = lambda z: (vae.decode(torch.from_numpy(z).to(device)).clamp(0, 1) * 255  # noqa: E731
                            ).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        recon = np.concatenate([decode(real_mu[i:i + 256].cpu().numpy()) for i in range(0, len(frames), 256)])
        dreamed = np.concatenate([decode(result["dream_z"][i:i + 256]) for i in range(0, len(frames), 256)])

    out = Path(out)
    write_video(out, (compose_frame(frames[t], recon[t], dreamed[t], scale, t, t % dream_steps,
                                    dream_steps, temperature) for t in range(len(frames))), fps=fps)
    reward_plot = Path(reward_plot) if reward_plot else out.with_name(out.stem + "_reward.png")
    clip = float(memory_ckpt.get("reward", {}).get("clip", 0.0) or 0.0)
    actual = np.clip(rewards, -clip, clip) if clip > 0 else rewards
    plot_rewards(actual, result["dream_reward"], result["real_reward_pred"], result["resync"], reward_plot,
                 f"episode {episode}: reward per step" + (f" (actual clipped to ±{clip:g} as in training)"
                                                          if clip > 0 else ""))
    summary = {"video": str(out), "reward_plot": str(reward_plot), "steps": len(frames),
               "reward_mse_dream": float(np.mean((result["dream_reward"] - actual) ** 2)),
               "reward_mse_real_z": float(np.mean((result["real_reward_pred"] - actual) ** 2)),
               "reward_sum_actual": float(actual.sum()), "reward_sum_dream": float(result["dream_reward"].sum())}
    if strip is not None:
        write_image(strip, dream_strip(frames, dreamed, min(dream_steps, len(frames)), strip_frames, strip_scale))
        summary["strip"] = strip
    print(f"wrote {out} ({len(frames)} frames) and {reward_plot}; reward MSE dream {summary['reward_mse_dream']:.3f}"
          f", with real z {summary['reward_mse_real_z']:.3f}; summed reward actual {summary['reward_sum_actual']:.1f}"
          f", dream {summary['reward_sum_dream']:.1f}")
    if strip is not None:
        print(f"strip: {strip}")
    return summary
