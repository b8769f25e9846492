"""Throughput of one V training step (batch of uint8 frames → converted → forward, loss, backward, Adam)
on this machine: the naive fp32 loop against the CPU options of car_racing/train_vision.py, measured in one
run with the variants alternating round by round (so a busy machine slows them all alike).

    python bench/bench_vision.py                        # naive vs channels_last / bf16 / both, at torch's
                                                        # default thread count and at 1 thread
    python bench/bench_vision.py --threads 1 --compile  # also torch.compile (minutes to compile)

Prints images/s per variant (median over rounds) and the ratio to the naive loop (torch's default
threads). train_vision.py runs "channels_last + bf16" (where the CPU has native bf16), with 1 thread
while the machine is busy (--threads 0 = auto).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from car_racing.common.cli import UsageError, run_main
from car_racing.models.vae import VAE, frames_to_tensor, vae_loss
from car_racing.recording.recorded_data import has_recorded_data, load_recorded
from car_racing.training.vision import make_train_step, use_bf16


@dataclass
class Args:
    """Benchmark the V training step: naive fp32 loop vs the optimised step."""

    batch_size: int = 100
    """images per step (train_vision.py's default)"""
    steps: int = 6
    """timed steps per variant per round"""
    rounds: int = 4
    """rounds; the variants alternate within each round"""
    warmup: int = 2
    """untimed steps per variant before the first round"""
    threads: int = 0
    """torch CPU threads of the main variants (0 = torch's default); when above 1, every non-compiled
    variant is also measured at 1 thread"""
    compile: bool = False
    """also measure torch.compile variants (compiling takes a minute or more on a small CPU)"""
    data_dir: str = "data"
    """recorded frames to train on (random noise frames when this folder has no recording)"""
    seed: int = 0
    """seed for the frames' order and the weights"""


def naive_step_factory(model: VAE, optimizer: torch.optim.Optimizer):
    """The plain loop: NCHW fp32, float conversion of the whole batch, loss, backward, step."""

    def step(frames: np.ndarray) -> None:
        x = torch.from_numpy(frames).float().div(255.0).permute(0, 3, 1, 2).contiguous()
        recon, mu, logvar = model(x)
        recon_loss, kl = vae_loss(recon, x, mu, logvar)
        loss = recon_loss + kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def optimised_step_factory(model: VAE, optimizer: torch.optim.Optimizer, channels_last: bool, bf16: bool,
                           compile: bool):
    """The step train_vision.py runs with these options."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_step = make_train_step(model, optimizer, bf16=bf16, compile=compile)

    def step(frames: np.ndarray) -> None:
        train_step(frames_to_tensor(frames, channels_last=channels_last), 1.0)

    return step


def measure(args: Args) -> dict:
    """Warm up and time every variant, printing progress; returns ``{"rates": {variant: [images/s per round]},
    "medians": {variant: median images/s}, "train_variant": the variant train_vision.py runs by default
    (at --threads), "baseline": "naive fp32", "threads": the main variants' thread count}``."""
    default_threads = args.threads or torch.get_num_threads()
    rng = np.random.default_rng(args.seed)
    if has_recorded_data(args.data_dir):
        recorded = load_recorded(args.data_dir, mmap=True).frames
        chosen = np.sort(rng.choice(len(recorded), size=min(len(recorded), args.batch_size * 4), replace=False))
        frames = np.array(recorded[chosen])
        source = f"{len(frames)} recorded frames from {args.data_dir}"
    else:
        frames = rng.integers(0, 256, size=(args.batch_size * 4, 64, 64, 3), dtype=np.uint8)
        source = "random noise frames (no recording in --data-dir)"
    if len(frames) < args.batch_size * 4:
        raise UsageError(f"--data-dir {args.data_dir}: needs at least {args.batch_size * 4} frames")
    bf16_ok = use_bf16(torch.device("cpu"), True)
    # name → (channels_last, bf16, compile, threads); None options = the naive loop
    variants: dict[str, tuple | None] = {"naive fp32": None}
    options = [("channels_last", (True, False, False))]
    if bf16_ok:
        options += [("bf16 autocast", (False, True, False)), ("channels_last + bf16", (True, True, False))]
    if args.compile:
        options += [("compile + channels_last", (True, False, True))]
        if bf16_ok:
            options += [("compile + channels_last + bf16", (True, True, True))]
    for name, option in options:
        variants[name] = option + (default_threads,)
    if default_threads > 1:
        variants["naive fp32, 1 thread"] = ("naive", 1)
        for name, option in options:
            if not option[2]:
                variants[f"{name}, 1 thread"] = option + (1,)
    steps = {}
    threads_of = {}
    for name, option in variants.items():
        torch.manual_seed(args.seed)
        model = VAE()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        if option is None or option[0] == "naive":
            steps[name] = naive_step_factory(model, optimizer)
            threads_of[name] = default_threads if option is None else option[1]
        else:
            steps[name] = optimised_step_factory(model, optimizer, *option[:3])
            threads_of[name] = option[3]
        torch.set_num_threads(threads_of[name])
        started = time.perf_counter()
        for i in range(args.warmup):
            steps[name](frames[(i % 4) * args.batch_size:(i % 4 + 1) * args.batch_size])
        print(f"warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
    print(f"torch {torch.__version__}, default {default_threads} threads, batch {args.batch_size}, "
          f"native bf16: {bf16_ok}; {source}; {args.rounds} rounds × {args.steps} steps, alternating")
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds):
        for name, step in steps.items():
            torch.set_num_threads(threads_of[name])
            started = time.perf_counter()
            for i in range(args.steps):
                step(frames[(i % 4) * args.batch_size:(i % 4 + 1) * args.batch_size])
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - started))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {r[-1]:.0f}" for n, r in rates.items()), flush=True)
    return {"rates": rates, "medians": {name: statistics.median(values) for name, values in rates.items()},
            "train_variant": "channels_last + bf16" if bf16_ok else "channels_last", "baseline": "naive fp32",
            "threads": default_threads}


def print_table(rates: dict[str, list[float]]) -> None:
    """Median, min and max images/s per variant and the ratio to the naive loop."""
    base = statistics.median(rates["naive fp32"])
    print(f"\n{'variant':40s} {'images/s (median)':>18s} {'min':>7s} {'max':>7s} {'× naive':>8s}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:40s} {median:18.0f} {min(values):7.0f} {max(values):7.0f} {median / base:8.2f}")


def main(args: Args) -> None:
    print_table(measure(args)["rates"])


if __name__ == "__main__":
    run_main(main, Args)
