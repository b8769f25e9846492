"""The machinery of stage 4's repair loop (:mod:`car_racing.training.loop`): its saved state, its stages in
order, the dream's choice, the per-iteration report and plot, and the choice of the best iteration.

The loop state (``CHECKPOINT_DIR/dream_loop_state.json``, written atomically after every stage) lists the
finished stages with their wall clock and results, so a rerun skips them and resumes the interrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from car_racing.common.cli import UsageError
from car_racing.common.config import flag_of
from car_racing.common.runtime import (
    CHECKPOINT_FILES,
    atomic_path,
    checkpoint_paths,
    link_or_copy,
    plot_curves,
    save_checkpoint,
)

STATE_FILE = "dream_loop_state.json"
# the final choice's tracks (--loop.select-top, select_controller.py): never recorded, trained on, checked
# or held out
SELECT_SEED_BASE = 7_000_000
PLOT_FILE = "dream_loop.png"
DREAM_CHOICE_DIR = "dream_choice"


class LoopState:
    """Finished stages and their results, in ``CHECKPOINT_DIR/dream_loop_state.json`` (atomic writes)."""

    def __init__(self, path: Path, config: dict, fixed_settings: Sequence[str] = ()):
        """``config``: the loop's config as plain data (section → field → value); ``fixed_settings``: dotted keys a
        continued loop must keep."""
        self.path = path
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise UsageError(f"{path}: unreadable loop state ({err}); delete it to start over") from None
            for key in fixed_settings:  # settings a continued loop must keep
                section, name = key.split(".")
                saved, now = self.data["config"].get(section, {}).get(name), config[section][name]
                if saved != now:
                    raise UsageError(f"{flag_of(key)} {now}: this loop ({path}) was started with {saved}; pass the same or "
                                     f"use another --checkpoint-dir")
        else:
            self.data = {"config": config, "stages": {}, "started": time.time()}
        self.data["config"] = config

    def done(self, key: str) -> bool:
        return key in self.data["stages"]

    def result(self, key: str) -> dict:
        return self.data["stages"][key]

    def finish(self, key: str, seconds: float, result: dict) -> None:
        self.data["stages"][key] = {"seconds": seconds, **result}
        self.save()

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=1))

    def total_seconds(self) -> float:
        return float(sum(stage["seconds"] for stage in self.data["stages"].values()))


def iteration_dir(checkpoint_dir: str | Path, iteration: int) -> Path:
    """``CHECKPOINT_DIR/iter_NN``: one iteration's V (linked), M, C and PNGs."""
    return Path(checkpoint_dir) / f"iter_{iteration:02d}"


@dataclass
class Stage:
    """One stage of an iteration; ``first_only`` stages run in iteration 0 only, ``feeds_next`` stages (new data
    for the next M) not in the last iteration."""

    name: str
    run: Callable[[Any, int], dict]  # (the loop, iteration) → results for the loop state
    first_only: bool = False
    feeds_next: bool = False


def stage_keys(stages: Sequence[Stage], iterations: int) -> list[tuple[int, Stage]]:
    """(iteration, stage) of the whole loop in order; the last iteration records nothing (no next M)."""
    keys = []
    for iteration in range(iterations):
        for stage in stages:
            if stage.first_only and iteration > 0:
                continue
            if stage.feeds_next and iteration == iterations - 1:
                continue
            keys.append((iteration, stage))
    return keys


def save_dream_choice(final: dict, folder: Path) -> None:
    """CMA's final mean — the C the dream prefers, real-checked or not — as ``folder/dream_choice/`` (V and M
    linked): when the dream is exploited this is the C whose episodes show M its mistake."""
    from car_racing.models.ffn import Controller  # (torch: only when a loop runs, not for --help)



    controller = Controller(**final["model_args"])
    controller.set_flat_params(final["cma_mean"])
    choice = {key: value for key, value in final.items() if key != "best_params"}
    choice.update(model_state=controller.state_dict(),
                  model_source=f"CMA mean of generation {final['generation']} (the dream's choice; not chosen by a check)")
    target = folder / DREAM_CHOICE_DIR
    for kind in ("vision", "memory"):
        link_or_copy(checkpoint_paths(folder)[kind], checkpoint_paths(target)[kind])
    save_checkpoint(choice, checkpoint_paths(target)["controller"])


