"""Film where the dream lies: one C driving the real env beside the same C driving M's dream from the same start.

For each ``--checkpoint-dirs`` folder (V, M and C; e.g. the first and the last iteration of a dream loop) C
drives a real track (``--seed``) and, from that track's first frame (z = V's μ, M's zero state: exactly where
an ``--dream-start episode-start`` training dream starts), a dream in M. Each row of the MP4 shows V's
decoding of the real frame C saw, V's decoding of the z C saw in the dream, and the two running returns
(real, and the sum of M's predicted rewards). A PNG plots both returns per step for every folder. When the
dream pays for driving the real env punishes, the rows show where: the dream's road bends with the car,
the real car leaves the road.

The dream side is exactly the dream C was trained in (:func:`car_racing.training.dream.imagine`, the CMA-ES
fitness's reference): by default C's own training settings from its checkpoint (τ, dream dropout, M's value at the
end), the same noise convention, and it ends where a training dream ends — after the step M's done head fires
(``sigmoid > 0.5``, that step's reward counted); from there its last frame stays, marked ``ended``, while the real
side drives on. A dream still alive after ``--steps`` adds M's value of its last state (when C trained with
``--dream-value``), shown as ``+ value`` and a dot on the PNG.

    python car_racing/film_dream_vs_real.py --checkpoint-dirs checkpoints/dream_loop/iter_00 checkpoints/dream_loop/best
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import atomic_path, checkpoint_paths, load_checkpoint, resolve_device, seed_everything
from car_racing.common.video import label, side_by_side, upscale, write_video


@dataclass
class Args:
    """C in the real env beside C in M's dream from the same start, per checkpoint folder, as an MP4 and a PNG."""

    checkpoint_dirs: list[str] = field(default_factory=lambda: ["checkpoints/pretrained/dream"])
    """folders holding V, M and C (one row of the film each; e.g. a dream loop's iter_00 and best)"""
    seed: int = 20_000
    """the real track (env.reset seed); keep it away from recorded, check and held-out seeds"""
    steps: int = 600
    """steps to drive on both sides"""
    temperature: Optional[float] = None
    """τ of the dream (default: the τ C was trained at, from its checkpoint; 1.0 for a C not trained in a dream)"""
    dream_dropout: Optional[float] = None
    """dropout p on M's h before its heads for the whole dream (default: C's training dream's; 0 for a C not trained
    in a dream)"""
    dream_value: Optional[bool] = None
    """end a dream still alive after --steps on M's value of its last state (default: as C was trained,
    --dream-value)"""
    out: str = "runs/dream_vs_real.mp4"
    """output video (the returns PNG is written beside it, _returns.png)"""
    scale: int = 3
    """upscaling of the 64×64 frames"""
    fps: int = 25
    """video frame rate"""
    device: str = "cpu"
    """cpu, auto or cuda[:N] for V and M"""


def film_row(checkpoint_dir: Path, args: Args) -> dict:
    """Drive C in the real env and in its training dream; V's decodings of both and the two running returns."""
    import torch

    from car_racing.episodes.agent import make_agent_driver
    from car_racing.episodes.rollout import run_episode
    from car_racing.models.vae import frames_to_tensor, to_images
    from car_racing.training.dream import controller_policy, imagine, memory_dream_scales, trained_dream
    from car_racing.world.envs import make_env

    device = resolve_device(args.device)
    agent = make_agent_driver(checkpoint_dir, device=device)
    env = make_env()
    try:
        real = run_episode(env, agent, args.seed, args.steps, record_frames=True)
    finally:
        env.close()
    paths = checkpoint_paths(checkpoint_dir)
    memory = load_checkpoint(paths["memory"], "memory")
    dream = trained_dream(load_checkpoint(paths["controller"], "controller"), memory)
    if args.temperature is not None:
        dream["temperature"] = args.temperature
    if args.dream_dropout is not None:
        dream["dropout"] = args.dream_dropout
    if args.dream_value is not None:
        dream["value_discount"] = memory_dream_scales(memory)[1] if args.dream_value else 0.0
    if dream["value_discount"] > 0 and agent.mdnrnn.value_head is None:
        raise UsageError(f"--dream-value: {paths['memory']} has no value head")
    with torch.no_grad():
        real_mu = torch.cat([agent.vae.encode(frames_to_tensor(real.frames[i:i + 256], device))[0]
                             for i in range(0, len(real.frames), 256)])
        generator = torch.Generator().manual_seed(args.seed)  # the dream's noise: drawn on the CPU, as in training
        trace = imagine(agent.mdnrnn, controller_policy(agent.controller), real_mu[:1],
                        agent.mdnrnn.initial_state(1, device), args.steps, dream["temperature"], generator,
                        dropout=dream["dropout"], reward_scale=dream["reward_scale"],
                        value_discount=dream["value_discount"])
        length = int(trace.lengths[0, 0])
        real_images = to_images(agent.vae.decode(real_mu))
        dream_images = to_images(agent.vae.decode(trace.z[0, 0, :length]))
    return {"name": str(checkpoint_dir), "real_images": real_images, "dream_images": dream_images,
            "real_return": np.cumsum(real.rewards),
            "dream_return": np.cumsum(trace.rewards[0, 0, :length].cpu().numpy()),
            "dream_value": float(trace.value[0, 0]), "dream_total": float(trace.returns[0, 0]),
            "dream_done_step": length - 1 if bool(trace.ended[0, 0]) else None, "dream": dream}


