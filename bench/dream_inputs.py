"""What C sees and does in its dream beside the real env: z's change per step, C's steering, and the dream's ranking.

A linear C reads [z, h]. In the real env z is V's mean μ of the frame; in the dream it is M's sample of the next z.
If the two differ in kind (one smooth, the other jumping each step), C is trained on inputs it never meets on the
road, and what the dream pays says little about what the road pays. For every CMA-ES run of stage 4 (as
``bench/check_actions.py`` finds them) each real-checked parameter vector drives ``--trials`` dreams of its run's M
from the run's start pool, with the run's own dream settings (steps, temperature, dropout, value bootstrap); printed
per vector: what the dream pays, the real check, the mean |Δz| per step in the dream, and |steer| and |Δsteer| in
the dream beside the same on its check tracks. Then the recording's own |Δz| per driver (V's μ, what C reads in the
real env), and how often the dream orders two checked vectors of one run like their real checks do (pairs whose
checks differ by at least ``--margin``; 0.5 is a coin). ``--quiet-above S`` dreams without M's sampling noise in the
latent dimensions V does not use (V's posterior σ, averaged over the recording, above S; their z is then the chosen
component's mean): is their noise what misleads the ranking?

    python bench/dream_inputs.py --runs runs/lineage/default-s3000
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools
from dataclasses import dataclass

import numpy as np

from bench.check_actions import action_stats, controller_files, run_label, run_settings
from bench.tables import markdown_table
from car_racing.common.cli import UsageError, run_main

COLUMNS = ("run", "checked", "generation", "dream pays", "real check", "dream |Δz|", "dream |steer|",
           "real |steer|", "dream |Δsteer|", "real |Δsteer|")


@dataclass
class Args:
    """Print how each real-checked C of stage 4's CMA-ES runs drives in its dream beside its real checks (Markdown)."""

    runs: tuple[str, ...] = ("checkpoints",)
    """controller checkpoints, folders holding one (a CMA-ES run's), or lineage/checkpoint folders: every CMA-ES run
    under their dream_loop/ is read (as bench/check_actions.py does)"""
    trials: int = 256
    """dreams per checked vector (the same start states and noise for every vector of a run)"""
    margin: float = 50.0
    """pairs of checked vectors whose real checks differ by less than this are not counted in the agreement"""
    seed: int = 123
    """seed of the dreams' start states and noise"""
    temperature: float = -1.0
    """dream at this temperature instead of each run's own (-1 = the run's): how much of the dream's noise is M's
    sampling"""
    quiet_above: float = 0.0
    """no sampling noise in the latent dimensions whose posterior σ under V, averaged over the recording, is above
    this (V's unused dimensions, σ near 1; 0 = sample every dimension as the run did)"""
    device: str = "cpu"
    """where the dreams run (auto, cpu, cuda)"""


def dream_stats(file: Path, trials: int, seed: int, device: str, temperature: float = -1.0,
                quiet_above: float = 0.0) -> tuple[list[dict], dict, object]:
    """Each checked vector of the CMA-ES run in ``file`` driven in the run's own dream (at ``temperature`` when it is
    0 or more; without sampling noise in V's dimensions of posterior σ above ``quiet_above`` when it is positive):
    its pay, |Δz|, |steer|, |Δsteer|; also the run's config (its M, data and dream settings)."""
    import torch

    from car_racing.common.runtime import load_checkpoint
    from car_racing.models.ffn import flat_to_population
    from car_racing.recording.latent_cache import load_or_build_latents
    from car_racing.training.dream import DreamNoise, imagine
    from car_racing.training.setup import load_setup

    config = run_settings(file, run__progress=False, run__device=device)
    checkpoint = load_checkpoint(file, "controller")
    checked = checkpoint.get("checked") or []
    if not checked:
        return [], checkpoint, config
    setup = load_setup(config)
    setup.load_start_pool()
    generator = torch.Generator().manual_seed(seed)
    start_z, start_state = setup.pool.pick(trials, generator)
    flat = torch.as_tensor(np.stack([np.asarray(c["params"], dtype=np.float32) for c in checked]), device=setup.device)
    # the draw imagine() would make from the generator, so --quiet-above 0 dreams exactly as before
    noise = DreamNoise.draw(config.dream.steps, trials, start_z.shape[1], generator, config.dream.dropout,
                            start_state[0].shape[1])
    if quiet_above > 0:
        _, logvar = load_or_build_latents(config.run.data_dir, setup.paths["vision"], "cpu", progress=False)
        used = torch.as_tensor(np.exp(0.5 * logvar).mean(axis=0) <= quiet_above, dtype=noise.gaussian.dtype)
        noise.gaussian *= used
    trace = imagine(setup.mdnrnn, flat_to_population(flat, *setup.sizes), start_z, start_state, config.dream.steps,
                    config.dream.temperature if temperature < 0 else temperature, noise,
                    reward_scale=1.0 / setup.reward_scale,
                    value_discount=setup.value_discount if config.dream.value else 0.0)
    steer = trace.actions[..., 0].float().cpu()
    z = trace.z.float().cpu()
    stats = [{"pays": float(trace.returns[i].mean()), "dz": float((z[i, :, 1:] - z[i, :, :-1]).abs().mean()),
              "steer": float(steer[i].abs().mean()), "weave": float((steer[i, :, 1:] - steer[i, :, :-1]).abs().mean())}
             for i in range(len(checked))]
    return stats, checkpoint, config


