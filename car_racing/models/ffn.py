"""The controller C of World Models: one linear layer from ``[z_t, h_t]`` to the action.

``a_t = squash(W [z_t, h_t] + b)`` with steer squashed by ``tanh`` to [-1, 1] and gas and brake by a
sigmoid to [0, 1]. With the paper's sizes (L = 32, H = 512, A = 3) that is 3 × 544 + 3 = 1635
parameters, evolved by CMA-ES as one flat vector.

Flat-parameter layout (:meth:`Controller.get_flat_params`, :func:`flat_to_population`), D = A·(L+H) + A:

- ``flat[: A*(L+H)]`` — the ``nn.Linear`` weight (A, L+H) in row-major order: row ``a`` holds the
  weights of action ``a``; within a row the first L entries multiply ``z`` and the next H multiply ``h``.
- ``flat[A*(L+H):]`` — the bias (A,).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def squash_actions(raw: torch.Tensor) -> torch.Tensor:
    """Raw linear outputs (..., 3) → actions (..., 3): steer ``tanh``, gas and brake ``sigmoid``."""
    return torch.cat([torch.tanh(raw[..., :1]), torch.sigmoid(raw[..., 1:])], dim=-1)


class Controller(nn.Module):
    """``a = squash(W [z, h] + b)``; see the module docstring for the flat-parameter layout."""

    def __init__(self, latent_size: int = 32, hidden_size: int = 512, action_size: int = 3):
        super().__init__()
        if action_size != 3:
            raise ValueError(f"action_size must be 3 (steer, gas, brake), got {action_size}")
        self.latent_size = latent_size
        self.hidden_size = hidden_size
        self.action_size = action_size
        self.fc = nn.Linear(latent_size + hidden_size, action_size)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """z (B, L), h (B, H) → actions (B, 3)."""
        return squash_actions(self.fc(torch.cat([z, h], dim=-1)))

    @property
    def num_params(self) -> int:
        """D = A·(L+H) + A, the length of the flat parameter vector."""
        return self.action_size * (self.latent_size + self.hidden_size) + self.action_size

    def get_flat_params(self) -> np.ndarray:
        """All parameters as one float64 vector (D,) in the module docstring's layout."""
        with torch.no_grad():
            return torch.cat([self.fc.weight.reshape(-1), self.fc.bias.reshape(-1)]).double().cpu().numpy()

    def set_flat_params(self, vec: np.ndarray | torch.Tensor) -> None:
        """Load a flat vector (D,) written in :meth:`get_flat_params`' layout."""
        flat = torch.as_tensor(np.asarray(vec, dtype=np.float64) if not torch.is_tensor(vec) else vec)
        if flat.ndim != 1 or flat.numel() != self.num_params:
            raise ValueError(f"expected a flat vector of {self.num_params} parameters, got shape {tuple(flat.shape)}")
        n_weight = self.fc.weight.numel()
        with torch.no_grad():
            self.fc.weight.copy_(flat[:n_weight].reshape(self.fc.weight.shape).to(self.fc.weight))
            self.fc.bias.copy_(flat[n_weight:].to(self.fc.bias))


def num_controller_params(latent_size: int, hidden_size: int, action_size: int = 3) -> int:
    """D for the given sizes (same as ``Controller(...).num_params``)."""
    return action_size * (latent_size + hidden_size) + action_size


def flat_to_population(flat: torch.Tensor, latent_size: int, hidden_size: int, action_size: int = 3
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """P flat vectors (P, D) → ``weights (P, L+H, A)``, ``biases (P, A)`` for :func:`population_actions`.

    ``weights[p]`` is the transpose of candidate p's ``nn.Linear`` weight, so ``x @ weights[p]`` is the
    linear layer. Keeps ``flat``'s dtype and device.
    """
    inputs = latent_size + hidden_size
    expected = num_controller_params(latent_size, hidden_size, action_size)
    if flat.ndim != 2 or flat.shape[1] != expected:
        raise ValueError(f"expected flat parameters (P, {expected}), got shape {tuple(flat.shape)}")
    n_weight = action_size * inputs
    weights = flat[:, :n_weight].reshape(-1, action_size, inputs).transpose(1, 2)
    biases = flat[:, n_weight:]
    return weights, biases


def population_actions(weights: torch.Tensor, biases: torch.Tensor, z: torch.Tensor, h: torch.Tensor
                       ) -> torch.Tensor:
    """Every candidate's controller on its own batch at once (one bmm, no loop over candidates).

    weights (P, L+H, A), biases (P, A), z (P, N, L), h (P, N, H) → actions (P, N, A), squashed as
    :meth:`Controller.forward`.
    """
    x = torch.cat([z, h], dim=-1)  # (P, N, L+H)
    raw = torch.baddbmm(biases.unsqueeze(1), x, weights)  # (P, N, A)
    return squash_actions(raw)
