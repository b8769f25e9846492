"""Dreams: the controller C drives inside the memory model M instead of the real env.

Two parts:

- **Recorded states.** :func:`iter_recorded_states` runs M over the recorded memory sequences with
  the recorded actions (z from the cached V means μ) and yields every step's input ``z_t`` with M's
  state ``(h_t, c_t)`` *before* it consumes ``(z_t, a_t)`` — exactly the ``(z_t, h_t)`` the agent sees
  at real-env time. :func:`collect_start_states` keeps a random pool of them as dream start states;
  the behaviour-cloning warm start fits C on all of them.
- **Rollouts.** :func:`dream_rollout` steps the whole population × trials through M as one batch of
  ``P·N`` rows per time step. :func:`dream_rollout_per_candidate` is the reference loop over
  candidates (same arithmetic, one candidate at a time) used by the benchmark and the tests.

Dream semantics (both paths):

- every candidate starts its ``N`` trials from the same ``N`` start states and sees the same noise
  (common random numbers): the noise is pre-drawn from ``generator`` as tensors of shape
  ``(steps, N, L)`` and broadcast over candidates, so the two paths consume identical random numbers;
- the next z is sampled from M's mixture at ``temperature`` τ: per latent dimension a component is
  drawn from ``softmax(logit_pi / τ)`` (inverse CDF of a uniform) and ``z = μ_k + σ_k·√τ·ε``, the same
  convention as :meth:`MDNRNN.sample_next_z`;
- fitness = sum over steps of M's predicted reward ``r_t`` (in real reward units: the prediction is
  multiplied by ``reward_scale``, the memory checkpoint's convention), ended by M's done head: a
  trial is done after the first step with ``sigmoid(done_logit) > 0.5`` (deterministic threshold, not
  sampled); that step's reward counts and every later reward is masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from car_racing.models.ffn import population_actions

DONE_THRESHOLD = 0.5


# --- recorded states --------------------------------------------------------------------------------

@dataclass
class RecordedStates:
    """One batch of recorded windows with M's state at every step (all tensors on one device).

    ``z`` (B, T, L) the cached μ of frame t; ``h``, ``c`` (B, T, H) M's state before consuming
    ``(z_t, a_t)`` (zeros at t = 0: M sees each window from a zero state, as in training);
    ``actions`` (B, T, A) the recorded actions; ``rows`` (B,) the window numbers.
    """

    rows: np.ndarray
    z: torch.Tensor
    h: torch.Tensor
    c: torch.Tensor
    actions: torch.Tensor


@torch.no_grad()
def iter_recorded_states(mdnrnn: Any, mu: np.ndarray | torch.Tensor, indices: np.ndarray, actions: np.ndarray,
                         *, device: torch.device | str = "cpu", batch_size: int = 256) -> Iterator[RecordedStates]:
    """Run M over the recorded windows ``indices`` (S, T) (into ``mu`` (N, L)) with ``actions`` (S, T, A),
    ``batch_size`` windows at a time, yielding :class:`RecordedStates` per batch."""
    mu = torch.as_tensor(np.asarray(mu) if not isinstance(mu, torch.Tensor) else mu, dtype=torch.float32)
    indices = np.asarray(indices)
    actions = np.asarray(actions, dtype=np.float32)
    for start in range(0, len(indices), batch_size):
        rows = np.arange(start, min(start + batch_size, len(indices)))
        z = mu[torch.as_tensor(indices[rows])].to(device)  # (B, T, L)
        a = torch.as_tensor(actions[rows]).to(device)  # (B, T, A)
        batch, steps = z.shape[:2]
        state = mdnrnn.initial_state(batch, device=device)
        hs, cs = [], []
        for t in range(steps):
            hs.append(state[0])
            cs.append(state[1])
            _, state = mdnrnn.step(z[:, t], a[:, t], state)
        yield RecordedStates(rows=rows, z=z, h=torch.stack(hs, 1), c=torch.stack(cs, 1), actions=a)


@dataclass
class StartStates:
    """A pool of real dream start states: ``z`` (S, L), ``h`` and ``c`` (S, H)."""

    z: torch.Tensor
    h: torch.Tensor
    c: torch.Tensor

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def pick(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``count`` start states drawn with ``generator`` (without replacement while the pool allows):
        ``(z (count, L), (h, c) each (count, H))``."""
        if count <= len(self):
            index = torch.randperm(len(self), generator=generator)[:count]
        else:
            index = torch.randint(len(self), (count,), generator=generator)
        index = index.to(self.z.device)
        return self.z[index], (self.h[index], self.c[index])

    def to(self, device: torch.device | str) -> "StartStates":
        return StartStates(self.z.to(device), self.h.to(device), self.c.to(device))


