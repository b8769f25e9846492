"""Overlay training runs: the same scalars of one stage from several run folders, in one PNG.

Every training stage writes ``CHECKPOINT_DIR/<stage>_metrics.jsonl`` (see docs/stages.md, "Metrics and
TensorBoard"); this reads that file in each ``--runs`` folder and draws the chosen ``--keys`` against the
step (epoch, generation or iteration), one line per run and key. No TensorBoard needed
(``tensorboard --logdir checkpoints`` does the same interactively with ``--tensorboard`` runs).

    python car_racing/compare_runs.py --runs checkpoints/run-a checkpoints/run-b --stage vision --keys val_loss
    python car_racing/compare_runs.py --runs checkpoints/c1 checkpoints/c2 --stage controller --keys fitness_best real_cma_mean
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass
from typing import Literal

from car_racing.common.cli import UsageError, run_main
from car_racing.common.metrics import metrics_path, read_metrics
from car_racing.common.runtime import plot_curves

DEFAULT_KEYS = {"vision": ("val_loss",), "memory": ("val_total",), "controller": ("fitness_best", "real_cma_mean"),
                "dream_loop": ("controller/best_real_score",)}


@dataclass
class Args:
    """Overlay one stage's metrics from several run folders in one PNG."""

    runs: tuple[str, ...] = ("checkpoints",)
    """run folders (each a stage's --checkpoint-dir)"""
    stage: Literal["vision", "memory", "controller", "dream_loop"] = "vision"
    """whose metrics file to read: <run>/<stage>_metrics.jsonl"""
    keys: tuple[str, ...] = ()
    """the scalars to draw (default: vision val_loss, memory val_total, controller fitness_best and real_cma_mean,
    dream_loop controller/best_real_score)"""
    out: str = "runs/compare_runs.png"
    """the PNG to write"""
    log_y: bool = False
    """logarithmic y axis"""


def main(args: Args) -> dict:
    """Write the PNG; returns {"out", "curves": {label: [(step, value), …]}}."""
    keys = tuple(args.keys) or DEFAULT_KEYS[args.stage]
    names = [Path(run).name or run for run in args.runs]
    if len(set(names)) < len(names):  # two folders of one name: label them by their whole paths
        names = list(args.runs)
    curves: dict[str, list[float]] = {}
    xs: dict[str, list[float]] = {}
    for run, name in zip(args.runs, names):
        path = metrics_path(run, args.stage)
        records = read_metrics(path)
        if not records:
            raise UsageError(f"--runs {run}: no {path.name} there (train with --checkpoint-dir {run} first)")
        available = sorted({k for r in records for k, v in r.items() if k not in ("step", "time")
                            and isinstance(v, (int, float)) and not isinstance(v, bool)})
        for key in keys:
            if key not in available:
                raise UsageError(f"--keys {key}: {path} has no such scalar; it has {', '.join(available)}")
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            label = f"{name}: {key}"
            xs[label], curves[label] = [p[0] for p in points], [p[1] for p in points]
    out = Path(args.out)
    plot_curves(curves, out, title=f"{args.stage} metrics of {len(args.runs)} run(s)",
                xlabel="iteration" if args.stage == "dream_loop" else
                "generation" if args.stage == "controller" else "epoch", ylabel=", ".join(keys), log_y=args.log_y,
                x=xs)
    print(f"wrote {out}: " + "; ".join(f"{label} {values[-1]:.4g} at step {xs[label][-1]}"
                                       for label, values in curves.items() if values))
    return {"out": str(out), "curves": {label: list(zip(xs[label], values)) for label, values in curves.items()}}


if __name__ == "__main__":
    run_main(main, Args)
