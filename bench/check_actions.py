"""What C does on its real checks, check by check: the dream's pay beside the real score and the actions behind it.

Every CMA-ES run of stage 4 keeps each real-checked parameter vector in its checkpoint (``checked``) with the check
tracks' returns and actions. This prints, per run and per checked vector, the real check score, what the dream paid
it in that generation (``history.fitness_cma_mean``, or ``fitness_best`` for a best candidate), and how it drove the
check tracks: mean gas, mean brake, mean |steer|, mean |Δsteer| from one step to the next (weaving) and the
episodes' length. A run whose dream pay climbs while its real score falls shows the exploit, and the actions show
which way it went (issue 34: look at what C does, not only at the score).

    python bench/check_actions.py --runs runs/lineage/default-s1000
    python bench/check_actions.py --runs checkpoints/dream_loop/iter_02/warm checkpoints/control_model_cmaes.pth
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import dataclass

import numpy as np

from bench.tables import markdown_table
from car_racing.common.cli import UsageError, run_main

COLUMNS = ("run", "checked", "generation", "dream pays", "real check", "gas", "brake", "|steer|",
           "|Δsteer|", "steps")


@dataclass
class Args:
    """Print what each real-checked C of stage 4's CMA-ES runs did on its check tracks (Markdown)."""

    runs: tuple[str, ...] = ("checkpoints",)
    """controller checkpoints, folders holding one (a CMA-ES run's), or lineage/checkpoint folders: every CMA-ES run
    under their dream_loop/ (iteration by iteration, each start) is read"""
    best_candidates: bool = False
    """also list the checks of generations' best candidates (with --checks.best-candidate)"""


def controller_files(run: str) -> list[Path]:
    """The CMA-ES runs' checkpoints under RUN, in iteration and start order (the loop's ``iter_NN`` holds a copy of
    the kept start's checkpoint next to the starts' own folders, and ``dream_choice/`` is not a run: both skipped)."""
    from car_racing.common.runtime import checkpoint_paths

    path = Path(run)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"--runs {run}: no such file or folder")
    name = checkpoint_paths(path)["controller"].name
    found = []
    for file in sorted(path.rglob(name)):
        folder = file.parent
        if "dream_choice" in folder.parts or folder.name == "best":
            continue
        if any((folder / start / name).is_file() for start in ("warm", "from_zero")):
            continue
        found.append(file)
    loops = [file for file in found if "dream_loop" in file.parts]
    files = loops or found  # a lineage's final C is one of its loop's runs: list the runs
    if not files:
        raise UsageError(f"--runs {run}: holds no controller checkpoint ({name})")
    return files


def run_settings(file: Path, **values):
    """The settings the CMA-ES run in ``file`` ran with (its ``controller.config.toml``: M, recording, dream), with
    ``values`` (dotted as ``run__device``) replaced; a one-line error when the file is missing."""
    from car_racing.common import config as cfg

    resolved = cfg.resolved_path(file.parent, "controller")
    if not resolved.is_file():
        raise UsageError(f"{file}: no {resolved.name} beside it (the run's settings); rerun stage 4")
    return cfg.replace(cfg.with_values(cfg.Config(), cfg.read_file(resolved)), **values)


def run_label(run: str, file: Path, several: bool) -> str:
    """A CMA-ES run's name: its folder under ``dream_loop/`` (``iter_01/warm``), else its folder; with several
    ``--runs`` the run argument first."""
    parts = file.parent.parts
    name = "/".join(parts[parts.index("dream_loop") + 1:]) if "dream_loop" in parts else str(file.parent)
    return f"{run}: {name}" if several and name != str(file.parent) else name


def action_stats(actions: list[np.ndarray]) -> dict:
    """Mean gas, brake, |steer|, |Δsteer| over every step of the episodes, and their mean length."""
    steps = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in actions])
    weave = np.concatenate([np.abs(np.diff(np.asarray(a, dtype=np.float64)[:, 0])) for a in actions if len(a) > 1]
                           or [np.zeros(1)])
    return {"gas": steps[:, 1].mean(), "brake": steps[:, 2].mean(), "steer": np.abs(steps[:, 0]).mean(),
            "weave": weave.mean(), "steps": float(np.mean([len(a) for a in actions]))}


def run_rows(file: Path, label: str, best_candidates: bool) -> list[list[str]]:
    """One row per checked vector of one CMA-ES run."""
    from car_racing.common.runtime import load_checkpoint

    checkpoint = load_checkpoint(file, "controller")
    history = checkpoint.get("history", {})
    rows = []
    for check in checkpoint.get("checked") or []:
        which = check["source"].split(" of generation")[0]
        is_best = which.startswith("best_candidate")
        if is_best and not best_candidates:
            continue
        generation = int(check["generation"])
        dream = history.get("fitness_best" if is_best else "fitness_cma_mean") or []
        paid = dream[generation - 1] if 0 < generation <= len(dream) else None  # (generation 0: not dreamt yet)
        stats = action_stats(check["actions"])
        rows.append([label, which + (" (kept)" if check["source"] == checkpoint.get("model_source") else ""),
                     str(generation), "—" if paid is None or np.isnan(paid) else f"{paid:.0f}",
                     f"{check['score']:.1f}", f"{stats['gas']:.2f}", f"{stats['brake']:.2f}", f"{stats['steer']:.2f}",
                     f"{stats['weave']:.3f}", f"{stats['steps']:.0f}"])
    return rows


def main(args: Args) -> str:
    if not args.runs:
        raise UsageError("--runs: give at least one checkpoint or folder")
    rows = []
    for run in args.runs:
        for file in controller_files(run):
            rows += run_rows(file, run_label(run, file, several=len(args.runs) > 1), args.best_candidates)
    text = markdown_table(COLUMNS, rows)
    print(text)
    return text


if __name__ == "__main__":
    run_main(main, Args)
