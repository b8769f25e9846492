"""Stage 3: train the memory model M (MDN-RNN with reward and done heads) on V's latents.

Every recorded frame is encoded once by V (μ, log σ² cached in ``data_dir/car_racing_latents.npz``,
rebuilt when V's checkpoint or the recording changes). Each epoch draws one z ~ N(μ, σ²) per frame, as
in the paper, and trains on the memory windows ``car_racing_memory_dataset_*.npy``: M reads
[z_t, a_t] for every step t of a window and is scored on

- the MDN loss: −log p(z_{t+1}) per latent dimension, for every t whose next frame is in the same
  episode (windows never cross an episode end; the window's last step uses the frame after the window
  when the episode goes on);
- the reward loss: MSE of r_t, in real CarRacing reward units, with targets clipped to ±``reward_clip``
  (tile rewards of about +3 stay intact; the −100 for leaving the playfield becomes −10 by default);
- the done loss: BCE of done_t. By default (``--done-target terminal``) done_t is 1 only on steps where
  the episode really terminated (lap finished, or left the playfield: reward ≤ −50), not where the time
  limit or the recorder cut it, since no model can predict a cut from the frames;
- with ``--value-discount γ`` > 0, the value loss: MSE of the discounted average reward after step t,
  ``(1 − γ) · Σ_{k≥1} γ^{k−1} r_{t+k}`` within the episode (clipped rewards), so a short dream in stage 4
  can end on M's estimate of what follows (``--dream-value``). Steps whose discounted future the recording cut
  off (the last ``2/(1 − γ)`` steps of an episode that did not terminate) have no target.

Validation uses whole episodes held out with ``--seed``. Outputs: ``checkpoint_dir/memory_model.pth``
(best validation loss), ``memory_model_latest.pth`` (resumable, written after every epoch),
``memory_model_loss.png`` and its values, one JSON line per epoch, in ``memory_metrics.jsonl``
(``--tensorboard``: TensorBoard events too).

    python car_racing/train_memory.py                 # 25 epochs, dropout 0.05 on h, a value head (γ 0.98)
    python car_racing/train_memory.py --preset seed   # the seed's 20 epochs without dropout or value head
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

import numpy as np
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError, run_main
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

if TYPE_CHECKING:  # annotations only: torch is imported where it is used, so --help stays light
    import torch

    from car_racing.models.mdn_rnn import MDNRNN

LOSS_CURVE_FILE = "memory_model_loss.png"
TERMINAL_REWARD = -50.0  # CarRacing gives −100 on the step the car leaves the playfield (and terminates)
LOSS_NAMES = ("mdn", "reward", "done", "value", "total")


@dataclass
class Args:
    """Train the memory model M (MDN-RNN) on the recorded data encoded by V."""

    data_dir: str = "data"
    """folder with the recording and the memory sequences (car_racing/recorded_frames.py writes it)"""
    checkpoint_dir: str = "checkpoints"
    """where memory_model.pth, memory_model_latest.pth and the loss curve go"""
    vision_checkpoint: Optional[str] = None
    """V checkpoint to encode the frames with (default: CHECKPOINT_DIR/vision_model.pth)"""
    epochs: int = 25
    """total number of passes over the training sequences (a resumed run continues up to this). 25 with
    --dropout 0.05 is the dream-repair recipe (docs/dream-repair.md: val MDN 0.934 on 64 autopilot and 16
    random-driver episodes of 1000 steps)"""
    batch_size: int = 32
    """sequences per gradient step"""
    lr: float = 1e-3
    """Adam learning rate"""
    grad_clip: float = 5.0
    """clip the gradient norm to this (0 = off)"""
    hidden_size: int = 512
    """LSTM width H"""
    num_mixtures: int = 5
    """Gaussians per latent dimension in the MDN"""
    reward_weight: float = 1.0
    """weight of the reward MSE in the total loss"""
    done_weight: float = 1.0
    """weight of the done BCE in the total loss"""
    reward_clip: float = 10.0
    """reward targets are clipped to [-c, c] (real reward units; 0 = no clipping)"""
    done_target: Literal["terminal", "episode-end"] = "terminal"
    """terminal: done only where the episode terminated (lap finished or left the playfield); episode-end:
    the last recorded step of every episode (time-limit cuts included)"""
    done_pos_weight: float = 1.0
    """BCE weight of positive done steps (1 keeps sigmoid(done_logit) a calibrated probability)"""
    value_discount: float = 0.98
    """γ of M's value head: it learns the discounted average reward after each step, (1 − γ)·Σ γ^(k−1) r_(t+k), so
    stage 4's short dreams can end on it (--dream-value, its default); 0 = no value head. 0.98 looks ~50 steps ahead"""
    value_weight: float = 1.0
    """weight of the value MSE in the total loss (with --value-discount)"""
    val_fraction: float = 0.1
    """fraction of episodes held out for validation (at least one when there are two or more)"""
    encode_batch_size: int = 256
    """frames per batch when encoding the recording with V (once; cached)"""
    seed: int = 0
    """seeds the episode split, the initial weights, the per-epoch z samples, batch order and dropout masks"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda[:N]"""
    resume: bool = False
    """continue from CHECKPOINT_DIR/memory_model_latest.pth"""
    init_from: Optional[str] = None
    """start from the weights of this memory checkpoint (fine-tune, e.g. on grown data in the dream loop) instead
    of a fresh M; sizes come from it. Ignored with --resume"""
    dropout: float = 0.05
    """dropout on h before M's heads, one mask per training window (Dropout's Dream Land); dream with
    train_controller_cmaes.py --dream-dropout. 0.05 (Dropout's Dream Land's best) delays C's exploit of the dream
    (docs/dream-training.md); 0 = off"""
    freeze_lstm: bool = False
    """train only M's heads (MDN, reward, done) and keep the LSTM as it is (from --init-from or --resume): the h a
    controller sees stays the same, so a C trained on this M's earlier version drives exactly as before"""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)"""
    progress: bool = True
    """show tqdm progress bars"""
    tensorboard: bool = False
    """also write the per-epoch losses as TensorBoard events in CHECKPOINT_DIR/tensorboard/memory (needs the
    optional tensorboard package: pip install -r requirements-tensorboard.txt); memory_metrics.jsonl is always written"""
    preset: Optional[Literal["seed"]] = None
    """seed: the seed repo's original settings (20 epochs, no dropout); flags given on the command line win"""

    # Applied by the command-line parser before the flags (flags given win); from Python: cli.preset_args.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "seed": {"epochs": 20, "dropout": 0.0, "value_discount": 0.0},
    }


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


