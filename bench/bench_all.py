"""Every throughput figure of the project measured in one run, with a summary table at the end.

1. env steps/s: the stock CarRacing-v3 renderer vs car_racing.world.fast_render, in one process and with
   ``--workers`` processes (:mod:`bench.bench_env`);
2. V training images/s: the naive fp32 loop vs the step train_vision.py runs (:mod:`bench.bench_vision`);
3. M training throughput in sequence steps/s (B sequences × T steps per optimizer step): the sequence
   forward train_memory.py runs vs a Python loop of ``MDNRNN.step`` (:mod:`bench.bench_memory`);
4. dream steps/s: the batched rollout vs the per-candidate loop (:mod:`bench.bench_dream`);
5. real-env evaluation episodes/min of the World Models agent (V + M + C) through
   :func:`car_racing.episodes.agent.evaluate_agent` with 1 and with ``--workers`` worker processes: the wall clock
   of the whole call, loading the agent and starting the env / worker processes included. It uses the
   checkpoints in ``--checkpoint-dir`` when all three exist, else random-initialised paper-size ones
   (the speed does not depend on the weights; an agent that finishes a lap early ends its episode early,
   hence steps/s beside episodes/min);
6. the simulator's episodes on both backends, worker processes vs Ray actors on this machine, Ray's start
   and shutdown included (:mod:`bench.bench_backends`; the target is Ray's overhead ≤ 10%).

Each section prints its own benchmark's output as it goes; the table at the end has one line per
measurement (value, unit, and the ratio to its baseline where it has one) and the machine.

    python bench/bench_all.py                      # a few minutes on a 2-core CPU
    python bench/bench_all.py --threads 1 --json runs/bench.json
    python bench/bench_all.py --quick              # smoke test: seconds, numbers not to be quoted
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass

import torch

from bench import bench_backends, bench_dream, bench_env, bench_memory, bench_vision
from bench.common import machine, write_random_checkpoints
from car_racing.common.cli import UsageError, run_main
from car_racing.common.runtime import atomic_path, checkpoint_paths
from car_racing.episodes.agent import evaluate_agent
from car_racing.episodes.rollout import default_workers


@dataclass
class Args:
    """Env, V, M, dream and agent-evaluation throughput in one run, with a summary table."""

    quick: bool = False
    """tiny budgets and small M, no parallel env measurement (seconds in all): a smoke test, not numbers to
    quote"""
    workers: int = default_workers()
    """worker processes of the parallel env and agent-evaluation measurements (default: the number of CPU
    cores; 1 skips the parallel measurements)"""
    threads: int = 0
    """torch CPU threads of the V, M and dream measurements (0 = torch's default; 1 on a machine busy with
    other work)"""
    device: str = "cpu"
    """device of the M and dream measurements (V's, the env's and the evaluation's are the CPU): cpu,
    cuda[:N] or auto"""
    eval_episodes: int = 0
    """agent evaluation: episodes per worker (0 = 2, or 1 with --quick); N workers run N times as many"""
    eval_max_steps: int = 0
    """agent evaluation: steps per episode at most (0 = 1000, the real-env limit, or 30 with --quick)"""
    checkpoint_dir: str = "checkpoints"
    """agent evaluation: the V/M/C checkpoints here when all three exist, else random-initialised ones"""
    data_dir: str = "data"
    """V's benchmark trains on recorded frames from here (random noise frames when there are none)"""
    seed: int = 0
    """seed of the weights, the data and the first episode"""
    json: str | None = None
    """also write the numbers, the settings and the machine as JSON to this path"""


def sub_args(args: Args, threads: int) -> dict:
    """The Args of each reused benchmark for the full run or --quick."""
    q = args.quick
    return {
        "env": bench_env.Args(episodes=1 if q else 2, max_steps=40 if q else 500, workers=1 if q else args.workers,
                              seed=args.seed),  # --quick: process start-up would be all the parallel run measures
        "vision": bench_vision.Args(batch_size=8 if q else 100, steps=1 if q else 3, rounds=1 if q else 3,
                                    warmup=1, threads=threads, data_dir=args.data_dir, seed=args.seed),
        "memory": bench_memory.Args(batch_size=4 if q else 32, seq_len=10 if q else 100,
                                    hidden_size=64 if q else 512, dream_batch=32 if q else 1024,
                                    rounds=1 if q else 3, repeats=1 if q else 2, threads=threads,
                                    device=args.device, seed=args.seed),
        "dream": bench_dream.Args(population=4 if q else 32, dream_trials=2 if q else 16,
                                  hidden_size=64 if q else 512, steps=3 if q else 10, threads=threads,
                                  device=args.device, seed=args.seed, paths_only=True),
        "backends": bench_backends.Args(episodes=2 if q else 20, workers=args.workers,
                                        max_steps=30 if q else 1000, checkpoint_dir=args.checkpoint_dir),
    }


def measure_evaluation(checkpoint_dir: Path, workers: int, episodes_per_worker: int, max_steps: int,
                       seed: int) -> dict:
    """episodes/min and steps/s of :func:`evaluate_agent` with 1 worker and (if above 1) ``workers``."""
    result = {}
    for count in dict.fromkeys((1, workers)):
        seeds = list(range(seed, seed + episodes_per_worker * count))
        started = time.perf_counter()
        episodes = evaluate_agent(checkpoint_dir, seeds, max_steps=max_steps, workers=count, device="cpu")
        seconds = time.perf_counter() - started
        steps = sum(episode.steps for episode in episodes)
        result[count] = {"episodes": len(episodes), "steps": steps, "seconds": seconds,
                         "episodes_per_min": 60 * len(episodes) / seconds, "steps_per_s": steps / seconds}
        print(f"{count} worker{'s' if count > 1 else ''}: {len(episodes)} episodes, {steps} steps in "
              f"{seconds:.1f} s = {result[count]['episodes_per_min']:.2f} episodes/min, "
              f"{result[count]['steps_per_s']:.0f} steps/s", flush=True)
    return result


def row(name: str, value: float, unit: str, baseline: str | None = None, baseline_value: float | None = None,
        note: str = "") -> dict:
    return {"name": name, "value": value, "unit": unit, "baseline": baseline,
            "ratio": None if baseline_value is None else value / baseline_value, "note": note}


def summary_rows(results: dict, settings: dict, workers: int) -> list[dict]:
    """One row per measurement: the improved variant's ratio is to its baseline's row."""
    rows = []
    env = results["env"]
    rows.append(row("env, 1 process, stock renderer", env["stock"], "steps/s"))
    rows.append(row("env, 1 process, fast_render", env["fast"], "steps/s", "stock", env["stock"],
                    f"CPU time {env['fast_cpu'] / env['stock_cpu']:.2f}x; observations identical: "
                    f"{'yes' if env['identical'] else 'NO'}"))
    if "parallel_stock" in env:
        rows.append(row(f"env, {workers} workers, stock renderer", env["parallel_stock"], "steps/s"))
        rows.append(row(f"env, {workers} workers, fast_render", env["parallel_fast"], "steps/s", "stock",
                        env["parallel_stock"]))
    vision = results["vision"]
    naive = vision["medians"][vision["baseline"]]
    batch = settings["vision"]["batch_size"]
    rows.append(row(f"V train, {vision['baseline']}", naive, "images/s", note=f"batch {batch}, "
                    f"threads {vision['threads']}"))
    rows.append(row(f"V train, {vision['train_variant']}", vision["medians"][vision["train_variant"]], "images/s",
                    "naive", naive, "train_vision.py's step"))
    memory = results["memory"]
    b, t = memory["batch_size"], memory["seq_len"]
    loop = memory["train"]["train: loop of step()"] * t
    sequence = memory["train"]["train: sequence forward"] * t
    rows.append(row("M train, loop of step()", loop, "seq steps/s", note=f"B {b} x T {t}"))
    rows.append(row("M train, sequence forward", sequence, "seq steps/s", "loop", loop,
                    f"= {sequence / (b * t):.2f} optimizer steps/s"))
    dream = results["dream"]["dream_steps_per_s"]
    per_candidate = dream["per-candidate loop"]
    rows.append(row("dream, per-candidate loop", per_candidate, "dream steps/s",
                    note=f"{results['dream']['rows']} dreams"))
    for name in ("batched float32", "batched bfloat16"):
        rows.append(row(f"dream, {name}", dream[name], "dream steps/s", "per-candidate", per_candidate))
    evaluation = results["evaluation"]
    one = evaluation[1]["episodes_per_min"]
    for count, measured in evaluation.items():
        rows.append(row(f"agent eval, {count} worker{'s' if count > 1 else ''}", measured["episodes_per_min"],
                        "episodes/min", None if count == 1 else "1 worker", None if count == 1 else one,
                        f"{measured['steps_per_s']:.0f} steps/s, <= {settings['evaluation']['max_steps']} "
                        f"steps/episode" + ("" if count == 1 else ", worker start-up included")))
    backends = results.get("backends")
    if backends is not None:
        name = f"simulator, {backends['workers']} workers"
        processes = backends["processes_episodes_per_s"]
        rows.append(row(f"{name}, processes backend", processes, "episodes/s",
                        note=f"{backends['episodes_per_core_second']:.4f} episodes/core-s"))
        rows.append(row(f"{name}, ray backend", backends["ray_episodes_per_s"], "episodes/s", "processes", processes,
                        f"Ray start/shutdown included; {backends['ray_overhead_without_start']:+.1%} without; "
                        f"same results: {'yes' if backends['identical'] else 'NO'}"))
    return rows


def format_table(rows: list[dict], info: dict, threads: int) -> str:
    ratios = [f"{r['ratio']:.2f}x {r['baseline']}" if r["ratio"] is not None else "" for r in rows]
    width, unit_width, ratio_width = (max(len(text) for text in column) for column in
                                      ([r["name"] for r in rows], [r["unit"] for r in rows], ratios + ["ratio"]))
    lines = [f"{'measurement':{width}s} {'value':>10s}  {'unit':{unit_width}s}  {'ratio':{ratio_width}s}  note"]
    for r, ratio in zip(rows, ratios):
        lines.append(f"{r['name']:{width}s} {r['value']:10.1f}  {r['unit']:{unit_width}s}  {ratio:{ratio_width}s}  "
                     f"{r['note']}".rstrip())
    cores = f"{info['cores']} cores" + (f" ({info['usable_cores']} usable)"
                                        if info.get("usable_cores", info["cores"]) != info["cores"] else "")
    lines.append(f"machine: {info['cpu']}, {cores}, torch {info['torch']} (threads {threads} for V/M/dreams), "
                 f"Python {info['python']}, {info['platform']}" + (f", CUDA {info['cuda']}" if "cuda" in info else ""))
    return "\n".join(lines)


def main(args: Args) -> dict:
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: expected a positive integer")
    for flag, value in (("--threads", args.threads), ("--eval-episodes", args.eval_episodes),
                        ("--eval-max-steps", args.eval_max_steps)):
        if value < 0:
            raise UsageError(f"{flag} {value}: expected 0 (the default) or a positive integer")
    threads = args.threads or torch.get_num_threads()
    subs = sub_args(args, threads)
    evaluation_settings = {"episodes_per_worker": args.eval_episodes or (1 if args.quick else 2),
                           "max_steps": args.eval_max_steps or (30 if args.quick else 1000)}
    settings = {name: dataclasses.asdict(sub) for name, sub in subs.items()} | {"evaluation": evaluation_settings}
    results, seconds = {}, {}
    started = time.perf_counter()
    sections = [("env", "env steps/s: stock renderer vs fast_render", bench_env.measure, None),
                ("vision", "V training images/s", bench_vision.measure,
                 lambda result: bench_vision.print_table(result["rates"])),
                ("memory", "M training throughput", bench_memory.measure,
                 lambda result: bench_memory.print_report(subs["memory"], result)),
                ("dream", "dream steps/s: batched vs per-candidate loop", bench_dream.measure, None)]
    for index, (key, title, measure, show) in enumerate(sections, 1):
        print(f"\n== {index}/6 {title} ==", flush=True)
        torch.set_num_threads(threads)  # the benchmarks before may have changed it
        section_start = time.perf_counter()
        results[key] = measure(subs[key])
        seconds[key] = time.perf_counter() - section_start
        if show:
            show(results[key])
    print("\n== 5/6 agent evaluation episodes/min (evaluate_agent) ==", flush=True)
    torch.set_num_threads(threads)
    section_start = time.perf_counter()
    paths = checkpoint_paths(args.checkpoint_dir)
    with tempfile.TemporaryDirectory(prefix="bench_all_") as tmp:
        if all(path.is_file() for path in paths.values()):
            checkpoint_dir, source = Path(args.checkpoint_dir), f"checkpoints in {args.checkpoint_dir}"
        else:
            checkpoint_dir, source = Path(tmp), "random-initialised paper-size V/M/C"
            write_random_checkpoints(checkpoint_dir, args.seed)
        print(f"agent: {source}; {evaluation_settings['episodes_per_worker']} episodes per worker, "
              f"<= {evaluation_settings['max_steps']} steps each", flush=True)
        results["evaluation"] = measure_evaluation(checkpoint_dir, args.workers,
                                                   evaluation_settings["episodes_per_worker"],
                                                   evaluation_settings["max_steps"], args.seed)
    evaluation_settings["agent"] = source
    seconds["evaluation"] = time.perf_counter() - section_start
    print("\n== 6/6 simulator episodes/s: worker processes vs Ray actors ==", flush=True)
    section_start = time.perf_counter()
    results["backends"] = bench_backends.measure(subs["backends"])
    seconds["backends"] = time.perf_counter() - section_start
    total = time.perf_counter() - started

    info = machine()
    rows = summary_rows(results, settings, args.workers)
    print(f"\n== summary ({'--quick: smoke-test budgets, ' if args.quick else ''}{total:.0f} s in all: "
          + ", ".join(f"{key} {value:.0f} s" for key, value in seconds.items()) + ") ==")
    print(format_table(rows, info, threads), flush=True)
    report = {"rows": rows, "machine": info, "threads": threads, "args": dataclasses.asdict(args),
              "settings": settings, "seconds": seconds | {"total": total},
              "details": {key: value for key, value in results.items() if key not in ("evaluation", "backends")}
              | {"evaluation": {str(count): value for count, value in results["evaluation"].items()},
                 "backends": {key: value for key, value in results["backends"].items() if key != "runs"}}}
    if args.json:
        with atomic_path(args.json) as tmp_path:
            tmp_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    run_main(main, Args)
