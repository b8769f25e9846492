"""What several benchmarks share: the machine's description, paper-size random checkpoints, timing.

Imported by the bench scripts; it imports none of them (``bench_all.py`` runs the others).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from car_racing.common.runtime import checkpoint_paths, save_checkpoint
from car_racing.models.ffn import Controller
from car_racing.models.mdn_rnn import MDNRNN
from car_racing.models.vae import VAE


def machine() -> dict:
    """CPU model, core count, torch and Python versions, OS."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine() or "unknown CPU"
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name()
    return info


def write_random_checkpoints(checkpoint_dir: Path, seed: int) -> None:
    """Paper-size V, M and C with random weights, in the checkpoint format the agent loads."""
    torch.manual_seed(seed)
    paths = checkpoint_paths(checkpoint_dir)
    vision_args = {"latent_size": 32}
    memory_args = {"latent_size": 32, "action_size": 3, "hidden_size": 512, "num_mixtures": 5}
    controller_args = {"latent_size": 32, "hidden_size": 512, "action_size": 3}
    for kind, model_cls, model_args in (("vision", VAE, vision_args), ("memory", MDNRNN, memory_args),
                                        ("controller", Controller, controller_args)):
        save_checkpoint({"kind": kind, "model_args": model_args, "model_state": model_cls(**model_args).state_dict()},
                        paths[kind])


def timed(fn: Callable[[], Any], device: torch.device, calls: int = 1) -> tuple[Any, float]:
    """``fn``'s last result and its seconds per call over ``calls`` calls (synchronising CUDA around them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started, result = time.perf_counter(), None
    for _ in range(calls):
        result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, (time.perf_counter() - started) / calls
