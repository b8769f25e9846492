"""Throughput of the memory model M on this machine, measured in one run with variants alternating
round by round (so a busy machine slows them all alike).

1. Training: sequences/s of one M training step (B × T windows, forward, the three losses, backward,
   clip, Adam) with the sequence forward (cuDNN/oneDNN LSTM over T steps), against the same step
   written as a Python loop of ``MDNRNN.step`` calls (what a step-only model would cost).
2. Rollouts: ``MDNRNN.step`` calls/s at batch 1 (the real-env agent) and at a dream batch
   (controller population × trials), with and without sampling z_{t+1}.

    python bench/bench_memory.py                 # paper sizes: H 512, K 5, B 32, T 100
    python bench/bench_memory.py --threads 1

Prints the medians over rounds and the ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statistics
from dataclasses import dataclass

import torch

from bench.common import timed
from car_racing.common.cli import run_main
from car_racing.common.config import Memory
from car_racing.common.runtime import resolve_device
from car_racing.models.mdn_rnn import MDNRNN, MDNOutput
from car_racing.training.memory import compute_losses


@dataclass
class Args:
    """Benchmark M: training steps (sequence forward vs step loop) and rollout steps."""

    batch_size: int = 32
    """sequences per training step"""
    seq_len: int = 100
    """steps per training sequence"""
    hidden_size: int = 512
    """LSTM width"""
    num_mixtures: int = 5
    """Gaussians per latent dimension"""
    dream_batch: int = 1024
    """rows of one dream rollout step (population × trials)"""
    rounds: int = 3
    """rounds; variants alternate within each round"""
    repeats: int = 3
    """timed calls per variant per round (step variants: ×50)"""
    threads: int = 0
    """torch CPU threads (0 = torch's default)"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda[:N]"""
    seed: int = 0
    """seed for weights and synthetic data"""


def measure(args: Args) -> dict:
    """Time the variants (alternating over the rounds); returns the medians over the rounds as ``{"train":
    {variant: sequences/s}, "rollouts": {variant: rows/s}}`` with ``"device"``, ``"threads"``, ``"batch_size"``
    and ``"seq_len"``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = MDNRNN(hidden_size=args.hidden_size, num_mixtures=args.num_mixtures).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    b, t, latent = args.batch_size, args.seq_len, model.latent_size
    batch = {"z": torch.randn(b, t, latent, device=device), "actions": torch.rand(b, t, 3, device=device),
             "next_z": torch.randn(b, t, latent, device=device), "z_mask": torch.ones(b, t, dtype=torch.bool,
                                                                                    device=device),
             "rewards": torch.randn(b, t, device=device), "dones": torch.zeros(b, t, device=device)}
    train_args = Memory(dropout=0.0)  # stage 3's loss weights; the documented figures were measured without dropout

    def sequence_step() -> None:
        losses = compute_losses(model, batch, train_args)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    class Stepped(torch.nn.Module):  # the same losses through a Python loop of one-step calls
        def forward(self, z, actions, state=None, head_mask=None):
            state = model.initial_state(z.shape[0])
            outs = []
            for i in range(z.shape[1]):
                out, state = model.step(z[:, i], actions[:, i], state, head_mask=head_mask)
                outs.append(out)
            return MDNOutput(*(torch.stack(parts, dim=1) for parts in zip(*outs))), state

    stepped = Stepped()

    def loop_step() -> None:
        losses = compute_losses(stepped, batch, train_args)  # type: ignore[arg-type]
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    rollouts = {}
    for rows in (1, args.dream_batch):
        z = torch.randn(rows, latent, device=device)
        action = torch.rand(rows, 3, device=device)
        state = model.initial_state(rows)

        @torch.no_grad()
        def step_only(z=z, action=action, state=state) -> None:
            model.step(z, action, state)

        @torch.no_grad()
        def step_and_sample(z=z, action=action, state=state) -> None:
            out, _ = model.step(z, action, state)
            MDNRNN.sample_next_z(out, 1.0)

        rollouts[f"step batch {rows}"] = (step_only, rows)
        rollouts[f"step+sample batch {rows}"] = (step_and_sample, rows)

    variants = {"train: sequence forward": (sequence_step, b), "train: loop of step()": (loop_step, b)}
    results: dict[str, list[float]] = {name: [] for name in [*variants, *rollouts]}
    for fn, _ in [*variants.values(), *rollouts.values()]:
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, (fn, items) in variants.items():
            results[name].append(items / timed(fn, device, args.repeats)[1])
        for name, (fn, items) in rollouts.items():
            results[name].append(items / timed(fn, device, args.repeats * 50)[1])
    medians = {name: statistics.median(values) for name, values in results.items()}
    return {"train": {name: medians[name] for name in variants}, "rollouts": {name: medians[name] for name in rollouts},
            "device": str(device), "threads": torch.get_num_threads(), "batch_size": b, "seq_len": t}


def print_report(args: Args, result: dict) -> None:
    """The medians of :func:`measure` and the training variants' ratio to the sequence forward."""
    b = result["batch_size"]
    print(f"device {result['device']}, threads {result['threads']}, H {args.hidden_size}, K {args.num_mixtures}, "
          f"B {b}, T {result['seq_len']}")
    base = result["train"]["train: sequence forward"]
    for name, rate in result["train"].items():
        print(f"{name:28s} {rate:10.1f} sequences/s  ({rate / base:.2f}× sequence forward)  = {rate / b:.2f} steps/s")
    for name, rate in result["rollouts"].items():
        print(f"{name:28s} {rate:10.0f} rows/s")


def main(args: Args) -> None:
    print_report(args, measure(args))


if __name__ == "__main__":
    run_main(main, Args)
