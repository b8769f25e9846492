"""The repair step: replay in the real env what C did in M's dream, so M learns where its dream lied.

A dream starts from a real state: step ``s`` of a recorded episode (``s = 0`` for dreams from the start
line, ``--dream.start episode-start``), with z = V's μ of that frame and M's state after reading the
episode's recorded frames and actions up to it. C then drives in the dream and its actions are kept.
A recorded episode re-simulates exactly from its seed and its actions (seeded resets are deterministic),
so the real env reaches the same state by replaying the recorded actions ``a_0 … a_{s−1}``; from there
it gets the dream's actions, open loop. The real episode that results (frames, actions, rewards) is
appended to the data as driver ``repair``: exactly the state-action sequences C steered M into, now with
what reality did there. Where the dream paid for driving that reality punishes (the exploit), M's next
training sees the difference.

:func:`repair_iteration` records ``count`` such episodes for one loop iteration; each carries
``{"repair_iteration", "repair_trial", "start_step", "source_seed"}`` in its meta (``noise``), so a rerun
after an interruption records only the trials not yet in the data (never one twice). The dreams are
drawn from a generator seeded by the loop's seed and the iteration: a rerun dreams the same dreams.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from car_racing.episodes.rollout import EpisodeResult, run_episode
from car_racing.models.ffn import flat_to_population
from car_racing.recording.recorded_data import (
    EpisodeStore,
    RecordedEpisode,
    appending_to,
    load_recorded,
    recorded_trials,
)
from car_racing.training.dream import imagine
from car_racing.world.envs import MAX_EPISODE_STEPS, make_env

REPAIR_DRIVER = "repair"


class ReplayDriver:
    """Drives the given actions in order (a recorded prefix, then the dream's actions)."""

    def __init__(self, actions: np.ndarray):
        self.actions = np.asarray(actions, dtype=np.float32)

    def reset(self, env: Any, seed: int) -> None:
        pass

    def act(self, observation: np.ndarray, env: Any, step: int, episode_reward: float) -> np.ndarray:
        return self.actions[step]


def replay(env: Any, seed: int, actions: np.ndarray) -> EpisodeResult:
    """The real episode of ``seed`` driven by ``actions`` (64×64 frames recorded; ends early if the env ends)."""
    return run_episode(env, ReplayDriver(actions), seed, len(actions), record_frames=True)


def dream_actions(mdnrnn: Any, params: np.ndarray, start_z: torch.Tensor, start_state: tuple[torch.Tensor, torch.Tensor],
                  steps: int, temperature: float, generator: torch.Generator | None, *, reward_scale: float = 1.0,
                  dropout: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C(params) dreams N trials from ``start_z`` (N, L), ``start_state`` ((N, H), (N, H)): the training dream
    (:func:`car_racing.training.dream.imagine`: same noise draw, one dropout mask per dream, M's done head ends a
    dream after the step it fires): ``(actions (N, steps, A), rewards (N, steps) in real units, lengths (N,))``:
    trial k's dream is its first ``lengths[k]`` steps (the done step included)."""
    latent, hidden = start_z.shape[1], start_state[0].shape[1]
    policy = flat_to_population(torch.as_tensor(np.asarray(params)[None], dtype=torch.float32), latent, hidden)
    trace = imagine(mdnrnn, policy, start_z.float(), start_state, steps, temperature, generator, dropout=dropout,
                    reward_scale=reward_scale)
    return trace.actions[0].cpu().numpy(), trace.rewards[0].cpu().numpy(), trace.lengths[0].cpu().numpy()


@torch.no_grad()
def memory_state_after(mdnrnn: Any, mu: np.ndarray, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """M's (h, c), each (1, H), after reading frames' μ and actions ``0 … s−1`` from a zero state (as the agent
    at step s of a real episode); zeros for s = 0."""
    state = mdnrnn.initial_state(1, "cpu")
    if len(actions):
        _, state = mdnrnn(torch.tensor(np.asarray(mu), dtype=torch.float32)[None],
                          torch.tensor(np.asarray(actions), dtype=torch.float32)[None], state)
    return state


@dataclass
class RepairTrial:
    """One planned repair: the recorded episode (its index in the data), the dream's start step."""

    trial: int
    episode: int
    start_step: int


def plan_trials(episodes: list[dict], count: int, rng: np.random.Generator, from_start: bool) -> list[RepairTrial]:
    """``count`` (episode, start step) pairs from the recorded episodes other than repairs: start steps 0 with
    ``from_start`` (dreams from the start line), else uniform inside the episode."""
    sources = [i for i, e in enumerate(episodes) if e["driver"] != REPAIR_DRIVER and int(e["length"]) >= 2]
    if not sources:
        raise ValueError("no recorded episode to start a repair from")
    chosen = rng.choice(len(sources), size=count, replace=count > len(sources))
    trials = []
    for trial, index in enumerate(chosen):
        episode = sources[int(index)]
        start = 0 if from_start else int(rng.integers(0, int(episodes[episode]["length"]) - 1))
        trials.append(RepairTrial(trial, episode, start))
    return trials


def recorded_repairs(data_dir: str | Path, iteration: int) -> set[int]:
    """The trials of ``iteration``'s repair already in the data."""
    return recorded_trials(data_dir, REPAIR_DRIVER, "repair_iteration", "repair_trial", iteration)


@contextmanager
def replaying_into(data_dir: str | Path, make_environment: Callable[[], Any] = make_env
                   ) -> Iterator[tuple[EpisodeStore, Any]]:
    """``(store, env)`` to replay episodes into ``data_dir``: on exit, also after an interruption, the env is closed
    and every saved episode merged (the next rerun skips them)."""
    with appending_to(data_dir) as store:
        env = make_environment()
        try:
            yield store, env
        finally:
            env.close()


def repair_iteration(data_dir: str | Path, mdnrnn: Any, mu: np.ndarray, params: np.ndarray, iteration: int, count: int,
                     *, seed: int = 0, rollout_steps: int = MAX_EPISODE_STEPS, temperature: float = 1.0,
                     dropout: float = 0.0, reward_scale: float = 1.0, from_start: bool = True,
                     make_environment: Callable[[], Any] = make_env, progress: bool = False) -> dict:
    """Record ``count`` repair episodes of C(params) for ``iteration`` into ``data_dir`` (module docstring); trials
    already recorded are skipped. ``mu``: V's μ of every recorded frame (the latent cache). Returns the results:
    per recorded trial the dream's predicted return and the real return over the same (dreamt) steps."""
    from tqdm.auto import tqdm

    data = load_recorded(data_dir, mmap=True)
    episodes = data.episodes
    rng = np.random.default_rng([seed, iteration, 7])
    trials = plan_trials(episodes, count, rng, from_start)
    done = recorded_repairs(data_dir, iteration)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, iteration, 7]).generate_state(1)[0]))
    # all trials dream together (one noise draw), so a rerun dreams the same dreams whatever was recorded
    starts_z, starts_h, starts_c = [], [], []
    for trial in trials:
        begin = int(episodes[trial.episode]["start"])
        h, c = memory_state_after(mdnrnn, mu[begin:begin + trial.start_step],
                                  data.actions[begin:begin + trial.start_step])
        starts_z.append(torch.as_tensor(np.asarray(mu[begin + trial.start_step]), dtype=torch.float32))
        starts_h.append(h[0])
        starts_c.append(c[0])
    steps = min(rollout_steps, MAX_EPISODE_STEPS)
    actions, dreamt, lengths = dream_actions(mdnrnn, params, torch.stack(starts_z),
                                             (torch.stack(starts_h), torch.stack(starts_c)), steps, temperature,
                                             generator, reward_scale=reward_scale, dropout=dropout)
    rows = []
    with replaying_into(data_dir, make_environment) as (store, env):
        for trial in tqdm(trials, desc="repair (replaying dreams)", unit="ep", disable=not progress):
            if trial.trial in done:
                continue
            episode = episodes[trial.episode]
            begin, s = int(episode["start"]), trial.start_step
            length = min(int(lengths[trial.trial]), MAX_EPISODE_STEPS - s)
            plan = np.concatenate([np.asarray(data.actions[begin:begin + s], dtype=np.float32),
                                   actions[trial.trial, :length]])
            result = replay(env, int(episode["seed"]), plan)
            dream_return = float(dreamt[trial.trial, :length].sum())
            real_return = float(np.sum(result.rewards[s:], dtype=np.float64))
            store.add(RecordedEpisode(seed=int(episode["seed"]), driver=REPAIR_DRIVER, frames=result.frames,
                                      actions=result.actions, rewards=result.rewards, lap_finished=result.lap_finished,
                                      terminated=result.terminated,
                                      noise={"repair_iteration": iteration, "repair_trial": trial.trial,
                                             "start_step": s, "source_seed": int(episode["seed"]),
                                             "dream_return": dream_return, "dream_steps": length}))
            rows.append({"trial": trial.trial, "seed": int(episode["seed"]), "start_step": s, "dream_steps": length,
                         "real_steps": result.steps - s, "dream_return": dream_return, "real_return": real_return})
    return {"trials": len(trials), "recorded_now": len(rows), "already_recorded": len(done & {t.trial for t in trials}),
            "rows": rows}
