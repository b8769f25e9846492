"""The World Models agent: V + M + C loaded from their checkpoints, driving the real CarRacing-v3.

At real-env step t (h_0 = c_0 = 0)::

    frame_t = preprocess_frame(observation_t)        # 96×96 → 64×64, as in the recorded data
    z_t     = V.encode(frame_t).mu                   # the mean, no sampling
    a_t     = C(z_t, h_t)                            # the env may receive a smoothed version, â_t
    (h_{t+1}, c_{t+1}) = M.step(z_t, â_t, (h_t, c_t))  # M sees the action really applied (â_t = a_t unsmoothed)

:class:`Agent` is a :class:`car_racing.episodes.rollout.Driver`; :func:`evaluate_agent` runs it through
:func:`car_racing.episodes.rollout.run_episodes` (the one real-env loop), optionally in worker processes.
Each model is rebuilt from its checkpoint's ``model_args``: no sizes are re-declared here.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from car_racing.common.cli import UsageError
from car_racing.common.runtime import STAGE_SCRIPTS, checkpoint_paths, load_model, resolve_device
from car_racing.episodes.rollout import Backend, EpisodeResult, EpisodeWorkers, run_episodes
from car_racing.models.ffn import Controller
from car_racing.world.drivers import ACTION_HIGH, ACTION_LOW
from car_racing.world.envs import preprocess_frame


def check_compatible(vae: torch.nn.Module, mdnrnn: torch.nn.Module, controller: Controller,
                     paths: dict[str, Path]) -> None:
    """One-line UsageError when the three models' sizes do not chain (z: V → M, C; h: M → C)."""
    if mdnrnn.latent_size != vae.latent_size:
        raise UsageError(f"{paths['memory']}: memory model expects latent size {mdnrnn.latent_size} but "
                         f"{paths['vision']} has {vae.latent_size}; rerun {STAGE_SCRIPTS['memory']}")
    if controller.latent_size != vae.latent_size or controller.hidden_size != mdnrnn.hidden_size:
        raise UsageError(f"{paths['controller']}: controller expects latent {controller.latent_size} / hidden "
                         f"{controller.hidden_size} but V/M have {vae.latent_size} / {mdnrnn.hidden_size}; "
                         f"rerun {STAGE_SCRIPTS['controller']}")
    if mdnrnn.action_size != controller.action_size:
        raise UsageError(f"{paths['memory']}: memory model expects {mdnrnn.action_size} actions, controller "
                         f"gives {controller.action_size}; rerun {STAGE_SCRIPTS['memory']}")


class Agent:
    """V + M + C as a rollout driver (batch 1, ``torch.no_grad``). See the module docstring."""

    def __init__(self, vae: torch.nn.Module, mdnrnn: torch.nn.Module, controller: Controller,
                 device: str | torch.device = "cpu"):
        from car_racing.models.vae import frames_to_tensor

        self.device = resolve_device(device)
        self.vae = vae.to(self.device).eval()
        self.mdnrnn = mdnrnn.to(self.device).eval()
        self.controller = controller.to(self.device).eval()
        self._frames_to_tensor = frames_to_tensor
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending_z: torch.Tensor | None = None  # z_t and a_t until M has been stepped with â_t
        self._pending_action: torch.Tensor | None = None
        self._predicted_reward: torch.Tensor | None = None
        self.episode_info: dict[str, Any] = {}
        self.reset(None, 0)

    @property
    def hidden(self) -> torch.Tensor:
        """h_t (1, H): the LSTM output the controller sees at the next step."""
        assert self.state is not None
        return self.state[0]

    def set_params(self, params: np.ndarray) -> None:
        """Drive with C's flat parameters ``params`` (a CMA-ES candidate; layout in :mod:`car_racing.models.ffn`)."""
        self.controller.set_flat_params(params)

    def reset(self, env: Any, seed: int) -> None:
        """New episode: h_0 = c_0 = 0."""
        self.state = self.mdnrnn.initial_state(1, device=self.device)
        self._pending_z = self._pending_action = None
        self._predicted_reward = None

    @torch.no_grad()
    def act(self, observation: np.ndarray, env: Any = None, step: int = 0, episode_reward: float = 0.0
            ) -> np.ndarray:
        """96×96×3 uint8 observation → float32 action (3,) [steer, gas, brake].

        M's state advances in :meth:`applied` (the rollout loop calls it with the action the env
        received); when nobody called it, the next ``act`` advances M with this raw action.
        """
        if self._pending_z is not None:
            self.applied(self._pending_action[0].cpu().numpy())
        frame = preprocess_frame(observation)
        x = self._frames_to_tensor(frame[None], device=self.device)  # (1, 3, 64, 64)
        z, _ = self.vae.encode(x)  # μ (1, L)
        action = self.controller(z, self.state[0])  # (1, 3)
        self._pending_z, self._pending_action = z, action
        return action[0].float().cpu().numpy()

    @property
    def predicted_reward(self) -> float | None:
        """M's predicted reward r_t for the last step it was fed (:meth:`applied`); None before the first."""
        return None if self._predicted_reward is None else float(self._predicted_reward[0])

    def features(self) -> np.ndarray:
        """``[z_t, h_t]`` float32 (1, L+H): what C saw at the last :meth:`act` (for imitation labels)."""
        assert self._pending_z is not None and self.state is not None, "call act() first"
        return torch.cat([self._pending_z, self.state[0]], dim=-1).float().cpu().numpy()

    @torch.no_grad()
    def applied(self, action: np.ndarray) -> None:
        """Step M with z_t and the action the env received: (h_{t+1}, c_{t+1}) = M.step(z_t, â_t, state)."""
        if self._pending_z is None:
            return
        applied = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.device)[None]
        output, self.state = self.mdnrnn.step(self._pending_z, applied, self.state)
        self._predicted_reward = output.reward
        self._pending_z = self._pending_action = None


