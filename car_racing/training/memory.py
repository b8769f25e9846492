"""Stage 3 as a library function: :func:`train_memory` trains the memory model M (MDN-RNN with reward, done and
value heads) on V's latents.

Every recorded frame is encoded once by V (μ, log σ² cached in ``run.data_dir/car_racing_latents.npz``,
rebuilt when V's checkpoint or the recording changes). Each epoch draws one z ~ N(μ, σ²) per frame, as
in the paper, and trains on the memory windows ``car_racing_memory_dataset_*.npy``: M reads
[z_t, a_t] for every step t of a window and is scored on

- the MDN loss: −log p(z_{t+1}) per latent dimension, for every t whose next frame is in the same
  episode (windows never cross an episode end; the window's last step uses the frame after the window
  when the episode goes on);
- the reward loss: MSE of r_t, in real CarRacing reward units, with targets clipped to ±``memory.reward_clip``
  (tile rewards of about +3 stay intact; the −100 for leaving the playfield becomes −10 by default);
- the done loss: BCE of done_t. By default (``memory.done_target = terminal``) done_t is 1 only on steps where
  the episode really terminated (lap finished, or left the playfield: reward ≤ −50), not where the time
  limit or the recorder cut it, since no model can predict a cut from the frames;
- with ``memory.value_discount`` γ > 0, the value loss: MSE of the discounted average reward after step t,
  ``(1 − γ) · Σ_{k≥1} γ^{k−1} r_{t+k}`` within the episode (clipped rewards), so a short dream in stage 4
  can end on M's estimate of what follows (``dream.value``). Steps whose discounted future the recording cut
  off (the last ``2/(1 − γ)`` steps of an episode that did not terminate) have no target.

Validation uses whole episodes held out with ``run.seed``. Outputs: ``run.checkpoint_dir/memory_model.pth``
(best validation loss), ``memory_model_latest.pth`` (resumable, written after every epoch),
``memory_model_loss.png`` and its values, one JSON line per epoch, in ``memory_metrics.jsonl``
(``run.tensorboard``: TensorBoard events too), and the resolved config ``memory.config.toml``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError
from car_racing.common.config import (
    Config,
    ConfigError,
    Memory,
    as_dict,
    flag_of,
    resolved_path,
    validate,
    write_resolved,
)
from car_racing.common.metrics import MetricsLog, require_tensorboard
from car_racing.common.runtime import (
    MEMORY_LATEST_FILE,
    build_model,
    checkpoint_paths,
    load_checkpoint,
    plot_curves,
    refuse_shipped,
    resolve_device,
    save_checkpoint,
    seed_everything,
)
from car_racing.recording.recorded_data import RecordedData, load_memory_sequences, load_recorded

if TYPE_CHECKING:  # annotations only: torch is imported where it is used, so importing this stays light
    import torch

    from car_racing.models.mdn_rnn import MDNRNN

LOSS_CURVE_FILE = "memory_model_loss.png"
TERMINAL_REWARD = -50.0  # CarRacing gives −100 on the step the car leaves the playfield (and terminates)
LOSS_NAMES = ("mdn", "reward", "done", "value", "total")
STAGE = "memory"  # the resolved config: CHECKPOINT_DIR/memory.config.toml
RESUME_KEYS = ("reward_clip", "done_target", "freeze_lstm", "value_discount", "latents")  # a resumed run keeps these


def terminal_flags(data: RecordedData, done_target: str) -> np.ndarray:
    """bool (N,): the done target of every recorded step (see the module docstring)."""
    dones = np.asarray(data.dones, dtype=bool).copy()
    if done_target == "episode-end":
        return dones
    rewards = np.asarray(data.rewards)
    for index, episode in enumerate(data.episodes):
        last = data.episode_slice(index).stop - 1
        if "terminated" in episode:  # recorded since the format gained the flag
            dones[last] = bool(episode["terminated"])
        else:
            dones[last] = bool(episode.get("lap_finished")) or float(rewards[last]) <= TERMINAL_REWARD
    return dones


def value_targets(data: RecordedData, done_flags: np.ndarray, discount: float, reward_clip: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N,) targets and bool (N,) mask of M's value head for every recorded step t (see the module
    docstring): ``(1 − γ) · Σ_{k≥1} γ^{k−1} r_{t+k}`` inside t's episode, with the rewards clipped as M's reward
    targets; masked where an episode cut by the time limit or the recorder hides more than γ^(2/(1−γ)) ≈ e^−2 of it."""
    rewards = np.asarray(data.rewards, dtype=np.float64)
    if reward_clip > 0:
        rewards = np.clip(rewards, -reward_clip, reward_clip)
    targets = np.zeros(len(rewards), dtype=np.float64)
    mask = np.ones(len(rewards), dtype=bool)
    horizon = int(math.ceil(2.0 / (1.0 - discount)))
    for index in range(len(data.episodes)):
        steps = data.episode_slice(index)
        future = 0.0  # Σ_{k≥1} γ^{k−1} r_{t+k}, built from the episode's end backwards
        for t in range(steps.stop - 1, steps.start - 1, -1):
            targets[t] = future
            future = rewards[t] + discount * future
        if not done_flags[steps.stop - 1]:  # cut, not ended: the last steps' futures are unknown
            mask[max(steps.start, steps.stop - horizon):steps.stop] = False
    return (targets * (1.0 - discount)).astype(np.float32), mask


