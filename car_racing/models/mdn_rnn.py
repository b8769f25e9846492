"""The memory model M: an LSTM over [z_t, a_t] with a mixture density network (MDN) for z_{t+1}
and two small heads for the reward r_t and the episode end done_t (World Models, Ha & Schmidhuber 2018).

Shapes: B batch, T time, L ``latent_size``, A ``action_size``, H ``hidden_size``, K ``num_mixtures``.

At step t the LSTM consumes x_t = [z_t, a_t] and outputs h_{t+1}. Heads on h_{t+1} predict:

- p(z_{t+1}) as a mixture of K diagonal Gaussians *per latent dimension* (as in the paper): for each of
  the L dimensions K mixture logits, K means and K log σ;
- r_t, the reward step t returns, in real CarRacing reward units (no scaling inside the model);
- done_t as a logit (P(the episode ends at step t) = sigmoid(done_logit)).

An optional value head (``value_head=True``) predicts, from the same h_{t+1}, the discounted average reward of
the steps after t, ``(1 − γ) · Σ_{k≥1} γ^{k−1} r_{t+k}`` (:meth:`MDNRNN.value_rate`; real reward units per
step, so its loss sits beside the reward MSE): a short dream can end on ``value_rate / (1 − γ)`` instead of
counting only the rewards it reached (Dreamer's bootstrap; ``γ`` is the training stage's choice, kept in the
checkpoint, not in the model).

The sequence forward (training) and :meth:`MDNRNN.step` (rollouts) run the same ``nn.LSTM`` weights.

Both take an optional ``head_mask`` (B, H): a dropout mask on h before the heads, fixed over the
sequence (Dropout's Dream Land: train M with a per-sequence mask, dream with a per-dream mask, so each
dream is one draw of a slightly different M). The recurrence and the h a controller sees are never
masked. :func:`head_dropout_mask` draws one.

:meth:`MDNRNN.dream_step` is one step of every dream in the project (CMA-ES's reference dream, the repair step, the
film, a person driving M in ``drive_in_dream.py``): M steps, the done test against :data:`DONE_THRESHOLD`, and z_{t+1}
sampled at temperature τ from pre-drawn noise (:func:`sample_with_noise`) or from a generator
(:meth:`MDNRNN.sample_next_z`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (B, H)

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# a dream ends after the first step with sigmoid(done_logit) > DONE_THRESHOLD (that step's reward counts; not sampled)
DONE_THRESHOLD = 0.5


class MDNOutput(NamedTuple):
    """What M predicts after consuming (z_t, a_t). Leading dims ``...`` are (B, T) or (B,).

    logit_pi:   (..., L, K) unnormalised mixture weights of z_{t+1}, per latent dimension.
    mu:         (..., L, K) component means.
    log_sigma:  (..., L, K) component log standard deviations.
    reward:     (...,) predicted r_t in real reward units.
    done_logit: (...,) logit of done_t.
    hidden:     (..., H) LSTM output h_{t+1} (what the controller sees next step).
    """

    logit_pi: torch.Tensor
    mu: torch.Tensor
    log_sigma: torch.Tensor
    reward: torch.Tensor
    done_logit: torch.Tensor
    hidden: torch.Tensor


class DreamTransition(NamedTuple):
    """One dream step (:meth:`MDNRNN.dream_step`). Leading dim (B,).

    output:           M's :class:`MDNOutput` after consuming (z_t, a_t) (r_t, done_t, the mixture of z_{t+1}).
    state:            the new (h, c).
    done_probability: sigmoid(done_logit).
    done:             bool, ``done_probability > DONE_THRESHOLD``: the dream ends after this step.
    next_z:           z_{t+1} sampled at τ (None when not asked for).
    """

    output: MDNOutput
    state: tuple[torch.Tensor, torch.Tensor]
    done_probability: torch.Tensor
    done: torch.Tensor
    next_z: torch.Tensor | None


class MDNRNN(nn.Module):
    """LSTM + MDN + reward/done heads.

    Args:
        latent_size: L, size of z (V's latent size).
        action_size: A, size of the action ([steer, gas, brake] → 3).
        hidden_size: H, LSTM width (the paper used 256 for CarRacing; this project's default is 512).
        num_mixtures: K, Gaussians per latent dimension (5 in the paper).
        value_head: add the value head (:meth:`value_rate`).
    """

    def __init__(self, latent_size: int = 32, action_size: int = 3, hidden_size: int = 512, num_mixtures: int = 5,
                 value_head: bool = False):
        super().__init__()
        self.latent_size = int(latent_size)
        self.action_size = int(action_size)
        self.hidden_size = int(hidden_size)
        self.num_mixtures = int(num_mixtures)
        self.lstm = nn.LSTM(self.latent_size + self.action_size, self.hidden_size, batch_first=True)
        self.mdn = nn.Linear(self.hidden_size, 3 * self.latent_size * self.num_mixtures)
        self.reward_head = nn.Linear(self.hidden_size, 1)
        self.done_head = nn.Linear(self.hidden_size, 1)
        self.value_head = nn.Linear(self.hidden_size, 1) if value_head else None

    def value_rate(self, hidden: torch.Tensor, head_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden h_{t+1} (..., H) → (...,) the predicted discounted average reward per step after step t (see the
        module docstring); ``head_mask`` as in :meth:`heads`. Needs ``value_head=True``."""
        if self.value_head is None:
            raise ValueError("this M has no value head (train it with train_memory.py --memory.value-discount)")
        seen = hidden if head_mask is None else hidden * head_mask
        return self.value_head(seen).squeeze(-1)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros (h, c), each (batch_size, H), on ``device`` (default: the model's device)."""
        if device is None:
            device = self.mdn.weight.device
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=self.mdn.weight.dtype)
        return zeros, zeros.clone()

    def heads(self, hidden: torch.Tensor, head_mask: torch.Tensor | None = None) -> MDNOutput:
        """Apply the heads to LSTM outputs: hidden (..., H) → :class:`MDNOutput` with leading dims ``...``.
        ``head_mask`` (broadcastable to hidden) multiplies h before the heads; ``output.hidden`` stays unmasked."""
        lead = hidden.shape[:-1]
        seen = hidden if head_mask is None else hidden * head_mask
        params = self.mdn(seen).view(*lead, 3, self.latent_size, self.num_mixtures)
        logit_pi, mu, log_sigma = params.unbind(dim=-3)
        return MDNOutput(logit_pi=logit_pi, mu=mu, log_sigma=log_sigma,
                         reward=self.reward_head(seen).squeeze(-1),
                         done_logit=self.done_head(seen).squeeze(-1), hidden=hidden)

    def forward(self, z: torch.Tensor, actions: torch.Tensor, state: State | None = None,
                head_mask: torch.Tensor | None = None) -> tuple[MDNOutput, State]:
        """Sequence forward. z (B, T, L), actions (B, T, A), state (h, c) each (B, H) or None (zeros),
        ``head_mask`` (B, H) or None (one mask for the whole sequence)
        → (:class:`MDNOutput` with leading dims (B, T), final state (h, c) each (B, H))."""
        x = torch.cat([z, actions.to(z.dtype)], dim=-1)
        if state is None:
            out, (h, c) = self.lstm(x)
        else:
            out, (h, c) = self.lstm(x, (state[0].unsqueeze(0).contiguous(), state[1].unsqueeze(0).contiguous()))
        mask = None if head_mask is None else head_mask.unsqueeze(1)
        return self.heads(out, mask), (h.squeeze(0), c.squeeze(0))

    def step(self, z: torch.Tensor, action: torch.Tensor, state: State | None,
             head_mask: torch.Tensor | None = None) -> tuple[MDNOutput, State]:
        """One step. z (B, L), action (B, A), state (h, c) each (B, H) or None (zeros), ``head_mask`` (B, H)
        or None → (:class:`MDNOutput` with leading dim (B,), new state (h, c)).

        Runs the LSTM cell with the very weights of :meth:`forward`'s ``nn.LSTM`` (``torch.lstm_cell``:
        the same arithmetic, several times faster than a length-1 ``nn.LSTM`` call at small batches, which
        is what a real-env rollout does every frame; see bench/bench_memory.py)."""
        if state is None:
            state = self.initial_state(z.shape[0], z.device)
        x = torch.cat([z, action.to(z.dtype)], dim=-1)
        lstm = self.lstm
        h, c = torch.lstm_cell(x, (state[0], state[1]), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                               lstm.bias_hh_l0)
        return self.heads(h, head_mask), (h, c)

    def dream_step(self, z: torch.Tensor, action: torch.Tensor, state: State | None, temperature: float, *,
                   head_mask: torch.Tensor | None = None, noise: tuple[torch.Tensor, torch.Tensor] | None = None,
                   generator: torch.Generator | None = None, sample: bool = True) -> DreamTransition:
        """One step of a dream: :meth:`step` on z (B, L), action (B, A), state; the done test; and z_{t+1} sampled at
        ``temperature`` from ``noise`` = (uniforms, standard normals), each broadcastable to (B, L)
        (:func:`sample_with_noise`: a dream's pre-drawn random numbers), or else from ``generator``
        (:meth:`sample_next_z`); ``sample=False`` skips the sampling (a dream's last step)."""
        output, state = self.step(z, action, state, head_mask)
        probability = torch.sigmoid(output.done_logit)
        next_z = None
        if sample:
            next_z = (sample_with_noise(output.logit_pi, output.mu, output.log_sigma, temperature, *noise)
                      if noise is not None else self.sample_next_z(output, temperature, generator))
        return DreamTransition(output, state, probability, probability > DONE_THRESHOLD, next_z)

    @staticmethod
    def sample_next_z(output: MDNOutput, temperature: float = 1.0, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """Sample z_{t+1} (..., L) from the mixture in ``output`` at temperature τ.

        As in the paper's code: mixture logits are divided by τ and σ is multiplied by √τ, so τ < 1 is
        more deterministic and τ > 1 more uncertain. τ = 0 gives the mean of the most likely component.
        """
        logit_pi, mu, log_sigma = output.logit_pi, output.mu, output.log_sigma
        if temperature <= 0:
            k = logit_pi.argmax(dim=-1, keepdim=True)
            return mu.gather(-1, k).squeeze(-1)
        probs = torch.softmax(logit_pi.float() / temperature, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        k = torch.multinomial(flat, 1, generator=generator).view(*probs.shape[:-1], 1)
        mean = mu.gather(-1, k).squeeze(-1)
        sigma = log_sigma.gather(-1, k).squeeze(-1).exp() * math.sqrt(temperature)
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
        return mean + sigma * eps


def sample_with_noise(logit_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, temperature: float,
                      mixture_uniform: torch.Tensor, gaussian: torch.Tensor) -> torch.Tensor:
    """z (..., L) from M's mixture (``logit_pi``, ``mu``, ``log_sigma`` each (..., L, K)) at ``temperature``
    using the given noise (``mixture_uniform``, ``gaussian`` broadcastable to (..., L)): per latent dimension the
    component whose CDF interval of ``softmax(logit_pi / τ)`` holds the uniform, and ``z = μ_k + σ_k·√τ·ε``.
    τ ≤ 0 gives the mean of the most likely component (as :meth:`MDNRNN.sample_next_z`)."""
    if temperature <= 0:
        component = logit_pi.argmax(dim=-1, keepdim=True)
        return mu.gather(-1, component).squeeze(-1)
    probs = torch.softmax(logit_pi / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    component = (mixture_uniform.unsqueeze(-1) > cdf).sum(dim=-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)
    mean = mu.gather(-1, component).squeeze(-1)
    sigma = log_sigma.gather(-1, component).squeeze(-1).exp()
    return mean + sigma * (temperature ** 0.5) * gaussian


def head_dropout_mask(batch: int, hidden_size: int, dropout: float, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor | None:
    """(batch, hidden_size) inverted-dropout mask for ``head_mask``: each unit kept with probability
    1 − p and scaled by 1/(1 − p); None when p = 0."""
    if dropout <= 0:
        return None
    keep = torch.rand((batch, hidden_size), generator=generator, device=device) >= dropout
    return keep.float() / (1.0 - dropout)


def mdn_log_prob(logit_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, target_z: torch.Tensor
                 ) -> torch.Tensor:
    """log p(target) per latent dimension under the mixture: params (..., L, K), target_z (..., L) → (..., L).

    log Σ_k π_k N(z; μ_k, σ_k) computed as logsumexp_k(log_softmax(logit)_k + log N_k) (stable)."""
    z = target_z.unsqueeze(-1)
    log_normal = -0.5 * ((z - mu) * torch.exp(-log_sigma)).pow(2) - log_sigma - LOG_SQRT_2PI
    return torch.logsumexp(F.log_softmax(logit_pi, dim=-1) + log_normal, dim=-1)


def mdn_loss(logit_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, target_z: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood per latent dimension (nats; can be negative for sharp densities).

    Args:
        logit_pi, mu, log_sigma: (..., L, K) mixture parameters.
        target_z: (..., L) the actual next latent.
        mask: optional bool/float (...) — which positions have a target (e.g. not past an episode end).

    Returns:
        scalar: mean over all (unmasked) positions and latent dimensions of −log p(z).
    """
    nll = -mdn_log_prob(logit_pi.float(), mu.float(), log_sigma.float(), target_z.float())  # (..., L)
    if mask is None:
        return nll.mean()
    weights = mask.to(nll.dtype).unsqueeze(-1).expand_as(nll)
    return (nll * weights).sum() / weights.sum().clamp_min(1.0)


__all__ = [
    "DONE_THRESHOLD",
    "MDNRNN",
    "DreamTransition",
    "MDNOutput",
    "State",
    "head_dropout_mask",
    "mdn_log_prob",
    "mdn_loss",
    "sample_with_noise",
]
