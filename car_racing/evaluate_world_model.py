"""Measure the dream: does M's dream rank controllers the way the real env does?

A panel of ``--panel`` controllers of widely varied quality — the zero C, bias-only drivers (straight
at several throttles, circling), random linear Cs, the C in ``--checkpoint-dir`` (and any ``--controllers``
checkpoints, e.g. earlier CMA-ES runs) and copies of those perturbed at growing scales — each

- drives the same ``--episodes`` real tracks (seeds ``--eval-seed-base`` …, away from every training,
  check and recording seed) → its real return;
- drives the same dreams, with *the very fitness training uses* (:func:`car_racing.training.dream.dream_rollout`:
  start states from the recorded data, ``--rollout-steps``, ``--dream-trials``, τ, dream dropout, M's value ending
  the dreams still alive (``--dream-value``); by default the settings saved in the controller checkpoint, else the
  training script's defaults) → its dream fitness.

It prints each controller's real return and dream fitness, then M's errors on the panel's real episodes
(z = V's μ of each frame, M fed the real actions):

- one-step: MDN negative log-likelihood per latent dimension, and the squared error of the most likely
  component's mean against the next μ (per latent dimension);
- multi-step: M dreams open-loop with the real actions and τ = 0 for ``--horizon`` steps from every
  ``--horizon``-th step; squared error of the dreamed z against the real μ at the horizon;
- reward head: per-step MSE against the real reward (clipped as in training), and per episode the sum
  of M's predicted rewards against the real return (what a dream's fitness is built from);
- done head: its largest probability on steps that did not end the episode, and on steps that did.

It writes a scatter PNG (dream fitness against real return, one point per controller) and ends with

    dream-real rank correlation: R over N controllers

(Spearman's ρ over the panel, two decimals). A dream worth training in ranks controllers like the real env.

With ``--record-into DATA_DIR`` the panel's real episodes are also appended to that recording, as driver
``panel`` with ``{"panel_run", "panel_trial", "controller"}`` in their meta: driving straight, circling and
perturbed Cs are the behaviours M misjudges, so they are data for M (the dream loop passes its data and
iteration). A rerun with the same ``--record-run`` appends only the trials not yet there, and an episode already
recorded by an earlier run (same track, same actions: the bias-only controllers drive the fixed tracks identically
every time) is not appended again.

    python car_racing/evaluate_world_model.py --panel 12 --episodes 4
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import functools
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Optional

import numpy as np
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import (
    agent_dir,
    atomic_path,
    checkpoint_paths,
    load_model,
    no_grad,
    resolve_device,
    seed_everything,
)
from car_racing.episodes.rollout import Backend, EpisodeWorkers, default_workers, uses_backend
from car_racing.recording.recorded_data import (
    RecordedEpisode,
    appending_to,
    has_recorded_data,
    load_memory_sequences,
    load_recorded,
    recorded_trials,
)

if TYPE_CHECKING:  # annotations only: torch is imported where it is used, so --help stays light
    import torch

    from car_racing.models.mdn_rnn import MDNRNN

PANEL_DRIVER = "panel"  # the driver name of the panel's episodes in a recording (--record-into)
DREAM_SETTINGS = ("rollout_steps", "dream_trials", "temperature", "dream_dropout", "start_states", "dream_start",
                  "dream_value")


@dataclass
class Args:
    """Rank a panel of controllers in the real env and in M's dream; print the rank correlation and M's errors."""

    checkpoint_dir: Optional[str] = None
    """V and M to measure (vision_model.pth, memory_model.pth); its control_model_cmaes.pth, if any, joins the
    panel with perturbed copies and gives the dream settings (default: checkpoints/ once you have trained V and M and C there, else the shipped agent in checkpoints/pretrained/default)"""
    data_dir: str = "data"
    """recorded data: the dream start states, as in training"""
    panel: int = 12
    """number of controllers in the panel (at least 3)"""
    episodes: int = 4
    """real tracks per controller (the same tracks for every controller)"""
    controllers: list[str] = field(default_factory=list)
    """more controller checkpoints for the panel (e.g. earlier runs)"""
    out: str = "checkpoints/world_model_fidelity.png"
    """scatter PNG of dream fitness against real return"""
    json_out: Optional[str] = None
    """also write every figure to this JSON file"""
    rollout_steps: Optional[int] = None
    """dream length (default: the controller checkpoint's training setting, else the training default)"""
    dream_trials: Optional[int] = None
    """dreams per controller (default: as in training, at least 32)"""
    temperature: Optional[float] = None
    """τ of the dreams (default: as in training)"""
    dream_dropout: Optional[float] = None
    """dropout p of the dreams (default: as in training)"""
    start_states: Optional[int] = None
    """size of the start-state pool (default: as in training)"""
    dream_start: Optional[Literal["recorded", "episode-start"]] = None
    """recorded or episode-start (default: as in training; see train_controller_cmaes.py --dream-start)"""
    dream_value: Optional[bool] = None
    """end the dreams still alive on M's value of their last state (default: as in training, when M has a value head)"""
    horizon: int = 20
    """steps of the open-loop multi-step prediction"""
    max_steps: int = 1000
    """step limit of each real episode"""
    eval_seed_base: int = 4_000_000
    """real tracks use seeds BASE … BASE+episodes−1 (away from recording, training and check seeds)"""
    seed: int = 0
    """seeds the panel's random and perturbed controllers and the dreams' start states and noise"""
    workers: int = field(default_factory=default_workers)
    """workers for the real episodes: processes, or Ray actors with --backend ray"""
    backend: Literal["processes", "ray"] = "processes"
    """where the real episodes run: processes on this machine, or ray (actors on a local Ray or a cluster; same
    results; see docs/scaling-with-ray.md)"""
    ray_address: str = ""
    """--backend ray: auto or HOST:PORT = join a running cluster; empty = the cluster in RAY_ADDRESS when that is set,
    else a private local Ray with --workers CPUs for this run (never a cluster an earlier `ray start` left behind)"""
    device: str = "auto"
    """device of the dreams and of M's error measurement (real episodes run on the CPU)"""
    progress: bool = True
    """show tqdm progress bars"""
    record_into: str = ""
    """also append the panel's real episodes to this recorded data folder (driver ``panel``: data for M); empty =
    drive them only to measure"""
    record_run: int = 0
    """--record-into: the episodes' ``panel_run`` (the dream loop's iteration); trials of this run already in the
    data are not appended again"""


def check_args(args: Args) -> None:
    if args.panel < 3:
        raise UsageError(f"--panel {args.panel}: expected at least 3 controllers (a rank correlation needs them)")
    for flag, value in (("--episodes", args.episodes), ("--horizon", args.horizon), ("--max-steps", args.max_steps),
                        ("--workers", args.workers)):
        if value < 1:
            raise UsageError(f"{flag} {value}: expected a positive integer")
    for flag in ("rollout_steps", "dream_trials", "start_states"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value}: expected a positive integer")
    if args.temperature is not None and args.temperature < 0:
        raise UsageError(f"--temperature {args.temperature}: expected τ ≥ 0")
    if args.dream_start not in (None, "recorded", "episode-start"):
        raise UsageError(f"--dream-start {args.dream_start}: expected recorded or episode-start")
    if args.dream_dropout is not None and not 0 <= args.dream_dropout < 1:
        raise UsageError(f"--dream-dropout {args.dream_dropout}: expected 0 <= p < 1")
    for path in args.controllers:
        if not Path(path).is_file():
            raise UsageError(f"--controllers {path}: no such controller checkpoint")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(values: np.ndarray) -> np.ndarray:
        order = np.argsort(values, kind="mergesort")
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values):  # ties share their average rank
            tied = values == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(np.asarray(x, dtype=np.float64)), ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def dream_settings(args: Args, controller_checkpoint: dict | None) -> dict[str, Any]:
    """The dream the controller was (or would be) trained in: explicit flags, else its saved config, else defaults."""
    from car_racing.train_controller_cmaes import Args as TrainArgs

    saved = (controller_checkpoint or {}).get("config", {})
    if saved.get("mode") != "dream":  # a real-mode C's rollout_steps is its episode limit, not a dream's
        saved = {}
    defaults = TrainArgs()
    settings = {}
    for name in DREAM_SETTINGS:
        value = getattr(args, name)
        settings[name] = value if value is not None else saved.get(name, getattr(defaults, name))
    if args.dream_trials is None:
        settings["dream_trials"] = max(32, int(settings["dream_trials"]))  # a steadier estimate than one generation's
    return settings


