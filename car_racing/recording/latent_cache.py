"""Every recorded frame encoded once by the vision model V, cached next to the data.

The cache ``data_dir/car_racing_latents.npz`` holds μ and log σ² (float32, (N, L)) for all N recorded
frames, in the order of ``car_racing_recorded_frames.npy``, and a key: the sha256 of V's checkpoint
file and a fingerprint of the recording (its meta file and frame count). When either changes (V
retrained, episodes recorded or appended) the cache is rebuilt — only the new frames are encoded when
episodes were appended (same V, the cached episodes still the first ones, as ``--append`` and the dream
loop's recordings keep them); it is written atomically, so an
interrupted build never leaves a half file. M's training samples z ~ N(μ, σ²) from it every epoch and
the controller stages reuse it.

    mu, logvar = load_or_build_latents("data", "checkpoints/vision_model.pth", device, batch_size=256)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from car_racing.common.cli import UsageError
from car_racing.common.runtime import atomic_path, load_checkpoint, load_model
from car_racing.models.vae import VAE, frames_to_tensor
from car_racing.recording.recorded_data import META_FILE, load_recorded

LATENTS_FILE = "car_racing_latents.npz"
CACHE_VERSION = 1


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(data_dir: str | os.PathLike, num_frames: int) -> str:
    """sha256 of the recording's meta file plus the frame count: changes whenever episodes change."""
    digest = hashlib.sha256((Path(data_dir) / META_FILE).read_bytes())
    digest.update(str(int(num_frames)).encode())
    return digest.hexdigest()


@torch.no_grad()
def encode_frames(vae: VAE, frames: np.ndarray, device: torch.device | str, batch_size: int = 256,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames (N, 64, 64, 3) (array or memmap) → (μ, log σ²) float32 (N, L), batched, no grad."""
    n = len(frames)
    mu = np.empty((n, vae.latent_size), dtype=np.float32)
    logvar = np.empty((n, vae.latent_size), dtype=np.float32)
    for start in tqdm(range(0, n, batch_size), desc="encoding frames with V", unit="batch",
                      disable=not progress, leave=False):
        batch = frames_to_tensor(np.array(frames[start:start + batch_size]), device=device)  # copy: memmaps are read-only
        batch_mu, batch_logvar = vae.encode(batch)
        mu[start:start + len(batch)] = batch_mu.float().cpu().numpy()
        logvar[start:start + len(batch)] = batch_logvar.float().cpu().numpy()
    return mu, logvar


def _episode_list(data) -> list[list[int]]:
    """[seed, start, length] of every recorded episode: what an appended recording keeps as its prefix."""
    return [[int(e["seed"]), int(e["start"]), int(e["length"])] for e in data.episodes]


def _read_cache(path: Path, key: dict, episodes: list[list[int]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays when the file exists, is readable and its key equals ``key``; when only the
    recording grew by appended episodes (same V, the cached episodes a prefix of ``episodes``) the cached
    prefix (shorter than ``key["num_frames"]``); else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            cached_key = json.loads(str(npz["key"]))
            cached_episodes = json.loads(str(npz["episodes"])) if "episodes" in npz.files else None
            same = cached_key == key
            prefix = (not same and cached_episodes is not None and 0 < len(cached_episodes) <= len(episodes)
                      and episodes[:len(cached_episodes)] == cached_episodes
                      and all(cached_key.get(k) == key[k] for k in ("version", "vision_sha256")))
            if not (same or prefix):
                return None
            mu, logvar = npz["mu"], npz["logvar"]
    except Exception:  # unreadable / truncated / old layout: rebuild
        return None
    expected = key["num_frames"] if same else cached_key.get("num_frames")
    if mu.shape != logvar.shape or mu.ndim != 2 or len(mu) != expected:
        return None
    return mu.astype(np.float32, copy=False), logvar.astype(np.float32, copy=False)


def load_or_build_latents(data_dir: str | os.PathLike, vision_checkpoint_path: str | os.PathLike,
                          device: torch.device | str = "cpu", batch_size: int = 256, progress: bool = True
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(μ, log σ²) float32 (N, L) of every recorded frame in ``data_dir`` under the V in
    ``vision_checkpoint_path``; read from ``data_dir/car_racing_latents.npz`` when its key matches
    (same V file bytes, same recording), otherwise encoded now and the cache rewritten atomically."""
    data_dir = Path(data_dir)
    vision_checkpoint_path = Path(vision_checkpoint_path)
    if batch_size < 1:
        raise UsageError(f"batch size {batch_size}: expected a positive integer")
    data = load_recorded(data_dir, mmap=True)
    if not vision_checkpoint_path.is_file():
        load_checkpoint(vision_checkpoint_path, "vision")  # raises the standard one-line error
    key = {"version": CACHE_VERSION, "vision_sha256": file_sha256(vision_checkpoint_path),
           "data_fingerprint": data_fingerprint(data_dir, len(data)), "num_frames": len(data)}
    cache_path = data_dir / LATENTS_FILE
    episodes = _episode_list(data)
    cached = _read_cache(cache_path, key, episodes)
    if cached is not None and len(cached[0]) == len(data):
        return cached
    vae, _ = load_model(vision_checkpoint_path, "vision", device)
    done = 0 if cached is None else len(cached[0])
    mu, logvar = build_latents(vae, data.frames[done:], device, batch_size, progress)
    if cached is not None:  # appended episodes: only their frames were encoded
        mu, logvar = np.concatenate([cached[0], mu]), np.concatenate([cached[1], logvar])
    with atomic_path(cache_path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, mu=mu, logvar=logvar, key=np.array(json.dumps(key)),
                     episodes=np.array(json.dumps(episodes)))
    return mu, logvar


def build_latents(vae: VAE, frames: np.ndarray, device: torch.device | str, batch_size: int, progress: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Encode all frames (the step :func:`load_or_build_latents` skips when the cache is valid)."""
    return encode_frames(vae, frames, device, batch_size, progress)


__all__ = ["LATENTS_FILE", "file_sha256", "encode_frames", "load_or_build_latents",
           "data_fingerprint"]