def compute_losses(model: MDNRNN, batch: dict[str, torch.Tensor], args: Args) -> dict[str, torch.Tensor]:
    """The losses (and the weighted total) of one batch of windows (with ``--dropout``, one head mask per window
    while training); ``value`` is 0 without a value head."""
    import torch
    import torch.nn.functional as F

    from car_racing.models.mdn_rnn import head_dropout_mask, mdn_loss

    mask = (head_dropout_mask(batch["z"].shape[0], model.hidden_size, args.dropout, device=batch["z"].device)
            if model.training and args.dropout > 0 else None)
    output, _ = model(batch["z"], batch["actions"], head_mask=mask)
    losses = {
        "mdn": mdn_loss(output.logit_pi, output.mu, output.log_sigma, batch["next_z"], mask=batch["z_mask"]),
        "reward": F.mse_loss(output.reward.float(), batch["rewards"]),
        "done": F.binary_cross_entropy_with_logits(
            output.done_logit.float(), batch["dones"],
            pos_weight=torch.tensor(args.done_pos_weight, device=batch["dones"].device)),
    }
    losses["value"] = torch.zeros((), device=batch["z"].device)
    if "values" in batch:
        weights = batch["value_mask"].float()
        error = (model.value_rate(output.hidden, None if mask is None else mask.unsqueeze(1)).float()
                 - batch["values"]).pow(2)
        losses["value"] = (error * weights).sum() / weights.sum().clamp_min(1.0)
    losses["total"] = (losses["mdn"] + args.reward_weight * losses["reward"] + args.done_weight * losses["done"]
                       + args.value_weight * losses["value"])
    return losses


