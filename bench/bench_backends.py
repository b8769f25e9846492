"""The simulator's episodes on both backends in one run: worker processes vs Ray actors on this machine.

Runs ``car_racing_gameplay_simulator.py``'s ``main`` with ``--backend processes`` and then with
``--backend ray`` (a local Ray with ``--workers`` CPUs, started and shut down inside the timing), on the
same seeds, ``--rounds`` times alternating, and prints episodes/s of each, Ray's overhead
(``ray seconds / processes seconds − 1``; the target is ≤ 10%), the same ratio without Ray's start and
shutdown, whether both gave the same score (bit for bit), and env steps and episodes per core-second
(the README's cost table). Uses the checkpoints in ``--checkpoint-dir`` when all three exist, else
random-initialised paper-size ones (the speed does not depend on the weights).

    python bench/bench_backends.py                     # 20 episodes, 2 workers: a few minutes on 2 cores
    python bench/bench_backends.py --json runs/bench_backends.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import dataclasses
import io
import json
import re
import statistics
import tempfile
import time
from dataclasses import dataclass

from bench.common import write_random_checkpoints
from car_racing import car_racing_gameplay_simulator as simulator
from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import atomic_path, checkpoint_paths
from car_racing.episodes.backends import connect_ray

STEPS_RE = re.compile(r"^episode \d+/\d+ .* steps (\d+)", re.MULTILINE)


@dataclass
class Args:
    """The simulator's episodes with worker processes vs Ray actors: episodes/s and Ray's overhead."""

    episodes: int = 20
    """episodes per backend per round (seeds SEED, SEED+1, …)"""
    workers: int = 2
    """worker processes / Ray actors (the local Ray gets this many CPUs)"""
    max_steps: int = 1000
    """step limit per episode"""
    rounds: int = 1
    """rounds of (processes, ray); the medians are reported"""
    seed: int = 10000
    """first track seed"""
    checkpoint_dir: str = "checkpoints"
    """the agent's V/M/C when all three are here, else random-initialised paper-size ones"""
    json: str | None = None
    """also write the figures to this JSON file"""


def simulate(checkpoint_dir: Path, args: Args, backend: str) -> dict:
    """One simulator run (its printout captured): seconds, score, env steps."""
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        score = simulator.main(simulator.Args(checkpoint_dir=str(checkpoint_dir), episodes=args.episodes, seed=args.seed,
                                              max_steps=args.max_steps, workers=args.workers, backend=backend))
    seconds = time.perf_counter() - started
    steps = sum(int(s) for s in STEPS_RE.findall(out.getvalue()))
    return {"seconds": seconds, "score": score, "steps": steps}


def measure_ray(checkpoint_dir: Path, args: Args) -> dict:
    """The simulator on a local Ray started for it: start, run and shutdown timed apart."""
    import ray

    started = time.perf_counter()
    assert connect_ray("", args.workers), "Ray is already running in this process"
    start = time.perf_counter() - started
    try:
        run = simulate(checkpoint_dir, args, "ray")  # the session inside reuses this Ray
    finally:
        stopping = time.perf_counter()
        ray.shutdown()
        shutdown = time.perf_counter() - stopping
    return run | {"run_seconds": run["seconds"], "start_seconds": start, "shutdown_seconds": shutdown,
                  "seconds": start + run["seconds"] + shutdown}


def measure(args: Args) -> dict:
    """Figures of both backends (medians over the rounds) and the comparison; see the module docstring."""
    if min(args.episodes, args.workers, args.max_steps, args.rounds) < 1:
        raise UsageError("--episodes, --workers, --max-steps and --rounds: expected positive integers")
    paths = checkpoint_paths(args.checkpoint_dir)
    runs: dict[str, list[dict]] = {"processes": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        if all(path.is_file() for path in paths.values()):
            checkpoint_dir, agent = Path(args.checkpoint_dir), f"checkpoints in {args.checkpoint_dir}"
        else:
            checkpoint_dir, agent = Path(tmp), "random-initialised paper-size V/M/C"
            write_random_checkpoints(checkpoint_dir, 0)
        print(f"agent: {agent}; {args.episodes} episodes (<= {args.max_steps} steps) with {args.workers} workers, "
              f"{args.rounds} round(s)", flush=True)
        for round_index in range(args.rounds):
            for backend, run in (("processes", lambda: simulate(checkpoint_dir, args, "processes")),
                                 ("ray", lambda: measure_ray(checkpoint_dir, args))):
                result = run()
                runs[backend].append(result)
                extra = (f" (Ray start {result['start_seconds']:.1f} s, run {result['run_seconds']:.1f} s, "
                         f"shutdown {result['shutdown_seconds']:.1f} s)" if backend == "ray" else "")
                print(f"round {round_index + 1}, {backend:9s}: {result['seconds']:6.1f} s = "
                      f"{args.episodes / result['seconds']:.3f} episodes/s, {result['steps']} steps{extra}", flush=True)

    def median(backend: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[backend])

    processes, on_ray = median("processes", "seconds"), median("ray", "seconds")
    ray_run = median("ray", "run_seconds")
    steps = runs["processes"][0]["steps"]
    identical = all(r["score"] == runs["processes"][0]["score"] and r["steps"] == steps
                    for r in runs["processes"] + runs["ray"])
    summary = {
        "agent": agent, "episodes": args.episodes, "workers": args.workers, "steps": steps,
        "processes_episodes_per_s": args.episodes / processes, "ray_episodes_per_s": args.episodes / on_ray,
        "ray_overhead": on_ray / processes - 1, "ray_overhead_without_start": ray_run / processes - 1,
        "ray_start_seconds": median("ray", "start_seconds"), "ray_shutdown_seconds": median("ray", "shutdown_seconds"),
        "episodes_per_core_second": args.episodes / (processes * args.workers),
        "steps_per_core_second": steps / (processes * args.workers),
        "identical": identical, "runs": runs,
    }
    print(f"processes: {summary['processes_episodes_per_s']:.3f} episodes/s; ray: {summary['ray_episodes_per_s']:.3f} "
          f"episodes/s; Ray's overhead {summary['ray_overhead']:+.1%} (without its start and shutdown "
          f"{summary['ray_overhead_without_start']:+.1%}; target <= +10%)")
    print(f"per core: {summary['episodes_per_core_second']:.4f} episodes/core-s, "
          f"{summary['steps_per_core_second']:.1f} env steps/core-s ({steps / args.episodes:.0f} steps per episode); "
          f"same score on both backends: {'yes' if identical else 'NO'}", flush=True)
    return summary


def main(args: Args) -> dict:
    summary = measure(args)
    if args.json:
        with atomic_path(args.json) as tmp_path:
            tmp_path.write_text(json.dumps(summary | {"args": dataclasses.asdict(args)}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return summary


if __name__ == "__main__":
    run_main(main, Args)