def compose(rows: list[dict], t: int, scale: int) -> np.ndarray:
    """One video frame: a row per folder, [V(real) | V(dream z)] with their running returns."""
    panels = []
    for row in rows:
        real_t, dream_t = min(t, len(row["real_images"]) - 1), min(t, len(row["dream_images"]) - 1)
        ended = row["dream_done_step"] is not None and t >= row["dream_done_step"]
        title = f"dream (ended t={row['dream_done_step']})" if ended else "dream"
        paid = f"return {row['dream_return'][dream_t]:.0f}"
        if row["dream_value"] and t >= len(row["dream_images"]) - 1:  # alive at the end: + M's value of its last state
            paid += f" + value {row['dream_value']:.0f}"
        real = label(upscale(row["real_images"][real_t], scale),
                     f"real t={t}\nreturn {row['real_return'][real_t]:.0f}")
        dream = label(upscale(row["dream_images"][dream_t], scale),
                      f"{title}\n{paid}")
        strip = side_by_side([real, dream], gap=4)
        panels.append(label(strip, Path(row["name"]).name, position=(4, strip.shape[0] - 18)))
    gap = np.full((4, panels[0].shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=0)


def plot_returns(rows: list[dict], path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    for i, row in enumerate(rows):
        color = f"C{i}"
        name = Path(row["name"]).name
        ax.plot(row["real_return"], color=color, label=f"{name}: real")
        ax.plot(row["dream_return"], color=color, linestyle="--", label=f"{name}: dream (M's predicted reward)")
        if row["dream_done_step"] is not None:
            ax.axvline(row["dream_done_step"], color=color, linestyle=":", linewidth=0.8)
        if row["dream_value"]:
            ax.plot([len(row["dream_return"]) - 1], [row["dream_total"]], "o", color=color)
    ax.set_xlabel("step (dotted: M's done signal, where the dream ended; dot: the dream's return with M's value)")
    ax.set_ylabel("return so far")
    ax.set_title(f"the same C in the real env and in M's dream, track {seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(args: Args) -> dict:
    """Write the MP4 and the returns PNG; returns each row's final real and dream return."""
    if args.steps < 1 or args.scale < 1 or args.fps < 1:
        raise UsageError(f"--steps {args.steps} / --scale {args.scale} / --fps {args.fps}: expected positive integers")
    if (args.temperature is not None and args.temperature < 0) or \
            (args.dream_dropout is not None and not 0 <= args.dream_dropout < 1):
        raise UsageError(f"--temperature {args.temperature} / --dream-dropout {args.dream_dropout}: expected τ ≥ 0 "
                         f"and 0 ≤ p < 1")
    folders = [Path(folder) for folder in args.checkpoint_dirs]
    for folder in folders:
        missing = [str(path) for path in checkpoint_paths(folder).values() if not path.is_file()]
        if missing:
            raise UsageError(f"--checkpoint-dirs {folder}: missing {', '.join(missing)}")
    seed_everything(args.seed)
    rows = [film_row(folder, args) for folder in folders]
    out = Path(args.out)
    length = max(max(len(r["real_images"]), len(r["dream_images"])) for r in rows)
    write_video(out, (compose(rows, t, args.scale) for t in range(length)), fps=args.fps)
    plot = out.with_name(out.stem + "_returns.png")
    plot_returns(rows, plot, args.seed)
    summary = {Path(r["name"]).as_posix(): {"real_return": float(r["real_return"][-1]),
                                            "real_steps": len(r["real_return"]), "dream_return": r["dream_total"],
                                            "dream_value": r["dream_value"], "dream_steps": len(r["dream_return"]),
                                            "dream_done_step": r["dream_done_step"], "dream": r["dream"]} for r in rows}
    for name, result in summary.items():
        ending = (f"ended by M's done signal at step {result['dream_done_step']}"
                  if result["dream_done_step"] is not None else f"M's value at the end {result['dream_value']:.1f}")
        dream = result["dream"]
        print(f"{name}: real return {result['real_return']:.1f} over {result['real_steps']} steps, dream return "
              f"{result['dream_return']:.1f} over {result['dream_steps']} ({ending}; τ {dream['temperature']:g}, "
              f"dropout {dream['dropout']:g})")
    print(f"wrote {out} and {plot}")
    return {"video": str(out), "plot": str(plot), "rows": summary}


if __name__ == "__main__":
    run_main(main, Args)
