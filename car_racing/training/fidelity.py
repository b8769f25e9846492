"""Measure the dream: does M's dream rank controllers the way the real env does? (the fidelity panel)

:func:`measure_fidelity` builds a panel of ``panel`` controllers of widely varied quality — the zero C, bias-only
drivers (straight at several throttles, circling), random linear Cs, the C in ``checkpoint_dir`` (and any
``controllers`` checkpoints, e.g. earlier CMA-ES runs) and copies of those perturbed at growing scales — and each

- drives the same ``episodes`` real tracks (seeds ``eval_seed_base`` …, away from every training, check and
  recording seed) → its real return;
- drives the same dreams, with *the very fitness training uses* (:func:`car_racing.training.dream.dream_rollout`
  with the given :class:`~car_racing.common.config.Dream`: start states from the recorded data, its steps, trials,
  τ, dropout, M's value ending the dreams still alive) → its dream fitness. :func:`dream_of` gives the dream a
  controller was trained in (explicit values, else its checkpoint's saved config, else the defaults).

It prints each controller's real return and dream fitness, then M's errors on the panel's real episodes
(z = V's μ of each frame, M fed the real actions):

- one-step: MDN negative log-likelihood per latent dimension, and the squared error of the most likely
  component's mean against the next μ (per latent dimension);
- multi-step: M dreams open-loop with the real actions and τ = 0 for ``horizon`` steps from every
  ``horizon``-th step; squared error of the dreamed z against the real μ at the horizon;
- reward head: per-step MSE against the real reward (clipped as in training), and per episode the sum
  of M's predicted rewards against the real return (what a dream's fitness is built from);
- done head: its largest probability on steps that did not end the episode, and on steps that did.

It writes a scatter PNG (dream fitness against real return, one point per controller) and ends with

    dream-real rank correlation: R over N controllers

(Spearman's ρ over the panel, two decimals). A dream worth training in ranks controllers like the real env.

With ``record_into`` (a recorded data folder) the panel's real episodes are also appended to that recording, as
driver ``panel`` with ``{"panel_run", "panel_trial", "controller"}`` in their meta: driving straight, circling and
perturbed Cs are the behaviours M misjudges, so they are data for M (the dream loop passes its data and
iteration). A rerun with the same ``record_run`` appends only the trials not yet there, and an episode already
recorded by an earlier run (same track, same actions: the bias-only controllers drive the fixed tracks identically
every time) is not appended again.

``evaluate_world_model.py`` is this module's command line; the dream loop's ``fidelity`` stage calls
:func:`measure_fidelity` on each iteration's V, M and C. The panel's dream of a C, as the script measures it, is
``dream_of(trained_controller_checkpoint(checkpoint_dir, controllers), explicit)``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError
from car_racing.common.config import RANGES, Config, ConfigError, Dream, with_values
from car_racing.common.runtime import (
    atomic_path,
    checkpoint_paths,
    load_checkpoint,
    load_model,
    no_grad,
    resolve_device,
    seed_everything,
)
from car_racing.episodes.rollout import Backend, EpisodeWorkers
from car_racing.recording.recorded_data import (
    RecordedEpisode,
    appending_to,
    has_recorded_data,
    load_memory_sequences,
    load_recorded,
    recorded_trials,
)

if TYPE_CHECKING:  # annotations only: torch is imported where it is used (the script's --help stays light)
    import torch

    from car_racing.models.mdn_rnn import MDNRNN

PANEL_DRIVER = "panel"  # the driver name of the panel's episodes in a recording (record_into)
EVAL_SEED_BASE = 4_000_000  # the panel's real tracks: away from recording, training and check seeds
MIN_PANEL = 3  # a rank correlation needs at least 3 controllers
MIN_PANEL_TRIALS = 32  # dreams per controller unless given: at least this many (steadier than one generation's)

# The dream settings a controller checkpoint's saved config gives the panel, by Dream field: the old flat form
# (train_controller_cmaes.py's Args, as the shipped checkpoints in checkpoints/pretrained/ hold it) names them so;
# the nested form (car_racing.common.config.as_dict) has them under config["dream"], the mode under config["cmaes"].
SAVED_DREAM = {"steps": "rollout_steps", "trials": "dream_trials", "temperature": "temperature",
               "dropout": "dream_dropout", "start_states": "start_states", "start": "dream_start",
               "value": "dream_value"}  # (also the names of the summary's ``settings``, as it has always had them)


# --- which dream ------------------------------------------------------------------------------------------------

def saved_dream(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The dream settings (Dream field → value, :data:`SAVED_DREAM`'s fields only) a controller's saved config
    holds, in its flat or its nested form; empty when it was not trained in a dream (a real-mode C's rollout
    steps are its episode limit, not a dream's) or saved none. A saved ``None`` counts as not saved."""
    config = config or {}
    if isinstance(config.get("cmaes"), Mapping) or isinstance(config.get("dream"), Mapping):  # nested
        if (config.get("cmaes") or {}).get("mode") != "dream":
            return {}
        section = config.get("dream") or {}
        found = {field: section.get(field) for field in SAVED_DREAM}
    else:
        if config.get("mode") != "dream":
            return {}
        found = {field: config.get(flat) for field, flat in SAVED_DREAM.items()}
    return {field: value for field, value in found.items() if value is not None}