def run_summary(final: dict) -> dict:
    """A CMA-ES run's results (its final checkpoint dict) for the loop state."""
    history = final["history"]
    trial_means = history.get("fitness_best_trial_mean") or []
    return {"best_real_score": final["best_real_score"], "model_source": final["model_source"],
            "dream_fitness_best": history["fitness_best"][-1] if history["fitness_best"] else None,
            "dream_fitness_best_trial_mean": trial_means[-1] if trial_means else None,
            "dream_fitness_cma_mean": history["fitness_cma_mean"][-1] if history["fitness_cma_mean"] else None,
            "real_checks": list(zip(history["eval_generation"], history["real_best_candidate"], history["real_cma_mean"])),
            "dream_trained": final["training"]["dream_trained"],
            # what chose this run's C: its real check episodes and the parameter vectors they checked
            "check_episodes": (final["training"].get("choice") or {}).get("check_episodes"),
            "check_steps": (final["training"].get("choice") or {}).get("check_steps"),
            "checked_vectors": (final["training"].get("choice") or {}).get("checked_vectors"),
            "kept_generation": final["training"].get("kept_generation")}


def report_iteration(state: LoopState, iteration: int) -> str:
    """One line per iteration: the dream's fitness, the real checks, the kept C and its start, the dream-real ρ,
    the recorded returns and the repair's dream-vs-real returns."""
    stages = state.data["stages"]
    controller = stages.get(f"{iteration}:controller", {})
    rho = stages.get(f"{iteration}:fidelity", {}).get("rank_correlation")
    record = stages.get(f"{iteration}:record", {})
    repair = stages.get(f"{iteration}:repair", {})

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    checks = ", ".join(f"g{g}: {'-' if b is None else f'{b:.0f}'}/{m:.0f}"  # (- = best candidate not checked)
                       for g, b, m in controller.get("real_checks", [])) or "-"
    starts = "".join(f"; {start} start: kept {number(run.get('best_real_score'))}, dream {number(run.get('dream_fitness_best'))}"
                     for start, run in controller.get("starts", {}).items())
    recorded = (f"; recorded returns: C {number(record.get('return_mean'))}, dream's choice "
                f"{number(record.get('return_mean_dream_choice'))}" if record else "")
    check_data = stages.get(f"{iteration}:checks", {})
    if check_data.get("episodes"):
        recorded += (f"; checks as data: {check_data['episodes']} worst check tracks replayed (mean return "
                     f"{number(check_data.get('replay_return_mean'))})")
    if repair.get("episodes"):
        recorded += (f"; repair: {repair['episodes']} dreams replayed, dream paid {number(repair.get('dream_return_mean'))}, "
                     f"the real env {number(repair.get('real_return_mean'))}")
    return (f"iteration {iteration}: dream fitness (best candidate, last gen) {number(controller.get('dream_fitness_best'))} "
            f"(mean of its dreams {number(controller.get('dream_fitness_best_trial_mean'))}); "
            f"real checks {checks} (best candidate / CMA mean); "
            f"kept {number(controller.get('best_real_score'))} ({controller.get('start', 'warm')} start{starts}); "
            f"dream-real rank correlation {'-' if rho is None else f'{rho:.2f}'}{recorded}")


def plot_loop(state: LoopState, path: Path, iterations: int) -> None:
    """``dream_loop.png``: per iteration the real checks, the dream fitness and the dream-real ρ."""
    stages = state.data["stages"]
    its = [i for i in range(iterations) if f"{i}:controller" in stages]
    if not its:
        return
    kept = [stages[f"{i}:controller"]["best_real_score"] for i in its]
    dream = [stages[f"{i}:controller"]["dream_fitness_best"] for i in its]
    last_check = [(stages[f"{i}:controller"]["real_checks"] or [[0, np.nan, np.nan]])[-1] for i in its]
    last_check = [mean if best is None else best for _, best, mean in last_check]  # (the mean's, unless checked)
    rho_its = [i for i in its if stages.get(f"{i}:fidelity", {}).get("rank_correlation") is not None]
    curves = {"kept C: real check score": kept, "last check, best candidate (else CMA mean)": last_check,
              "dream fitness, best candidate (last gen)": dream,
              "dream-real rank correlation × 1000": [1000 * stages[f"{i}:fidelity"]["rank_correlation"] for i in rho_its]}
    x = {name: its for name in curves}
    x["dream-real rank correlation × 1000"] = rho_its
    plot_curves(curves, path, title="dream loop: real checks, dream fitness, dream-real ρ", xlabel="iteration",
                ylabel="return (ρ × 1000)", x=x)