def run_epoch(model: MDNRNN, batches: SequenceBatches, ids: np.ndarray, z: torch.Tensor, args: Args,
              optimizer: torch.optim.Optimizer | None, desc: str) -> dict[str, float]:
    """One pass over the windows ``ids`` (training when ``optimizer`` is given); mean losses per window."""
    import torch


    training = optimizer is not None
    model.train(training)
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    count = 0
    bar = tqdm(range(0, len(ids), args.batch_size), desc=desc, unit="batch", leave=False,
               disable=not args.progress)
    for start in bar:
        chunk = torch.from_numpy(ids[start:start + args.batch_size]).to(batches.device)
        batch = batches.get(chunk, z)
        with torch.set_grad_enabled(training):
            losses = compute_losses(model, batch, args)
        if training:
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
        values = {name: float(losses[name].detach()) for name in LOSS_NAMES}
        for name in LOSS_NAMES:
            sums[name] += values[name] * len(chunk)
        count += len(chunk)
        bar.set_postfix(mdn=f"{values['mdn']:.3f}", reward=f"{values['reward']:.3f}", done=f"{values['done']:.4f}")
    return {name: sums[name] / max(count, 1) for name in LOSS_NAMES}


def check_args(args: Args) -> None:
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--hidden-size", args.hidden_size), ("--num-mixtures", args.num_mixtures),
                        ("--encode-batch-size", args.encode_batch_size)):
        if value < 1:
            raise UsageError(f"{flag} {value}: expected a positive integer")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError(f"--lr {args.lr}: expected a positive number")
    if not 0 <= args.val_fraction < 1:
        raise UsageError(f"--val-fraction {args.val_fraction}: expected a number in [0, 1)")
    for flag, value in (("--grad-clip", args.grad_clip), ("--reward-clip", args.reward_clip),
                        ("--reward-weight", args.reward_weight), ("--done-weight", args.done_weight),
                        ("--value-weight", args.value_weight)):
        if not value >= 0:
            raise UsageError(f"{flag} {value}: expected a number >= 0")
    if args.threads < 0:
        raise UsageError(f"--threads {args.threads}: expected 0 (default) or a positive count")
    if args.freeze_lstm and args.init_from is None and not args.resume:
        raise UsageError("--freeze-lstm: expected --init-from (or --resume): a fresh LSTM cannot stay frozen")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout {args.dropout}: expected 0 <= p < 1")
    if args.init_from is not None and not Path(args.init_from).is_file():
        raise UsageError(f"--init-from {args.init_from}: no such memory checkpoint")
    if not 0 <= args.value_discount < 1:
        raise UsageError(f"--value-discount {args.value_discount}: expected 0 (no value head) or a discount in (0, 1)")
    if not args.done_pos_weight > 0:
        raise UsageError(f"--done-pos-weight {args.done_pos_weight}: expected a positive number")
    if args.tensorboard:
        require_tensorboard()