def load_agent_models(checkpoint_dir: str | os.PathLike, controller_params: np.ndarray | None = None,
                      device: str | torch.device = "cpu") -> tuple[torch.nn.Module, torch.nn.Module, Controller]:
    """(vae, mdnrnn, controller) from ``checkpoint_dir``; all three checked before returning.

    With ``controller_params`` (a flat vector, see :mod:`car_racing.models.ffn`) the controller is built
    from V's latent size and M's hidden size and given those parameters: no controller checkpoint needed.
    """
    paths = checkpoint_paths(checkpoint_dir)
    device = resolve_device(device)
    vae, _ = load_model(paths["vision"], "vision", device)
    mdnrnn, _ = load_model(paths["memory"], "memory", device)
    if controller_params is None:
        controller, _ = load_model(paths["controller"], "controller", device)
    else:
        controller = Controller(latent_size=vae.latent_size, hidden_size=mdnrnn.hidden_size,
                                action_size=mdnrnn.action_size)
        try:
            controller.set_flat_params(controller_params)
        except ValueError as err:
            raise UsageError(f"controller parameters do not fit V/M in {checkpoint_dir}: {err}") from None
        controller = controller.to(device).eval()
    check_compatible(vae, mdnrnn, controller, paths)
    return vae, mdnrnn, controller


def make_agent_driver(checkpoint_dir: str | os.PathLike, controller_params: np.ndarray | None = None,
                      device: str | torch.device = "cpu") -> Agent:
    """An :class:`Agent` from the checkpoints in ``checkpoint_dir`` (picklable via ``functools.partial``)."""
    device = resolve_device(device)
    return Agent(*load_agent_models(checkpoint_dir, controller_params, device), device=device)


def iter_agent_episodes(checkpoint_dir: str | os.PathLike, seeds: Sequence[int], *,
                        controller_params: np.ndarray | None = None, max_steps: int = 1000, workers: int = 1,
                        smoothing: float = 0.0, device: str | torch.device = "cpu", capture_raw: bool = False,
                        record_frames: bool = False, env_kwargs: dict[str, Any] | None = None,
                        wrap: Callable[[Agent], Any] | None = None,
                        backend: Backend | None = None) -> Iterator[EpisodeResult]:
    """Like :func:`evaluate_agent`, but yields each result (in seed order) as soon as it is ready.

    The checkpoints are loaded and checked before the first env or worker starts (one UsageError if a
    file is missing or unfit). In-process (``workers == 1``) the agent runs with 1 torch thread (batch-1
    inference is fastest that way on CPU; the previous setting is restored after); with ``workers > 1``
    each spawned worker loads its own agent once and uses 1 thread (see :mod:`car_racing.episodes.rollout`); so
    does each Ray actor with the ray ``backend``. ``wrap`` (in-process only) turns the agent into the
    driver that runs, e.g. one that shows it in a window.
    """
    seeds = list(seeds)
    agent = make_agent_driver(checkpoint_dir, controller_params, device)
    options = dict(smoothing=smoothing, capture_raw=capture_raw, record_frames=record_frames)
    if max(1, min(workers, len(seeds))) > 1 or (backend is not None and backend.is_ray):
        if wrap is not None:
            raise ValueError("wrap needs workers=1 on the processes backend (the wrapped agent runs in this process)")
        del agent
        make_driver = functools.partial(make_agent_driver, str(checkpoint_dir), controller_params, str(device))
        yield from run_episodes(make_driver, seeds, max_steps, workers=workers, env_kwargs=env_kwargs,
                                ordered=True, backend=backend, **options)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        driver = agent if wrap is None else wrap(agent)
        yield from run_episodes(lambda: driver, seeds, max_steps, workers=1, env_kwargs=env_kwargs, **options)
    finally:
        torch.set_num_threads(threads)


