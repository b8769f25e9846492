"""The one real-env rollout loop: recording, controller evaluation, the simulator and the videos all
drive CarRacing-v3 through :func:`run_episode` (one process) or :func:`run_episodes` (worker processes).

A *driver* is anything with::

    reset(env, seed) -> None                                   # new episode
    act(observation, env, step, episode_reward) -> action     # float32 [steer, gas, brake]

The observation is the env's raw 96×96×3 uint8 frame. A driver may raise :class:`EndSession`
(a human pressing Esc) to end the episode early; the steps so far are kept. A driver with a memory
(the World Models agent) may define ``applied(action)``: it is called with the action the env really
received (after smoothing), so the memory sees what happened rather than what was asked. A driver with
parameters (the agent's controller) may define ``set_params(flat)`` to drive as another candidate
(:meth:`EpisodeWorkers.run` with ``candidates``).

**Where episodes run** is chosen here, for every script: a :class:`~car_racing.episodes.backends.Backend`
(``--backend processes|ray``, ``--ray-address``) passed to :func:`run_episodes` or
:class:`EpisodeWorkers` (see :mod:`car_racing.episodes.backends`: worker processes on this machine, or Ray
actors on a cluster; identical results either way; a dead worker is replaced and its episodes run again).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from car_racing.episodes.backends import Backend, WorkerPool, backend_session, uses_backend  # noqa: F401 (the scripts' entry)
from car_racing.world.drivers import Driver, EndSession  # noqa: F401 (the loop's protocol)
from car_racing.world.envs import make_env, preprocess_frame


@dataclass
class EpisodeResult:
    """What one episode produced. Arrays are per step: frame t is what the driver saw before action t."""

    seed: int
    actions: np.ndarray  # float32 (T, 3), after smoothing: what the env received
    rewards: np.ndarray  # float32 (T,)
    lap_finished: bool
    terminated: bool
    ended_by_driver: bool = False
    frames: np.ndarray | None = None  # uint8 (T, 64, 64, 3) when record_frames
    raw_frames: np.ndarray | None = None  # uint8 (T, 96, 96, 3) when capture_raw
    info: dict[str, Any] = field(default_factory=dict)  # driver extras (e.g. noise levels)

    @property
    def steps(self) -> int:
        return int(len(self.actions))

    @property
    def total_reward(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


def smooth_action(action: np.ndarray, previous: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential action smoothing: ``a_t = (1 - s) * action + s * a_{t-1}`` (``s = 0`` turns it off)."""
    if smoothing <= 0.0:
        return action
    return ((1.0 - smoothing) * action + smoothing * previous).astype(np.float32)


def run_episode(env: Any, driver: Driver, seed: int, max_steps: int, *, smoothing: float = 0.0,
                record_frames: bool = False, capture_raw: bool = False, stall_steps: int = 0,
                on_step: Callable[[int, np.ndarray, float], None] | None = None) -> EpisodeResult:
    """Drive one seeded episode for at most ``max_steps`` steps (the env's own 1000-step limit also ends it).

    ``on_step(step, observation, episode_reward)`` is called with every observation the driver sees.
    ``stall_steps`` > 0 ends the episode once that many steps in a row earned no new track tile (reward
    ≤ 0: the car is off the road, stuck or lost); ``info["stalled"]`` says so. Only training fitness uses
    it, to stop paying for episodes already lost; scores and checks drive whole episodes.
    """
    observation, _ = env.reset(seed=seed)
    driver.reset(env, seed)
    actions, rewards, frames, raw_frames = [], [], [], []
    previous = np.zeros(3, dtype=np.float32)
    episode_reward, lap_finished, terminated, ended_by_driver = 0.0, False, False, False
    steps_without_tile, stalled = 0, False
    for step in range(max_steps):
        if on_step is not None:
            on_step(step, observation, episode_reward)
        try:
            action = np.asarray(driver.act(observation, env, step, episode_reward), dtype=np.float32)
        except EndSession:
            ended_by_driver = True
            break
        action = smooth_action(action, previous, smoothing)
        previous = action
        if hasattr(driver, "applied"):
            driver.applied(action)
        if record_frames:
            frames.append(preprocess_frame(observation))
        if capture_raw:
            raw_frames.append(observation)
        observation, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        episode_reward += float(reward)
        if terminated or truncated:
            lap_finished = bool(info.get("lap_finished", False))
            break
        steps_without_tile = 0 if reward > 0 else steps_without_tile + 1
        if stall_steps and steps_without_tile >= stall_steps:
            stalled = True
            break
    return EpisodeResult(
        seed=seed,
        actions=np.asarray(actions, dtype=np.float32).reshape(-1, 3),
        rewards=np.asarray(rewards, dtype=np.float32),
        lap_finished=lap_finished,
        terminated=bool(terminated),
        ended_by_driver=ended_by_driver,
        frames=np.asarray(frames, dtype=np.uint8).reshape(-1, 64, 64, 3) if record_frames else None,
        raw_frames=np.asarray(raw_frames, dtype=np.uint8).reshape(-1, 96, 96, 3) if capture_raw else None,
        info={**(getattr(driver, "episode_info", {}) or {}), **({"stalled": True} if stalled else {})},
    )