def dream_of(controller_checkpoint: dict | None, explicit: Mapping[str, Any]) -> Dream:
    """The dream a controller was (or would be) trained in, for the panel: ``explicit`` values (Dream field →
    value; ``None`` = not given) first, else the checkpoint's saved config (:func:`saved_dream`: either form;
    nothing from a C not trained in a dream), else :class:`~car_racing.common.config.Dream`'s defaults. Unless
    ``trials`` is explicit, at least :data:`MIN_PANEL_TRIALS` dreams (a steadier estimate than one generation's).

    A value of the wrong type, or out of its range, is a one-line :class:`ConfigError` naming the key."""
    given = {field: value for field, value in explicit.items() if value is not None}
    saved = saved_dream((controller_checkpoint or {}).get("config"))
    dream = with_values(Config(), {f"dream.{field}": value for field, value in saved.items()},
                        "the controller checkpoint's saved config: ").dream
    dream = with_values(Config(dream=dream), {f"dream.{field}": value for field, value in given.items()}).dream
    if "trials" not in given:
        dream = dataclasses.replace(dream, trials=max(MIN_PANEL_TRIALS, dream.trials))
    check_dream(dream)
    return dream


def check_dream(dream: Dream) -> None:
    """A one-line :class:`ConfigError` for a dream value out of its range (the config's own ranges)."""
    for key, test, expected in RANGES:
        section, name = key.split(".")
        if section == "dream" and not test(getattr(dream, name)):
            raise ConfigError(f"{key} = {getattr(dream, name)!r}: expected {expected}")


def panel_settings(dream: Dream, value: bool) -> dict[str, Any]:
    """The panel's dream as the summary names it (the keys of :data:`SAVED_DREAM`, ``dream_value`` as used:
    ``value``), plus the Dream fields that differ from their defaults and are not among them."""
    settings = {SAVED_DREAM[field]: getattr(dream, field) for field in SAVED_DREAM}
    settings["dream_value"] = value
    defaults = Dream()
    for f in dataclasses.fields(Dream):
        given = getattr(dream, f.name)
        if f.name not in SAVED_DREAM and given != getattr(defaults, f.name):
            settings[f"dream_{f.name}"] = list(given) if isinstance(given, tuple) else given
    return settings


def trained_controller_checkpoint(checkpoint_dir: str | Path, controllers: Sequence[str | Path] = ()
                                  ) -> dict | None:
    """The controller checkpoint whose dream the panel measures: ``checkpoint_dir``'s C, else the first of
    ``controllers``, else None (no C: the defaults)."""
    own = checkpoint_paths(checkpoint_dir)["controller"]
    paths = ([own] if own.is_file() else []) + [Path(p) for p in controllers]
    return load_checkpoint(paths[0], "controller") if paths else None


# --- the panel ----------------------------------------------------------------------------------------------

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


def bias_only(num_params: int, steer: float, gas: float, brake: float) -> np.ndarray:
    """A controller that ignores z and h: constant pre-squash outputs (steer via atanh, gas/brake via logit)."""
    def logit(p: float) -> float:
        return float(np.log(p / (1 - p)))

    params = np.zeros(num_params)
    params[-3:] = [np.arctanh(steer), logit(gas), logit(brake)]
    return params


