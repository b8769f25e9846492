"""The demo's recipe at other sizes: stages 1–4 with the config preset ``demo`` and some values changed, then the
kept C on selection tracks — the table behind the demo's settings (docs/stages.md#sizes-tried-issue-36).

Settings are compared on selection tracks (seeds 7,000,000 + j: never recorded, trained on or checked), never on
the simulator's held-out tracks, which score the chosen preset once. ``--reuse RUN`` starts from another run's
recording, V and stage-3 M (stage 4 only), to measure a stage-4 lever or seed on identical inputs. One line per
stage with its seconds, and a last line with the score.

    python bench/demo_sizes.py --out runs/sizes/base
    python bench/demo_sizes.py --out runs/sizes/seed1 --set run.seed=1
    python bench/demo_sizes.py --out runs/sizes/pop24 --reuse runs/sizes/base --set cmaes.population=24 run.seed=1
    python bench/demo_sizes.py --out runs/sizes/mean-s0 --reuse runs/sizes/base --reuse-from memory \
        --set memory.latents="mean"
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import shutil
import time
import tomllib
from dataclasses import dataclass

from car_racing.common.cli import UsageError, run_main


@dataclass
class Args:
    """Run stages 1–4 of the demo recipe with changed values; score the kept C on selection tracks."""

    out: str = "runs/sizes/base"
    """the run folder (created; must not exist)"""
    set: tuple[str, ...] = ()
    """changed values, KEY=VALUE … after one --set, with the config's dotted keys (values in TOML: 24, 0.3, true,
    "zero"); a second --set replaces the first"""
    reuse: str = ""
    """a run folder of this script: take its recording, V and stage-3 M and run stage 4 only"""
    reuse_from: str = "controller"
    """with --reuse, the first stage run anew: "controller" (stage 4) or "memory" (stages 3 and 4 on the run's
    recording and V: for a stage-3 lever such as memory.latents)"""
    selection_episodes: int = 10
    """selection tracks the kept C drives (seeds TRACKS_BASE + j)"""
    tracks_base: int = 7_000_000
    """first selection track's seed (a recipe with a final choice, --set loop.select-top=N, drives 7,000,000 + j
    itself to choose: score it on another range, e.g. 7000500)"""
    workers: int = 2
    """worker processes for real episodes"""


def overrides(pairs: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` pairs as dotted keys → values (each value read as TOML)."""
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(f"--set {pair}: expected KEY=VALUE (e.g. cmaes.population=24)")
        try:
            values[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = text  # a bare word: a string
    return values


def main(args: Args) -> dict:
    from car_racing import demo
    from car_racing.common import config as C
    from car_racing.common.runtime import checkpoint_paths, load_checkpoint
    from car_racing.episodes.agent import evaluate_agent
    from car_racing.episodes.backends import Backend
    from car_racing.training.loop import LOOP_DIR, STAGE3_MEMORY_FILE

    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out {out}: exists; pick a new folder")
    if args.reuse_from not in ("controller", "memory"):
        raise UsageError(f"--reuse-from {args.reuse_from}: expected controller or memory")
    config = C.with_values(C.preset("demo", run__workers=args.workers), overrides(args.set), "--set ")
    C.validate(config)
    out.mkdir(parents=True)
    config = demo.demo_config(out, config)
    stages = [stage for stage in demo.STAGES if stage.key in demo.RECIPE_STAGES]
    if args.reuse:
        source = Path(args.reuse)
        shutil.copytree(source / "data", out / "data", ignore=shutil.ignore_patterns(LOOP_DIR))
        paths = checkpoint_paths(out / "checkpoints")
        paths["vision"].parent.mkdir(parents=True)
        shutil.copy2(checkpoint_paths(source / "checkpoints")["vision"], paths["vision"])
        if args.reuse_from == "controller":
            shutil.copy2(source / "checkpoints" / LOOP_DIR / STAGE3_MEMORY_FILE, paths["memory"])
        first = [stage.key for stage in stages].index(args.reuse_from)
        stages = stages[first:]
    C.write_resolved(config, out / "sizes.config.toml")
    done = demo.run_stages(out, config, {}, stages)
    started = time.perf_counter()
    seeds = [args.tracks_base + j for j in range(args.selection_episodes)]
    results = evaluate_agent(out / "checkpoints", seeds, max_steps=1000, workers=args.workers, backend=Backend())
    returns = [float(r.total_reward) for r in results]
    final = load_checkpoint(checkpoint_paths(out / "checkpoints")["controller"], "controller")
    summary = {"set": list(args.set), "reuse": args.reuse, "seconds": {s.key: round(t, 1) for s, t, _ in done},
               "selection_seconds": round(time.perf_counter() - started, 1), "selection_seeds": seeds,
               "selection_returns": returns,
               "selection_mean": sum(returns) / len(returns), "kept_check": final["best_real_score"],
               "kept": final["model_source"]}
    (out / "sizes.json").write_text(json.dumps(summary, indent=1))
    mean = summary["selection_mean"]
    spread = (sum((r - mean) ** 2 for r in returns) / len(returns)) ** 0.5
    print(f"{out.name}: stages {summary['seconds']}; kept check {final['best_real_score']:.1f}; selection "
          f"{mean:.1f} ± {spread:.1f} (min {min(returns):.1f}) over {len(returns)} tracks")
    return summary


if __name__ == "__main__":
    run_main(main, Args)
