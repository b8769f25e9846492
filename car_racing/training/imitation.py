"""Warm starts for the controller C: behaviour cloning (BC) and DAgger with the autopilot as the expert.

C is linear before its squash (``a = squash(W [z, h] + b)``, :mod:`car_racing.models.ffn`), so imitation
is least squares on pre-squash targets: ``atanh(steer)``, ``logit(gas)``, ``logit(brake)``
(:func:`bc_targets`), solved with a ridge on standardised inputs (:class:`LinearFit`).

**Why DAgger.** Plain BC fits C to the states the expert visited; C's small mistakes then lead it to
states the expert never showed (drifting wide, slowing down), and its errors compound. DAgger (Ross et
al. 2011) asks the expert what it *would* do in the states C itself reaches:

- round 0: the autopilot drives (with its recording noise, so the data holds mistakes and recoveries);
- round r ≥ 1: C fitted on all rounds so far drives; at every step the clean autopilot (noise 0), which
  reads the env's track and car state, labels the state with its own action;
- after each round C is refitted on the aggregate of every round's ``([z_t, h_t], expert action)`` pairs.

Labels are always the clean expert's action, even where a noisy expert or C drove. M is stepped with
the action the env really received, exactly as when C drives alone (:class:`car_racing.episodes.agent.Agent`).
All episodes run through :func:`car_racing.episodes.rollout.run_episodes` (the one real-env loop).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from car_racing.common.runtime import resolve_device
from car_racing.episodes.agent import Agent, load_agent_models
from car_racing.episodes.rollout import Backend, run_episodes
from car_racing.world.autopilot import AutopilotDriver


def bc_targets(actions: np.ndarray | torch.Tensor, eps: float = 0.02) -> torch.Tensor:
    """Recorded actions (N, 3) → pre-squash targets (N, 3) float64: atanh(steer), logit(gas), logit(brake),
    each action clipped ε inside its range first (so saturated actions give finite targets)."""
    a = torch.as_tensor(np.asarray(actions) if not torch.is_tensor(actions) else actions).double()
    steer = torch.atanh(a[:, :1].clamp(-1 + eps, 1 - eps))
    pedals = torch.logit(a[:, 1:].clamp(eps, 1 - eps))
    return torch.cat([steer, pedals], dim=1)


class LinearFit:
    """Streaming least squares ``y ≈ x W + b``: accumulates ``[x, 1]ᵀ[x, 1]`` and ``[x, 1]ᵀ y`` in float64."""

    def __init__(self, inputs: int, outputs: int):
        self.gram = torch.zeros(inputs + 1, inputs + 1, dtype=torch.float64)
        self.cross = torch.zeros(inputs + 1, outputs, dtype=torch.float64)
        self.target_sq = torch.zeros(outputs, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x (B, D), y (B, A)."""
        x = torch.cat([x.double().cpu(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        self.gram += x.T @ x
        self.cross += x.T @ y.double().cpu()
        self.target_sq += (y.double().cpu() ** 2).sum(dim=0)
        self.count += len(x)

    def solve(self, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (D, A), b (A,)) minimising mean ‖xW + b − y‖² + ridge·‖W‖² (inputs are standardised
        for the ridge, so it is scale-free; the bias is not penalised)."""
        if self.count == 0:
            raise ValueError("no samples to fit")
        gram, cross = self.gram / self.count, self.cross / self.count
        mean = gram[-1, :-1]
        var = (gram.diagonal()[:-1] - mean ** 2).clamp_min(1e-12)
        penalty = torch.zeros(len(gram), dtype=torch.float64)
        penalty[:-1] = ridge * var
        solution = torch.linalg.solve(gram + torch.diag(penalty), cross)
        return solution[:-1], solution[-1]

    def residual_mse(self, weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
        """Mean squared residual per output (A,) of ``x W + b`` on the accumulated samples."""
        w = torch.cat([weight, bias[None]], dim=0)
        gram, cross = self.gram / self.count, self.cross / self.count
        mse = (w * (gram @ w)).sum(0) - 2 * (w * cross).sum(0) + self.target_sq / self.count
        return mse.clamp_min(0).numpy()

    def state_dict(self) -> dict[str, Any]:
        """The accumulated sums (to save and continue with :meth:`from_state_dict`)."""
        return {"gram": self.gram.clone(), "cross": self.cross.clone(), "target_sq": self.target_sq.clone(),
                "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "LinearFit":
        fit = cls(state["gram"].shape[0] - 1, state["cross"].shape[1])
        fit.gram, fit.cross = state["gram"].double().clone(), state["cross"].double().clone()
        fit.target_sq, fit.count = state["target_sq"].double().clone(), int(state["count"])
        return fit

    def r2(self, weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
        """Coefficient of determination per output (A,) on the accumulated samples."""
        variance = (self.target_sq / self.count - (self.cross[-1] / self.count) ** 2).numpy()
        return 1 - self.residual_mse(weight, bias) / np.maximum(variance, 1e-12)


def linear_to_flat(weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    """(W (L+H, A), b (A,)) → Controller flat vector (D,) (layout in :mod:`car_racing.models.ffn`)."""
    return torch.cat([weight.T.reshape(-1), bias.reshape(-1)]).double().cpu().numpy()


# --- DAgger -----------------------------------------------------------------------------------------------

class DaggerDriver:
    """A rollout driver that runs the World Models agent and labels every state with the clean autopilot.

    ``expert_noise`` is None: C drives. Otherwise the autopilot with that noise level drives (round 0).
    Either way :attr:`episode_info` holds, after the episode, ``features`` float32 (T, L+H) = ``[z_t, h_t]``
    and ``labels`` float32 (T, 3) = the clean autopilot's action at step t.
    """

    def __init__(self, agent: Agent, expert_noise: float | None = None):
        self.agent = agent
        self.expert = AutopilotDriver(noise=0.0)
        self.noisy_expert = None if expert_noise is None else AutopilotDriver(noise=expert_noise)
        self._features: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def reset(self, env: Any, seed: int) -> None:
        self.agent.reset(env, seed)
        self.expert.reset(env, seed)
        if self.noisy_expert is not None:
            self.noisy_expert.reset(env, seed)
        self._features, self._labels = [], []

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        action = self.agent.act(observation, env, step, episode_reward)
        self._features.append(self.agent.features()[0])
        self._labels.append(self.expert.act(observation, env, step, episode_reward))
        if self.noisy_expert is not None:
            action = self.noisy_expert.act(observation, env, step, episode_reward)
        return action

    def applied(self, action: np.ndarray) -> None:
        self.agent.applied(action)

    @property
    def episode_info(self) -> dict[str, Any]:
        width = self.agent.vae.latent_size + self.agent.mdnrnn.hidden_size
        return {"features": np.asarray(self._features, dtype=np.float32).reshape(-1, width),
                "labels": np.asarray(self._labels, dtype=np.float32).reshape(-1, 3)}


def make_dagger_driver(checkpoint_dir: str | os.PathLike, controller_params: np.ndarray | None,
                       expert_noise: float | None, device: str = "cpu") -> DaggerDriver:
    """A :class:`DaggerDriver` from V and M in ``checkpoint_dir`` and C's flat parameters (picklable via
    ``functools.partial``: each worker process builds its own)."""
    device = resolve_device(device)
    vae, mdnrnn, controller = load_agent_models(checkpoint_dir, controller_params, device)
    return DaggerDriver(Agent(vae, mdnrnn, controller, device=device), expert_noise)


@dataclass
class DaggerRound:
    """What one DAgger round measured: who drove, their returns, and the fit after adding the round."""

    round: int
    driver: str  # "expert" (round 0) or "controller"
    seeds: list[int]
    returns: list[float]
    samples: int  # aggregate pairs after this round
    target_r2: list[float]  # pre-squash R² of the refit on the aggregate (steer, gas, brake)
    params: np.ndarray = field(repr=False, default=None)  # C after the refit


def run_dagger(checkpoint_dir: str | os.PathLike, num_params: int, rounds: int, episodes: int,
               seeds: Callable[[int], Sequence[int]], *, ridge: float, eps: float = 0.02,
               expert_noise: float = 1.0, max_steps: int = 1000, smoothing: float = 0.0, workers: int = 1,
               backend: Backend | None = None, resume: dict[str, Any] | None = None,
               on_round: Callable[[DaggerRound, dict[str, Any]], None] | None = None) -> list[DaggerRound]:
    """Round 0 (the noisy expert drives) plus ``rounds`` rounds where C drives, each of ``episodes``
    real episodes on ``seeds(round)``; C is refitted on the aggregate after every round.

    Returns one :class:`DaggerRound` per round (``[-1].params`` is the final C). After each round
    ``on_round(record, state)`` is called; ``state`` (the aggregate's sums and the rounds so far) passed
    back as ``resume`` continues the run after its last round (also with a larger ``rounds``).
    """
    fit: LinearFit | None = None
    params = np.zeros(num_params)
    history: list[DaggerRound] = []
    if resume is not None:
        fit = LinearFit.from_state_dict(resume["fit"])
        history = [DaggerRound(**{**record, "params": np.asarray(record["params"], dtype=np.float64)})
                   for record in resume["rounds"]]  # (saved as plain data: params as a tensor)
        params = np.asarray(history[-1].params, dtype=np.float64)
    for index in range(len(history), rounds + 1):
        round_seeds = [int(s) for s in seeds(index)][:episodes]
        noise = expert_noise if index == 0 else None
        make_driver = functools.partial(make_dagger_driver, str(checkpoint_dir), params, noise, "cpu")
        returns = []
        for result in run_episodes(make_driver, round_seeds, max_steps, workers=workers, ordered=True,
                                   backend=backend, smoothing=smoothing):
            features = torch.from_numpy(result.info["features"])
            if fit is None:
                fit = LinearFit(features.shape[1], 3)
            fit.add(features, bc_targets(result.info["labels"], eps))
            returns.append(result.total_reward)
        weight, bias = fit.solve(ridge)
        params = linear_to_flat(weight, bias)
        record = DaggerRound(index, "expert" if index == 0 else "controller", round_seeds, returns, fit.count,
                             fit.r2(weight, bias).tolist(), params)
        history.append(record)
        if on_round is not None:
            on_round(record, {"fit": fit.state_dict(), "rounds": [dataclasses.asdict(r) for r in history]})
    return history