def split_by_episode(window_starts: np.ndarray, episode_starts: np.ndarray, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Sequence ids for training and validation, holding out whole episodes (chosen with ``seed``)."""
    episode_of = np.searchsorted(episode_starts, window_starts, side="right") - 1
    episodes = np.unique(episode_of)
    n_val = int(round(val_fraction * len(episodes)))
    if val_fraction > 0 and len(episodes) >= 2:
        n_val = min(max(n_val, 1), len(episodes) - 1)
    else:
        n_val = 0
    val_episodes = np.random.default_rng(seed).permutation(episodes)[:n_val]
    is_val = np.isin(episode_of, val_episodes)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val), sorted(int(e) for e in val_episodes)


def sample_latents(mu: torch.Tensor, logvar: torch.Tensor, seed: int) -> torch.Tensor:
    """z ~ N(μ, σ²) for every frame: (N, L), reproducible from ``seed`` on any device."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(mu.shape, generator=generator).to(mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def training_latents(mu: torch.Tensor, logvar: torch.Tensor, latents: str, seed: int) -> torch.Tensor:
    """The z M learns from (``--memory.latents``): a fresh sample of V's posterior, or its mean μ. With samples, the
    ~20 of 32 dimensions V leaves unused (σ ≈ 1, μ nearly constant) are unit noise in every dream step, which C never
    sees in the real env (it reads μ)."""
    return mu if latents == "mean" else sample_latents(mu, logvar, seed)


class SequenceBatches:
    """Turns memory windows into (inputs, targets) tensors for M on ``device``.

    For window indices idx (B, T): z_t = z[idx], a_t, targets z_{t+1} = z[idx + 1] where the step is
    not an episode's last (mask), r_t clipped, done_t.
    """

    def __init__(self, indices: np.ndarray, actions: np.ndarray, rewards: np.ndarray, episode_end: np.ndarray,
                 done_flags: np.ndarray, reward_clip: float, device: torch.device,
                 values: tuple[np.ndarray, np.ndarray] | None = None):
        import torch

        num_frames = len(episode_end)
        self.device = device
        self.indices = torch.from_numpy(indices).to(device)
        self.next_indices = torch.from_numpy(np.minimum(indices + 1, num_frames - 1)).to(device)
        self.z_mask = torch.from_numpy(~episode_end[indices]).to(device)
        self.actions = torch.from_numpy(np.asarray(actions, dtype=np.float32)).to(device)
        rewards = np.asarray(rewards, dtype=np.float32)
        if reward_clip > 0:
            rewards = np.clip(rewards, -reward_clip, reward_clip)
        self.rewards = torch.from_numpy(rewards).to(device)
        self.dones = torch.from_numpy(done_flags[indices].astype(np.float32)).to(device)
        self.values = None if values is None else (torch.from_numpy(values[0][indices]).to(device),
                                                   torch.from_numpy(values[1][indices]).to(device))

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, ids: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:

        batch = {"z": z[self.indices[ids]], "actions": self.actions[ids], "next_z": z[self.next_indices[ids]],
                 "z_mask": self.z_mask[ids], "rewards": self.rewards[ids], "dones": self.dones[ids]}
        if self.values is not None:
            batch["values"], batch["value_mask"] = self.values[0][ids], self.values[1][ids]
        return batch


def compute_losses(model: MDNRNN, batch: dict[str, torch.Tensor], memory: Memory) -> dict[str, torch.Tensor]:
    """The losses (and the weighted total, with ``memory``'s weights) of one batch of windows (with
    ``memory.dropout``, one head mask per window while training); ``value`` is 0 without a value head."""
    import torch
    import torch.nn.functional as F

    from car_racing.models.mdn_rnn import head_dropout_mask, mdn_loss

    mask = (head_dropout_mask(batch["z"].shape[0], model.hidden_size, memory.dropout, device=batch["z"].device)
            if model.training and memory.dropout > 0 else None)
    output, _ = model(batch["z"], batch["actions"], head_mask=mask)
    losses = {
        "mdn": mdn_loss(output.logit_pi, output.mu, output.log_sigma, batch["next_z"], mask=batch["z_mask"]),
        "reward": F.mse_loss(output.reward.float(), batch["rewards"]),
        "done": F.binary_cross_entropy_with_logits(
            output.done_logit.float(), batch["dones"],
            pos_weight=torch.tensor(memory.done_pos_weight, device=batch["dones"].device)),
    }
    losses["value"] = torch.zeros((), device=batch["z"].device)
    if "values" in batch:
        weights = batch["value_mask"].float()
        error = (model.value_rate(output.hidden, None if mask is None else mask.unsqueeze(1)).float()
                 - batch["values"]).pow(2)
        losses["value"] = (error * weights).sum() / weights.sum().clamp_min(1.0)
    losses["total"] = (losses["mdn"] + memory.reward_weight * losses["reward"] + memory.done_weight * losses["done"]
                       + memory.value_weight * losses["value"])
    return losses


def run_epoch(model: MDNRNN, batches: SequenceBatches, ids: np.ndarray, z: torch.Tensor, memory: Memory,
              optimizer: torch.optim.Optimizer | None, desc: str, progress: bool = True) -> dict[str, float]:
    """One pass over the windows ``ids`` in batches of ``memory.batch_size`` (training when ``optimizer`` is
    given); mean losses per window."""
    import torch

    training = optimizer is not None
    model.train(training)
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    count = 0
    bar = tqdm(range(0, len(ids), memory.batch_size), desc=desc, unit="batch", leave=False,
               disable=not progress)
    for start in bar:
        chunk = torch.from_numpy(ids[start:start + memory.batch_size]).to(batches.device)
        batch = batches.get(chunk, z)
        with torch.set_grad_enabled(training):
            losses = compute_losses(model, batch, memory)
        if training:
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            if memory.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), memory.grad_clip)
            optimizer.step()
        values = {name: float(losses[name].detach()) for name in LOSS_NAMES}
        for name in LOSS_NAMES:
            sums[name] += values[name] * len(chunk)
        count += len(chunk)
        bar.set_postfix(mdn=f"{values['mdn']:.3f}", reward=f"{values['reward']:.3f}", done=f"{values['done']:.4f}")
    return {name: sums[name] / max(count, 1) for name in LOSS_NAMES}



