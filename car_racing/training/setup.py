"""What every part of a CMA-ES run of C shares (:class:`Setup`): V/M files, M itself, sizes, the dream's start
pool (loaded on first use) and the run's real-env workers; :func:`load_setup` loads it from the config with
one-line errors for missing or unfit files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from car_racing.common.cli import UsageError
from car_racing.common.config import Config, workers_of
from car_racing.common.runtime import build_model, checkpoint_paths, load_checkpoint, resolve_device
from car_racing.episodes.agent import RealFitness
from car_racing.episodes.backends import backend_of
from car_racing.models.ffn import num_controller_params
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.recording.latent_cache import file_sha256, load_or_build_latents
from car_racing.recording.recorded_data import load_memory_sequences, load_recorded
from car_racing.training.dream import RecordedStates, start_pool, windows_of_drivers
from car_racing.training.imitation import LinearFit, bc_targets


def bc_visitor(fit: LinearFit, eps: float):
    """A :func:`collect_start_states` ``visit`` callback adding every recorded (z_t, h_t) → a_t to ``fit``."""
    def visit(batch: RecordedStates) -> None:
        x = torch.cat([batch.z, batch.h], dim=-1).reshape(-1, batch.z.shape[-1] + batch.h.shape[-1])
        fit.add(x, bc_targets(batch.actions.reshape(-1, batch.actions.shape[-1]).cpu(), eps))
    return visit


@dataclass
class Setup:
    """What every part of a run shares: V/M files, M itself, sizes, and (lazily) the dream start pool."""

    config: Config
    device: torch.device
    checkpoint_dir: Path
    paths: dict[str, Path]
    mdnrnn: MDNRNN
    reward_scale: float
    models_used: dict
    sizes: tuple[int, int, int]
    value_discount: float = 0.0  # γ of M's value head (0: none), from M's checkpoint
    pool: Any = None  # StartStates on ``device`` once loaded (dream fitness, --cmaes.init bc)
    real: RealFitness | None = None  # the run's real-env workers, started at first use (close_real ends them)

    def real_episodes(self) -> RealFitness:
        """The workers of every real episode of the run after the warm start (--cmaes.mode real fitness, checks)."""
        if self.real is None:
            self.real = RealFitness(str(self.checkpoint_dir), self.num_params, workers_of(self.config.run),
                                    backend_of(self.config.run))
        return self.real

    def close_real(self) -> None:
        if self.real is not None:
            self.real.close()
            self.real = None

    def load_start_pool(self, fit: LinearFit | None = None) -> None:
        """Fill ``setup.pool`` with ``--dream.start-states`` recorded (z, h) states (M run over the recorded windows);
        with ``fit``, every recorded (z, h) → action pair is added to it in the same pass (--cmaes.init bc)."""
        setup, config, mdnrnn = self, self.config, self.mdnrnn
        mu, _ = load_or_build_latents(config.run.data_dir, setup.paths["vision"], setup.device, config.dream.batch_size,
                                      progress=config.run.progress)
        if mu.shape[1] != mdnrnn.latent_size:
            raise UsageError(f"{setup.paths['memory']}: M expects latent size {mdnrnn.latent_size} but V encodes "
                             f"{mu.shape[1]}; rerun car_racing/train_memory.py")
        sequences = load_memory_sequences(config.run.data_dir)
        if len(sequences.indices) == 0:
            raise UsageError(f"--data-dir {config.run.data_dir}: no memory sequences; record more data")
        started = time.time()
        episodes = load_recorded(config.run.data_dir, mmap=True).episodes
        drivers = tuple(config.dream.start_drivers)
        eligible = windows_of_drivers(sequences.indices, episodes, drivers) if drivers else None
        if eligible is not None and not eligible.any() and config.dream.start == "recorded":
            raise UsageError(f"--dream.start-drivers {' '.join(drivers)}: no recorded episode of these drivers in "
                             f"--data-dir {config.run.data_dir}")
        pool = start_pool(config.dream.start, mdnrnn, mu, sequences.indices, sequences.actions,
                          [int(e["start"]) for e in episodes], config.dream.start_states,
                          np.random.default_rng([config.run.seed, 1]), device=setup.device, batch_size=config.dream.batch_size,
                          visit=bc_visitor(fit, config.cmaes.bc_eps) if fit else None, eligible=eligible)
        where = f" of {', '.join(drivers)} episodes" if drivers and config.dream.start == "recorded" else ""
        print(f"{len(pool)} dream start states ({config.dream.start}{where}) from {sequences.indices.size} recorded "
              f"steps ({time.time() - started:.1f}s)")
        setup.pool = pool.to(setup.device)

    @property
    def model_args(self) -> dict:
        return dict(zip(("latent_size", "hidden_size", "action_size"), self.sizes))

    @property
    def num_params(self) -> int:
        return num_controller_params(*self.sizes)

    @property
    def out_path(self) -> Path:
        return self.paths["controller"]


def load_setup(config: Config) -> Setup:
    """Load M (and check V beside it) from ``--checkpoint-dir``; one-line errors for missing or unfit files."""
    device = resolve_device(config.run.device)
    checkpoint_dir = Path(config.run.checkpoint_dir)
    paths = checkpoint_paths(checkpoint_dir)
    memory_checkpoint = load_checkpoint(paths["memory"], "memory")
    mdnrnn = build_model(MDNRNN, memory_checkpoint, paths["memory"]).float().to(device).eval()
    reward_scale = float(memory_checkpoint.get("reward", {}).get("scale", 1.0))  # M predicts reward × scale
    value_discount = float((memory_checkpoint.get("value") or {}).get("discount", 0.0))
    if config.cmaes.mode == "dream" and config.dream.value and (mdnrnn.value_head is None or not value_discount > 0):
        raise UsageError(f"--dream.value: {paths['memory']} has no value head; train M with "
                         f"car_racing/train_memory.py (its default --memory.value-discount 0.98), or pass --no-dream.value")
    load_checkpoint(paths["vision"], "vision")  # one-line error if V is missing (dream latents, real episodes)
    models_used = {kind: {"path": str(paths[kind]), "sha256": file_sha256(paths[kind])} for kind in ("vision", "memory")}
    trained_on = memory_checkpoint.get("vision", {}).get("sha256")
    if trained_on is not None and trained_on != models_used["vision"]["sha256"]:
        raise UsageError(f"{paths['memory']}: M was trained on a different V than {paths['vision']}; "
                         f"rerun car_racing/train_memory.py")
    sizes = (mdnrnn.latent_size, mdnrnn.hidden_size, mdnrnn.action_size)
    return Setup(config, device, checkpoint_dir, paths, mdnrnn, reward_scale, models_used, sizes, value_discount)
