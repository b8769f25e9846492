"""Stage 2 as a library function: :func:`train_vision` trains the vision model V (ConvVAE) on the recorded frames.

Reads ``<run.data_dir>/car_racing_recorded_*`` (frames and the episode list of the meta file); writes
``<run.checkpoint_dir>/vision_model.pth`` (the best epoch by validation loss), a resumable
``vision_model_latest.pth`` after every epoch, the loss curves ``vision_model_loss.png`` and their values,
one JSON line per epoch, in ``vision_metrics.jsonl`` (``run.tensorboard``: TensorBoard events too), and the
resolved config ``vision.config.toml``.

The validation split holds out whole episodes (seeded by ``run.seed``). Each epoch reports, for train and
validation, the reconstruction loss (sum of squared error per image, pixels in [0, 1]) and the KL per image. The
training objective is ``recon + β·KL`` with β rising linearly from 0 to 1 over ``vision.kl_anneal_epochs``
(per batch); the validation loss used to pick the best checkpoint is ``recon + KL`` (β = 1, no free
bits) so that epochs are comparable while β still rises.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from tqdm import tqdm

from car_racing.common.cli import UsageError
from car_racing.common.config import Config, ConfigError, as_dict, flag_of, resolved_path, validate, write_resolved
from car_racing.common.metrics import MetricsLog, require_tensorboard
from car_racing.common.runtime import (
    build_model,
    checkpoint_paths,
    load_checkpoint,
    no_grad,
    plot_curves,
    refuse_shipped,
    resolve_device,
    save_checkpoint,
    seed_everything,
)
from car_racing.recording.recorded_data import episode_frame_indices, load_recorded

if TYPE_CHECKING:  # annotations only: torch is imported where it is used, so importing this stays light
    import torch

    from car_racing.models.vae import VAE

LATEST_FILE = "vision_model_latest.pth"
CURVES_FILE = "vision_model_loss.png"
STAGE = "vision"  # the resolved config: CHECKPOINT_DIR/vision.config.toml


# --- pieces reused by the benchmark and the visualisations ---------------------------------------------------


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded, deterministic split of episode indices into (train, validation), both sorted.

    With 2 or more episodes and ``val_fraction > 0`` each side gets at least one episode; with one
    episode (or ``val_fraction == 0``) everything is training data and validation is empty.
    """
    order = np.random.default_rng([seed, 1234]).permutation(num_episodes)
    if num_episodes < 2 or val_fraction <= 0:
        return sorted(order.tolist()), []
    num_val = min(num_episodes - 1, max(1, int(round(val_fraction * num_episodes))))
    return sorted(order[num_val:].tolist()), sorted(order[:num_val].tolist())


def kl_beta(epoch: int, batch: int, num_batches: int, anneal_epochs: float) -> float:
    """β for the given batch: linear from 0 (first batch) to 1 after ``anneal_epochs`` epochs."""
    if anneal_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + batch / max(1, num_batches)) / anneal_epochs)


def use_bf16(device: torch.device, requested: bool) -> bool:
    """bf16 autocast only on CPUs with native bf16 support (elsewhere it is emulated and slower)."""
    import torch

    if not requested or device.type != "cpu":
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_threads(requested: int) -> int:
    """The torch CPU thread count for ``run.threads`` (0 = torch's default); sets it and returns it."""
    import torch

    if requested <= 0:
        requested = torch.get_num_threads()
    torch.set_num_threads(requested)
    return requested


def make_train_step(model: VAE, optimizer: torch.optim.Optimizer, *, bf16: bool = False, compile: bool = False,
                    free_bits: float = 0.0) -> Callable[[torch.Tensor, float], tuple[float, float]]:
    """One optimiser step on a batch: ``step(x (B, 3, 64, 64) in [0, 1], beta) -> (recon, raw KL)``
    (both per image, averaged over the batch; the KL without the free-bits floor)."""
    import torch

    from car_racing.models.vae import kl_per_image, vae_loss

    forward = torch.compile(model, dynamic=False) if compile else model
    device_type = next(model.parameters()).device.type

    def step(x: torch.Tensor, beta: float) -> tuple[float, float]:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            recon, mu, logvar = forward(x)
        recon_loss, kl = vae_loss(recon, x, mu, logvar, free_bits=free_bits)
        loss = recon_loss + beta * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        raw_kl = kl if free_bits <= 0 else kl_per_image(mu.detach(), logvar.detach()).mean()
        return float(recon_loss.detach()), float(raw_kl.detach())

    return step


@no_grad
def evaluate(model: VAE, frames: np.ndarray, indices: np.ndarray, device: torch.device, batch_size: int,
             seed: int, channels_last: bool = False) -> tuple[float, float]:
    """Mean reconstruction loss and KL per image over ``frames[indices]`` (fp32, eval mode, z sampled
    with a fixed seed so that successive epochs see the same noise)."""
    import torch

    from car_racing.models.vae import frames_to_tensor, vae_loss

    if len(indices) == 0:
        return math.nan, math.nan
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    recon_sum = kl_sum = 0.0
    for start in range(0, len(indices), batch_size):
        x = frames_to_tensor(frames[indices[start:start + batch_size]], device, channels_last=channels_last)
        mu, logvar = model.encode(x)
        recon = model.decode(model.sample(mu, logvar, generator=generator))
        recon_loss, kl = vae_loss(recon, x, mu, logvar)
        recon_sum += float(recon_loss) * len(x)
        kl_sum += float(kl) * len(x)
    model.train(was_training)
    return recon_sum / len(indices), kl_sum / len(indices)