def agreement(real: list[float], dream: list[float], margin: float) -> tuple[int, int]:
    """(pairs the dream orders like the real checks, pairs counted): pairs whose real scores differ by ≥ margin."""
    agree = total = 0
    for i, j in itertools.combinations(range(len(real)), 2):
        if abs(real[i] - real[j]) < margin:
            continue
        total += 1
        agree += int((dream[i] - dream[j]) * (real[i] - real[j]) > 0)
    return agree, total


def recording_dz(data_dir: str, run_folder: Path) -> dict[str, float]:
    """Mean |Δμ| per step of V's μ (the V in ``run_folder``) over each driver's recorded episodes: what C reads in
    the real env."""
    from car_racing.common.runtime import checkpoint_paths
    from car_racing.recording.latent_cache import load_or_build_latents
    from car_racing.recording.recorded_data import load_recorded

    mu, _ = load_or_build_latents(data_dir, checkpoint_paths(run_folder)["vision"], "cpu", progress=False)
    by_driver: dict[str, list[float]] = {}
    for episode in load_recorded(data_dir, mmap=True).episodes:
        start, length = int(episode["start"]), int(episode["length"])
        if length > 1:
            by_driver.setdefault(str(episode.get("driver")), []).append(
                float(np.abs(np.diff(mu[start:start + length], axis=0)).mean()))
    return {driver: float(np.mean(values)) for driver, values in sorted(by_driver.items())}


def main(args: Args) -> dict:
    if not args.runs:
        raise UsageError("--runs: give at least one checkpoint or folder")
    if args.trials < 1:
        raise UsageError(f"--trials {args.trials}: expected a positive number of dreams")
    if args.quiet_above < 0:
        raise UsageError(f"--quiet-above {args.quiet_above}: expected a posterior σ ≥ 0 (0 = off)")
    rows, agree, total, recordings = [], 0, 0, {}
    for run in args.runs:
        for file in controller_files(run):
            stats, checkpoint, config = dream_stats(file, args.trials, args.seed, args.device, args.temperature,
                                                    args.quiet_above)
            label = run_label(run, file, several=len(args.runs) > 1)
            checked = checkpoint.get("checked") or []
            for check, dream in zip(checked, stats):
                real = action_stats(check["actions"])
                rows.append([label, check["source"].split(" of generation")[0], str(int(check["generation"])),
                             f"{dream['pays']:.1f}", f"{check['score']:.1f}", f"{dream['dz']:.3f}",
                             f"{dream['steer']:.2f}", f"{real['steer']:.2f}", f"{dream['weave']:.3f}",
                             f"{real['weave']:.3f}"])
            # the zero start crawls in every run alike: its pairs would count the same comparison once per run
            scored = [(c["score"], d["pays"]) for c, d in zip(checked, stats) if "(zero)" not in c["source"]]
            a, n = agreement([s for s, _ in scored], [p for _, p in scored], args.margin)
            agree, total = agree + a, total + n
            if stats and config.run.data_dir not in recordings:
                recordings[config.run.data_dir] = recording_dz(config.run.data_dir, file.parent)
    print(markdown_table(COLUMNS, rows))
    for data_dir, by_driver in recordings.items():
        print(f"{data_dir}: real |Δz| per step (V's μ) by driver: "
              + ", ".join(f"{driver} {value:.3f}" for driver, value in by_driver.items()))
    share = agree / total if total else float("nan")
    print(f"the dream orders {agree} of {total} pairs of checked vectors (real checks ≥ {args.margin:g} apart) "
          f"like the real checks" + (f": {share:.2f}" if total else ""))
    return {"rows": rows, "agree": agree, "pairs": total, "recording_dz": recordings}


if __name__ == "__main__":
    run_main(main, Args)