def build_panel(size: int, num_params: int, trained: list[tuple[str, np.ndarray]], seed: int
                ) -> list[tuple[str, np.ndarray]]:
    """``size`` named flat parameter vectors of widely varied quality (module docstring), deterministic in
    ``seed``."""
    rng = np.random.default_rng([seed, 17])
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
    while len(panel) < size:
        if trained:
            scale = near[(len(panel) // max(len(trained), 1)) % len(near)]
            name, params = trained[len(panel) % len(trained)]
            spread = float(np.std(params)) or 1.0
            panel.append((f"{name} + noise ×{scale:g} #{len(panel)}", params + scale * spread * rng.standard_normal(num_params)))
        else:
            sigma = float(rng.choice([0.02, 0.05, 0.1, 0.2]))
            panel.append((f"random σ={sigma:g} #{len(panel)}", sigma * rng.standard_normal(num_params)))
    return panel[:size]


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
def panel_recorder(data_dir: str | Path, run: int) -> Iterator[Callable[[int, str, Any], bool]]:
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


def real_panel(checkpoint_dir: str | Path, panel: list[tuple[str, np.ndarray]], vae: Any, mdnrnn: MDNRNN,
               reward_clip: float, device: torch.device, *, seeds: Sequence[int], max_steps: int, horizon: int,
               workers: int, backend: Backend | None = None, progress: bool = True, record_into: str | Path = "",
               record_run: int = 0) -> list[dict[str, Any]]:
    """Every controller's real episodes (``seeds``, the same for all) and M's errors on them; with ``record_into``,
    the episodes are appended to that recording too (trial = controller index × episodes + track index)."""
    from car_racing.episodes.agent import make_agent_driver

    seeds = list(seeds)
    make_driver = functools.partial(make_agent_driver, str(checkpoint_dir), panel[0][1], "cpu")
    make_driver()  # V, M and C's sizes checked here (one line on a bad file), before any worker starts
    rows = []
    # One set of workers for the whole panel (V and M loaded once each); each controller is swapped in.
    pool = EpisodeWorkers(make_driver, min(workers, len(seeds)), backend=backend or Backend())
    try:
        with panel_recorder(record_into, record_run) as record:
            for index, (name, params) in enumerate(tqdm(panel, desc="real episodes (panel)", unit="C",
                                                        disable=not progress)):
                results = [result for _, result in pool.run(seeds, max_steps, candidates=np.asarray(params)[None],
                                                            ordered=True, record_frames=True)]
                recorded = sum(record(index * len(seeds) + k, name, r) for k, r in enumerate(results))
                errors = [memory_errors(vae, mdnrnn, r.frames, r.actions, r.rewards, horizon, reward_clip, device)
                          for r in results]
                returns = np.array([r.total_reward for r in results])
                rows.append({"name": name, "real_return": float(returns.mean()), "real_std": float(returns.std()),
                             "laps": int(sum(r.lap_finished for r in results)), "episodes": errors,
                             "recorded": recorded})
    finally:
        pool.close()
    return rows


def dream_panel(panel: list[tuple[str, np.ndarray]], mdnrnn: MDNRNN, memory_checkpoint: dict, dream: Dream,
                value: bool, device: torch.device, *, checkpoint_dir: str | Path, data_dir: str | Path, seed: int,
                progress: bool = True) -> np.ndarray:
    """Dream fitness (P,) of every controller: the training fitness (``dream``; its value ending only with
    ``value``), the same start states and noise for all."""
    import torch

    from car_racing.models.ffn import flat_to_population
    from car_racing.recording.latent_cache import load_or_build_latents
    from car_racing.training.dream import dream_rollout, memory_dream_scales, start_pool, windows_of_drivers
    from car_racing.training.fitness import aggregate_dream_fitness

    mu, _ = load_or_build_latents(data_dir, checkpoint_paths(checkpoint_dir)["vision"], device, progress=progress)
    sequences = load_memory_sequences(data_dir)
    if len(sequences.indices) == 0:
        raise UsageError(f"data dir {data_dir}: no memory sequences to start dreams from; record more data")
    episodes = load_recorded(data_dir, mmap=True).episodes
    episode_starts = [int(e["start"]) for e in episodes]
    eligible = windows_of_drivers(sequences.indices, episodes, dream.start_drivers) if dream.start_drivers else None
    pool = start_pool(dream.start, mdnrnn, mu, sequences.indices, sequences.actions, episode_starts,
                      dream.start_states, np.random.default_rng([seed, 1]), device=device,
                      batch_size=dream.batch_size, eligible=eligible).to(device)
    generator = torch.Generator().manual_seed(seed)
    start_z, start_state = pool.pick(dream.trials, generator)
    flat = torch.as_tensor(np.stack([p for _, p in panel]), dtype=torch.float32, device=device)
    weights, biases = flat_to_population(flat, mdnrnn.latent_size, mdnrnn.hidden_size)
    reward_scale, discount = memory_dream_scales(memory_checkpoint)
    fitness = dream_rollout(mdnrnn, weights, biases, start_z, start_state, dream.steps, dream.temperature, generator,
                            reward_scale=reward_scale, dtype=dream.dtype, dropout=dream.dropout,
                            value_discount=discount if value else 0.0)
    if dream.fitness == "mean":
        return fitness.mean(dim=1).double().cpu().numpy()
    return aggregate_dream_fitness(fitness, dream.fitness, dream.fitness_q, dream.fitness_k)


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


def check_measurement(dream: Dream, panel: int, episodes: int, controllers: Sequence[str | Path], horizon: int,
                      max_steps: int, workers: int) -> None:
    """One-line :class:`UsageError` for a measurement that cannot run (named by :func:`measure_fidelity`'s
    parameters)."""
    if panel < MIN_PANEL:
        raise UsageError(f"panel {panel}: expected at least {MIN_PANEL} controllers (a rank correlation needs them)")
    for name, value in (("episodes", episodes), ("horizon", horizon), ("max_steps", max_steps), ("workers", workers)):
        if value < 1:
            raise UsageError(f"{name} {value}: expected a positive integer")
    check_dream(dream)
    for path in controllers:
        if not Path(path).is_file():
            raise UsageError(f"controllers {path}: no such controller checkpoint")


def measure_fidelity(checkpoint_dir: str | Path, data_dir: str | Path, dream: Dream, *, panel: int, episodes: int,
                     controllers: Sequence[str | Path] = (), out: str | Path, json_out: str | Path | None = None,
                     horizon: int = 20, max_steps: int = 1000, eval_seed_base: int = EVAL_SEED_BASE, seed: int = 0,
                     workers: int = 1, backend: Backend | None = None, device: str = "auto", progress: bool = True,
                     record_into: str | Path = "", record_run: int = 0, require_value: bool = False
                     ) -> dict[str, Any]:
    """Rank a panel of ``panel`` controllers in the real env (``episodes`` tracks each) and in ``dream`` (M of
    ``checkpoint_dir``, start states from ``data_dir``); print every figure, write the scatter PNG to ``out`` (and
    every figure to ``json_out``); return them: ``rank_correlation``, ``controllers``, ``settings`` (the dream as
    run), ``errors`` (M's on the real episodes), ``rows`` (per controller: ``name``, ``real_return``,
    ``real_std``, ``laps``, ``dream_fitness``, ``episodes``, ``recorded``), ``checkpoint_dir``, ``episodes``,
    ``eval_seed_base``.

    ``dream.value`` on an M without a value head: the dreams end without it (as the panel always has), unless
    ``require_value`` (the caller asked for it explicitly): then a one-line :class:`UsageError`. ``seed`` seeds the
    panel's random and perturbed controllers and the dreams' start states and noise; ``workers`` and ``backend``
    (default: processes here) run the real episodes, on the CPU; ``device`` the dreams and M's error measurement."""
    from car_racing.models.ffn import num_controller_params
    from car_racing.training.dream import memory_dream_scales

    check_measurement(dream, panel, episodes, controllers, horizon, max_steps, workers)
    seed_everything(seed)
    torch_device = resolve_device(device)
    paths = checkpoint_paths(checkpoint_dir)
    vae, _ = load_model(paths["vision"], "vision", torch_device)
    mdnrnn, memory_checkpoint = load_model(paths["memory"], "memory", torch_device)
    mdnrnn = mdnrnn.float()
    vae = vae.float()
    reward_clip = float(memory_checkpoint.get("reward", {}).get("clip", 0.0) or 0.0)
    num_params = num_controller_params(mdnrnn.latent_size, mdnrnn.hidden_size, mdnrnn.action_size)

    trained = []
    for path in ([paths["controller"]] if paths["controller"].is_file() else []) + [Path(p) for p in controllers]:
        controller, _ = load_model(path, "controller")
        if controller.hidden_size != mdnrnn.hidden_size or controller.latent_size != mdnrnn.latent_size:
            raise UsageError(f"{path}: controller sizes do not fit M in {checkpoint_dir}")
        trained.append((f"C {path.parent.name}/{path.stem}" if path != paths["controller"] else "C (checkpoint)",
                        controller.get_flat_params()))
    members = build_panel(panel, num_params, trained, seed)

    started = time.time()
    has_value = mdnrnn.value_head is not None and memory_dream_scales(memory_checkpoint)[1] > 0
    if dream.value and not has_value and require_value:
        raise UsageError(f"dream.value: {paths['memory']} has no value head")
    value = dream.value and has_value  # as training would have: an M without a value head ends no dream on it
    settings = panel_settings(dream, value)
    fitness = dream_panel(members, mdnrnn, memory_checkpoint, dream, value, torch_device,
                          checkpoint_dir=checkpoint_dir, data_dir=data_dir, seed=seed, progress=progress)
    dream_seconds = time.time() - started
    rows = real_panel(checkpoint_dir, members, vae, mdnrnn, reward_clip, torch_device,
                      seeds=[eval_seed_base + i for i in range(episodes)], max_steps=max_steps, horizon=horizon,
                      workers=workers, backend=backend, progress=progress, record_into=record_into,
                      record_run=record_run)
    for row, fit in zip(rows, fitness):
        row["dream_fitness"] = float(fit)
    rho = spearman(np.array([r["dream_fitness"] for r in rows]), np.array([r["real_return"] for r in rows]))
    ending = ", ending on M's value" if value else ""

    print(f"\ndream: {dream.trials} dreams × {dream.steps} steps, τ = {dream.temperature:g}, "
          f"dropout {dream.dropout:g}{ending} ({dream_seconds:.1f}s); real: {episodes} tracks from seed "
          f"{eval_seed_base}")
    print(f"{'controller':<34} {'real return':>17} {'laps':>5} {'dream fitness':>14} {'Σ r̂ − Σ r':>11}")
    for row in rows:
        gap = np.mean([e["predicted_return"] - e["real_return"] for e in row["episodes"]])
        print(f"{row['name'][:34]:<34} {row['real_return']:8.1f} ± {row['real_std']:6.1f} {row['laps']:>5d} "
              f"{row['dream_fitness']:14.1f} {gap:11.1f}")
    errors = summarise_errors(rows)
    print(f"M on the panel's {sum(len(r['episodes']) for r in rows)} real episodes: one-step NLL "
          f"{errors.get('one_step_nll', float('nan')):.3f} per latent dim, one-step MSE "
          f"{errors.get('one_step_mse', float('nan')):.4f}, {horizon}-step open-loop MSE "
          f"{errors.get('multi_step_mse', float('nan')):.4f}; reward MSE {errors['reward_mse']:.3f} per step, "
          f"episode return predicted − real {errors['return_error_mean']:+.1f} (|·| {errors['return_error_abs_mean']:.1f})")
    if record_into:
        recorded, driven = sum(r["recorded"] for r in rows), sum(len(r["episodes"]) for r in rows)
        print(f"recorded {recorded} of the panel's {driven} real episodes into {record_into} (driver "
              f"{PANEL_DRIVER}, run {record_run}" + ("; the others were already there)" if recorded < driven else ")"))
    plot_scatter(rows, rho, Path(out), settings)
    summary = {"rank_correlation": rho, "controllers": len(rows), "settings": settings, "errors": errors, "rows": rows,
               "checkpoint_dir": str(checkpoint_dir), "episodes": episodes, "eval_seed_base": eval_seed_base}
    if json_out:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    print(f"dream-real rank correlation: {rho:.2f} over {len(rows)} controllers")
    return summary