def collect_start_states(mdnrnn: Any, mu: np.ndarray | torch.Tensor, indices: np.ndarray, actions: np.ndarray,
                         count: int, rng: np.random.Generator, *, device: torch.device | str = "cpu",
                         batch_size: int = 256,
                         visit: Callable[[RecordedStates], None] | None = None) -> StartStates:
    """Keep ``count`` (window, step) positions of the recorded windows, chosen uniformly at random by
    ``rng`` (all of them when there are fewer), as a CPU :class:`StartStates` pool.

    M runs only over the windows that hold a chosen position — or over every window when ``visit`` is
    given: it then sees every batch of :class:`RecordedStates` (the BC warm start accumulates its
    least-squares statistics there, so M runs over the data once).
    """
    indices, actions = np.asarray(indices), np.asarray(actions)
    windows, steps = indices.shape
    total = windows * steps
    if total == 0:
        raise ValueError("no recorded windows to take dream start states from")
    chosen = np.sort(rng.choice(total, size=min(count, total), replace=False))
    chosen_window, chosen_step = chosen // steps, chosen % steps
    needed = np.arange(windows) if visit is not None else np.unique(chosen_window)
    z_parts, h_parts, c_parts = [], [], []
    for batch in iter_recorded_states(mdnrnn, mu, indices[needed], actions[needed], device=device,
                                      batch_size=batch_size):
        batch_windows = needed[batch.rows]  # sorted window numbers of this batch
        batch.rows = batch_windows
        inside = (chosen_window >= batch_windows[0]) & (chosen_window <= batch_windows[-1])
        if inside.any():
            rows = torch.as_tensor(np.searchsorted(batch_windows, chosen_window[inside]), device=batch.z.device)
            cols = torch.as_tensor(chosen_step[inside], device=batch.z.device)
            z_parts.append(batch.z[rows, cols].cpu())
            h_parts.append(batch.h[rows, cols].cpu())
            c_parts.append(batch.c[rows, cols].cpu())
        if visit is not None:
            visit(batch)
    return StartStates(torch.cat(z_parts), torch.cat(h_parts), torch.cat(c_parts))


# --- sampling with pre-drawn noise ---------------------------------------------------------------------

@dataclass
class DreamNoise:
    """The random numbers of one dream batch, shared by every candidate (common random numbers).

    ``mixture`` (steps, N, L) uniforms choosing each latent dimension's mixture component;
    ``gaussian`` (steps, N, L) standard normals for the chosen component.
    """

    mixture: torch.Tensor
    gaussian: torch.Tensor

    @classmethod
    def draw(cls, steps: int, trials: int, latent_size: int, generator: torch.Generator | None) -> "DreamNoise":
        """Draw on the CPU from ``generator`` (results do not depend on the device the dream runs on)."""
        mixture = torch.rand((steps, trials, latent_size), generator=generator)
        gaussian = torch.randn((steps, trials, latent_size), generator=generator)
        return cls(mixture, gaussian)

    def to(self, device: torch.device | str) -> "DreamNoise":
        return DreamNoise(self.mixture.to(device), self.gaussian.to(device))