def evaluate_agent(checkpoint_dir: str | os.PathLike, seeds: Sequence[int], *,
                   controller_params: np.ndarray | None = None, max_steps: int = 1000, workers: int = 1,
                   smoothing: float = 0.0, device: str | torch.device = "cpu", capture_raw: bool = False,
                   record_frames: bool = False, env_kwargs: dict[str, Any] | None = None,
                   backend: Backend | None = None) -> list[EpisodeResult]:
    """One real episode per seed with the agent (V + M + C from ``checkpoint_dir``, or C from
    ``controller_params``), results in seed order; ``smoothing`` as in :func:`car_racing.episodes.rollout.smooth_action`.

    Checkpoints are checked before any env work. With ``workers > 1`` each spawned worker loads its own
    agent once (1 torch thread each); use ``device="cpu"`` there. ``env_kwargs`` go to ``make_env``.
    ``backend`` (default: processes) chooses where the workers run (:mod:`car_racing.episodes.backends`).
    """
    return list(iter_agent_episodes(checkpoint_dir, seeds, controller_params=controller_params,
                                    max_steps=max_steps, workers=workers, smoothing=smoothing, device=device,
                                    capture_raw=capture_raw, record_frames=record_frames, env_kwargs=env_kwargs,
                                    backend=backend))


class ExploringAgent:
    """The agent with exploration noise, for recording C's own episodes (the dream loop's data).

    Each episode draws a noise level ``σ ~ U(0, noise)`` from its seed; an Ornstein–Uhlenbeck process
    (θ = 0.15 per step, stationary std σ) is added to steer and half of it to gas, and the result is
    clipped to the action box. M steps with the action the env received (:meth:`applied`), so C's memory
    sees what happened. With ``noise = 0`` it is the plain agent.

    With ``rescue`` > 0, once :data:`RESCUE_WHEELS` or more wheels have been on the grass for ``rescue``
    steps running, the autopilot (:class:`car_racing.world.autopilot.AutopilotDriver`, no noise) drives until
    all four wheels have been back on the road for :data:`RESCUE_HOLD` steps, then C drives again. Why: a C
    that leaves the road tends to stay on the grass (circling, braking), so its episodes show M the way off
    the road but never the way back, and a dream without a way back cannot teach C one. M steps with the
    autopilot's actions while it drives (they are what the env received). ``episode_info`` counts the
    rescues and the steps the autopilot drove.
    """

    THETA = 0.15
    RESCUE_WHEELS = 3  # wheels on the grass that count as off the road (the car is drawn across 4 wheels)
    RESCUE_HOLD = 25  # steps with every wheel on the road (0.5 s) before C has the wheel again

    def __init__(self, agent: Agent, noise: float, rescue: int = 0):
        self.agent, self.noise, self.rescue = agent, float(noise), int(rescue)
        self.episode_info: dict[str, float] = {}
        self._rng = np.random.default_rng(0)
        self._ou = np.zeros(2)
        self._sigma = 0.0
        self._rescuer: Any = None
        if self.rescue > 0:
            from car_racing.world.autopilot import AutopilotDriver

            self._rescuer = AutopilotDriver(noise=0.0)
        self._off_steps = self._on_steps = 0
        self._rescuing = False

    def reset(self, env: Any, seed: int) -> None:
        self.agent.reset(env, seed)
        self._rng = np.random.default_rng([int(seed), 7])
        self._sigma = float(self._rng.uniform(0.0, self.noise)) if self.noise > 0 else 0.0
        self._ou = np.zeros(2)
        self.episode_info = {"agent_noise_sigma": self._sigma}
        if self._rescuer is not None:
            self._rescuer.reset(env, seed)
            self._off_steps = self._on_steps = 0
            self._rescuing = False
            self.episode_info.update(rescues=0, rescue_steps=0)

    def act(self, observation: np.ndarray, env: Any = None, step: int = 0, episode_reward: float = 0.0
            ) -> np.ndarray:
        action = self.agent.act(observation, env, step, episode_reward).astype(np.float32)
        if self._sigma > 0:
            scale = self._sigma * np.sqrt(2 * self.THETA - self.THETA ** 2)  # stationary std = σ
            self._ou = (1 - self.THETA) * self._ou + scale * self._rng.standard_normal(2)
            action = action.copy()
            action[0] += self._ou[0]
            action[1] += 0.5 * self._ou[1]
            action = np.clip(action, ACTION_LOW, ACTION_HIGH).astype(np.float32)
        if self._rescuer is not None and env is not None:
            action = self._rescued(action, observation, env, step, episode_reward)
        return action

    def _rescued(self, action: np.ndarray, observation: np.ndarray, env: Any, step: int,
                 episode_reward: float) -> np.ndarray:
        """C's action, or the autopilot's while it brings the car back to the road."""
        # the autopilot is asked every step, not only while it drives: it follows the car along the track
        expert = self._rescuer.act(observation, env, step, episode_reward)
        on_grass = sum(len(wheel.tiles) == 0 for wheel in env.unwrapped.car.wheels)
        if self._rescuing:
            self._on_steps = self._on_steps + 1 if on_grass == 0 else 0
            if self._on_steps >= self.RESCUE_HOLD:
                self._rescuing, self._off_steps = False, 0
        else:
            self._off_steps = self._off_steps + 1 if on_grass >= self.RESCUE_WHEELS else 0
            if self._off_steps >= self.rescue:
                self._rescuing, self._on_steps = True, 0
                self.episode_info["rescues"] += 1
        if not self._rescuing:
            return action
        self.episode_info["rescue_steps"] += 1
        return np.asarray(expert, dtype=np.float32)

    def applied(self, action: np.ndarray) -> None:
        self.agent.applied(action)