# --- the stage ---------------------------------------------------------------------------------------------


def check(config: Config) -> None:
    """One-line :class:`ConfigError` for values stage 2 cannot use, before anything is touched."""
    validate(config)
    if config.run.seed < 0:
        raise ConfigError(f"run.seed = {config.run.seed}: expected a non-negative integer")
    if config.run.tensorboard:
        require_tensorboard()


def train_vision(config: Config) -> dict[str, Any]:
    """Stage 2: train V on ``config.run.data_dir`` into ``config.run.checkpoint_dir`` (``config.vision``'s
    settings; ``run.resume`` continues ``vision_model_latest.pth``). Returns the last saved (latest) checkpoint
    dict. Bad values raise a one-line :class:`ConfigError` before anything is written."""
    import torch

    from car_racing.models.vae import VAE, frames_to_tensor

    check(config)
    run, vision = config.run, config.vision
    refuse_shipped(run.checkpoint_dir)
    device = resolve_device(run.device)
    if device.type == "cpu":
        choose_threads(run.threads)
    checkpoint_dir = Path(run.checkpoint_dir)
    best_path, latest_path = checkpoint_paths(checkpoint_dir)["vision"], checkpoint_dir / LATEST_FILE
    curves_path = checkpoint_dir / CURVES_FILE

    data = load_recorded(run.data_dir)  # uint8 frames, in memory once; batches are converted on the fly
    frames = np.asarray(data.frames)
    num_episodes = len(data.episodes)
    if len(frames) == 0:
        raise UsageError(f"--data-dir {run.data_dir}: the recording holds no frames; record some first")

    seed_everything(run.seed)
    model_args = {"latent_size": vision.latent_size}
    model = VAE(**model_args)
    resumed = None
    if run.resume:
        if latest_path.is_file():
            resumed = load_checkpoint(latest_path, "vision")
            missing = [k for k in ("optimizer_state", "epoch", "best_val_loss", "history", "split", "rng", "data")
                       if k not in resumed]
            if missing:
                raise UsageError(f"{latest_path}: not a resumable training state (lacks {', '.join(missing)}); "
                                 f"start without --resume")
            model = build_model(VAE, resumed, latest_path)
            model_args = dict(resumed["model_args"])
            if model_args.get("latent_size", 32) != vision.latent_size:
                raise UsageError(f"{flag_of('vision.latent_size')} {vision.latent_size}: {latest_path} was trained "
                                 f"with {model_args.get('latent_size')}; pass that or start without --resume")
            saved_episodes = resumed.get("data", {}).get("num_episodes")
            if saved_episodes != num_episodes:
                raise UsageError(f"{latest_path}: trained on {saved_episodes} episodes but {run.data_dir} "
                                 f"now holds {num_episodes}; start again without --resume")
        else:
            print(f"--resume: no {latest_path} yet, starting from scratch")

    if resumed is not None:
        train_episodes, val_episodes = list(resumed["split"]["train"]), list(resumed["split"]["val"])
    else:
        train_episodes, val_episodes = split_episodes(num_episodes, vision.val_fraction, run.seed)
    train_idx = episode_frame_indices(data.episodes, train_episodes)
    val_idx = episode_frame_indices(data.episodes, val_episodes)

    model = model.to(device)
    if vision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=vision.lr)
    history: dict[str, list[float]] = {k: [] for k in ("train_recon", "train_kl", "val_recon", "val_kl",
                                                        "val_loss", "beta", "images_per_second")}
    start_epoch, best_val_loss, best_epoch = 0, math.inf, 0
    if resumed is not None:
        try:
            optimizer.load_state_dict(resumed["optimizer_state"])
        except (KeyError, ValueError) as err:
            raise UsageError(f"{latest_path}: optimiser state does not fit ({err}); start without --resume") from None
        for group in optimizer.param_groups:
            group["lr"] = vision.lr
        history = {k: list(v) for k, v in resumed["history"].items()}
        start_epoch = int(resumed["epoch"])
        best_val_loss = float(resumed["best_val_loss"])
        best_epoch = int(resumed.get("best_epoch", 0))
        torch.set_rng_state(resumed["rng"]["torch"])
        if device.type == "cuda" and resumed["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resumed["rng"]["cuda"], device)
        print(f"resuming {latest_path} after epoch {start_epoch} (best val loss {best_val_loss:.1f} "
              f"at epoch {best_epoch})")

    if start_epoch >= vision.epochs:
        print(f"already trained {start_epoch} epochs ({flag_of('vision.epochs')} {vision.epochs}); nothing to do")
        return resumed  # type: ignore[return-value]
    write_resolved(config, resolved_path(checkpoint_dir, STAGE))  # every check passed: what runs is recorded

    bf16 = use_bf16(device, vision.bf16)
    step = make_train_step(model, optimizer, bf16=bf16, compile=vision.compile, free_bits=vision.free_bits)
    # torch.compile specialises on the batch shape: drop the last partial batch rather than compile twice
    full_batches_only = vision.compile and len(train_idx) >= vision.batch_size
    num_batches = (len(train_idx) // vision.batch_size if full_batches_only
                   else math.ceil(len(train_idx) / vision.batch_size))
    print(f"V: {sum(p.numel() for p in model.parameters()):,} parameters on {device} "
          f"(threads {torch.get_num_threads()}, channels_last {vision.channels_last}, bf16 {bf16}, "
          f"compile {vision.compile}); {len(train_idx)} train frames from {len(train_episodes)} episode(s), "
          f"{len(val_idx)} validation frames from {len(val_episodes)} episode(s)")
    if not len(val_idx):
        print(f"no validation episodes (need at least 2 episodes and {flag_of('vision.val_fraction')} > 0): "
              "the best checkpoint is chosen by training loss")

    latest: dict[str, Any] = {}
    metrics = MetricsLog(checkpoint_dir, "vision", resume_after=start_epoch if resumed is not None else None,
                         tensorboard=run.tensorboard)
    progress = tqdm(total=(vision.epochs - start_epoch) * num_batches, unit="batch", dynamic_ncols=True,
                    desc="vision", disable=not run.progress)
    model.train()
    for epoch in range(start_epoch, vision.epochs):
        order = np.random.default_rng([run.seed, epoch]).permutation(train_idx)
        recon_sum = kl_sum = 0.0
        seen = 0
        started = time.perf_counter()
        for batch in range(num_batches):
            idx = np.sort(order[batch * vision.batch_size:(batch + 1) * vision.batch_size])
            x = frames_to_tensor(frames[idx], device, channels_last=vision.channels_last)
            beta = kl_beta(epoch, batch, num_batches, vision.kl_anneal_epochs)
            recon, kl = step(x, beta)
            if not (math.isfinite(recon) and math.isfinite(kl)):
                raise RuntimeError(f"epoch {epoch + 1}: loss is not finite (recon {recon}, KL {kl}); "
                                   f"try a lower {flag_of('vision.lr')}")
            recon_sum += recon * len(idx)
            kl_sum += kl * len(idx)
            seen += len(idx)
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, recon=f"{recon:.1f}", kl=f"{kl:.1f}", beta=f"{beta:.3f}")
        seconds = time.perf_counter() - started
        train_recon, train_kl = recon_sum / seen, kl_sum / seen
        val_recon, val_kl = evaluate(model, frames, val_idx, device, max(vision.batch_size, 200), run.seed,
                                     vision.channels_last)
        val_loss = val_recon + val_kl if len(val_idx) else train_recon + train_kl
        for key, value in (("train_recon", train_recon), ("train_kl", train_kl), ("val_recon", val_recon),
                           ("val_kl", val_kl), ("val_loss", val_loss),
                           ("beta", kl_beta(epoch + 1, 0, num_batches, vision.kl_anneal_epochs)),
                           ("images_per_second", seen / seconds)):
            history[key].append(float(value))
        improved = val_loss < best_val_loss
        if improved:
            best_val_loss, best_epoch = val_loss, epoch + 1
        latest = {
            "kind": "vision", "model_args": model_args,
            "model_state": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "optimizer_state": optimizer.state_dict(), "epoch": epoch + 1, "best_val_loss": best_val_loss,
            "best_epoch": best_epoch, "config": as_dict(config), "history": history,
            "split": {"train": train_episodes, "val": val_episodes, "val_fraction": vision.val_fraction,
                      "seed": run.seed},
            "data": {"data_dir": str(run.data_dir), "num_frames": len(frames), "num_episodes": num_episodes},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }
        metrics.log(epoch + 1, {key: values[-1] for key, values in history.items()}, best=improved)
        if improved:
            save_checkpoint(latest, best_path)
        save_checkpoint(latest, latest_path)
        plot_curves({"train recon": history["train_recon"], "val recon": history["val_recon"],
                     "train KL": history["train_kl"], "val KL": history["val_kl"]}, curves_path,
                    title="vision model V (recon = SSE per image, KL per image)", log_y=True)
        val_text = f"val recon {val_recon:.1f} KL {val_kl:.1f}" if len(val_idx) else "no validation"
        progress.write(f"epoch {epoch + 1}/{vision.epochs}: train recon {train_recon:.1f} KL {train_kl:.1f} | "
                       f"{val_text} | β {history['beta'][-1]:.3f} | {seen / seconds:.0f} img/s"
                       + (" | best, saved" if improved else ""))
    progress.close()
    metrics.close()
    print(f"best: epoch {best_epoch}, validation loss {best_val_loss:.1f} → {best_path}; curves → {curves_path}")
    return latest
