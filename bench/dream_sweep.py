"""Which dream ranks controllers like the real env? One real panel, many dream settings.

The real half of the fidelity panel (``car_racing/training/fidelity.py``) is the expensive one (every controller drives
real tracks); the dream half is cheap. This script drives the panel once (or reads it back from
``--real-json``, written by an earlier run) and then prints Spearman's ρ between real return and dream
fitness for every combination of dream length, temperature τ, dream dropout and start states
(``recorded``: states anywhere in the recorded data, as training uses; ``episode-start``: the first
frame of recorded episodes with M's zero state, i.e. whole episodes dreamed from the start line).

    python bench/dream_sweep.py --checkpoint-dir checkpoints/loop_a/iter_00 --data-dir data/loop_a \\
        --panel 24 --episodes 3 --real-json runs/sweep_real.json

A positive ρ near 1 over controllers *near the current C* is what CMA-ES needs to climb in the dream.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from car_racing.common.cli import run_main
from car_racing.common.runtime import checkpoint_paths, load_model
from car_racing.episodes.rollout import default_workers
from car_racing.training.fidelity import build_panel, real_panel, spearman
from car_racing.models.ffn import flat_to_population, num_controller_params
from car_racing.recording.latent_cache import load_or_build_latents
from car_racing.recording.recorded_data import load_memory_sequences, load_recorded
from car_racing.training.dream import dream_rollout, start_pool


@dataclass
class Args:
    """Spearman ρ of real return vs dream fitness over one real panel, for a grid of dream settings."""

    checkpoint_dir: str = "checkpoints"
    """V, M (and the C the panel is built around)"""
    data_dir: str = "data"
    """recorded data for the dream start states"""
    panel: int = 24
    """controllers in the panel"""
    episodes: int = 3
    """real tracks per controller"""
    real_json: Optional[str] = None
    """cache of the real panel: read if it exists (same panel settings), else written"""
    steps: list[int] = field(default_factory=lambda: [50, 200, 500])
    """dream lengths to try"""
    temperatures: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.3])
    """τ values to try"""
    dropouts: list[float] = field(default_factory=lambda: [0.0, 0.1])
    """dream dropout values to try"""
    starts: list[str] = field(default_factory=lambda: ["recorded", "episode-start"])
    """start-state sources to try"""
    dream_trials: int = 32
    """dreams per controller per setting"""
    seed: int = 0
    """seeds the panel and the dreams"""
    workers: int = field(default_factory=default_workers)
    """worker processes for the real panel"""


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    paths = checkpoint_paths(args.checkpoint_dir)
    vae, _ = load_model(paths["vision"], "vision")
    mdnrnn, _ = load_model(paths["memory"], "memory")
    vae, mdnrnn = vae.float(), mdnrnn.float()
    num_params = num_controller_params(mdnrnn.latent_size, mdnrnn.hidden_size)
    trained = []
    if paths["controller"].is_file():
        controller, _ = load_model(paths["controller"], "controller")
        trained.append(("C (checkpoint)", controller.get_flat_params()))
    panel = build_panel(args.panel, num_params, trained, args.seed)
    cache = Path(args.real_json) if args.real_json else None
    if cache is not None and cache.is_file():
        real = json.loads(cache.read_text())
        assert [r["name"] for r in real] == [name for name, _ in panel], "the cached panel differs"
    else:
        started = time.time()
        rows = real_panel(args.checkpoint_dir, panel, vae, mdnrnn, 0.0, torch.device("cpu"),
                          seeds=[4_000_000 + i for i in range(args.episodes)], max_steps=1000, horizon=20,
                          workers=args.workers)  # the fidelity tool's default tracks and limits
        real = [{"name": r["name"], "real_return": r["real_return"], "real_std": r["real_std"]} for r in rows]
        print(f"real panel: {len(real)} controllers × {args.episodes} tracks in {time.time() - started:.0f}s")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(real, indent=1))
    returns = np.array([r["real_return"] for r in real])
    for r in real:
        print(f"  {r['name'][:40]:<40} {r['real_return']:8.1f} ± {r['real_std']:6.1f}")

    mu, _ = load_or_build_latents(args.data_dir, paths["vision"], "cpu", progress=False)
    sequences = load_memory_sequences(args.data_dir)
    episode_starts = [int(e["start"]) for e in load_recorded(args.data_dir, mmap=True).episodes]
    pools = {kind: start_pool(kind, mdnrnn, mu, sequences.indices, sequences.actions, episode_starts, 8192,
                              np.random.default_rng([args.seed, 1])) for kind in args.starts}
    flat = torch.as_tensor(np.stack([p for _, p in panel]), dtype=torch.float32)
    weights, biases = flat_to_population(flat, mdnrnn.latent_size, mdnrnn.hidden_size)
    near = np.array([name.startswith("C ") and (any(f"×{s}" in name for s in ("0.05", "0.1", "0.2", "0.3"))
                                                 or "noise" not in name) for name, _ in panel])
    print(f"\n{'start':<14} {'steps':>5} {'τ':>5} {'dropout':>7} {'ρ (all)':>8} {'ρ (C and near copies)':>22} {'s':>5}")
    for start, steps, temperature, dropout in itertools.product(args.starts, args.steps, args.temperatures,
                                                                args.dropouts):
        started = time.time()
        generator = torch.Generator().manual_seed(args.seed)
        start_z, state = pools[start].pick(args.dream_trials, generator)
        fitness = dream_rollout(mdnrnn, weights, biases, start_z, state, steps, temperature, generator,
                                dropout=dropout).mean(dim=1).double().numpy()
        rho_near = spearman(fitness[near], returns[near]) if near.sum() >= 3 else float("nan")
        print(f"{start:<14} {steps:>5} {temperature:>5.2f} {dropout:>7.2f} {spearman(fitness, returns):>8.2f} "
              f"{rho_near:>22.2f} {time.time() - started:>5.1f}", flush=True)


if __name__ == "__main__":
    run_main(main, Args)
