"""M as the world: a person (or any driver) steps the memory model instead of the env.

:class:`DreamWorld` starts from a real frame and M's state after the real steps before it (the *context*),
then each :meth:`DreamWorld.step` is the step every dream of the project takes (:meth:`MDNRNN.dream_step`): M reads
the current z and the action, predicts the reward r_t and the done probability sigmoid(done_t), tests it against
:data:`DONE_THRESHOLD` and samples z_{t+1} at temperature τ (from the generator); V decodes z_{t+1}: the frame shown is
V's picture of what M dreamed. Where M says done, a training dream would have ended (``ended_at``); a person may
drive on. Dropout (Dropout's Dream Land) draws
one mask on h before M's heads when it is switched on, kept until it is switched off, so one dream is one
draw of a slightly different M. All sampling uses one seeded generator: the same seed and actions give the
same dream.

:class:`RealReplay` is the real env the same actions drive: it replays the context from the track's seed,
then catches up with the dream's actions only when asked (the "wake up" view), so a dream costs no real
steps until someone looks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from car_racing.models.mdn_rnn import MDNRNN, head_dropout_mask
from car_racing.models.vae import frames_to_tensor, to_images
from car_racing.world.envs import make_env, preprocess_frame


@dataclass
class DreamStep:
    """What one dream step gave: V's decoding of the sampled z_{t+1}, M's r_t and P(done_t), and whether M said done
    (P(done_t) > DONE_THRESHOLD: a training dream ends after this step)."""

    frame: np.ndarray  # uint8 (64, 64, 3)
    reward: float
    done_probability: float
    done: bool = False


class RealReplay:
    """The real env on the dream's track: ``reset(seed)`` then the context actions, then (lazily) the dream's."""

    def __init__(self, seed: int, context_actions: Sequence[np.ndarray]) -> None:
        self.seed = int(seed)
        self.context_actions = [np.asarray(a, dtype=np.float32) for a in context_actions]
        self.env = make_env()
        self.start_observation, self.start_return = self.restart()

    def restart(self) -> tuple[np.ndarray, float]:
        """Back to the dream's start: reset and replay the context; (observation there, return so far)."""
        observation, _ = self.env.reset(seed=self.seed)
        self.context_frames = [preprocess_frame(observation)]
        total = 0.0
        for action in self.context_actions:
            observation, reward, *_ = self.env.step(action)
            total += float(reward)
            self.context_frames.append(preprocess_frame(observation))
        self.observation, self.dream_steps_done, self.dream_return = observation, 0, 0.0
        self.ended = False
        return observation, total

    def catch_up(self, actions: Sequence[np.ndarray]) -> np.ndarray:
        """Step the real env through the dream actions it has not had yet; the real observation now."""
        for action in actions[self.dream_steps_done:]:
            if not self.ended:
                self.observation, reward, terminated, truncated, _ = self.env.step(np.asarray(action, dtype=np.float32))
                self.dream_return += float(reward)
                self.ended = bool(terminated or truncated)
            self.dream_steps_done += 1
        return self.observation

    def close(self) -> None:
        self.env.close()


class DreamWorld:
    """V and M as an env (batch 1, no gradients): :meth:`start`, then :meth:`step` with actions."""

    def __init__(self, vae: torch.nn.Module, memory: MDNRNN, device: str | torch.device = "cpu",
                 temperature: float = 1.0, dropout: float = 0.1, seed: int = 0) -> None:
        self.vae, self.memory, self.device = vae.eval(), memory.eval(), torch.device(device)
        self.temperature, self.dropout, self.seed = float(temperature), float(dropout), int(seed)
        self.dropout_on = False
        self.start_z: torch.Tensor | None = None
        self.start_state: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, 64, 64, 3) → V's μ (T, L)."""
        return self.vae.encode(frames_to_tensor(np.asarray(frames), self.device))[0].float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        return to_images(self.vae.decode(z))[0]

    @torch.no_grad()
    def start(self, frames: np.ndarray, actions: Sequence[np.ndarray]) -> np.ndarray:
        """Start the dream at the last of ``frames`` (T+1 real 64×64 frames); M first reads the T real steps
        before it (its z and ``actions``) for its state. Returns V's reconstruction of the start frame."""
        z = self.encode(frames)
        state = self.memory.initial_state(1, self.device)
        if len(actions):
            a = torch.as_tensor(np.array(actions, dtype=np.float32), device=self.device)[None]  # a copy: writable
            _, state = self.memory(z[None, :-1], a, state)
        self.start_z, self.start_state = z[-1:], (state[0].clone(), state[1].clone())
        return self.restart()

    def restart(self) -> np.ndarray:
        """Back to the start (same z and state); the sampling generator starts again from the seed."""
        assert self.start_z is not None and self.start_state is not None, "call start() first"
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        self.z, self.state = self.start_z.clone(), (self.start_state[0].clone(), self.start_state[1].clone())
        self.mask = self._draw_mask() if self.dropout_on else None
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.done_probabilities: list[float] = []
        self.ended_at: int | None = None  # the step where M first said done (a training dream ends after it)
        return self.decode(self.z)

    def _draw_mask(self) -> torch.Tensor | None:
        return head_dropout_mask(1, self.memory.hidden_size, self.dropout, self.generator, self.device)

    def set_dropout(self, on: bool) -> None:
        """Switch dropout on (a new mask, kept until switched off) or off."""
        self.dropout_on = bool(on) and self.dropout > 0
        self.mask = self._draw_mask() if self.dropout_on else None

    @torch.no_grad()
    def step(self, action: np.ndarray) -> DreamStep:
        action = np.asarray(action, dtype=np.float32).reshape(3)
        step = self.memory.dream_step(self.z, torch.as_tensor(action, device=self.device)[None], self.state,
                                      self.temperature, head_mask=self.mask, generator=self.generator)
        self.z, self.state = step.next_z.to(self.z.dtype), step.state
        reward, probability, done = float(step.output.reward[0]), float(step.done_probability[0]), bool(step.done[0])
        if done and self.ended_at is None:
            self.ended_at = len(self.actions)
        self.actions.append(action)
        self.rewards.append(reward)
        self.done_probabilities.append(probability)
        return DreamStep(self.decode(self.z), reward, probability, done)

    @property
    def summed_reward(self) -> float:
        return float(np.sum(self.rewards)) if self.rewards else 0.0


__all__ = ["DreamStep", "DreamWorld", "RealReplay"]
