"""Fitness sources for C's CMA-ES run: what a generation's candidates are scored by.

:class:`DreamFitness` scores them in M's dream (the World Models way; the real env never pays C);
:class:`RealEnvFitness` by real-env returns (the paper's CarRacing fitness), driven by the run's pool of real-env
workers (:class:`car_racing.episodes.agent.RealFitness`, which also drives its checks).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from car_racing.common.config import rollout_steps
from car_racing.models.ffn import flat_to_population
from car_racing.training.dream import dream_rollout

if TYPE_CHECKING:
    from car_racing.training.setup import Setup

REAL_TRAIN_SEED_OFFSET = 10_000  # real-mode training seeds start this far above --checks.seed-base
REAL_TRAIN_SEED_RANGE = 1_000_000


def generation_generator(seed: int, generation: int) -> torch.Generator:
    """The CPU generator of one generation's dreams (start states and noise): same for every candidate."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, generation]).generate_state(1)[0]))


DREAM_FITNESS = ("mean", "quantile", "mean-minus-std")



def aggregate_dream_fitness(trials: torch.Tensor, how: str = "mean", q: float = 0.25, k: float = 1.0) -> np.ndarray:
    """Each row's fitness from its (P, N) dream returns: the mean, the q-quantile (linear interpolation between
    order statistics) or mean − k·std (1/N); float64, one value per row. The pessimistic forms pay a candidate
    only what most of its dreams (each with its own dropout mask and noise) agree on (ME-TRPO/MOPO's idea)."""
    trials = trials.double().cpu()
    if how == "mean":
        return trials.mean(dim=1).numpy()
    if how == "quantile":
        return torch.quantile(trials, q, dim=1).numpy()
    if how == "mean-minus-std":
        return (trials.mean(dim=1) - k * trials.std(dim=1, unbiased=False)).numpy()
    raise ValueError(f"unknown dream fitness {how!r}")


class DreamFitness:
    """Fitness of each candidate over ``--dream.trials`` dreams in M: their mean, or a pessimistic aggregate
    (``--dream.fitness``); the CMA mean drives the same dreams, for the curve. ``last_trial_means`` keeps the
    plain mean of the last generation's dreams (what the dream pays on average, beside the fitness CMA ranks by).

    Each dream starts from a real (z, h) state of the start pool (:meth:`Setup.load_start_pool`) and M samples
    the next z at ``--dream.temperature``; a dream's return is the sum of M's predicted rewards (real reward units)
    until M's done head fires (that step's reward counts). All candidates of a generation share the start
    states and the noise (one generator seeded from ``--seed`` and the generation), and the population ×
    trials step through M as one batch."""

    name = "dream"

    def __init__(self, setup: Setup):
        if setup.pool is None:
            setup.load_start_pool()
        self.setup = setup
        self.last_trial_means: np.ndarray | None = None

    def trials(self, candidates: list[np.ndarray], mean: np.ndarray, generation: int) -> torch.Tensor:
        """Every candidate's (and, last row, CMA's mean's) return in each of the generation's dreams, (P + 1, N)."""
        setup, config = self.setup, self.setup.config
        generator = generation_generator(config.run.seed, generation)
        start_z, start_state = setup.pool.pick(config.dream.trials, generator)
        flat = torch.as_tensor(np.stack(candidates + [mean]), dtype=torch.float32, device=setup.device)
        weights, biases = flat_to_population(flat, *setup.sizes)
        return dream_rollout(setup.mdnrnn, weights, biases, start_z, start_state, rollout_steps(config),
                             config.dream.temperature, generator, reward_scale=1.0 / setup.reward_scale,
                             dtype=config.dream.dtype, dropout=config.dream.dropout,
                             value_discount=setup.value_discount if config.dream.value else 0.0,
                             smoothing=config.cmaes.smoothing)

    def __call__(self, candidates: list[np.ndarray], mean: np.ndarray, generation: int) -> tuple[np.ndarray, float]:
        config = self.setup.config
        trials = self.trials(candidates, mean, generation)
        self.last_trial_means = aggregate_dream_fitness(trials, "mean")
        fitness = aggregate_dream_fitness(trials, config.dream.fitness, config.dream.fitness_q, config.dream.fitness_k)
        return fitness[:-1], float(fitness[-1])

    def close(self) -> None:
        pass


def trial_mean(fitness_source: Any, index: int) -> float:
    """The plain mean of candidate ``index``'s dreams in the last generation (NaN for real-env fitness)."""
    means = getattr(fitness_source, "last_trial_means", None)
    return math.nan if means is None else float(means[index])


class RealEnvFitness:
    """Mean real-env return of each candidate over ``--cmaes.real-trials`` tracks drawn per generation (all
    candidates drive the same tracks), in a worker pool kept for the whole run."""

    name = "real"

    def __init__(self, setup: Setup):
        self.config = setup.config
        self.episodes = setup.real_episodes()

    def __call__(self, candidates: list[np.ndarray], mean: np.ndarray, generation: int) -> tuple[np.ndarray, float]:
        config = self.config
        rng = np.random.default_rng([config.run.seed, generation])
        seeds = config.checks.seed_base + REAL_TRAIN_SEED_OFFSET + rng.choice(REAL_TRAIN_SEED_RANGE, config.cmaes.real_trials,
                                                                          replace=False)
        return self.episodes(candidates, seeds.tolist(), rollout_steps(config), config.cmaes.smoothing, config.cmaes.stall_steps), math.nan

    def close(self) -> None:
        pass  # the workers are the run's (Setup.close_real)


FITNESS_SOURCES = {"dream": DreamFitness, "real": RealEnvFitness}
