"""Carry a controller across a retrain of M: the same driver, re-expressed on the new M's hidden state.

C reads ``[z_t, h_t]`` and h is M's LSTM state, so when M is trained further (the repair loop retrains it
every iteration) the C evolved on the old M drives differently on the new one: h has moved. Measured on
the user's-path loop (docs/dream-repair.md, "Carrying C onto the retrained M"): iteration 0's kept C scored
504.9 on 16 fresh tracks with the M it was evolved on and 402.9 with iteration 1's M — a warm start that
begins 100 points down, so the dream's next generations first re-learn what was lost.

The new M's h is, on recorded data, close to a linear function of the old M's h (R² ≈ 0.997 there), and C
is linear before its squash (:mod:`car_racing.models.ffn`). So C is refitted by least squares: inputs
``[z_t, h_new_t]``, targets the old C's own pre-squash outputs ``W [z_t, h_old_t] + b`` at the same
recorded steps (both Ms run over whole recorded episodes from a zero state with the recorded actions, as
the agent runs M in the real env). The targets are C's own outputs, never an expert's action, and no
return enters the fit: a carried C keeps the provenance of the C it came from. On the measurement above
the carried C scored 505.0 with the new M (``bench/carry_check.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from car_racing.models.ffn import flat_to_population
from car_racing.training.imitation import LinearFit, linear_to_flat


@torch.no_grad()
def carry_controller(params: np.ndarray, old_mdnrnn: Any, new_mdnrnn: Any, mu: np.ndarray | torch.Tensor,
                     actions: np.ndarray, episodes: Sequence[tuple[int, int]], *, ridge: float = 1e-3,
                     batch_size: int = 32) -> tuple[np.ndarray, dict[str, Any]]:
    """C(params) on ``old_mdnrnn``'s h, refitted onto ``new_mdnrnn``'s h (module docstring); runs on
    ``new_mdnrnn``'s device (``old_mdnrnn`` must be on the same one).

    ``mu`` (N, L) V's μ of every recorded frame, ``actions`` (N, A) the recorded actions, ``episodes`` the
    (start, length) of each recorded episode in them. Returns the carried flat parameters (D,) and a record
    ``{"samples", "ridge", "target_r2"}`` (R² per action of the refit on the old C's pre-squash outputs).
    """
    latent, hidden = old_mdnrnn.latent_size, old_mdnrnn.hidden_size
    if (new_mdnrnn.latent_size, new_mdnrnn.hidden_size) != (latent, hidden):
        raise ValueError(f"the two Ms differ in size: ({latent}, {hidden}) vs "
                         f"({new_mdnrnn.latent_size}, {new_mdnrnn.hidden_size})")
    device = new_mdnrnn.mdn.weight.device
    flat = torch.as_tensor(np.asarray(params)[None], dtype=torch.float32, device=device)
    weights, biases = flat_to_population(flat, latent, hidden, new_mdnrnn.action_size)  # (1, L+H, A), (1, A)
    mu = torch.as_tensor(np.asarray(mu), dtype=torch.float32, device=device)
    actions = np.asarray(actions, dtype=np.float32)
    fit = LinearFit(latent + hidden, new_mdnrnn.action_size)
    by_length: dict[int, list[int]] = {}
    for start, length in episodes:
        by_length.setdefault(int(length), []).append(int(start))
    for length, starts in by_length.items():  # equal lengths batch without padding
        for first in range(0, len(starts), batch_size):
            index = np.asarray(starts[first:first + batch_size])[:, None] + np.arange(length)[None]  # (B, T)
            z = mu[torch.as_tensor(index)]  # (B, T, L)
            a = torch.as_tensor(actions[index], device=device)  # (B, T, A)
            h_old, h_new = (seen_hidden(m, z, a) for m in (old_mdnrnn, new_mdnrnn))
            targets = torch.cat([z, h_old], dim=-1) @ weights[0] + biases[0]  # the old C's pre-squash outputs (B, T, A)
            fit.add(torch.cat([z, h_new], dim=-1).reshape(-1, latent + hidden), targets.reshape(-1, targets.shape[-1]))
    new_weight, new_bias = fit.solve(ridge)
    return linear_to_flat(new_weight, new_bias), {"samples": fit.count, "ridge": ridge,
                                                  "target_r2": fit.r2(new_weight, new_bias).tolist()}


def seen_hidden(mdnrnn: Any, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """h_t that C sees at step t of a recorded episode, M started from zeros: z (B, T, L), actions (B, T, A) →
    (B, T, H), row 0 zeros and row t M's output after consuming steps 0 … t−1 (as :class:`Agent` runs it)."""
    output, _ = mdnrnn(z, actions)
    return torch.cat([torch.zeros_like(output.hidden[:, :1]), output.hidden[:, :-1]], dim=1)
