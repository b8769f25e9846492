"""Dreams: the controller C drives inside the memory model M instead of the real env.

Three parts:

- **Recorded states.** :func:`iter_recorded_states` runs M over the recorded memory sequences with
  the recorded actions (z from the cached V means μ) and yields every step's input ``z_t`` with M's
  state ``(h_t, c_t)`` *before* it consumes ``(z_t, a_t)`` — exactly the ``(z_t, h_t)`` the agent sees
  at real-env time. :func:`collect_start_states` keeps a random pool of them as dream start states;
  the behaviour-cloning warm start fits C on all of them.
- **The dream.** :func:`imagine` is the one dream of the project: C (a population of linear Cs, or a fixed action
  sequence) drives M from given start states, each step :meth:`MDNRNN.dream_step` (M's step, the done test against
  the one :data:`DONE_THRESHOLD`, z sampled from the pre-drawn :class:`DreamNoise`), and it returns the whole
  :class:`DreamTrace` (actions, z, rewards, done probabilities, lengths, M's value, returns). Everything that dreams
  uses it: CMA-ES fitness (:func:`dream_rollout`, through its fast path), the repair step
  (:func:`car_racing.training.repair.dream_actions`), the fidelity panel (``evaluate_world_model.py``) and the film
  (``film_dream_vs_real.py``, with C's own training settings: :func:`trained_dream`), so a film shows exactly the
  dream C was trained in. A person driving M (``drive_in_dream.py``, :class:`car_racing.world.dream_world.DreamWorld`)
  takes the same step, with generator noise.
- **Fitness.** :func:`dream_rollout` steps the whole population × trials through M as one batch of ``P·N`` rows per
  time step: by default (``fused=True``) with :func:`_fused_rollout`, the fast path that computes :func:`imagine`'s
  returns alone (:class:`FusedDreamWeights`; a test holds the two equal); ``fused=False`` runs :func:`imagine`.
  :func:`dream_rollout_per_candidate` runs :func:`imagine` one candidate at a time (the benchmark's baseline).

Dream semantics (every path):

- every candidate starts its ``N`` trials from the same ``N`` start states and sees the same noise
  (common random numbers): the noise is pre-drawn from ``generator`` as tensors of shape
  ``(steps, N, L)`` and broadcast over candidates, so the two paths consume identical random numbers;
- the next z is sampled from M's mixture at ``temperature`` τ: per latent dimension a component is
  drawn from ``softmax(logit_pi / τ)`` (inverse CDF of a uniform) and ``z = μ_k + σ_k·√τ·ε``, the same
  convention as :meth:`MDNRNN.sample_next_z`;
- ``dropout`` p > 0 (Dropout's Dream Land): each dream draws one mask over M's hidden units (kept with
  probability 1 − p, scaled by 1/(1 − p)) and keeps it for the whole dream, applied to h before M's heads
  (the z, reward and done predictions), as :func:`car_racing.train_memory` trains M with
  ``--dropout``; C still sees the unmasked h, as in the real env. Masks are drawn per trial and shared
  by the candidates (common random numbers), after the z noise, so p = 0 leaves the noise unchanged;
- fitness = sum over steps of M's predicted reward ``r_t`` (in real reward units: the prediction is
  multiplied by ``reward_scale``, the memory checkpoint's convention), ended by M's done head: a
  trial is done after the first step with ``sigmoid(done_logit) > DONE_THRESHOLD`` (0.5; deterministic, not
  sampled); that step's reward counts and every later reward is masked;
- ``value_discount`` γ > 0 (an M trained with a value head, ``train_memory.py --memory.value-discount``): a dream
  still alive after its last step ends on M's value of its last state, ``value_rate(h_T) / (1 − γ)`` (the same
  dropout mask), so a short dream is paid for what its final state is worth, not only for the rewards it reached
  (Dreamer's bootstrap).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from car_racing.common.cli import UsageError
from car_racing.models.ffn import flat_to_population, population_actions, squash_actions
from car_racing.models.mdn_rnn import DONE_THRESHOLD, head_dropout_mask, sample_with_noise  # noqa: F401 (re-exported)


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


def episode_start_states(mu: np.ndarray | torch.Tensor, episode_starts: np.ndarray | list[int], hidden_size: int
                         ) -> StartStates:
    """Dreams from the start line: z = μ of each recorded episode's first frame, M's zero state (as the
    agent at a real reset), so a dream of 1000 steps is a whole episode (Dropout's Dream Land's dreams)."""
    mu = torch.as_tensor(np.asarray(mu) if not isinstance(mu, torch.Tensor) else mu, dtype=torch.float32)
    z = mu[torch.as_tensor(np.asarray(episode_starts, dtype=np.int64))]
    zeros = torch.zeros(len(z), hidden_size)
    return StartStates(z, zeros, zeros.clone())


def collect_start_states(mdnrnn: Any, mu: np.ndarray | torch.Tensor, indices: np.ndarray, actions: np.ndarray,
                         count: int, rng: np.random.Generator, *, device: torch.device | str = "cpu",
                         batch_size: int = 256,
                         visit: Callable[[RecordedStates], None] | None = None,
                         eligible: np.ndarray | None = None) -> StartStates:
    """Keep ``count`` (window, step) positions of the recorded windows, chosen uniformly at random by
    ``rng`` (all of them when there are fewer), as a CPU :class:`StartStates` pool. ``eligible`` (S,) bool, if
    given, limits the choice to those windows (e.g. :func:`windows_of_drivers`: C's own episodes).

    M runs only over the windows that hold a chosen position — or over every window when ``visit`` is
    given: it then sees every batch of :class:`RecordedStates` (the BC warm start accumulates its
    least-squares statistics there, so M runs over the data once).
    """
    indices, actions = np.asarray(indices), np.asarray(actions)
    windows, steps = indices.shape
    # eligible windows in increasing order: with all of them this is the plain uniform draw
    candidates = np.arange(windows) if eligible is None else np.flatnonzero(np.asarray(eligible, dtype=bool))
    total = len(candidates) * steps
    if total == 0:
        raise ValueError("no recorded windows to take dream start states from")
    chosen = np.sort(rng.choice(total, size=min(count, total), replace=False))
    chosen_window, chosen_step = candidates[chosen // steps], chosen % steps
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


DREAM_STARTS = ("recorded", "episode-start")
# where a dream setting START:STEPS starts: the start line, any recorded state, or C's own recorded episodes
SETTING_STARTS = ("episode-start", "recorded", "agent")
# a warm start's short dreams (dream_loop.py --loop.warm-dreams) start from real states, never the start line
WARM_DREAM_STARTS = ("recorded", "agent")


def parse_dream_setting(text: str, flag: str, starts: tuple[str, ...] = SETTING_STARTS) -> tuple[str, int]:
    """A dream setting ``START:STEPS`` (``dream_loop.py --loop.warm-dreams``, ``bench/local_fidelity.py --dreams``) →
    (start, steps), with a one-line error naming ``flag`` for anything else."""
    start, _, steps = text.partition(":")
    if start not in starts or not steps.isdigit() or int(steps) < 1:
        raise UsageError(f"{flag} {text}: expected START:STEPS with START one of {', '.join(starts)} "
                         f"(e.g. {starts[-1]}:200)")
    return start, int(steps)


def dream_start_settings(start: str) -> dict:
    """Stage 4's ``--dream.start`` and ``--dream.start-drivers`` for a setting's START (:data:`SETTING_STARTS`)."""
    return {"dream_start": "episode-start" if start == "episode-start" else "recorded",
            "dream_start_drivers": ("agent",) if start == "agent" else ()}


def windows_of_drivers(indices: np.ndarray, episodes: list[dict], drivers: tuple[str, ...] | list[str]) -> np.ndarray:
    """(S,) bool: which memory windows (``indices`` (S, T) of recorded steps) lie in an episode driven by one of
    ``drivers`` (the recording's ``driver`` names: ``agent`` for C's own episodes in the dream loop)."""
    starts = np.asarray([int(e["start"]) for e in episodes], dtype=np.int64)
    kinds = np.asarray([e["driver"] for e in episodes])
    episode = np.searchsorted(starts, np.asarray(indices)[:, 0], side="right") - 1
    return np.isin(kinds[episode], list(drivers))


def start_pool(kind: str, mdnrnn: Any, mu: np.ndarray | torch.Tensor, indices: np.ndarray, actions: np.ndarray,
               episode_starts: np.ndarray | list[int], count: int, rng: np.random.Generator, *,
               device: torch.device | str = "cpu", batch_size: int = 256,
               visit: Callable[[RecordedStates], None] | None = None,
               eligible: np.ndarray | None = None) -> StartStates:
    """The dream start states of ``kind`` (CPU): ``recorded`` — ``count`` states anywhere in the recorded
    windows (:func:`collect_start_states`); ``episode-start`` — the first frame of every episode with M's
    zero state (:func:`episode_start_states`). With ``visit``, M runs over every window whatever the kind;
    ``eligible`` limits ``recorded`` starts to some windows (:func:`collect_start_states`)."""
    if kind not in DREAM_STARTS:
        raise ValueError(f"dream start {kind!r}: expected one of {', '.join(DREAM_STARTS)}")
    if kind == "recorded" or visit is not None:
        pool = collect_start_states(mdnrnn, mu, indices, actions, count, rng, device=device, batch_size=batch_size,
                                    visit=visit, eligible=eligible if kind == "recorded" else None)
    if kind == "episode-start":
        pool = episode_start_states(mu, episode_starts, mdnrnn.hidden_size)
    return pool


# --- sampling with pre-drawn noise ---------------------------------------------------------------------

@dataclass
class DreamNoise:
    """The random numbers of one dream batch, shared by every candidate (common random numbers).

    ``mixture`` (steps, N, L) uniforms choosing each latent dimension's mixture component;
    ``gaussian`` (steps, N, L) standard normals for the chosen component;
    ``head_mask`` (N, H) or None: the dropout mask of each dream on h before M's heads (0 or 1/(1 − p)),
    fixed for the whole dream.
    """

    mixture: torch.Tensor
    gaussian: torch.Tensor
    head_mask: torch.Tensor | None = None

    @classmethod
    def draw(cls, steps: int, trials: int, latent_size: int, generator: torch.Generator | None,
             dropout: float = 0.0, hidden_size: int = 0) -> "DreamNoise":
        """Draw on the CPU from ``generator`` (results do not depend on the device the dream runs on)."""
        mixture = torch.rand((steps, trials, latent_size), generator=generator)
        gaussian = torch.randn((steps, trials, latent_size), generator=generator)
        return cls(mixture, gaussian, head_dropout_mask(trials, hidden_size, dropout, generator))

    def to(self, device: torch.device | str) -> "DreamNoise":
        mask = None if self.head_mask is None else self.head_mask.to(device)
        return DreamNoise(self.mixture.to(device), self.gaussian.to(device), mask)


# --- rollouts ----------------------------------------------------------------------------------------------

def terminal_value(mdnrnn: Any, hidden: torch.Tensor, head_mask: torch.Tensor | None, value_discount: float,
                   reward_scale: float) -> torch.Tensor:
    """M's value (R,) of the dream states with LSTM output ``hidden`` (R, H), in fitness units: the discounted sum
    of the rewards after them, ``value_rate / (1 − γ)`` × ``reward_scale``."""
    return mdnrnn.value_rate(hidden, head_mask).float() * (reward_scale / (1.0 - value_discount))


@dataclass
class DreamTrace:
    """What :func:`imagine` dreamt: P policies × N dreams of up to T steps (all tensors on the dream's device).

    ``actions`` (P, N, T, A) what the policy did at step t; ``z`` (P, N, T, L) the z it saw (``z[..., 0, :]`` the
    start); ``rewards`` (P, N, T) M's r_t × ``reward_scale``; ``done_probability`` (P, N, T) sigmoid(done_t) — at
    every step run, also after a dream's end while another dream of the batch went on (steps never run: zeros);
    ``lengths`` (P, N) the steps a dream paid for (its done step included; T if M never said done); ``ended`` (P, N)
    bool: the dream ended on M's done signal (its done step is ``lengths − 1``);
    ``value`` (P, N) M's value of the last state, added to a dream still alive after T steps (0 otherwise, and
    without a value discount); ``returns`` (P, N) the dream's fitness: its rewards up to its end, plus ``value``.
    ``steps_run`` how many steps ran (fewer than T when every dream ended before).
    """

    actions: torch.Tensor
    z: torch.Tensor
    rewards: torch.Tensor
    done_probability: torch.Tensor
    lengths: torch.Tensor
    ended: torch.Tensor
    value: torch.Tensor
    returns: torch.Tensor
    steps_run: int


LinearPolicy = tuple[torch.Tensor, torch.Tensor]  # (weights (P, L+H, A), biases (P, A)): P linear Cs


@torch.no_grad()
def imagine(mdnrnn: Any, policy: LinearPolicy | torch.Tensor, start_z: torch.Tensor,
            start_state: tuple[torch.Tensor, torch.Tensor], steps: int, temperature: float,
            noise: DreamNoise | torch.Generator | None, *, dropout: float = 0.0, reward_scale: float = 1.0,
            value_discount: float = 0.0, smoothing: float = 0.0) -> DreamTrace:
    """The dream: ``policy`` drives M from ``start_z`` (N, L), ``start_state`` ((N, H), (N, H)) for ``steps`` steps
    (the module docstring's semantics), returning the whole :class:`DreamTrace`.

    ``policy``: P linear Cs ``(weights (P, L+H, A), biases (P, A))`` acting on ``[z_t, h_t]``, every one driving the
    same N dreams (rows candidate-major: P·N dreams in one batch), or a fixed action sequence (T, A) or (N, T, A)
    (P = 1). ``noise``: the dreams' :class:`DreamNoise`, or a generator (or None) to draw it from
    (``DreamNoise.draw(steps, N, L, generator, dropout, H)``: the CMA-ES fitness's draw; ``dropout`` is used only
    there). ``smoothing`` s: C's action is smoothed as in the real episodes, ``a_t = (1 − s)·C(z_t, h_t) + s·a_{t−1}``
    with ``a_{−1} = 0`` (a fixed action sequence is used as given). Each step is :meth:`MDNRNN.dream_step` with the
    pre-drawn noise. This is the reference dream;
    :func:`_fused_rollout` is its fast path for the returns alone (a test holds them equal).
    """
    trials, latent = start_z.shape
    hidden = start_state[0].shape[1]
    if not isinstance(noise, DreamNoise):
        noise = DreamNoise.draw(steps, trials, latent, noise, dropout, hidden)
    noise = noise.to(start_z.device)
    if isinstance(policy, torch.Tensor):
        fixed = policy.float().to(start_z.device).expand(trials, *policy.shape[-2:])  # (N, T, A)
        population, action_size = 1, fixed.shape[-1]
    else:
        weights, biases = policy
        population, action_size = weights.shape[0], weights.shape[-1]
    rows, device = population * trials, start_z.device
    z = start_z.float().repeat(population, 1)  # (P·N, L), candidate-major
    state = (start_state[0].float().repeat(population, 1), start_state[1].float().repeat(population, 1))
    head_mask = None if noise.head_mask is None else noise.head_mask.repeat(population, 1)
    seen_z = torch.zeros(rows, steps, latent, device=device)
    actions = torch.zeros(rows, steps, action_size, device=device)
    rewards, done_probability = torch.zeros(rows, steps, device=device), torch.zeros(rows, steps, device=device)
    returns, value = torch.zeros(rows, device=device), torch.zeros(rows, device=device)
    lengths = torch.full((rows,), steps, dtype=torch.long, device=device)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    steps_run = 0
    for t in range(steps):
        if isinstance(policy, torch.Tensor):
            action = fixed[:, t].repeat(population, 1)
        else:
            action = population_actions(weights, biases, z.view(population, trials, latent),
                                        state[0].view(population, trials, hidden)).reshape(rows, -1)
            if smoothing:
                action = (1.0 - smoothing) * action + smoothing * (actions[:, t - 1] if t else 0.0)
        last = t + 1 == steps
        step_noise = (noise.mixture[t].repeat(population, 1), noise.gaussian[t].repeat(population, 1))
        step = mdnrnn.dream_step(z, action, state, temperature, head_mask=head_mask, noise=step_noise, sample=not last)
        reward = step.output.reward * reward_scale
        seen_z[:, t], actions[:, t], rewards[:, t], done_probability[:, t] = z, action, reward, step.done_probability
        returns += torch.where(alive, reward, torch.zeros_like(returns))
        lengths[alive & step.done] = t + 1
        alive &= ~step.done
        state, z, steps_run = step.state, step.next_z, t + 1
        if not bool(alive.any()):
            break
        if last and value_discount > 0:
            value = torch.where(alive, terminal_value(mdnrnn, state[0], head_mask, value_discount, reward_scale), value)
            returns += value
    shape = (population, trials)
    return DreamTrace(actions.view(*shape, steps, -1), seen_z.view(*shape, steps, latent), rewards.view(*shape, steps),
                      done_probability.view(*shape, steps), lengths.view(shape), ~alive.view(shape), value.view(shape),
                      returns.view(shape), steps_run)


def controller_policy(controller: Any) -> LinearPolicy:
    """A :class:`car_racing.models.ffn.Controller` as a population of one for :func:`imagine`."""
    flat = torch.as_tensor(controller.get_flat_params()[None], dtype=torch.float32, device=controller.fc.weight.device)
    return flat_to_population(flat, controller.latent_size, controller.hidden_size, controller.action_size)


DREAM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def dream_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` / ``torch.bfloat16`` from a dtype or its name (``"float32"``, ``"bfloat16"``)."""
    if isinstance(dtype, str):
        if dtype not in DREAM_DTYPES:
            raise ValueError(f"dream dtype {dtype!r}: expected one of {', '.join(DREAM_DTYPES)}")
        return DREAM_DTYPES[dtype]
    if dtype not in DREAM_DTYPES.values():
        raise ValueError(f"dream dtype {dtype}: expected torch.float32 or torch.bfloat16")
    return dtype


class FusedDreamWeights:
    """M's weights rearranged for :func:`_fused_rollout` (built once per M: :func:`fused_dream_weights`).

    Row layout of the dream state ``x`` (R, L+H+2+A): ``[z_t, h_t, 1, 1, a_t]``; the two constant
    columns carry the biases inside the products.

    - ``lstm`` (4H, L+H+2+A): ``[W_ih[:, :L], W_hh, b, 0, W_ih[:, L:]]`` with ``b = b_ih + b_hh`` and the
      gate rows reordered (i, f, o, g) and the g rows doubled (``tanh(g) = 2·sigmoid(2g) − 1``), so
      ``sigmoid(x @ lstm.T)`` gives all four gates in one pass;
    - ``heads`` (2 + 3·K·L, H+2): rows ``[reward, done, logit_pi, mu, log_sigma]`` on ``[h, 1, 1]``, the
      mixture rows ordered (K, L) (components outer) instead of M's (L, K).

    With ``dtype=torch.bfloat16`` the LSTM and MDN rows are stored in bfloat16 and each bias is split
    over the two constant columns as ``b_hi = bf16(b)``, ``b_lo = bf16(b − b_hi)`` (the product
    accumulates in float32, so the biases keep ~16 significant bits); the reward and done rows
    (``reward_done``, (2, H+2)) stay float32.

    The batched path (``fused=True``, the default) runs the same dream with M's weights rearranged once per M
    (:class:`FusedDreamWeights`, cached while M's parameters are unchanged), so a time step is three matrix
    products and a few element-wise passes over a state ``[z_t, h_t, 1, 1, a_t]``: the LSTM's two products and
    its biases are one product (gate rows ordered i, f, o, g); the MDN, reward and done heads are one product;
    ``tanh(x)`` is computed as ``2·sigmoid(2x) − 1`` (PyTorch's CPU ``tanh`` is ~6× slower than its
    ``sigmoid``; the two agree to ~1e-7); the mixture components are chosen on a (K, L) layout from an
    unnormalised CDF (a softmax over a last dimension of size K = 5 is ~20× slower on CPU); C runs as ``bmm(W,
    x^T)``. In float32 it gives the per-candidate loop's fitness up to float rounding.
    ``dtype=torch.bfloat16`` runs the LSTM and MDN-head products in bfloat16 (float32 accumulation inside the
    product, the result rounded to bfloat16; biases carried in two bfloat16 parts, ~16 significant bits) and
    keeps everything else in float32: the LSTM cell state c, h, the reward and done heads, C, the sampling and
    the fitness sum. It is ~2× faster on CPUs with bfloat16 instructions (AVX512-BF16/AMX) and changes fitness
    by about 1% of a dream's size per trial (bench/bench_dream.py and the tests compare it with float32);
    without such instructions it is slower.
    """

    def __init__(self, mdnrnn: Any, dtype: torch.dtype | str = torch.float32):
        self.dtype = dream_dtype(dtype)
        L, H, K = mdnrnn.latent_size, mdnrnn.hidden_size, mdnrnn.num_mixtures
        self.latent, self.hidden, self.mixtures, self.actions = L, H, K, mdnrnn.action_size
        lstm = mdnrnn.lstm

        def with_bias(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            hi = bias.to(self.dtype).float()
            return torch.cat([weight, hi[:, None], (bias - hi)[:, None]], dim=1)

        with torch.no_grad():
            w_ih, w_hh = lstm.weight_ih_l0.float(), lstm.weight_hh_l0.float()
            weight = with_bias(torch.cat([w_ih[:, :L], w_hh], 1), (lstm.bias_ih_l0 + lstm.bias_hh_l0).float())
            i, f, g, o = torch.cat([weight, w_ih[:, L:]], 1).split(H)  # PyTorch's gate order
            self.lstm = torch.cat([i, f, o, 2 * g]).to(self.dtype)
            mdn = with_bias(mdnrnn.mdn.weight.float().view(3, L, K, H).transpose(1, 2).reshape(3 * K * L, H),
                            mdnrnn.mdn.bias.float().view(3, L, K).transpose(1, 2).reshape(3 * K * L))
            reward_done = with_bias(torch.cat([mdnrnn.reward_head.weight, mdnrnn.done_head.weight]).float(),
                                    torch.cat([mdnrnn.reward_head.bias, mdnrnn.done_head.bias]).float())
            if self.dtype == torch.float32:
                self.heads = torch.cat([reward_done, mdn])
            else:
                self.reward_done, self.mdn = reward_done, mdn.to(self.dtype)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations (R, 4H) float32 of the gates (i, f, o, 2g) for the dream state ``x``."""
        if self.dtype == torch.float32:
            return x @ self.lstm.t()
        return (x.to(self.dtype) @ self.lstm.t()).float()

    def head_outputs(self, x: torch.Tensor, head_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reward (R,), done_logit (R,), mixture (R, 3, K, L)) float32 from the dream state ``x``; with
        ``head_mask`` (R, H) the heads read ``h · mask`` (dropout fixed per dream)."""
        L, H, K = self.latent, self.hidden, self.mixtures
        h1 = x[:, L:L + H + 2]  # [h, 1, 1]
        if head_mask is not None:
            h1 = torch.cat([h1[:, :H] * head_mask, h1[:, H:]], dim=1)
        if self.dtype == torch.float32:
            out = h1 @ self.heads.t()
            reward_done, mixture = out[:, :2], out[:, 2:]
        else:
            reward_done = h1 @ self.reward_done.t()
            mixture = (h1.to(self.dtype) @ self.mdn.t()).float()
        return reward_done[:, 0], reward_done[:, 1], mixture.view(-1, 3, K, L)


_FUSED_WEIGHTS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def fused_dream_weights(mdnrnn: Any, dtype: torch.dtype | str = torch.float32) -> FusedDreamWeights:
    """:class:`FusedDreamWeights` of ``mdnrnn``, built once and reused while its parameters are unchanged
    (same storage, same in-place version counter: ``load_state_dict``, ``.to`` or an optimiser step
    rebuild them), so a training run rearranges M's weights once, not every generation."""
    dtype = dream_dtype(dtype)
    key = tuple((p.data_ptr(), p._version) for p in mdnrnn.parameters())
    cache = _FUSED_WEIGHTS.setdefault(mdnrnn, {})
    if dtype not in cache or cache[dtype][0] != key:
        cache[dtype] = (key, FusedDreamWeights(mdnrnn, dtype))
    return cache[dtype][1]


@torch.no_grad()
def _fused_rollout(mdnrnn: Any, weights: torch.Tensor, biases: torch.Tensor, start_z: torch.Tensor,
                   start_state: tuple[torch.Tensor, torch.Tensor], noise: DreamNoise, temperature: float,
                   reward_scale: float, dtype: torch.dtype | str = torch.float32, value_discount: float = 0.0,
                   smoothing: float = 0.0) -> torch.Tensor:
    """:func:`imagine`'s dream (same semantics, same noise) with :class:`FusedDreamWeights`, returns only: (P, N)."""
    fused = fused_dream_weights(mdnrnn, dtype)
    population, trials = weights.shape[0], start_z.shape[0]
    L, H, K, A = fused.latent, fused.hidden, fused.mixtures, fused.actions
    rows, device = population * trials, start_z.device
    x = torch.empty(rows, L + H + 2 + A, device=device)  # [z_t, h_t, 1, 1, a_t], candidate-major rows
    x[:, :L] = start_z.float().repeat(population, 1)
    x[:, L:L + H] = start_state[0].float().repeat(population, 1)
    x[:, L + H:L + H + 2] = 1.0
    x[:, L + H + 2:] = 0.0  # a_{-1}: what the smoothing starts from
    c = start_state[1].float().repeat(population, 1)
    # (P, A, L+H+1) on [z, h, 1]: bmm(controller, x^T) is ~7× faster than bmm(x, W) with A = 3 columns
    controller = torch.cat([weights, biases.unsqueeze(1)], dim=1).float().transpose(1, 2).contiguous()
    z_view = x[:, :L].view(population, trials, L)
    head_mask = None if noise.head_mask is None else noise.head_mask.repeat(population, 1)
    gaussian = noise.gaussian * temperature ** 0.5 if temperature > 0 else None
    fitness = torch.zeros(rows, device=device)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    steps = noise.mixture.shape[0]
    for t in range(steps):
        raw = torch.bmm(controller, x[:, :L + H + 1].view(population, trials, L + H + 1).transpose(1, 2))
        action = squash_actions(raw.transpose(1, 2)).reshape(rows, A)  # a_t = C(z_t, h_t)
        if smoothing:  # a_t = (1 − s)·C(z_t, h_t) + s·a_{t−1}, a_{t−1} still in x
            x[:, L + H + 2:].mul_(smoothing).add_(action, alpha=1.0 - smoothing)
        else:
            x[:, L + H + 2:] = action
        # LSTM cell: gates = sigmoid([i, f, o, 2g]); c' = f·c + i·tanh(g); h' = o·tanh(c')
        gates = fused.gates(x).sigmoid_()
        i, f, o, g2 = gates.split(H, dim=1)  # g2 = sigmoid(2g): tanh(g) = 2·g2 − 1
        c.mul_(f).addcmul_(i, g2, value=2.0).sub_(i)
        tanh_c = torch.mul(c, 2.0).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(c) = 2·sigmoid(2c) − 1
        torch.mul(o, tanh_c, out=x[:, L:L + H])  # h' written into the state
        reward, done_logit, mixture = fused.head_outputs(x, head_mask)
        fitness += torch.where(alive, reward * reward_scale, torch.zeros_like(fitness))
        alive &= torch.sigmoid(done_logit) <= DONE_THRESHOLD
        if not bool(alive.any()):
            break
        if t + 1 == steps:
            if value_discount > 0:
                value = terminal_value(mdnrnn, x[:, L:L + H], head_mask, value_discount, reward_scale)
                fitness += torch.where(alive, value, torch.zeros_like(fitness))
            break
        logit_pi, mu, log_sigma = mixture.unbind(1)  # each (R, K, L)
        if temperature <= 0:
            component = logit_pi.argmax(dim=1, keepdim=True)
            z_view.copy_(mu.gather(1, component).view(population, trials, L))
            continue
        weight = logit_pi - logit_pi.amax(dim=1, keepdim=True)
        if temperature != 1.0:
            weight.div_(temperature)
        cumulative = weight.exp_().cumsum_(dim=1)  # unnormalised CDF over the K components
        threshold = cumulative[:, K - 1].view(population, trials, L) * noise.mixture[t]
        component = (threshold.view(rows, 1, L) > cumulative[:, :K - 1]).sum(dim=1, keepdim=True)
        mean = mu.gather(1, component).view(population, trials, L)
        sigma = log_sigma.gather(1, component).exp_().view(population, trials, L)
        torch.addcmul(mean, sigma, gaussian[t], out=z_view)
    return fitness.view(population, trials)



def memory_dream_scales(memory_checkpoint: dict) -> tuple[float, float]:
    """(reward scale of a dream, γ of M's value head or 0) from M's checkpoint: M predicts reward × its
    ``reward.scale``, so a dream multiplies by 1/scale to pay real reward units; γ 0: M has no value head."""
    scale = float((memory_checkpoint.get("reward") or {}).get("scale", 1.0))
    return 1.0 / scale, float((memory_checkpoint.get("value") or {}).get("discount", 0.0))


def trained_dream(controller_checkpoint: dict | None, memory_checkpoint: dict) -> dict[str, float]:
    """The dream C was trained in, for :func:`imagine`: ``temperature``, ``dropout``, ``value_discount`` and
    ``reward_scale`` from C's saved config (a ``--cmaes.mode dream`` run: its τ, ``--dream.dropout``, and M's γ when it ran
    with ``--dream.value``) and M's checkpoint. A C not trained in a dream (or saved before these settings):
    τ 1, no dropout, no value."""
    config = (controller_checkpoint or {}).get("config") or {}
    if "dream" in config:  # the one config (car_racing/common/config.py), nested by section
        mode, dream = config.get("cmaes", {}).get("mode"), config["dream"]
        saved = {"temperature": dream.get("temperature"), "dropout": dream.get("dropout"), "value": dream.get("value")}
    else:  # a checkpoint from before it: stage 4's flat flags
        mode = config.get("mode")
        saved = {"temperature": config.get("temperature"), "dropout": config.get("dream_dropout"),
                 "value": config.get("dream_value")}
    if mode != "dream":
        saved = {}
    reward_scale, discount = memory_dream_scales(memory_checkpoint)
    return {"temperature": 1.0 if saved.get("temperature") is None else float(saved["temperature"]),
            "dropout": float(saved.get("dropout") or 0.0),
            "value_discount": discount if saved.get("value") else 0.0, "reward_scale": reward_scale}

def dream_rollout(mdnrnn: Any, weights: torch.Tensor, biases: torch.Tensor, start_z: torch.Tensor,
                  start_state: tuple[torch.Tensor, torch.Tensor], steps: int, temperature: float,
                  generator: torch.Generator | None, *, reward_scale: float = 1.0,
                  dtype: torch.dtype | str = torch.float32, fused: bool = True, dropout: float = 0.0,
                  value_discount: float = 0.0, smoothing: float = 0.0) -> torch.Tensor:
    """Batched dream: fitness (P, N) of P candidates (``weights`` (P, L+H, A), ``biases`` (P, A)) over N trials
    starting at ``start_z`` (N, L), ``start_state`` = (h, c) each (N, H), ``steps`` steps long.

    The whole population × trials steps through M as one batch per time step. Noise is pre-drawn
    from ``generator`` (:class:`DreamNoise`), so the same generator state gives the same fitness as
    :func:`dream_rollout_per_candidate` (up to float rounding with ``fused``; bfloat16 ``dtype``
    approximates it: see the module docstring). ``fused=False`` runs the reference step on the
    whole batch (float32 only). ``dropout`` p: one mask per dream on h before M's heads; ``value_discount`` γ > 0:
    dreams still alive at the end add M's value of their last state (module docstring); ``smoothing`` s: C's actions
    smoothed as in the real episodes (:func:`imagine`).
    """
    if not fused:
        if dream_dtype(dtype) != torch.float32:
            raise ValueError("the unfused dream runs in float32 only")
        return imagine(mdnrnn, (weights, biases), start_z, start_state, steps, temperature, generator, dropout=dropout,
                       reward_scale=reward_scale, value_discount=value_discount, smoothing=smoothing).returns
    noise = DreamNoise.draw(steps, start_z.shape[0], start_z.shape[1], generator, dropout,
                            start_state[0].shape[1]).to(start_z.device)
    return _fused_rollout(mdnrnn, weights, biases, start_z, start_state, noise, temperature, reward_scale, dtype,
                          value_discount, smoothing)


def dream_rollout_per_candidate(mdnrnn: Any, weights: torch.Tensor, biases: torch.Tensor, start_z: torch.Tensor,
                                start_state: tuple[torch.Tensor, torch.Tensor], steps: int, temperature: float,
                                generator: torch.Generator | None, *, reward_scale: float = 1.0,
                                batch_trials: bool = True, dropout: float = 0.0, value_discount: float = 0.0
                                ) -> torch.Tensor:
    """Reference: the same dream as :func:`dream_rollout`, :func:`imagine` one candidate at a time (a Python loop
    over candidates, each stepping its N trials as a batch of N rows; with ``batch_trials=False`` one rollout at a
    time, batch 1). Same random numbers, same fitness (P, N)."""
    noise = DreamNoise.draw(steps, start_z.shape[0], start_z.shape[1], generator, dropout,
                            start_state[0].shape[1]).to(start_z.device)
    settings = dict(reward_scale=reward_scale, value_discount=value_discount)
    results = []
    for p in range(weights.shape[0]):
        policy = (weights[p:p + 1], biases[p:p + 1])
        if batch_trials:
            results.append(imagine(mdnrnn, policy, start_z, start_state, steps, temperature, noise, **settings).returns)
            continue
        row = []
        for n in range(start_z.shape[0]):
            trial_noise = DreamNoise(noise.mixture[:, n:n + 1], noise.gaussian[:, n:n + 1],
                                     None if noise.head_mask is None else noise.head_mask[n:n + 1])
            row.append(imagine(mdnrnn, policy, start_z[n:n + 1], (start_state[0][n:n + 1], start_state[1][n:n + 1]),
                               steps, temperature, trial_noise, **settings).returns)
        results.append(torch.cat(row, dim=1))
    return torch.cat(results, dim=0)