def sample_with_noise(logit_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, temperature: float,
                      mixture_uniform: torch.Tensor, gaussian: torch.Tensor) -> torch.Tensor:
    """z (..., L) from M's mixture (``logit_pi``, ``mu``, ``log_sigma`` each (..., L, K)) at ``temperature``
    using the given noise (``mixture_uniform``, ``gaussian`` broadcastable to (..., L)). τ ≤ 0 gives the
    mean of the most likely component (as :meth:`MDNRNN.sample_next_z`)."""
    if temperature <= 0:
        component = logit_pi.argmax(dim=-1, keepdim=True)
        return mu.gather(-1, component).squeeze(-1)
    probs = torch.softmax(logit_pi / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    component = (mixture_uniform.unsqueeze(-1) > cdf).sum(dim=-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)
    mean = mu.gather(-1, component).squeeze(-1)
    sigma = log_sigma.gather(-1, component).squeeze(-1).exp()
    return mean + sigma * (temperature ** 0.5) * gaussian


# --- rollouts ----------------------------------------------------------------------------------------------

@torch.no_grad()
def _rollout(mdnrnn: Any, weights: torch.Tensor, biases: torch.Tensor, start_z: torch.Tensor,
             start_state: tuple[torch.Tensor, torch.Tensor], noise: DreamNoise, temperature: float,
             reward_scale: float) -> torch.Tensor:
    """Fitness (P, N) of the P candidates in ``weights`` (P, L+H, A), ``biases`` (P, A), each driving the
    N trials that start at ``start_z`` (N, L), ``start_state`` ((N, H), (N, H)), as one batch of P·N rows."""
    population, trials = weights.shape[0], start_z.shape[0]
    latent, hidden = start_z.shape[1], start_state[0].shape[1]
    rows = population * trials
    z = start_z.repeat(population, 1)  # (P·N, L), candidate-major
    state = (start_state[0].repeat(population, 1), start_state[1].repeat(population, 1))
    fitness = torch.zeros(rows, device=start_z.device)
    alive = torch.ones(rows, dtype=torch.bool, device=start_z.device)
    for t in range(noise.mixture.shape[0]):
        actions = population_actions(weights, biases, z.view(population, trials, latent),
                                     state[0].view(population, trials, hidden))
        out, state = mdnrnn.step(z, actions.reshape(rows, -1), state)
        fitness += torch.where(alive, out.reward * reward_scale, torch.zeros_like(fitness))
        alive &= torch.sigmoid(out.done_logit) <= DONE_THRESHOLD
        if t + 1 == noise.mixture.shape[0] or not bool(alive.any()):
            break
        shape = (population, trials, latent)
        z = sample_with_noise(out.logit_pi.view(*shape, -1), out.mu.view(*shape, -1),
                              out.log_sigma.view(*shape, -1), temperature,
                              noise.mixture[t], noise.gaussian[t]).reshape(rows, latent)
    return fitness.view(population, trials)


def dream_rollout(mdnrnn: Any, weights: torch.Tensor, biases: torch.Tensor, start_z: torch.Tensor,
                  start_state: tuple[torch.Tensor, torch.Tensor], steps: int, temperature: float,
                  generator: torch.Generator | None, *, reward_scale: float = 1.0) -> torch.Tensor:
    """Batched dream: fitness (P, N) of P candidates (``weights`` (P, L+H, A), ``biases`` (P, A)) over N trials
    starting at ``start_z`` (N, L), ``start_state`` = (h, c) each (N, H), ``steps`` steps long.

    The whole population × trials steps through M as one batch per time step. Noise is pre-drawn
    from ``generator`` (:class:`DreamNoise`), so the same generator state gives the same fitness as
    :func:`dream_rollout_per_candidate`.
    """
    noise = DreamNoise.draw(steps, start_z.shape[0], start_z.shape[1], generator).to(start_z.device)
    return _rollout(mdnrnn, weights, biases, start_z, start_state, noise, temperature, reward_scale)


def dream_rollout_per_candidate(mdnrnn: Any, weights: torch.Tensor, biases: torch.Tensor, start_z: torch.Tensor,
                                start_state: tuple[torch.Tensor, torch.Tensor], steps: int, temperature: float,
                                generator: torch.Generator | None, *, reward_scale: float = 1.0,
                                batch_trials: bool = True) -> torch.Tensor:
    """Reference: the same dream as :func:`dream_rollout`, one candidate at a time (a Python loop over
    candidates, each stepping its N trials as a batch of N rows; with ``batch_trials=False`` one
    rollout at a time, batch 1). Same random numbers, same fitness (P, N)."""
    noise = DreamNoise.draw(steps, start_z.shape[0], start_z.shape[1], generator).to(start_z.device)
    results = []
    for p in range(weights.shape[0]):
        if batch_trials:
            results.append(_rollout(mdnrnn, weights[p:p + 1], biases[p:p + 1], start_z, start_state, noise,
                                    temperature, reward_scale))
            continue
        row = []
        for n in range(start_z.shape[0]):
            trial_noise = DreamNoise(noise.mixture[:, n:n + 1], noise.gaussian[:, n:n + 1])
            row.append(_rollout(mdnrnn, weights[p:p + 1], biases[p:p + 1], start_z[n:n + 1],
                                (start_state[0][n:n + 1], start_state[1][n:n + 1]), trial_noise,
                                temperature, reward_scale))
        results.append(torch.cat(row, dim=1))
    return torch.cat(results, dim=0)