def check(config: Config) -> None:
    """One-line :class:`ConfigError` for values stage 3 cannot use, before anything is touched."""
    validate(config)
    run, memory = config.run, config.memory
    if run.seed < 0:
        raise ConfigError(f"run.seed = {run.seed}: expected a non-negative integer")
    if not memory.done_pos_weight > 0:
        raise ConfigError(f"memory.done_pos_weight = {memory.done_pos_weight}: expected a positive number")
    if memory.freeze_lstm and not memory.init_from and not run.resume:
        raise ConfigError(f"{flag_of('memory.freeze_lstm')}: expected {flag_of('memory.init_from')} (or --resume): "
                          f"a fresh LSTM cannot stay frozen")
    if memory.init_from and not Path(memory.init_from).is_file():
        raise ConfigError(f"{flag_of('memory.init_from')} {memory.init_from}: no such memory checkpoint")
    if run.tensorboard:
        require_tensorboard()


def _saved_setting(state: dict, key: str, default: Any) -> Any:
    """``memory.<key>`` of the config a checkpoint was trained with (nested as :func:`as_dict` writes it, or the
    flat arguments of the stage script before the one config)."""
    saved = state.get("config", {}) or {}
    return (saved.get("memory") if isinstance(saved.get("memory"), dict) else saved).get(key, default)