def main(args: Args) -> dict:
    """Train M; returns the final checkpoint dict (also written to CHECKPOINT_DIR/memory_model.pth)."""
    import torch

    from car_racing.models.mdn_rnn import MDNRNN
    from car_racing.recording.latent_cache import file_sha256, load_or_build_latents

    check_args(args)
    refuse_shipped(args.checkpoint_dir)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    checkpoint_dir = Path(args.checkpoint_dir)
    paths = checkpoint_paths(checkpoint_dir)
    vision_path = Path(args.vision_checkpoint) if args.vision_checkpoint else paths["vision"]
    best_path, latest_path = paths["memory"], checkpoint_dir / MEMORY_LATEST_FILE

    data = load_recorded(args.data_dir, mmap=True)
    sequences = load_memory_sequences(args.data_dir)
    if len(sequences.indices) == 0:
        raise UsageError(f"--data-dir {args.data_dir}: no memory sequences (episodes shorter than the "
                         f"sequence length?); record more data")
    mu_np, logvar_np = load_or_build_latents(args.data_dir, vision_path, device, args.encode_batch_size,
                                             progress=args.progress)
    vision_sha = file_sha256(vision_path)
    latent_size = mu_np.shape[1]

    episode_end = np.asarray(data.dones, dtype=bool)
    done_flags = terminal_flags(data, args.done_target)
    values = value_targets(data, done_flags, args.value_discount, args.reward_clip) if args.value_discount else None
    if values is not None and values[1].mean() < 0.1:  # the value head would learn from almost nothing
        print(f"warning: only {values[1].mean():.0%} of the recorded steps have a value target: episodes cut by the "
              f"time limit hide the last {math.ceil(2 / (1 - args.value_discount))} steps' future (--value-discount "
              f"{args.value_discount}); record longer episodes or lower --value-discount")
    batches = SequenceBatches(sequences.indices, sequences.actions, sequences.rewards, episode_end, done_flags,
                              args.reward_clip, device, values)
    episode_starts = np.asarray([e["start"] for e in data.episodes], dtype=np.int64)
    train_ids, val_ids, val_episodes = split_by_episode(sequences.indices[:, 0], episode_starts,
                                                        args.val_fraction, args.seed)
    mu = torch.from_numpy(mu_np).to(device)
    logvar = torch.from_numpy(logvar_np).to(device)
    val_z = sample_latents(mu, logvar, seed=args.seed * 7919 + 1) if len(val_ids) else None

    model_args = {"latent_size": latent_size, "action_size": int(sequences.actions.shape[-1]),
                  "hidden_size": args.hidden_size, "num_mixtures": args.num_mixtures,
                  "value_head": args.value_discount > 0}
    history: dict[str, list[float]] = {f"{split}_{name}": [] for split in ("train", "val") for name in LOSS_NAMES}
    start_epoch, best_val_loss = 0, math.inf
    if args.resume:
        state = load_checkpoint(latest_path, "memory")
        if state.get("vision", {}).get("sha256") != vision_sha:
            raise UsageError(f"{latest_path}: was trained on latents of a different V than {vision_path}; "
                             f"drop --resume to start over")
        for key, value in model_args.items():
            if state["model_args"].get(key) != value:
                raise UsageError(f"{latest_path}: has {key}={state['model_args'].get(key)}, but this run asks "
                                 f"for {value}; drop --resume or pass the same sizes")
        for key in ("reward_clip", "done_target", "freeze_lstm", "value_discount"):
            before = state.get("config", {}).get(key, getattr(args, key))
            if before != getattr(args, key):
                raise UsageError(f"{latest_path}: was trained with --{key.replace('_', '-')} {before}, this run "
                                 f"asks for {getattr(args, key)}; drop --resume or pass the same value")
        model = build_model(MDNRNN, state, latest_path).to(device)
        start_epoch, best_val_loss = int(state["epoch"]), float(state["best_val_loss"])
        history = {key: list(state["history"].get(key, [])) for key in history}
        print(f"resuming from {latest_path} after epoch {start_epoch}")
    elif args.init_from is not None:
        source = load_checkpoint(args.init_from, "memory")
        if source["model_args"].get("latent_size") != latent_size:
            raise UsageError(f"--init-from {args.init_from}: M has latent size {source['model_args'].get('latent_size')}, "
                             f"V encodes {latent_size}")
        model_args = dict(source["model_args"])
        model = build_model(MDNRNN, source, args.init_from).float().to(device)
        if bool(model_args.get("value_head")) != (args.value_discount > 0):  # the value head added or dropped
            before = model.state_dict()
            model_args["value_head"] = args.value_discount > 0
            model = MDNRNN(**model_args).to(device)
            model.load_state_dict({k: v for k, v in before.items() if not k.startswith("value_head.")}, strict=False)
        print(f"starting from the weights of {args.init_from}")
    else:
        model = MDNRNN(**model_args).to(device)
    if args.freeze_lstm:  # only the heads train: the LSTM, and so the h a controller sees, stays as loaded
        for parameter in model.lstm.parameters():
            parameter.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    if args.resume:
        optimizer.load_state_dict(state["optimizer_state"])
        for group in optimizer.param_groups:
            group["lr"] = args.lr
    warm_start = (state.get("warm_start") if args.resume else
                  {"from": args.init_from, "sha256": file_sha256(args.init_from)} if args.init_from else None)

    print(f"{len(data)} frames, {len(sequences.indices)} sequences of {sequences.indices.shape[1]} steps: "
          f"{len(train_ids)} train / {len(val_ids)} val (episodes {val_episodes}); "
          f"{int(done_flags.sum())} done targets ({args.done_target}); device {device}")

    def checkpoint(epoch: int, best: float) -> dict:
        return {"kind": "memory", "model_args": model_args, "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(), "epoch": epoch, "best_val_loss": best,
                "config": dataclasses.asdict(args), "history": history,
                "vision": {"path": str(vision_path), "sha256": vision_sha},
                "reward": {"units": "real CarRacing reward per step", "clip": args.reward_clip, "scale": 1.0},
                "done_target": args.done_target, "val_episodes": val_episodes, "warm_start": warm_start,
                "dropout": args.dropout, "freeze_lstm": args.freeze_lstm,
                "value": ({"discount": args.value_discount, "units": "discounted average reward per step after t, "
                           "(1 - discount) * sum_k discount^(k-1) r_(t+k)"} if args.value_discount else None),
                "data": {"data_dir": str(args.data_dir), "num_frames": len(data), "num_episodes": len(data.episodes),
                         "drivers": sorted({str(e.get("driver")) for e in data.episodes})}}

    metrics = MetricsLog(checkpoint_dir, "memory", resume_after=start_epoch if args.resume else None,
                         tensorboard=args.tensorboard)
    epoch_bar = tqdm(range(start_epoch, args.epochs), desc="memory epochs", unit="epoch", disable=not args.progress,
                     initial=start_epoch, total=args.epochs)
    for epoch in epoch_bar:
        started = time.time()
        epoch_rng = np.random.default_rng([args.seed, epoch])
        z = sample_latents(mu, logvar, seed=int(epoch_rng.integers(2**62)))
        order = epoch_rng.permutation(train_ids)
        torch.manual_seed(int(epoch_rng.integers(2**62)))  # --dropout's masks: the same when the run is resumed
        train_losses = run_epoch(model, batches, order, z, args, optimizer, f"epoch {epoch + 1} train")
        if len(val_ids):
            val_losses = run_epoch(model, batches, val_ids, val_z, args, None, f"epoch {epoch + 1} val")
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
        line = (f"epoch {epoch + 1}/{args.epochs}  train "
                + " ".join(f"{name} {train_losses[name]:.4f}" for name in curve_names)
                + "  |  val " + " ".join(f"{name} {val_losses[name]:.4f}" for name in curve_names)
                + f"  ({time.time() - started:.1f}s{', best' if improved else ''})")
        tqdm.write(line) if args.progress else print(line)
    metrics.close()
    if not best_path.is_file():  # e.g. resumed a finished run whose best file was removed
        save_checkpoint(checkpoint(start_epoch, best_val_loss), best_path)
    return load_checkpoint(best_path, "memory")


if __name__ == "__main__":
    run_main(main, Args)