def checked_iterations(state: LoopState, iterations: int) -> list[tuple[float, int]]:
    """``(kept C's check score, iteration)`` of every finished iteration whose C was real-checked, best first."""
    return sorted(((state.result(f"{i}:controller")["best_real_score"], i) for i in range(iterations)
                   if state.done(f"{i}:controller") and state.result(f"{i}:controller")["best_real_score"] is not None),
                  reverse=True)


def counted_best(state: LoopState, iteration: int, delta: float = 0.0) -> Optional[int]:
    """The iteration whose check the stopping rule counts as the best up to ``iteration``: walking the checked
    iterations in order, the last whose check beat the one counted before it by more than ``delta`` (0: strictly;
    a tie is no improvement). None before any check."""
    best_score, best_iteration = -math.inf, None
    for score, i in sorted(checked_iterations(state, iteration + 1), key=lambda item: item[1]):  # in iteration order
        if best_iteration is None or score > best_score + delta:  # unchecked iterations neither improve nor reset
            best_score, best_iteration = score, i
    return best_iteration


def converged(state: LoopState, iteration: int, patience: int, delta: float = 0.0) -> Optional[int]:
    """The loop's stopping rule (``--loop.patience``, ``--loop.patience-delta``): after ``iteration``'s C was checked, the
    iteration whose check is still the best when the last ``patience`` iterations have not beaten it by more than
    ``delta`` (:func:`counted_best`), else None (patience 0 = never stop). Read from the saved state only, so a
    resumed loop stops where the uninterrupted one would have."""
    if patience <= 0 or not state.done(f"{iteration}:controller"):
        return None
    best_iteration = counted_best(state, iteration, delta)
    if best_iteration is None:
        return None
    return best_iteration if iteration - best_iteration >= patience else None


def choose_best(checkpoint_dir: str | Path, iterations: int, state: LoopState,
                selection: Optional[dict[int, float]] = None) -> Optional[int]:
    """The iteration whose kept C scored best on the (same) check tracks, or, given ``selection`` (iteration →
    mean return on the final choice's tracks), the best of those; its V, M, C linked into best/."""
    scored = checked_iterations(state, iterations)
    if selection:
        scored = [(score, i) for i, score in selection.items()]
    if not scored:
        return None
    _, best = max(scored)
    for name in CHECKPOINT_FILES.values():
        link_or_copy(iteration_dir(checkpoint_dir, best) / name, Path(checkpoint_dir) / "best" / name)
    return best


def loop_record(data: dict, iterations: int) -> dict:
    """What the loop used to choose its C, for C's training record, from the loop state's ``data``: every run's
    real checks (both starts of an iteration, the losing one too), the final choice's candidates with their checks
    and selection returns, and the totals of real episodes and parameter vectors that chose."""
    stages = data["stages"]
    runs = []
    for i in range(iterations):
        if f"{i}:controller" in stages:
            result = stages[f"{i}:controller"]
            for start, run in (result.get("starts") or {result.get("start", "zero"): result}).items():
                runs.append({"iteration": i, "start": start, "check": run.get("best_real_score"),
                             "check_episodes": run.get("check_episodes") or 0,
                             "check_steps": run.get("check_steps") or 0,
                             "checked_vectors": run.get("checked_vectors") or 0})
    selection = data.get("selection") or {}
    chosen = selection.get("returns") or {}
    candidates = {i: {"check": stages[f"{i}:controller"]["best_real_score"], "selection_returns": r,
                      "selection_mean": float(np.mean(r))} for i, r in chosen.items()}
    selection_episodes = sum(len(r) for r in chosen.values())
    check_episodes = sum(run["check_episodes"] for run in runs)
    first = int(stages.get("0:data", {}).get("frames") or 0)
    last = max([int(result.get("frames") or 0) for key, result in stages.items() if key.endswith(":memory")] + [first])
    steps = {"recording": first,  # stage 1's recording the loop started from
             "loop_data": last - first,  # C's episodes, repair and check replays, the panel: what M learnt from
             "checks": sum(run["check_steps"] for run in runs),
             "selection": sum(sum(s) for s in (selection.get("steps") or {}).values())}
    return {"iterations": len({run["iteration"] for run in runs}), "runs": runs,
            "best_iteration": data.get("best_iteration"), "best_by": data.get("best_by"),
            "final_choice": {"candidates": candidates, "seeds": selection.get("seeds"),
                             "episodes": selection_episodes},
            "choice_real_episodes": check_episodes + selection_episodes,
            # real env steps by use (sample efficiency); the last iteration's recorded data (no next M) is left out
            "real_env_steps": {**steps, "total": sum(steps.values())},
            "checked_vectors": sum(run["checked_vectors"] for run in runs)}