# --- workers: processes or Ray actors (car_racing.episodes.backends) ---------------------------------------------

def _episode_worker(make_driver: Callable[[], Driver], env_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"driver": make_driver(), "env": make_env(**env_kwargs)}


def _episode_job(state: dict[str, Any], job: tuple[int, int | None, int, dict[str, Any]],
                 candidates: np.ndarray | None) -> EpisodeResult:
    seed, candidate, max_steps, options = job
    driver = state["driver"]
    if candidate is not None:
        driver.set_params(candidates[candidate])
    return run_episode(state["env"], driver, seed, max_steps, **options)


def default_workers() -> int:
    return os.cpu_count() or 1


class EpisodeWorkers:
    """``workers`` workers (processes or Ray actors, see ``backend``) that each build their driver (with
    ``make_driver``: V and M load once) and their env once, and drive episodes for as long as this object
    is open (e.g. a whole CMA-ES run). Use as a context manager, or call :meth:`close`.

    ``make_driver`` must be picklable (a top-level function or ``functools.partial``) unless it runs in
    this process (``workers == 1`` on the processes backend).
    """

    def __init__(self, make_driver: Callable[[], Driver], workers: int, *, backend: Backend | None = None,
                 env_kwargs: dict[str, Any] | None = None):
        self.pool = WorkerPool(_episode_worker, (make_driver, dict(env_kwargs or {})), _episode_job, workers, backend)

    def run(self, seeds: Sequence[int], max_steps: int, *, candidates: np.ndarray | None = None,
            ordered: bool = False, **options: Any) -> Iterator[tuple[int, EpisodeResult]]:
        """One episode per seed, or with ``candidates`` (P, D) one per candidate and seed (the driver's
        ``set_params`` swaps them in; they reach the workers once per call, not once per episode).

        Yields ``(k, result)`` as episodes finish (in ``k`` order with ``ordered``); episode ``k`` is
        candidate ``k // len(seeds)`` on ``seeds[k % len(seeds)]``. ``options`` go to :func:`run_episode`.
        """
        seeds = [int(seed) for seed in seeds]
        rows = [None] if candidates is None else range(len(candidates))
        jobs = [(seed, row, max_steps, options) for row in rows for seed in seeds]
        return self.pool.map(jobs, shared=None if candidates is None else np.asarray(candidates), ordered=ordered)

    @property
    def replacements(self) -> int:
        """Workers replaced after one died (their episodes ran again)."""
        return self.pool.replacements

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "EpisodeWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_episodes(make_driver: Callable[[], Driver], seeds: Sequence[int], max_steps: int, *, workers: int = 1,
                 env_kwargs: dict[str, Any] | None = None, ordered: bool = False, backend: Backend | None = None,
                 **options: Any) -> Iterator[EpisodeResult]:
    """Run one episode per seed, yielding results as they finish (or in seed order with ``ordered``).

    ``make_driver`` must be picklable (a top-level function or ``functools.partial``) when the episodes
    run in workers (``workers > 1``, or the ray ``backend``): each worker builds its own driver and env
    once. ``options`` go to :func:`run_episode`. Separate processes measured faster than gymnasium's
    AsyncVectorEnv here.
    """
    env_kwargs = dict(env_kwargs or {})
    backend = backend or Backend()
    workers = max(1, min(workers, len(seeds)))
    if workers == 1 and not backend.is_ray:
        env = make_env(**env_kwargs)
        driver = make_driver()
        try:
            for seed in seeds:
                yield run_episode(env, driver, seed, max_steps, **options)
        finally:
            env.close()
        return
    with EpisodeWorkers(make_driver, workers, backend=backend, env_kwargs=env_kwargs) as pool:
        for _, result in pool.run(seeds, max_steps, ordered=ordered, **options):
            yield result