def make_exploring_agent(checkpoint_dir: str | os.PathLike, noise: float, rescue: int = 0) -> ExploringAgent:
    """An :class:`ExploringAgent` from the checkpoints in ``checkpoint_dir`` (picklable via ``functools.partial``)."""
    torch.set_num_threads(1)
    return ExploringAgent(make_agent_driver(checkpoint_dir, None, "cpu"), noise, rescue)


class RealFitness:
    """Mean real-env return of each candidate over the given seeds, in workers kept for the whole run
    (:class:`car_racing.episodes.rollout.EpisodeWorkers`: processes or Ray actors, each loading V and M once and
    swapping in each candidate's parameters; a generation's candidates reach them once, not per episode).
    The run's real-env checks use the same workers (:meth:`episodes`): a second set would compete for the
    same cores (and on a Ray cluster wait for CPUs the first set holds)."""

    def __init__(self, checkpoint_dir: str, num_params: int, workers: int, backend: Backend | None = None):
        make_driver = functools.partial(make_agent_driver, str(checkpoint_dir), np.zeros(num_params), "cpu")
        self.workers = EpisodeWorkers(make_driver, workers, backend=backend)
        # real episodes driven, by use: "returns" (candidates scored: fitness) and "episodes" (one C's tracks:
        # checks, choices). A run's training record counts what was driven, not what its settings say.
        self.driven = {"returns": 0, "episodes": 0, "returns_steps": 0, "episodes_steps": 0}

    def returns(self, candidates: Sequence[np.ndarray], seeds: Sequence[int], max_steps: int,
                smoothing: float = 0.0, stall_steps: int = 0) -> np.ndarray:
        """Every candidate's return on every seed, (P, S), in a fixed order whichever episode finishes first."""
        returns = np.zeros((len(candidates), len(seeds)))
        for k, result in self.workers.run(seeds, max_steps, candidates=np.stack([np.asarray(c) for c in candidates]),
                                          smoothing=smoothing, stall_steps=stall_steps):
            returns[divmod(k, len(seeds))] = result.total_reward
            self.driven["returns_steps"] += result.steps
        self.driven["returns"] += returns.size
        return returns

    def __call__(self, candidates: Sequence[np.ndarray], seeds: Sequence[int], max_steps: int,
                 smoothing: float = 0.0, stall_steps: int = 0) -> np.ndarray:
        """Each candidate's mean return over ``seeds`` (the same on every backend and worker count)."""
        return self.returns(candidates, seeds, max_steps, smoothing, stall_steps).mean(axis=1)

    def episodes(self, params: np.ndarray, seeds: Sequence[int], max_steps: int, smoothing: float = 0.0
                 ) -> list[EpisodeResult]:
        """C(params)'s episode on each of ``seeds``, in seed order (a check keeps each track's return and the
        actions the env received: replayed from the seed, they re-create the episode as data for M)."""
        results: list[EpisodeResult] = [None] * len(seeds)  # type: ignore[list-item]
        for k, result in self.workers.run(seeds, max_steps, candidates=np.asarray(params)[None], smoothing=smoothing):
            results[k] = result
        self.driven["episodes"] += len(seeds)
        self.driven["episodes_steps"] += sum(result.steps for result in results)
        return results

    def close(self) -> None:
        self.workers.close()