def train_memory(config: Config) -> dict[str, Any]:
    """Stage 3: train M on ``config.run.data_dir`` encoded by V (``memory.vision_checkpoint``, empty =
    ``run.checkpoint_dir/vision_model.pth``) into ``run.checkpoint_dir`` with ``config.memory``'s settings;
    ``memory.init_from`` starts from another M's weights, ``run.resume`` continues ``memory_model_latest.pth``.
    Returns the best checkpoint dict (also written to ``memory_model.pth``). Bad values raise a one-line
    :class:`ConfigError` before anything is written."""
    import torch

    from car_racing.models.mdn_rnn import MDNRNN
    from car_racing.recording.latent_cache import file_sha256, load_or_build_latents

    check(config)
    run, memory = config.run, config.memory
    refuse_shipped(run.checkpoint_dir)
    device = resolve_device(run.device)
    if run.threads:
        torch.set_num_threads(run.threads)
    checkpoint_dir = Path(run.checkpoint_dir)
    paths = checkpoint_paths(checkpoint_dir)
    vision_path = Path(memory.vision_checkpoint) if memory.vision_checkpoint else paths["vision"]
    best_path, latest_path = paths["memory"], checkpoint_dir / MEMORY_LATEST_FILE

    data = load_recorded(run.data_dir, mmap=True)
    sequences = load_memory_sequences(run.data_dir)
    if len(sequences.indices) == 0:
        raise UsageError(f"--data-dir {run.data_dir}: no memory sequences (episodes shorter than the "
                         f"sequence length?); record more data")
    mu_np, logvar_np = load_or_build_latents(run.data_dir, vision_path, device, memory.encode_batch_size,
                                             progress=run.progress)
    # seeded after the latents: encoding them (a cache miss builds V, drawing from torch's RNG) must not change M,
    # so the same seed gives the same M whether V's latents were cached or not
    seed_everything(run.seed)
    vision_sha = file_sha256(vision_path)
    latent_size = mu_np.shape[1]

    episode_end = np.asarray(data.dones, dtype=bool)
    done_flags = terminal_flags(data, memory.done_target)
    values = (value_targets(data, done_flags, memory.value_discount, memory.reward_clip)
              if memory.value_discount else None)
    if values is not None and values[1].mean() < 0.1:  # the value head would learn from almost nothing
        print(f"warning: only {values[1].mean():.0%} of the recorded steps have a value target: episodes cut by the "
              f"time limit hide the last {math.ceil(2 / (1 - memory.value_discount))} steps' future "
              f"({flag_of('memory.value_discount')} {memory.value_discount}); record longer episodes or lower "
              f"{flag_of('memory.value_discount')}")
    batches = SequenceBatches(sequences.indices, sequences.actions, sequences.rewards, episode_end, done_flags,
                              memory.reward_clip, device, values)
    episode_starts = np.asarray([e["start"] for e in data.episodes], dtype=np.int64)
    train_ids, val_ids, val_episodes = split_by_episode(sequences.indices[:, 0], episode_starts,
                                                        memory.val_fraction, run.seed)
    mu = torch.from_numpy(mu_np).to(device)
    logvar = torch.from_numpy(logvar_np).to(device)
    val_z = training_latents(mu, logvar, memory.latents, run.seed * 7919 + 1) if len(val_ids) else None

    model_args = {"latent_size": latent_size, "action_size": int(sequences.actions.shape[-1]),
                  "hidden_size": memory.hidden_size, "num_mixtures": memory.num_mixtures,
                  "value_head": memory.value_discount > 0}
    history: dict[str, list[float]] = {f"{split}_{name}": [] for split in ("train", "val") for name in LOSS_NAMES}
    start_epoch, best_val_loss = 0, math.inf
    if run.resume:
        state = load_checkpoint(latest_path, "memory")
        if state.get("vision", {}).get("sha256") != vision_sha:
            raise UsageError(f"{latest_path}: was trained on latents of a different V than {vision_path}; "
                             f"drop --resume to start over")
        for key, value in model_args.items():
            if state["model_args"].get(key) != value:
                raise UsageError(f"{latest_path}: has {key}={state['model_args'].get(key)}, but this run asks "
                                 f"for {value}; drop --resume or pass the same sizes")
        for key in RESUME_KEYS:
            now = getattr(memory, key)
            before = _saved_setting(state, key, now)
            if before != now:
                raise UsageError(f"{latest_path}: was trained with {flag_of('memory.' + key)} {before}, this run "
                                 f"asks for {now}; drop --resume or pass the same value")
        model = build_model(MDNRNN, state, latest_path).to(device)
        start_epoch, best_val_loss = int(state["epoch"]), float(state["best_val_loss"])
        history = {key: list(state["history"].get(key, [])) for key in history}
        print(f"resuming from {latest_path} after epoch {start_epoch}")
    elif memory.init_from:
        source = load_checkpoint(memory.init_from, "memory")
        if source["model_args"].get("latent_size") != latent_size:
            raise UsageError(f"{flag_of('memory.init_from')} {memory.init_from}: M has latent size "
                             f"{source['model_args'].get('latent_size')}, V encodes {latent_size}")
        model_args = dict(source["model_args"])
        model = build_model(MDNRNN, source, memory.init_from).float().to(device)
        if bool(model_args.get("value_head")) != (memory.value_discount > 0):  # the value head added or dropped
            before = model.state_dict()
            model_args["value_head"] = memory.value_discount > 0
            model = MDNRNN(**model_args).to(device)
            model.load_state_dict({k: v for k, v in before.items() if not k.startswith("value_head.")}, strict=False)
        print(f"starting from the weights of {memory.init_from}")
    else:
        model = MDNRNN(**model_args).to(device)
    if memory.freeze_lstm:  # only the heads train: the LSTM, and so the h a controller sees, stays as loaded
        for parameter in model.lstm.parameters():
            parameter.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=memory.lr)
    if run.resume:
        optimizer.load_state_dict(state["optimizer_state"])
        for group in optimizer.param_groups:
            group["lr"] = memory.lr
    warm_start = (state.get("warm_start") if run.resume else
                  {"from": memory.init_from, "sha256": file_sha256(memory.init_from)} if memory.init_from else None)

    print(f"{len(data)} frames, {len(sequences.indices)} sequences of {sequences.indices.shape[1]} steps: "
          f"{len(train_ids)} train / {len(val_ids)} val (episodes {val_episodes}); "
          f"{int(done_flags.sum())} done targets ({memory.done_target}); device {device}")

    def checkpoint(epoch: int, best: float) -> dict:
        return {"kind": "memory", "model_args": model_args, "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(), "epoch": epoch, "best_val_loss": best,
                "config": as_dict(config), "history": history,
                "vision": {"path": str(vision_path), "sha256": vision_sha},
                "reward": {"units": "real CarRacing reward per step", "clip": memory.reward_clip, "scale": 1.0},
                "done_target": memory.done_target, "val_episodes": val_episodes, "warm_start": warm_start,
                "dropout": memory.dropout, "freeze_lstm": memory.freeze_lstm, "latents": memory.latents,
                "value": ({"discount": memory.value_discount, "units": "discounted average reward per step after t, "
                           "(1 - discount) * sum_k discount^(k-1) r_(t+k)"} if memory.value_discount else None),
                "data": {"data_dir": str(run.data_dir), "num_frames": len(data), "num_episodes": len(data.episodes),
                         "drivers": sorted({str(e.get("driver")) for e in data.episodes})}}

    if start_epoch < memory.epochs:
        write_resolved(config, resolved_path(checkpoint_dir, STAGE))  # every check passed: what runs is recorded
    metrics = MetricsLog(checkpoint_dir, "memory", resume_after=start_epoch if run.resume else None,
                         tensorboard=run.tensorboard)
    epoch_bar = tqdm(range(start_epoch, memory.epochs), desc="memory epochs", unit="epoch", disable=not run.progress,
                     initial=start_epoch, total=memory.epochs)
    for epoch in epoch_bar:
        started = time.time()
        epoch_rng = np.random.default_rng([run.seed, epoch])
        z = training_latents(mu, logvar, memory.latents, int(epoch_rng.integers(2**62)))
        order = epoch_rng.permutation(train_ids)
        torch.manual_seed(int(epoch_rng.integers(2**62)))  # memory.dropout's masks: the same when the run is resumed
        train_losses = run_epoch(model, batches, order, z, memory, optimizer, f"epoch {epoch + 1} train",
                                 run.progress)
        if len(val_ids):
            val_losses = run_epoch(model, batches, val_ids, val_z, memory, None, f"epoch {epoch + 1} val",
                                   run.progress)
        else:
            val_losses = dict(train_losses)  # no held-out episode: select on the training loss
        for name in LOSS_NAMES:
            history[f"train_{name}"].append(train_losses[name])
            history[f"val_{name}"].append(val_losses[name])
        improved = val_losses["total"] < best_val_loss
        best_val_loss = min(best_val_loss, val_losses["total"])
        state = checkpoint(epoch + 1, best_val_loss)
        metrics.log(epoch + 1, {key: values[-1] for key, values in history.items()}, best=improved,
                    seconds=time.time() - started)
        if improved:
            save_checkpoint(state, best_path)
        save_checkpoint(state, latest_path)
        curve_names = ("mdn", "reward", "done") + (("value",) if values is not None else ())
        plot_curves({f"{split} {name}": history[f"{split}_{name}"] for split in ("train", "val")
                     for name in curve_names},
                    checkpoint_dir / LOSS_CURVE_FILE, title="memory model M: MDN NLL per latent dim, reward MSE, "
                    "done BCE" + (", value MSE" if values is not None else ""))
        line = (f"epoch {epoch + 1}/{memory.epochs}  train "
                + " ".join(f"{name} {train_losses[name]:.4f}" for name in curve_names)
                + "  |  val " + " ".join(f"{name} {val_losses[name]:.4f}" for name in curve_names)
                + f"  ({time.time() - started:.1f}s{', best' if improved else ''})")
        tqdm.write(line) if run.progress else print(line)
    metrics.close()
    if not best_path.is_file():  # e.g. resumed a finished run whose best file was removed
        save_checkpoint(checkpoint(start_epoch, best_val_loss), best_path)
    return load_checkpoint(best_path, "memory")