def bias_only(num_params: int, steer: float, gas: float, brake: float) -> np.ndarray:
    """A controller that ignores z and h: constant pre-squash outputs (steer via atanh, gas/brake via logit)."""
    def logit(p: float) -> float:
        return float(np.log(p / (1 - p)))

    params = np.zeros(num_params)
    params[-3:] = [np.arctanh(steer), logit(gas), logit(brake)]
    return params


def build_panel(args: Args, num_params: int, trained: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """``--panel`` named flat parameter vectors of widely varied quality (module docstring), deterministic in --seed."""
    rng = np.random.default_rng([args.seed, 17])
    panel: list[tuple[str, np.ndarray]] = [("zero", np.zeros(num_params))]
    panel += list(trained)
    panel += [("straight, gas 0.9", bias_only(num_params, 0.0, 0.9, 0.01)),
              ("straight, gas 0.3", bias_only(num_params, 0.0, 0.3, 0.01)),
              ("circling left", bias_only(num_params, -0.6, 0.5, 0.01))]
    # perturbed copies of each trained C at growing scales, then random linear Cs of growing size
    scales = [0.1, 0.3, 1.0, 3.0]
    extras: list[tuple[str, np.ndarray]] = []
    for scale in scales:
        for name, params in trained:
            spread = float(np.std(params)) or 1.0
            extras.append((f"{name} + noise ×{scale:g}", params + scale * spread * rng.standard_normal(num_params)))
    for sigma in (0.03, 0.1, 0.3, 0.05, 0.2, 0.01):
        extras.append((f"random σ={sigma:g}", sigma * rng.standard_normal(num_params)))
    panel += extras
    near = [0.05, 0.1, 0.2, 0.3, 0.5]  # a larger panel adds copies close to the trained Cs: where CMA-ES searches
    while len(panel) < args.panel:
        if trained:
            scale = near[(len(panel) // max(len(trained), 1)) % len(near)]
            name, params = trained[len(panel) % len(trained)]
            spread = float(np.std(params)) or 1.0
            panel.append((f"{name} + noise ×{scale:g} #{len(panel)}", params + scale * spread * rng.standard_normal(num_params)))
        else:
            sigma = float(rng.choice([0.02, 0.05, 0.1, 0.2]))
            panel.append((f"random σ={sigma:g} #{len(panel)}", sigma * rng.standard_normal(num_params)))
    return panel[:args.panel]


@no_grad
def memory_errors(vae: Any, mdnrnn: MDNRNN, frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                  horizon: int, reward_clip: float, device: torch.device) -> dict[str, float]:
    """M's errors on one real episode (module docstring): one-step NLL and mean error, multi-step error at
    ``horizon``, reward MSE and the episode's predicted vs real return, done probabilities."""
    import torch

    from car_racing.models.mdn_rnn import MDNRNN, mdn_log_prob
    from car_racing.models.vae import frames_to_tensor

    mu = torch.cat([vae.encode(frames_to_tensor(frames[i:i + 256], device=device))[0].float()
                    for i in range(0, len(frames), 256)])  # (T, L)
    a = torch.as_tensor(actions, dtype=torch.float32, device=device)
    out, _ = mdnrnn(mu[None], a[None])
    steps = len(mu)
    r = np.clip(rewards, -reward_clip, reward_clip) if reward_clip > 0 else rewards
    predicted_reward = out.reward[0].float().cpu().numpy()
    result = {"steps": steps, "real_return": float(np.sum(rewards)), "predicted_return": float(predicted_reward.sum()),
              "reward_mse": float(np.mean((predicted_reward - r) ** 2))}
    done = torch.sigmoid(out.done_logit[0]).cpu().numpy()
    result["done_prob_max_not_end"] = float(done[:-1].max()) if steps > 1 else 0.0
    result["done_prob_last"] = float(done[-1])
    if steps > 1:
        nll = -mdn_log_prob(out.logit_pi[0, :-1], out.mu[0, :-1], out.log_sigma[0, :-1], mu[1:])
        top = out.logit_pi[0, :-1].argmax(-1, keepdim=True)
        mean = out.mu[0, :-1].gather(-1, top).squeeze(-1)
        result["one_step_nll"] = float(nll.mean())
        result["one_step_mse"] = float(((mean - mu[1:]) ** 2).mean())
    starts = list(range(0, steps - horizon, horizon))
    if starts:  # open-loop dreams with the real actions, τ = 0, from each start, batched
        index = torch.as_tensor(starts, device=device)
        hs, cs = [], []
        state = mdnrnn.initial_state(1, device=device)
        for t in range(starts[-1] + 1):  # M's state before consuming step t, kept at every start
            if t % horizon == 0:
                hs.append(state[0])
                cs.append(state[1])
            _, state = mdnrnn.step(mu[t:t + 1], a[t:t + 1], state)
        state = (torch.cat(hs), torch.cat(cs))
        z = mu[index]
        for k in range(horizon):
            step_out, state = mdnrnn.step(z, a[index + k], state)
            z = MDNRNN.sample_next_z(step_out, temperature=0.0)
        result["multi_step_mse"] = float(((z - mu[index + horizon]) ** 2).mean())
    return result


def episode_fingerprint(seed: int, actions: np.ndarray) -> str:
    """The identity of a seeded real episode: its track and the actions the env received (it re-simulates exactly
    from them), as a short hash."""
    digest = hashlib.sha256(str(int(seed)).encode())
    digest.update(np.ascontiguousarray(actions, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def panel_recorder(data_dir: str, run: int) -> Iterator[Callable[[int, str, Any], bool]]:
    """``record(trial, name, result)``: appends one panel episode to ``data_dir`` (driver ``panel``, meta
    ``panel_run`` = ``run``) unless that trial is already there, or the very same episode (same track, same actions:
    :func:`episode_fingerprint`) from an earlier run: the bias-only controllers, and any C that did not change, drive
    the panel's fixed tracks identically every time, and a copy adds only weight, no data. Returns whether it
    recorded. Without ``data_dir`` it records nothing. Everything recorded is merged on exit, also after an
    interruption."""
    if not data_dir:
        yield lambda trial, name, result: False
        return
    done = recorded_trials(data_dir, PANEL_DRIVER, "panel_run", "panel_trial", run)
    known = {e["noise"].get("fingerprint") for e in load_recorded(data_dir, mmap=True).episodes
             if e["driver"] == PANEL_DRIVER} if has_recorded_data(data_dir) else set()
    with appending_to(data_dir) as store:
        def record(trial: int, name: str, result: Any) -> bool:
            fingerprint = episode_fingerprint(result.seed, result.actions)
            if trial in done or fingerprint in known:
                return False
            known.add(fingerprint)
            store.add(RecordedEpisode(seed=result.seed, driver=PANEL_DRIVER, frames=result.frames,
                                      actions=result.actions, rewards=result.rewards, lap_finished=result.lap_finished,
                                      terminated=result.terminated,
                                      noise={"panel_run": run, "panel_trial": trial, "controller": name,
                                             "fingerprint": fingerprint}))
            return True
        yield record


def real_panel(args: Args, panel: list[tuple[str, np.ndarray]], vae: Any, mdnrnn: MDNRNN, reward_clip: float,
               device: torch.device) -> list[dict[str, Any]]:
    """Every controller's real episodes (same seeds for all) and M's errors on them; with --record-into, the
    episodes are appended to that recording too (trial = controller index × episodes + track index)."""
    from car_racing.episodes.agent import make_agent_driver

    seeds = [args.eval_seed_base + i for i in range(args.episodes)]
    make_driver = functools.partial(make_agent_driver, str(args.checkpoint_dir), panel[0][1], "cpu")
    make_driver()  # V, M and C's sizes checked here (one line on a bad file), before any worker starts
    rows = []
    # One set of workers for the whole panel (V and M loaded once each); each controller is swapped in.
    workers = EpisodeWorkers(make_driver, min(args.workers, len(seeds)), backend=Backend.from_args(args))
    try:
        with panel_recorder(args.record_into, args.record_run) as record:
            for index, (name, params) in enumerate(tqdm(panel, desc="real episodes (panel)", unit="C",
                                                        disable=not args.progress)):
                results = [result for _, result in workers.run(seeds, args.max_steps, candidates=np.asarray(params)[None],
                                                               ordered=True, record_frames=True)]
                recorded = sum(record(index * len(seeds) + k, name, r) for k, r in enumerate(results))
                errors = [memory_errors(vae, mdnrnn, r.frames, r.actions, r.rewards, args.horizon, reward_clip, device)
                          for r in results]
                returns = np.array([r.total_reward for r in results])
                rows.append({"name": name, "real_return": float(returns.mean()), "real_std": float(returns.std()),
                             "laps": int(sum(r.lap_finished for r in results)), "episodes": errors,
                             "recorded": recorded})
    finally:
        workers.close()
    return rows


def dream_panel(args: Args, panel: list[tuple[str, np.ndarray]], mdnrnn: MDNRNN, memory_checkpoint: dict,
                settings: dict[str, Any], device: torch.device) -> np.ndarray:
    """Dream fitness (P,) of every controller: the training fitness, same start states and noise for all."""
    import torch

    from car_racing.models.ffn import flat_to_population
    from car_racing.recording.latent_cache import load_or_build_latents
    from car_racing.training.dream import dream_rollout, memory_dream_scales, start_pool

    mu, _ = load_or_build_latents(args.data_dir, checkpoint_paths(args.checkpoint_dir)["vision"], device,
                                  progress=args.progress)
    sequences = load_memory_sequences(args.data_dir)
    if len(sequences.indices) == 0:
        raise UsageError(f"--data-dir {args.data_dir}: no memory sequences to start dreams from; record more data")
    episode_starts = [int(e["start"]) for e in load_recorded(args.data_dir, mmap=True).episodes]
    pool = start_pool(settings["dream_start"], mdnrnn, mu, sequences.indices, sequences.actions, episode_starts,
                      settings["start_states"], np.random.default_rng([args.seed, 1]), device=device).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    start_z, start_state = pool.pick(settings["dream_trials"], generator)
    flat = torch.as_tensor(np.stack([p for _, p in panel]), dtype=torch.float32, device=device)
    weights, biases = flat_to_population(flat, mdnrnn.latent_size, mdnrnn.hidden_size)
    reward_scale, discount = memory_dream_scales(memory_checkpoint)
    fitness = dream_rollout(mdnrnn, weights, biases, start_z, start_state, settings["rollout_steps"],
                            settings["temperature"], generator, reward_scale=reward_scale,
                            dropout=settings["dream_dropout"],
                            value_discount=discount if settings["dream_value"] else 0.0)
    return fitness.mean(dim=1).double().cpu().numpy()


def plot_scatter(rows: list[dict[str, Any]], rho: float, path: Path, settings: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    real = [r["real_return"] for r in rows]
    dream = [r["dream_fitness"] for r in rows]
    ax.errorbar(dream, real, yerr=[r["real_std"] for r in rows], fmt="o", capsize=3)
    for r in rows:
        ax.annotate(r["name"], (r["dream_fitness"], r["real_return"]), fontsize=6, alpha=0.8)
    ax.set_xlabel(f"dream fitness ({settings['dream_start']}, {settings['rollout_steps']} steps, τ={settings['temperature']:g}, "
                  f"dropout {settings['dream_dropout']:g}, {settings['dream_trials']} dreams)")
    ax.set_ylabel("real return (mean ± std over the panel's tracks)")
    ax.set_title(f"dream vs real: Spearman ρ = {rho:.2f} over {len(rows)} controllers")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def summarise_errors(rows: list[dict[str, Any]]) -> dict[str, float]:
    episodes = [e for r in rows for e in r["episodes"]]
    keys = ("one_step_nll", "one_step_mse", "multi_step_mse", "reward_mse")
    summary = {k: float(np.mean([e[k] for e in episodes if k in e])) for k in keys if any(k in e for e in episodes)}
    gaps = np.array([e["predicted_return"] - e["real_return"] for e in episodes])
    summary["return_error_mean"] = float(gaps.mean())
    summary["return_error_abs_mean"] = float(np.abs(gaps).mean())
    return summary


@uses_backend
def main(args: Args) -> dict[str, Any]:
    """Run the measurement; returns every figure (also printed, and in --json-out)."""
    args.checkpoint_dir = agent_dir(args.checkpoint_dir, ('vision', 'memory', 'controller'))  # yours, else the shipped agent
    from car_racing.models.ffn import num_controller_params
    from car_racing.training.dream import memory_dream_scales

    check_args(args)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    paths = checkpoint_paths(args.checkpoint_dir)
    vae, _ = load_model(paths["vision"], "vision", device)
    mdnrnn, memory_checkpoint = load_model(paths["memory"], "memory", device)
    mdnrnn = mdnrnn.float()
    vae = vae.float()
    reward_clip = float(memory_checkpoint.get("reward", {}).get("clip", 0.0) or 0.0)
    num_params = num_controller_params(mdnrnn.latent_size, mdnrnn.hidden_size, mdnrnn.action_size)

    trained, own = [], None
    for path in ([paths["controller"]] if paths["controller"].is_file() else []) + [Path(p) for p in args.controllers]:
        controller, checkpoint = load_model(path, "controller")
        if controller.hidden_size != mdnrnn.hidden_size or controller.latent_size != mdnrnn.latent_size:
            raise UsageError(f"{path}: controller sizes do not fit M in {args.checkpoint_dir}")
        trained.append((f"C {path.parent.name}/{path.stem}" if path != paths["controller"] else "C (checkpoint)",
                        controller.get_flat_params()))
        own = own or checkpoint
    settings = dream_settings(args, own)
    panel = build_panel(args, num_params, trained)

    started = time.time()
    has_value = mdnrnn.value_head is not None and memory_dream_scales(memory_checkpoint)[1] > 0
    if settings["dream_value"] and not has_value:
        if args.dream_value:
            raise UsageError(f"--dream-value: {paths['memory']} has no value head")
        settings["dream_value"] = False  # as training would have: an M without a value head ends no dream on it
    fitness = dream_panel(args, panel, mdnrnn, memory_checkpoint, settings, device)
    dream_seconds = time.time() - started
    rows = real_panel(args, panel, vae, mdnrnn, reward_clip, device)
    for row, value in zip(rows, fitness):
        row["dream_fitness"] = float(value)
    rho = spearman(np.array([r["dream_fitness"] for r in rows]), np.array([r["real_return"] for r in rows]))
    ending = ", ending on M's value" if settings["dream_value"] else ""

    print(f"\ndream: {settings['dream_trials']} dreams × {settings['rollout_steps']} steps, τ = {settings['temperature']:g}, "
          f"dropout {settings['dream_dropout']:g}{ending} ({dream_seconds:.1f}s); real: {args.episodes} tracks from "
          f"seed "
          f"{args.eval_seed_base}")
    print(f"{'controller':<34} {'real return':>17} {'laps':>5} {'dream fitness':>14} {'Σ r̂ − Σ r':>11}")
    for row in rows:
        gap = np.mean([e["predicted_return"] - e["real_return"] for e in row["episodes"]])
        print(f"{row['name'][:34]:<34} {row['real_return']:8.1f} ± {row['real_std']:6.1f} {row['laps']:>5d} "
              f"{row['dream_fitness']:14.1f} {gap:11.1f}")
    errors = summarise_errors(rows)
    print(f"M on the panel's {sum(len(r['episodes']) for r in rows)} real episodes: one-step NLL "
          f"{errors.get('one_step_nll', float('nan')):.3f} per latent dim, one-step MSE "
          f"{errors.get('one_step_mse', float('nan')):.4f}, {args.horizon}-step open-loop MSE "
          f"{errors.get('multi_step_mse', float('nan')):.4f}; reward MSE {errors['reward_mse']:.3f} per step, "
          f"episode return predicted − real {errors['return_error_mean']:+.1f} (|·| {errors['return_error_abs_mean']:.1f})")
    if args.record_into:
        recorded, driven = sum(r["recorded"] for r in rows), sum(len(r["episodes"]) for r in rows)
        print(f"recorded {recorded} of the panel's {driven} real episodes into {args.record_into} (driver "
              f"{PANEL_DRIVER}, run {args.record_run}" + ("; the others were already there)" if recorded < driven else ")"))
    plot_scatter(rows, rho, Path(args.out), settings)
    summary = {"rank_correlation": rho, "controllers": len(rows), "settings": settings, "errors": errors, "rows": rows,
               "checkpoint_dir": str(args.checkpoint_dir), "episodes": args.episodes, "eval_seed_base": args.eval_seed_base}
    if args.json_out:
        with atomic_path(args.json_out) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    print(f"dream-real rank correlation: {rho:.2f} over {len(rows)} controllers")
    return summary


if __name__ == "__main__":
    run_main(main, Args)
